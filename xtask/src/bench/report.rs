//! Turning runs into conclusions: medians over rounds, ratios lb / peer, the targets met or
//! missed, written as a markdown table (`target/bench/report.md`) and raw JSON
//! (`target/bench/report.json`).
//!
//! **Invariant:** every number shown is a median over rounds or a ratio of two medians measured
//! side by side. On a shared 2-core machine an absolute number alone says little; the ratio of
//! two proxies measured in the same minute says much more.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::admin_cost::AdminCost;
use super::client::{Load, Measured};
use super::idle::IdleMemory;
use super::procfs::Usage;
use super::tls::TlsBench;

/// The machine and the software the numbers came from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    pub cpu_model: String,
    /// How busy the CPUs were in the second before the bench started (0..1).
    pub busy_before: Option<f64>,
    pub load_average_before: String,
    pub load_average_after: String,
    /// `nginx -v`, `haproxy -v`, `wrk -v`, or "not installed".
    pub versions: Vec<(String, String)>,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, m)| m.trim().to_string());
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |k| k.trim().to_string()),
            cpu_model,
            busy_before: super::procfs::machine_busy(Duration::from_secs(1)),
            load_average_before: super::procfs::load_average(),
            load_average_after: String::new(),
            versions: Vec::new(),
        }
    }
}

/// One measurement of one proxy scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyRun {
    pub round: u32,
    pub load: Load,
    pub scenario: &'static str,
    /// Position in this round's rotation for this load (0 ran first).
    pub order: usize,
    pub measured: Measured,
    /// The proxy's CPU and memory; `None` for `direct`, which has no proxy.
    pub proxy: Option<Usage>,
    /// Fraction of all CPUs that processes outside the bench used meanwhile.
    pub other_load: Option<f64>,
}

/// One measurement of one load generator against one target.
#[derive(Debug, Clone, Serialize)]
pub struct ClientRun {
    pub round: u32,
    pub target: &'static str,
    pub tool: &'static str,
    pub connections: u32,
    pub measured: Measured,
    /// Fraction of all CPUs that processes outside the bench used meanwhile.
    pub other_load: Option<f64>,
}

