//! Time series: what each second of a run looked like. A run's totals say how a target did on
//! average; the series shows *when* it did what it did: a ramp reaching its rate, a backend
//! dropping out at second 12, the p99 climbing as the rate nears the target's limit.
//!
//! **One bucket per second of the run**, numbered from its start (second 0 holds what happened
//! in the first second). A request is *sent* in the second it left and *answered* (or failed) in
//! the second it ended: `sent` counts the first, everything else (responses, statuses, errors,
//! latency, backends) the second, so a slow answer shows in the second it was noticed.
//!
//! **Small histograms.** The run's totals keep HDR histograms at 3 significant figures (0.1%);
//! a second's latency only has to draw a line on a chart, so its histogram keeps 2 (1%) and
//! grows only as far as the largest value it saw: a few hundred counters for a second of
//! sub-millisecond answers. While a second is current it is a full HDR histogram (recording is
//! one increment); once the next second starts it is frozen into its non-empty buckets
//! ([`SecondLatency`]), typically a few dozen pairs. So the series costs memory per second of
//! run, not per request: about a kilobyte per second per backend. Both the totals and the series
//! are recorded from the same samples.
//!
//! **Merging.** Frozen buckets of the same second add up exactly (the bucket boundaries depend
//! only on the precision), which is what makes the threads' series one series, and the series
//! of runs on several machines one series (`loadgen merge` aligns them by wall-clock second, see
//! [`merge_series`]). In JSON each second's histogram travels in HdrHistogram's V2 form, like the
//! totals, next to its headline percentiles.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize, Serializer};

/// Significant figures of a second's latency histogram (1% resolution).
const SECOND_SIGFIG: u8 = 2;

/// A histogram of latencies (µs), kept as its non-empty buckets: `(highest value of the bucket,
/// count)`, sorted by value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecondLatency {
    buckets: Vec<(u64, u64)>,
}

impl SecondLatency {
    /// Freezes a histogram into its non-empty buckets.
    fn freeze(hist: &Histogram<u64>) -> SecondLatency {
        SecondLatency {
            buckets: hist
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        }
    }

    /// The same counts as a histogram, to ask it percentiles.
    fn thaw(&self) -> Histogram<u64> {
        let mut hist = empty_histogram();
        for (value, count) in &self.buckets {
            put(&mut hist, *value, *count);
        }
        hist
    }

    /// Adds every count of `other`.
    pub fn add(&mut self, other: &SecondLatency) {
        let (a, b) = (&self.buckets, &other.buckets);
        let mut merged = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        loop {
            match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    merged.push((x.0, x.1 + y.1));
                    i += 1;
                    j += 1;
                }
                (Some(x), Some(y)) if x.0 < y.0 => {
                    merged.push(*x);
                    i += 1;
                }
                (_, Some(y)) => {
                    merged.push(*y);
                    j += 1;
                }
                (Some(x), None) => {
                    merged.push(*x);
                    i += 1;
                }
                (None, None) => break,
            }
        }
        self.buckets = merged;
    }

    /// Records one value (the rare path: a sample for a second that is already frozen).
    fn record(&mut self, us: u64) {
        let mut hist = empty_histogram();
        put(&mut hist, us, 1);
        self.add(&SecondLatency::freeze(&hist));
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|(_, n)| n).sum()
    }

    /// The latency at quantile `q` (0.0..=1.0), within 1%.
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(match self.count() {
            0 => 0,
            _ => self.thaw().value_at_quantile(q),
        })
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.buckets.last().map_or(0, |(v, _)| *v))
    }
}

/// Records `n` values `us` into a histogram of [`empty_histogram`]'s kind, growing it as needed.
/// (`saturating_record` would not grow it: it clamps to the current top instead.)
fn put(hist: &mut Histogram<u64>, us: u64, n: u64) {
    if hist.record_n(us.max(1), n).is_err() {
        hist.saturating_record_n(us.max(1), n);
    }
}

fn empty_histogram() -> Histogram<u64> {
    match Histogram::new(SECOND_SIGFIG) {
        // Auto-resizing: it grows to the largest value recorded.
        Ok(h) => h,
        Err(e) => unreachable!("constant histogram precision rejected: {e:?}"),
    }
}

/// The JSON shape of a [`SecondLatency`]: headline numbers, and `hdr` for merging.
#[derive(Serialize, Deserialize)]
struct SecondLatencyJson {
    count: u64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    max_us: u64,
    /// HdrHistogram V2 serialization, base64.
    hdr: String,
}

