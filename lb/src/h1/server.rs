//! HTTP/1.1 on the client leg, written out: how lb reads a client's requests and writes its
//! responses. (The backend leg is the rest of `h1`; both share the framing rules and the chunked
//! coding.)
//!
//! One client connection is one [`Client`]: the socket, a read buffer and what waits to be
//! written. The connection's loop (`serve.rs`) drives it, one request at a time:
//!
//! 1. [`Client::poll_head`] reads until a whole request head is in the buffer and parses it
//!    ([`parse`]): a malformed head is refused with 400, one larger than `--max-header-bytes` (or
//!    with more than 100 fields) with 431, and either way the connection closes;
//! 2. [`framing::client_request`] says how the body is delimited (chunked, a length, or none) and
//!    refuses what could be read two ways (RFC 9112 §6.3);
//! 3. the body ([`request_body`]) is read from the same buffer as the proxy asks for it (so a
//!    slow backend slows the client down), after a `100 Continue` if the client waits for one;
//! 4. [`write_response`] writes the response head with lb's own framing (`Content-Length` when the
//!    body's length is known, else chunked, or for an HTTP/1.0 client until the close), then the
//!    body as its frames come;
//! 5. the connection carries another request only if both messages ended exactly, the client did
//!    not ask to close, and nothing in between was ambiguous. Bytes of the next request may already
//!    be in the buffer (pipelining): they are simply the start of step 1.
//!
//! The body and the loop both use the connection, from the same task: it sits behind a mutex
//! that is never contended, and a request without a body never touches it from elsewhere.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{header, response, Method};
use http::{StatusCode, Uri, Version};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::chunked::{self, Decoded};
use super::framing::{self, RequestBody as Framing};
use super::{
    locate, parser, slice, write_length, Error, Fields, Output, RequestHead, MAX_HEADERS, READ_SIZE,
};
use crate::body::{IdleTimer, ReadBody, RequestBody};
use crate::error::BoxError;

/// The longest request target lb takes (the `http` crate's limit, just under 64 KiB).
const MAX_TARGET: u32 = u16::MAX as u32 - 1;

/// The client's interim answer to `Expect: 100-continue` (RFC 9110 §10.1.1).
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The first line of HTTP/2's connection preface: a client that tries HTTP/2 with prior knowledge.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Why a request head was refused before it became a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a valid HTTP/1.x request head: 400.
    Malformed(&'static str),
    /// Larger than `--max-header-bytes`, or more fields than lb takes: 431.
    TooLarge,
    /// A request target longer than lb takes (64 KiB; only a `--max-header-bytes` above that lets
    /// one through to here): 414.
    UriTooLong,
    /// The HTTP/2 preface: lb speaks HTTP/1.1 only, and closes without an answer.
    Http2,
    /// The client closed the connection in the middle of a head.
    Cut,
}

impl Refused {
    /// The status lb answers with, if any.
    pub fn status(self) -> Option<StatusCode> {
        match self {
            Refused::Malformed(_) => Some(StatusCode::BAD_REQUEST),
            Refused::TooLarge => Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            Refused::UriTooLong => Some(StatusCode::URI_TOO_LONG),
            Refused::Http2 | Refused::Cut => None,
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Malformed(why) => write!(f, "malformed request head: {why}"),
            Refused::TooLarge => f.write_str("request head too large"),
            Refused::UriTooLong => f.write_str("request target too long"),
            Refused::Http2 => f.write_str("HTTP/2 preface (lb speaks HTTP/1.1)"),
            Refused::Cut => f.write_str("connection closed mid request head"),
        }
    }
}

/// A request head, parsed: what the request path gets, and what the connection needs to know.
#[derive(Debug)]
pub struct Parsed {
    pub head: RequestHead,
    pub body: Framing,
    /// The client expects the connection to stay open (RFC 9112 §9.3) and nothing rules it out.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before it sends its body.
    pub expect_continue: bool,
}