/// Everything one `cargo xtask bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The task's command line after `cargo xtask` (`bench --quick --only slow-backend`).
    pub command: String,
    pub machine: Machine,
    pub quick: bool,
    pub rounds: u32,
    #[serde(with = "secs")]
    pub duration: Duration,
    /// Scenario names in table order, with why one did not run (e.g. "not installed").
    pub scenarios: Vec<(&'static str, Option<String>)>,
    /// Load points in table order.
    pub loads: Vec<Load>,
    /// wrk's status: `None` if it ran, else why not.
    pub wrk_missing: Option<String>,
    pub client_targets: Vec<(&'static str, Option<String>)>,
    pub proxy_runs: Vec<ProxyRun>,
    pub client_runs: Vec<ClientRun>,
    /// The "one slow backend" scenario, if it ran.
    pub slow_backend: Option<SlowBackend>,
    /// lb with and without `--admin`, if it ran.
    pub admin: Option<AdminCost>,
    /// TLS termination, if it ran.
    pub tls: Option<TlsBench>,
    /// Idle keep-alive connections, if that part ran.
    pub idle: Option<IdleMemory>,
}

/// The "one slow backend" scenario: three backends, one of them slow, behind each balancing
/// strategy of lb, nginx and HAProxy.
#[derive(Debug, Clone, Serialize)]
pub struct SlowBackend {
    /// The slow backend's `--delay`, as given (`20ms`).
    pub delay: &'static str,
    /// The slow backend's delay, as a duration (in JSON: seconds).
    #[serde(with = "secs")]
    pub delay_duration: Duration,
    pub connections: u32,
    /// The three backends' `X-Served-By` (their addresses), the slow one first.
    pub backends: Vec<String>,
    /// The rows of the table, in order, with why one did not run.
    pub rows: Vec<SlowRow>,
    pub runs: Vec<ProxyRun>,
}

/// One way of balancing over the three backends.
#[derive(Debug, Clone, Serialize)]
pub struct SlowRow {
    /// The name of its runs (`lb least-conn`, `haproxy leastconn`).
    pub scenario: &'static str,
    /// `lb`, `nginx` or `haproxy`.
    pub proxy: &'static str,
    /// How the proxy was told to balance, as written in its command line or configuration.
    pub configuration: String,
    /// Chooses by load or latency rather than by turns.
    pub load_aware: bool,
    /// Why it did not run (`not installed`, `skipped`, ...).
    pub missing: Option<String>,
}

impl SlowBackend {
    /// The slow backend's name in `X-Served-By`.
    pub fn slow(&self) -> &str {
        self.backends.first().map_or("", String::as_str)
    }

    /// Medians over rounds of one row, and the median share of responses the slow backend gave.
    pub fn summary(&self, scenario: &str) -> Option<(Summary, Option<f64>)> {
        let runs = || self.runs.iter().filter(move |r| r.scenario == scenario);
        let summary = summarize(runs().map(|r| {
            (
                &r.measured,
                r.proxy.map(|u| u.cpu()),
                r.proxy.map(|u| u.peak_rss),
            )
        }))?;
        let shares: Vec<f64> = runs()
            .filter_map(|r| r.measured.share_of(self.slow()))
            .collect();
        Some((summary, median(&shares)))
    }

    /// lb's best load-aware strategy: the one that served the most requests per second.
    pub fn best_lb(&self) -> Option<(&SlowRow, Summary)> {
        self.rows
            .iter()
            .filter(|row| row.proxy == "lb" && row.load_aware && row.missing.is_none())
            .filter_map(|row| Some((row, self.summary(row.scenario)?.0)))
            .max_by(|a, b| a.1.requests_per_sec.total_cmp(&b.1.requests_per_sec))
    }

    /// The section of the report: the table and how to read it.
    fn markdown(&self, s: &mut String, duration: Duration, rounds: u32) {
        let _ = writeln!(s, "\n## One slow backend\n");
        let _ = writeln!(
            s,
            "Three restful-servers behind each proxy, the first (`{}`) started with `--delay {}`, the \
             other two without; loadgen with {} closed-loop connections, {duration:?} per run, {rounds} \
             round(s), the rows in turn starting with a different one each round; medians over rounds. \
             `slow share` is the share of the responses that came from the slow backend (loadgen counts \
             them by `X-Served-By`).\n",
            self.slow(),
            self.delay,
            self.connections
        );
        let _ = writeln!(
            s,
            "| proxy | balancing | req/s | req/s range | p50 µs | p99 µs | slow share | errors | proxy CPU µs/req |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for row in &self.rows {
            let (proxy, configuration) = (row.proxy, &row.configuration);
            match (&row.missing, self.summary(row.scenario)) {
                (Some(why), _) => {
                    let _ = writeln!(s, "| {proxy} | `{configuration}` | {why} | | | | | | |");
                }
                (None, None) => {
                    let _ = writeln!(
                        s,
                        "| {proxy} | `{configuration}` | did not run | | | | | | |"
                    );
                }
                (None, Some((x, share))) => {
                    let _ = writeln!(
                        s,
                        "| {proxy} | `{configuration}` | {:.0} | {} | {:.0} | {:.0} | {} | {} | {} |",
                        x.requests_per_sec,
                        x.rps_range
                            .map_or_else(|| "—".into(), |r| format!("{:.0}%", r * 100.0)),
                        x.p50_us,
                        x.p99_us,
                        share.map_or_else(|| "—".into(), |v| format!("{:.1}%", v * 100.0)),
                        x.errors,
                        opt(x.cpu_us_per_request, 1),
                    );
                }
            }
        }
        // Round robin's ceiling: a third of the requests wait out the delay.
        let delay_s = self.delay_duration.as_secs_f64().max(1e-9);
        let ceiling = f64::from(self.connections) * 3.0 / delay_s;
        let _ = writeln!(
            s,
            "\nHow to read it: round robin gives the slow backend a third of the requests however slow it \
             is (the textbook failure). A third of the requests then wait {delay}, so the mean latency is \
             at least {delay} / 3 and {connections} connections cannot exceed {connections} × 3 / {delay} ≈ \
             {ceiling:.0} req/s (Little's law: connections = req/s × mean latency); p99 is the delay itself. A load-aware strategy notices what piles up on the slow \
             backend (least-conn and P2C count the requests in flight on each backend, EWMA also \
             measures their latency) and sends it less: its share falls, and req/s rises towards what \
             the two fast backends serve. p99 falls below {delay} only once the slow backend gets less \
             than 1% of the requests: until then at least one request in a hundred waits for it.",
            delay = self.delay,
            connections = self.connections,
        );
    }

    /// The goals for this scenario.
    fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        let name = "lb round-robin sends the slow backend about a third (the textbook failure)";
        out.push(
            match self.summary("lb round-robin").and_then(|(_, share)| share) {
                Some(share) => Target::judged(
                    name.into(),
                    format!("{:.1}%", share * 100.0),
                    (0.30..=0.37).contains(&share),
                ),
                None => Target::not_measured(name.into()),
            },
        );
        let peer = "haproxy leastconn";
        let peer_row = self.rows.iter().find(|r| r.scenario == peer);
        for (what, relation) in [("req/s", "≥"), ("p99", "≤")] {
            let name = format!(
                "lb's best load-aware strategy: {what} {relation} HAProxy leastconn (one slow backend)"
            );
            if let Some(why) = peer_row.and_then(|r| r.missing.as_ref()) {
                out.push(Target {
                    name,
                    measured: String::new(),
                    verdict: format!("n/a (haproxy {why})"),
                });
                continue;
            }
            let pair = self
                .best_lb()
                .zip(self.summary(peer).map(|(summary, _)| summary));
            out.push(match pair {
                Some(((row, lb), haproxy)) => {
                    let (a, b) = if what == "req/s" {
                        (lb.requests_per_sec, haproxy.requests_per_sec)
                    } else {
                        (lb.p99_us, haproxy.p99_us)
                    };
                    let met = if what == "req/s" { a >= b } else { a <= b };
                    Target::judged(
                        name,
                        format!(
                            "{}: {:.2}× ({a:.0} vs {b:.0})",
                            row.configuration,
                            a / b.max(1e-9)
                        ),
                        met,
                    )
                }
                None => Target::not_measured(name),
            });
        }
        out
    }
}

