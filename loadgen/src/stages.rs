//! Load that changes over time: `--stages 10s:100,30s:2000,10s:0` ramps the open loop's rate
//! (k6's ramping arrival rate), `--stages 10s:c=1,20s:c=64` the closed loop's connections (k6's
//! ramping VUs), and `-q 100:2000 -z 30s` is one ramp over the whole run.
//!
//! A [`Ramp`] is a start value and a list of stages; each stage moves the value in a straight
//! line to its target over its duration (a stage of `0s` jumps). It is plain data and a little
//! arithmetic, used in two ways:
//!
//! - **Rates.** The open loop needs the time of each send. At a constant rate `r`, send `i` is
//!   due at `i / r`. Under a ramp the number of sends due by time `t` is the area under the
//!   rate, `N(t) = ∫ r`, piecewise quadratic; send `i` is due when `N(t) = i`, which
//!   [`Ramp::time_of`] solves segment by segment. So the sends follow the planned rate exactly,
//!   second by second, with the same coordinated-omission correction as a constant rate.
//! - **Connections.** The closed loop starts as many workers as the highest count and lets
//!   worker `k` send only while the planned count, rounded, is above `k`
//!   ([`Ramp::active`]); an idle worker closes its connection and sleeps until its turn
//!   ([`Ramp::next_active`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One stage: reach `target` in a straight line over `duration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    #[serde(with = "secs")]
    pub duration: Duration,
    pub target: f64,
}

/// What the stages ramp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ramped {
    /// The open loop's requests per second.
    Rate,
    /// The closed loop's connections.
    Connections,
}

/// A value that starts at `start` and follows `stages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ramp {
    pub ramped: Ramped,
    pub start: f64,
    pub stages: Vec<Stage>,
}

impl Ramp {
    /// How long the stages last in all.
    pub fn total(&self) -> Duration {
        self.stages.iter().map(|s| s.duration).sum()
    }

    /// The highest value the ramp reaches.
    pub fn peak(&self) -> f64 {
        self.stages
            .iter()
            .map(|s| s.target)
            .fold(self.start, f64::max)
    }

    /// Each segment as (start time, end time, value at start, value at end), in seconds.
    fn segments(&self) -> impl Iterator<Item = (f64, f64, f64, f64)> + '_ {
        let mut t = 0.0;
        let mut v = self.start;
        self.stages.iter().map(move |s| {
            let d = s.duration.as_secs_f64();
            let segment = (t, t + d, v, s.target);
            t += d;
            v = s.target;
            segment
        })
    }

    /// The planned value `t` seconds after the start (the last target after the end).
    pub fn value_at(&self, t: f64) -> f64 {
        let mut last = self.start;
        for (t0, t1, v0, v1) in self.segments() {
            if t < t1 {
                if t < t0 {
                    return v0;
                }
                return v0 + (v1 - v0) * (t - t0) / (t1 - t0);
            }
            last = v1;
        }
        last
    }

    /// The points where the plan changes direction: (seconds, value), for drawing it.
    pub fn corners(&self) -> Vec<(f64, f64)> {
        let mut points = vec![(0.0, self.start)];
        points.extend(self.segments().map(|(_, t1, _, v1)| (t1, v1)));
        points
    }

    /// Rate ramps: how many sends are due in the first `t` seconds (`∫ rate`).
    pub fn count_until(&self, t: f64) -> f64 {
        let mut n = 0.0;
        for (t0, t1, v0, v1) in self.segments() {
            let end = t.min(t1);
            if end <= t0 {
                break;
            }
            let tau = end - t0;
            let slope = if t1 > t0 { (v1 - v0) / (t1 - t0) } else { 0.0 };
            n += v0 * tau + slope * tau * tau / 2.0;
        }
        n
    }

    /// Rate ramps: when send number `i` (0-based) is due, in seconds from the start, or `None`
    /// if the stages end before it.
    pub fn time_of(&self, i: u64) -> Option<f64> {
        let i = i as f64;
        let mut n = 0.0;
        for (t0, t1, v0, v1) in self.segments() {
            let d = t1 - t0;
            let in_segment = (v0 + v1) / 2.0 * d;
            if i < n + in_segment {
                // Solve n + v0·τ + a·τ² = i for τ, with a = (v1 - v0) / 2d, in the form that
                // stays exact when a is near zero: τ = 2Δ / (v0 + √(v0² + 4aΔ)).
                let delta = i - n;
                if delta <= 0.0 {
                    return Some(t0);
                }
                let a = (v1 - v0) / (2.0 * d);
                let root = (v0 * v0 + 4.0 * a * delta).max(0.0).sqrt();
                let tau = 2.0 * delta / (v0 + root);
                return Some(t0 + tau.clamp(0.0, d));
            }
            n += in_segment;
        }
        None
    }

    /// Connection ramps: whether worker `k` sends `t` seconds after the start (the planned
    /// count, rounded, is above `k`).
    pub fn active(&self, k: usize, t: f64) -> bool {
        (k as f64) < self.value_at(t).round()
    }

    /// Connection ramps: the first time at or after `t` when worker `k` is active, or `None`
    /// if it never is again before the end.
    pub fn next_active(&self, k: usize, t: f64) -> Option<f64> {
        if self.active(k, t) {
            return Some(t);
        }
        // Active once the planned count reaches k + 0.5 (it then rounds above k).
        let level = k as f64 + 0.5;
        for (t0, t1, v0, v1) in self.segments() {
            if t1 <= t {
                continue;
            }
            let from = t.max(t0);
            let at_from = v0
                + if t1 > t0 {
                    (v1 - v0) * (from - t0) / (t1 - t0)
                } else {
                    0.0
                };
            if at_from >= level {
                return Some(from);
            }
            if v1 >= level && v1 > at_from {
                let when = from + (level - at_from) / (v1 - at_from) * (t1 - from);
                return Some(when.min(t1));
            }
        }
        None
    }
}

