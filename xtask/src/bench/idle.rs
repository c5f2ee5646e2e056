//! What an idle client costs: the memory each proxy keeps for a keep-alive connection that sent
//! one request and then waits, as thousands of browsers, long-polls and WebSocket-heavy pages do.
//!
//! For each proxy (lb, nginx, HAProxy, in front of the same two restful-servers) and each count N
//! (2,000 and 10,000; 200 and 1,000 with `--quick`):
//!
//! 1. start the proxy afresh, allowed N + [`WARM`] + [`HEADROOM`] connections (lb
//!    `--max-conns`, nginx `worker_connections`, HAProxy `maxconn`);
//! 2. open [`WARM`] connections, each sending one `GET /` and reading its answer, and keep them:
//!    the proxy's code is now in memory and its pool of backend connections is as large as
//!    opening N connections [`WARM`] at a time will make it, so what follows is the clients alone;
//! 3. once it has settled (below), read the proxy's resident memory (`VmRSS`, summed over its
//!    processes: nginx's master and workers): *RSS before*;
//! 4. open N more connections the same way, [`WARM`] at a time (the accept queues stay short, so
//!    no SYN waits a second to be retransmitted), and keep them all open and silent;
//! 5. [`FIRST_LOOK`] after the last one, read the RSS again (*after 1 s*); then again every
//!    [`SAMPLE_EVERY`] until it has *settled*, and check which connections the proxy still holds
//!    open. KiB per idle connection = (RSS - RSS before) / held, at both readings.
//!
//! Why two readings: a proxy may free a connection's buffers only once it has been idle for a
//! while (lb parks a connection after a second), and its allocator may hand the freed memory back
//! to the system later still (lb's jemalloc does it in steps over some 25 seconds, after several
//! seconds of nothing). The first reading is what a burst of clients costs a second later; the
//! settled one is what they cost while they wait, the figure the target is about. The RSS has
//! settled when it moved less than [`STEADY_KIB`] per connection for [`Settling::steady_for`]
//! (longer than jemalloc's pauses); a proxy that never settles is read at [`Settling::limit`]
//! and the report says so. `--quick` waits only a few seconds: its settled figures are not.
//!
//! All three proxies are told to keep an idle client for [`IDLE_TIMEOUT`], longer than the
//! longest wait here, so that none closes one while it is measured.
//!
//! Every connection is held, not closed, until the proxy has been stopped. If a limit (open files,
//! a connection limit, the proxy closing idle connections) stops the count short of N, the run
//! records how many were held and why, and the report shows it: a figure over fewer connections
//! than asked is still a figure, but never a silent one.
//!
//! Each connection is one descriptor in this process and one in the proxy, so this part first
//! raises its own open-file limit to the hard limit ([`raise_open_files_limit`]); the proxies,
//! started afterwards, inherit it. Where even the hard limit is too low, it opens only as many
//! connections as it has descriptors to spare, and says so.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tests::{start_lb, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::measure::Plan;
use super::peers::{self, Peer};
use super::procfs;
use super::report::{median, Target};

/// The counts of idle connections of a full run: the two.
pub const COUNTS: [usize; 2] = [2_000, 10_000];

/// The counts of `--quick` (CI): enough to see the per-connection cost above the noise.
pub const QUICK_COUNTS: [usize; 2] = [200, 1_000];

/// The target for lb: at most this many KiB per idle connection.
pub const LB_TARGET_KIB: f64 = 4.0;

/// Connections opened before RSS before is read, and connections being opened at once.
pub const WARM: usize = 64;

/// How long after the last connection the first reading is taken.
pub const FIRST_LOOK: Duration = Duration::from_secs(1);

/// How often the RSS is read while waiting for it to settle.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// A settled RSS moves less than this many KiB per connection (the precision of the figures
/// shown) for [`Settling::steady_for`].
const STEADY_KIB: f64 = 0.1;

/// lb's `--idle-timeout`, nginx's `keepalive_timeout`, HAProxy's `timeout http-keep-alive` here.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long to wait for the RSS to settle.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Settling {
    /// The RSS must hold still this long (in JSON: seconds)...
    #[serde(serialize_with = "super::report::secs::serialize")]
    pub steady_for: Duration,
    /// ...and is read anyway this long after the last connection (in JSON: seconds).
    #[serde(serialize_with = "super::report::secs::serialize")]
    pub limit: Duration,
    /// Long enough for lb's allocator to return memory, so that lb's settled figure is held
    /// against the target.
    pub judged: bool,
}

impl Settling {
    /// A full run: still for longer than jemalloc's pauses between two returns of memory.
    pub const FULL: Settling = Settling {
        steady_for: Duration::from_secs(10),
        limit: Duration::from_secs(60),
        judged: true,
    };

