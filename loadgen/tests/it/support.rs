//! What loadgen's tests add to the workspace's harness (`tests`, see `tests/README.md`): the
//! servers only loadgen's checks need, and this crate's binary run to its end. The misbehaving
//! targets come from the harness's [`BadBackend`](tests::BadBackend): a fixed status
//! (`Behaviour::Status`), a silent port (`Behaviour::Hang`), a refused port
//! (`BadBackend::refused_addr`), a backend that freezes (`freeze`) and one of known capacity
//! (`serve_one_at_a_time`).
//!
//! - [`Backends`]: a stand-in for a balancer in front of some backends, naming them in a pattern
//!   (`a,b` is a round robin, `a,a,b` a skewed one);
//! - [`Sticky`]: a stand-in for a balancer that hashes a request header to a backend;
//! - [`TlsBackend`]: HTTPS, with a certificate made for the test;
//! - [`loadgen`]: the `loadgen` binary run to its end with `assert_cmd`, as a [`Run`] that
//!   displays as everything needed to understand a failed assertion.
//!
//! The three servers are hyper's HTTP/1.1 server answering from the request's head, on a thread
//! and runtime of their own ([`tests::InProcess`]): they work the same under an async test of
//! `loadgen::run` (whatever its runtime) and under a plain test that runs the binary.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tests::InProcess;
use tokio::io::{AsyncRead, AsyncWrite};

/// What a test server answers, from the request's head (loadgen's requests have no body).
type Answer = Arc<dyn Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

/// A response with `X-Served-By: name` (none when `name` is empty) and `body`.
fn served_by(name: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::builder();
    if !name.is_empty() {
        response = response.header("X-Served-By", name);
    }
    response.body(Full::new(body.into())).unwrap()
}

/// An HTTP/1.1 server on `127.0.0.1:0` answering every request with `answer`, over TLS when
/// `tls` is given; stopped (every connection closed) when dropped.
struct HttpServer {
    addr: SocketAddr,
    /// Connections that reached HTTP: accepted, and over TLS, past the handshake.
    connections: Arc<AtomicUsize>,
    _server: InProcess,
}

impl HttpServer {
    fn start(name: &str, tls: Option<tokio_rustls::TlsAcceptor>, answer: Answer) -> HttpServer {
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let listener = InProcess::loopback_listener();
        let server = InProcess::start(name, listener, move |listener, _shutdown| async move {
            while let Ok((stream, _)) = listener.accept().await {
                let answer = answer.clone();
                match tls.clone() {
                    None => {
                        counted.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(serve_connection(stream, answer));
                    }
                    Some(acceptor) => {
                        let counted = counted.clone();
                        tokio::spawn(async move {
                            // A client that rejects the certificate aborts the handshake: not
                            // an error here.
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            counted.fetch_add(1, Ordering::SeqCst);
                            serve_connection(stream, answer).await;
                        });
                    }
                }
            }
            Ok(())
        });
        HttpServer {
            addr: server.addr,
            connections,
            _server: server,
        }
    }
}

/// Serve one connection's requests (keep-alive: as many as the client sends) with `answer`.
async fn serve_connection(
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    answer: Answer,
) {
    let service = service_fn(move |request: Request<Incoming>| {
        let response = answer(&request);
        async move { Ok::<_, Infallible>(response) }
    });
    // A client that goes away mid-request is not the test's failure.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// A stand-in for "a balancer in front of some backends": answer `i` says `X-Served-By:
/// pattern[i % len]`, counted across all connections, with the body `hello from NAME`. An empty
/// name sends no header.
pub struct Backends {
    server: HttpServer,
}

impl Backends {
    pub fn start(pattern: &[&'static str]) -> Backends {
        let pattern: Arc<[&'static str]> = pattern.into();
        let served = AtomicUsize::new(0);
        let answer: Answer = Arc::new(move |_request| {
            let name = pattern[served.fetch_add(1, Ordering::SeqCst) % pattern.len()];
            served_by(name, format!("hello from {name}\n"))
        });
        Backends {
            server: HttpServer::start("backends", None, answer),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.server.addr)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.server.connections.load(Ordering::SeqCst)
    }
}

/// A stand-in for a balancer that hashes on a request header (`lb --balance hash:header:NAME`):
/// the answer's `X-Served-By` is `names[hash(value) % len]`, so a value always gets the same
/// name. Every value received is kept.
pub struct Sticky {
    server: HttpServer,
    seen: Arc<Mutex<BTreeSet<String>>>,
}

impl Sticky {
    pub fn start(header: &'static str, names: &[&'static str]) -> Sticky {
        let names: Arc<[&'static str]> = names.into();
        let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let kept = seen.clone();
        let answer: Answer = Arc::new(move |request| {
            let value = request
                .headers()
                .get(header)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            // FNV-1a: any hash will do, as long as it depends on the value only.
            let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            let name = names[(hash % names.len() as u64) as usize];
            kept.lock().unwrap().insert(value);
            served_by(name, "hello\n")
        });
        Sticky {
            server: HttpServer::start("sticky", None, answer),
            seen,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.server.addr)
    }

    /// Every value of the header received so far.
    pub fn seen(&self) -> BTreeSet<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// An HTTPS server (tokio-rustls, ring, ALPN http/1.1) answering `X-Served-By: tls`, with a
/// self-signed certificate for `localhost` and 127.0.0.1 made for each test with `rcgen`.
pub struct TlsBackend {
    server: HttpServer,
    /// The certificate's PEM (also the CA to trust).
    pub cert_pem: String,
}

impl TlsBackend {
    pub fn start() -> TlsBackend {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let cert_pem = made.cert.pem();
        let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
        let key =
            PrivateKeyDer::from_pem_slice(made.signing_key.serialize_pem().as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let answer: Answer = Arc::new(|_request| served_by("tls", "hello over tls\n"));
        TlsBackend {
            server: HttpServer::start("tls", Some(acceptor), answer),
            cert_pem,
        }
    }

    /// `https://127.0.0.1:PORT/` (the certificate names 127.0.0.1 too).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.server.addr.port())
    }

    /// TLS handshakes completed.
    pub fn handshakes(&self) -> usize {
        self.server.connections.load(Ordering::SeqCst)
    }
}

/// This crate's binary, which cargo builds for its integration tests.
pub const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");

/// How long one run of the binary may take before it is killed (and the test fails on its
/// status): the longest, `--find-max`, takes a few seconds.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// `loadgen ARGS`, run to its end.
pub fn loadgen(args: &[&str]) -> Run {
    let output = assert_cmd::Command::new(LOADGEN)
        .args(args)
        .timeout(RUN_LIMIT)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {LOADGEN}: {e}"));
    Run {
        args: args.join(" "),
        output,
    }
}

/// A finished run of the binary. Displayed, it is everything needed to understand a failed
/// assertion: the command, its status and its output.
pub struct Run {
    args: String,
    pub output: Output,
}

impl Run {
    /// The exit code (`None` if a signal ended it, e.g. after [`RUN_LIMIT`]).
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    pub fn stdout(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.output.stdout)
    }

    pub fn stderr(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.output.stderr)
    }

    /// Stdout (`--output json`) as `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.output.stdout)
            .unwrap_or_else(|e| panic!("stdout is not the JSON expected: {e}\n{self}"))
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loadgen {}\nstatus: {}\n--- stdout\n{}--- stderr\n{}",
            self.args,
            self.output.status,
            self.stdout(),
            self.stderr()
        )
    }
}
