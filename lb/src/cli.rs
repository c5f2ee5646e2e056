//! Step 0, before any request: turn the original's command line into a [`Config`].
//!
//! The Mongoose balancer was configured with `-p 8000 -l - -b / 127.0.0.1:8910 -b / 127.0.0.1:8911`.
//! Its quirk is that `-r` and `-v VHOST` are *positional*: they modify the next `-b` only. clap parses
//! every flag, and we then use the index of each occurrence on the command line to attach each `-r`
//! and `-v` to the `-b` that follows it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};

use crate::config::{Config, HealthCheck, Limits, LogFormat, LogTarget, Rule, Timeouts};
use crate::pick::{self, Balance, Settings};
use crate::tls::TlsFiles;

/// What went wrong with the command line; every message names the flag and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// clap's own error (usage, `--help`, `--version`); printed as clap formats it.
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error("{0}")]
    Invalid(String),
}

impl CliError {
    /// The process exit code: 0 for `--help`/`--version`, 2 for every usage error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Clap(e) => e.exit_code(),
            CliError::Invalid(_) => 2,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "lb",
    version,
    about = "A streaming HTTP/1.1 load balancer with the Mongoose load_balancer command line",
    override_usage = "lb [-p [IP:]PORT] [-l FILE|-] [-s CERT] [-D FILE|-] [-k] [--balance STRATEGY] [[-r] [-v VHOST] [-w N] -b PREFIX[=REPLACEMENT] HOST:PORT]...",
    after_help = "Examples:\n  lb -p 8000 -l - -b / 127.0.0.1:8910 -b / 127.0.0.1:8911\n  \
                  lb -p 0 -b /api/=/v1/ 127.0.0.1:9000 -v example.com -b / 127.0.0.1:9001 -r -b /old/ 127.0.0.1:9002\n  \
                  lb -p 8000 --balance least-conn -w 2 -b / 127.0.0.1:8910 -b / 127.0.0.1:8911\n\n\
                  Backends with the same PREFIX (and vhost) form a group; --balance chooses among them (round robin by\n\
                  default, as the original). The longest matching prefix wins; -v rules are tried before the others.\n\
                  A backend that refuses a connection is skipped for --fail-timeout; a request it loses\n\
                  before answering is retried on the next one when that is safe (--retries)."
)]
struct Args {
    /// Listen on PORT (127.0.0.1) or IP:PORT; `-p 0.0.0.0:8000` listens on all interfaces, `-p 0` picks a free port.
    #[arg(short = 'p', value_name = "[IP:]PORT", default_value = "8000")]
    port: String,

    /// Append one line per request to FILE, or to stdout with `-l -`.
    #[arg(short = 'l', value_name = "FILE|-")]
    log: Option<String>,

    /// Access-log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Mongoose)]
    log_format: LogFormat,

    /// Accepted for compatibility: backend connections are always kept alive and pooled here.
    #[arg(short = 'k')]
    keep_alive: bool,

    /// The next -b answers with a 302 redirect to its backend instead of proxying.
    #[arg(short = 'r', action = ArgAction::Count)]
    redirect: u8,

    /// The next -b only serves requests whose Host is VHOST (port ignored, any case).
    #[arg(short = 'v', value_name = "VHOST", action = ArgAction::Append)]
    vhost: Vec<String>,

    /// The next -b gets weight N (1..=1000, default 1): a share of its group's requests in proportion.
    #[arg(short = 'w', value_name = "N", action = ArgAction::Append)]
    weight: Vec<String>,

    /// How each group chooses a backend: round-robin (smooth weighted, the default), least-conn, p2c,
    /// ewma, hash:ip, hash:uri, hash:header:NAME or hash:cookie:NAME.
    #[arg(long, value_name = "STRATEGY", default_value = "round-robin")]
    balance: String,

    /// A backend that comes back after being down ramps from 10% to its full weight over this long (0 = off).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    slow_start: Duration,

    /// ewma: the time constant over which a backend's latency estimate forgets old samples.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    ewma_decay: Duration,

    /// hash: no backend takes more than F times the average load in flight (bounded loads; F >= 1).
    #[arg(long, value_name = "F")]
    hash_balance_factor: Option<String>,

