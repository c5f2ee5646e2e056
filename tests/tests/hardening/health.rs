//! Backend health: passive (a backend that refuses connections is skipped for `--fail-timeout`)
//! and active (`--health-check PATH`: probes with rise/fall), and what a client sees when every
//! backend is down. Decisions must show on lb's stderr.
//!
//! Clients: reqwest (ordinary GETs, on one keep-alive connection where a test keeps using one).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tests::bad_backend::{BadBackend, Behaviour};
use tests::eventually;
use tests::http::{get, keep_alive, send, url};
use tests::reqwest::blocking::Client;

use crate::support::lb;

const HEALTH: [&str; 10] = [
    "--health-check",
    "/health",
    "--health-interval",
    "100ms",
    "--health-timeout",
    "200ms",
    "--health-rise",
    "2",
    "--health-fall",
    "2",
];

/// `n` requests from one keep-alive client, all of which must succeed.
fn serve(client: &Client, addr: SocketAddr, n: usize) {
    for i in 0..n {
        let r = send(client.get(url(addr, &format!("/r{i}"))));
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

/// A killed backend is skipped without a single failed request, and comes back into rotation
/// after `--fail-timeout` once it listens again.
#[test]
fn passive_ejection_and_return() {
    let a = BadBackend::start().unwrap();
    let b = BadBackend::start().unwrap();
    let b_addr = b.addr();
    let (mut proc, addr) = lb(&[a.addr(), b_addr], &["--fail-timeout", "500ms"]);
    let client = keep_alive();
    serve(&client, addr, 4);
    assert_eq!(b.requests_to("/r").len(), 2, "round robin before the kill");

    b.stop();
    serve(&client, addr, 6);
    proc.wait_stderr(&format!("backend {b_addr} is down"), Duration::from_secs(2))
        .unwrap();
    assert_eq!(
        a.requests_to("/r").len(),
        2 + 6,
        "a took over every request"
    );

    let b = BadBackend::start_at(b_addr).unwrap();
    let back = eventually(Duration::from_secs(3), || {
        serve(&client, addr, 2);
        !b.requests_to("/r").is_empty()
    });
    assert!(back, "the backend never came back\n{}", proc.transcript());
}

/// A backend whose health check answers 500 leaves the rotation after `--health-fall` probes
/// and returns after `--health-rise` good ones; both decisions are logged.
#[test]
fn active_check_ejects_a_backend_answering_500() {
    let a = BadBackend::start().unwrap();
    let b = BadBackend::start().unwrap();
    let (mut proc, addr) = lb(&[a.addr(), b.addr()], &HEALTH);
    b.set_override(Some(Behaviour::Status(500)));
    let down = proc
        .wait_stderr(
            &format!("health: backend {} is DOWN", b.addr()),
            Duration::from_secs(3),
        )
        .unwrap();
    eprintln!("{down}");
    let client = keep_alive();
    serve(&client, addr, 6);
    assert!(b.requests_to("/r").is_empty(), "a DOWN backend got traffic");

    b.set_override(None);
    let up = proc
        .wait_stderr(
            &format!("health: backend {} is UP again", b.addr()),
            Duration::from_secs(3),
        )
        .unwrap();
    eprintln!("{up}");
    serve(&client, addr, 6);
    assert_eq!(b.requests_to("/r").len(), 3, "back in the rotation");
    assert!(
        b.requests_to("/health").len() >= 4,
        "probes use the configured path"
    );
}

/// A backend that accepts the probe but never answers fails it after `--health-timeout`.
#[test]
fn active_check_ejects_a_backend_that_does_not_answer() {
    let a = BadBackend::start().unwrap();
    let b = BadBackend::start().unwrap();
    let (mut proc, addr) = lb(&[a.addr(), b.addr()], &HEALTH);
    b.set_override(Some(Behaviour::Hang));
    let down = proc
        .wait_stderr(
            &format!("health: backend {} is DOWN", b.addr()),
            Duration::from_secs(3),
        )
        .unwrap();
    assert!(down.contains("no answer within"), "{down}");
    let client = keep_alive();
    serve(&client, addr, 4);
    assert!(b.requests_to("/r").is_empty());

    b.set_override(None);
    proc.wait_stderr(
        &format!("health: backend {} is UP again", b.addr()),
        Duration::from_secs(3),
    )
    .unwrap();
}

/// Every backend down: the health checker says so on stderr, and a client gets a 502 at once,
/// whose body names the cause.
#[test]
fn every_backend_down_is_a_quick_502_naming_the_cause() {
    let a = BadBackend::start().unwrap();
    let b = BadBackend::start().unwrap();
    let (mut proc, addr) = lb(&[a.addr(), b.addr()], &HEALTH);
    a.stop();
    b.stop();
    let line = proc
        .wait_stderr("every backend failed its checks", Duration::from_secs(3))
        .unwrap();
    eprintln!("{line}");
    let started = Instant::now();
    let r = get(addr, "/anything");
    let took = started.elapsed();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert!(r.text().contains("down"), "{}", r.text());
    assert!(r.text().contains("refused"), "{}", r.text());
    eprintln!("every backend down, the client reads: {}", r.text().trim());

    // Without health checks, the same from passive health alone.
    let c = BadBackend::start().unwrap();
    let c_addr = c.addr();
    c.stop();
    let (_lb, addr) = lb(&[c_addr], &[]);
    let started = Instant::now();
    let r = get(addr, "/");
    assert_eq!(r.status, 502);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(r.text().contains("refused"), "{}", r.text());
}
