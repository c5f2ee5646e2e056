//! Running a [`Plan`]: one worker task per connection, paced by one of two load models, recording
//! into a few shared shards that become the [`Report`] at the end.
//!
//! **Closed loop** (no `-q`): each worker sends its next request as soon as the previous answer is
//! complete. The server sets the pace; this measures the most it can do over `-c` connections.
//! With `-n`, workers take numbered tickets from one shared atomic counter until they run out.
//!
//! **Open loop** (`-q RATE`): requests are due at fixed times, `start + i / RATE`, whatever the
//! server does, and worker `k` of `c` owns slots `k, k + c, k + 2c, ...`. Latency is measured from
//! the slot's *scheduled* time, not from when the request actually left. This is the fix for
//! *coordinated omission* (the name comes from Gil Tene, and wrk2 applies it): a closed-loop
//! tool that stalls with the server simply stops sending, so the requests that *would* have
//! waited during the stall are never measured and the percentiles look fine. Here a stalled server
//! makes the next sends late, and their lateness is counted in their latency. Both views are
//! reported, with the number of late sends.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, HOST, USER_AGENT};
use http::Request;
use http_body_util::Full;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::{Instant, Sleep};

use crate::check::{check_counts, periodic_verdict, Expectation, PeriodicChecker, NO_BACKEND};
use crate::conn::{Answer, Conn};
use crate::plan::Plan;
use crate::report::{BackendReport, ErrorClass, ErrorCounts, Latency, LoadModel, Report, Sample};

/// A send in the open loop counts as late when it leaves more than this after its scheduled
/// time. tokio's timer has a resolution of 1 ms, so a sleep can overshoot by up to about 1 ms on
/// an idle machine; 2 ms keeps that noise out while any real stall (a busy connection, a
/// saturated CPU) still shows.
pub const LATE_AFTER: Duration = Duration::from_millis(2);

/// How often the progress bar is refreshed.
const PROGRESS_TICK: Duration = Duration::from_millis(100);

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
    #[error("a worker stopped unexpectedly: {0}")]
    Worker(String),
}

/// Sends the plan's traffic and measures it. Returns once every request is answered or failed.
pub async fn run(plan: Plan) -> Result<Report, RunError> {
    let addr = resolve(&plan).await?;
    let connections = plan.connections.max(1);
    let limit = plan.request_limit();
    // Workers record into shards rather than one shared set of histograms (contended) or one
    // set each (an HDR histogram is ~190 KB; thousands of connections would add up). Two shards
    // per core keep lock contention negligible and memory bounded.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let shards: Arc<[Shard]> = (0..connections.min(cores * 2))
        .map(|_| Shard::new(plan.rate.is_some()))
        .collect();
    let strict_order = connections == 1 && plan.expect == Some(Expectation::RoundRobin);
    let start = Instant::now();
    let ctx = Arc::new(Ctx {
        addr,
        head: request_head(&plan),
        body: plan.body.clone(),
        timeout: plan.timeout,
        keepalive: plan.keepalive,
        backend_header: plan.backend_header.clone(),
        keep_samples: plan.keep_samples as u64,
        limit,
        deadline: plan.duration.map(|d| start + d),
        rate: plan.rate,
        connections,
        start,
        tickets: AtomicU64::new(0),
        shards: shards.clone(),
    });

    let progress = plan
        .progress
        .then(|| progress_bar(&plan, limit, shards.clone(), start));
    let workers: Vec<_> = (0..connections)
        .map(|k| tokio::spawn(worker(ctx.clone(), k, strict_order)))
        .collect();
    let mut checker = None;
    let mut failure = None;
    for w in workers {
        match w.await {
            Ok(c) => checker = checker.or(c),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    let duration = start.elapsed();
    if let Some((bar, ticker)) = progress {
        ticker.abort();
        bar.finish_and_clear();
    }
    if let Some(e) = failure {
        return Err(RunError::Worker(e));
    }
    Ok(build_report(&plan, &shards, duration, checker.as_ref()))
}

async fn resolve(plan: &Plan) -> Result<SocketAddr, RunError> {
    let host = plan.url.host().unwrap_or_default();
    // `[::1]` arrives with its brackets; lookup_host wants them off.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = plan.url.port_u16().unwrap_or(80);
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

/// The request head, built once: every request is a clone of it (a handful of reference-count
/// bumps and one header-map copy) plus a clone of the body `Bytes`.
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
        head.headers.insert(name.clone(), value.clone());
    }
    if !plan.keepalive {
        head.headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    head
}

/// What every worker shares, read-only apart from the ticket counter and the shards.
struct Ctx {
    addr: SocketAddr,
    head: http::request::Parts,
    body: Bytes,
    timeout: Duration,
    keepalive: bool,
    backend_header: HeaderName,
    keep_samples: u64,
    limit: Option<u64>,
    deadline: Option<Instant>,
    rate: Option<f64>,
    connections: usize,
    start: Instant,
    /// Closed loop: the next request number to hand out (`-n` is a total across workers).
    tickets: AtomicU64,
    shards: Arc<[Shard]>,
}

impl Ctx {
    fn request(&self) -> Request<Full<Bytes>> {
        Request::from_parts(self.head.clone(), Full::new(self.body.clone()))
    }

    /// One request on the worker's connection, opening one first if needed. `deadline` is the
    /// worker's timer, re-armed here for `timeout` so that it covers connect, send and the whole
    /// body. After any failure the connection is dropped and the next request opens a fresh one.
    async fn exchange(
        &self,
        conn: &mut Option<Conn>,
        mut deadline: Pin<&mut Sleep>,
    ) -> Result<Answer, ErrorClass> {
        deadline.as_mut().reset(Instant::now() + self.timeout);
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
                    opened = Box::pin(Conn::open(self.addr)) => opened,
                    () = deadline.as_mut() => Err(ErrorClass::Timeout),
                };
                conn.insert(opened?)
            }
        };
        let result = c.send(self.request(), deadline).await;
        match &result {
            Ok(answer) if self.keepalive && !answer.closes_connection() => {}
            _ => *conn = None,
        }
        result
    }
}

