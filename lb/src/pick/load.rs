//! A backend's live load: how many requests it is serving now, and how fast it has been answering.
//!
//! The proxy keeps one [`Load`] per backend, shared by every worker thread and every group the
//! backend is in, and updates it around each request:
//!
//! ```text
//!   let _in_flight = backend.load.start();     in_flight += 1   (-1 when the guard drops)
//!   ... send the request, wait for the head ...
//!   backend.load.observe(sent_at);             rtt estimate <- peak EWMA of the samples
//!   ... stream the body; drop the guard at the end ...
//! ```
//!
//! Counting in flight across all threads (one atomic) is what makes least-conn honest: nginx
//! counts per worker process unless given a shared memory zone, so each worker sees only its own
//! share of the load.
//!
//! The RTT estimate is a *peak* exponentially weighted moving average (Finagle, tower, linkerd).
//! A sample slower than the estimate replaces it at once, so a backend that turns slow is avoided
//! on its first slow answer. A faster sample only pulls the estimate down gradually, with a weight
//! that depends on the time since the previous sample (samples arrive unevenly):
//!
//! ```text
//!   w   = exp(-elapsed / tau)              tau = --ewma-decay, 10 s by default
//!   rtt = rtt * w + sample * (1 - w)
//!
//!   rtt ▲  20ms sample: jump
//!       │   ┌──╮
//!       │   │   ╰──╮  fast samples: glide down over ~tau
//!       │───┘       ╰────────
//!       └──────────────────────▶ time
//! ```
//!
//! Between samples the estimate also decays towards zero at the same rate, as Finagle and tower
//! do: a backend that was slow once, and so stopped being chosen, looks cheaper as time passes,
//! gets a request again, and the fresh sample tells whether it recovered.
//!
//! **Invariant:** nothing here blocks for long: one atomic per request, and (under ewma, the one
//! strategy that reads the estimate) a `Mutex` held for a few arithmetic operations per response.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// `--ewma-decay`'s default: Finagle's time constant.
pub const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Load {
    in_flight: AtomicU32,
    /// `None` when no strategy reads it (every one but ewma): then a response costs no clock read,
    /// lock or `exp()`.
    rtt: Option<Mutex<Rtt>>,
}

#[derive(Debug, Clone, Copy)]
struct Rtt {
    /// The estimate in nanoseconds as of `at`.
    nanos: f64,
    /// When it was last updated; `None` until the first sample.
    at: Option<Instant>,
    /// Tau, the time constant of the estimate's decay.
    decay: Duration,
}

impl Rtt {
    /// `exp(-elapsed / tau)`: how much of the old estimate survives `elapsed`.
    fn weight_of_past(&self, elapsed: Duration) -> f64 {
        if self.decay.is_zero() {
            return 0.0;
        }
        (-elapsed.as_secs_f64() / self.decay.as_secs_f64()).exp()
    }
}

impl Default for Load {
    fn default() -> Self {
        Load::new(DEFAULT_EWMA_DECAY)
    }
}

impl Load {
    /// An idle, unmeasured backend whose RTT estimate decays with time constant `decay`
    /// (`--ewma-decay`; zero means "no memory": the estimate is always the latest sample).
    pub fn new(decay: Duration) -> Self {
        Load {
            in_flight: AtomicU32::new(0),
            rtt: Some(Mutex::new(Rtt {
                nanos: 0.0,
                at: None,
                decay,
            })),
        }
    }

    /// A load that counts requests in flight and keeps no RTT estimate (for the strategies that
    /// read none).
    pub fn in_flight_only() -> Self {
        Load {
            in_flight: AtomicU32::new(0),
            rtt: None,
        }
    }

    /// Whether [`Load::observe`] keeps its samples: if not, the caller need not time requests.
    pub fn measures_rtt(&self) -> bool {
        self.rtt.is_some()
    }

    /// A request to this backend starts; it counts as in flight until the guard is dropped.
    ///
    /// Hold the guard until the response body is finished (a long download is load too). If it
    /// must outlive a borrow, e.g. inside a streamed body, use [`Load::start_owned`].
    #[must_use = "the request counts as in flight only while the guard lives"]
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { load: self }
    }

    /// Like [`Load::start`], for a `Load` behind an `Arc`: the guard owns a reference and can be
    /// moved into a response body (like tokio's `Semaphore::acquire_owned`).
    #[must_use = "the request counts as in flight only while the guard lives"]
    pub fn start_owned(self: Arc<Self>) -> OwnedInFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        OwnedInFlight { load: self }
    }

    /// Requests in flight right now, over all threads.
    pub fn in_flight(&self) -> u32 {
        // Relaxed: a strategy needs a recent count, not an ordering with other memory.
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Record that a response head arrived now, for a request sent at `sent`.
    pub fn observe(&self, sent: Instant) {
        let now = Instant::now(); // one clock read for the sample and its time
        self.observe_at(now.saturating_duration_since(sent), now);
    }

    /// [`Load::observe`] with the time of the sample given (for simulations and tests).
    pub fn observe_at(&self, sample: Duration, at: Instant) {
        let Some(rtt) = &self.rtt else { return };
        let sample = sample.as_secs_f64() * 1e9;
        let mut rtt = rtt.lock().unwrap_or_else(PoisonError::into_inner);
        rtt.nanos = match rtt.at {
            None => sample,
            Some(last) => {
                let w = rtt.weight_of_past(at.saturating_duration_since(last));
                if sample > rtt.nanos * w {
                    // Peak: slower than the (decayed) estimate, believe it at once.
                    sample
                } else {
                    rtt.nanos * w + sample * (1.0 - w)
                }
            }
        };
        // Threads may report out of order; time never goes back.
        rtt.at = Some(rtt.at.map_or(at, |last| last.max(at)));
    }

    /// The RTT estimate at `now`, or `None` if this backend was never measured.
    pub fn rtt_estimate(&self, now: Instant) -> Option<Duration> {
        self.rtt_nanos(now)
            .map(|ns| Duration::from_secs_f64((ns / 1e9).max(0.0)))
    }

    /// The estimate in nanoseconds, decayed from its last update to `now`.
    pub(crate) fn rtt_nanos(&self, now: Instant) -> Option<f64> {
        let rtt = *self
            .rtt
            .as_ref()?
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let at = rtt.at?;
        if rtt.decay.is_zero() {
            // No memory: the estimate is the last sample, and it does not fade either.
            return Some(rtt.nanos);
        }
        Some(rtt.nanos * rtt.weight_of_past(now.saturating_duration_since(at)))
    }
}

