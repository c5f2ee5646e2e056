//! `--find-max`: the highest open-loop rate at which the target still meets a latency objective
//! (`--slo p99<=50ms`) with few enough failed requests (`--max-error-rate 0.1%`), found by a
//! search instead of by hand, run after run (what one does with wrk2; Envoy's Nighthawk is the
//! one tool that automates it).
//!
//! **The search.** A warm-up at the starting rate (half a step, not judged: connections opened,
//! caches and JITs warm), then an exponential climb, doubling the rate while steps pass, then a
//! binary search between the last rate that passed and the first that failed, until they are
//! within [`PRECISION`] of each other. Each step is a whole open-loop run of `--step-duration`
//! (default 5 s: long enough for a p99 of a few thousand requests) and is judged on its own.
//! The open loop matters: a closed loop slows down with the target and would hide the queue
//! that builds up beyond its limit; the open loop keeps sending and the queue shows in the
//! corrected latency.
//!
//! **Whose limit.** A step is only the target's failure if loadgen itself kept up. When the
//! generator's own lateness made the step's latency untrustworthy (see
//! [`crate::report::Pacing`]), the step is reported as *generator saturated*, the search stops
//! there, and the rate found is only a lower bound of the target's limit: it is never counted
//! as the target's.

use std::time::Duration;

use crate::plan::Plan;
use crate::report::{fmt_duration, fmt_rate, Pacing, Report};
use crate::run::RunError;
use crate::slo::{FindMax, Outcome, Slo, Step};

/// The search stops when the last passing and the first failing rate are this close
/// (relative): 10%.
pub const PRECISION: f64 = 0.10;

/// At most this many judged steps, climb and binary search together.
pub const MAX_STEPS: usize = 24;

/// How to search.
#[derive(Debug, Clone)]
pub struct Search {
    pub slo: Slo,
    /// Largest share (0..=1) of failed requests (errors and statuses outside `--ok-status`) a
    /// passing step may have.
    pub max_error_rate: f64,
    pub step_duration: Duration,
    /// The first step's rate (and the warm-up's).
    pub start_rate: f64,
}

/// The search as text: the result line, then the curve (rate -> latency), one step per line.
pub fn render_text(found: &FindMax) -> String {
    let mut s = String::new();
    let errors = format!("{}% failed requests", found.max_error_rate * 100.0);
    // The rate where loadgen fell behind, and the lowest rate the target failed.
    let saturated_at = found
        .steps
        .iter()
        .find(|s| s.outcome == Outcome::GeneratorSaturated)
        .map(|s| s.rate);
    let failed_at = found
        .steps
        .iter()
        .filter(|s| s.outcome == Outcome::Fail)
        .map(|s| s.rate)
        .min_by(f64::total_cmp);
    let result = match found.rate {
        Some(rate) if found.generator_saturated => format!(
            "at least {} req/s meet {} with at most {errors}; the search stopped at {} req/s, \
             where loadgen itself fell behind, so the target's limit is {} (give loadgen more \
             CPU to search further)",
            fmt_rate(rate),
            found.slo,
            saturated_at.map_or_else(|| "?".to_owned(), fmt_rate),
            match failed_at {
                Some(bad) => format!("between {} and {} req/s", fmt_rate(rate), fmt_rate(bad)),
                None => format!("{} req/s or more", fmt_rate(rate)),
            }
        ),
        Some(rate) => format!(
            "{} req/s is the highest rate that meets {} with at most {errors}",
            fmt_rate(rate),
            found.slo
        ),
        None if found.generator_saturated => "loadgen could not keep its own schedule before \
            any rate passed, so nothing is known of the target's limit; give loadgen more CPU \
            (fewer other processes, more cores), or start lower with -q"
            .to_owned(),
        None => format!(
            "no rate tried meets {} with at most {errors}; start lower with -q",
            found.slo
        ),
    };
    s.push_str(&format!("Find max: {result}\n"));
    s.push_str(&format!("  {}\n", step_header()));
    let mut curve = found.steps.clone();
    curve.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    for step in &curve {
        s.push_str(&format!("  {}\n", step_line(step)));
    }
    s
}