/// Parse the request head at the front of `input`, if it is all there, taking its bytes out; the
/// header values are slices of those bytes, not copies. `max` is `--max-header-bytes`.
pub fn parse(input: &mut BytesMut, max: usize) -> Result<Option<Parsed>, Refused> {
    let preface = input.len().min(HTTP2_PREFACE.len());
    if input[..preface] == HTTP2_PREFACE[..preface] {
        return match preface == HTTP2_PREFACE.len() {
            true => Err(Refused::Http2),
            false => Ok(None),
        };
    }
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match parser().parse_request_with_uninit_headers(&mut request, input, &mut fields) {
        Ok(httparse::Status::Complete(len)) if len <= max => len,
        Ok(httparse::Status::Complete(_)) => return Err(Refused::TooLarge),
        Ok(httparse::Status::Partial) if input.len() > max => return Err(Refused::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refused::TooLarge),
        Err(httparse::Error::Version) => return Err(Refused::Malformed("unknown HTTP version")),
        Err(_) => return Err(Refused::Malformed("not an HTTP/1.1 request head")),
    };
    let method = Method::from_bytes(request.method.unwrap_or_default().as_bytes())
        .map_err(|_| Refused::Malformed("invalid method"))?;
    let version = match request.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let target = request.path.unwrap_or_default().as_bytes();
    let target = (
        (target.as_ptr() as usize - input.as_ptr() as usize) as u32,
        target.len() as u32,
    );
    let spans = locate(input, request.headers);
    // The head's bytes leave the buffer; the target and the header values are slices of them.
    if target.1 > MAX_TARGET {
        return Err(Refused::UriTooLong);
    }
    let bytes = input.split_to(len).freeze();
    let uri = slice(&bytes, target)
        .and_then(|target| Uri::from_maybe_shared(target).ok())
        .ok_or(Refused::Malformed("invalid target"))?;
    let mut fields = Fields::new(bytes, spans);
    let (body, close_after) =
        framing::client_request(version, &mut fields).map_err(|e| match e {
            Error::Malformed(why) => Refused::Malformed(why),
            _ => Refused::Malformed("invalid framing"),
        })?;
    let keep_alive = framing::keeps_alive(version, &fields) && !close_after;
    let expect_continue = version == Version::HTTP_11
        && body != Framing::None
        && body != Framing::Length(0)
        && fields
            .get(&header::EXPECT)
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    let head = RequestHead {
        method,
        uri,
        version,
        fields,
    };
    Ok(Some(Parsed {
        head,
        body,
        keep_alive,
        expect_continue,
    }))
}

/// One client connection: the socket and its buffers, and the state of the request body being
/// read.
#[derive(Debug)]
pub struct Client<S> {
    io: S,
    /// Bytes received and not yet used: the rest of a head, body bytes, the next request.
    input: BytesMut,
    out: Output,
    /// The current request's body, as far as it has been read.
    body: BodyState,
    /// The client waits for `100 Continue`: sent when the body is first asked for.
    expect_continue: bool,
    /// A `100 Continue` is queued and not yet flushed.
    continue_queued: bool,
    /// The client has closed its side (end of stream read): only what is buffered remains.
    eof: bool,
}

/// Where the request body being read is.
#[derive(Debug)]
enum BodyState {
    /// Read to its end (or there was none).
    Done,
    /// This many bytes still to come.
    Length(u64),
    Chunked(chunked::Decoder),
    /// Malformed or cut: the connection cannot carry another request.
    Broken,
}

/// The connection as the loop and the request body share it.
pub type Shared<S> = Arc<Mutex<Client<S>>>;

