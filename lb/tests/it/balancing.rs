//! The strategies of `--balance`, seen from outside: which backend the access log and
//! `X-Served-By` name, request after request. (The strategies' arithmetic, key movement measured
//! over 10,000 keys and slow start's ramp are unit-tested in `lb/src/pick/`.)
//!
//! Clients: reqwest, a new connection per request; for the load on a slow backend, twelve raw
//! keep-alive connections, each sending its next GET as soon as it is answered (the cheapest
//! client there is, so that the balancer's choices, not the client, set the pace).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lb::pick::{Balance, HashKey};
use tests::http::{client, get, send, url};
use tests::{BadBackend, RawClient, PATIENCE};

use crate::support::{lb_builder, rule, Backend, Lb};

/// A minimal keep-alive backend that answers every request `200 ok` after `delay`, naming itself
/// `name` in `X-Served-By`: fast and slow backends for the balancing strategies.
fn delayed_backend(name: &str, delay: Duration) -> BadBackend {
    let reply = format!("HTTP/1.1 200 OK\r\nX-Served-By: {name}\r\nContent-Length: 2\r\n\r\nok");
    BadBackend::replying_after(delay, reply, false)
}

/// nginx's smooth weighted round robin through the real binary and its log: the exact sequences
/// (a heavy backend is spread out, never served in a long run), and without `-w` the original's
/// plain rotation.
#[test]
fn smooth_weighted_round_robin_sequences_in_the_log() {
    let backends = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
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
        let mut builder = lb_builder().flags(&["-l", "-"]);
        for (w, backend) in weights.iter().zip(&backends) {
            builder = builder.route_with(&["-w", &w.to_string()], "/", backend.addr);
        }
        let mut lb = builder.start();
        for _ in 0..expected.len() {
            assert_eq!(get(lb.addr, "/api/v1/whoami").status, 200);
        }
        let lines = lb.wait_stdout_lines(expected.len(), PATIENCE).unwrap();
        let seen: String = lines
            .iter()
            .map(|l| letter[l.rsplit(' ').next().unwrap()])
            .collect();
        lb.check(
            seen == expected,
            format!("weights {weights:?}: {seen}, expected {expected}"),
        );
        let weighted = format!(
            "{} [redirect=0,prefix_replacement=/,weight={}]",
            backends[0].addr, weights[0]
        );
        let shown = lb.stderr_lines().iter().any(|l| l.contains(&weighted));
        lb.check(shown, "the startup line shows the weight");
    }
}

/// One client sending one request at a time: everything is idle at each pick, so least-conn must
/// still take turns (a "first minimum" tie-break would send all to the first backend), and p2c at
/// zero load must follow the weights.
#[test]
fn idle_backends_still_take_turns_under_least_conn_and_weights_hold_under_p2c() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let lb = Lb::start_with(vec![rule("/", a.addr), rule("/", b.addr)], |c| {
        c.balance = Balance::LeastConn;
    });
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(get(lb.addr, "/").served_by().to_string());
    }
    assert_eq!(seen, ["a", "b", "a", "b", "a", "b"]);

    let c = Backend::start("c");
    let mut rules = vec![rule("/", a.addr), rule("/", b.addr), rule("/", c.addr)];
    rules[0].weight = Some(5);
    let lb = Lb::start_with(rules, |c| c.balance = Balance::P2c);
    let counts = shares(lb.addr, 700, |_| None);
    let a_share = counts.get("a").copied().unwrap_or(0) as f64 / 700.0;
    // 700 weighted draws: one standard deviation is 1.7 points, so 6 points is 3.5 of them (a
    // chance in two thousand of failing by luck); ignoring the weights would give a third.
    assert!(
        (a_share - 5.0 / 7.0).abs() < 0.06,
        "p2c at zero load: a got {:.1}% (weight 5 of 7 = 71.4%): {counts:?}",
        a_share * 100.0
    );
}

