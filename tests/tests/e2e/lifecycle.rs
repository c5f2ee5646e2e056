//! Graceful shutdown while traffic is flowing.

use std::time::{Duration, Instant};

use tests::{bin, http_get, Proc};

use crate::setup;

#[test]
fn sigterm_under_load_finishes_in_flight_requests_and_exits_0() {
    let (mut lb, addr, _backends) = setup(&["--grace", "5s"]);
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
    let slow = std::thread::spawn(move || http_get(addr, "/api/v1/delay?ms=1000"));
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    lb.terminate().unwrap();

    let (status, _, _) = slow.join().unwrap().unwrap();
    assert_eq!(status, 200, "the in-flight request must complete");
    let exit = lb.wait_exit(Duration::from_secs(6)).unwrap();
    assert!(
        exit.success(),
        "lb exits 0 after draining: {exit}\n{}",
        lb.transcript()
    );
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
