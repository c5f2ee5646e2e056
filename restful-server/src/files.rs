//! `-d DOCROOT`: serving a directory the way the original did (it had directory listings on),
//! with tower-http's `ServeDir` doing the file serving proper: Content-Type, Content-Length,
//! Last-Modified, ETag, conditional requests and Range.
//!
//! `ServeDir` answers 404 for a directory without index.html; we give it a fallback that lists
//! the directory instead, and that shows the built-in page for `/` itself.
//!
//! **Invariant:** nothing outside DOCROOT is ever read. Both `ServeDir` and [`resolve`] decode the
//! path first (so `%2e%2e` and `%2f` become `..` and `/`) and then refuse any path with a component
//! that is not a plain name; `..` never reaches the file system. Symbolic links inside DOCROOT are
//! followed, as by most web servers: whoever can create them can already choose what is served.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::Router;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tower_http::services::ServeDir;

use crate::error::ApiError;
use crate::page::{html_escape, page_response};
use crate::AppState;

#[derive(Clone)]
struct Docroot {
    root: Arc<Path>,
    app: AppState,
}

/// The service for every path the API does not claim: a file from `docroot` if there is one
/// (`dir/index.html` for `dir/`), else a listing for a directory, the built-in page for `/`,
/// or a 404.
pub(crate) fn service(docroot: PathBuf, app: AppState) -> ServeDir<Router> {
    let not_a_file = Router::new().fallback(not_a_file).with_state(Docroot {
        root: docroot.as_path().into(),
        app,
    });
    ServeDir::new(docroot).fallback(not_a_file)
}

/// Called by `ServeDir` for GET and HEAD requests it has no file for. It sees the path exactly as
/// `ServeDir` did, including paths `ServeDir` refused as unsafe, so it validates them again.
async fn not_a_file(State(docroot): State<Docroot>, uri: Uri) -> Response {
    if uri.path() == "/" {
        return page_response(&docroot.app).into_response();
    }
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no such file: {}", uri.path()),
        )
        .into_response()
    };
    let Some(dir) = resolve(&docroot.root, uri.path()) else {
        return not_found();
    };
    // A listing's links are relative, so they only work under a path that ends in `/`; `ServeDir`
    // has already redirected `/dir` to `/dir/`.
    let is_dir = tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir());
    if !is_dir || !uri.path().ends_with('/') {
        return not_found();
    }
    match listing(&dir, uri.path()).await {
        Ok(html) => ([(header::CACHE_CONTROL, "no-cache")], Html(html)).into_response(),
        Err(err) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot list {}: {err}", uri.path()),
        )
        .into_response(),
    }
}

/// Maps a request path to a path under `root`, or `None` if it would leave `root`. The path is
/// percent-decoded first, so an encoded `..` or `/` is seen for what it is; then every component
/// must be a plain name (not `..`, `.`, or a root).
fn resolve(root: &Path, uri_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode_str(uri_path.trim_start_matches('/'))
        .decode_utf8()
        .ok()?;
    let mut path = root.to_path_buf();
    for component in Path::new(&*decoded).components() {
        match component {
            Component::Normal(name) => path.push(name),
            _ => return None,
        }
    }
    Some(path)
}

