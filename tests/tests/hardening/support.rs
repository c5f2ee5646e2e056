//! What the hardening tests add to the harness (`tests`): lb in front of some backends, and
//! lb's memory and file descriptors read from `/proc`.

use std::net::SocketAddr;

use tests::{LbBuilder, LbProcess};

/// Start `lb -p 0 EXTRA... -b / B1 -b / B2 ...` and wait until it listens.
pub fn lb(backends: &[SocketAddr], extra: &[&str]) -> (LbProcess, SocketAddr) {
    let lb = LbBuilder::new().flags(extra).backends(backends).start();
    let addr = lb.addr;
    (lb, addr)
}

/// A field from `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// How many file descriptors process `pid` has open.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}
