//! What `lb` counts while it works, for `--admin` (`/metrics`, `/status`, the live page).
//!
//! Every counter is an atomic updated once per request by the thread that served it, so counting
//! costs a few uncontended atomic additions and no lock. The admin listener reads them when asked.
//! Two kinds of numbers:
//!
//! - **totals since start** ([`BackendStats`]'s counters and latency histogram): exact, what
//!   Prometheus scrapes (`lb_requests_total` sums to the number of requests answered);
//! - **the last minute, second by second** ([`Window`]): requests, and a latency histogram per
//!   second, so that `/status` can say "req/s, share and p50/p99 over the last 10 s" and the page
//!   can draw a 60 s sparkline.
//!
//! ```text
//!   Completion::finish ──record(status, duration, bytes)──> BackendStats ──> admin: /metrics
//!                                                             └─ Window ────> admin: /status, /events
//! ```

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The status classes counted: index 0 is `1xx`, ..., 4 is `5xx`.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Upper bounds (seconds) of the latency histogram `/metrics` exposes: fine below a millisecond,
/// where requests on loopback live, coarse up to the 30 s response timeout.
pub const DURATION_BUCKETS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

pub use crate::clock::unix_ms;

fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// Counters of one backend (or of requests no backend served).
#[derive(Debug)]
pub struct BackendStats {
    /// Requests answered, by status class.
    pub requests: [AtomicU64; 5],
    /// Response body bytes sent to clients.
    pub bytes: AtomicU64,
    /// Requests that failed on this backend before any byte was sent (connect refused or timed
    /// out, or a pooled connection closed first): moved on to the next member.
    pub connect_failures: AtomicU64,
    /// Requests lost on this backend after they were sent (reset or closed before a response).
    pub lost: AtomicU64,
    /// Health-check results: passes, failures.
    pub health_checks: [AtomicU64; 2],
    /// The last health check: passed?, when (Unix ms), what it said.
    pub last_health_check: Mutex<Option<(bool, u64, String)>>,
    duration: Histogram,
    pub window: Window,
}

impl Default for BackendStats {
    fn default() -> Self {
        BackendStats {
            requests: Default::default(),
            bytes: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            health_checks: Default::default(),
            last_health_check: Mutex::new(None),
            duration: Histogram::default(),
            window: Window::default(),
        }
    }
}

impl BackendStats {
    /// One finished request: its status, how long it took from head to end, body bytes.
    pub fn record(&self, status: u16, duration: Duration, bytes: u64) {
        if let Some(counter) = self.requests.get(class_index(status)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.duration.observe(duration);
        self.window.record(status, duration);
    }

    /// One health check's result.
    pub fn health_checked(&self, passed: bool, detail: String) {
        let slot = usize::from(!passed);
        if let Some(counter) = self.health_checks.get(slot) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let mut last = self
            .last_health_check
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *last = Some((passed, unix_ms(), detail));
    }

    /// Requests answered so far, all classes.
    pub fn total(&self) -> u64 {
        self.requests
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// The latency histogram: (sum in seconds, count, per-bucket counts aligned with
    /// [`DURATION_BUCKETS`] plus a last one for anything slower).
    pub fn duration(&self) -> (f64, u64, Vec<u64>) {
        self.duration.snapshot()
    }
}

/// A latency histogram with fixed buckets, one atomic per bucket.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(DURATION_BUCKETS.len());
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos
            .fetch_add(duration.as_nanos() as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> (f64, u64, Vec<u64>) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, counts.iter().sum(), counts)
    }
}

/// How many one-second slots the window keeps.
pub const WINDOW_SECONDS: usize = 60;
/// Latency buckets per second: powers of √2 from 10 µs, so a percentile read from them is within
/// about 20% of the truth, from 10 µs to past a minute.
const FINE_BUCKETS: usize = 48;
const FINE_BASE_US: f64 = 10.0;

/// The last [`WINDOW_SECONDS`] seconds of one backend, one slot per second (a ring indexed by the
/// Unix second; a slot from an older second is cleared before it is reused).
#[derive(Debug)]
pub struct Window {
    slots: Vec<Slot>,
}

#[derive(Debug)]
struct Slot {
    /// The Unix second this slot holds (0: never used).
    second: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU32; FINE_BUCKETS],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            second: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

impl Default for Window {
    fn default() -> Self {
        Window {
            slots: (0..WINDOW_SECONDS).map(|_| Slot::default()).collect(),
        }
    }
}

/// One second of one backend, as `/status` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Second {
    pub unix_s: u64,
    pub requests: u64,
    /// Responses with a 5xx status.
    pub errors: u64,
    /// 99th percentile latency in milliseconds (0 when there was no request).
    pub p99_ms: f64,
}