/// One connection's loop. Returns the round-robin checker when it checked the order.
async fn worker(ctx: Arc<Ctx>, k: usize, strict_order: bool) -> Option<PeriodicChecker<usize>> {
    let shard = &ctx.shards[k % ctx.shards.len()];
    let mut checker = strict_order.then(PeriodicChecker::default);
    let mut conn = None;
    // One timer per worker, re-armed for every request (cheaper than a fresh timeout each time).
    let deadline = tokio::time::sleep(ctx.timeout);
    tokio::pin!(deadline);
    match ctx.rate {
        None => loop {
            // Closed loop: next ticket, send, wait for the answer, repeat.
            if ctx.deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let ticket = ctx.tickets.fetch_add(1, Ordering::Relaxed);
            if ctx.limit.is_some_and(|n| ticket >= n) {
                break;
            }
            let sent = Instant::now();
            let result = ctx.exchange(&mut conn, deadline.as_mut()).await;
            let latency = sent.elapsed();
            let served = shard.record(&ctx, ticket + 1, k, &result, latency, None);
            if let (Some(c), Some(served)) = (&mut checker, served) {
                c.observe(ticket + 1, served.as_ref());
            }
        },
        Some(rate) => {
            // Open loop: this worker owns every c-th slot of one global schedule.
            let interval = 1.0 / rate;
            for slot in (k as u64..).step_by(ctx.connections) {
                if ctx.limit.is_some_and(|n| slot >= n) {
                    break;
                }
                let due = ctx.start + Duration::from_secs_f64(slot as f64 * interval);
                if ctx.deadline.is_some_and(|d| due >= d) {
                    break;
                }
                // If the previous request on this connection took longer than the interval,
                // `due` has already passed and we send at once, late. The time it waited is
                // part of its latency below: that is the coordinated-omission correction.
                // tokio's timer ticks in whole milliseconds and rounds a deadline up, so a send
                // can leave up to ~1 ms after `due` even on an idle machine (wrk2's timers have
                // the same resolution). That slack is in the corrected latency, which therefore
                // never under-reports; it matters only when answers take well under 1 ms.
                tokio::time::sleep_until(due).await;
                let sent = Instant::now();
                let result = ctx.exchange(&mut conn, deadline.as_mut()).await;
                let done = Instant::now();
                let late = sent.saturating_duration_since(due) > LATE_AFTER;
                let timing = (done - sent, late);
                let served = shard.record(&ctx, slot + 1, k, &result, done - due, Some(timing));
                if let (Some(c), Some(served)) = (&mut checker, served) {
                    c.observe(slot + 1, served.as_ref());
                }
            }
        }
    }
    checker
}

/// Stats of a group of workers. Locked once per request, for a few array increments.
struct Shard {
    stats: Mutex<Stats>,
}

