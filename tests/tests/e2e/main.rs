//! The end-to-end suite: the real `lb`, `restful-server` and `loadgen` binaries, started as child
//! processes on ephemeral loopback ports, exactly as a user would run them.
//!
//! - `admin_page`: `lb --admin`'s live status page in headless Chromium: a backend dies, lb restarts;
//! - `walkthrough`: the article's demo flow, the documented log format, and `cargo xtask demo` itself;
//! - `failover`: a backend killed and brought back; keep-alive clients; prefix routing;
//! - `lifecycle`: graceful shutdown under load;
//! - `restart`: a backend stopped (SIGTERM, SIGKILL) and restarted under load costs no request;
//! - `traffic`: loadgen's `--expect round-robin` through lb.
//!
//! They start from `tests::cluster` (restful-servers behind one lb, which logs to stdout) and make
//! ordinary requests with reqwest (`tests::http`); the harness is described in `tests/README.md`.

mod admin_page;
mod failover;
mod lifecycle;
mod restart;
mod traffic;
mod walkthrough;
