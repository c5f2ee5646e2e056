//! One persistent HTTP/1.1 connection, the unit of work of a worker: open it, send a request,
//! read the whole answer, repeat until the server closes it or something fails.
//!
//! This is deliberately not a pooled, general-purpose client. A load generator wants exactly one
//! connection per worker and nothing between the request and the socket, so it uses hyper's
//! low-level `client::conn::http1` API: `handshake` splits the connection into a `SendRequest`
//! handle and a `Connection` future that does the actual reading and writing. Instead of spawning
//! that future as a task of its own (the usual pattern), [`Conn::send`] polls it together with the
//! request in the worker's task, so one request/response costs no cross-task wake-ups.

use std::error::Error as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::report::ErrorClass;

/// What a worker keeps of a response: the head (status, headers; moving it out of the response
/// allocates nothing) and the number of body bytes, which were read and dropped frame by frame.
#[derive(Debug)]
pub(crate) struct Answer {
    pub head: http::response::Parts,
    pub body_bytes: u64,
}

impl Answer {
    /// True if the server announced that it closes the connection after this response
    /// (RFC 9112 §9.6 `Connection: close`, or an HTTP/1.0 answer without keep-alive).
    pub fn closes_connection(&self) -> bool {
        let close = self
            .head
            .headers
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        close || self.head.version == http::Version::HTTP_10
    }
}

pub(crate) struct Conn {
    sender: SendRequest<Full<Bytes>>,
    conn: Connection<TokioIo<TcpStream>, Full<Bytes>>,
    /// The `Connection` future completed (the server closed or an error ended it); it must not be
    /// polled again, and the connection cannot carry another request.
    done: bool,
}

impl Conn {
    /// Connects with `TCP_NODELAY` on: a request head is one small write, and Nagle's algorithm
    /// would hold it back waiting for an ACK, adding up to 40 ms to a keep-alive request.
    pub async fn open(addr: SocketAddr) -> Result<Conn, ErrorClass> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| classify_io(&e))?;
        stream.set_nodelay(true).map_err(|e| classify_io(&e))?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| classify_hyper(&e))?;
        Ok(Conn {
            sender,
            conn,
            done: false,
        })
    }

    /// True while the connection can carry another request.
    pub fn is_open(&self) -> bool {
        !self.done && !self.sender.is_closed()
    }

    /// Sends one request and reads the whole response body, counting its bytes without keeping
    /// them; gives up with [`ErrorClass::Timeout`] when `deadline` fires. Drives the connection
    /// future in the same task while waiting (see the module doc).
    pub async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
        mut deadline: Pin<&mut Sleep>,
    ) -> Result<Answer, ErrorClass> {
        let Conn { sender, conn, done } = self;
        let exchange = async {
            // `ready` waits until the connection finished the previous exchange; sending before
            // that would fail with "connection not ready".
            sender.ready().await?;
            let response: Response<hyper::body::Incoming> = sender.send_request(req).await?;
            let (head, mut body) = response.into_parts();
            let mut body_bytes = 0u64;
            while let Some(frame) = body.frame().await {
                if let Some(data) = frame?.data_ref() {
                    body_bytes += data.len() as u64;
                }
            }
            Ok::<_, hyper::Error>(Answer { head, body_bytes })
        };
        tokio::pin!(exchange);
        loop {
            tokio::select! {
                biased;
                result = &mut exchange => return result.map_err(|e| classify_hyper(&e)),
                () = deadline.as_mut() => return Err(ErrorClass::Timeout),
                ended = &mut *conn, if !*done => {
                    *done = true;
                    // A clean end (the server closed after answering) still lets the exchange
                    // finish from what was already read; an error ends the request here.
                    if let Err(e) = ended {
                        return Err(classify_hyper(&e));
                    }
                }
            }
        }
    }
}

/// Sorts an I/O error into the classes the report counts.
pub(crate) fn classify_io(e: &io::Error) -> ErrorClass {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => ErrorClass::ConnectRefused,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected => {
            ErrorClass::Reset
        }
        TimedOut => ErrorClass::Timeout,
        InvalidData => ErrorClass::InvalidResponse,
        _ => ErrorClass::Other,
    }
}

/// Sorts a hyper error: parse errors are invalid responses, a connection that ended mid-message
/// is a reset, and an I/O error underneath is classified by its kind.
pub(crate) fn classify_hyper(e: &hyper::Error) -> ErrorClass {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        return ErrorClass::InvalidResponse;
    }
    if e.is_timeout() {
        return ErrorClass::Timeout;
    }
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return classify_io(io);
        }
        source = s.source();
    }
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return ErrorClass::Reset;
    }
    ErrorClass::Other
}
