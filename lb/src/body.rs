//! Step 7 of a request, upward: the client's request body on its way to a backend.
//!
//! The body is never collected in memory. [`RequestBody`] passes frames through one at a time as
//! the upstream connection (`lb/src/h1/`) asks for them, so backpressure is automatic: if the backend reads slowly, we read the
//! client slowly. The wrapper adds only what a proxy needs around that stream:
//! - an idle timer (`--body-timeout`): a body that moves no byte for that long is aborted;
//! - for a request that may be retried, a *kept copy* of a small body (up to `--retry-body-bytes`):
//!   the frames are reference-counted [`Bytes`], so keeping them costs a pointer each, not a copy of
//!   the data. If the backend fails before answering, the request can be sent again to another
//!   backend from that copy ([`RequestBody::replay`]). A body larger than the limit is not kept,
//!   and such a request is never retried once it has left (see `proxy.rs`, "retries").
//!
//! The response body, on its way back, is in `response.rs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::error::{BoxError, ClientBodyError, WireError};

/// The client's connection as a request body reads from it (`h1::server::Client`, whatever its
/// socket type): the next piece of the body, `None` at its end.
pub trait ReadBody: Send {
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, WireError>>>;
}

/// Aborts a body that makes no progress for `timeout`. The timer is only allocated once the body
/// first has to wait, so bodies that arrive at once cost nothing.
#[derive(Debug)]
pub struct IdleTimer {
    pub timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    pub fn new(timeout: Duration) -> Self {
        IdleTimer {
            timeout,
            sleep: None,
        }
    }

    /// A frame moved: push the deadline back.
    pub fn progress(&mut self) {
        if let Some(sleep) = self.sleep.as_mut() {
            sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + self.timeout);
        }
    }

    /// The body is waiting: has it waited too long?
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// A copy of a small request body, filled while the body is sent (see the module comment).
#[derive(Debug, Default)]
pub struct Kept {
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    /// The client's body has ended: the copy is whole (unless it overflowed).
    complete: bool,
    /// The body grew past the limit (or carried trailers): there is no usable copy.
    given_up: bool,
}

impl Kept {
    /// The whole body, if it was kept whole: what a retry sends.
    pub fn whole(&self) -> Option<Vec<Bytes>> {
        (self.complete && !self.given_up).then(|| self.chunks.clone())
    }

    fn push(&mut self, data: &Bytes) {
        if self.given_up {
            return;
        }
        if self.len + data.len() > self.limit {
            self.give_up();
        } else {
            self.len += data.len();
            self.chunks.push(data.clone());
        }
    }

    fn give_up(&mut self) {
        self.given_up = true;
        self.chunks = Vec::new();
    }
}

/// Where a request body's frames come from.
enum Source {
    /// Nothing (health probes, bodiless requests).
    Empty,
    /// The client's body, streamed from its connection; `left`: bytes still to come, if the
    /// length is known (else it is chunked).
    Client {
        conn: Arc<Mutex<dyn ReadBody>>,
        left: Option<u64>,
    },
    /// A kept copy, sent again on a retry.
    Replay(std::vec::IntoIter<Bytes>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Empty => f.write_str("Empty"),
            Source::Client { left, .. } => f.debug_struct("Client").field("left", left).finish(),
            Source::Replay(chunks) => f.debug_tuple("Replay").field(chunks).finish(),
        }
    }
}

/// A request body on its way to a backend: the client's, streamed, or a kept copy, replayed.
#[derive(Debug)]
pub struct RequestBody {
    /// Frames to send before the source's, last first: frames taken for a write that failed
    /// before a byte left ([`RequestBody::prepend`]).
    ahead: Vec<Bytes>,
    source: Source,
    idle: IdleTimer,
    /// Where the frames are copied while they pass, if this request may be retried.
    keep: Option<Arc<Mutex<Kept>>>,
}

impl RequestBody {
    /// The client's body, read from its connection `conn` as it is asked for: `length` bytes, or
    /// chunked if `None`.
    pub fn from_client(
        conn: Arc<Mutex<dyn ReadBody>>,
        length: Option<u64>,
        idle_timeout: Duration,
    ) -> Self {
        RequestBody {
            ahead: Vec::new(),
            source: Source::Client { conn, left: length },
            idle: IdleTimer::new(idle_timeout),
            keep: None,
        }
    }

