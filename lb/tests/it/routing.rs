//! Which backend serves a request, and what the access log says about it: round robin on new
//! connections and inside one keep-alive connection, prefix replacement, longest prefix, vhosts,
//! `-r` redirects and requests no rule matches.
//!
//! Clients: reqwest, one new connection per request; raw bytes for requests of several shapes on
//! one keep-alive connection.

use tests::http::{client, get, send, url};
use tests::reqwest::StatusCode;
use tests::RawClient;

use crate::support::{assert_log_line, echoed_headers, rule, Backend, Lb};

/// The original walkthrough: two backends behind `-b /`, six page loads, strict alternation in
/// both `X-Served-By` and the log.
#[test]
fn requests_on_new_connections_alternate_and_are_logged() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let lb = Lb::start(vec![rule("/", a.addr), rule("/", b.addr)]);

    let mut served = Vec::new();
    for _ in 0..6 {
        let reply = get(lb.addr, "/");
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            reply.text().contains("RESTful API demo"),
            "{}",
            reply.text()
        );
        served.push(reply.served_by().to_string());
    }
    assert_eq!(served, ["a", "b", "a", "b", "a", "b"]);

    let lines = lb.exact_log_lines(6);
    for (n, line) in lines.iter().enumerate() {
        let backend = if n % 2 == 0 { a.addr } else { b.addr };
        assert_log_line(line, "GET", "/", &backend.to_string());
    }
}

/// One client connection, seven requests of different shapes (a POST without Content-Length, a
/// POST with a body, a chunked PUT, GETs): each is answered on the same connection, and each picks the next
/// backend in turn (the choice is per request, not per connection).
#[test]
fn requests_on_one_keep_alive_connection_alternate() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let lb = Lb::start(vec![rule("/", a.addr), rule("/", b.addr)]);
    let host = format!("Host: {}\r\n", lb.addr);

    let requests = [
        format!("GET / HTTP/1.1\r\n{host}\r\n"),
        format!("GET / HTTP/1.1\r\n{host}User-Agent: raw\r\n\r\n"),
        format!("POST /api/v1/echo HTTP/1.1\r\n{host}\r\n"),
        format!("POST /api/v1/sum HTTP/1.1\r\n{host}Content-Length: 9\r\n\r\nn1=1&n2=2"),
        format!("GET /api/v1/whoami?x=1 HTTP/1.1\r\n{host}\r\n"),
        format!("GET / HTTP/1.1\r\n{host}\r\n"),
        format!(
            "PUT /api/v1/echo HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ),
    ];
    let mut conn = RawClient::connect(lb.addr);
    let mut served = Vec::new();
    for request in &requests {
        conn.send(request.as_bytes());
        let response = conn.read_response();
        assert_eq!(response.status, 200, "{request:?} -> {}", response.text());
        assert_ne!(
            response.header("connection"),
            Some("close"),
            "{request:?} must not end the connection"
        );
        served.push(response.header("x-served-by").unwrap_or("").to_string());
        if request.starts_with("PUT") {
            assert_eq!(response.json()["body_len"], 5, "the chunked body arrived");
        }
    }
    assert_eq!(served, ["a", "b", "a", "b", "a", "b", "a"]);

    let lines = lb.exact_log_lines(7);
    let expected = [
        ("GET", "/"),
        ("GET", "/"),
        ("POST", "/api/v1/echo"),
        ("POST", "/api/v1/sum"),
        ("GET", "/api/v1/whoami"), // the log shows the path without its query
        ("GET", "/"),
        ("PUT", "/api/v1/echo"),
    ];
    for (n, (line, (method, path))) in lines.iter().zip(expected).enumerate() {
        let backend = if n % 2 == 0 { a.addr } else { b.addr };
        assert_log_line(line, method, path, &backend.to_string());
    }
}

