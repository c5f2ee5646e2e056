//! TLS termination: lb `-s` beside nginx (`listen ... ssl`) and HAProxy (`bind ... ssl crt`).
//!
//! One certificate for all three, made at bench time (no key is ever committed): ECDSA P-256,
//! self-signed for `localhost` and `127.0.0.1` by `rcgen`. It is written three ways, because each
//! proxy wants its own: lb and HAProxy read the certificate and the key from one PEM file, nginx
//! from two. loadgen trusts it with `--cacert`, so every handshake is verified as a real client
//! would verify it, and the client's work is the same whichever proxy answers.
//!
//! Behind each proxy, the same two plain-HTTP backends. Two measures at 50 closed-loop
//! connections, the rows in turn, starting with a different one each round:
//!
//! - **keep-alive**: each connection makes one handshake and then carries requests: the cost of
//!   encrypting and decrypting the traffic;
//! - **no keep-alive** (`loadgen --no-keepalive`): a new TCP connection and a full handshake for
//!   every request (loadgen never resumes a session), so requests/s are handshakes/s: the cost
//!   of the handshake itself, dominated by the server's signature and key exchange.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use serde::Serialize;
use tests::{start_lb, Proc};

use super::client::Load;
use super::measure::{measure_round, warm_up, Bench, Plan, Scenario};
use super::peers::{self, Peer, TlsFiles};
use super::report::{opt, ProxyRun, Summary, Target};

/// Closed-loop connections in both measures: the main scenarios' throughput point.
pub const CONNECTIONS: u32 = 50;

/// The two measures, in table order.
const LOADS: [Load; 2] = [
    Load::Closed {
        connections: CONNECTIONS,
    },
    Load::NewConnections {
        connections: CONNECTIONS,
    },
];

/// What the certificate is, for the report.
const CERTIFICATE: &str = "ECDSA P-256, self-signed by rcgen for localhost and 127.0.0.1";

/// What the TLS part measured.
#[derive(Debug, Clone, Serialize)]
pub struct TlsBench {
    pub certificate: &'static str,
    pub connections: u32,
    pub loads: Vec<Load>,
    /// The rows of the table, in order, with why one did not run.
    pub rows: Vec<TlsRow>,
    pub runs: Vec<ProxyRun>,
}

/// One proxy terminating TLS.
#[derive(Debug, Clone, Serialize)]
pub struct TlsRow {
    /// `lb`, `nginx` or `haproxy`: the name of its runs.
    pub proxy: &'static str,
    /// How it was told to speak TLS.
    pub configuration: &'static str,
    /// Why it did not run (`not installed`, `skipped`, ...).
    pub missing: Option<String>,
}

