//! The command line: clap definitions, turning arguments into a [`Plan`], printing the report and
//! choosing the exit code. Kept in the library so `main.rs` stays a thin shell and so the argument
//! parsing can be unit-tested.
//!
//! Exit codes: 0 everything passed; 1 an expectation failed, errors exceeded `--max-errors`, or
//! the run could not happen; 2 usage error (clap's convention, and [`Cli::validate`]'s).

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use http::header::{HeaderName, HeaderValue};
use http::Method;

use crate::check::Expectation;
use crate::ok_status::OkStatus;
use crate::plan::{self, Plan};
use crate::report::Report;
use crate::slo::Slo;
use crate::stages::{Ramped, Stage, StageList};
use crate::tls::Trust;

/// An HTTP/1.1 load generator: measures throughput and latency, checks how a balancer spreads
/// the load over its backends.
#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Without -n or -z, sends 200 requests. Exit code: 0 pass, 1 fail, 2 usage error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Combine the JSON reports of several runs (e.g. from several machines) into one report.
    Merge {
        /// Reports written by `--output json` or `--json-out`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Also print the per-second table (text output).
        #[arg(long)]
        series: bool,
        /// Also write the merged report as a self-contained HTML page with charts.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// Print a saved JSON report again (several are merged), and draw it as HTML with --html.
    Report {
        /// Reports written by `--output json`, `--json-out` or `loadgen merge --output json`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Also print the per-second table (text output).
        #[arg(long)]
        series: bool,
        /// Write the report as a self-contained HTML page with charts.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Target URL, http:// or https:// (e.g. http://127.0.0.1:8080/).
    #[arg(required = true, value_parser = check_url)]
    pub url: Option<String>,
    /// Total number of requests, across all connections [default: 200 unless -z is given].
    #[arg(short = 'n', long, conflicts_with = "duration")]
    pub requests: Option<u64>,
    /// Send for this long instead of a fixed count (e.g. 10s, 500ms).
    #[arg(short = 'z', long, value_parser = plan::parse_duration)]
    pub duration: Option<Duration>,
    /// Concurrent connections [default: 1; 64 with --find-max].
    #[arg(short = 'c', long, value_parser = clap::value_parser!(u64).range(1..))]
    pub connections: Option<u64>,
    /// Open loop at this many requests per second in total; latency is then measured from the
    /// scheduled send time (coordinated omission corrected). The run fails if loadgen itself
    /// sends so late that the figures would measure it rather than the target. START:END ramps
    /// the rate linearly from START to END over -z.
    #[arg(short = 'q', long, value_name = "RATE|START:END", value_parser = parse_rate_or_ramp)]
    pub rate: Option<RateArg>,
    /// Load that changes: DURATION:RATE,... ramps the open loop's rate linearly to each RATE
    /// over each DURATION, from -q (or 0), e.g. 10s:100,30s:2000,10s:0; DURATION:c=N,...
    /// ramps the closed loop's connections from -c, e.g. 10s:c=1,20s:c=64. The run lasts as
    /// long as the stages.
    #[arg(long, value_name = "STAGES", conflicts_with = "duration")]
    pub stages: Option<StageList>,
    /// HTTP method.
    #[arg(short = 'm', long, default_value = "GET", value_parser = parse_method)]
    pub method: Method,
    /// Extra request header, 'Name: value' (repeatable). `{n}` in the value is replaced by
    /// each request's key, one of --keys N drawn at random (reproducibly: request #i always gets
    /// the same key), e.g. -H 'X-User: user-{n}'.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = plan::parse_header)]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// How many distinct keys `{n}` takes in -H values [default: 100].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: Option<u64>,
    /// Request body.
    #[arg(short = 'd', long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Read the request body from this file.
    #[arg(short = 'D', long)]
    pub body_file: Option<PathBuf>,
    /// Give up on a request (connect included) after this long; counted as a timeout error.
    #[arg(long, default_value = "5s", value_parser = plan::parse_duration)]
    pub timeout: Duration,
    /// Open a new connection for every request (and send `Connection: close`); over HTTPS each
    /// request is then a full TLS handshake, reported apart.
    #[arg(long)]
    pub no_keepalive: bool,
    /// https://: trust the server certificates that chain to the PEM certificates in FILE,
    /// instead of Mozilla's roots (webpki-roots).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub cacert: Option<PathBuf>,
    /// https://: accept any server certificate, unverified (the traffic is still encrypted).
    #[arg(long)]
    pub insecure: bool,
    /// Check the spread over backends: round-robin, even, weights=NAME:W,NAME:W..., or
    /// sticky=HEADER (every value of request header HEADER, sent with -H 'HEADER: {n}', is always
    /// served by the same backend).
    #[arg(long, value_parser = clap::value_parser!(Expectation))]
    pub expect: Option<Expectation>,
    /// Allowed relative deviation of shares for `even` and `weights=`, in percent.
    #[arg(long, default_value = "10%", value_parser = parse_percent)]
    pub tolerance: f64,
    /// Response header naming the backend that served the request.
    #[arg(long, default_value = "X-Served-By")]
    pub backend_header: HeaderName,
    /// Statuses that count as success, e.g. 200-399 or 200,204,300-399; any other is a failed
    /// response. 100-599 reports statuses without judging them (like wrk).
    #[arg(long, value_name = "CODES", default_value = "200-399", value_parser = clap::value_parser!(OkStatus))]
    pub ok_status: OkStatus,
    /// Fail (exit 1) when more requests than this failed: transport errors plus responses with a
    /// status outside --ok-status.
    #[arg(long, default_value_t = 0)]
    pub max_errors: u64,
    /// Report format on stdout.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Also write the JSON report to this file (for `loadgen merge`).
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Also write the report as one self-contained HTML page: the summary and charts over time
    /// (inline SVG, no JavaScript, nothing fetched from elsewhere).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Threads, each with its own event loop and a share of the connections [default: one per
    /// core].
    #[arg(short = 't', long, value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
    /// Also print the per-second table (text output): sent, answered, statuses, errors,
    /// latency and backend shares for each second.
    #[arg(long)]
    pub series: bool,
    /// Search for the highest open-loop rate that meets --slo with failed requests under
    /// --max-error-rate: from -q (default 100 req/s), doubling, then a binary search, one run of
    /// --step-duration per rate. Each step is printed on stderr as it ends.
    #[arg(long, conflicts_with_all = ["requests", "duration", "stages", "expect"])]
    pub find_max: bool,
    /// --find-max: the latency objective every step must meet, e.g. p99<=50ms or
    /// p50<=5ms,p99<=50ms (p50, p90, p99, p999).
    #[arg(long, default_value = "p99<=50ms", value_parser = clap::value_parser!(Slo), requires = "find_max")]
    pub slo: Slo,
    /// --find-max: the largest share of failed requests a step may have and pass.
    #[arg(long, default_value = "0.1%", value_parser = parse_percent, requires = "find_max")]
    pub max_error_rate: f64,
    /// --find-max: how long each step runs.
    #[arg(long, default_value = "5s", value_parser = plan::parse_duration, requires = "find_max")]
    pub step_duration: Duration,
    /// Keep the first N requests individually in the JSON report (for per-request tables).
    #[arg(long, default_value_t = 0)]
    pub samples: usize,
}

fn check_url(s: &str) -> Result<String, String> {
    plan::parse_url(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// A `-q` value: one rate, or a ramp from one rate to another over `-z`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateArg {
    Constant(f64),
    Ramp(f64, f64),
}

impl RateArg {
    fn start(self) -> f64 {
        match self {
            RateArg::Constant(r) | RateArg::Ramp(r, _) => r,
        }
    }
}

fn parse_rate_or_ramp(s: &str) -> Result<RateArg, String> {
    match s.split_once(':') {
        None => plan::parse_rate(s).map(RateArg::Constant),
        Some((from, to)) => {
            let rate = |v: &str| match v.trim().parse::<f64>() {
                Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
                _ => Err(format!(
                    "`{s}` is not a ramp; write START:END in requests per second, e.g. 100:2000"
                )),
            };
            Ok(RateArg::Ramp(rate(from)?, rate(to)?))
        }
    }
}

fn parse_method(s: &str) -> Result<Method, String> {
    Method::from_bytes(s.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("`{s}` is not an HTTP method"))
}

/// `10%`, `10` (percent) -> 0.10.
fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if p.is_finite() && p >= 0.0 => Ok(p / 100.0),
        _ => Err(format!("`{s}` is not a percentage; write it like 10%")),
    }
}

