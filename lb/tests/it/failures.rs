//! What a client sees when something breaks: a stopped backend (failover, then 502 when all are
//! down), a backend too slow to answer (504, but never for a slow upload), a backend that dies
//! in the middle of a body, and clients that hang up in the middle of a reply (the original
//! balancer crashed on that one).
//!
//! Clients: reqwest for ordinary requests; raw bytes where the client's timing or the
//! connection's end is the point (slow uploads and heads, hang-ups, truncated bodies, requests
//! lb must refuse).

use std::time::{Duration, Instant};

use tests::{get, BadBackend, RawClient, PATIENCE};

use crate::support::{assert_log_line, hand_backend, rule, Backend, Lb};

/// Two backends, both with pooled connections; one stops. Every request is still answered 200 by
/// the other, and the log names the backend that really served each one. Then the other stops
/// too: 502, quickly, with a body naming the cause.
#[test]
fn failover_when_a_backend_stops_then_502_when_all_are_down() {
    let (mut a, mut b) = (Backend::start("a"), Backend::start("b"));
    let lb = Lb::start(vec![rule("/", a.addr), rule("/", b.addr)]);

    // Warm up: both backends served, so both have an idle connection in lb's pool.
    for expected in ["a", "b"] {
        assert_eq!(get(lb.addr, "/").served_by(), expected);
    }
    b.stop();
    for n in 0..6 {
        let reply = get(lb.addr, "/");
        assert_eq!(
            (reply.status.as_u16(), reply.served_by()),
            (200, "a"),
            "request {n} after b stopped: {}",
            reply.text()
        );
    }
    let lines = lb.exact_log_lines(8);
    assert_log_line(&lines[0], "GET", "/", &a.addr.to_string());
    assert_log_line(&lines[1], "GET", "/", &b.addr.to_string());
    for line in &lines[2..] {
        assert_log_line(line, "GET", "/", &a.addr.to_string());
    }

    a.stop();
    let mut fastest = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let reply = get(lb.addr, "/");
        let took = started.elapsed();
        fastest = fastest.min(took);
        assert_eq!(reply.status.as_u16(), 502, "{}", reply.text());
        assert!(
            reply.text().contains("down") && reply.text().contains("refused"),
            "the body should name the cause: {:?}",
            reply.text()
        );
        assert!(took < Duration::from_secs(1), "502 took {took:?}");
    }
    // Best of three, so that one scheduling hiccup on a busy machine does not fail the test.
    assert!(
        fastest < Duration::from_millis(100),
        "502 took {fastest:?} at best"
    );
}

/// `--response-timeout 300ms` and a backend that takes 2 s: 504 well before the backend answers.
#[test]
fn a_slow_backend_gets_504_after_the_response_timeout() {
    let a = Backend::start("a");
    let lb = Lb::start_with(vec![rule("/", a.addr)], |c| {
        c.timeouts.response = Duration::from_millis(300);
    });

    let started = Instant::now();
    let reply = get(lb.addr, "/api/v1/delay?ms=2000");
    let took = started.elapsed();
    assert_eq!(reply.status.as_u16(), 504, "{}", reply.text());
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "504 after {took:?}"
    );
    assert!(
        reply.text().contains(&a.addr.to_string()),
        "the body should name the backend: {:?}",
        reply.text()
    );
    let lines = lb.exact_log_lines(1);
    assert_log_line(&lines[0], "GET", "/api/v1/delay", &a.addr.to_string());
}

/// The response timer starts once the request is fully sent: an upload that takes 600 ms in
/// three pieces is not a slow backend, even with `--response-timeout 300ms`.
#[test]
fn a_slow_upload_does_not_count_against_the_response_timeout() {
    let a = Backend::start("a");
    let lb = Lb::start_with(vec![rule("/", a.addr)], |c| {
        c.timeouts.response = Duration::from_millis(300);
    });

    let mut conn = RawClient::connect(lb.addr);
    conn.send(
        format!(
            "POST /api/v1/echo HTTP/1.1\r\nHost: {}\r\nContent-Length: 30\r\n\r\n",
            lb.addr
        )
        .as_bytes(),
    );
    for piece in [b"0123456789", b"abcdefghij", b"ABCDEFGHIJ"] {
        std::thread::sleep(Duration::from_millis(200));
        conn.send(piece);
    }
    let response = conn.read_response();
    assert_eq!(response.status, 200, "{}", response.text());
    let echo = response.json();
    assert_eq!(echo["body_len"], 30);
    assert_eq!(
        echo["body_crc32"],
        crc32fast::hash(b"0123456789abcdefghijABCDEFGHIJ")
    );
}

