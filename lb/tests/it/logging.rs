//! Every request gets exactly one access-log line, however it ends: answered by a backend or by lb,
//! abandoned by its client, cut off at the end of `--grace`, or refused by hyper before it became a
//! request (a malformed or oversized head, a head that never completed).
//!
//! Clients: raw bytes throughout: malformed, oversized and unfinished heads, and requests whose
//! client goes away.

use std::time::Duration;

use lb::config::LogFormat;
use serde_json::Value;
use tests::{RawClient, PATIENCE};

use crate::support::{rule, Backend, Lb};

/// An lb logging JSON lines in front of `backend`, with `adjust` applied to its configuration.
fn json_lb(backend: &Backend, adjust: impl FnOnce(&mut lb::Config)) -> Lb {
    Lb::start_with(vec![rule("/", backend.addr)], |c| {
        c.log_format = LogFormat::Json;
        adjust(c);
    })
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// lb answers a malformed head with 400 and an oversized one with 431 without calling its
/// handler; lb drops a head that does not complete within `--header-timeout`. Each is one line, with
/// `-` for the method and path it never learned, and `backend=not defined` in the original format.
#[test]
fn refused_heads_are_logged_with_their_status() {
    let a = Backend::start("a");
    let lb = json_lb(&a, |c| {
        c.limits.max_header_bytes = 1024;
        c.timeouts.header = Duration::from_millis(300);
    });

    let mut garbage = RawClient::connect(lb.addr);
    garbage.send(b"NOT A REQUEST\r\n\r\n");
    assert_eq!(garbage.read_response().status, 400);

    let mut huge = RawClient::connect(lb.addr);
    let long = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(4096)
    );
    huge.send(long.as_bytes());
    assert_eq!(huge.read_response().status, 431);

    let mut slow = RawClient::connect(lb.addr);
    slow.send(b"GET / HTTP/1.1\r\nHost: x\r\n");
    assert!(slow.closes_within(PATIENCE));

    let lines = lb.exact_log_lines(3);
    let statuses: Vec<u64> = lines
        .iter()
        .map(|l| parse(l)["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![400, 431, 408], "{lines:#?}");
    for line in &lines {
        let line = parse(line);
        assert_eq!(
            (line["method"].as_str(), line["path"].as_str()),
            (Some("-"), Some("-"))
        );
        assert_eq!(line["backend"], Value::Null, "{line}");
    }
}

#[test]
fn a_refused_head_in_the_original_format_reads_dash_dash_not_defined() {
    let a = Backend::start("a");
    let lb = Lb::start(vec![rule("/", a.addr)]);
    let mut garbage = RawClient::connect(lb.addr);
    garbage.send(b"NOT A REQUEST\r\n\r\n");
    assert_eq!(garbage.read_response().status, 400);
    let lines = lb.exact_log_lines(1);
    let (time, rest) = lines[0].split_once(' ').unwrap();
    assert!(time.parse::<u64>().is_ok(), "{}", lines[0]);
    assert_eq!(rest, "- - backend=not defined");
}

/// The formats that show the client's `Referer` and `User-Agent` (combined, JSON) get them from
/// the request as it came; the original's format, which shows neither, stays as it was.
#[test]
fn the_formats_that_show_referer_and_user_agent_get_them_from_the_request() {
    let a = Backend::start("a");
    let request = b"GET /?q=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: Mozilla/5.0 (X11) test\r\n\
                    Referer: http://example.com/from\r\n\r\n";
    for format in [LogFormat::Combined, LogFormat::Json, LogFormat::Mongoose] {
        let lb = Lb::start_with(vec![rule("/", a.addr)], |c| c.log_format = format);
        let mut client = RawClient::connect(lb.addr);
        client.send(request);
        assert_eq!(client.read_response().status, 200);
        let line = lb.exact_log_lines(1).remove(0);
        match format {
            LogFormat::Combined => {
                assert!(
                    line.contains("\"GET /?q=1 HTTP/1.1\" 200 ")
                        && line
                            .contains(" \"http://example.com/from\" \"Mozilla/5.0 (X11) test\" "),
                    "{line}"
                );
            }
            LogFormat::Json => {
                let line = parse(&line);
                assert_eq!(line["user_agent"], "Mozilla/5.0 (X11) test", "{line}");
                assert_eq!(line["path"], "/", "{line}");
            }
            LogFormat::Mongoose => {
                let (_, rest) = line.split_once(' ').unwrap();
                assert_eq!(rest, format!("GET / backend={}", a.addr));
            }
        }
    }
}

/// A request still waiting for its backend when `--grace` runs out is cut off, and logged (499: no
/// response was ever sent), on one worker thread and on several.
#[test]
fn requests_cut_off_at_the_end_of_grace_are_logged() {
    for threads in [1, 2] {
        let a = Backend::start("a");
        let mut lb = json_lb(&a, |c| {
            c.timeouts.grace = Duration::from_millis(300);
            c.threads = threads;
        });
        let mut conn = RawClient::connect(lb.addr);
        conn.send(b"GET /api/v1/delay?ms=5000 HTTP/1.1\r\nHost: x\r\n\r\n");
        std::thread::sleep(Duration::from_millis(200));
        lb.stop();
        let lines = lb.exact_log_lines(1);
        let line = parse(&lines[0]);
        assert_eq!(line["status"], 499, "threads {threads}: {line}");
        assert_eq!(line["path"], "/api/v1/delay", "{line}");
        assert_eq!(line["backend"], a.addr.to_string(), "{line}");
        drop(conn);
    }
}
