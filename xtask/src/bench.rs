//! `cargo xtask bench`: lb beside nginx and HAProxy in front of the same two backends, and loadgen
//! beside wrk, measured side by side in one run on loopback.
//!
//! The shape of a run:
//!
//! 1. build the release binaries, start two `restful-server`s, `lb`, and (if installed) nginx and
//!    HAProxy configured as in [`peers`], all balancing round robin;
//! 2. *closed loop* at 1, 50 and 256 connections: for each round, for each load point, each
//!    scenario (`direct`, `lb`, `nginx`, `haproxy`) in turn, the first one rotating every round so
//!    that no scenario always runs first (or always right after the heaviest one);
//! 3. *open loop* at 70% of lb's measured peak, the same for all scenarios: latency under a load
//!    the proxies can sustain, coordinated omission corrected ([`client::Load::Open`]);
//! 4. loadgen against wrk on the same targets ([`client`] explains how their CPU is measured);
//! 5. *admin cost*: lb with and without `--admin` at 50 connections, a live page subscribed and
//!    `/metrics` scraped during the "with" runs ([`admin_cost`]);
//! 6. *TLS*: lb `-s`, nginx `ssl` and HAProxy `ssl crt` with the same ECDSA P-256 certificate,
//!    kept-alive connections and a new connection per request ([`tls`]);
//! 7. *one slow backend*: three backends, one of them 20 ms slow, behind lb with each balancing
//!    strategy and behind nginx's and HAProxy's load-aware ones ([`slow_backend`]);
//! 8. *idle connections*: lb, nginx and HAProxy each holding 2,000 and then 10,000 keep-alive
//!    clients that sent one request and wait, their memory before and with them ([`idle`]);
//! 9. medians over rounds and ratios in `target/bench/report.md`, raw runs in `report.json`,
//!    and every loadgen run drawn in `report.html` ([`html`]).
//!
//! `--only proxies,clients,admin,tls,slow-backend,idle` runs a part of it (steps 2-3, 4, 5, 6, 7,
//! 8).
//!
//! The proxy's CPU time (user and kernel apart) and its memory come from `/proc` ([`procfs`]).
//! Everything runs on the same cores, so only medians and ratios are reported, never one lone
//! absolute number.
//!
//! `--quick` (CI) runs each scenario for a second, once, and only checks that everything ran:
//! every run got responses and lb answered without errors (and round robin gave the slow backend
//! its third). It makes no timing assertion.

mod admin_cost;
mod client;
mod html;
mod idle;
mod measure;
mod peers;
mod procfs;
mod report;
mod slow_backend;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tests::{build_binaries, start_backend, start_lb, Proc};

use client::Load;
use measure::{measure_round, warm_up, Bench, PeerBins, Plan, Scenario};
use report::{ClientRun, Machine, ProxyRun, Report};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// About a second per scenario, one round; checks only that everything ran (for CI).
    #[arg(long)]
    quick: bool,
    /// How long each measurement sends traffic (e.g. 10s).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Rounds over all scenarios; the report shows medians over rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// First install nginx, HAProxy and wrk from Debian's packages (apt-get, needs root).
    #[arg(long)]
    install_peers: bool,
    /// Leave these peers out even if installed, e.g. `--skip nginx,wrk` (their rows say "skipped").
    #[arg(long, value_enum, value_delimiter = ',')]
    skip: Vec<PeerName>,
    /// Run only these parts, e.g. `--only slow-backend` [default: all of them].
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
}

/// The parts of a bench run `--only` can choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// lb beside nginx and HAProxy, closed and open loop, in front of two backends.
    Proxies,
    /// loadgen beside wrk.
    Clients,
    /// lb with and without `--admin`, watched ([`admin_cost`]).
    Admin,
    /// lb `-s`, nginx and HAProxy terminating TLS ([`tls`]).
    Tls,
    /// Three backends, one slow, behind each balancing strategy ([`slow_backend`]).
    SlowBackend,
    /// The memory of idle keep-alive connections, lb beside nginx and HAProxy ([`idle`]).
    Idle,
}

/// The peers `--skip` can leave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PeerName {
    Nginx,
    Haproxy,
    Wrk,
}

