//! A slow backend made with `--delay` and `--delay-jitter`, seen from a client: how late each
//! response is, and that lateness is not a queue (many requests wait at once).
//!
//! Upper bounds are generous: the machine running the tests may be busy, and what matters is that
//! the wait is the one asked for, not ten times more.
//!
//! Clients: reqwest, one new connection per request.

use std::time::{Duration, Instant};

use tests::{get, RestfulServer};

use crate::server;

/// Scheduling slack allowed on top of the expected wait.
const SLACK: Duration = Duration::from_millis(750);

/// How long `GET path` takes, checking that it succeeded.
fn timed_get(server: &RestfulServer, path: &str) -> Duration {
    let start = Instant::now();
    let reply = get(server.addr, path);
    let took = start.elapsed();
    assert_eq!(reply.status, 200, "{path}");
    took
}

#[test]
fn every_response_takes_at_least_the_delay_and_not_much_more() {
    let delay = Duration::from_millis(150);
    let server = server(&["-p", "0", "--delay", "150ms"]);
    assert!(
        server
            .starting_line
            .ends_with(", every response delayed 150ms"),
        "{}",
        server.starting_line
    );
    for path in ["/", "/api/v1/whoami", "/api/v1/bytes?n=10"] {
        let took = timed_get(&server, path);
        assert!(took >= delay, "{path} took {took:?}, less than the delay");
        assert!(took < delay + SLACK, "{path} took {took:?}");
    }
    // A 404 is a response too.
    let start = Instant::now();
    assert_eq!(get(server.addr, "/no/such/page").status, 404);
    assert!(start.elapsed() >= delay);
}

#[test]
fn jitter_adds_between_nothing_and_the_jitter() {
    let (delay, jitter) = (Duration::from_millis(50), Duration::from_millis(100));
    let server = server(&["-p", "0", "--delay", "50ms", "--delay-jitter", "100ms"]);
    for _ in 0..10 {
        let took = timed_get(&server, "/api/v1/whoami");
        assert!(took >= delay, "took {took:?}, less than --delay");
        assert!(took < delay + jitter + SLACK, "took {took:?}");
    }
}

#[test]
fn a_slow_backend_serves_many_requests_at_once() {
    // Twenty clients at once against a 300 ms delay: if the wait blocked the server, they would
    // take 20 × 300 ms one after the other; a timer lets them all wait together.
    let delay = Duration::from_millis(300);
    let server = server(&["-p", "0", "--delay", "300ms"]);
    let addr = server.addr;
    let start = Instant::now();
    let clients: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || get(addr, "/api/v1/whoami").status))
        .collect();
    for client in clients {
        assert_eq!(client.join().unwrap(), 200);
    }
    let took = start.elapsed();
    assert!(took >= delay, "{took:?}");
    assert!(
        took < 4 * delay + SLACK,
        "20 concurrent requests took {took:?}: the delay is serializing them"
    );
}
