//! Raw-socket clients against every framing and parsing row of `proxy-rules.md` (RFC 9112 §2-§7).
//!
//! Each case sends exact bytes to `lb` in front of a recording [`BadBackend`] (which answers
//! normally on ordinary paths) and checks two things: what the client gets (statuses, then whether
//! the connection is closed), and what the backend received (nothing, or exactly the listed
//! well-formed requests). Many cases end with a pipelined `GET /smuggled`: it must never reach a
//! backend unless the case says the connection legitimately stays open for it.
//!
//! Where RFC 9112 allows two behaviours, the table holds the one `lb` shows (mostly hyper's parser
//! deciding), with a comment saying why it is acceptable.
//!
//! Clients: raw bytes only: the malformed and smuggling requests are the test.

use std::time::Duration;

use tests::bad_backend::{BadBackend, Received};
use tests::RawClient;

use crate::support::lb;

/// One row: bytes in, what the client and the backend must see.
struct Case {
    name: &'static str,
    send: Vec<u8>,
    /// Final statuses the client receives, in order.
    statuses: &'static [u16],
    /// After those responses lb closes the connection.
    closes: bool,
    /// `METHOD target` of every request the backend receives, in order.
    backend: &'static [&'static str],
    /// The first backend request's body, when it matters.
    body: Option<&'static [u8]>,
    /// The backend may instead see nothing, or the listed request cut short (lb aborted it
    /// because the client's body was bad).
    partial_ok: bool,
}

fn case(
    name: &'static str,
    send: impl Into<Vec<u8>>,
    statuses: &'static [u16],
    closes: bool,
    backend: &'static [&'static str],
) -> Case {
    Case {
        name,
        send: send.into(),
        statuses,
        closes,
        backend,
        body: None,
        partial_ok: false,
    }
}

/// A request line + Host, the start of most cases.
macro_rules! post {
    ($rest:literal) => {
        concat!("POST / HTTP/1.1\r\nHost: lb.test\r\n", $rest).as_bytes()
    };
}

/// Appended to many cases: if lb misreads where the previous request ends, this is what leaks.
macro_rules! then_smuggled {
    ($first:literal) => {
        concat!($first, "GET /smuggled HTTP/1.1\r\nHost: lb.test\r\n\r\n").as_bytes()
    };
}

const CLOSE: bool = true;
const OPEN: bool = false;

