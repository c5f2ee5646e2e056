//! Bodies in flight: the request body on its way to a backend, the response body on its way back.
//!
//! Neither is ever collected in memory. Each wrapper passes frames through one at a time as hyper
//! polls for them, so backpressure is automatic: if the client reads slowly, we poll the backend
//! slowly. The wrappers add only what a proxy needs around that stream:
//! - an idle timer (`--body-timeout`): a body that moves no byte for that long is aborted;
//! - on the request side, a signal when the body has been fully sent, which starts the response timer;
//! - on the response side, polling the upstream connection's driver before each frame (this task,
//!   not a separate one, does the connection's socket I/O: see `upstream.rs`);
//! - on the response side, a [`Completion`] that runs exactly once when the exchange ends (cleanly,
//!   with an error, or because the client went away): it returns the upstream connection to the
//!   pool only after a clean end, writes the access-log line and the final `--trace` event.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Sleep;

use crate::access_log::{AccessLog, Record};
use crate::error::{BoxError, ClientBodyError};
use crate::trace::Trace;
use crate::upstream::{Backend, Driver, Sender};

/// Aborts a body that makes no progress for `timeout`. The timer is only allocated once the body
/// first has to wait, so bodies that arrive at once cost nothing.
#[derive(Debug)]
struct IdleTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    fn new(timeout: Duration) -> Self {
        IdleTimer {
            timeout,
            sleep: None,
        }
    }

    /// A frame moved: push the deadline back.
    fn progress(&mut self) {
        if let Some(sleep) = self.sleep.as_mut() {
            sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + self.timeout);
        }
    }

    /// The body is waiting: has it waited too long?
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        sleep.as_mut().poll(cx).is_ready()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{side} body moved no byte for {timeout:?}")]
struct BodyTimeout {
    side: &'static str,
    timeout: Duration,
}

/// The client's request body, streamed to the backend.
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
    idle: IdleTimer,
    /// Fired once the last byte has been handed to the upstream connection.
    sent: Option<oneshot::Sender<()>>,
}

impl RequestBody {
    /// Wrap `inner`; the receiver completes when the body has been fully sent upstream.
    pub fn new(inner: Incoming, idle_timeout: Duration) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut body = RequestBody {
            inner: Some(inner),
            idle: IdleTimer::new(idle_timeout),
            sent: Some(tx),
        };
        if body.inner.as_ref().is_none_or(Body::is_end_stream) {
            body.finish();
        }
        (body, rx)
    }

    /// An empty body (for health probes).
    pub fn empty() -> Self {
        RequestBody {
            inner: None,
            idle: IdleTimer::new(Duration::MAX),
            sent: None,
        }
    }

    fn finish(&mut self) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        // hyper drops the body once it has written all of it (or gave up): either way the
        // response timer may start now.
        self.finish();
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progress();
                if inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ClientBodyError::Broken(e).into()))),
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending if this.idle.poll_expired(cx) => Poll::Ready(Some(Err(
                ClientBodyError::Stalled(this.idle.timeout).into(),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(Body::size_hint)
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

/// What happens when a response is over: pool the connection, log the request, trace "done".
#[derive(Debug)]
pub struct Completion {
    /// The upstream connection, returned to its backend's pool if the exchange ended cleanly.
    pub upstream: Option<(Arc<Backend>, Sender, u64)>,
    /// That connection's driver, handed over by the response body when it ends.
    pub driver: Option<Driver>,
    pub record: Record,
    pub log: AccessLog,
    pub trace: Trace,
    /// Body bytes sent to the client.
    pub bytes: u64,
    /// Set when the body reached its end without error.
    pub clean: bool,
    /// Dropped at the end: lets the connection know this request is no longer in flight.
    pub in_flight: Option<crate::accept::InFlight>,
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some((backend, sender, id)) = self.upstream.take() {
            let pooled = match self.driver.take() {
                Some(driver) if self.clean => backend.checkin(sender, driver, id),
                _ => false,
            };
            if pooled {
                self.trace.event(
                    self.record.request,
                    format_args!("upstream conn #{id} returned to the pool"),
                );
            } else if self.clean {
                self.trace.event(
                    self.record.request,
                    format_args!("upstream conn #{id} closed (not reusable)"),
                );
            } else {
                self.trace.event(
                    self.record.request,
                    format_args!("upstream conn #{id} closed (exchange incomplete)"),
                );
            }
        }
        let duration = self.record.started.elapsed();
        self.trace.event(
            self.record.request,
            format_args!(
                "done status={} bytes={} duration={:.3}ms{}",
                self.record.status,
                self.bytes,
                duration.as_secs_f64() * 1e3,
                if self.clean {
                    ""
                } else {
                    " (aborted: the client connection is closed early)"
                }
            ),
        );
        self.record.bytes = self.bytes;
        self.record.duration = duration;
        self.log.write(&self.record);
    }
}

/// The body `lb` sends to clients: a backend's streamed body, or a short one `lb` wrote itself.
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
    idle: IdleTimer,
    completion: Option<Box<Completion>>,
    /// A backend failure held back for one poll, so hyper first flushes what it already has.
    failed: Option<BoxError>,
}

enum Kind {
    Full(Option<Bytes>),
    /// The backend's body, and the driver of its connection, polled before each frame so the
    /// bytes keep coming (see `upstream.rs`).
    Streamed(Incoming, Option<Driver>),
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Full(_) => "Full",
            Kind::Streamed(..) => "Streamed",
        })
    }
}

