//! The clocks lb reads on every request, and what each read costs.
//!
//! A request reads the time a dozen times: when its head started coming, when it was sent, when
//! its answer came, when a pooled connection went idle, for the `Date` header and for the admin
//! page's counts per second. A precise read (`Instant::now`, `CLOCK_MONOTONIC` through the vDSO)
//! costs about 35 ns on the machine README's figures come from, and `SystemTime::now` 55 ns; the
//! kernel's coarse clocks (`CLOCK_MONOTONIC_COARSE`, `CLOCK_REALTIME_COARSE`: the time of the
//! last timer tick, at most a few milliseconds old) cost 6 ns. So what needs milliseconds or
//! seconds (timeouts, health, the pool's idle ages, `Date`, counts per second) reads the coarse
//! clocks here, and only what measures a request (its latency, the access log's duration) reads
//! `Instant`. (nginx caches its time once per event-loop turn for the same reason.)

use std::sync::OnceLock;

/// Milliseconds since the first call: a cheap monotonic clock that fits in an atomic. Coarse: it
/// may lag the precise clock by a tick (a few milliseconds). Never 0, so 0 can mean "never".
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<u64> = OnceLock::new();
    let now = monotonic_ms();
    now.saturating_sub(*EPOCH.get_or_init(|| now)) + 1
}

/// Milliseconds since the Unix epoch (coarse, as [`now_ms`]).
pub fn unix_ms() -> u64 {
    realtime_ms()
}

#[cfg(target_os = "linux")]
fn monotonic_ms() -> u64 {
    millis(rustix::time::clock_gettime(
        rustix::time::ClockId::MonotonicCoarse,
    ))
}

#[cfg(target_os = "linux")]
fn realtime_ms() -> u64 {
    millis(rustix::time::clock_gettime(
        rustix::time::ClockId::RealtimeCoarse,
    ))
}

#[cfg(target_os = "linux")]
fn millis(t: rustix::time::Timespec) -> u64 {
    (t.tv_sec as u64)
        .saturating_mul(1000)
        .saturating_add(t.tv_nsec as u64 / 1_000_000)
}

/// Elsewhere, the precise clocks.
#[cfg(not(target_os = "linux"))]
fn monotonic_ms() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

#[cfg(not(target_os = "linux"))]
fn realtime_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clocks_keep_time() {
        let (ms, unix) = (now_ms(), unix_ms());
        assert!(ms >= 1);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let waited = now_ms() - ms;
        assert!((40..1000).contains(&waited), "{waited} ms");
        let precise = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(precise.abs_diff(unix_ms()) < 100, "within a tick or two");
        assert!(unix_ms() >= unix);
    }
}
