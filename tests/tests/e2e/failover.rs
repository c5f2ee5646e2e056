//! A backend dies and comes back; keep-alive clients; prefix routing.
//!
//! Clients: reqwest, one new connection per request; raw bytes for the test of one keep-alive
//! connection, where the connection itself is the point.

use std::time::{Duration, Instant};

use tests::{cluster, get, LbBuilder, RawClient, RestfulServer};

#[test]
fn a_killed_backend_is_skipped_and_rejoins_after_the_fail_timeout() {
    let mut cluster = cluster(2, &["--fail-timeout", "500ms"]);
    let addr = cluster.lb.addr;
    let dead = cluster.backends.remove(1);
    let dead_addr = dead.addr;
    let alive = cluster.backends[0].addr.to_string();
    drop(dead); // kills the process

    // The original alternated 200 / 500 forever. Now every request is served by the survivor.
    for _ in 0..6 {
        let reply = get(addr, "/api/v1/whoami");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.served_by(), alive);
    }

    // Bring it back on the same port; after the cool-down it gets its turns again.
    let _back = RestfulServer::start(&["-p", &dead_addr.port().to_string()]);
    std::thread::sleep(Duration::from_millis(600));
    let seen: Vec<String> = (0..4)
        .map(|_| get(addr, "/").served_by().to_string())
        .collect();
    assert!(
        seen.contains(&dead_addr.to_string()),
        "the returned backend should serve again: {seen:?}"
    );
    assert!(seen.contains(&alive));
}

#[test]
fn every_backend_down_is_a_prompt_502_naming_the_cause() {
    let cluster = cluster(2, &[]);
    let (lb, backends) = (cluster.lb, cluster.backends);
    drop(backends);
    let started = Instant::now();
    let reply = get(lb.addr, "/");
    assert_eq!(reply.status, 502);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(reply.text().contains("down"), "{}", reply.text());
}

#[test]
fn one_keep_alive_connection_still_alternates_per_request() {
    let cluster = cluster(2, &[]);
    let mut conn = RawClient::connect(cluster.lb.addr);
    let mut seen = Vec::new();
    for _ in 0..4 {
        // A plain GET without Content-Length: the original closed the connection after it.
        conn.send(b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n\r\n");
        let response = conn.read_response();
        assert_eq!(response.status, 200);
        seen.push(
            response
                .header("x-served-by")
                .unwrap_or_default()
                .to_string(),
        );
    }
    let names: Vec<String> = cluster
        .backend_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        seen,
        vec![
            names[0].clone(),
            names[1].clone(),
            names[0].clone(),
            names[1].clone()
        ]
    );
}

#[test]
fn prefixes_route_and_rewrite() {
    let api = RestfulServer::start(&["-p", "0", "--name", "api"]);
    let web = RestfulServer::start(&["-p", "0", "--name", "web"]);
    let lb = LbBuilder::new()
        .route("/stuff/=/api/v1/", api.addr)
        .route("/", web.addr)
        .start();

    let reply = get(lb.addr, "/stuff/echo?q=1");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.served_by(), "api");
    let body = reply.text();
    assert!(
        body.contains("\"uri\":\"/api/v1/echo?q=1\""),
        "the backend saw the rewritten target: {body}"
    );

    let reply = get(lb.addr, "/index.html");
    assert_eq!(reply.served_by(), "web");
}
