//! Slow start (`--slow-start DURATION`): a backend that comes back is eased in, not flooded.
//!
//! A backend that was down has empty caches, cold JIT, a connection pool to refill. Least-conn
//! sees it idle and would send it *every* new request until it caught up; round robin would give
//! it a full share at once. So for `DURATION` after it comes back, its weight is scaled by a ramp
//! that climbs linearly from 10% to 100% (HAProxy ramps from ~0, Envoy uses a 10% floor as well):
//!
//! ```text
//!   share of
//!   weight  100% ┤            ┌──────────
//!                │         ╱
//!                │      ╱
//!                │   ╱
//!            10% ┤╱
//!                └┴───────────┴──────────▶ time since it came back
//!                 0      --slow-start
//! ```
//!
//! The proxy knows when a backend came back (its health bookkeeping saw the transition) and
//! passes that in as [`Status::Up`]`{ back_for }`; this file only turns it into a factor. How each
//! strategy applies the factor:
//! - round-robin, p2c: the member's weight is multiplied by the ramp (its turns, its draws);
//! - least-conn, ewma: the load is divided by the ramped weight, so an idle warming member looks
//!   busier than it is;
//! - hash: a warming member keeps a ramp-sized part of its keys and lends the rest to the next
//!   member along the table; a key comes home once the ramp passes it and never leaves again.
//!
//! [`Status::Up`]: super::Status::Up

use std::time::Duration;

/// The whole weight, in thousandths.
pub const FULL: u16 = 1000;
/// Where the ramp starts, in thousandths (10%).
pub const FLOOR: u16 = 100;

/// The share of its weight, in thousandths (100..=1000), that a member gets `back_for` after it
/// came back, when the ramp lasts `window`. `None` (never down, or not tracked) and a zero window
/// mean the full weight.
pub fn ramp(back_for: Option<Duration>, window: Duration) -> u16 {
    match back_for {
        Some(t) if t < window => {
            let climbed = u128::from(FULL - FLOOR) * t.as_nanos() / window.as_nanos().max(1);
            FLOOR.saturating_add(u16::try_from(climbed).unwrap_or(FULL - FLOOR))
        }
        _ => FULL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ```text
    /// window 10 s   back for:  0 s   1 s   5 s   9 s   10 s   60 s   never down
    /// share of weight:         10%   19%   55%   91%   100%   100%   100%
    /// ```
    #[test]
    fn ramps_linearly_from_ten_percent() {
        let w = Duration::from_secs(10);
        let at = |s: u64| ramp(Some(Duration::from_secs(s)), w);
        assert_eq!(
            [at(0), at(1), at(5), at(9), at(10), at(60)],
            [100, 190, 550, 910, 1000, 1000]
        );
        assert_eq!(ramp(None, w), FULL);
        assert_eq!(ramp(Some(Duration::ZERO), Duration::ZERO), FULL);
    }
}
