//! Every timeout and limit is a flag with a sane default; here each one is set short (300 ms or
//! so) and checked from the outside: the connection is closed (or answered) on time, not early,
//! and the backend sees nothing it should not.
//!
//! Clients: raw bytes where the timing of the bytes is the point (silent and dripping heads,
//! slow uploads, idle keep-alive connections, a client waiting past `--max-conns`); reqwest for
//! the ordinary GETs of the connect-timeout test.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tests::bad_backend::BadBackend;
use tests::http::{get, keep_alive, send, url};
use tests::RawClient;

use crate::support::lb;

fn assert_between(took: Duration, low_ms: u64, high_ms: u64, what: &str) {
    assert!(
        took >= Duration::from_millis(low_ms) && took <= Duration::from_millis(high_ms),
        "{what} after {took:?}, expected {low_ms}..{high_ms} ms"
    );
}

/// A client that connects and never sends a byte is closed after `--header-timeout`.
#[test]
fn silent_connection_is_closed_on_time() {
    let backend = BadBackend::start().unwrap();
    let (_lb, addr) = lb(&[backend.addr()], &["--header-timeout", "300ms"]);
    let mut client = RawClient::connect(addr);
    let started = Instant::now();
    assert!(client.closes_within(Duration::from_secs(3)));
    assert_between(started.elapsed(), 250, 1500, "silent connection closed");
    assert!(backend.connections().is_empty());
}

/// Slowloris: a head dripped one byte at a time is cut off at `--header-timeout`, however
/// steadily the bytes come.
#[test]
fn slowloris_head_is_cut_off() {
    let backend = BadBackend::start().unwrap();
    let (_lb, addr) = lb(&[backend.addr()], &["--header-timeout", "300ms"]);
    let mut client = RawClient::connect(addr);
    let started = Instant::now();
    let head = b"GET /slow HTTP/1.1\r\nHost: lb.test\r\nX-Padding: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let closed = drip_until_closed(&mut client, head);
    assert!(
        closed,
        "lb kept reading a head dripped for {:?}",
        started.elapsed()
    );
    assert_between(started.elapsed(), 250, 1500, "slowloris closed");
    assert!(backend.requests().is_empty());
}

/// Send `head` one byte every 40 ms, as a slowloris client does; true if lb closed the
/// connection before the head was complete.
fn drip_until_closed(client: &mut RawClient, head: &[u8]) -> bool {
    for byte in head.chunks(1) {
        client.send(byte);
        if client.closes_within(Duration::from_millis(40)) {
            return true;
        }
    }
    false
}

/// The header timeout also guards every later head on a keep-alive connection, even though
/// the idle timeout there is much longer.
#[test]
fn slowloris_on_a_keep_alive_connection_is_cut_off() {
    let backend = BadBackend::start().unwrap();
    let (_lb, addr) = lb(
        &[backend.addr()],
        &["--header-timeout", "300ms", "--idle-timeout", "10s"],
    );
    let mut client = RawClient::connect(addr);
    assert_eq!(client.get("/first").status, 200);
    let started = Instant::now();
    let head = b"GET /second HTTP/1.1\r\nHost: lb.test\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let closed = drip_until_closed(&mut client, head);
    assert!(
        closed,
        "lb kept reading a head dripped for {:?}",
        started.elapsed()
    );
    assert_between(started.elapsed(), 250, 1500, "slowloris closed");
    assert_eq!(backend.requests().len(), 1);
}

/// A keep-alive connection is closed after `--idle-timeout` without a request, and not before:
/// a request after a shorter pause is served.
#[test]
fn idle_keep_alive_connection_is_closed() {
    let backend = BadBackend::start().unwrap();
    let (_lb, addr) = lb(
        &[backend.addr()],
        &["--idle-timeout", "500ms", "--header-timeout", "5s"],
    );
    let mut client = RawClient::connect(addr);
    assert_eq!(client.get("/one").status, 200);
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(
        client.get("/two").status,
        200,
        "served within the idle time"
    );
    let started = Instant::now();
    assert!(client.closes_within(Duration::from_secs(3)));
    assert_between(started.elapsed(), 400, 1500, "idle connection closed");
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so a connect hangs
/// (what a backend behind a black-holing firewall looks like, on loopback).
struct BlackHole {
    addr: SocketAddr,
    _listener: tokio::net::TcpListener,
    _queued: Vec<TcpStream>,
    _runtime: tokio::runtime::Runtime,
}

impl BlackHole {
    fn new() -> BlackHole {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            socket.listen(1).unwrap()
        });
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        while let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            queued.push(stream);
            assert!(queued.len() < 64, "the accept queue never filled up");
        }
        BlackHole {
            addr,
            _listener: listener,
            _queued: queued,
            _runtime: runtime,
        }
    }
}

