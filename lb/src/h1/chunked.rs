//! The chunked transfer coding (RFC 9112 §7.1), both ways.
//!
//! A chunked body is a series of chunks, each a size in hexadecimal on a line of its own, then
//! that many bytes, then CRLF; a chunk of size zero ends it, followed by optional trailer fields
//! and an empty line:
//!
//! ```text
//!   5\r\n            chunk-size (hex), optionally ";name=value" extensions, CRLF
//!   hello\r\n        chunk-data, CRLF
//!   0\r\n            last-chunk
//!   Expires: 0\r\n   trailer section (optional header lines)
//!   \r\n             the end
//! ```
//!
//! [`Decoder`] reads that from a buffer as the bytes arrive, however they are split, and hands out
//! the data without copying it. It refuses what would let two parsers disagree on where the body
//! ends (the root of response smuggling): a size that is not hex, a size too large for 64 bits,
//! a chunk not followed by exactly CRLF, a bare LF, an endless extension or trailer section.
//! [`encode_size`] and [`LAST_CHUNK`] write the coding for request bodies lb sends chunked (without
//! trailers: lb does not pass a client's request trailers on, as hyper did not).

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

use super::Error;

/// The longest chunk-size line lb accepts, extensions included (hyper allows about as much).
const MAX_SIZE_LINE: usize = 4096;

/// The largest trailer section lb accepts.
const MAX_TRAILERS: usize = 16 * 1024;

/// At most this many trailer fields (as many as header fields in a head).
const MAX_TRAILER_FIELDS: usize = 100;

/// Where the decoder is within the chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line; `value` so far, `digits` seen, `line` bytes on the line.
    Size {
        value: u64,
        digits: u8,
        line: usize,
    },
    /// Past the size, skipping whitespace and (once a `;` opened them) extensions up to the CR.
    Extension {
        value: u64,
        line: usize,
        open: bool,
    },
    /// Got the CR that ends a size line, need its LF.
    SizeLf {
        value: u64,
    },
    /// In a chunk's data, this many bytes to go.
    Data(u64),
    /// After a chunk's data: need CR, then LF.
    DataCr,
    DataLf,
    /// After the last chunk: trailer fields (if any) and the empty line.
    Trailers,
    Done,
}

impl State {
    /// Bytes after the size on a size line: whitespace and chunk extensions (RFC 9112 §7.1.1),
    /// which lb ignores, as it may, up to the CR.
    fn extension(self, byte: u8) -> Result<State, Error> {
        let State::Extension { value, line, open } = self else {
            return Ok(self);
        };
        let line = line + 1;
        if line > MAX_SIZE_LINE {
            return Err(Error::Malformed("chunk extensions too long"));
        }
        let open = match byte {
            b'\r' => return Ok(State::SizeLf { value }),
            b'\n' => return Err(Error::Malformed("bare LF in a chunk size line")),
            // Before the first `;`, only whitespace may follow the size (`5 ;a`, not `5x`).
            b';' => true,
            b'\t' | b' ' => open,
            // Extension text: visible characters (quoted strings included).
            b'!'..=b'~' | 0x80..=0xff if open => true,
            b'!'..=b'~' | 0x80..=0xff => {
                return Err(Error::Malformed("chunk size is not hexadecimal"))
            }
            _ => return Err(Error::Malformed("control character in a chunk size line")),
        };
        Ok(State::Extension { value, line, open })
    }
}

/// Decodes one chunked body (see the module comment).
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
}

/// What one step of decoding produced.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// Some body bytes.
    Data(Bytes),
    /// The trailer fields after the last chunk; the body is over.
    Trailers(HeaderMap),
    /// The body is over.
    End,
    /// Everything buffered is consumed; more bytes are needed.
    NeedMore,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Size {
                value: 0,
                digits: 0,
                line: 0,
            },
        }
    }
}

