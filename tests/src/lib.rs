//! The one test harness of the workspace: every suite (lb's, restful-server's, loadgen's, the
//! end-to-end and hardening suites in `tests/tests/`) starts its servers and makes its requests
//! with it, and
//! `cargo xtask demo` and `bench` start their processes with it too. `tests/README.md` says
//! which suite checks what, and how to write a new test in ten lines.
//!
//! - [`process`]: [`Proc`], a child process killed on drop, whose output lines can be waited
//!   for, and whose transcript (command line, exit status, last lines printed) explains a failure;
//! - [`servers`]: the real binaries, started and waited for: [`RestfulServer`], [`LbProcess`],
//!   [`LbBuilder`] for lb's command line, [`cluster`] for N restful-servers behind one lb;
//! - [`in_process`]: [`InProcess`], a server run in the test process on a thread of its own (lb's
//!   tests run `lb::run` and `restful_server::serve` with it);
//! - [`bad_backend`]: [`BadBackend`], a backend that breaks HTTP on purpose (or answers late:
//!   frozen for a while, or one request at a time) and records what it received;
//! - [`http`]: ordinary requests with reqwest, read into a [`Reply`];
//! - [`raw`]: [`RawClient`], exact bytes on a socket, for framing, smuggling, keep-alive and
//!   slow-client tests.
//!
//! The binaries: a crate's own tests run its binary from `CARGO_BIN_EXE_<name>`, which cargo only
//! sets for that crate's binaries; the cross-crate suites call [`bin`], which builds `lb`,
//! `restful-server` and `loadgen` once per test process with `$CARGO build --bins`.
//!
//! This crate depends on neither `lb` nor `restful-server` (their tests depend on it, and a cycle
//! would build them twice), which is why the in-process servers that need their libraries are
//! started in lb's own support module, with [`InProcess`]. Likewise the servers only loadgen's
//! checks need (stand-ins for a balancer, an HTTPS target) are in loadgen's support module.

pub mod bad_backend;
pub mod http;
pub mod in_process;
pub mod process;
pub mod raw;
pub mod servers;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use bad_backend::{BadBackend, Behaviour};
pub use http::{get, Reply};
pub use in_process::InProcess;
pub use process::Proc;
pub use raw::{RawClient, RawResponse};
/// The HTTP client of the suites, with the features they use (blocking, json, rustls on ring).
pub use reqwest;
pub use servers::{
    address_after, cluster, start_backend, start_lb, Cluster, LbBuilder, LbProcess, RestfulServer,
};

/// How long any single step (a connection, a response, a line of output) may take before the
/// test fails. Generous: the machine is shared, and a healthy step takes milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Poll `check` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// `$CARGO` (the cargo that runs the tests), in the workspace root, with the environment a shell
/// would give it.
///
/// Run from a test, this process has the variables cargo sets for the crate under test
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, ...). Build scripts such as ring's ask to be rerun when
/// those change, so passing them on would rebuild ring, rustls and lb in this cargo, and again in
/// the next plain `cargo test`: they are removed.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(project_root());
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_for_a_crate = [
            "CARGO_PKG_",
            "CARGO_BIN_",
            "CARGO_CRATE_",
            "CARGO_MANIFEST_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&&*name);
        if set_for_a_crate {
            cmd.env_remove(&*name);
        }
    }
    cmd
}

/// Build `lb`, `restful-server` and `loadgen` with `$CARGO` and return the directory holding them.
pub fn build_binaries(release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--bins",
        "-p",
        "lb",
        "-p",
        "restful-server",
        "-p",
        "loadgen",
    ]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --bins failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| project_root().join("target"), PathBuf::from);
    Ok(target.join(if release { "release" } else { "debug" }))
}

/// The path of a debug binary of the workspace, built once per test process.
pub fn bin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| match build_binaries(false) {
        Ok(dir) => dir,
        Err(e) => panic!("cannot build the binaries: {e:#}"),
    });
    dir.join(name)
}

/// Is something already listening on `127.0.0.1:port`?
pub fn port_is_taken(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
}