struct Stats {
    requests: u64,
    responses: u64,
    bytes: u64,
    /// Responses per status code; a short list scanned linearly (a run sees few codes).
    status: Vec<(u16, u64)>,
    errors: ErrorCounts,
    latency: Latency,
    uncorrected: Option<Latency>,
    late: u64,
    /// Backends in the order this shard first saw them; a worker's backend id is an index here.
    /// Looking a header value up compares bytes, so a known backend costs no allocation.
    backends: Vec<BackendStats>,
    /// Responses without the backend header.
    unnamed: Option<BackendStats>,
    samples: Vec<Sample>,
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

impl Shard {
    fn new(open_loop: bool) -> Shard {
        Shard {
            stats: Mutex::new(Stats {
                requests: 0,
                responses: 0,
                bytes: 0,
                status: Vec::new(),
                errors: ErrorCounts::default(),
                latency: Latency::new(),
                uncorrected: open_loop.then(Latency::new),
                late: 0,
                backends: Vec::new(),
                unnamed: None,
                samples: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Stats> {
        // A panic while holding the lock cannot leave the counters half-updated in a way that
        // matters for a report, so a poisoned lock is used as is.
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one finished request. `latency` is what the report's main histogram gets (from
    /// the scheduled time in the open loop); `open` carries the open loop's uncorrected latency
    /// and lateness. Returns, for a response, which backend served it (`Some(None)`: no header).
    fn record(
        &self,
        ctx: &Ctx,
        index: u64,
        connection: usize,
        result: &Result<Answer, ErrorClass>,
        latency: Duration,
        open: Option<(Duration, bool)>,
    ) -> Option<Option<usize>> {
        let mut guard = self.lock();
        // Borrow the fields separately (through a plain `&mut`, not the guard).
        let s = &mut *guard;
        s.requests += 1;
        if let Some((uncorrected, late)) = open {
            if let Some(u) = &mut s.uncorrected {
                u.record(uncorrected);
            }
            s.late += u64::from(late);
        }
        let served = match result {
            Err(class) => {
                s.errors.count(*class);
                None
            }
            Ok(answer) => {
                s.responses += 1;
                s.bytes += answer.body_bytes;
                s.latency.record(latency);
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
                backend.responses += 1;
                backend.latency.record(latency);
                Some(id)
            }
        };
        if index <= ctx.keep_samples {
            guard.samples.push(Sample {
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
        served
    }
}

fn backend_name(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// Adds up the shards and judges the expectation.
fn build_report(
    plan: &Plan,
    shards: &[Shard],
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
        duration,
        latency_uncorrected: plan.rate.map(|_| Latency::new()),
        backend_header: plan.backend_header.to_string(),
        max_errors: plan.max_errors,
        ..Report::default()
    };
    // With one connection there is one shard; its backend ids are what the checker saw.
    let mut first_names: Vec<String> = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        let s = shard.lock();
        report.requests += s.requests;
        report.responses += s.responses;
        report.bytes += s.bytes;
        for (code, n) in &s.status {
            *report.status.entry(*code).or_default() += n;
        }
        report.errors.add(&s.errors);
        report.latency.add(&s.latency);
        if let (Some(all), Some(u)) = (&mut report.latency_uncorrected, &s.uncorrected) {
            all.add(u);
        }
        report.late_sends += s.late;
        for b in s.backends.iter().chain(&s.unnamed) {
            let name = backend_name(&b.value);
            if i == 0 {
                first_names.push(name.clone());
            }
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
    }
    report.samples.sort_by_key(|s| s.index);
    report.finish();
    report.verdict = plan.expect.as_ref().map(|expect| match checker {
        Some(c) => periodic_verdict(c, plan.backend_header.as_str(), |id| {
            first_names
                .get(*id)
                .cloned()
                .unwrap_or_else(|| format!("#{id}"))
        }),
        None => {
            let counts: Vec<(String, u64)> = report
                .backends
                .iter()
                .map(|b| (b.name.clone(), b.responses))
                .collect();
            check_counts(expect, &counts, plan.tolerance, report.connections)
        }
    });
    report
}

/// A progress bar on stderr, refreshed by a ticker task that reads the shards' counters (the
/// workers themselves never touch it). Hidden when stderr is not a terminal.
fn progress_bar(
    plan: &Plan,
    limit: Option<u64>,
    shards: Arc<[Shard]>,
    start: Instant,
) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = match limit {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(
            plan.duration.map(|d| d.as_millis() as u64),
            ProgressDrawTarget::stderr(),
        ),
    };
    let template = if limit.is_some() {
        "{bar:30} {pos}/{len} requests {msg}"
    } else {
        "{bar:30} {elapsed}/{duration} {msg}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    let by_count = limit.is_some();
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_TICK);
            loop {
                tick.tick().await;
                let (mut done, mut errors) = (0, 0);
                for s in shards.iter() {
                    let s = s.lock();
                    done += s.requests;
                    errors += s.errors.total();
                }
                let secs = start.elapsed().as_secs_f64().max(1e-3);
                if by_count {
                    bar.set_position(done);
                } else {
                    bar.set_position(start.elapsed().as_millis() as u64);
                }
                bar.set_message(format!(
                    "{done} done, {:.0} req/s, {errors} errors",
                    done as f64 / secs
                ));
            }
        })
    };
    (bar, ticker)
}