impl fmt::Display for Ramp {
    /// The `--stages` syntax: `10s:100,30s:2000` or `10s:c=1,20s:c=64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.stages.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let duration = humantime::format_duration(s.duration);
            match self.ramped {
                Ramped::Rate => write!(f, "{sep}{duration}:{}", s.target)?,
                Ramped::Connections => write!(f, "{sep}{duration}:c={}", s.target)?,
            }
        }
        Ok(())
    }
}

/// A `--stages` value before the start is known (the start comes from `-q` or `-c`).
#[derive(Debug, Clone, PartialEq)]
pub struct StageList {
    pub ramped: Ramped,
    pub stages: Vec<Stage>,
}

impl StageList {
    pub fn starting_at(self, start: f64) -> Ramp {
        Ramp {
            ramped: self.ramped,
            start,
            stages: self.stages,
        }
    }
}

impl FromStr for StageList {
    type Err = String;

    /// `10s:100,30s:2000,10s:0` (rates) or `10s:c=1,20s:c=64` (connections), not mixed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = "write stages as DURATION:RATE,... (e.g. 10s:100,30s:2000,10s:0) or \
                     DURATION:c=CONNECTIONS,... (e.g. 10s:c=1,20s:c=64)";
        let mut ramped = None;
        let mut stages = Vec::new();
        for item in s.split(',') {
            let (duration, target) = item
                .trim()
                .split_once(':')
                .ok_or_else(|| format!("`{item}` has no colon; {usage}"))?;
            let duration = humantime::parse_duration(duration.trim()).map_err(|e| {
                format!("`{duration}` in `{item}` is not a duration ({e}); {usage}")
            })?;
            let (kind, value) = match target.trim().strip_prefix("c=") {
                Some(c) => (Ramped::Connections, c),
                None => (Ramped::Rate, target.trim()),
            };
            let target: f64 = match value.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => v,
                _ => return Err(format!("`{value}` in `{item}` is not a number; {usage}")),
            };
            if kind == Ramped::Connections && target.fract() != 0.0 {
                return Err(format!(
                    "`c={value}` in `{item}`: connections are a whole number"
                ));
            }
            if *ramped.get_or_insert(kind) != kind {
                return Err(format!(
                    "`{s}` mixes rates and connection counts; ramp one or the other ({usage})"
                ));
            }
            stages.push(Stage { duration, target });
        }
        let ramped = ramped.ok_or_else(|| format!("no stages in `{s}`; {usage}"))?;
        if stages.iter().all(|s| s.duration.is_zero()) {
            return Err(format!(
                "`{s}` lasts no time; give at least one stage a duration"
            ));
        }
        if ramped == Ramped::Connections && stages.iter().all(|s| s.target < 1.0) {
            return Err(format!(
                "`{s}` never has a connection; give a stage c=1 or more"
            ));
        }
        Ok(StageList { ramped, stages })
    }
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

    fn rates(start: f64, s: &str) -> Ramp {
        s.parse::<StageList>().unwrap().starting_at(start)
    }

    /// ```text
    /// rate
    ///  400 |            ______
    ///  200 |     ______/
    ///    0 |____/
    ///      0    1    2    3    4 s     sends per second: 100, 200, 300, 400
    /// ```
    #[test]
    fn sends_follow_the_planned_rate() {
        let r = rates(0.0, "1s:200,1s:200,1s:400,1s:400");
        assert_eq!(r.total(), Duration::from_secs(4));
        assert_eq!(r.peak(), 400.0);
        let per_second: Vec<f64> = (0..4)
            .map(|s| r.count_until(f64::from(s + 1)) - r.count_until(f64::from(s)))
            .collect();
        assert_eq!(per_second, [100.0, 200.0, 300.0, 400.0]);
        // Send i is due when i sends are due: the two functions are inverse.
        for i in [0, 1, 50, 99, 100, 250, 299, 300, 600, 999] {
            let t = r.time_of(i).unwrap();
            assert!(
                (r.count_until(t) - i as f64).abs() < 1e-6,
                "send {i} at {t}"
            );
        }
        assert_eq!(r.time_of(1000), None);
        assert_eq!(r.value_at(0.5), 100.0);
        assert_eq!(r.value_at(9.0), 400.0);
        // A constant rate is the plain schedule: i / rate.
        let flat = rates(100.0, "2s:100");
        assert!((flat.time_of(150).unwrap() - 1.5).abs() < 1e-9);
        // A ramp down to zero ends with its last send before the end.
        let down = rates(100.0, "1s:0");
        assert_eq!(down.count_until(1.0), 50.0);
        assert!(down.time_of(49).unwrap() < 1.0);
        assert_eq!(down.time_of(50), None);
    }

    /// ```text
    /// connections   stages 1s:c=2, 0s:c=6, 1s:c=6, 1s:c=2 from c=1
    ///   6 |         ______
    ///   2 |    ____/      \
    ///   1 |___/            \___
    /// ```
    #[test]
    fn workers_take_turns_with_the_planned_count() {
        let r = "1s:c=2,0s:c=6,1s:c=6,1s:c=2"
            .parse::<StageList>()
            .unwrap()
            .starting_at(1.0);
        assert_eq!(r.peak(), 6.0);
        assert!(r.active(0, 0.0) && !r.active(1, 0.0));
        assert!(r.active(1, 0.6));
        assert!(r.active(5, 1.0) && r.active(5, 1.9));
        assert!(!r.active(5, 2.2));
        assert_eq!(r.next_active(1, 0.0), Some(0.5));
        assert_eq!(r.next_active(5, 0.2), Some(1.0));
        assert_eq!(r.next_active(5, 2.5), None);
    }

    #[test]
    fn parsing() {
        let s: StageList = "10s:100,30s:2000,10s:0".parse().unwrap();
        assert_eq!(s.ramped, Ramped::Rate);
        assert_eq!(s.stages.len(), 3);
        assert_eq!(
            s.clone().starting_at(0.0).to_string(),
            "10s:100,30s:2000,10s:0"
        );
        let c: StageList = "10s:c=1,20s:c=64".parse().unwrap();
        assert_eq!(c.ramped, Ramped::Connections);
        assert_eq!(c.starting_at(1.0).to_string(), "10s:c=1,20s:c=64");
        for bad in [
            "10s",
            "10s:fast",
            "soon:100",
            "10s:100,10s:c=2",
            "0s:100",
            "1s:c=1.5",
            "",
        ] {
            assert!(bad.parse::<StageList>().is_err(), "{bad}");
        }
    }
}