/// Durations in the JSON are seconds (`0.25`), not serde's `{secs, nanos}`.
pub mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Medians over rounds of one scenario at one load point.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub requests_per_sec: f64,
    /// (max - min) / median of requests per second over rounds: how noisy the rounds were.
    pub rps_range: Option<f64>,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: Option<f64>,
    /// Summed over rounds, not a median: one error is worth seeing.
    pub errors: u64,
    /// The proxy's (or for client runs, the client's) CPU microseconds per response.
    pub cpu_us_per_request: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// Open loop: the p99 of loadgen's own send lateness (see [`Measured::send_lateness_p99_us`]).
    pub send_lateness_p99_us: Option<f64>,
    /// Open loop: runs whose pacing loadgen judged other than `on_time`, with the worst verdict.
    pub late_runs: Option<(usize, &'static str)>,
    /// HTTPS: the TLS handshakes' p50 and p99.
    pub handshake_p50_us: Option<f64>,
    pub handshake_p99_us: Option<f64>,
}

/// The median; the mean of the two middle values for an even count.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

fn per_request_us(cpu: Duration, responses: u64) -> Option<f64> {
    (responses > 0).then(|| cpu.as_secs_f64() * 1e6 / responses as f64)
}

pub fn summarize<'a>(
    runs: impl Iterator<Item = (&'a Measured, Option<Duration>, Option<u64>)>,
) -> Option<Summary> {
    let runs: Vec<_> = runs.collect();
    if runs.is_empty() {
        return None;
    }
    let col = |f: &dyn Fn(&Measured) -> f64| runs.iter().map(|(m, _, _)| f(m)).collect::<Vec<_>>();
    let cpu: Vec<f64> = runs
        .iter()
        .filter_map(|(m, cpu, _)| per_request_us((*cpu)?, m.responses))
        .collect();
    let rss: Vec<f64> = runs
        .iter()
        .filter_map(|(_, _, rss)| Some(rss.as_ref().copied()? as f64 / (1024.0 * 1024.0)))
        .collect();
    let p999: Vec<f64> = runs.iter().filter_map(|(m, _, _)| m.p999_us).collect();
    let some = |f: &dyn Fn(&Measured) -> Option<f64>| {
        median(&runs.iter().filter_map(|(m, _, _)| f(m)).collect::<Vec<_>>())
    };
    let late: Vec<&str> = runs
        .iter()
        .filter_map(|(m, _, _)| m.pacing.as_deref())
        .filter(|&p| p != "on_time")
        .collect();
    let worst = ["untrustworthy", "lagged"]
        .into_iter()
        .find(|w| late.contains(w))
        .or((!late.is_empty()).then_some("late"));
    let rps = col(&|m| m.requests_per_sec);
    let requests_per_sec = median(&rps).unwrap_or(0.0);
    let (lo, hi) = rps
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    Some(Summary {
        requests_per_sec,
        rps_range: (rps.len() > 1 && requests_per_sec > 0.0).then(|| (hi - lo) / requests_per_sec),
        p50_us: median(&col(&|m| m.p50_us)).unwrap_or(0.0),
        p99_us: median(&col(&|m| m.p99_us)).unwrap_or(0.0),
        p999_us: median(&p999),
        errors: runs.iter().map(|(m, _, _)| m.errors).sum(),
        cpu_us_per_request: median(&cpu),
        peak_rss_mib: median(&rss),
        send_lateness_p99_us: some(&|m| m.send_lateness_p99_us),
        late_runs: worst.map(|w| (late.len(), w)),
        handshake_p50_us: some(&|m| m.tls_handshake_p50_us),
        handshake_p99_us: some(&|m| m.tls_handshake_p99_us),
    })
}

