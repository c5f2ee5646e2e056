//! One measurement round, shared by every scenario of the bench: a load point sent to each way
//! of reaching the backends in turn (starting with a different one each round), with the proxy's
//! CPU and memory and the machine's other load read from `/proc` around each run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::client::{self, Load};
use super::procfs;
use super::report::ProxyRun;

/// One way of reaching the backends.
pub struct Scenario {
    pub name: &'static str,
    /// `None` when it cannot run here (the reason is in `missing`).
    pub url: Option<String>,
    /// The proxy process to charge for CPU and memory (`None` for `direct`).
    pub pid: Option<u32>,
    pub missing: Option<String>,
}

/// What every measurement needs.
#[derive(Clone)]
pub struct Bench {
    pub loadgen: PathBuf,
    pub duration: Duration,
    pub hz: u64,
    /// The backends' pids: their CPU is ours, not "other load".
    pub backend_pids: Vec<u32>,
    /// Given to every loadgen run after the load's own options (`--cacert FILE` for HTTPS).
    pub loadgen_args: Vec<String>,
}

impl Bench {
    /// Start counting what other processes on the machine use while `proxy` (if any) is measured.
    pub fn other_load(&self, proxy: Option<u32>) -> Option<procfs::OtherLoad> {
        let mut pids = self.backend_pids.clone();
        if let Some(pid) = proxy {
            pids.extend(procfs::process_group(pid));
        }
        procfs::OtherLoad::start(pids)
    }
}

/// Where the peers are, or why they are not there (`not installed`, `skipped`).
pub struct PeerBins<'a> {
    pub nginx: Result<&'a Path, &'a str>,
    pub haproxy: Result<&'a Path, &'a str>,
}

/// What a part of the bench that starts its own backends and proxies needs besides the
/// measuring setup ([`Bench`]).
pub struct Plan<'a> {
    /// Where the release binaries are.
    pub bins: &'a Path,
    /// A temporary directory for the peers' configurations.
    pub tmp: &'a Path,
    pub peers: PeerBins<'a>,
    /// nginx workers and HAProxy threads.
    pub cores: usize,
    pub rounds: u32,
    pub warmup: Duration,
}

/// A few requests to every scenario before measuring: fills the proxies' connection pools and
/// faults in their memory, so that the first measured scenario is not the one paying for it.
pub fn warm_up(
    bench: &Bench,
    scenarios: &[&Scenario],
    connections: u32,
    warmup: Duration,
) -> Result<()> {
    for s in scenarios {
        let target = s.url.as_deref().unwrap_or_default();
        let load = Load::Closed { connections };
        client::loadgen(
            &bench.loadgen,
            target,
            load,
            warmup,
            None,
            &bench.loadgen_args,
        )
        .with_context(|| format!("warming up {}", s.name))?;
    }
    Ok(())
}

/// One round of one load point: every runnable scenario in turn, starting at a different one
/// each round. With `watch`, the progress lines also show that backend's share of the responses.
pub fn measure_round(
    bench: &Bench,
    scenarios: &[&Scenario],
    load: Load,
    round: u32,
    rounds: u32,
    watch: Option<&str>,
) -> Result<Vec<ProxyRun>> {
    let mut runs = Vec::new();
    let n = scenarios.len();
    let width = scenarios.iter().map(|s| s.name.len()).fold(8, usize::max);
    for order in 0..n {
        let s = scenarios[(round as usize + order) % n];
        let run = measure(bench, s, load, round, order)?;
        let share = match watch.and_then(|b| Some((b, run.measured.share_of(b)?))) {
            Some((backend, share)) => format!("  {backend} served {:.1}%", share * 100.0),
            None => String::new(),
        };
        println!("{}{share}", progress_line(&run, rounds, width));
        runs.push(run);
    }
    Ok(runs)
}

/// One run of one scenario: loadgen sends `load` for the bench's duration, while the proxy's CPU
/// and memory and the machine's other load are read from `/proc`. `order` is its position in
/// its round.
pub fn measure(
    bench: &Bench,
    s: &Scenario,
    load: Load,
    round: u32,
    order: usize,
) -> Result<ProxyRun> {
    let url = s.url.as_deref().unwrap_or_default();
    let meter = s
        .pid
        .map(|pid| procfs::Meter::start(pid, bench.hz))
        .transpose()
        .with_context(|| format!("reading {}'s CPU time", s.name))?;
    let other = bench.other_load(s.pid);
    let measured = client::loadgen(
        &bench.loadgen,
        url,
        load,
        bench.duration,
        None,
        &bench.loadgen_args,
    )
    .with_context(|| format!("measuring {} at {}", s.name, load.label()))?;
    let other_load = other.and_then(|o| o.finish(measured.client_cpu, bench.hz));
    let proxy = meter
        .map(procfs::Meter::finish)
        .transpose()
        .with_context(|| format!("reading {}'s CPU time", s.name))?;
    Ok(ProxyRun {
        round,
        load,
        scenario: s.name,
        order,
        measured,
        proxy,
        other_load,
    })
}

/// The line printed after each run; `width` aligns the scenario names of one table.
pub fn progress_line(run: &ProxyRun, rounds: u32, width: usize) -> String {
    let m = &run.measured;
    let cpu = run.proxy.map_or_else(
        || "      —".into(),
        |u| {
            format!(
                "{:>7.1}",
                u.cpu().as_secs_f64() * 1e6 / m.responses.max(1) as f64
            )
        },
    );
    // The open loop's own lateness: how far the generator itself was behind its schedule.
    let lateness = m
        .send_lateness_p99_us
        .map(|us| format!("  send lateness p99 {us:.0} µs"))
        .unwrap_or_default();
    format!(
        "    round {}/{rounds}  {:<12} {:<width$} {:>9.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  errors {:>3}  proxy CPU {cpu} µs/req  other load {:>3.0}%{lateness}",
        run.round + 1,
        run.load.label(),
        run.scenario,
        m.requests_per_sec,
        m.p50_us,
        m.p99_us,
        m.errors,
        run.other_load.unwrap_or(0.0) * 100.0,
    )
}