    /// `--quick`: only checks that the part runs, so it hardly waits.
    pub const QUICK: Settling = Settling {
        steady_for: Duration::from_secs(2),
        limit: Duration::from_secs(5),
        judged: false,
    };
}

/// Connections each proxy may hold beyond the warm ones and the N: room for nginx's upstream
/// connections (counted in its `worker_connections`) and for anything else on its port.
const HEADROOM: usize = 1024;

/// Descriptors this process keeps free while it holds the connections: to read `/proc`, and for
/// the pipes of the processes it starts.
const RESERVED_FDS: usize = 32;

/// How long one connection may take to connect and be answered.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The request each connection sends once: HTTP/1.1, so kept alive by default.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// The proxies, in table order.
const PROXIES: [&str; 3] = ["lb", "nginx", "haproxy"];

/// Everything the idle-connection part measured.
#[derive(Debug, Clone, Serialize)]
pub struct IdleMemory {
    /// The counts of idle connections asked for.
    pub counts: Vec<usize>,
    pub rounds: u32,
    pub settling: Settling,
    /// This process's open-file limit, and whether it was raised.
    pub open_files: OpenFiles,
    /// Proxy names in table order, with why one did not run (`not installed`, `skipped`).
    pub proxies: Vec<(&'static str, Option<String>)>,
    pub runs: Vec<IdleRun>,
}

/// One proxy holding N idle connections once.
#[derive(Debug, Clone, Serialize)]
pub struct IdleRun {
    pub round: u32,
    pub proxy: &'static str,
    /// Idle connections asked for (on top of the [`WARM`] ones).
    pub asked: usize,
    /// Idle connections opened, answered, and still open at the settled reading.
    pub held: usize,
    /// The proxy's RSS (bytes, summed over its processes) with only the warm connections open,
    /// settled.
    pub rss_before: u64,
    /// The same [`FIRST_LOOK`] after the last of the idle connections was opened.
    pub rss_first: u64,
    /// The same once settled (or at [`Settling::limit`]).
    pub rss_settled: u64,
    /// From the last connection to the settled reading (in JSON: seconds).
    #[serde(serialize_with = "super::report::secs::serialize")]
    pub settled_after: Duration,
    /// False if the RSS (before or with the connections) was still moving at [`Settling::limit`].
    pub settled: bool,
    /// Why fewer than `asked` were held.
    pub shortfall: Option<String>,
}

impl IdleRun {
    /// KiB per held connection [`FIRST_LOOK`] after the last one; `None` if none was held.
    pub fn kib_first(&self) -> Option<f64> {
        kib_per_connection(self.rss_before, self.rss_first, self.held)
    }

    /// KiB per held connection once the RSS has settled; `None` if none was held.
    pub fn kib_settled(&self) -> Option<f64> {
        kib_per_connection(self.rss_before, self.rss_settled, self.held)
    }
}

/// (with - before) / connections, in KiB; `None` without connections. It can come out
/// negative if the proxy gave memory back meanwhile: shown as it is, not hidden.
pub fn kib_per_connection(rss_before: u64, rss_with: u64, connections: usize) -> Option<f64> {
    (connections > 0).then(|| (rss_with as f64 - rss_before as f64) / 1024.0 / connections as f64)
}

/// Has the RSS settled? `samples` are readings [`SAMPLE_EVERY`] apart, the newest last: yes once
/// those of the last `steady_for` lie within [`STEADY_KIB`] per connection of each other.
pub fn is_steady(samples: &[u64], connections: usize, steady_for: Duration) -> bool {
    let span = (steady_for.as_millis() / SAMPLE_EVERY.as_millis()) as usize + 1;
    let Some(recent) = samples.len().checked_sub(span).map(|from| &samples[from..]) else {
        return false;
    };
    let (lo, hi) = recent
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    ((hi - lo) as f64) < STEADY_KIB * 1024.0 * connections.max(1) as f64
}

/// Medians over rounds of one proxy at one count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IdleSummary {
    /// KiB per connection once settled, and [`FIRST_LOOK`] after the last connection.
    pub kib_settled: f64,
    pub kib_first: f64,
    pub rss_before_mib: f64,
    pub rss_first_mib: f64,
    pub rss_settled_mib: f64,
    pub settled_after: Duration,
    /// Every round settled within [`Settling::limit`].
    pub settled: bool,
    /// The fewest connections held in any round.
    pub fewest_held: usize,
}

/// This process's open-file limit (`RLIMIT_NOFILE`).
#[derive(Debug, Clone, Serialize)]
pub struct OpenFiles {
    pub soft: u64,
    pub hard: u64,
    /// The soft limit before it was raised, if it was.
    pub raised_from: Option<u64>,
    /// Why it could not be raised or read.
    pub problem: Option<String>,
}

