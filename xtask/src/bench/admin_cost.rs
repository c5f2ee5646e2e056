//! What looking costs: lb with and without `--admin`, while someone watches.
//!
//! lb's request path keeps its counters whether or not `--admin` is given (plain atomics, see
//! docs/admin.md); the admin listener only reads them. What `--admin` can still cost is the
//! reading: rendering `/metrics` for a scraper and the status JSON that `/events` pushes to an
//! open live page once a second, on lb's main thread, on cores the workers need too. So the
//! "with" side is measured with both going on, as in production:
//!
//! - a client subscribed to `/events` for the whole run, reading every `event: status` (what the
//!   live page does; a plain TCP client is enough, no browser is needed to make lb do the work);
//! - one `GET /metrics` a second (what Prometheus does).
//!
//! Two lb processes in front of the same two backends, one started with `--admin`, measured at 50
//! closed-loop connections; each round runs the pair in both orders, so that neither always runs
//! first. The watcher runs in this process, as a browser would run on the operator's machine: its
//! own CPU is not charged to lb, only what lb does to serve it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tests::{start_lb, Proc};

use super::client::Load;
use super::measure::{measure, progress_line, warm_up, Bench, Scenario};
use super::report::{opt, summarize, ProxyRun, Summary, Target};

/// Closed-loop connections: the main scenarios' throughput point.
pub const CONNECTIONS: u32 = 50;

/// The two rows.
pub const WITHOUT: &str = "lb";
pub const WITH: &str = "lb --admin";

/// The bound on what watching may cost: less than 5% of lb's req/s.
const MAX_COST: f64 = 0.05;

/// How often the watcher scrapes `/metrics`.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// What the "with" runs measured, and what their watcher saw.
#[derive(Debug, Clone, Serialize)]
pub struct AdminCost {
    pub connections: u32,
    pub runs: Vec<ProxyRun>,
    /// One per run of `lb --admin`, in order.
    pub watched: Vec<Watched>,
}

/// What the watcher received during one run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Watched {
    /// `event: status` messages read from `/events`.
    pub events: u64,
    /// `/metrics` scrapes answered 200 with lb's metrics in them.
    pub scrapes: u64,
    /// Scrapes that failed or got something else.
    pub failed_scrapes: u64,
}

/// Start two backends and the two lbs, measure them in rounds, stop them all.
pub fn run(bench: &Bench, bins: &Path, rounds: u32, warmup: Duration) -> Result<AdminCost> {
    let (backends, addrs) = super::start_backends(bins, 2)?;
    let bench = Bench {
        backend_pids: backends.iter().map(Proc::pid).collect(),
        ..bench.clone()
    };
    let mut args: Vec<String> = vec!["-p".into(), "0".into()];
    for addr in &addrs {
        args.extend(["-b".into(), "/".into(), addr.to_string()]);
    }
    let plain: Vec<&str> = args.iter().map(String::as_str).collect();
    let (lb, lb_addr) = start_lb(&bins.join("lb"), &plain)?;
    println!("    {WITHOUT:<10} {lb_addr}  ({})", lb.command());
    // `--admin 0`: an ephemeral port, read back from lb's `Admin on http://IP:PORT/` line.
    let with_admin: Vec<&str> = plain.iter().copied().chain(["--admin", "0"]).collect();
    let (mut lb_admin, lb_admin_addr) = start_lb(&bins.join("lb"), &with_admin)?;
    let line = lb_admin.wait_stderr("Admin on ", Duration::from_secs(10))?;
    let admin: SocketAddr = line
        .split_once("Admin on http://")
        .and_then(|(_, url)| url.trim().trim_end_matches('/').parse().ok())
        .with_context(|| format!("no address in lb's line {line:?}"))?;
    println!(
        "    {WITH:<10} {lb_admin_addr}  ({}), admin on {admin}",
        lb_admin.command()
    );

    let scenarios = [
        Scenario {
            name: WITHOUT,
            url: Some(format!("http://{lb_addr}/")),
            pid: Some(lb.pid()),
            missing: None,
        },
        Scenario {
            name: WITH,
            url: Some(format!("http://{lb_admin_addr}/")),
            pid: Some(lb_admin.pid()),
            missing: None,
        },
    ];
    let load = Load::Closed {
        connections: CONNECTIONS,
    };
    warm_up(
        &bench,
        &scenarios.iter().collect::<Vec<_>>(),
        CONNECTIONS,
        warmup,
    )?;
    let mut runs = Vec::new();
    let mut watched = Vec::new();
    for round in 0..rounds {
        // Both orders in every round: without-with, then with-without.
        for (order, s) in [0, 1, 1, 0].into_iter().map(|i| &scenarios[i]).enumerate() {
            let watcher = (s.name == WITH)
                .then(|| Watcher::start(admin))
                .transpose()?;
            let run = measure(&bench, s, load, round, order)?;
            let seen = watcher.map(Watcher::stop).transpose()?;
            let note = seen.map_or_else(String::new, |w| {
                format!(
                    "  watched: {} events, {} scrapes ({} failed)",
                    w.events, w.scrapes, w.failed_scrapes
                )
            });
            println!("{}{note}", progress_line(&run, rounds, WITH.len()));
            watched.extend(seen);
            runs.push(run);
        }
    }
    drop(lb_admin);
    drop(lb);
    drop(backends);
    Ok(AdminCost {
        connections: CONNECTIONS,
        runs,
        watched,
    })
}

