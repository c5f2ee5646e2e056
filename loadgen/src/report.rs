//! What a run measured: the [`Report`], its wrk-like text table, its JSON form, and
//! [`Report::merge`] to combine runs from several machines.
//!
//! Latencies live in HDR histograms ([`Latency`]): a fixed-size array of counters whose buckets
//! keep 3 significant digits from 1 µs to 1 hour. Recording is one array increment, memory does
//! not grow with the number of requests, and two histograms add up exactly — which is what makes
//! merging percentiles from several machines correct (averaging their p99s would not be).
//! In JSON each histogram travels in HdrHistogram's standard V2 serialized form, base64-encoded,
//! next to the headline percentiles for readers who only want those.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize, Serializer};

use crate::check::{check_sticky, Expectation, KeySpread, Verdict};
// The error classes are part of the report's vocabulary (its `errors` field counts them), so
// they can be named from here too.
pub use crate::failure::{ErrorClass, ErrorCounts};
use crate::ok_status::OkStatus;
use crate::series::{merge_series, Second};
use crate::slo::FindMax;
use crate::stages::{Ramp, Ramped};

/// Smallest latency the histograms track, in microseconds.
const LOWEST_US: u64 = 1;
/// Largest latency the histograms track: one hour, in microseconds. Longer ones are clamped.
const HIGHEST_US: u64 = 3_600_000_000;
const SIGNIFICANT_FIGURES: u8 = 3;

/// Open loop: the report warns that the generator lagged when the p99 of its own send lateness
/// (see [`Report::send_lateness`]) is above this. loadgen keeps its schedule to tens of
/// microseconds on an idle machine; 50 µs is the agreement between corrected and uncorrected
/// p50 that it promises against a fast target, and about what a proxy on loopback adds, so a
/// generator later than that blurs the differences such runs are meant to show.
pub const LAG_WARNING: Duration = Duration::from_micros(50);

/// Open loop: the latency figures are *not trustworthy* (and the run fails) when the generator's
/// own lateness moved the corrected p50 or p99 by more than [`LAG_WARNING`] and by more than
/// this share of it. The move is measured, not guessed: next to the corrected latency the run
/// records what it would have been had every send left on time (uncorrected latency plus target
/// lag, [`Report::latency_without_send_lateness`]), and the two are compared percentile by
/// percentile. Beyond a quarter, a reported figure is as much loadgen as target. A target stalled
/// for a second tolerates a generator that lags by a millisecond; a fast one (p50 0.1 ms) does
/// not tolerate 0.1 ms; a few late sends that did not land in the tail change nothing.
pub const LAG_UNTRUSTWORTHY_SHARE: f64 = 0.25;

/// A latency distribution: an HDR histogram of microseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        match Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES) {
            Ok(hist) => Latency { hist },
            // The bounds are constants that satisfy hdrhistogram's rules (low >= 1,
            // high >= 2 * low, 0 <= sigfig <= 5); a unit test builds one.
            Err(e) => unreachable!("constant histogram bounds rejected: {e:?}"),
        }
    }
}

impl Latency {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one latency; values outside 1 µs..1 h are clamped into range.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.hist.saturating_record(us.clamp(LOWEST_US, HIGHEST_US));
    }

    /// Number of recorded latencies.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The latency at quantile `q` (0.0..=1.0), e.g. `0.99` for p99.
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.hist.value_at_quantile(q))
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.hist.max())
    }

    pub fn mean(&self) -> Duration {
        Duration::from_secs_f64(self.hist.mean().max(0.0) / 1e6)
    }

    /// The underlying histogram, for finer questions than the headline percentiles.
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.hist
    }

    /// Adds every recorded value of `other` to `self`.
    pub fn add(&mut self, other: &Latency) {
        if self.hist.add(&other.hist).is_err() {
            // Only possible with a histogram read from JSON that tracks a wider range than ours;
            // fold it in value by value, clamping what does not fit.
            for v in other.hist.iter_recorded() {
                let value = v.value_iterated_to().clamp(LOWEST_US, HIGHEST_US);
                self.hist.saturating_record_n(value, v.count_at_value());
            }
        }
    }
}

/// The JSON shape of a [`Latency`]: headline numbers for people and scripts, `hdr` for merging.
#[derive(Serialize, Deserialize)]
struct LatencyJson {
    count: u64,
    mean_us: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    /// HdrHistogram V2 serialization, base64 (standard alphabet, padded).
    hdr: String,
}

