//! Load that changes over time: each stage's rate (or connection count) shows in the series,
//! second by second, within 5%. The rates depend on loadgen sending on time, which a machine
//! busy with other work can prevent; each open-loop test tries twice before failing.
//!
//! Client: `loadgen::run` for `--stages` (its report's series is checked), the binary
//! (`support::loadgen`) for `-q START:END`, which is a command-line form. Target:
//! `support::Backends`, which counts connections.

use std::time::Duration;

use loadgen::stages::StageList;
use loadgen::{Plan, Report};

use crate::support::{loadgen, Backends};

/// Each second's sends against what the plan asked for it, within 5%.
fn check_rates(report: &Report, expected: &[f64]) -> Result<(), String> {
    let table = report.render_series();
    for (second, want) in expected.iter().enumerate() {
        let sent = report.series.get(second).map_or(0, |s| s.sent) as f64;
        if (sent - want).abs() > want * 0.05 {
            return Err(format!(
                "second {second}: {sent} sent, {want} planned\n{table}"
            ));
        }
    }
    Ok(())
}

/// A step: 1 s at 100 req/s, then at once 400 req/s for 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_stages_reach_their_rates() {
    let server = Backends::start(&["a"]);
    let mut failure = String::new();
    for _attempt in 1..=2 {
        let mut plan = Plan::new(&server.url()).unwrap();
        plan.connections = 8;
        plan.stages = Some(
            "1s:100,0s:400,1s:400"
                .parse::<StageList>()
                .unwrap()
                .starting_at(100.0),
        );
        let report = loadgen::run(plan).await.unwrap();
        let text = report.render_text();
        assert_eq!(report.errors.total(), 0, "{text}");
        assert!(
            text.contains("Stages: 1s:100,0s:400,1s:400 (rate from 100 req/s"),
            "{text}"
        );
        match check_rates(&report, &[100.0, 400.0]) {
            Ok(()) => return,
            Err(e) => failure = e,
        }
    }
    panic!("twice: {failure}");
}

/// `-q 100:300 -z 2s`: a linear ramp, so 150 sends in the first second and 250 in the second.
#[test]
fn a_rate_ramp_over_the_run() {
    let server = Backends::start(&["a"]);
    let url = server.url();
    let args = [
        url.as_str(),
        "-q",
        "100:300",
        "-z",
        "2s",
        "-c",
        "8",
        "--output",
        "json",
    ];
    let mut failure = String::new();
    for _attempt in 1..=2 {
        let report: Report = loadgen(&args).json();
        assert_eq!(report.errors.total(), 0, "{}", report.render_text());
        assert_eq!(report.requests, 400, "{}", report.render_text());
        match check_rates(&report, &[150.0, 250.0]) {
            Ok(()) => return,
            Err(e) => failure = e,
        }
    }
    panic!("twice: {failure}");
}

/// Connections: 2 for a second, then 6 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_stages_ramp_the_connections() {
    let server = Backends::start(&["a"]);
    let mut plan = Plan::new(&server.url()).unwrap();
    plan.connections = 2;
    plan.duration = Some(Duration::from_secs(10));
    plan.stages = Some(
        "1s:c=2,0s:c=6,1s:c=6"
            .parse::<StageList>()
            .unwrap()
            .starting_at(2.0),
    );
    let report = loadgen::run(plan).await.unwrap();
    let table = report.render_series();
    assert_eq!(report.connections, 6, "{table}");
    assert!(report.duration < Duration::from_millis(2500), "{table}");
    let used: Vec<u64> = report
        .series
        .iter()
        .take(2)
        .map(|s| s.connections)
        .collect();
    assert_eq!(used, [2, 6], "{table}");
    assert_eq!(server.connections(), 6);
}
