//! How much CPU the generator itself used, so a report can say what the measurement cost (a
//! generator that needs a whole core on a two-core machine takes it from the target).
//!
//! Each of loadgen's own threads (the event loops) reads its CPU time as it ends and the run adds
//! them up; the caller's threads (an in-process test server, the progress
//! bar) are not counted. The figure comes from `/proc/thread-self/schedstat`, whose first field
//! is the nanoseconds the thread has spent on a CPU, user and system time together, exact to the
//! scheduler's accounting rather than to the 10 ms ticks of `/proc/PID/stat`. Reading a file
//! keeps this free of `unsafe` (no `getrusage` binding); where there is no such file (not
//! Linux, or a kernel without scheduler statistics) the figure is `None`.

use std::time::Duration;

/// CPU time (user + system) the calling thread has used so far.
pub fn this_thread() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    parse_schedstat(&text)
}

/// `schedstat` is three numbers: time on CPU (ns), time waiting to run (ns), time slices run.
fn parse_schedstat(text: &str) -> Option<Duration> {
    let ns = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_field() {
        assert_eq!(
            parse_schedstat("373440 0 1\n"),
            Some(Duration::from_nanos(373_440))
        );
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("lots"), None);
    }

    #[test]
    fn grows_while_the_thread_works() {
        let Some(before) = this_thread() else {
            return; // no /proc/thread-self/schedstat here
        };
        // Spin until the thread has been on a CPU for 10 ms more. On a shared machine that can
        // take much longer than 10 ms of wall time (the test used to spin for a fixed 20 ms and
        // fail when the core was busy elsewhere); the figure must grow all the same.
        let give_up = std::time::Instant::now() + Duration::from_secs(10);
        let mut after = before;
        while after - before < Duration::from_millis(10) && std::time::Instant::now() < give_up {
            for _ in 0..10_000 {
                std::hint::spin_loop();
            }
            after = this_thread().unwrap();
        }
        assert!(
            after - before >= Duration::from_millis(10),
            "{before:?} -> {after:?}"
        );
    }
}
