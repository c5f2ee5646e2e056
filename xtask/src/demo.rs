//! `cargo xtask demo`: the Mongoose article's walkthrough, run for you and checked.
//!
//! The article starts two `restful_server`s on ports 8910 and 8911, a `load_balancer` on 8000,
//! and shows that requests alternate between the backends in the balancer's log. This task does
//! exactly that with our binaries, narrating each step, then *checks* it: the log lines must
//! alternate 8910, 8911, 8910, ... and each response's `X-Served-By` must name the backend its log
//! line names.
//!
//! The article ends where "more advanced load balancers keep track of the load of the backends".
//! `cargo xtask demo --balance least-conn --slow 8911` goes there: backend 8911 answers 50 ms late
//! (`restful-server --delay 50ms`), lb balances with `--balance least-conn`, and after the same
//! walkthrough a second step sends from several clients at once and shows each backend's share:
//! the slow one gets far less than its half. With `--balance round-robin` the same step shows
//! the textbook failure instead: half of the requests still go to the slow backend. Without
//! either flag the demo is the article's, unchanged.
//!
//! `--keep-running` leaves the servers up afterwards and starts lb with `--admin 8001` too, so
//! that lb's live status page (docs/admin.md) can be watched beside the demo page while you send
//! traffic of your own.

use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tests::{build_binaries, port_is_taken, start_backend, start_lb, Proc};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many requests to send through the balancer.
    #[arg(short = 'n', long, default_value_t = 10)]
    requests: u64,
    /// The balancer's port.
    #[arg(long, default_value_t = 8000)]
    lb_port: u16,
    /// The two backends' ports, comma-separated.
    #[arg(long, default_value = "8910,8911", value_delimiter = ',', num_args = 1..)]
    backend_ports: Vec<u16>,
    /// Leave the three servers running afterwards (open the page in a browser), lb with its live
    /// status page on `--admin-port`; Ctrl-C stops them.
    #[arg(long)]
    keep_running: bool,
    /// With --keep-running: the port of lb's live status page (`lb --admin`).
    #[arg(long, default_value_t = 8001)]
    admin_port: u16,
    /// Build and run optimized binaries.
    #[arg(long)]
    release: bool,
    /// Start lb with `--balance STRATEGY` (e.g. least-conn, p2c, ewma, round-robin), then also
    /// send from several clients at once and show each backend's share.
    #[arg(long, value_name = "STRATEGY")]
    balance: Option<String>,
    /// Slow this backend down (`restful-server --delay 50ms`), then also send from several
    /// clients at once and show how its share shifts.
    #[arg(long, value_name = "PORT")]
    slow: Option<u16>,
}

/// The slow backend's `--delay` (`--slow`). Least-conn keeps about as many requests in flight on
/// each backend, so the slow one's share is about the fast one's latency over the sum of both:
/// 50 ms keeps that share small even for the debug build on a busy machine, where a fast answer
/// under load can take 5 ms.
const SLOW_DELAY: &str = "50ms";

/// The concurrent step of `--balance` / `--slow`: this many clients at once...
const CONCURRENT_CONNECTIONS: usize = 8;
/// ... sending this many requests in all.
const CONCURRENT_REQUESTS: u64 = 400;

impl Args {
    /// `--balance` or `--slow` was given: the demo goes past the article.
    fn shows_balancing(&self) -> bool {
        self.balance.is_some() || self.slow.is_some()
    }

