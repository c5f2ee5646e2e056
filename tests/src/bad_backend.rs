//! A backend that breaks HTTP on purpose, so that a test can check what `lb` does when a server
//! misbehaves, and what `lb` forwards when a client does.
//!
//! It speaks raw HTTP/1.1 over tokio TCP, on a thread of its own ([`InProcess`]), so a plain
//! blocking test can start it. What it answers depends on the first segment of the request path:
//!
//! | path                    | answer                                                                |
//! |-------------------------|-----------------------------------------------------------------------|
//! | `/hang`                 | reads the request, never answers                                      |
//! | `/reset`                | `Content-Length: 100000`, 1000 bytes, then a TCP reset                |
//! | `/short`                | `Content-Length: 1000`, 100 bytes, then a clean close (FIN)           |
//! | `/garbage`              | a status line that is not HTTP                                        |
//! | `/cl-te`                | `Content-Length: 3` *and* `Transfer-Encoding: chunked` (body `hello`) |
//! | `/no-content`           | `204` followed by a whole fake response (`smuggled`) as a "body"      |
//! | `/not-modified`         | the same with `304`                                                   |
//! | `/head-body`            | to `HEAD`: the head, then the fake response as a body anyway          |
//! | `/drip?ms=M&n=N`        | `Content-Length: N`, one byte every M ms                              |
//! | `/close`                | `Connection: close`, then closes                                      |
//! | `/trailers`             | a chunked body followed by a trailer field                            |
//! | `/hop-by-hop`           | a response full of hop-by-hop headers that must not reach the client  |
//! | `/endless`              | `Content-Length: 10^12`, then 64 KiB writes until the peer goes away  |
//! | `/status/CODE`          | status CODE                                                           |
//! | anything else           | `200` naming the request: `conn 1 request 2: GET /x`                  |
//!
//! [`BadBackend::set_override`] makes every request get one behaviour whatever its path (a health
//! check test turns a backend "sick" and back); [`BadBackend::replying`] starts one that answers
//! every request with the same bytes (an invalid head, a body cut short, a fixed reply after a
//! delay).
//!
//! *When* an answer goes out can be held back too, whatever the answer: [`BadBackend::freeze`]
//! holds the answers to requests that arrive during a window until it ends (a process stopped
//! with SIGSTOP, then continued), and [`BadBackend::serve_one_at_a_time`] answers in arrival
//! order, each a fixed service time after the previous one (a single worker: a server of known
//! capacity). [`BadBackend::refused_addr`] is the address of one that has stopped.
//!
//! Everything received is recorded per connection: the raw bytes, and each request parsed by a
//! strict parser. `lb` must only ever send freshly serialised, well-formed requests, so a test can
//! assert "the backend saw nothing" or "exactly one well-formed request", and that a smuggled
//! request never arrived.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::in_process::InProcess;

/// A complete fake response. Misbehaving answers append it where no body belongs (after a 204, a
/// 304, a HEAD response): if `lb` ever hands it to a client, the upstream connection desynchronised.
pub const SMUGGLED_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled";

/// What the backend does with a request, whatever its path, when set with [`BadBackend::set_override`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer with this status code and a short body.
    Status(u16),
    /// Read the request and never answer.
    Hang,
    /// Read the whole request, then close the connection without a byte of answer (FIN), as a
    /// server that is going away does.
    Drop,
    /// Read the whole request, then reset the connection (RST), as a server that crashed does.
    Reset,
    /// Wait `delay`, write `reply` exactly as given, then close the connection if `close`.
    Canned {
        reply: Arc<[u8]>,
        delay: Duration,
        close: bool,
    },
}

/// One request as the backend parsed it.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub version: String,
    /// In arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// The body was sent with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// The whole body arrived (false when the connection ended in the middle of it).
    pub complete: bool,
}

impl Received {
    /// `"GET /x"`: what tests compare.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.target)
    }

    /// Every value of header `name` (any case).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn has_header(&self, name: &str) -> bool {
        !self.header_values(name).is_empty()
    }
}