    /// Route requests starting with PREFIX to HOST:PORT, replacing PREFIX with REPLACEMENT if given.
    #[arg(short = 'b', num_args = 2, value_names = ["PREFIX[=REPLACEMENT]", "HOST:PORT"], action = ArgAction::Append)]
    backend: Vec<String>,

    /// Give up connecting to a backend after this long (then try the next one).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    connect_timeout: Duration,

    /// Wait this long for a response head, counted from when the request is fully sent upstream (504 after).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    response_timeout: Duration,

    /// A client must send a complete request head within this long (the connection is closed otherwise).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    header_timeout: Duration,

    /// Close a client keep-alive connection idle for this long.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,

    /// Abort a request or response body that moves no byte for this long (a client that stops
    /// sending gets 408; a backend that stops taking the request body, 504; a client that stops
    /// reading its response is cut off).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    body_timeout: Duration,

    /// On SIGTERM/Ctrl-C, wait this long for in-flight requests before exiting.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    grace: Duration,

    /// Skip a backend that refused a connection for this long (passive health; see --health-check for active).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    fail_timeout: Duration,

    /// Attempts after the first for one request, each on the next member of its group (default: the
    /// group's size minus 1, so every member gets one chance; 0 = never retry, not even a refused connect).
    /// Idempotent requests are retried after any failure before the response head; others only when
    /// they were never sent.
    #[arg(long, value_name = "N")]
    retries: Option<usize>,

    /// Keep request bodies up to this size while they are sent, so that an idempotent request
    /// (GET, PUT, DELETE...) with a body can be retried; larger bodies are streamed and never retried.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(0..=64 * 1024 * 1024))]
    retry_body_bytes: u32,

    /// Close idle pooled backend connections after this long (keep it below the backends' keep-alive).
    #[arg(long, value_name = "DURATION", default_value = "4s", value_parser = parse_duration)]
    pool_idle_timeout: Duration,

    /// Most idle pooled connections kept per backend.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pool_max_idle: usize,

    /// Largest accepted request head in bytes (431 beyond); at least 1024.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(1024..=1024 * 1024))]
    max_header_bytes: u32,

    /// Most client connections served at once; further ones wait in the kernel's accept queue.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_conns: u32,

    /// Probe every backend with `GET PATH`; a backend failing --health-fall probes in a row leaves the rotation.
    #[arg(long, value_name = "PATH")]
    health_check: Option<String>,

    /// Time between health probes.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    health_interval: Duration,

    /// A health probe without a 2xx/3xx answer within this long fails.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    health_timeout: Duration,

    /// Consecutive passing probes that bring a backend back.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    health_rise: u32,

    /// Consecutive failing probes that take a backend out.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    health_fall: u32,

    /// Speak HTTPS on the listener, with the certificate chain and private key in this PEM file.
    #[arg(short = 's', value_name = "FILE")]
    tls_cert: Option<PathBuf>,

    /// The private key for -s, when it is not in the certificate's file.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Hexdump every byte crossing the balancer, both legs, to FILE (`-` = stderr).
    #[arg(short = 'D', value_name = "FILE|-")]
    dump: Option<String>,

    /// Serve Prometheus metrics (/metrics), a JSON status (/status) and a live status page (/) on PORT
    /// (127.0.0.1) or IP:PORT; never proxies.
    #[arg(long, value_name = "[IP:]PORT")]
    admin: Option<String>,

    /// Print every step of every request (accept, route, pick, upstream, response, done) on stderr.
    #[arg(long)]
    trace: bool,

    /// Worker threads, each running its own event loop (as nginx's worker processes); 0 = one per CPU core.
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
}

/// Parse a duration such as `500ms`, `2s` or `1m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (expected e.g. 500ms, 2s, 1m)"))
}

