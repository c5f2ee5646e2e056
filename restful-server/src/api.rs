//! The demo's own endpoints: `POST /api/v1/sum` (what the page calls as you type),
//! `GET /api/v1/whoami` (which backend is this, how busy has it been) and `/printcontent`.
//!
//! Where the original misbehaved, these fix it: the sum is JSON with a Content-Type and a
//! Content-Length (the original sent a chunked body without Content-Type, which made it hang
//! behind the original balancer), bad input is a 400 naming the field (the original's `strtod`
//! quietly read "abc" as 0), and `/printcontent` replies (the original never did).

use std::io::Write;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::Json;
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::AppState;

/// A sum request is two numbers; anything longer than this is not one.
pub(crate) const SUM_BODY_CAP: usize = 64 * 1024;

/// How much of a body `/printcontent` prints (the original printed 99 bytes of a 100-byte buffer).
pub(crate) const PRINT_CAP: usize = 100;

/// `POST /api/v1/sum`: `n1` and `n2` from a form (`n1=1&n2=2.5`, the original's format, also
/// accepted without a Content-Type) or a JSON object (`{"n1": 1, "n2": "2.5"}`) ->
/// `{"result": 3.5}`.
pub(crate) async fn sum(headers: HeaderMap, body: Body) -> Result<Json<Value>, ApiError> {
    let body = axum::body::to_bytes(body, SUM_BODY_CAP)
        .await
        .map_err(|_| {
            ApiError::bad_request(format!(
                "the body could not be read or is larger than {SUM_BODY_CAP} bytes"
            ))
        })?;

    let (n1, n2) = match body_kind(&headers, &body)? {
        BodyKind::Form => {
            let fields = parse_form(&body);
            (
                number_from_text("n1", form_field(&fields, "n1"))?,
                number_from_text("n2", form_field(&fields, "n2"))?,
            )
        }
        BodyKind::Json => {
            let object: Value = serde_json::from_slice(&body).map_err(|err| {
                ApiError::bad_request(format!("the body is not valid JSON: {err}"))
            })?;
            if !object.is_object() {
                return Err(ApiError::bad_request(
                    r#"expected a JSON object like {"n1": 1, "n2": 2.5}"#,
                ));
            }
            (
                number_from_json("n1", object.get("n1"))?,
                number_from_json("n2", object.get("n2"))?,
            )
        }
    };

    // Two finite numbers can still overflow to infinity (1e308 + 1e308), and JSON has no way to
    // write infinity, so that is refused too.
    let result = n1 + n2;
    if !result.is_finite() {
        return Err(ApiError::bad_request(
            "n1 + n2 is too large to represent (it overflows to infinity)",
        ));
    }
    Ok(Json(json!({ "result": result })))
}

enum BodyKind {
    Form,
    Json,
}

/// Decides how to read a sum request from its Content-Type. Without one, a body that looks like a
/// JSON object is JSON and anything else is a form, which is what `curl -d` and the original
/// page send.
fn body_kind(headers: &HeaderMap, body: &[u8]) -> Result<BodyKind, ApiError> {
    let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
        let looks_like_json = body.trim_ascii_start().starts_with(b"{");
        return Ok(if looks_like_json {
            BodyKind::Json
        } else {
            BodyKind::Form
        });
    };
    // The media type is what comes before any parameters (`; charset=UTF-8`), case-insensitive.
    let content_type = content_type.to_str().unwrap_or_default();
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "application/x-www-form-urlencoded" => Ok(BodyKind::Form),
        "application/json" => Ok(BodyKind::Json),
        other if other.ends_with("+json") => Ok(BodyKind::Json),
        _ => Err(ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "cannot read n1 and n2 from Content-Type {content_type:?}: \
                 send application/x-www-form-urlencoded or application/json"
            ),
        )),
    }
}

/// Parses an `application/x-www-form-urlencoded` body: `name=value` pairs joined by `&`, with `+`
/// for a space and `%XX` for any other byte (WHATWG URL standard, section 5.1).
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    let decode = |bytes: &[u8]| {
        let spaced: Vec<u8> = bytes
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        let decoded: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
        String::from_utf8_lossy(&decoded).into_owned()
    };
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (decode(&pair[..eq]), decode(&pair[eq + 1..])),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// The first value of a form field, as the original's `mg_get_http_var` returned.
fn form_field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(field, _)| field == name)
        .map(|(_, value)| value.as_str())
}

