//! What every test needs to set up a balancer on loopback and talk to it.
//!
//! - [`Backend`]: a `restful-server` running in this process on `127.0.0.1:0`, stopped by
//!   [`Backend::stop`] (or when the test ends);
//! - [`Lb`]: `lb::run` in this process, with its access log in a temporary file that
//!   [`Lb::log_lines`] polls (the log is written by a thread, so lines appear shortly after the
//!   response, never instantly);
//! - [`LbProcess`]: the real `lb` binary, wrapped in a guard that kills it on drop and that prints
//!   the command line, stdout and stderr when a check fails;
//! - clients: [`send`] (hyper, one new connection per request) when only the HTTP meaning matters,
//!   and [`RawConn`] (bytes on a `TcpStream`) when the bytes on the wire are the point: keep-alive,
//!   pipelining, truncated bodies.
//!
//! Every network wait goes through [`within`], so a broken balancer fails a test in seconds
//! instead of hanging the suite.

use std::fmt::Display;
use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use lb::config::{LogTarget, Rule};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any single network step may take before the test fails. Generous: the machine is
/// shared, and a healthy step takes milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Await `future`, failing the test if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: impl Display, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: nothing after {limit:?}"),
    }
}

/// A `restful-server` on `127.0.0.1:0`, running in this process.
pub struct Backend {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Backend {
    /// Start a backend whose `X-Served-By` is `name`.
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let config = restful_server::Config {
            name: Some(name.to_string()),
            docroot: None,
        };
        let task = tokio::spawn(restful_server::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        Backend {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stop accepting, close idle keep-alive connections, and wait until the server is gone, so
    /// that the next connection to `addr` is refused.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            within(PATIENCE, "backend shutdown", task)
                .await
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A hand-written backend for misbehaviour `restful-server` will not produce: for every request
/// head it reads (bodies are not expected), it writes `reply` verbatim, then closes the
/// connection if `close` is set. Returns its address; it runs until the test's runtime ends.
pub async fn raw_backend(reply: impl Into<Bytes>, close: bool) -> SocketAddr {
    serve_raw(reply.into(), close, Duration::ZERO).await
}

/// A minimal keep-alive backend that answers every request `200 ok` after `delay`, naming itself
/// `name` in `X-Served-By`: fast and slow backends for the balancing strategies.
pub async fn delayed_backend(name: &str, delay: Duration) -> SocketAddr {
    let reply = format!("HTTP/1.1 200 OK\r\nX-Served-By: {name}\r\nContent-Length: 2\r\n\r\nok");
    serve_raw(Bytes::from(reply), false, delay).await
}

async fn serve_raw(reply: Bytes, close: bool, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut conn = RawConn {
                    stream,
                    buf: Vec::new(),
                };
                while conn.skip_head().await {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if conn.stream.write_all(&reply).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    addr
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
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Lb {
    /// Start a balancer with `rules` and default settings.
    pub async fn start(rules: Vec<Rule>) -> Lb {
        Lb::start_with(rules, |_| {}).await
    }

    /// Start a balancer with `rules`, letting `adjust` change the configuration first.
    pub async fn start_with(rules: Vec<Rule>, adjust: impl FnOnce(&mut lb::Config)) -> Lb {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("access.log");
        let mut config = lb::Config::new(addr, rules);
        config.log = Some(LogTarget::File(log_path.clone()));
        adjust(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(lb::run(listener, config, async move {
            let _ = stopped.await;
        }));
        Lb {
            addr,
            log_path,
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The access log once it has at least `n` lines (fails after a few seconds otherwise).
    pub async fn log_lines(&self, n: usize) -> Vec<String> {
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
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The access log, expecting exactly `n` lines.
    pub async fn exact_log_lines(&self, n: usize) -> Vec<String> {
        let lines = self.log_lines(n).await;
        // Give a stray extra line a moment to show up before declaring the count exact.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let again = self.log_lines(n).await;
        assert_eq!(again.len(), n, "access log:\n{}", again.join("\n"));
        assert_eq!(lines, again);
        again
    }

    /// Stop the balancer and wait for `run` to return (in-flight requests drain first).
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            within(PATIENCE, "lb shutdown", task)
                .await
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
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

/// A response with its body read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn served_by(&self) -> &str {
        self.header("x-served-by")
    }

    /// A header's value, or "" when it is absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().unwrap_or("<not text>"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: reply is not JSON: {:?}", self.text()))
    }
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

/// Open a new connection to `addr` and send `request` on it; returns the response with its body
/// still streaming (the connection lives as long as the body is read). A missing `Host` is set
/// to `addr`.
pub async fn open<B>(addr: SocketAddr, mut request: Request<B>) -> Response<Incoming>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if !request.headers().contains_key(header::HOST) {
        let host = addr.to_string().parse().unwrap();
        request.headers_mut().insert(header::HOST, host);
    }
    let what = format!("{} {}", request.method(), request.uri());
    within(PATIENCE, &what, async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
            .send_request(request)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    })
    .await
}

/// Send `request` on a new connection and read the whole reply.
pub async fn send<B>(addr: SocketAddr, request: Request<B>) -> Reply
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let what = format!("{} {}", request.method(), request.uri());
    let (parts, body) = open(addr, request).await.into_parts();
    let body = within(PATIENCE, &what, body.collect())
        .await
        .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"))
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `GET path` on a new connection.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    let request = Request::get(path).body(Full::new(Bytes::new())).unwrap();
    send(addr, request).await
}

/// One HTTP/1.1 response as read off the wire by [`RawConn`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: reply is not JSON: {:?}", self.text()))
    }
}

/// A client connection that writes exactly the bytes it is given and parses what comes back
/// itself, so a test sees the framing the balancer really produced.
pub struct RawConn {
    stream: TcpStream,
    /// Bytes read but not yet parsed.
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = within(
            PATIENCE,
            format!("connect to {addr}"),
            TcpStream::connect(addr),
        )
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        within(PATIENCE, "write", self.stream.write_all(bytes))
            .await
            .unwrap();
    }

    /// Read more bytes into the buffer; 0 means the peer closed the connection.
    async fn fill(&mut self) -> std::io::Result<usize> {
        // Straight into the heap buffer: a 64 KiB array here would sit in every future built on
        // top of this one, and debug builds copy futures around on the stack.
        self.buf.reserve(64 * 1024);
        self.stream.read_buf(&mut self.buf).await
    }

    /// Take one CRLF-terminated line (without the CRLF) from the stream.
    async fn line(&mut self) -> String {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                self.buf.drain(..at + 2);
                return line;
            }
            let n = self.fill().await.unwrap();
            assert!(n > 0, "connection closed in the middle of a line");
        }
    }

