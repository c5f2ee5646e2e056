//! The HTML report (`--html FILE`, `loadgen report RUN.json --html FILE`): one self-contained
//! file, the run's summary table and its charts as inline SVG.
//!
//! **Self-contained, no JavaScript.** Everything is in the file: the CSS in a `<style>`
//! element, each chart an `<svg>` drawn here, point by point, from the report's numbers. No
//! script, no font, no stylesheet or image from elsewhere, so the file opens the same from a CI
//! artifact, an e-mail or a laptop offline, and shows nothing a reader's browser would have to
//! fetch.
//!
//! **The charts** (each a `<figure id="chart-...">`):
//! - `chart-throughput`: requests sent and answered per second (and, for a run with stages, the
//!   rate or connection count planned);
//! - `chart-connections` (closed loop with `--stages ...:c=N`): connections sending in each
//!   second, and the plan;
//! - `chart-latency`: p50, p90 and p99 of each second;
//! - `chart-backends`: each backend's share of each second's responses, stacked to 100%;
//! - `chart-status`: responses per second by status class, and transport errors;
//! - `chart-spectrum`: the latency at every percentile, on a log axis that spreads the tail
//!   (0%, 90%, 99%, 99.9%...: HdrHistogram's plotter and wrk2 show it so);
//! - `chart-omission` (open loop): the corrected and uncorrected spectra on one chart, the gap
//!   between them being what coordinated omission would hide;
//! - `chart-find-max` (`--find-max`): each step's rate against its p99 (or the percentile the
//!   objective names), with the objective's limit.
//!
//! Each line is one `<polyline>` with a `data-points` attribute (how many points it has), so a
//! test can check that a chart drew the run's data. The SVGs scale to the page's width, the
//! layout goes from one column on a phone to two on a laptop, and on a phone the charts' text
//! is drawn larger so that it stays readable once the chart is scaled down.

use std::fmt::Write as _;

use crate::report::{fmt_bytes, fmt_duration, fmt_rate, Latency, LoadModel, Report};
use crate::series::Second;
use crate::slo::{FindMax, Objective, Outcome, Step};
use crate::stages::{Ramp, Ramped};

/// The drawing area of every chart, in SVG user units (the SVG scales to its box).
const WIDTH: f64 = 480.0;
const HEIGHT: f64 = 270.0;
/// Room for the tick labels and axis titles.
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 42.0;

/// Line colours, distinguishable for the common kinds of colour blindness (Okabe and Ito).
const COLORS: [&str; 8] = [
    "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000",
];

/// The whole report as one HTML document.
pub fn render(report: &Report) -> String {
    let mut page = String::with_capacity(64 * 1024);
    let title = format!("loadgen: {}", report.url);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    summary(&mut page, report);
    page.push_str("<section class=\"charts\">\n");
    for chart in charts(report) {
        chart.render(&mut page);
    }
    page.push_str("</section>\n<footer>Written by loadgen ");
    page.push_str(env!("CARGO_PKG_VERSION"));
    page.push_str(
        "; every chart is drawn from the JSON report (<code>loadgen report RUN.json --html \
         FILE</code> draws it again).</footer>\n</body>\n</html>\n",
    );
    page
}