impl OpenFiles {
    /// `20000 (hard limit 20000, raised from 1024)`.
    pub fn describe(&self) -> String {
        let limit = |n: u64| {
            if n == procfs::UNLIMITED {
                "unlimited".to_string()
            } else {
                n.to_string()
            }
        };
        let mut text = format!("{} (hard limit {}", limit(self.soft), limit(self.hard));
        if let Some(before) = self.raised_from {
            text += &format!(", raised from {}", limit(before));
        }
        if let Some(problem) = &self.problem {
            text += &format!("; {problem}");
        }
        text + ")"
    }
}

/// Raise this process's soft open-file limit to its hard limit, with `prlimit(1)` on our own pid:
/// the standard library has no `setrlimit`, and the workspace forbids the `unsafe` code a direct
/// call would need. Children started afterwards inherit the new limit.
pub fn raise_open_files_limit() -> OpenFiles {
    let Some((soft, hard)) = procfs::open_files_limit() else {
        return OpenFiles {
            soft: 0,
            hard: 0,
            raised_from: None,
            problem: Some("cannot read it from /proc/self/limits".into()),
        };
    };
    if soft >= hard {
        return OpenFiles {
            soft,
            hard,
            raised_from: None,
            problem: None,
        };
    }
    let value = if hard == procfs::UNLIMITED {
        "unlimited".to_string()
    } else {
        hard.to_string()
    };
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={value}:{value}"),
        ])
        .status();
    let problem = match status {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("prlimit --nofile failed ({s})")),
        Err(e) => Some(format!("cannot run prlimit ({e}): install util-linux")),
    };
    let (now_soft, now_hard) = procfs::open_files_limit().unwrap_or((soft, hard));
    OpenFiles {
        soft: now_soft,
        hard: now_hard,
        raised_from: (now_soft != soft).then_some(soft),
        problem,
    }
}

