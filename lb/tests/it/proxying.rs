//! What crosses the balancer: the request head as the backend sees it (hop-by-hop headers gone,
//! `X-Forwarded-For`, `Via`), pipelined requests in order, and bodies streamed rather than
//! buffered: the first bytes of a slow reply arrive early, and 50 MB pass intact both ways.
//!
//! Clients: raw bytes where the request's exact headers or the connection are the point
//! (hop-by-hop headers, pipelining, bodiless replies, `Expect`, HTTP/1.0); reqwest for the
//! streamed and large bodies, read as they arrive.

use std::io::Read;
use std::time::{Duration, Instant};

use tests::http::{client, send, url};
use tests::reqwest::StatusCode;
use tests::{BadBackend, RawClient, PATIENCE};

use crate::support::{echoed_headers, hand_backend, rule, Backend, Lb};

/// RFC 9110 §7.6.1: `Connection` and what it names, `Keep-Alive`, `Proxy-Authorization` and `TE`
/// stay on the client's hop. lb appends the client to `X-Forwarded-For`, adds `Via` and
/// `X-Forwarded-Proto`, and keeps `Host`.
#[test]
fn backend_sees_no_hop_by_hop_headers_and_a_forwarded_for_chain() {
    let a = Backend::start("a");
    let lb = Lb::start(vec![rule("/", a.addr)]);

    let mut conn = RawClient::connect(lb.addr);
    conn.send(
        b"GET /api/v1/echo HTTP/1.1\r\n\
          Host: app.example:8000\r\n\
          Connection: close, X-Secret\r\n\
          X-Secret: 1\r\n\
          Keep-Alive: 5\r\n\
          Proxy-Authorization: x\r\n\
          TE: gzip\r\n\
          X-Forwarded-For: 1.2.3.4\r\n\
          X-Kept: yes\r\n\
          \r\n",
    );
    let response = conn.read_response();
    assert_eq!(response.status, 200, "{}", response.text());
    let echo = response.json();
    let headers = echoed_headers(&echo);
    let value = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "te",
        "transfer-encoding",
    ] {
        assert!(value(gone).is_empty(), "{gone} reached the backend: {echo}");
    }
    // Whatever lb tells the backend about its own connection, it is not the client's value.
    assert!(
        value("connection").iter().all(|v| !v.contains("X-Secret")),
        "{echo}"
    );
    assert_eq!(value("x-forwarded-for"), ["1.2.3.4, 127.0.0.1"], "{echo}");
    assert_eq!(value("via"), ["1.1 lb"], "{echo}");
    assert_eq!(value("x-forwarded-proto"), ["http"], "{echo}");
    assert_eq!(value("host"), ["app.example:8000"], "{echo}");
    assert_eq!(value("x-kept"), ["yes"], "{echo}");

    // The client asked to close, so lb closes after answering.
    assert!(conn.closes_within(PATIENCE));
}

/// Three requests written in one go are answered in order, each by the next backend in turn.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let lb = Lb::start(vec![rule("/", a.addr), rule("/", b.addr)]);

    let mut all = Vec::new();
    for n in 1..=3 {
        all.extend_from_slice(
            format!(
                "GET /api/v1/echo?n={n} HTTP/1.1\r\nHost: {}\r\n\r\n",
                lb.addr
            )
            .as_bytes(),
        );
    }
    let mut conn = RawClient::connect(lb.addr);
    conn.send(&all);
    for (n, served_by) in [(1, "a"), (2, "b"), (3, "a")] {
        let response = conn.read_response();
        assert_eq!(response.status, 200);
        assert_eq!(response.json()["uri"], format!("/api/v1/echo?n={n}"));
        assert_eq!(response.header("x-served-by"), Some(served_by));
    }
}

/// A client that sends its requests and then closes its side of the connection (`nc -N`,
/// scripts) is still answered, every request in order, before lb closes too.
#[test]
fn pipelined_requests_before_a_half_close_are_all_answered() {
    use std::io::Write;
    let a = Backend::start("a");
    let lb = Lb::start(vec![rule("/", a.addr)]);

    let mut stream = std::net::TcpStream::connect(lb.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let two = "GET /api/v1/whoami HTTP/1.1\r\nHost: lb.test\r\n\r\n".repeat(2);
    stream.write_all(two.as_bytes()).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answers = String::new();
    stream.read_to_string(&mut answers).unwrap();
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 2, "{answers}");
}