/// The connection is only ever used by its own task, one call at a time: a panic cannot have
/// left it half-updated in a way a later call would trip over, so poisoning is ignored.
pub fn lock<S>(client: &Mutex<Client<S>>) -> MutexGuard<'_, Client<S>> {
    client
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(io: S) -> Self {
        Client {
            io,
            input: BytesMut::new(),
            out: Output::default(),
            body: BodyState::Done,
            expect_continue: false,
            continue_queued: false,
            eof: false,
        }
    }

    /// Bytes of a next request are already here. (Empty lines between requests do not count:
    /// RFC 9112 §2.2 lets old clients send one after a body, and a server ignore it.)
    pub fn has_input(&mut self) -> bool {
        let blank = self
            .input
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        self.input.advance(blank);
        !self.input.is_empty()
    }

    /// The request body has been read to its end (or there was none).
    pub fn body_done(&self) -> bool {
        matches!(self.body, BodyState::Done)
    }

    /// Closing now could lose the response: the client may still be sending (a body not read, a
    /// request refused), and unread bytes make the kernel answer with a reset.
    pub fn needs_lingering(&self) -> bool {
        !self.eof && (!self.body_done() || !self.input.is_empty())
    }

    /// Let go of the buffers while the connection waits idle (parking): only the socket is kept.
    pub fn release(&mut self) {
        if self.input.is_empty() {
            self.input = BytesMut::new();
        }
        self.out.release();
    }

    /// The socket, and whatever the client sent after its head: what a tunnel starts from.
    pub fn into_tunnel(self) -> (S, Bytes) {
        (self.io, self.input.freeze())
    }

    /// Step 1: read until a whole request head is buffered, and parse it. `Ok(None)`: the client
    /// closed the connection between requests. `arrived` is called for each read that brings
    /// bytes (the watchdog's head timer starts at the first).
    pub fn poll_head(
        &mut self,
        max: usize,
        arrived: &dyn Fn(),
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Parsed>, Refused>> {
        loop {
            if !self.input.is_empty() {
                if let Some(parsed) = parse(&mut self.input, max)? {
                    self.body = match parsed.body {
                        Framing::None | Framing::Length(0) => BodyState::Done,
                        Framing::Length(n) => BodyState::Length(n),
                        Framing::Chunked => BodyState::Chunked(chunked::Decoder::default()),
                    };
                    self.expect_continue = parsed.expect_continue;
                    return Poll::Ready(Ok(Some(parsed)));
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if self.input.is_empty() => return Poll::Ready(Ok(None)),
                Ok(0) => return Poll::Ready(Err(Refused::Cut)),
                Ok(_) => arrived(),
                Err(_) => return Poll::Ready(Err(Refused::Cut)),
            }
        }
    }

    /// Read more bytes; `Ok(0)` at the end of the stream. A connection that let go of its buffer
    /// (parked) reads into a small one on the stack first, and takes a buffer only once bytes came.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.eof {
            return Poll::Ready(Ok(0));
        }
        let n = if self.input.capacity() == 0 {
            // Not zeroed first: the read fills what it reports.
            let mut first = [MaybeUninit::<u8>::uninit(); 512];
            let mut buf = ReadBuf::uninit(&mut first);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            self.input.extend_from_slice(buf.filled());
            buf.filled().len()
        } else {
            if self.input.capacity() - self.input.len() < READ_SIZE / 8 {
                self.input.reserve(READ_SIZE);
            }
            ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.io),
                cx,
                &mut self.input
            ))?
        };
        self.eof = n == 0;
        Poll::Ready(Ok(n))
    }

    /// Step 3: the next piece of the request body, `None` at its end.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            match &mut self.body {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Broken => return Poll::Ready(Some(Err(Error::BodyCut))),
                BodyState::Length(left) if !self.input.is_empty() => {
                    let take = self
                        .input
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= take as u64;
                    if *left == 0 {
                        self.body = BodyState::Done;
                    }
                    self.expect_continue = false; // the body is coming anyway
                    return Poll::Ready(Some(Ok(Frame::data(self.input.split_to(take).freeze()))));
                }
                BodyState::Length(_) => {}
                BodyState::Chunked(chunks) => match chunks.decode(&mut self.input) {
                    Ok(Decoded::Data(data)) => {
                        self.expect_continue = false;
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Decoded::Trailers(trailers)) => {
                        self.body = BodyState::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Decoded::End) => {
                        self.body = BodyState::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(error) => {
                        self.body = BodyState::Broken;
                        return Poll::Ready(Some(Err(error)));
                    }
                },
            }
            // The client sends its body once told to go on: that goes out before we wait.
            if std::mem::take(&mut self.expect_continue) {
                self.out.buf.extend_from_slice(CONTINUE);
                self.continue_queued = true;
            }
            if self.continue_queued {
                if let Err(error) = ready!(self.poll_write(cx)) {
                    self.body = BodyState::Broken;
                    return Poll::Ready(Some(Err(error.into())));
                }
                self.continue_queued = false;
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    self.body = BodyState::Broken;
                    return Poll::Ready(Some(Err(Error::BodyCut)));
                }
                Ok(_) => {}
                Err(error) => {
                    self.body = BodyState::Broken;
                    return Poll::Ready(Some(Err(error.into())));
                }
            }
        }
    }

    /// While the request is being answered: has the client gone (closed the connection with
    /// nothing left to answer, or failed)? Bytes that arrive meanwhile (a pipelined request) are
    /// kept for later, up to `max`; past that the client waits (and a close is only noticed
    /// after the answer). A client that sent its requests and then closed its side is still
    /// answered, request by request.
    pub fn poll_closed(&mut self, max: usize, cx: &mut Context<'_>) -> Poll<()> {
        while self.body_done() && !self.eof && self.input.len() <= max {
            match ready!(self.poll_fill(cx)) {
                Ok(0) if self.input.is_empty() => return Poll::Ready(()),
                Ok(_) => {}
                Err(_) => return Poll::Ready(()),
            }
        }
        Poll::Pending
    }

    /// After the connection's end was sent: read and drop what the client still sends, until it
    /// closes too, so that unread bytes do not make the kernel reset the connection (and destroy
    /// the response on its way: RFC 9112 §9.6). The caller bounds it in time.
    pub fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut scratch = [0u8; 512];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
                Ok(()) if !buf.filled().is_empty() => {}
                _ => return Poll::Ready(()),
            }
        }
    }

    /// After the answer: whether the request body was read to its end. What is left of it is
    /// skipped if it is already here (as hyper does); a body still on its way is not waited for
    /// (the connection then closes).
    pub fn finish_body(&mut self) -> bool {
        self.expect_continue = false;
        loop {
            match &mut self.body {
                BodyState::Done => return true,
                BodyState::Broken => return false,
                BodyState::Length(left) => {
                    if (self.input.len() as u64) < *left {
                        return false;
                    }
                    self.input.advance(*left as usize);
                    self.body = BodyState::Done;
                }
                BodyState::Chunked(chunks) => match chunks.decode(&mut self.input) {
                    Ok(Decoded::Data(_)) => {}
                    Ok(Decoded::End | Decoded::Trailers(_)) => self.body = BodyState::Done,
                    Ok(Decoded::NeedMore) | Err(_) => return false,
                },
            }
        }
    }

    /// Step 4: queue the response head, framed as the body and the client allow.
    fn start_response(
        &mut self,
        head: &ResponseHead,
        exact: Option<u64>,
        asked: &Asked,
    ) -> Writing {
        let parts = head.parts;
        // A `100 Continue` not sent yet never will be: the answer is final.
        self.expect_continue = false;
        // A request body nobody reads any more is skipped if it is all here; one still arriving
        // (or still being sent on to a backend that answered early) means this response is the
        // connection's last, and says so.
        let body_done = match asked.body_unclaimed {
            true => self.finish_body(),
            false => self.body_done(),
        };
        let status = parts.status;
        let switching = status == StatusCode::SWITCHING_PROTOCOLS;
        let bodiless = asked.method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let mut keep_alive =
            asked.keep_alive && body_done && framing::keeps_alive(Version::HTTP_11, &parts.headers);
        let body = if bodiless {
            Out::None
        } else if let Some(n) = exact {
            Out::Length(n)
        } else if asked.version == Version::HTTP_11 {
            Out::Chunked
        } else {
            keep_alive = false; // an HTTP/1.0 client learns where the body ends from the close
            Out::UntilClose
        };
        let out = &mut self.out.buf;
        write_status_line(out, status);
        // The framing and the connection's fate are lb's to say (a `101` keeps its
        // `Connection: upgrade`; a response to HEAD keeps the length it would have had). lb's
        // `Content-Length` goes where the backend had one, so the head keeps its order.
        let own = parts.headers.iter();
        let own = own.map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()));
        let (mut length_written, mut has_length, mut has_date) = (false, false, false);
        for (name, value) in own.chain(head.fields.iter()) {
            if name.eq_ignore_ascii_case(b"content-length") {
                has_length = true;
                if asked.method != Method::HEAD {
                    if let (Out::Length(n), false) = (body, length_written) {
                        write_length(out, n);
                        length_written = true;
                    }
                    continue;
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding")
                || (!switching && name.eq_ignore_ascii_case(b"connection"))
            {
                continue;
            }
            has_date |= name.eq_ignore_ascii_case(b"date");
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(head.added);
        if !has_date {
            // RFC 9110 §6.6.1: a server with a clock sends Date (backends usually did already).
            out.extend_from_slice(b"date: ");
            write_date(out);
            out.extend_from_slice(b"\r\n");
        }
        match body {
            Out::Length(n) if !length_written => write_length(out, n),
            Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            // A HEAD answer lb wrote itself says how long its GET answer would be (RFC 9110
            // §9.3.2); a backend's says what the backend said (its body, unread, counts as 0).
            Out::None if asked.method == Method::HEAD && !has_length => {
                if let Some(n) = exact.filter(|&n| n > 0) {
                    write_length(out, n);
                }
            }
            _ => {}
        }
        if !switching {
            if !keep_alive {
                out.extend_from_slice(b"connection: close\r\n");
            } else if asked.version == Version::HTTP_10 {
                out.extend_from_slice(b"connection: keep-alive\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
        Writing {
            body,
            keep_alive,
            ended: matches!(body, Out::None | Out::Length(0)),
        }
    }

    /// Queue one frame of the response body, framed.
    fn queue_frame(&mut self, writing: &mut Writing, frame: Frame<Bytes>) -> Result<(), Error> {
        // Trailers are not passed on (a client must ask for them, and few can use them).
        let Ok(data) = frame.into_data() else {
            return Ok(());
        };
        match &mut writing.body {
            Out::None => {}
            Out::Length(left) => {
                if data.len() as u64 > *left {
                    return Err(Error::Malformed("response body longer than its length"));
                }
                *left -= data.len() as u64;
                self.out.queue_data(data, b"");
            }
            Out::Chunked if data.is_empty() => {}
            Out::Chunked => {
                chunked::encode_size(data.len(), &mut self.out.buf);
                self.out.queue_data(data, b"\r\n");
            }
            Out::UntilClose => self.out.queue_data(data, b""),
        }
        Ok(())
    }

    /// The response body has ended: close its framing.
    fn end_response(&mut self, writing: &mut Writing) -> Result<(), Error> {
        writing.ended = true;
        match writing.body {
            Out::Chunked => self.out.buf.extend_from_slice(chunked::LAST_CHUNK),
            Out::Length(left) if left > 0 => {
                return Err(Error::Malformed("response body shorter than its length"))
            }
            _ => {}
        }
        Ok(())
    }

    /// Write what is queued, and flush.
    pub fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.out.poll_write(&mut self.io, cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Queue a response lb makes up itself for a head it refused (400, 431): status, no body,
    /// close. [`Client::poll_write`] sends it.
    pub fn refuse(&mut self, status: StatusCode) {
        self.out.clear();
        let out = &mut self.out.buf;
        write_status_line(out, status);
        out.extend_from_slice(b"content-length: 0\r\nconnection: close\r\n\r\n");
    }

    /// Close the connection in order: what is queued goes out first, then the end of the stream.
    pub fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// `HTTP/1.1 200 OK` and its line end: lb answers every client in HTTP/1.1 (RFC 9110 §6.2: a
/// server sends its own version; an HTTP/1.0 client still gets no chunked body, see
/// [`Client::start_response`]).
fn write_status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The current time as an HTTP date, formatted once a second per thread.
fn write_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let second = crate::clock::unix_ms() / 1000;
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            let now = std::time::UNIX_EPOCH + Duration::from_secs(second);
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// What the request was, as far as writing its response is concerned.
#[derive(Debug, Clone)]
pub struct Asked {
    pub method: Method,
    pub version: Version,
    /// The connection may carry another request after this one (the client's wish, and lb's).
    pub keep_alive: bool,
    /// Nothing reads the request body any more (no backend is being sent the rest of it).
    pub body_unclaimed: bool,
}

/// How a response body goes out, and how far it is.
#[derive(Debug)]
struct Writing {
    body: Out,
    keep_alive: bool,
    ended: bool,
}

/// How lb frames a response body for the client.
#[derive(Debug, Clone, Copy)]
enum Out {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// This many bytes still to come.
    Length(u64),
    Chunked,
    /// Everything until lb closes the connection (HTTP/1.0 clients, length unknown).
    UntilClose,
}

/// How writing a response ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Whole; the connection may carry another request if `true`.
    Whole(bool),
    /// The body failed on its way (the backend broke off): the client got a head and part of
    /// the body, and the connection must close so that it sees the body cut.
    Cut,
}

/// A response head as lb writes it to a client: the status and lb's own header map (`parts`),
/// then a backend's fields as they arrived and the lines lb adds to them (both empty for an
/// answer lb wrote itself).
pub struct ResponseHead<'a> {
    pub parts: &'a response::Parts,
    pub fields: &'a Fields,
    pub added: &'a [u8],
}

/// Step 4: write `head` and `body` to the client, the body frame by frame as it comes, never
/// asking for the next frame before the socket took the last one (backpressure). A client that
/// goes away while the body is slow to come is noticed (`max`: as in [`Client::poll_closed`]); one
/// that stays but takes no byte for `stall` (`--body-timeout`, nginx's `send_timeout`) is given up
/// on, so that it cannot hold the connection, and the backend's, forever.
pub async fn write_response<S, B>(
    client: &Mutex<Client<S>>,
    head: ResponseHead<'_>,
    body: &mut B,
    asked: &Asked,
    max: usize,
    stall: Duration,
) -> io::Result<Written>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let mut writing = lock(client).start_response(&head, body.size_hint().exact(), asked);
    // The body broke off: what is queued (perhaps the head itself) still goes out first.
    let mut cut = false;
    let mut stalled = IdleTimer::new(stall);
    let mut written = lock(client).out.written;
    poll_fn(|cx| loop {
        if !writing.ended && !cut && lock(client).out.has_room() {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    cut = lock(client).queue_frame(&mut writing, frame).is_err();
                    continue;
                }
                Poll::Ready(None) => {
                    cut = lock(client).end_response(&mut writing).is_err();
                    continue;
                }
                Poll::Ready(Some(Err(_))) => {
                    cut = true;
                    continue;
                }
                Poll::Pending => {}
            }
        }
        let mut guard = lock(client);
        if guard.out.pending() > 0 || writing.ended || cut {
            let polled = guard.poll_write(cx);
            if guard.out.written != written {
                written = guard.out.written;
                stalled.progress();
            }
            if polled.is_pending() && stalled.poll_expired(cx) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client took no byte of the response for --body-timeout",
                )));
            }
            ready!(polled)?;
            if cut {
                return Poll::Ready(Ok(Written::Cut));
            }
            if writing.ended {
                return Poll::Ready(Ok(Written::Whole(writing.keep_alive)));
            }
            continue;
        }
        // Waiting for the body: is anyone still there to receive it?
        if guard.poll_closed(max, cx).is_ready() {
            return Poll::Ready(Ok(Written::Cut));
        }
        return Poll::Pending;
    })
    .await
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> ReadBody for Client<S> {
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        Client::poll_body(self, cx)
    }
}

