//! Step 9 of a request: one access-log line once the response is over (or abandoned).
//!
//! The default format is byte-compatible with the original balancer:
//!
//! ```text
//! 1465822060 GET / backend=127.0.0.1:8910
//! ```
//!
//! (Unix seconds, method, path without the query, the backend that served it, or `not defined`
//! when no rule matched.) `--log-format combined|json` add status, bytes, duration and client.
//!
//! **Invariant:** writing the log never blocks a request. A request writes its line into one
//! shared queue of bytes, a `Vec<u8>` behind a mutex: the original's line is formatted straight
//! into it (a few hundred nanoseconds under the lock, no allocation, no message per line); the
//! longer formats are formatted first and copied in. A dedicated writer thread takes the whole
//! queue at once, swapping in an empty buffer, and writes it (usually one system call). If the disk
//! cannot keep up the queue reaches [`QUEUE_BYTES`] and further lines are counted as dropped
//! (reported at exit) instead of slowing the proxy down.
//!
//! The writer is not woken by each line: it comes to pick lines up, every millisecond while they
//! keep coming and less often (up to every [`MAX_PICKUP`]) while none do. Waking a sleeping thread
//! per line cost every request a system call and two context switches, more than the rest of its
//! user-space path (`lb/benches/request_path.rs`); `-l -` still shows each line within a blink.

use std::borrow::Cow;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Version};

use crate::config::{LogFormat, LogTarget};
use crate::h1::{itoa, RequestHead};

/// How many bytes of lines may wait for the writer before new lines are dropped (some 100,000
/// lines of the original's format). With the batch the writer is writing, at most twice this is
/// held.
pub const QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// What the writer's buffer keeps between pick-ups: a burst's larger buffer is given back.
const KEEP_BYTES: usize = 64 * 1024;

/// The writer's pause between pick-ups while lines keep coming.
const MIN_PICKUP: Duration = Duration::from_millis(1);

/// The longest pause between pick-ups, reached after a while without lines.
const MAX_PICKUP: Duration = Duration::from_millis(32);

/// Everything known about one finished request.
#[derive(Debug)]
pub struct Record {
    /// The request's number on its client connection (for `--trace`).
    pub request: u64,
    pub started: Instant,
    pub unix_time: u64,
    pub client: SocketAddr,
    pub method: Method,
    /// The request target as the client sent it (the log's path is this without the query).
    pub target: Target,
    pub version: Version,
    /// `http`, or `https` behind `-s`.
    pub scheme: &'static str,
    /// `None` when no rule matched (`backend=not defined`).
    pub backend: Option<Arc<str>>,
    pub status: u16,
    pub bytes: u64,
    pub duration: Duration,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
}

impl Record {
    /// The record of a request whose head just arrived, for `log`: what its lines do not show is
    /// not copied (without `-l`, the clock; in the original's format, Referer and User-Agent).
    pub fn start(
        head: &RequestHead,
        number: u64,
        client: SocketAddr,
        scheme: &'static str,
        log: &AccessLog,
    ) -> Self {
        let logged = log.is_enabled();
        let shows_headers = log
            .inner
            .as_ref()
            .is_some_and(|inner| inner.format != LogFormat::Mongoose);
        let copied = |name| match shows_headers {
            true => HeaderValue::from_maybe_shared(head.fields.get_shared(&name)?).ok(),
            false => None,
        };
        Record {
            request: number,
            started: Instant::now(),
            unix_time: if logged { unix_now() } else { 0 },
            client,
            method: head.method.clone(),
            target: Target::Uri(head.uri.clone()),
            version: head.version,
            scheme,
            backend: None,
            status: 0,
            bytes: 0,
            duration: Duration::default(),
            referer: copied(http::header::REFERER),
            user_agent: copied(http::header::USER_AGENT),
        }
    }

    /// The record of a request head refused before it became a request (lb's 400 and 431, or a
    /// head that never completed, 408): method and target are unknown, shown as `-`.
    pub fn rejected(client: SocketAddr, status: u16) -> Self {
        Record {
            request: 0,
            started: Instant::now(),
            unix_time: unix_now(),
            client,
            method: Method::from_bytes(b"-").unwrap_or_default(),
            target: Target::Unknown,
            version: Version::HTTP_11,
            scheme: "http",
            backend: None,
            status,
            bytes: 0,
            duration: Duration::default(),
            referer: None,
            user_agent: None,
        }
    }

    pub fn path(&self) -> Cow<'_, str> {
        match self.target.text() {
            Cow::Borrowed(text) => Cow::Borrowed(text.split('?').next().unwrap_or("")),
            Cow::Owned(text) => Cow::Owned(text.split('?').next().unwrap_or("").to_string()),
        }
    }
}

