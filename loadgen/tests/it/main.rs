//! Integration tests of loadgen, one test binary for the package. Every test points loadgen at
//! servers it starts on `127.0.0.1:0` in this process, on threads of their own: the harness's
//! misbehaving backend (`tests::BadBackend`), or the stand-ins for a balancer in `support`.
//!
//! The client is always loadgen itself, since loadgen is what is tested: `loadgen::run` in async
//! tests (it is an async function), or the binary, run to its end, in plain tests where what a
//! user sees (exit codes, text, files) is the point.
//!
//! - `support`: what these tests add to the harness: targets that name their backends in a
//!   pattern like `a,b` or `a,a,b`, or by hashing a request header (sticky), an HTTPS target,
//!   and the binary run with `assert_cmd`.
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
mod stages;
mod support;
mod tls;