/// Start two backends, then each proxy afresh for each count, hold the idle connections, read
/// the memory, and stop them all.
pub fn run(plan: &Plan, counts: &[usize], settling: Settling) -> Result<IdleMemory> {
    let open_files = raise_open_files_limit();
    println!("    open files: {}", open_files.describe());
    // Each connection is a descriptor here (and the proxy needs as many): say so now if the
    // limit cannot hold the largest count, rather than let the runs come out short unexplained.
    let largest = counts.iter().copied().max().unwrap_or(0);
    if open_files.soft != procfs::UNLIMITED && (open_files.soft as usize) < largest + WARM + 64 {
        println!(
            "    WARNING: an open-file limit of {} cannot hold {} connections: the runs will \
             stop short and say how many they held (raise the hard limit: `ulimit -Hn`)",
            open_files.soft,
            largest + WARM
        );
    }

    // Every process below is stopped when these are dropped at the end of this function.
    let (backends, addrs) = super::start_backends(plan.bins, 2)?;
    let proxies: Vec<(&'static str, Option<String>)> = PROXIES
        .iter()
        .map(|&name| {
            let missing = match name {
                "nginx" => plan.peers.nginx.err(),
                "haproxy" => plan.peers.haproxy.err(),
                _ => None,
            };
            (name, missing.map(str::to_string))
        })
        .collect();
    let runnable: Vec<&'static str> = proxies
        .iter()
        .filter(|(_, missing)| missing.is_none())
        .map(|&(name, _)| name)
        .collect();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime of the idle connections' client")?;
    let mut runs = Vec::new();
    for round in 0..plan.rounds {
        for &n in counts {
            // A different proxy first each round, as in the other parts.
            for order in 0..runnable.len() {
                let proxy = runnable[(round as usize + order) % runnable.len()];
                let run = measure(&runtime, plan, proxy, &addrs, n, round, settling)?;
                println!("{}", progress_line(&run, plan.rounds));
                runs.push(run);
            }
        }
    }
    drop(backends);
    Ok(IdleMemory {
        counts: counts.to_vec(),
        rounds: plan.rounds,
        settling,
        open_files,
        proxies,
        runs,
    })
}

/// A proxy started for one count of idle connections; stopped when dropped.
enum Started {
    Lb(Proc),
    Peer(Peer),
}

impl Started {
    fn pid(&self) -> u32 {
        match self {
            Started::Lb(proc) => proc.pid(),
            Started::Peer(peer) => peer.pid(),
        }
    }
}

/// Start `proxy` allowed `max_conns` client connections, in front of `backends`.
fn start(
    plan: &Plan,
    proxy: &'static str,
    backends: &[SocketAddr],
    max_conns: usize,
) -> Result<(Started, SocketAddr)> {
    if proxy == "lb" {
        let mut args = vec!["-p".to_string(), "0".into(), "--max-conns".into()];
        args.push(max_conns.to_string());
        args.extend([
            "--idle-timeout".into(),
            format!("{}s", IDLE_TIMEOUT.as_secs()),
        ]);
        for addr in backends {
            args.extend(["-b".into(), "/".into(), addr.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (proc, addr) = start_lb(&plan.bins.join("lb"), &args)?;
        return Ok((Started::Lb(proc), addr));
    }
    let (label, bin) = match proxy {
        "nginx" => ("nginx idle", &plan.peers.nginx),
        _ => ("haproxy idle", &plan.peers.haproxy),
    };
    let Ok(bin) = bin else {
        bail!("{proxy} is not available here");
    };
    let setup = peers::Setup {
        label,
        backends,
        workers: plan.cores,
        balance: if proxy == "haproxy" { "roundrobin" } else { "" },
        tls: None,
        max_conns,
        idle_timeout: Some(IDLE_TIMEOUT),
    };
    let peer = if proxy == "nginx" {
        peers::start_nginx(bin, plan.tmp, &setup)
    } else {
        peers::start_haproxy(bin, plan.tmp, &setup)
    }
    .with_context(|| {
        format!("starting {proxy} (fix its installation, or leave it out with --skip {proxy})")
    })?;
    let addr = peer.addr;
    Ok((Started::Peer(peer), addr))
}

/// One proxy, started afresh, holding `n` idle connections: steps 1 to 5 of the module's list.
fn measure(
    runtime: &tokio::runtime::Runtime,
    plan: &Plan,
    proxy: &'static str,
    backends: &[SocketAddr],
    n: usize,
    round: u32,
    settling: Settling,
) -> Result<IdleRun> {
    let (started, addr) = start(plan, proxy, backends, n + WARM + HEADROOM)?;
    let pid = started.pid();
    let (warm, warm_failure) = runtime.block_on(open_idle(addr, WARM));
    if let Some(why) = warm_failure {
        bail!("{proxy} did not answer the {WARM} warm-up connections: {why}");
    }
    let read_rss = || procfs::group_rss(pid).with_context(|| format!("reading {proxy}'s RSS"));
    let (rss_before, before_settled) = settle(read_rss()?, n, Instant::now(), settling, read_rss)?;
    // Open no more connections than this process has descriptors for, keeping a few to read
    // /proc and start processes with: running out here would leave the count short without
    // the proxy being the reason, and the RSS unreadable.
    let room = procfs::free_descriptors().map_or(n, |free| free.saturating_sub(RESERVED_FDS));
    let (idle, failure) = runtime.block_on(open_idle(addr, n.min(room)));
    let opened = Instant::now();
    std::thread::sleep(FIRST_LOOK);
    let rss_first = read_rss()?;
    let (rss_settled, settled) = settle(rss_first, n, opened, settling, read_rss)?;
    let settled_after = opened.elapsed();
    let held = idle.iter().filter(|s| still_open(s)).count();

    let closed = idle.len() - held;
    let shortfall = match (failure, closed) {
        (None, 0) if idle.len() == n => None,
        (failure, closed) => {
            let mut why = Vec::new();
            if room < n {
                why.push(format!(
                    "this process's open-file limit ({}) left room for {room} connections",
                    procfs::open_files_limit().map_or(0, |(soft, _)| soft)
                ));
            }
            if let Some(failure) = failure {
                why.push(format!(
                    "opening stopped after {} connections: {failure}",
                    idle.len()
                ));
            }
            if closed > 0 {
                why.push(format!(
                    "{proxy} closed {closed} of them within {settled_after:.1?} of idleness"
                ));
            }
            Some(why.join("; "))
        }
    };
    // Stop the proxy first: it closes the connections, so the port pairs wait in TIME_WAIT on
    // its side, not among the ephemeral ports this process connects from.
    drop(started);
    drop(idle);
    drop(warm);
    Ok(IdleRun {
        round,
        proxy,
        asked: n,
        held,
        rss_before,
        rss_first,
        rss_settled,
        settled_after,
        settled: before_settled && settled,
        shortfall,
    })
}

/// Read the RSS every [`SAMPLE_EVERY`], starting from `first`, until it is steady for
/// `connections` ([`is_steady`]) or `settling.limit` has passed since `since`. Returns the last
/// reading and whether it was steady.
fn settle(
    first: u64,
    connections: usize,
    since: Instant,
    settling: Settling,
    read_rss: impl Fn() -> Result<u64>,
) -> Result<(u64, bool)> {
    let mut samples = vec![first];
    let mut last = first;
    while !is_steady(&samples, connections, settling.steady_for) {
        if since.elapsed() >= settling.limit {
            return Ok((last, false));
        }
        std::thread::sleep(SAMPLE_EVERY);
        last = read_rss()?;
        samples.push(last);
    }
    Ok((last, true))
}

/// Open `n` connections to `addr`, [`WARM`] at a time, each answered once and kept open. Stops
/// at the first failure (a descriptor limit, a refusal, a timeout) and returns the connections
/// opened so far with what went wrong.
async fn open_idle(addr: SocketAddr, n: usize) -> (Vec<std::net::TcpStream>, Option<String>) {
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut openers = tokio::task::JoinSet::new();
    for _ in 0..WARM.min(n) {
        let (next, stop) = (next.clone(), stop.clone());
        openers.spawn(async move {
            let mut opened = Vec::new();
            while !stop.load(Ordering::Relaxed) && next.fetch_add(1, Ordering::Relaxed) < n {
                match tokio::time::timeout(ANSWER_TIMEOUT, open_one(addr)).await {
                    Ok(Ok(stream)) => opened.push(stream),
                    Ok(Err(e)) => {
                        stop.store(true, Ordering::Relaxed);
                        return (opened, Some(format!("{e:#}")));
                    }
                    Err(_) => {
                        stop.store(true, Ordering::Relaxed);
                        let why = format!("no answer within {ANSWER_TIMEOUT:?}");
                        return (opened, Some(why));
                    }
                }
            }
            (opened, None)
        });
    }
    let mut all = Vec::with_capacity(n);
    let mut failure = None;
    while let Some(joined) = openers.join_next().await {
        match joined {
            Ok((opened, why)) => {
                all.extend(opened);
                failure = failure.or(why);
            }
            Err(e) => failure = failure.or(Some(format!("an opening task failed: {e}"))),
        }
    }
    (all, failure)
}

/// Connect, send one `GET /`, read its whole answer, and hand back the open connection as a
/// plain (non-blocking) socket, to be held without a runtime.
async fn open_one(addr: SocketAddr) -> Result<std::net::TcpStream> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .context("connecting")?;
    stream.write_all(REQUEST).await.context("sending GET /")?;
    let mut answer = Vec::with_capacity(4096);
    loop {
        if let Some(length) = response_length(&answer)? {
            if answer.len() >= length {
                break;
            }
        }
        let read = stream
            .read_buf(&mut answer)
            .await
            .context("reading the answer")?;
        if read == 0 {
            bail!(
                "the connection was closed after {} bytes of the answer",
                answer.len()
            );
        }
    }
    stream.into_std().context("detaching the connection")
}

/// The whole length (head and body) of the HTTP/1.1 response at the start of `bytes`, once its
/// head has arrived (`None` before). The body must be framed by `Content-Length` (RFC 9112 §6.3),
/// as the backends' `GET /` is; and the response must not end the connection.
pub fn response_length(bytes: &[u8]) -> Result<Option<usize>> {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&bytes[..end]).context("a response head that is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).unwrap_or_default();
    if !status.starts_with('2') || status.len() != 3 {
        bail!("answered {status_line:?}, not 2xx");
    }
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .with_context(|| format!("Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("a response with Transfer-Encoding {value:?}: expected Content-Length");
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            bail!("answered with Connection: close: the connection would not stay open");
        }
    }
    let length = length.context("a response without Content-Length")?;
    Ok(Some(end + 4 + length))
}

/// Is this idle connection still open? A non-blocking peek: nothing to read yet means open,
/// end of stream or an error means the proxy closed it.
fn still_open(stream: &std::net::TcpStream) -> bool {
    match stream.peek(&mut [0u8; 1]) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => true,
        // Bytes arriving on an idle connection would be odd, but it is open.
        Ok(n) => n > 0,
        Err(_) => false,
    }
}

/// The line printed after each run.
fn progress_line(run: &IdleRun, rounds: u32) -> String {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let kib = |figure: Option<f64>| figure.map_or_else(|| "—".into(), |kib| format!("{kib:.1}"));
    let target = if run.proxy == "lb" {
        format!(" (target ≤ {LB_TARGET_KIB})")
    } else {
        String::new()
    };
    let unsettled = if run.settled { "" } else { ", still moving" };
    let shortfall = run
        .shortfall
        .as_ref()
        .map(|why| format!("\n        held only {} of {}: {why}", run.held, run.asked))
        .unwrap_or_default();
    format!(
        "    round {}/{rounds}  {:>6} idle  {:<8} RSS {:>6.1} MiB before, {:>6.1} after 1 s ({:>5} KiB/conn), \
         {:>6.1} after {:>4.1} s{unsettled} ({:>5} KiB/conn{target}){shortfall}",
        run.round + 1,
        run.asked,
        run.proxy,
        mib(run.rss_before),
        mib(run.rss_first),
        kib(run.kib_first()),
        mib(run.rss_settled),
        run.settled_after.as_secs_f64(),
        kib(run.kib_settled()),
    )
}

impl IdleMemory {
    /// Medians over rounds of `proxy` holding `count` connections.
    pub fn summary(&self, proxy: &str, count: usize) -> Option<IdleSummary> {
        let runs: Vec<&IdleRun> = self
            .runs
            .iter()
            .filter(|r| r.proxy == proxy && r.asked == count)
            .collect();
        let of = |f: &dyn Fn(&IdleRun) -> Option<f64>| {
            median(&runs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
        };
        let mib = |bytes: u64| Some(bytes as f64 / (1024.0 * 1024.0));
        Some(IdleSummary {
            kib_settled: of(&|r| r.kib_settled())?,
            kib_first: of(&|r| r.kib_first())?,
            rss_before_mib: of(&|r| mib(r.rss_before))?,
            rss_first_mib: of(&|r| mib(r.rss_first))?,
            rss_settled_mib: of(&|r| mib(r.rss_settled))?,
            settled_after: Duration::from_secs_f64(of(&|r| Some(r.settled_after.as_secs_f64()))?),
            settled: runs.iter().all(|r| r.settled),
            fewest_held: runs.iter().map(|r| r.held).min()?,
        })
    }

    /// lb's KiB per connection over `peer`'s at `count`, settled and after 1 s.
    fn ratios(&self, peer: &str, count: usize) -> Option<(f64, f64)> {
        let (lb, peer) = (self.summary("lb", count)?, self.summary(peer, count)?);
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        Some((
            ratio(lb.kib_settled, peer.kib_settled),
            ratio(lb.kib_first, peer.kib_first),
        ))
    }

    fn missing(&self, proxy: &str) -> Option<&str> {
        self.proxies
            .iter()
            .find(|(name, _)| *name == proxy)
            .and_then(|(_, why)| why.as_deref())
    }

    /// The section of the report: memory per proxy and count, then lb's ratios and target.
    pub fn markdown(&self, s: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(s, "\n## Idle keep-alive connections\n");
        let _ = writeln!(
            s,
            "Each proxy started afresh for each count, in front of the same two backends; {WARM} \
             connections opened first and kept (the proxy's code and its pool of backend connections \
             are in memory), then RSS before, once settled; then N more connections opened {WARM} at a \
             time, each sending one `GET /` and reading its answer, all kept open and silent. RSS is \
             VmRSS summed over the proxy's processes (nginx: master and workers), read {FIRST_LOOK:?} \
             after the last connection and again once settled: moving less than {STEADY_KIB} KiB per \
             connection for {:?} (read every {SAMPLE_EVERY:?}, for at most {:?}{}). \
             The settled figure is what an idle connection costs while it waits (a proxy may let go of \
             a connection's buffers only after it has been idle a while, and its allocator return the \
             memory later still); the 1 s one, what a burst of clients costs a second later. \
             KiB per connection = (RSS - RSS before) / connections held. {} round(s), medians; `held` \
             is the fewest connections still open in any round. Every proxy keeps an idle client for \
             {IDLE_TIMEOUT:?}. Open files: {}.\n",
            self.settling.steady_for,
            self.settling.limit,
            if !self.settling.judged {
                ": `--quick` waits too little for an allocator that returns memory slowly, so its \
                 settled figures are not"
            } else {
                ""
            },
            self.rounds,
            self.open_files.describe()
        );
        let _ = writeln!(
            s,
            "Each proxy is allowed N + {} connections (lb `--max-conns`, nginx \
             `worker_connections` per worker, its upstream connections included, HAProxy `maxconn`). \
             nginx allocates and initializes the connection and event structures of all its \
             `worker_connections` in every worker when it starts, so that part of an idle \
             connection's cost is in RSS before, sized by the limit: it shows as RSS before growing \
             with N. lb and HAProxy allocate as connections arrive.\n",
            WARM + HEADROOM
        );
        let _ = writeln!(
            s,
            "| idle connections | proxy | held | RSS before MiB | RSS after 1 s MiB | KiB/conn after 1 s | RSS settled MiB | settled after s | KiB/conn settled |"
        );
        let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|---:|---:|");
        for &count in &self.counts {
            for (proxy, _) in &self.proxies {
                match (self.missing(proxy), self.summary(proxy, count)) {
                    (Some(why), _) => {
                        let _ = writeln!(s, "| {count} | {proxy} | {why} | | | | | | |");
                    }
                    (None, None) => {
                        let _ = writeln!(s, "| {count} | {proxy} | did not run | | | | | | |");
                    }
                    (None, Some(x)) => {
                        let unsettled = if x.settled { "" } else { " (still moving)" };
                        let _ = writeln!(
                            s,
                            "| {count} | {proxy} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1}{unsettled} | {:.1} |",
                            x.fewest_held,
                            x.rss_before_mib,
                            x.rss_first_mib,
                            x.kib_first,
                            x.rss_settled_mib,
                            x.settled_after.as_secs_f64(),
                            x.kib_settled,
                        );
                    }
                }
            }
        }
        let shortfalls: Vec<&IdleRun> = self.runs.iter().filter(|r| r.held < r.asked).collect();
        for r in &shortfalls {
            let _ = writeln!(
                s,
                "\n**{} held {} of {} connections** (round {}): {}.",
                r.proxy,
                r.held,
                r.asked,
                r.round + 1,
                r.shortfall.as_deref().unwrap_or("no reason recorded")
            );
        }
        let _ = writeln!(
            s,
            "\nlb against the issue's target and the peers, settled (after 1 s in parentheses):\n"
        );
        let _ = writeln!(
            s,
            "| idle connections | lb KiB/conn | target ≤ {LB_TARGET_KIB} KiB | lb/nginx | lb/haproxy |"
        );
        let _ = writeln!(s, "|---:|---:|---|---:|---:|");
        for &count in &self.counts {
            let lb = self.summary("lb", count);
            let ratio = |peer: &str| match (self.missing(peer), self.ratios(peer, count)) {
                (Some(why), _) => why.to_string(),
                (None, Some((settled, first))) => format!("{settled:.2} ({first:.2})"),
                (None, None) => "—".into(),
            };
            let _ = writeln!(
                s,
                "| {count} | {} | {} | {} | {} |",
                lb.map_or_else(
                    || "—".into(),
                    |x| format!("{:.1} ({:.1})", x.kib_settled, x.kib_first)
                ),
                match lb {
                    None => "not measured",
                    Some(_) if !self.settling.judged => "not judged (`--quick`)",
                    Some(x) => verdict(x.kib_settled),
                },
                ratio("nginx"),
                ratio("haproxy"),
            );
        }
    }

    /// The target: lb at most [`LB_TARGET_KIB`] per idle connection once settled, at
    /// each count.
    pub fn targets(&self) -> Vec<Target> {
        self.counts
            .iter()
            .map(|&count| {
                let name = format!("lb ≤ {LB_TARGET_KIB} KiB per idle connection at {count}");
                let Some(x) = self.summary("lb", count) else {
                    return Target::not_measured(name);
                };
                let measured = format!(
                    "{:.1} KiB settled after {:.1} s ({:.1} KiB after 1 s)",
                    x.kib_settled,
                    x.settled_after.as_secs_f64(),
                    x.kib_first
                );
                if !self.settling.judged {
                    return Target {
                        name,
                        measured,
                        verdict: "n/a (`--quick` does not wait for the memory to settle)".into(),
                    };
                }
                Target::judged(name, measured, x.kib_settled <= LB_TARGET_KIB)
            })
            .collect()
    }

    /// What `--quick` asserts: every proxy that could run did, at every count, and held every
    /// connection asked for.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (proxy, missing) in &self.proxies {
            if missing.is_some() {
                continue;
            }
            for &count in &self.counts {
                if !self
                    .runs
                    .iter()
                    .any(|r| r.proxy == *proxy && r.asked == count)
                {
                    problems.push(format!("{proxy} did not run with {count} idle connections"));
                }
            }
        }
        for r in self.runs.iter().filter(|r| r.held < r.asked) {
            problems.push(format!(
                "{} held {} of {} idle connections (round {}): {}",
                r.proxy,
                r.held,
                r.asked,
                r.round + 1,
                r.shortfall.as_deref().unwrap_or("no reason recorded")
            ));
        }
        problems
    }
}

fn verdict(kib: f64) -> &'static str {
    if kib <= LB_TARGET_KIB {
        "met"
    } else {
        "**missed**"
    }
}

