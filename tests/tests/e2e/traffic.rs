//! loadgen's verdict through the real balancer.

use std::time::Duration;

use tests::{bin, Proc};

use crate::setup;

#[test]
fn loadgen_sees_round_robin_through_lb() {
    let (_lb, addr, _backends) = setup(&[]);
    let url = format!("http://{addr}/");
    let mut load = Proc::spawn(
        &bin("loadgen"),
        &[&url, "-n", "40", "--expect", "round-robin", "--quiet"],
    )
    .unwrap();
    let status = load.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(
        status.success(),
        "loadgen --expect round-robin failed\n{}",
        load.transcript()
    );

    // Several connections: counts equal within the number of connections.
    let mut load = Proc::spawn(
        &bin("loadgen"),
        &[
            &url,
            "-n",
            "200",
            "-c",
            "4",
            "--expect",
            "round-robin",
            "--quiet",
        ],
    )
    .unwrap();
    let status = load.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(
        status.success(),
        "loadgen -c 4 --expect round-robin failed\n{}",
        load.transcript()
    );
}
