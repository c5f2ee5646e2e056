//! HTTP/1.1 on the upstream leg, written out: how lb sends a request to a backend, reads the
//! response, knows where that response ends, and whether the connection can carry another one.
//!
//! The client leg is [`server`] (requests read, responses written); the backend leg is the rest
//! of this module, small enough to read in one sitting. One exchange on a [`Conn`] goes:
//!
//! 1. [`Conn::start`] writes the request head into the connection's output buffer: request line,
//!    the (already rewritten) header fields, and the framing of the body, always lb's own
//!    ([`framing::request_body`]: `Content-Length` when the body's length is known, else
//!    `Transfer-Encoding: chunked`; the client's framing headers are never copied);
//! 2. [`Conn::poll_send`] writes the head and the body as the client's frames arrive, as a
//!    length-delimited run of bytes or as chunks ([`chunked`]); a body already here leaves in
//!    the head's write (and comes back whole if that first write fails);
//! 3. meanwhile [`Conn::poll_head`] reads the response head (a backend may answer before it has
//!    read the whole body), skipping `100 Continue` and other interim responses, and decides from
//!    it how the body is framed ([`framing::response_body`], RFC 9112 §6.3);
//! 4. [`Conn::poll_body`] hands out the body as it arrives, without copying it: each frame is a
//!    slice of the read buffer;
//! 5. at the end, [`Conn::is_reusable`] says whether the connection may go back to the pool: only
//!    if both messages were read and written to their exact ends, nothing extra arrived, and neither
//!    side asked to close.
//!
//! Nothing here waits on anything but the socket: the request's own task polls these functions
//! (no task per connection, no channel between the request and its connection), and a pooled
//! connection is a socket, two buffers and a flag.

pub mod chunked;
pub mod framing;
pub mod server;

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::RequestBody;
use crate::error::BoxError;
use chunked::Decoded;
use framing::ResponseBody as Framed;

/// At most this many header fields in a response head (hyper's limit too).
const MAX_HEADERS: usize = 100;

/// The largest response head lb reads (hyper's client limit, about 400 KiB).
const MAX_HEAD: usize = 8192 + 4096 * 100;

/// At most this many bytes of interim (1xx) responses before the final one (a backend may send
/// `102 Processing` every few seconds through a long operation: thousands are fine, endless is not).
const MAX_INTERIM: usize = MAX_HEAD;

/// How much room each read asks for.
const READ_SIZE: usize = 16 * 1024;

/// Body pieces up to this size are copied next to their chunk line, so that one write carries both.
const COPY_BELOW: usize = 4096;

/// httparse's defaults: strict (no obsolete line folding, no space before a colon).
fn parser() -> httparse::ParserConfig {
    httparse::ParserConfig::default()
}

/// What went wrong on a connection to a backend (defined with the other errors, in `error.rs`).
pub use crate::error::WireError as Error;

/// Why sending a request failed.
#[derive(Debug)]
pub enum SendError {
    /// The connection failed; `written` tells whether any byte of this request had left.
    Backend { error: Error, written: bool },
    /// The client's own body failed (it stalled, or was malformed or cut).
    Client(BoxError),
}

/// One HTTP/1.1 connection to a backend: the socket and its two buffers.
#[derive(Debug)]
pub struct Conn<S> {
    io: S,
    /// Bytes received and not yet handed out.
    input: BytesMut,
    /// What waits to be written; counts the bytes of the current request written so far.
    out: Output,
    /// Bytes of interim responses read for the current request.
    interim: usize,
    reusable: bool,
}

/// A request body on its way out: where it is, and how it is framed.
#[derive(Debug)]
pub struct Sending {
    body: RequestBody,
    framing: framing::RequestBody,
    /// Bytes still owed under `Content-Length`.
    left: u64,
    /// The client's body has ended (its last bytes may still be in the output buffer).
    ended: bool,
    /// The frame taken from the body before a byte of the request was written (it goes out with
    /// the head; only one is): if that first write fails, it is handed back with the body.
    held: Option<Bytes>,
    /// A frame has been taken from the body that cannot be handed back: it may have left.
    taken: bool,
}

impl Sending {
    /// The body, whole again, if nothing of it can have left (to send it elsewhere): only the
    /// frame held back for the first write was taken, and that write failed.
    pub fn into_untouched_body(self) -> Option<RequestBody> {
        (!self.taken).then(|| self.body.prepend(self.held))
    }
}

