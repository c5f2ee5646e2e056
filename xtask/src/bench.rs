//! `cargo xtask bench`: lb beside nginx and HAProxy in front of the same two backends, and loadgen
//! beside wrk, measured side by side in one run on loopback.
//!
//! The shape of a run:
//!
//! 1. build the release binaries, start two `restful-server`s, `lb`, and (if installed) nginx and
//!    HAProxy configured as in [`peers`];
//! 2. *closed loop* at 1, 50 and 256 connections: for each round, for each load point, each
//!    scenario (`direct`, `lb`, `nginx`, `haproxy`) in turn, the first one rotating every round so
//!    that no scenario always runs first (or always right after the heaviest one);
//! 3. *open loop* at 70% of lb's measured peak, the same for all scenarios: latency under a load
//!    the proxies can sustain, coordinated omission corrected ([`client::Load::Open`]);
//! 4. loadgen against wrk on the same targets ([`client`] explains how their CPU is measured);
//! 5. medians over rounds and ratios in `target/bench/report.md`, raw runs in `report.json`.
//!
//! The proxy's CPU time and peak memory come from `/proc` ([`procfs`]). Everything runs on the
//! same cores, so only medians and ratios are reported, never one lone absolute number.
//!
//! `--quick` (CI) runs each scenario for a second, once, and only checks that everything ran:
//! every run got responses and lb answered without errors. It makes no timing assertion.

mod client;
mod peers;
mod procfs;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tests::{build_binaries, start_backend, start_lb, Proc};

use client::Load;
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

/// One way of reaching the backends.
struct Scenario {
    name: &'static str,
    /// `None` when it cannot run here (the reason is in `missing`).
    url: Option<String>,
    /// The proxy process to charge for CPU and memory (`None` for `direct`).
    pid: Option<u32>,
    missing: Option<String>,
}

/// What every measurement needs.
struct Bench {
    loadgen: PathBuf,
    duration: Duration,
    hz: u64,
    /// The backends' pids: their CPU is ours, not "other load".
    backend_pids: Vec<u32>,
}

