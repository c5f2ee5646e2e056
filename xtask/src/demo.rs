//! `cargo xtask demo`: the Mongoose article's walkthrough, run for you and checked.
//!
//! The article starts two `restful_server`s on ports 8910 and 8911, a `load_balancer` on 8000,
//! and shows that requests alternate between the backends in the balancer's log. This task does
//! exactly that with our binaries, narrating each step, then *checks* it: the log lines must
//! alternate 8910, 8911, 8910, ... and each response's `X-Served-By` must name the backend its log
//! line names.

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
    /// Leave the three servers running afterwards (open the page in a browser); Ctrl-C stops them.
    #[arg(long)]
    keep_running: bool,
    /// Build and run optimized binaries.
    #[arg(long)]
    release: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    if args.backend_ports.is_empty() {
        bail!("--backend-ports needs at least one port, e.g. --backend-ports 8910,8911");
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    // Ctrl-C: return from `run` so that every `Proc` guard is dropped and kills its child.
    let (interrupt_tx, interrupt_rx) = mpsc::channel::<()>();
    runtime.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = interrupt_tx.send(());
        }
    });

    for port in args.backend_ports.iter().chain([&args.lb_port]) {
        if port_is_taken(*port) {
            bail!(
                "port {port} on 127.0.0.1 is already taken (another demo or server running?): stop it, or choose \
                 other ports with --lb-port PORT / --backend-ports PORT,PORT"
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
    for (n, port) in args.backend_ports.iter().enumerate() {
        let port_text = port.to_string();
        let (proc, addr) = start_backend(&bins.join("restful-server"), &["-p", &port_text])?;
        step(&format!(
            "Terminal {}: `{}` — a demo backend; it answers every request with `X-Served-By: {addr}`.",
            n + 1,
            proc.command()
        ));
        backends.push(proc);
        lb_args.extend(["-b".into(), "/".into(), format!("127.0.0.1:{port}")]);
    }
    let lb_args: Vec<&str> = lb_args.iter().map(String::as_str).collect();
    let (mut lb, lb_addr) = start_lb(&bins.join("lb"), &lb_args)?;
    step(&format!(
        "Terminal {}: `{}` — every `-b / HOST:PORT` joins the rotation for prefix `/`; `-l -` prints one log line \
         per request on stdout.",
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

    let verdict = check(&args, &log, &report);
    print_table(&log, &report);
    match &verdict {
        Ok(()) => println!(
            "\nVerdict: PASS — {} requests alternated between {} backends, and every X-Served-By matches its log line.",
            args.requests,
            args.backend_ports.len()
        ),
        Err(e) => println!("\nVerdict: FAIL — {e}"),
    }

    if args.keep_running {
        step(&format!("Still running: open http://{lb_addr}/ in a browser and reload it to watch the backends take turns. Ctrl-C stops all three."));
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

/// Strict alternation in the log, and agreement between each log line and its response.
fn check(args: &Args, log: &[String], report: &loadgen::Report) -> Result<()> {
    let expected: Vec<String> = (0..args.requests as usize)
        .map(|i| {
            format!(
                "127.0.0.1:{}",
                args.backend_ports[i % args.backend_ports.len()]
            )
        })
        .collect();
    let actual: Vec<&str> = log.iter().map(|l| logged_backend(l)).collect();
    if actual != expected {
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
