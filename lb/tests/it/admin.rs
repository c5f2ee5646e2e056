//! `lb --admin`: the counters are exact, the JSON says what the configuration and the backends
//! are, and a taken admin port is one line and exit 1. (The live page is tested in a real browser
//! in the end-to-end suite, `tests/tests/e2e/admin_page.rs`.)
//!
//! Clients: reqwest (the event stream read as it arrives); raw bytes for the one request lb
//! must refuse.

use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use tests::http::{client, url};
use tests::{get, LbProcess, RawClient};

use crate::support::{lb_process, Backend, LB};

/// `lb ARGS --admin 127.0.0.1:0`, and the admin address from its `Admin on` line.
fn lb_with_admin(args: &[&str]) -> (LbProcess, SocketAddr) {
    let mut all = vec!["-p", "0", "--admin", "127.0.0.1:0"];
    all.extend(args);
    let mut lb = lb_process(&all);
    let addr = lb.admin_addr();
    (lb, addr)
}

/// The value of every sample of `metric` (with any labels) in a Prometheus text exposition.
fn samples(exposition: &str, metric: &str) -> Vec<(String, f64)> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// N requests of every kind (proxied, answered by lb with 404, refused by hyper with 400) are N in
/// `lb_requests_total` and in `/status`, each under the right backend and class.
#[test]
fn counters_are_exact() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let (mut lb, admin) = lb_with_admin(&["-b", "/api/", &a_addr, "-b", "/api/", &b_addr]);
    for _ in 0..30 {
        assert_eq!(get(lb.addr, "/api/v1/whoami").status, 200);
    }
    for _ in 0..4 {
        assert_eq!(get(lb.addr, "/nowhere").status, 404);
    }
    let mut garbage = RawClient::connect(lb.addr);
    garbage.send(b"NOT HTTP\r\n\r\n");
    assert_eq!(garbage.read_response().status, 400);
    drop(garbage);
    std::thread::sleep(Duration::from_millis(100));

    let metrics = get(admin, "/metrics");
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    let requests = samples(&text, "lb_requests_total");
    let total: f64 = requests.iter().map(|(_, v)| v).sum();
    lb.check(
        total == 35.0,
        format!("lb_requests_total sums to {total}, not 35:\n{text}"),
    );
    let value = |labels: &str| {
        requests
            .iter()
            .find(|(name, _)| name.contains(labels))
            .map_or(0.0, |(_, v)| *v)
    };
    assert_eq!(
        value(&format!("backend=\"{a_addr}\",class=\"2xx\"")),
        15.0,
        "{text}"
    );
    assert_eq!(
        value(&format!("backend=\"{b_addr}\",class=\"2xx\"")),
        15.0,
        "{text}"
    );
    assert_eq!(value("backend=\"\",class=\"4xx\""), 5.0, "{text}");
    let count: f64 = samples(&text, "lb_request_duration_seconds_count")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert_eq!(count, 35.0, "{text}");
    assert_eq!(
        samples(&text, "lb_client_connections_accepted_total")[0].1,
        35.0
    );
    assert!(text.contains("lb_build_info{version="), "{text}");
    assert!(
        text.contains("le=\"0.0001\""),
        "sub-millisecond buckets: {text}"
    );

    let status = get(admin, "/status").json();
    assert_eq!(status["totals"]["requests"], 35, "{status}");
    assert_eq!(status["totals"]["unserved"], 5, "{status}");
    let group = &status["groups"][0];
    assert_eq!(
        (group["prefix"].as_str(), group["strategy"].as_str()),
        (Some("/api/"), Some("round-robin"))
    );
    assert_eq!(group["members"][0]["backend"], a_addr.as_str());
    assert_eq!(group["members"][0]["weight"], 1);
    for backend in status["backends"].as_array().unwrap() {
        assert_eq!(backend["requests"], 15, "{backend}");
        assert_eq!(backend["status"]["2xx"], 15, "{backend}");
        assert_eq!(backend["state"], "up", "{backend}");
        assert_eq!(backend["history"].as_array().unwrap().len(), 60);
    }
}

/// A backend that refuses connections is shown cooling down, with since when; `/events` streams
/// the same JSON.
#[test]
fn a_dead_backend_is_shown_cooling_down_and_events_stream_the_status() {
    let a = Backend::start("a");
    let mut b = Backend::start("b");
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let (lb, admin) = lb_with_admin(&["-b", "/", &a_addr, "-b", "/", &b_addr]);
    b.stop();
    for _ in 0..4 {
        assert_eq!(get(lb.addr, "/").status, 200);
    }
    let status = get(admin, "/status").json();
    let dead = status["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == b_addr.as_str())
        .unwrap();
    assert_eq!(dead["state"], "cooling_down", "{dead}");
    assert!(dead["state_since_unix_ms"].as_u64().is_some(), "{dead}");
    assert!(dead["connect_failures"].as_u64().unwrap() >= 1, "{dead}");

    let mut events = client().get(url(admin, "/events")).send().unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    // The first event: everything up to the first blank line.
    let mut first = Vec::new();
    let mut buf = [0; 4096];
    while !first.windows(2).any(|w| w == b"\n\n") {
        let n = events.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the event stream ended: {:?}",
            String::from_utf8_lossy(&first)
        );
        first.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(first).unwrap();
    let text = &text[..text.find("\n\n").unwrap() + 2];
    assert!(text.starts_with("event: status\ndata: {"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(text.trim_start_matches("event: status\ndata: ").trim()).unwrap();
    assert_eq!(json["totals"]["requests"], 4);
    drop(lb);
}

/// The admin port taken: one line naming `--admin` and the address, exit 1, before listening.
#[test]
fn a_taken_admin_port_exits_1_naming_the_flag() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let output = assert_cmd::Command::new(LB)
        .args(["-p", "0", "--admin", &addr, "-b", "/", "127.0.0.1:1"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.starts_with("Adding backend for "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    assert!(
        errors[0].contains("--admin") && errors[0].contains(&addr),
        "{stderr}"
    );
    assert!(!stderr.contains("Starting LB"), "{stderr}");
}