impl Decoder {
    /// The body's end (last chunk and trailer section) has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode from `buf`, consuming what it uses, until there is data, trailers, the end, or
    /// nothing more to do without more bytes.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        loop {
            if let State::Data(left) = self.state {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data(left)
                };
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            if self.state == State::Trailers {
                return self.trailers(buf);
            }
            if self.state == State::Done {
                return Ok(Decoded::End);
            }
            let Some(&byte) = buf.first() else {
                return Ok(Decoded::NeedMore);
            };
            buf.advance(1);
            self.state = self.step(byte)?;
        }
    }

    /// One byte of a size line or of the CRLF after a chunk's data.
    fn step(&self, byte: u8) -> Result<State, Error> {
        Ok(match self.state {
            State::Size {
                value,
                digits,
                line,
            } => {
                let line = line + 1;
                if line > MAX_SIZE_LINE {
                    return Err(Error::Malformed("chunk size line too long"));
                }
                if let Some(digit) = (byte as char).to_digit(16) {
                    // Sixteen hex digits fill 64 bits; one more significant digit would overflow.
                    if value > u64::MAX >> 4 {
                        return Err(Error::Malformed("chunk size too large"));
                    }
                    State::Size {
                        value: value << 4 | u64::from(digit),
                        digits: digits.saturating_add(1),
                        line,
                    }
                } else if digits == 0 {
                    return Err(Error::Malformed("chunk size is not hexadecimal"));
                } else {
                    State::Extension {
                        value,
                        line: line - 1,
                        open: false,
                    }
                    .extension(byte)?
                }
            }
            State::Extension { .. } => self.state.extension(byte)?,
            State::SizeLf { value } => match byte {
                b'\n' if value == 0 => State::Trailers,
                b'\n' => State::Data(value),
                _ => return Err(Error::Malformed("chunk size line not ended by CRLF")),
            },
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                _ => return Err(Error::Malformed("chunk data not followed by CRLF")),
            },
            State::DataLf => match byte {
                b'\n' => State::Size {
                    value: 0,
                    digits: 0,
                    line: 0,
                },
                _ => return Err(Error::Malformed("chunk data not followed by CRLF")),
            },
            State::Data(_) | State::Trailers | State::Done => self.state,
        })
    }

    /// After the last chunk: either the empty line at once, or trailer fields then the empty line.
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        if buf.len() < 2 {
            return Ok(Decoded::NeedMore);
        }
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.state = State::Done;
            return Ok(Decoded::End);
        }
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            if buf.len() > MAX_TRAILERS {
                return Err(Error::Malformed("trailer section too large"));
            }
            return Ok(Decoded::NeedMore);
        };
        if end + 4 > MAX_TRAILERS {
            return Err(Error::Malformed("trailer section too large"));
        }
        let section = buf.split_to(end + 4);
        // Every line ends in CRLF, and the fields end exactly at the empty line: a bare LF could
        // make httparse see the section end earlier than we did, and swallow what follows.
        let bare_lf = section
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'\n' && (i == 0 || section[i - 1] != b'\r'));
        if bare_lf {
            return Err(Error::Malformed("bare LF in the trailer section"));
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
        let parsed = match httparse::parse_headers(&section, &mut fields) {
            Ok(httparse::Status::Complete((len, parsed))) if len == section.len() => parsed,
            _ => return Err(Error::Malformed("malformed trailer section")),
        };
        let mut trailers = HeaderMap::with_capacity(parsed.len());
        for field in parsed.iter() {
            let name = http::HeaderName::from_bytes(field.name.as_bytes());
            let value = http::HeaderValue::from_bytes(field.value);
            if let (Ok(name), Ok(value)) = (name, value) {
                trailers.append(name, value);
            }
        }
        self.state = State::Done;
        Ok(Decoded::Trailers(trailers))
    }
}