/// A request body nobody will read (no route for it) is skipped when it has all arrived, and the
/// connection carries on; while it is still arriving, the answer says `Connection: close` and
/// lb closes after it (a client must not send its next request on a connection about to close).
#[test]
fn an_unread_request_body_keeps_the_connection_only_when_it_is_all_there() {
    let a = Backend::start("a");
    let lb = Lb::start(vec![rule("/api", a.addr)]);

    let mut conn = RawClient::connect(lb.addr);
    conn.send(b"POST /nowhere HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 5\r\n\r\nhello");
    let small = conn.read_response();
    assert_eq!(small.status, 404);
    assert_eq!(small.header("connection"), None);
    assert_eq!(conn.get("/api/v1/whoami").status, 200);

    let mut conn = RawClient::connect(lb.addr);
    conn.send(b"POST /nowhere HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 10000000\r\n\r\n");
    conn.send(&[b'x'; 64 * 1024]);
    let large = conn.read_response();
    assert_eq!(large.status, 404);
    assert_eq!(large.header("connection"), Some("close"));
    assert!(conn.closes_within(PATIENCE));
}

/// A HEAD answer lb writes itself (here a 404: no route) says the length its GET answer has, and
/// carries no body, so the next request on the connection is read in step (RFC 9110 §9.3.2).
#[test]
fn a_head_answer_lb_writes_has_the_length_of_its_get_answer() {
    let a = Backend::start("a");
    let lb = Lb::start(vec![rule("/api", a.addr)]);

    let mut conn = RawClient::connect(lb.addr);
    conn.send(b"HEAD /nowhere HTTP/1.1\r\nHost: lb.test\r\n\r\n");
    let head = conn.response(true).expect("an answer to HEAD");
    let get = conn.get("/nowhere");
    assert_eq!((head.status, get.status), (404, 404));
    assert!(head.body.is_empty());
    let length = get.body.len().to_string();
    assert_eq!(head.header("content-length"), Some(length.as_str()));
    assert_eq!(get.header("content-length"), Some(length.as_str()));
}

/// A backend that sends 64 KiB every 200 ms: the first bytes reach the client long before the
/// backend is done, so lb forwards frames as they come instead of collecting the reply.
#[test]
fn a_slow_response_streams_its_first_bytes_early() {
    let a = Backend::start("a");
    let lb = Lb::start(vec![rule("/", a.addr)]);

    // 4 chunks (64 KiB, 64 KiB, 64 KiB, the rest) with 200 ms before each of the last three.
    let started = Instant::now();
    let mut response = client()
        .get(url(lb.addr, "/api/v1/bytes?n=200000&chunk_delay_ms=200"))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut first_byte = None;
    let mut total = 0;
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = response.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        if first_byte.is_none() {
            first_byte = Some(started.elapsed());
        }
        total += n;
    }
    let (first_byte, done) = (first_byte.unwrap(), started.elapsed());
    assert_eq!(total, 200_000);
    assert!(
        done >= Duration::from_millis(550),
        "the backend takes ~600 ms, yet the reply ended after {done:?}"
    );
    assert!(
        first_byte < Duration::from_millis(300) && first_byte * 2 < done,
        "first byte after {first_byte:?}, last after {done:?}: the reply was buffered"
    );
}

/// Deterministic test data: `len` bytes from xorshift, different in every 1 MiB block.
fn pattern(len: usize) -> Vec<u8> {
    let mut block = Vec::with_capacity(1 << 20);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while block.len() < 1 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        block.extend_from_slice(&x.to_le_bytes());
    }
    let mut data = Vec::with_capacity(len);
    let mut n: u64 = 0;
    while data.len() < len {
        // Stamp each block with its number, so a repeated or reordered block changes the CRC.
        block[..8].copy_from_slice(&n.to_le_bytes());
        let take = (len - data.len()).min(block.len());
        data.extend_from_slice(&block[..take]);
        n += 1;
    }
    data
}

const FIFTY_MB: usize = 50 * 1024 * 1024;