impl LoadArgs {
    /// The plan these arguments describe (reads `-D FILE`).
    pub fn to_plan(&self) -> anyhow::Result<Plan> {
        let url = self.url.as_deref().context("a URL is required")?;
        let mut plan = Plan::new(url)?;
        plan.requests = self.requests;
        plan.duration = self.duration;
        let default_connections = if self.find_max {
            FIND_MAX_CONNECTIONS
        } else {
            1
        };
        let connections = self.connections.unwrap_or(default_connections);
        plan.connections = usize::try_from(connections).unwrap_or(usize::MAX);
        plan.threads = self.threads.and_then(|t| usize::try_from(t).ok());
        match (self.rate, &self.stages) {
            (Some(RateArg::Ramp(from, to)), _) => {
                let over = self
                    .duration
                    .context("-q START:END ramps over -z DURATION; give -z")?;
                let ramp = StageList {
                    ramped: Ramped::Rate,
                    stages: vec![Stage {
                        duration: over,
                        target: to,
                    }],
                };
                plan.stages = Some(ramp.starting_at(from));
            }
            (rate, Some(list)) => {
                let start = match list.ramped {
                    Ramped::Rate => rate.map_or(0.0, RateArg::start),
                    Ramped::Connections => {
                        plan.rate = rate.map(RateArg::start);
                        connections as f64
                    }
                };
                plan.stages = Some(list.clone().starting_at(start));
            }
            (rate, None) => plan.rate = rate.map(RateArg::start),
        }
        plan.method = self.method.clone();
        plan.headers = self.headers.clone();
        plan.keys = self.keys.unwrap_or(crate::keys::DEFAULT_KEYS);
        plan.body = match (&self.body, &self.body_file) {
            (Some(b), _) => Bytes::from(b.clone()),
            (None, Some(path)) => Bytes::from(
                std::fs::read(path)
                    .with_context(|| format!("cannot read the body file {}", path.display()))?,
            ),
            (None, None) => Bytes::new(),
        };
        plan.timeout = self.timeout;
        plan.keepalive = !self.no_keepalive;
        plan.trust = match (&self.cacert, self.insecure) {
            (Some(file), _) => Trust::CaFile(file.clone()),
            (None, true) => Trust::Insecure,
            (None, false) => Trust::WebPkiRoots,
        };
        plan.expect = self.expect.clone();
        plan.tolerance = self.tolerance;
        plan.backend_header = self.backend_header.clone();
        plan.ok_status = self.ok_status.clone();
        plan.max_errors = self.max_errors;
        plan.keep_samples = self.samples;
        plan.progress = !self.quiet && std::io::stderr().is_terminal();
        Ok(plan)
    }
}