/// What happened on one accepted connection.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Every byte received, in order.
    pub raw: Vec<u8>,
    /// The requests parsed from `raw`.
    pub requests: Vec<Received>,
    /// Set when the strict parser met bytes that are not a well-formed request: what and why.
    pub malformed: Option<String>,
    /// The peer closed (or reset) the connection.
    pub closed: bool,
    /// Bytes written to the peer.
    pub sent: u64,
}

#[derive(Debug, Default)]
struct State {
    conns: Mutex<Vec<Connection>>,
    behaviour: Mutex<Option<Behaviour>>,
    timing: Mutex<Timing>,
}

impl State {
    fn conns(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn timing(&self) -> MutexGuard<'_, Timing> {
        self.timing.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_conn(&self, id: usize, f: impl FnOnce(&mut Connection)) {
        if let Some(conn) = self.conns().get_mut(id) {
            f(conn);
        }
    }
}

/// When answers may go out, whatever they are: set by [`BadBackend::freeze`] and
/// [`BadBackend::serve_one_at_a_time`].
#[derive(Debug, Default)]
struct Timing {
    /// Requests that arrive in `[start, end)` are answered at `end`.
    frozen: Option<(Instant, Instant)>,
    /// A single worker: the time each answer takes, and when the worker is next free.
    worker: Option<(Duration, Instant)>,
}

impl Timing {
    /// How long to hold back the answer to a request that arrived at `now`. With a worker, this
    /// takes the worker's time: the next request's answer comes one service time later.
    fn hold(&mut self, now: Instant) -> Duration {
        let mut ready = now;
        if let Some((start, end)) = self.frozen {
            if (start..end).contains(&now) {
                ready = end;
            }
        }
        if let Some((service_time, next_free)) = &mut self.worker {
            *next_free = (*next_free).max(ready) + *service_time;
            ready = *next_free;
        }
        ready - now
    }
}

/// A running misbehaving backend; stops (closing every socket) when dropped.
#[derive(Debug)]
pub struct BadBackend {
    addr: SocketAddr,
    state: Arc<State>,
    server: InProcess,
}

impl BadBackend {
    /// Listen on a free loopback port.
    pub fn start() -> Result<BadBackend> {
        BadBackend::start_at("127.0.0.1:0".parse()?)
    }

