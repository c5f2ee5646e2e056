//! The real binaries as a test meets them: [`RestfulServer`] and [`LbProcess`] start one and wait
//! for its readiness line, give back its address, and kill it when dropped (each derefs to its
//! [`Proc`], for signals, output and transcripts); [`LbBuilder`] writes lb's command line, and
//! [`cluster`] is the set-up most end-to-end tests start from: N restful-servers behind one lb.
//!
//! A server that exits before its readiness line, or never prints it, fails the test with its
//! command line and the last lines it printed.
//!
//! `start_backend` and `start_lb` are the same without the panics, for `cargo xtask`.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::Proc;

/// How long a binary may take to print its readiness line (it may be starting on a busy machine).
pub const READY: Duration = Duration::from_secs(20);

/// What `restful-server` prints on stdout once it listens.
const RESTFUL_READY: &str = "Starting RESTful server on ";
/// What `lb` prints on stderr once it listens.
const LB_READY: &str = "Starting LB on ";
/// What `lb --admin` prints on stderr once its admin listener is bound.
const ADMIN_READY: &str = "Admin on http://";

/// Start `restful-server` with `args` and wait until it listens; returns the process and its address.
pub fn start_backend(program: &Path, args: &[&str]) -> Result<(Proc, SocketAddr)> {
    let mut proc = Proc::spawn(program, args)?;
    let line = proc.wait_stdout(RESTFUL_READY, READY)?;
    let addr = address_after(&line, RESTFUL_READY)?;
    Ok((proc, addr))
}

/// Start `lb` with `args` and wait until it listens; returns the process and its address.
pub fn start_lb(program: &Path, args: &[&str]) -> Result<(Proc, SocketAddr)> {
    let mut proc = Proc::spawn(program, args)?;
    let line = proc.wait_stderr(LB_READY, READY)?;
    let addr = address_after(&line, LB_READY)?;
    Ok((proc, addr))
}

/// Parse the `IP:PORT` that follows `prefix` in a readiness line.
pub fn address_after(line: &str, prefix: &str) -> Result<SocketAddr> {
    let rest = line.split_once(prefix).map(|(_, r)| r).unwrap_or_default();
    let addr = rest.split([',', ' ', '/']).next().unwrap_or_default();
    addr.parse()
        .with_context(|| format!("no address in readiness line {line:?}"))
}

/// A running `restful-server`, killed when dropped.
#[derive(Debug)]
pub struct RestfulServer {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// Its `Starting RESTful server on ...` line.
    pub starting_line: String,
}

impl RestfulServer {
    /// `restful-server ARGS` (built by [`crate::bin`]); pass `-p 0` for a port of its own.
    #[track_caller]
    pub fn start(args: &[&str]) -> RestfulServer {
        RestfulServer::start_bin(&crate::bin("restful-server"), args)
    }

    /// The same with the binary at `program` (a crate's own tests pass
    /// `env!("CARGO_BIN_EXE_restful-server")`).
    #[track_caller]
    pub fn start_bin(program: &Path, args: &[&str]) -> RestfulServer {
        let (mut proc, addr) = match start_backend(program, args) {
            Ok(started) => started,
            Err(e) => panic!("{e:#}"),
        };
        let starting_line = match proc.wait_stdout(RESTFUL_READY, READY) {
            Ok(line) => line,
            Err(e) => panic!("{e:#}"),
        };
        RestfulServer {
            proc,
            addr,
            starting_line,
        }
    }
}

/// A running `lb`, killed when dropped.
#[derive(Debug)]
pub struct LbProcess {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl LbProcess {
    /// `lb ARGS`, verbatim (built by [`crate::bin`]); see [`LbBuilder`] to write them.
    #[track_caller]
    pub fn start(args: &[&str]) -> LbProcess {
        LbProcess::start_bin(&crate::bin("lb"), args)
    }

    /// The same with the binary at `program` (lb's own tests pass `env!("CARGO_BIN_EXE_lb")`).
    #[track_caller]
    pub fn start_bin(program: &Path, args: &[&str]) -> LbProcess {
        match start_lb(program, args) {
            Ok((proc, addr)) => LbProcess { proc, addr },
            Err(e) => panic!("{e:#}"),
        }
    }