/// A backend that promises `Content-Length: 1000000`, sends 1000 bytes and closes. The client
/// must see its connection end early (fewer bytes than announced, or a chunked body without its
/// last chunk), never a response that looks complete.
#[test]
fn a_backend_dying_mid_body_truncates_the_client_connection() {
    let backend = BadBackend::replying(
        [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"[..],
            &[b'x'; 1000],
        ]
        .concat(),
        true, // closes 999 000 bytes early
    );
    let lb = Lb::start(vec![rule("/", backend.addr())]);

    let mut conn = RawClient::connect(lb.addr);
    conn.send(format!("GET /big HTTP/1.1\r\nHost: {}\r\n\r\n", lb.addr).as_bytes());
    let head = conn.head().expect("no response head");
    assert_eq!(head.status, 200);
    let (body, _reset) = conn.read_until_closed(PATIENCE);
    match (
        head.header("content-length"),
        head.header("transfer-encoding"),
    ) {
        (Some(length), None) => {
            assert_eq!(length, "1000000");
            assert!(
                body.len() < 1_000_000,
                "{} bytes: a complete-looking body",
                body.len()
            );
        }
        (None, Some(te)) if te.eq_ignore_ascii_case("chunked") => {
            assert!(
                !body.ends_with(b"0\r\n\r\n"),
                "the chunked body was terminated as if complete"
            );
        }
        other => panic!("unexpected framing {other:?} in {:?}", head.headers),
    }
    assert!(
        body.len() <= 1000 + 64,
        "more bytes than the backend sent: {}",
        body.len()
    );
}