/// The body of the request just parsed on `client`, framed as `framing`, as the request path
/// reads it (`--body-timeout` is `idle`).
pub fn request_body<S>(client: &Shared<S>, framing: Framing, idle: Duration) -> RequestBody
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match framing {
        Framing::None | Framing::Length(0) => RequestBody::empty(),
        Framing::Length(n) => RequestBody::from_client(client.clone(), Some(n), idle),
        Framing::Chunked => RequestBody::from_client(client.clone(), None, idle),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &str) -> Result<Option<Parsed>, Refused> {
        parse(&mut BytesMut::from(head.as_bytes()), 16 * 1024)
    }

    fn status(head: &str) -> Option<StatusCode> {
        parsed(head).err().and_then(Refused::status)
    }

    #[test]
    fn a_head_is_parsed_once_it_is_whole() {
        let mut input = BytesMut::from(&b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n"[..]);
        assert!(parse(&mut input, 1024).unwrap().is_none());
        input.extend_from_slice(b"\r\nGET /next");
        let head = parse(&mut input, 1024).unwrap().unwrap();
        assert_eq!(head.head.method, Method::GET);
        assert_eq!(head.head.uri, "/a?b=1");
        assert_eq!(head.head.version, Version::HTTP_11);
        assert_eq!(head.head.fields.get_str(&header::HOST), Some("x"));
        assert_eq!(head.body, Framing::None);
        assert!(head.keep_alive);
        // The next request's first bytes stay in the buffer.
        assert_eq!(&input[..], b"GET /next");
    }

    /// RFC 9112 §3: a request line is method, target, version; anything else is 400.
    #[test]
    fn malformed_heads_are_400() {
        for head in [
            "GARBAGE\r\n\r\n",
            "GET /\r\n\r\n",
            "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
            "GET / http/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.2\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3,2\r\n\r\n",
        ] {
            assert_eq!(status(head), Some(StatusCode::BAD_REQUEST), "{head:?}");
        }
    }

    #[test]
    fn oversized_heads_are_431() {
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert_eq!(
            status(&long),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        // Still arriving, already too long.
        assert_eq!(
            status(&long[..18_000]),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
    }

    /// A target too long to keep is 414 URI Too Long (RFC 9110 §15.5.15), not a generic 400.
    #[test]
    fn an_overlong_target_is_414() {
        let head = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
        let refused = parse(&mut BytesMut::from(head.as_bytes()), 128 * 1024).unwrap_err();
        assert_eq!(refused.status(), Some(StatusCode::URI_TOO_LONG));
        let fits = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(60_000));
        assert!(parse(&mut BytesMut::from(fits.as_bytes()), 128 * 1024).is_ok());
    }

    #[test]
    fn the_http2_preface_is_recognised() {
        assert_eq!(
            parsed("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap_err(),
            Refused::Http2
        );
        assert!(parsed("PRI * HT").unwrap().is_none());
    }

    /// RFC 9112 §2.2: a bare LF may end a line.
    #[test]
    fn bare_line_feeds_are_accepted() {
        let head = parsed("GET /lf HTTP/1.1\nHost: x\n\n").unwrap().unwrap();
        assert_eq!(head.head.uri, "/lf");
    }

    /// RFC 9112 §9.3.
    #[test]
    fn persistence_follows_the_version_and_connection() {
        let keep = |head: &str| parsed(head).unwrap().unwrap().keep_alive;
        assert!(keep("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!keep(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        // Both framings: the connection closes after this request.
        assert!(!keep(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
    }

    #[test]
    fn expect_continue_only_matters_with_a_body() {
        let expects = |head: &str| parsed(head).unwrap().unwrap().expect_continue;
        assert!(expects(
            "PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        ));
        assert!(!expects(
            "GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n"
        ));
        assert!(!expects(
            "PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        ));
    }
}