impl Serialize for Latency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut raw = Vec::new();
        V2Serializer::new()
            .serialize(&self.hist, &mut raw)
            .map_err(|e| serde::ser::Error::custom(format!("histogram: {e:?}")))?;
        let h = &self.hist;
        LatencyJson {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            hdr: base64::engine::general_purpose::STANDARD.encode(raw),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Latency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let json = LatencyJson::deserialize(d)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(json.hdr.as_bytes())
            .map_err(|e| D::Error::custom(format!("histogram is not base64: {e}")))?;
        let mut hist: Histogram<u64> = Deserializer::new()
            .deserialize(&mut raw.as_slice())
            .map_err(|e| D::Error::custom(format!("histogram is not HdrHistogram V2: {e:?}")))?;
        // Histograms from other tools may track a different range; let `add` grow ours.
        hist.auto(true);
        Ok(Latency { hist })
    }
}

/// How requests were paced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LoadModel {
    /// Each connection sends its next request as soon as the previous answer is complete; the
    /// server's speed sets the rate.
    #[default]
    Closed,
    /// Requests are scheduled at a fixed total `rate` (req/s) whatever the server does; latency is
    /// measured from the scheduled time (coordinated omission corrected).
    Open { rate: f64 },
}

/// Whether an open-loop generator sent its requests on time (see [`LAG_WARNING`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pacing {
    /// p99 send lateness within [`LAG_WARNING`].
    OnTime,
    /// Later than that, but small next to the target's own latency: a warning.
    Lagged,
    /// Late enough to distort the latency figures: the run fails.
    Untrustworthy,
}

/// One request, kept individually (only the first `Plan::keep_samples`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// 1-based request number, in the order requests were started.
    pub index: u64,
    /// Which connection (0-based worker number) sent it.
    pub connection: usize,
    /// The value of the backend header, if the response had one.
    pub backend: Option<String>,
    /// The response status, if there was a response.
    pub status: Option<u16>,
    /// Time until the response body was complete or the error happened (in JSON: seconds).
    #[serde(with = "secs_f64")]
    pub latency: Duration,
    pub error: Option<ErrorClass>,
}

/// One backend's share of the traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendReport {
    /// The backend header's value, or [`crate::check::NO_BACKEND`].
    pub name: String,
    pub responses: u64,
    /// Fraction (0..=1) of all responses.
    pub share: f64,
    /// Latency of the responses it served: a slow backend stands out here.
    pub latency: Latency,
}

/// Everything a run measured. Serializes to the JSON of `--output json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub url: String,
    pub model: LoadModel,
    /// `--stages` / `-q START:END`: the planned ramp (the open loop's `rate` is then its
    /// average).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<Ramp>,
    pub connections: usize,
    pub keepalive: bool,
    /// When the run started, in Unix seconds (for `merge` to align the series); `None` in
    /// reports written before there was a series.
    #[serde(default)]
    pub started_at: Option<f64>,
    /// Wall time from the first send to the last answer (in JSON: seconds).
    #[serde(with = "secs_f64")]
    pub duration: Duration,
    /// Requests started: always `responses + errors.total()`.
    pub requests: u64,
    /// Requests that got a complete response, whatever its status.
    pub responses: u64,
    /// Responses whose status is outside `ok_status`: they count against `max_errors` like the
    /// transport errors (derived from `status` when the report is finished).
    #[serde(default)]
    pub failed_responses: u64,
    /// The statuses that counted as success (`--ok-status`).
    #[serde(default)]
    pub ok_status: OkStatus,
    /// Response body bytes read.
    pub bytes: u64,
    pub requests_per_sec: f64,
    pub bytes_per_sec: f64,
    /// Responses per status code.
    pub status: BTreeMap<u16, u64>,
    pub errors: ErrorCounts,
    /// Latency of every response. In the open loop it is measured from the *scheduled* send
    /// time, so it includes the time a request waited because the server was slow.
    pub latency: Latency,
    /// Open loop only: latency from the moment the request actually went out (what a naive
    /// tool reports). The gap to `latency` is the coordinated omission it would hide.
    pub latency_uncorrected: Option<Latency>,
    /// Open loop only: how late each send left because of the generator itself (its timer, its
    /// CPU), measured from the later of the send's scheduled time and the moment its connection
    /// became free. It is included in `latency`, so it should be a few microseconds; see
    /// [`Report::pacing`].
    #[serde(default)]
    pub send_lateness: Option<Latency>,
    /// Open loop only: for the sends whose connection was still busy with the previous answer at
    /// their scheduled time (the target was slow), how long past that time it became free. This
    /// wait is the coordinated omission that `latency` corrects for; its count is how many sends
    /// had to wait.
    #[serde(default)]
    pub target_lag: Option<Latency>,
    /// Open loop only: what `latency` would have been had every send left on time, i.e. each
    /// request's uncorrected latency plus its target lag. Its gap to `latency` is how much the
    /// generator's own lateness moved the reported figures.
    #[serde(default)]
    pub latency_without_send_lateness: Option<Latency>,
    /// Open loop only: whether the generator kept its schedule, judged from `send_lateness`
    /// against [`LAG_WARNING`] and [`LAG_UNTRUSTWORTHY_SHARE`] (derived when the report is finished).
    #[serde(default)]
    pub pacing: Option<Pacing>,
    /// `https://` only: how long each TLS handshake took, from the established TCP connection to
    /// the end of the handshake. One per connection opened: one per request with
    /// `--no-keepalive`. The handshake is also part of the latency of the request that opened
    /// the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_handshake: Option<Latency>,
    /// The first failed TLS handshake's explanation (e.g. an untrusted certificate, and the fix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_error: Option<String>,
    /// CPU time (user + system) of loadgen's own threads during the run, in JSON seconds;
    /// `None` where the kernel does not tell (see `cpu_time.rs`).
    #[serde(default, with = "opt_secs_f64")]
    pub generator_cpu: Option<Duration>,
    /// The header that named the backend, e.g. `x-served-by`.
    pub backend_header: String,
    /// Per-backend counts, shares and latency, most responses first.
    pub backends: Vec<BackendReport>,
    pub verdict: Option<Verdict>,
    /// `--expect sticky=HEADER` only: which backends served each value of HEADER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<KeySpread>,
    /// The `--max-errors` this run was judged against: the most failed requests (transport
    /// errors plus failed responses) it may have and still pass.
    pub max_errors: u64,
    /// The first `Plan::keep_samples` requests, by index.
    pub samples: Vec<Sample>,
    /// One entry per second of the run (see [`crate::series`]).
    #[serde(default)]
    pub series: Vec<Second>,
    /// `--find-max`: every step of the search and the rate found; the rest of the report is
    /// then the highest passing step's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub find_max: Option<FindMax>,
}