#[test]
fn fifty_megabytes_upload_intact() {
    let a = Backend::start("a");
    let lb = Lb::start(vec![rule("/", a.addr)]);

    let data = pattern(FIFTY_MB);
    let crc = crc32fast::hash(&data);
    let reply = send(client().put(url(lb.addr, "/api/v1/echo")).body(data));
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let echo = reply.json();
    assert_eq!(echo["body_len"], FIFTY_MB as u64);
    assert_eq!(echo["body_crc32"], crc);
}

#[test]
fn fifty_megabytes_download_intact() {
    let a = Backend::start("a");
    let lb = Lb::start(vec![rule("/", a.addr)]);

    let mut response = client()
        .get(url(lb.addr, &format!("/api/v1/bytes?n={FIFTY_MB}")))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-length"],
        FIFTY_MB.to_string().as_str()
    );
    // Byte k of the reply is ALPHABET[k % 64]; compare each read against that pattern.
    const ALPHABET: &[u8; 64] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_";
    let expected: Vec<u8> = ALPHABET
        .iter()
        .copied()
        .cycle()
        .take(64 * 1024 + 64)
        .collect();
    let mut offset = 0usize;
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = response.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        {
            let piece = &buf[..n];
            let start = offset % 64;
            assert!(
                piece == &expected[start..start + piece.len()],
                "corrupted bytes at offset {offset}"
            );
            offset += piece.len();
        }
    }
    assert_eq!(offset, FIFTY_MB);
}

/// A backend's `Connection: close` ends the backend connection only (RFC 9110 §7.6.1): the
/// client's keep-alive connection carries on, and lb does not reuse the closed upstream one.
#[test]
fn a_backend_closing_its_connection_leaves_the_client_connection_open() {
    let backend = BadBackend::replying(
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"[..],
        true,
    );
    let lb = Lb::start(vec![rule("/", backend.addr())]);

    let mut conn = RawClient::connect(lb.addr);
    for n in 0..3 {
        conn.send(format!("GET /{n} HTTP/1.1\r\nHost: {}\r\n\r\n", lb.addr).as_bytes());
        let response = conn.read_response();
        assert_eq!((response.status, response.text().as_str()), (200, "ok"));
        assert_eq!(response.header("connection"), None, "request {n}");
    }
}

