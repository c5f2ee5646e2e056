//! Running a [`Plan`]: the connections are spread over a few threads, each running its own
//! single-threaded event loop; one worker task per connection sends the traffic, paced by one of
//! two load models, and each thread's statistics become the [`Report`] at the end.
//!
//! **Thread per core.** A load generator must cost less than what it measures, or it measures
//! itself. tokio's default multi-thread runtime lets idle threads steal tasks from busy ones;
//! that balances uneven work, but every wake-up that crosses threads costs a futex or an eventfd
//! write, and a task may run on a different core than the one whose cache holds its connection.
//! The work here is perfectly even (every connection does the same thing), so there is nothing
//! to balance: `run` starts N OS threads (`Plan::threads`, default one per core), each with a
//! `current_thread` runtime, and gives connection `k` to thread `k % N`. A connection then lives
//! its whole life on one thread, and each thread owns its own histograms and counters, which are
//! only added up at the end. This is the shape of wrk (one event loop per thread) and of `lb`.
//!
//! **Closed loop** (no `-q`): each worker sends its next request as soon as the previous answer is
//! complete. The server sets the pace; this measures the most it can do over `-c` connections.
//! With `-n`, workers take numbered tickets from one shared atomic counter until they run out.
//!
//! **Open loop** (`-q RATE`): requests are due at fixed times, `start + i / RATE`, whatever the
//! server does, and worker `k` of `c` owns slots `k, k + c, k + 2c, ...` (whichever thread it
//! runs on). Latency is measured from the slot's *scheduled* time, not from when the request
//! actually left. This is the fix for *coordinated omission* (the name comes from Gil Tene, and
//! wrk2 applies it): a closed-loop tool that stalls with the server simply stops sending, so the
//! requests that *would* have waited during the stall are never measured and the percentiles look
//! fine. Here a stalled server makes the next sends late, and their lateness is counted in their
//! latency. Both views are reported. Each worker waits for its slots on a microsecond timer of
//! its own (`pace.rs`), because tokio's millisecond timer would make every send up to 1 ms late
//! and count that as the target's latency; how late each send left is reported in two parts,
//! the generator's own lateness and the target's lag (a connection still busy).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, HOST, USER_AGENT};
use http::Request;
use http_body_util::Full;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::oneshot;
use tokio::time::Sleep;

use crate::check::{
    check_counts, check_sticky, periodic_verdict, Expectation, KeySpread, PeriodicChecker,
    NO_BACKEND,
};
use crate::conn::{Answer, Conn, OpenError};
use crate::failure::{ErrorClass, ErrorCounts};
use crate::keys::{KeyedHeader, Template};
use crate::pace::{Alarm, Schedule, SendTiming};
use crate::plan::{Plan, PlanError};
use crate::report::{BackendReport, Latency, LoadModel, Report, Sample};
use crate::series::{add_series, Outcome, Recorder, SecondLatency};
use crate::stages::{Ramp, Ramped};
use crate::tls::{Tls, TlsError};

/// How often the progress bar is refreshed.
const PROGRESS_TICK: Duration = Duration::from_millis(100);

/// The open loop's first slot is due this long after `run` starts, so that the event-loop
/// threads are up and waiting when it comes: a slot due while a thread is still being created
/// would leave late, and that lateness would be the generator's.
const OPEN_LOOP_LEAD: Duration = Duration::from_millis(5);

/// Why a run could not start. Anything that goes wrong *during* the run (refused connections,
/// timeouts, bad responses) is counted in the report instead.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot resolve `{host}`: {source}; check the host name in the URL")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{0}` resolved to no address")]
    NoAddress(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("a worker stopped unexpectedly: {0}")]
    Worker(String),
}

