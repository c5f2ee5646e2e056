//! Which response statuses count as success (`--ok-status`, default `200-399`).
//!
//! A load test that reports "PASS" while the target answered 502 to every request has measured
//! how fast the target fails, not how fast it works. So by default a response whose status is
//! outside 2xx and 3xx is a *failed response*: it is counted next to the transport errors and
//! against `--max-errors`. The range is a choice, not a law (a test of a rate limiter wants its
//! 429s), so it can be widened or narrowed; `100-599` accepts every status there is and gives
//! wrk's behaviour: report the statuses, do not judge them.
//!
//! The set is written as a comma-separated list of codes and ranges, `200-399` or
//! `200,204,300-399`; [`OkStatus`] keeps it as sorted, merged ranges and prints it back in the
//! same form.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The smallest and largest status codes a response can carry. RFC 9110 §15 defines 100-599;
/// the `http` crate accepts any three-digit code, so an odd server's 999 can still be named.
const LOWEST: u16 = 100;
const HIGHEST: u16 = 999;

/// A set of status codes, as inclusive ranges that are sorted and never overlap or touch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct OkStatus {
    ranges: Vec<(u16, u16)>,
}

/// Why an `--ok-status` value cannot be read. Each message ends with how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OkStatusError {
    #[error("`{0}` is not a status code or range; write codes and ranges like 200-399 or 200,204,300-399")]
    NotACode(String),
    #[error("`{0}` is outside {LOWEST}-{HIGHEST}; status codes have three digits, e.g. 200-399")]
    OutOfRange(String),
    #[error("`{0}` runs backwards; write the lower code first, e.g. 200-399")]
    Backwards(String),
}

impl OkStatus {
    /// 2xx and 3xx: the answers that mean the server did what was asked (RFC 9110 §15.3, §15.4).
    pub fn success_and_redirects() -> OkStatus {
        OkStatus {
            ranges: vec![(200, 399)],
        }
    }

    /// Every status: report them, judge none (wrk's behaviour).
    pub fn any() -> OkStatus {
        OkStatus {
            ranges: vec![(LOWEST, HIGHEST)],
        }
    }

    /// True if a response with this status counts as a success.
    pub fn contains(&self, code: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

impl Default for OkStatus {
    fn default() -> Self {
        OkStatus::success_and_redirects()
    }
}

impl FromStr for OkStatus {
    type Err = OkStatusError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let code = |text: &str| -> Result<u16, OkStatusError> {
            let text = text.trim();
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(OkStatusError::NotACode(s.to_owned()));
            }
            match text.parse::<u16>() {
                Ok(c) if (LOWEST..=HIGHEST).contains(&c) => Ok(c),
                _ => Err(OkStatusError::OutOfRange(text.to_owned())),
            }
        };
        let mut ranges = Vec::new();
        for item in s.split(',') {
            let (lo, hi) = match item.split_once('-') {
                Some((lo, hi)) => (code(lo)?, code(hi)?),
                None => {
                    let c = code(item)?;
                    (c, c)
                }
            };
            if lo > hi {
                return Err(OkStatusError::Backwards(item.trim().to_owned()));
            }
            ranges.push((lo, hi));
        }
        // Sorted and merged, so that equal sets print the same and `200-299,300-399` reads back
        // as `200-399`.
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Ok(OkStatus { ranges: merged })
    }
}

impl fmt::Display for OkStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl From<OkStatus> for String {
    fn from(s: OkStatus) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for OkStatus {
    type Error = OkStatusError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges() {
        let ok: OkStatus = "200,204,300-399".parse().unwrap();
        //  code:   200  201  204  299  300  399  400  502
        //  ok?:     y    n    y    n    y    y    n    n
        let seen: Vec<bool> = [200, 201, 204, 299, 300, 399, 400, 502]
            .iter()
            .map(|c| ok.contains(*c))
            .collect();
        assert_eq!(
            seen,
            [true, false, true, false, true, true, false, false],
            "{ok}"
        );
        assert_eq!(ok.to_string(), "200,204,300-399");
        assert_eq!(OkStatus::default().to_string(), "200-399");
        // Touching and overlapping ranges merge, whatever order they come in.
        let merged: OkStatus = "300-399, 200-299,250".parse().unwrap();
        assert_eq!(merged, OkStatus::default());
        assert!("100-599".parse::<OkStatus>().unwrap().contains(502));
    }

    #[test]
    fn bad_values_say_how_to_write_them() {
        for (bad, says) in [
            ("", "write codes and ranges like 200-399"),
            ("2xx", "is not a status code"),
            ("200-", "is not a status code"),
            ("200;300", "is not a status code"),
            ("99", "outside 100-999"),
            ("200-1000", "outside 100-999"),
            ("399-200", "runs backwards"),
        ] {
            let err = bad.parse::<OkStatus>().unwrap_err().to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn json_is_the_written_form() {
        let ok: OkStatus = "200,204".parse().unwrap();
        let json = serde_json::to_string(&ok).unwrap();
        assert_eq!(json, "\"200,204\"");
        assert_eq!(serde_json::from_str::<OkStatus>(&json).unwrap(), ok);
        assert!(serde_json::from_str::<OkStatus>("\"nope\"").is_err());
    }
}
