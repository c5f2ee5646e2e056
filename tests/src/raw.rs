//! [`RawClient`]: an HTTP/1.1 client on a blocking socket that writes exactly the bytes it is
//! given and parses what comes back itself, so that a test sees the framing the server really
//! produced. For tests where the bytes on the wire are the point: malformed and smuggling
//! requests, pipelining, keep-alive and `Connection: close`, truncated and bodiless responses,
//! slow heads (slowloris). Everything else uses reqwest ([`crate::http`]).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::PATIENCE;

/// One response as the client received it.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Fields in the order received, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended where its framing said (false: the connection closed first).
    pub complete: bool,
    /// Trailer fields after a chunked body.
    pub trailers: Vec<(String, String)>,
}

impl RawResponse {
    /// The first value of field `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: the body is not JSON: {:?}", self.text()))
    }
}

/// A raw HTTP/1.1 client connection.
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    /// Bytes received and not yet parsed.
    buf: Vec<u8>,
    eof: bool,
    /// The connection ended with a reset rather than a clean close.
    reset: bool,
    /// How long one read may block before the test fails.
    pub patience: Duration,
}

/// Why reading stopped.
#[derive(Debug, PartialEq, Eq)]
enum Fill {
    Data,
    Eof,
    TimedOut,
}

impl RawClient {
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = match TcpStream::connect_timeout(&addr, PATIENCE) {
            Ok(stream) => stream,
            Err(e) => panic!("connect to {addr}: {e}"),
        };
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            buf: Vec::new(),
            eof: false,
            reset: false,
            patience: PATIENCE,
        }
    }

    /// Write `bytes`. A write can fail when the server has already answered and closed; the
    /// reads tell the story, so the error is ignored.
    pub fn send(&mut self, bytes: &[u8]) -> &mut Self {
        let _ = self.stream.write_all(bytes);
        self
    }

    /// `GET path` (with `Host: lb.test`, keep-alive), then its final response.
    #[track_caller]
    pub fn get(&mut self, path: &str) -> RawResponse {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: lb.test\r\n\r\n").as_bytes());
        match self.response(false) {
            Some(response) => response,
            None => panic!("the connection was closed instead of answering GET {path}"),
        }
    }

    fn fill(&mut self, wait: Duration) -> Fill {
        if self.eof {
            return Fill::Eof;
        }
        self.stream
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .unwrap();
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                Fill::Eof
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Fill::Data
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Fill::TimedOut
            }
            // A reset is a close as far as reading goes.
            Err(_) => {
                self.eof = true;
                self.reset = true;
                Fill::Eof
            }
        }
    }

    /// Make sure `n` bytes are buffered; false if the connection closed first. Fails the test
    /// if nothing arrives for [`patience`](RawClient::patience).
    fn need(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            match self.fill(self.patience) {
                Fill::Data => {}
                Fill::Eof => return false,
                Fill::TimedOut => panic!(
                    "nothing received for {:?}; received so far and not parsed: {:?}",
                    self.patience,
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
        true
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                self.buf.drain(..at + 2);
                return Some(line);
            }
            let more = self.buf.len() + 1;
            if !self.need(more) {
                return None;
            }
        }
    }

    /// The next response head, leaving its body unread; `None` if the connection closed before
    /// a byte of it.
    pub fn head(&mut self) -> Option<RawResponse> {
        let status_line = self.line()?;
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP/1.x status line: {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self
                .line()
                .unwrap_or_else(|| panic!("closed in the middle of a response head"));
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {line:?}"));
            headers.push((name.to_string(), value.trim().to_string()));
        }
        Some(RawResponse {
            status,
            headers,
            body: Vec::new(),
            complete: true,
            trailers: Vec::new(),
        })
    }

    /// The next response, interim (1xx) ones included; `None` if the connection closed before
    /// one. `to_head`: the request was HEAD, so the response has no body whatever its headers say.
    pub fn any_response(&mut self, to_head: bool) -> Option<RawResponse> {
        let mut response = self.head()?;
        if to_head || matches!(response.status, 100..=199 | 204 | 304) {
            return Some(response);
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
        let length = response.header("content-length").map(|l| {
            l.parse::<usize>()
                .unwrap_or_else(|_| panic!("bad Content-Length {l:?}"))
        });
        if chunked {
            response.complete = self.chunked(&mut response.body, &mut response.trailers);
        } else if let Some(n) = length {
            response.complete = self.need(n);
            let take = n.min(self.buf.len());
            response.body = self.buf.drain(..take).collect();
        } else {
            // Delimited by the connection closing (RFC 9112 §6.3 item 8).
            while self.need(self.buf.len() + 1) {}
            response.body = std::mem::take(&mut self.buf);
        }
        Some(response)
    }

    fn chunked(&mut self, body: &mut Vec<u8>, trailers: &mut Vec<(String, String)>) -> bool {
        loop {
            let Some(size_line) = self.line() else {
                return false;
            };
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
            if size == 0 {
                loop {
                    match self.line() {
                        None => return false,
                        Some(l) if l.is_empty() => return true,
                        Some(l) => {
                            if let Some((n, v)) = l.split_once(':') {
                                trailers.push((n.to_string(), v.trim().to_string()));
                            }
                        }
                    }
                }
            }
            if !self.need(size + 2) {
                body.append(&mut self.buf);
                return false;
            }
            body.extend(self.buf.drain(..size));
            assert_eq!(&self.buf[..2], b"\r\n", "chunk data not followed by CRLF");
            self.buf.drain(..2);
        }
    }

    /// The next final response (skipping 1xx); `None` if the connection closed before one.
    pub fn response(&mut self, to_head: bool) -> Option<RawResponse> {
        loop {
            let response = self.any_response(to_head)?;
            if response.status >= 200 {
                return Some(response);
            }
        }
    }

    /// The next final response to a request that was not HEAD; fails the test if the
    /// connection closed instead.
    #[track_caller]
    pub fn read_response(&mut self) -> RawResponse {
        match self.response(false) {
            Some(response) => response,
            None => panic!("the connection was closed instead of answering"),
        }
    }

    /// Does the server close the connection within `timeout`, sending nothing more? Bytes that
    /// do arrive are kept for the next read.
    pub fn closes_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            match self.fill(left) {
                Fill::Eof => return true,
                Fill::TimedOut => return false,
                Fill::Data => {}
            }
        }
    }

    /// Everything that arrives (after what is already buffered) until the server closes the
    /// connection, and whether it ended with a reset rather than a clean close. Fails the test
    /// if the connection is still open after `limit`.
    pub fn read_until_closed(&mut self, limit: Duration) -> (Vec<u8>, bool) {
        assert!(
            self.closes_within(limit),
            "the connection is still open after {limit:?}"
        );
        (std::mem::take(&mut self.buf), self.reset)
    }

    /// Bytes received and not yet parsed into a response.
    pub fn unread(&self) -> &[u8] {
        &self.buf
    }

    /// The socket itself, for what follows HTTP on it (a tunnel after `101`); take
    /// [`RawClient::unread`] first.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}
