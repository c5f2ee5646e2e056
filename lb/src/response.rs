//! Step 8 of a request, downward: the response body on its way back to the client, and the end of
//! the request.
//!
//! [`ResponseBody`] passes the backend's body through frame by frame (never collected in memory;
//! if the client reads slowly, we read the backend slowly) or carries a short body `lb` wrote
//! itself. The backend's body is read straight from the upstream connection by this task (see
//! `upstream.rs` and `h1/`), so the [`Upstream`] travels inside the body; if the backend answered
//! before the request body was all sent, the rest of it is sent from here too, for as long as the
//! response lasts (then the connection is closed: the backend never got all of the request). It adds the body
//! idle timer (`--body-timeout`) on the backend's side.
//!
//! The end of a request is [`Completion::finish`], called by the body where the exchange ends: at
//! its last frame, on an error, or when the connection's loop drops it. Only then is the upstream connection checked
//! in (after a clean end only: a connection with half a response still in it is useless), the
//! access-log line written and `done` traced. A request that never got as far as a response body
//! (the client closed its connection while `lb` was still waiting for a backend) is finished by
//! `Completion`'s `Drop`, the safety net that logs it with status 499, as nginx does.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::access_log::{AccessLog, Record};
use crate::body::IdleTimer;
use crate::downstream::InFlight;
use crate::error::BoxError;
use crate::h1::{Decoder, Fields, Sending};
use crate::pick::OwnedInFlight;
use crate::stats::Stats;
use crate::trace::Trace;
use crate::upstream::{Backend, Upstream};

/// The status logged for a request whose client went away before it was answered (nginx's 499).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// How an exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The whole response was handed to the client connection.
    Complete,
    /// The response was cut off: the backend failed mid-body, or the client went away.
    CutOff,
    /// The client went away before any response existed.
    Abandoned,
}

/// The bookkeeping of one request, from its head to its end: the access-log record, the tracer,
/// and the in-flight mark on its client connection.
#[derive(Debug)]
pub struct Completion {
    pub record: Record,
    /// The backend asked (or that answered), for the log line.
    pub backend: Option<Arc<Backend>>,
    log: AccessLog,
    trace: Trace,
    /// Dropped at the end: lets the client connection know this request is no longer in flight.
    in_flight: Option<InFlight>,
    /// Dropped at the end: the backend's count of requests in flight (`pick/`'s load) goes down.
    pub in_flight_on_backend: Option<OwnedInFlight>,
    /// Where the request is counted when it ends (`--admin`).
    stats: Arc<Stats>,
    /// Body bytes sent to the client.
    bytes: u64,
    finished: bool,
}

impl Completion {
    pub fn new(
        record: Record,
        log: AccessLog,
        trace: Trace,
        in_flight: InFlight,
        stats: Arc<Stats>,
    ) -> Self {
        Completion {
            stats,
            record,
            backend: None,
            log,
            trace,
            in_flight: Some(in_flight),
            in_flight_on_backend: None,
            bytes: 0,
            finished: false,
        }
    }

    /// The request is over: return the upstream connection to its pool if the exchange ended
    /// cleanly, trace `done`, write the access-log line, and stop counting the request in flight.
    pub fn finish(mut self: Box<Self>, end: End, upstream: Option<Upstream>) {
        self.write(end, upstream);
    }