/// Make the certificate, start the backends and the three proxies, measure them in rounds, stop
/// them all.
pub fn run(bench: &Bench, plan: &Plan) -> Result<TlsBench> {
    let mut rows = vec![
        TlsRow {
            proxy: "lb",
            configuration: "lb -s FILE",
            missing: None,
        },
        TlsRow {
            proxy: "nginx",
            configuration: "listen ... ssl;",
            missing: plan.peers.nginx.err().map(str::to_string),
        },
        TlsRow {
            proxy: "haproxy",
            configuration: "bind ... ssl crt FILE",
            missing: plan.peers.haproxy.err().map(str::to_string),
        },
    ];
    let mut result = TlsBench {
        certificate: CERTIFICATE,
        connections: CONNECTIONS,
        loads: LOADS.to_vec(),
        rows: Vec::new(),
        runs: Vec::new(),
    };
    // Without HTTPS in loadgen (or TLS in lb) there is nothing to measure: say so in the rows.
    if !help(&bench.loadgen).contains("--cacert") {
        for row in &mut rows {
            row.missing = Some("n/a: this loadgen speaks no HTTPS (no --cacert)".into());
        }
        result.rows = rows;
        return Ok(result);
    }
    let lb_bin = plan.bins.join("lb");
    if !help(&lb_bin).contains("-s <FILE>") {
        rows[0].missing = Some("n/a: this lb has no -s".into());
    }

    let files = write_certificate(&plan.tmp.join("tls"))?;
    let (backends, addrs) = super::start_backends(plan.bins, 2)?;
    let bench = Bench {
        backend_pids: backends.iter().map(Proc::pid).collect(),
        loadgen_args: vec!["--cacert".into(), files.cert.display().to_string()],
        ..bench.clone()
    };

    // Every process below is stopped when these are dropped at the end of this function.
    let mut lb: Option<Proc> = None;
    let mut peers: Vec<Peer> = Vec::new();
    let mut scenarios: Vec<Scenario> = Vec::new();
    for row in &rows {
        let started = match (&row.missing, row.proxy) {
            (Some(why), _) => Err(why.clone()),
            (None, "lb") => {
                let combined = files.combined.display().to_string();
                let mut args: Vec<String> = vec!["-p".into(), "0".into(), "-s".into(), combined];
                for addr in &addrs {
                    args.extend(["-b".into(), "/".into(), addr.to_string()]);
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let (proc, addr) = start_lb(&lb_bin, &args).context("starting lb -s")?;
                println!("    lb       {addr}  ({})", proc.command());
                let pid = proc.pid();
                lb = Some(proc);
                Ok((addr, pid))
            }
            (None, proxy) => {
                let bin = if proxy == "nginx" {
                    plan.peers.nginx
                } else {
                    plan.peers.haproxy
                };
                match bin {
                    Err(why) => Err(why.to_string()),
                    Ok(bin) => {
                        let peer = start_peer(proxy, bin, plan, &files, &addrs)?;
                        println!("    {:<8} {}  (pid {})", peer.name, peer.addr, peer.pid());
                        let started = (peer.addr, peer.pid());
                        peers.push(peer);
                        Ok(started)
                    }
                }
            }
        };
        let (url, pid, missing) = match started {
            Ok((addr, pid)) => (
                Some(format!("https://127.0.0.1:{}/", addr.port())),
                Some(pid),
                None,
            ),
            Err(why) => (None, None, Some(why)),
        };
        scenarios.push(Scenario {
            name: row.proxy,
            url,
            pid,
            missing,
        });
    }

    let runnable: Vec<&Scenario> = scenarios.iter().filter(|s| s.url.is_some()).collect();
    warm_up(&bench, &runnable, CONNECTIONS, plan.warmup)?;
    for round in 0..plan.rounds {
        for load in LOADS {
            result.runs.extend(measure_round(
                &bench,
                &runnable,
                load,
                round,
                plan.rounds,
                None,
            )?);
        }
    }
    drop(peers);
    drop(lb);
    drop(backends);
    result.rows = rows;
    Ok(result)
}

/// `program --help` (empty if it cannot be run).
fn help(program: &Path) -> String {
    Command::new(program)
        .arg("--help")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// Make the certificate and write it into `dir` as `cert.pem`, `key.pem` and both in
/// `combined.pem`.
fn write_certificate(dir: &Path) -> Result<TlsFiles> {
    // `generate_simple_self_signed` makes an ECDSA P-256 key (rcgen's default); a name that
    // parses as an IP address becomes an IP address SAN.
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .context("making the bench's TLS certificate")?;
    let (cert, key) = (made.cert.pem(), made.signing_key.serialize_pem());
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        combined: dir.join("combined.pem"),
    };
    for (path, text) in [
        (&files.cert, cert.clone()),
        (&files.key, key.clone()),
        (&files.combined, cert + &key),
    ] {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(files)
}

/// nginx or HAProxy terminating TLS in front of `backends`, balancing round robin.
fn start_peer(
    proxy: &'static str,
    bin: &Path,
    plan: &Plan,
    files: &TlsFiles,
    backends: &[SocketAddr],
) -> Result<Peer> {
    let (label, balance) = if proxy == "nginx" {
        ("nginx ssl", "")
    } else {
        ("haproxy ssl", "roundrobin")
    };
    let setup = peers::Setup {
        label,
        backends,
        workers: plan.cores,
        balance,
        tls: Some(files),
        max_conns: peers::MAX_CONNS,
        idle_timeout: None,
    };
    let started = if proxy == "nginx" {
        peers::start_nginx(bin, plan.tmp, &setup)
    } else {
        peers::start_haproxy(bin, plan.tmp, &setup)
    };
    started.with_context(|| {
        format!("starting {label} (fix its installation, or leave it out with --skip {proxy})")
    })
}

impl TlsBench {
    /// Medians over rounds of one proxy at one measure.
    pub fn summary(&self, load: &Load, proxy: &str) -> Option<Summary> {
        super::report::summarize(
            self.runs
                .iter()
                .filter(|r| &r.load == load && r.scenario == proxy)
                .map(|r| {
                    (
                        &r.measured,
                        r.proxy.map(|u| u.cpu()),
                        r.proxy.map(|u| u.peak_rss),
                    )
                }),
        )
    }

    fn missing(&self, proxy: &str) -> Option<&str> {
        self.rows
            .iter()
            .find(|r| r.proxy == proxy)
            .and_then(|r| r.missing.as_deref())
    }

    /// The section of the report: the table, the ratios, how to read them.
    pub fn markdown(&self, s: &mut String, duration: std::time::Duration, rounds: u32) {
        use std::fmt::Write as _;
        let _ = writeln!(s, "\n## TLS termination\n");
        let _ = writeln!(
            s,
            "lb `-s`, nginx `listen ... ssl` and HAProxy `bind ... ssl crt`, all with one certificate \
             made at bench time ({}), in front of the same two plain-HTTP backends; loadgen verifies it \
             (`--cacert`). `{} conns` keeps each connection alive (one handshake, then requests); \
             `no keep-alive` opens a new connection for every request (`--no-keepalive`, no session \
             resumption), so its req/s are full TLS handshakes per second. {duration:?} per run, \
             {rounds} round(s), the proxies in turn starting with a different one each round; medians. \
             `handshake` is the TLS handshake alone, as loadgen times it (kept alive, that is the 50 \
             connections opening at once at the start).\n",
            self.certificate, self.connections
        );
        let _ = writeln!(
            s,
            "| load | proxy | req/s | req/s range | p50 µs | p99 µs | handshake p50 µs | handshake p99 µs | errors | proxy CPU µs/req | proxy peak RSS MiB |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for load in &self.loads {
            let label = load.label();
            for row in &self.rows {
                let name = format!("{} (`{}`)", row.proxy, row.configuration);
                match (&row.missing, self.summary(load, row.proxy)) {
                    (Some(why), _) => {
                        let _ = writeln!(s, "| {label} | {name} | {why} | | | | | | | | |");
                    }
                    (None, None) => {
                        let _ = writeln!(s, "| {label} | {name} | did not run | | | | | | | | |");
                    }
                    (None, Some(x)) => {
                        let _ = writeln!(
                            s,
                            "| {label} | {name} | {:.0} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
                            x.requests_per_sec,
                            x.rps_range
                                .map_or_else(|| "—".into(), |r| format!("{:.0}%", r * 100.0)),
                            x.p50_us,
                            x.p99_us,
                            opt(x.handshake_p50_us, 0),
                            opt(x.handshake_p99_us, 0),
                            x.errors,
                            opt(x.cpu_us_per_request, 1),
                            opt(x.peak_rss_mib, 1),
                        );
                    }
                }
            }
        }
        let _ = writeln!(
            s,
            "\n| load | lb/nginx req/s | lb/haproxy req/s | lb/nginx CPU/req | lb/haproxy CPU/req |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for load in &self.loads {
            let ratio = |peer: &str, f: fn(&Summary) -> Option<f64>| {
                self.ratio(load, peer, f)
                    .map_or_else(|| "—".into(), |(r, _, _)| format!("{r:.2}"))
            };
            let rps = |x: &Summary| Some(x.requests_per_sec);
            let cpu = |x: &Summary| x.cpu_us_per_request;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                load.label(),
                ratio("nginx", rps),
                ratio("haproxy", rps),
                ratio("nginx", cpu),
                ratio("haproxy", cpu),
            );
        }
    }

    /// lb's figure over `peer`'s at `load`, with both figures.
    fn ratio(
        &self,
        load: &Load,
        peer: &str,
        figure: fn(&Summary) -> Option<f64>,
    ) -> Option<(f64, f64, f64)> {
        let lb = figure(&self.summary(load, "lb")?)?;
        let other = figure(&self.summary(load, peer)?)?;
        (other > 0.0).then(|| (lb / other, lb, other))
    }

    /// The goal: lb at least as fast as nginx and HAProxy, kept alive and in handshakes.
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        for load in &self.loads {
            let what = match load {
                Load::NewConnections { .. } => "handshakes/s",
                _ => "req/s",
            };
            for peer in ["nginx", "haproxy"] {
                let name = format!("lb -s {what} ≥ {peer} ssl at {}", load.label());
                let missing = self.missing("lb").or(self.missing(peer));
                out.push(
                    match (
                        missing,
                        self.ratio(load, peer, |x| Some(x.requests_per_sec)),
                    ) {
                        (Some(why), _) => Target {
                            name,
                            measured: String::new(),
                            verdict: format!("n/a ({why})"),
                        },
                        (None, Some((ratio, lb, other))) => Target::judged(
                            name,
                            format!("{ratio:.2}× ({lb:.0} vs {other:.0})"),
                            ratio >= 1.0,
                        ),
                        (None, None) => Target::not_measured(name),
                    },
                );
            }
        }
        out
    }

    /// What `--quick` asserts: every proxy that could run did at both measures, got responses,
    /// and lb made no errors.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for row in self.rows.iter().filter(|r| r.missing.is_none()) {
            for load in &self.loads {
                let runs: Vec<&ProxyRun> = self
                    .runs
                    .iter()
                    .filter(|r| r.scenario == row.proxy && &r.load == load)
                    .collect();
                if runs.is_empty() {
                    problems.push(format!("{} did not run (TLS, {})", row.proxy, load.label()));
                }
                for r in runs {
                    if r.measured.responses == 0 {
                        problems.push(format!(
                            "{} got no responses (TLS, {})",
                            row.proxy,
                            load.label()
                        ));
                    }
                    if row.proxy == "lb" && r.measured.errors > 0 {
                        problems.push(format!(
                            "lb -s had {} errors (TLS, {}, round {})",
                            r.measured.errors,
                            load.label(),
                            r.round + 1
                        ));
                    }
                }
            }
        }
        problems
    }
}
