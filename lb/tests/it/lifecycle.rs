//! Stopping: on SIGTERM (or when `run`'s shutdown future completes) lb refuses new connections at
//! once, lets the requests already in flight finish, writes their log lines, and exits 0.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::support::{assert_log_line, get, rule, Backend, Lb, LbProcess, RawConn, PATIENCE};

/// Poll until a connection to `addr` is refused; returns how long that took (fails after `limit`).
async fn refused_within(addr: std::net::SocketAddr, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Some(started.elapsed()),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    None
}

/// The real binary: a request that takes 1 s is in flight when SIGTERM arrives 200 ms in. New
/// connections are refused from then on, the request still completes with 200, its log line is
/// written, and lb exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_request_in_flight_and_exits_0() {
    let a = Backend::start("a").await;
    let a_addr = a.addr.to_string();
    let mut lb = LbProcess::start(&["-p", "0", "-l", "-", "-b", "/", &a_addr]).await;
    let addr = lb.addr;

    let in_flight = tokio::spawn(async move { get(addr, "/api/v1/delay?ms=1000").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    lb.signal("TERM");

    let refused = refused_within(addr, Duration::from_millis(600)).await;
    lb.check(
        refused.is_some(),
        "new connections are still accepted 600 ms after SIGTERM",
    );
    lb.check(
        !in_flight.is_finished(),
        "the in-flight request ended before new connections were refused",
    );

    let reply = match tokio::time::timeout(PATIENCE, in_flight).await {
        Ok(Ok(reply)) => reply,
        other => lb.fail(format!("the in-flight request did not complete: {other:?}")),
    };
    lb.check(
        reply.status == 200 && reply.json()["delayed_ms"] == 1000,
        format!("the in-flight request got {reply:?}"),
    );
    let status = lb.wait_exit(PATIENCE).await;
    lb.check(status.success(), format!("exit status {status}"));

    let stdout = lb.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    lb.check(lines.len() == 1, "one log line, for the drained request");
    assert_log_line(lines[0], "GET", "/api/v1/delay", &a_addr);
}

/// SIGINT (Ctrl-C) stops an idle lb at once, with exit status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_an_idle_lb_with_exit_0() {
    let a = Backend::start("a").await;
    let mut lb = LbProcess::start(&["-p", "0", "-b", "/", &a.addr.to_string()]).await;
    let started = Instant::now();
    lb.signal("INT");
    let status = lb.wait_exit(PATIENCE).await;
    lb.check(status.success(), format!("exit status {status}"));
    lb.check(
        started.elapsed() < Duration::from_secs(2),
        format!("an idle lb took {:?} to stop", started.elapsed()),
    );
}

/// In process: `run` returns once its shutdown future completes and the in-flight request is
/// answered; an idle keep-alive connection is closed rather than waited for.
#[tokio::test]
async fn run_returns_after_draining_and_closes_idle_keep_alive_connections() {
    let a = Backend::start("a").await;
    let mut lb = Lb::start(vec![rule("/", a.addr)]).await;

    // An idle keep-alive connection that has served one request.
    let mut idle = RawConn::connect(lb.addr).await;
    idle.write(format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", lb.addr).as_bytes())
        .await;
    assert_eq!(idle.read_response().await.status, 200);

    let addr = lb.addr;
    let in_flight = tokio::spawn(async move { get(addr, "/api/v1/delay?ms=500").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    lb.stop().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "run returned {took:?} after the stop signal, with a 500 ms request in flight"
    );
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status.as_u16(), 200);
    assert!(idle.closes_within(Duration::from_secs(1)).await);

    // The access log was flushed before `run` returned.
    let text = std::fs::read_to_string(&lb.log_path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_log_line(lines[1], "GET", "/api/v1/delay", &a.addr.to_string());
}