    /// Listen on `addr` (e.g. the address of a backend stopped earlier, to bring it back).
    pub fn start_at(addr: SocketAddr) -> Result<BadBackend> {
        // std's listener sets SO_REUSEADDR: connections of a previous run at this address may
        // linger in TIME_WAIT.
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("bad backend cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let accept_state = state.clone();
        let server = InProcess::start("bad-backend", listener, move |listener, _| async move {
            while let Ok((stream, _)) = listener.accept().await {
                let id = {
                    let mut conns = accept_state.conns();
                    conns.push(Connection::default());
                    conns.len() - 1
                };
                tokio::spawn(serve(stream, id, accept_state.clone()));
            }
            Ok(())
        });
        Ok(BadBackend {
            addr,
            state,
            server,
        })
    }

    /// A backend that answers every request with `reply`, byte for byte, and then closes the
    /// connection if `close` (else waits for the next request on it).
    pub fn replying(reply: impl Into<Vec<u8>>, close: bool) -> BadBackend {
        BadBackend::replying_after(Duration::ZERO, reply, close)
    }

    /// [`BadBackend::replying`], each reply sent `delay` after its request arrived.
    pub fn replying_after(delay: Duration, reply: impl Into<Vec<u8>>, close: bool) -> BadBackend {
        let backend = BadBackend::start().unwrap_or_else(|e| panic!("{e:#}"));
        backend.set_override(Some(Behaviour::Canned {
            reply: reply.into().into(),
            delay,
            close,
        }));
        backend
    }

    /// A loopback address where a backend listened and has stopped: connecting to it is refused
    /// (as long as nothing else binds that port, which the kernel's choice of free ports makes
    /// unlikely within a test).
    pub fn refused_addr() -> SocketAddr {
        let backend = BadBackend::start().unwrap_or_else(|e| panic!("{e:#}"));
        let addr = backend.addr();
        backend.stop();
        addr
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Freeze for `length`, starting `after` from now, like a process stopped with SIGSTOP and
    /// continued: every request that arrives in that window is answered only when it ends (all at
    /// once); requests before and after it are answered as usual.
    pub fn freeze(&self, after: Duration, length: Duration) {
        let start = Instant::now() + after;
        self.state.timing().frozen = Some((start, start + length));
    }

    /// Answer like a single worker with a fixed service time (a D/D/1 queue): one request at a
    /// time, in the order they arrived, each `service_time` after the previous answer (or after it
    /// arrived, when the worker was idle). Its capacity is `1 / service_time` requests a second:
    /// below it each answer takes about one service time; above it a queue builds up, and the
    /// latency grows with it.
    pub fn serve_one_at_a_time(&self, service_time: Duration) {
        self.state.timing().worker = Some((service_time, Instant::now()));
    }

    /// Answer every request with `behaviour` (or, with `None`, by path again).
    pub fn set_override(&self, behaviour: Option<Behaviour>) {
        *self
            .state
            .behaviour
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = behaviour;
    }

    /// A snapshot of every connection so far.
    pub fn connections(&self) -> Vec<Connection> {
        self.state.conns().clone()
    }

    /// Every request parsed so far, on all connections, in connection order.
    pub fn requests(&self) -> Vec<Received> {
        self.state
            .conns()
            .iter()
            .flat_map(|c| c.requests.clone())
            .collect()
    }

    /// Requests whose target starts with `prefix` (e.g. to leave health probes out).
    pub fn requests_to(&self, prefix: &str) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.target.starts_with(prefix))
            .collect()
    }

    /// Wait until `check` holds for the connections, or `timeout` passes; returns whether it held.
    pub fn wait_until(&self, timeout: Duration, check: impl Fn(&[Connection]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if check(&self.state.conns()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Panic unless every connection carried only well-formed requests: the suite's
    /// "no malformed or smuggled byte ever reached a backend" check.
    pub fn assert_well_formed(&self) {
        for (i, conn) in self.state.conns().iter().enumerate() {
            if let Some(why) = &conn.malformed {
                panic!(
                    "backend connection {i} received bytes that are not a well-formed request: {why}\nraw: {:?}",
                    String::from_utf8_lossy(&conn.raw)
                );
            }
        }
    }

    /// Stop listening and close every connection now (as `kill` would), and wait until it is
    /// done: the next connection to its address is refused.
    pub fn stop(mut self) {
        // Dropping the tasks drops their sockets: the listener closes, so do the connections.
        self.server.abort();
    }
}

/// Serve one connection: parse requests strictly, answer each one as its path says.
async fn serve(stream: TcpStream, id: usize, state: Arc<State>) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        id,
        state: state.clone(),
    };
    let mut number = 0;
    loop {
        let request = match conn.read_request().await {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(why) => {
                state.with_conn(id, |c| c.malformed = Some(why));
                // Keep recording whatever else arrives, but answer nothing more.
                while conn.more().await {}
                break;
            }
        };
        number += 1;
        let complete = request.complete;
        let line = request.line();
        let head = request.method == "HEAD";
        let path = request.target.clone();
        state.with_conn(id, |c| c.requests.push(request));
        if !complete {
            break;
        }
        // Frozen, or its single worker busy: the answer waits (unless the peer leaves first).
        let hold = state.timing().hold(Instant::now());
        if !hold.is_zero() && !conn.pause(hold).await {
            break;
        }
        let behaviour = state
            .behaviour
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let keep_going = match behaviour {
            Some(Behaviour::Hang) => conn.hang().await,
            Some(Behaviour::Drop) => {
                let _ = conn.stream.shutdown().await;
                false
            }
            Some(Behaviour::Reset) => {
                // SO_LINGER 0: closing sends RST instead of FIN.
                let _ = conn.stream.set_zero_linger();
                false
            }
            Some(Behaviour::Status(code)) => {
                let body = format!("status {code}\n");
                conn.answer(code, &[], body.as_bytes(), head).await
            }
            Some(Behaviour::Canned {
                reply,
                delay,
                close,
            }) => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                conn.send(&reply).await && !close
            }
            None => conn.by_path(&path, head, id, number, &line).await,
        };
        if !keep_going {
            break;
        }
    }
    state.with_conn(id, |c| c.closed = true);
}

/// One connection's socket and the bytes received but not yet parsed.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    id: usize,
    state: Arc<State>,
}