impl ResponseBody {
    /// A small body written by `lb` itself (errors, redirects).
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes)),
            idle: IdleTimer::new(Duration::MAX),
            completion: None,
            failed: None,
        }
    }

    /// A backend's body, streamed frame by frame; `driver` is its connection's, if this task drives it.
    pub fn streamed(inner: Incoming, driver: Option<Driver>, idle_timeout: Duration) -> Self {
        ResponseBody {
            kind: Kind::Streamed(inner, driver),
            idle: IdleTimer::new(idle_timeout),
            completion: None,
            failed: None,
        }
    }

    /// Run `completion` when this body ends (or immediately if it is already empty).
    pub fn on_complete(&mut self, completion: Completion) {
        self.completion = Some(Box::new(completion));
        if self.is_end_stream() {
            self.complete(true);
        }
    }

    /// Finish the exchange. `clean` = the whole body was delivered.
    fn complete(&mut self, clean: bool) {
        if let Some(mut completion) = self.completion.take() {
            completion.clean = clean;
            if let Kind::Streamed(_, driver) = &mut self.kind {
                completion.driver = driver.take();
            }
        }
    }

    fn count(&mut self, frame: &Frame<Bytes>) {
        if let (Some(c), Some(data)) = (self.completion.as_mut(), frame.data_ref()) {
            c.bytes += data.len() as u64;
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(error) = this.failed.take() {
            this.complete(false);
            return Poll::Ready(Some(Err(error)));
        }
        let polled = match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Streamed(inner, driver) => {
                // Let the connection read from the socket; if it ended, the body reports how.
                if let Some(d) = driver.as_mut() {
                    if d.as_mut().poll(cx).is_ready() {
                        *driver = None;
                    }
                }
                match Pin::new(inner).poll_frame(cx) {
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BoxError::from(e)))),
                    Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(BoxError::from))),
                    Poll::Pending if this.idle.poll_expired(cx) => {
                        Poll::Ready(Some(Err(BodyTimeout {
                            side: "response",
                            timeout: this.idle.timeout,
                        }
                        .into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progress();
                this.count(frame);
                if this.is_end_stream() {
                    this.complete(true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                // The backend failed mid-body. hyper closes the client connection when we return
                // the error, dropping whatever it has not written yet, which may be the response
                // head itself when everything arrived at once. So yield once first: hyper flushes
                // its buffer when a body is pending, and the client sees a head and a truncated
                // body, never a silent close.
                if let Poll::Ready(Some(Err(error))) = polled {
                    this.failed = Some(error);
                }
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(None) => this.complete(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Streamed(inner, _) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Streamed(inner, _) => inner.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away or hyper gave up. The upstream connection
        // is dropped too, which cancels the backend's side of the exchange.
        self.complete(false);
    }
}
