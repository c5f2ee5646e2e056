//! Backends that misbehave, one behaviour per test (see the table in `tests::bad_backend`), and
//! what the client of `lb` sees each time. The rule throughout: a broken backend may cost the
//! client its request, never a wrong or complete-looking answer, and never the next response.
//!
//! Clients: raw bytes only: truncation, reframing and the next response on the same connection
//! are what is checked.

use std::time::{Duration, Instant};

use tests::bad_backend::BadBackend;
use tests::RawClient;

use crate::support::lb;

/// The backend accepts the request and never answers: 504 after `--response-timeout`, and a
/// POST is not retried (the backend may have acted on it).
#[test]
fn hanging_backend_gets_504_and_post_is_not_retried() {
    let backend = BadBackend::start().unwrap();
    let (_lb, addr) = lb(&[backend.addr()], &["--response-timeout", "300ms"]);
    let mut client = RawClient::connect(addr);
    let started = Instant::now();
    client.send(b"POST /hang HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 2\r\n\r\nhi");
    let r = client.response(false).expect("504");
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        r.text().contains(&backend.addr().to_string()),
        "{}",
        r.text()
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "504 after {took:?}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(backend.requests().len(), 1, "the POST was sent once");
    // The client connection survives a gateway timeout.
    assert_eq!(client.get("/after").status, 200);
}

/// A backend that dies mid-body (reset or clean close before Content-Length is reached): the
/// client's connection is closed early, so it sees a truncated body, never a complete-looking one.
#[test]
fn backend_dying_mid_body_truncates_the_client_response() {
    let backend = BadBackend::start().unwrap();
    let (_lb, addr) = lb(&[backend.addr()], &[]);
    for path in ["/reset", "/short"] {
        let mut client = RawClient::connect(addr);
        client.send(format!("GET {path} HTTP/1.1\r\nHost: lb.test\r\n\r\n").as_bytes());
        let r = client.response(false).expect("response head");
        assert_eq!(r.status, 200, "{path}");
        assert!(
            !r.complete,
            "{path}: the client must see the body cut short"
        );
        assert!(
            r.body.len() < 1000 || path == "/reset",
            "{path}: {} bytes",
            r.body.len()
        );
        assert!(client.closes_within(Duration::from_secs(2)), "{path}");
    }
}

/// A status line that is not HTTP: 502, with a body naming the backend.
#[test]
fn garbage_status_line_is_502() {
    let backend = BadBackend::start().unwrap();
    let (_lb, addr) = lb(&[backend.addr()], &[]);
    let mut client = RawClient::connect(addr);
    let r = client.get("/garbage");
    assert_eq!(r.status, 502);
    assert!(
        r.text().contains(&backend.addr().to_string()),
        "{}",
        r.text()
    );
    assert_eq!(
        client.get("/fine").status,
        200,
        "the client connection survives"
    );
}

/// A response with both Content-Length and Transfer-Encoding (RFC 9112 §6.3 item 3: chunked wins,
/// the connection must close afterwards). hyper's client reads it as chunked; the client gets the
/// de-chunked body with one framing, and the next response is intact.
#[test]
fn response_with_content_length_and_chunked_is_reframed() {
    let backend = BadBackend::start().unwrap();
    let (_lb, addr) = lb(&[backend.addr()], &[]);
    let mut client = RawClient::connect(addr);
    let r = client.get("/cl-te");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
    assert!(
        !(r.header("content-length").is_some() && r.header("transfer-encoding").is_some()),
        "lb must not pass both on: {:?}",
        r.headers
    );
    let next = client.get("/next");
    assert_eq!(next.status, 200);
    assert!(next.text().ends_with("GET /next\n"), "{}", next.text());
}

/// 204, 304 and HEAD responses have no body even when the backend sends one; the bytes it sent
/// (a whole fake response) must not become the answer to the next request.
#[test]
fn bodies_on_204_304_and_head_are_dropped() {
    let backend = BadBackend::start().unwrap();
    let (_lb, addr) = lb(&[backend.addr()], &[]);
    let mut client = RawClient::connect(addr);
    for round in 0..5 {
        for (request, status, head) in [
            ("GET /no-content", 204, false),
            ("GET /not-modified", 304, false),
            ("HEAD /head-body", 200, true),
        ] {
            client.send(format!("{request} HTTP/1.1\r\nHost: lb.test\r\n\r\n").as_bytes());
            let r = client.response(head).expect("response");
            assert_eq!(r.status, status, "round {round}: {request}");
            let next = client.get("/next");
            assert_eq!(
                next.status,
                200,
                "round {round}: after {request}: {}",
                next.text()
            );
            assert!(
                next.text().ends_with("GET /next\n"),
                "round {round}: after {request} the next response is {:?}",
                next.text()
            );
        }
    }
    assert!(client.unread().is_empty());
}

/// A slow body is streamed: the first byte reaches the client long before the last.
#[test]
fn dripping_body_is_streamed() {
    let backend = BadBackend::start().unwrap();
    let (_lb, addr) = lb(&[backend.addr()], &[]);
    let mut client = RawClient::connect(addr);
    let started = Instant::now();
    client.send(b"GET /drip?ms=100&n=8 HTTP/1.1\r\nHost: lb.test\r\n\r\n");
    let r = client.response(false).expect("response");
    let total = started.elapsed();
    assert_eq!(r.body, b"dddddddd");
    assert!(total >= Duration::from_millis(700), "{total:?}");
    // Read it again byte by byte to see the first byte arrive early.
    let mut raw = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    raw.write_all(b"GET /drip?ms=100&n=8 HTTP/1.1\r\nHost: lb.test\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut first_body_byte = None;
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"dddddddd") {
        let n = raw.read(&mut buf).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
        if first_body_byte.is_none() && seen.ends_with(b"\r\n\r\nd") {
            first_body_byte = Some(started.elapsed());
        }
    }
    let first = first_body_byte.expect("first body byte seen on its own");
    assert!(
        first < started.elapsed() / 2,
        "first byte after {first:?}, last after {:?}",
        started.elapsed()
    );
}

/// A backend's `Connection: close` ends the backend connection only: the client's connection
/// stays open and its next request goes out on a new backend connection.
#[test]
fn backend_connection_close_keeps_the_client_connection() {
    let backend = BadBackend::start().unwrap();
    let (_lb, addr) = lb(&[backend.addr()], &[]);
    let mut client = RawClient::connect(addr);
    for n in 1..=3 {
        let r = client.get("/close");
        assert_eq!(r.status, 200);
        assert!(r.header("connection").is_none(), "{:?}", r.headers);
        assert!(r.text().starts_with(&format!("conn {n} ")), "{}", r.text());
    }
    assert!(!client.closes_within(Duration::from_millis(100)));
    assert_eq!(backend.connections().len(), 3);
}

/// Trailers after a chunked body: the body arrives intact and the framing stays valid (hyper
/// passes trailers on when the client can take them, or drops them cleanly).
#[test]
fn trailers_do_not_break_the_body() {
    let backend = BadBackend::start().unwrap();
    let (_lb, addr) = lb(&[backend.addr()], &[]);
    let mut client = RawClient::connect(addr);
    client.send(b"GET /trailers HTTP/1.1\r\nHost: lb.test\r\nTE: trailers\r\n\r\n");
    let r = client.response(false).expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello world");
    assert!(r.complete);
    eprintln!("trailers forwarded to the client: {:?}", r.trailers);
    assert_eq!(client.get("/next").status, 200);
}
