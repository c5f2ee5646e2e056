//! loadgen's verdict through the real balancer.
//!
//! Clients: loadgen only.

use std::time::Duration;

use tests::{bin, cluster, Proc};

#[test]
fn loadgen_sees_round_robin_through_lb() {
    let cluster = cluster(2, &[]);
    let url = format!("http://{}/", cluster.lb.addr);
    let mut load = Proc::spawn(
        &bin("loadgen"),
        &[&url, "-n", "40", "--expect", "round-robin", "--quiet"],
    )
    .unwrap();
    let status = load.wait_exit(Duration::from_secs(30)).unwrap();
    if !status.success() {
        load.fail("loadgen --expect round-robin failed");
    }

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
    if !status.success() {
        load.fail("loadgen -c 4 --expect round-robin failed");
    }
}