    /// Keep a copy of the body while it is sent, up to `limit` bytes, so that the request can be
    /// replayed. Returns where the copy accumulates; `None` when the body is known to be larger.
    pub fn keep_copy(&mut self, limit: usize) -> Option<Arc<Mutex<Kept>>> {
        let larger = self.size_hint().lower() > limit as u64;
        if larger {
            return None;
        }
        let kept = Arc::new(Mutex::new(Kept {
            limit,
            complete: self.is_end_stream(),
            ..Kept::default()
        }));
        self.keep = Some(kept.clone());
        Some(kept)
    }

    /// A body that sends `chunks` again (a retry).
    pub fn replay(chunks: Vec<Bytes>) -> Self {
        RequestBody {
            ahead: Vec::new(),
            source: Source::Replay(chunks.into_iter()),
            idle: IdleTimer::new(Duration::MAX),
            keep: None,
        }
    }

    /// An empty body (for health probes).
    pub fn empty() -> Self {
        RequestBody {
            ahead: Vec::new(),
            source: Source::Empty,
            idle: IdleTimer::new(Duration::MAX),
            keep: None,
        }
    }

    /// This body with `frame` (taken from it and never sent) in front again. It was copied for a
    /// retry when first taken, so it is not copied again.
    pub fn prepend(mut self, frame: Option<Bytes>) -> Self {
        self.ahead.extend(frame);
        self
    }

    /// The body has been read completely: close the copy.
    fn finish(&mut self) {
        if let Some(keep) = self.keep.take() {
            lock(&keep).complete = true;
        }
    }

    fn kept(&mut self, frame: &Frame<Bytes>) {
        if let Some(keep) = &self.keep {
            let mut keep = lock(keep);
            match frame.data_ref() {
                Some(data) => keep.push(data),
                None => keep.give_up(), // trailers: not worth replaying
            }
        }
    }
}

/// The copy and the client's connection are only touched by the request's own task; poisoning
/// cannot leave them half-written in a way that matters (a retry would at worst send a body that is
/// then refused; a connection whose body broke is not reused), so it is ignored.
fn lock<T: ?Sized>(shared: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(data) = this.ahead.pop() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let (conn, left) = match &mut this.source {
            Source::Empty => return Poll::Ready(None),
            Source::Replay(chunks) => {
                let next = chunks.next();
                if chunks.len() == 0 {
                    this.finish();
                }
                return Poll::Ready(next.map(|data| Ok(Frame::data(data))));
            }
            Source::Client { conn, left } => (conn, left),
        };
        let polled = lock(conn).poll_body(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(left), Some(data)) = (left.as_mut(), frame.data_ref()) {
                    *left -= (data.len() as u64).min(*left);
                }
                let ended = frame.is_trailers() || *left == Some(0);
                this.idle.progress();
                this.kept(&frame);
                if ended {
                    // Let go of the connection at once: the body is whole.
                    this.source = Source::Empty;
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ClientBodyError::Broken(e).into()))),
            Poll::Ready(None) => {
                this.source = Source::Empty;
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
        if !self.ahead.is_empty() {
            return false;
        }
        match &self.source {
            Source::Empty => true,
            Source::Client { left, .. } => *left == Some(0),
            Source::Replay(chunks) => chunks.len() == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        let ahead: u64 = self.ahead.iter().map(|c| c.len() as u64).sum();
        let source = match &self.source {
            Source::Empty => SizeHint::with_exact(0),
            Source::Client { left: Some(n), .. } => SizeHint::with_exact(*n),
            Source::Client { left: None, .. } => SizeHint::default(),
            Source::Replay(chunks) => {
                SizeHint::with_exact(chunks.as_slice().iter().map(|c| c.len() as u64).sum())
            }
        };
        match source.exact() {
            Some(n) => SizeHint::with_exact(n + ahead),
            None => {
                let mut hint = SizeHint::new();
                hint.set_lower(source.lower() + ahead);
                hint
            }
        }
    }
}