/// A JSON field may be a number or a string holding one (forms only have strings, and clients
/// that build JSON from form inputs often keep them as strings).
fn number_from_json(field: &str, value: Option<&Value>) -> Result<f64, ApiError> {
    match value {
        None | Some(Value::Null) => number_from_text(field, None),
        Some(Value::Number(number)) => number
            .as_f64()
            .ok_or_else(|| ApiError::bad_request(format!("{field} is not a usable number"))),
        Some(Value::String(text)) => number_from_text(field, Some(text)),
        Some(other) => Err(ApiError::bad_request(format!(
            "{field} must be a number or a numeric string, not {other}"
        ))),
    }
}

/// Reads a decimal number such as `-2.5` or `1e3`. Rust's float parser also accepts `inf` and
/// `NaN`; those are refused, since the reply must be a JSON number and JSON has neither.
fn number_from_text(field: &str, text: Option<&str>) -> Result<f64, ApiError> {
    let text = text.map(str::trim).unwrap_or_default();
    if text.is_empty() {
        return Err(ApiError::bad_request(format!("{field} is missing")));
    }
    let shown: String = text.chars().take(40).collect();
    match text.parse::<f64>() {
        Ok(number) if number.is_finite() => Ok(number),
        Ok(_) => Err(ApiError::bad_request(format!(
            "{field} must be a finite number, got {shown:?}"
        ))),
        Err(_) => Err(ApiError::bad_request(format!(
            "{field} is not a number: {shown:?}"
        ))),
    }
}

/// `GET /api/v1/whoami`: which server this is and how many requests it has handled (this one
/// included), so a test can check how a balancer spread its traffic.
pub(crate) async fn whoami(State(state): State<AppState>) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: state.name.to_string(),
        addr: state.addr.to_string(),
        pid: std::process::id(),
        requests_served: state.requests_served.load(Ordering::Relaxed),
    })
}

/// The reply of `whoami`; a struct rather than `json!` so that the fields keep this order.
#[derive(Serialize)]
pub(crate) struct WhoAmI {
    name: String,
    addr: String,
    pid: u32,
    requests_served: u64,
}

