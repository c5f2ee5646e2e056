//! Integration tests of the `restful-server` binary: the real process, on a real socket on
//! loopback, checked the way a person or the balancer's test suite would see it. Handler details
//! are unit-tested next to the handlers (`src/*.rs`); these tests cover what only exists once the
//! binary runs: flags and exit codes, the "Starting" line, signals, and HTTP framing on the wire.
//!
//! The process, its readiness line and its clean-up come from the workspace's test harness
//! (`tests`, see `tests/README.md`): [`server`] starts this crate's own binary with it. Requests
//! are made with reqwest (`tests::http`), and with raw bytes (`tests::RawClient`) where the exact
//! request line is the point; one-shot runs of the binary use `assert_cmd`.
//!
//! One test binary for the crate (cargo finds `tests/it/main.rs` by itself), with a module per
//! concern:

/// Flags and exit codes: a bad flag or `-p` exits 2, a taken port exits 1 with one line,
/// SIGTERM and Ctrl-C exit 0.
mod cli;

/// Over a real socket: the page and X-Served-By, `--name`, `-d` with traversal attempts,
/// streamed `bytes` framing, `sum` framing, `printcontent` printing.
mod serving;

/// `--delay` and `--delay-jitter` on a real socket: each response is late by the delay (and not
/// much more), within the jitter, and many late requests are served at once.
mod delay;

use std::path::Path;

use tests::RestfulServer;

/// This crate's binary, which cargo builds for its integration tests.
const BIN: &str = env!("CARGO_BIN_EXE_restful-server");

/// `restful-server ARGS`, once it has printed its "Starting" line; killed when dropped. Pass
/// `-p 0` (or an `IP:0`) so that the system picks a free port; the line says which.
fn server(args: &[&str]) -> RestfulServer {
    RestfulServer::start_bin(Path::new(BIN), args)
}
