//! Step 1 of a request, continued: the client connection's two timeouts.
//!
//! A short `--header-timeout` cuts off a slowloris client dripping a head byte by byte; a longer
//! `--idle-timeout` lets a polite client keep its connection for the next request. The connection's
//! loop (`serve.rs`) notes when the first byte of a new head arrives, and each connection's
//! [`Watchdog`] sleeps until the deadline that applies now:
//!
//! ```text
//!   state of the connection           deadline
//!   a request is in flight            none (the body and response timeouts apply instead)
//!   part of a head has arrived        head's first byte + --header-timeout   -> drop (408)
//!   idle, before its first request    accepted + --header-timeout            -> close
//!   idle, between requests            last response + --idle-timeout         -> close
//!   idle (either) for PARK_AFTER      idle since + PARK_AFTER                -> park
//! ```
//!
//! Parking (see `serve.rs`) lets go of the connection's buffers while the client is quiet, keeping
//! only the socket, so that thousands of idle keep-alive clients cost little.
//!
//! Nobody tells the watchdog when a request ends or a head starts arriving: it looks at the
//! connection when its timer fires, and sets the timer for the deadline that applies then, but
//! never further away than the shorter of the two timeouts. Any deadline that appears meanwhile is
//! at least that far from when it appears (a head started at `t` must end by `t + header`), so
//! the watchdog is never late, and a busy keep-alive connection costs no timer or wake-up per
//! request: one look a second instead (nginx moves its timers lazily for the same reason).
//! Telling it on every change cost two wake-ups of the connection's task per request. Parking is
//! not a deadline: it may come up to a second late.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Sleep;

use crate::clock::now_ms;
use crate::config::Timeouts;
use crate::downstream::ConnInfo;

/// Which deadline ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request head started arriving and did not complete within `--header-timeout`.
    Head,
    /// The connection sat idle past its allowance.
    Idle,
    /// The connection has been idle for [`PARK_AFTER`] and is not parked yet.
    Park,
}

/// How long a keep-alive connection stays idle before it is parked. Long enough that a client
/// sending request after request never pays for parking; short enough that idle ones soon cost
/// little.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

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

    /// Look at the connection again now, instead of when the timer fires: for a connection leaving
    /// the parked state, whose next deadline (parking again) may be sooner than the timer.
    pub fn look_again(&mut self) {
        self.armed = false;
    }

    /// Completes when a deadline has passed (cancel-safe: a new call picks up where this left).
    pub async fn expired(&mut self) -> Expired {
        loop {
            if !self.armed {
                // Until the deadline that applies now, but look again within the shorter timeout:
                // a deadline that appears meanwhile is never sooner than that.
                let now = now_ms();
                let mut shortest = self.header.min(self.idle);
                if !self.conn.is_parked() {
                    shortest = shortest.min(PARK_AFTER); // parking is not a deadline: about on time
                }
                let look_again = now + shortest.as_millis() as u64;
                let at = match deadline(&self.conn, self.header, self.idle) {
                    Deadline::Head(at) => at.min(look_again),
                    Deadline::Idle { close, park } => close.min(park).min(look_again),
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
            let now = now_ms();
            match deadline(&self.conn, self.header, self.idle) {
                Deadline::Head(at) if at <= now => return Expired::Head,
                Deadline::Idle { close, .. } if close <= now => return Expired::Idle,
                Deadline::Idle { park, .. } if park <= now => return Expired::Park,
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
    /// Nothing in flight, nothing arriving: the connection may idle until `close`, and is parked
    /// at `park` (`u64::MAX` once it is).
    Idle { close: u64, park: u64 },
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
    let since = conn.idle_since_ms();
    let park = if conn.is_parked() {
        u64::MAX
    } else {
        since + PARK_AFTER.as_millis() as u64
    };
    Deadline::Idle {
        close: since + allowed.as_millis() as u64,
        park,
    }
}