/// Sends the plan's traffic and measures it. Returns once every request is answered or failed.
///
/// The traffic runs on threads of its own (see the module doc), so `run` can be awaited from
/// any runtime, single- or multi-threaded: the caller's runtime only resolves the host, draws
/// the progress bar and waits for the threads' results.
pub async fn run(plan: Plan) -> Result<Report, RunError> {
    plan.validate()?;
    let plan = plan.with_stages_applied();
    let addr = resolve(&plan).await?;
    let tls = match plan.is_https() {
        true => Some(Tls::new(plan.url.host().unwrap_or_default(), &plan.trust)?),
        false => None,
    };
    let connections = plan.connections.max(1);
    let threads = plan.thread_count();
    let limit = plan.request_limit();
    let strict_order = connections == 1 && plan.expect == Some(Expectation::RoundRobin);
    let start = match plan.rate {
        Some(_) => Instant::now() + OPEN_LOOP_LEAD,
        None => Instant::now(),
    };
    let deadline = plan.duration.map(|d| start + d);
    let schedule = plan.rate.map(|rate| {
        let schedule = |rate| Schedule::new(start, rate, connections, limit, deadline);
        match &plan.stages {
            Some(ramp) if ramp.ramped == Ramped::Rate => {
                schedule(ramp.peak()).ramping(ramp.clone())
            }
            _ => schedule(rate),
        }
    });
    let crowd = plan
        .stages
        .clone()
        .filter(|ramp| ramp.ramped == Ramped::Connections);
    let sticky = match &plan.expect {
        Some(Expectation::Sticky(header)) => KeyedHeader::find(&plan.headers, header),
        _ => None,
    };
    let ctx = Arc::new(Ctx {
        addr,
        tls,
        timeout: plan.timeout,
        keepalive: plan.keepalive,
        backend_header: plan.backend_header.clone(),
        keep_samples: plan.keep_samples as u64,
        limit,
        // Keys are drawn from request numbers, which must then be unique across workers.
        numbered: limit.is_some() || plan.keep_samples > 0 || plan.has_keys(),
        keys: plan.keys.max(1),
        progress: plan.progress,
        sticky,
        deadline,
        schedule,
        crowd,
        connections,
        threads,
        start,
        tickets: AtomicU64::new(0),
    });

    let counters: Vec<Arc<Progress>> = (0..threads).map(|_| Arc::default()).collect();
    let progress = plan
        .progress
        .then(|| progress_bar(&plan, limit, counters.clone(), start));
    let mut finished = Vec::with_capacity(threads);
    let mut failure = None;
    for (id, counter) in counters.into_iter().enumerate() {
        let thread = Arc::new(ThreadState {
            ctx: ctx.clone(),
            head: request_head(&plan),
            templates: key_templates(&plan),
            // A copy, not a clone: a clone would share one reference count between threads.
            body: Bytes::copy_from_slice(&plan.body),
            stats: Mutex::new(Stats::new(plan.rate.is_some(), start, connections)),
            progress: counter,
        });
        match spawn_thread(id, thread, strict_order) {
            Ok(done) => finished.push(done),
            // Threads already started finish their share; the run reports the failure.
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let mut stats = Vec::with_capacity(threads);
    let mut checker = None;
    for done in finished {
        match done.await {
            Ok(Ok((s, c))) => {
                stats.push(s);
                checker = checker.or(c);
            }
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(_) => failure = failure.or(Some("a worker thread panicked".to_owned())),
        }
    }
    let duration = start.elapsed();
    let started_at = unix_time(start);
    if let Some((bar, ticker)) = progress {
        ticker.abort();
        bar.finish_and_clear();
    }
    if let Some(e) = failure {
        return Err(RunError::Worker(e));
    }
    Ok(build_report(
        &plan,
        stats,
        started_at,
        duration,
        checker.as_ref(),
    ))
}

/// What one thread hands back: its statistics and, if it ran the round-robin order check, the
/// checker.
type Finished = Result<(Stats, Option<PeriodicChecker<usize>>), String>;

/// Starts thread `id` with its own `current_thread` runtime, running the workers of connections
/// `id`, `id + threads`, `id + 2 * threads`, ... The receiver gets what the thread measured once
/// its runtime is gone, i.e. once every one of its connections is closed.
fn spawn_thread(
    id: usize,
    thread: Arc<ThreadState>,
    strict_order: bool,
) -> Result<oneshot::Receiver<Finished>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start an event loop: {e}"))?;
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("loadgen-{id}"))
        .spawn(move || {
            let checker = runtime.block_on(drive(thread.clone(), id, strict_order));
            // Dropping the runtime drops the worker tasks and with them their connections.
            drop(runtime);
            let cpu = crate::cpu_time::this_thread();
            let finished = checker.and_then(|checker| match Arc::into_inner(thread) {
                Some(t) => {
                    let mut stats = t.into_stats();
                    stats.cpu = cpu;
                    Ok((stats, checker))
                }
                None => Err("a worker outlived its thread".to_owned()),
            });
            // The receiver is gone only if `run` itself was dropped: nobody wants the result.
            let _ = tx.send(finished);
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    Ok(rx)
}

/// One thread's event loop: a task per connection, all on this thread's runtime.
async fn drive(
    thread: Arc<ThreadState>,
    id: usize,
    strict_order: bool,
) -> Result<Option<PeriodicChecker<usize>>, String> {
    let ctx = &thread.ctx;
    let workers: Vec<_> = (id..ctx.connections)
        .step_by(ctx.threads)
        .map(|k| tokio::spawn(worker(thread.clone(), k, strict_order)))
        .collect();
    let mut checker = None;
    for w in workers {
        checker = checker.or(w.await.map_err(|e| e.to_string())?);
    }
    Ok(checker)
}

/// `when` as Unix time in seconds (for `loadgen merge` to align runs by wall-clock second).
fn unix_time(when: Instant) -> f64 {
    let (wall, now) = (std::time::SystemTime::now(), Instant::now());
    let wall = wall
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    if when <= now {
        wall - (now - when).as_secs_f64()
    } else {
        wall + (when - now).as_secs_f64()
    }
}

async fn resolve(plan: &Plan) -> Result<SocketAddr, RunError> {
    let host = plan.url.host().unwrap_or_default();
    // `[::1]` arrives with its brackets; lookup_host wants them off.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = plan.port();
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| RunError::Resolve {
            host: host.to_owned(),
            source,
        })?;
    addrs
        .next()
        .ok_or_else(|| RunError::NoAddress(host.to_owned()))
}

/// The request head, built once per thread: every request is a clone of it (a handful of
/// reference-count bumps and one header-map copy) plus a clone of the body `Bytes`. Each thread
/// builds its own from fresh copies of the bytes, so those reference counts stay in the cache of
/// the core that bumps them instead of bouncing between cores on every request.
fn request_head(plan: &Plan) -> http::request::Parts {
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = plan.method.clone();
    // HTTP/1.1 requests to an origin carry only path and query (origin-form, RFC 9112 §3.2.1);
    // the authority goes into `Host`.
    head.uri = plan
        .url
        .path_and_query()
        .and_then(|pq| pq.as_str().parse().ok())
        .unwrap_or_default();
    if let Some(authority) = plan.url.authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            head.headers.insert(HOST, host);
        }
    }
    head.headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("loadgen/", env!("CARGO_PKG_VERSION"))),
    );
    for (name, value) in &plan.headers {
        // Byte copies (see above); both were valid when the plan was built, so they still are.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            head.headers.insert(name, value);
        }
    }
    if !plan.keepalive {
        head.headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    head
}

