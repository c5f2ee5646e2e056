//! The built-in "RESTful API demo" page at `GET /`: the original's index.html, rebuilt to work
//! offline (plain `fetch()` instead of jQuery from a CDN) and to say which backend served it, so
//! that reloading it through the balancer visibly alternates.
//!
//! **Invariant:** one page load is one request. The CSS and script are inline, the icon is a
//! `data:` URL, and the "Served by" line is rendered here on the server rather than fetched.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use bytes::Bytes;

use crate::AppState;

/// The page's source, compiled into the binary so the server needs no files at run time.
const TEMPLATE: &str = include_str!("index.html");

/// Where the server's name goes in [`TEMPLATE`].
const SERVED_BY_SLOT: &str = "{{SERVED_BY}}";

/// Renders the page once, at startup: the name is the only part that varies, and it does not
/// change while the server runs.
pub(crate) fn render(name: &str) -> Bytes {
    Bytes::from(TEMPLATE.replace(SERVED_BY_SLOT, &html_escape(name)))
}

/// `GET /` (and `HEAD /`, which axum derives from it by dropping the body).
pub(crate) async fn index(State(state): State<AppState>) -> impl IntoResponse {
    page_response(&state)
}

/// The page as a response; also used by `files` when a docroot has no index.html.
pub(crate) fn page_response(state: &AppState) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page names the backend that rendered it, so a cached copy would lie.
            (header::CACHE_CONTROL, "no-store"),
        ],
        state.page.clone(),
    )
}

/// Escapes text for use inside HTML elements and quoted attributes. The server name comes from
/// the command line and directory listings show file names, so neither may inject markup.
pub(crate) fn html_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{get, TEST_ADDR};
    use crate::{app, Config};
    use axum::http::StatusCode;

    #[tokio::test]
    async fn index_is_the_demo_page_naming_the_backend() {
        let reply = get(&app(Config::default(), TEST_ADDR), "/").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.headers[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let html = reply.text();
        assert!(html.contains("<title>RESTful API demo</title>"));
        assert!(html.contains("<h1>RESTful API demo.</h1>"));
        assert!(html.contains(r#"id="n1""#) && html.contains(r#"id="n2""#));
        assert!(html.contains(r#"id="result""#));
        assert!(html.contains("Served by <strong>127.0.0.1:8910</strong>"));
    }

    #[test]
    fn the_page_loads_nothing_else() {
        // Every src/href is inline or a data: URL; anything else would be a second request.
        for attribute in ["src=", "href=", "@import", "url("] {
            let uses: Vec<_> = TEMPLATE.match_indices(attribute).collect();
            for (at, _) in uses {
                let rest = &TEMPLATE[at..];
                assert!(
                    rest.starts_with(r#"href="data:,""#),
                    "the page references an external resource: {}",
                    &rest[..rest.len().min(60)]
                );
            }
        }
        assert!(TEMPLATE.contains(r#"<link rel="icon" href="data:,">"#));
    }

    #[test]
    fn the_name_is_escaped_on_the_page() {
        let page = render(r#"<script>alert("x")</script>"#);
        let html = String::from_utf8_lossy(&page);
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"));
    }
}