impl Report {
    /// Requests that failed: transport errors plus responses with a status outside `ok_status`.
    pub fn failed_requests(&self) -> u64 {
        self.errors.total() + self.failed_responses
    }

    /// True when the failed requests stay within `max_errors`, the expectation (if any) held
    /// and, in the open loop, the generator's lateness leaves the figures trustworthy.
    pub fn passed(&self) -> bool {
        self.failed_requests() <= self.max_errors
            && self.verdict.as_ref().is_none_or(|v| v.passed)
            && self.pacing != Some(Pacing::Untrustworthy)
    }

    /// Judges the open loop's send lateness (see [`LAG_WARNING`] and
    /// [`LAG_UNTRUSTWORTHY_SHARE`]); `None` in the closed loop.
    fn judge_pacing(&self) -> Option<Pacing> {
        let lateness = self.send_lateness.as_ref()?;
        let distorts = |q: f64| {
            let moved = self.lateness_moved(q);
            moved > LAG_WARNING
                && moved.as_secs_f64()
                    > LAG_UNTRUSTWORTHY_SHARE * self.latency.quantile(q).as_secs_f64()
        };
        Some(if distorts(0.5) || distorts(0.99) {
            Pacing::Untrustworthy
        } else if lateness.quantile(0.99) > LAG_WARNING {
            Pacing::Lagged
        } else {
            Pacing::OnTime
        })
    }

    /// How much the generator's own send lateness moved the corrected latency at quantile `q`
    /// (zero in the closed loop).
    pub fn lateness_moved(&self, q: f64) -> Duration {
        self.latency_without_send_lateness
            .as_ref()
            .map_or(Duration::ZERO, |on_time| {
                self.latency.quantile(q).saturating_sub(on_time.quantile(q))
            })
    }

    /// Recomputes the derived numbers (failed responses, pacing, rates, shares) from the counts.
    pub(crate) fn finish(&mut self) {
        self.pacing = self.judge_pacing();
        self.failed_responses = self
            .status
            .iter()
            .filter(|(code, _)| !self.ok_status.contains(**code))
            .map(|(_, n)| n)
            .sum();
        let secs = self.duration.as_secs_f64();
        let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        self.requests_per_sec = per_sec(self.responses);
        self.bytes_per_sec = per_sec(self.bytes);
        let total = self.backends.iter().map(|b| b.responses).sum::<u64>();
        for b in &mut self.backends {
            b.share = if total > 0 {
                b.responses as f64 / total as f64
            } else {
                0.0
            };
        }
        self.backends.sort_by(|a, b| {
            b.responses
                .cmp(&a.responses)
                .then_with(|| a.name.cmp(&b.name))
        });
    }