impl Conn {
    /// Read more bytes into the buffer (and the record); false once the peer has closed.
    async fn more(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let read = self.stream.read(&mut chunk).await;
        self.received(read, &chunk)
    }

    fn received(&mut self, read: std::io::Result<usize>, chunk: &[u8]) -> bool {
        match read {
            Ok(0) | Err(_) => {
                self.state.with_conn(self.id, |c| c.closed = true);
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                self.state
                    .with_conn(self.id, |c| c.raw.extend_from_slice(&chunk[..n]));
                true
            }
        }
    }

    /// Wait `pause`, noticing meanwhile if the peer closes (then false): a dripping answer sees
    /// at once that lb gave up on it.
    async fn pause(&mut self, pause: Duration) -> bool {
        let until = tokio::time::Instant::now() + pause;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                read = self.stream.read(&mut chunk) => {
                    if !self.received(read, &chunk) {
                        return false;
                    }
                }
            }
        }
    }

    /// One line ending in CRLF, without it; `None` at end of stream.
    async fn line(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..at].to_vec();
                self.buf.drain(..at + 2);
                if line.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
                    return Err(format!("bare CR, LF or NUL in line {line:?}"));
                }
                return Ok(Some(line));
            }
            if self.buf.len() > 64 * 1024 {
                return Err("a line longer than 64 KiB".to_string());
            }
            if !self.more().await {
                return Ok(None);
            }
        }
    }

    /// Exactly `n` body bytes, or as many as arrived before the peer closed.
    async fn exact(&mut self, n: usize) -> (Vec<u8>, bool) {
        while self.buf.len() < n {
            if !self.more().await {
                return (std::mem::take(&mut self.buf), false);
            }
        }
        (self.buf.drain(..n).collect(), true)
    }

    /// Parse one request; `Ok(None)` when the peer closed between requests.
    async fn read_request(&mut self) -> Result<Option<Received>, String> {
        let Some(request_line) = self.line().await? else {
            return if self.buf.is_empty() {
                Ok(None)
            } else {
                Err("connection closed in the middle of a request line".to_string())
            };
        };
        let text = String::from_utf8(request_line).map_err(|_| "non-UTF-8 request line")?;
        let parts: Vec<&str> = text.split(' ').collect();
        let [method, target, version] = parts[..] else {
            return Err(format!(
                "request line is not METHOD SP TARGET SP VERSION: {text:?}"
            ));
        };
        if version != "HTTP/1.1" {
            return Err(format!("lb must send HTTP/1.1, got {version:?}"));
        }
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(format!("bad method {method:?}"));
        }
        let mut received = Received {
            method: method.to_string(),
            target: target.to_string(),
            version: version.to_string(),
            ..Received::default()
        };
        loop {
            let Some(line) = self.line().await? else {
                return Err("connection closed in the middle of a request head".to_string());
            };
            if line.is_empty() {
                break;
            }
            let line = String::from_utf8(line).map_err(|_| "non-UTF-8 header line")?;
            let Some((name, value)) = line.split_once(':') else {
                return Err(format!("header line without a colon: {line:?}"));
            };
            if name.is_empty()
                || name.starts_with([' ', '\t'])
                || name.ends_with([' ', '\t'])
                || name.contains(' ')
            {
                return Err(format!("bad header name (or obs-fold) {name:?}"));
            }
            received
                .headers
                .push((name.to_string(), value.trim().to_string()));
        }
        let lengths = received.header_values("content-length");
        let codings = received.header_values("transfer-encoding");
        if !codings.is_empty() && !lengths.is_empty() {
            return Err("both Content-Length and Transfer-Encoding".to_string());
        }
        if lengths.len() > 1 {
            return Err(format!("several Content-Length headers: {lengths:?}"));
        }
        if received.has_header("expect") {
            // Like a real server: invite the body.
            let _ = self
                .stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await;
        }
        if let Some(coding) = codings.first() {
            if codings.len() > 1 || !coding.eq_ignore_ascii_case("chunked") {
                return Err(format!("Transfer-Encoding other than chunked: {codings:?}"));
            }
            received.chunked = true;
            received.complete = self.chunked_body(&mut received.body).await?;
        } else if let Some(length) = lengths.first() {
            let n: usize = length
                .parse()
                .map_err(|_| format!("bad Content-Length {length:?}"))?;
            let (body, complete) = self.exact(n).await;
            received.body = body;
            received.complete = complete;
        } else {
            received.complete = true;
        }
        Ok(Some(received))
    }

    /// De-chunk a body strictly (RFC 9112 §7.1); false if the peer closed before its end.
    async fn chunked_body(&mut self, body: &mut Vec<u8>) -> Result<bool, String> {
        loop {
            let Some(line) = self.line().await? else {
                return Ok(false);
            };
            let line = String::from_utf8(line).map_err(|_| "non-UTF-8 chunk size")?;
            let size = line.split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16)
                .ok()
                .filter(|_| !size.is_empty() && size.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| format!("bad chunk size line {line:?}"))?;
            if size == 0 {
                // Trailer fields, then the empty line.
                loop {
                    match self.line().await? {
                        None => return Ok(false),
                        Some(l) if l.is_empty() => return Ok(true),
                        Some(_) => {}
                    }
                }
            }
            let (data, complete) = self.exact(size).await;
            body.extend_from_slice(&data);
            if !complete {
                return Ok(false);
            }
            match self.line().await? {
                Some(l) if l.is_empty() => {}
                Some(l) => return Err(format!("chunk data longer than its size: {l:?}")),
                None => return Ok(false),
            }
        }
    }

    /// Never answer; keep recording until the peer gives up. Returns false (the connection is over).
    async fn hang(&mut self) -> bool {
        while self.more().await {}
        false
    }

    /// A well-formed answer; false if writing failed.
    async fn answer(&mut self, code: u16, headers: &[&str], body: &[u8], head: bool) -> bool {
        let mut out = format!("HTTP/1.1 {code} {}\r\n", reason(code));
        for h in headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        // 204 and 304 never carry a body (RFC 9110 §15.3.5, §15.4.5): this answer is the good kind.
        let no_body = matches!(code, 204 | 304);
        if !no_body {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head && !no_body {
            bytes.extend_from_slice(body);
        }
        self.send(&bytes).await
    }

    async fn send(&mut self, bytes: &[u8]) -> bool {
        let sent = self.stream.write_all(bytes).await.is_ok() && self.stream.flush().await.is_ok();
        if sent {
            let n = bytes.len() as u64;
            self.state.with_conn(self.id, |c| c.sent += n);
        }
        sent
    }

    /// Answer by the first path segment (see the module table); false ends the connection.
    async fn by_path(&mut self, target: &str, head: bool, id: usize, n: usize, line: &str) -> bool {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        match first {
            "hang" => self.hang().await,
            "reset" => {
                let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
                out.extend(std::iter::repeat_n(b'r', 1000));
                self.send(&out).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                // SO_LINGER 0: closing sends RST instead of FIN.
                let _ = self.stream.set_zero_linger();
                false
            }
            "short" => {
                let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
                out.extend(std::iter::repeat_n(b's', 100));
                self.send(&out).await;
                let _ = self.stream.shutdown().await;
                false
            }
            "garbage" => {
                self.send(b"HTTP/1.1 OK banana\r\nthis is not a header\r\n\r\n")
                    .await;
                false
            }
            "cl-te" => {
                self.send(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                )
                .await
            }
            "no-content" | "not-modified" => {
                let status: &[u8] = if first == "no-content" {
                    b"HTTP/1.1 204 No Content\r\n"
                } else {
                    b"HTTP/1.1 304 Not Modified\r\n"
                };
                let mut out = status.to_vec();
                out.extend_from_slice(
                    format!("Content-Length: {}\r\n\r\n", SMUGGLED_RESPONSE.len()).as_bytes(),
                );
                out.extend_from_slice(SMUGGLED_RESPONSE);
                self.send(&out).await
            }
            "head-body" => {
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    SMUGGLED_RESPONSE.len()
                )
                .into_bytes();
                out.extend_from_slice(SMUGGLED_RESPONSE);
                self.send(&out).await
            }
            "drip" => {
                let ms = query_number(query, "ms").unwrap_or(100);
                let n = query_number(query, "n").unwrap_or(10);
                if !self
                    .send(format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").as_bytes())
                    .await
                {
                    return false;
                }
                for _ in 0..n {
                    if !self.pause(Duration::from_millis(ms)).await || !self.send(b"d").await {
                        return false;
                    }
                }
                true
            }
            "close" => {
                let body = format!("conn {} request {n}: {line}\n", id + 1);
                self.answer(200, &["Connection: close"], body.as_bytes(), head)
                    .await;
                let _ = self.stream.shutdown().await;
                false
            }
            "trailers" => self.send(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 42\r\n\r\n",
            )
            .await,
            "hop-by-hop" => {
                self.answer(
                    200,
                    &[
                        "Connection: X-Backend-Secret",
                        "X-Backend-Secret: 1",
                        "Keep-Alive: timeout=5",
                        "Proxy-Connection: keep-alive",
                        "Proxy-Authenticate: Basic",
                        "Upgrade: h2c",
                        "X-Kept: yes",
                    ],
                    b"hop\n",
                    head,
                )
                .await
            }
            "endless" => {
                if !self
                    .send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n")
                    .await
                {
                    return false;
                }
                let chunk = vec![b'e'; 64 * 1024];
                while self.send(&chunk).await {}
                self.state.with_conn(self.id, |c| c.closed = true);
                false
            }
            "status" => {
                let code = path
                    .rsplit('/')
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(500);
                let body = format!("status {code}\n");
                self.answer(code, &[], body.as_bytes(), head).await
            }
            _ => {
                let body = format!("conn {} request {n}: {line}\n", id + 1);
                self.answer(200, &["Content-Type: text/plain"], body.as_bytes(), head)
                    .await
            }
        }
    }
}

