//! The strategies of `--balance`, seen from outside: which backend the access log and
//! `X-Served-By` name, request after request. (The strategies' arithmetic, key movement measured
//! over 10,000 keys and slow start's ramp are unit-tested in `lb/src/pick/`.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lb::pick::{Balance, HashKey};

use crate::support::{delayed_backend, get, rule, send, Backend, Lb, LbProcess};

/// nginx's smooth weighted round robin through the real binary and its log: the exact sequences
/// (a heavy backend is spread out, never served in a long run), and without `-w` the original's
/// plain rotation.
#[tokio::test]
async fn smooth_weighted_round_robin_sequences_in_the_log() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let letter: HashMap<String, char> = backends
        .iter()
        .zip(['a', 'b', 'c'])
        .map(|(b, l)| (format!("backend={}", b.addr), l))
        .collect();
    for (weights, expected) in [
        (&[5, 1, 1][..], "aabacaa"),
        (&[2, 1][..], "aba"),
        (&[3, 2, 1][..], "abacba"),
        (&[1, 1, 1][..], "abcabc"),
    ] {
        let addrs: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
        let mut args: Vec<String> = ["-p", "0", "-l", "-"].map(String::from).to_vec();
        for (w, addr) in weights.iter().zip(&addrs) {
            args.extend([
                "-w".into(),
                w.to_string(),
                "-b".into(),
                "/".into(),
                addr.clone(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let lb = LbProcess::start(&args).await;
        for _ in 0..expected.len() {
            assert_eq!(get(lb.addr, "/api/v1/whoami").await.status, 200);
        }
        let lines = lb.wait_for_stdout_lines(expected.len()).await;
        let seen: String = lines
            .iter()
            .map(|l| letter[l.rsplit(' ').next().unwrap()])
            .collect();
        lb.check(
            seen == expected,
            format!("weights {weights:?}: {seen}, expected {expected}"),
        );
        let startup = lb.stderr();
        lb.check(
            startup.contains(&format!(
                "{} [redirect=0,prefix_replacement=/,weight={}]",
                addrs[0], weights[0]
            )),
            "the startup line shows the weight",
        );
    }
}

/// One client sending one request at a time: everything is idle at each pick, so least-conn must
/// still take turns (a "first minimum" tie-break would send all to the first backend), and p2c at
/// zero load must follow the weights.
#[tokio::test]
async fn idle_backends_still_take_turns_under_least_conn_and_weights_hold_under_p2c() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = Lb::start_with(vec![rule("/", a.addr), rule("/", b.addr)], |c| {
        c.balance = Balance::LeastConn;
    })
    .await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(get(lb.addr, "/").await.served_by().to_string());
    }
    assert_eq!(seen, ["a", "b", "a", "b", "a", "b"]);

    let c = Backend::start("c").await;
    let mut rules = vec![rule("/", a.addr), rule("/", b.addr), rule("/", c.addr)];
    rules[0].weight = Some(5);
    let lb = Lb::start_with(rules, |c| c.balance = Balance::P2c).await;
    let counts = shares(lb.addr, 700, |_| None).await;
    let a_share = counts.get("a").copied().unwrap_or(0) as f64 / 700.0;
    assert!(
        (a_share - 5.0 / 7.0).abs() < 0.05,
        "p2c at zero load: a got {:.1}% (weight 5 of 7 = 71.4%): {counts:?}",
        a_share * 100.0
    );
}

/// Send `n` sequential GETs, the `i`-th with `header(i)` as its X-User; count who served them.
async fn shares(
    addr: SocketAddr,
    n: usize,
    header: impl Fn(usize) -> Option<String>,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for i in 0..n {
        let mut request = Request::get("/").body(Full::new(Bytes::new())).unwrap();
        if let Some(user) = header(i) {
            request
                .headers_mut()
                .insert("x-user", user.parse().unwrap());
        }
        let reply = send(addr, request).await;
        assert_eq!(reply.status, 200);
        *counts.entry(reply.served_by().to_string()).or_insert(0) += 1;
    }
    counts
}

/// Who serves each of `keys` (X-User: key), asked twice to check it is stable.
async fn placement(addr: SocketAddr, keys: &[String]) -> HashMap<String, String> {
    let mut placed = HashMap::new();
    for round in 0..2 {
        for key in keys {
            let mut request = Request::get("/").body(Full::new(Bytes::new())).unwrap();
            request.headers_mut().insert("x-user", key.parse().unwrap());
            let reply = send(addr, request).await;
            assert_eq!(reply.status, 200, "key {key}");
            let who = reply.served_by().to_string();
            if round == 1 {
                assert_eq!(
                    placed[key], who,
                    "key {key} moved between two identical requests"
                );
            }
            placed.insert(key.clone(), who);
        }
    }
    placed
}

/// hash:header:X-User: a key always lands on the same backend; when its backend dies only its
/// keys move (every other key stays where it was), and requests never fail; when a backend is
/// removed from the command line, the keys that move are (almost exactly) the removed one's.
#[tokio::test]
async fn consistent_hashing_moves_only_the_keys_of_a_lost_backend() {
    let mut backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let balance = Balance::Hash(HashKey::Header {
        name: http::HeaderName::from_static("x-user"),
        spelled: "X-User".into(),
    });
    let keys: Vec<String> = (0..150).map(|i| format!("user-{i}")).collect();
    let rules: Vec<_> = backends.iter().map(|b| rule("/", b.addr)).collect();
    let lb = Lb::start_with(rules, |c| c.balance = balance.clone()).await;
    let before = placement(lb.addr, &keys).await;
    for name in ["a", "b", "c"] {
        let n = before.values().filter(|v| *v == name).count();
        assert!(n > 20, "{name} holds only {n} of 150 keys: {before:?}");
    }

    backends[2].stop().await; // c dies
    let after = placement(lb.addr, &keys).await;
    for key in &keys {
        if before[key] != "c" {
            assert_eq!(
                before[key], after[key],
                "{key} was on a live backend and moved"
            );
        } else {
            assert_ne!(after[key], "c");
        }
    }

    // c removed from the configuration instead: lb restarted with a and b only.
    let rules: Vec<_> = backends[..2].iter().map(|b| rule("/", b.addr)).collect();
    let lb2 = Lb::start_with(rules, |c| c.balance = balance.clone()).await;
    let removed = placement(lb2.addr, &keys).await;
    let strays = keys
        .iter()
        .filter(|k| before[*k] != "c" && before[*k] != removed[*k])
        .count();
    assert!(
        strays <= 3,
        "{strays} of the keys on a and b moved when c was removed (at most 2% may)"
    );
}

/// Under every strategy a dead backend costs a GET nothing: the walk moves past it.
#[tokio::test]
async fn every_strategy_fails_over_past_a_dead_backend() {
    let live = Backend::start("live").await;
    let mut dead = Backend::start("dead").await;
    let dead_addr = dead.addr;
    dead.stop().await;
    for balance in [
        "round-robin",
        "least-conn",
        "p2c",
        "ewma",
        "hash:uri",
        "hash:ip",
    ] {
        let balance: Balance = balance.parse().unwrap();
        let lb = Lb::start_with(vec![rule("/", dead_addr), rule("/", live.addr)], |c| {
            c.balance = balance.clone();
        })
        .await;
        for i in 0..6 {
            let reply = get(lb.addr, &format!("/api/v1/whoami?i={i}")).await;
            assert_eq!(
                (reply.status.as_u16(), reply.served_by()),
                (200, "live"),
                "{balance}: {}",
                reply.text()
            );
        }
    }
}

/// One client on one keep-alive connection, sending GETs back to back until `until`; returns how
/// many it sent and how many the backend named `slow` answered.
async fn keep_alive_client(addr: SocketAddr, until: Instant) -> (usize, usize) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let (mut total, mut slow) = (0, 0);
    while Instant::now() < until {
        let request = Request::get("/")
            .header("host", "lb.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        total += 1;
        slow += usize::from(response.headers()["x-served-by"] == "slow");
        response.into_body().collect().await.unwrap();
    }
    (total, slow)
}

/// Two fast backends and one that takes 20 ms, 12 clients: round robin gives the slow one its
/// third regardless; the load-aware strategies steer around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_aware_strategies_avoid_a_slow_backend() {
    let fast1 = delayed_backend("fast1", Duration::ZERO).await;
    let fast2 = delayed_backend("fast2", Duration::ZERO).await;
    let slow = delayed_backend("slow", Duration::from_millis(20)).await;
    for (balance, low, high) in [
        ("round-robin", 0.30, 0.37),
        ("least-conn", 0.0, 0.15),
        ("p2c", 0.0, 0.15),
        ("ewma", 0.0, 0.15),
    ] {
        let parsed: Balance = balance.parse().unwrap();
        let rules = vec![rule("/", fast1), rule("/", fast2), rule("/", slow)];
        let lb = Lb::start_with(rules, |c| c.balance = parsed).await;
        let until = Instant::now() + Duration::from_millis(1200);
        let clients: Vec<_> = (0..12)
            .map(|_| tokio::spawn(keep_alive_client(lb.addr, until)))
            .collect();
        let (mut total, mut to_slow) = (0, 0);
        for client in clients {
            let (t, s) = client.await.unwrap();
            total += t;
            to_slow += s;
        }
        let share = to_slow as f64 / total as f64;
        eprintln!(
            "{balance}: slow backend share {:.1}% of {total}",
            share * 100.0
        );
        assert!(
            (low..=high).contains(&share),
            "{balance}: the slow backend got {:.1}% of {total} requests (expected {:.0}-{:.0}%)",
            share * 100.0,
            low * 100.0,
            high * 100.0
        );
    }
}
