//! The end-to-end harness: build the real binaries once, run them as child processes, and wait
//! for the one line each server prints when it is ready.
//!
//! Used by the suite in `tests/tests/` and by `cargo xtask demo`. Every child is wrapped in a
//! [`Proc`] that kills it when dropped, so a failing test or a Ctrl-C never leaves a server behind,
//! and whose [`Proc::transcript`] shows the command, stdout and stderr when something goes wrong.

pub mod bad_backend;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The workspace root (this crate lives in `<root>/tests`).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Build `lb`, `restful-server` and `loadgen` with `$CARGO` and return the directory holding them.
pub fn build_binaries(release: bool) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(project_root()).args([
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

/// The debug binaries, built once per test process.
pub fn bin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| match build_binaries(false) {
        Ok(dir) => dir,
        Err(e) => panic!("cannot build the binaries: {e:#}"),
    });
    dir.join(name)
}

/// Lines read from one of a child's output streams, by a background thread.
struct Lines {
    rx: Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn new(stream: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    fn next(&mut self, timeout: Duration) -> Option<String> {
        match self.rx.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    fn drain(&mut self) {
        while let Ok(line) = self.rx.try_recv() {
            self.seen.push(line);
        }
    }

    fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return Some(line.clone());
        }
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // The process exited: give the other stream a moment, then give up.
                    return None;
                }
                Err(RecvTimeoutError::Timeout) => return None,
            }
        }
    }
}

/// A running child process that is killed when dropped.
pub struct Proc {
    command: String,
    child: std::process::Child,
    stdout: Lines,
    stderr: Lines,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Proc({})", self.command)
    }
}

impl Proc {
    /// Start `program args...` with piped stdout and stderr.
    pub fn spawn(program: &Path, args: &[&str]) -> Result<Proc> {
        let command = format!(
            "{} {}",
            program.file_name().map_or_else(
                || program.display().to_string(),
                |n| n.to_string_lossy().into_owned()
            ),
            args.join(" ")
        );
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stdout = Lines::new(child.stdout.take().context("no stdout")?);
        let stderr = Lines::new(child.stderr.take().context("no stderr")?);
        Ok(Proc {
            command,
            child,
            stdout,
            stderr,
        })
    }

    /// The command line as typed (program name without its directory).
    pub fn command(&self) -> &str {
        &self.command
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for a stdout line containing `needle`.
    pub fn wait_stdout(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        match self.stdout.wait_for(needle, timeout) {
            Some(line) => Ok(line),
            None => bail!(
                "no stdout line containing {needle:?} within {timeout:?}\n{}",
                self.transcript()
            ),
        }
    }

    /// Wait for a stderr line containing `needle`.
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        match self.stderr.wait_for(needle, timeout) {
            Some(line) => Ok(line),
            None => bail!(
                "no stderr line containing {needle:?} within {timeout:?}\n{}",
                self.transcript()
            ),
        }
    }

    /// The next stdout line, if one arrives within `timeout`.
    pub fn next_stdout(&mut self, timeout: Duration) -> Option<String> {
        self.stdout.next(timeout)
    }

    /// Every stderr line received so far.
    pub fn stderr_lines(&mut self) -> &[String] {
        self.stderr.drain();
        &self.stderr.seen
    }

    /// Ask the process to stop, as a service manager would (SIGTERM).
    pub fn terminate(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid());
        }
        Ok(())
    }

    /// Wait for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("still running after {timeout:?}\n{}", self.transcript());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The command and everything it printed so far, for failure messages.
    pub fn transcript(&mut self) -> String {
        self.stdout.drain();
        self.stderr.drain();
        format!(
            "--- command: {}\n--- stdout:\n{}\n--- stderr:\n{}\n---",
            self.command,
            self.stdout.seen.join("\n"),
            self.stderr.seen.join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `restful-server` with `args` and wait until it listens; returns the process and its address.
pub fn start_backend(bin_dir_file: &Path, args: &[&str]) -> Result<(Proc, SocketAddr)> {
    let mut proc = Proc::spawn(bin_dir_file, args)?;
    let line = proc.wait_stdout("Starting RESTful server on ", Duration::from_secs(20))?;
    let addr = address_after(&line, "Starting RESTful server on ")?;
    Ok((proc, addr))
}

/// Start `lb` with `args` and wait until it listens; returns the process and its address.
pub fn start_lb(bin_path: &Path, args: &[&str]) -> Result<(Proc, SocketAddr)> {
    let mut proc = Proc::spawn(bin_path, args)?;
    let line = proc.wait_stderr("Starting LB on ", Duration::from_secs(20))?;
    let addr = address_after(&line, "Starting LB on ")?;
    Ok((proc, addr))
}

/// Parse the `IP:PORT` that follows `prefix` in a readiness line.
pub fn address_after(line: &str, prefix: &str) -> Result<SocketAddr> {
    let rest = line.split_once(prefix).map(|(_, r)| r).unwrap_or_default();
    let addr = rest.split([',', ' ']).next().unwrap_or_default();
    addr.parse()
        .with_context(|| format!("no address in readiness line {line:?}"))
}

/// Is something already listening on `127.0.0.1:port`?
pub fn port_is_taken(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
}

/// A response as [`http_get`] returns it: status, lower-cased header names with values, raw body.
pub type Response = (u16, Vec<(String, String)>, Vec<u8>);

/// Minimal blocking HTTP/1.1 GET over a fresh connection.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<Response> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of head in response")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .context("bad status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, raw[split + 4..].to_vec()))
}
