//! The demo backend that the load balancer spreads traffic over: a rebuild, on axum, of the Mongoose
//! `restful_server` example, keeping its interface (`-p`, `-d`, `POST /api/v1/sum`, `/printcontent`)
//! and fixing what the original got wrong (no Content-Type on sums, `/printcontent` never replying,
//! a page that needed a CDN).
//!
//! The library holds everything; `main.rs` only parses flags, binds and waits for a signal. Tests
//! drive [`app`] without a socket (`tower::ServiceExt::oneshot`) and [`serve`] with a listener on
//! `127.0.0.1:0`.
//!
//! Code map, one concept per file:
//! - `cli`: the flags, their parsing, and the messages the binary prints.
//! - `page`: the built-in "RESTful API demo" page at `GET /`.
//! - `api`: the demo's own endpoints: `sum`, `whoami`, `printcontent`.
//! - `harness`: endpoints for testing proxies: `echo`, `delay`, `status`, `bytes`.
//! - `delay`: `--delay` and `--delay-jitter`, a backend that is slow on every route.
//! - `files`: `-d DOCROOT`: static files and directory listings.
//! - `error`: the one shape of an error reply, `{"error": "..."}`.
//! - `shutdown`: the future that resolves on Ctrl-C or SIGTERM.
//!
//! **Invariant:** every response, whichever module produced it (404s and 405s included), carries
//! `X-Served-By`; it is set by the outermost layer in [`app`], not by handlers.
//!
//! **Invariant:** request bodies of unbounded size (`echo`, `printcontent`) are read frame by frame
//! and never held in memory; response bodies of unbounded size (`bytes`) are generated as they are
//! sent.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod cli;
pub mod shutdown;

mod api;
mod delay;
mod error;
mod files;
mod harness;
mod page;

#[cfg(test)]
mod testing;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get, post};
use axum::Router;
use bytes::Bytes;
use tower_http::set_header::SetResponseHeaderLayer;

pub use delay::{Delay, DELAY_FLAG_CAP};

/// What a server instance serves and how it names itself; the listening address is not here
/// because it is only known once a listener is bound (`-p 0`).
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Sent as `X-Served-By` and shown on the page; `None` means "the bound address", which is what
    /// a person reading a balancer's log line (`backend=127.0.0.1:8910`) can match it against.
    pub name: Option<String>,
    /// Serve static files from this directory; `None` serves only the built-in page and the API.
    pub docroot: Option<PathBuf>,
}

/// The header that tells which backend answered, so a test (or a person reloading the page) sees
/// the balancer alternate.
pub const X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");

/// What every handler may need, cloned into each request (all cheap: `Arc`s and a `Bytes`).
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) name: Arc<str>,
    pub(crate) addr: SocketAddr,
    /// The built-in page, rendered once with this server's name in it.
    pub(crate) page: Bytes,
    /// Every request this server has handled, counted by [`count_request`].
    pub(crate) requests_served: Arc<AtomicU64>,
}

/// Builds the whole HTTP surface of the server; `addr` is where it listens (used by `whoami` and
/// as the default name).
pub fn app(config: Config, addr: SocketAddr) -> Router {
    let name = config.name.unwrap_or_else(|| addr.to_string());
    let served_by = header_value(&name);
    let state = AppState {
        page: page::render(&name),
        name: name.into(),
        addr,
        requests_served: Arc::new(AtomicU64::new(0)),
    };

    let router = Router::new()
        .route("/api/v1/sum", post(api::sum))
        .route("/api/v1/whoami", get(api::whoami))
        .route("/printcontent", any(api::print_content))
        .route("/api/v1/echo", any(harness::echo))
        .route("/api/v1/delay", any(harness::delay))
        .route("/api/v1/status/{code}", any(harness::status))
        .route("/api/v1/bytes", any(harness::bytes));

    // Without a docroot `/` is the built-in page and anything else is a 404. With one, every path
    // the API does not claim goes to the file server, which falls back to the built-in page for `/`
    // when the docroot has no index.html.
    let router = match config.docroot {
        None => router
            .route("/", get(page::index))
            .fallback(error::no_route),
        Some(docroot) => router.fallback_service(files::service(docroot, state.clone())),
    };

    // `layer` wraps everything added above, fallback included. The last layer added is the
    // outermost, so X-Served-By is set even on responses produced by the layers inside it.
    router
        .layer(middleware::from_fn_with_state(state.clone(), count_request))
        .layer(SetResponseHeaderLayer::overriding(X_SERVED_BY, served_by))
        .with_state(state)
}