    /// The strategy lb runs: the one given, or lb's default.
    fn strategy(&self) -> &str {
        self.balance.as_deref().unwrap_or("round-robin")
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    if args.backend_ports.is_empty() {
        bail!("--backend-ports needs at least one port, e.g. --backend-ports 8910,8911");
    }
    if let Some(slow) = args.slow {
        if !args.backend_ports.contains(&slow) {
            bail!(
                "--slow {slow} is not one of the backends' ports ({}): use one of them, e.g. --slow {}",
                join(&args.backend_ports),
                args.backend_ports.last().copied().unwrap_or(8911)
            );
        }
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    // Ctrl-C: return from `run` so that every `Proc` guard is dropped and kills its child.
    let (interrupt_tx, interrupt_rx) = mpsc::channel::<()>();
    runtime.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = interrupt_tx.send(());
        }
    });

    // The admin listener only runs with --keep-running: the plain demo needs no more free ports
    // than the article's three.
    let admin_port = args.keep_running.then_some(args.admin_port);
    for port in args
        .backend_ports
        .iter()
        .chain([&args.lb_port])
        .chain(&admin_port)
    {
        if port_is_taken(*port) {
            bail!(
                "port {port} on 127.0.0.1 is already taken (another demo or server running?): stop it, or choose \
                 other ports with --lb-port PORT / --backend-ports PORT,PORT / --admin-port PORT"
            );
        }
    }

    step("Build the balancer and the demo backend (cargo build --bins).");
    let bins = build_binaries(args.release)?;

    let mut backends: Vec<Proc> = Vec::new();
    let mut lb_args = vec![
        "-p".to_string(),
        args.lb_port.to_string(),
        "-l".into(),
        "-".into(),
    ];
    if let Some(strategy) = &args.balance {
        lb_args.extend(["--balance".into(), strategy.clone()]);
    }
    if let Some(port) = admin_port {
        lb_args.extend(["--admin".into(), port.to_string()]);
    }
    for (n, port) in args.backend_ports.iter().enumerate() {
        let port_text = port.to_string();
        let slow = args.slow == Some(*port);
        let mut backend_args = vec!["-p", &port_text];
        if slow {
            backend_args.extend(["--delay", SLOW_DELAY]);
        }
        let (proc, addr) = start_backend(&bins.join("restful-server"), &backend_args)?;
        let slowed = if slow {
            format!(", {SLOW_DELAY} late (`--delay {SLOW_DELAY}`): the slow one")
        } else {
            String::new()
        };
        step(&format!(
            "Terminal {}: `{}` — a demo backend; it answers every request with `X-Served-By: {addr}`{slowed}.",
            n + 1,
            proc.command()
        ));
        backends.push(proc);
        lb_args.extend(["-b".into(), "/".into(), format!("127.0.0.1:{port}")]);
    }
    let lb_args: Vec<&str> = lb_args.iter().map(String::as_str).collect();
    let (mut lb, lb_addr) = start_lb(&bins.join("lb"), &lb_args)?;
    // lb prints `Admin on http://127.0.0.1:8001/` right after `Starting LB on ...`.
    let admin_url = match admin_port {
        Some(_) => {
            let line = lb.wait_stderr("Admin on ", Duration::from_secs(5))?;
            line.split_once("Admin on ")
                .map(|(_, url)| url.trim().to_string())
        }
        None => None,
    };
    let how = match &args.balance {
        None => "every `-b / HOST:PORT` joins the rotation for prefix `/`".to_string(),
        Some(strategy) => format!(
            "every `-b / HOST:PORT` joins the group for prefix `/`, and `--balance {strategy}` chooses \
             among them: {}",
            describe(strategy)
        ),
    };
    let admin = if admin_port.is_some() {
        "; `--admin` serves lb's live status page"
    } else {
        ""
    };
    step(&format!(
        "Terminal {}: `{}` — {how}; `-l -` prints one log line per request on stdout{admin}.",
        backends.len() + 1,
        lb.command()
    ));
    for line in lb.stderr_lines() {
        println!("    {line}");
    }

    step(&format!("Send {} requests to http://{lb_addr}/, one after another, like running curl again and again:", args.requests));
    let url = format!("http://{lb_addr}/");
    let mut plan = loadgen::Plan::new(&url).context("building the load plan")?;
    plan.requests = Some(args.requests);
    plan.connections = 1;
    plan.keepalive = false;
    plan.keep_samples = args.requests as usize;
    plan.progress = false;
    let report = runtime
        .block_on(loadgen::run(plan))
        .context("sending the requests")?;

    // lb writes its line when each response is complete; collect them, echoing them verbatim.
    let mut log = Vec::new();
    while (log.len() as u64) < args.requests {
        if interrupt_rx.try_recv().is_ok() {
            bail!("interrupted");
        }
        match lb.next_stdout(Duration::from_secs(5)) {
            Some(line) => {
                println!("{line}");
                log.push(line);
            }
            None => break,
        }
    }

    // Strict turns are what round robin promises; other strategies may choose otherwise even for
    // one client at a time (p2c draws at random, ewma prefers the backend that answered faster).
    let alternates = args.strategy() == "round-robin";
    let verdict = check(&args, alternates, &log, &report);
    print_table(&log, &report);
    let verdict = if args.shows_balancing() {
        verdict.and_then(|()| {
            let concurrent = send_concurrently(&args, &runtime, &url, &mut lb, &interrupt_rx)?;
            print_shares(&args, &concurrent);
            judge_shift(&args, &concurrent)
        })
    } else {
        verdict.map(|()| {
            format!(
                "{} requests alternated between {} backends, and every X-Served-By matches its log line.",
                args.requests,
                args.backend_ports.len()
            )
        })
    };
    match &verdict {
        Ok(summary) => println!("\nVerdict: PASS — {summary}"),
        Err(e) => println!("\nVerdict: FAIL — {e}"),
    }

    if args.keep_running {
        let admin = admin_url.map_or_else(String::new, |url| {
            format!(
                ", and {url} for lb's live status page (each backend's share, latency and state, \
                 updated every second)"
            )
        });
        step(&format!(
            "Still running: open http://{lb_addr}/ in a browser and reload it to watch the backends take \
             turns{admin}. Ctrl-C stops all three."
        ));
        let _ = interrupt_rx.recv();
        while let Some(line) = lb.next_stdout(Duration::from_millis(10)) {
            println!("{line}");
        }
    }
    drop(lb);
    drop(backends);
    Ok(if verdict.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Print one narrated step, as the article walks through them.
fn step(text: &str) {
    println!("\n==> {text}");
}

/// The backend named at the end of a log line (`... backend=127.0.0.1:8910`).
fn logged_backend(line: &str) -> &str {
    line.rsplit_once("backend=").map_or("", |(_, b)| b)
}

/// Strict alternation in the log (if `alternates`), and agreement between each log line and its
/// response.
fn check(args: &Args, alternates: bool, log: &[String], report: &loadgen::Report) -> Result<()> {
    let expected: Vec<String> = (0..args.requests as usize)
        .map(|i| {
            format!(
                "127.0.0.1:{}",
                args.backend_ports[i % args.backend_ports.len()]
            )
        })
        .collect();
    let actual: Vec<&str> = log.iter().map(|l| logged_backend(l)).collect();
    if alternates && actual != expected {
        bail!(
            "the log does not alternate.\n  expected: {}\n  actual:   {}",
            expected.join(" "),
            actual.join(" ")
        );
    }
    for (i, (line, sample)) in log.iter().zip(&report.samples).enumerate() {
        let served_by = sample.backend.as_deref().unwrap_or("(no X-Served-By)");
        if served_by != logged_backend(line) {
            bail!(
                "request {}: lb logged backend={} but the response says X-Served-By: {served_by}",
                i + 1,
                logged_backend(line)
            );
        }
        if sample.status != Some(200) {
            bail!("request {} got {:?}, expected 200", i + 1, sample.status);
        }
    }
    if report.samples.len() != log.len() {
        bail!(
            "{} responses but {} log lines",
            report.samples.len(),
            log.len()
        );
    }
    Ok(())
}

fn print_table(log: &[String], report: &loadgen::Report) {
    println!("\n  request  backend (lb log)   X-Served-By        status  latency");
    for (i, sample) in report.samples.iter().enumerate() {
        let logged = log.get(i).map_or("(no log line)", |l| logged_backend(l));
        println!(
            "  {:>7}  {:<17}  {:<17}  {:>6}  {:>7.2}ms",
            i + 1,
            logged,
            sample.backend.as_deref().unwrap_or("-"),
            sample
                .status
                .map_or_else(|| "error".to_string(), |s| s.to_string()),
            sample.latency.as_secs_f64() * 1e3
        );
    }
}

/// One sentence on how `strategy` chooses, for the narration.
fn describe(strategy: &str) -> &'static str {
    match strategy {
        "round-robin" => "strict turns, whatever each backend's speed or load",
        "least-conn" => {
            "each request goes to the backend with the fewest requests in flight (ties take turns)"
        }
        "p2c" => "two backends drawn at random, the one with fewer requests in flight wins",
        "ewma" => {
            "each backend's recent latency times its requests in flight, the cheaper of two random draws"
        }
        s if s.starts_with("hash:") => "the same key always goes to the same backend",
        _ => "see `lb --help`",
    }
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// What the concurrent step saw: loadgen's report and, per backend, lb's log lines.
struct Concurrent {
    report: loadgen::Report,
    /// `(backend, log lines naming it)`, in the order of `--backend-ports`.
    logged: Vec<(String, u64)>,
}

impl Concurrent {
    /// Responses that said `X-Served-By: backend`.
    fn served(&self, backend: &str) -> u64 {
        self.report
            .backends
            .iter()
            .filter(|b| b.name == backend)
            .map(|b| b.responses)
            .sum()
    }

    fn share(&self, backend: &str) -> f64 {
        self.served(backend) as f64 / self.report.responses.max(1) as f64
    }
}

/// The step past the article: several clients at once, so that requests are in flight together
/// and a load-aware strategy has something to count. lb's log lines are collected, not echoed.
fn send_concurrently(
    args: &Args,
    runtime: &tokio::runtime::Runtime,
    url: &str,
    lb: &mut Proc,
    interrupt: &mpsc::Receiver<()>,
) -> Result<Concurrent> {
    step(&format!(
        "Now {CONCURRENT_CONNECTIONS} clients at once, {CONCURRENT_REQUESTS} requests in all, as \
         `loadgen {url} -n {CONCURRENT_REQUESTS} -c {CONCURRENT_CONNECTIONS}` would send them. One client at a time \
         never has two requests in flight, so every strategy sees idle backends; {CONCURRENT_CONNECTIONS} \
         clients do, and a backend that is slow holds on to its requests longer."
    ));
    let mut plan = loadgen::Plan::new(url).context("building the load plan")?;
    plan.requests = Some(CONCURRENT_REQUESTS);
    plan.connections = CONCURRENT_CONNECTIONS;
    plan.keep_samples = 0;
    plan.progress = false;
    let report = runtime
        .block_on(loadgen::run(plan))
        .context("sending the concurrent requests")?;

    let mut logged: Vec<(String, u64)> = args
        .backend_ports
        .iter()
        .map(|port| (format!("127.0.0.1:{port}"), 0))
        .collect();
    let mut lines = 0;
    while lines < report.requests {
        if interrupt.try_recv().is_ok() {
            bail!("interrupted");
        }
        let Some(line) = lb.next_stdout(Duration::from_secs(5)) else {
            bail!(
                "lb logged {lines} of the {} concurrent requests",
                report.requests
            );
        };
        lines += 1;
        let backend = logged_backend(&line);
        if let Some((_, count)) = logged.iter_mut().find(|(name, _)| name == backend) {
            *count += 1;
        }
    }
    Ok(Concurrent { report, logged })
}

/// Each backend's share of the concurrent step, from the responses and from lb's log.
fn print_shares(args: &Args, c: &Concurrent) {
    println!(
        "\n  backend            X-Served-By  lb log  share   p50 latency  p99 latency   ({} requests, lb balancing {})",
        c.report.responses,
        args.strategy()
    );
    for (backend, logged) in &c.logged {
        let latency = c.report.backends.iter().find(|b| &b.name == backend);
        let ms = |q| latency.map_or(0.0, |b| b.latency.quantile(q).as_secs_f64() * 1e3);
        let slow = if args
            .slow
            .is_some_and(|port| *backend == format!("127.0.0.1:{port}"))
        {
            format!("   slow: --delay {SLOW_DELAY}")
        } else {
            String::new()
        };
        println!(
            "  {backend:<17}  {:>11}  {logged:>6}  {:>5.1}%  {:>9.2}ms  {:>9.2}ms{slow}",
            c.served(backend),
            c.share(backend) * 100.0,
            ms(0.5),
            ms(0.99),
        );
    }
}

/// The concurrent step's verdict: no errors, lb's log agrees with the responses, and with
/// `--slow` the slow backend's share is what the strategy promises: about its fair share under
/// round robin (which does not look at load), less than half of it under any other strategy.
fn judge_shift(args: &Args, c: &Concurrent) -> Result<String> {
    if c.report.failed_requests() > 0 {
        bail!(
            "{} of the {} concurrent requests failed",
            c.report.failed_requests(),
            c.report.requests
        );
    }
    for (backend, logged) in &c.logged {
        if *logged != c.served(backend) {
            bail!(
                "lb logged {logged} requests for {backend} but {} responses said X-Served-By: {backend}",
                c.served(backend)
            );
        }
    }
    let strategy = args.strategy();
    let Some(port) = args.slow else {
        return Ok(format!(
            "{} clients at once were spread by {strategy} as the table shows, and lb's log agrees with every X-Served-By.",
            CONCURRENT_CONNECTIONS
        ));
    };
    let slow = format!("127.0.0.1:{port}");
    let share = c.share(&slow);
    let fair = 1.0 / args.backend_ports.len() as f64;
    let (pct, fair_pct) = (share * 100.0, fair * 100.0);
    if strategy == "round-robin" {
        if (share - fair).abs() > 0.05 {
            bail!("round robin sent the slow backend {slow} {pct:.1}% of the requests, not its turn's {fair_pct:.0}%");
        }
        return Ok(format!(
            "round robin sent the slow backend {slow} {pct:.1}% of the requests, its {fair_pct:.0}% of turns however slow it \
             is (the textbook failure: try --balance least-conn)."
        ));
    }
    if share >= fair / 2.0 {
        bail!(
            "{strategy} sent the slow backend {slow} {pct:.1}% of the requests: not under half of its fair {fair_pct:.0}%"
        );
    }
    Ok(format!(
        "{strategy} noticed that {slow} is slow: it got {pct:.1}% of the requests from {CONCURRENT_CONNECTIONS} clients \
         at once instead of the {fair_pct:.0}% round robin would send it, and lb's log agrees with every X-Served-By."
    ))
}

// Not `mod tests`: that would hide the `tests` harness crate this file imports from.
#[cfg(test)]
mod verdicts {
    use super::*;
    use loadgen::report::{BackendReport, Latency};

    fn args(balance: Option<&str>, slow: Option<u16>) -> Args {
        Args {
            requests: 6,
            lb_port: 8000,
            backend_ports: vec![8910, 8911],
            keep_running: false,
            admin_port: 8001,
            release: false,
            balance: balance.map(str::to_string),
            slow,
        }
    }

    /// A concurrent step where 8910 served `fast` requests and 8911 `slow`, logged as `logged`.
    fn concurrent(fast: u64, slow: u64, logged: [u64; 2]) -> Concurrent {
        let backend = |name: &str, responses| BackendReport {
            name: name.into(),
            responses,
            share: 0.0,
            latency: Latency::new(),
        };
        let report = loadgen::Report {
            requests: fast + slow,
            responses: fast + slow,
            backends: vec![
                backend("127.0.0.1:8910", fast),
                backend("127.0.0.1:8911", slow),
            ],
            ..Default::default()
        };
        Concurrent {
            report,
            logged: vec![
                ("127.0.0.1:8910".into(), logged[0]),
                ("127.0.0.1:8911".into(), logged[1]),
            ],
        }
    }

    #[test]
    fn a_load_aware_strategy_must_send_the_slow_backend_under_half_its_share() {
        let least_conn = args(Some("least-conn"), Some(8911));
        let shifted = judge_shift(&least_conn, &concurrent(380, 20, [380, 20])).unwrap();
        assert!(shifted.contains("5.0% of the requests"), "{shifted}");
        let not_shifted = judge_shift(&least_conn, &concurrent(260, 140, [260, 140]));
        assert!(not_shifted.unwrap_err().to_string().contains("35.0%"));
    }

    #[test]
    fn round_robin_must_give_the_slow_backend_its_turns() {
        let round_robin = args(None, Some(8911));
        let verdict = judge_shift(&round_robin, &concurrent(200, 200, [200, 200])).unwrap();
        assert!(verdict.contains("textbook failure"), "{verdict}");
        assert!(judge_shift(&round_robin, &concurrent(380, 20, [380, 20])).is_err());
    }

    #[test]
    fn the_log_must_agree_with_the_responses() {
        let verdict = judge_shift(&args(Some("p2c"), None), &concurrent(300, 100, [301, 99]));
        assert!(verdict.unwrap_err().to_string().contains("lb logged 301"));
    }
}