/// What the request was, as far as reading its response is concerned.
#[derive(Debug, Clone)]
pub struct Asked {
    pub method: Method,
    /// The request asked to switch protocols: a `101` ends the HTTP exchange.
    pub upgrade: bool,
}

/// A request head: as lb read it from a client (`server::parse`), and, rewritten by
/// `forward.rs`, as it goes to a backend ([`Conn::start`]).
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: http::Version,
    pub fields: Fields,
}

/// A response head, and how its body is framed.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: http::Version,
    /// The header fields, as the backend wrote them.
    pub fields: Fields,
    pub body: Decoder,
}

/// Header fields as they arrived: the bytes of their head and where each field lies in it.
///
/// A head goes on (a request to a backend, a response to the client) almost as it came, so lb
/// keeps its fields this way instead of parsing them into a `HeaderMap`: no name is looked up in
/// a table of standard names, hashed or copied, no value is validated twice (httparse did) and
/// nothing is allocated per field. A lookup walks the spans, which for the handful of fields of
/// a head is as quick as a hash; a field lb drops is only forgotten (its span), never cut out of
/// the bytes.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    bytes: Bytes,
    spans: Vec<Span>,
}

impl Fields {
    /// Fields whose lines lie at `spans` in `bytes` (a head httparse accepted).
    fn new(bytes: Bytes, spans: Vec<Span>) -> Fields {
        Fields { bytes, spans }
    }

    /// Fields made of `pairs` (name, value), for heads lb writes itself (health probes) and
    /// tests. Pairs that are not valid fields are left out.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Fields {
        let mut bytes = BytesMut::new();
        let mut spans = Vec::with_capacity(pairs.len());
        for (name, value) in pairs {
            let valid = HeaderName::from_bytes(name.as_bytes()).is_ok()
                && HeaderValue::from_str(value).is_ok();
            if !valid {
                continue;
            }
            let at = bytes.len() as u32;
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value.trim().as_bytes());
            bytes.extend_from_slice(b"\r\n");
            spans.push(Span {
                name: (at, name.len() as u32),
                value: (at + name.len() as u32 + 2, value.trim().len() as u32),
            });
        }
        Fields {
            bytes: bytes.freeze(),
            spans,
        }
    }

    /// The fields of `head`, a complete response head (status line, fields, empty line); `None`
    /// if it is not one.
    pub fn of_response(head: &[u8]) -> Option<Fields> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut fields);
        let len = match parser().parse_response(&mut response, head) {
            Ok(httparse::Status::Complete(len)) => len,
            _ => return None,
        };
        let spans = locate(head, response.headers);
        Some(Fields::new(Bytes::copy_from_slice(&head[..len]), spans))
    }

    /// Each field's name (as its sender spelled it) and value, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans
            .iter()
            .map(|span| (self.at(span.name), self.at(span.value)))
    }

    /// The value of the first field called `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        self.values(name).next()
    }

    /// The value of the first field called `name`, as text if it is visible ASCII (what
    /// `HeaderValue::to_str` accepts).
    pub fn get_str(&self, name: &HeaderName) -> Option<&str> {
        self.get(name).and_then(visible_text)
    }

    /// The value of the first field called `name`, sharing the head's bytes (no copy).
    pub fn get_shared(&self, name: &HeaderName) -> Option<Bytes> {
        let bytes = self.get(name)?;
        Some(self.bytes.slice_ref(bytes))
    }

    fn at(&self, (at, len): (u32, u32)) -> &[u8] {
        &self.bytes[at as usize..(at + len) as usize]
    }
}

/// A field value as text, if it is all visible ASCII, spaces and tabs (what `HeaderValue::to_str`
/// accepts).
pub fn visible_text(value: &[u8]) -> Option<&str> {
    let visible = value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b));
    visible.then(|| std::str::from_utf8(value).ok()).flatten()
}

/// The fields of a message head, whether kept as they arrived ([`Fields`]: requests, and a
/// backend's responses) or in a `HeaderMap` (the answers lb writes itself): what the framing rules
/// and the hop-by-hop rules need to read and remove. Names compare case-insensitively.
pub trait HeadFields {
    /// Every field's name.
    fn names(&self) -> impl Iterator<Item = &[u8]>;
    /// The values of every field called `name`, in order.
    fn values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]>;
    /// Remove every field called `name`.
    fn remove(&mut self, name: &[u8]);

    fn contains(&self, name: &HeaderName) -> bool {
        self.values(name).next().is_some()
    }
}