/// The closed-loop load points: one connection for latency, 50 and 256 for throughput.
const CONNECTIONS: [u32; 3] = [1, 50, 256];

/// Connections of the open loop and of the loadgen/wrk comparison.
const OPEN_CONNECTIONS: u32 = 50;

/// The open loop runs at this fraction of lb's peak requests per second.
const OPEN_FRACTION: f64 = 0.7;

pub fn run(args: Args) -> Result<ExitCode> {
    let started = Instant::now();
    if args.install_peers {
        step("Install nginx, HAProxy and wrk from Debian's packages.");
        // A machine without the packages (or without network) still gets lb measured: the
        // peers' rows then say "not installed".
        if let Err(e) = peers::install() {
            println!(
                "    WARNING: {e:#}\n    The bench goes on without the peers that are missing."
            );
        }
    }
    let (duration, rounds) = if args.quick {
        (Duration::from_secs(1), 1)
    } else {
        (args.duration, args.rounds)
    };
    if duration < Duration::from_millis(100) {
        bail!("--duration {duration:?} is too short to measure anything; use at least 1s");
    }
    let parts = if args.only.is_empty() {
        vec![
            Part::Proxies,
            Part::Clients,
            Part::Admin,
            Part::Tls,
            Part::SlowBackend,
            Part::Idle,
        ]
    } else {
        args.only.clone()
    };
    let mut machine = Machine::probe();
    let cores = machine.cores;

    step("Build lb, restful-server and loadgen in release mode.");
    let bins = build_binaries(true)?;
    let bench = Bench {
        loadgen: bins.join("loadgen"),
        duration,
        hz: procfs::clock_ticks(),
        backend_pids: Vec::new(),
        loadgen_args: Vec::new(),
    };
    let tmp = tempfile::Builder::new()
        .prefix("xtask-bench-")
        .tempdir()
        .context("creating a temporary directory for the peers' configurations")?;

    let find = |peer: PeerName, program: &str| -> (Option<PathBuf>, &'static str) {
        match peers::find(program) {
            _ if args.skip.contains(&peer) => (None, "skipped"),
            Some(path) => (Some(path), ""),
            None => (None, "not installed"),
        }
    };
    let nginx = find(PeerName::Nginx, "nginx");
    let haproxy = find(PeerName::Haproxy, "haproxy");
    let wrk = find(PeerName::Wrk, "wrk");
    for (name, (bin, missing)) in [("nginx", &nginx), ("haproxy", &haproxy), ("wrk", &wrk)] {
        let version = bin
            .as_deref()
            .map_or_else(|| missing.to_string(), peers::version);
        machine.versions.push((name.into(), version));
    }
    // Warm up: fill the proxies' connection pools and fault in their memory before measuring.
    let warmup = if args.quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(1)
    };

    let mut report = Report {
        command: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        machine,
        quick: args.quick,
        rounds,
        duration,
        scenarios: Vec::new(),
        loads: Vec::new(),
        wrk_missing: None,
        client_targets: Vec::new(),
        proxy_runs: Vec::new(),
        client_runs: Vec::new(),
        slow_backend: None,
        admin: None,
        tls: None,
        idle: None,
    };
    let plan = Plan {
        bins: &bins,
        tmp: tmp.path(),
        peers: PeerBins {
            nginx: available(&nginx),
            haproxy: available(&haproxy),
        },
        cores,
        rounds,
        warmup,
    };
    if parts.contains(&Part::Proxies) || parts.contains(&Part::Clients) {
        let main = Main {
            bins: &bins,
            tmp: tmp.path(),
            cores,
            rounds,
            warmup,
            nginx: &nginx,
            haproxy: &haproxy,
            wrk: &wrk,
            proxies: parts.contains(&Part::Proxies),
            clients: parts.contains(&Part::Clients),
        };
        main_scenarios(&bench, &main, &mut report)?;
    }
    if parts.contains(&Part::Admin) {
        step(&format!(
            "lb with and without --admin: {} connections, {rounds} round(s) of the pair in both orders, \
             {duration:?} per run; during the --admin runs a client reads /events and scrapes /metrics \
             once a second.",
            admin_cost::CONNECTIONS
        ));
        report.admin = Some(admin_cost::run(&bench, &bins, rounds, warmup)?);
    }
    if parts.contains(&Part::Tls) {
        step(&format!(
            "TLS termination: lb -s, nginx ssl and HAProxy ssl crt with one ECDSA P-256 certificate; \
             {} connections kept alive, then a new connection (and handshake) per request; \
             {rounds} round(s) of {duration:?} per row.",
            tls::CONNECTIONS
        ));
        report.tls = Some(tls::run(&bench, &plan)?);
    }
    if parts.contains(&Part::SlowBackend) {
        step(&format!(
            "One slow backend: three backends, one with --delay {}; {} connections, {rounds} round(s) of {duration:?} per row.",
            slow_backend::DELAY,
            slow_backend::CONNECTIONS
        ));
        report.slow_backend = Some(slow_backend::run(&bench, &plan)?);
    }
    if parts.contains(&Part::Idle) {
        let (counts, settling) = if args.quick {
            (idle::QUICK_COUNTS, idle::Settling::QUICK)
        } else {
            (idle::COUNTS, idle::Settling::FULL)
        };
        step(&format!(
            "Idle keep-alive connections: each proxy started afresh holds {} connections that sent one \
             GET each; its RSS is read before, {:?} after, and once still for {:?} (at most {:?} \
             after); {rounds} round(s).",
            counts.map(|c| c.to_string()).join(" and then "),
            idle::FIRST_LOOK,
            settling.steady_for,
            settling.limit,
        ));
        report.idle = Some(idle::run(&plan, &counts, settling)?);
    }
    report.machine.load_average_after = procfs::load_average();
    write_report(&report, started)?;

    let problems = everything_ran(&report);
    if problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for p in &problems {
        println!("FAIL: {p}");
    }
    // Only --quick fails on them: a full bench is read by a person, who sees the errors column.
    Ok(if args.quick {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// A peer's path, or why it is missing.
fn available<'a>((bin, missing): &'a (Option<PathBuf>, &'static str)) -> Result<&'a Path, &'a str> {
    bin.as_deref().ok_or(*missing)
}

/// What the main scenarios need besides the measuring setup.
struct Main<'a> {
    bins: &'a Path,
    tmp: &'a Path,
    cores: usize,
    rounds: u32,
    warmup: Duration,
    /// Each peer's path, or why it is missing.
    nginx: &'a (Option<PathBuf>, &'static str),
    haproxy: &'a (Option<PathBuf>, &'static str),
    wrk: &'a (Option<PathBuf>, &'static str),
    /// Run the closed and open loops through the proxies.
    proxies: bool,
    /// Run loadgen against wrk.
    clients: bool,
}

