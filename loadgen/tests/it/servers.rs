//! Test servers bound on `127.0.0.1:0`, living as tasks of the test's runtime (they stop when the
//! test ends).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

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
