//! The balancer's settings, as plain data: what `cli` produces and what every other module reads.
//!
//! Keeping configuration free of parsing and of I/O means tests (and `xtask`) can build a `Config`
//! directly, and every behaviour can be traced back to one field here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::pick::load::DEFAULT_EWMA_DECAY;
use crate::pick::{Balance, Settings};
use crate::tls::TlsFiles;

/// Everything `lb` needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen. A bare `-p PORT` means `127.0.0.1:PORT`.
    pub listen: SocketAddr,
    /// The routing rules, in command-line order.
    pub rules: Vec<Rule>,
    /// Where the access log goes, if anywhere.
    pub log: Option<LogTarget>,
    /// Which access-log line format to write.
    pub log_format: LogFormat,
    /// Print one line per request lifecycle event on stderr.
    pub trace: bool,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// How long a backend that refused a connection is skipped.
    pub fail_timeout: Duration,
    /// Attempts after the first for one request (`--retries`); `None` = the group's size minus 1.
    pub retries: Option<usize>,
    /// How each group chooses the member to try first (`--balance`).
    pub balance: Balance,
    /// `--slow-start`, `--hash-balance-factor`: settings every group's strategy shares.
    pub balance_settings: Settings,
    /// `--ewma-decay`: the time constant of each backend's latency estimate.
    pub ewma_decay: Duration,
    /// Optional active health checking.
    pub health_check: Option<HealthCheck>,
    /// Worker threads, each with its own event loop, connections and pools (1 = run on the
    /// caller's runtime).
    pub threads: usize,
    /// `--admin`: where the metrics, status and live page listen, if anywhere.
    pub admin: Option<SocketAddr>,
    /// `-s FILE` (and `--tls-key FILE`): the listener speaks HTTPS.
    pub tls: Option<TlsFiles>,
    /// `-D FILE|-`: where the hexdump of all traffic goes, if anywhere (`-` = stderr).
    pub dump: Option<LogTarget>,
}

/// One `-b PREFIX[=REPLACEMENT] HOST:PORT`, with the `-r` and `-v` that preceded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The request-path prefix this rule matches, e.g. `/api/`.
    pub prefix: String,
    /// What the matched prefix is replaced with before forwarding (the prefix itself when no `=`).
    pub replacement: String,
    /// Only requests whose `Host` (without port, any case) equals this match.
    pub vhost: Option<String>,
    /// Answer `302 Found` pointing at the backend instead of proxying.
    pub redirect: bool,
    /// The backend, exactly as written on the command line (`127.0.0.1:8910`); used in logs.
    pub backend: String,
    /// `-w N` before the `-b`: the member's weight, 1..=1000 (`None`: not given, weight 1).
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `1465822060 GET / backend=127.0.0.1:8910`, byte-compatible with the original.
    Mongoose,
    /// Apache/nginx "combined" style plus the backend and the duration.
    Combined,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Establishing a TCP connection to a backend.
    pub connect: Duration,
    /// From the moment the request is fully sent upstream until the response head arrives.
    pub response: Duration,
    /// How long a client may take to send a complete request head.
    pub header: Duration,
    /// How long a client keep-alive connection may sit idle between requests.
    pub idle: Duration,
    /// How long a body (either direction) may go without a single byte moving.
    pub body_idle: Duration,
    /// How long shutdown waits for in-flight requests.
    pub grace: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub pool_idle: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head accepted (431 beyond).
    pub max_header_bytes: usize,
    /// Most client connections served at once; further ones wait in the kernel's accept queue.
    pub max_conns: usize,
    /// Most idle connections kept per backend.
    pub pool_max_idle: usize,
    /// Largest request body kept (as it is sent) so that an idempotent request can be retried.
    pub retry_body_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// The path probed with `GET` on every backend.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend back.
    pub rise: u32,
    /// Consecutive failures that take a backend out.
    pub fall: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(1),
            response: Duration::from_secs(30),
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            body_idle: Duration::from_secs(30),
            grace: Duration::from_secs(10),
            pool_idle: Duration::from_secs(4),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_conns: 10_000,
            pool_max_idle: 256,
            retry_body_bytes: 64 * 1024,
        }
    }
}

impl Config {
    /// A configuration with default timeouts and limits, listening on `listen`, for tests and tools.
    pub fn new(listen: SocketAddr, rules: Vec<Rule>) -> Self {
        Config {
            listen,
            rules,
            log: None,
            log_format: LogFormat::Mongoose,
            trace: false,
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            fail_timeout: Duration::from_secs(10),
            retries: None,
            balance: Balance::RoundRobin,
            balance_settings: Settings::default(),
            ewma_decay: DEFAULT_EWMA_DECAY,
            health_check: None,
            threads: 1,
            admin: None,
            tls: None,
            dump: None,
        }
    }
}