/// Twenty clients start a large download and hang up after the first bytes (this crashed the
/// original with a SEGFAULT). lb logs each aborted exchange and keeps serving.
#[test]
fn clients_hanging_up_mid_response_leave_lb_serving() {
    let a = Backend::start("a");
    let lb = Lb::start(vec![rule("/", a.addr)]);

    let request = format!(
        "GET /api/v1/bytes?n=100000000 HTTP/1.1\r\nHost: {}\r\n\r\n",
        lb.addr
    );
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let request = request.clone();
            let addr = lb.addr;
            std::thread::spawn(move || {
                let mut conn = RawClient::connect(addr);
                conn.send(request.as_bytes());
                let status = conn.head().expect("no response head").status;
                assert_eq!(status, 200);
                // Drop the connection with unread bytes pending: the kernel resets it.
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }

    let reply = get(lb.addr, "/");
    assert_eq!(reply.status.as_u16(), 200);
    assert!(reply.text().contains("RESTful API demo"));
    // An aborted exchange is logged when lb notices the hang-up, which may be after the last
    // request was served: compare the lines without their order.
    let mut lines = lb.exact_log_lines(21);
    lines.sort_by_key(|line| line.contains("/api/v1/bytes"));
    assert_log_line(&lines[0], "GET", "/", &a.addr.to_string());
    for line in &lines[1..] {
        assert_log_line(line, "GET", "/api/v1/bytes", &a.addr.to_string());
    }
}

/// When the client hangs up, lb drops its side of the upstream exchange too, so a backend that
/// is still writing a huge reply finds out promptly instead of writing into the void.
#[test]
fn a_client_hanging_up_closes_the_upstream_connection() {
    // `/endless`: 10^12 bytes announced, then written until lb's side of the connection goes away.
    let backend = BadBackend::start().unwrap();
    let lb = Lb::start(vec![rule("/", backend.addr())]);

    let mut conn = RawClient::connect(lb.addr);
    conn.send(format!("GET /endless HTTP/1.1\r\nHost: {}\r\n\r\n", lb.addr).as_bytes());
    assert_eq!(conn.head().expect("no response head").status, 200);
    drop(conn);

    let noticed = backend.wait_until(Duration::from_secs(5), |c| c.len() == 1 && c[0].closed);
    assert!(
        noticed,
        "the backend did not notice that lb closed the upstream connection"
    );
    let sent = backend.connections()[0].sent;
    assert!(
        sent < 1_000_000_000,
        "the backend wrote {sent} bytes before noticing"
    );
    let lines = lb.exact_log_lines(1);
    assert_log_line(&lines[0], "GET", "/endless", &backend.addr().to_string());
}

/// A backend that answers with something that is not HTTP: 502 naming the backend.
#[test]
fn an_invalid_response_head_is_502() {
    let bad = BadBackend::replying(&b"SSH-2.0-OpenSSH_9.6\r\n\r\n"[..], true);
    let backend = bad.addr();
    let lb = Lb::start(vec![rule("/", backend)]);

    let reply = get(lb.addr, "/");
    assert_eq!(reply.status.as_u16(), 502, "{}", reply.text());
    assert!(
        reply.text().contains(&backend.to_string()),
        "the body should name the backend: {:?}",
        reply.text()
    );
}

/// Requests lb refuses (no Host, two Hosts, an oversized head, a malformed request line) are
/// answered 400/431 by lb itself: none of them reaches the backend.
#[test]
fn refused_requests_never_reach_a_backend() {
    let a = Backend::start("a");
    let lb = Lb::start(vec![rule("/", a.addr)]);
    let host = lb.addr;
    let huge = "x".repeat(32 * 1024);

    for (request, status) in [
        ("GET / HTTP/1.1\r\n\r\n".to_string(), 400),
        (
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nHost: other\r\n\r\n"),
            400,
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Big: {huge}\r\n\r\n"),
            431,
        ),
        ("GARBAGE\r\n\r\n".to_string(), 400),
        (
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3,2\r\n\r\nabc"),
            400,
        ),
    ] {
        let mut conn = RawClient::connect(lb.addr);
        conn.send(request.as_bytes());
        let shown: String = request.chars().take(60).collect();
        match conn.head() {
            Some(head) => assert_eq!(head.status, status, "{shown:?}"),
            None => panic!("{shown:?}: closed without an answer"),
        }
        assert!(
            conn.closes_within(PATIENCE),
            "{shown:?}: connection left open"
        );
    }
    let whoami = get(lb.addr, "/api/v1/whoami").json();
    assert_eq!(
        whoami["requests_served"], 1,
        "only the whoami request got through"
    );
}

/// Two client timeouts that must not be confused: a client dripping a request head is dropped
/// after `--header-timeout`, while a keep-alive connection quietly waiting between requests may
/// stay for the longer `--idle-timeout`.
#[test]
fn header_timeout_drops_slow_heads_but_idle_keep_alive_waits_longer() {
    let a = Backend::start("a");
    let lb = Lb::start_with(vec![rule("/", a.addr)], |c| {
        c.timeouts.header = Duration::from_millis(300);
        c.timeouts.idle = Duration::from_millis(1200);
    });

    // Slowloris: half a head, then nothing.
    let started = Instant::now();
    let mut slow = RawClient::connect(lb.addr);
    slow.send(b"GET / HTTP/1.1\r\nHost: x\r\n");
    assert!(slow.closes_within(PATIENCE));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1000),
        "an incomplete head was dropped after {took:?} with --header-timeout 300ms"
    );

    // Keep-alive: idle for twice the header timeout, then a second request on the same connection.
    let mut idle = RawClient::connect(lb.addr);
    let request = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", lb.addr);
    idle.send(request.as_bytes());
    assert_eq!(idle.read_response().status, 200);
    std::thread::sleep(Duration::from_millis(600));
    idle.send(request.as_bytes());
    assert_eq!(idle.read_response().status, 200);
    // ...and then it is closed once idle for longer than --idle-timeout.
    let started = Instant::now();
    assert!(idle.closes_within(PATIENCE));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_millis(2500),
        "an idle keep-alive connection was closed after {took:?} with --idle-timeout 1200ms"
    );
}

/// A client that gives up while lb waits for a slow backend's answer still gets its one log line:
/// status 499 (nginx's "client closed request"), naming the backend that was being asked.
#[test]
fn a_client_that_gives_up_before_the_answer_is_logged_once_as_499() {
    let a = Backend::start("a");
    let lb = Lb::start_with(vec![rule("/", a.addr)], |c| {
        c.log_format = lb::config::LogFormat::Json;
    });
    let mut conn = RawClient::connect(lb.addr);
    conn.send(b"GET /api/v1/delay?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n");
    std::thread::sleep(Duration::from_millis(200));
    drop(conn);

    let started = Instant::now();
    let lines = lb.log_lines(1);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "logged when the client left, not when the backend answered"
    );
    let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["backend"], a.addr.to_string(), "{line}");
    assert_eq!(line["path"], "/api/v1/delay", "{line}");
    assert_eq!(lb.exact_log_lines(1).len(), 1);
}

