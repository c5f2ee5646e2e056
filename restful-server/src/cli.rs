//! The command line: the original's `-p` and `-d`, plus `--name`, `--delay` and `--delay-jitter`,
//! and the messages the binary prints about them. Kept in the library so that parsing and messages are unit-tested, and
//! `main.rs` stays a few lines long.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::Parser;

use crate::api::{PRINT_CAP, SUM_BODY_CAP};
use crate::harness::{BYTES_CAP, CHUNK_DELAY_CAP_MS, CHUNK_LEN, DELAY_CAP_MS};
use crate::{Config, Delay, DELAY_FLAG_CAP};

/// The demo backend for the load balancer: the "RESTful API demo" page and its sum API.
#[derive(Debug, Parser)]
#[command(name = "restful-server", version, after_help = endpoints_help())]
pub struct Args {
    /// Where to listen: a bare PORT is on 127.0.0.1 only (see below for all interfaces); port 0
    /// picks a free port, which the "Starting" line names.
    #[arg(
        short = 'p',
        long = "port",
        value_name = "[IP:]PORT",
        default_value = "8000",
        value_parser = parse_listen_addr
    )]
    pub listen: SocketAddr,

    /// Also serve static files from DOCROOT, with a listing for directories that have no
    /// index.html. `/` is DOCROOT/index.html if there is one, else the built-in page.
    #[arg(short = 'd', long = "docroot", value_name = "DOCROOT")]
    pub docroot: Option<PathBuf>,

    /// The name sent in X-Served-By and shown on the page [default: the listening address]
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: Option<String>,

    /// Hold every response (any route) this long before sending it, e.g. 20ms: a slow backend
    /// for the balancer to notice. At most 1m.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_delay)]
    pub delay: Duration,

    /// Add a random wait from 0 up to this (uniform, drawn per request) to every response's
    /// --delay, e.g. 5ms. At most 1m.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_delay)]
    pub delay_jitter: Duration,
}

impl Args {
    /// The server configuration, with DOCROOT made absolute (it is printed, and relative paths
    /// would be relative to whatever directory the server was started from).
    pub fn config(&self) -> io::Result<Config> {
        let docroot = match &self.docroot {
            None => None,
            Some(dir) => {
                let absolute = std::fs::canonicalize(dir).map_err(|err| {
                    io::Error::new(err.kind(), format!("-d {}: {err}", dir.display()))
                })?;
                if !absolute.is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("-d {}: not a directory", dir.display()),
                    ));
                }
                Some(absolute)
            }
        };
        Ok(Config {
            name: self.name.clone(),
            docroot,
        })
    }

    /// `--delay` and `--delay-jitter` together.
    pub fn delay(&self) -> Delay {
        Delay {
            fixed: self.delay,
            jitter: self.delay_jitter,
        }
    }
}

/// Parses the command line. On a bad flag this prints clap's message and exits with status 2, as
/// clap's own `parse` does, except that a bad value (`-p`, `--name`, `--delay`, ...) gets one
/// line: the value, the flag, and the expected form.
pub fn parse() -> Args {
    match Args::try_parse() {
        Ok(args) => args,
        Err(err) if err.kind() == ErrorKind::ValueValidation => {
            let rendered = err.to_string();
            eprintln!("{}", rendered.lines().next().unwrap_or_default());
            std::process::exit(2);
        }
        Err(err) => err.exit(),
    }
}

/// The line printed once the server listens; tests and scripts wait for it. A delay is named at
/// the end, so that a slow backend says so where it starts.
pub fn starting_line(addr: SocketAddr, config: &Config, delay: Delay) -> String {
    let serving = match &config.docroot {
        Some(dir) => dir.display().to_string(),
        None => "built-in page".to_owned(),
    };
    let delayed = match (delay.fixed.is_zero(), delay.jitter.is_zero()) {
        (true, true) => String::new(),
        (false, true) => format!(", every response delayed {}", show(delay.fixed)),
        (true, false) => format!(", every response delayed 0 to {}", show(delay.jitter)),
        (false, false) => format!(
            ", every response delayed {} + 0 to {}",
            show(delay.fixed),
            show(delay.jitter)
        ),
    };
    format!("Starting RESTful server on {addr}, serving {serving}{delayed}")
}

/// A duration as it is written on the command line (`20ms`, `1s 500ms`).
fn show(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(duration)
}

