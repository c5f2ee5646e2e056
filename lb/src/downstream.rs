//! The client side of the proxy ("downstream", as `upstream` is the backend side): what the request
//! path knows about the client connection a request arrived on.
//!
//! [`accept`](crate::accept) creates one [`ConnInfo`] per client connection; the request path reads
//! it (the peer address for `X-Forwarded-For`, the tracer) and marks each request in flight with an
//! [`InFlight`] guard, which the connection's timeout watchdog consults: while a request is in flight
//! neither the header nor the idle timeout applies. It is a leaf module so that both the connection
//! loop and the request path can depend on it without depending on each other.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::clock::now_ms;
use crate::forward::Added;
use crate::trace::Trace;

/// What the request path knows about the client connection it arrived on.
#[derive(Debug)]
pub struct ConnInfo {
    /// The connection's number (`conn=` in `--trace` and `-D`).
    pub id: u64,
    pub peer: SocketAddr,
    /// The fields lb adds to this client's requests (`X-Forwarded-For` with the peer's IP, ...),
    /// written once, used per request.
    pub added: Added,
    /// `http`, or `https` behind `-s`: what `X-Forwarded-Proto` says.
    pub scheme: &'static str,
    pub trace: Trace,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// [`now_ms`] when the last request finished (or the connection was accepted).
    idle_since_ms: AtomicU64,
    /// [`now_ms`] of the first byte read since the last request started or finished; 0 = none.
    head_started_ms: AtomicU64,
    /// Whether the connection is parked: idle, holding no buffers (see `serve.rs`).
    parked: AtomicBool,
}

impl ConnInfo {
    /// The state of connection number `id`, just accepted from `peer`.
    pub fn new(id: u64, peer: SocketAddr, scheme: &'static str, trace: Trace) -> Self {
        ConnInfo {
            id,
            peer,
            added: Added::new(&peer.ip().to_string(), scheme),
            scheme,
            trace,
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(now_ms()),
            head_started_ms: AtomicU64::new(0),
            parked: AtomicBool::new(false),
        }
    }

    /// Count a new request; the returned guard marks it finished when dropped.
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        let number = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if number > 1 {
            self.trace.conn_event(format_args!(
                "keep-alive: request #{number} on this connection"
            ));
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started_ms.store(0, Ordering::Relaxed);
        InFlight {
            conn: self.clone(),
            number,
        }
    }

    /// Note that bytes of a request head arrived (called by the socket wrapper on every read; only
    /// the first read after a request ends counts).
    pub fn head_bytes_arrived(&self) {
        if self.head_started_ms.load(Ordering::Relaxed) == 0 {
            self.head_started_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Whether the connection is parked (or being parked).
    pub fn is_parked(&self) -> bool {
        self.parked.load(Ordering::Relaxed)
    }

    pub fn set_parked(&self, parked: bool) {
        self.parked.store(parked, Ordering::Relaxed);
    }

    /// Requests started on this connection so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Whether a request is being served right now.
    pub fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// When the connection last became idle, in [`now_ms`] time.
    pub fn idle_since_ms(&self) -> u64 {
        self.idle_since_ms.load(Ordering::Relaxed)
    }

    /// When the current request head started arriving, in [`now_ms`] time (0: none is arriving).
    pub fn head_started_ms(&self) -> u64 {
        self.head_started_ms.load(Ordering::Relaxed)
    }
}

/// A request in progress on a connection; see [`ConnInfo::begin_request`].
#[derive(Debug)]
pub struct InFlight {
    conn: Arc<ConnInfo>,
    number: u64,
}

impl InFlight {
    /// The request's number on its connection (1, 2, ... with keep-alive).
    pub fn number(&self) -> u64 {
        self.number
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.idle_since_ms.store(now_ms(), Ordering::Relaxed);
        self.conn.head_started_ms.store(0, Ordering::Relaxed);
        self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
