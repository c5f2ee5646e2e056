//! Integration tests of the `restful-server` binary: the real process, on a real socket on
//! loopback, checked the way a person or the balancer's test suite would see it. Handler details
//! are unit-tested next to the handlers (`src/*.rs`); these tests cover what only exists once the
//! binary runs: flags and exit codes, the "Starting" line, signals, and HTTP framing on the wire.
//!
//! One test binary for the crate (cargo finds `tests/it/main.rs` by itself), with a module per
//! concern:

/// `ServerProcess`, a kill-on-drop guard around a running server, and a raw HTTP/1.1 client.
mod process;

/// Flags and exit codes: a bad flag or `-p` exits 2, a taken port exits 1 with one line,
/// SIGTERM and Ctrl-C exit 0.
mod cli;

/// Over a real socket: the page and X-Served-By, `--name`, `-d` with traversal attempts,
/// streamed `bytes` framing, `sum` framing, `printcontent` printing.
mod serving;

/// `--delay` and `--delay-jitter` on a real socket: each response is late by the delay (and not
/// much more), within the jitter, and many late requests are served at once.
mod delay;
