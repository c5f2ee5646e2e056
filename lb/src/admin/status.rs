//! `GET /status` (and each `/events` message): the configuration and the live state of every
//! backend, as JSON. docs/admin.md documents every field.

use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;

use crate::clock::now_ms;
use crate::stats::{unix_ms, BackendStats, CLASSES, WINDOW_SECONDS};
use crate::upstream::Backend;
use crate::Balancer;

/// How many seconds the rates, shares and percentiles of `/status` cover.
pub const RECENT_SECONDS: usize = 10;

#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub listen: String,
    pub now_unix_ms: u64,
    pub started_unix_ms: u64,
    pub uptime_s: f64,
    pub connections: Connections,
    pub totals: Totals,
    pub groups: Vec<Group>,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Serialize)]
pub struct Connections {
    pub open: i64,
    pub accepted: u64,
}

#[derive(Debug, Serialize)]
pub struct Totals {
    /// Requests answered since start (every backend, plus those no backend served).
    pub requests: u64,
    /// Requests per second over the last `RECENT_SECONDS` complete seconds.
    pub rps: f64,
    pub in_flight: u64,
    /// Attempts after the first (retries and failovers).
    pub retries: u64,
    /// Requests no backend served (no route, refused heads, every backend down).
    pub unserved: u64,
    pub access_log_dropped: u64,
}

#[derive(Debug, Serialize)]
pub struct Group {
    pub vhost: Option<String>,
    pub prefix: String,
    pub strategy: String,
    pub members: Vec<Member>,
}

#[derive(Debug, Serialize)]
pub struct Member {
    /// The backend's address, as on the command line; its live state is in `backends`.
    pub backend: String,
    pub weight: u32,
    pub replacement: String,
    pub redirect: bool,
}

#[derive(Debug, Serialize)]
pub struct BackendStatus {
    pub name: String,
    /// `up`, `slow_start`, `cooling_down` (after a refused connection) or `down` (health checks).
    pub state: &'static str,
    /// Since when it is in that state (Unix ms); `null`: since lb started.
    pub state_since_unix_ms: Option<u64>,
    pub in_flight: u32,
    pub requests: u64,
    /// Over the last `RECENT_SECONDS` seconds: requests per second, share of all requests (0-1),
    /// and latency percentiles in milliseconds (from the request head to the end of the body).
    pub rps: f64,
    pub share: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Requests by status class since start: `1xx` ... `5xx`.
    pub status: std::collections::BTreeMap<&'static str, u64>,
    pub bytes: u64,
    pub connect_failures: u64,
    pub lost: u64,
    pub pool: Pool,
    pub health_check: Option<HealthCheck>,
    /// The last 60 complete seconds, oldest first: requests and p99 per second.
    pub history: Vec<SecondStatus>,
}

#[derive(Debug, Serialize)]
pub struct Pool {
    /// Idle keep-alive connections in lb's pools (all workers).
    pub idle: usize,
    /// Connections carrying a request now.
    pub active: u32,
}

#[derive(Debug, Serialize)]
pub struct HealthCheck {
    pub passed: bool,
    pub at_unix_ms: u64,
    pub detail: String,
    pub passes: u64,
    pub failures: u64,
}

#[derive(Debug, Serialize)]
pub struct SecondStatus {
    pub t: u64,
    pub requests: u64,
    pub errors: u64,
    pub p99_ms: f64,
}

/// The status right now.
pub fn status(balancer: &Balancer, listen: &str) -> Status {
    let now_unix_ms = unix_ms();
    let now_s = now_unix_ms / 1000;
    let mut backends: Vec<BackendStatus> = balancer
        .backends
        .iter()
        .map(|b| backend_status(b, balancer, now_unix_ms))
        .collect();
    let recent: u64 = backends.iter().map(recent_requests).sum::<u64>()
        + balancer
            .stats
            .unserved
            .window
            .summary(now_s, RECENT_SECONDS)
            .0;
    for b in &mut backends {
        b.share = if recent == 0 {
            0.0
        } else {
            recent_requests(b) as f64 / recent as f64
        };
    }
    let stats = &balancer.stats;
    let unserved = stats.unserved.total();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        listen: listen.to_string(),
        now_unix_ms,
        started_unix_ms: stats.started_unix_ms,
        uptime_s: stats.started.elapsed().as_secs_f64(),
        connections: Connections {
            open: stats.connections_open.load(Relaxed),
            accepted: stats.connections_accepted.load(Relaxed),
        },
        totals: Totals {
            requests: backends.iter().map(|b| b.requests).sum::<u64>() + unserved,
            rps: recent as f64 / RECENT_SECONDS as f64,
            in_flight: backends.iter().map(|b| u64::from(b.in_flight)).sum(),
            retries: stats.retries.load(Relaxed),
            unserved,
            access_log_dropped: balancer.log.dropped(),
        },
        groups: groups(balancer),
        backends,
    }
}

fn recent_requests(b: &BackendStatus) -> u64 {
    (b.rps * RECENT_SECONDS as f64).round() as u64
}

fn groups(balancer: &Balancer) -> Vec<Group> {
    balancer
        .router
        .groups()
        .iter()
        .map(|g| Group {
            vhost: g.vhost.clone(),
            prefix: g.prefix.clone(),
            strategy: balancer.balance.clone(),
            members: g
                .members
                .iter()
                .map(|m| Member {
                    backend: m.name.clone(),
                    weight: m.weight,
                    replacement: m.replacement.clone(),
                    redirect: m.redirect,
                })
                .collect(),
        })
        .collect()
}

fn backend_status(backend: &Backend, balancer: &Balancer, now_unix_ms: u64) -> BackendStatus {
    let stats: &BackendStats = &backend.stats;
    let now_s = now_unix_ms / 1000;
    let (state, since) = backend.health.state(balancer.slow_start);
    // `since` is in lb's monotonic milliseconds: convert to wall-clock time.
    let state_since_unix_ms =
        (since != 0).then(|| now_unix_ms.saturating_sub(now_ms().saturating_sub(since)));
    let (recent, p50_ms, p99_ms) = stats.window.summary(now_s, RECENT_SECONDS);
    let in_flight = backend.load.in_flight();
    BackendStatus {
        name: backend.name.to_string(),
        state: state.as_str(),
        state_since_unix_ms,
        in_flight,
        requests: stats.total(),
        rps: recent as f64 / RECENT_SECONDS as f64,
        share: 0.0,
        p50_ms,
        p99_ms,
        status: CLASSES
            .iter()
            .zip(&stats.requests)
            .map(|(class, n)| (*class, n.load(Relaxed)))
            .collect(),
        bytes: stats.bytes.load(Relaxed),
        connect_failures: stats.connect_failures.load(Relaxed),
        lost: stats.lost.load(Relaxed),
        pool: Pool {
            idle: backend.idle_count(),
            active: in_flight,
        },
        health_check: health_check(stats),
        history: stats
            .window
            .seconds(now_s, WINDOW_SECONDS)
            .into_iter()
            .map(|s| SecondStatus {
                t: s.unix_s,
                requests: s.requests,
                errors: s.errors,
                p99_ms: s.p99_ms,
            })
            .collect(),
    }
}

fn health_check(stats: &BackendStats) -> Option<HealthCheck> {
    let last = stats
        .last_health_check
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()?;
    let (passed, at_unix_ms, detail) = last;
    Some(HealthCheck {
        passed,
        at_unix_ms,
        detail,
        passes: stats.health_checks[0].load(Relaxed),
        failures: stats.health_checks[1].load(Relaxed),
    })
}
