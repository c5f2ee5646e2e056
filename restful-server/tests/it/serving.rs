//! What a client sees on the wire: the page, who served it, files from a docroot (and not from
//! outside it), and how replies are framed.
//!
//! Clients: reqwest for ordinary requests (it reports the framing headers as they came); raw
//! bytes for the path traversal attempts, whose request lines a real client would normalise.

use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tests::http::{client, get, send, url};
use tests::{RawClient, RawResponse};

use crate::server;

#[test]
fn port_0_serves_the_page_naming_the_real_address() {
    let server = server(&["-p", "0"]);
    assert!(
        server.addr.ip().is_loopback(),
        "a bare port must bind loopback"
    );
    assert_ne!(server.addr.port(), 0, "the line must give the real port");
    assert_eq!(
        server.starting_line,
        format!(
            "Starting RESTful server on {}, serving built-in page",
            server.addr
        )
    );

    let reply = get(server.addr, "/");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-served-by"), server.addr.to_string());
    assert_eq!(reply.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(reply.header("content-length"), reply.body.len().to_string());
    let html = reply.text();
    assert!(html.contains("<title>RESTful API demo</title>"));
    assert!(html.contains(&format!("Served by <strong>{}</strong>", server.addr)));

    let missing = get(server.addr, "/favicon.ico");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("x-served-by"), server.addr.to_string());
}

#[test]
fn name_is_sent_and_shown_escaped() {
    let server = server(&["-p", "127.0.0.1:0", "--name", "blue <1>"]);
    let reply = get(server.addr, "/");
    assert_eq!(reply.header("x-served-by"), "blue <1>");
    assert!(reply
        .text()
        .contains("Served by <strong>blue &lt;1&gt;</strong>"));
}

#[test]
fn sum_replies_with_json_and_a_content_length() {
    // What `curl -d n1=1 -d n2=2.5` sends: the request that hung behind the original balancer,
    // because the original answered with a chunked body and no length.
    let server = server(&["-p", "0"]);
    let reply = send(
        client()
            .post(url(server.addr, "/api/v1/sum"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("n1=1&n2=2.5"),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header("content-length"), "14");
    assert!(!reply.headers.contains_key("transfer-encoding"));
    assert_eq!(reply.text(), r#"{"result":3.5}"#);
}

/// `GET path` sent exactly as written, on a connection that is then closed.
fn raw_get(addr: SocketAddr, path: &str) -> RawResponse {
    let mut conn = RawClient::connect(addr);
    conn.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes());
    conn.read_response()
}

#[test]
fn docroot_serves_files_but_nothing_outside_it() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("secret.txt"), "TOP SECRET").unwrap();
    let www = tmp.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello").unwrap();

    let server = server(&["-p", "0", "-d", www.to_str().unwrap()]);
    let absolute = www.canonicalize().unwrap();
    assert!(
        server
            .starting_line
            .ends_with(&format!("serving {}", absolute.display())),
        "{}",
        server.starting_line
    );

    let hello = get(server.addr, "/hello.txt");
    assert_eq!(
        (hello.status.as_u16(), hello.text().as_str()),
        (200, "hello")
    );
    assert!(hello.headers.contains_key("etag") || hello.headers.contains_key("last-modified"));

    // The request line is sent exactly as written here: no client normalises these paths away.
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/hello.txt/../../secret.txt",
    ] {
        let reply = raw_get(server.addr, path);
        assert!(
            reply.status >= 400 && !reply.text().contains("TOP SECRET"),
            "{path} answered {} {:?}",
            reply.status,
            reply.text()
        );
    }
}

#[test]
fn bytes_are_framed_by_content_length_and_streamed() {
    let server = server(&["-p", "0"]);
    let reply = get(server.addr, "/api/v1/bytes?n=300000");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-length"), "300000");
    assert!(!reply.headers.contains_key("transfer-encoding"));
    assert_eq!(reply.body.len(), 300_000);

    // Two 64 KiB chunks with a 500 ms pause between them: the first arrives at once, so the
    // server sends as it goes rather than after building the whole body.
    let start = Instant::now();
    let mut response = client()
        .get(url(
            server.addr,
            "/api/v1/bytes?n=131072&chunk_delay_ms=500",
        ))
        .send()
        .unwrap();
    let mut first = [0; 1];
    response.read_exact(&mut first).unwrap();
    let first_byte = start.elapsed();
    let mut rest = Vec::new();
    response.read_to_end(&mut rest).unwrap();
    let last_byte = start.elapsed();
    assert_eq!(1 + rest.len(), 131_072);
    assert!(
        last_byte - first_byte >= Duration::from_millis(400),
        "first byte after {first_byte:?}, last after {last_byte:?}"
    );
}

#[test]
fn printcontent_prints_the_body_and_replies() {
    let mut server = server(&["-p", "0"]);
    let reply = send(
        client()
            .post(url(server.addr, "/printcontent"))
            .body("hello printcontent"),
    );
    assert_eq!(reply.status, 200);
    let line = server.next_stdout(tests::PATIENCE);
    if line.as_deref() != Some("hello printcontent") {
        server.fail(format!("printed {line:?}"));
    }
}