/// `/printcontent`, any method: prints the first [`PRINT_CAP`] bytes of the body to stdout, reads
/// (and drops) the rest, and replies 200 with what it did.
pub(crate) async fn print_content(request: Request) -> Result<Json<Value>, ApiError> {
    let mut body = request.into_body();
    let mut head = Vec::with_capacity(PRINT_CAP);
    let mut body_len: u64 = 0;
    // Frame by frame, so a large upload is never held in memory.
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|err| ApiError::bad_request(format!("the body could not be read: {err}")))?;
        if let Ok(data) = frame.into_data() {
            let wanted = PRINT_CAP.saturating_sub(head.len()).min(data.len());
            head.extend_from_slice(&data[..wanted]);
            body_len += data.len() as u64;
        }
    }

    // A write to stdout blocks, but this one is at most 101 bytes. `println!` would panic if
    // stdout were closed; a failed print is only worth a warning.
    let mut stdout = std::io::stdout().lock();
    let printed = stdout
        .write_all(&head)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    if let Err(err) = printed {
        tracing::warn!("/printcontent could not write to stdout: {err}");
    }
    Ok(Json(
        json!({ "printed_bytes": head.len(), "body_len": body_len }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{get, send, TEST_ADDR};
    use crate::{app, Config};
    use axum::http::StatusCode;
    use axum::Router;

    fn test_app() -> Router {
        app(Config::default(), TEST_ADDR)
    }

    const FORM: &str = "application/x-www-form-urlencoded";

    async fn sum_with(content_type: Option<&str>, body: &str) -> (StatusCode, Value) {
        let headers = content_type
            .map(|ct| vec![("content-type", ct)])
            .unwrap_or_default();
        let reply = send(&test_app(), "POST", "/api/v1/sum", headers, body.to_owned()).await;
        assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            reply.headers[header::CONTENT_LENGTH],
            reply.body.len().to_string()
        );
        (reply.status, reply.json())
    }

    #[tokio::test]
    async fn sum_of_a_form_as_the_original_page_sent_it() {
        assert_eq!(
            sum_with(Some(FORM), "n1=1&n2=2.5").await,
            (StatusCode::OK, json!({"result": 3.5}))
        );
        // fetch() with URLSearchParams adds a charset parameter.
        assert_eq!(
            sum_with(
                Some("application/x-www-form-urlencoded;charset=UTF-8"),
                "n1=-1&n2=%2B3"
            )
            .await,
            (StatusCode::OK, json!({"result": 2.0}))
        );
    }

    #[tokio::test]
    async fn sum_of_a_form_without_content_type() {
        assert_eq!(
            sum_with(None, "n1=2&n2=3").await,
            (StatusCode::OK, json!({"result": 5.0}))
        );
    }

    #[tokio::test]
    async fn sum_of_json_numbers_or_numeric_strings() {
        let expected = (StatusCode::OK, json!({"result": 3.5}));
        assert_eq!(
            sum_with(Some("application/json"), r#"{"n1":1,"n2":2.5}"#).await,
            expected
        );
        assert_eq!(
            sum_with(Some("application/json"), r#"{"n1":"1","n2":" 2.5 "}"#).await,
            expected
        );
        assert_eq!(sum_with(None, r#"{"n1":1,"n2":2.5}"#).await, expected);
    }

    async fn sum_error(content_type: Option<&str>, body: &str) -> String {
        let (status, json) = sum_with(content_type, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {json}");
        json["error"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn a_missing_field_is_named() {
        assert_eq!(sum_error(Some(FORM), "n1=1").await, "n2 is missing");
        assert_eq!(sum_error(Some(FORM), "n1=&n2=1").await, "n1 is missing");
        assert_eq!(sum_error(None, "").await, "n1 is missing");
        assert_eq!(
            sum_error(Some("application/json"), r#"{"n2":1}"#).await,
            "n1 is missing"
        );
    }

    #[tokio::test]
    async fn a_non_numeric_field_is_named() {
        assert_eq!(
            sum_error(Some(FORM), "n1=1&n2=abc").await,
            r#"n2 is not a number: "abc""#
        );
        assert!(sum_error(Some("application/json"), r#"{"n1":true,"n2":1}"#)
            .await
            .starts_with("n1 must be a number"));
        assert!(sum_error(Some("application/json"), "[1,2]")
            .await
            .contains("JSON object"));
        assert!(sum_error(Some("application/json"), "{")
            .await
            .contains("not valid JSON"));
    }

    #[tokio::test]
    async fn nan_and_infinity_are_refused_never_returned() {
        assert!(sum_error(Some(FORM), "n1=NaN&n2=1")
            .await
            .starts_with("n1 must be a finite"));
        assert!(sum_error(Some(FORM), "n1=1&n2=inf")
            .await
            .starts_with("n2 must be a finite"));
        assert!(sum_error(Some(FORM), "n1=1e308&n2=1e308")
            .await
            .contains("too large"));
        assert!(
            sum_error(Some("application/json"), r#"{"n1":1e308,"n2":1e308}"#)
                .await
                .contains("too large")
        );
    }

    #[tokio::test]
    async fn an_unknown_content_type_is_415() {
        let reply = send(
            &test_app(),
            "POST",
            "/api/v1/sum",
            vec![("content-type", "text/plain")],
            "n1=1&n2=2",
        )
        .await;
        assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(reply.json()["error"]
            .as_str()
            .unwrap()
            .contains("text/plain"));
    }

    #[tokio::test]
    async fn whoami_counts_every_request_including_404s() {
        let app = test_app();
        get(&app, "/").await;
        get(&app, "/nope").await;
        let who = get(&app, "/api/v1/whoami").await.json();
        assert_eq!(who["name"], "127.0.0.1:8910");
        assert_eq!(who["addr"], "127.0.0.1:8910");
        assert_eq!(who["pid"], std::process::id());
        assert_eq!(who["requests_served"], 3);
    }

    #[tokio::test]
    async fn printcontent_replies_with_what_it_printed() {
        let body = "x".repeat(250);
        let reply = send(&test_app(), "PUT", "/printcontent", vec![], body).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json(), json!({"printed_bytes": 100, "body_len": 250}));
    }

    #[test]
    fn form_decoding_handles_plus_percent_and_bare_names() {
        assert_eq!(
            parse_form(b"a=1+2&b=%C3%A9&c&&d=x=y"),
            vec![
                ("a".to_owned(), "1 2".to_owned()),
                ("b".to_owned(), "é".to_owned()),
                ("c".to_owned(), String::new()),
                ("d".to_owned(), "x=y".to_owned()),
            ]
        );
    }
}