/// `n` restful-servers on ports of their own, each line printed; stopped when the `Proc`s drop.
fn start_backends(bins: &Path, n: usize) -> Result<(Vec<Proc>, Vec<SocketAddr>)> {
    let mut backends = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..n {
        let (proc, addr) = start_backend(&bins.join("restful-server"), &["-p", "0"])?;
        println!("    backend  {addr}  ({})", proc.command());
        backends.push(proc);
        addrs.push(addr);
    }
    Ok((backends, addrs))
}

/// Two backends, lb, nginx and HAProxy balancing round robin: the closed and open loops
/// (`main.proxies`) and loadgen against wrk (`main.clients`), written into `report`.
fn main_scenarios(bench: &Bench, main: &Main, report: &mut Report) -> Result<()> {
    let (bins, rounds, duration) = (main.bins, main.rounds, bench.duration);
    let mut bench = bench.clone();
    step("Start two backends, lb, and the peers that are installed.");
    let (backends, backend_addrs) = start_backends(bins, 2)?;
    bench.backend_pids.extend(backends.iter().map(Proc::pid));
    let mut lb_args = vec!["-p".to_string(), "0".into()];
    for addr in &backend_addrs {
        lb_args.extend(["-b".into(), "/".into(), addr.to_string()]);
    }
    let lb_args: Vec<&str> = lb_args.iter().map(String::as_str).collect();
    let (lb, lb_addr) = start_lb(&bins.join("lb"), &lb_args)?;
    println!("    lb       {lb_addr}  ({})", lb.command());

    let (nginx_bin, nginx_missing) = main.nginx;
    let (haproxy_bin, haproxy_missing) = main.haproxy;
    let (wrk_bin, wrk_missing) = main.wrk;
    let setup = |label| peers::Setup {
        label,
        backends: &backend_addrs,
        workers: main.cores,
        balance: "",
        tls: None,
        max_conns: peers::MAX_CONNS,
        idle_timeout: None,
    };
    let nginx = nginx_bin
        .as_deref()
        .map(|bin| peers::start_nginx(bin, main.tmp, &setup("nginx")))
        .transpose()
        .context("starting nginx (fix its installation, or leave it out with --skip nginx)")?;
    let haproxy = haproxy_bin
        .as_deref()
        .map(|bin| {
            peers::start_haproxy(
                bin,
                main.tmp,
                &peers::Setup {
                    balance: "roundrobin",
                    ..setup("haproxy")
                },
            )
        })
        .transpose()
        .context("starting HAProxy (fix its installation, or leave it out with --skip haproxy)")?;
    for peer in nginx.iter().chain(&haproxy) {
        println!("    {:<8} {}  (pid {})", peer.name, peer.addr, peer.pid());
    }

    let url = |addr: SocketAddr| format!("http://{addr}/");
    let peer_scenario = |name, peer: &Option<peers::Peer>, missing: &str| match peer {
        Some(p) => Scenario {
            name,
            url: Some(url(p.addr)),
            pid: Some(p.pid()),
            missing: None,
        },
        None => Scenario {
            name,
            url: None,
            pid: None,
            missing: Some(missing.into()),
        },
    };
    let scenarios = [
        Scenario {
            name: "direct",
            url: Some(url(backend_addrs[0])),
            pid: None,
            missing: None,
        },
        Scenario {
            name: "lb",
            url: Some(url(lb_addr)),
            pid: Some(lb.pid()),
            missing: None,
        },
        peer_scenario("nginx", &nginx, nginx_missing),
        peer_scenario("haproxy", &haproxy, haproxy_missing),
    ];
    let runnable: Vec<&Scenario> = scenarios.iter().filter(|s| s.url.is_some()).collect();

    if main.proxies {
        step(&format!("Warm up every scenario for {:?}.", main.warmup));
        warm_up(&bench, &runnable, OPEN_CONNECTIONS, main.warmup)?;

        let mut loads: Vec<Load> = CONNECTIONS
            .iter()
            .map(|&connections| Load::Closed { connections })
            .collect();
        step(&format!(
            "Closed loop at {} connections: {rounds} round(s) of {duration:?} per scenario.",
            CONNECTIONS.map(|c| c.to_string()).join(", ")
        ));
        let mut proxy_runs: Vec<ProxyRun> = Vec::new();
        for round in 0..rounds {
            for load in &loads {
                proxy_runs.extend(measure_round(
                    &bench, &runnable, *load, round, rounds, None,
                )?);
            }
        }

        let lb_peak = lb_peak(&proxy_runs);
        if lb_peak > 0.0 {
            let open = Load::Open {
                connections: OPEN_CONNECTIONS,
                rate: (lb_peak * OPEN_FRACTION).round().max(1.0),
            };
            step(&format!(
                "Open loop at {:.0}% of lb's peak ({lb_peak:.0} req/s): {}, {OPEN_CONNECTIONS} connections.",
                OPEN_FRACTION * 100.0,
                open.label()
            ));
            for round in 0..rounds {
                proxy_runs.extend(measure_round(&bench, &runnable, open, round, rounds, None)?);
            }
            loads.push(open);
        } else {
            println!(
                "    skipped: lb served nothing in the closed loop, so there is no peak to take 70% of"
            );
        }
        report.scenarios = scenarios
            .iter()
            .map(|s| (s.name, s.missing.clone()))
            .collect();
        report.loads = loads;
        report.proxy_runs = proxy_runs;
    }

    if main.clients {
        step(&format!(
            "loadgen against wrk: {OPEN_CONNECTIONS} connections, {duration:?}, on the same targets."
        ));
        let mut client_targets = vec![ClientTarget {
            name: "direct backend",
            url: url(backend_addrs[0]),
            server_pid: None,
        }];
        let mut client_skipped: Vec<(&'static str, Option<String>)> =
            vec![("direct backend", None)];
        match nginx.as_ref().and_then(|n| Some((n.static_addr?, n.pid()))) {
            Some((addr, pid)) => {
                client_targets.push(ClientTarget {
                    name: "nginx static file",
                    url: url(addr),
                    server_pid: Some(pid),
                });
                client_skipped.push(("nginx static file", None));
            }
            None => {
                client_skipped.push(("nginx static file", Some(format!("nginx {nginx_missing}"))))
            }
        }
        report.client_runs = loadgen_vs_wrk(&bench, &client_targets, wrk_bin.as_deref(), rounds)?;
        report.wrk_missing = wrk_bin.is_none().then(|| wrk_missing.to_string());
        report.client_targets = client_skipped;
    }

    // Stop everything before the next scenario: the peers' Drop sends SIGTERM and waits.
    drop(nginx);
    drop(haproxy);
    drop(lb);
    drop(backends);
    Ok(())
}

/// lb's peak: the best of its medians over the closed-loop load points with more than one
/// connection (0 if it served nothing).
fn lb_peak(runs: &[ProxyRun]) -> f64 {
    CONNECTIONS
        .iter()
        .filter(|&&c| c > 1)
        .filter_map(|&connections| {
            let rps: Vec<f64> = runs
                .iter()
                .filter(|r| r.scenario == "lb" && r.load == Load::Closed { connections })
                .map(|r| r.measured.requests_per_sec)
                .collect();
            report::median(&rps)
        })
        .fold(0.0, f64::max)
}

/// A server both load generators are pointed at.
struct ClientTarget {
    name: &'static str,
    url: String,
    /// The server's pid when it is not one of the backends (for the "other load" figure).
    server_pid: Option<u32>,
}

/// loadgen and wrk in turn against each target, the same connections and duration; which tool
/// goes first alternates every round, so neither always runs right after the other.
fn loadgen_vs_wrk(
    bench: &Bench,
    targets: &[ClientTarget],
    wrk: Option<&Path>,
    rounds: u32,
) -> Result<Vec<ClientRun>> {
    let mut runs = Vec::new();
    for round in 0..rounds {
        for target in targets {
            let mut tools = ["loadgen", "wrk"];
            if round % 2 == 1 {
                tools.reverse();
            }
            for tool in tools {
                let other = bench.other_load(target.server_pid);
                let measured = match (tool, wrk) {
                    ("loadgen", _) => {
                        let load = Load::Closed {
                            connections: OPEN_CONNECTIONS,
                        };
                        // One thread, as `wrk -t1`: the same means, so CPU per request compares.
                        client::loadgen(
                            &bench.loadgen,
                            &target.url,
                            load,
                            bench.duration,
                            Some(1),
                            &[],
                        )?
                    }
                    (_, Some(wrk)) => {
                        client::wrk(wrk, &target.url, OPEN_CONNECTIONS, bench.duration)?
                    }
                    (_, None) => continue,
                };
                let other_load = other.and_then(|o| o.finish(measured.client_cpu, bench.hz));
                println!(
                    "    round {}/{rounds}  {:<18} {tool:<8} {:>9.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  client CPU {:>5.1} µs/req  other load {:>3.0}%",
                    round + 1,
                    target.name,
                    measured.requests_per_sec,
                    measured.p50_us,
                    measured.p99_us,
                    measured.client_cpu.as_secs_f64() * 1e6 / measured.responses.max(1) as f64,
                    other_load.unwrap_or(0.0) * 100.0,
                );
                runs.push(ClientRun {
                    round,
                    target: target.name,
                    tool,
                    connections: OPEN_CONNECTIONS,
                    measured,
                    other_load,
                });
            }
        }
    }
    Ok(runs)
}

/// Print the markdown report and write it into `target/bench/` with the raw JSON and the HTML
/// report of every loadgen run.
fn write_report(report: &Report, started: Instant) -> Result<()> {
    let markdown = report.markdown();
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let md_path = dir.join("report.md");
    let json_path = dir.join("report.json");
    std::fs::write(&md_path, &markdown)
        .with_context(|| format!("writing {}", md_path.display()))?;
    let json = serde_json::json!({ "report": report, "targets": report.targets() });
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let runs = html::runs(report);
    let html_path = html::write(&dir, &report.command, &runs)?;
    println!("\n{markdown}");
    println!(
        "Written to {} and {} in {:.0?}.\nCharts of the {} loadgen runs: {} (each run's report in {}).",
        md_path.display(),
        json_path.display(),
        started.elapsed(),
        runs.len(),
        html_path.display(),
        dir.join("runs").display(),
    );
    Ok(())
}

/// What `--quick` asserts: every scenario that could run did, got responses, and lb made no errors.
fn everything_ran(report: &Report) -> Vec<String> {
    let mut problems = Vec::new();
    for (scenario, missing) in &report.scenarios {
        if missing.is_some() {
            continue;
        }
        for load in &report.loads {
            let runs: Vec<&ProxyRun> = report
                .proxy_runs
                .iter()
                .filter(|r| r.scenario == *scenario && r.load == *load)
                .collect();
            if runs.is_empty() {
                problems.push(format!("{scenario} did not run at {}", load.label()));
            }
            for r in runs {
                if r.measured.responses == 0 {
                    problems.push(format!("{scenario} got no responses at {}", load.label()));
                }
                if *scenario == "lb" && r.measured.errors > 0 {
                    problems.push(format!(
                        "lb had {} errors at {} (round {})",
                        r.measured.errors,
                        load.label(),
                        r.round + 1
                    ));
                }
            }
        }
    }
    if !report.loads.is_empty() && !report.loads.iter().any(|l| matches!(l, Load::Open { .. })) {
        problems.push("the open loop did not run".into());
    }
    if let Some(slow) = &report.slow_backend {
        problems.extend(slow_backend_ran(slow));
    }
    if let Some(admin) = &report.admin {
        problems.extend(admin.problems());
    }
    if let Some(tls) = &report.tls {
        problems.extend(tls.problems());
    }
    if let Some(idle) = &report.idle {
        problems.extend(idle.problems());
    }
    for r in &report.client_runs {
        if r.measured.responses == 0 {
            problems.push(format!("{} got no responses from {}", r.tool, r.target));
        }
    }
    problems
}

/// What `--quick` asserts of the slow-backend scenario: every row that could run did and got
/// responses, lb's rows had no errors, and round robin sent the slow backend about a third of the
/// requests (as it must, whatever the timing: otherwise the shares are not being counted).
fn slow_backend_ran(slow: &report::SlowBackend) -> Vec<String> {
    let mut problems = Vec::new();
    for row in slow.rows.iter().filter(|r| r.missing.is_none()) {
        let name = row.scenario;
        let runs: Vec<&ProxyRun> = slow.runs.iter().filter(|r| r.scenario == name).collect();
        if runs.is_empty() {
            problems.push(format!("{name} did not run (one slow backend)"));
        }
        for r in runs {
            if r.measured.responses == 0 {
                problems.push(format!("{name} got no responses (one slow backend)"));
            }
            if row.proxy == "lb" && r.measured.errors > 0 {
                problems.push(format!(
                    "{name} had {} errors (one slow backend, round {})",
                    r.measured.errors,
                    r.round + 1
                ));
            }
        }
    }
    match slow.summary("lb round-robin").and_then(|(_, share)| share) {
        Some(share) if (0.25..=0.42).contains(&share) => {}
        Some(share) => problems.push(format!(
            "lb round-robin sent the slow backend {:.1}% of the requests, not about a third: \
             is loadgen counting X-Served-By?",
            share * 100.0
        )),
        None => problems.push("no share measured for lb round-robin (one slow backend)".into()),
    }
    problems
}

/// `$CARGO_TARGET_DIR`, or `target/` at the workspace root.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || tests::project_root().join("target"),
        |dir| {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                tests::project_root().join(dir)
            }
        },
    )
}

/// Print one step of the run.
fn step(text: &str) {
    println!("\n==> {text}");
}
