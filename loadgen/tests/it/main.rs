//! Integration tests of loadgen, one test binary for the package. Every test starts its own
//! small HTTP servers on `127.0.0.1:0` inside the test process and points loadgen at them.
//!
//! - `servers`: the test servers (a backend pattern like `a,b` or `a,a,b`, one that never
//!   answers, a port nobody listens on).
//! - `library`: `loadgen::run` driven directly: counts, open-loop pacing, errors, samples.
//! - `command`: the `loadgen` binary: exit codes, text report, JSON output and `merge`.

mod command;
mod library;
mod servers;
