//! The "one slow backend" scenario: why a balancer should look at its backends' load.
//!
//! Three restful-servers, the first started with `--delay 20ms`, the other two answering at once;
//! in front of the same three, lb with each of its strategies (`--balance round-robin`,
//! `least-conn`, `p2c`, `ewma`), nginx with `least_conn` and `random two least_conn`, and HAProxy
//! with `balance leastconn` and `balance random(2)`. loadgen sends through each in turn with 32
//! closed-loop connections; the report gives req/s, p50/p99 and the share of the responses that
//! came from the slow backend (loadgen counts them by `X-Served-By`, where restful-server puts its
//! address).
//!
//! The slow backend is listed first everywhere. A least-connections balancer that breaks ties by
//! taking the first backend (a classic bug) sends it every request that finds all backends idle;
//! listed first, that shows as a large share instead of hiding.
//!
//! lb's strategies are read from its `--help`: an lb without `--balance` runs the round-robin row
//! only (its default), and the other rows say why they did not run.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use tests::{start_backend, start_lb, Proc};

use super::client::Load;
use super::measure::{measure_round, warm_up, Bench, Plan, Scenario};
use super::peers::{self, Peer};
use super::report::{SlowBackend, SlowRow};

/// The slow backend's `--delay`: about a hundred times what a fast backend takes through a proxy
/// on loopback, so that every request sent its way is plainly visible in the latency.
pub const DELAY: &str = "20ms";
const DELAY_DURATION: Duration = Duration::from_millis(20);

/// Closed-loop connections: enough that requests pile up on the slow backend under round robin
/// (a third of 32 waiting on it at any time), few enough to leave the two cores to the proxies.
pub const CONNECTIONS: u32 = 32;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proxy {
    Lb,
    Nginx,
    Haproxy,
}

/// One row of the table: a proxy and the balancing it is configured with.
struct Contender {
    scenario: &'static str,
    proxy: Proxy,
    /// lb: the `--balance` value; nginx: the upstream directive; HAProxy: the `balance` algorithm.
    balance: &'static str,
    load_aware: bool,
}

const CONTENDERS: [Contender; 8] = [
    lb("lb round-robin", "round-robin", false),
    lb("lb least-conn", "least-conn", true),
    lb("lb p2c", "p2c", true),
    lb("lb ewma", "ewma", true),
    Contender {
        scenario: "nginx least_conn",
        proxy: Proxy::Nginx,
        balance: "least_conn",
        load_aware: true,
    },
    Contender {
        scenario: "nginx random two least_conn",
        proxy: Proxy::Nginx,
        balance: "random two least_conn",
        load_aware: true,
    },
    Contender {
        scenario: "haproxy leastconn",
        proxy: Proxy::Haproxy,
        balance: "leastconn",
        load_aware: true,
    },
    Contender {
        scenario: "haproxy random(2)",
        proxy: Proxy::Haproxy,
        balance: "random(2)",
        load_aware: true,
    },
];

const fn lb(scenario: &'static str, balance: &'static str, load_aware: bool) -> Contender {
    Contender {
        scenario,
        proxy: Proxy::Lb,
        balance,
        load_aware,
    }
}

impl Contender {
    fn proxy_name(&self) -> &'static str {
        match self.proxy {
            Proxy::Lb => "lb",
            Proxy::Nginx => "nginx",
            Proxy::Haproxy => "haproxy",
        }
    }

    /// How the table shows its configuration.
    fn configuration(&self, lb_has_balance: bool) -> String {
        match self.proxy {
            Proxy::Lb if lb_has_balance => format!("--balance {}", self.balance),
            Proxy::Lb => "(no --balance: round robin)".into(),
            Proxy::Nginx => format!("{};", self.balance),
            Proxy::Haproxy => format!("balance {}", self.balance),
        }
    }
}

