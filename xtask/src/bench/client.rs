//! The traffic side of a measurement: run `loadgen` (or `wrk`) as a child process, parse what it
//! prints, and charge it with the CPU time it used.
//!
//! Why a child process and not `loadgen::run` in-process: the client then has its own CPU account,
//! separate from xtask's, and is measured exactly as `wrk` is, so the two can be compared.
//!
//! How the client's CPU is read: a process that has exited but not yet been reaped (a *zombie*)
//! still has its `/proc/PID/stat`, with the final CPU time of all its threads. So we poll the
//! child's stat every few milliseconds until its state is `Z`, read `utime + stime` there, and
//! only then reap it with `wait`. This needs nothing but `/proc` (no `/usr/bin/time`, no
//! `getrusage` through `unsafe` code), and it is exact: no sample is missed at the end.

use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::procfs;

/// How requests are sent during one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Load {
    /// Each connection sends as soon as its previous answer is in: the proxy sets the pace.
    Closed { connections: u32 },
    /// `rate` requests per second in total whatever the proxy does; latency is measured from
    /// the scheduled send time (coordinated omission corrected).
    Open { connections: u32, rate: f64 },
    /// Closed loop with a new connection for every request (`loadgen --no-keepalive`): over
    /// HTTPS, one full TLS handshake per request, so requests/s are handshakes/s.
    NewConnections { connections: u32 },
}

impl Load {
    /// A short label for tables: `50 conns`, `open 3500/s`.
    pub fn label(&self) -> String {
        match *self {
            Load::Closed { connections: 1 } => "1 conn".into(),
            Load::Closed { connections } => format!("{connections} conns"),
            Load::Open { rate, .. } => format!("open {rate:.0}/s"),
            Load::NewConnections { connections } => {
                format!("{connections} conns, no keep-alive")
            }
        }
    }
}

/// What the client saw and what it cost. (`Default`: what a client that reports only the basics,
/// like wrk, leaves empty.)
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measured {
    pub requests_per_sec: f64,
    pub responses: u64,
    /// Transport errors plus responses that are not 2xx/3xx.
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// `None` for wrk, which does not report p99.9.
    pub p999_us: Option<f64>,
    /// CPU time (user + system) of the client process itself (in JSON: seconds).
    #[serde(serialize_with = "super::report::secs::serialize")]
    pub client_cpu: Duration,
    /// Responses per backend, as loadgen counted them from `X-Served-By` (empty for wrk).
    pub backends: Vec<BackendCount>,
    /// Open loop only: the p99 of how late loadgen itself sent its requests (its timer, its
    /// CPU), apart from waiting for a busy connection. It is part of the corrected latency, so
    /// it must stay small next to it (`None` in the closed loop, for wrk, and for a loadgen too
    /// old to report it).
    pub send_lateness_p99_us: Option<f64>,
    /// Open loop only: loadgen's verdict on its own pacing: `on_time`, `lagged` (a warning) or
    /// `untrustworthy` (its lateness moved the latency figures).
    pub pacing: Option<String>,
    /// HTTPS only: the TLS handshakes' p50 and p99, timed apart by loadgen (one per connection).
    pub tls_handshake_p50_us: Option<f64>,
    pub tls_handshake_p99_us: Option<f64>,
    /// loadgen's JSON report of the run, exactly as it printed it (`None` for wrk): kept for the
    /// HTML report ([`super::html`]), which saves it and draws its charts. Left out of
    /// `report.json`, which holds only the figures above.
    #[serde(skip)]
    pub loadgen_report: Option<String>,
}

/// How many responses one backend gave.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendCount {
    /// The `X-Served-By` value: a restful-server's address unless it was given `--name`.
    pub name: String,
    pub responses: u64,
}

impl Measured {
    /// The fraction (0..=1) of the responses that `backend` gave; `None` without responses.
    pub fn share_of(&self, backend: &str) -> Option<f64> {
        let total: u64 = self.backends.iter().map(|b| b.responses).sum();
        let served = self
            .backends
            .iter()
            .filter(|b| b.name == backend)
            .map(|b| b.responses)
            .sum::<u64>();
        (total > 0).then(|| served as f64 / total as f64)
    }
}

