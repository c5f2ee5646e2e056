//! The end-to-end suite: the real `lb`, `restful-server` and `loadgen` binaries, started as child
//! processes on ephemeral loopback ports, exactly as a user would run them.
//!
//! - `admin_page`: `lb --admin`'s live status page in headless Chromium: a backend dies, lb restarts;
//! - `walkthrough`: the article's demo flow, the documented log format, and `cargo xtask demo` itself;
//! - `failover`: a backend killed and brought back; keep-alive clients; prefix routing;
//! - `lifecycle`: graceful shutdown under load;
//! - `restart`: a backend stopped (SIGTERM, SIGKILL) and restarted under load costs no request;
//! - `traffic`: loadgen's `--expect round-robin` through lb.

mod admin_page;
mod failover;
mod lifecycle;
mod restart;
mod traffic;
mod walkthrough;

use std::net::SocketAddr;

use tests::{bin, start_backend, start_lb, Proc};

/// Two restful-servers on port 0 and an lb in front of them with `extra` flags; lb logs to stdout.
pub fn setup(extra: &[&str]) -> (Proc, SocketAddr, Vec<(Proc, SocketAddr)>) {
    let backends: Vec<(Proc, SocketAddr)> = (0..2)
        .map(|_| start_backend(&bin("restful-server"), &["-p", "0"]).unwrap())
        .collect();
    let mut args: Vec<String> = ["-p", "0", "-l", "-"]
        .into_iter()
        .chain(extra.iter().copied())
        .map(String::from)
        .collect();
    for (_, addr) in &backends {
        args.extend(["-b".to_string(), "/".to_string(), addr.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (lb, addr) = start_lb(&bin("lb"), &args).unwrap();
    (lb, addr, backends)
}

/// The `X-Served-By` header of a response.
pub fn served_by(headers: &[(String, String)]) -> String {
    headers
        .iter()
        .find(|(k, _)| k == "x-served-by")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}
