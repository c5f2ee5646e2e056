//! A backend dies and comes back; keep-alive clients; prefix routing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tests::{bin, http_get, start_backend, start_lb};

use crate::{served_by, setup};

#[test]
fn a_killed_backend_is_skipped_and_rejoins_after_the_fail_timeout() {
    let (_lb, addr, mut backends) = setup(&["--fail-timeout", "500ms"]);
    let (dead, dead_addr) = backends.remove(1);
    let alive = backends[0].1.to_string();
    drop(dead); // kills the process

    // The original alternated 200 / 500 forever. Now every request is served by the survivor.
    for _ in 0..6 {
        let (status, headers, _) = http_get(addr, "/api/v1/whoami").unwrap();
        assert_eq!(status, 200);
        assert_eq!(served_by(&headers), alive);
    }

    // Bring it back on the same port; after the cool-down it gets its turns again.
    let (_back, _) = start_backend(
        &bin("restful-server"),
        &["-p", &dead_addr.port().to_string()],
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let seen: Vec<String> = (0..4)
        .map(|_| served_by(&http_get(addr, "/").unwrap().1))
        .collect();
    assert!(
        seen.contains(&dead_addr.to_string()),
        "the returned backend should serve again: {seen:?}"
    );
    assert!(seen.contains(&alive));
}

#[test]
fn every_backend_down_is_a_prompt_502_naming_the_cause() {
    let (_lb, addr, backends) = setup(&[]);
    drop(backends);
    let started = Instant::now();
    let (status, _, body) = http_get(addr, "/").unwrap();
    assert_eq!(status, 502);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(
        String::from_utf8_lossy(&body).contains("down"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

/// Read one response with a Content-Length body from a keep-alive connection; returns X-Served-By.
fn read_response(reader: &mut BufReader<TcpStream>) -> (u16, String) {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let (mut length, mut served) = (0usize, String::new());
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap(),
            "x-served-by" => served = value.trim().to_string(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, served)
}

#[test]
fn one_keep_alive_connection_still_alternates_per_request() {
    let (_lb, addr, backends) = setup(&[]);
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut seen = Vec::new();
    for _ in 0..4 {
        // A plain GET without Content-Length: the original closed the connection after it.
        write!(writer, "GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (status, served) = read_response(&mut reader);
        assert_eq!(status, 200);
        seen.push(served);
    }
    let names: Vec<String> = backends.iter().map(|(_, a)| a.to_string()).collect();
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
    let (_a, api) = start_backend(&bin("restful-server"), &["-p", "0", "--name", "api"]).unwrap();
    let (_b, web) = start_backend(&bin("restful-server"), &["-p", "0", "--name", "web"]).unwrap();
    let (api, web) = (api.to_string(), web.to_string());
    let (_lb, addr) = start_lb(
        &bin("lb"),
        &["-p", "0", "-b", "/stuff/=/api/v1/", &api, "-b", "/", &web],
    )
    .unwrap();

    let (status, headers, body) = http_get(addr, "/stuff/echo?q=1").unwrap();
    assert_eq!(status, 200);
    assert_eq!(served_by(&headers), "api");
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("\"uri\":\"/api/v1/echo?q=1\""),
        "the backend saw the rewritten target: {body}"
    );

    let (_, headers, _) = http_get(addr, "/index.html").unwrap();
    assert_eq!(served_by(&headers), "web");
}
