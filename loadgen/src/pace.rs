//! Open-loop pacing (`-q RATE`): when each request is due, waiting for that moment to within
//! tens of microseconds, and the split of a late send into the generator's fault and the
//! target's.
//!
//! **Why not tokio's timer.** The open loop measures latency from each request's *scheduled*
//! time, so any delay between that time and the send is counted as the target's latency. tokio's
//! timer works in whole milliseconds and rounds a deadline up to the next one, and its event loop
//! sleeps in `epoll_wait`, whose timeout is also in milliseconds: a request put to sleep until its
//! time left on average ~1 ms late, ten times what a proxy on loopback adds (issue 18).
//!
//! **A timerfd in the event loop.** Linux offers timers as file descriptors (`timerfd_create(2)`)
//! with nanosecond resolution. Each worker owns one, registered with its thread's event loop
//! like a socket ([`AsyncFd`]): the worker arms it for its next slot and awaits it as it would
//! await a readable socket, so `epoll_wait` returns when the timer fires, on the thread that will
//! send. No extra thread, no cross-thread wake-up, no `unsafe` (the `rustix` crate wraps the
//! system calls). Where no timerfd can be had (not Linux, out of file descriptors), the worker
//! falls back to tokio's timer and the report shows the resulting lateness.
//!
//! **Wake early, then yield the last stretch.** Even a precise timer wakes a thread late: an
//! idle CPU must leave its sleep state first, which on a virtual machine costs tens of
//! microseconds, more after a longer idle (about 0.1 ms after 10 ms on the machine this was
//! written on). So the worker arms its timer a `margin` early and, once woken, yields to the
//! event loop until the slot comes (each yield lets the loop poll its sockets, so other
//! connections on the thread are not held up). The margin is learned while running, as an
//! estimate of the 90th percentile of how late the timer's wake-ups are (a "frugal" streaming
//! quantile: one step up when a wake-up was later than the margin, a ninth of a step down
//! otherwise), so nine wake-ups in ten land before the slot. It is capped at 5% of the time
//! between two sends of the thread (and at [`MAX_MARGIN`]), so a generator spends at most 5% of a
//! core waiting actively, whatever the rate: an idle generator sleeps.
//!
//! **Whose lateness.** A send can leave after its time for two reasons, and they mean opposite
//! things. If the worker's connection was still busy with the previous answer when the slot came
//! (the target was slow), the wait is exactly what coordinated-omission correction must count:
//! that is *target lag*. If the connection was free and the request still left late (the timer
//! woke late, the event loop was busy, the CPU was taken), the delay is the generator's own
//! *send lateness*, and it inflates the corrected latency with something that is not the
//! target's: a measurement error that the report warns about. [`SendTiming`] makes the split.

use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

use crate::stages::Ramp;

/// The first margin, before anything is learned.
const INITIAL_MARGIN: Duration = Duration::from_micros(100);
/// The margin never grows beyond this. On an overloaded machine wake-ups come milliseconds late;
/// waiting actively for milliseconds before every send would only take more CPU from the target.
pub(crate) const MAX_MARGIN: Duration = Duration::from_micros(250);
/// Nor beyond this share of the time between two sends of one thread, which bounds the active
/// waiting to 5% of a core at any rate. (At 10,000 req/s on two threads that is 10 µs per send,
/// about what a busy thread's wake-ups take.)
pub(crate) const MAX_SPIN_SHARE: f64 = 0.05;
/// Learning steps: up when a wake-up was later than the margin, down (nine times smaller) when
/// it was not. At equilibrium one wake-up in ten is late: the margin is the 90th percentile.
const MARGIN_UP: Duration = Duration::from_nanos(4_500);
const MARGIN_DOWN: Duration = Duration::from_nanos(500);

/// When each request of an open-loop run is due: slot `i` at `start + i / rate`, for slots below
/// `limit` that fall before `deadline`. Worker `k` of `c` owns slots `k, k + c, k + 2c, ...`.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    pub start: Instant,
    /// Seconds between two slots (`1 / rate`).
    interval: f64,
    pub connections: usize,
    pub limit: Option<u64>,
    pub deadline: Option<Instant>,
    /// `--stages` / `-q START:END`: the rate changes over time, and slot `i` is due when the
    /// ramp has planned `i` sends (`Ramp::time_of`); `interval` is then the one at the peak.
    pub ramp: Option<Ramp>,
}

impl Schedule {
    pub fn new(
        start: Instant,
        rate: f64,
        connections: usize,
        limit: Option<u64>,
        deadline: Option<Instant>,
    ) -> Schedule {
        Schedule {
            start,
            interval: 1.0 / rate,
            connections: connections.max(1),
            limit,
            deadline,
            ramp: None,
        }
    }

    /// The same schedule following `ramp`'s rate (`rate` given to [`Schedule::new`] should be
    /// its peak, for [`Schedule::max_margin`]).
    pub fn ramping(mut self, ramp: Ramp) -> Schedule {
        self.ramp = Some(ramp);
        self
    }