/// The `-H` headers whose value holds `{n}`, to be rendered for each request.
fn key_templates(plan: &Plan) -> Vec<(HeaderName, Template)> {
    plan.headers
        .iter()
        .filter_map(|(name, value)| {
            let template = Template::parse(&String::from_utf8_lossy(value.as_bytes()))?;
            // A copy of the name, as in `request_head`.
            let name = HeaderName::from_bytes(name.as_str().as_bytes()).ok()?;
            Some((name, template))
        })
        .collect()
}

/// What every thread shares, read-only apart from the ticket counter.
struct Ctx {
    addr: SocketAddr,
    /// `https://` only: the TLS client every connection of the run shares.
    tls: Option<Tls>,
    timeout: Duration,
    keepalive: bool,
    backend_header: HeaderName,
    keep_samples: u64,
    limit: Option<u64>,
    /// Closed loop: whether requests need numbers from the shared `tickets` counter (a `-n`
    /// budget to share out, or samples to pick). A duration-only run skips it: an atomic that
    /// every thread increments on every request would move its cache line between cores each
    /// time, for numbers nobody reads.
    numbered: bool,
    deadline: Option<Instant>,
    /// Open loop only: when each request is due.
    schedule: Option<Schedule>,
    /// Closed loop with `--stages ...:c=N`: how many connections send at each moment.
    crowd: Option<Ramp>,
    connections: usize,
    threads: usize,
    start: Instant,
    /// Closed loop: the next request number to hand out (`-n` is a total across workers).
    tickets: AtomicU64,
    /// How many keys `{n}` takes (`--keys`).
    keys: u64,
    /// Whether a progress line is drawn (and so needs each thread's snapshot).
    progress: bool,
    /// `--expect sticky=HEADER`: how that header is sent, to tell which key a request carried.
    sticky: Option<KeyedHeader>,
}

impl Ctx {
    /// Closed loop: the 1-based number of a worker's next request, or `None` when the `-n`
    /// budget is spent. Without numbering (see [`Ctx::numbered`]) the worker counts its own
    /// requests in `own`; only the round-robin check reads that number, and it runs with a
    /// single connection, where the worker's count is the run's.
    fn next_index(&self, own: &mut u64) -> Option<u64> {
        if !self.numbered {
            *own += 1;
            return Some(*own);
        }
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        match self.limit {
            Some(n) if ticket >= n => None,
            _ => Some(ticket + 1),
        }
    }
}

/// What the workers of one thread share: the run's [`Ctx`], this thread's copy of the request
/// and this thread's statistics.
struct ThreadState {
    ctx: Arc<Ctx>,
    head: http::request::Parts,
    /// `-H` values with `{n}`, rendered into each request's head.
    templates: Vec<(HeaderName, Template)>,
    body: Bytes,
    /// Only this thread's tasks touch it, so the lock is never contended: locking is one atomic
    /// instruction on a cache line this core already holds. (`tokio::spawn` needs `Send` tasks,
    /// which rules out a `RefCell`.)
    stats: Mutex<Stats>,
    /// Copies of two counters for the progress bar, which reads them from another thread.
    progress: Arc<Progress>,
}

