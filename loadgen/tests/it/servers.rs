//! Test servers bound on `127.0.0.1:0`, living as tasks of the test's runtime (they stop when the
//! test ends).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// A stand-in for "a balancer in front of some backends": answer `i` says `X-Served-By:
/// pattern[i % len]`, counted across all connections. An empty name sends no header.
pub struct Backends {
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
}

impl Backends {
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

pub async fn backends(pattern: &[&'static str]) -> Backends {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pattern: Arc<[&'static str]> = pattern.into();
    let served = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let (pattern, served) = (pattern.clone(), served.clone());
            let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                let i = served.fetch_add(1, Ordering::SeqCst);
                let name = pattern[i % pattern.len()];
                let mut response = Response::builder();
                if !name.is_empty() {
                    response = response.header("X-Served-By", name);
                }
                let body = Full::new(Bytes::from(format!("hello from {name}\n")));
                async move { Ok::<_, Infallible>(response.body(body).unwrap()) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    Backends { addr, connections }
}

/// Answers every request with `status` (and a short body), like a balancer whose backends are
/// all down answering 502.
pub async fn status(status: u16) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(move |_req: Request<hyper::body::Incoming>| async move {
                let body = Full::new(Bytes::from(format!("status {status}\n")));
                Ok::<_, Infallible>(Response::builder().status(status).body(body).unwrap())
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// A fast backend that freezes once, like a process stopped with SIGSTOP: the first request
/// that arrives `after` the server started opens a window of `stall`, and every request that
/// arrives within it is answered only when the window closes.
pub async fn stalling(after: Duration, stall: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let started = Instant::now();
    let window: Arc<Mutex<Option<Instant>>> = Arc::default();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let window = window.clone();
            let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                let window = window.clone();
                async move {
                    let now = Instant::now();
                    let thaw = {
                        let mut window = window.lock().unwrap();
                        if window.is_none() && now >= started + after {
                            *window = Some(now + stall);
                        }
                        window.filter(|end| now < *end)
                    };
                    if let Some(end) = thaw {
                        tokio::time::sleep_until(end).await;
                    }
                    let body = Full::new(Bytes::from_static(b"hello\n"));
                    Ok::<_, Infallible>(Response::new(body))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// Accepts connections and never answers: every request times out.
pub async fn silent() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// A loopback port with nothing listening: connecting is refused.
pub async fn refused() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A stand-in for a balancer that hashes on a request header (`lb --balance hash:header:NAME`):
/// the answer's `X-Served-By` is `names[hash(value) % len]`, so a value always gets the same
/// name. Every value received is kept in `seen`.
pub struct Sticky {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<BTreeSet<String>>>,
}

impl Sticky {
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

pub async fn sticky(header: &'static str, names: &[&'static str]) -> Sticky {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let names: Arc<[&'static str]> = names.into();
    let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (names, kept) = (names.clone(), kept.clone());
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let value = req
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
                let response = Response::builder()
                    .header("X-Served-By", name)
                    .body(Full::new(Bytes::from_static(b"hello\n")));
                async move { Ok::<_, Infallible>(response.unwrap()) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    Sticky { addr, seen }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made for each test with `rcgen`: the
/// certificate's PEM (also the CA to trust) and the server.
pub struct TlsBackend {
    pub addr: SocketAddr,
    pub cert_pem: String,
    /// TLS handshakes completed.
    pub handshakes: Arc<AtomicUsize>,
}

impl TlsBackend {
    /// `https://127.0.0.1:PORT/` (the certificate names 127.0.0.1 too).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.addr.port())
    }
}

/// An HTTPS server (tokio-rustls, ring, ALPN http/1.1) answering `X-Served-By: tls`.
pub async fn tls() -> TlsBackend {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_pem = made.cert.pem();
    let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(made.signing_key.serialize_pem().as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                // A client that rejects the certificate aborts the handshake: not an error here.
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                    let response = Response::builder()
                        .header("X-Served-By", "tls")
                        .body(Full::new(Bytes::from_static(b"hello over tls\n")));
                    Ok::<_, Infallible>(response.unwrap())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    TlsBackend {
        addr,
        cert_pem,
        handshakes,
    }
}

/// A server with a known capacity: it answers one request every `1 / per_second`, in the order
/// they arrive, like a single worker with a fixed service time (a D/D/1 queue). Below that rate
/// each answer takes about one service time; above it, a queue builds up and latency grows
/// with it.
pub async fn limited(per_second: f64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service_time = Duration::from_secs_f64(1.0 / per_second);
    let next_free: Arc<Mutex<Instant>> = Arc::new(Mutex::new(Instant::now()));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let next_free = next_free.clone();
            let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                let done = {
                    let mut free = next_free.lock().unwrap();
                    *free = (*free).max(Instant::now()) + service_time;
                    *free
                };
                async move {
                    tokio::time::sleep_until(done).await;
                    let response = Response::builder()
                        .header("X-Served-By", "limited")
                        .body(Full::new(Bytes::from_static(b"served\n")));
                    Ok::<_, Infallible>(response.unwrap())
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}