    /// When `slot` is due, or `None` if the run ends before it.
    pub fn due(&self, slot: u64) -> Option<Instant> {
        if self.limit.is_some_and(|n| slot >= n) {
            return None;
        }
        let offset = match &self.ramp {
            Some(ramp) => ramp.time_of(slot)?,
            None => slot as f64 * self.interval,
        };
        let due = self.start + Duration::from_secs_f64(offset);
        match self.deadline {
            Some(d) if due >= d => None,
            _ => Some(due),
        }
    }

    /// Worker `k`'s slots in order, with their due times; the iterator ends with the run.
    pub fn slots(&self, k: usize) -> impl Iterator<Item = (u64, Instant)> + '_ {
        (k as u64..)
            .step_by(self.connections)
            .map_while(|slot| self.due(slot).map(|due| (slot, due)))
    }

    /// The most a worker may wait actively before each send when `threads` threads share the
    /// sends (see [`MAX_SPIN_SHARE`]).
    pub fn max_margin(&self, threads: usize) -> Duration {
        let between_sends = self.interval * threads.max(1) as f64;
        Duration::from_secs_f64(between_sends * MAX_SPIN_SHARE).min(MAX_MARGIN)
    }
}

/// One worker's alarm clock: waits until an [`Instant`] to within microseconds (module doc).
pub(crate) struct Alarm {
    /// The worker's timerfd, registered with its thread's event loop; `None` where none could
    /// be created, and then tokio's millisecond timer is used.
    timer: Option<AsyncFd<std::os::fd::OwnedFd>>,
    margin: Duration,
    max_margin: Duration,
}

impl Alarm {
    /// An alarm that waits actively for at most `max_margin` before each slot. Must be called
    /// inside the tokio runtime the worker runs on (the timer joins its event loop).
    pub fn new(max_margin: Duration) -> Alarm {
        use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
        let timer = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .ok()
        .and_then(register);
        Alarm {
            timer,
            margin: INITIAL_MARGIN.min(max_margin),
            max_margin,
        }
    }

    /// Returns once `due` has come: sleeps until `margin` before it, then yields to the event
    /// loop until it is there. Never returns early.
    pub async fn until(&mut self, due: Instant) {
        loop {
            let now = Instant::now();
            if now >= due {
                return;
            }
            if due - now <= self.margin {
                tokio::task::yield_now().await;
                continue;
            }
            let wake_at = due - self.margin;
            self.sleep(wake_at - now).await;
            let woke = Instant::now();
            // Only a timed wake-up teaches the margin; one before `wake_at` (the fallback timer
            // or a spurious readiness) says nothing about how late timers fire.
            if woke >= wake_at {
                self.learn(woke - wake_at);
            }
        }
    }

    /// Sleeps for about `span` (not less), on the timerfd if there is one.
    async fn sleep(&mut self, span: Duration) {
        let Some(timer) = &self.timer else {
            tokio::time::sleep(span).await;
            return;
        };
        if arm(timer, span).is_err() {
            self.timer = None;
            tokio::time::sleep(span).await;
            return;
        }
        loop {
            let Ok(mut ready) = timer.readable().await else {
                self.timer = None;
                return;
            };
            // Reading the expiration count clears the readiness; WouldBlock means the event
            // loop's readiness was stale and the timer has not fired yet.
            let mut expirations = [0u8; 8];
            match ready.try_io(|fd| {
                rustix::io::read(fd.get_ref(), &mut expirations).map_err(std::io::Error::from)
            }) {
                Ok(Ok(_)) => return,
                Ok(Err(_)) => {
                    self.timer = None;
                    return;
                }
                Err(_would_block) => continue,
            }
        }
    }

    fn learn(&mut self, overshoot: Duration) {
        self.margin = if overshoot > self.margin {
            (self.margin + MARGIN_UP).min(self.max_margin)
        } else {
            self.margin.saturating_sub(MARGIN_DOWN)
        };
    }
}

/// Registers the timerfd with the current thread's event loop.
///
/// tokio 1.54 deprecated the safe `AsyncFd::new` in favour of an `unsafe fn register`, because
/// for an arbitrary `T: AsRawFd` nothing guarantees that the descriptor stays open and the same
/// while the `AsyncFd` lives. An [`OwnedFd`](std::os::fd::OwnedFd) does guarantee it (it owns
/// the descriptor and closes it only when dropped, after the `AsyncFd` is gone), so the
/// deprecated constructor is sound here, and it keeps this crate free of `unsafe` code
/// (`unsafe_code = "forbid"` in the workspace).
#[allow(deprecated)]
fn register(fd: std::os::fd::OwnedFd) -> Option<AsyncFd<std::os::fd::OwnedFd>> {
    AsyncFd::with_interest(fd, tokio::io::Interest::READABLE).ok()
}