/// `--connect-timeout`: a backend that never completes the handshake is given up on time and the
/// next backend serves the request; afterwards it is skipped (passive health) so requests are fast.
#[test]
fn upstream_connect_timeout_fails_over() {
    let hole = BlackHole::new();
    let good = BadBackend::start().unwrap();
    let (_lb, addr) = lb(
        &[hole.addr, good.addr()],
        &["--connect-timeout", "300ms", "--fail-timeout", "10s"],
    );
    let client = keep_alive();
    let started = Instant::now();
    assert_eq!(send(client.get(url(addr, "/first"))).status, 200);
    assert_between(
        started.elapsed(),
        250,
        2000,
        "failover after connect timeout",
    );
    for _ in 0..4 {
        let started = Instant::now();
        assert_eq!(send(client.get(url(addr, "/again"))).status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "the black hole should be skipped now ({:?})",
            started.elapsed()
        );
    }

    // With nothing else to try: 502, on time, naming the cause.
    let (_lb, addr) = lb(&[hole.addr], &["--connect-timeout", "300ms"]);
    let started = Instant::now();
    let r = get(addr, "/");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_between(started.elapsed(), 250, 2000, "502 after connect timeout");
    assert!(r.text().contains("no connection within"), "{}", r.text());
}

/// `--response-timeout` (see also `bad_backend::hanging_backend_gets_504_and_post_is_not_retried`):
/// counted from the end of the request body, so a slow upload is not cut by it.
#[test]
fn response_timeout_starts_after_the_request_body() {
    let backend = BadBackend::start().unwrap();
    let (_lb, addr) = lb(&[backend.addr()], &["--response-timeout", "300ms"]);
    let mut client = RawClient::connect(addr);
    client.send(b"POST /upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 6\r\n\r\n");
    for part in [b"ab", b"cd", b"ef"] {
        std::thread::sleep(Duration::from_millis(200));
        client.send(part);
    }
    let r = client.response(false).expect("response");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(backend.requests()[0].body, b"abcdef");
}

/// `--body-timeout`, client to backend: an upload that stops moving is aborted; the backend's
/// connection is closed (its request cut short) and so is the client's.
#[test]
fn stalled_request_body_is_aborted() {
    let backend = BadBackend::start().unwrap();
    let (proc, addr) = lb(&[backend.addr()], &["--body-timeout", "300ms"]);
    let mut client = RawClient::connect(addr);
    let started = Instant::now();
    client.send(b"POST /upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 100\r\n\r\n0123456789");
    let answer = client.response(false);
    assert!(client.closes_within(Duration::from_secs(3)));
    assert_between(started.elapsed(), 250, 2000, "stalled upload aborted");
    eprintln!(
        "stalled upload: client got {:?}",
        answer.as_ref().map(|r| (r.status, r.text()))
    );
    if let Some(r) = answer {
        assert!(
            r.status == 408 || r.status == 400,
            "a client that stops sending gets 408 or 400, got {} {}",
            r.status,
            r.text()
        );
    }
    // `closed` is noted as the backend reads the end of the stream, a moment before it files the
    // request it was reading: wait for both.
    assert!(
        backend.wait_until(Duration::from_secs(2), |c| c.len() == 1
            && c[0].closed
            && c[0].requests.len() == 1),
        "the backend connection must be closed, its one request cut short"
    );
    let received = backend.requests();
    assert_eq!(received.len(), 1);
    assert!(
        !received[0].complete,
        "the backend saw the request cut short"
    );
    drop(proc);
}

/// `--body-timeout`, backend to client: a response body that stops moving is aborted; the client
/// sees it truncated and closed, the backend connection is closed.
#[test]
fn stalled_response_body_is_aborted() {
    let backend = BadBackend::start().unwrap();
    let (_lb, addr) = lb(&[backend.addr()], &["--body-timeout", "300ms"]);
    let mut client = RawClient::connect(addr);
    let started = Instant::now();
    let r = client.get("/drip?ms=2000&n=3");
    assert_eq!(r.status, 200);
    assert!(!r.complete, "the client must see the body cut short");
    assert!(client.closes_within(Duration::from_secs(3)));
    assert_between(started.elapsed(), 250, 1900, "stalled response aborted");
    assert!(
        backend.wait_until(Duration::from_secs(3), |c| c.len() == 1 && c[0].closed),
        "the backend connection must be closed"
    );
}

/// `--max-conns 2`: a third client is not refused but waits in the kernel's accept queue, and
/// is served as soon as an earlier connection closes.
#[test]
fn clients_past_max_conns_wait_then_get_served() {
    let backend = BadBackend::start().unwrap();
    let (_lb, addr) = lb(&[backend.addr()], &["--max-conns", "2"]);
    let mut first = RawClient::connect(addr);
    let mut second = RawClient::connect(addr);
    assert_eq!(first.get("/1").status, 200);
    assert_eq!(second.get("/2").status, 200);

    let mut third = RawClient::connect(addr);
    third.send(b"GET /3 HTTP/1.1\r\nHost: lb.test\r\n\r\n");
    assert!(
        !third.closes_within(Duration::from_millis(500)) && third.unread().is_empty(),
        "a client past --max-conns must wait, not be answered or refused"
    );
    drop(first);
    let started = Instant::now();
    let r = third.response(false).expect("served once a slot frees up");
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(second.get("/2b").status, 200);
}
