//! One persistent HTTP/1.1 connection, the unit of work of a worker: open it, send a request,
//! read the whole answer, repeat until the server closes it or something fails.
//!
//! This is deliberately not a pooled, general-purpose client. A load generator wants exactly one
//! connection per worker and nothing between the request and the socket, so it uses hyper's
//! low-level `client::conn::http1` API: `handshake` splits the connection into a `SendRequest`
//! handle and a `Connection` future that does the actual reading and writing. Instead of spawning
//! that future as a task of its own (the usual pattern), [`Conn::send`] polls it together with the
//! request in the worker's task, so one request/response costs no cross-task wake-ups, and
//! through a [`Relay`] waker, so the two halves waking each other costs no extra task polls either.
//!
//! For an `https://` target the socket is wrapped in TLS before hyper sees it ([`Stream`]); the
//! handshake's duration is handed back with the connection, for the report's own block.

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::failure::{classify_hyper, classify_io, ErrorClass};
use crate::tls::{describe_handshake_error, Stream, Tls};

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
    conn: Connection<TokioIo<Stream>, Full<Bytes>>,
    /// The `Connection` future completed (the server closed or an error ended it); it must not be
    /// polled again, and the connection cannot carry another request.
    done: bool,
    /// The waker the request and the connection are polled with (see [`Relay`]).
    relay: Arc<Relay>,
    relay_waker: Waker,
}

/// How many times [`Conn::send`] re-polls within one wake-up before it yields to the runtime.
/// Two rounds cover a whole exchange (send, then head and body); the bound keeps a future that
/// wakes itself on every poll (tokio's cooperative budget does that when it runs out) from
/// spinning here instead of yielding.
const MAX_ROUNDS: usize = 4;

/// A waker between the worker's task and the two halves of the hyper connection.
///
/// `SendRequest` and `Connection` talk through channels, and each message wakes the other side:
/// queueing the request wakes the connection, a parsed response head or body frame wakes the
/// request. Both sides are polled by the same task, so with the task's own waker every one of
/// these messages would schedule the task again, to be polled once more by the runtime only to
/// find what the same poll could have seen (4 task polls per request where 2 do). The relay
/// records such a wake-up while the task is inside [`Conn::send`]'s poll, which then simply polls
/// again; a wake-up from outside (the socket became readable, the timer fired) is passed on to
/// the task.
struct Relay {
    /// True while `Conn::send` is polling: wake-ups are recorded, not passed on.
    polling: AtomicBool,
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            let task = self.task.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(task) = task.as_ref() {
                task.wake_by_ref();
            }
        }
    }
}

/// Why a connection could not be opened: the class the report counts, and for a failed TLS
/// handshake a sentence saying why (the report shows the first one).
#[derive(Debug)]
pub(crate) struct OpenError {
    pub class: ErrorClass,
    pub tls: Option<String>,
}

impl From<ErrorClass> for OpenError {
    fn from(class: ErrorClass) -> Self {
        OpenError { class, tls: None }
    }
}

impl Conn {
    /// Connects with `TCP_NODELAY` on: a request head is one small write, and Nagle's algorithm
    /// would hold it back waiting for an ACK, adding up to 40 ms to a keep-alive request. With
    /// `tls`, the TLS handshake follows, and its duration comes back with the connection.
    pub async fn open(
        addr: SocketAddr,
        tls: Option<&Tls>,
    ) -> Result<(Conn, Option<Duration>), OpenError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| classify_io(&e))?;
        tcp.set_nodelay(true).map_err(|e| classify_io(&e))?;
        let (stream, handshake) = match tls {
            None => (Stream::Plain(tcp), None),
            Some(tls) => {
                let started = Instant::now();
                let stream = tls.connect(tcp).await.map_err(|e| OpenError {
                    class: ErrorClass::Tls,
                    tls: Some(describe_handshake_error(&e)),
                })?;
                (stream, Some(started.elapsed()))
            }
        };
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| classify_hyper(&e))?;
        let relay = Arc::new(Relay {
            polling: AtomicBool::new(false),
            woken: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        let conn = Conn {
            sender,
            conn,
            done: false,
            relay_waker: Waker::from(relay.clone()),
            relay,
        };
        Ok((conn, handshake))
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
        let Conn {
            sender,
            conn,
            done,
            relay,
            relay_waker,
        } = self;
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
        std::future::poll_fn(|cx| {
            {
                let mut task = relay.task.lock().unwrap_or_else(|p| p.into_inner());
                if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                    *task = Some(cx.waker().clone());
                }
            }
            relay.polling.store(true, Ordering::SeqCst);
            let mut inner = Context::from_waker(relay_waker);
            let mut result = Poll::Pending;
            for _ in 0..MAX_ROUNDS {
                relay.woken.store(false, Ordering::SeqCst);
                result = poll_once(exchange.as_mut(), deadline.as_mut(), conn, done, &mut inner);
                if result.is_ready() || !relay.woken.load(Ordering::SeqCst) {
                    break;
                }
            }
            relay.polling.store(false, Ordering::SeqCst);
            // A wake-up recorded in the last round (or after it) must not be lost.
            if result.is_pending() && relay.woken.swap(false, Ordering::SeqCst) {
                cx.waker().wake_by_ref();
            }
            result
        })
        .await
    }
}

/// One round of [`Conn::send`]: the request first (it may finish from what the connection already
/// read), then the timer, then the connection's reading and writing.
fn poll_once(
    exchange: Pin<&mut impl std::future::Future<Output = Result<Answer, hyper::Error>>>,
    deadline: Pin<&mut Sleep>,
    conn: &mut Connection<TokioIo<Stream>, Full<Bytes>>,
    done: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<Answer, ErrorClass>> {
    if let Poll::Ready(result) = exchange.poll(cx) {
        return Poll::Ready(result.map_err(|e| classify_hyper(&e)));
    }
    if deadline.poll(cx).is_ready() {
        return Poll::Ready(Err(ErrorClass::Timeout));
    }
    if !*done {
        if let Poll::Ready(ended) = Pin::new(conn).poll(cx) {
            *done = true;
            // A clean end (the server closed after answering) still lets the exchange finish
            // from what was already read; an error ends the request here.
            if let Err(e) = ended {
                return Poll::Ready(Err(classify_hyper(&e)));
            }
            // The exchange may now be able to finish (or fail): have it polled again.
            cx.waker().wake_by_ref();
        }
    }
    Poll::Pending
}
