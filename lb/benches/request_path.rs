//! The user-space cost of one request through `lb`, without the kernel.
//!
//! Each case serves a client connection with lb's real request path ([`lb::accept::serve_stream`]:
//! lb's client-side HTTP/1.1 (`h1/server.rs`, `serve.rs`), the watchdog, routing, the round-robin
//! pick between the article's two backends, the pool, the rewritten head, lb's backend codec (`h1`),
//! the relay, the access log line) over an in-memory pipe (`tokio::io::duplex`) instead of a
//! socket, and reaches its backends through other pipes ([`lb::upstream::Connector::Memory`]). The
//! client and the backends at the pipes' other ends are as small as they can be: the client writes
//! fixed request bytes and reads until the response's `content-length` is in; a backend reads a
//! head (and a `content-length` body) and writes a fixed response. Everything runs on one thread, as one of
//! lb's workers does, so a request's time here is the CPU time lb and the two tiny peers spend.
//! The `direct` cases are the same client talking to the same backend without lb: the rig's own
//! floor, to subtract.
//!
//! `cargo bench -p lb --bench request_path` prints ns per request (`time`) and allocations per
//! request (`alloc`, counted by divan's counting global allocator around lb's jemalloc, in this
//! bench only). The figures are discussed in README's Performance section.

use std::net::SocketAddr;
use std::sync::Arc;

use divan::{AllocProfiler, Bencher};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::runtime::Runtime;

/// lb's own allocator (jemalloc, see lb/src/main.rs), counted.
#[global_allocator]
static ALLOC: AllocProfiler<tikv_jemallocator::Jemalloc> =
    AllocProfiler::new(tikv_jemallocator::Jemalloc);

fn main() {
    divan::main();
}

/// Capacity of each direction of an in-memory pipe (a socket buffer of a loopback connection).
const PIPE: usize = 256 * 1024;

/// One benchmark case: what the client sends, what the backend answers.
#[derive(Clone, Copy)]
enum Case {
    /// `GET /` with a Host header, answered by 13 bytes: the article's request.
    SmallGet,
    /// `POST /api/v1/sum` with a 1 KiB body.
    Post1K,
    /// `GET /` answered by a 64 KiB body, written by the backend in 16 KiB pieces.
    Response64K,
    /// `GET /` with 20 headers, like a browser's.
    Headers20,
}

impl Case {
    fn request(self) -> Vec<u8> {
        match self {
            Case::SmallGet | Case::Response64K => {
                b"GET / HTTP/1.1\r\nHost: bench.local\r\n\r\n".to_vec()
            }
            Case::Post1K => {
                let mut r = b"POST /api/v1/sum HTTP/1.1\r\nHost: bench.local\r\n\
                    Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1024\r\n\r\n"
                    .to_vec();
                r.extend(std::iter::repeat_n(b'n', 1024));
                r
            }
            Case::Headers20 => {
                let mut r = b"GET /index.html?lang=en HTTP/1.1\r\nHost: bench.local\r\n".to_vec();
                for line in BROWSER_HEADERS {
                    r.extend_from_slice(line.as_bytes());
                    r.extend_from_slice(b"\r\n");
                }
                r.extend_from_slice(b"\r\n");
                r
            }
        }
    }

    fn body_len(self) -> usize {
        match self {
            Case::Response64K => 64 * 1024,
            _ => 13,
        }
    }
}

/// Nineteen headers besides Host, as a browser sends them.
const BROWSER_HEADERS: [&str; 19] = [
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language: en-US,en;q=0.5",
    "Accept-Encoding: gzip, deflate, br, zstd",
    "Referer: http://bench.local/",
    "Cookie: session=4f1c2a9e8b7d6c5e4f3a2b1c; theme=dark; lang=en",
    "Upgrade-Insecure-Requests: 1",
    "Sec-Fetch-Dest: document",
    "Sec-Fetch-Mode: navigate",
    "Sec-Fetch-Site: same-origin",
    "Sec-Fetch-User: ?1",
    "Priority: u=0, i",
    "Pragma: no-cache",
    "Cache-Control: no-cache",
    "DNT: 1",
    "Sec-GPC: 1",
    "X-Request-Id: 0d6f2b7c-3f44-4c1e-9a5e-6f0b1c2d3e4f",
    "X-Client-Version: 4.2.0",
    "If-None-Match: \"33a64df551425fcc55e4d42a148795d9f25f89d4\"",
];

/// The backend's whole answer to every request of `case`.
fn response(case: Case) -> Vec<u8> {
    let n = case.body_len();
    let mut r = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-served-by: bench-backend\r\n\
         content-length: {n}\r\n\r\n"
    )
    .into_bytes();
    r.extend(std::iter::repeat_n(b'x', n));
    r
}