impl Report {
    /// Medians of `scenario` at `load`, if it ran.
    pub fn proxy_summary(&self, load: &Load, scenario: &str) -> Option<Summary> {
        summarize(
            self.proxy_runs
                .iter()
                .filter(|r| &r.load == load && r.scenario == scenario)
                .map(|r| {
                    (
                        &r.measured,
                        r.proxy.map(|u| u.cpu()),
                        r.proxy.map(|u| u.peak_rss),
                    )
                }),
        )
    }

    /// Medians of `tool` against `target`, with the client's own CPU per request.
    pub fn client_summary(&self, target: &str, tool: &str) -> Option<Summary> {
        summarize(
            self.client_runs
                .iter()
                .filter(|r| r.target == target && r.tool == tool)
                .map(|r| (&r.measured, Some(r.measured.client_cpu), None)),
        )
    }

    fn skipped(&self, scenario: &str) -> Option<&str> {
        self.scenarios
            .iter()
            .find(|(name, _)| *name == scenario)
            .and_then(|(_, why)| why.as_deref())
    }

    /// The whole report as markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "# cargo xtask {}\n", self.command);
        let _ = writeln!(
            s,
            "Machine: {} cores, {}, Linux {}; load average {} before, {} after{}.  ",
            m.cores,
            m.cpu_model,
            m.kernel,
            m.load_average_before,
            m.load_average_after,
            m.busy_before
                .map(|b| format!(
                    "; CPUs {:.0}% busy in the second before the start",
                    b * 100.0
                ))
                .unwrap_or_default()
        );
        let slow_runs = self.slow_backend.iter().flat_map(|slow| &slow.runs);
        let admin_runs = self.admin.iter().flat_map(|admin| &admin.runs);
        let tls_runs = self.tls.iter().flat_map(|tls| &tls.runs);
        let other: Vec<f64> = self
            .proxy_runs
            .iter()
            .chain(slow_runs)
            .chain(admin_runs)
            .chain(tls_runs)
            .filter_map(|r| r.other_load)
            .chain(self.client_runs.iter().filter_map(|r| r.other_load))
            .collect();
        if let Some(med) = median(&other) {
            let max = other.iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                s,
                "Other processes on the machine used {:.0}% of the CPUs during a run (median; worst run {:.0}%){}.  ",
                med * 100.0,
                max * 100.0,
                if max > 0.15 { ": some runs shared the cores, trust ratios of the same round more than absolute numbers" } else { "" }
            );
        }
        let versions: Vec<String> = m
            .versions
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(s, "Peers: {}.  ", versions.join("; "));
        let _ = writeln!(
            s,
            "Method: loadgen (release, child process) for {:?} per run, {} round(s); in each round every \
             load point runs the scenarios one after the other, starting with a different one each round. \
             Figures are medians over rounds (errors are summed). Everything shares the same cores: \
             read ratios, not absolute numbers. \
             Proxy CPU is utime+stime of the proxy's processes (nginx: master and workers) from \
             /proc/PID/stat before and after each run, divided by responses (user and kernel apart in \
             `CPU per request, user / kernel`); peak RSS is VmHWM \
             (summed over processes), reset before each run through /proc/PID/clear_refs. \
             The open loop sends at 70% of lb's median peak for all scenarios alike; its latency \
             is measured from the scheduled send time (coordinated omission corrected). \
             `req/s range` is (max - min) / median over rounds: a large one means a noisy machine.\n",
            self.duration, self.rounds
        );
        let _ = writeln!(
            s,
            "Charts: each loadgen run over time (requests/s, latency, backends' shares) in \
             [report.html](report.html), beside this file; each run's loadgen JSON report and page \
             in `runs/`.\n"
        );

        if !self.loads.is_empty() {
            self.proxies_markdown(&mut s);
        }
        if let Some(admin) = &self.admin {
            admin.markdown(&mut s, self.duration, self.rounds);
        }
        if let Some(tls) = &self.tls {
            tls.markdown(&mut s, self.duration, self.rounds);
        }
        if !self.client_targets.is_empty() {
            self.clients_markdown(&mut s);
        }
        if let Some(slow) = &self.slow_backend {
            slow.markdown(&mut s, self.duration, self.rounds);
        }
        if let Some(idle) = &self.idle {
            idle.markdown(&mut s);
        }
        let _ = writeln!(s, "\n## Targets\n");
        let _ = writeln!(s, "| target | measured | verdict |");
        let _ = writeln!(s, "|---|---|---|");
        for t in self.targets() {
            let _ = writeln!(s, "| {} | {} | {} |", t.name, t.measured, t.verdict);
        }
        s
    }

    /// The targets, each with what was measured and whether it was met.
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        if !self.loads.is_empty() {
            self.proxy_targets(&mut out);
        }
        if let Some(admin) = &self.admin {
            out.extend(admin.targets());
        }
        if let Some(tls) = &self.tls {
            out.extend(tls.targets());
        }
        for (target, why) in &self.client_targets {
            let why = why
                .clone()
                .or_else(|| self.wrk_missing.as_ref().map(|w| format!("wrk {w}")));
            if let Some(why) = why {
                for what in ["req/s ≥ wrk", "CPU/request ≤ wrk"] {
                    out.push(Target {
                        name: format!("loadgen {what} ({target})"),
                        measured: String::new(),
                        verdict: format!("n/a ({why})"),
                    });
                }
                continue;
            }
            let pair = self
                .client_summary(target, "loadgen")
                .zip(self.client_summary(target, "wrk"));
            let name = format!("loadgen req/s ≥ wrk ({target})");
            out.push(match pair {
                Some((lg, wrk)) => Target::judged(
                    name,
                    format!(
                        "{:.2}× ({:.0} vs {:.0})",
                        lg.requests_per_sec / wrk.requests_per_sec.max(1e-9),
                        lg.requests_per_sec,
                        wrk.requests_per_sec
                    ),
                    lg.requests_per_sec >= wrk.requests_per_sec,
                ),
                None => Target::not_measured(name),
            });
            let name = format!("loadgen CPU/request ≤ wrk ({target})");
            out.push(
                match pair
                    .and_then(|(lg, wrk)| Some((lg.cpu_us_per_request?, wrk.cpu_us_per_request?)))
                {
                    Some((lg, wrk)) => Target::judged(
                        name,
                        format!("{:.2}× ({lg:.1} vs {wrk:.1} µs)", lg / wrk.max(1e-9)),
                        lg <= wrk,
                    ),
                    None => Target::not_measured(name),
                },
            );
        }
        if let Some(slow) = &self.slow_backend {
            out.extend(slow.targets());
        }
        if let Some(idle) = &self.idle {
            out.extend(idle.targets());
        }
        out
    }

    /// The targets of the closed and open loops: lb against nginx and HAProxy, lb's added latency
    /// and memory.
    fn proxy_targets(&self, out: &mut Vec<Target>) {
        let find = |connections: u32| {
            self.loads
                .iter()
                .find(|l| matches!(l, Load::Closed { connections: c } if *c == connections))
                .copied()
        };
        let open = self
            .loads
            .iter()
            .find(|l| matches!(l, Load::Open { .. }))
            .copied();
        let (c1, c50, c256) = (find(1), find(50), find(256));

        for (load, peer) in [
            (c50, "nginx"),
            (c50, "haproxy"),
            (c256, "nginx"),
            (c256, "haproxy"),
        ] {
            out.push(self.compare(load, peer, "req/s", |x| Some(x.requests_per_sec), true));
        }
        for load in [c50, c256, open] {
            out.push(self.compare(load, "nginx", "p99", |x| Some(x.p99_us), false));
        }
        for load in [c50, c256] {
            out.push(self.compare(
                load,
                "nginx",
                "CPU/request",
                |x| x.cpu_us_per_request,
                false,
            ));
        }

        let name = "lb adds ≤ 100 µs to p50 over direct at 1 conn".to_string();
        out.push(
            match c1.and_then(|l| {
                Some((
                    self.proxy_summary(&l, "lb")?,
                    self.proxy_summary(&l, "direct")?,
                ))
            }) {
                Some((lb, direct)) => {
                    let added = lb.p50_us - direct.p50_us;
                    Target::judged(
                        name,
                        format!("+{added:.0} µs ({:.0} vs {:.0})", lb.p50_us, direct.p50_us),
                        added <= 100.0,
                    )
                }
                None => Target::not_measured(name),
            },
        );
        let name = "lb peak RSS ≤ 30 MiB at 256 conns".to_string();
        out.push(
            match c256.and_then(|l| self.proxy_summary(&l, "lb")?.peak_rss_mib) {
                Some(mib) => Target::judged(name, format!("{mib:.1} MiB"), mib <= 30.0),
                None => Target::not_measured(name),
            },
        );
        // Issue 18: an open loop that sends on time measures the target, not the generator, so a
        // fast backend's corrected p50 is about its latency with one connection.
        let name =
            "direct open-loop p50 within 0.1 ms of its closed-loop p50 at 1 conn".to_string();
        let direct = |load: Option<Load>| self.proxy_summary(&load?, "direct");
        out.push(match direct(open).zip(direct(c1)) {
            Some((open, closed)) => {
                let gap = open.p50_us - closed.p50_us;
                Target::judged(
                    name,
                    format!("{gap:+.0} µs ({:.0} vs {:.0})", open.p50_us, closed.p50_us),
                    gap.abs() <= 100.0,
                )
            }
            None => Target::not_measured(name),
        });
    }

    /// The main table, one row per load point and scenario, and the ratios lb / peer.
    fn proxies_markdown(&self, s: &mut String) {
        let _ = writeln!(s, "## Proxies\n");
        let _ = writeln!(
            s,
            "| load | scenario | req/s | req/s range | p50 µs | p99 µs | p99.9 µs | errors | proxy CPU µs/req | proxy peak RSS MiB | send lateness p99 µs |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for load in &self.loads {
            for (scenario, _) in &self.scenarios {
                let label = load.label();
                match (self.skipped(scenario), self.proxy_summary(load, scenario)) {
                    (Some(why), _) => {
                        let _ = writeln!(s, "| {label} | {scenario} | {why} | | | | | | | | |");
                    }
                    (None, None) => {
                        let _ =
                            writeln!(s, "| {label} | {scenario} | did not run | | | | | | | | |");
                    }
                    (None, Some(x)) => {
                        let _ = writeln!(
                            s,
                            "| {label} | {scenario} | {:.0} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
                            x.requests_per_sec,
                            x.rps_range.map_or_else(|| "—".into(), |r| format!("{:.0}%", r * 100.0)),
                            x.p50_us,
                            x.p99_us,
                            opt(x.p999_us, 0),
                            x.errors,
                            opt(x.cpu_us_per_request, 1),
                            opt(x.peak_rss_mib, 1),
                            lateness(&x, self.rounds),
                        );
                    }
                }
            }
        }
        if self.loads.iter().any(|l| matches!(l, Load::Open { .. })) {
            let _ = writeln!(
                s,
                "\n`send lateness` (open loop only) is how late loadgen itself sent its requests, its timer \
                 and its CPU, apart from waiting for a busy connection; it is part of the corrected \
                 latency, so it should stay small next to p50. Runs where loadgen judged its own pacing \
                 `lagged` (p99 above 50 µs) or `untrustworthy` (it moved the latency figures) are counted \
                 beside it."
            );
        }

        let _ = writeln!(
            s,
            "\n## Ratios of medians (req/s: above 1 means lb is faster; p99 and CPU: below 1 means lb is better)\n"
        );
        let _ = writeln!(
            s,
            "| load | lb/direct req/s | lb/nginx req/s | lb/haproxy req/s | lb/nginx p99 | lb/haproxy p99 | lb/nginx CPU/req | lb/haproxy CPU/req |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for load in &self.loads {
            let lb = self.proxy_summary(load, "lb");
            let ratio = |peer: &str, f: fn(&Summary) -> Option<f64>| -> String {
                let (Some(a), Some(b)) = (lb.as_ref(), self.proxy_summary(load, peer)) else {
                    return "—".into();
                };
                match (f(a), f(&b)) {
                    (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
                    _ => "—".into(),
                }
            };
            let rps = |x: &Summary| Some(x.requests_per_sec);
            let p99 = |x: &Summary| Some(x.p99_us);
            let cpu = |x: &Summary| x.cpu_us_per_request;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                load.label(),
                ratio("direct", rps),
                ratio("nginx", rps),
                ratio("haproxy", rps),
                ratio("nginx", p99),
                ratio("haproxy", p99),
                ratio("nginx", cpu),
                ratio("haproxy", cpu),
            );
        }
        self.cpu_split_markdown(s);
    }

    /// Medians over rounds of `scenario`'s CPU microseconds per response at `load`, split into
    /// user space and kernel: `(user, kernel)`. `None` if it did not run or has no proxy.
    pub fn cpu_split(&self, load: &Load, scenario: &str) -> Option<(f64, f64)> {
        let runs: Vec<(f64, f64)> = self
            .proxy_runs
            .iter()
            .filter(|r| &r.load == load && r.scenario == scenario)
            .filter_map(|r| {
                let usage = r.proxy?;
                Some((
                    per_request_us(usage.user, r.measured.responses)?,
                    per_request_us(usage.system, r.measured.responses)?,
                ))
            })
            .collect();
        let user: Vec<f64> = runs.iter().map(|&(u, _)| u).collect();
        let kernel: Vec<f64> = runs.iter().map(|&(_, k)| k).collect();
        Some((median(&user)?, median(&kernel)?))
    }

    /// Each proxy's CPU per request split into user space and kernel, and lb's ratios to the
    /// peers: the kernel's share is mostly loopback TCP, much the same work for every proxy, so
    /// a gap in the user column is the proxy's own code.
    fn cpu_split_markdown(&self, s: &mut String) {
        const PROXIES: [&str; 3] = ["lb", "nginx", "haproxy"];
        let _ = writeln!(s, "\n## CPU per request, user / kernel (µs)\n");
        let _ = writeln!(
            s,
            "utime / stime of the proxy's processes from /proc/PID/stat, before and after each run, divided \
             by the responses; medians over rounds. The kernel assigns each clock tick ({} ms) to user or \
             kernel by sampling, so a split is only as good as the number of ticks in a run. Ratios are \
             lb / peer: `total (user, kernel)`, below 1 means lb uses less.\n",
            1000 / super::procfs::clock_ticks().max(1)
        );
        let _ = writeln!(
            s,
            "| load | lb user / kernel | nginx user / kernel | haproxy user / kernel | lb/nginx total (user, kernel) | lb/haproxy total (user, kernel) |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        for load in &self.loads {
            let cells: Vec<String> = PROXIES
                .iter()
                .map(
                    |&proxy| match (self.skipped(proxy), self.cpu_split(load, proxy)) {
                        (Some(why), _) => why.to_string(),
                        (None, Some((user, kernel))) => format!("{user:.1} / {kernel:.1}"),
                        (None, None) => "—".into(),
                    },
                )
                .collect();
            let lb = self.cpu_split(load, "lb");
            let ratios: Vec<String> = ["nginx", "haproxy"]
                .iter()
                .map(|&peer| cpu_ratios(lb, self.cpu_split(load, peer)))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                load.label(),
                cells.join(" | "),
                ratios.join(" | ")
            );
        }
    }

    /// loadgen against wrk.
    fn clients_markdown(&self, s: &mut String) {
        let _ = writeln!(s, "\n## loadgen vs wrk (same target, connections, duration and one thread each: `loadgen -t 1`, `wrk -t1`; CPU is the client's own)\n");
        let _ = writeln!(
            s,
            "| target | loadgen req/s | wrk req/s | loadgen/wrk req/s | loadgen CPU µs/req | wrk CPU µs/req | loadgen/wrk CPU |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
        for (target, why) in &self.client_targets {
            if let Some(why) = why {
                let _ = writeln!(s, "| {target} | {why} | | | | | |");
                continue;
            }
            let lg = self.client_summary(target, "loadgen");
            let wrk = self.client_summary(target, "wrk");
            let cell = |x: Option<&Summary>, f: fn(&Summary) -> Option<f64>, digits| {
                x.and_then(f)
                    .map_or_else(|| "—".into(), |v| format!("{v:.digits$}"))
            };
            let wrk_rps = match (&self.wrk_missing, &wrk) {
                (Some(why), _) => why.clone(),
                (None, w) => cell(w.as_ref(), |x| Some(x.requests_per_sec), 0),
            };
            let ratio = |f: fn(&Summary) -> Option<f64>| match (
                lg.as_ref().and_then(f),
                wrk.as_ref().and_then(f),
            ) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "—".into(),
            };
            let _ = writeln!(
                s,
                "| {target} | {} | {wrk_rps} | {} | {} | {} | {} |",
                cell(lg.as_ref(), |x| Some(x.requests_per_sec), 0),
                ratio(|x| Some(x.requests_per_sec)),
                cell(lg.as_ref(), |x| x.cpu_us_per_request, 1),
                cell(wrk.as_ref(), |x| x.cpu_us_per_request, 1),
                ratio(|x| x.cpu_us_per_request),
            );
        }
    }

    /// lb against `peer` on one figure; `higher_is_better` picks the direction.
    fn compare(
        &self,
        load: Option<Load>,
        peer: &str,
        what: &str,
        figure: fn(&Summary) -> Option<f64>,
        higher_is_better: bool,
    ) -> Target {
        let relation = if higher_is_better { "≥" } else { "≤" };
        let label = load.map_or_else(|| "?".into(), |l| l.label());
        let name = format!("lb {what} {relation} {peer} at {label}");
        let Some(load) = load else {
            return Target::not_measured(name);
        };
        if let Some(why) = self.skipped(peer) {
            return Target {
                name,
                measured: String::new(),
                verdict: format!("n/a ({peer} {why})"),
            };
        }
        let pair = self
            .proxy_summary(&load, "lb")
            .zip(self.proxy_summary(&load, peer));
        match pair.and_then(|(a, b)| Some((figure(&a)?, figure(&b)?))) {
            Some((lb, other)) if other > 0.0 => {
                let ratio = lb / other;
                let met = if higher_is_better {
                    ratio >= 1.0
                } else {
                    ratio <= 1.0
                };
                Target::judged(name, format!("{ratio:.2}× ({lb:.1} vs {other:.1})"), met)
            }
            _ => Target::not_measured(name),
        }
    }
}

