//! What every hardening test needs: start `lb` in front of some backends, talk raw HTTP/1.1 to it
//! over a blocking socket (so a test can send exactly the bytes it means, broken ones included),
//! and read `lb`'s memory and file descriptors from `/proc`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tests::Proc;

/// Start `lb -p 0 -b / B1 -b / B2 ... EXTRA...` and wait until it listens.
pub fn lb(backends: &[SocketAddr], extra: &[&str]) -> (Proc, SocketAddr) {
    let addrs: Vec<String> = backends.iter().map(ToString::to_string).collect();
    let mut args: Vec<&str> = vec!["-p", "0"];
    for addr in &addrs {
        args.extend(["-b", "/", addr.as_str()]);
    }
    args.extend(extra);
    tests::start_lb(&tests::bin("lb"), &args).unwrap_or_else(|e| panic!("{e:#}"))
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

/// Poll `check` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One response as the client received it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended where its framing said (false: the connection closed early).
    pub complete: bool,
    /// Trailer fields after a chunked body.
    pub trailers: Vec<(String, String)>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP/1.1 client on a blocking socket.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
    /// How long one read may block before the test fails.
    pub patience: Duration,
}

/// Why reading stopped.
#[derive(Debug, PartialEq, Eq)]
enum Fill {
    Data,
    Eof,
    TimedOut,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
            eof: false,
            patience: Duration::from_secs(5),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> &mut Self {
        // A write can fail when lb has already answered and closed; the reads tell the story.
        let _ = self.stream.write_all(bytes);
        self
    }

    /// `GET path` with keep-alive, then its final response.
    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: lb.test\r\n\r\n").as_bytes());
        self.response(false)
            .unwrap_or_else(|| panic!("lb closed the connection instead of answering GET {path}"))
    }

    fn fill(&mut self, wait: Duration) -> Fill {
        if self.eof {
            return Fill::Eof;
        }
        self.stream
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .unwrap();
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                Fill::Eof
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Fill::Data
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Fill::TimedOut
            }
            // A reset is a close as far as the client can tell.
            Err(_) => {
                self.eof = true;
                Fill::Eof
            }
        }
    }

    fn need(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            match self.fill(self.patience) {
                Fill::Data => {}
                Fill::Eof => return false,
                Fill::TimedOut => panic!(
                    "no data from lb within {:?}; received so far: {:?}",
                    self.patience,
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
        true
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                self.buf.drain(..at + 2);
                return Some(line);
            }
            let more = self.buf.len() + 1;
            if !self.need(more) {
                return None;
            }
        }
    }

    /// The next response, interim (1xx) ones included; `None` if lb closed before sending one.
    /// `to_head`: the request was HEAD, so the response has no body whatever its headers say.
    pub fn any_response(&mut self, to_head: bool) -> Option<Response> {
        let status_line = self.line()?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line from lb: {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self
                .line()
                .unwrap_or_else(|| panic!("lb closed in the middle of a response head"));
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line from lb: {line:?}"));
            headers.push((name.to_string(), value.trim().to_string()));
        }
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
            complete: true,
            trailers: Vec::new(),
        };
        if to_head || matches!(status, 100..=199 | 204 | 304) {
            return Some(response);
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
        let length = response
            .header("content-length")
            .map(|l| l.parse::<usize>().expect("Content-Length from lb"));
        if chunked {
            response.complete = self.chunked(&mut response.body, &mut response.trailers);
        } else if let Some(n) = length {
            response.complete = self.need(n);
            let take = n.min(self.buf.len());
            response.body = self.buf.drain(..take).collect();
        } else {
            while self.need(self.buf.len() + 1) {}
            response.body = std::mem::take(&mut self.buf);
        }
        Some(response)
    }

    fn chunked(&mut self, body: &mut Vec<u8>, trailers: &mut Vec<(String, String)>) -> bool {
        loop {
            let Some(size_line) = self.line() else {
                return false;
            };
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size from lb: {size_line:?}"));
            if size == 0 {
                loop {
                    match self.line() {
                        None => return false,
                        Some(l) if l.is_empty() => return true,
                        Some(l) => {
                            if let Some((n, v)) = l.split_once(':') {
                                trailers.push((n.to_string(), v.trim().to_string()));
                            }
                        }
                    }
                }
            }
            if !self.need(size + 2) {
                body.append(&mut self.buf);
                return false;
            }
            body.extend(self.buf.drain(..size));
            assert_eq!(&self.buf[..2], b"\r\n", "chunk data not followed by CRLF");
            self.buf.drain(..2);
        }
    }

    /// The next final response (skipping 1xx); `None` if lb closed before sending one.
    pub fn response(&mut self, to_head: bool) -> Option<Response> {
        loop {
            let response = self.any_response(to_head)?;
            if response.status >= 200 {
                return Some(response);
            }
        }
    }

    /// Does lb close the connection within `timeout`, sending nothing more? Bytes that do arrive
    /// are kept for the next read.
    pub fn closes_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            match self.fill(left) {
                Fill::Eof => return true,
                Fill::TimedOut => return false,
                Fill::Data => {}
            }
        }
    }

    /// Bytes received and not yet parsed into a response.
    pub fn unread(&self) -> &[u8] {
        &self.buf
    }
}