impl ThreadState {
    /// Request number `index`: the thread's head and body, with `{n}` replaced by the
    /// request's key in the headers that hold it.
    fn request(&self, index: u64) -> Request<Full<Bytes>> {
        let mut head = self.head.clone();
        if !self.templates.is_empty() {
            let key = crate::keys::key_of(index, self.ctx.keys);
            for (name, template) in &self.templates {
                // Digits in place of `{n}` in a value that was valid with it: still valid.
                if let Ok(value) = HeaderValue::from_str(&template.render(key)) {
                    head.headers.insert(name.clone(), value);
                }
            }
        }
        Request::from_parts(head, Full::new(self.body.clone()))
    }

    fn lock(&self) -> MutexGuard<'_, Stats> {
        // A panic while holding the lock cannot leave the counters half-updated in a way that
        // matters for a report, so a poisoned lock is used as is.
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn into_stats(self) -> Stats {
        self.stats
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One request on the worker's connection, opening one first if needed. `sent` is when the
    /// request started; the worker's `deadline` timer is re-armed to `sent + timeout` so that it
    /// covers connect, send and the whole body. (Re-arming a tokio timer to a later time is one
    /// atomic store; the timer wheel only notices when the old time comes.) After any failure
    /// the connection is dropped and the next request opens a fresh one.
    async fn exchange(
        &self,
        index: u64,
        conn: &mut Option<Conn>,
        sent: Instant,
        mut deadline: Pin<&mut Sleep>,
    ) -> Result<Answer, ErrorClass> {
        let ctx = &*self.ctx;
        deadline
            .as_mut()
            .reset(tokio::time::Instant::from_std(sent + ctx.timeout));
        if conn.as_ref().is_some_and(|c| !c.is_open()) {
            *conn = None;
        }
        let c = match conn {
            Some(c) => c,
            None => {
                // Boxed: connecting is the rare path, and keeping its state out of this future
                // keeps the future that every request builds small.
                let opened = tokio::select! {
                    biased;
                    opened = Box::pin(Conn::open(ctx.addr, ctx.tls.as_ref())) => opened,
                    () = deadline.as_mut() => Err(OpenError::from(ErrorClass::Timeout)),
                };
                match opened {
                    Ok((c, handshake)) => {
                        if let Some(handshake) = handshake {
                            self.lock().tls_handshake.record(handshake);
                        }
                        conn.insert(c)
                    }
                    Err(OpenError { class, tls }) => {
                        if let Some(why) = tls {
                            self.lock().tls_error.get_or_insert(why);
                        }
                        return Err(class);
                    }
                }
            }
        };
        let result = c.send(self.request(index), deadline).await;
        match &result {
            Ok(answer) if ctx.keepalive && !answer.closes_connection() => {}
            _ => *conn = None,
        }
        result
    }

    /// Counts one finished request in this thread's statistics. `when.latency` is what the
    /// report's main histogram gets (from the scheduled time in the open loop); `open` carries
    /// the open loop's uncorrected latency and how late the send left. Returns, for a response,
    /// which backend served it (`Some(None)`: no header).
    fn record(
        &self,
        index: u64,
        connection: usize,
        result: &Result<Answer, ErrorClass>,
        when: When,
        open: Option<(Duration, SendTiming)>,
    ) -> Option<Option<usize>> {
        let ctx = &*self.ctx;
        let latency = when.latency;
        let mut guard = self.lock();
        // Borrow the fields separately (through a plain `&mut`, not the guard).
        let s = &mut *guard;
        s.requests += 1;
        if let (Some((uncorrected, timing)), Some(o)) = (open, &mut s.open) {
            o.uncorrected.record(uncorrected);
            o.send_lateness.record(timing.generator_lateness());
            let lag = timing.target_lag();
            if let Some(lag) = lag {
                o.target_lag.record(lag);
            }
            o.without_send_lateness
                .record(uncorrected + lag.unwrap_or_default());
        }
        let new_second;
        let served = match result {
            Err(class) => {
                s.errors.count(*class);
                new_second = s
                    .series
                    .record(connection, when.sent, when.ended, Outcome::Error);
                None
            }
            Ok(answer) => {
                s.responses += 1;
                s.bytes += answer.body_bytes;
                let code = answer.head.status.as_u16();
                match s.status.iter_mut().find(|(c, _)| *c == code) {
                    Some((_, n)) => *n += 1,
                    None => s.status.push((code, 1)),
                }
                let (id, backend) = match answer.head.headers.get(&ctx.backend_header) {
                    None => (
                        None,
                        s.unnamed.get_or_insert_with(|| {
                            BackendStats::new(HeaderValue::from_static(NO_BACKEND))
                        }),
                    ),
                    Some(value) => {
                        let known = s.backends.iter().position(|b| b.value == value);
                        let id = known.unwrap_or_else(|| {
                            // Copy the bytes: the parsed value may share the connection's read
                            // buffer, which should not be kept alive by the report.
                            let owned = HeaderValue::from_bytes(value.as_bytes())
                                .unwrap_or_else(|_| HeaderValue::from_static("(invalid)"));
                            s.backends.push(BackendStats::new(owned));
                            s.backends.len() - 1
                        });
                        match s.backends.get_mut(id) {
                            Some(b) => (Some(id), b),
                            None => return None,
                        }
                    }
                };
                // Every response lands in exactly one backend's histogram (`unnamed` included),
                // so the run's overall latency is their sum, added up once at the end instead
                // of recorded a second time here.
                backend.responses += 1;
                backend.latency.record(latency);
                if let Some(sticky) = &ctx.sticky {
                    s.keys.count(sticky.key(index, ctx.keys), id);
                }
                let outcome = Outcome::Response {
                    status: code,
                    latency,
                    backend: id,
                };
                new_second = s.series.record(connection, when.sent, when.ended, outcome);
                Some(id)
            }
        };
        if index <= ctx.keep_samples {
            s.samples.push(Sample {
                index,
                connection,
                backend: result
                    .as_ref()
                    .ok()
                    .and_then(|a| a.head.headers.get(&ctx.backend_header))
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
                status: result.as_ref().ok().map(|a| a.head.status.as_u16()),
                latency,
                error: result.as_ref().err().copied(),
            });
        }
        // Plain stores, no read-modify-write: this thread is the only writer.
        self.progress.requests.store(s.requests, Ordering::Relaxed);
        self.progress
            .errors
            .store(s.errors.total(), Ordering::Relaxed);
        // Once a second, what the progress line shows besides the counts.
        if new_second && ctx.progress {
            let snapshot = Snapshot {
                latency: s.series.so_far().clone(),
                backends: s
                    .backends
                    .iter()
                    .chain(&s.unnamed)
                    .map(|b| (backend_name(&b.value), b.responses))
                    .collect(),
            };
            *self
                .progress
                .snapshot
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = snapshot;
        }
        served
    }
}

/// When a request left and ended, and the latency the report counts for it (from the
/// scheduled time in the open loop).
#[derive(Clone, Copy)]
struct When {
    sent: Instant,
    ended: Instant,
    latency: Duration,
}

/// One connection's loop. Returns the round-robin checker when it checked the order.
async fn worker(
    thread: Arc<ThreadState>,
    k: usize,
    strict_order: bool,
) -> Option<PeriodicChecker<usize>> {
    let ctx = &*thread.ctx;
    let mut checker = strict_order.then(PeriodicChecker::default);
    let mut conn = None;
    // One timer per worker, re-armed for every request (cheaper than a fresh timeout each time).
    let deadline = tokio::time::sleep(ctx.timeout);
    tokio::pin!(deadline);
    match &ctx.schedule {
        None => {
            // Closed loop: next number, send, wait for the answer, repeat. One clock read per
            // request: the end of one exchange is the start of the next, so the latency of a
            // request includes the few hundred nanoseconds of bookkeeping before it is sent.
            let mut own = 0;
            let mut now = Instant::now();
            loop {
                if ctx.deadline.is_some_and(|d| now >= d) {
                    break;
                }
                if let Some(crowd) = &ctx.crowd {
                    // Not this connection's turn: close it, and wait until the planned count
                    // comes back above it (or stop, if it never does).
                    let t = now.saturating_duration_since(ctx.start).as_secs_f64();
                    if !crowd.active(k, t) {
                        conn = None;
                        let Some(back) = crowd.next_active(k, t) else {
                            break;
                        };
                        let back = ctx.start + Duration::from_secs_f64(back);
                        tokio::time::sleep_until(tokio::time::Instant::from_std(back)).await;
                        now = Instant::now();
                        continue;
                    }
                }
                let Some(index) = ctx.next_index(&mut own) else {
                    break;
                };
                let sent = now;
                let result = thread
                    .exchange(index, &mut conn, sent, deadline.as_mut())
                    .await;
                now = Instant::now();
                let when = When {
                    sent,
                    ended: now,
                    latency: now - sent,
                };
                let served = thread.record(index, k, &result, when, None);
                if let (Some(c), Some(served)) = (&mut checker, served) {
                    c.observe(index, served.as_ref());
                }
            }
        }
        Some(schedule) => {
            // Open loop: this worker owns every c-th slot of one global schedule.
            let mut alarm = Alarm::new(schedule.max_margin(ctx.threads));
            let mut ready = ctx.start;
            for (slot, due) in schedule.slots(k) {
                // If the previous request on this connection took longer than the interval,
                // `due` has already passed and we send at once, late. The time it waited is
                // part of its latency below: that is the coordinated-omission correction, and
                // `ready` tells that lag apart from the generator's own.
                alarm.until(due).await;
                let sent = Instant::now();
                let result = thread
                    .exchange(slot + 1, &mut conn, sent, deadline.as_mut())
                    .await;
                let done = Instant::now();
                let timing = SendTiming { due, ready, sent };
                let open = Some((done - sent, timing));
                let when = When {
                    sent,
                    ended: done,
                    latency: done - due,
                };
                let served = thread.record(slot + 1, k, &result, when, open);
                if let (Some(c), Some(served)) = (&mut checker, served) {
                    c.observe(slot + 1, served.as_ref());
                }
                ready = done;
            }
        }
    }
    checker
}

/// What the progress bar reads of one thread. Aligned to its own cache lines, so that the
/// threads' counters never share one (each store would otherwise evict the other core's copy).
#[derive(Default)]
#[repr(align(128))]
struct Progress {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Replaced once a second by the thread (so the lock is never contended for long).
    snapshot: Mutex<Snapshot>,
}

/// What a thread had measured at its last full second.
#[derive(Default, Clone)]
struct Snapshot {
    latency: SecondLatency,
    backends: Vec<(String, u64)>,
}

/// One thread's statistics. Only the whole run's are ever reported: [`build_report`] adds up
/// the threads'.
struct Stats {
    requests: u64,
    responses: u64,
    bytes: u64,
    /// Responses per status code; a short list scanned linearly (a run sees few codes).
    status: Vec<(u16, u64)>,
    errors: ErrorCounts,
    /// Open loop only.
    open: Option<OpenStats>,
    /// Backends in the order this thread first saw them; a worker's backend id is an index here.
    /// Looking a header value up compares bytes, so a known backend costs no allocation.
    backends: Vec<BackendStats>,
    /// Responses without the backend header.
    unnamed: Option<BackendStats>,
    samples: Vec<Sample>,
    /// `--expect sticky`: which backends served each key.
    keys: KeyCounts,
    /// `https://` only: how long each TLS handshake took (from the TCP connection to its end).
    tls_handshake: Latency,
    /// The first failed TLS handshake's explanation.
    tls_error: Option<String>,
    /// Per-second buckets.
    series: Recorder,
    /// CPU time of this thread, read when it ends.
    cpu: Option<Duration>,
}

/// One thread's view of `--expect sticky`: for each key (an index here), the backend ids (as in
/// [`Stats::backends`], `None` for a response without the backend header) that served it and
/// how often. Almost always one entry per key, so a short list beats a map.
#[derive(Default)]
struct KeyCounts {
    per_key: Vec<Vec<(Option<usize>, u64)>>,
}

impl KeyCounts {
    fn count(&mut self, key: u64, backend: Option<usize>) {
        let Ok(key) = usize::try_from(key) else {
            return;
        };
        if self.per_key.len() <= key {
            self.per_key.resize_with(key + 1, Vec::new);
        }
        let Some(seen) = self.per_key.get_mut(key) else {
            return;
        };
        match seen.iter_mut().find(|(b, _)| *b == backend) {
            Some((_, n)) => *n += 1,
            None => seen.push((backend, 1)),
        }
    }
}

/// What only the open loop measures (see [`SendTiming`] for the split of a late send).
#[derive(Default)]
struct OpenStats {
    /// From the moment each request actually left.
    uncorrected: Latency,
    /// The generator's own delay of every send.
    send_lateness: Latency,
    /// Only sends whose connection was still busy at their time: how long past it.
    target_lag: Latency,
    /// What the corrected latency would have been had every send left on time: uncorrected
    /// latency plus target lag.
    without_send_lateness: Latency,
}

struct BackendStats {
    value: HeaderValue,
    responses: u64,
    latency: Latency,
}

impl BackendStats {
    fn new(value: HeaderValue) -> Self {
        BackendStats {
            value,
            responses: 0,
            latency: Latency::new(),
        }
    }
}

impl Stats {
    fn new(open_loop: bool, start: Instant, connections: usize) -> Stats {
        Stats {
            requests: 0,
            responses: 0,
            bytes: 0,
            status: Vec::new(),
            errors: ErrorCounts::default(),
            open: open_loop.then(OpenStats::default),
            backends: Vec::new(),
            unnamed: None,
            samples: Vec::new(),
            keys: KeyCounts::default(),
            tls_handshake: Latency::new(),
            tls_error: None,
            series: Recorder::new(start, connections),
            cpu: None,
        }
    }
}

fn backend_name(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// Adds up the threads' statistics and judges the expectation.
fn build_report(
    plan: &Plan,
    threads: Vec<Stats>,
    started_at: f64,
    duration: Duration,
    checker: Option<&PeriodicChecker<usize>>,
) -> Report {
    let mut report = Report {
        url: plan.url.to_string(),
        model: plan
            .rate
            .map_or(LoadModel::Closed, |rate| LoadModel::Open { rate }),
        connections: plan.connections.max(1),
        keepalive: plan.keepalive,
        started_at: Some(started_at),
        stages: plan.stages.clone(),
        duration,
        latency_uncorrected: plan.rate.map(|_| Latency::new()),
        send_lateness: plan.rate.map(|_| Latency::new()),
        target_lag: plan.rate.map(|_| Latency::new()),
        latency_without_send_lateness: plan.rate.map(|_| Latency::new()),
        tls_handshake: plan.is_https().then(Latency::new),
        backend_header: plan.backend_header.to_string(),
        ok_status: plan.ok_status.clone(),
        max_errors: plan.max_errors,
        // All of loadgen's own threads, or nothing if one of them could not tell.
        generator_cpu: threads.iter().map(|s| s.cpu).sum::<Option<Duration>>(),
        ..Report::default()
    };
    // The checker runs with one connection, on the first thread: its backend ids are indexes
    // into that thread's list.
    let mut first_names: Vec<String> = Vec::new();
    let sticky = match &plan.expect {
        Some(Expectation::Sticky(header)) => KeyedHeader::find(&plan.headers, header),
        _ => None,
    };
    for (i, s) in threads.iter().enumerate() {
        report.requests += s.requests;
        report.responses += s.responses;
        report.bytes += s.bytes;
        for (code, n) in &s.status {
            *report.status.entry(*code).or_default() += n;
        }
        report.errors.add(&s.errors);
        if let Some(o) = &s.open {
            for (all, this) in [
                (&mut report.latency_uncorrected, &o.uncorrected),
                (&mut report.send_lateness, &o.send_lateness),
                (&mut report.target_lag, &o.target_lag),
                (
                    &mut report.latency_without_send_lateness,
                    &o.without_send_lateness,
                ),
            ] {
                if let Some(all) = all {
                    all.add(this);
                }
            }
        }
        for b in s.backends.iter().chain(&s.unnamed) {
            let name = backend_name(&b.value);
            if i == 0 {
                first_names.push(name.clone());
            }
            report.latency.add(&b.latency);
            match report.backends.iter_mut().find(|r| r.name == name) {
                Some(r) => {
                    r.responses += b.responses;
                    r.latency.add(&b.latency);
                }
                None => report.backends.push(BackendReport {
                    name,
                    responses: b.responses,
                    share: 0.0,
                    latency: b.latency.clone(),
                }),
            }
        }
        report.samples.extend(s.samples.iter().cloned());
        if let Some(all) = &mut report.tls_handshake {
            all.add(&s.tls_handshake);
        }
        if report.tls_error.is_none() {
            report.tls_error.clone_from(&s.tls_error);
        }
        if let (Some(sticky), Some(Expectation::Sticky(header))) = (&sticky, &plan.expect) {
            let spread = report.sticky.get_or_insert_with(|| KeySpread::new(header));
            for (key, seen) in s.keys.per_key.iter().enumerate() {
                let value = sticky.value(key as u64);
                for (id, n) in seen {
                    let backend = match id.and_then(|id| s.backends.get(id)) {
                        Some(b) => backend_name(&b.value),
                        None => NO_BACKEND.to_owned(),
                    };
                    spread.count(&value, &backend, *n);
                }
            }
        }
    }
    report.samples.sort_by_key(|s| s.index);
    for s in threads {
        let Stats {
            series, backends, ..
        } = s;
        let thread_series = series.finish(|id| match id.and_then(|id| backends.get(id)) {
            Some(b) => backend_name(&b.value),
            None => NO_BACKEND.to_owned(),
        });
        add_series(&mut report.series, &thread_series, 0);
    }
    report.finish();
    report.verdict = plan.expect.as_ref().map(|expect| match checker {
        Some(c) => periodic_verdict(c, plan.backend_header.as_str(), |id| {
            first_names
                .get(*id)
                .cloned()
                .unwrap_or_else(|| format!("#{id}"))
        }),
        None => match (expect, &report.sticky) {
            (Expectation::Sticky(_), Some(spread)) => check_sticky(spread),
            // Nothing answered.
            (Expectation::Sticky(header), None) => check_sticky(&KeySpread::new(header)),
            _ => {
                let counts: Vec<(String, u64)> = report
                    .backends
                    .iter()
                    .map(|b| (b.name.clone(), b.responses))
                    .collect();
                check_counts(expect, &counts, plan.tolerance, report.connections)
            }
        },
    });
    report
}

/// The progress line on stderr (only drawn when stderr is a terminal, see `Plan::progress`),
/// refreshed by a ticker task on the caller's runtime. It reads the threads' counters, and the
/// snapshot each thread leaves once a second; the workers never wait for it.
fn progress_bar(
    plan: &Plan,
    limit: Option<u64>,
    counters: Vec<Arc<Progress>>,
    start: Instant,
) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let total = plan.duration;
    let length = match (limit, total) {
        (Some(n), _) => Some(n),
        (None, Some(d)) => Some(d.as_millis() as u64),
        (None, None) => None,
    };
    let bar = ProgressBar::with_draw_target(length, ProgressDrawTarget::stderr());
    // `wide_msg`: the line is cut at the terminal's width rather than wrapped.
    if let Ok(style) = ProgressStyle::with_template("{bar:16} {wide_msg}") {
        bar.set_style(style);
    }
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_TICK);
            // The current rate is measured over the last second of ticks.
            let mut recent: std::collections::VecDeque<(Instant, u64)> = Default::default();
            loop {
                tick.tick().await;
                let now = Instant::now();
                let (mut done, mut errors) = (0, 0);
                let mut latency = SecondLatency::default();
                let mut shares: Vec<(String, u64)> = Vec::new();
                for c in &counters {
                    done += c.requests.load(Ordering::Relaxed);
                    errors += c.errors.load(Ordering::Relaxed);
                    let snapshot = c.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    latency.add(&snapshot.latency);
                    for (name, n) in snapshot.backends {
                        match shares.iter_mut().find(|(m, _)| *m == name) {
                            Some((_, total)) => *total += n,
                            None => shares.push((name, n)),
                        }
                    }
                }
                recent.push_back((now, done));
                while recent.len() > 1
                    && recent
                        .front()
                        .is_some_and(|(t, _)| now - *t > Duration::from_secs(1))
                {
                    recent.pop_front();
                }
                let rate = match recent.front() {
                    Some((t, n)) if now > *t => (done - n) as f64 / (now - *t).as_secs_f64(),
                    _ => 0.0,
                };
                let elapsed = now.saturating_duration_since(start);
                bar.set_position(match limit {
                    Some(_) => done,
                    None => elapsed.as_millis() as u64,
                });
                let p99 = (latency.count() > 0).then(|| latency.quantile(0.99));
                bar.set_message(progress_line(
                    elapsed,
                    total,
                    (done, limit),
                    rate,
                    p99,
                    errors,
                    &shares,
                ));
            }
        })
    };
    (bar, ticker)
}

