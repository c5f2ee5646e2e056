//! The `loadgen` binary: what a user sees (exit codes, report text, JSON files, `merge`).
//!
//! Client: the binary, run to its end with `assert_cmd` (`support::loadgen`): its exit code and
//! what it prints are the point. Targets: `support::Backends` for verdicts, `BadBackend` for a
//! fixed status, a silent port and a refused one.

use loadgen::Report;
use tests::{BadBackend, Behaviour};

use crate::support::{loadgen, Backends, Sticky};

#[test]
fn round_robin_passes_with_exit_0() {
    let server = Backends::start(&["a", "b"]);
    let url = server.url();
    let args = ["--expect", "round-robin", "-n", "20", &url];
    let out = loadgen(&args);
    assert_eq!(out.code(), Some(0), "{out}");
    // Not a terminal: no progress line, nothing but the report.
    assert!(out.stderr().is_empty(), "{out}");
    let text = out.stdout();
    for needle in [
        "Latency",
        "Requests/sec",
        "200: 20",
        "Expect round-robin: PASS",
    ] {
        assert!(text.contains(needle), "missing {needle:?}\n{out}");
    }
}

#[test]
fn two_to_one_pattern_fails_round_robin_at_its_index() {
    let server = Backends::start(&["a", "a", "b"]);
    let url = server.url();
    let args = [url.as_str(), "-n", "12", "--expect", "round-robin"];
    let out = loadgen(&args);
    assert_eq!(out.code(), Some(1), "{out}");
    let text = out.stdout();
    assert!(
        text.contains("request #3 went to b, expected a; sequence around it: a a [b] a a b"),
        "{out}"
    );
}

#[test]
fn timeouts_are_errors_with_exit_1() {
    let silent = BadBackend::start().unwrap();
    silent.set_override(Some(Behaviour::Hang));
    let url = tests::http::url(silent.addr(), "/");
    let args = [url.as_str(), "-n", "3", "--timeout", "200ms"];
    let out = loadgen(&args);
    assert_eq!(out.code(), Some(1), "{out}");
    let text = out.stdout();
    assert!(text.contains("timeout 3"), "{out}");
    assert!(text.contains("more than --max-errors 0"), "{out}");

    // Allowing them turns the run green.
    let args = [
        url.as_str(),
        "-n",
        "2",
        "--timeout",
        "100ms",
        "--max-errors",
        "2",
    ];
    let out = loadgen(&args);
    assert_eq!(out.code(), Some(0), "{out}");
}

/// A target that answers 502 to everything has not served the load: by default the run fails
/// and says why. `--ok-status 100-599` only reports the statuses, as wrk does.
#[test]
fn failed_responses_fail_the_run_unless_accepted() {
    let server = BadBackend::start().unwrap();
    server.set_override(Some(Behaviour::Status(502)));
    let url = tests::http::url(server.addr(), "/");
    let args = [url.as_str(), "-n", "3"];
    let out = loadgen(&args);
    assert_eq!(out.code(), Some(1), "{out}");
    let text = out.stdout();
    for needle in [
        "502: 3",
        "Errors:       none",
        "Failed responses: 3 (status outside 200-399)",
        "FAIL: 3 failed responses, more than --max-errors 0",
        "--ok-status 100-599 reports statuses without judging them",
        "Result: FAIL",
    ] {
        assert!(text.contains(needle), "missing {needle:?}\n{out}");
    }

    let args = [url.as_str(), "-n", "3", "--output", "json"];
    let out = loadgen(&args);
    assert_eq!(out.code(), Some(1), "{out}");
    let json: serde_json::Value = out.json();
    assert_eq!(json["failed_responses"], 3, "{out}");
    assert_eq!(json["ok_status"], "200-399", "{out}");

    let args = [url.as_str(), "-n", "3", "--ok-status", "100-599"];
    let out = loadgen(&args);
    assert_eq!(out.code(), Some(0), "{out}");
    let text = out.stdout();
    assert!(text.contains("502: 3"), "{out}");
    assert!(
        text.contains("Failed responses: 0 (status outside 100-599)"),
        "{out}"
    );

    // Or allow a few: failed responses count against --max-errors like transport errors.
    let args = [url.as_str(), "-n", "3", "--max-errors", "3"];
    let out = loadgen(&args);
    assert_eq!(out.code(), Some(0), "{out}");
}

/// A typo in `--ok-status` is a usage error: one line that names the flag and shows the form.
#[test]
fn bad_ok_status_is_a_usage_error() {
    for bad in ["2xx", "399-200", "200-1000"] {
        let args = ["http://127.0.0.1:1/", "--ok-status", bad];
        let out = loadgen(&args);
        assert_eq!(out.code(), Some(2), "{out}");
        let err = out.stderr();
        let first = err.lines().next().unwrap_or_default();
        // The fix is spelled out: every message shows a well-formed value.
        assert!(
            first.contains("--ok-status") && first.contains("200-399"),
            "{out}"
        );
    }
}

#[test]
fn refused_connections_exit_1() {
    let url = tests::http::url(BadBackend::refused_addr(), "/");
    let args = [url.as_str(), "-n", "4", "--output", "json"];
    let out = loadgen(&args);
    assert_eq!(out.code(), Some(1), "{out}");
    let report: Report = out.json();
    assert_eq!(report.errors.connect_refused, 4);
    assert_eq!(report.requests, 4);
}

