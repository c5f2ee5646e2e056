//! Active health checks (`--health-check PATH`): a background task that asks every backend
//! `GET PATH` on a fresh connection every `--health-interval`.
//!
//! A probe passes on a 2xx or 3xx answer within `--health-timeout`. After `--health-fall` failures
//! in a row the backend leaves the rotation; after `--health-rise` passes in a row it returns. Each
//! change is logged on stderr. Probes use their own connections, never pooled ones, so a probe
//! cannot disturb or be hidden by client traffic.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Version};

use crate::config::HealthCheck;
use crate::h1::{Fields, RequestHead};
use crate::health::{ProbeStreak, Verdict};
use crate::upstream::Backend;

/// Probe `backends` forever (the task is dropped at shutdown).
pub async fn run(backends: Vec<Arc<Backend>>, check: HealthCheck) {
    let mut streaks = vec![ProbeStreak::default(); backends.len()];
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let probes = backends
            .iter()
            .map(|b| probe(b, &check.path, check.timeout));
        let results = futures_util::future::join_all(probes).await;
        for ((backend, streak), result) in backends.iter().zip(streaks.iter_mut()).zip(results) {
            let detail = match &result {
                Ok(()) => "passed".to_string(),
                Err(why) => why.clone(),
            };
            backend.stats.health_checked(result.is_ok(), detail);
            let down = backend.health.is_probe_down();
            match streak.record(result.is_ok(), down, check.rise, check.fall) {
                Verdict::WentDown => {
                    backend.health.set_probe_down(true);
                    let why = result.err().unwrap_or_default();
                    tracing::warn!(
                        "health: backend {} is DOWN after {} failed probes of {} ({why})",
                        backend.name,
                        check.fall,
                        check.path
                    );
                    if backends.iter().all(|b| b.health.is_probe_down()) {
                        tracing::error!("health: every backend failed its checks; lb keeps trying them all (panic mode) until one recovers");
                    }
                }
                Verdict::CameBack => {
                    backend.health.set_probe_down(false);
                    tracing::info!(
                        "health: backend {} is UP again after {} passing probes",
                        backend.name,
                        check.rise
                    );
                }
                Verdict::Unchanged => {}
            }
        }
    }
}

/// One probe: `Ok` for a 2xx/3xx answer in time, `Err(why)` otherwise.
async fn probe(backend: &Arc<Backend>, path: &str, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        let mut upstream = backend.connect().await.map_err(|e| e.to_string())?;
        let head = RequestHead {
            method: Method::GET,
            uri: path.parse().map_err(|_| format!("bad path {path}"))?,
            version: Version::HTTP_11,
            fields: Fields::from_pairs(&[("host", &backend.name), ("connection", "close")]),
        };
        let response = upstream
            .conn
            .head_only(&head)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status;
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}