/// Parse `lb`'s command line (including the program name in `argv[0]`).
pub fn parse<I, T>(argv: I) -> Result<Config, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = Args::command().try_get_matches_from(argv)?;
    let args = Args::from_arg_matches(&matches)?;
    let rules = rules_from(&matches, &args)?;
    if rules.is_empty() {
        let mut cmd = Args::command();
        return Err(CliError::Clap(cmd.error(
            clap::error::ErrorKind::MissingRequiredArgument,
            "at least one backend is required: add -b PREFIX HOST:PORT (e.g. -b / 127.0.0.1:8910)",
        )));
    }
    let listen = parse_listen(&args.port, "-p")?;
    let tls = args.tls_cert.map(|cert| TlsFiles {
        cert,
        key: args.tls_key,
    });
    if let Some(files) = &tls {
        // Check the files now: a bad certificate is a usage error, reported before listening.
        crate::tls::acceptor(files).map_err(|e| CliError::Invalid(e.to_string()))?;
    }
    let admin = args
        .admin
        .as_deref()
        .map(|a| parse_listen(a, "--admin"))
        .transpose()?;
    let log = args.log.map(|l| {
        if l == "-" {
            LogTarget::Stdout
        } else {
            LogTarget::File(PathBuf::from(l))
        }
    });
    let health_check = match args.health_check {
        Some(path) if !path.starts_with('/') => {
            return Err(CliError::Invalid(format!(
                "invalid --health-check '{path}': expected a path starting with '/', e.g. /api/v1/whoami"
            )))
        }
        Some(path) => Some(HealthCheck {
            path,
            interval: args.health_interval,
            timeout: args.health_timeout,
            rise: args.health_rise,
            fall: args.health_fall,
        }),
        None => None,
    };
    Ok(Config {
        listen,
        rules,
        log,
        log_format: args.log_format,
        trace: args.trace,
        timeouts: Timeouts {
            connect: args.connect_timeout,
            response: args.response_timeout,
            header: args.header_timeout,
            idle: args.idle_timeout,
            body_idle: args.body_timeout,
            grace: args.grace,
            pool_idle: args.pool_idle_timeout,
        },
        limits: Limits {
            max_header_bytes: args.max_header_bytes as usize,
            max_conns: args.max_conns as usize,
            pool_max_idle: args.pool_max_idle,
            retry_body_bytes: args.retry_body_bytes as usize,
        },
        fail_timeout: args.fail_timeout,
        retries: args.retries,
        balance: args
            .balance
            .parse::<Balance>()
            .map_err(|e| CliError::Invalid(e.to_string()))?,
        balance_settings: Settings {
            slow_start: args.slow_start,
            hash_balance_factor: args
                .hash_balance_factor
                .as_deref()
                .map(pick::balance::parse_balance_factor)
                .transpose()
                .map_err(|e| CliError::Invalid(e.to_string()))?,
            ..Settings::default()
        },
        ewma_decay: args.ewma_decay,
        health_check,
        admin,
        tls,
        dump: args.dump.map(|d| {
            if d == "-" {
                LogTarget::Stdout
            } else {
                LogTarget::File(PathBuf::from(d))
            }
        }),
        threads: match args.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        },
    })
}

/// Pair each `-b` with the `-r` and `-v` that appeared since the previous `-b`.
fn rules_from(matches: &clap::ArgMatches, args: &Args) -> Result<Vec<Rule>, CliError> {
    // Flags with defaults report an index even when absent: only count what the user typed.
    let indices = |id: &str| -> Vec<usize> {
        if matches.value_source(id) != Some(clap::parser::ValueSource::CommandLine) {
            return Vec::new();
        }
        matches
            .indices_of(id)
            .map(|i| i.collect())
            .unwrap_or_default()
    };
    let backend_at = indices("backend");
    let redirect_at = indices("redirect");
    let vhost_at = indices("vhost");
    let weight_at = indices("weight");

    let mut rules = Vec::new();
    let mut previous = 0;
    // Each -b contributes two values (and two indices): the prefix, then the address.
    for (n, pair) in args.backend.chunks(2).enumerate() {
        let [spec, address] = pair else { continue };
        let at = backend_at.get(2 * n).copied().unwrap_or(usize::MAX);
        let in_window = |i: &usize| *i > previous && *i < at;
        let redirect = redirect_at.iter().any(in_window);
        let vhost = vhost_at
            .iter()
            .rposition(in_window)
            .and_then(|k| args.vhost.get(k))
            .cloned();
        let weight = weight_at
            .iter()
            .rposition(in_window)
            .and_then(|k| args.weight.get(k))
            .map(|w| pick::balance::parse_weight(w))
            .transpose()
            .map_err(|e| CliError::Invalid(format!("{e}, e.g. -w 5 -b {spec} {address}")))?;
        previous = at;

        let (prefix, replacement) = match spec.split_once('=') {
            Some((p, r)) => (p.to_string(), r.to_string()),
            None => (spec.clone(), spec.clone()),
        };
        if !prefix.starts_with('/') {
            return Err(CliError::Invalid(format!(
                "invalid prefix '{prefix}' for -b {spec} {address}: expected a path starting with '/', e.g. -b / {address}"
            )));
        }
        if address
            .to_socket_addrs()
            .map(|mut a| a.next().is_none())
            .unwrap_or(true)
            || !address.contains(':')
        {
            return Err(CliError::Invalid(format!(
                "invalid backend address '{address}' for -b {spec}: expected HOST:PORT"
            )));
        }
        rules.push(Rule {
            prefix,
            replacement,
            vhost,
            redirect,
            backend: address.clone(),
            weight,
        });
    }
    let last_b = backend_at.last().copied().unwrap_or(0);
    if redirect_at
        .iter()
        .chain(&vhost_at)
        .chain(&weight_at)
        .any(|i| *i > last_b)
    {
        return Err(CliError::Invalid(
            "-r, -v and -w apply to the next -b: move them before a -b PREFIX HOST:PORT"
                .to_string(),
        ));
    }
    Ok(rules)
}