    /// The address of the `--admin` listener, from its `Admin on http://ADDR/` line.
    #[track_caller]
    pub fn admin_addr(&mut self) -> SocketAddr {
        let line = match self.proc.wait_stderr(ADMIN_READY, READY) {
            Ok(line) => line,
            Err(e) => panic!("{e:#}"),
        };
        match address_after(&line, ADMIN_READY) {
            Ok(addr) => addr,
            Err(e) => self.proc.fail(format!("{e:#}")),
        }
    }
}

impl Deref for RestfulServer {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.proc
    }
}

impl DerefMut for RestfulServer {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

impl Deref for LbProcess {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.proc
    }
}

impl DerefMut for LbProcess {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

/// lb's command line: `lb -p 0 FLAGS... -b PREFIX BACKEND...`.
#[derive(Debug, Default, Clone)]
pub struct LbBuilder {
    program: Option<PathBuf>,
    flags: Vec<String>,
    routes: Vec<String>,
}

impl LbBuilder {
    pub fn new() -> LbBuilder {
        LbBuilder::default()
    }

    /// Run this binary instead of the one [`crate::bin`] builds.
    pub fn program(mut self, program: impl Into<PathBuf>) -> LbBuilder {
        self.program = Some(program.into());
        self
    }

    /// Flags, added in order before the routes (`-r`, `-v` and `-w` belong in
    /// [`route_with`](LbBuilder::route_with), next to the `-b` they apply to).
    pub fn flags(mut self, flags: &[&str]) -> LbBuilder {
        self.flags.extend(flags.iter().map(|f| f.to_string()));
        self
    }

    /// `-b / BACKEND` for each one.
    pub fn backends(mut self, backends: &[SocketAddr]) -> LbBuilder {
        for backend in backends {
            self = self.route("/", *backend);
        }
        self
    }

    /// `-b PREFIX BACKEND` (PREFIX may be `PREFIX=REPLACEMENT`).
    pub fn route(self, prefix: &str, backend: SocketAddr) -> LbBuilder {
        self.route_with(&[], prefix, backend)
    }

    /// `OPTIONS... -b PREFIX BACKEND`, e.g. `&["-w", "5"]` or `&["-v", "example.com"]`.
    pub fn route_with(mut self, options: &[&str], prefix: &str, backend: SocketAddr) -> LbBuilder {
        self.routes.extend(options.iter().map(|o| o.to_string()));
        self.routes
            .extend(["-b".to_string(), prefix.to_string(), backend.to_string()]);
        self
    }

    /// The arguments, as [`LbBuilder::start`] passes them.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["-p".to_string(), "0".to_string()];
        args.extend(self.flags.iter().cloned());
        args.extend(self.routes.iter().cloned());
        args
    }

    /// Start lb and wait until it listens.
    #[track_caller]
    pub fn start(self) -> LbProcess {
        let program = self.program.clone().unwrap_or_else(|| crate::bin("lb"));
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        LbProcess::start_bin(&program, &args)
    }
}

/// N restful-servers and an lb in front of them.
#[derive(Debug)]
pub struct Cluster {
    pub lb: LbProcess,
    pub backends: Vec<RestfulServer>,
}

impl Cluster {
    /// The backends' addresses, in the order of lb's `-b` flags.
    pub fn backend_addrs(&self) -> Vec<SocketAddr> {
        self.backends.iter().map(|b| b.addr).collect()
    }
}

/// `n` restful-servers on ports of their own, and `lb -p 0 -l - FLAGS -b / B1 -b / B2 ...` in
/// front of them: lb writes its access log to stdout, where [`Proc::next_stdout`] reads it.
#[track_caller]
pub fn cluster(n: usize, lb_flags: &[&str]) -> Cluster {
    let mut backends = Vec::new();
    for _ in 0..n {
        backends.push(RestfulServer::start(&["-p", "0"]));
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let lb = LbBuilder::new()
        .flags(&["-l", "-"])
        .flags(lb_flags)
        .backends(&addrs)
        .start();
    Cluster { lb, backends }
}