#[test]
fn json_reports_round_trip_and_merge_adds_up() {
    let server = Backends::start(&["a", "b"]);
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut runs = Vec::new();
    for (name, n) in [("one.json", "30"), ("two.json", "50")] {
        let path = dir.path().join(name).display().to_string();
        let args = [
            url.as_str(),
            "-n",
            n,
            "-c",
            "2",
            "--json-out",
            &path,
            "--quiet",
        ];
        let out = loadgen(&args);
        assert_eq!(out.code(), Some(0), "{out}");
        let text = std::fs::read_to_string(&path).unwrap();
        let report: Report = serde_json::from_str(&text).unwrap();
        // Reading and writing again gives the same JSON: nothing is lost on the way.
        assert_eq!(serde_json::to_string_pretty(&report).unwrap() + "\n", text);
        runs.push(report);
        files.push(path);
    }
    let args = ["merge", &files[0], &files[1], "--output", "json"];
    let out = loadgen(&args);
    assert_eq!(out.code(), Some(0), "{out}");
    let merged: Report = out.json();
    assert_eq!(merged.requests, 80);
    assert_eq!(merged.responses, runs[0].responses + runs[1].responses);
    assert_eq!(merged.bytes, runs[0].bytes + runs[1].bytes);
    assert_eq!(merged.status.get(&200), Some(&80));
    assert_eq!(merged.latency.count(), 80);
    assert_eq!(merged.duration, runs[0].duration.max(runs[1].duration));
    let backends: u64 = merged.backends.iter().map(|b| b.responses).sum();
    assert_eq!(backends, 80);
    // The series survives: the two runs' seconds, aligned by wall clock, add up to the totals.
    let sent: u64 = merged.series.iter().map(|s| s.sent).sum();
    let answered: u64 = merged.series.iter().map(|s| s.responses).sum();
    let per_second_latencies: u64 = merged.series.iter().map(|s| s.latency.count()).sum();
    assert_eq!((sent, answered, per_second_latencies), (80, 80, 80));
    let a_seconds: u64 = merged
        .series
        .iter()
        .filter_map(|s| s.backends.get("a"))
        .map(|b| b.responses)
        .sum();
    assert_eq!(a_seconds, 40);

    let args = ["merge", &files[0], &files[1]];
    let out = loadgen(&args);
    assert!(out.stdout().contains("80 requests"), "{out}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["ftp://127.0.0.1:1/"][..],
        &[],
        &["http://127.0.0.1:1/", "-n", "5", "-z", "1s"],
        &["http://127.0.0.1:1/", "--expect", "sometimes"],
        &["http://127.0.0.1:1/", "-z", "soon"],
        &["http://127.0.0.1:1/", "-q", "100:200"],
        &["http://127.0.0.1:1/", "-q", "100:fast", "-z", "1s"],
        &["http://127.0.0.1:1/", "--stages", "10s"],
        &["http://127.0.0.1:1/", "--stages", "1s:100,1s:c=2"],
        &["http://127.0.0.1:1/", "--stages", "1s:100", "-z", "1s"],
        &["http://127.0.0.1:1/", "--stages", "1s:c=2", "-q", "10"],
        &[
            "http://127.0.0.1:1/",
            "--stages",
            "1s:100",
            "-q",
            "1:2",
            "-z",
            "1s",
        ],
    ] {
        let out = loadgen(args);
        assert_eq!(out.code(), Some(2), "{out}");
    }
    let out = loadgen(&["ftp://127.0.0.1:1/"]);
    let err = out.stderr();
    assert!(err.contains("only http:// and https:// URLs"), "{err}");
}

#[test]
fn sticky_verdicts_from_the_command_line() {
    let server = Sticky::start("x-user", &["a", "b"]);
    let url = server.url();
    let args = [
        url.as_str(),
        "-n",
        "100",
        "-c",
        "2",
        "-H",
        "X-User: {n}",
        "--keys",
        "10",
        "--expect",
        "sticky=X-User",
    ];
    let out = loadgen(&args);
    assert_eq!(out.code(), Some(0), "{out}");
    let text = out.stdout();
    assert!(
        text.contains("Expect sticky=x-user: PASS: 10 keys (x-user values), 0 moved"),
        "{out}"
    );

    let round_robin = Backends::start(&["a", "b"]);
    let url = round_robin.url();
    let args = [
        url.as_str(),
        "-n",
        "100",
        "-H",
        "X-User: {n}",
        "--keys",
        "10",
        "--expect",
        "sticky=X-User",
    ];
    let out = loadgen(&args);
    assert_eq!(out.code(), Some(1), "{out}");
    let text = out.stdout();
    assert!(
        text.contains("Expect sticky=x-user: FAIL: 10 of 10 keys (x-user values) moved"),
        "{out}"
    );
}

/// A header without a colon, a sticky header that is never sent, `--keys` with no `{n}`: each
/// is a usage error (exit 2) that names the flag and shows the right form.
#[test]
fn bad_headers_and_keys_are_usage_errors() {
    for (args, needles) in [
        (
            &["http://127.0.0.1:1/", "-H", "X-User 7"][..],
            &["--header", "no colon", "-H 'Name: value'"][..],
        ),
        (
            &["http://127.0.0.1:1/", "--expect", "sticky=X-User"],
            &["--expect sticky=x-user", "-H 'x-user: {n}'"],
        ),
        (
            &["http://127.0.0.1:1/", "-H", "X-User: 1", "--keys", "5"],
            &["--keys", "{n}"],
        ),
        (
            &["http://127.0.0.1:1/", "-H", "X-User: {n}", "--keys", "0"],
            &["--keys"],
        ),
    ] {
        let out = loadgen(args);
        assert_eq!(out.code(), Some(2), "{out}");
        let err = out.stderr();
        for needle in needles {
            assert!(err.contains(needle), "missing {needle:?}\n{out}");
        }
    }
}
