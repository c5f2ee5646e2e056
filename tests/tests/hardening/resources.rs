//! Resources under load, measured from `/proc/PID/` of the real `lb` process: memory per idle
//! connection, file descriptors after clients vanish mid-response, peak memory for 200 MB each way.
//! The figures are printed (`cargo test -- --nocapture` shows them) as well as bounded.
//!
//! Clients: raw sockets where connections themselves are what is measured (thousands held idle,
//! clients vanishing mid-response); reqwest for the ordinary requests and the 200 MB transfers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tests::http::{builder, get, url};
use tests::reqwest::blocking::Body;
use tests::{eventually, BadBackend, RawClient, RestfulServer};

use crate::support::{fd_count, lb, proc_status_kib};

/// The soft `RLIMIT_NOFILE` of this process (lb, started by us, inherits it).
fn open_files_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// 2,000 idle keep-alive connections (fewer if `ulimit -n` is too low) cost little memory, and a
/// new client is still answered promptly while they are open.
#[test]
fn thousands_of_idle_connections() {
    let limit = open_files_limit();
    // This process holds one fd per connection, lb one too; keep headroom for everything else.
    let count = 2000.min(limit.saturating_sub(300));
    if count < 2000 {
        eprintln!("ulimit -n is {limit}: holding {count} idle connections instead of 2000");
    }
    let backend = BadBackend::start().unwrap();
    let (proc, addr) = lb(&[backend.addr()], &[]);
    let pid = proc.pid();
    // Warm up (runtime threads, pool, allocator arenas) so the baseline is a serving lb.
    let mut warm = RawClient::connect(addr);
    for _ in 0..20 {
        assert_eq!(warm.get("/warm").status, 200);
    }
    let rss_before = proc_status_kib(pid, "VmRSS");
    let fds_before = fd_count(pid);

    let phase = Instant::now();
    let mut conns: Vec<TcpStream> = (0..count)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    let connecting = phase.elapsed();
    eprintln!("{count} clients connected in {connecting:?}");
    // A listen backlog smaller than the burst makes the kernel drop SYNs: seconds, not millis.
    assert!(connecting < Duration::from_secs(3), "{connecting:?}");
    // One request on each, so every connection is an idle keep-alive one (not a fresh one
    // waiting for its first head, which --header-timeout would close). One at a time, so lb
    // reuses one upstream connection and the memory measured is the client connections'.
    for s in &mut conns {
        s.write_all(b"GET /idle HTTP/1.1\r\nHost: lb.test\r\n\r\n")
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        while !seen.ends_with(b"GET /idle\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "lb closed an idle connection");
            seen.extend_from_slice(&buf[..n]);
        }
    }
    eprintln!("and each answered once after {:?}", phase.elapsed());
    assert!(
        eventually(Duration::from_secs(5), || fd_count(pid)
            >= fds_before + count),
        "lb holds {} fds, expected at least {}",
        fd_count(pid),
        fds_before + count
    );
    let rss_after = proc_status_kib(pid, "VmRSS");
    let per_conn = (rss_after.saturating_sub(rss_before)) as f64 * 1024.0 / count as f64;
    eprintln!(
        "idle connections: {count}; lb VmRSS {rss_before} KiB -> {rss_after} KiB = {:.1} KiB per idle connection",
        per_conn / 1024.0
    );

    let started = Instant::now();
    assert_eq!(get(addr, "/fresh").status, 200);
    let took = started.elapsed();
    eprintln!("a new request with {count} idle connections open: {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(
        per_conn < 64.0 * 1024.0,
        "an idle connection costs {:.1} KiB",
        per_conn / 1024.0
    );
}

/// 100 clients vanish in the middle of a large, slow response: lb keeps serving, and every fd it
/// opened for them (client sockets, upstream connections) is closed again.
#[test]
fn clients_vanishing_mid_response_leak_nothing() {
    let server = RestfulServer::start(&["-p", "0"]);
    let (mut proc, addr) = lb(&[server.addr], &["--pool-idle-timeout", "200ms"]);
    let pid = proc.pid();
    assert_eq!(get(addr, "/api/v1/echo").status, 200);
    // Baseline: no clients, pool emptied by the idle timeout.
    std::thread::sleep(Duration::from_millis(700));
    let baseline = fd_count(pid);

    std::thread::scope(|s| {
        for _ in 0..100 {
            s.spawn(|| {
                let mut c = TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                c.write_all(
                    b"GET /api/v1/bytes?n=100000000&chunk_delay_ms=5 HTTP/1.1\r\nHost: lb.test\r\n\r\n",
                )
                .unwrap();
                let mut got = 0;
                let mut buf = [0u8; 16 * 1024];
                while got < 100 * 1024 {
                    let n = c.read(&mut buf).unwrap();
                    assert!(n > 0, "lb closed before the client did");
                    got += n;
                }
                // Dropped here, mid-response.
            });
        }
    });
    let r = get(addr, "/api/v1/echo");
    assert_eq!(r.status, 200, "lb keeps serving");
    let settled = eventually(Duration::from_secs(5), || fd_count(pid) <= baseline);
    let now = fd_count(pid);
    eprintln!("fds of lb: baseline {baseline}, after 100 vanished clients {now}");
    assert!(
        settled,
        "lb holds {now} fds, baseline {baseline}\n{}",
        proc.transcript()
    );
}

/// 200 MB up and 200 MB down at the same time: bodies are streamed, so lb's peak memory stays
/// far below the sizes moved.
#[test]
fn large_bodies_keep_memory_bounded() {
    const SIZE: u64 = 200 * 1024 * 1024;
    let server = RestfulServer::start(&["-p", "0"]);
    let (proc, addr) = lb(&[server.addr], &[]);
    let pid = proc.pid();
    let client = builder().timeout(Duration::from_secs(120)).build().unwrap();
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut crc = crc32fast::Hasher::new();
    for _ in 0..SIZE / chunk.len() as u64 {
        crc.update(&chunk);
    }
    let crc = crc.finalize();
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            let body = Body::sized(Repeat::new(&chunk, SIZE), SIZE);
            let reply = tests::http::send(client.post(url(addr, "/api/v1/echo")).body(body));
            assert_eq!(reply.status, 200, "{}", reply.text());
            let echo = reply.json();
            assert_eq!(echo["body_len"], SIZE);
            assert_eq!(echo["body_crc32"], crc);
        });
        s.spawn(|| {
            let mut response = client
                .get(url(addr, &format!("/api/v1/bytes?n={SIZE}")))
                .send()
                .unwrap();
            assert_eq!(response.status(), 200);
            let total = std::io::copy(&mut response, &mut std::io::sink()).unwrap();
            assert_eq!(total, SIZE, "body bytes received");
        });
    });
    let peak = proc_status_kib(pid, "VmHWM");
    eprintln!(
        "200 MB up + 200 MB down through lb in {:?}: lb peak VmHWM {peak} KiB",
        started.elapsed()
    );
    assert!(peak < 64 * 1024, "lb's peak memory {peak} KiB");
}

/// `len` bytes made of `chunk` over and over, read without holding them all in memory.
struct Repeat {
    chunk: Vec<u8>,
    left: u64,
    at: usize,
}

impl Repeat {
    fn new(chunk: &[u8], len: u64) -> Repeat {
        Repeat {
            chunk: chunk.to_vec(),
            left: len,
            at: 0,
        }
    }
}

impl Read for Repeat {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf
            .len()
            .min(self.chunk.len() - self.at)
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at = (self.at + n) % self.chunk.len();
        self.left -= n as u64;
        Ok(n)
    }
}