impl Cli {
    /// Checks what each flag's parser cannot see alone (e.g. `--expect sticky=X-User` without
    /// `-H 'X-User: ...'`); the error is a usage error (exit 2), like clap's own.
    pub fn validate(&self) -> Result<(), clap::Error> {
        use clap::CommandFactory as _;
        if self.command.is_some() {
            return Ok(());
        }
        let usage = |message: String| {
            Cli::command().error(clap::error::ErrorKind::ArgumentConflict, message)
        };
        plan::check_sticky_header(self.load.expect.as_ref(), &self.load.headers)
            .map_err(|e| usage(e.to_string()))?;
        let templated = self.load.headers.iter().any(|(_, v)| plan::is_template(v));
        let https = self.load.url.as_deref().is_some_and(|u| {
            u.get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        });
        if !https && (self.load.cacert.is_some() || self.load.insecure) {
            let flag = if self.load.insecure {
                "--insecure"
            } else {
                "--cacert"
            };
            return Err(usage(format!(
                "{flag} applies to https:// URLs only; this URL is plain http://"
            )));
        }
        match (self.load.rate, &self.load.stages) {
            (Some(RateArg::Ramp(..)), None) if self.load.duration.is_none() => {
                return Err(usage(
                    "-q START:END ramps the rate over the run: give its length with -z, e.g. -z 30s"
                        .to_owned(),
                ));
            }
            (Some(RateArg::Ramp(..)), Some(_)) => {
                return Err(usage(
                    "-q START:END and --stages both ramp the rate; give one (--stages takes its \
                     start from a plain -q RATE)"
                        .to_owned(),
                ));
            }
            (Some(_), Some(list)) if list.ramped == Ramped::Connections => {
                return Err(usage(
                    "--stages ...:c=N ramps the closed loop's connections, which -q would turn \
                     into an open loop; drop -q, or ramp the rate (--stages 10s:100,...)"
                        .to_owned(),
                ));
            }
            _ => {}
        }
        if self.load.keys.is_some() && !templated {
            return Err(usage(
                "--keys N needs a header whose value holds {n}, e.g. -H 'X-User: {n}'".to_owned(),
            ));
        }
        Ok(())
    }

    /// Event-loop threads the run asks for: `--threads`, else one per core (the run never uses
    /// more than one per connection, see [`Plan::thread_count`]).
    pub fn threads(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.load
            .threads
            .map_or(cores, |t| usize::try_from(t).unwrap_or(cores))
    }
}