/// `-b /api/=/api/v1/ B`: the matched prefix is replaced, the rest and the query are kept.
/// With `-b / A -b /api/=/api/v1/ B -b /api/v1/ A`, the longest matching prefix decides.
#[test]
fn prefix_replacement_and_longest_prefix() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut rewritten = rule("/api/", b.addr);
    rewritten.replacement = "/api/v1/".to_string();
    let lb = Lb::start(vec![rule("/", a.addr), rewritten, rule("/api/v1/", a.addr)]);

    let reply = get(lb.addr, "/api/echo?q=1");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.served_by(), "b");
    assert_eq!(reply.json()["uri"], "/api/v1/echo?q=1");

    let reply = get(lb.addr, "/api/v1/echo?q=2");
    assert_eq!(reply.served_by(), "a", "the longer prefix /api/v1/ wins");
    assert_eq!(reply.json()["uri"], "/api/v1/echo?q=2");

    let reply = get(lb.addr, "/");
    assert_eq!(reply.served_by(), "a");
    assert!(reply.text().contains("RESTful API demo"));

    let lines = lb.exact_log_lines(3);
    assert_log_line(&lines[0], "GET", "/api/echo", &b.addr.to_string());
    assert_log_line(&lines[1], "GET", "/api/v1/echo", &a.addr.to_string());
    assert_log_line(&lines[2], "GET", "/", &a.addr.to_string());
}

/// `-v example.com -b / B -b / A`: a Host of example.com (any case, any port) goes to B, even
/// for paths a longer default prefix would match; every other Host goes to the default rules.
#[test]
fn vhost_rules_come_first_and_ignore_case_and_port() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut vhosted = rule("/", b.addr);
    vhosted.vhost = Some("example.com".to_string());
    let lb = Lb::start(vec![vhosted, rule("/", a.addr), rule("/api/", a.addr)]);

    let with_host = |path: &str, host: &str| client().get(url(lb.addr, path)).header("host", host);
    for (path, host, expected) in [
        ("/", "Example.com:8000", "b"),
        ("/", "example.com", "b"),
        ("/api/v1/whoami", "EXAMPLE.COM", "b"),
        ("/", "other.org", "a"),
        ("/", "example.com.evil", "a"),
        ("/api/v1/whoami", "127.0.0.1", "a"),
    ] {
        let reply = send(with_host(path, host));
        assert_eq!(reply.status, StatusCode::OK, "{host}{path}");
        assert_eq!(reply.served_by(), expected, "Host: {host}, path {path}");
    }

    // The Host header reaches the backend unchanged.
    let reply = send(with_host("/api/v1/echo", "Example.com:8000"));
    let echo = reply.json();
    let hosts: Vec<_> = echoed_headers(&echo)
        .into_iter()
        .filter(|(name, _)| name == "host")
        .collect();
    assert_eq!(
        hosts,
        [("host".to_string(), "Example.com:8000".to_string())]
    );
}

/// `-r -b /old/=/rewritten/ B`: lb answers 302 itself, pointing at the backend with the
/// rewritten path, and never contacts the backend.
#[test]
fn redirect_rules_answer_302_with_the_rewritten_location() {
    let a = Backend::start("a");
    let mut redirect = rule("/old/", a.addr);
    redirect.replacement = "/rewritten/".to_string();
    redirect.redirect = true;
    let lb = Lb::start(vec![redirect, rule("/", a.addr)]);

    let reply = get(lb.addr, "/old/path");
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.text());
    assert_eq!(
        reply.header("location"),
        format!("http://{}/rewritten/path", a.addr)
    );
    assert_eq!(reply.served_by(), "", "the backend must not be contacted");

    let reply = get(lb.addr, "/old/x?q=1");
    assert_eq!(
        reply.header("location"),
        format!("http://{}/rewritten/x?q=1", a.addr),
        "the query string is kept"
    );

    let whoami = get(lb.addr, "/api/v1/whoami").json();
    assert_eq!(
        whoami["requests_served"], 1,
        "only this request reached the backend"
    );
}

/// No rule matches: 404 with a text body saying so, and the log line says `backend=not defined`.
#[test]
fn no_route_is_404_with_a_reason_and_logged_as_not_defined() {
    let a = Backend::start("a");
    let lb = Lb::start(vec![rule("/api/", a.addr)]);

    let reply = get(lb.addr, "/index.html?x=1");
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(
        reply.header("content-type").starts_with("text/plain"),
        "{:?}",
        reply.headers
    );
    assert!(
        reply.text().contains("no route") && reply.text().contains("/index.html"),
        "the body should say why: {:?}",
        reply.text()
    );
    let lines = lb.exact_log_lines(1);
    assert_log_line(&lines[0], "GET", "/index.html", "not defined");
}
