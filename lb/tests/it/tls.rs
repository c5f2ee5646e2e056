//! `-s FILE`: HTTPS in front, plain HTTP to the backends; `-D FILE`: the hexdump of both legs.
//! Certificates are made for each test with `rcgen` (ECDSA P-256); no key is committed.
//!
//! Clients: reqwest over rustls, trusting only the test's certificate; one rustls handshake by
//! hand to see the protocol ALPN settled on; raw bytes for plain HTTP sent to the TLS port and a
//! client that never starts its handshake.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tests::http::{builder, send};
use tests::reqwest::blocking::Client;
use tests::reqwest::header::HeaderMap;
use tests::reqwest::tls::Certificate;
use tests::{get, RawClient, PATIENCE};

use crate::support::{lb_process, Backend, LB};

/// A self-signed certificate for `localhost` and 127.0.0.1, as PEM: (certificate, key).
fn certificate() -> (String, String) {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    (made.cert.pem(), made.signing_key.serialize_pem())
}

/// Write `contents` to `name` in `dir`.
fn file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A client for `https://localhost:PORT/` that trusts only `cert_pem` (as `curl --cacert` would)
/// and reaches `localhost` at `addr`.
fn https_client(addr: SocketAddr, cert_pem: &str) -> Client {
    builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .http1_only()
        .build()
        .unwrap()
}

/// GET `path` over a new TLS connection: status, headers and body. (Before it, a handshake by
/// hand checks that lb agrees to HTTP/1.1 by ALPN.)
fn https_get(addr: SocketAddr, cert_pem: &str, path: &str) -> (u16, HeaderMap, String) {
    assert_eq!(
        negotiated_alpn(addr, cert_pem).as_deref(),
        Some(&b"http/1.1"[..])
    );
    let url = format!("https://localhost:{}{path}", addr.port());
    let reply = send(https_client(addr, cert_pem).get(url));
    (reply.status.as_u16(), reply.headers.clone(), reply.text())
}

/// The application protocol a TLS handshake with `addr` settles on when the client offers
/// `http/1.1` (what reqwest offers, but does not report).
fn negotiated_alpn(addr: SocketAddr, cert_pem: &str) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).unwrap();
    }
    tls.alpn_protocol().map(<[u8]>::to_vec)
}

/// HTTPS through lb to two plain backends: they take turns, the log lines are the usual ones, the
/// backends see `X-Forwarded-Proto: https`, and the certificate verifies against its CA.
#[test]
fn https_in_front_of_plain_backends() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate();
    let pem = file(dir.path(), "lb.pem", &format!("{cert}{key}"));
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let mut lb = lb_process(&[
        "-p",
        "0",
        "-l",
        "-",
        "-s",
        pem.to_str().unwrap(),
        "-b",
        "/",
        &a_addr,
        "-b",
        "/",
        &b_addr,
    ]);
    let mut served = Vec::new();
    for _ in 0..4 {
        let (status, headers, _) = https_get(lb.addr, &cert, "/api/v1/whoami");
        assert_eq!(status, 200);
        served.push(headers["x-served-by"].to_str().unwrap().to_string());
    }
    assert_eq!(served, ["a", "b", "a", "b"]);
    let (_, _, echo) = https_get(lb.addr, &cert, "/api/v1/echo");
    assert!(
        echo.to_ascii_lowercase()
            .contains("\"x-forwarded-proto\",\"https\""),
        "the backend is told the client spoke HTTPS: {echo}"
    );
    let lines = lb.wait_stdout_lines(5, PATIENCE).unwrap();
    assert!(
        lines[0].ends_with(&format!("GET /api/v1/whoami backend={a_addr}")),
        "{lines:?}"
    );
    assert!(
        lines[1].ends_with(&format!("GET /api/v1/whoami backend={b_addr}")),
        "{lines:?}"
    );
}