/// Characters left as they are in a link to a file: letters, digits and `-._~` (RFC 3986 §2.3).
/// Everything else is percent-encoded, so a name cannot end the `href` attribute or smuggle in
/// a `?`, `#` or `/`.
const NAME_IN_LINK: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A plain HTML page linking to each entry of `dir`, directories first, then by name.
async fn listing(dir: &Path, uri_path: &str) -> std::io::Result<String> {
    let mut entries = Vec::new();
    let mut read_dir = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = read_dir.next_entry().await? {
        // `metadata` follows symbolic links, so a link to a directory is listed as one.
        let is_dir = tokio::fs::metadata(entry.path())
            .await
            .is_ok_and(|m| m.is_dir());
        entries.push((!is_dir, entry.file_name().to_string_lossy().into_owned()));
    }
    entries.sort();

    let shown_path = html_escape(&percent_decode_str(uri_path).decode_utf8_lossy());
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Index of {shown_path}</title>\n<link rel=\"icon\" href=\"data:,\">\n\
         <style>body{{font:16px/1.6 system-ui,sans-serif;margin:2rem}}\
         a{{text-decoration:none}}a:hover{{text-decoration:underline}}</style>\n\
         </head>\n<body>\n<h1>Index of {shown_path}</h1>\n<ul>\n\
         <li><a href=\"../\">../</a></li>\n"
    );
    for (is_file, name) in entries {
        let slash = if is_file { "" } else { "/" };
        let href = utf8_percent_encode(&name, NAME_IN_LINK);
        let text = html_escape(&name);
        html.push_str(&format!(
            "<li><a href=\"{href}{slash}\">{text}{slash}</a></li>\n"
        ));
    }
    html.push_str("</ul>\n</body>\n</html>\n");
    Ok(html)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{get, send, TEST_ADDR};
    use crate::{app, Config, X_SERVED_BY};

    /// A temporary tree: `secret.txt` next to the docroot, which must never be served, and inside
    /// the docroot a file, a directory without index.html and one with it.
    fn tree() -> (tempfile::TempDir, Router) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("secret.txt"), "TOP SECRET").unwrap();
        let root = tmp.path().join("www");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(root.join("site")).unwrap();
        std::fs::write(root.join("hello.txt"), "hello world").unwrap();
        std::fs::write(root.join("sub/a <b>&c.txt"), "odd name").unwrap();
        std::fs::create_dir_all(root.join("sub/inner")).unwrap();
        std::fs::write(root.join("site/index.html"), "<p>site</p>").unwrap();
        let config = Config {
            name: None,
            docroot: Some(root),
        };
        (tmp, app(config, TEST_ADDR))
    }

    #[tokio::test]
    async fn files_are_served_with_the_usual_headers() {
        let (_tmp, app) = tree();
        let reply = get(&app, "/hello.txt").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "hello world");
        assert_eq!(reply.headers[header::CONTENT_TYPE], "text/plain");
        assert_eq!(reply.headers[header::CONTENT_LENGTH], "11");
        assert!(reply.headers.contains_key(header::LAST_MODIFIED));
        assert_eq!(reply.headers[X_SERVED_BY], "127.0.0.1:8910");

        let range = send(&app, "GET", "/hello.txt", vec![("range", "bytes=0-4")], "").await;
        assert_eq!(range.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(range.text(), "hello");
    }

    #[tokio::test]
    async fn a_directory_with_index_html_serves_it() {
        let (_tmp, app) = tree();
        assert_eq!(get(&app, "/site/").await.text(), "<p>site</p>");
        let redirect = get(&app, "/site").await;
        assert!(redirect.status.is_redirection());
        assert_eq!(redirect.headers[header::LOCATION], "/site/");
    }

    #[tokio::test]
    async fn a_directory_without_index_html_is_listed_with_names_escaped() {
        let (_tmp, app) = tree();
        let reply = get(&app, "/sub/").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.headers[X_SERVED_BY], "127.0.0.1:8910");
        let html = reply.text();
        assert!(html.contains("<title>Index of /sub/</title>"), "{html}");
        assert!(html.contains(r#"<a href="inner/">inner/</a>"#), "{html}");
        assert!(
            html.contains(r#"<a href="a%20%3Cb%3E%26c.txt">a &lt;b&gt;&amp;c.txt</a>"#),
            "{html}"
        );
        // The directory is listed before the file.
        assert!(html.find("inner/").unwrap() < html.find("a &lt;b&gt;").unwrap());
        // And the link works.
        assert_eq!(
            get(&app, "/sub/a%20%3Cb%3E%26c.txt").await.text(),
            "odd name"
        );
    }

    #[tokio::test]
    async fn root_without_index_html_is_the_built_in_page() {
        let (_tmp, app) = tree();
        let reply = get(&app, "/").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.text().contains("<h1>RESTful API demo.</h1>"));
    }

    #[tokio::test]
    async fn root_with_index_html_serves_it() {
        let (tmp, app) = tree();
        std::fs::write(tmp.path().join("www/index.html"), "<p>mine</p>").unwrap();
        assert_eq!(get(&app, "/").await.text(), "<p>mine</p>");
    }

    #[tokio::test]
    async fn missing_files_are_404_and_the_api_still_wins() {
        let (_tmp, app) = tree();
        let reply = get(&app, "/nope.txt").await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.headers[X_SERVED_BY], "127.0.0.1:8910");
        assert_eq!(get(&app, "/api/v1/whoami").await.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn path_traversal_never_leaves_the_docroot() {
        let (_tmp, app) = tree();
        for path in [
            "/../secret.txt",
            "/sub/../../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2E/secret.txt",
            "/.%2e/secret.txt",
            "/%2e%2e%2fsecret.txt",
            "/sub/..%2f..%2fsecret.txt",
            "/sub%2f..%2f..%2fsecret.txt",
            "/..%5csecret.txt",
            "/%2fetc%2fpasswd",
            "//etc/passwd",
            "/../",
            "/%2e%2e/",
        ] {
            let reply = get(&app, path).await;
            assert!(
                !reply.status.is_success() && !reply.text().contains("TOP SECRET"),
                "{path} answered {} {}",
                reply.status,
                reply.text()
            );
            assert!(!reply.text().contains("www"), "{path} listed the parent");
        }
    }

    #[test]
    fn resolve_refuses_anything_but_plain_names() {
        let root = Path::new("/srv/www");
        assert_eq!(
            resolve(root, "/a/b%20c.txt"),
            Some(PathBuf::from("/srv/www/a/b c.txt"))
        );
        assert_eq!(resolve(root, "/"), Some(PathBuf::from("/srv/www")));
        for bad in [
            "/..",
            "/a/../..",
            "/%2e%2e",
            "/a%2f%2e%2e%2f%2e%2e",
            "/./a",
            "/%ff",
        ] {
            assert_eq!(resolve(root, bad), None, "{bad}");
        }
    }
}