impl Serialize for SecondLatency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let hist = self.thaw();
        let mut raw = Vec::new();
        V2Serializer::new()
            .serialize(&hist, &mut raw)
            .map_err(|e| serde::ser::Error::custom(format!("histogram: {e:?}")))?;
        let (count, q) = (hist.len(), |q| match hist.len() {
            0 => 0,
            _ => hist.value_at_quantile(q),
        });
        SecondLatencyJson {
            count,
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            max_us: self.max().as_micros() as u64,
            hdr: base64::engine::general_purpose::STANDARD.encode(raw),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SecondLatency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let json = SecondLatencyJson::deserialize(d)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(json.hdr.as_bytes())
            .map_err(|e| D::Error::custom(format!("histogram is not base64: {e}")))?;
        let hist: Histogram<u64> = Deserializer::new()
            .deserialize(&mut raw.as_slice())
            .map_err(|e| D::Error::custom(format!("histogram is not HdrHistogram V2: {e:?}")))?;
        // Re-bucketed at our precision, whatever the writer's was.
        let mut ours = empty_histogram();
        for v in hist.iter_recorded() {
            put(&mut ours, v.value_iterated_to(), v.count_at_value());
        }
        Ok(SecondLatency::freeze(&ours))
    }
}

/// One backend in one second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecondBackend {
    pub responses: u64,
    pub latency: SecondLatency,
}

/// One second of a run (an entry of [`crate::Report::series`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the run started: this entry covers `[second, second + 1)`.
    pub second: u64,
    /// Requests that left in this second.
    pub sent: u64,
    /// Connections that sent at least one request in this second.
    #[serde(default)]
    pub connections: u64,
    /// Responses (whatever their status) that ended in this second.
    pub responses: u64,
    /// Responses by status class: `"2xx": 120`.
    pub status: BTreeMap<String, u64>,
    /// Requests that failed without a response (transport errors) in this second.
    pub errors: u64,
    /// Latency of the responses that ended in this second.
    pub latency: SecondLatency,
    /// Per backend (by the backend header's value): responses and their latency.
    pub backends: BTreeMap<String, SecondBackend>,
}

impl Second {
    fn new(second: u64) -> Second {
        Second {
            second,
            ..Second::default()
        }
    }

    /// Adds every count of `other` (the same second of another thread or run).
    pub fn add(&mut self, other: &Second) {
        self.sent += other.sent;
        self.connections += other.connections;
        self.responses += other.responses;
        for (class, n) in &other.status {
            *self.status.entry(class.clone()).or_default() += n;
        }
        self.errors += other.errors;
        self.latency.add(&other.latency);
        for (name, b) in &other.backends {
            let mine = self.backends.entry(name.clone()).or_default();
            mine.responses += b.responses;
            mine.latency.add(&b.latency);
        }
    }

    /// The share (0..=1) of this second's responses that `backend` served.
    pub fn share(&self, backend: &str) -> f64 {
        let total: u64 = self.backends.values().map(|b| b.responses).sum();
        match (self.backends.get(backend), total) {
            (Some(b), 1..) => b.responses as f64 / total as f64,
            _ => 0.0,
        }
    }

    /// Responses of one status class (`2` for 2xx).
    pub fn class(&self, class: u16) -> u64 {
        self.status.get(&format!("{class}xx")).copied().unwrap_or(0)
    }
}

/// Adds `other` into `into`, entry by entry, `other`'s second `s` landing on `s + shift`.
pub fn add_series(into: &mut Vec<Second>, other: &[Second], shift: u64) {
    for o in other {
        let second = o.second + shift;
        let i = match into.binary_search_by_key(&second, |s| s.second) {
            Ok(i) => i,
            Err(i) => {
                into.insert(i, Second::new(second));
                i
            }
        };
        if let Some(s) = into.get_mut(i) {
            s.add(o);
        }
    }
}

/// Merges the series of two runs that started at `a_start` and `b_start` (Unix seconds):
/// entries that fell in the same wall-clock second add up. The later run's seconds move by the
/// whole seconds between the two starts (rounded), so the result is numbered from the earlier
/// start, which it returns.
pub fn merge_series(
    a: &mut Vec<Second>,
    a_start: Option<f64>,
    b: &[Second],
    b_start: Option<f64>,
) -> Option<f64> {
    match (a_start, b_start) {
        (Some(x), Some(y)) if y < x => {
            let shift = (x - y).round() as u64;
            let mut moved = Vec::with_capacity(a.len().max(b.len()));
            add_series(&mut moved, b, 0);
            add_series(&mut moved, a, shift);
            *a = moved;
            Some(y)
        }
        (Some(x), Some(y)) => {
            add_series(a, b, (y - x).round() as u64);
            Some(x)
        }
        // A report without a start time (written by an older loadgen): align from the start.
        (x, y) => {
            add_series(a, b, 0);
            x.or(y)
        }
    }
}