/// A backend that refuses an upload at once (`413` while the body is still coming, then it closes
/// without reading the body, which resets the connection under lb's writes) has still answered:
/// the client gets that 413, not a 502 for the broken write, and the connection is not reused.
/// (The backend closes a little after its answer, as servers do, so that its answer is read
/// before its reset: a reset that overtakes an answer destroys it in the kernel, for any proxy.)
#[test]
fn an_early_answer_to_an_upload_reaches_the_client() {
    use std::io::Write;
    let backend_addr = hand_backend(2, |mut stream, head| {
        let answer: &[u8] = if head.starts_with("PUT") {
            b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        };
        let _ = stream.write_all(answer);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        std::thread::sleep(Duration::from_millis(200));
        // Dropped with the upload unread in its buffer: the kernel answers lb's next bytes
        // with a reset.
    });
    let lb = Lb::start(vec![rule("/", backend_addr)]);

    let mut conn = RawClient::connect(lb.addr);
    let length = 8 * 1024 * 1024;
    conn.send(
        format!("PUT /up HTTP/1.1\r\nHost: lb.test\r\nContent-Length: {length}\r\n\r\n").as_bytes(),
    );
    let chunk = vec![b'u'; 64 * 1024];
    for _ in 0..length / chunk.len() {
        conn.send(&chunk);
    }
    let response = conn.response(false).expect("an answer to the upload");
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(response.text(), "too large");
    assert_eq!(get(lb.addr, "/after").status.as_u16(), 200);
    let lines = lb.exact_log_lines(2);
    assert_log_line(&lines[0], "PUT", "/up", &backend_addr.to_string());
}

/// A backend that stops reading a request body (its socket fills up, lb's writes wait) does not
/// hold the request forever: after `--body-timeout` without a byte taken, the client gets 504 and
/// lb closes the connection (nginx's `proxy_send_timeout`).
#[test]
fn a_backend_that_stops_reading_the_body_gets_504_after_the_body_timeout() {
    use std::io::{Read, Write};
    let (keep, kept) = std::sync::mpsc::channel();
    let keep = std::sync::Mutex::new(keep);
    let backend_addr = hand_backend(1, move |stream, _head| {
        let _ = keep.lock().unwrap().send(stream); // kept open, never read again
    });
    let lb = Lb::start_with(vec![rule("/", backend_addr)], |config| {
        config.timeouts.body_idle = Duration::from_millis(500);
    });

    let mut client = std::net::TcpStream::connect(lb.addr).unwrap();
    let length = 256 * 1024 * 1024;
    let mut writer = client.try_clone().unwrap();
    std::thread::spawn(move || {
        let head = format!("PUT /up HTTP/1.1\r\nHost: lb.test\r\nContent-Length: {length}\r\n\r\n");
        let _ = writer.write_all(head.as_bytes());
        let chunk = vec![b'u'; 256 * 1024];
        for _ in 0..length / chunk.len() {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 504"), "{text:?} after {took:?}");
    assert!(took < Duration::from_secs(5), "the 504 came after {took:?}");
    drop(kept);
}

/// A client that asks for a large response and then stops reading must not hold its connection,
/// and the backend's, forever: once its socket has taken no byte for `--body-timeout`, lb gives up
/// on it (nginx's `send_timeout`). Without that, lb would still be waiting, and would stream the
/// whole response as soon as the client read again.
#[test]
fn a_client_that_stops_reading_is_cut_off_after_the_body_timeout() {
    use std::io::{Read, Write};
    let a = Backend::start("a");
    let lb = Lb::start_with(vec![rule("/", a.addr)], |config| {
        config.timeouts.body_idle = Duration::from_millis(500);
    });
    let mut client = std::net::TcpStream::connect(lb.addr).unwrap();
    let n = 256 * 1024 * 1024;
    let ask = format!("GET /api/v1/bytes?n={n} HTTP/1.1\r\nHost: lb.test\r\n\r\n");
    client.write_all(ask.as_bytes()).unwrap();
    // Read nothing for a while: the sockets' buffers fill up, and lb can write no more.
    std::thread::sleep(Duration::from_secs(2));
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    let started = Instant::now();
    let mut total = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    while started.elapsed() < PATIENCE {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => total += k,
        }
    }
    assert!(
        total < n / 4,
        "read {total} of {n} bytes: lb kept the response going for a client that had stopped reading"
    );
}