    /// Combines runs (e.g. from several machines hitting the same target at the same time):
    /// counts add up, histograms are merged bucket by bucket, the duration is the longest run's
    /// and throughput is recomputed as total / that duration. Open-loop rates add up.
    /// The verdict passes only if every run's verdict passed. Statuses are judged by the first
    /// run's `ok_status`.
    pub fn merge<I: IntoIterator<Item = Report>>(reports: I) -> Report {
        let mut reports = reports.into_iter();
        let Some(mut out) = reports.next() else {
            return Report::default();
        };
        let mut verdicts: Vec<Option<Verdict>> = vec![out.verdict.take()];
        for r in reports {
            out.model = match (out.model, r.model) {
                (LoadModel::Open { rate: a }, LoadModel::Open { rate: b }) => {
                    LoadModel::Open { rate: a + b }
                }
                (m, _) => m,
            };
            out.connections += r.connections;
            out.duration = out.duration.max(r.duration);
            out.requests += r.requests;
            out.responses += r.responses;
            out.bytes += r.bytes;
            for (code, n) in &r.status {
                *out.status.entry(*code).or_default() += n;
            }
            out.errors.add(&r.errors);
            out.latency.add(&r.latency);
            for (a, b) in [
                (&mut out.latency_uncorrected, &r.latency_uncorrected),
                (&mut out.send_lateness, &r.send_lateness),
                (&mut out.target_lag, &r.target_lag),
                (
                    &mut out.latency_without_send_lateness,
                    &r.latency_without_send_lateness,
                ),
                (&mut out.tls_handshake, &r.tls_handshake),
            ] {
                match (a, b) {
                    (Some(a), Some(b)) => a.add(b),
                    (a @ None, Some(b)) => *a = Some(b.clone()),
                    _ => {}
                }
            }
            if out.tls_error.is_none() {
                out.tls_error = r.tls_error;
            }
            out.generator_cpu = out.generator_cpu.zip(r.generator_cpu).map(|(a, b)| a + b);
            for b in r.backends {
                match out.backends.iter_mut().find(|o| o.name == b.name) {
                    Some(o) => {
                        o.responses += b.responses;
                        o.latency.add(&b.latency);
                    }
                    None => out.backends.push(b),
                }
            }
            match (&mut out.sticky, &r.sticky) {
                (Some(a), Some(b)) => a.add(b),
                (a @ None, Some(b)) => *a = Some(b.clone()),
                _ => {}
            }
            out.started_at = merge_series(&mut out.series, out.started_at, &r.series, r.started_at);
            out.max_errors += r.max_errors;
            out.samples.extend(r.samples);
            verdicts.push(r.verdict);
        }
        out.verdict = merge_verdicts(verdicts);
        // Stickiness is judged on the merged keys: a key that two runs saw on two different
        // backends moved, even if each run alone saw it on one.
        if let (Some(v), Some(spread)) = (&mut out.verdict, &out.sticky) {
            if matches!(v.expectation, Expectation::Sticky(_)) {
                *v = check_sticky(spread);
            }
        }
        out.finish();
        out
    }