/// The titles of [`step_line`]'s columns.
pub fn step_header() -> String {
    format!(
        "{:>9} {:>9} {:>9} {:>9} {:>9} {:>8}  {}",
        "asked/s", "achieved", "p50", "p99", "p99.9", "failed", "result"
    )
}

/// One step as a table row (also what `--find-max` prints as it goes).
pub fn step_line(step: &Step) -> String {
    let failed = if step.requests > 0 {
        step.failed as f64 / step.requests as f64 * 100.0
    } else {
        0.0
    };
    let result = match step.outcome {
        Outcome::Pass => "pass".to_owned(),
        Outcome::Fail => format!("fail: {}", step.why),
        Outcome::GeneratorSaturated => format!("generator saturated: {}", step.why),
    };
    format!(
        "{:>9} {:>9.1} {:>9} {:>9} {:>9} {:>7.2}%  {result}",
        fmt_rate(step.rate),
        step.achieved,
        fmt_duration(Duration::from_micros(step.p50_us)),
        fmt_duration(Duration::from_micros(step.p99_us)),
        fmt_duration(Duration::from_micros(step.p999_us)),
        failed
    )
}

/// Judges one step's report.
fn judge(rate: f64, report: &Report, search: &Search) -> Step {
    let achieved = report.requests_per_sec;
    let failed = report.failed_requests();
    let latency = &report.latency;
    let mut why = Vec::new();
    let outcome = if report.pacing == Some(Pacing::Untrustworthy) {
        why.push(format!(
            "its own sends were late by up to {} at p99",
            report
                .send_lateness
                .as_ref()
                .map_or_else(|| "?".to_owned(), |l| fmt_duration(l.quantile(0.99)))
        ));
        Outcome::GeneratorSaturated
    } else {
        for o in &search.slo.0 {
            let got = latency.quantile(o.quantile);
            if got > o.limit {
                why.push(format!(
                    "{} {} > {}",
                    o.percentile_name(),
                    fmt_duration(got),
                    humantime::format_duration(o.limit)
                ));
            }
        }
        let error_rate = match report.requests {
            0 => 1.0,
            n => failed as f64 / n as f64,
        };
        if error_rate > search.max_error_rate {
            why.push(format!(
                "{:.2}% failed > {}%",
                error_rate * 100.0,
                search.max_error_rate * 100.0
            ));
        }
        if why.is_empty() {
            Outcome::Pass
        } else {
            Outcome::Fail
        }
    };
    Step {
        rate,
        achieved,
        p50_us: latency.quantile(0.5).as_micros() as u64,
        p99_us: latency.quantile(0.99).as_micros() as u64,
        p999_us: latency.quantile(0.999).as_micros() as u64,
        requests: report.requests,
        failed,
        outcome,
        why: why.join(", "),
    }
}

