//! Running the server binary in tests: [`ServerProcess`] starts it on a free port, waits for its
//! "Starting" line, and kills it when dropped, so a failing test never leaves a server behind.
//! When something goes wrong, [`ServerProcess::fail`] panics with the command line and everything
//! the server printed, which is usually the whole explanation.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a server may take to start or to stop; generous, since the machine may be busy.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub const BIN: &str = env!("CARGO_BIN_EXE_restful-server");

pub struct ServerProcess {
    child: Child,
    command_line: String,
    /// Lines of stdout, as the reader thread sees them.
    stdout_lines: Receiver<String>,
    /// Lines already taken from `stdout_lines`, kept for failure reports.
    stdout_seen: Vec<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
    pub starting_line: String,
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `restful-server ARGS` and waits for its "Starting" line. Pass `-p 0` (or an
    /// `IP:0`) so the system picks a free port; the line says which.
    pub fn start(args: &[&str]) -> Self {
        let command_line = format!("{BIN} {}", args.join(" "));
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {command_line}: {err}"));

        // Pipes are read by threads so that the server never blocks on a full pipe, and so that
        // reads here can time out.
        let (line_tx, stdout_lines) = mpsc::channel();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || loop {
            let mut line = Vec::new();
            match stdout.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                    if line_tx.send(line).is_err() {
                        break;
                    }
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut stderr_pipe = child.stderr.take().unwrap();
        let stderr_sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = stderr_pipe.read(&mut buf) {
                stderr_sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });

        let mut server = Self {
            child,
            command_line,
            stdout_lines,
            stdout_seen: Vec::new(),
            stderr,
            starting_line: String::new(),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let line = server.next_stdout_line();
        let addr = line
            .strip_prefix("Starting RESTful server on ")
            .and_then(|rest| rest.split(',').next())
            .and_then(|addr| addr.parse().ok());
        match addr {
            Some(addr) => server.addr = addr,
            None => server.fail(&format!("unexpected first line: {line:?}")),
        }
        server.starting_line = line;
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the server prints, waiting at most [`PATIENCE`].
    pub fn next_stdout_line(&mut self) -> String {
        match self.stdout_lines.recv_timeout(PATIENCE) {
            Ok(line) => {
                self.stdout_seen.push(line.clone());
                line
            }
            Err(_) => self.fail("no line on stdout in time"),
        }
    }

    /// Sends `signal` (e.g. "TERM") with the `kill` command, since this workspace has no unsafe
    /// code to call `kill(2)` directly, and waits for the process to exit.
    pub fn signal_and_wait(&mut self, signal: &str) -> ExitStatus {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status();
        if !matches!(sent, Ok(status) if status.success()) {
            self.fail(&format!("kill -{signal} failed: {sent:?}"));
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => self.fail(&format!("did not exit after SIG{signal}: {other:?}")),
            }
        }
    }

    /// Stops the server and panics with `why`, the command line and all the server's output.
    pub fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Give the reader threads a moment to drain the pipes of the now dead process.
        std::thread::sleep(Duration::from_millis(100));
        self.stdout_seen.extend(self.stdout_lines.try_iter());
        let stderr = String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned();
        panic!(
            "{why}\n--- command\n{}\n--- stdout\n{}\n--- stderr\n{stderr}",
            self.command_line,
            self.stdout_seen.join("\n"),
        );
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Already exited is fine; this only makes sure no server outlives its test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reply as it came off the wire.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    /// Header lines in order, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` as raw bytes and reads until the server closes. Requests should carry
/// `Connection: close`, so the end of the reply is the end of the connection.
pub fn send_raw(addr: SocketAddr, request: &[u8]) -> RawReply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(request).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse_reply(&raw)
}

/// `GET path` with the minimal headers a client sends.
pub fn get(addr: SocketAddr, path: &str) -> RawReply {
    send_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Splits a raw reply into status, headers and body. The body is whatever followed the head, so
/// this is only for replies that are not chunked (which is itself checked by the tests).
pub fn parse_reply(raw: &[u8]) -> RawReply {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    RawReply {
        status,
        headers,
        body: raw[head_end + 4..].to_vec(),
    }
}
