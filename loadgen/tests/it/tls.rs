//! `https://` targets: trusting a CA file, refusing an unknown certificate with a sentence that
//! says what to do, `--insecure`, and `--no-keepalive` paying (and reporting) one handshake per
//! request. The server is in-process (`support::TlsBackend`), with a certificate made by `rcgen`
//! for each test.
//!
//! Client: `loadgen::run` where the report's fields are checked, the binary (`support::loadgen`)
//! where the flags, exit codes and what is printed are.

use loadgen::{Plan, Trust};

use crate::support::{loadgen, TlsBackend};

fn plan(url: &str, requests: u64, trust: Trust) -> Plan {
    let mut plan = Plan::new(url).unwrap();
    plan.requests = Some(requests);
    plan.trust = trust;
    plan
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_its_ca_works_over_one_connection() {
    let server = TlsBackend::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &server.cert_pem).unwrap();
    let report = loadgen::run(plan(&server.url(), 20, Trust::CaFile(ca)))
        .await
        .unwrap();
    assert!(report.passed(), "{}", report.render_text());
    assert_eq!(report.status.get(&200), Some(&20));
    assert_eq!(report.backends[0].name, "tls");
    // Keep-alive: one connection, one handshake, carried all 20 requests.
    let handshakes = report.tls_handshake.as_ref().unwrap();
    assert_eq!(handshakes.count(), 1, "{}", report.render_text());
    assert_eq!(server.handshakes(), 1);
}

/// Mozilla's roots do not include a certificate made a moment ago: every request fails in the
/// handshake, counted as such, and the report says why and what to do. No panic, no `Err`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_certificate_fails_with_a_clear_error() {
    let server = TlsBackend::start();
    let report = loadgen::run(plan(&server.url(), 3, Trust::WebPkiRoots))
        .await
        .unwrap();
    assert!(!report.passed());
    assert_eq!((report.requests, report.errors.tls), (3, 3));
    let text = report.render_text();
    for needle in [
        "tls handshake 3",
        "TLS error:    the server's certificate was rejected (UnknownIssuer); trust its issuer \
         with --cacert FILE, or skip verification with --insecure",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_accepts_any_certificate() {
    let server = TlsBackend::start();
    let report = loadgen::run(plan(&server.url(), 5, Trust::Insecure))
        .await
        .unwrap();
    assert!(report.passed(), "{}", report.render_text());
    assert_eq!(report.status.get(&200), Some(&5));
}

/// `--no-keepalive` over HTTPS: a new connection, so a full handshake, for every request, and
/// the report's handshake block counts one per request (text and JSON).
#[test]
fn no_keepalive_reports_a_handshake_per_request() {
    let server = TlsBackend::start();
    let url = server.url();
    let args = [
        url.as_str(),
        "-n",
        "12",
        "-c",
        "2",
        "--no-keepalive",
        "--insecure",
        "--output",
        "json",
    ];
    let out = loadgen(&args);
    assert_eq!(out.code(), Some(0), "{out}");
    let json: serde_json::Value = out.json();
    let handshake = &json["tls_handshake"];
    assert_eq!(handshake["count"], 12, "{out}");
    assert!(handshake["p50_us"].as_u64().unwrap() > 0);
    assert!(handshake["p99_us"].as_u64().unwrap() >= handshake["p50_us"].as_u64().unwrap());
    assert_eq!(server.handshakes(), 12);
    // Said once on stderr: nothing was verified.
    let err = out.stderr();
    assert_eq!(err.matches("--insecure").count(), 1, "{out}");

    let args = [url.as_str(), "-n", "4", "--no-keepalive", "--insecure"];
    let out = loadgen(&args);
    let text = out.stdout();
    assert!(text.contains("TLS handshakes: 4, p50 "), "{out}");
}

/// The command line's view of the same: `--cacert` works, no CA fails (exit 1) with the
/// sentence, and flags that make no sense for http:// are usage errors.
#[test]
fn cacert_and_insecure_on_the_command_line() {
    let server = TlsBackend::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &server.cert_pem).unwrap();
    let ca = ca.display().to_string();

    let args = [url.as_str(), "-n", "5", "--cacert", &ca];
    let out = loadgen(&args);
    assert_eq!(out.code(), Some(0), "{out}");

    let args = [url.as_str(), "-n", "2"];
    let out = loadgen(&args);
    assert_eq!(out.code(), Some(1), "{out}");
    let text = out.stdout();
    assert!(
        text.contains("certificate was rejected") && text.contains("--cacert FILE"),
        "{out}"
    );

    let missing = dir.path().join("missing.pem").display().to_string();
    let args = [url.as_str(), "-n", "2", "--cacert", &missing];
    let out = loadgen(&args);
    assert_eq!(out.code(), Some(1), "{out}");
    let err = out.stderr();
    assert!(err.contains("cannot read --cacert"), "{out}");

    for args in [
        &["http://127.0.0.1:1/", "--insecure"][..],
        &["http://127.0.0.1:1/", "--cacert", &ca],
    ] {
        let out = loadgen(args);
        assert_eq!(out.code(), Some(2), "{out}");
        let err = out.stderr();
        assert!(err.contains("applies to https:// URLs only"), "{out}");
    }
}
