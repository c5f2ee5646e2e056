//! `GET /metrics`: the counters of `stats.rs` in Prometheus' text format, through the Prometheus
//! project's own Rust client (`prometheus-client`).
//!
//! The request path never touches the client library: it adds to plain atomics, and a
//! [`Collector`] reads them at scrape time and encodes them with their labels. So a scrape costs
//! the request path nothing, and there is no global registry. Names follow Prometheus'
//! conventions: base units (`_seconds`, `_bytes`), `_total` for counters.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::health::State;
use crate::stats::{BackendStats, CLASSES, DURATION_BUCKETS};
use crate::Balancer;

/// The whole exposition, as served.
pub fn render(balancer: &Arc<Balancer>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Metrics(balancer.clone())));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[derive(Debug)]
struct Metrics(Arc<Balancer>);

type Labels<'a> = Vec<(&'static str, &'a str)>;

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let b = &*self.0;
        // Requests by group, backend and status class. A backend in several groups is counted
        // under the first group it belongs to; requests no backend served have backend="".
        let mut requests = Vec::new();
        for backend in &b.backends {
            let group = group_of(b, &backend.name);
            for (class, n) in CLASSES.iter().zip(&backend.stats.requests) {
                requests.push((
                    labels(&[
                        ("group", group),
                        ("backend", &backend.name),
                        ("class", class),
                    ]),
                    n.load(Relaxed),
                ));
            }
        }
        for (class, n) in CLASSES.iter().zip(&b.stats.unserved.requests) {
            requests.push((
                labels(&[("group", ""), ("backend", ""), ("class", class)]),
                n.load(Relaxed),
            ));
        }
        counters(
            &mut encoder,
            "lb_requests",
            "Requests answered, by group, backend and status class.",
            &requests,
        )?;

        let per_backend = |f: &dyn Fn(&crate::upstream::Backend) -> u64| -> Vec<(Labels<'_>, u64)> {
            b.backends
                .iter()
                .map(|be| (labels(&[("backend", &be.name)]), f(be)))
                .collect()
        };
        counters(
            &mut encoder,
            "lb_response_bytes",
            "Response body bytes sent to clients.",
            &per_backend(&|be| be.stats.bytes.load(Relaxed)),
        )?;
        counters(
            &mut encoder,
            "lb_upstream_connect_failures",
            "Requests moved on because connecting to the backend failed.",
            &per_backend(&|be| be.stats.connect_failures.load(Relaxed)),
        )?;
        counters(
            &mut encoder,
            "lb_upstream_lost",
            "Requests the backend lost after they were sent (reset or closed before a response).",
            &per_backend(&|be| be.stats.lost.load(Relaxed)),
        )?;
        counters(
            &mut encoder,
            "lb_retries",
            "Attempts after the first: retries and failovers to the next backend.",
            &[(Vec::new(), b.stats.retries.load(Relaxed))],
        )?;
        gauges(
            &mut encoder,
            "lb_backend_in_flight",
            "Requests in flight on the backend.",
            &per_backend(&|be| u64::from(be.load.in_flight())),
        )?;

        // Up (1) or not (0), with the reason as a label.
        let states: Vec<(Labels<'_>, u64)> = b
            .backends
            .iter()
            .map(|be| {
                let (state, _) = be.health.state(b.slow_start);
                let up = matches!(state, State::Up | State::SlowStart);
                (
                    labels(&[("backend", &be.name), ("state", state.as_str())]),
                    u64::from(up),
                )
            })
            .collect();
        gauges(
            &mut encoder,
            "lb_backend_up",
            "1 if the backend is in the rotation; state says why not.",
            &states,
        )?;

        let mut pool = Vec::new();
        for be in &b.backends {
            pool.push((
                labels(&[("backend", &be.name), ("state", "idle")]),
                be.idle_count() as u64,
            ));
            pool.push((
                labels(&[("backend", &be.name), ("state", "active")]),
                u64::from(be.load.in_flight()),
            ));
        }
        gauges(
            &mut encoder,
            "lb_upstream_connections",
            "Connections to the backend: idle in the pools, or carrying a request.",
            &pool,
        )?;

        let mut checks = Vec::new();
        for be in &b.backends {
            for (result, n) in ["pass", "fail"].iter().zip(&be.stats.health_checks) {
                checks.push((
                    labels(&[("backend", &be.name), ("result", result)]),
                    n.load(Relaxed),
                ));
            }
        }
        counters(
            &mut encoder,
            "lb_health_checks",
            "Active health checks (--health-check), by result.",
            &checks,
        )?;

        gauges(
            &mut encoder,
            "lb_client_connections_open",
            "Client connections open now.",
            &[(
                Vec::new(),
                b.stats.connections_open.load(Relaxed).max(0) as u64,
            )],
        )?;
        counters(
            &mut encoder,
            "lb_client_connections_accepted",
            "Client connections accepted since start.",
            &[(Vec::new(), b.stats.connections_accepted.load(Relaxed))],
        )?;
        counters(
            &mut encoder,
            "lb_access_log_dropped",
            "Access-log lines dropped because the writer could not keep up.",
            &[(Vec::new(), b.log.dropped())],
        )?;

        let histograms: Vec<(Labels<'_>, &BackendStats)> = b
            .backends
            .iter()
            .map(|be| (labels(&[("backend", &be.name)]), &be.stats))
            .chain(std::iter::once((
                labels(&[("backend", "")]),
                &b.stats.unserved,
            )))
            .collect();
        durations(&mut encoder, &histograms)?;

        let version = env!("CARGO_PKG_VERSION");
        gauges(
            &mut encoder,
            "lb_build_info",
            "Always 1; the labels say which lb this is.",
            &[(labels(&[("version", version)]), 1)],
        )?;
        Ok(())
    }
}

fn labels<'a>(pairs: &[(&'static str, &'a str)]) -> Labels<'a> {
    pairs.to_vec()
}

/// The first group `backend` belongs to, by prefix (and vhost).
fn group_of<'a>(b: &'a Balancer, backend: &str) -> &'a str {
    b.router
        .groups()
        .iter()
        .find(|g| g.members.iter().any(|m| m.name == backend))
        .map_or("", |g| g.prefix.as_str())
}

fn counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[(Labels<'_>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauges(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[(Labels<'_>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(*value as i64).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn durations(
    encoder: &mut DescriptorEncoder<'_>,
    samples: &[(Labels<'_>, &BackendStats)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(
        "lb_request_duration_seconds",
        "Time from a request's head to the end of its response, by backend.",
        None,
        MetricType::Histogram,
    )?;
    for (labels, stats) in samples {
        let (sum, count, counts) = stats.duration();
        let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(counts)
            .collect();
        metric
            .encode_family(labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}