    /// The human-readable report: a wrk-like table, the per-backend table and the verdict.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        // `write!` into a String cannot fail; the results are ignored on purpose.
        let conns = plural(self.connections as u64, "connection");
        let keepalive = if self.keepalive {
            ""
        } else {
            ", a new connection per request"
        };
        let _ = match self.model {
            LoadModel::Closed => writeln!(
                s,
                "{} over {conns}{keepalive}: closed loop (each connection sends as soon as \
                 the previous answer is in)",
                self.url
            ),
            LoadModel::Open { rate } => writeln!(
                s,
                "{} over {conns}{keepalive}: open loop at {} req/s (latency measured \
                 from the scheduled send time)",
                self.url,
                fmt_rate(rate)
            ),
        };
        if let Some(ramp) = &self.stages {
            let (what, unit) = match ramp.ramped {
                Ramped::Rate => ("rate", " req/s"),
                Ramped::Connections => ("connections", ""),
            };
            let headline = match ramp.ramped {
                Ramped::Rate => "the rate above is the average",
                Ramped::Connections => "the connections above are the most at once",
            };
            let _ = writeln!(
                s,
                "  Stages: {ramp} ({what} from {}{unit}; {headline})",
                ramp.start
            );
        }
        let _ = writeln!(
            s,
            "  {:<22}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
            "Latency", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        let label = match self.latency_uncorrected {
            Some(_) => "  corrected",
            None => "",
        };
        latency_row(&mut s, label, &self.latency);
        if let Some(u) = &self.latency_uncorrected {
            latency_row(&mut s, "  uncorrected", u);
        }
        let _ = writeln!(
            s,
            "  {} in {}, {} read",
            plural(self.requests, "request"),
            fmt_duration(self.duration),
            fmt_bytes(self.bytes as f64)
        );
        let _ = writeln!(s, "  Requests/sec: {:>10.2}", self.requests_per_sec);
        let _ = writeln!(s, "  Transfer/sec: {:>10}", fmt_bytes(self.bytes_per_sec));
        let statuses: Vec<String> = self
            .status
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        let _ = writeln!(
            s,
            "  Status:       {}",
            if statuses.is_empty() {
                "no responses".to_owned()
            } else {
                statuses.join(", ")
            }
        );
        let errors: Vec<String> = ErrorClass::ALL
            .iter()
            .filter(|c| self.errors.get(**c) > 0)
            .map(|c| format!("{} {}", c.label(), self.errors.get(*c)))
            .collect();
        let _ = writeln!(
            s,
            "  Errors:       {}",
            if errors.is_empty() {
                "none".to_owned()
            } else {
                errors.join(", ")
            }
        );
        if let Some(why) = &self.tls_error {
            let _ = writeln!(s, "  TLS error:    {why}");
        }
        let _ = writeln!(
            s,
            "  Failed responses: {} (status outside {})",
            self.failed_responses, self.ok_status
        );
        match &self.tls_handshake {
            Some(h) if h.count() == 0 => {
                let _ = writeln!(s, "  TLS handshakes: none completed");
            }
            Some(h) => {
                let _ = writeln!(
                    s,
                    "  TLS handshakes: {}, p50 {}, p99 {}, max {} (after the TCP connect; \
                     also in the latency of the request that opened the connection)",
                    h.count(),
                    fmt_duration(h.quantile(0.5)),
                    fmt_duration(h.quantile(0.99)),
                    fmt_duration(h.max()),
                );
            }
            None => {}
        }
        if let Some(l) = &self.send_lateness {
            let _ = writeln!(
                s,
                "  Send lateness: p50 {}, p99 {}, max {} (the generator's own delay of a send \
                 whose connection was free)",
                fmt_duration(l.quantile(0.5)),
                fmt_duration(l.quantile(0.99)),
                fmt_duration(l.max()),
            );
        }
        if let Some(lag) = &self.target_lag {
            let waits = match lag.count() {
                0 => "no send found its connection busy at its scheduled time".to_owned(),
                n => format!(
                    "{} found their connection busy at their scheduled time, by p50 {}, max {} \
                     (the target was slow: counted in the corrected latency)",
                    plural(n, "send"),
                    fmt_duration(lag.quantile(0.5)),
                    fmt_duration(lag.max()),
                ),
            };
            let _ = writeln!(s, "  Target lag:   {waits}");
        }
        if let Some(cpu) = self.generator_cpu {
            let secs = self.duration.as_secs_f64();
            let share = if secs > 0.0 {
                cpu.as_secs_f64() / secs * 100.0
            } else {
                0.0
            };
            let _ = writeln!(
                s,
                "  Generator CPU: {} over {} ({share:.1}% of one core)",
                fmt_duration(cpu),
                fmt_duration(self.duration),
            );
        }
        if !self.backends.is_empty() {
            let title = format!("Backend ({})", self.backend_header);
            let width = self
                .backends
                .iter()
                .map(|b| b.name.len())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
                + 2;
            let _ = writeln!(
                s,
                "\n  {:<width$}{:>10}{:>8}{:>9}{:>9}{:>9}{:>9}",
                title, "responses", "share", "p50", "p90", "p99", "max",
            );
            for b in &self.backends {
                let l = &b.latency;
                let _ = writeln!(
                    s,
                    "  {:<width$}{:>10}{:>7.1}%{:>9}{:>9}{:>9}{:>9}",
                    b.name,
                    b.responses,
                    b.share * 100.0,
                    fmt_duration(l.quantile(0.5)),
                    fmt_duration(l.quantile(0.9)),
                    fmt_duration(l.quantile(0.99)),
                    fmt_duration(l.max()),
                );
            }
        }
        s.push('\n');
        if let (Some(pacing), Some(l)) = (self.pacing, &self.send_lateness) {
            let lateness = fmt_duration(l.quantile(0.99));
            match pacing {
                Pacing::OnTime => {}
                Pacing::Lagged => {
                    let _ = writeln!(
                        s,
                        "  Warning: generator lagged: p99 send lateness {lateness} (more than {}); \
                         the corrected latency includes this delay of loadgen's own",
                        fmt_duration(LAG_WARNING)
                    );
                }
                Pacing::Untrustworthy => {
                    let _ = writeln!(
                        s,
                        "  FAIL: generator lagged: p99 send lateness {lateness} moved the \
                         corrected p50 / p99 by {} / {} (to {} / {}), more than {:.0}%, so the \
                         latency figures are not trustworthy; lower -q, or give loadgen a core of \
                         its own",
                        fmt_duration(self.lateness_moved(0.5)),
                        fmt_duration(self.lateness_moved(0.99)),
                        fmt_duration(self.latency.quantile(0.5)),
                        fmt_duration(self.latency.quantile(0.99)),
                        LAG_UNTRUSTWORTHY_SHARE * 100.0,
                    );
                }
            }
        }
        if let Some(v) = &self.verdict {
            let word = if v.passed { "PASS" } else { "FAIL" };
            let _ = writeln!(s, "  Expect {}: {word}: {}", v.expectation, v.detail);
        }
        if self.failed_requests() > self.max_errors {
            let (errors, failed) = (self.errors.total(), self.failed_responses);
            let what = match (errors, failed) {
                (_, 0) => plural(errors, "error"),
                (0, _) => plural(failed, "failed response"),
                _ => format!(
                    "{} + {} = {errors_and_failed}",
                    plural(errors, "error"),
                    plural(failed, "failed response"),
                    errors_and_failed = errors + failed
                ),
            };
            let _ = writeln!(
                s,
                "  FAIL: {what}, more than --max-errors {}",
                self.max_errors
            );
            if failed > 0 {
                let _ = writeln!(
                    s,
                    "        a failed response has a status outside --ok-status {}; \
                     --ok-status 100-599 reports statuses without judging them",
                    self.ok_status
                );
            }
        }
        let _ = writeln!(
            s,
            "  Result: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        s
    }
}

impl Report {
    /// The series as a compact table, one line per second (`--series`): what was sent and
    /// answered, the status classes, errors, latency percentiles and each backend's share.
    pub fn render_series(&self) -> String {
        let mut s = String::new();
        if self.series.is_empty() {
            s.push_str("  Series: no seconds recorded\n");
            return s;
        }
        let classes: Vec<u16> = (1..10)
            .filter(|c| self.series.iter().any(|sec| sec.class(*c) > 0))
            .collect();
        let names: Vec<&str> = self.backends.iter().map(|b| b.name.as_str()).collect();
        let _ = write!(
            s,
            "  {:>6}{:>8}{:>9}{:>6}",
            "second", "sent", "answered", "conns"
        );
        for c in &classes {
            let _ = write!(s, "{:>7}", format!("{c}xx"));
        }
        let _ = write!(
            s,
            "{:>7}{:>9}{:>9}{:>9}{:>9}",
            "errors", "p50", "p90", "p99", "max"
        );
        if !names.is_empty() {
            let _ = write!(s, "  share: {}", names.join(" / "));
        }
        s.push('\n');
        for sec in &self.series {
            let l = &sec.latency;
            let _ = write!(
                s,
                "  {:>6}{:>8}{:>9}{:>6}",
                sec.second, sec.sent, sec.responses, sec.connections
            );
            for c in &classes {
                let _ = write!(s, "{:>7}", sec.class(*c));
            }
            let _ = write!(
                s,
                "{:>7}{:>9}{:>9}{:>9}{:>9}",
                sec.errors,
                fmt_duration(l.quantile(0.5)),
                fmt_duration(l.quantile(0.9)),
                fmt_duration(l.quantile(0.99)),
                fmt_duration(l.max()),
            );
            if !names.is_empty() {
                let shares: Vec<String> = names
                    .iter()
                    .map(|n| format!("{:.0}%", sec.share(n) * 100.0))
                    .collect();
                let _ = write!(s, "  {}", shares.join(" / "));
            }
            s.push('\n');
        }
        s
    }
}

fn merge_verdicts(verdicts: Vec<Option<Verdict>>) -> Option<Verdict> {
    let present: Vec<(usize, Verdict)> = verdicts
        .into_iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| (i, v)))
        .collect();
    match present.len() {
        0 => None,
        1 => present.into_iter().next().map(|(_, v)| v),
        _ => {
            let passed = present.iter().all(|(_, v)| v.passed);
            let first_violation = present.iter().find_map(|(_, v)| v.first_violation);
            let detail = present
                .iter()
                .map(|(i, v)| format!("run {}: {}", i + 1, v.detail))
                .collect::<Vec<_>>()
                .join("; ");
            let expectation = present[0].1.expectation.clone();
            Some(Verdict {
                expectation,
                passed,
                detail,
                first_violation,
            })
        }
    }
}

