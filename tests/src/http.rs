//! Ordinary requests, made with reqwest's blocking client: status, headers, bodies, keep-alive
//! and timeouts are handled by a real client, and a test only says what it asks and checks.
//!
//! - [`get`] and [`send`] read the whole response into a [`Reply`], whose fields can be checked
//!   one after the other; a transport error fails the test with its whole chain of causes.
//! - [`client`] opens a new connection for every request (as curl or a browser's reload would
//!   look to a balancer); [`keep_alive`] makes a client of its own whose requests, sent one at a
//!   time, share one connection.
//! - For a body read as it arrives (streaming, timing the first bytes), call `send()` on a
//!   request builder yourself and read the `reqwest::blocking::Response`: it implements
//!   `std::io::Read`.
//!
//! Blocking, not async: every server a test starts runs on a thread or in a process of its own,
//! so tests are plain functions. (reqwest's blocking client must not be used inside an async
//! runtime; an async test uses `reqwest::Client` instead.)

use std::net::SocketAddr;
use std::sync::OnceLock;

use reqwest::blocking::{Client, ClientBuilder, RequestBuilder, Response};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use crate::PATIENCE;

/// The settings every test client shares: no proxy from the environment (requests go to
/// loopback), redirects not followed (a test checks the 302 itself), a connect timeout, and an
/// overall timeout generous enough for 50 MB in a debug build, so that a hung server fails a
/// test instead of hanging the suite.
pub fn builder() -> ClientBuilder {
    Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(PATIENCE)
        .timeout(PATIENCE * 6)
}

/// A client that opens a new connection for every request (it keeps none idle).
pub fn client() -> Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap_or_else(|e| panic!("cannot build the HTTP client: {}", causes(&e)))
        })
        .clone()
}

/// A client of its own with a connection pool: requests sent one after the other reuse one
/// keep-alive connection.
pub fn keep_alive() -> Client {
    builder()
        .build()
        .unwrap_or_else(|e| panic!("cannot build the HTTP client: {}", causes(&e)))
}

/// `http://ADDR/PATH`.
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// `GET path` on a new connection, read to the end.
#[track_caller]
pub fn get(addr: SocketAddr, path: &str) -> Reply {
    send(client().get(url(addr, path)))
}

/// Send `request` and read the whole response; fails the test (naming the request and every
/// cause) if there is no response or the body cannot be read to its end.
#[track_caller]
pub fn send(request: RequestBuilder) -> Reply {
    let (client, request) = request.build_split();
    let request = match request {
        Ok(request) => request,
        Err(e) => panic!("cannot build a request: {}", causes(&e)),
    };
    let what = format!("{} {}", request.method(), request.url());
    match client.execute(request) {
        Ok(response) => Reply::read(response, &what),
        Err(e) => panic!("{what}: {}", causes(&e)),
    }
}

/// An error and its sources on one line: reqwest's own message alone rarely says what happened
/// ("error sending request"), its causes do ("connection refused").
pub fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A response with its body read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// Read `response` to its end (`what` names the request in a failure).
    #[track_caller]
    pub fn read(response: Response, what: &str) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let body = match response.bytes() {
            Ok(body) => body.to_vec(),
            Err(e) => panic!("{what}: reading the body: {}", causes(&e)),
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// `X-Served-By`: which backend answered ("" when absent).
    pub fn served_by(&self) -> &str {
        self.header("x-served-by")
    }

    /// A header's value, or "" when it is absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().unwrap_or("<not text>"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: the body is not JSON: {:?}", self.text()))
    }
}
