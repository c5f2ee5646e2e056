//! Endpoints that exist for testing proxies, not for the demo: each one makes a single behaviour of
//! a backend easy to ask for, so a load balancer test can check what was forwarded (`echo`), how
//! slow backends are handled (`delay`), how statuses pass through (`status`), and whether large
//! replies are streamed rather than buffered (`bytes` with `chunk_delay_ms`).
//!
//! Every parameter has a cap, and a value past it is a 400 `{"error": ...}` naming the parameter,
//! so a typo in a test cannot tie a server up for hours or make it allocate gigabytes.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::ApiError;

/// `delay?ms=N`: at most a minute.
pub(crate) const DELAY_CAP_MS: u64 = 60_000;
/// `bytes?n=N`: at most 1 GiB.
pub(crate) const BYTES_CAP: u64 = 1 << 30;
/// `bytes?chunk_delay_ms=M`: at most ten seconds between chunks.
pub(crate) const CHUNK_DELAY_CAP_MS: u64 = 10_000;
/// `bytes` sends its body in chunks of this size.
pub(crate) const CHUNK_LEN: usize = 64 * 1024;

/// The content of every chunk `bytes` sends: byte `k` of a reply is `ALPHABET[k % 64]`, since the
/// chunk length is a multiple of 64. Readable in a terminal, and a proxy that drops, repeats or
/// reorders a piece shows up as a break in the pattern.
static CHUNK: [u8; CHUNK_LEN] = repeat_alphabet();
const ALPHABET: &[u8; 64] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_";

const fn repeat_alphabet() -> [u8; CHUNK_LEN] {
    let mut chunk = [0; CHUNK_LEN];
    let mut i = 0;
    while i < CHUNK_LEN {
        chunk[i] = ALPHABET[i % ALPHABET.len()];
        i += 1;
    }
    chunk
}

/// `/api/v1/echo`, any method: the request as this server received it, as JSON. Headers are listed
/// in the order `HeaderMap` keeps them (first appearance of each name, then all its values in
/// order), names lowercased by hyper, values as bytes made lossy UTF-8. The body is not echoed but
/// measured: its length and CRC-32, computed frame by frame so a body of any size costs no memory.
pub(crate) async fn echo(request: Request) -> Result<Json<Echo>, ApiError> {
    let (parts, mut body) = request.into_parts();
    let headers: Vec<[String; 2]> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            [
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ]
        })
        .collect();

    let mut crc = crc32fast::Hasher::new();
    let mut body_len: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|err| ApiError::bad_request(format!("the body could not be read: {err}")))?;
        // A frame is either data or trailers; trailers are not part of the body.
        if let Ok(data) = frame.into_data() {
            crc.update(&data);
            body_len += data.len() as u64;
        }
    }

    Ok(Json(Echo {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: format!("{:?}", parts.version),
        headers,
        body_len,
        body_crc32: crc.finalize(),
    }))
}

/// The reply of `echo`; a struct rather than `json!` so that the fields keep this order.
#[derive(Serialize)]
pub(crate) struct Echo {
    method: String,
    uri: String,
    /// `HTTP/1.1`, `HTTP/1.0`, ...
    version: String,
    /// `[name, value]` pairs.
    headers: Vec<[String; 2]>,
    body_len: u64,
    /// CRC-32 (IEEE, as zlib and `crc32fast` compute it) of the body.
    body_crc32: u32,
}

/// `/api/v1/delay?ms=N`: waits N milliseconds, then answers `{"delayed_ms": N}`. The wait is a
/// timer, not a blocked thread, so many delayed requests cost nothing but memory.
pub(crate) async fn delay(uri: Uri) -> Result<Json<Value>, ApiError> {
    let ms = query_number(&uri, "ms", DELAY_CAP_MS)?
        .ok_or_else(|| ApiError::bad_request("ms is missing: use /api/v1/delay?ms=N"))?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(Json(json!({ "delayed_ms": ms })))
}