    fn write(&mut self, end: End, upstream: Option<Upstream>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let number = self.record.request;
        if let Some(upstream) = upstream {
            let id = upstream.id;
            let what = match end {
                End::Complete if upstream.check_in() => "returned to the pool",
                End::Complete => "closed (not reusable)",
                _ => "closed (exchange incomplete)",
            };
            self.trace
                .event(9, number, format_args!("upstream conn #{id} {what}"));
        }
        if end == End::Abandoned {
            self.record.status = CLIENT_CLOSED_REQUEST;
        }
        let duration = self.record.started.elapsed();
        let asked = match (&self.backend, end) {
            (Some(backend), End::Abandoned) => format!(" while {} was being asked", backend.name),
            _ => String::new(),
        };
        self.trace.event(
            9,
            number,
            format_args!(
                "done status={} bytes={} duration={:.3}ms{}{asked}",
                self.record.status,
                self.bytes,
                duration.as_secs_f64() * 1e3,
                match end {
                    End::Complete => "",
                    End::CutOff => " (cut off: the response did not reach its end)",
                    End::Abandoned => " (the client closed the connection before the response)",
                }
            ),
        );
        let counted = self
            .backend
            .as_ref()
            .map_or(&self.stats.unserved, |b| &b.stats);
        counted.record(self.record.status, duration, self.bytes);
        if self.log.is_enabled() {
            self.record.backend = self.backend.as_ref().map(|b| b.name.clone());
            self.record.bytes = self.bytes;
            self.record.duration = duration;
            self.log.write(&self.record);
        }
        self.in_flight = None;
        self.in_flight_on_backend = None;
    }
}

impl Drop for Completion {
    /// The safety net: a request dropped before any response body took charge of it (the connection's
    /// loop drops the handler when the client hangs up while lb waits for a backend; shutdown's `--grace`
    /// ending does the same) still gets its one log line.
    fn drop(&mut self) {
        self.write(End::Abandoned, None);
    }
}

/// The body `lb` sends to clients: a backend's streamed body, or a short one `lb` wrote itself.
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
    /// A backend's header fields, as they arrived, and the lines lb adds (written after the
    /// response's own header map, which is empty then; see [`ResponseBody::take_fields`]).
    fields: Fields,
    added: &'static [u8],
    idle: IdleTimer,
    completion: Option<Box<Completion>>,
    /// A backend failure held back for one poll, so that what is queued is written first.
    failed: Option<BoxError>,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    /// The backend's body, read from its connection by this task.
    Streamed(Box<Streamed>),
    /// No body: the answer was `101`, and the upstream connection (with the request's number,
    /// for `--trace`) waits to become one end of a tunnel.
    Tunnel(Option<Box<(Upstream, u64)>>),
}

#[derive(Debug)]
struct Streamed {
    /// Taken by [`Completion::finish`] at the end.
    upstream: Option<Upstream>,
    decoder: Decoder,
    /// The rest of the request body, when the backend answered before it was all sent.
    sending: Option<Sending>,
}