/// `loadgen URL -c N -z DUR [-q RATE | --no-keepalive] [-t THREADS] [EXTRA...] --output json
/// --quiet`; `threads` defaults to one per core (the comparison with `wrk -t1` passes 1), `extra`
/// is for options such as `--cacert FILE`.
pub fn loadgen(
    bin: &Path,
    url: &str,
    load: Load,
    duration: Duration,
    threads: Option<u32>,
    extra: &[String],
) -> Result<Measured> {
    let millis = format!("{}ms", duration.as_millis().max(1));
    let mut args: Vec<String> = vec![url.into(), "-z".into(), millis];
    if let Some(threads) = threads {
        args.extend(["-t".into(), threads.to_string()]);
    }
    let connections = match load {
        Load::Closed { connections } => connections,
        Load::Open { connections, rate } => {
            args.extend(["-q".into(), format!("{rate:.1}")]);
            connections
        }
        Load::NewConnections { connections } => {
            args.push("--no-keepalive".into());
            connections
        }
    };
    args.extend(extra.iter().cloned());
    args.extend([
        "-c".into(),
        connections.to_string(),
        "--output".into(),
        "json".into(),
        "--quiet".into(),
    ]);
    let done = run_child(bin, &args, duration + Duration::from_secs(30))?;
    // Exit code 1 only means "there were errors"; the JSON report is printed all the same.
    let json: serde_json::Value = serde_json::from_str(&done.stdout).with_context(|| {
        format!(
            "loadgen printed no JSON report ({}): {}",
            done.status,
            done.describe()
        )
    })?;
    let number = |path: &[&str]| -> Result<f64> {
        let mut v = &json;
        for key in path {
            v = v.get(key).with_context(|| {
                format!(
                    "loadgen's JSON has no `{}`: is the loadgen binary out of date?",
                    path.join(".")
                )
            })?;
        }
        v.as_f64()
            .with_context(|| format!("loadgen's `{}` is not a number", path.join(".")))
    };
    let responses = number(&["responses"])? as u64;
    let transport_errors: u64 = json
        .get("errors")
        .and_then(|e| e.as_object())
        .map_or(0, |e| e.values().filter_map(|n| n.as_u64()).sum());
    let ok: u64 = json
        .get("status")
        .and_then(|s| s.as_object())
        .map_or(0, |s| {
            s.iter()
                .filter(|(code, _)| code.starts_with('2') || code.starts_with('3'))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        });
    Ok(Measured {
        requests_per_sec: number(&["requests_per_sec"])?,
        responses,
        errors: transport_errors + responses.saturating_sub(ok),
        p50_us: number(&["latency", "p50_us"])?,
        p99_us: number(&["latency", "p99_us"])?,
        p999_us: Some(number(&["latency", "p999_us"])?),
        client_cpu: done.cpu,
        backends: backend_counts(&json),
        send_lateness_p99_us: optional(&json, "send_lateness", "p99_us"),
        pacing: json
            .get("pacing")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string),
        tls_handshake_p50_us: optional(&json, "tls_handshake", "p50_us"),
        tls_handshake_p99_us: optional(&json, "tls_handshake", "p99_us"),
        loadgen_report: Some(done.stdout),
    })
}

/// `json[section][field]` as a number, if loadgen reported that section (`send_lateness` in the
/// open loop, `tls_handshake` over HTTPS).
fn optional(json: &serde_json::Value, section: &str, field: &str) -> Option<f64> {
    json.get(section)?.get(field)?.as_f64()
}

/// loadgen's `backends`: `[{"name": "127.0.0.1:8910", "responses": 123, ...}, ...]`.
fn backend_counts(json: &serde_json::Value) -> Vec<BackendCount> {
    let Some(list) = json.get("backends").and_then(|b| b.as_array()) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|b| {
            Some(BackendCount {
                name: b.get("name")?.as_str()?.to_string(),
                responses: b.get("responses")?.as_u64()?,
            })
        })
        .collect()
}

/// `wrk -t1 -cN -dDs --latency URL` (wrk takes whole seconds).
pub fn wrk(bin: &Path, url: &str, connections: u32, duration: Duration) -> Result<Measured> {
    let secs = duration.as_secs_f64().round().max(1.0) as u64;
    let args = [
        "-t1".to_string(),
        format!("-c{connections}"),
        format!("-d{secs}s"),
        "--latency".into(),
        url.into(),
    ];
    let done = run_child(bin, &args, Duration::from_secs(secs + 30))?;
    if !done.status.success() {
        bail!("wrk failed ({}): {}", done.status, done.describe());
    }
    let mut parsed = parse_wrk(&done.stdout)
        .with_context(|| format!("parsing wrk's output: {}", done.describe()))?;
    parsed.client_cpu = done.cpu;
    Ok(parsed)
}

/// Reads `Requests/sec:`, the `50%` and `99%` lines of `--latency`, `N requests in`, and the
/// error lines of wrk's report.
fn parse_wrk(text: &str) -> Result<Measured> {
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut responses = None;
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", n] => rps = n.parse::<f64>().ok(),
            ["50%", t] => p50 = parse_wrk_time(t),
            ["99%", t] => p99 = parse_wrk_time(t),
            [n, "requests", "in", ..] => responses = n.parse::<u64>().ok(),
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => errors += n.parse::<u64>().unwrap_or(0),
            _ => {}
        }
    }
    Ok(Measured {
        requests_per_sec: rps.context("no `Requests/sec:` line")?,
        responses: responses.context("no `N requests in` line")?,
        errors,
        p50_us: p50.context("no `50%` line (was --latency passed?)")?,
        p99_us: p99.context("no `99%` line (was --latency passed?)")?,
        ..Measured::default()
    })
}