impl Bench {
    /// Start counting what other processes on the machine use while `proxy` (if any) is measured.
    fn other_load(&self, proxy: Option<u32>) -> Option<procfs::OtherLoad> {
        let mut pids = self.backend_pids.clone();
        if let Some(pid) = proxy {
            pids.extend(procfs::process_group(pid));
        }
        procfs::OtherLoad::start(pids)
    }
}

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
    let mut machine = Machine::probe();
    let cores = machine.cores;

    step("Build lb, restful-server and loadgen in release mode.");
    let bins = build_binaries(true)?;
    let mut bench = Bench {
        loadgen: bins.join("loadgen"),
        duration,
        hz: procfs::clock_ticks(),
        backend_pids: Vec::new(),
    };
    let tmp = tempfile::Builder::new()
        .prefix("xtask-bench-")
        .tempdir()
        .context("creating a temporary directory for the peers' configurations")?;

    step("Start two backends, lb, and the peers that are installed.");
    let mut backends: Vec<Proc> = Vec::new();
    let mut backend_addrs: Vec<SocketAddr> = Vec::new();
    for _ in 0..2 {
        let (proc, addr) = start_backend(&bins.join("restful-server"), &["-p", "0"])?;
        println!("    backend  {addr}  ({})", proc.command());
        bench.backend_pids.push(proc.pid());
        backends.push(proc);
        backend_addrs.push(addr);
    }
    let mut lb_args = vec!["-p".to_string(), "0".into()];
    for addr in &backend_addrs {
        lb_args.extend(["-b".into(), "/".into(), addr.to_string()]);
    }
    let lb_args: Vec<&str> = lb_args.iter().map(String::as_str).collect();
    let (lb, lb_addr) = start_lb(&bins.join("lb"), &lb_args)?;
    println!("    lb       {lb_addr}  ({})", lb.command());

    let find = |peer: PeerName, program: &str| -> (Option<PathBuf>, &'static str) {
        match peers::find(program) {
            _ if args.skip.contains(&peer) => (None, "skipped"),
            Some(path) => (Some(path), ""),
            None => (None, "not installed"),
        }
    };
    let (nginx_bin, nginx_missing) = find(PeerName::Nginx, "nginx");
    let (haproxy_bin, haproxy_missing) = find(PeerName::Haproxy, "haproxy");
    let (wrk_bin, wrk_missing) = find(PeerName::Wrk, "wrk");
    for (name, bin, missing) in [
        ("nginx", &nginx_bin, nginx_missing),
        ("haproxy", &haproxy_bin, haproxy_missing),
        ("wrk", &wrk_bin, wrk_missing),
    ] {
        let version = bin
            .as_deref()
            .map_or_else(|| missing.to_string(), peers::version);
        machine.versions.push((name.into(), version));
    }
    let nginx = nginx_bin
        .map(|bin| peers::start_nginx(&bin, tmp.path(), &backend_addrs, cores))
        .transpose()
        .context("starting nginx (fix its installation, or leave it out with --skip nginx)")?;
    let haproxy = haproxy_bin
        .map(|bin| peers::start_haproxy(&bin, tmp.path(), &backend_addrs, cores))
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

    // Warm up: fill the proxies' connection pools and fault in their memory before measuring.
    let warmup = if args.quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(1)
    };
    step(&format!("Warm up every scenario for {warmup:?}."));
    warm_up(&bench, &runnable, warmup)?;

    let mut proxy_runs: Vec<ProxyRun> = Vec::new();
    let mut loads: Vec<Load> = CONNECTIONS
        .iter()
        .map(|&connections| Load::Closed { connections })
        .collect();
    step(&format!(
        "Closed loop at {} connections: {rounds} round(s) of {duration:?} per scenario.",
        CONNECTIONS.map(|c| c.to_string()).join(", ")
    ));
    for round in 0..rounds {
        for load in &loads {
            proxy_runs.extend(measure_round(&bench, &runnable, *load, round, rounds)?);
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
            proxy_runs.extend(measure_round(&bench, &runnable, open, round, rounds)?);
        }
        loads.push(open);
    } else {
        println!(
            "    skipped: lb served nothing in the closed loop, so there is no peak to take 70% of"
        );
    }

    step(&format!(
        "loadgen against wrk: {OPEN_CONNECTIONS} connections, {duration:?}, on the same targets."
    ));
    let mut client_targets = vec![ClientTarget {
        name: "direct backend",
        url: url(backend_addrs[0]),
        server_pid: None,
    }];
    let mut client_skipped: Vec<(&'static str, Option<String>)> = vec![("direct backend", None)];
    match nginx.as_ref().and_then(|n| Some((n.static_addr?, n.pid()))) {
        Some((addr, pid)) => {
            client_targets.push(ClientTarget {
                name: "nginx static file",
                url: url(addr),
                server_pid: Some(pid),
            });
            client_skipped.push(("nginx static file", None));
        }
        None => client_skipped.push(("nginx static file", Some(format!("nginx {nginx_missing}")))),
    }
    let client_runs = loadgen_vs_wrk(&bench, &client_targets, wrk_bin.as_deref(), rounds)?;
    let wrk_missing = wrk_bin.is_none().then(|| wrk_missing.to_string());

    // Stop everything before writing: the peers' Drop sends SIGTERM and waits.
    drop(nginx);
    drop(haproxy);
    drop(lb);
    drop(backends);
    machine.load_average_after = procfs::load_average();

    let report = Report {
        machine,
        quick: args.quick,
        rounds,
        duration,
        scenarios: scenarios
            .iter()
            .map(|s| (s.name, s.missing.clone()))
            .collect(),
        loads,
        wrk_missing,
        client_targets: client_skipped,
        proxy_runs,
        client_runs,
    };
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

/// A few requests to every scenario before measuring: fills the proxies' connection pools and
/// faults in their memory, so that the first measured scenario is not the one paying for it.
fn warm_up(bench: &Bench, scenarios: &[&Scenario], warmup: Duration) -> Result<()> {
    for s in scenarios {
        let target = s.url.as_deref().unwrap_or_default();
        let load = Load::Closed {
            connections: OPEN_CONNECTIONS,
        };
        client::loadgen(&bench.loadgen, target, load, warmup, None)
            .with_context(|| format!("warming up {}", s.name))?;
    }
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
                        client::loadgen(&bench.loadgen, &target.url, load, bench.duration, Some(1))?
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

/// Print the markdown report and write it with the raw JSON into `target/bench/`.
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
    println!("\n{markdown}");
    println!(
        "Written to {} and {} in {:.0?}.",
        md_path.display(),
        json_path.display(),
        started.elapsed()
    );
    Ok(())
}

/// One round of one load point: every runnable scenario in turn, starting at a different one
/// each round.
fn measure_round(
    bench: &Bench,
    scenarios: &[&Scenario],
    load: Load,
    round: u32,
    rounds: u32,
) -> Result<Vec<ProxyRun>> {
    let mut runs = Vec::new();
    let n = scenarios.len();
    for order in 0..n {
        let s = scenarios[(round as usize + order) % n];
        let url = s.url.as_deref().unwrap_or_default();
        let meter = s
            .pid
            .map(|pid| procfs::Meter::start(pid, bench.hz))
            .transpose()
            .with_context(|| format!("reading {}'s CPU time", s.name))?;
        let other = bench.other_load(s.pid);
        let measured = client::loadgen(&bench.loadgen, url, load, bench.duration, None)
            .with_context(|| format!("measuring {} at {}", s.name, load.label()))?;
        let other_load = other.and_then(|o| o.finish(measured.client_cpu, bench.hz));
        let proxy = meter
            .map(procfs::Meter::finish)
            .transpose()
            .with_context(|| format!("reading {}'s CPU time", s.name))?;
        let cpu = proxy.map_or_else(
            || "      —".into(),
            |u| {
                format!(
                    "{:>7.1}",
                    u.cpu.as_secs_f64() * 1e6 / measured.responses.max(1) as f64
                )
            },
        );
        println!(
            "    round {}/{rounds}  {:<12} {:<8} {:>9.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  errors {:>3}  proxy CPU {cpu} µs/req  other load {:>3.0}%",
            round + 1,
            load.label(),
            s.name,
            measured.requests_per_sec,
            measured.p50_us,
            measured.p99_us,
            measured.errors,
            other_load.unwrap_or(0.0) * 100.0,
        );
        runs.push(ProxyRun {
            round,
            load,
            scenario: s.name,
            order,
            measured,
            proxy,
            other_load,
        });
    }
    Ok(runs)
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
    if !report.loads.iter().any(|l| matches!(l, Load::Open { .. })) {
        problems.push("the open loop did not run".into());
    }
    for r in &report.client_runs {
        if r.measured.responses == 0 {
            problems.push(format!("{} got no responses from {}", r.tool, r.target));
        }
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