fn latency_row(s: &mut String, label: &str, l: &Latency) {
    let _ = writeln!(
        s,
        "  {:<22}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
        label,
        fmt_duration(l.quantile(0.5)),
        fmt_duration(l.quantile(0.9)),
        fmt_duration(l.quantile(0.99)),
        fmt_duration(l.quantile(0.999)),
        fmt_duration(l.max()),
        fmt_duration(l.mean()),
    );
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `850us`, `1.23ms`, `2.50s`: three significant digits, like the histograms.
pub fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0}us")
    } else if us < 1e6 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

/// `200`, `214.3`: a rate with at most one decimal, none when it is whole.
pub fn fmt_rate(rate: f64) -> String {
    let rounded = (rate * 10.0).round() / 10.0;
    if rounded.fract() == 0.0 {
        format!("{rounded:.0}")
    } else {
        format!("{rounded:.1}")
    }
}

/// `512B`, `12.30KB`, `4.10MB` (powers of 1024, like wrk).
pub fn fmt_bytes(b: f64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if b < 1024.0 {
        return format!("{b:.0}B");
    }
    let mut v = b / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.2}{unit}")
}

/// Optional durations as float seconds or `null`.
mod opt_secs_f64 {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|secs| Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Durations as float seconds in JSON (`2.5`), which every language reads.
mod secs_f64 {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Expectation;

