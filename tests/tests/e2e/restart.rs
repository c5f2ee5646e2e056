//! A backend restarts while traffic flows: the clients of `lb` must not notice.
//!
//! Exactly what a CI suite does to a service behind a balancer, and what the demo's reader does to
//! port 8911: two restful-servers behind lb, loadgen sending GETs at 8 connections, one backend
//! stopped (SIGTERM: it stops accepting and closes its idle keep-alive connections; or SIGKILL:
//! it vanishes with requests in flight) and started again on the same port. Requests caught on
//! the dying backend's connections are retried on the other one (`lb/src/retry.rs`), so every
//! response is a 200; the restarted backend is back in the rotation after `--fail-timeout`.
//!
//! Clients: loadgen for the traffic, reqwest for the restarted backend's own count.

use std::time::Duration;

use tests::{bin, cluster, get, Proc, RestfulServer};

/// How the backend is stopped.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Term,
    Kill,
}

/// `loadgen URL ARGS... --output json`, started now; see [`finish_load`].
fn start_load(url: &str, args: &[&str]) -> Proc {
    let mut all = vec![url, "--output", "json"];
    all.extend(args);
    Proc::spawn(&bin("loadgen"), &all).unwrap()
}

/// Wait for loadgen to end; assert it passed (every response within its --ok-status, no
/// transport error) and return its JSON report.
fn finish_load(mut load: Proc) -> serde_json::Value {
    let status = load.wait_exit(Duration::from_secs(30)).unwrap();
    let mut json = String::new();
    while let Some(line) = load.next_stdout(Duration::from_millis(200)) {
        json.push_str(&line);
    }
    if !status.success() {
        load.fail("loadgen saw failed requests");
    }
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("loadgen JSON: {e}\n{json}"))
}

fn assert_all_ok(report: &serde_json::Value, what: &str) {
    let responses = report["responses"].as_u64().unwrap();
    assert!(responses > 100, "{what}: only {responses} responses");
    assert_eq!(
        report["status"]["200"].as_u64(),
        Some(responses),
        "{what}: every response a 200: {}",
        report["status"]
    );
    for (class, n) in report["errors"].as_object().unwrap() {
        assert_eq!(
            n.as_u64(),
            Some(0),
            "{what}: {class} errors: {}",
            report["errors"]
        );
    }
}

fn restart_under_load(stop: Stop) {
    let mut cluster = cluster(2, &["--fail-timeout", "300ms"]);
    let url = format!("http://{}/api/v1/whoami", cluster.lb.addr);
    let load = start_load(&url, &["-z", "4s", "-c", "8", "-q", "1500"]);

    std::thread::sleep(Duration::from_millis(1200));
    let mut victim = cluster.backends.remove(1);
    let victim_addr = victim.addr;
    match stop {
        Stop::Term => {
            victim.terminate().unwrap();
            assert!(victim.wait_exit(Duration::from_secs(5)).unwrap().success());
        }
        Stop::Kill => drop(victim),
    }
    std::thread::sleep(Duration::from_millis(600));
    let port = victim_addr.port().to_string();
    let _back = RestfulServer::start(&["-p", &port]);

    let report = finish_load(load);
    assert_all_ok(&report, &format!("{stop:?}"));

    // The restarted process (a new one: its counter started at 0) served part of the load.
    let whoami = get(victim_addr, "/api/v1/whoami").json();
    let served = whoami["requests_served"].as_u64().unwrap();
    assert!(
        served > 50,
        "{stop:?}: the restarted backend served only {served} requests"
    );
}

#[test]
fn a_backend_stopped_with_sigterm_and_restarted_costs_no_request() {
    restart_under_load(Stop::Term);
}

#[test]
fn a_backend_killed_and_restarted_costs_no_request() {
    restart_under_load(Stop::Kill);
}

/// The killed backend is slow, so requests are in flight on it when it dies: they were sent, they
/// are GETs, and each is answered by the other backend instead of being lost.
#[test]
fn requests_in_flight_on_a_killed_backend_are_retried() {
    let mut cluster = cluster(2, &[]);
    let url = format!("http://{}/api/v1/delay?ms=150", cluster.lb.addr);
    let load = start_load(&url, &["-z", "2s", "-c", "8"]);
    std::thread::sleep(Duration::from_millis(1000));
    drop(cluster.backends.remove(1)); // SIGKILL, with about 4 requests in flight on it

    let report = finish_load(load);
    let responses = report["responses"].as_u64().unwrap();
    assert!(responses > 40, "only {responses} responses");
    assert_eq!(
        report["status"]["200"].as_u64(),
        Some(responses),
        "{}",
        report["status"]
    );
    for (class, n) in report["errors"].as_object().unwrap() {
        assert_eq!(n.as_u64(), Some(0), "{class} errors: {}", report["errors"]);
    }
}
