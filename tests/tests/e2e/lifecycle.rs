//! Graceful shutdown while traffic is flowing.
//!
//! Clients: loadgen for the traffic, reqwest for the slow request in flight.

use std::time::{Duration, Instant};

use tests::{bin, cluster, get, Proc};

#[test]
fn sigterm_under_load_finishes_in_flight_requests_and_exits_0() {
    let mut cluster = cluster(2, &["--grace", "5s"]);
    let addr = cluster.lb.addr;
    let url = format!("http://{addr}/");
    let mut load = Proc::spawn(
        &bin("loadgen"),
        &[
            &url,
            "-z",
            "3s",
            "-c",
            "4",
            "--quiet",
            "--max-errors",
            "1000000",
        ],
    )
    .unwrap();

    // A slow request that is in flight when the signal arrives.
    let slow = std::thread::spawn(move || get(addr, "/api/v1/delay?ms=1000"));
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    let lb = &mut cluster.lb;
    lb.terminate().unwrap();

    let reply = slow.join().unwrap();
    assert_eq!(reply.status, 200, "the in-flight request must complete");
    let exit = lb.wait_exit(Duration::from_secs(6)).unwrap();
    if !exit.success() {
        lb.fail(format!("lb exits 0 after draining: {exit}"));
    }
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "lb drained quickly"
    );
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no new connections after shutdown"
    );
    // loadgen itself ends normally (its later requests fail to connect, which it counts).
    load.wait_exit(Duration::from_secs(10)).unwrap();
}