/// Bind `addr` with a listen backlog of 4096 (tokio's `bind` uses 128, and a burst of a few hundred
/// clients connecting at once would have SYNs dropped and retried a second later).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Serves [`app`] on an already-bound listener until `shutdown` resolves, then stops accepting,
/// lets in-flight requests finish, and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_delay(listener, config, Delay::default(), shutdown).await
}

/// [`serve`], with every response held back by `delay` (`--delay`, `--delay-jitter`).
///
/// The delay is an argument of its own rather than a field of [`Config`] because other crates'
/// tests build `Config` with a struct literal, which a new field would break.
pub async fn serve_with_delay(
    listener: tokio::net::TcpListener,
    config: Config,
    delay: Delay,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;

    let addr = listener.local_addr()?;
    // Nagle's algorithm would hold back the last small segment of a reply until the previous one
    // is acknowledged; for a request/response server that only adds latency.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {err}");
        }
    });
    axum::serve(listener, delay.wrap(app(config, addr)))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Middleware that counts requests for `whoami`. `Relaxed` is enough: the counter orders nothing
/// else, it only has to not lose increments.
async fn count_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    state.requests_served.fetch_add(1, Ordering::Relaxed);
    next.run(request).await
}

/// A header value for the server name. HTTP forbids control characters in header values (they
/// could end the header early), so those are replaced rather than refused: a library caller's odd
/// name must not stop the server from starting. The CLI rejects such names up front.
fn header_value(name: &str) -> HeaderValue {
    if let Ok(value) = HeaderValue::from_bytes(name.as_bytes()) {
        return value;
    }
    let cleaned: String = name
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    HeaderValue::from_bytes(cleaned.as_bytes())
        .unwrap_or_else(|_| HeaderValue::from_static("restful-server"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{get, send, TEST_ADDR};
    use axum::http::StatusCode;

    #[tokio::test]
    async fn every_response_says_who_served_it_including_errors() {
        let app = app(Config::default(), TEST_ADDR);
        for (method, path, status) in [
            ("GET", "/", StatusCode::OK),
            ("GET", "/no/such/thing", StatusCode::NOT_FOUND),
            ("GET", "/api/v1/sum", StatusCode::METHOD_NOT_ALLOWED),
            ("POST", "/api/v1/sum", StatusCode::BAD_REQUEST),
            ("GET", "/api/v1/status/503", StatusCode::SERVICE_UNAVAILABLE),
        ] {
            let reply = send(&app, method, path, vec![], "").await;
            assert_eq!(reply.status, status, "{method} {path}");
            assert_eq!(
                reply.headers[X_SERVED_BY], "127.0.0.1:8910",
                "{method} {path}"
            );
        }
    }

    #[tokio::test]
    async fn name_overrides_the_address_in_x_served_by() {
        let config = Config {
            name: Some("backend-a".into()),
            docroot: None,
        };
        let reply = get(&app(config, TEST_ADDR), "/").await;
        assert_eq!(reply.headers[X_SERVED_BY], "backend-a");
    }

    #[test]
    fn control_characters_in_a_name_cannot_split_the_header() {
        assert_eq!(header_value("a\r\nb"), "a??b");
        assert_eq!(
            header_value("büro"),
            HeaderValue::from_bytes("büro".as_bytes()).unwrap()
        );
    }
}
