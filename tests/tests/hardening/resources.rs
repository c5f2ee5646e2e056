//! Resources under load, measured from `/proc/PID/` of the real `lb` process: memory per idle
//! connection, file descriptors after clients vanish mid-response, peak memory for 200 MB each way.
//! The figures are printed (`cargo test -- --nocapture` shows them) as well as bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tests::bad_backend::BadBackend;

use crate::support::{eventually, fd_count, lb, proc_status_kib, Client};

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
    let mut warm = Client::connect(addr);
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
    let mut fresh = Client::connect(addr);
    assert_eq!(fresh.get("/fresh").status, 200);
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
    let (_server, server_addr) =
        tests::start_backend(&tests::bin("restful-server"), &["-p", "0"]).unwrap();
    let (mut proc, addr) = lb(&[server_addr], &["--pool-idle-timeout", "200ms"]);
    let pid = proc.pid();
    let mut warm = Client::connect(addr);
    assert_eq!(warm.get("/api/v1/echo").status, 200);
    drop(warm);
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
    let mut client = Client::connect(addr);
    let r = client.get("/api/v1/echo");
    assert_eq!(r.status, 200, "lb keeps serving");
    drop(client);
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
    let (_server, server_addr) =
        tests::start_backend(&tests::bin("restful-server"), &["-p", "0"]).unwrap();
    let (proc, addr) = lb(&[server_addr], &[]);
    let pid = proc.pid();
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            write!(
                c,
                "POST /api/v1/echo HTTP/1.1\r\nHost: lb.test\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
            let mut crc = crc32fast::Hasher::new();
            let mut sent = 0;
            while sent < SIZE {
                c.write_all(&chunk).unwrap();
                crc.update(&chunk);
                sent += chunk.len() as u64;
            }
            let mut reply = String::new();
            c.read_to_string(&mut reply).unwrap();
            let body = reply.split("\r\n\r\n").nth(1).unwrap();
            let echo: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(echo["body_len"], SIZE);
            assert_eq!(echo["body_crc32"], crc.finalize());
        });
        s.spawn(|| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            write!(
                c,
                "GET /api/v1/bytes?n={SIZE} HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut total: u64 = 0;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = c.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            assert!(total > SIZE, "head + {SIZE} body bytes, got {total}");
        });
    });
    let peak = proc_status_kib(pid, "VmHWM");
    eprintln!(
        "200 MB up + 200 MB down through lb in {:?}: lb peak VmHWM {peak} KiB",
        started.elapsed()
    );
    assert!(peak < 64 * 1024, "lb's peak memory {peak} KiB");
}