/// A request's target, kept as the request's own (shared) bytes: no copy per request.
#[derive(Debug, Clone)]
pub enum Target {
    Uri(http::Uri),
    /// The head was refused before its target was known.
    Unknown,
}

impl Target {
    /// The target as the client wrote it: `/path?query` (origin and absolute form alike: the
    /// log shows the path), or the whole target for the other forms (`host:443`, `*`).
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Target::Uri(uri) => match uri.path_and_query() {
                // `http://host?q` keeps `?q` as its path and query: shown as `/?q`, as the
                // request line's path would be.
                Some(p) if p.as_str().starts_with(['/', '*']) => Cow::Borrowed(p.as_str()),
                Some(p) => Cow::Owned(p.to_string()),
                None => Cow::Owned(uri.to_string()),
            },
            Target::Unknown => Cow::Borrowed("-"),
        }
    }
}

/// Seconds since the Unix epoch, as the original's `time(NULL)`.
pub fn unix_now() -> u64 {
    crate::clock::unix_ms() / 1000
}

/// A cheap, cloneable handle for writing log lines; does nothing when logging is off.
#[derive(Debug, Clone, Default)]
pub struct AccessLog {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    /// The lines written since the writer's last pick-up, in order.
    queue: Mutex<Vec<u8>>,
    format: LogFormat,
    dropped: AtomicU64,
    /// Set by [`LogWriter::finish`] (or its drop): the writer's next pick-up is its last.
    stop: AtomicBool,
}