    fn report(ms: &[u64], backend: &str) -> Report {
        let mut r = Report {
            url: "http://127.0.0.1:1/".into(),
            connections: 1,
            keepalive: true,
            duration: Duration::from_secs(2),
            backend_header: "x-served-by".into(),
            ..Report::default()
        };
        let mut b = BackendReport {
            name: backend.into(),
            responses: 0,
            share: 0.0,
            latency: Latency::new(),
        };
        for m in ms {
            r.latency.record(Duration::from_millis(*m));
            b.latency.record(Duration::from_millis(*m));
            b.responses += 1;
        }
        r.requests = ms.len() as u64 + 1;
        r.responses = ms.len() as u64;
        r.bytes = 10 * ms.len() as u64;
        r.status.insert(200, ms.len() as u64);
        r.errors.count(ErrorClass::Timeout);
        r.max_errors = 1;
        r.backends.push(b);
        r.finish();
        r
    }

    #[test]
    fn histogram_bounds_and_clamping() {
        let mut l = Latency::new();
        l.record(Duration::ZERO);
        l.record(Duration::from_secs(7200));
        assert_eq!(l.count(), 2);
        assert_eq!(l.quantile(0.0), Duration::from_micros(1));
        assert!(l.max() >= Duration::from_secs(3599));
    }

    #[test]
    fn json_round_trip_keeps_histograms() {
        let mut r = report(&[1, 2, 3, 100], "a");
        r.verdict = Some(Verdict {
            expectation: Expectation::Weights(vec![("a".into(), 1)]),
            passed: true,
            detail: "ok".into(),
            first_violation: None,
        });
        r.samples.push(Sample {
            index: 1,
            connection: 0,
            backend: Some("a".into()),
            status: Some(200),
            latency: Duration::from_micros(1500),
            error: None,
        });
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.latency, r.latency);
        assert_eq!(back.backends, r.backends);
        assert_eq!(back.samples, r.samples);
        assert_eq!(back.verdict, r.verdict);
        assert_eq!(back.duration, r.duration);
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(v["latency"]["hdr"].as_str().unwrap().starts_with("HIST"));
        assert_eq!(v["latency"]["p99_us"], 100_031); // 100 ms within 3 significant digits
    }

    #[test]
    fn merge_adds_counts_and_histograms() {
        let a = report(&[1, 2, 3], "a");
        let mut b = report(&[10, 20], "b");
        b.duration = Duration::from_secs(4);
        let m = Report::merge([a.clone(), b.clone()]);
        assert_eq!(m.requests, a.requests + b.requests);
        assert_eq!(m.responses, 5);
        assert_eq!(m.status[&200], 5);
        assert_eq!(m.errors.timeout, 2);
        assert_eq!(m.latency.count(), 5);
        assert_eq!(m.duration, Duration::from_secs(4));
        assert!((m.requests_per_sec - 5.0 / 4.0).abs() < 1e-9);
        assert_eq!(m.backends.len(), 2);
        assert!((m.backends[0].share - 0.6).abs() < 1e-9);
        assert_eq!(m.latency.max(), b.latency.max());
        assert!(Report::merge([]).passed());
    }

    /// A 502 is a response, but a failed one: it counts against `max_errors` next to the
    /// transport errors, under the `ok_status` of the report (of the first run when merged).
    #[test]
    fn statuses_outside_ok_status_are_failed_responses() {
        let mut r = report(&[1, 2, 3], "a");
        r.status.insert(502, 2);
        r.finish();
        assert_eq!((r.failed_responses, r.failed_requests()), (2, 3));
        assert!(!r.passed());
        r.max_errors = 3;
        assert!(r.passed());

        let mut lenient = report(&[1], "a");
        lenient.ok_status = "100-599".parse().unwrap();
        lenient.status.insert(502, 5);
        lenient.finish();
        assert_eq!(lenient.failed_responses, 0);
        let strict = report(&[1], "a");
        let m = Report::merge([strict, lenient]);
        assert_eq!(
            (m.ok_status.to_string(), m.failed_responses),
            ("200-399".into(), 5)
        );
    }