/// A live page's worth of attention on lb's admin listener: a subscription to `/events` and a
/// `/metrics` scrape every second, each on a thread of its own, until [`Watcher::stop`].
struct Watcher {
    stop: Arc<AtomicBool>,
    events: JoinHandle<Result<u64>>,
    scrapes: JoinHandle<(u64, u64)>,
}

impl Watcher {
    /// Subscribe to `/events` and wait for the first event (lb sends one at once), so that the
    /// run starts with the page already open; then start scraping.
    fn start(admin: SocketAddr) -> Result<Watcher> {
        let stop = Arc::new(AtomicBool::new(false));
        let (subscribed_tx, subscribed) = mpsc::channel();
        let events = {
            let stop = stop.clone();
            std::thread::spawn(move || read_events(admin, &stop, &subscribed_tx))
        };
        if subscribed.recv_timeout(Duration::from_secs(5)).is_err() {
            stop.store(true, Ordering::Relaxed);
            let why = match events.join() {
                Ok(Err(e)) => format!("{e:#}"),
                _ => "no event within 5 s".into(),
            };
            bail!("subscribing to http://{admin}/events: {why}");
        }
        let scrapes = {
            let stop = stop.clone();
            std::thread::spawn(move || scrape_metrics(admin, &stop))
        };
        Ok(Watcher {
            stop,
            events,
            scrapes,
        })
    }

    fn stop(self) -> Result<Watched> {
        self.stop.store(true, Ordering::Relaxed);
        let events = match self.events.join() {
            Ok(events) => events?,
            Err(_) => bail!("the /events reader panicked"),
        };
        let (scrapes, failed_scrapes) = self.scrapes.join().unwrap_or((0, 0));
        Ok(Watched {
            events,
            scrapes,
            failed_scrapes,
        })
    }
}

/// Read `GET /events` until `stop`, counting `event: status` messages; signals `subscribed`
/// after the first one.
fn read_events(admin: SocketAddr, stop: &AtomicBool, subscribed: &mpsc::Sender<()>) -> Result<u64> {
    let mut stream = TcpStream::connect(admin).with_context(|| format!("connecting to {admin}"))?;
    // Wake up now and then to look at `stop`: lb sends one event a second.
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    write!(
        stream,
        "GET /events HTTP/1.1\r\nHost: {admin}\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    let mut events = 0;
    // What was read and not yet searched; the last bytes are kept, as an event line may be split
    // between two reads.
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let n = match stream.read(&mut buf) {
            Ok(0) => bail!("lb closed the event stream after {events} events"),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e).context("reading /events"),
        };
        pending.extend_from_slice(&buf[..n]);
        let before = events;
        events += take_events(&mut pending);
        if before == 0 && events > 0 {
            let _ = subscribed.send(());
        }
    }
    Ok(events)
}

