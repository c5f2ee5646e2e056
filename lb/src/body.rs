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
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::error::{BoxError, ClientBodyError};

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
#[derive(Debug)]
enum Source {
    /// Nothing (health probes, bodiless requests).
    Empty,
    /// The client's body, streamed.
    Client(Incoming),
    /// A kept copy, sent again on a retry.
    Replay(std::vec::IntoIter<Bytes>),
}

/// A request body on its way to a backend: the client's, streamed, or a kept copy, replayed.
#[derive(Debug)]
pub struct RequestBody {
    source: Source,
    idle: IdleTimer,
    /// Where the frames are copied while they pass, if this request may be retried.
    keep: Option<Arc<Mutex<Kept>>>,
}

impl RequestBody {
    /// Wrap the client's body.
    pub fn new(inner: Incoming, idle_timeout: Duration) -> Self {
        let source = if inner.is_end_stream() {
            Source::Empty
        } else {
            Source::Client(inner)
        };
        RequestBody {
            source,
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
            source: Source::Replay(chunks.into_iter()),
            idle: IdleTimer::new(Duration::MAX),
            keep: None,
        }
    }

    /// An empty body (for health probes).
    pub fn empty() -> Self {
        RequestBody {
            source: Source::Empty,
            idle: IdleTimer::new(Duration::MAX),
            keep: None,
        }
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

/// The copy is only touched by the request's own task; poisoning cannot leave it half-written in
/// a way that matters (a retry would at worst send a body that is then refused), so it is ignored.
fn lock(kept: &Mutex<Kept>) -> std::sync::MutexGuard<'_, Kept> {
    kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let inner = match &mut this.source {
            Source::Empty => return Poll::Ready(None),
            Source::Replay(chunks) => {
                let next = chunks.next();
                if chunks.len() == 0 {
                    this.finish();
                }
                return Poll::Ready(next.map(|data| Ok(Frame::data(data))));
            }
            Source::Client(inner) => inner,
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let ended = inner.is_end_stream();
                this.idle.progress();
                this.kept(&frame);
                if ended {
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
        match &self.source {
            Source::Empty => true,
            Source::Client(inner) => inner.is_end_stream(),
            Source::Replay(chunks) => chunks.len() == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Empty => SizeHint::with_exact(0),
            Source::Client(inner) => inner.size_hint(),
            Source::Replay(chunks) => {
                SizeHint::with_exact(chunks.as_slice().iter().map(|c| c.len() as u64).sum())
            }
        }
    }
}