fn cases() -> Vec<Case> {
    vec![
        // --- Request line (RFC 9112 §3): 400 and close, nothing reaches a backend.
        case("garbage request line", b"GARBAGE\r\n\r\n", &[400], CLOSE, &[]),
        case("request line without a version", b"GET /\r\n\r\n", &[400], CLOSE, &[]),
        case(
            "space inside the target",
            b"GET /a b HTTP/1.1\r\nHost: lb.test\r\n\r\n",
            &[400],
            CLOSE,
            &[],
        ),
        case(
            "control byte inside the target",
            b"GET /a\x01b HTTP/1.1\r\nHost: lb.test\r\n\r\n",
            &[400],
            CLOSE,
            &[],
        ),
        case(
            "extra word after the version",
            b"GET / HTTP/1.1 extra\r\nHost: lb.test\r\n\r\n",
            &[400],
            CLOSE,
            &[],
        ),
        case(
            "lower-case version",
            b"GET / http/1.1\r\nHost: lb.test\r\n\r\n",
            &[400],
            CLOSE,
            &[],
        ),
        // RFC 9112 allows 505 here; hyper answers 400 for any version it cannot parse, which is
        // as safe: the connection closes and nothing is forwarded.
        case(
            "unknown version HTTP/1.2",
            b"GET / HTTP/1.2\r\nHost: lb.test\r\n\r\n",
            &[400],
            CLOSE,
            &[],
        ),
        // hyper (HTTP/1 only) recognises the HTTP/2 preface and closes without an answer: also fine.
        case(
            "HTTP/2 prior-knowledge preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            &[],
            CLOSE,
            &[],
        ),
        // --- Host (RFC 9112 §3.2).
        case(
            "HTTP/1.1 without Host",
            then_smuggled!("GET / HTTP/1.1\r\n\r\n"),
            &[400],
            CLOSE,
            &[],
        ),
        case(
            "two Host headers",
            then_smuggled!("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            &[400],
            CLOSE,
            &[],
        ),
        // HTTP/1.0 may omit Host: forwarded (lb fills in the backend's name), then closed since
        // HTTP/1.0 has no keep-alive by default.
        case(
            "HTTP/1.0 without Host",
            b"GET /ten HTTP/1.0\r\n\r\n",
            &[200],
            CLOSE,
            &["GET /ten"],
        ),
        // An absolute-form target names another host: lb is not an open proxy, the configured
        // backend gets an origin-form request.
        case(
            "absolute-form target to another host",
            b"GET http://elsewhere.test/x?q=1 HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n",
            &[200],
            OPEN,
            &["GET /x?q=1"],
        ),
        // --- Header fields (RFC 9112 §5).
        case(
            "space before a header colon",
            then_smuggled!("GET / HTTP/1.1\r\nHost : lb.test\r\n\r\n"),
            &[400],
            CLOSE,
            &[],
        ),
        // obs-fold: RFC 9112 §5.2 allows rejecting (400) or unfolding; hyper rejects.
        case(
            "obs-fold continuation line",
            then_smuggled!("GET / HTTP/1.1\r\nHost: lb.test\r\nX-Folded: a\r\n b\r\n\r\n"),
            &[400],
            CLOSE,
            &[],
        ),
        case(
            "bare CR inside a field value",
            then_smuggled!("GET / HTTP/1.1\r\nHost: lb.test\r\nX-A: a\rb\r\n\r\n"),
            &[400],
            CLOSE,
            &[],
        ),
        case(
            "NUL inside a field value",
            then_smuggled!("GET / HTTP/1.1\r\nHost: lb.test\r\nX-A: a\0b\r\n\r\n"),
            &[400],
            CLOSE,
            &[],
        ),
        // RFC 9112 §2.2: a recipient MAY accept a bare LF as a line end. hyper does; what the
        // backend gets is freshly serialised with CRLF (the backend's strict parser checks).
        case(
            "bare LF line endings",
            b"GET /lf HTTP/1.1\nHost: lb.test\n\n",
            &[200],
            OPEN,
            &["GET /lf"],
        ),
        // A length with leading zeros is still one valid length (RFC 9110 §8.6): the backend gets
        // the body with one framing header, lb's own (a second one would be the smuggling shape).
        Case {
            body: Some(b"hello"),
            ..case(
                "Content-Length with leading zeros",
                post!("Content-Length: 00000000000000000005\r\n\r\nhello"),
                &[200],
                OPEN,
                &["POST /"],
            )
        },
        // Trailer fields end a chunked body; lb does not pass them on, and the body arrives whole.
        Case {
            body: Some(b"hello"),
            ..case(
                "chunked request with trailer fields",
                post!("Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: 1\r\n\r\n"),
                &[200],
                OPEN,
                &["POST /"],
            )
        },
        // --- Content-Length and Transfer-Encoding together (RFC 9112 §6.3 item 3). Both 400 and
        // "forward with Transfer-Encoding only, then close" are allowed; hyper does the latter:
        // it drops Content-Length, de-chunks, and marks the connection not reusable, so the bytes
        // after the chunked body are never read as a request.
        Case {
            body: Some(b"hello"),
            ..case(
                "Content-Length and Transfer-Encoding",
                then_smuggled!(
                    "POST / HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                ),
                &[200],
                CLOSE,
                &["POST /"],
            )
        },
        Case {
            body: Some(b""),
            ..case(
                "CL.TE smuggling attempt",
                then_smuggled!(
                    "POST / HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                ),
                &[200],
                CLOSE,
                &["POST /"],
            )
        },
        Case {
            body: Some(b"GET /smuggled HTTP/1.1\r\nHost: lb.test\r\n\r\n"),
            ..case(
                "TE.CL smuggling attempt",
                post!("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n29\r\nGET /smuggled HTTP/1.1\r\nHost: lb.test\r\n\r\n\r\n0\r\n\r\n"),
                &[200],
                CLOSE,
                &["POST /"],
            )
        },
        // --- Content-Length values (RFC 9110 §8.6, RFC 9112 §6.3 item 5).
        case(
            "two different Content-Lengths",
            then_smuggled!(
                "POST / HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello"
            ),
            &[400],
            CLOSE,
            &[],
        ),
        // Identical duplicates may be accepted as one value (§6.3 item 5); the backend gets one.
        Case {
            body: Some(b"hello"),
            ..case(
                "two identical Content-Lengths",
                post!("Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
                &[200],
                OPEN,
                &["POST /"],
            )
        },
        case(
            "Content-Length list 3,2",
            then_smuggled!("POST / HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 3,2\r\n\r\nabc"),
            &[400],
            CLOSE,
            &[],
        ),
        case(
            "Content-Length +1",
            then_smuggled!("POST / HTTP/1.1\r\nHost: lb.test\r\nContent-Length: +1\r\n\r\na"),
            &[400],
            CLOSE,
            &[],
        ),
        case(
            "Content-Length 0x10",
            then_smuggled!(
                "POST / HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 0x10\r\n\r\n0123456789abcdef"
            ),
            &[400],
            CLOSE,
            &[],
        ),
        case(
            "Content-Length -1",
            then_smuggled!("POST / HTTP/1.1\r\nHost: lb.test\r\nContent-Length: -1\r\n\r\n"),
            &[400],
            CLOSE,
            &[],
        ),
        case(
            "Content-Length beyond u64",
            then_smuggled!(
                "POST / HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 99999999999999999999999\r\n\r\n"
            ),
            &[400],
            CLOSE,
            &[],
        ),
        // --- Transfer-Encoding values (RFC 9112 §6.1, §7).
        case(
            "Transfer-Encoding gzip (final coding not chunked)",
            then_smuggled!(
                "POST / HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            &[400],
            CLOSE,
            &[],
        ),
        case(
            "Transfer-Encoding chunked, identity",
            then_smuggled!(
                "POST / HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            &[400],
            CLOSE,
            &[],
        ),
        case(
            "Transfer-Encoding xchunked",
            then_smuggled!(
                "POST / HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            &[400],
            CLOSE,
            &[],
        ),
        // An unknown coding before chunked: forwarded, the body would reach the backend still
        // encoded and without the header saying so. RFC 9112 §6.1 allows 400 or 501; lb says 400.
        case(
            "Transfer-Encoding with an unknown coding before chunked",
            then_smuggled!(
                "POST / HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: x-custom, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            &[400],
            CLOSE,
            &[],
        ),
        case(
            "Transfer-Encoding in HTTP/1.0",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            &[400],
            CLOSE,
            &[],
        ),
        // --- Chunk sizes (RFC 9112 §7.1). Bodies are streamed, so lb may already have sent the
        // head upstream when the bad chunk arrives: the backend then sees the start of one POST
        // and its connection closes mid-body, a request no server acts on. Never a second one.
        Case {
            partial_ok: true,
            ..case(
                "chunk size not hex",
                then_smuggled!(
                    "POST / HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
                ),
                &[400],
                CLOSE,
                &["POST /"],
            )
        },
        Case {
            partial_ok: true,
            ..case(
                "negative chunk size",
                then_smuggled!(
                    "POST / HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n"
                ),
                &[400],
                CLOSE,
                &["POST /"],
            )
        },
        Case {
            partial_ok: true,
            ..case(
                "chunk size beyond u64",
                then_smuggled!(
                    "POST / HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nhello\r\n0\r\n\r\n"
                ),
                &[400],
                CLOSE,
                &["POST /"],
            )
        },
        Case {
            partial_ok: true,
            ..case(
                "chunk data longer than its size",
                then_smuggled!(
                    "POST / HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n"
                ),
                &[400],
                CLOSE,
                &["POST /"],
            )
        },
        // --- Size limits (default --max-header-bytes 16 KiB; hyper's own default is ~400 KB).
        case(
            "a 20 KiB header field",
            big_header("/", 20 * 1024),
            &[431],
            CLOSE,
            &[],
        ),
        // A long target counts towards the same limit: lb answers 431 where 414 would be more
        // specific; both tell the client its request head is too large, and nothing is forwarded.
        case(
            "a 20 KiB target",
            format!("GET /{} HTTP/1.1\r\nHost: lb.test\r\n\r\n", "a".repeat(20 * 1024)),
            &[431],
            CLOSE,
            &[],
        ),
        case(
            "101 header fields",
            many_headers(101),
            &[431],
            CLOSE,
            &[],
        ),
        case(
            "a 10 KiB header field (under the limit)",
            big_header("/medium", 10 * 1024),
            &[200],
            OPEN,
            &["GET /medium"],
        ),
    ]
}

/// `GET PATH HTTP/1.1` with a `X-Big` field of `value_len` bytes.
fn big_header(path: &str, value_len: usize) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: lb.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(value_len)
    )
    .into_bytes()
}

fn many_headers(n: usize) -> Vec<u8> {
    let mut head = String::from("GET / HTTP/1.1\r\nHost: lb.test\r\n");
    for i in 0..n {
        head.push_str(&format!("X-{i}: 1\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// What one case produced, for the failure report and the printed table.
struct Outcome {
    statuses: Vec<u16>,
    closed: bool,
    backend: Vec<Received>,
    problems: Vec<String>,
}

fn run(case: &Case) -> Outcome {
    let backend = BadBackend::start().unwrap();
    let (mut proc, addr) = lb(&[backend.addr()], &[]);
    let mut client = RawClient::connect(addr);
    client.patience = Duration::from_secs(3);
    client.send(&case.send);
    let mut statuses = Vec::new();
    for _ in case.statuses {
        match client.response(case.send.starts_with(b"HEAD")) {
            Some(r) => statuses.push(r.status),
            None => break,
        }
    }
    // A connection that must close does so at once; one that stays open must not close soon.
    let closed = client.closes_within(Duration::from_millis(if case.closes { 2000 } else { 200 }));
    let mut problems = Vec::new();
    if statuses != case.statuses {
        problems.push(format!(
            "client got statuses {statuses:?}, expected {:?}",
            case.statuses
        ));
    }
    if closed != case.closes {
        problems.push(format!(
            "connection {} (expected {})",
            if closed { "closed" } else { "stayed open" },
            if case.closes { "close" } else { "open" }
        ));
    }
    if !client.unread().is_empty() {
        problems.push(format!(
            "client received extra bytes: {:?}",
            String::from_utf8_lossy(client.unread())
        ));
    }
    // Give a (wrongly) forwarded request time to arrive before judging the backend.
    std::thread::sleep(Duration::from_millis(50));
    let conns = backend.connections();
    let received = backend.requests();
    let lines: Vec<String> = received.iter().map(Received::line).collect();
    let cut_short = case.partial_ok && received.iter().all(|r| !r.complete);
    let partial_ok = cut_short && (lines.is_empty() || lines == case.backend);
    if lines != case.backend && !partial_ok {
        problems.push(format!(
            "backend received {lines:?}, expected {:?}",
            case.backend
        ));
    }
    for conn in &conns {
        if let Some(why) = &conn.malformed {
            problems.push(format!("backend received a malformed request: {why}"));
        }
    }
    for r in &received {
        if !r.complete && !case.partial_ok {
            problems.push(format!("backend request {} ended early", r.line()));
        }
        if r.target.contains("smuggled") {
            problems.push("a smuggled request reached the backend".to_string());
        }
    }
    if let (Some(body), Some(first)) = (case.body, received.first()) {
        if first.body != body {
            problems.push(format!(
                "backend body {:?}, expected {:?}",
                String::from_utf8_lossy(&first.body),
                String::from_utf8_lossy(body)
            ));
        }
    }
    if !problems.is_empty() {
        problems.push(proc.transcript());
    }
    Outcome {
        statuses,
        closed,
        backend: received,
        problems,
    }
}

/// Every row of the table, in parallel; one report listing every case that failed.
#[test]
fn every_framing_row() {
    let cases = cases();
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = cases.iter().map(|c| s.spawn(|| run(c))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut failures = Vec::new();
    for (case, outcome) in cases.iter().zip(&outcomes) {
        eprintln!(
            "{:<58} -> {:?}{} backend: {:?}",
            case.name,
            outcome.statuses,
            if outcome.closed { " close" } else { " open" },
            outcome
                .backend
                .iter()
                .map(|r| format!("{}{}", r.line(), if r.complete { "" } else { " (cut)" }))
                .collect::<Vec<_>>()
        );
        if !outcome.problems.is_empty() {
            failures.push(format!(
                "{}:\n  {}",
                case.name,
                outcome.problems.join("\n  ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
