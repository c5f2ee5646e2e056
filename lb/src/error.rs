//! Everything that can go wrong with one request, and where it went wrong.
//!
//! Each variant records *which side* failed (the client, the route, the upstream) so that exactly one
//! place, [`crate::respond::status_for`], can turn it into a status code: a bad request is the
//! client's fault (4xx), an unreachable or broken backend is a gateway failure (502/504).

use std::time::Duration;

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client sent something we refuse to forward (RFC 9112 §3.2: Host is mandatory in HTTP/1.1).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// No `-b` rule matches the request's Host and path.
    #[error("no route for {host}{path}: no -b prefix matches")]
    NoRoute { host: String, path: String },
    /// Every backend of the group refused the connection or is in its cool-down.
    #[error("all backends for prefix {prefix} are down (last error: {last})")]
    AllBackendsDown { prefix: String, last: String },
    /// Every attempt the retry rules allowed failed before a response (see `retry.rs`).
    #[error("gave up after {attempts} attempt(s) (last error: {last})")]
    GaveUp { attempts: usize, last: String },
    /// The backend stopped taking the request body: not a byte written for this long (its
    /// socket full), nginx's `proxy_send_timeout`.
    #[error("backend {backend} took no byte of the request body for {timeout:?} (--body-timeout)")]
    SendTimeout { backend: String, timeout: Duration },
    /// The backend accepted the request but did not send a response head in time.
    #[error("backend {backend} sent no response within {timeout:?}")]
    ResponseTimeout { backend: String, timeout: Duration },
    /// The client's request body failed while it was being forwarded: the client's fault, even
    /// though it surfaces as a failed send to the backend.
    #[error("request body failed: {reason}")]
    ClientBody { timed_out: bool, reason: String },
    /// The backend broke the connection or sent something that is not HTTP, and the request
    /// could not be sent elsewhere.
    #[error("backend {backend}: {what} ({source})")]
    Upstream {
        backend: String,
        what: String,
        source: WireError,
    },
}

/// What went wrong on an HTTP/1.1 connection to a backend (`h1`, where it is `h1::Error`).
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The backend closed the connection before a complete response head.
    #[error("connection closed before a complete response head")]
    Closed,
    /// The backend closed the connection before the end of a body it had framed.
    #[error("connection closed before the end of the response body")]
    BodyCut,
    /// Not HTTP/1.1, or a framing lb refuses (see `h1/framing.rs`, `h1/chunked.rs`).
    #[error("{0}")]
    Malformed(&'static str),
}

impl WireError {
    /// Did the backend reset the connection (RST), rather than close it in order?
    pub fn is_reset(&self) -> bool {
        matches!(self, WireError::Io(e) if matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ))
    }
}

/// Why we could not get a connection to one backend. Nothing was sent, so trying another is safe.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {backend}: {source}")]
    Io {
        backend: String,
        source: std::io::Error,
    },
    #[error("connecting to {backend}: no connection within {timeout:?}")]
    Timeout { backend: String, timeout: Duration },
}

/// How the client's request body failed; [`crate::body::RequestBody`] wraps its errors in this so
/// the proxy can tell them from the backend's.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("no byte for {0:?} (--body-timeout)")]
    Stalled(Duration),
    #[error("malformed or cut off: {0}")]
    Broken(#[source] WireError),
}

/// The error type carried by the bodies we stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
