//! What `--find-max` searches against and what it found: the latency objective ([`Slo`],
//! `--slo p99<=50ms`) and the record of the search ([`FindMax`], one [`Step`] per rate tried),
//! which the report carries as `find_max` and the HTML report draws. Plain data; the search
//! itself is in `find_max.rs`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One latency objective: a percentile at most a duration (`p99<=50ms`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Objective {
    /// 0.5, 0.99 or 0.999.
    pub quantile: f64,
    pub limit: Duration,
}

impl Objective {
    /// `p50`, `p99`, `p99.9`.
    pub fn percentile_name(&self) -> String {
        let p = self.quantile * 100.0;
        let p = format!("{p:.1}");
        format!("p{}", p.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// `--slo`: every objective must hold (`p99<=50ms,p50<=5ms`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Slo(pub Vec<Objective>);

impl Default for Slo {
    /// `p99<=50ms`.
    fn default() -> Self {
        Slo(vec![Objective {
            quantile: 0.99,
            limit: Duration::from_millis(50),
        }])
    }
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, o) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(
                f,
                "{sep}{}<={}",
                o.percentile_name(),
                humantime::format_duration(o.limit)
            )?;
        }
        Ok(())
    }
}

impl FromStr for Slo {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = "write it like p99<=50ms, or p50<=5ms,p99<=50ms (percentiles p50, p90, p99, \
                     p999)";
        let mut objectives = Vec::new();
        for item in s.split(',') {
            let (name, limit) = item
                .trim()
                .split_once("<=")
                .ok_or_else(|| format!("`{item}` is not an objective; {usage}"))?;
            let quantile = match name.trim() {
                "p50" => 0.5,
                "p90" => 0.9,
                "p99" => 0.99,
                "p999" | "p99.9" => 0.999,
                other => return Err(format!("`{other}` is not a percentile I know; {usage}")),
            };
            let limit = humantime::parse_duration(limit.trim())
                .map_err(|e| format!("`{limit}` is not a duration ({e}); {usage}"))?;
            objectives.push(Objective { quantile, limit });
        }
        Ok(Slo(objectives))
    }
}

impl From<Slo> for String {
    fn from(s: Slo) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for Slo {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// How a step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    /// The generator could not keep the schedule: says nothing about the target.
    GeneratorSaturated,
}

/// One step of the search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The rate asked for (req/s).
    pub rate: f64,
    /// Responses per second the step actually got.
    pub achieved: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub requests: u64,
    pub failed: u64,
    pub outcome: Outcome,
    /// Why it failed (empty when it passed).
    pub why: String,
}

/// The search's result, in the report as `find_max`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindMax {
    /// The highest rate that passed, or `None` if none did.
    pub rate: Option<f64>,
    pub slo: Slo,
    pub max_error_rate: f64,
    #[serde(with = "secs")]
    pub step_duration: Duration,
    /// Every judged step, in the order they ran.
    pub steps: Vec<Step>,
    /// True if the search stopped because loadgen saturated: `rate` is then a lower bound.
    pub generator_saturated: bool,
}

/// Durations as float seconds in JSON.
mod secs {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Duration::try_from_secs_f64(f64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objectives() {
        let slo: Slo = "p99<=50ms".parse().unwrap();
        assert_eq!(slo, Slo::default());
        assert_eq!(slo.to_string(), "p99<=50ms");
        let both: Slo = "p50<=5ms, p999<=1s".parse().unwrap();
        assert_eq!(both.0[1].quantile, 0.999);
        assert_eq!(both.to_string(), "p50<=5ms,p99.9<=1s");
        for bad in ["p99", "p98<=1ms", "p99<=fast", ""] {
            assert!(bad.parse::<Slo>().is_err(), "{bad}");
        }
    }
}