/// Every certificate problem is one line naming the file and what is wrong, exit 2, before
/// listening.
#[test]
fn bad_certificates_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate();
    let (_, other_key) = certificate();
    let only_cert = file(dir.path(), "cert.pem", &cert);
    let only_key = file(dir.path(), "key.pem", &key);
    let mismatched = file(dir.path(), "mismatch.pem", &format!("{cert}{other_key}"));
    let missing = dir.path().join("missing.pem");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["-s".into(), path(&missing)],
            format!("cannot read -s {}", path(&missing)),
        ),
        (
            vec!["-s".into(), path(&only_key)],
            format!("no certificate in {}", path(&only_key)),
        ),
        (
            vec!["-s".into(), path(&only_cert)],
            format!("no private key in {}", path(&only_cert)),
        ),
        (
            vec!["-s".into(), path(&mismatched)],
            format!(
                "the private key in {0} does not match the certificate in {0}",
                path(&mismatched)
            ),
        ),
    ];
    for (args, expected) in cases {
        let output = assert_cmd::Command::new(LB)
            .args(&args)
            .args(["-p", "0", "-b", "/", "127.0.0.1:1"])
            .assert()
            .code(2)
            .get_output()
            .clone();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            stderr.lines().count(),
            1,
            "one line for {args:?}:\n{stderr}"
        );
        assert!(
            stderr.contains(&expected),
            "{args:?}: expected {expected:?} in:\n{stderr}"
        );
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The key in its own file (`--tls-key`) works; plain HTTP to the TLS port gets its connection
/// closed and nothing is logged as proxied; a client that stalls in the handshake is dropped
/// after `--header-timeout`.
#[test]
fn separate_key_plain_http_and_a_stalled_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate();
    let cert_path = file(dir.path(), "cert.pem", &cert);
    let key_path = file(dir.path(), "key.pem", &key);
    let a = Backend::start("a");
    let a_addr = a.addr.to_string();
    let mut lb = lb_process(&[
        "-p",
        "0",
        "-l",
        "-",
        "-s",
        &path(&cert_path),
        "--tls-key",
        &path(&key_path),
        "--header-timeout",
        "400ms",
        "-b",
        "/",
        &a_addr,
    ]);
    assert_eq!(https_get(lb.addr, &cert, "/").0, 200);

    let mut plain = RawClient::connect(lb.addr);
    plain.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    // Returns once lb has closed the connection (reset or not); never a 200.
    let (bytes, _reset) = plain.read_until_closed(PATIENCE);
    assert!(
        !String::from_utf8_lossy(&bytes).contains("200 OK"),
        "plain HTTP is not answered"
    );

    let started = Instant::now();
    let mut stalled = RawClient::connect(lb.addr);
    assert!(stalled.closes_within(PATIENCE));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "dropped after {took:?}"
    );

    std::thread::sleep(Duration::from_millis(200));
    let log = lb.stdout_lines().join("\n");
    assert_eq!(
        log.lines().count(),
        1,
        "only the HTTPS request was proxied:\n{log}"
    );
}

/// `-D FILE`: one request's bytes on both legs, in order (client -> lb, lb -> backend, backend ->
/// lb, lb -> client), each chunk a header line and a classic hexdump.
#[test]
fn the_dump_shows_both_legs_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump.txt");
    let a = Backend::start("a");
    let a_addr = a.addr.to_string();
    let mut lb = lb_process(&["-p", "0", "-D", &path(&dump), "-b", "/", &a_addr]);
    assert_eq!(get(lb.addr, "/api/v1/whoami").status, 200);
    lb.signal("TERM").unwrap();
    let status = lb.wait_exit(PATIENCE).unwrap();
    lb.check(status.success(), format!("exit {status}"));
    let text = std::fs::read_to_string(&dump).unwrap();

    let headers: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" bytes") && l.contains(" -> "))
        .collect();
    let arrows: Vec<String> = headers
        .iter()
        .map(|h| {
            let parts: Vec<&str> = h.split(' ').collect();
            let arrow = parts.iter().position(|p| *p == "->").unwrap();
            format!("{} -> {}", parts[arrow - 1], parts[arrow + 1])
        })
        .collect();
    let client_in = arrows
        .iter()
        .position(|a| a.ends_with("-> lb") && !a.starts_with(&a_addr));
    let backend_out = arrows.iter().position(|a| *a == format!("lb -> {a_addr}"));
    let backend_in = arrows.iter().position(|a| *a == format!("{a_addr} -> lb"));
    let client_out = arrows
        .iter()
        .rposition(|a| a.starts_with("lb -> ") && !a.ends_with(&a_addr));
    let order = [client_in, backend_out, backend_in, client_out];
    assert!(
        order.iter().all(Option::is_some) && order.windows(2).all(|w| w[0] < w[1]),
        "both legs, in order: {arrows:?}\n{text}"
    );
    for header in &headers {
        assert!(header.contains("conn=1 req=1"), "{header}");
    }
    assert!(text.contains("upstream=#1"), "{text}");
    // The hexdump rows: offset, 16 hex bytes, ASCII.
    let first_row = text.lines().find(|l| l.starts_with("0000  ")).unwrap();
    assert!(
        first_row.starts_with("0000  47 45 54 20 2f 61 70 69"),
        "GET /api...: {first_row}"
    );
    assert!(first_row.ends_with("GET /api/v1/whoa"), "{first_row}");
    assert!(
        text.contains("HTTP/1.1 200 OK") || text.contains("HTTP/1.1 200"),
        "{text}"
    );
}