/// What one thread records of the series while it runs (see the module doc). Backend ids are
/// the thread's own (indexes into its list of backends; `None` for no backend header) and
/// become names when the threads' series are added up ([`Recorder::finish`]).
pub(crate) struct Recorder {
    start: Instant,
    seconds: Vec<ThreadSecond>,
    /// The second whose latencies are still recorded into full histograms.
    live: u64,
    live_latency: Histogram<u64>,
    live_backends: Vec<(Option<usize>, Histogram<u64>)>,
    /// For each connection (by its global number), the last second it was counted in.
    counted: Vec<Option<u64>>,
    /// Every frozen second's latencies added up: the run's so far, for the progress line.
    so_far: SecondLatency,
}

/// One second of one thread: counters, and latencies by backend id once frozen.
#[derive(Default)]
struct ThreadSecond {
    sent: u64,
    connections: u64,
    responses: u64,
    /// Responses by status class, `status[2]` for 2xx.
    status: [u64; 10],
    errors: u64,
    latency: SecondLatency,
    backends: Vec<(Option<usize>, u64, SecondLatency)>,
}

/// How one request ended, as the series counts it.
pub(crate) enum Outcome {
    /// A response: its status, latency and backend id.
    Response {
        status: u16,
        latency: Duration,
        backend: Option<usize>,
    },
    /// A transport error (the report counts it by class; the series only counts it).
    Error,
}

impl Recorder {
    pub fn new(start: Instant, connections: usize) -> Recorder {
        Recorder {
            start,
            seconds: Vec::new(),
            live: 0,
            live_latency: empty_histogram(),
            live_backends: Vec::new(),
            counted: vec![None; connections],
            so_far: SecondLatency::default(),
        }
    }

    fn second_of(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_secs()
    }

    fn slot(&mut self, second: u64) -> Option<&mut ThreadSecond> {
        let i = usize::try_from(second).ok()?;
        if self.seconds.len() <= i {
            self.seconds.resize_with(i + 1, ThreadSecond::default);
        }
        self.seconds.get_mut(i)
    }

    /// Counts one request of connection `connection`, sent at `sent`, ended at `ended`. Returns
    /// true when this request began a new second (the previous one was frozen).
    pub fn record(
        &mut self,
        connection: usize,
        sent: Instant,
        ended: Instant,
        outcome: Outcome,
    ) -> bool {
        let sent_in = self.second_of(sent);
        let first_send_this_second = match self.counted.get_mut(connection) {
            Some(last) if *last != Some(sent_in) => {
                *last = Some(sent_in);
                true
            }
            _ => false,
        };
        if let Some(s) = self.slot(sent_in) {
            s.sent += 1;
            s.connections += u64::from(first_send_this_second);
        }
        let ended_in = self.second_of(ended);
        let new_second = ended_in > self.live;
        if new_second {
            self.freeze_live();
            self.live = ended_in;
        }
        let live = ended_in == self.live;
        match outcome {
            Outcome::Error => {
                if let Some(s) = self.slot(ended_in) {
                    s.errors += 1;
                }
            }
            Outcome::Response {
                status,
                latency,
                backend,
            } => {
                let us = u64::try_from(latency.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                if let Some(s) = self.slot(ended_in) {
                    s.responses += 1;
                    if let Some(n) = s.status.get_mut(usize::from(status / 100)) {
                        *n += 1;
                    }
                    if !live {
                        // Ended in a second already frozen (clocks read out of order).
                        s.latency.record(us);
                        match s.backends.iter_mut().find(|(id, ..)| *id == backend) {
                            Some((_, n, l)) => {
                                *n += 1;
                                l.record(us);
                            }
                            None => {
                                let mut l = SecondLatency::default();
                                l.record(us);
                                s.backends.push((backend, 1, l));
                            }
                        }
                        return new_second;
                    }
                }
                put(&mut self.live_latency, us, 1);
                match self.live_backends.iter_mut().find(|(id, _)| *id == backend) {
                    Some((_, h)) => put(h, us, 1),
                    None => {
                        let mut h = empty_histogram();
                        put(&mut h, us, 1);
                        self.live_backends.push((backend, h));
                    }
                }
            }
        }
        new_second
    }

    /// The latencies of every second frozen so far.
    pub fn so_far(&self) -> &SecondLatency {
        &self.so_far
    }

    /// Moves the live second's histograms into its bucket and empties them for the next one
    /// (keeping their memory).
    fn freeze_live(&mut self) {
        let latency = SecondLatency::freeze(&self.live_latency);
        let backends: Vec<_> = self
            .live_backends
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(id, h)| (*id, h.len(), SecondLatency::freeze(h)))
            .collect();
        self.so_far.add(&latency);
        self.live_latency.reset();
        for (_, h) in &mut self.live_backends {
            h.reset();
        }
        let live = self.live;
        if let Some(s) = self.slot(live) {
            s.latency.add(&latency);
            for (id, n, l) in backends {
                match s.backends.iter_mut().find(|(b, ..)| *b == id) {
                    Some((_, count, mine)) => {
                        *count += n;
                        mine.add(&l);
                    }
                    None => s.backends.push((id, n, l)),
                }
            }
        }
    }