impl std::fmt::Debug for Inner {
    /// Not the queue: up to [`QUEUE_BYTES`] of lines.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("format", &self.format)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

/// The writer thread; [`LogWriter::finish`] writes out what is queued and stops it. Dropped
/// without `finish` (an early error, an aborted server), it still stops the thread, after one
/// last pick-up, without waiting for it.
#[derive(Debug)]
pub struct LogWriter {
    /// Taken by `finish`.
    thread: Option<JoinHandle<io::Result<()>>>,
    log: AccessLog,
}

impl AccessLog {
    /// Open the log target and start the writer thread. Fails (before anything binds) if the file
    /// cannot be opened.
    pub fn start(target: &LogTarget, format: LogFormat) -> io::Result<(AccessLog, LogWriter)> {
        let out: Box<dyn Write + Send> = match target {
            LogTarget::Stdout => Box::new(io::stdout()),
            LogTarget::File(path) => {
                Box::new(OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        Self::start_on(out, format)
    }

    /// The same, writing to `out`.
    fn start_on(
        out: Box<dyn Write + Send>,
        format: LogFormat,
    ) -> io::Result<(AccessLog, LogWriter)> {
        let inner = Arc::new(Inner {
            queue: Mutex::new(Vec::with_capacity(KEEP_BYTES)),
            format,
            dropped: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let shared = inner.clone();
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&shared, out))?;
        let log = AccessLog { inner: Some(inner) };
        let writer = LogWriter {
            thread: Some(thread),
            log: log.clone(),
        };
        Ok((log, writer))
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queue the line for `record`, never waiting for the disk.
    pub fn write(&self, record: &Record) {
        let Some(inner) = &self.inner else { return };
        // The longer formats take microseconds and allocate: not under the lock the workers share.
        let line = match inner.format {
            LogFormat::Mongoose => None,
            format => {
                let mut line = Vec::with_capacity(256);
                write_line(format, record, &mut line);
                Some(line)
            }
        };
        let mut queue = inner.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.len() >= QUEUE_BYTES {
            drop(queue);
            inner.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match line {
            Some(line) => queue.extend_from_slice(&line),
            None => write_line(inner.format, record, &mut queue),
        }
    }

    /// Lines dropped so far because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.dropped.load(Ordering::Relaxed))
    }
}

impl LogWriter {
    /// Write everything queued so far, stop the thread, and say how many lines were dropped.
    pub fn finish(mut self) -> io::Result<u64> {
        self.stop();
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(result) => result?,
                Err(_) => return Err(io::Error::other("the access-log thread panicked")),
            }
        }
        Ok(self.log.dropped())
    }

    /// Tell the thread that its next pick-up is its last, and make it come now.
    fn stop(&self) {
        if let Some(inner) = &self.log.inner {
            inner.stop.store(true, Ordering::Release);
        }
        if let Some(thread) = &self.thread {
            thread.thread().unpark(); // do not wait for the next pick-up
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The writer thread: every pick-up, take the whole queue (an empty buffer takes its place) and
/// write it; then pause (see the module comment), twice as long each time nothing came, until
/// [`LogWriter::finish`] stops it.
fn write_lines(inner: &Inner, mut out: Box<dyn Write + Send>) -> io::Result<()> {
    let mut batch = Vec::with_capacity(KEEP_BYTES);
    let mut pause = MIN_PICKUP;
    loop {
        // Read before the pick-up: every line queued before `finish` is in this batch or an
        // earlier one.
        let last = inner.stop.load(Ordering::Acquire);
        std::mem::swap(
            &mut batch,
            &mut inner.queue.lock().unwrap_or_else(PoisonError::into_inner),
        );
        if batch.is_empty() {
            pause = (pause * 2).min(MAX_PICKUP);
        } else {
            out.write_all(&batch)?;
            out.flush()?;
            batch.clear();
            batch.shrink_to(KEEP_BYTES);
            pause = MIN_PICKUP;
        }
        if last {
            return Ok(());
        }
        std::thread::park_timeout(pause);
    }
}

/// Append one line (with its trailing newline) in the chosen format to `out`.
pub fn write_line(format: LogFormat, r: &Record, out: &mut Vec<u8>) {
    let backend = r.backend.as_deref().unwrap_or("not defined");
    match format {
        LogFormat::Mongoose => {
            // Built by hand: `write!` costs twice as much, on every request.
            let (method, path) = (r.method.as_str(), r.path());
            for part in [
                itoa(r.unix_time, &mut [0; 20]),
                b" ",
                method.as_bytes(),
                b" ",
                path.as_bytes(),
                b" backend=",
                backend.as_bytes(),
                b"\n",
            ] {
                out.extend_from_slice(part);
            }
        }
        LogFormat::Combined => {
            // Writing to a `Vec` cannot fail.
            let _ = writeln!(
                out,
                "{} - - [{}] \"{} {} {:?}\" {} {} \"{}\" \"{}\" backend={} duration={:.3}ms",
                r.client.ip(),
                clf_time(r.unix_time),
                r.method,
                r.target.text(),
                r.version,
                r.status,
                r.bytes,
                header_text(r.referer.as_ref()),
                header_text(r.user_agent.as_ref()),
                backend,
                r.duration.as_secs_f64() * 1e3,
            );
        }
        LogFormat::Json => {
            let line = serde_json::json!({
                "time": r.unix_time,
                "client": r.client.to_string(),
                "scheme": r.scheme,
                "method": r.method.as_str(),
                "path": r.path(),
                "target": r.target.text(),
                "status": r.status,
                "bytes": r.bytes,
                "duration_ms": (r.duration.as_secs_f64() * 1e6).round() / 1e3,
                "backend": r.backend.as_deref(),
                "user_agent": r.user_agent.as_ref().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            });
            let _ = serde_json::to_writer(&mut *out, &line);
            out.push(b'\n');
        }
    }
}

fn header_text(value: Option<&HeaderValue>) -> String {
    match value {
        Some(v) => String::from_utf8_lossy(v.as_bytes()).replace('"', "\\\""),
        None => "-".to_string(),
    }
}

/// `25/Nov/2026:08:01:00 +0000`: the Common Log Format's timestamp, in UTC.
fn clf_time(unix: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (days, secs) = (unix / 86_400, unix % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let name = MONTHS.get((month - 1) as usize).copied().unwrap_or("???");
    format!(
        "{day:02}/{name}/{year}:{:02}:{:02}:{:02} +0000",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format_line(format: LogFormat, r: &Record) -> String {
        let mut line = Vec::new();
        write_line(format, r, &mut line);
        String::from_utf8(line).unwrap()
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 1_465_822_060, u64::MAX] {
            assert_eq!(itoa(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }

    fn record() -> Record {
        Record {
            request: 1,
            started: Instant::now(),
            unix_time: 1_465_822_060,
            client: "127.0.0.1:5555".parse().unwrap(),
            method: Method::GET,
            target: Target::Uri(http::Uri::from_static("/index.html?q=1")),
            version: Version::HTTP_11,
            scheme: "http",
            backend: Some("127.0.0.1:8910".into()),
            status: 200,
            bytes: 1930,
            duration: Duration::from_micros(512),
            referer: None,
            user_agent: Some(HeaderValue::from_static("curl/8.0")),
        }
    }

    #[test]
    fn mongoose_line_matches_the_original() {
        assert_eq!(
            format_line(LogFormat::Mongoose, &record()),
            "1465822060 GET /index.html backend=127.0.0.1:8910\n"
        );
        let mut r = record();
        r.backend = None;
        assert!(format_line(LogFormat::Mongoose, &r).ends_with("backend=not defined\n"));
    }

    #[test]
    fn combined_and_json() {
        let line = format_line(LogFormat::Combined, &record());
        assert_eq!(
            line,
            "127.0.0.1 - - [13/Jun/2016:12:47:40 +0000] \"GET /index.html?q=1 HTTP/1.1\" 200 1930 \"-\" \"curl/8.0\" \
             backend=127.0.0.1:8910 duration=0.512ms\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&format_line(LogFormat::Json, &record())).unwrap();
        assert_eq!(json["status"], 200);
        assert_eq!(json["path"], "/index.html");
        assert_eq!(json["backend"], "127.0.0.1:8910");
    }

    /// A stand-in for a disk that stops taking writes until `open` says so, and keeps what it got.
    /// Says on `stuck` when the first write has begun (and is stuck).
    struct Stuck {
        open: std::sync::mpsc::Receiver<()>,
        stuck: Option<std::sync::mpsc::Sender<()>>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stuck {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if let Some(stuck) = self.stuck.take() {
                let _ = stuck.send(());
            }
            let _ = self.open.recv(); // returns at once once the sender is gone
            self.got.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A writer that cannot keep up never holds a request: lines past [`QUEUE_BYTES`] are counted
    /// as dropped, and every other line reaches the file whole and in order.
    #[test]
    fn a_stuck_writer_drops_and_counts_lines_and_loses_no_other() {
        let (open, wait) = std::sync::mpsc::channel();
        let (stuck, is_stuck) = std::sync::mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let out = Stuck {
            open: wait,
            stuck: Some(stuck),
            got: got.clone(),
        };
        let (log, writer) = AccessLog::start_on(Box::new(out), LogFormat::Mongoose).unwrap();
        let line = |n: usize| {
            let mut r = record();
            r.unix_time = n as u64;
            r
        };
        // The first line, taken by the writer, which gets stuck writing it.
        log.write(&line(0));
        is_stuck.recv_timeout(Duration::from_secs(10)).unwrap();
        let lines = 2 * QUEUE_BYTES / format_line(LogFormat::Mongoose, &line(0)).len();
        let started = Instant::now();
        for n in 1..lines {
            log.write(&line(n));
        }
        // Each write only appends to memory: even 2 x 4 MiB of lines take well under a second.
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(open);
        let dropped = writer.finish().unwrap();
        assert!(dropped > 0, "the queue never filled");
        let got = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        let kept: Vec<&str> = got.lines().collect();
        assert_eq!(kept.len() as u64 + dropped, lines as u64);
        // The lines that made it are the first ones, whole, in order: the one being written when
        // the writer got stuck, then the queue until it was full (nothing after: the writer never
        // came back for more until the end).
        for (n, line) in kept.iter().enumerate() {
            assert_eq!(*line, format!("{n} GET /index.html backend=127.0.0.1:8910"));
        }
    }

    /// A writer dropped without `finish` still writes what was queued, and its thread ends.
    #[test]
    fn a_writer_dropped_without_finish_writes_what_was_queued_and_ends() {
        let (open, wait) = std::sync::mpsc::channel::<()>();
        drop(open); // never stuck
        let got = Arc::new(Mutex::new(Vec::new()));
        let out = Stuck {
            open: wait,
            stuck: None,
            got: got.clone(),
        };
        let (log, writer) = AccessLog::start_on(Box::new(out), LogFormat::Combined).unwrap();
        log.write(&record());
        let inner = log.inner.clone().unwrap();
        drop(writer);
        // The thread holds the queue's other handle until it ends.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&inner) > 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            Arc::strong_count(&inner),
            2,
            "the writer thread is still running"
        );
        let got = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        assert!(
            got.contains("\"GET /index.html?q=1 HTTP/1.1\" 200 1930 \"-\" \"curl/8.0\""),
            "{got}"
        );
    }

    /// The target as the request line had it, whatever its form: origin, absolute (its path and
    /// query; `/` when the path is empty), authority (`host:port`), asterisk; `-` when unknown.
    #[test]
    fn every_target_form_is_logged_as_before() {
        for (uri, text, path) in [
            ("/a/b?q=1", "/a/b?q=1", "/a/b"),
            ("http://example.com/x?y", "/x?y", "/x"),
            ("http://example.com?q=1", "/?q=1", "/"),
            ("http://example.com", "/", "/"),
            ("example.com:443", "example.com:443", "example.com:443"),
            ("*", "*", "*"),
        ] {
            let mut r = record();
            r.target = Target::Uri(uri.parse().unwrap());
            assert_eq!(r.target.text(), text, "{uri}");
            assert_eq!(r.path(), path, "{uri}");
        }
        let mut r = record();
        r.target = Target::Unknown;
        assert_eq!(r.target.text(), "-");
    }
}
