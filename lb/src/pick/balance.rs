//! From the command line to a strategy: `--balance STRATEGY`, `-w N`, `--hash-balance-factor F`
//! are parsed here, and [`build`] makes one strategy object per group.
//!
//! ```text
//!   --balance least-conn ──parse──> Balance::LeastConn ─┐
//!   members [(A, w5), (B, w1)] ──────────────────────────┼─ build ─> Box<dyn Selection>
//!   Settings { slow_start, .. } ─────────────────────────┘           (one per group)
//! ```
//!
//! The errors name the flag and list what is accepted, so that one line on stderr is enough to
//! fix the command.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use http::HeaderName;

use super::{ewma, Ewma, Hash, LeastConn, P2c, RoundRobin, Selection, MAX_WEIGHT, MIN_WEIGHT};

/// The values `--balance` accepts, for help texts and error messages.
pub const BALANCE_VALUES: &str =
    "round-robin, least-conn, p2c, ewma, hash:ip, hash:uri, hash:header:NAME, hash:cookie:NAME";

/// A `--balance` value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Balance {
    /// Smooth weighted round robin (the default, and the original's behaviour).
    #[default]
    RoundRobin,
    LeastConn,
    P2c,
    Ewma,
    Hash(HashKey),
}

/// What `hash:KEY` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address.
    Ip,
    /// Path and query.
    Uri,
    /// A request header; `spelled` is the name as given on the command line, for messages.
    Header { name: HeaderName, spelled: String },
    /// A cookie (names are case-sensitive).
    Cookie(String),
}

impl FromStr for Balance {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let error = |problem: String| ParseError::new("--balance", s, problem);
        let unknown = || error(format!("expected one of {BALANCE_VALUES}"));
        Ok(match s {
            "round-robin" => Balance::RoundRobin,
            "least-conn" => Balance::LeastConn,
            "p2c" => Balance::P2c,
            "ewma" => Balance::Ewma,
            "hash:ip" => Balance::Hash(HashKey::Ip),
            "hash:uri" => Balance::Hash(HashKey::Uri),
            _ => {
                let Some(key) = s.strip_prefix("hash:") else {
                    return Err(unknown());
                };
                let (kind, name) = key.split_once(':').ok_or_else(unknown)?;
                if name.is_empty() {
                    return Err(error(format!(
                        "the {kind} name is missing (e.g. hash:{kind}:{})",
                        if kind == "cookie" {
                            "session"
                        } else {
                            "X-User"
                        }
                    )));
                }
                match kind {
                    "header" => {
                        let header = HeaderName::from_bytes(name.as_bytes())
                            .map_err(|_| error(format!("{name:?} is not a valid header name")))?;
                        Balance::Hash(HashKey::Header {
                            name: header,
                            spelled: name.to_string(),
                        })
                    }
                    "cookie" if is_cookie_name(name) => {
                        Balance::Hash(HashKey::Cookie(name.to_string()))
                    }
                    "cookie" => {
                        return Err(error(format!("{name:?} is not a valid cookie name")));
                    }
                    _ => return Err(unknown()),
                }
            }
        })
    }
}

/// A cookie name is an RFC 9110 token (RFC 6265 §4.1.1): visible ASCII without separators.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Balance::RoundRobin => f.write_str("round-robin"),
            Balance::LeastConn => f.write_str("least-conn"),
            Balance::P2c => f.write_str("p2c"),
            Balance::Ewma => f.write_str("ewma"),
            Balance::Hash(key) => write!(f, "hash:{key}"),
        }
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::Ip => f.write_str("ip"),
            HashKey::Uri => f.write_str("uri"),
            HashKey::Header { spelled, .. } => write!(f, "header:{spelled}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

/// Settings shared by every group's strategy. (`--ewma-decay` is not here: it belongs to each
/// backend's [`Load`](super::Load), which all groups share.)
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `--slow-start`: how long a backend that came back takes to reach its full weight;
    /// zero = off.
    pub slow_start: Duration,
    /// ewma: the round-trip time assumed for a backend not measured yet.
    pub ewma_default_rtt: Duration,
    /// `--hash-balance-factor`: consistent hashing with bounded loads; `None` = unbounded.
    pub hash_balance_factor: Option<f64>,
    /// Seed of p2c's and ewma's random draws; `None` = different in every process. For tests.
    pub seed: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            slow_start: Duration::ZERO,
            ewma_default_rtt: ewma::DEFAULT_RTT,
            hash_balance_factor: None,
            seed: None,
        }
    }
}

/// One member of a group, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberSpec<'a> {
    /// The backend's address as written (`127.0.0.1:8911`): it fixes the member's place in a
    /// hashing table, so keep it stable across restarts.
    pub id: &'a str,
    /// 1..=1000 (`-w`); values outside are clamped.
    pub weight: u32,
}