impl ResponseBody {
    /// A small body written by `lb` itself (errors, redirects).
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes)),
            idle: IdleTimer::new(Duration::MAX),
            completion: None,
            failed: None,
            fields: Fields::default(),
            added: b"",
        }
    }

    /// No body: a `101` answer from `upstream`, whose connection becomes a tunnel once the head
    /// has reached the client ([`ResponseBody::take_tunnel`]).
    pub fn tunnel(upstream: Upstream, number: u64) -> Self {
        ResponseBody {
            kind: Kind::Tunnel(Some(Box::new((upstream, number)))),
            idle: IdleTimer::new(Duration::MAX),
            completion: None,
            failed: None,
            fields: Fields::default(),
            added: b"",
        }
    }

    /// The upstream connection of a `101` answer (and the request's number), to tunnel through.
    pub fn take_tunnel(&mut self) -> Option<(Upstream, u64)> {
        match &mut self.kind {
            Kind::Tunnel(upstream) => upstream.take().map(|pair| *pair),
            _ => None,
        }
    }

    /// A backend's body, streamed frame by frame from `upstream` as `decoder` reads it; `sending`
    /// is what is left of the request body, if anything.
    pub fn streamed(
        upstream: Upstream,
        decoder: Decoder,
        sending: Option<Sending>,
        idle_timeout: Duration,
    ) -> Self {
        let streamed = Streamed {
            upstream: Some(upstream),
            decoder,
            sending,
        };
        ResponseBody {
            kind: Kind::Streamed(Box::new(streamed)),
            idle: IdleTimer::new(idle_timeout),
            completion: None,
            failed: None,
            fields: Fields::default(),
            added: b"",
        }
    }

    /// The body of a response whose head has a backend's `fields` (written as they are, then the
    /// lines `added`).
    pub fn with_fields(mut self, fields: Fields, added: &'static [u8]) -> Self {
        self.fields = fields;
        self.added = added;
        self
    }

    /// The backend's fields and the lines lb adds to them, to write the head (both empty for an
    /// answer lb wrote itself).
    pub fn take_fields(&mut self) -> (Fields, &'static [u8]) {
        (std::mem::take(&mut self.fields), self.added)
    }

    /// Finish `completion` when this body ends.
    pub fn on_complete(&mut self, completion: Box<Completion>) {
        self.completion = Some(completion);
    }

    /// The exchange is over, one way or the other.
    fn end(&mut self, end: End) {
        if let Some(completion) = self.completion.take() {
            let upstream = match &mut self.kind {
                Kind::Streamed(streamed) => {
                    let mut upstream = streamed.upstream.take();
                    if let (Some(upstream), Some(_)) = (&mut upstream, &streamed.sending) {
                        // The request body was not all sent: the backend still expects the rest.
                        upstream.conn.forbid_reuse();
                    }
                    upstream
                }
                Kind::Full(_) | Kind::Tunnel(_) => None,
            };
            completion.finish(end, upstream);
        }
    }

    fn count(&mut self, frame: &Frame<Bytes>) {
        if let (Some(c), Some(data)) = (self.completion.as_mut(), frame.data_ref()) {
            c.bytes += data.len() as u64;
        }
    }

    /// Poll the backend's body once (sending more of the request body first, if some is left).
    fn poll_backend(
        streamed: &mut Streamed,
        idle: &mut IdleTimer,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(upstream) = streamed.upstream.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(sending) = streamed.sending.as_mut() {
            let written = upstream.conn.written();
            let polled = upstream.conn.poll_send(sending, cx);
            if upstream.conn.written() != written {
                idle.progress(); // the upload moving counts as the exchange moving
            }
            match polled {
                Poll::Ready(Ok(())) => streamed.sending = None,
                Poll::Ready(Err(_)) => {
                    // The backend has answered already; it stops hearing the rest of the request.
                    upstream.conn.forbid_reuse();
                    streamed.sending = None;
                }
                Poll::Pending => {}
            }
        }
        match upstream.conn.poll_body(&mut streamed.decoder, cx) {
            Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(BoxError::from))),
            // Neither the response nor the rest of the upload moved for `--body-timeout`. (While
            // the upload moves, a backend may well wait for its end before answering more.)
            Poll::Pending if idle.poll_expired(cx) => Poll::Ready(Some(Err(BodyTimeout {
                timeout: idle.timeout,
            }
            .into()))),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("response body moved no byte for {timeout:?}")]
struct BodyTimeout {
    timeout: Duration,
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
            this.end(End::CutOff);
            return Poll::Ready(Some(Err(error)));
        }
        let polled = match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Streamed(streamed) => Self::poll_backend(streamed, &mut this.idle, cx),
            Kind::Tunnel(_) => Poll::Ready(None),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progress();
                this.count(&frame);
                if this.is_end_stream() {
                    this.end(End::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                // The backend failed mid-body. The client connection closes when we return the
                // error, dropping whatever it has not written yet, which may be the response head
                // itself when everything arrived at once. So yield once first: the writer flushes
                // its buffer when a body is pending, and the client sees a head and a truncated
                // body, never a silent close.
                this.failed = Some(error);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(None) => {
                this.end(End::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Streamed(streamed) => streamed.decoder.is_done(),
            Kind::Tunnel(_) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Streamed(streamed) => match streamed.decoder.exact_len() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
            Kind::Tunnel(_) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // The connection's loop drops the body once it is done with it. A body that was empty
        // from the start is never polled: it ends here, after the head was written. Any other
        // body dropped before its end was cut off (the client went away, or a write failed); its upstream connection is
        // dropped with it, which cancels the backend's side of the exchange.
        let end = if self.is_end_stream() && self.failed.is_none() {
            End::Complete
        } else {
            End::CutOff
        };
        self.end(end);
    }
}