/// Start the three backends and every proxy that can run here, measure them in rounds, stop
/// them all, and return what was measured.
pub fn run(bench: &Bench, plan: &Plan) -> Result<SlowBackend> {
    // Every process below is stopped when these vectors are dropped at the end of this function.
    let mut backends: Vec<Proc> = Vec::new();
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for n in 0..3 {
        let delay: &[&str] = if n == 0 { &["--delay", DELAY] } else { &[] };
        let args: Vec<&str> = ["-p", "0"].iter().chain(delay).copied().collect();
        let (proc, addr) = start_backend(&plan.bins.join("restful-server"), &args)?;
        println!("    backend  {addr}  ({})", proc.command());
        backends.push(proc);
        addrs.push(addr);
    }
    let bench = Bench {
        backend_pids: backends.iter().map(Proc::pid).collect(),
        ..bench.clone()
    };

    let lb_bin = plan.bins.join("lb");
    let lb_help = lb_help(&lb_bin);
    let lb_has_balance = lb_help.contains("--balance");
    let mut lbs: Vec<Proc> = Vec::new();
    let mut peers: Vec<Peer> = Vec::new();
    let mut scenarios: Vec<Scenario> = Vec::new();
    let mut rows: Vec<SlowRow> = Vec::new();
    for c in &CONTENDERS {
        let started = match c.proxy {
            Proxy::Lb => {
                if lb_has_balance && !lb_help.contains(c.balance) {
                    Err("not in this lb's --balance".to_string())
                } else if !lb_has_balance && c.balance != "round-robin" {
                    Err("needs lb --balance".to_string())
                } else {
                    let (proc, addr) = start_lb_balancing(&lb_bin, lb_has_balance, c, &addrs)?;
                    let pid = proc.pid();
                    lbs.push(proc);
                    Ok((addr, pid))
                }
            }
            Proxy::Nginx | Proxy::Haproxy => {
                let bin = if c.proxy == Proxy::Nginx {
                    &plan.peers.nginx
                } else {
                    &plan.peers.haproxy
                };
                match bin {
                    Err(why) => Err(why.to_string()),
                    Ok(bin) => {
                        let peer = start_peer(bin, plan, c, &addrs)?;
                        let started = (peer.addr, peer.pid());
                        println!("    {:<8} {}  (pid {})", peer.name, peer.addr, peer.pid());
                        peers.push(peer);
                        Ok(started)
                    }
                }
            }
        };
        let (url, pid, missing) = match started {
            Ok((addr, pid)) => (Some(format!("http://{addr}/")), Some(pid), None),
            Err(why) => (None, None, Some(why)),
        };
        rows.push(SlowRow {
            scenario: c.scenario,
            proxy: c.proxy_name(),
            configuration: c.configuration(lb_has_balance),
            load_aware: c.load_aware,
            missing: missing.clone(),
        });
        scenarios.push(Scenario {
            name: c.scenario,
            url,
            pid,
            missing,
        });
    }

    let runnable: Vec<&Scenario> = scenarios.iter().filter(|s| s.url.is_some()).collect();
    let slow = addrs[0].to_string();
    warm_up(&bench, &runnable, CONNECTIONS, plan.warmup)?;
    let load = Load::Closed {
        connections: CONNECTIONS,
    };
    let mut runs = Vec::new();
    for round in 0..plan.rounds {
        runs.extend(measure_round(
            &bench,
            &runnable,
            load,
            round,
            plan.rounds,
            Some(&slow),
        )?);
    }
    drop(peers);
    drop(lbs);
    drop(backends);
    Ok(SlowBackend {
        delay: DELAY,
        delay_duration: DELAY_DURATION,
        connections: CONNECTIONS,
        backends: addrs.iter().map(SocketAddr::to_string).collect(),
        rows,
        runs,
    })
}

/// `lb --help`, to see which strategies this lb has (empty if it cannot be run).
fn lb_help(lb: &Path) -> String {
    Command::new(lb)
        .arg("--help")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// `lb -p 0 [--balance STRATEGY] -b / SLOW -b / FAST -b / FAST`.
fn start_lb_balancing(
    lb: &Path,
    lb_has_balance: bool,
    c: &Contender,
    backends: &[SocketAddr],
) -> Result<(Proc, SocketAddr)> {
    let mut args: Vec<String> = vec!["-p".into(), "0".into()];
    if lb_has_balance {
        args.extend(["--balance".into(), c.balance.into()]);
    }
    for addr in backends {
        args.extend(["-b".into(), "/".into(), addr.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (proc, addr) = start_lb(lb, &args).with_context(|| format!("starting {}", c.scenario))?;
    println!("    lb       {addr}  ({})", proc.command());
    Ok((proc, addr))
}

/// nginx or HAProxy balancing over the three backends as `c` says.
fn start_peer(bin: &Path, plan: &Plan, c: &Contender, backends: &[SocketAddr]) -> Result<Peer> {
    let setup = peers::Setup {
        label: c.scenario,
        backends,
        workers: plan.cores,
        balance: c.balance,
        tls: None,
        max_conns: peers::MAX_CONNS,
        idle_timeout: None,
    };
    let (peer, fix) = if c.proxy == Proxy::Nginx {
        (peers::start_nginx(bin, plan.tmp, &setup), "--skip nginx")
    } else {
        (
            peers::start_haproxy(bin, plan.tmp, &setup),
            "--skip haproxy",
        )
    };
    peer.with_context(|| {
        format!(
            "starting {} (fix its installation, or leave it out with {fix})",
            c.scenario
        )
    })
}