/// Why the server could not listen, with the usual fix for the usual cause.
pub fn cannot_listen(addr: SocketAddr, err: &io::Error) -> String {
    if err.kind() == io::ErrorKind::AddrInUse {
        format!(
            "cannot listen on {addr}: Address already in use \
             (is another server running? pick another port with -p)"
        )
    } else {
        format!("cannot listen on {addr}: {err}")
    }
}

const LISTEN_FORM: &str = "-p expects PORT or IP:PORT, e.g. 8000 or 0.0.0.0:8000";

/// `8000` -> 127.0.0.1:8000 (loopback unless asked otherwise: a demo should not be reachable
/// from the network by accident); `0.0.0.0:8000` and `[::1]:8000` as written.
fn parse_listen_addr(value: &str) -> Result<SocketAddr, String> {
    if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
        return match value.parse::<u16>() {
            Ok(port) => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
            Err(_) => Err(format!("port must be 0-65535 ({LISTEN_FORM})")),
        };
    }
    value.parse().map_err(|_| LISTEN_FORM.to_owned())
}

/// `--delay` and `--delay-jitter`: a duration with its unit, up to [`DELAY_FLAG_CAP`]. clap puts
/// the flag's name in front of the message.
fn parse_delay(value: &str) -> Result<Duration, String> {
    const FORM: &str = "expected a duration with its unit, e.g. 20ms, 1s or 0";
    let duration = if value.trim() == "0" {
        Duration::ZERO
    } else {
        humantime::parse_duration(value).map_err(|err| format!("{err} ({FORM})"))?
    };
    if duration > DELAY_FLAG_CAP {
        return Err(format!(
            "at most {} ({FORM}; did you mean ms?)",
            show(DELAY_FLAG_CAP)
        ));
    }
    Ok(duration)
}

/// A name goes into a header, where control characters are not allowed.
fn parse_name(value: &str) -> Result<String, String> {
    if value.chars().any(char::is_control) {
        return Err("--name must not contain control characters (it is sent as a header)".into());
    }
    Ok(value.to_owned())
}