/// One of the targets.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub measured: String,
    pub verdict: String,
}

impl Target {
    pub fn judged(name: String, measured: String, met: bool) -> Target {
        let verdict = if met { "met" } else { "**missed**" };
        Target {
            name,
            measured,
            verdict: verdict.into(),
        }
    }

    pub fn not_measured(name: String) -> Target {
        Target {
            name,
            measured: String::new(),
            verdict: "not measured".into(),
        }
    }
}

/// The send-lateness cell: the median p99, and how many runs loadgen judged late.
fn lateness(x: &Summary, rounds: u32) -> String {
    let Some(p99) = x.send_lateness_p99_us else {
        return "—".into();
    };
    match x.late_runs {
        Some((n, worst)) => format!("{p99:.0} ({n}/{rounds} {worst})"),
        None => format!("{p99:.0}"),
    }
}

/// `lb / peer` of the total CPU per request, then of its user and kernel parts:
/// `1.40 (3.50, 0.98)`. `—` when either side is missing or a peer's figure is zero.
fn cpu_ratios(lb: Option<(f64, f64)>, peer: Option<(f64, f64)>) -> String {
    let Some(((lb_user, lb_kernel), (user, kernel))) = lb.zip(peer) else {
        return "—".into();
    };
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "—".into()
        }
    };
    format!(
        "{} ({}, {})",
        ratio(lb_user + lb_kernel, user + kernel),
        ratio(lb_user, user),
        ratio(lb_kernel, kernel)
    )
}