// Not `mod tests`: that would hide the `tests` harness crate this file imports from.
#[cfg(test)]
mod per_connection {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// A run whose RSS went from `before` to `first` a second after the last connection, and
    /// settled at `settled` five seconds after it.
    fn run(
        proxy: &'static str,
        (asked, held): (usize, usize),
        before: u64,
        first: u64,
        settled: u64,
    ) -> IdleRun {
        IdleRun {
            round: 0,
            proxy,
            asked,
            held,
            rss_before: before,
            rss_first: first,
            rss_settled: settled,
            settled_after: Duration::from_secs(5),
            settled: true,
            shortfall: (held < asked).then(|| "Too many open files".into()),
        }
    }

    fn memory(runs: Vec<IdleRun>) -> IdleMemory {
        IdleMemory {
            counts: vec![2_000],
            rounds: 1,
            settling: Settling::FULL,
            open_files: OpenFiles {
                soft: 20_000,
                hard: 20_000,
                raised_from: Some(1024),
                problem: None,
            },
            proxies: vec![
                ("lb", None),
                ("nginx", None),
                ("haproxy", Some("not installed".into())),
            ],
            runs,
        }
    }

    #[test]
    fn the_growth_is_shared_by_the_connections_held() {
        // 2,000 connections that cost 60,000 KiB: 30 KiB each.
        assert_eq!(
            kib_per_connection(10 * MIB, 10 * MIB + 60_000 * 1024, 2_000),
            Some(30.0)
        );
        // Shrinking memory gives a negative figure rather than a huge unsigned one.
        assert_eq!(kib_per_connection(2048, 1024, 1), Some(-1.0));
        assert_eq!(kib_per_connection(0, MIB, 0), None);
        // Fewer held than asked: divided by the held ones, at both readings.
        let r = run("lb", (2_000, 1_000), 0, 16_000 * 1024, 4_000 * 1024);
        assert_eq!(r.kib_first(), Some(16.0));
        assert_eq!(r.kib_settled(), Some(4.0));
    }