fn query_number(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

#[cfg(test)]
mod tests {
    //! When a held-back answer goes out, on a clock in milliseconds from `t0`.

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Frozen from 500 to 1500: a request at 400 is answered at once, those at 500 and 1200 at
    /// 1500, one at 1500 at once again.
    #[test]
    fn a_frozen_backend_answers_when_the_freeze_ends() {
        let t0 = Instant::now();
        let mut timing = Timing {
            frozen: Some((t0 + ms(500), t0 + ms(1500))),
            worker: None,
        };
        let holds: Vec<Duration> = [400, 500, 1200, 1500]
            .map(|at| timing.hold(t0 + ms(at)))
            .to_vec();
        assert_eq!(holds, [ms(0), ms(1000), ms(300), ms(0)]);
    }

    /// One worker, 5 ms a request:
    ///
    /// ```text
    /// arrives at   0   0   0   20
    /// answered at  5  10  15   25
    /// ```
    #[test]
    fn a_single_worker_answers_one_service_time_after_another() {
        let t0 = Instant::now();
        let mut timing = Timing {
            frozen: None,
            worker: Some((ms(5), t0)),
        };
        let holds: Vec<Duration> = [0, 0, 0, 20].map(|at| timing.hold(t0 + ms(at))).to_vec();
        assert_eq!(holds, [ms(5), ms(10), ms(15), ms(5)]);
    }
}
