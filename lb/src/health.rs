//! Is a backend worth trying? Passive and active health, kept outside the selection strategy.
//!
//! *Passive*: a backend that refuses a connection is put in a cool-down (`--fail-timeout`) during
//! which the proxy skips it. *Active* (`--health-check PATH`): a background task probes every
//! backend and takes it out after `fall` failures in a row, back in after `rise` successes.
//!
//! The state is two atomics per backend, read on every request without a lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::now_ms;

#[derive(Debug, Default)]
pub struct Health {
    /// Until when (in [`now_ms`] time) passive health skips this backend; 0 = not skipped.
    down_until: AtomicU64,
    /// Set by the active checker when the backend failed `fall` probes in a row.
    probe_down: AtomicBool,
    /// When (in [`now_ms`] time) the backend last came back after being down; 0 = never down.
    /// Slow start (`--slow-start`) ramps its weight up from then.
    back_since: AtomicU64,
    /// When (in [`now_ms`] time) it last went down, passively or actively; 0 = never.
    down_since: AtomicU64,
}

/// A backend's state as `--admin` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    /// Back after being down, still ramping up to its full weight (`--slow-start`).
    SlowStart,
    /// Skipped for `--fail-timeout` after a refused connection.
    CoolingDown,
    /// Out of the rotation: it failed `--health-fall` health checks in a row.
    HealthCheckFailed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::SlowStart => "slow_start",
            State::CoolingDown => "cooling_down",
            State::HealthCheckFailed => "down",
        }
    }
}

impl Health {
    /// Whether the proxy should try this backend now.
    pub fn is_available(&self) -> bool {
        !self.probe_down.load(Ordering::Relaxed)
            && self.down_until.load(Ordering::Relaxed) <= now_ms()
    }

    /// Remember that connecting failed: skip the backend for `cool_down`.
    /// Returns true when this call started the cool-down (so it is logged once, not per request).
    pub fn connect_failed(&self, cool_down: Duration) -> bool {
        let now = now_ms();
        let until = now + cool_down.as_millis() as u64;
        let before = self.down_until.swap(until, Ordering::Relaxed);
        let started = before <= now;
        if started {
            self.down_since.store(now, Ordering::Relaxed);
        }
        started
    }

    /// Record a successful connection: the backend is back (it was back from the moment its
    /// cool-down ended).
    pub fn connect_succeeded(&self) {
        let until = self.down_until.load(Ordering::Relaxed);
        if until != 0 {
            self.back_since
                .store(until.min(now_ms()), Ordering::Relaxed);
            self.down_until.store(0, Ordering::Relaxed);
        }
    }

    pub fn set_probe_down(&self, down: bool) {
        let was = self.probe_down.swap(down, Ordering::Relaxed);
        if was && !down {
            self.back_since.store(now_ms(), Ordering::Relaxed);
        }
        if !was && down {
            self.down_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// The state `--admin` shows, and since when (in [`now_ms`] time; 0: since start).
    pub fn state(&self, slow_start: Duration) -> (State, u64) {
        let now = now_ms();
        let until = self.down_until.load(Ordering::Relaxed);
        let down_since = self.down_since.load(Ordering::Relaxed);
        if self.probe_down.load(Ordering::Relaxed) {
            return (State::HealthCheckFailed, down_since);
        }
        if until > now {
            return (State::CoolingDown, down_since);
        }
        match self.up().flatten() {
            Some(back) => {
                let since = now.saturating_sub(back.as_millis() as u64);
                let state = if back < slow_start {
                    State::SlowStart
                } else {
                    State::Up
                };
                (state, since)
            }
            None => (State::Up, 0),
        }
    }

    /// `None` if the backend is down; else how long ago it came back after being down, if it ever
    /// was (slow start ramps its weight over that). One clock read and one load of each atomic:
    /// the strategy asks this of every member on every request.
    pub fn up(&self) -> Option<Option<Duration>> {
        let now = now_ms();
        let until = self.down_until.load(Ordering::Relaxed);
        if self.probe_down.load(Ordering::Relaxed) || until > now {
            return None;
        }
        let since = match until {
            0 => self.back_since.load(Ordering::Relaxed),
            // The cool-down has passed but no connection has succeeded yet.
            until => until,
        };
        Some((since != 0).then(|| Duration::from_millis(now.saturating_sub(since))))
    }

    pub fn is_probe_down(&self) -> bool {
        self.probe_down.load(Ordering::Relaxed)
    }
}

/// Rise/fall bookkeeping for one backend's probes: decides when to flip its state.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProbeStreak {
    passes: u32,
    fails: u32,
}

/// What one probe result means for the backend.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Unchanged,
    WentDown,
    CameBack,
}

impl ProbeStreak {
    /// Feed one probe result; `down` is the backend's current state.
    pub fn record(&mut self, passed: bool, down: bool, rise: u32, fall: u32) -> Verdict {
        if passed {
            self.passes += 1;
            self.fails = 0;
            if down && self.passes >= rise {
                return Verdict::CameBack;
            }
        } else {
            self.fails += 1;
            self.passes = 0;
            if !down && self.fails >= fall {
                return Verdict::WentDown;
            }
        }
        Verdict::Unchanged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cool_down_skips_then_recovers() {
        let h = Health::default();
        assert!(h.is_available());
        assert!(h.connect_failed(Duration::from_secs(60)));
        assert!(
            !h.connect_failed(Duration::from_secs(60)),
            "a second failure does not restart the log"
        );
        assert!(!h.is_available());
        h.connect_succeeded();
        assert!(h.is_available());
    }

    /// ```text
    /// probes:  ok ok FAIL FAIL FAIL  ok ok
    /// state:   up up up   up   DOWN  .  UP     (fall = 3, rise = 2)
    /// ```
    #[test]
    fn rise_and_fall() {
        let mut s = ProbeStreak::default();
        let mut down = false;
        let mut flips = Vec::new();
        for passed in [true, true, false, false, false, true, true] {
            match s.record(passed, down, 2, 3) {
                Verdict::WentDown => {
                    down = true;
                    flips.push("down")
                }
                Verdict::CameBack => {
                    down = false;
                    flips.push("up")
                }
                Verdict::Unchanged => {}
            }
        }
        assert_eq!(flips, vec!["down", "up"]);
    }
}
