//! What to send: the [`Plan`] a run follows (target, how many requests or for how long, how many
//! connections, open or closed loop, the request itself) and the parsers the command line shares
//! with library users (`Name: value` headers, `500ms` durations, `weights=a:1,b:2`).
//!
//! A `Plan` is plain data: building one never touches the network, so a typo in the URL is a
//! usage error reported before any traffic is sent.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Uri};

use crate::check::Expectation;
use crate::ok_status::OkStatus;
use crate::stages::{Ramp, Ramped};
use crate::tls::Trust;

/// Requests sent when neither a count (`-n`) nor a duration (`-z`) is given.
pub const DEFAULT_REQUESTS: u64 = 200;

/// Per-request timeout when none is given. A request that takes longer is counted as a
/// `timeout` error and its connection is replaced.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The header a balancer's backends use to say who answered.
pub const DEFAULT_BACKEND_HEADER: &str = "x-served-by";

/// Relative tolerance of `even` and `weights=` expectations: a share may be 10% off its target.
pub const DEFAULT_TOLERANCE: f64 = 0.10;

/// Everything a run needs to know. Build it with [`Plan::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The target, always `http://` or `https://host[:port]/path?query` (checked by
    /// [`Plan::new`]).
    pub url: Uri,
    /// Total requests across all connections (`-n`). `None` with no `duration` means
    /// [`DEFAULT_REQUESTS`].
    pub requests: Option<u64>,
    /// How long to send (`-z`). If both `requests` and `duration` are set the run stops at
    /// whichever comes first.
    pub duration: Option<Duration>,
    /// Concurrent connections (`-c`), each driven by its own worker. At least 1.
    pub connections: usize,
    /// Threads that drive the connections (`-t`), each with its own event loop and its share of
    /// the connections. `None`: one per core. Never more than `connections`.
    pub threads: Option<usize>,
    /// Total requests per second (`-q`): switches from the closed loop to the open loop.
    pub rate: Option<f64>,
    /// Load that changes over time (`--stages`, `-q START:END`): a ramp of the open loop's rate
    /// (then `rate` is ignored) or of the closed loop's connections (then `connections` is the
    /// count before the first stage). The run lasts as long as the stages, or `duration` if
    /// that is shorter.
    pub stages: Option<Ramp>,
    pub method: Method,
    /// Extra request headers (`-H`), sent in this order after `Host` and `User-Agent`. A value
    /// holding `{n}` is a template: each request replaces `{n}` with its key (see [`Plan::keys`]).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// How many distinct keys `{n}` takes in `-H` values (`--keys`, default
    /// [`crate::keys::DEFAULT_KEYS`]): request number `i` carries a key drawn reproducibly from
    /// `0..keys` (see `keys.rs`).
    pub keys: u64,
    /// Request body (`-d` / `-D`); empty means no body.
    pub body: Bytes,
    /// Limit for one request, from the moment it is sent (or its connection is opened) to the
    /// last byte of the response body.
    pub timeout: Duration,
    /// `false` (`--no-keepalive`) opens a new connection for every request and sends
    /// `Connection: close`. Over HTTPS, every request then pays a full TLS handshake.
    pub keepalive: bool,
    /// `https://` only: which server certificates to accept (`--cacert`, `--insecure`; default
    /// Mozilla's roots).
    pub trust: Trust,
    /// What the distribution over backends must look like (`--expect`).
    pub expect: Option<Expectation>,
    /// Relative tolerance of `even` and `weights=` (0.10 = 10%).
    pub tolerance: f64,
    /// The response header that names the backend (`--backend-header`, default `X-Served-By`).
    pub backend_header: HeaderName,
    /// Which statuses count as success (`--ok-status`, default `200-399`); any other status is
    /// a failed response.
    pub ok_status: OkStatus,
    /// More failed requests than this, transport errors and failed responses together, make
    /// [`crate::Report::passed`] false (`--max-errors`, default 0).
    pub max_errors: u64,
    /// Keep the first N requests as individual [`crate::Sample`]s in the report (`--samples`).
    /// Everything else is aggregated in histograms, so memory stays constant however long the run.
    pub keep_samples: usize,
    /// Draw a progress bar on stderr (only if stderr is a terminal).
    pub progress: bool,
}

/// Why a [`Plan`] cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("`{0}` is not a valid URL: {1}")]
    InvalidUrl(String, String),
    #[error(
        "`{0}`: only http:// and https:// URLs are supported (write it as http://host:port/path)"
    )]
    UnsupportedScheme(String),
    #[error("`{0}` has no host; write it as http://host:port/path")]
    MissingHost(String),
    #[error(
        "--expect sticky={0} needs requests that carry {0}; send it with -H '{0}: {{n}}' \
         (each request gets one of --keys N values)"
    )]
    StickyHeaderNotSent(String),
    #[error("--keys must be at least 1")]
    NoKeys,
}

impl Plan {
    /// A plan with the defaults of the command line: 1 connection, [`DEFAULT_REQUESTS`] requests,
    /// closed loop, `GET`, keep-alive, 5 s timeout, backend header `X-Served-By`, statuses 200-399
    /// succeed, no failed requests allowed.
    pub fn new(url: &str) -> Result<Plan, PlanError> {
        Ok(Plan {
            url: parse_url(url)?,
            requests: None,
            duration: None,
            connections: 1,
            threads: None,
            rate: None,
            stages: None,
            method: Method::GET,
            headers: Vec::new(),
            keys: crate::keys::DEFAULT_KEYS,
            body: Bytes::new(),
            timeout: DEFAULT_TIMEOUT,
            keepalive: true,
            trust: Trust::default(),
            expect: None,
            tolerance: DEFAULT_TOLERANCE,
            backend_header: HeaderName::from_static(DEFAULT_BACKEND_HEADER),
            ok_status: OkStatus::default(),
            max_errors: 0,
            keep_samples: 0,
            progress: false,
        })
    }

