//! What a client sees on the wire: the page, who served it, files from a docroot (and not from
//! outside it), and how replies are framed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::process::{get, send_raw, ServerProcess, PATIENCE};

#[test]
fn port_0_serves_the_page_naming_the_real_address() {
    let server = ServerProcess::start(&["-p", "0"]);
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
    assert_eq!(reply.header("x-served-by"), Some(&*server.addr.to_string()));
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        reply.header("content-length"),
        Some(&*reply.body.len().to_string())
    );
    let html = reply.text();
    assert!(html.contains("<title>RESTful API demo</title>"));
    assert!(html.contains(&format!("Served by <strong>{}</strong>", server.addr)));

    let missing = get(server.addr, "/favicon.ico");
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.header("x-served-by"),
        Some(&*server.addr.to_string())
    );
}

#[test]
fn name_is_sent_and_shown_escaped() {
    let server = ServerProcess::start(&["-p", "127.0.0.1:0", "--name", "blue <1>"]);
    let reply = get(server.addr, "/");
    assert_eq!(reply.header("x-served-by"), Some("blue <1>"));
    assert!(reply
        .text()
        .contains("Served by <strong>blue &lt;1&gt;</strong>"));
}

#[test]
fn sum_replies_with_json_and_a_content_length() {
    // What `curl -d n1=1 -d n2=2.5` sends: the request that hung behind the original balancer,
    // because the original answered with a chunked body and no length.
    let server = ServerProcess::start(&["-p", "0"]);
    let reply = send_raw(
        server.addr,
        b"POST /api/v1/sum HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 11\r\n\r\nn1=1&n2=2.5",
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("content-length"), Some("14"));
    assert_eq!(reply.header("transfer-encoding"), None);
    assert_eq!(reply.text(), r#"{"result":3.5}"#);
}

#[test]
fn docroot_serves_files_but_nothing_outside_it() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("secret.txt"), "TOP SECRET").unwrap();
    let www = tmp.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello").unwrap();

    let server = ServerProcess::start(&["-p", "0", "-d", www.to_str().unwrap()]);
    let absolute = www.canonicalize().unwrap();
    assert!(
        server
            .starting_line
            .ends_with(&format!("serving {}", absolute.display())),
        "{}",
        server.starting_line
    );

    let hello = get(server.addr, "/hello.txt");
    assert_eq!((hello.status, hello.text().as_str()), (200, "hello"));
    assert!(hello.header("etag").is_some() || hello.header("last-modified").is_some());

    // The request line is sent exactly as written here: no client normalises these paths away.
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/hello.txt/../../secret.txt",
    ] {
        let reply = get(server.addr, path);
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
    let server = ServerProcess::start(&["-p", "0"]);
    let reply = get(server.addr, "/api/v1/bytes?n=300000");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-length"), Some("300000"));
    assert_eq!(reply.header("transfer-encoding"), None);
    assert_eq!(reply.body.len(), 300_000);

    // Two 64 KiB chunks with a 500 ms pause between them: the first arrives at once, so the
    // server sends as it goes rather than after building the whole body.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let start = Instant::now();
    stream
        .write_all(
            b"GET /api/v1/bytes?n=131072&chunk_delay_ms=500 HTTP/1.1\r\nHost: x\r\n\
              Connection: close\r\n\r\n",
        )
        .unwrap();
    let mut first = [0; 1];
    stream.read_exact(&mut first).unwrap();
    let first_byte = start.elapsed();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    let last_byte = start.elapsed();
    assert!(
        last_byte - first_byte >= Duration::from_millis(400),
        "first byte after {first_byte:?}, last after {last_byte:?}"
    );
}

#[test]
fn printcontent_prints_the_body_and_replies() {
    let mut server = ServerProcess::start(&["-p", "0"]);
    let reply = send_raw(
        server.addr,
        b"POST /printcontent HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
          Content-Length: 18\r\n\r\nhello printcontent",
    );
    assert_eq!(reply.status, 200);
    let line = server.next_stdout_line();
    if line != "hello printcontent" {
        server.fail(&format!("printed {line:?}"));
    }
}
