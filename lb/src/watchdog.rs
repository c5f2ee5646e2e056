//! Step 1 of a request, continued: the two client timeouts hyper cannot tell apart.
//!
//! hyper's own `header_read_timeout` also starts while a keep-alive connection waits for its next
//! request, so it would double as the idle timeout. We want a short `--header-timeout` (a slowloris
//! client dripping a head byte by byte) and a longer `--idle-timeout` (a polite client keeping its
//! connection for the next request). So the socket is wrapped in [`WatchedIo`], which notes when the
//! first byte of a new head arrives, and each connection's [`Watchdog`] sleeps until the deadline
//! that applies now:
//!
//! ```text
//!   state of the connection           deadline
//!   a request is in flight            none (the body and response timeouts apply instead)
//!   part of a head has arrived        head's first byte + --header-timeout   -> drop (408)
//!   idle, before its first request    accepted + --header-timeout            -> close
//!   idle, between requests            last response + --idle-timeout         -> close
//! ```
//!
//! Nobody tells the watchdog when a request ends or a head starts arriving: it looks at the
//! connection when its timer fires, and sets the timer for the deadline that applies then, but
//! never further away than the shorter of the two timeouts. Any deadline that appears meanwhile is
//! at least that far from when it appears (a head started at `t` must end by `t + header`), so
//! the watchdog is never late, and a busy keep-alive connection costs no timer or wake-up per
//! request: one look every few seconds instead (nginx moves its timers lazily for the same reason).
//! Telling it on every change cost two wake-ups of the connection's task per request.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::config::Timeouts;
use crate::downstream::ConnInfo;
use crate::health::now_ms;

/// Which deadline ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request head started arriving and did not complete within `--header-timeout`.
    Head,
    /// The connection sat idle past its allowance.
    Idle,
}

/// One connection's timer (see the module comment for when it is set).
#[derive(Debug)]
pub struct Watchdog {
    conn: Arc<ConnInfo>,
    header: Duration,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    /// Whether the timer is set and has not fired yet.
    armed: bool,
}

impl Watchdog {
    pub fn new(conn: Arc<ConnInfo>, timeouts: &Timeouts) -> Self {
        Watchdog {
            conn,
            header: timeouts.header,
            idle: timeouts.idle,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: false,
        }
    }

    /// Completes when a deadline has passed (cancel-safe: a new call picks up where this left).
    pub async fn expired(&mut self) -> Expired {
        loop {
            if !self.armed {
                // Until the deadline that applies now, but look again within the shorter timeout:
                // a deadline that appears meanwhile is never sooner than that.
                let now = now_ms();
                let look_again = now + self.header.min(self.idle).as_millis() as u64;
                let at = match deadline(&self.conn, self.header, self.idle) {
                    Deadline::Head(at) | Deadline::Idle(at) => at.min(look_again),
                    Deadline::None => look_again,
                };
                let wait = at.saturating_sub(now).max(5);
                self.timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + Duration::from_millis(wait));
                self.armed = true;
            }
            self.timer.as_mut().await;
            self.armed = false;
            match deadline(&self.conn, self.header, self.idle) {
                Deadline::Head(at) if at <= now_ms() => return Expired::Head,
                Deadline::Idle(at) if at <= now_ms() => return Expired::Idle,
                _ => {}
            }
        }
    }
}

/// Which timeout applies to a connection right now, as an absolute [`now_ms`] time.
enum Deadline {
    /// A request is in flight: body timeouts apply, not these.
    None,
    /// Part of a request head has arrived: the rest must come by then.
    Head(u64),
    /// Nothing in flight, nothing arriving: the connection may idle until then.
    Idle(u64),
}

fn deadline(conn: &ConnInfo, header: Duration, idle: Duration) -> Deadline {
    if conn.is_busy() {
        return Deadline::None;
    }
    let head_started = conn.head_started_ms();
    if head_started != 0 {
        return Deadline::Head(head_started + header.as_millis() as u64);
    }
    // Before the first request a silent client gets only the header timeout.
    let allowed = if conn.requests() == 0 { header } else { idle };
    Deadline::Idle(conn.idle_since_ms() + allowed.as_millis() as u64)
}

/// The client socket, noting when the first byte of a request head arrives.
pub struct WatchedIo<S> {
    inner: S,
    conn: Arc<ConnInfo>,
}

impl<S> WatchedIo<S> {
    pub fn new(inner: S, conn: Arc<ConnInfo>) -> Self {
        WatchedIo { inner, conn }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.head_bytes_arrived();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