/// Replies without a body (HEAD, 204, 304) leave the connection usable: the next response on it
/// is intact.
#[test]
fn bodiless_replies_keep_the_connection_in_step() {
    let a = Backend::start("a");
    let lb = Lb::start(vec![rule("/", a.addr)]);
    let host = lb.addr;

    let mut conn = RawClient::connect(lb.addr);
    conn.send(format!("HEAD /api/v1/bytes?n=5000 HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    let head = conn.head().expect("no reply to HEAD");
    assert_eq!(head.status, 200);
    assert!(
        head.headers
            .contains(&("content-length".to_string(), "5000".to_string())),
        "{:?}",
        head.headers
    );
    for (path, status) in [("/api/v1/status/204", 204), ("/api/v1/status/304", 304)] {
        conn.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        let response = conn.read_response();
        assert_eq!(response.status, status);
        assert!(response.body.is_empty());
    }
    conn.send(format!("GET /api/v1/echo?after=1 HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    let response = conn.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["uri"], "/api/v1/echo?after=1");
}

/// A client that sends `Expect: 100-continue` gets its `100 Continue` and its answer.
#[test]
fn expect_100_continue_does_not_stall_the_client() {
    let a = Backend::start("a");
    let lb = Lb::start(vec![rule("/", a.addr)]);

    let mut conn = RawClient::connect(lb.addr);
    conn.send(
        format!(
            "POST /api/v1/echo HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
            lb.addr
        )
        .as_bytes(),
    )
    ;
    let status = conn.head().expect("no interim response").status;
    assert_eq!(status, 100);
    conn.send(b"hello");
    let response = conn.read_response();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["body_len"], 5);
}

/// An HTTP/1.0 client without Host is still served: the backend gets an HTTP/1.1 request with
/// a Host (the backend's address), and the client's connection closes after the reply.
#[test]
fn an_http_1_0_client_is_answered_and_closed() {
    let a = Backend::start("a");
    let lb = Lb::start(vec![rule("/", a.addr)]);

    let mut conn = RawClient::connect(lb.addr);
    conn.send(b"GET /api/v1/echo HTTP/1.0\r\n\r\n");
    let response = conn.read_response();
    assert_eq!(response.status, 200, "{}", response.text());
    let echo = response.json();
    assert_eq!(echo["version"], "HTTP/1.1");
    let hosts: Vec<_> = echoed_headers(&echo)
        .into_iter()
        .filter(|(name, _)| name == "host")
        .map(|(_, value)| value)
        .collect();
    assert_eq!(hosts, [a.addr.to_string()]);
    assert!(conn.closes_within(PATIENCE));
}

/// A keep-alive connection idle for a second is parked: lb lets go of its buffers and keeps only
/// the socket (the memory of ten thousand idle clients). The client must
/// notice nothing: a request after the pause, two requests pipelined in one write after another
/// pause, a head that was half sent before a pause (not parked: a head is arriving), and a long
/// head that arrived with the request before it are all answered, in order, on the same
/// connection (each asks for a status of its own).
#[test]
fn a_parked_keep_alive_connection_answers_its_next_requests_in_order() {
    let a = Backend::start("a");
    let lb = Lb::start(vec![rule("/", a.addr)]);
    let pause = Duration::from_millis(1600); // past the one second after which lb parks
    let mut conn = RawClient::connect(lb.addr);
    conn.send(b"GET /api/v1/status/201 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(conn.read_response().status, 201);

    std::thread::sleep(pause);
    conn.send(b"GET /api/v1/status/202 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(conn.read_response().status, 202, "after a pause");

    std::thread::sleep(pause);
    conn.send(
        b"GET /api/v1/status/203 HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /api/v1/status/204 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(conn.read_response().status, 203, "first pipelined");
    assert_eq!(conn.read_response().status, 204, "second pipelined");

    conn.send(b"GET /api/v1/status/205 HTT");
    std::thread::sleep(pause);
    conn.send(b"P/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(conn.read_response().status, 205, "a head split by a pause");

    // A request and most of the next one's long head in one write: hyper holds those 1,000-odd
    // bytes when the pause comes; they must all reach the next request.
    let cookie = "c".repeat(1000);
    let second = format!("GET /api/v1/status/207 HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n");
    let mut first_write = b"GET /api/v1/status/206 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    first_write.extend_from_slice(second.as_bytes());
    conn.send(&first_write);
    assert_eq!(conn.read_response().status, 206, "before the pause");
    std::thread::sleep(pause);
    conn.send(b"\r\n");
    assert_eq!(
        conn.read_response().status,
        207,
        "a long head held across the pause"
    );
}

/// `Upgrade` (WebSocket and the like): the backend's `101 Switching Protocols` reaches the client
/// with its `Upgrade` and `Connection` headers, then lb copies bytes both ways, starting with the
/// ones the backend sent in the same write as its `101` head.
#[test]
fn an_upgraded_connection_becomes_a_tunnel_both_ways() {
    use std::io::Write;
    let backend_addr = hand_backend(1, |mut stream, head| {
        assert!(head.to_lowercase().contains("upgrade: websocket"), "{head}");
        let _ = stream.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhello from the backend;",
        );
        // Then echo whatever comes, upper-cased, until the client goes.
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            let _ = stream.write_all(&buf[..n].to_ascii_uppercase());
        }
    });
    let lb = Lb::start(vec![rule("/", backend_addr)]);

    let mut client = RawClient::connect(lb.addr);
    client.send(
        b"GET /chat HTTP/1.1\r\nHost: lb.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    let head = client.head().expect("a 101 head");
    assert_eq!(head.status, 101);
    assert_eq!(head.header("upgrade"), Some("websocket"));
    let mut tunnel = Vec::from(client.unread());
    let mut stream = client.into_stream();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 1024];
    let early = b"hello from the backend;";
    while tunnel.len() < early.len() {
        let n = stream.read(&mut buf).expect("the backend's first bytes");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&tunnel));
        tunnel.extend_from_slice(&buf[..n]);
    }
    assert_eq!(tunnel, early);
    for word in ["ping", "pong"] {
        stream.write_all(word.as_bytes()).unwrap();
        let mut echoed = Vec::new();
        while echoed.len() < word.len() {
            let n = stream.read(&mut buf).expect("the echo");
            assert!(n > 0, "the tunnel closed");
            echoed.extend_from_slice(&buf[..n]);
        }
        assert_eq!(echoed, word.to_ascii_uppercase().as_bytes());
    }
}