/// wrk's times: `812.00us`, `1.23ms`, `2.01s`, `1.50m`; returns microseconds.
fn parse_wrk_time(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(number * scale)
}

/// A finished child: how it ended, what it printed, the CPU it used.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    cpu: Duration,
}

impl Finished {
    fn describe(&self) -> String {
        format!(
            "\n--- stdout:\n{}\n--- stderr:\n{}\n---",
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Run `program args`, killing it after `limit`; read its CPU time from its zombie (see the top
/// of this file) before reaping it.
fn run_child(program: &Path, args: &[String], limit: Duration) -> Result<Finished> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let pid = child.id();
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    // Drain both pipes on threads so that a chatty child never blocks on a full pipe.
    let read_all = |mut stream: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text);
            text
        })
    };
    let out = read_all(Box::new(stdout));
    let err = read_all(Box::new(stderr));

    let hz = procfs::clock_ticks();
    let deadline = Instant::now() + limit;
    let mut last_ticks = 0;
    let mut killed = false;
    loop {
        match procfs::stat(pid) {
            Ok(s) if s.state == 'Z' => {
                last_ticks = s.cpu_ticks();
                break;
            }
            Ok(s) => last_ticks = s.cpu_ticks(),
            // Cannot happen before we reap it; keep the last value if it does.
            Err(_) => break,
        }
        if !killed && Instant::now() >= deadline {
            let _ = child.kill();
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {}", program.display()))?;
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if killed {
        bail!(
            "{} {} was still running after {limit:?} and was killed\n--- stderr:\n{stderr}",
            program.display(),
            args.join(" ")
        );
    }
    Ok(Finished {
        status,
        stdout,
        stderr,
        cpu: procfs::ticks_to_duration(last_ticks, hz),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://127.0.0.1:8080/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms  300.00us   9.00ms   90.00%
    Req/Sec    24.00k     1.00k   26.00k    80.00%
  Latency Distribution
     50%    2.05ms
     75%    2.20ms
     90%    2.40ms
     99%    3.10ms
  119000 requests in 5.00s, 250.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  23800.12
Transfer/sec:     50.00MB
";

    #[test]
    fn wrk_report_is_parsed() {
        let m = parse_wrk(WRK).unwrap();
        assert!((m.requests_per_sec - 23800.12).abs() < 1e-6);
        assert_eq!(m.responses, 119_000);
        assert_eq!(m.errors, 7);
        assert!((m.p50_us - 2050.0).abs() < 1e-6);
        assert!((m.p99_us - 3100.0).abs() < 1e-6);
        assert_eq!(m.p999_us, None);
    }

    #[test]
    fn loadgen_s_backend_counts_give_each_backend_s_share() {
        let json = serde_json::json!({
            "backends": [
                {"name": "127.0.0.1:8910", "responses": 600, "share": 0.6},
                {"name": "127.0.0.1:8911", "responses": 300, "share": 0.3},
                {"name": "127.0.0.1:8912", "responses": 100, "share": 0.1},
            ]
        });
        let m = Measured {
            backends: backend_counts(&json),
            ..parse_wrk(WRK).unwrap()
        };
        assert_eq!(m.backends.len(), 3);
        assert_eq!(m.share_of("127.0.0.1:8912"), Some(0.1));
        assert_eq!(m.share_of("127.0.0.1:9999"), Some(0.0));
        assert_eq!(parse_wrk(WRK).unwrap().share_of("127.0.0.1:8910"), None);
    }

    #[test]
    fn wrk_times_become_microseconds() {
        let us = |t| parse_wrk_time(t).map(|v| v.round() as u64);
        assert_eq!(us("812.00us"), Some(812));
        assert_eq!(us("1.23ms"), Some(1230));
        assert_eq!(us("2.01s"), Some(2_010_000));
        assert_eq!(us("1.50m"), Some(90_000_000));
        assert_eq!(us("fast"), None);
    }

    #[test]
    fn a_child_is_charged_for_its_cpu() {
        // A shell that spins for a moment: its CPU time must be visible after it exits.
        let done = run_child(
            Path::new("sh"),
            &[
                "-c".into(),
                "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo done".into(),
            ],
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(done.status.success());
        assert_eq!(done.stdout.trim(), "done");
        assert!(done.cpu > Duration::ZERO, "{:?}", done.cpu);
    }
}