    #[test]
    fn the_rss_has_settled_once_it_holds_still_long_enough() {
        // Readings half a second apart, 1,000 connections: still means within 100 KiB.
        const KIB: u64 = 1024;
        let falling = [
            20_000 * KIB,
            15_000 * KIB,
            12_000 * KIB,
            11_000 * KIB,
            10_500 * KIB,
        ];
        let two_seconds = Duration::from_secs(2);
        assert!(!is_steady(&falling, 1_000, two_seconds));
        // Four readings are not two seconds yet, however still.
        assert!(!is_steady(&[10_000 * KIB; 4], 1_000, two_seconds));
        //   reading:  ... 10,500  10,450  10,420  10,460  10,430 KiB: spans 80 KiB < 100.
        let mut settling = falling.to_vec();
        settling.extend([10_450 * KIB, 10_420 * KIB, 10_460 * KIB, 10_430 * KIB]);
        assert!(is_steady(&settling, 1_000, two_seconds));
        // The same 80 KiB over 200 connections is 0.4 KiB each: still moving.
        assert!(!is_steady(&settling, 200, two_seconds));
        // And two seconds of stillness are not ten.
        assert!(!is_steady(&settling, 1_000, Duration::from_secs(10)));
    }

    #[test]
    fn a_response_is_complete_at_its_content_length() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(response_length(&head[..20]).unwrap(), None);
        let mut whole = head.to_vec();
        whole.extend_from_slice(b"hello");
        assert_eq!(response_length(&whole).unwrap(), Some(whole.len()));
        assert_eq!(response_length(head).unwrap(), Some(head.len() + 5));
    }

    #[test]
    fn responses_that_cannot_be_held_idle_are_refused() {
        let refused: [&[u8]; 4] = [
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n",
        ];
        for response in refused {
            assert!(
                response_length(response).is_err(),
                "{}",
                String::from_utf8_lossy(response)
            );
        }
    }

    #[test]
    fn the_report_shows_figures_ratios_target_and_shortfalls() {
        let idle = memory(vec![
            // lb: 30 KiB per connection after 1 s, 3 KiB settled; nginx 1.5 KiB at both:
            // 20 times less after 1 s, half settled.
            run(
                "lb",
                (2_000, 2_000),
                10 * MIB,
                10 * MIB + 60_000 * 1024,
                10 * MIB + 6_000 * 1024,
            ),
            run(
                "nginx",
                (2_000, 2_000),
                4 * MIB,
                4 * MIB + 3_000 * 1024,
                4 * MIB + 3_000 * 1024,
            ),
        ]);
        let mut s = String::new();
        idle.markdown(&mut s);
        for row in [
            "| 2000 | lb | 2000 | 10.0 | 68.6 | 30.0 | 15.9 | 5.0 | 3.0 |",
            "| 2000 | nginx | 2000 | 4.0 | 6.9 | 1.5 | 6.9 | 5.0 | 1.5 |",
            "| 2000 | haproxy | not installed | | | | | | |",
            "| 2000 | 3.0 (30.0) | met | 2.00 (20.00) | not installed |",
        ] {
            assert!(s.contains(row), "{row}\n{s}");
        }
        assert!(s.contains("raised from 1024"), "{s}");
        let targets = idle.targets();
        assert_eq!(targets.len(), 1);
        assert_eq!(
            targets[0].measured,
            "3.0 KiB settled after 5.0 s (30.0 KiB after 1 s)"
        );
        assert_eq!(targets[0].verdict, "met");
        assert!(idle.problems().is_empty(), "{:?}", idle.problems());

        // lb held 1,500 of 2,000, its RSS never settled, and nginx did not run at all.
        let mut short = run("lb", (2_000, 1_500), MIB, 2 * MIB, 2 * MIB);
        short.settled = false;
        let short = memory(vec![short]);
        let mut s = String::new();
        short.markdown(&mut s);
        assert!(
            s.contains("**lb held 1500 of 2000 connections** (round 1): Too many open files."),
            "{s}"
        );
        assert!(s.contains("| 5.0 (still moving) |"), "{s}");
        assert_eq!(short.problems().len(), 2, "{:?}", short.problems());

        // `--quick` shows its figures but holds none against the target.
        let quick = IdleMemory {
            settling: Settling::QUICK,
            ..idle
        };
        assert!(quick.targets()[0].verdict.starts_with("n/a"));
        let mut s = String::new();
        quick.markdown(&mut s);
        assert!(s.contains("| 3.0 (30.0) | not judged (`--quick`) |"), "{s}");
    }
}
