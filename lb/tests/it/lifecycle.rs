//! Stopping: on SIGTERM (or when `run`'s shutdown future completes) lb refuses new connections at
//! once, lets the requests already in flight finish, writes their log lines, and exits 0.
//!
//! Clients: reqwest for the requests in flight (on threads of their own); raw bytes for an idle
//! keep-alive connection, whose closing is what is checked.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tests::{get, RawClient, PATIENCE};

use crate::support::{assert_log_line, lb_process, rule, Backend, Lb};

/// Poll until a connection to `addr` is refused; returns how long that took (fails after `limit`).
fn refused_within(addr: std::net::SocketAddr, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        match TcpStream::connect_timeout(&addr, PATIENCE) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Some(started.elapsed()),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    None
}

/// The real binary: a request that takes 1 s is in flight when SIGTERM arrives 200 ms in. New
/// connections are refused from then on, the request still completes with 200, its log line is
/// written, and lb exits 0.
#[test]
fn sigterm_drains_the_request_in_flight_and_exits_0() {
    let a = Backend::start("a");
    let a_addr = a.addr.to_string();
    let mut lb = lb_process(&["-p", "0", "-l", "-", "-b", "/", &a_addr]);
    let addr = lb.addr;

    let (done, in_flight) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(get(addr, "/api/v1/delay?ms=1000"));
    });
    std::thread::sleep(Duration::from_millis(200));
    lb.signal("TERM").unwrap();

    let refused = refused_within(addr, Duration::from_millis(600));
    lb.check(
        refused.is_some(),
        "new connections are still accepted 600 ms after SIGTERM",
    );
    lb.check(
        in_flight.try_recv().is_err(),
        "the in-flight request ended before new connections were refused",
    );

    let reply = match in_flight.recv_timeout(PATIENCE) {
        Ok(reply) => reply,
        Err(e) => lb.fail(format!("the in-flight request did not complete: {e}")),
    };
    lb.check(
        reply.status == 200 && reply.json()["delayed_ms"] == 1000,
        format!("the in-flight request got {reply:?}"),
    );
    let status = lb.wait_exit(PATIENCE).unwrap();
    lb.check(status.success(), format!("exit status {status}"));

    let lines = lb.stdout_lines().to_vec();
    lb.check(lines.len() == 1, "one log line, for the drained request");
    assert_log_line(&lines[0], "GET", "/api/v1/delay", &a_addr);
}

/// SIGINT (Ctrl-C) stops an idle lb at once, with exit status 0.
#[test]
fn ctrl_c_stops_an_idle_lb_with_exit_0() {
    let a = Backend::start("a");
    let mut lb = lb_process(&["-p", "0", "-b", "/", &a.addr.to_string()]);
    // lb prints `Starting LB on` before `lb::shutdown::signal()` is first polled, which is when
    // its SIGINT handler is installed: a signal sent in between gets the default action and kills
    // lb (exit by signal, not 0). One request served means the handler is in place by now.
    assert_eq!(get(lb.addr, "/").status, 200);
    let started = Instant::now();
    lb.signal("INT").unwrap();
    let status = lb.wait_exit(PATIENCE).unwrap();
    lb.check(status.success(), format!("exit status {status}"));
    lb.check(
        started.elapsed() < Duration::from_secs(2),
        format!("an idle lb took {:?} to stop", started.elapsed()),
    );
}

/// In process: `run` returns once its shutdown future completes and the in-flight request is
/// answered; an idle keep-alive connection is closed rather than waited for.
#[test]
fn run_returns_after_draining_and_closes_idle_keep_alive_connections() {
    let a = Backend::start("a");
    let mut lb = Lb::start(vec![rule("/", a.addr)]);

    // An idle keep-alive connection that has served one request.
    let mut idle = RawClient::connect(lb.addr);
    idle.send(format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", lb.addr).as_bytes());
    assert_eq!(idle.read_response().status, 200);

    let addr = lb.addr;
    let in_flight = std::thread::spawn(move || get(addr, "/api/v1/delay?ms=500"));
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    lb.stop();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "run returned {took:?} after the stop signal, with a 500 ms request in flight"
    );
    let reply = in_flight.join().unwrap();
    assert_eq!(reply.status.as_u16(), 200);
    assert!(idle.closes_within(Duration::from_secs(1)));

    // The access log was flushed before `run` returned.
    let text = std::fs::read_to_string(&lb.log_path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_log_line(lines[1], "GET", "/api/v1/delay", &a.addr.to_string());
}