const CSS: &str = "
body{font:15px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1200px;
padding:12px;color:#222;background:#fff}
h1{font-size:1.2em;overflow-wrap:anywhere}
h2{font-size:1.05em;margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.3em 0;font-variant-numeric:tabular-nums}
td,th{padding:2px 10px 2px 0;text-align:left;vertical-align:top}
td.n,th.n{text-align:right}
.scroll{overflow-x:auto}
.pass{color:#006d2c;font-weight:600}.fail{color:#b30000;font-weight:600}
.charts{display:grid;grid-template-columns:1fr;gap:18px;margin-top:1em}
@media (min-width:900px){.charts{grid-template-columns:1fr 1fr}}
figure{margin:0;border:1px solid #ddd;border-radius:6px;padding:8px}
figcaption{font-weight:600}
figure p{margin:.2em 0 .4em;font-size:.9em;color:#444}
svg{width:100%;height:auto;display:block}
svg text{font-size:12px;fill:#333}
@media (max-width:600px){svg text{font-size:15px}}
svg .grid{stroke:#e4e4e4}
svg .axis{stroke:#888}
ul.legend{list-style:none;padding:0;margin:.3em 0 0;font-size:.9em}
ul.legend li{display:inline-block;margin-right:14px}
ul.legend span{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
footer{margin-top:2em;font-size:.85em;color:#666}
";

/// The summary: what was run, the headline numbers, the verdict, and the backends.
fn summary(page: &mut String, r: &Report) {
    let model = match r.model {
        LoadModel::Closed => {
            "closed loop (each connection sends when the previous answer is in)".to_owned()
        }
        LoadModel::Open { rate } => format!(
            "open loop at {} req/s (latency from the scheduled send time)",
            fmt_rate(rate)
        ),
    };
    let result = if r.passed() {
        "<span class=\"pass\">PASS</span>"
    } else {
        "<span class=\"fail\">FAIL</span>"
    };
    let statuses: Vec<String> = r.status.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    let errors: Vec<String> = crate::failure::ErrorClass::ALL
        .iter()
        .filter(|c| r.errors.get(**c) > 0)
        .map(|c| format!("{} {}", c.label(), r.errors.get(*c)))
        .collect();
    let mut rows: Vec<(&str, String)> = vec![
        ("Result", result.to_owned()),
        ("Target", escape(&r.url)),
        ("Load", escape(&model)),
        (
            "Stages",
            match &r.stages {
                None => "none (a constant load)".to_owned(),
                Some(ramp) => {
                    let from = match ramp.ramped {
                        Ramped::Rate => format!("{} req/s", fmt_rate(ramp.start)),
                        Ramped::Connections => format!("{} connections", ramp.start),
                    };
                    escape(&format!("{ramp}, from {from}"))
                }
            },
        ),
        (
            "Connections",
            format!(
                "{}{}",
                r.connections,
                if r.keepalive {
                    ", keep-alive"
                } else {
                    ", a new one per request"
                }
            ),
        ),
        ("Duration", fmt_duration(r.duration)),
        (
            "Requests",
            format!(
                "{} ({} responses, {:.1} req/s, {}/s)",
                r.requests,
                r.responses,
                r.requests_per_sec,
                fmt_bytes(r.bytes_per_sec)
            ),
        ),
        (
            "Status",
            if statuses.is_empty() {
                "no responses".to_owned()
            } else {
                statuses.join(", ")
            },
        ),
        (
            "Errors",
            if errors.is_empty() {
                "none".to_owned()
            } else {
                errors.join(", ")
            },
        ),
        (
            "Failed requests",
            format!(
                "{} (errors and statuses outside {}; at most {} allowed)",
                r.failed_requests(),
                r.ok_status,
                r.max_errors
            ),
        ),
    ];
    if let Some(v) = &r.verdict {
        let word = if v.passed { "PASS" } else { "FAIL" };
        rows.push((
            "Expectation",
            format!(
                "{}: {word}: {}",
                escape(&v.expectation.to_string()),
                escape(&v.detail)
            ),
        ));
    }
    if let Some(found) = &r.find_max {
        let text = crate::find_max::render_text(found);
        let first = text.lines().next().unwrap_or_default();
        let first = first.strip_prefix("Find max: ").unwrap_or(first);
        rows.insert(1, ("Find max", escape(first)));
    }
    if let Some(why) = &r.tls_error {
        rows.push(("TLS error", escape(why)));
    }
    page.push_str("<h2>Summary</h2>\n<div class=\"scroll\"><table>\n");
    for (name, value) in rows {
        let _ = writeln!(page, "<tr><th>{name}</th><td>{value}</td></tr>");
    }
    page.push_str("</table></div>\n<h2>Latency</h2>\n<div class=\"scroll\"><table>\n");
    page.push_str(
        "<tr><th></th><th class=\"n\">p50</th><th class=\"n\">p90</th><th class=\"n\">p99</th>\
         <th class=\"n\">p99.9</th><th class=\"n\">max</th><th class=\"n\">mean</th></tr>\n",
    );
    let corrected = if r.latency_uncorrected.is_some() {
        "corrected"
    } else {
        "all responses"
    };
    latency_row(page, corrected, &r.latency);
    if let Some(u) = &r.latency_uncorrected {
        latency_row(page, "uncorrected", u);
    }
    if let Some(h) = &r.tls_handshake {
        latency_row(page, "TLS handshake", h);
    }
    page.push_str("</table></div>\n");
    if !r.backends.is_empty() {
        let _ = write!(
            page,
            "<h2>Backends ({})</h2>\n<div class=\"scroll\"><table>\n<tr><th>backend</th>\
             <th class=\"n\">responses</th><th class=\"n\">share</th><th class=\"n\">p50</th>\
             <th class=\"n\">p99</th><th class=\"n\">max</th></tr>\n",
            escape(&r.backend_header)
        );
        for b in &r.backends {
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{:.1}%</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                escape(&b.name),
                b.responses,
                b.share * 100.0,
                fmt_duration(b.latency.quantile(0.5)),
                fmt_duration(b.latency.quantile(0.99)),
                fmt_duration(b.latency.max()),
            );
        }
        page.push_str("</table></div>\n");
    }
}

fn latency_row(page: &mut String, label: &str, l: &Latency) {
    let _ = writeln!(
        page,
        "<tr><th>{label}</th><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
         <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
        fmt_duration(l.quantile(0.5)),
        fmt_duration(l.quantile(0.9)),
        fmt_duration(l.quantile(0.99)),
        fmt_duration(l.quantile(0.999)),
        fmt_duration(l.max()),
        fmt_duration(l.mean()),
    );
}

/// Every chart the report has data for, in the order of the module doc.
fn charts(r: &Report) -> Vec<Chart> {
    // A search's result first: it is what the run was for.
    let mut charts: Vec<Chart> = r.find_max.iter().map(find_max_curve).collect();
    charts.push(throughput(r));
    if let Some(ramp) = r
        .stages
        .as_ref()
        .filter(|r| r.ramped == Ramped::Connections)
    {
        charts.push(connections(r, ramp));
    }
    charts.extend([latency_over_time(r), backend_shares(r), statuses(r)]);
    let main = match r.latency_uncorrected {
        Some(_) => "corrected",
        None => "latency",
    };
    charts.push(spectrum(
        "chart-spectrum",
        "Latency by percentile",
        "The latency under which each share of the responses finished; the axis spreads the \
         tail (each step right is ten times rarer).",
        &[(main, &r.latency)],
    ));
    if let Some(u) = &r.latency_uncorrected {
        charts.push(spectrum(
            "chart-omission",
            "Corrected and uncorrected latency",
            "Open loop: corrected latency counts from each request's scheduled time, \
             uncorrected from when it actually left; the gap is the wait a closed-loop tool \
             would not see (coordinated omission).",
            &[("corrected", &r.latency), ("uncorrected", u)],
        ));
    }
    charts
}

/// `--find-max`: each step's rate against the latency its objective judges, and the limit.
fn find_max_curve(found: &FindMax) -> Chart {
    let objective = found.slo.0.first().copied().unwrap_or(Objective {
        quantile: 0.99,
        limit: std::time::Duration::from_millis(50),
    });
    let name = objective.percentile_name();
    let mut steps: Vec<&Step> = found.steps.iter().collect();
    steps.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let us = |s: &Step| match objective.quantile {
        q if q <= 0.5 => s.p50_us,
        q if q <= 0.99 => s.p99_us,
        _ => s.p999_us,
    };
    let limit_us = objective.limit.as_micros() as f64;
    let max_us = steps.iter().map(|s| us(s) as f64).fold(limit_us, f64::max);
    let unit = TimeUnit::for_max(max_us.min(limit_us * 4.0));
    let top_rate = steps.iter().map(|s| s.rate).fold(1.0, f64::max);
    let measured = steps
        .iter()
        .map(|s| (s.rate, unit.of(us(s) as f64)))
        .collect();
    let mut limit = Line::new(
        &format!(
            "objective {name} ≤ {}",
            humantime::format_duration(objective.limit)
        ),
        vec![(0.0, unit.of(limit_us)), (top_rate, unit.of(limit_us))],
    );
    limit.dashed = true;
    let passed: Vec<(f64, f64)> = steps
        .iter()
        .filter(|s| s.outcome == Outcome::Pass)
        .map(|s| (s.rate, unit.of(us(s) as f64)))
        .collect();
    let found_rate = found.rate.map_or_else(
        || "no rate passed".to_owned(),
        |r| format!("{} req/s found", fmt_rate(r)),
    );
    // Above four times the objective, the curve only says "far too slow": clip it there, so
    // the part near the limit stays readable.
    let y_top = nice_top(unit.of(max_us.min(limit_us * 4.0)));
    Chart {
        id: "chart-find-max",
        title: format!("Find max: {found_rate}"),
        note: format!(
            "Each step of the search: its rate against its {name} (clipped at four times the \
             objective); marked points passed {}.",
            found.slo
        ),
        x: Axis::linear("rate asked (req/s)", 0.0, nice_top(top_rate), fmt_count),
        y: Axis::linear(&format!("{name} ({})", unit.name()), 0.0, y_top, fmt_count),
        lines: vec![Line::new(&name, measured), limit],
        areas: Vec::new(),
        marks: passed,
    }
}

/// How long the bucket of second `s` covered: a whole second, except the last one, which
/// ends with the run (its counts become rates over that part of a second).
fn covered(r: &Report, s: &Second) -> f64 {
    // (A merged report's seconds may run past its duration, the longest run's: whole seconds.)
    let left = r.duration.as_secs_f64() - s.second as f64;
    if left > 0.0 && left < 1.0 {
        left.max(0.001)
    } else {
        1.0
    }
}

/// Where a bucket is drawn: the middle of the time it covered.
fn mid(r: &Report, s: &Second) -> f64 {
    s.second as f64 + covered(r, s) / 2.0
}

fn time_axis(r: &Report) -> Axis {
    let last = r
        .series
        .last()
        .map_or(0.0, |s| s.second as f64 + covered(r, s));
    let end = r.duration.as_secs_f64().max(last).max(1.0);
    Axis::linear("time (s)", 0.0, nice_top(end), fmt_count)
}

fn throughput(r: &Report) -> Chart {
    let per_sec = |count: fn(&Second) -> u64| -> Vec<(f64, f64)> {
        r.series
            .iter()
            .map(|s| (mid(r, s), count(s) as f64 / covered(r, s)))
            .collect()
    };
    let mut lines = vec![
        Line::new("sent", per_sec(|s| s.sent)),
        Line::new("answered", per_sec(|s| s.responses)),
    ];
    let mut note = "Requests sent and answered in each second of the run.".to_owned();
    if let Some(ramp) = r.stages.as_ref().filter(|r| r.ramped == Ramped::Rate) {
        let mut planned = Line::new("planned rate", ramp.corners());
        planned.dashed = true;
        lines.push(planned);
        note = format!("{note} Dashed: the rate the stages planned ({ramp}).");
    }
    let top = max_y(&lines);
    Chart {
        id: "chart-throughput",
        title: "Requests per second".into(),
        note,
        x: time_axis(r),
        y: Axis::linear("requests/s", 0.0, nice_top(top), fmt_count),
        lines,
        areas: Vec::new(),
        marks: Vec::new(),
    }
}

/// Closed loop with connection stages: the connections that sent in each second, and the plan.
fn connections(r: &Report, ramp: &Ramp) -> Chart {
    let used = r
        .series
        .iter()
        .map(|s| (mid(r, s), s.connections as f64))
        .collect();
    let mut planned = Line::new("planned", ramp.corners());
    planned.dashed = true;
    let lines = vec![Line::new("connections sending", used), planned];
    let top = max_y(&lines);
    Chart {
        id: "chart-connections",
        title: "Connections".into(),
        note: format!(
            "Connections that sent at least one request in each second; dashed: the count the \
             stages planned ({ramp})."
        ),
        x: time_axis(r),
        y: Axis::linear("connections", 0.0, nice_top(top), fmt_count),
        lines,
        areas: Vec::new(),
        marks: Vec::new(),
    }
}

fn latency_over_time(r: &Report) -> Chart {
    let max_us = r
        .series
        .iter()
        .map(|s| s.latency.quantile(0.99).as_micros() as f64)
        .fold(0.0, f64::max);
    let unit = TimeUnit::for_max(max_us);
    let at = |q: f64| -> Vec<(f64, f64)> {
        r.series
            .iter()
            .filter(|s| s.latency.count() > 0)
            .map(|s| {
                let us = s.latency.quantile(q).as_micros() as f64;
                (mid(r, s), unit.of(us))
            })
            .collect()
    };
    let lines = vec![
        Line::new("p50", at(0.5)),
        Line::new("p90", at(0.9)),
        Line::new("p99", at(0.99)),
    ];
    let top = max_y(&lines);
    Chart {
        id: "chart-latency",
        title: "Latency over time".into(),
        note: "The p50, p90 and p99 of the responses that ended in each second.".into(),
        x: time_axis(r),
        y: Axis::linear(
            &format!("latency ({})", unit.name()),
            0.0,
            nice_top(top),
            fmt_count,
        ),
        lines,
        areas: Vec::new(),
        marks: Vec::new(),
    }
}

fn backend_shares(r: &Report) -> Chart {
    // Stacked: each backend's band starts where the previous one's ended.
    let mut below: Vec<f64> = vec![0.0; r.series.len()];
    let mut areas = Vec::new();
    for b in &r.backends {
        let mut lower = Vec::with_capacity(r.series.len());
        let mut upper = Vec::with_capacity(r.series.len());
        for (s, base) in r.series.iter().zip(below.iter_mut()) {
            let x = mid(r, s);
            let share = s.share(&b.name) * 100.0;
            lower.push((x, *base));
            *base += share;
            upper.push((x, *base));
        }
        areas.push(Area {
            name: b.name.clone(),
            lower,
            upper,
        });
    }
    Chart {
        id: "chart-backends",
        title: "Share of each backend".into(),
        note: format!(
            "Each backend's part of the responses of each second, stacked (by the {} header).",
            r.backend_header
        ),
        x: time_axis(r),
        y: Axis::linear("share of responses (%)", 0.0, 100.0, fmt_count),
        lines: Vec::new(),
        areas,
        marks: Vec::new(),
    }
}

fn statuses(r: &Report) -> Chart {
    let mut lines = Vec::new();
    for class in 1..10u16 {
        if r.series.iter().any(|s| s.class(class) > 0) {
            let points = r
                .series
                .iter()
                .map(|s| (mid(r, s), s.class(class) as f64 / covered(r, s)))
                .collect();
            lines.push(Line::new(&format!("{class}xx"), points));
        }
    }
    let errors = r
        .series
        .iter()
        .map(|s| (mid(r, s), s.errors as f64 / covered(r, s)))
        .collect();
    lines.push(Line::new("errors", errors));
    let top = max_y(&lines);
    Chart {
        id: "chart-status",
        title: "Statuses and errors".into(),
        note: "Responses per second by status class, and requests that got no response \
               (transport errors: refused, timeout, reset...)."
            .into(),
        x: time_axis(r),
        y: Axis::linear("per second", 0.0, nice_top(top), fmt_count),
        lines,
        areas: Vec::new(),
        marks: Vec::new(),
    }
}

/// Percentiles as the x position of a log axis: `x = log10(1 / (1 - q))`, so 90% is 1, 99% is
/// 2, 99.9% is 3.
fn spectrum(id: &'static str, title: &str, note: &str, latencies: &[(&str, &Latency)]) -> Chart {
    let count = latencies.iter().map(|(_, l)| l.count()).max().unwrap_or(0);
    // No further right than the data reaches: with 1,000 responses, the 99.9th is the last.
    let reach = (count.max(10) as f64).log10().clamp(1.0, 6.0);
    let max_us = latencies
        .iter()
        .map(|(_, l)| l.max().as_micros() as f64)
        .fold(0.0, f64::max);
    let unit = TimeUnit::for_max(max_us);
    let lines: Vec<Line> = latencies
        .iter()
        .filter(|(_, l)| l.count() > 0)
        .map(|(name, l)| {
            let steps = (reach * 20.0).ceil() as usize;
            let points = (0..=steps)
                .map(|i| {
                    let x = reach * i as f64 / steps as f64;
                    let q = 1.0 - 10f64.powf(-x);
                    (x, unit.of(l.quantile(q).as_micros() as f64))
                })
                .collect();
            Line::new(name, points)
        })
        .collect();
    let top = max_y(&lines);
    let ticks = (0..=reach.floor() as u32)
        .map(|i| {
            const LABELS: [&str; 7] =
                ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"];
            let label = LABELS.get(i as usize).copied().unwrap_or("");
            (f64::from(i), label.to_owned())
        })
        .collect();
    Chart {
        id,
        title: title.into(),
        note: note.into(),
        x: Axis {
            label: "percentile (log scale)".into(),
            min: 0.0,
            max: reach,
            ticks,
        },
        y: Axis::linear(
            &format!("latency ({})", unit.name()),
            0.0,
            nice_top(top),
            fmt_count,
        ),
        lines,
        areas: Vec::new(),
        marks: Vec::new(),
    }
}

/// Milliseconds or microseconds, whichever keeps the axis' numbers readable.
#[derive(Clone, Copy)]
enum TimeUnit {
    Micros,
    Millis,
}

impl TimeUnit {
    fn for_max(max_us: f64) -> TimeUnit {
        if max_us < 2_000.0 {
            TimeUnit::Micros
        } else {
            TimeUnit::Millis
        }
    }

    fn of(self, us: f64) -> f64 {
        match self {
            TimeUnit::Micros => us,
            TimeUnit::Millis => us / 1_000.0,
        }
    }

    fn name(self) -> &'static str {
        match self {
            TimeUnit::Micros => "µs",
            TimeUnit::Millis => "ms",
        }
    }
}

/// One chart: axes, lines, stacked areas.
pub(crate) struct Chart {
    pub id: &'static str,
    pub title: String,
    /// One sentence under the title saying what is drawn.
    pub note: String,
    pub x: Axis,
    pub y: Axis,
    pub lines: Vec<Line>,
    pub areas: Vec<Area>,
    /// Points marked with a dot (in the first line's colour).
    pub marks: Vec<(f64, f64)>,
}

pub(crate) struct Axis {
    pub label: String,
    pub min: f64,
    pub max: f64,
    /// Positions and labels of the ticks.
    pub ticks: Vec<(f64, String)>,
}

impl Axis {
    /// A linear axis from `min` to `max` with about five round ticks.
    pub fn linear(label: &str, min: f64, max: f64, fmt: fn(f64) -> String) -> Axis {
        let max = if max > min { max } else { min + 1.0 };
        let step = nice_step((max - min) / 5.0);
        let mut ticks = Vec::new();
        let mut v = (min / step).ceil() * step;
        while v <= max + step * 1e-9 {
            ticks.push((v, fmt(v)));
            v += step;
        }
        Axis {
            label: label.into(),
            min,
            max,
            ticks,
        }
    }

    fn position(&self, v: f64, from: f64, to: f64) -> f64 {
        let span = (self.max - self.min).max(f64::MIN_POSITIVE);
        from + (v.clamp(self.min, self.max) - self.min) / span * (to - from)
    }
}

pub(crate) struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

impl Line {
    pub fn new(name: &str, points: Vec<(f64, f64)>) -> Line {
        Line {
            name: name.into(),
            points,
            dashed: false,
        }
    }
}

/// A band between two lines, for stacked shares.
pub(crate) struct Area {
    pub name: String,
    pub lower: Vec<(f64, f64)>,
    pub upper: Vec<(f64, f64)>,
}

impl Chart {
    pub fn render(&self, page: &mut String) {
        let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP);
        let px = |x: f64| self.x.position(x, x0, x1);
        let py = |y: f64| self.y.position(y, y0, y1);
        let _ = write!(
            page,
            "<figure class=\"chart\" id=\"{}\">\n<figcaption>{}</figcaption>\n<p>{}</p>\n\
             <svg viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\">\n",
            self.id,
            escape(&self.title),
            escape(&self.note),
            escape(&self.title),
        );
        for (v, label) in &self.y.ticks {
            let y = py(*v);
            let _ = writeln!(
                page,
                "<line class=\"grid\" x1=\"{x0:.1}\" y1=\"{y:.1}\" x2=\"{x1:.1}\" y2=\"{y:.1}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                x0 - 4.0,
                y + 4.0,
                escape(label)
            );
        }
        for (v, label) in &self.x.ticks {
            let x = px(*v);
            let _ = writeln!(
                page,
                "<line class=\"axis\" x1=\"{x:.1}\" y1=\"{y0:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\"/>\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                y0 + 4.0,
                y0 + 16.0,
                escape(label)
            );
        }
        let _ = writeln!(
            page,
            "<line class=\"axis\" x1=\"{x0:.1}\" y1=\"{y0:.1}\" x2=\"{x1:.1}\" y2=\"{y0:.1}\"/>\
             <line class=\"axis\" x1=\"{x0:.1}\" y1=\"{y0:.1}\" x2=\"{x0:.1}\" y2=\"{y1:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
             <text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
            (x0 + x1) / 2.0,
            HEIGHT - 6.0,
            escape(&self.x.label),
            (y0 + y1) / 2.0,
            escape(&self.y.label),
        );
        let mut legend = Vec::new();
        for (i, area) in self.areas.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let outline: Vec<String> = area
                .upper
                .iter()
                .chain(area.lower.iter().rev())
                .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            let _ = writeln!(
                page,
                "<polygon data-series=\"{}\" data-points=\"{}\" fill=\"{color}\" \
                 fill-opacity=\"0.8\" points=\"{}\"/>",
                escape(&area.name),
                area.upper.len(),
                outline.join(" ")
            );
            legend.push((area.name.as_str(), color));
        }
        for (i, line) in self.lines.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<String> = line
                .points
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            let dash = if line.dashed {
                " stroke-dasharray=\"6 4\""
            } else {
                ""
            };
            let _ = writeln!(
                page,
                "<polyline data-series=\"{}\" data-points=\"{}\" fill=\"none\" stroke=\"{color}\" \
                 stroke-width=\"2\"{dash} points=\"{}\"/>",
                escape(&line.name),
                line.points.len(),
                points.join(" ")
            );
            // A single point draws no line: mark it.
            if let [(x, y)] = line.points[..] {
                let _ = writeln!(
                    page,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                    px(x),
                    py(y)
                );
            }
            legend.push((line.name.as_str(), color));
        }
        for (x, y) in &self.marks {
            let _ = writeln!(
                page,
                "<circle class=\"mark\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{}\"/>",
                px(*x),
                py(*y),
                COLORS[0]
            );
        }
        page.push_str("</svg>\n<ul class=\"legend\">");
        for (name, color) in legend {
            let _ = write!(
                page,
                "<li><span style=\"background:{color}\"></span>{}</li>",
                escape(name)
            );
        }
        page.push_str("</ul>\n</figure>\n");
    }
}

fn max_y(lines: &[Line]) -> f64 {
    lines
        .iter()
        .flat_map(|l| l.points.iter().map(|(_, y)| *y))
        .fold(0.0, f64::max)
}

/// The top of an axis: a round number a little above `max`.
pub(crate) fn nice_top(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let step = nice_step(max / 5.0);
    (max / step).ceil() * step
}

/// 1, 2 or 5 times a power of ten, at least `rough`.
fn nice_step(rough: f64) -> f64 {
    let rough = rough.max(1e-9);
    let power = 10f64.powf(rough.log10().floor());
    let mantissa = rough / power;
    let nice = if mantissa <= 1.0 {
        1.0
    } else if mantissa <= 2.0 {
        2.0
    } else if mantissa <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * power
}

/// `1200`, `1.5k`, `0.25`: short tick labels.
pub(crate) fn fmt_count(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{}k", trim(v / 1000.0))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Text for HTML content and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_axes() {
        assert_eq!(nice_top(930.0), 1000.0);
        assert_eq!(nice_top(0.0), 1.0);
        assert_eq!(nice_top(42.0), 50.0);
        let a = Axis::linear("x", 0.0, 100.0, fmt_count);
        let labels: Vec<&str> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0", "20", "40", "60", "80", "100"]);
        assert_eq!(fmt_count(25_000.0), "25k");
        assert_eq!(fmt_count(0.5), "0.5");
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
