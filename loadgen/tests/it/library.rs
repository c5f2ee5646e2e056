//! `loadgen::run` against in-process servers.
//!
//! Client: `loadgen::run` itself, awaited in async tests: its `Report` is what is checked, field
//! by field. Targets: `support::Backends` and `support::Sticky` for verdicts, counts and
//! connections; `BadBackend::refused_addr` for a port that refuses.

use std::time::Duration;

use loadgen::{ErrorClass, Expectation, Plan};
use tests::BadBackend;

use crate::support::{Backends, Sticky};

fn plan(url: &str, requests: u64) -> Plan {
    let mut plan = Plan::new(url).unwrap();
    plan.requests = Some(requests);
    plan
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_backends_pass_round_robin() {
    let server = Backends::start(&["a", "b"]);
    let mut plan = plan(&server.url(), 20);
    plan.expect = Some(Expectation::RoundRobin);
    let report = loadgen::run(plan).await.unwrap();
    assert!(report.passed(), "{}", report.render_text());
    assert_eq!(report.requests, 20);
    assert_eq!(report.status.get(&200), Some(&20));
    assert_eq!(report.bytes, 20 * "hello from a\n".len() as u64);
    let counts: Vec<_> = report
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.responses))
        .collect();
    assert_eq!(counts, [("a", 10), ("b", 10)]);
    assert_eq!(report.latency.count(), 20);
    // One keep-alive connection carried everything.
    assert_eq!(server.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_connections_judge_counts() {
    let server = Backends::start(&["a", "b", "c"]);
    let mut plan = plan(&server.url(), 300);
    plan.connections = 4;
    plan.expect = Some(Expectation::RoundRobin);
    let report = loadgen::run(plan).await.unwrap();
    assert!(report.passed(), "{}", report.render_text());
    assert_eq!(report.requests, 300);
    assert_eq!(server.connections(), 4);

    let skewed = Backends::start(&["a", "a", "b"]);
    let mut plan = self::plan(&skewed.url(), 300);
    plan.connections = 4;
    plan.expect = Some(Expectation::Even);
    let report = loadgen::run(plan).await.unwrap();
    assert!(!report.passed());
    let verdict = report.verdict.unwrap();
    assert!(verdict.detail.contains("a got 66.7%"), "{}", verdict.detail);
}

/// Connections spread over three event-loop threads (5 connections: threads get 2, 2 and 1)
/// still share one `-n` budget exactly, and the threads' statistics add up to one report. The
/// caller's runtime is single-threaded: `run` must not need it to do the work.
#[tokio::test(flavor = "current_thread")]
async fn threads_share_one_budget() {
    let server = Backends::start(&["a", "b"]);
    let mut plan = plan(&server.url(), 101);
    plan.connections = 5;
    plan.threads = Some(3);
    plan.expect = Some(Expectation::RoundRobin);
    let report = loadgen::run(plan).await.unwrap();
    assert!(report.passed(), "{}", report.render_text());
    assert_eq!((report.requests, report.responses), (101, 101));
    assert_eq!(report.latency.count(), 101);
    let per_backend: u64 = report.backends.iter().map(|b| b.responses).sum();
    assert_eq!(per_backend, 101);
    assert_eq!(server.connections(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_backend_header_fails_the_expectation() {
    let server = Backends::start(&["a", ""]);
    let mut plan = plan(&server.url(), 6);
    plan.expect = Some(Expectation::RoundRobin);
    let report = loadgen::run(plan).await.unwrap();
    let verdict = report.verdict.clone().unwrap();
    assert_eq!(verdict.first_violation, Some(2), "{}", verdict.detail);
    assert!(
        verdict.detail.contains("had no x-served-by header"),
        "{}",
        verdict.detail
    );
    assert!(report
        .backends
        .iter()
        .any(|b| b.name == "(none)" && b.responses == 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_keeps_the_rate() {
    let server = Backends::start(&["a", "b"]);
    let mut plan = Plan::new(&server.url()).unwrap();
    plan.rate = Some(200.0);
    plan.duration = Some(Duration::from_secs(2));
    plan.connections = 2;
    let report = loadgen::run(plan).await.unwrap();
    // 2 s at 200 req/s schedules exactly 400 sends; all of them complete.
    assert!(
        (390..=410).contains(&report.requests),
        "{}",
        report.render_text()
    );
    assert_eq!(report.errors.total(), 0);
    assert!(matches!(report.model, loadgen::report::LoadModel::Open { rate } if rate == 200.0));
    let uncorrected = report.latency_uncorrected.as_ref().unwrap();
    assert_eq!(uncorrected.count(), report.requests);
    // Measured from the scheduled time, latency can only be longer.
    assert!(report.latency.max() >= uncorrected.max());
    assert!(report.render_text().contains("open loop at 200 req/s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_counted_not_returned() {
    let url = tests::http::url(BadBackend::refused_addr(), "/");
    let report = loadgen::run(plan(&url, 5)).await.unwrap();
    assert_eq!(report.requests, 5);
    assert_eq!(report.responses, 0);
    assert_eq!(report.errors.connect_refused, 5);
    assert!(!report.passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_keepalive_opens_a_connection_per_request() {
    let server = Backends::start(&["a", "b"]);
    let mut plan = plan(&server.url(), 10);
    plan.keepalive = false;
    plan.expect = Some(Expectation::RoundRobin);
    let report = loadgen::run(plan).await.unwrap();
    assert!(report.passed(), "{}", report.render_text());
    assert_eq!(server.connections(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_samples_are_kept() {
    let server = Backends::start(&["a", "b"]);
    let mut plan = plan(&server.url(), 10);
    plan.keep_samples = 4;
    let report = loadgen::run(plan).await.unwrap();
    let seen: Vec<_> = report
        .samples
        .iter()
        .map(|s| (s.index, s.backend.as_deref(), s.status))
        .collect();
    assert_eq!(
        seen,
        [
            (1, Some("a"), Some(200)),
            (2, Some("b"), Some(200)),
            (3, Some("a"), Some(200)),
            (4, Some("b"), Some(200))
        ]
    );
    let url = tests::http::url(BadBackend::refused_addr(), "/");
    let mut plan = self::plan(&url, 3);
    plan.keep_samples = 10;
    let report = loadgen::run(plan).await.unwrap();
    assert_eq!(report.samples.len(), 3);
    assert!(report
        .samples
        .iter()
        .all(|s| s.error == Some(ErrorClass::ConnectRefused)));
}

fn sticky_plan(url: &str, requests: u64, keys: u64) -> Plan {
    let mut plan = plan(url, requests);
    plan.connections = 4;
    plan.headers
        .push(loadgen::plan::parse_header("X-User: user-{n}").unwrap());
    plan.headers
        .push(loadgen::plan::parse_header("X-Team: red").unwrap());
    plan.keys = keys;
    plan.expect = Some("sticky=X-User".parse().unwrap());
    plan
}

/// `-H 'X-User: user-{n}' --keys 20`: every request carries one of 20 values, and a target that
/// hashes on the header keeps each on one backend. Keys are drawn from request numbers, so 400
/// requests always send the same 20 values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_target_passes_sticky() {
    let server = Sticky::start("x-user", &["a", "b", "c"]);
    let report = loadgen::run(sticky_plan(&server.url(), 400, 20))
        .await
        .unwrap();
    assert!(report.passed(), "{}", report.render_text());
    let seen = server.seen();
    let expected: std::collections::BTreeSet<String> =
        (0..20).map(|k| format!("user-{k}")).collect();
    assert_eq!(seen, expected);
    let spread = report.sticky.as_ref().unwrap();
    assert_eq!(spread.keys.len(), 20);
    assert_eq!(spread.moved().count(), 0);
    let detail = &report.verdict.as_ref().unwrap().detail;
    assert!(
        detail.starts_with("20 keys (x-user values), 0 moved"),
        "{detail}"
    );
    // The per-backend table is there as for every run.
    assert_eq!(report.backends.len(), 3, "{}", report.render_text());
}

/// A round robin ignores the header: keys land on both backends, and the verdict names one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_robin_target_fails_sticky_naming_a_key() {
    let server = Backends::start(&["a", "b"]);
    let report = loadgen::run(sticky_plan(&server.url(), 200, 10))
        .await
        .unwrap();
    assert!(!report.passed(), "{}", report.render_text());
    let detail = &report.verdict.as_ref().unwrap().detail;
    assert!(
        detail.starts_with("10 of 10 keys (x-user values) moved between backends: x-user: user-0 was served by a ("),
        "{detail}"
    );
    assert!(detail.contains("), b ("), "{detail}");
}

/// Every run keeps one entry per second: 2 s at 200 req/s are two seconds of about 200 sends
/// each (within 20%: on a busy machine late sends slip into the next second), and the seconds
/// add up to the totals exactly (sends, responses, latencies, backends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_series_has_a_bucket_per_second() {
    let server = Backends::start(&["a", "b"]);
    let mut plan = Plan::new(&server.url()).unwrap();
    plan.rate = Some(200.0);
    plan.duration = Some(Duration::from_secs(2));
    plan.connections = 4;
    let report = loadgen::run(plan).await.unwrap();
    let text = report.render_series();
    let series = &report.series;
    assert!(series.len() >= 2, "{text}");
    for (i, second) in series.iter().take(2).enumerate() {
        assert_eq!(second.second, i as u64);
        assert!((160..=240).contains(&second.sent), "{text}");
        assert_eq!(second.connections, 4, "{text}");
        assert_eq!(second.class(2), second.responses, "{text}");
        let backends: u64 = second.backends.values().map(|b| b.responses).sum();
        assert_eq!(backends, second.responses, "{text}");
        assert!(second.latency.quantile(0.99) >= second.latency.quantile(0.5));
    }
    let sent: u64 = series.iter().map(|s| s.sent).sum();
    assert_eq!(sent, report.requests, "{text}");
    let answered: u64 = series.iter().map(|s| s.responses).sum();
    let timed: u64 = series.iter().map(|s| s.latency.count()).sum();
    assert_eq!((answered, timed), (report.responses, report.responses));
    assert!(report.started_at.is_some());
    // JSON: the fields the issue names.
    let json = serde_json::to_value(&report).unwrap();
    let first = &json["series"][0];
    for field in [
        "second",
        "sent",
        "responses",
        "status",
        "errors",
        "latency",
        "backends",
    ] {
        assert!(!first[field].is_null(), "no {field} in {first}");
    }
    for field in ["p50_us", "p90_us", "p99_us", "max_us"] {
        assert!(first["latency"][field].is_u64(), "no {field} in {first}");
    }
    assert!(first["status"]["2xx"].is_u64(), "{first}");
    assert!(
        first["backends"]["a"]["latency"]["p99_us"].is_u64(),
        "{first}"
    );
    assert!(text.contains("share: a / b"), "{text}");
}
