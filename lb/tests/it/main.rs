//! Integration tests of `lb`: real sockets on loopback, real `restful-server` backends running in
//! this process, and the real `lb` binary where the command line or signals are what is tested.
//! Logic that needs no socket (routing tables, rewriting, header lists, log formats) is
//! unit-tested next to the code in `src/`.
//!
//! The tests are plain blocking functions on the workspace's harness (`tests`, described in
//! `tests/README.md`): processes behind kill-on-drop guards, reqwest for ordinary requests, a raw
//! client for exact bytes, a misbehaving backend. Each file's opening comment says which clients
//! it uses and why.
//!
//! One test binary for the crate, with a module per concern:

/// Backends and a balancer running in this process (on threads of their own), lb's binary, and
/// checks of the access log.
mod support;

/// The binary's command line: usage errors exit 2 naming the flag, a taken port exits 1,
/// `-p 0` and `-l -` output, `--trace`.
mod cli;

/// Which backend serves what: round robin on new and keep-alive connections, log lines, prefix
/// replacement, longest prefix, vhosts, redirects, no route.
mod routing;

/// `--balance` and `-w`: exact smooth round-robin sequences in the log, least-conn and p2c at zero
/// load, consistent hashing when a backend dies or is removed, failover under every strategy, a
/// slow backend avoided by the load-aware strategies.
mod balancing;

/// What crosses the balancer: hop-by-hop headers and X-Forwarded-For as the backend sees them,
/// pipelining, streaming a slow reply, 50 MB each way.
mod proxying;

/// Broken backends and impatient clients: failover, all down (502), 504, slow uploads, a backend
/// dying mid-body, clients hanging up mid-reply.
mod failures;

/// One access-log line per request, however it ends: refused heads (400, 431, 408), requests cut
/// off by shutdown.
mod logging;

/// `--admin`: exact counters in /metrics and /status, a dead backend's state, /events, a taken
/// admin port.
mod admin;

/// `-s` (HTTPS in front, certificate problems, plain HTTP and stalled handshakes) and `-D` (the
/// hexdump of both legs).
mod tls;

/// Stopping: SIGTERM drains in-flight requests and exits 0; `run`'s shutdown future does the same.
mod lifecycle;