/// The endpoint list at the end of `--help`, with the caps the handlers enforce.
fn endpoints_help() -> String {
    let chunk_kib = CHUNK_LEN / 1024;
    format!(
        "\
Endpoints:
  GET  /                    the \"RESTful API demo\" page
  POST /api/v1/sum          n1, n2 as a form or JSON -> {{\"result\": n1 + n2}}
                            (body at most {SUM_BODY_CAP} bytes)
  GET  /api/v1/whoami       {{\"name\", \"addr\", \"pid\", \"requests_served\"}}
  ANY  /printcontent        prints the first {PRINT_CAP} body bytes to stdout, replies 200

Test-harness endpoints (any method; a value past its cap is a 400 with {{\"error\": ...}}):
  /api/v1/echo              the request as received: method, uri, version, headers in
                            order, body_len, body_crc32 (any body size, streamed)
  /api/v1/delay?ms=N        waits N ms (at most {DELAY_CAP_MS}), then {{\"delayed_ms\": N}}
  /api/v1/status/CODE       replies with status CODE (200-599)
  /api/v1/bytes?n=N         streams N bytes (at most {BYTES_CAP}) in {chunk_kib} KiB chunks;
    [&chunk_delay_ms=M]     waiting M ms (at most {CHUNK_DELAY_CAP_MS}) between chunks

Every response carries X-Served-By: NAME.
A bare -p PORT listens on 127.0.0.1 only; -p 0.0.0.0:PORT listens on all interfaces.

Examples:
  restful-server -p 8910                  listen on 127.0.0.1:8910
  restful-server -p 0.0.0.0:8910 -d .     all interfaces, serving the current directory
  restful-server -p 8911 --delay 20ms     a slow backend: every response 20 ms late"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse_from(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("restful-server").chain(args.iter().copied()))
    }

    #[test]
    fn a_bare_port_is_loopback_and_8000_is_the_default() {
        assert_eq!(
            parse_from(&[]).unwrap().listen.to_string(),
            "127.0.0.1:8000"
        );
        assert_eq!(
            parse_from(&["-p", "8910"]).unwrap().listen.to_string(),
            "127.0.0.1:8910"
        );
        assert_eq!(
            parse_from(&["-p", "0.0.0.0:8910"])
                .unwrap()
                .listen
                .to_string(),
            "0.0.0.0:8910"
        );
        assert_eq!(
            parse_from(&["-p", "[::1]:0"]).unwrap().listen.to_string(),
            "[::1]:0"
        );
    }

    #[test]
    fn a_bad_port_names_the_flag_and_the_form() {
        for bad in ["99999", "abc", "", "1.2.3.4", ":80", "localhost:80"] {
            let err = parse_from(&["-p", bad]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{bad}");
            let first_line = err.to_string().lines().next().unwrap().to_owned();
            assert!(
                first_line.contains("-p expects PORT or IP:PORT"),
                "{first_line}"
            );
        }
    }

    #[test]
    fn a_name_with_control_characters_is_refused() {
        assert!(parse_from(&["--name", "a\nb"]).is_err());
        assert_eq!(
            parse_from(&["--name", "blue"]).unwrap().name.unwrap(),
            "blue"
        );
    }

    #[test]
    fn help_says_how_to_listen_on_all_interfaces_and_lists_the_caps() {
        let help = Args::command().render_long_help().to_string();
        assert!(help.contains("-p 0.0.0.0:PORT"), "{help}");
        for cap in [
            "60000",
            "1073741824",
            "10000",
            "/api/v1/echo",
            "X-Served-By",
        ] {
            assert!(help.contains(cap), "help lacks {cap}: {help}");
        }
    }

    #[test]
    fn delays_take_a_unit_and_default_to_none() {
        let args = parse_from(&[]).unwrap();
        assert!(args.delay().is_zero());
        let args = parse_from(&["--delay", "20ms", "--delay-jitter", "1s 500ms"]).unwrap();
        assert_eq!(
            args.delay(),
            Delay {
                fixed: Duration::from_millis(20),
                jitter: Duration::from_millis(1500),
            }
        );
        assert!(parse_from(&["--delay", "0"]).unwrap().delay().is_zero());
        assert_eq!(
            parse_from(&["--delay", "1m"]).unwrap().delay,
            DELAY_FLAG_CAP
        );
    }

    #[test]
    fn a_bad_delay_names_the_flag_and_the_form() {
        for (flag, bad, says) in [
            ("--delay", "20", "e.g. 20ms"),
            ("--delay", "fast", "e.g. 20ms"),
            ("--delay", "20m", "at most 1m"),
            ("--delay-jitter", "abc", "e.g. 20ms"),
            ("--delay-jitter", "2h", "at most 1m"),
        ] {
            let err = parse_from(&[flag, bad]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{flag} {bad}");
            let first_line = err.to_string().lines().next().unwrap().to_owned();
            assert!(first_line.contains(flag), "{first_line}");
            assert!(first_line.contains(bad), "{first_line}");
            assert!(first_line.contains(says), "{first_line}");
        }
    }

    #[test]
    fn the_starting_line_names_a_delay_only_when_there_is_one() {
        let addr = "127.0.0.1:8911".parse().unwrap();
        let config = Config::default();
        let ms = Duration::from_millis;
        let line = |fixed, jitter| starting_line(addr, &config, Delay { fixed, jitter });
        assert_eq!(
            line(ms(0), ms(0)),
            "Starting RESTful server on 127.0.0.1:8911, serving built-in page"
        );
        assert_eq!(
            line(ms(20), ms(0)),
            "Starting RESTful server on 127.0.0.1:8911, serving built-in page, \
             every response delayed 20ms"
        );
        assert!(line(ms(0), ms(5)).ends_with(", every response delayed 0 to 5ms"));
        assert!(line(ms(20), ms(5)).ends_with(", every response delayed 20ms + 0 to 5ms"));
    }

    #[test]
    fn port_taken_is_one_line_with_the_fix() {
        let err = io::Error::from(io::ErrorKind::AddrInUse);
        assert_eq!(
            cannot_listen("127.0.0.1:8910".parse().unwrap(), &err),
            "cannot listen on 127.0.0.1:8910: Address already in use \
             (is another server running? pick another port with -p)"
        );
    }

    #[test]
    fn docroot_is_made_absolute_and_must_be_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let args = parse_from(&["-d", tmp.path().to_str().unwrap()]).unwrap();
        let config = args.config().unwrap();
        assert_eq!(config.docroot.unwrap(), tmp.path().canonicalize().unwrap());

        let file = tmp.path().join("f");
        std::fs::write(&file, "").unwrap();
        let args = parse_from(&["-d", file.to_str().unwrap()]).unwrap();
        assert!(args
            .config()
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
        let args = parse_from(&["-d", "/no/such/dir"]).unwrap();
        assert!(args
            .config()
            .unwrap_err()
            .to_string()
            .starts_with("-d /no/such/dir"));
    }
}