/// Where a message head ends, and the value of its `content-length` (0 when absent).
fn head(bytes: &[u8]) -> Option<(usize, usize)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let length = bytes[..end]
        .split(|&b| b == b'\n')
        .find_map(|line| {
            let (name, value) = std::str::from_utf8(line).ok()?.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    Some((end, length))
}

/// Read one whole message (head and `content-length` body) into `buf`, which is cleared first.
/// Returns false at the end of the stream.
async fn read_message(io: &mut DuplexStream, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    loop {
        if let Some((end, length)) = head(buf) {
            if buf.len() >= end + length {
                return true;
            }
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

/// The backend: answers each request on `io` with `answer`, in pieces of at most 16 KiB.
async fn backend(mut io: DuplexStream, answer: Arc<[u8]>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    while read_message(&mut io, &mut buf).await {
        for piece in answer.chunks(16 * 1024) {
            if io.write_all(piece).await.is_err() {
                return;
            }
        }
    }
}

/// One client connection with its runtime, ready to send requests of one case.
struct Rig {
    runtime: Runtime,
    client: DuplexStream,
    request: Vec<u8>,
    buf: Vec<u8>,
    _stop: tokio::sync::watch::Sender<bool>,
    _log: Option<lb::access_log::LogWriter>,
}

impl Rig {
    /// The client connected to lb (`through_lb`) or straight to the backend.
    fn new(case: Case, through_lb: bool) -> Rig {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let answer: Arc<[u8]> = response(case).into();
        let (client, server) = tokio::io::duplex(PIPE);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut log = None;
        if through_lb {
            // The article's command line, with the access log on (to a file nobody reads).
            let config = lb::cli::parse([
                "lb",
                "-p",
                "0",
                "-l",
                "/dev/null",
                "-b",
                "/",
                "127.0.0.1:8910",
                "-b",
                "/",
                "127.0.0.1:8911",
            ])
            .expect("a valid command line");
            let (access_log, writer) = lb::access_log::AccessLog::start(
                &lb::config::LogTarget::File("/dev/null".into()),
                config.log_format,
            )
            .expect("/dev/null opens");
            log = Some(writer);
            let connector = lb::upstream::Connector::Memory(Arc::new(move |_addr: SocketAddr| {
                let (near, far) = tokio::io::duplex(PIPE);
                tokio::spawn(backend(far, answer.clone()));
                near
            }));
            let balancer = Arc::new(
                lb::Balancer::with_connector(&config, access_log, Default::default(), connector)
                    .expect("a balancer"),
            );
            let peer: SocketAddr = "127.0.0.1:50000".parse().expect("an address");
            runtime.spawn(lb::accept::serve_stream(server, peer, balancer, stop_rx));
        } else {
            runtime.spawn(backend(server, answer));
        }
        let mut rig = Rig {
            runtime,
            client,
            request: case.request(),
            buf: Vec::with_capacity(128 * 1024),
            _stop: stop,
            _log: log,
        };
        // The first request opens the upstream connection; the measured ones reuse it.
        rig.request();
        rig
    }

    /// Send one request and read its whole response.
    fn request(&mut self) {
        let Rig {
            runtime,
            client,
            request,
            buf,
            ..
        } = self;
        runtime.block_on(async {
            client
                .write_all(request)
                .await
                .expect("the request is written");
            assert!(read_message(client, buf).await, "a whole response");
        });
    }
}

fn run(bencher: Bencher, case: Case, through_lb: bool) {
    let mut rig = Rig::new(case, through_lb);
    bencher.bench_local(|| rig.request());
}

/// Through lb: the client, lb's request path, the backend.
mod through_lb {
    use super::*;

    #[divan::bench]
    fn small_get(b: Bencher) {
        run(b, Case::SmallGet, true);
    }

    #[divan::bench]
    fn post_1k_body(b: Bencher) {
        run(b, Case::Post1K, true);
    }

    #[divan::bench]
    fn response_64k(b: Bencher) {
        run(b, Case::Response64K, true);
    }

    #[divan::bench]
    fn headers_20(b: Bencher) {
        run(b, Case::Headers20, true);
    }
}

/// The rig's floor: the same client and backend, without lb between them.
mod direct {
    use super::*;

    #[divan::bench]
    fn small_get(b: Bencher) {
        run(b, Case::SmallGet, false);
    }

    #[divan::bench]
    fn post_1k_body(b: Bencher) {
        run(b, Case::Post1K, false);
    }

    #[divan::bench]
    fn response_64k(b: Bencher) {
        run(b, Case::Response64K, false);
    }

    #[divan::bench]
    fn headers_20(b: Bencher) {
        run(b, Case::Headers20, false);
    }
}