    /// The thread's series, backend ids named by `name`.
    pub fn finish(mut self, name: impl Fn(Option<usize>) -> String) -> Vec<Second> {
        self.freeze_live();
        self.seconds
            .into_iter()
            .enumerate()
            .map(|(i, t)| Second {
                second: i as u64,
                sent: t.sent,
                connections: t.connections,
                responses: t.responses,
                status: t
                    .status
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(class, n)| (format!("{class}xx"), *n))
                    .collect(),
                errors: t.errors,
                latency: t.latency,
                backends: t
                    .backends
                    .into_iter()
                    .map(|(id, responses, latency)| {
                        (name(id), SecondBackend { responses, latency })
                    })
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn response(latency_ms: u64, backend: usize) -> Outcome {
        Outcome::Response {
            status: 200,
            latency: ms(latency_ms),
            backend: Some(backend),
        }
    }

    /// ```text
    /// second   sent   ended                                  connections
    /// 0        3      2 responses (a 1 ms, b 2 ms)           2 (#0 twice, #1)
    /// 1        1      1 response (a 10 ms), 1 error, a 503   1
    /// 2        0      the one sent in second 1
    /// ```
    #[test]
    fn seconds_count_sends_and_ends() {
        let t0 = Instant::now();
        let at = |m| t0 + ms(m);
        let mut r = Recorder::new(t0, 2);
        r.record(0, at(0), at(1), response(1, 0));
        r.record(1, at(100), at(102), response(2, 1));
        r.record(0, at(200), at(1_300), Outcome::Error);
        r.record(0, at(1_500), at(1_510), response(10, 0));
        let closing = Outcome::Response {
            status: 503,
            latency: ms(1_000),
            backend: Some(1),
        };
        r.record(1, at(1_600), at(2_600), closing);
        let names = ["a", "b"];
        let series = r.finish(|id| id.map_or("(none)", |i| names[i]).to_owned());
        let sent: Vec<_> = series.iter().map(|s| s.sent).collect();
        assert_eq!(sent, [3, 2, 0]);
        let connections: Vec<_> = series.iter().map(|s| s.connections).collect();
        assert_eq!(connections, [2, 2, 0]);
        let responses: Vec<_> = series.iter().map(|s| s.responses).collect();
        assert_eq!(responses, [2, 1, 1]);
        assert_eq!(series[1].errors, 1);
        assert_eq!(series[2].class(5), 1);
        assert_eq!(series[0].backends["a"].responses, 1);
        assert!((series[0].share("b") - 0.5).abs() < 1e-9);
        let p99 = series[1].latency.quantile(0.99);
        assert!(p99.abs_diff(ms(10)) < ms(10) / 50, "{p99:?}");
        assert_eq!(series[2].backends["b"].latency.count(), 1);
    }

    #[test]
    fn merging_aligns_wall_clock_seconds() {
        let second = |second, sent| Second {
            second,
            sent,
            ..Second::default()
        };
        // Run b started 2.1 s after run a: its second 0 is a's second 2.
        let mut a = vec![second(0, 1), second(1, 1), second(2, 1)];
        let b = vec![second(0, 10), second(1, 10)];
        assert_eq!(
            merge_series(&mut a, Some(100.0), &b, Some(102.1)),
            Some(100.0)
        );
        let sent: Vec<_> = a.iter().map(|s| (s.second, s.sent)).collect();
        assert_eq!(sent, [(0, 1), (1, 1), (2, 11), (3, 10)]);
        // The other way round: a started later, so a's seconds move.
        let mut a = vec![second(0, 1)];
        assert_eq!(
            merge_series(&mut a, Some(105.0), &b, Some(104.0)),
            Some(104.0)
        );
        let sent: Vec<_> = a.iter().map(|s| (s.second, s.sent)).collect();
        assert_eq!(sent, [(0, 10), (1, 11)]);
    }

    #[test]
    fn frozen_histograms_add_up_and_survive_json() {
        let mut a = SecondLatency::default();
        for us in [100, 200, 300] {
            a.record(us);
        }
        let mut b = SecondLatency::default();
        b.record(200);
        b.record(50_000);
        a.add(&b);
        assert_eq!(a.count(), 5);
        assert_eq!(a.max().as_micros(), 50_175); // 50 ms within 2 significant figures
        let json = serde_json::to_string(&a).unwrap();
        let back: SecondLatency = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["count"], 5);
        assert_eq!(v["p50_us"], 200);
    }
}