/// Runs what the command line asked for and returns the exit code.
pub async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    let (report, output, series, html) = match cli.command {
        Some(
            Command::Merge {
                files,
                output,
                series,
                html,
            }
            | Command::Report {
                files,
                output,
                series,
                html,
            },
        ) => (read_reports(&files)?, output, series, html),
        None => {
            let plan = cli.load.to_plan()?;
            if plan.is_https() && plan.trust == Trust::Insecure {
                eprintln!(
                    "loadgen: --insecure: the server's certificate is not verified (the traffic \
                     is encrypted, but to whoever answers)"
                );
            }
            let report = match cli.load.find_max {
                true => find_max(plan, &cli.load).await?,
                false => crate::run(plan).await?,
            };
            if let Some(path) = &cli.load.json_out {
                let json = serde_json::to_string_pretty(&report)?;
                std::fs::write(path, json + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            (report, cli.load.output, cli.load.series, cli.load.html)
        }
    };
    if let Some(path) = &html {
        std::fs::write(path, crate::html::render(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    match output {
        Output::Text => {
            // The table first, so that the verdict stays the last line.
            if series {
                println!("{}", report.render_series());
            }
            if let Some(found) = &report.find_max {
                println!("{}", crate::find_max::render_text(found));
                match found.rate {
                    Some(_) => println!("The highest passing step's run:"),
                    None => println!("The last step's run:"),
                }
            }
            print!("{}", report.render_text());
        }
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Connections for `--find-max` without `-c`: an open loop needs one per request in flight
/// (rate × latency), and a search goes to rates where latency grows.
pub const FIND_MAX_CONNECTIONS: u64 = 64;

/// `--find-max`: the search, each step on stderr as it ends.
async fn find_max(plan: Plan, args: &LoadArgs) -> anyhow::Result<Report> {
    let search = crate::find_max::Search {
        slo: args.slo.clone(),
        max_error_rate: args.max_error_rate,
        step_duration: args.step_duration,
        start_rate: plan.rate.unwrap_or(DEFAULT_START_RATE),
    };
    eprintln!(
        "loadgen: finding the highest rate that meets {} with at most {}% failed requests, {} \
         per step, {} connections",
        search.slo,
        search.max_error_rate * 100.0,
        humantime::format_duration(search.step_duration),
        plan.connections
    );
    eprintln!("loadgen:      {}", crate::find_max::step_header());
    let report = crate::find_max::find_max(plan, &search, |step| {
        eprintln!("loadgen: step {}", crate::find_max::step_line(step));
    })
    .await?;
    Ok(report)
}

/// `--find-max` without `-q`: the first step's rate.
pub const DEFAULT_START_RATE: f64 = 100.0;

/// Reads JSON reports and merges them into one.
fn read_reports(files: &[PathBuf]) -> anyhow::Result<Report> {
    let mut reports = Vec::with_capacity(files.len());
    for path in files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let report: Report = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a loadgen JSON report (write one with --output json)",
                path.display()
            )
        })?;
        reports.push(report);
    }
    Ok(Report::merge(reports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_become_a_plan() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "http://127.0.0.1:9/x?y=1",
            "-c",
            "4",
            "-q",
            "100",
            "-z",
            "2s",
            "-H",
            "X-A: 1",
            "--expect",
            "weights=a:1,b:2",
            "--tolerance",
            "5%",
            "--no-keepalive",
        ])
        .unwrap();
        let plan = cli.load.to_plan().unwrap();
        assert_eq!(plan.connections, 4);
        assert_eq!(plan.rate, Some(100.0));
        assert_eq!(plan.stages, None);
        assert_eq!(plan.duration, Some(Duration::from_secs(2)));
        assert!(!plan.keepalive);
        assert!((plan.tolerance - 0.05).abs() < 1e-12);
        assert_eq!(plan.headers.len(), 1);
        assert_eq!(plan.url.path_and_query().unwrap().as_str(), "/x?y=1");
    }

    #[test]
    fn usage_errors() {
        for args in [
            vec!["loadgen"],
            vec!["loadgen", "ftp://127.0.0.1/"],
            vec!["loadgen", "https://h/", "--insecure", "--cacert", "ca.pem"],
            vec!["loadgen", "http://h/", "-n", "5", "-z", "1s"],
            vec!["loadgen", "http://h/", "-c", "0"],
            vec!["loadgen", "http://h/", "--expect", "random"],
            vec!["loadgen", "merge"],
        ] {
            let err = Cli::try_parse_from(&args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
        let merge = Cli::try_parse_from(["loadgen", "merge", "a.json", "b.json"]).unwrap();
        assert!(matches!(merge.command, Some(Command::Merge { files, .. }) if files.len() == 2));
        let report = Cli::try_parse_from(["loadgen", "report", "a.json", "--html", "a.html"]);
        assert!(matches!(
            report.unwrap().command,
            Some(Command::Report { html: Some(_), .. })
        ));
    }
}