/// `-p 8000` listens on 127.0.0.1:8000; `-p 0.0.0.0:8000` on every interface (`--admin` alike).
fn parse_listen(text: &str, flag: &str) -> Result<SocketAddr, CliError> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse::<SocketAddr>().map_err(|_| {
        CliError::Invalid(format!(
            "invalid {flag} '{text}': expected PORT or IP:PORT, e.g. {flag} 8000 or {flag} 0.0.0.0:8000"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(line: &str) -> Vec<Rule> {
        parse(line.split_whitespace()).unwrap().rules
    }

    #[test]
    fn the_walkthrough_line_parses() {
        let config =
            parse("lb -p 8000 -l - -b / 127.0.0.1:8910 -b / 127.0.0.1:8911".split_whitespace())
                .unwrap();
        assert_eq!(config.listen, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(config.log, Some(LogTarget::Stdout));
        assert_eq!(config.rules.len(), 2);
        assert_eq!(config.rules[1].backend, "127.0.0.1:8911");
        assert_eq!(config.rules[0].replacement, "/");
    }

    #[test]
    fn r_and_v_apply_to_the_next_b_only() {
        let r = rules("lb -r -v example.com -b /a/ 127.0.0.1:1 -b /b/=/ 127.0.0.1:2 -v x.org -b / 127.0.0.1:3");
        assert!(r[0].redirect);
        assert_eq!(r[0].vhost.as_deref(), Some("example.com"));
        assert!(!r[1].redirect);
        assert_eq!(r[1].vhost, None);
        assert_eq!(
            (r[1].prefix.as_str(), r[1].replacement.as_str()),
            ("/b/", "/")
        );
        assert_eq!(r[2].vhost.as_deref(), Some("x.org"));
        assert!(!r[2].redirect);
    }

    #[test]
    fn errors_name_the_flag_and_exit_2() {
        let err = parse("lb -b / nonsense".split_whitespace()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid backend address 'nonsense' for -b /: expected HOST:PORT"
        );
        assert_eq!(err.exit_code(), 2);
        assert_eq!(parse(["lb"]).unwrap_err().exit_code(), 2);
        assert_eq!(
            parse("lb -p x -b / 127.0.0.1:1".split_whitespace())
                .unwrap_err()
                .exit_code(),
            2
        );
        assert_eq!(
            parse("lb --connect-timeout soon -b / 127.0.0.1:1".split_whitespace())
                .unwrap_err()
                .exit_code(),
            2
        );
        assert!(parse("lb -b / 127.0.0.1:1 -r".split_whitespace())
            .unwrap_err()
            .to_string()
            .contains("-r"));
    }

    #[test]
    fn durations_and_bare_ports() {
        let c =
            parse("lb -p 0 --connect-timeout 250ms --grace 2s -b / 127.0.0.1:1".split_whitespace())
                .unwrap();
        assert_eq!(c.timeouts.connect, Duration::from_millis(250));
        assert_eq!(c.timeouts.grace, Duration::from_secs(2));
        assert_eq!(c.listen.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
}