/// Send `n` sequential GETs, the `i`-th with `header(i)` as its X-User; count who served them.
fn shares(
    addr: SocketAddr,
    n: usize,
    header: impl Fn(usize) -> Option<String>,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for i in 0..n {
        let mut request = client().get(url(addr, "/"));
        if let Some(user) = header(i) {
            request = request.header("x-user", user);
        }
        let reply = send(request);
        assert_eq!(reply.status, 200);
        *counts.entry(reply.served_by().to_string()).or_insert(0) += 1;
    }
    counts
}

/// Who serves each of `keys` (X-User: key), asked twice to check it is stable.
fn placement(addr: SocketAddr, keys: &[String]) -> HashMap<String, String> {
    let mut placed = HashMap::new();
    for round in 0..2 {
        for key in keys {
            let reply = send(client().get(url(addr, "/")).header("x-user", key));
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
#[test]
fn consistent_hashing_moves_only_the_keys_of_a_lost_backend() {
    let mut backends = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    ];
    let balance = Balance::Hash(HashKey::Header {
        name: http::HeaderName::from_static("x-user"),
        spelled: "X-User".into(),
    });
    let keys: Vec<String> = (0..150).map(|i| format!("user-{i}")).collect();
    let rules: Vec<_> = backends.iter().map(|b| rule("/", b.addr)).collect();
    let lb = Lb::start_with(rules, |c| c.balance = balance.clone());
    let before = placement(lb.addr, &keys);
    for name in ["a", "b", "c"] {
        let n = before.values().filter(|v| *v == name).count();
        assert!(n > 20, "{name} holds only {n} of 150 keys: {before:?}");
    }

    backends[2].stop(); // c dies
    let after = placement(lb.addr, &keys);
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
    let lb2 = Lb::start_with(rules, |c| c.balance = balance.clone());
    let removed = placement(lb2.addr, &keys);
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
#[test]
fn every_strategy_fails_over_past_a_dead_backend() {
    let live = Backend::start("live");
    let mut dead = Backend::start("dead");
    let dead_addr = dead.addr;
    dead.stop();
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
        });
        for i in 0..6 {
            let reply = get(lb.addr, &format!("/api/v1/whoami?i={i}"));
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
fn keep_alive_client(addr: SocketAddr, until: Instant) -> (usize, usize) {
    let mut conn = RawClient::connect(addr);
    let (mut total, mut slow) = (0, 0);
    while Instant::now() < until {
        let reply = conn.get("/");
        assert_eq!(reply.status, 200);
        total += 1;
        slow += usize::from(reply.header("x-served-by") == Some("slow"));
    }
    (total, slow)
}

/// Two fast backends and one that takes 20 ms, 12 clients: round robin gives the slow one its
/// third regardless; the load-aware strategies steer around it.
#[test]
fn load_aware_strategies_avoid_a_slow_backend() {
    let fast1 = delayed_backend("fast1", Duration::ZERO);
    let fast2 = delayed_backend("fast2", Duration::ZERO);
    let slow = delayed_backend("slow", Duration::from_millis(20));
    // Round robin gives the slow backend its third; the load-aware strategies must keep it well
    // below that. Quiet, least-conn gives it 8-14% and p2c 10-12%; on a machine busy with other
    // work the fast backends are slower too, and p2c once gave it 17%: the bound is 20%.
    for (balance, low, high) in [
        ("round-robin", 0.30, 0.37),
        ("least-conn", 0.0, 0.20),
        ("p2c", 0.0, 0.20),
        ("ewma", 0.0, 0.15),
    ] {
        let parsed: Balance = balance.parse().unwrap();
        let rules = vec![
            rule("/", fast1.addr()),
            rule("/", fast2.addr()),
            rule("/", slow.addr()),
        ];
        let lb = Lb::start_with(rules, |c| c.balance = parsed);
        let until = Instant::now() + Duration::from_millis(1200);
        let addr = lb.addr;
        let clients: Vec<_> = (0..12)
            .map(|_| std::thread::spawn(move || keep_alive_client(addr, until)))
            .collect();
        let (mut total, mut to_slow) = (0, 0);
        for client in clients {
            let (t, s) = client.join().unwrap();
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