    /// Take exactly `n` body bytes.
    async fn exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let read = self.fill().await.unwrap();
            assert!(
                read > 0,
                "connection closed after {} of {n} body bytes",
                self.buf.len()
            );
        }
        self.buf.drain(..n).collect()
    }

    /// Read a request head and forget it; false if the connection closed first.
    async fn skip_head(&mut self) -> bool {
        loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                self.buf.drain(..at + 4);
                return true;
            }
            if !matches!(self.fill().await, Ok(1..)) {
                return false;
            }
        }
    }

    /// Read a status line and headers; `None` if the connection was closed before any byte.
    pub async fn read_head(&mut self) -> Option<(u16, Vec<(String, String)>)> {
        within(PATIENCE, "response head", async {
            if self.buf.is_empty() && self.fill().await.unwrap_or(0) == 0 {
                return None;
            }
            let status_line = self.line().await;
            let status = status_line
                .strip_prefix("HTTP/1.1 ")
                .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
                .and_then(|s| s.get(..3))
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not an HTTP/1.x status line: {status_line:?}"));
            let mut headers = Vec::new();
            loop {
                let line = self.line().await;
                if line.is_empty() {
                    return Some((status, headers));
                }
                let (name, value) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad header line {line:?}"));
                headers.push((name.to_string(), value.trim().to_string()));
            }
        })
        .await
    }

    /// Read one complete response to a request that was not `HEAD`.
    pub async fn read_response(&mut self) -> RawResponse {
        let (status, headers) = self
            .read_head()
            .await
            .expect("the connection was closed instead of answering");
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
        let length = response
            .header("content-length")
            .map(|cl| cl.parse::<usize>().unwrap());
        response.body = within(PATIENCE, "response body", async {
            if chunked {
                let mut body = Vec::new();
                loop {
                    let size_line = self.line().await;
                    let size = size_line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size, 16)
                        .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
                    if size == 0 {
                        while !self.line().await.is_empty() {} // trailers
                        return body;
                    }
                    body.extend(self.exact(size).await);
                    assert_eq!(self.line().await, "", "chunk not followed by CRLF");
                }
            } else if let Some(length) = length {
                self.exact(length).await
            } else if matches!(status, 204 | 304) {
                Vec::new()
            } else {
                // Delimited by the connection closing (RFC 9112 §6.3 item 8).
                while self.fill().await.unwrap() > 0 {}
                std::mem::take(&mut self.buf)
            }
        })
        .await;
        response
    }

    /// Read whatever arrives until the peer closes the connection (cleanly or with a reset).
    /// Returns the bytes and whether the end was a reset rather than a clean close.
    pub async fn read_until_closed(&mut self, limit: Duration) -> (Vec<u8>, bool) {
        let reset = within(limit, "connection close", async {
            loop {
                match self.fill().await {
                    Ok(0) => return false,
                    Ok(_) => {}
                    Err(_) => return true,
                }
            }
        })
        .await;
        (std::mem::take(&mut self.buf), reset)
    }

    /// Whether the peer closes the connection (with nothing more to say) within `limit`.
    pub async fn closes_within(&mut self, limit: Duration) -> bool {
        matches!(
            tokio::time::timeout(limit, self.fill()).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

/// The `lb` binary, running; killed when dropped, so a failing test leaves no process behind.
pub struct LbProcess {
    child: Child,
    command_line: String,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Where it listens, from its `Starting LB on ADDR` line.
    pub addr: SocketAddr,
}

pub const LB: &str = env!("CARGO_BIN_EXE_lb");

impl LbProcess {
    /// Run `lb ARGS` (which should include `-p 0`) and wait for its `Starting LB on` line.
    pub async fn start(args: &[&str]) -> LbProcess {
        let command_line = format!("{LB} {}", args.join(" "));
        let mut child = Command::new(LB)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {command_line}: {e}"));
        // Threads drain the pipes so that lb never blocks on a full pipe.
        let mut readers = Vec::new();
        let mut drain = |mut pipe: Box<dyn Read + Send>| {
            let sink = Arc::new(Mutex::new(Vec::new()));
            let out = sink.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    out.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }));
            sink
        };
        let stdout = drain(Box::new(child.stdout.take().unwrap()));
        let stderr = drain(Box::new(child.stderr.take().unwrap()));
        let mut process = LbProcess {
            child,
            command_line,
            stdout,
            stderr,
            readers,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let line = process
            .wait_for_stderr("the `Starting LB on` line", |line| {
                line.starts_with("Starting LB on ")
            })
            .await;
        process.addr = line
            .trim_start_matches("Starting LB on ")
            .parse()
            .unwrap_or_else(|_| process.fail(format!("cannot parse the address in {line:?}")));
        process
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Panic with `message`, the command line and everything the process printed.
    pub fn fail(&self, message: impl Display) -> ! {
        panic!(
            "{message}\n--- command: {}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.command_line,
            self.stdout(),
            self.stderr()
        )
    }

    /// Fail (with the process's output) unless `ok`.
    pub fn check(&self, ok: bool, message: impl Display) {
        if !ok {
            self.fail(message);
        }
    }

    /// Wait for a line of stderr matching `matches`, and return it.
    pub async fn wait_for_stderr(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.stderr().lines().find(|l| matches(l)) {
                return line.to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.join_readers();
                self.fail(format!("lb exited ({status}) before printing {what}"));
            }
            if Instant::now() > deadline {
                self.fail(format!("no {what} on stderr after {PATIENCE:?}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until stdout holds at least `n` lines, and return them all.
    pub async fn wait_for_stdout_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let lines: Vec<String> = self.stdout().lines().map(str::to_string).collect();
            if lines.len() >= n {
                return lines;
            }
            if Instant::now() > deadline {
                self.fail(format!("expected {n} lines on stdout after {PATIENCE:?}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Send a signal (`"TERM"`, `"INT"`) with kill(1): the workspace forbids the unsafe code a
    /// direct `libc::kill` would need.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        self.check(status.success(), format!("kill -{name} failed: {status}"));
    }

    /// Wait for the process to exit, and for its output to be fully read.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.join_readers();
                return status;
            }
            if Instant::now() > deadline {
                self.fail(format!("lb still running after {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for LbProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