    /// An open-loop report whose sends left `late_us` after their time (each value for a tenth
    /// of the requests) against a target answering in `latency_us`.
    fn open_report(late_us: [u64; 10], latency_us: u64) -> Report {
        let mut r = report(&[], "a");
        r.model = LoadModel::Open { rate: 1000.0 };
        let (mut uncorrected, mut lateness) = (Latency::new(), Latency::new());
        for i in 0..1000 {
            let late = Duration::from_micros(late_us[i % 10]);
            let answer = Duration::from_micros(latency_us);
            uncorrected.record(answer);
            lateness.record(late);
            r.latency.record(answer + late);
        }
        r.latency_without_send_lateness = Some(uncorrected.clone());
        r.latency_uncorrected = Some(uncorrected);
        r.send_lateness = Some(lateness);
        r.target_lag = Some(Latency::new());
        r.max_errors = 1;
        r.finish();
        r
    }

    /// ```text
    /// send lateness          target    corrected p50/p99    moved by      pacing
    /// 10 µs, one in ten 30   100 µs    110 / 130 µs         10 / 30 µs    on time
    /// 10 µs, one in ten 400  2 ms      2.01 / 2.4 ms        10 / 400 µs   lagged (a warning)
    /// 10 µs, one in ten 400  100 µs    110 / 500 µs         10 / 400 µs   untrustworthy (80%)
    /// 1 ms always            200 µs    1.2 / 1.2 ms         1 / 1 ms      untrustworthy (issue 18)
    /// ```
    #[test]
    fn generator_lateness_is_judged_by_how_far_it_moved_the_corrected_latency() {
        let on_time = open_report([10, 10, 10, 10, 10, 10, 10, 10, 10, 30], 100);
        assert_eq!(on_time.pacing, Some(Pacing::OnTime));
        assert!(on_time.passed());
        let text = on_time.render_text();
        assert!(text.contains("Send lateness: p50 10us, p99 30us"), "{text}");
        assert!(!text.contains("generator lagged"), "{text}");

        let slow_target = open_report([10, 10, 10, 10, 10, 10, 10, 10, 10, 400], 2000);
        assert_eq!(slow_target.pacing, Some(Pacing::Lagged));
        assert!(slow_target.passed());
        let text = slow_target.render_text();
        assert!(
            text.contains("Warning: generator lagged: p99 send lateness 400us"),
            "{text}"
        );

        for r in [
            open_report([10, 10, 10, 10, 10, 10, 10, 10, 10, 400], 100),
            open_report([1000; 10], 200),
        ] {
            assert_eq!(r.pacing, Some(Pacing::Untrustworthy));
            assert!(!r.passed());
            let text = r.render_text();
            assert!(
                text.contains("the latency figures are not trustworthy"),
                "{text}"
            );
            assert!(text.contains("Result: FAIL"), "{text}");
        }

        // Late sends that did not land in the tail move nothing: here the target's own slow 2%
        // make the p99, and the 2% of sends that left 300 µs late were fast ones.
        let mut r = report(&[], "a");
        r.model = LoadModel::Open { rate: 1000.0 };
        let (mut uncorrected, mut lateness) = (Latency::new(), Latency::new());
        for i in 0..1000 {
            let answer = Duration::from_micros(if i % 50 == 0 { 2000 } else { 100 });
            let late = Duration::from_micros(if i % 50 == 1 { 300 } else { 5 });
            uncorrected.record(answer);
            lateness.record(late);
            r.latency.record(answer + late);
        }
        r.latency_without_send_lateness = Some(uncorrected.clone());
        r.latency_uncorrected = Some(uncorrected);
        r.send_lateness = Some(lateness);
        r.finish();
        assert!(
            r.lateness_moved(0.99) < Duration::from_micros(10),
            "{}",
            r.render_text()
        );
        assert_eq!(r.pacing, Some(Pacing::Lagged));

        // The closed loop has no schedule to keep.
        assert_eq!(report(&[1], "a").pacing, None);
        // Merged runs are judged on their merged lateness.
        let merged = Report::merge([on_time, open_report([1000; 10], 200)]);
        assert_eq!(merged.pacing, Some(Pacing::Untrustworthy));
    }

    #[test]
    fn text_report_has_the_headline_rows() {
        let text = report(&[1, 2, 3], "a").render_text();
        for needle in [
            "Latency",
            "p99.9",
            "Requests/sec",
            "Transfer/sec",
            "200: 3",
            "timeout 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert!(text.contains("Result: PASS"), "{text}");
        assert_eq!(fmt_duration(Duration::from_micros(1234)), "1.23ms");
        assert_eq!(fmt_bytes(2048.0), "2.00KB");
    }
}