/// One request in flight on a backend; dropping it ends the request. See [`Load::start`].
#[derive(Debug)]
pub struct InFlight<'a> {
    load: &'a Load,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// [`InFlight`] holding an `Arc<Load>`. See [`Load::start_owned`].
#[derive(Debug)]
pub struct OwnedInFlight {
    load: Arc<Load>,
}

impl Drop for OwnedInFlight {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: f64) -> Duration {
        Duration::from_secs_f64(n / 1e3)
    }

    fn est_ms(load: &Load, at: Instant) -> f64 {
        load.rtt_estimate(at).unwrap().as_secs_f64() * 1e3
    }

    #[test]
    fn guards_count_in_flight_across_threads() {
        let load = Arc::new(Load::default());
        let a = load.start();
        let b = Arc::clone(&load).start_owned();
        assert_eq!(load.in_flight(), 2);
        std::thread::scope(|s| {
            s.spawn(move || drop(b));
        });
        assert_eq!(load.in_flight(), 1);
        drop(a);
        assert_eq!(load.in_flight(), 0);
    }

    /// ```text
    /// t (s):     0     1      2       2      12     22
    /// sample:   10ms  20ms    -      10ms    -      -
    /// estimate: 10    20     18.10   19.05   7.01   2.58
    ///                 jump   idle:   blend:  idle: fading towards 0
    ///                        fading  20*w + 10*(1-w), w = e^-0.1
    /// ```
    ///
    /// (Reading between samples shows the idle decay; a sample then blends with the value stored
    /// at the previous sample, so the 10 ms sample lands above the faded 18.10: idle time counts
    /// as "no news", not as fast answers. Finagle's estimate behaves the same way.)
    #[test]
    fn peak_ewma_jumps_up_and_glides_down() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let load = Load::new(Duration::from_secs(10));
        assert_eq!(load.rtt_estimate(t0), None);
        load.observe_at(ms(10.0), t0);
        assert!((est_ms(&load, t0) - 10.0).abs() < 1e-6);
        load.observe_at(ms(20.0), t0 + s(1));
        assert!((est_ms(&load, t0 + s(1)) - 20.0).abs() < 1e-6);
        // One second of idleness: 20 * e^-0.1.
        assert!((est_ms(&load, t0 + s(2)) - 18.097).abs() < 1e-3);
        // A faster sample after 1 s: 20 * e^-0.1 + 10 * (1 - e^-0.1).
        load.observe_at(ms(10.0), t0 + s(2));
        let after = est_ms(&load, t0 + s(2));
        assert!((after - 19.048).abs() < 1e-3, "{after}");
        assert!((est_ms(&load, t0 + s(12)) - after * (-1.0f64).exp()).abs() < 1e-6);
        assert!((est_ms(&load, t0 + s(22)) - after * (-2.0f64).exp()).abs() < 1e-6);
    }

    #[test]
    fn steady_samples_converge() {
        let t0 = Instant::now();
        let load = Load::new(Duration::from_secs(1));
        load.observe_at(ms(50.0), t0);
        for i in 1..=2000 {
            load.observe_at(ms(5.0), t0 + Duration::from_millis(i * 10));
        }
        let e = est_ms(&load, t0 + Duration::from_millis(20_000));
        assert!((e - 5.0).abs() < 0.01, "{e}");
    }

    #[test]
    fn zero_decay_keeps_only_the_last_sample() {
        let t0 = Instant::now();
        let load = Load::new(Duration::ZERO);
        load.observe_at(ms(50.0), t0);
        load.observe_at(ms(5.0), t0 + ms(1.0));
        assert!((est_ms(&load, t0 + ms(1.0)) - 5.0).abs() < 1e-6);
    }

    /// The balancer keeps latency estimates only when its strategy reads them.
    #[test]
    fn only_ewma_times_its_backends() {
        for (balance, timed) in [
            ("ewma", true),
            ("round-robin", false),
            ("least-conn", false),
            ("p2c", false),
            ("hash:uri", false),
        ] {
            let config = crate::cli::parse([
                "lb",
                "-p",
                "0",
                "--balance",
                balance,
                "-b",
                "/",
                "127.0.0.1:9",
            ])
            .unwrap();
            let balancer =
                crate::Balancer::new(&config, Default::default(), Default::default()).unwrap();
            let load = &balancer.backends[0].load;
            assert_eq!(load.measures_rtt(), timed, "{balance}");
            load.observe_at(ms(5.0), Instant::now());
            assert_eq!(load.rtt_nanos(Instant::now()).is_some(), timed, "{balance}");
        }
    }
}