/// `/api/v1/status/CODE`: answers with status CODE (200-599) and `{"status": CODE}`. 1xx codes are
/// refused: they are interim responses, not answers, and hyper cannot send them as a final one.
pub(crate) async fn status(Path(code): Path<String>) -> Result<Response, ApiError> {
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!("status code must be 200-599, got {code:?}"))
        })?;
    // 204, 205 and 304 have no content by definition (RFC 9110 §15.3.5, §15.3.6, §15.4.5).
    let no_content = matches!(status.as_u16(), 204 | 205 | 304);
    Ok(if no_content {
        status.into_response()
    } else {
        (status, Json(json!({ "status": status.as_u16() }))).into_response()
    })
}

/// `/api/v1/bytes?n=N[&chunk_delay_ms=M]`: a body of exactly N bytes, with `Content-Length: N`,
/// produced 64 KiB at a time as the client reads it; with M, the server sleeps M ms between
/// chunks, so a test can see the first bytes arrive through a proxy long before the last.
pub(crate) async fn bytes(method: Method, uri: Uri) -> Result<Response, ApiError> {
    let len = query_number(&uri, "n", BYTES_CAP)?
        .ok_or_else(|| ApiError::bad_request("n is missing: use /api/v1/bytes?n=N"))?;
    let chunk_delay = query_number(&uri, "chunk_delay_ms", CHUNK_DELAY_CAP_MS)?
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis);

    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        // A streamed body has no length that hyper can see, so it would use chunked encoding;
        // stating the length makes hyper frame the reply with it instead (RFC 9112 §6.3).
        (header::CONTENT_LENGTH, len.to_string()),
    ];
    if method == Method::HEAD {
        return Ok((headers, Body::empty()).into_response());
    }
    Ok((headers, Body::from_stream(chunks(len, chunk_delay))).into_response())
}

/// The chunks of a `bytes` reply: slices of one static buffer, so nothing is allocated per chunk
/// and memory stays flat whatever N is. `unfold` makes the next chunk only when the previous one
/// has been taken, which is how backpressure from a slow reader reaches this generator.
fn chunks(
    len: u64,
    delay: Option<Duration>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    futures_util::stream::unfold((len, true), move |(remaining, first)| async move {
        if remaining == 0 {
            return None;
        }
        if let (Some(delay), false) = (delay, first) {
            tokio::time::sleep(delay).await;
        }
        // At most CHUNK_LEN, so the conversion to usize and the slice below cannot fail.
        let this_len = remaining.min(CHUNK_LEN as u64) as usize;
        let chunk = Bytes::from_static(&CHUNK[..this_len]);
        Some((Ok(chunk), (remaining - this_len as u64, false)))
    })
}

