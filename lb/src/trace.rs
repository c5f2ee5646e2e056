//! `lb --trace`: the life of every request, one greppable line per event on stderr.
//!
//! ```text
//! trace conn=1 +0.000ms [1] accepted from 127.0.0.1:50312
//! trace conn=1 req=1 +0.210ms [1] request head read: GET / HTTP/1.1 (host 127.0.0.1:8000)
//! trace conn=1 req=1 +0.231ms [3] route: prefix / (vhost *) -> group of 2
//! ```
//!
//! Timestamps are relative to when the connection was accepted, so the gaps between lines show
//! where time goes. The number in brackets is the step of a request the line comes from, as
//! numbered in ARCHITECTURE.md and in each module's opening comment. When `--trace` is off a `Trace` is `None` inside and each call is one branch.

use std::fmt;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct Trace {
    inner: Option<Arc<Conn>>,
}

#[derive(Debug)]
struct Conn {
    id: u64,
    accepted: Instant,
}

impl Trace {
    /// A tracer for connection `id`, accepted now; disabled unless `enabled`.
    pub fn new(enabled: bool, id: u64) -> Self {
        Trace {
            inner: enabled.then(|| {
                Arc::new(Conn {
                    id,
                    accepted: Instant::now(),
                })
            }),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// An event of request number `request` on this connection.
    /// An event of request number `request` on this connection, at `step` of a request (the
    /// numbering of ARCHITECTURE.md: 1 accept ... 9 finish).
    pub fn event(&self, step: u8, request: u64, what: fmt::Arguments<'_>) {
        if let Some(conn) = &self.inner {
            let ms = conn.accepted.elapsed().as_secs_f64() * 1e3;
            line(format_args!(
                "trace conn={} req={} +{ms:.3}ms [{step}] {what}",
                conn.id, request
            ));
        }
    }

    /// An event of the connection itself (accept, keep-alive, close): step 1.
    pub fn conn_event(&self, what: fmt::Arguments<'_>) {
        if let Some(conn) = &self.inner {
            let ms = conn.accepted.elapsed().as_secs_f64() * 1e3;
            line(format_args!("trace conn={} +{ms:.3}ms [1] {what}", conn.id));
        }
    }
}

fn line(text: fmt::Arguments<'_>) {
    // One write per line under the stderr lock, so lines from different tasks never interleave.
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}
