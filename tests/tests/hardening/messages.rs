//! Well-formed but tricky exchanges: pipelining, `Expect: 100-continue`, hop-by-hop headers in
//! both directions (RFC 9110 §7.6.1), and what `lb` adds (`X-Forwarded-For`, `Via`).
//!
//! Clients: raw bytes only: pipelined writes, `Expect` and hop-by-hop headers must go out exactly
//! as written.

use std::time::{Duration, Instant};

use tests::bad_backend::BadBackend;
use tests::RawClient;

use crate::support::lb;

/// Requests sent in one write are answered in order, each exactly once, and the backend sees
/// each exactly once, bodies intact.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let backend = BadBackend::start().unwrap();
    let (_lb, addr) = lb(&[backend.addr()], &[]);
    let mut client = RawClient::connect(addr);
    client.send(
        b"GET /one HTTP/1.1\r\nHost: lb.test\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 5\r\n\r\nhello\
          HEAD /three HTTP/1.1\r\nHost: lb.test\r\n\r\n\
          POST /four HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /five HTTP/1.1\r\nHost: lb.test\r\n\r\n",
    );
    let mut seen = Vec::new();
    for (path, head) in [
        ("/one", false),
        ("/two", false),
        ("/three", true),
        ("/four", false),
        ("/five", false),
    ] {
        let r = client
            .response(head)
            .expect("a response per pipelined request");
        assert_eq!(r.status, 200, "{path}");
        if !head {
            assert!(
                r.text().ends_with(&format!(" {path}\n")),
                "{path}: {}",
                r.text()
            );
        }
        seen.push(path);
    }
    let received = backend.requests();
    let lines: Vec<String> = received.iter().map(|r| r.line()).collect();
    assert_eq!(
        lines,
        [
            "GET /one",
            "POST /two",
            "HEAD /three",
            "POST /four",
            "GET /five"
        ]
    );
    assert_eq!(received[1].body, b"hello");
    assert_eq!(received[3].body, b"abc");
    backend.assert_well_formed();
}

/// The client waits for `100 Continue` before sending its body; lb must send it promptly (hyper
/// does when the proxy starts reading the body) instead of stalling until the client gives up.
#[test]
fn expect_100_continue_does_not_stall() {
    let backend = BadBackend::start().unwrap();
    let (_lb, addr) = lb(&[backend.addr()], &[]);
    let mut client = RawClient::connect(addr);
    let started = Instant::now();
    client.send(
        b"POST /upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = client.any_response(false).expect("100 Continue");
    assert_eq!(interim.status, 100);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "100 Continue took {:?}",
        started.elapsed()
    );
    client.send(b"hello");
    let r = client.response(false).expect("final response");
    assert_eq!(r.status, 200);
    let received = backend.requests();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, b"hello");

    // A client that does not wait for 100 and sends the body at once is fine too.
    client.send(
        b"POST /eager HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
    );
    assert_eq!(client.response(false).expect("final response").status, 200);
    assert_eq!(backend.requests()[1].body, b"abc");
    backend.assert_well_formed();
}

/// Headers about one connection never cross lb; headers named in `Connection` neither; what lb
/// adds is there, and the client keeps its Host.
#[test]
fn hop_by_hop_headers_stay_on_their_side() {
    let backend = BadBackend::start().unwrap();
    let (_lb, addr) = lb(&[backend.addr()], &[]);
    let mut client = RawClient::connect(addr);
    client.send(
        b"GET /hop-by-hop HTTP/1.1\r\nHost: client.test\r\n\
          Connection: keep-alive, X-Client-Secret\r\nX-Client-Secret: 1\r\n\
          Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\n\
          TE: gzip\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\n\
          X-Forwarded-For: 203.0.113.9\r\nX-Kept: yes\r\n\r\n",
    );
    let r = client.response(false).expect("response");
    assert_eq!(r.status, 200);
    for gone in [
        "connection",
        "x-backend-secret",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "upgrade",
    ] {
        assert!(
            r.header(gone).is_none(),
            "client got hop-by-hop {gone}: {:?}",
            r.headers
        );
    }
    assert_eq!(r.header("x-kept"), Some("yes"));
    assert_eq!(r.header("via"), Some("1.1 lb"));

    let seen = &backend.requests()[0];
    for gone in [
        "connection",
        "x-client-secret",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            !seen.has_header(gone),
            "backend got hop-by-hop {gone}: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.header_values("host"), ["client.test"]);
    assert_eq!(seen.header_values("x-kept"), ["yes"]);
    assert_eq!(
        seen.header_values("x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"],
        "the peer is appended, rightmost"
    );
    assert_eq!(seen.header_values("via"), ["1.1 lb"]);

    // `TE: trailers` is the one TE value a proxy may pass on.
    client.send(b"GET / HTTP/1.1\r\nHost: client.test\r\nTE: trailers\r\n\r\n");
    assert_eq!(client.response(false).unwrap().status, 200);
    assert_eq!(backend.requests()[1].header_values("te"), ["trailers"]);
    backend.assert_well_formed();
}