/// An event's first line, as lb writes it (`event: status\ndata: {...}\n\n`).
const EVENT: &[u8] = b"event: status\n";

/// Count the events in `pending` and drop what was searched, keeping the last bytes: an event
/// line may be cut between two reads.
fn take_events(pending: &mut Vec<u8>) -> u64 {
    let (mut events, mut searched) = (0, 0);
    while let Some(at) = find(&pending[searched..], EVENT) {
        events += 1;
        searched += at + EVENT.len();
    }
    let keep_from = searched.max(pending.len().saturating_sub(EVENT.len()));
    pending.drain(..keep_from);
    events
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `GET /metrics` now and every [`SCRAPE_EVERY`] until `stop`; returns (good, failed) scrapes.
fn scrape_metrics(admin: SocketAddr, stop: &AtomicBool) -> (u64, u64) {
    let (mut good, mut failed) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        let next = Instant::now() + SCRAPE_EVERY;
        if scrape(admin).unwrap_or(false) {
            good += 1;
        } else {
            failed += 1;
        }
        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (good, failed)
}

/// One scrape on a new connection, as Prometheus makes them: did lb answer 200 with its
/// metrics?
fn scrape(admin: SocketAddr) -> Result<bool> {
    let mut stream = TcpStream::connect(admin)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(answer.starts_with(b"HTTP/1.1 200") && find(&answer, b"lb_requests_total").is_some())
}

impl AdminCost {
    /// Medians over the runs of one row.
    pub fn summary(&self, scenario: &str) -> Option<Summary> {
        summarize(
            self.runs
                .iter()
                .filter(|r| r.scenario == scenario)
                .map(|r| {
                    (
                        &r.measured,
                        r.proxy.map(|u| u.cpu()),
                        r.proxy.map(|u| u.peak_rss),
                    )
                }),
        )
    }

    /// Everything the watchers saw, summed over the runs.
    pub fn watched_total(&self) -> Watched {
        self.watched
            .iter()
            .fold(Watched::default(), |a, w| Watched {
                events: a.events + w.events,
                scrapes: a.scrapes + w.scrapes,
                failed_scrapes: a.failed_scrapes + w.failed_scrapes,
            })
    }

    /// `lb --admin` against `lb` on one figure, as a signed change: +0.03 is 3% more.
    fn change(&self, figure: fn(&Summary) -> Option<f64>) -> Option<(f64, f64, f64)> {
        let with = figure(&self.summary(WITH)?)?;
        let without = figure(&self.summary(WITHOUT)?)?;
        (without > 0.0).then(|| (with / without - 1.0, with, without))
    }

    /// The section of the report.
    pub fn markdown(&self, s: &mut String, duration: Duration, rounds: u32) {
        use std::fmt::Write as _;
        let w = self.watched_total();
        let _ = writeln!(s, "\n## lb with and without `--admin`\n");
        let _ = writeln!(
            s,
            "Two lb processes in front of the same two backends, the second started with `--admin`; \
             {} closed-loop connections, {duration:?} per run, {rounds} round(s) of the pair in both \
             orders; medians. During every run of `lb --admin` a client stayed subscribed to `/events` \
             (as the live page does) and `/metrics` was scraped once a second (as Prometheus does): \
             {} status events and {} scrapes in all, {} failed.\n",
            self.connections, w.events, w.scrapes, w.failed_scrapes
        );
        let _ = writeln!(
            s,
            "| scenario | req/s | req/s range | p50 µs | p99 µs | errors | proxy CPU µs/req | proxy peak RSS MiB |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for (name, label) in [
            (WITHOUT, "`lb`"),
            (
                WITH,
                "`lb --admin`, page subscribed, `/metrics` each second",
            ),
        ] {
            match self.summary(name) {
                None => {
                    let _ = writeln!(s, "| {label} | did not run | | | | | | |");
                }
                Some(x) => {
                    let _ = writeln!(
                        s,
                        "| {label} | {:.0} | {} | {:.0} | {:.0} | {} | {} | {} |",
                        x.requests_per_sec,
                        x.rps_range
                            .map_or_else(|| "—".into(), |r| format!("{:.0}%", r * 100.0)),
                        x.p50_us,
                        x.p99_us,
                        x.errors,
                        opt(x.cpu_us_per_request, 1),
                        opt(x.peak_rss_mib, 1),
                    );
                }
            }
        }
        let pct = |figure: fn(&Summary) -> Option<f64>| {
            self.change(figure)
                .map_or_else(|| "—".into(), |(c, _, _)| format!("{:+.1}%", c * 100.0))
        };
        let _ = writeln!(
            s,
            "| difference | {} | | {} | {} | | {} | |",
            pct(|x| Some(x.requests_per_sec)),
            pct(|x| Some(x.p50_us)),
            pct(|x| Some(x.p99_us)),
            pct(|x| x.cpu_us_per_request),
        );
    }

    /// The goal: watching costs under 5% of req/s; and CPU per request alike.
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        type Figure = fn(&Summary) -> Option<f64>;
        let rps: Figure = |x| Some(x.requests_per_sec);
        let cpu: Figure = |x| x.cpu_us_per_request;
        // (what, figure, higher is better, digits shown)
        for (what, figure, higher_is_better, digits) in
            [("req/s", rps, true, 0), ("CPU/request", cpu, false, 1)]
        {
            let name = format!(
                "lb --admin, page subscribed and /metrics scraped: {what} within {:.0}% of lb at {} conns",
                MAX_COST * 100.0,
                self.connections
            );
            out.push(match self.change(figure) {
                Some((change, with, without)) => {
                    let cost = if higher_is_better { -change } else { change };
                    Target::judged(
                        name,
                        format!(
                            "{:+.1}% ({with:.digits$} vs {without:.digits$})",
                            change * 100.0
                        ),
                        cost < MAX_COST,
                    )
                }
                None => Target::not_measured(name),
            });
        }
        out
    }

    /// What `--quick` asserts: both rows ran and got responses, lb made no errors, and the
    /// watcher was really watching (events and scrapes arrived).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for name in [WITHOUT, WITH] {
            let runs: Vec<&ProxyRun> = self.runs.iter().filter(|r| r.scenario == name).collect();
            if runs.is_empty() {
                problems.push(format!("{name} did not run (admin cost)"));
            }
            for r in runs {
                if r.measured.responses == 0 {
                    problems.push(format!("{name} got no responses (admin cost)"));
                }
                if r.measured.errors > 0 {
                    problems.push(format!(
                        "{name} had {} errors (admin cost, round {})",
                        r.measured.errors,
                        r.round + 1
                    ));
                }
            }
        }
        for (n, w) in self.watched.iter().enumerate() {
            if w.events == 0 || w.scrapes == 0 || w.failed_scrapes > 0 {
                problems.push(format!(
                    "the watcher of lb --admin run {} saw {} events and {} good scrapes ({} failed)",
                    n + 1,
                    w.events,
                    w.scrapes,
                    w.failed_scrapes
                ));
            }
        }
        problems
    }
}

// Not `mod tests`: that would hide the `tests` harness crate this file imports from.
#[cfg(test)]
mod event_stream {
    use super::*;

    #[test]
    fn an_event_cut_between_two_reads_is_counted_once() {
        let mut pending =
            b"HTTP/1.1 200 OK\r\n\r\n5f\r\nevent: status\ndata: {}\n\n\r\n5f\r\nevent: sta"
                .to_vec();
        assert_eq!(take_events(&mut pending), 1);
        pending.extend_from_slice(b"tus\ndata: {}\n\n\r\n5f\r\nevent: status\ndata: {}\n\n");
        assert_eq!(take_events(&mut pending), 2);
        assert_eq!(take_events(&mut pending), 0);
    }
}