impl HeadFields for Fields {
    fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|span| self.at(span.name))
    }

    fn values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
        let name = name.as_str().as_bytes();
        self.spans
            .iter()
            .filter(move |span| self.at(span.name).eq_ignore_ascii_case(name))
            .map(|span| self.at(span.value))
    }

    fn remove(&mut self, name: &[u8]) {
        let bytes = &self.bytes;
        self.spans.retain(|span| {
            let (at, len) = span.name;
            !bytes[at as usize..(at + len) as usize].eq_ignore_ascii_case(name)
        });
    }
}

impl HeadFields for HeaderMap {
    fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.keys().map(|name| name.as_str().as_bytes())
    }

    fn values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(name).into_iter().map(HeaderValue::as_bytes)
    }

    fn remove(&mut self, name: &[u8]) {
        if let Ok(name) = HeaderName::from_bytes(name) {
            HeaderMap::remove(self, name);
        }
    }
}

/// Reads one response body (see [`Conn::poll_body`]).
#[derive(Debug)]
pub enum Decoder {
    Length(u64),
    Chunked(chunked::Decoder),
    UntilClose,
    Done,
}

impl Decoder {
    pub fn is_done(&self) -> bool {
        matches!(self, Decoder::Done | Decoder::Length(0))
    }

    /// The exact length still to come, when it is known.
    pub fn exact_len(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(io: S) -> Self {
        Conn {
            io,
            input: BytesMut::new(),
            out: Output::default(),
            interim: 0,
            reusable: true,
        }
    }

    /// May this connection carry another exchange? (See step 5 of the module comment.)
    pub fn is_reusable(&self) -> bool {
        self.reusable && self.input.is_empty() && self.out.pending() == 0
    }

    /// Bytes of the current request written so far: a change means the backend took some.
    pub fn written(&self) -> u64 {
        self.out.written
    }

    /// The last `poll_send` is waiting for the socket (the backend is not reading), not for the
    /// client's body.
    pub fn is_write_blocked(&self) -> bool {
        self.out.pending() > 0
    }

    /// Something went wrong mid-exchange: this connection must not be reused.
    pub fn forbid_reuse(&mut self) {
        self.reusable = false;
    }

    /// For an idle pooled connection: did the backend close it (or send something unasked)
    /// meanwhile? Reads once without waiting.
    pub fn closed_while_idle(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll_fill(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(_) => {
                // End of stream, an error, or bytes nobody asked for: all unusable.
                self.reusable = false;
                true
            }
        }
    }

    /// The socket and whatever the backend sent after the `101` head: what a tunnel starts from.
    pub fn into_tunnel(self) -> (S, Bytes) {
        (self.io, self.input.freeze())
    }

    /// Step 1: write the head of `request` (its body framed as [`framing::request_body`] says)
    /// into the output buffer, with the lines of the fields lb adds (`added`) after its own.
    /// Nothing is sent until [`Conn::poll_send`].
    pub fn start(&mut self, head: &RequestHead, added: &[u8], body: RequestBody) -> Sending {
        let has_body = !body.is_end_stream();
        let framing = framing::request_body(&head.fields, body.size_hint().exact(), has_body);
        self.interim = 0;
        self.out.clear();
        let out = &mut self.out.buf;
        out.extend_from_slice(head.method.as_str().as_bytes());
        out.push(b' ');
        let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        // The framing is lb's to write, never the client's: its `Content-Length` (where the
        // client had one, so the head keeps its order) or `Transfer-Encoding: chunked` (last).
        let mut length_written = false;
        for (name, value) in head.fields.iter() {
            if name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(b"transfer-encoding")
            {
                if let (framing::RequestBody::Length(n), false) = (framing, length_written) {
                    write_length(out, n);
                    length_written = true;
                }
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(added);
        match framing {
            framing::RequestBody::Length(n) if !length_written => write_length(out, n),
            framing::RequestBody::Chunked => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
            _ => {}
        }
        out.extend_from_slice(b"\r\n");
        let left = match framing {
            framing::RequestBody::Length(n) => n,
            _ => 0,
        };
        Sending {
            body,
            framing,
            left,
            ended: !has_body,
            held: None,
            taken: false,
        }
    }

    /// Step 2: write the head and the body's frames as they come (a frame that is already here
    /// goes out with the head). Ready once the whole request has been written.
    pub fn poll_send(
        &mut self,
        sending: &mut Sending,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError>> {
        loop {
            // The body's next frame is asked for whenever there is room for it, before writing:
            // a head and the body that came with it leave in one write (one packet, often). One
            // frame at most goes with the head (it is held, in case that first write fails).
            let first_write = self.out.written == 0;
            if !sending.ended && self.out.has_room() && !(first_write && sending.held.is_some()) {
                match Pin::new(&mut sending.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        match frame.data_ref() {
                            Some(data) if first_write => sending.held = Some(data.clone()),
                            _ => sending.taken = true,
                        }
                        if let Err(error) = self.queue_frame(sending, frame) {
                            self.reusable = false;
                            return Poll::Ready(Err(SendError::Client(error.into())));
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(error))) => {
                        self.reusable = false;
                        return Poll::Ready(Err(SendError::Client(error)));
                    }
                    Poll::Ready(None) => {
                        if matches!(sending.framing, framing::RequestBody::Length(_))
                            && sending.left > 0
                        {
                            self.reusable = false;
                            return Poll::Ready(Err(SendError::Client(
                                "request body shorter than its Content-Length".into(),
                            )));
                        }
                        if sending.framing == framing::RequestBody::Chunked {
                            self.out.buf.extend_from_slice(chunked::LAST_CHUNK);
                        }
                        sending.ended = true;
                    }
                    Poll::Pending => {}
                }
            }
            if self.out.pending() > 0 {
                if let Err(error) = ready!(self.out.poll_write(&mut self.io, cx)) {
                    self.reusable = false;
                    return Poll::Ready(Err(SendError::Backend {
                        error: error.into(),
                        written: self.out.written > 0,
                    }));
                }
                if sending.held.take().is_some() {
                    sending.taken = true; // it has left: nothing to hand back any more
                }
                continue; // all written: room for more
            }
            return match sending.ended {
                true => Poll::Ready(Ok(())),
                false => Poll::Pending, // the body's next frame has not come yet
            };
        }
    }

    /// Put one frame of the request body in line to be written, framed.
    fn queue_frame(&mut self, sending: &mut Sending, frame: Frame<Bytes>) -> Result<(), Error> {
        let ended = sending.body.is_end_stream();
        let chunked = sending.framing == framing::RequestBody::Chunked;
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(_trailers) => {
                // The client's trailers end its body; they are not passed on (nor were they by
                // hyper): a backend that merged them into the head could be told anything.
                if chunked {
                    self.out.buf.extend_from_slice(chunked::LAST_CHUNK);
                }
                sending.ended = true;
                return Ok(());
            }
        };
        if chunked {
            if !data.is_empty() {
                chunked::encode_size(data.len(), &mut self.out.buf);
                self.out
                    .queue_data(data, if ended { b"\r\n0\r\n\r\n" } else { b"\r\n" });
            } else if ended {
                self.out.buf.extend_from_slice(chunked::LAST_CHUNK);
            }
        } else {
            let len = data.len() as u64;
            if len > sending.left {
                return Err(Error::Malformed(
                    "request body longer than its Content-Length",
                ));
            }
            sending.left -= len;
            if ended && sending.left > 0 {
                return Err(Error::Malformed(
                    "request body shorter than its Content-Length",
                ));
            }
            self.out.queue_data(data, b"");
        }
        sending.ended = ended;
        Ok(())
    }

    /// Step 3: read the response head. Interim responses (`100 Continue`, `103 Early Hints`) are
    /// read and dropped; a `101` ends the exchange when the request asked for an upgrade.
    pub fn poll_head(&mut self, asked: &Asked, cx: &mut Context<'_>) -> Poll<Result<Head, Error>> {
        loop {
            // Nothing to parse yet (the usual case right after the request went out): read first.
            if !self.input.is_empty() {
                if let Some(head) = self.parse_head(asked) {
                    return Poll::Ready(head);
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    self.reusable = false;
                    return Poll::Ready(Err(if self.input.is_empty() {
                        Error::Closed
                    } else {
                        Error::Malformed("connection closed mid response head")
                    }));
                }
                Ok(_) => {}
                Err(error) => {
                    self.reusable = false;
                    return Poll::Ready(Err(error.into()));
                }
            }
        }
    }

    /// The response head in the input so far, if it is complete (or cannot become a valid one):
    /// `None` means more bytes are needed.
    fn parse_head(&mut self, asked: &Asked) -> Option<Result<Head, Error>> {
        loop {
            let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut []);
            match parser().parse_response_with_uninit_headers(
                &mut response,
                &self.input,
                &mut fields,
            ) {
                Ok(httparse::Status::Complete(len)) => {
                    let code = response.code.unwrap_or_default();
                    let version = response.version;
                    if code == 101 && !asked.upgrade {
                        self.reusable = false;
                        return Some(Err(Error::Malformed(
                            "101 Switching Protocols to a request that asked for no upgrade",
                        )));
                    }
                    if (100..200).contains(&code) && code != 101 {
                        self.interim += len;
                        if self.interim > MAX_INTERIM {
                            self.reusable = false;
                            return Some(Err(Error::Malformed("too many interim responses")));
                        }
                        self.input.advance(len);
                        continue;
                    }
                    // Where each field lies is noted, so that the head's bytes can be split off
                    // and its values be slices of them, without a copy.
                    let spans = locate(&self.input, response.headers);
                    let head = self.take_head(len, code, version, spans, asked);
                    if head.is_err() {
                        self.reusable = false;
                    }
                    return Some(head);
                }
                Ok(httparse::Status::Partial) if self.input.len() > MAX_HEAD => {
                    self.reusable = false;
                    return Some(Err(Error::Malformed("response head too large")));
                }
                Ok(httparse::Status::Partial) => return None,
                Err(httparse::Error::TooManyHeaders) => {
                    self.reusable = false;
                    return Some(Err(Error::Malformed("too many response header fields")));
                }
                Err(_) => {
                    self.reusable = false;
                    return Some(Err(Error::Malformed("malformed response head")));
                }
            }
        }
    }

    /// The first `len` input bytes are a complete head (status `code`, HTTP/1.`version`, its
    /// fields at `spans`): make it a [`Head`]. The header values are slices of the head's bytes,
    /// not copies.
    fn take_head(
        &mut self,
        len: usize,
        code: u16,
        version: Option<u8>,
        spans: Vec<Span>,
        asked: &Asked,
    ) -> Result<Head, Error> {
        let version = match version {
            Some(1) => http::Version::HTTP_11,
            _ => http::Version::HTTP_10,
        };
        let status =
            StatusCode::from_u16(code).map_err(|_| Error::Malformed("invalid status code"))?;
        let fields = Fields::new(self.input.split_to(len).freeze(), spans);
        let framing = framing::response_body(&asked.method, status, version, &fields)?;
        if !framing.reusable || status == StatusCode::SWITCHING_PROTOCOLS {
            self.reusable = false;
        }
        let body = match framing.body {
            Framed::None | Framed::Length(0) => Decoder::Done,
            Framed::Length(n) => Decoder::Length(n),
            Framed::Chunked => Decoder::Chunked(chunked::Decoder::default()),
            Framed::UntilClose => Decoder::UntilClose,
        };
        Ok(Head {
            status,
            version,
            fields,
            body,
        })
    }

    /// Step 4: the next piece of the response body, `None` at its end.
    pub fn poll_body(
        &mut self,
        decoder: &mut Decoder,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            match decoder {
                Decoder::Done => return Poll::Ready(None),
                Decoder::Length(0) => {
                    *decoder = Decoder::Done;
                    return Poll::Ready(None);
                }
                Decoder::Length(left) if !self.input.is_empty() => {
                    let take = self
                        .input
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= take as u64;
                    return Poll::Ready(Some(Ok(Frame::data(self.input.split_to(take).freeze()))));
                }
                Decoder::UntilClose if !self.input.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(self.input.split().freeze()))));
                }
                Decoder::Chunked(chunks) => match chunks.decode(&mut self.input) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(trailers)) => {
                        *decoder = Decoder::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Decoded::End) => {
                        *decoder = Decoder::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(error) => {
                        self.reusable = false;
                        return Poll::Ready(Some(Err(error)));
                    }
                },
                Decoder::Length(_) | Decoder::UntilClose => {}
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if matches!(decoder, Decoder::UntilClose) => {
                    // RFC 9112 §6.3 rule 8: the close is this body's end.
                    self.reusable = false;
                    *decoder = Decoder::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.reusable = false;
                    return Poll::Ready(Some(Err(Error::BodyCut)));
                }
                Ok(_) => {}
                Err(error) => {
                    self.reusable = false;
                    return Poll::Ready(Some(Err(error.into())));
                }
            }
        }
    }

    /// Read more bytes into the input buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.input.capacity() - self.input.len() < READ_SIZE / 4 {
            self.input.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.input)
    }

    /// A whole exchange for a request without a body, for health probes: send it, read the head
    /// (the body is not read; the connection is not reused).
    pub async fn head_only(&mut self, head: &RequestHead) -> Result<Head, Error> {
        let mut sending = self.start(head, b"", RequestBody::empty());
        std::future::poll_fn(|cx| self.poll_send(&mut sending, cx))
            .await
            .map_err(|e| match e {
                SendError::Backend { error, .. } => error,
                SendError::Client(_) => Error::Malformed("empty body failed"),
            })?;
        let asked = Asked {
            method: head.method.clone(),
            upgrade: false,
        };
        let response = std::future::poll_fn(|cx| self.poll_head(&asked, cx)).await?;
        self.reusable = false;
        Ok(response)
    }
}