/// Reads `name` from the query string as a whole number no larger than `cap`; `None` if absent.
fn query_number(uri: &Uri, name: &str, cap: u64) -> Result<Option<u64>, ApiError> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|err| ApiError::bad_request(format!("bad query string: {err}")))?;
    let Some((_, text)) = pairs.iter().find(|(key, _)| key == name) else {
        return Ok(None);
    };
    match text.trim().parse::<u64>() {
        Ok(value) if value <= cap => Ok(Some(value)),
        Ok(value) => Err(ApiError::bad_request(format!(
            "{name} must be at most {cap}, got {value}"
        ))),
        Err(_) => Err(ApiError::bad_request(format!(
            "{name} must be a whole number from 0 to {cap}, got {text:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{get, send, TEST_ADDR};
    use crate::{app, Config};
    use axum::Router;

    fn test_app() -> Router {
        app(Config::default(), TEST_ADDR)
    }

    #[tokio::test]
    async fn echo_lists_headers_as_received_and_measures_the_body() {
        let reply = send(
            &test_app(),
            "POST",
            "/api/v1/echo?a=1",
            vec![
                ("x-first", "1"),
                ("host", "example.test"),
                ("x-multi", "a"),
                ("x-multi", "b"),
                ("x-latin1", "caf\u{e9}"),
            ],
            "hello",
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        // Fields in the documented order, so the raw reply reads top to bottom like a request.
        assert!(
            reply.text().starts_with(r#"{"method":"POST","uri":"#),
            "{}",
            reply.text()
        );
        let echo = reply.json();
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["uri"], "/api/v1/echo?a=1");
        assert_eq!(echo["version"], "HTTP/1.1");
        assert_eq!(
            echo["headers"],
            json!([
                ["x-first", "1"],
                ["host", "example.test"],
                ["x-multi", "a"],
                ["x-multi", "b"],
                ["x-latin1", "café"],
            ])
        );
        assert_eq!(echo["body_len"], 5);
        assert_eq!(echo["body_crc32"], crc32fast::hash(b"hello"));
    }

    #[tokio::test]
    async fn echo_of_a_streamed_body_hashes_every_frame() {
        let frames = ["abc", "defg", "", "h"].map(|s| Ok::<_, Infallible>(Bytes::from(s)));
        let body = Body::from_stream(futures_util::stream::iter(frames));
        let echo = send(&test_app(), "PUT", "/api/v1/echo", vec![], body)
            .await
            .json();
        assert_eq!(echo["body_len"], 8);
        assert_eq!(echo["body_crc32"], crc32fast::hash(b"abcdefgh"));
    }

    #[tokio::test]
    async fn status_answers_with_the_code_asked_for() {
        let app = test_app();
        for code in [200, 201, 302, 404, 418, 500, 503, 599] {
            let reply = get(&app, &format!("/api/v1/status/{code}")).await;
            assert_eq!(reply.status.as_u16(), code);
            assert_eq!(reply.json(), json!({ "status": code }));
        }
        for code in [204, 304] {
            let reply = get(&app, &format!("/api/v1/status/{code}")).await;
            assert_eq!(reply.status.as_u16(), code);
            assert!(reply.body.is_empty(), "{code} must have no body");
        }
    }

    #[tokio::test]
    async fn status_outside_200_to_599_is_400() {
        let app = test_app();
        for code in ["100", "199", "600", "abc", "-1", "99999"] {
            let reply = get(&app, &format!("/api/v1/status/{code}")).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{code}");
            assert!(reply.json()["error"].as_str().unwrap().contains("200-599"));
        }
    }

    #[tokio::test]
    async fn bytes_sends_exactly_n_bytes_with_content_length() {
        let app = test_app();
        for n in [0, 1, 64, CHUNK_LEN as u64, 3 * CHUNK_LEN as u64 + 7] {
            let reply = get(&app, &format!("/api/v1/bytes?n={n}")).await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.headers[header::CONTENT_LENGTH], n.to_string());
            assert_eq!(reply.body.len() as u64, n);
            let pattern_holds = reply
                .body
                .iter()
                .enumerate()
                .all(|(k, &b)| b == ALPHABET[k % 64]);
            assert!(pattern_holds, "n={n}");
        }
    }

    #[tokio::test]
    async fn bytes_sleeps_between_chunks_not_before_the_first() {
        let start = std::time::Instant::now();
        let reply = get(&test_app(), "/api/v1/bytes?n=200000&chunk_delay_ms=50").await;
        assert_eq!(reply.body.len(), 200_000);
        // 200000 bytes = 4 chunks of 64 KiB (the last one short) = 3 sleeps.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(200 + 1000), "{elapsed:?}");
    }

    #[tokio::test]
    async fn delay_waits_then_says_how_long() {
        let start = std::time::Instant::now();
        let reply = get(&test_app(), "/api/v1/delay?ms=100").await;
        assert_eq!(reply.json(), json!({ "delayed_ms": 100 }));
        assert!(start.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn parameters_past_their_cap_are_400_naming_them() {
        let app = test_app();
        for (uri, named) in [
            ("/api/v1/delay?ms=60001", "ms must be at most 60000"),
            ("/api/v1/delay", "ms is missing"),
            ("/api/v1/delay?ms=soon", "ms must be a whole number"),
            ("/api/v1/bytes?n=1073741825", "n must be at most 1073741824"),
            ("/api/v1/bytes?n=-5", "n must be a whole number"),
            ("/api/v1/bytes", "n is missing"),
            (
                "/api/v1/bytes?n=1&chunk_delay_ms=10001",
                "chunk_delay_ms must be at most 10000",
            ),
        ] {
            let reply = get(&app, uri).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{uri}");
            let error = reply.json()["error"].as_str().unwrap().to_owned();
            assert!(error.starts_with(named), "{uri}: {error}");
        }
    }
}