/// The progress line's text: `12s/30s  8412 req  702 req/s  p99 3.21ms  0 errors  a 50% b 50%`.
fn progress_line(
    elapsed: Duration,
    total: Option<Duration>,
    (done, limit): (u64, Option<u64>),
    rate: f64,
    p99: Option<Duration>,
    errors: u64,
    shares: &[(String, u64)],
) -> String {
    let secs = |d: Duration| format!("{}s", d.as_secs());
    let mut line = match total {
        Some(total) => format!("{}/{}", secs(elapsed), secs(total)),
        None => secs(elapsed),
    };
    line.push_str(&match limit {
        Some(n) => format!("  {done}/{n} req"),
        None => format!("  {done} req"),
    });
    line.push_str(&format!("  {rate:.0} req/s"));
    if let Some(p99) = p99 {
        line.push_str(&format!("  p99 {}", crate::report::fmt_duration(p99)));
    }
    line.push_str(&format!(
        "  {errors} error{}",
        if errors == 1 { "" } else { "s" }
    ));
    let answered: u64 = shares.iter().map(|(_, n)| n).sum();
    if answered > 0 {
        for (name, n) in shares {
            line.push_str(&format!(
                "  {name} {:.0}%",
                *n as f64 / answered as f64 * 100.0
            ));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_says_where_the_run_is() {
        let shares = [("a".to_owned(), 30), ("b".to_owned(), 10)];
        let line = progress_line(
            Duration::from_millis(12_400),
            Some(Duration::from_secs(30)),
            (8412, None),
            702.4,
            Some(Duration::from_micros(3210)),
            0,
            &shares,
        );
        assert_eq!(
            line,
            "12s/30s  8412 req  702 req/s  p99 3.21ms  0 errors  a 75%  b 25%"
        );
        let line = progress_line(Duration::ZERO, None, (5, Some(200)), 0.0, None, 1, &[]);
        assert_eq!(line, "0s  5/200 req  0 req/s  1 error");
    }
}
