//! Integration tests of loadgen, one test binary for the package. Every test starts its own
//! small HTTP servers on `127.0.0.1:0` inside the test process and points loadgen at them.
//!
//! - `servers`: the test servers (a backend pattern like `a,b` or `a,a,b`, one answering a fixed
//!   status, one that freezes for a while, one
//!   with a known capacity, one that never answers, a port nobody listens on, one
//!   that hashes a request header to a backend name like a sticky balancer).
//! - `library`: `loadgen::run` driven directly: counts, open-loop pacing, errors, samples,
//!   per-request keys and `--expect sticky`.
//! - `command`: the `loadgen` binary: exit codes, text report, JSON output and `merge`.
//! - `find_max`: `--find-max` against a server whose capacity is known lands within 20% of it.
//! - `html`: the HTML report: well-formed, self-contained, one chart per kind with the run's data.
//! - `stages`: `--stages` and `-q START:END`: each stage's rate or connections, second by second.
//! - `tls`: `https://` targets: `--cacert`, an unknown certificate, `--insecure`, a handshake per
//!   request with `--no-keepalive`.
//! - `pacing`: the open loop keeps its schedule to tens of microseconds, and a stalled target
//!   still shows its stall in the corrected latency.

mod command;
mod find_max;
mod html;
mod library;
mod pacing;
mod servers;
mod stages;
mod tls;