pub fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "—".into(), |v| format!("{v:.digits$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of `scenario` that served 1,000 responses with `user` and `kernel` ms of its CPU.
    fn run(scenario: &'static str, load: Load, round: u32, user: u64, kernel: u64) -> ProxyRun {
        ProxyRun {
            round,
            load,
            scenario,
            order: 0,
            measured: Measured {
                requests_per_sec: 1000.0,
                responses: 1000,
                errors: 0,
                p50_us: 100.0,
                p99_us: 200.0,
                ..Measured::default()
            },
            proxy: Some(Usage {
                user: Duration::from_millis(user),
                system: Duration::from_millis(kernel),
                peak_rss: 0,
                peak_is_per_run: true,
            }),
            other_load: None,
        }
    }

    fn report(proxy_runs: Vec<ProxyRun>) -> Report {
        Report {
            command: "bench".into(),
            machine: Machine {
                cores: 2,
                kernel: "6".into(),
                cpu_model: "test".into(),
                busy_before: None,
                load_average_before: String::new(),
                load_average_after: String::new(),
                versions: Vec::new(),
            },
            quick: false,
            rounds: 3,
            duration: Duration::from_secs(5),
            scenarios: vec![
                ("direct", None),
                ("lb", None),
                ("nginx", None),
                ("haproxy", Some("not installed".into())),
            ],
            loads: vec![Load::Closed { connections: 50 }],
            wrk_missing: None,
            client_targets: Vec::new(),
            proxy_runs,
            client_runs: Vec::new(),
            slow_backend: None,
            admin: None,
            tls: None,
            idle: None,
        }
    }

    #[test]
    fn cpu_is_split_into_user_and_kernel_per_request_with_lb_s_ratios() {
        let c50 = Load::Closed { connections: 50 };
        // Per request, in µs: lb 8 user + 17 kernel over three rounds (one noisy), nginx 2 + 16.
        let report = report(vec![
            run("lb", c50, 0, 8, 17),
            run("lb", c50, 1, 9, 18),
            run("lb", c50, 2, 8, 16),
            run("nginx", c50, 0, 2, 16),
        ]);
        assert_eq!(report.cpu_split(&c50, "lb"), Some((8.0, 17.0)));
        assert_eq!(report.cpu_split(&c50, "nginx"), Some((2.0, 16.0)));
        assert_eq!(report.cpu_split(&c50, "direct"), None);

        let mut s = String::new();
        report.proxies_markdown(&mut s);
        assert!(s.contains("## CPU per request, user / kernel (µs)"), "{s}");
        // lb/nginx: total 25 / 18, user 8 / 2, kernel 17 / 16.
        assert!(
            s.contains(
                "| 50 conns | 8.0 / 17.0 | 2.0 / 16.0 | not installed | 1.39 (4.00, 1.06) | — |"
            ),
            "{s}"
        );
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