/// Arms `timer` to fire once, `span` from now. A zero `it_value` would disarm it, hence the
/// 1 ns floor.
fn arm(timer: &AsyncFd<std::os::fd::OwnedFd>, span: Duration) -> rustix::io::Result<()> {
    use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
    let span = span.max(Duration::from_nanos(1));
    let value = Itimerspec {
        it_interval: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: Timespec {
            tv_sec: i64::try_from(span.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(span.subsec_nanos()),
        },
    };
    timerfd_settime(timer.get_ref(), TimerfdTimerFlags::empty(), &value).map(|_| ())
}

/// When one open-loop send was due, when its connection became free for it, and when it left.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendTiming {
    pub due: Instant,
    /// When the worker finished the previous exchange on its connection (the run's start for
    /// the first one): from then on the request could have been sent.
    pub ready: Instant,
    pub sent: Instant,
}

impl SendTiming {
    /// How late the send left because of the generator: from the later of its time and its
    /// connection becoming free, to when it actually left.
    pub fn generator_lateness(&self) -> Duration {
        self.sent
            .saturating_duration_since(self.due.max(self.ready))
    }

    /// How long after its time the connection became free (the target was still busy with the
    /// previous request), or `None` if it was free on time.
    pub fn target_lag(&self) -> Option<Duration> {
        (self.ready > self.due).then(|| self.ready - self.due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_ends_at_the_limit_or_the_deadline() {
        let start = Instant::now();
        let s = Schedule::new(start, 1000.0, 3, Some(5), None);
        assert_eq!(s.due(4), Some(start + Duration::from_millis(4)));
        assert_eq!(s.due(5), None);
        // Worker 1 of 3 owns slots 1 and 4 of 5 (0 1 2 3 4 -> workers 0 1 2 0 1).
        let mine: Vec<u64> = s.slots(1).map(|(slot, _)| slot).collect();
        assert_eq!(mine, [1, 4]);
        let s = Schedule::new(
            start,
            1000.0,
            3,
            None,
            Some(start + Duration::from_millis(10)),
        );
        assert!(s.due(9).is_some() && s.due(10).is_none());
    }

    #[test]
    fn active_waiting_is_capped_at_a_twentieth_of_a_thread_s_time() {
        let s = |rate| Schedule::new(Instant::now(), rate, 8, None, None);
        // 100 req/s on 2 threads: 20 ms between a thread's sends, 5% is 1 ms, capped at 250 µs.
        assert_eq!(s(100.0).max_margin(2), MAX_MARGIN);
        // 10,000 req/s on 2 threads: 200 µs between a thread's sends, 5% is 10 µs.
        assert_eq!(s(10_000.0).max_margin(2), Duration::from_micros(10));
    }

    /// ```text
    ///             due        ready       sent        generator   target
    /// free early  10         5           12          2           -
    /// busy        10         15          16          1           5
    /// ```
    #[test]
    fn lateness_is_split_between_generator_and_target() {
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);
        let early = SendTiming {
            due: at(10),
            ready: at(5),
            sent: at(12),
        };
        assert_eq!(early.generator_lateness(), Duration::from_micros(2));
        assert_eq!(early.target_lag(), None);
        let busy = SendTiming {
            due: at(10),
            ready: at(15),
            sent: at(16),
        };
        assert_eq!(busy.generator_lateness(), Duration::from_micros(1));
        assert_eq!(busy.target_lag(), Some(Duration::from_micros(5)));
    }

    #[test]
    fn margin_learns_the_ninetieth_percentile() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _inside = runtime.enter();
        let mut a = Alarm::new(MAX_MARGIN);
        // Wake-ups 10 µs late nine times in ten and 40 µs late once settle the margin between
        // the two, where one wake-up in ten is late.
        for i in 0..10_000 {
            a.learn(Duration::from_micros(if i % 10 == 0 { 40 } else { 10 }));
        }
        assert!(
            (Duration::from_micros(10)..=Duration::from_micros(45)).contains(&a.margin),
            "{:?}",
            a.margin
        );
        for _ in 0..10_000 {
            a.learn(Duration::from_millis(5));
        }
        assert_eq!(a.margin, MAX_MARGIN);
    }

    /// The alarm never rings early, and (loosely: this checks the mechanism, not the machine;
    /// tests/it/pacing.rs measures) rings well within a millisecond.
    #[test]
    fn alarm_rings_on_time() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut late: Vec<Duration> = runtime.block_on(async {
            let mut alarm = Alarm::new(MAX_MARGIN);
            let start = Instant::now();
            let mut late = Vec::new();
            for i in 1..=40 {
                let due = start + Duration::from_micros(500 * i);
                alarm.until(due).await;
                let now = Instant::now();
                assert!(now >= due, "rang before its time");
                late.push(now - due);
            }
            late
        });
        late.sort();
        assert!(late[20] < Duration::from_millis(1), "{late:?}");
    }
}