    /// The request budget the workers share: the explicit count, unlimited when only a duration
    /// is given, [`DEFAULT_REQUESTS`] when neither is.
    pub fn request_limit(&self) -> Option<u64> {
        match (self.requests, self.duration) {
            (Some(n), _) => Some(n),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_REQUESTS),
        }
    }

    /// The plan as the run follows it, with `stages` applied: a rate ramp makes the open loop
    /// (at its average rate, for the report's headline), a connection ramp sets `connections`
    /// to its peak (workers above the planned count wait their turn), and either ends the run
    /// with its last stage.
    pub fn with_stages_applied(mut self) -> Plan {
        let Some(ramp) = &self.stages else {
            return self;
        };
        let total = ramp.total();
        self.duration = Some(self.duration.map_or(total, |d| d.min(total)));
        match ramp.ramped {
            Ramped::Rate => {
                let secs = total.as_secs_f64().max(1e-9);
                self.rate = Some(ramp.count_until(secs) / secs);
            }
            Ramped::Connections => {
                self.connections = self.connections.max(ramp.peak() as usize).max(1);
            }
        }
        self
    }

    /// True for an `https://` URL.
    pub fn is_https(&self) -> bool {
        self.url.scheme() == Some(&http::uri::Scheme::HTTPS)
    }

    /// The port to connect to: the URL's, else 443 for https and 80 for http.
    pub fn port(&self) -> u16 {
        let default = if self.is_https() { 443 } else { 80 };
        self.url.port_u16().unwrap_or(default)
    }

    /// True if some `-H` value holds `{n}`, i.e. requests carry keys.
    pub fn has_keys(&self) -> bool {
        self.headers.iter().any(|(_, v)| is_template(v))
    }

    /// Checks that the parts of the plan fit together, beyond what each field's parser checks:
    /// `--expect sticky=HEADER` needs HEADER among the `-H` headers, `--keys` needs a `{n}`.
    pub fn validate(&self) -> Result<(), PlanError> {
        check_sticky_header(self.expect.as_ref(), &self.headers)?;
        if self.keys == 0 {
            return Err(PlanError::NoKeys);
        }
        Ok(())
    }

    /// How many threads the run uses: [`Plan::threads`], else one per core, at least 1 and at
    /// most one per connection (a thread without a connection would have nothing to do).
    pub fn thread_count(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.threads
            .unwrap_or(cores)
            .clamp(1, self.connections.max(1))
    }
}

/// `--expect sticky=HEADER` judges the values of a request header: HEADER must be sent.
pub fn check_sticky_header(
    expect: Option<&Expectation>,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<(), PlanError> {
    match expect {
        Some(Expectation::Sticky(header)) if !headers.iter().any(|(n, _)| n.as_str() == header) => {
            Err(PlanError::StickyHeaderNotSent(header.clone()))
        }
        _ => Ok(()),
    }
}

/// True if a `-H` value holds `{n}`.
pub fn is_template(value: &HeaderValue) -> bool {
    value.as_bytes().windows(3).any(|w| w == b"{n}")
}

/// Checks that `url` is an absolute `http://` or `https://` URL with a host; a missing path
/// becomes `/`.
pub fn parse_url(url: &str) -> Result<Uri, PlanError> {
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| PlanError::InvalidUrl(url.to_owned(), e.to_string()))?;
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {}
        _ => return Err(PlanError::UnsupportedScheme(url.to_owned())),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(PlanError::MissingHost(url.to_owned()));
    }
    Ok(uri)
}

/// Parses a `-H` argument: `Name: value`.
pub fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` has no colon; write a header as -H 'Name: value'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("`{}` is not a valid header name", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("the value of header `{name}` contains invalid characters"))?;
    Ok((name, value))
}

/// Parses `500ms`, `2s`, `1m 30s` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); write it like 500ms, 2s or 1m"))
}

/// Parses a `-q` rate: a positive number of requests per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "`{s}` is not a rate; give requests per second, e.g. 200"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("http://127.0.0.1:8080").unwrap().path(), "/");
        let https = Plan::new("https://example.com/").unwrap();
        assert!(https.is_https());
        assert_eq!(https.port(), 443);
        assert_eq!(Plan::new("HTTP://example.com/").unwrap().port(), 80);
        assert!(matches!(
            parse_url("ftp://x/"),
            Err(PlanError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            parse_url("localhost:80"),
            Err(PlanError::UnsupportedScheme(_))
        ));
        assert!(parse_url("http://").is_err());
    }

    #[test]
    fn headers_and_durations() {
        let (n, v) = parse_header("X-Thing:  a b ").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-thing", "a b"));
        assert!(parse_header("nocolon").is_err());
        let (_, v) = parse_header("X-User: {n}").unwrap();
        assert_eq!(v, "{n}");
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("fast").is_err());
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn sticky_needs_its_header_sent() {
        let mut p = Plan::new("http://h/").unwrap();
        assert!(!p.has_keys());
        p.expect = Some(Expectation::Sticky("x-user".into()));
        assert!(matches!(
            p.validate(),
            Err(PlanError::StickyHeaderNotSent(h)) if h == "x-user"
        ));
        p.headers.push(parse_header("X-User: u{n}").unwrap());
        assert!(p.validate().is_ok());
        assert!(p.has_keys());
    }

    #[test]
    fn default_budget() {
        let mut p = Plan::new("http://h/").unwrap();
        assert_eq!(p.request_limit(), Some(DEFAULT_REQUESTS));
        p.duration = Some(Duration::from_secs(1));
        assert_eq!(p.request_limit(), None);
    }
}