/// Bytes waiting to be written to a socket, in order: a buffer of small pieces (heads, chunk-size
/// lines, small body pieces copied in), then at most one larger body piece written from where it
/// is (a slice of the other side's read buffer, never copied), then that piece's tail. Both legs
/// write through one: the request lb sends to a backend, the response it sends to a client.
#[derive(Debug, Default)]
pub struct Output {
    pub buf: Vec<u8>,
    at: usize,
    data: Bytes,
    tail: &'static [u8],
    /// Bytes written since [`Output::clear`].
    pub written: u64,
}

impl Output {
    /// Start a new message: nothing pending, nothing written.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.at = 0;
        self.written = 0;
    }

    /// Queue body bytes after the buffer: copied when small, else written from where they are.
    /// Only one large piece waits at a time (see [`Output::has_room`]).
    pub fn queue_data(&mut self, data: Bytes, tail: &'static [u8]) {
        if data.len() < COPY_BELOW || !self.data.is_empty() {
            self.buf.extend_from_slice(&data);
            self.buf.extend_from_slice(tail);
        } else {
            self.data = data;
            self.tail = tail;
        }
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.at + self.data.len() + self.tail.len()
    }

    /// Whether another body piece may be queued before the socket takes what waits: the reader
    /// of a body is only asked for more once the socket keeps up (that is the backpressure).
    pub fn has_room(&self) -> bool {
        self.data.is_empty() && self.pending() < COPY_BELOW
    }

    /// Let go of the buffer's memory (a connection that waits idle keeps none).
    pub fn release(&mut self) {
        if self.pending() == 0 {
            self.buf = Vec::new();
            self.at = 0;
        }
    }

    /// Write everything pending, in as few writes as the socket takes.
    pub fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending() > 0 {
            let pieces = [
                IoSlice::new(&self.buf[self.at..]),
                IoSlice::new(&self.data),
                IoSlice::new(self.tail),
            ];
            let mut n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &pieces))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n as u64;
            let from_buf = n.min(self.buf.len() - self.at);
            self.at += from_buf;
            n -= from_buf;
            let from_data = n.min(self.data.len());
            self.data.advance(from_data);
            n -= from_data;
            self.tail = &self.tail[n.min(self.tail.len())..];
        }
        self.buf.clear();
        self.at = 0;
        // Let go of the last body piece (a slice of the other side's read buffer).
        self.data = Bytes::new();
        self.tail = b"";
        Poll::Ready(Ok(()))
    }
}

/// Where one header field's name and value lie within the bytes of its head.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

/// Where each of `fields` (parsed from `head`) lies in `head`: what [`Fields`] keeps.
fn locate(head: &[u8], fields: &[httparse::Header<'_>]) -> Vec<Span> {
    // Offset and length; a head is far smaller than 4 GiB (`MAX_HEAD`, `--max-header-bytes`).
    let at = |part: &[u8]| {
        let offset = part.as_ptr() as usize - head.as_ptr() as usize;
        (offset as u32, part.len() as u32)
    };
    fields
        .iter()
        .map(|field| Span {
            name: at(field.name.as_bytes()),
            value: at(field.value),
        })
        .collect()
}

/// The part of `bytes` at `(start, len)`, if it lies within.
fn slice(bytes: &Bytes, (at, len): (u32, u32)) -> Option<Bytes> {
    let (at, len) = (at as usize, len as usize);
    (at.checked_add(len)? <= bytes.len()).then(|| bytes.slice(at..at + len))
}

/// `n` in decimal ASCII digits, written into the end of `buf` (no allocation; the framing headers
/// lb writes and the access log's line use it).
pub fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[start..]
}

/// `content-length: N` and its line end.
fn write_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa(n, &mut [0; 20]));
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
