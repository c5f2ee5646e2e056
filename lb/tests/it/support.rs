//! What lb's tests add to the workspace's harness (`tests`, see `tests/README.md`): the servers
//! that need lb's and restful-server's libraries, run in this process, and checks of lb's own
//! output. Everything else (the binary behind a kill-on-drop guard, reqwest and raw clients, the
//! misbehaving backend) comes from the harness.
//!
//! - [`Backend`]: a `restful-server` on `127.0.0.1:0` on a thread of its own, stopped by
//!   [`Backend::stop`] (or when the test ends);
//! - [`Lb`]: `lb::run` on a thread of its own, with its access log in a temporary file that
//!   [`Lb::log_lines`] polls (the log is written by a thread, so lines appear shortly after the
//!   response, never instantly);
//! - [`lb_process`] and [`lb_builder`]: the real `lb` binary of this crate, started with the
//!   harness;
//! - [`hand_backend`]: a backend played by hand on a raw socket, for what no HTTP server does on
//!   purpose (answer before reading a body, stop reading, switch protocols).
//!
//! Both in-process servers run on threads of their own ([`tests::InProcess`]), so the tests are
//! plain blocking functions: a blocking client never stalls the servers it talks to.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lb::config::{LogTarget, Rule};
use tests::{InProcess, LbBuilder, LbProcess};

/// A backend played by hand: on a thread, each of the first `connections` accepted sockets is
/// handed to `serve` with the request head read from it (one byte at a time, so nothing after the
/// head is consumed: what the test does next with the socket is up to it).
pub fn hand_backend(
    connections: usize,
    serve: impl Fn(std::net::TcpStream, String) + Send + 'static,
) -> SocketAddr {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            serve(stream, String::from_utf8_lossy(&head).into_owned());
        }
    });
    addr
}

/// This crate's binary, which cargo builds for its integration tests.
pub const LB: &str = env!("CARGO_BIN_EXE_lb");

/// `lb ARGS` (which should include `-p 0`), once it has printed its `Starting LB on` line.
pub fn lb_process(args: &[&str]) -> LbProcess {
    LbProcess::start_bin(Path::new(LB), args)
}

/// The harness's builder of lb's command line, for this crate's binary.
pub fn lb_builder() -> LbBuilder {
    LbBuilder::new().program(LB)
}

/// A `restful-server` on `127.0.0.1:0`, running in this process.
pub struct Backend {
    pub addr: SocketAddr,
    server: InProcess,
}

impl Backend {
    /// Start a backend whose `X-Served-By` is `name`.
    pub fn start(name: &str) -> Backend {
        let config = restful_server::Config {
            name: Some(name.to_string()),
            docroot: None,
        };
        let server = InProcess::start(
            &format!("backend {name}"),
            InProcess::loopback_listener(),
            move |listener, shutdown| restful_server::serve(listener, config, shutdown),
        );
        Backend {
            addr: server.addr,
            server,
        }
    }

    /// Stop accepting, close idle keep-alive connections, and wait until the server is gone, so
    /// that the next connection to `addr` is refused.
    pub fn stop(&mut self) {
        self.server.stop();
    }
}

/// A rule `-b PREFIX BACKEND` (no replacement, no vhost, no redirect).
pub fn rule(prefix: &str, backend: SocketAddr) -> Rule {
    Rule {
        prefix: prefix.to_string(),
        replacement: prefix.to_string(),
        vhost: None,
        redirect: false,
        backend: backend.to_string(),
        weight: None,
    }
}

/// `lb::run` in this process, logging to a temporary file in the original's format.
pub struct Lb {
    pub addr: SocketAddr,
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
    server: InProcess,
}

impl Lb {
    /// Start a balancer with `rules` and default settings.
    pub fn start(rules: Vec<Rule>) -> Lb {
        Lb::start_with(rules, |_| {})
    }

    /// Start a balancer with `rules`, letting `adjust` change the configuration first.
    pub fn start_with(rules: Vec<Rule>, adjust: impl FnOnce(&mut lb::Config)) -> Lb {
        let listener = InProcess::loopback_listener();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("access.log");
        let mut config = lb::Config::new(addr, rules);
        config.log = Some(LogTarget::File(log_path.clone()));
        adjust(&mut config);
        let server = InProcess::start("lb", listener, move |listener, shutdown| {
            lb::run(listener, config, shutdown)
        });
        Lb {
            addr,
            log_path,
            _dir: dir,
            server,
        }
    }

    /// The access log once it has at least `n` lines (fails after a few seconds otherwise).
    pub fn log_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} access-log lines in {}, found {}:\n{text}",
                self.log_path.display(),
                lines.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The access log, expecting exactly `n` lines.
    pub fn exact_log_lines(&self, n: usize) -> Vec<String> {
        let lines = self.log_lines(n);
        // Give a stray extra line a moment to show up before declaring the count exact.
        std::thread::sleep(Duration::from_millis(50));
        let again = self.log_lines(n);
        assert_eq!(again.len(), n, "access log:\n{}", again.join("\n"));
        assert_eq!(lines, again);
        again
    }

    /// Stop the balancer and wait for `run` to return (in-flight requests drain first).
    pub fn stop(&mut self) {
        self.server.stop();
    }
}

/// Check one line of the original's log format: `<unix seconds> METHOD PATH backend=BACKEND`,
/// with a timestamp of (about) now.
pub fn assert_log_line(line: &str, method: &str, path: &str, backend: &str) {
    let (time, rest) = line
        .split_once(' ')
        .unwrap_or_else(|| panic!("log line {line:?} has no timestamp"));
    let time: u64 = time
        .parse()
        .unwrap_or_else(|_| panic!("log line {line:?} does not start with Unix seconds"));
    let now = lb::access_log::unix_now();
    assert!(
        time <= now && now - time < 120,
        "log line {line:?}: timestamp {time} is not about now ({now})"
    );
    assert_eq!(
        rest,
        format!("{method} {path} backend={backend}"),
        "log line {line:?}"
    );
}

/// The headers an `/api/v1/echo` reply says the backend received, as `(name, value)` pairs.
pub fn echoed_headers(echo: &serde_json::Value) -> Vec<(String, String)> {
    echo["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("no headers in echo {echo}"))
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_string(),
                pair[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
