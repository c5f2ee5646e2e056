//! `--admin [IP:]PORT`: a second listener that never proxies, and shows what `lb` is doing.
//!
//! | path       | what                                                                   |
//! |------------|------------------------------------------------------------------------|
//! | `/`        | a live status page (self-contained HTML, CSS and JS, works offline)    |
//! | `/metrics` | Prometheus text format ([`metrics`])                                   |
//! | `/status`  | the configuration and each backend's live state, JSON ([`status`])     |
//! | `/events`  | the same JSON once a second, as Server-Sent Events (the page's feed)   |
//!
//! It runs on the main thread's event loop, apart from the workers, and reads only the counters
//! the request path keeps anyway (`stats.rs`): looking costs the proxy nothing. At shutdown it is
//! simply dropped, so an open `/events` stream never holds up `--grace`.

pub mod metrics;
pub mod status;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::Balancer;

/// The live page, one self-contained file.
const PAGE: &str = include_str!("page.html");

/// How often `/events` sends the status.
const EVENT_INTERVAL: Duration = Duration::from_secs(1);

type Body = BoxBody<Bytes, Infallible>;

/// Serve the admin endpoints on `listener` until the task is dropped; `listen` is the proxy's own
/// address, shown on the page.
pub async fn serve(listener: TcpListener, balancer: Arc<Balancer>, listen: String) {
    let listen: Arc<str> = listen.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (balancer, listen) = (balancer.clone(), listen.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let answer = answer(&request, &balancer, &listen);
                async move { Ok::<_, Infallible>(answer) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(request: &Request<Incoming>, balancer: &Arc<Balancer>, listen: &str) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the admin listener only answers GET\n",
        );
    }
    match request.uri().path() {
        "/" => with_type(full(PAGE), "text/html; charset=utf-8"),
        "/metrics" => with_type(
            full(metrics::render(balancer)),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/status" => with_type(full(status_json(balancer, listen)), "application/json"),
        "/events" => events(balancer.clone(), listen.to_string()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: the admin listener serves /, /metrics, /status and /events\n",
        ),
    }
}

fn status_json(balancer: &Balancer, listen: &str) -> String {
    serde_json::to_string(&status::status(balancer, listen))
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// `text/event-stream`: the status now, then once a second, until the client goes away.
fn events(balancer: Arc<Balancer>, listen: String) -> Response<Body> {
    let stream = futures_util::stream::unfold(
        (balancer, listen, true),
        |(balancer, listen, first)| async move {
            if !first {
                tokio::time::sleep(EVENT_INTERVAL).await;
            }
            let event = format!(
                "event: status\ndata: {}\n\n",
                status_json(&balancer, &listen)
            );
            let frame = Ok::<_, Infallible>(Frame::data(Bytes::from(event)));
            Some((frame, (balancer, listen, false)))
        },
    );
    let mut response = with_type(StreamBody::new(stream).boxed(), "text/event-stream");
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

fn with_type(body: Body, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, message: &'static str) -> Response<Body> {
    let mut response = with_type(full(message), "text/plain; charset=utf-8");
    *response.status_mut() = status;
    response
}