/// The strategy for one group: its members in slot order (slot i = `members[i]`).
pub fn build(
    balance: &Balance,
    members: &[MemberSpec<'_>],
    settings: &Settings,
) -> Box<dyn Selection> {
    match balance {
        Balance::RoundRobin => Box::new(RoundRobin::new(members, settings)),
        Balance::LeastConn => Box::new(LeastConn::new(members, settings)),
        Balance::P2c => Box::new(P2c::new(members, settings)),
        Balance::Ewma => Box::new(Ewma::new(members, settings)),
        Balance::Hash(key) => Box::new(Hash::new(key.clone(), members, settings)),
    }
}

/// Parse `-w N`: a whole number from 1 to 1000.
pub fn parse_weight(s: &str) -> Result<u32, ParseError> {
    s.parse::<u32>()
        .ok()
        .filter(|w| (MIN_WEIGHT..=MAX_WEIGHT).contains(w))
        .ok_or_else(|| {
            ParseError::new(
                "-w",
                s,
                format!("a weight is a whole number from {MIN_WEIGHT} to {MAX_WEIGHT}"),
            )
        })
}

/// Parse `--hash-balance-factor F`: a number of at least 1 (1.25 = no backend above 125% of the
/// average load).
pub fn parse_balance_factor(s: &str) -> Result<f64, ParseError> {
    s.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite() && *f >= 1.0)
        .ok_or_else(|| {
            ParseError::new(
                "--hash-balance-factor",
                s,
                "expected a number of at least 1, e.g. 1.25 (no backend above 125% of the \
                 average load)"
                    .to_string(),
            )
        })
}

/// A command-line value that could not be used: names the flag, the value and what would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    flag: &'static str,
    value: String,
    problem: String,
}

impl ParseError {
    fn new(flag: &'static str, value: &str, problem: String) -> Self {
        ParseError {
            flag,
            value: value.to_string(),
            problem,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} {:?}: {}",
            self.flag, self.value, self.problem
        )
    }
}

impl std::error::Error for ParseError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_strategy_and_prints_it_back() {
        for s in [
            "round-robin",
            "least-conn",
            "p2c",
            "ewma",
            "hash:ip",
            "hash:uri",
            "hash:header:X-User",
            "hash:cookie:session_id",
        ] {
            let b: Balance = s.parse().unwrap();
            assert_eq!(b.to_string(), s);
        }
        assert_eq!(Balance::default(), Balance::RoundRobin);
        let Ok(Balance::Hash(HashKey::Header { name, .. })) = "hash:header:X-User".parse() else {
            panic!()
        };
        assert_eq!(name, "x-user");
    }

    /// ```text
    /// --balance fastest        invalid --balance "fastest": expected one of round-robin, ...
    /// --balance hash:header:   invalid --balance "hash:header:": the header name is missing ...
    /// ```
    #[test]
    fn errors_name_the_flag_and_the_choices() {
        let err = |s: &str| s.parse::<Balance>().unwrap_err().to_string();
        assert_eq!(
            err("fastest"),
            "invalid --balance \"fastest\": expected one of round-robin, least-conn, p2c, ewma, \
             hash:ip, hash:uri, hash:header:NAME, hash:cookie:NAME"
        );
        assert!(err("hash").contains("expected one of"));
        assert!(err("hash:host").contains("expected one of"));
        assert!(err("Least-Conn").contains("expected one of"));
        assert_eq!(
            err("hash:header:"),
            "invalid --balance \"hash:header:\": the header name is missing (e.g. \
             hash:header:X-User)"
        );
        assert_eq!(
            err("hash:header:X User"),
            "invalid --balance \"hash:header:X User\": \"X User\" is not a valid header name"
        );
        assert!(err("hash:cookie:a;b").contains("not a valid cookie name"));
    }

    #[test]
    fn weights_and_factors() {
        assert_eq!(parse_weight("5"), Ok(5));
        assert_eq!(parse_weight("1000"), Ok(1000));
        for bad in ["0", "1001", "-1", "2.5", "x", ""] {
            assert_eq!(
                parse_weight(bad).unwrap_err().to_string(),
                format!("invalid -w {bad:?}: a weight is a whole number from 1 to 1000")
            );
        }
        assert_eq!(parse_balance_factor("1.25"), Ok(1.25));
        assert_eq!(parse_balance_factor("2"), Ok(2.0));
        for bad in ["0.9", "NaN", "inf", "x"] {
            assert!(parse_balance_factor(bad)
                .unwrap_err()
                .to_string()
                .starts_with("invalid --hash-balance-factor"));
        }
    }
}