impl Window {
    fn record(&self, status: u16, duration: Duration) {
        let second = unix_ms() / 1000;
        let Some(slot) = self.slots.get(second as usize % WINDOW_SECONDS) else {
            return;
        };
        let held = slot.second.load(Ordering::Relaxed);
        if held != second
            && slot
                .second
                .compare_exchange(held, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // This thread moved the slot to the new second: clear the old counts. (A request
            // recorded by another thread in that instant may be lost: these are rates for people
            // to look at; the exact totals are in `BackendStats`.)
            slot.requests.store(0, Ordering::Relaxed);
            slot.errors.store(0, Ordering::Relaxed);
            for bucket in &slot.latency {
                bucket.store(0, Ordering::Relaxed);
            }
        }
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(bucket) = slot.latency.get(fine_bucket(duration)) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Each of the last `seconds` complete seconds (oldest first), ending with the one before
    /// `now_s` (the current second is still filling).
    pub fn seconds(&self, now_s: u64, seconds: usize) -> Vec<Second> {
        (1..=seconds as u64)
            .rev()
            .map(|ago| {
                let unix_s = now_s.saturating_sub(ago);
                let mut second = Second {
                    unix_s,
                    ..Second::default()
                };
                if let Some(slot) = self.slot_for(unix_s) {
                    let buckets = slot.buckets();
                    second.requests = slot.requests.load(Ordering::Relaxed);
                    second.errors = slot.errors.load(Ordering::Relaxed);
                    second.p99_ms = percentile(&buckets, 0.99);
                }
                second
            })
            .collect()
    }

    /// Requests and the (p50, p99) latency in ms over the last `seconds` complete seconds.
    pub fn summary(&self, now_s: u64, seconds: usize) -> (u64, f64, f64) {
        let mut merged = [0u64; FINE_BUCKETS];
        let mut requests = 0;
        for ago in 1..=seconds as u64 {
            if let Some(slot) = self.slot_for(now_s.saturating_sub(ago)) {
                requests += slot.requests.load(Ordering::Relaxed);
                for (m, b) in merged.iter_mut().zip(slot.buckets()) {
                    *m += b;
                }
            }
        }
        (
            requests,
            percentile(&merged, 0.5),
            percentile(&merged, 0.99),
        )
    }

    fn slot_for(&self, unix_s: u64) -> Option<&Slot> {
        let slot = self.slots.get(unix_s as usize % WINDOW_SECONDS)?;
        (slot.second.load(Ordering::Relaxed) == unix_s).then_some(slot)
    }
}

impl Slot {
    fn buckets(&self) -> [u64; FINE_BUCKETS] {
        let mut out = [0u64; FINE_BUCKETS];
        for (o, b) in out.iter_mut().zip(&self.latency) {
            *o = u64::from(b.load(Ordering::Relaxed));
        }
        out
    }
}

/// Bucket `i` holds latencies up to `10 µs × √2^i`.
fn fine_bucket(duration: Duration) -> usize {
    let us = duration.as_secs_f64() * 1e6;
    if us <= FINE_BASE_US {
        return 0;
    }
    let i = (2.0 * (us / FINE_BASE_US).log2()).ceil() as usize;
    i.min(FINE_BUCKETS - 1)
}

/// The `q` quantile in milliseconds, read as the geometric middle of its bucket.
fn percentile(buckets: &[u64; FINE_BUCKETS], q: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, &n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let upper_us = FINE_BASE_US * 2f64.powf(i as f64 / 2.0);
            let middle_us = if i == 0 {
                upper_us / 2.0
            } else {
                upper_us / 2f64.powf(0.25)
            };
            return middle_us / 1000.0;
        }
    }
    0.0
}

/// Counters of the balancer as a whole.
#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    pub started_unix_ms: u64,
    /// Client connections open now, and accepted since start.
    pub connections_open: AtomicI64,
    pub connections_accepted: AtomicU64,
    /// Requests that no backend served (no route, a refused head, all backends down before any
    /// was chosen), so that the per-backend counts plus these add up to every request.
    pub unserved: BackendStats,
    /// Attempts after the first (retries and failovers), over all backends.
    pub retries: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            started_unix_ms: unix_ms(),
            connections_open: AtomicI64::new(0),
            connections_accepted: AtomicU64::new(0),
            unserved: BackendStats::default(),
            retries: AtomicU64::new(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_totals() {
        let s = BackendStats::default();
        for status in [200, 204, 301, 404, 502, 499] {
            s.record(status, Duration::from_micros(300), 10);
        }
        let counts: Vec<u64> = s
            .requests
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, vec![0, 2, 1, 2, 1]);
        assert_eq!(s.total(), 6);
        let (sum, count, buckets) = s.duration();
        assert_eq!(count, 6);
        assert!((sum - 0.0018).abs() < 1e-9);
        assert_eq!(buckets[3], 6, "300 µs falls in the (250 µs, 500 µs] bucket");
    }

    /// ```text
    /// latency:   0.4 ms x 98, 20 ms x 2
    /// p50 ≈ 0.4 ms (within a √2 bucket), p99 ≈ 20 ms
    /// ```
    #[test]
    fn window_percentiles_are_within_a_bucket() {
        let w = Window::default();
        for _ in 0..98 {
            w.record(200, Duration::from_micros(400));
        }
        for _ in 0..2 {
            w.record(200, Duration::from_millis(20));
        }
        let now = unix_ms() / 1000 + 1;
        let (requests, p50, p99) = w.summary(now, 10);
        assert_eq!(requests, 100);
        assert!((0.3..0.5).contains(&p50), "p50 {p50}");
        assert!((15.0..25.0).contains(&p99), "p99 {p99}");
        let seconds = w.seconds(now, 60);
        assert_eq!(seconds.len(), 60);
        assert_eq!(seconds.iter().map(|s| s.requests).sum::<u64>(), 100);
    }
}