/// Runs the search with `plan` (its target, connections, request; its rate, count and
/// duration are the search's). `on_step` sees each step as it ends. Returns the report of the
/// highest passing step (of the last step if none passed) with [`Report::find_max`] set.
pub async fn find_max(
    plan: Plan,
    search: &Search,
    mut on_step: impl FnMut(&Step),
) -> Result<Report, RunError> {
    let step_plan = |rate: f64, duration: Duration| {
        let mut p = plan.clone();
        p.rate = Some(rate);
        p.stages = None;
        p.requests = None;
        p.duration = Some(duration);
        p.expect = None;
        // The step's report passes or fails by the same error budget the search uses.
        let sends = rate * duration.as_secs_f64();
        p.max_errors = (sends * search.max_error_rate).floor() as u64;
        p
    };
    let start = search.start_rate.max(1.0);
    // Warm-up: not judged.
    crate::run(step_plan(start, search.step_duration / 2)).await?;

    let mut steps: Vec<Step> = Vec::new();
    let mut best: Option<(f64, Report)> = None;
    let mut last: Option<Report> = None;
    let mut good: Option<f64> = None;
    let mut bad: Option<f64> = None;
    let mut saturated = false;
    let mut rate = start;
    while steps.len() < MAX_STEPS {
        let report = crate::run(step_plan(rate, search.step_duration)).await?;
        let step = judge(rate, &report, search);
        on_step(&step);
        let outcome = step.outcome;
        steps.push(step);
        match outcome {
            Outcome::GeneratorSaturated => {
                saturated = true;
                last = Some(report);
                break;
            }
            Outcome::Pass => {
                good = Some(rate);
                if best.as_ref().is_none_or(|(r, _)| rate > *r) {
                    best = Some((rate, report));
                }
            }
            Outcome::Fail => {
                bad = Some(rate);
                last = Some(report);
            }
        }
        rate = match (good, bad) {
            // Still climbing: double.
            (Some(g), None) => g * 2.0,
            // Nothing passed yet: halve, down to 1 req/s.
            (None, Some(b)) if b / 2.0 >= 1.0 => b / 2.0,
            (None, _) => break,
            (Some(g), Some(b)) if b <= g * (1.0 + PRECISION) => break,
            (Some(g), Some(b)) => (g + b) / 2.0,
        };
    }
    let result = FindMax {
        rate: good,
        slo: search.slo.clone(),
        max_error_rate: search.max_error_rate,
        step_duration: search.step_duration,
        steps,
        generator_saturated: saturated,
    };
    let mut report = match (best, last) {
        (Some((_, report)), _) | (None, Some(report)) => report,
        // Only reachable with no step at all (MAX_STEPS = 0).
        (None, None) => Report::default(),
    };
    report.find_max = Some(result);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: f64, p99_ms: u64, outcome: Outcome) -> Step {
        Step {
            rate,
            achieved: rate,
            p50_us: 300,
            p99_us: p99_ms * 1000,
            p999_us: p99_ms * 1500,
            requests: rate as u64 * 2,
            failed: 0,
            outcome,
            why: String::new(),
        }
    }

    fn search(steps: Vec<Step>, rate: Option<f64>, saturated: bool) -> FindMax {
        FindMax {
            rate,
            slo: "p99<=10ms".parse().unwrap(),
            max_error_rate: 0.001,
            step_duration: Duration::from_secs(2),
            steps,
            generator_saturated: saturated,
        }
    }

    /// ```text
    /// asked   1000  2000  4000  3000  3500
    /// result  pass  pass  fail  pass  generator saturated
    /// ```
    /// The target failed at 4000 and passed 3000; 3500 says nothing about it.
    #[test]
    fn the_result_names_whose_limit_it_is() {
        let steps = vec![
            step(1000.0, 6, Outcome::Pass),
            step(2000.0, 9, Outcome::Pass),
            step(4000.0, 16, Outcome::Fail),
            step(3000.0, 8, Outcome::Pass),
            step(3500.0, 15, Outcome::GeneratorSaturated),
        ];
        let text = render_text(&search(steps.clone(), Some(3000.0), true));
        assert!(
            text.starts_with(
                "Find max: at least 3000 req/s meet p99<=10ms with at most 0.1% failed \
                 requests; the search stopped at 3500 req/s, where loadgen itself fell behind, \
                 so the target's limit is between 3000 and 4000 req/s"
            ),
            "{text}"
        );
        // The curve is sorted by rate.
        let rates: Vec<&str> = text
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(rates, ["1000", "2000", "3000", "3500", "4000"]);

        let text = render_text(&search(steps[..4].to_vec(), Some(3000.0), false));
        assert!(text.starts_with("Find max: 3000 req/s is the highest rate that meets"));
        let text = render_text(&search(vec![step(100.0, 90, Outcome::Fail)], None, false));
        assert!(text.contains("no rate tried meets p99<=10ms"), "{text}");
    }
}
