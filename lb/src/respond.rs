//! Step 8 of a request, when lb answers itself instead of a backend: errors and redirects.
//!
//! This is the only place that decides which status code a failure gets. Every
//! answer has a short text body saying *why*, because the person reading it is usually debugging
//! their setup, and closes nothing it does not have to.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::error::ProxyError;
use crate::response::ResponseBody;

/// The status code for each kind of failure.
pub fn status_for(error: &ProxyError) -> StatusCode {
    match error {
        ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ProxyError::ClientBody {
            timed_out: true, ..
        } => StatusCode::REQUEST_TIMEOUT,
        ProxyError::ClientBody { .. } => StatusCode::BAD_REQUEST,
        ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
        ProxyError::AllBackendsDown { .. } | ProxyError::GaveUp { .. } => StatusCode::BAD_GATEWAY,
        ProxyError::ResponseTimeout { .. } | ProxyError::SendTimeout { .. } => {
            StatusCode::GATEWAY_TIMEOUT
        }
        ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
    }
}

/// A complete error response: status, a one-line text body naming the cause.
pub fn error_response(error: &ProxyError) -> Response<ResponseBody> {
    let status = status_for(error);
    let mut response = text(status, format!("{error}\n"));
    if matches!(
        error,
        ProxyError::BadRequest(_) | ProxyError::ClientBody { .. } | ProxyError::SendTimeout { .. }
    ) {
        // After a malformed or unfinished request we cannot trust where the next one starts:
        // close (RFC 9112 §9.6).
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// `302 Found` to `location`, for `-r` rules.
pub fn redirect(location: &str) -> Response<ResponseBody> {
    let mut response = text(StatusCode::FOUND, format!("redirecting to {location}\n"));
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn text(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