/// The end of a chunked body without trailers: the last chunk and the empty line.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Append the size line of a chunk of `len` bytes (`len` in hex, CRLF) to `out`.
pub fn encode_size(len: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = len;
    loop {
        at -= 1;
        digits[at] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `input` fed `step` bytes at a time: the data, the trailers, or the first error.
    fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>, bool), Error> {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut trailers = None;
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf)? {
                    Decoded::Data(data) => body.extend_from_slice(&data),
                    Decoded::Trailers(t) => trailers = Some(t),
                    Decoded::End | Decoded::NeedMore => break,
                }
            }
        }
        Ok((body, trailers, decoder.is_done()))
    }

    #[test]
    fn chunks_are_joined_however_the_bytes_arrive() {
        let input = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        for step in [1, 2, 3, 7, input.len()] {
            let (body, trailers, done) = decode(input, step).unwrap();
            assert_eq!(body, b"hello world", "step {step}");
            assert!(trailers.is_none());
            assert!(done);
        }
    }

    #[test]
    fn the_size_is_hexadecimal_in_either_case() {
        let (body, _, done) = decode(b"A\r\n0123456789\r\n0\r\n\r\n", 4).unwrap();
        assert_eq!(body.len(), 10);
        assert!(done);
        let (body, _, _) = decode(b"a\r\n0123456789\r\n0\r\n\r\n", 4).unwrap();
        assert_eq!(body.len(), 10);
    }

    /// RFC 9112 §7.1.1: extensions are allowed and may be ignored.
    #[test]
    fn chunk_extensions_are_ignored() {
        let (body, _, done) = decode(b"5;name=\"v\"\r\nhello\r\n0;end\r\n\r\n", 3).unwrap();
        assert_eq!(body, b"hello");
        assert!(done);
        let (body, _, _) = decode(b"5 ; x\r\nhello\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!(body, b"hello");
    }

    /// RFC 9112 §7.1.2: fields after the last chunk are trailers, not body.
    #[test]
    fn trailers_end_the_body() {
        let (body, trailers, done) =
            decode(b"5\r\nhello\r\n0\r\nX-Sum: 42\r\nX-B: 1\r\n\r\n", 4).unwrap();
        assert_eq!(body, b"hello");
        let trailers = trailers.expect("trailers");
        assert_eq!(trailers["x-sum"], "42");
        assert_eq!(trailers["x-b"], "1");
        assert!(done);
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        for input in [
            &b"5\r\nhel"[..],
            b"5\r\nhello\r\n",
            b"5\r\nhello\r\n0\r\n",
            b"0\r\nX: 1\r\n",
        ] {
            let (_, _, done) = decode(input, 2).unwrap();
            assert!(!done, "{:?}", String::from_utf8_lossy(input));
        }
    }

    /// What two parsers could read differently is refused outright (RFC 9112 §7.1, §11.2).
    #[test]
    fn ambiguous_framing_is_an_error() {
        for (input, why) in [
            (&b"x\r\nhello\r\n"[..], "size not hex"),
            (b"\r\n", "empty size"),
            (b"-5\r\nhello\r\n", "negative size"),
            (b"0x5\r\nhello\r\n", "0x prefix"),
            (b"11111111111111111\r\n", "seventeen digits"),
            (b"5\nhello\r\n", "bare LF after the size"),
            (b"5\r\nhelloX\r\n", "data longer than the size"),
            (b"5\r\nhello\n0\r\n\r\n", "bare LF after the data"),
            (b"5\rX\nhello", "CR not followed by LF"),
            (b"5;a\x01b\r\nhello", "control character in an extension"),
            (b"0\r\nno colon\r\n\r\n", "malformed trailer"),
            (
                b"0\r\nX: 1\n\nHTTP/1.1 200 OK\r\n\r\n",
                "bare LF in trailers",
            ),
        ] {
            assert!(decode(input, 1).is_err(), "{why} must be refused");
            assert!(decode(input, input.len()).is_err(), "{why} must be refused");
        }
    }

    #[test]
    fn endless_size_lines_and_trailers_are_refused() {
        let mut long_ext = b"5;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'a', MAX_SIZE_LINE + 1));
        assert!(decode(&long_ext, 100).is_err());
        let mut long_trailer = b"0\r\nX: ".to_vec();
        long_trailer.extend(std::iter::repeat_n(b'a', MAX_TRAILERS + 1));
        assert!(decode(&long_trailer, 1000).is_err());
    }

    #[test]
    fn the_largest_size_fits() {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"ab"))
        );
        assert_eq!(decoder.state, State::Data(u64::MAX - 2));
    }

    #[test]
    fn sizes_are_encoded() {
        let mut out = Vec::new();
        for len in [0, 1, 15, 16, 255, 4096, usize::MAX] {
            out.clear();
            encode_size(len, &mut out);
            assert_eq!(out, format!("{len:x}\r\n").into_bytes());
        }
    }

    #[test]
    fn leading_zeros_do_not_count_towards_the_size_limit() {
        let (body, _, done) = decode(b"000000000000000000005\r\nhello\r\n0\r\n\r\n", 5).unwrap();
        assert_eq!(body, b"hello");
        assert!(done);
    }
}
