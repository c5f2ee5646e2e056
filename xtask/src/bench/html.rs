//! The HTML report beside `report.md`: every loadgen run of the bench, drawn.
//!
//! `report.md` shows medians over rounds and ratios, which is what the bench concludes; but a
//! median hides *how* a run went: a stall at second 3, one backend dropping out, a p99 that
//! climbs as the run goes on. loadgen already draws that from its JSON report
//! ([`loadgen::html`]), so the bench keeps the JSON report of each of its loadgen runs and has
//! loadgen's library draw it:
//!
//! ```text
//! target/bench/report.md           medians, ratios, targets
//! target/bench/report.json         the same runs' figures, raw
//! target/bench/report.html         the index: one table per part of the bench, a row per run
//! target/bench/runs/NAME.json      loadgen's JSON report of one run, as it printed it
//! target/bench/runs/NAME.html      its charts (loadgen report runs/NAME.json --html draws the same)
//! ```
//!
//! `NAME` is the part, the scenario, the load and the round: `proxies-lb-50-conns-round1` (and
//! `-2` for a scenario's second run in one round, which only the admin part has).
//! Warm-up runs are not kept, and wrk's runs have no report to draw: they are in `report.md`
//! only.
//!
//! **Self-contained, like loadgen's pages:** the index's CSS is inline and its small charts
//! (responses per second in each run) are inline SVG; nothing is fetched from elsewhere and no
//! script runs, so `target/bench/` can be copied or uploaded as a CI artifact and still opens.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::ValueEnum as _;

use super::client::{Load, Measured};
use super::report::{ProxyRun, Report};
use super::Part;

/// One loadgen run, as the index lists it.
#[derive(Clone, Copy)]
pub struct Run<'a> {
    /// The part of the bench it belongs to: its section of the index.
    pub part: Part,
    /// The scenario, row or target it measured (`lb`, `haproxy leastconn`, `direct backend`).
    pub scenario: &'a str,
    pub load: Load,
    /// 0-based, as in [`ProxyRun`].
    pub round: u32,
    /// Its place in its round, 0 for the first (`None` for loadgen beside wrk, which has none).
    /// A scenario can run twice in a round (lb with and without `--admin` runs the pair in both
    /// orders): its runs are then told apart by this.
    pub order: Option<usize>,
    pub measured: &'a Measured,
    /// loadgen's JSON report of the run, as it printed it.
    pub json: &'a str,
}

impl Run<'_> {
    /// The run's file name without extension: `proxies-lb-open-3500-s-round1`.
    fn name(&self) -> String {
        let part = self
            .part
            .to_possible_value()
            .map(|v| v.get_name().to_owned());
        slug(&format!(
            "{} {} {} round{}",
            part.unwrap_or_default(),
            self.scenario,
            self.load.label(),
            self.round + 1
        ))
    }
}

/// Every loadgen run of `report` that has a JSON report, part by part in the order of
/// `report.md`, and within a part by load, scenario and round (so that a scenario's rounds are
/// next to each other).
pub fn runs(report: &Report) -> Vec<Run<'_>> {
    let mut all: Vec<Run> = proxy_runs(Part::Proxies, &report.proxy_runs).collect();
    if let Some(admin) = &report.admin {
        all.extend(proxy_runs(Part::Admin, &admin.runs));
    }
    if let Some(tls) = &report.tls {
        all.extend(proxy_runs(Part::Tls, &tls.runs));
    }
    all.extend(report.client_runs.iter().filter_map(|r| {
        Some(Run {
            part: Part::Clients,
            scenario: r.target,
            load: Load::Closed {
                connections: r.connections,
            },
            round: r.round,
            order: None,
            measured: &r.measured,
            json: r.measured.loadgen_report.as_deref()?,
        })
    }));
    if let Some(slow) = &report.slow_backend {
        all.extend(proxy_runs(Part::SlowBackend, &slow.runs));
    }
    sorted(all)
}

/// One part's runs of proxy scenarios (all loadgen's).
fn proxy_runs(part: Part, runs: &[ProxyRun]) -> impl Iterator<Item = Run<'_>> {
    runs.iter().filter_map(move |r| {
        Some(Run {
            part,
            scenario: r.scenario,
            load: r.load,
            round: r.round,
            order: Some(r.order),
            measured: &r.measured,
            json: r.measured.loadgen_report.as_deref()?,
        })
    })
}

/// Sorts runs by part, then load, then scenario (each in the order it first appears), then round,
/// then place in the round.
fn sorted(mut runs: Vec<Run>) -> Vec<Run> {
    let measured = runs.clone();
    let first = |same: &dyn Fn(&Run) -> bool| measured.iter().position(same);
    runs.sort_by_key(|r| {
        (
            first(&|o| o.part == r.part),
            first(&|o| o.part == r.part && o.load == r.load),
            first(&|o| o.part == r.part && o.scenario == r.scenario),
            r.round,
            r.order,
        )
    });
    runs
}

/// Writes each run's JSON report and charts into `dir/runs/` (emptied first, so that no run of an
/// earlier bench stays behind) and the index `dir/report.html`; returns the index's path.
/// `command` is the bench's command line, for the index's title.
pub fn write(dir: &Path, command: &str, runs: &[Run]) -> Result<PathBuf> {
    let runs_dir = dir.join("runs");
    if runs_dir.exists() {
        std::fs::remove_dir_all(&runs_dir)
            .with_context(|| format!("removing the last bench's {}", runs_dir.display()))?;
    }
    std::fs::create_dir_all(&runs_dir)
        .with_context(|| format!("creating {}", runs_dir.display()))?;

    let mut times_seen: HashMap<String, usize> = HashMap::new();
    let mut rows: Vec<Row> = Vec::with_capacity(runs.len());
    for run in runs {
        // A scenario measured twice in one round (the admin part runs the pair in both orders)
        // gets `-2` on its second run's name.
        let base = run.name();
        let seen = times_seen.entry(base.clone()).or_insert(0);
        *seen += 1;
        let name = match *seen {
            1 => base,
            n => format!("{base}-{n}"),
        };
        let report: loadgen::Report = serde_json::from_str(run.json).with_context(|| {
            format!(
                "loadgen's JSON report of {name} is not a loadgen::Report: the loadgen binary and \
                 xtask were built from different sources (run cargo xtask bench again)"
            )
        })?;
        let json_path = runs_dir.join(format!("{name}.json"));
        std::fs::write(&json_path, run.json)
            .with_context(|| format!("writing {}", json_path.display()))?;
        let html_path = runs_dir.join(format!("{name}.html"));
        let page = with_way_back(&loadgen::html::render(&report), run);
        std::fs::write(&html_path, page)
            .with_context(|| format!("writing {}", html_path.display()))?;
        rows.push(Row {
            run,
            name,
            responses_per_second: whole_seconds(&report).map(|s| s.responses).collect(),
        });
    }

    let index = dir.join("report.html");
    std::fs::write(&index, index_page(command, &rows))
        .with_context(|| format!("writing {}", index.display()))?;
    Ok(index)
}

/// A run's page is loadgen's, titled by the URL it loaded; a line at its top says which run of
/// the bench it is and leads back to the index.
fn with_way_back(page: &str, run: &Run) -> String {
    let place = run
        .order
        .map(|o| format!(", place {}", o + 1))
        .unwrap_or_default();
    let nav = format!(
        "<body>\n<nav><a href=\"../report.html\">All runs of this bench</a> · {} · {} · {} · \
         round {}{place}</nav>\n",
        part_title(run.part),
        escape(run.scenario),
        escape(&run.load.label()),
        run.round + 1
    );
    page.replacen("<body>\n", &nav, 1)
}

/// The seconds of a run's series that the run covered (at least 90% of each). Its last second
/// is usually only a tail, the answers to the last requests sent: drawn, it would make every run
/// look as if it collapsed at the end.
fn whole_seconds(report: &loadgen::Report) -> impl Iterator<Item = &loadgen::series::Second> {
    let covered = report.duration.as_secs_f64();
    report
        .series
        .iter()
        .filter(move |s| s.second as f64 + 0.9 <= covered)
}

/// One row of the index.
struct Row<'a> {
    run: &'a Run<'a>,
    name: String,
    /// Responses in each whole second of the run, from its series.
    responses_per_second: Vec<u64>,
}

/// The index: a table per part, a row per run linking its page.
fn index_page(command: &str, rows: &[Row]) -> String {
    let mut page = String::with_capacity(16 * 1024);
    let title = format!("cargo xtask {command}: every loadgen run");
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{title}</h1>\n\
         <p>One row per loadgen run of this bench; a run's name opens loadgen's report of it \
         (requests per second, latency and each backend's share over time, the latency \
         spectrum). The medians over rounds, the ratios and the targets are in \
         <a href=\"report.md\">report.md</a>. Each run's JSON report is beside its page in \
         <code>runs/</code> (<code>loadgen report runs/NAME.json</code> prints it again). \
         wrk's runs are in report.md only: wrk writes no report to draw. <em>place</em> is \
         the run's place in its round (1 ran first): which scenario goes first changes every \
         round, so that none always runs first or right after the heaviest.</p>\n",
        title = escape(&title),
    );
    if rows.is_empty() {
        page.push_str("<p>No loadgen run was measured.</p>\n");
    }
    let mut rest = rows;
    while let Some(first) = rest.first() {
        let part = first.run.part;
        let end = rest
            .iter()
            .position(|r| r.run.part != part)
            .unwrap_or(rest.len());
        let (section, after) = rest.split_at(end);
        table(&mut page, part, section);
        rest = after;
    }
    page.push_str("</body>\n</html>\n");
    page
}

/// One part's table.
fn table(page: &mut String, part: Part, rows: &[Row]) {
    let _ = write!(
        page,
        "<h2>{}</h2>\n<div class=\"scroll\"><table>\n<tr><th>run</th><th>load</th>\
         <th class=\"n\">round</th><th class=\"n\">place</th><th class=\"n\">req/s</th><th class=\"n\">p50 µs</th>\
         <th class=\"n\">p99 µs</th><th class=\"n\">errors</th><th>responses each second</th>\
         <th></th></tr>\n",
        part_title(part)
    );
    for row in rows {
        let (run, m) = (row.run, row.run.measured);
        let errors = if m.errors > 0 {
            format!("<span class=\"fail\">{}</span>", m.errors)
        } else {
            "0".into()
        };
        let _ = writeln!(
            page,
            "<tr><td><a href=\"runs/{name}.html\">{}</a></td><td>{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{:.0}</td><td class=\"n\">{:.0}</td><td class=\"n\">{:.0}</td>\
             <td class=\"n\">{errors}</td><td>{}</td>\
             <td><a href=\"runs/{name}.json\">JSON</a></td></tr>",
            escape(run.scenario),
            escape(&run.load.label()),
            run.round + 1,
            run.order.map_or_else(|| "—".into(), |o| (o + 1).to_string()),
            m.requests_per_sec,
            m.p50_us,
            m.p99_us,
            sparkline(&row.responses_per_second),
            name = row.name,
        );
    }
    page.push_str("</table></div>\n");
}

/// The heading of a part's section.
fn part_title(part: Part) -> &'static str {
    match part {
        Part::Proxies => "lb beside nginx and HAProxy (closed and open loop)",
        Part::Admin => "lb with and without --admin",
        Part::Tls => "TLS termination",
        Part::Clients => "loadgen beside wrk (loadgen's runs)",
        Part::SlowBackend => "One slow backend",
        // Holds connections with a client of its own, not loadgen: it has no runs to draw.
        Part::Idle => "Idle keep-alive connections",
    }
}

/// A small line of the responses in each second, scaled to the run's busiest second: enough to
/// see a stall or a slow start without opening the run. A run of one whole second (`--quick`)
/// has no line.
fn sparkline(values: &[u64]) -> String {
    const W: f64 = 120.0;
    const H: f64 = 24.0;
    let max = values.iter().copied().max().unwrap_or(0);
    if values.len() < 2 || max == 0 {
        return "—".into();
    }
    let step = W / (values.len() - 1) as f64;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let y = H - 1.0 - (H - 2.0) * v as f64 / max as f64;
            format!("{:.1},{y:.1}", i as f64 * step)
        })
        .collect();
    let listed: Vec<String> = values.iter().map(u64::to_string).collect();
    format!(
        "<svg class=\"spark\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-label=\"responses in each second: {0}\"><title>responses in each second: {0}</title>\
         <polyline points=\"{1}\"/></svg>",
        listed.join(", "),
        points.join(" ")
    )
}

const CSS: &str = "
body{font:15px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:12px;color:#222;background:#fff}
h1{font-size:1.2em;overflow-wrap:anywhere}
h2{font-size:1.05em;margin:1.4em 0 .4em}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
td,th{padding:2px 12px 2px 0;text-align:left;vertical-align:middle;white-space:nowrap}
td.n,th.n{text-align:right}
tr:nth-child(even) td{background:#f6f6f6}
.scroll{overflow-x:auto}
.fail{color:#b30000;font-weight:600}
svg.spark{width:120px;height:24px;display:block}
svg.spark polyline{fill:none;stroke:#0072b2;stroke-width:1.5}
";

/// A file name from free text: lower-case letters and digits, runs of anything else as one `-`.
fn slug(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_owned()
}

/// Text for HTML, between tags or in a quoted attribute.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A run's figures, as the bench reads them from loadgen's JSON.
    fn measured(rps: f64, json: &str) -> Measured {
        Measured {
            requests_per_sec: rps,
            responses: 30,
            errors: 0,
            p50_us: 400.0,
            p99_us: 900.0,
            p999_us: Some(1000.0),
            loadgen_report: Some(json.to_owned()),
            ..Measured::default()
        }
    }

    /// A tiny loadgen report as loadgen would print it: three seconds of 10 responses each, and
    /// the tail of a fourth (the last answers), 2 responses in its first 10 ms.
    fn loadgen_json(url: &str) -> String {
        let series = [10, 10, 10, 2]
            .into_iter()
            .enumerate()
            .map(|(second, responses)| loadgen::series::Second {
                second: second as u64,
                sent: responses,
                responses,
                ..Default::default()
            })
            .collect();
        let report = loadgen::Report {
            url: url.into(),
            connections: 2,
            keepalive: true,
            duration: Duration::from_millis(3010),
            requests: 32,
            responses: 32,
            requests_per_sec: 10.0,
            series,
            ..Default::default()
        };
        serde_json::to_string(&report).unwrap()
    }

    #[test]
    fn the_index_links_every_run_and_each_run_is_drawn() {
        let dir = tempfile::tempdir().unwrap();
        // A file from an earlier bench, which must not survive.
        std::fs::create_dir_all(dir.path().join("runs")).unwrap();
        std::fs::write(dir.path().join("runs/stale.html"), "old").unwrap();

        let (lb, nginx) = (loadgen_json("http://lb/"), loadgen_json("http://nginx/"));
        let (lb_m, nginx_m) = (measured(10.0, &lb), measured(9.0, &nginx));
        let closed = Load::Closed { connections: 50 };
        let open = Load::Open {
            connections: 50,
            rate: 3500.0,
        };
        let run = |part, scenario, load, round, order, measured, json| Run {
            part,
            scenario,
            load,
            round,
            order,
            measured,
            json,
        };
        let runs = [
            run(Part::Proxies, "lb", closed, 0, Some(1), &lb_m, &lb),
            run(Part::Proxies, "nginx", open, 1, Some(0), &nginx_m, &nginx),
            // lb with and without --admin runs the pair in both orders: twice in a round.
            run(Part::Admin, "lb --admin", closed, 0, Some(1), &lb_m, &lb),
            run(Part::Admin, "lb --admin", closed, 0, Some(2), &lb_m, &lb),
            run(Part::Clients, "direct backend", closed, 0, None, &lb_m, &lb),
            run(
                Part::SlowBackend,
                "haproxy random(2)",
                closed,
                0,
                Some(0),
                &lb_m,
                &lb,
            ),
        ];
        let index = write(dir.path(), "bench --quick", &runs).unwrap();
        assert_eq!(index, dir.path().join("report.html"));
        let page = std::fs::read_to_string(&index).unwrap();

        let names = [
            "proxies-lb-50-conns-round1",
            "proxies-nginx-open-3500-s-round2",
            "admin-lb-admin-50-conns-round1",
            "admin-lb-admin-50-conns-round1-2",
            "clients-direct-backend-50-conns-round1",
            "slow-backend-haproxy-random-2-50-conns-round1",
        ];
        for name in names {
            assert!(
                page.contains(&format!("href=\"runs/{name}.html\"")),
                "{page}"
            );
            assert!(
                page.contains(&format!("href=\"runs/{name}.json\"")),
                "{page}"
            );
            let run_page = std::fs::read_to_string(dir.path().join(format!("runs/{name}.html")))
                .unwrap_or_else(|e| panic!("runs/{name}.html: {e}"));
            assert!(run_page.contains("<svg"), "runs/{name}.html has no chart");
            assert!(run_page.contains("href=\"../report.html\""), "no way back");
            // The JSON is loadgen's own, so `loadgen report` reads it again.
            let json =
                std::fs::read_to_string(dir.path().join(format!("runs/{name}.json"))).unwrap();
            serde_json::from_str::<loadgen::Report>(&json).unwrap();
        }
        // A section per part, a line of each run's three whole seconds (not the tail of the
        // fourth), and nothing fetched.
        assert!(page.contains("<h2>lb beside nginx and HAProxy"), "{page}");
        assert!(page.contains("<h2>One slow backend</h2>"), "{page}");
        assert_eq!(page.matches("<h2>").count(), 4, "{page}");
        assert_eq!(page.matches("<svg class=\"spark\"").count(), names.len());
        assert!(
            page.contains("responses in each second: 10, 10, 10\""),
            "{page}"
        );
        for external in ["<script", "<link", "src=", "http://", "https://"] {
            assert!(!page.contains(external), "the index contains {external}");
        }
        assert!(!dir.path().join("runs/stale.html").exists());
    }

    #[test]
    fn runs_are_listed_by_part_then_load_then_scenario_then_round() {
        let json = loadgen_json("http://x/");
        let m = measured(1.0, &json);
        let c1 = Load::Closed { connections: 1 };
        let c50 = Load::Closed { connections: 50 };
        // As measured: round-major, the first scenario rotating.
        let run = |part, scenario, load, round| Run {
            part,
            scenario,
            load,
            round,
            order: None,
            measured: &m,
            json: &json,
        };
        let listed: Vec<String> = sorted(vec![
            run(Part::Proxies, "direct", c1, 0),
            run(Part::Proxies, "lb", c1, 0),
            run(Part::Proxies, "direct", c50, 0),
            run(Part::Proxies, "lb", c50, 0),
            run(Part::Proxies, "lb", c1, 1),
            run(Part::Proxies, "direct", c1, 1),
            run(Part::Tls, "lb", c50, 0),
        ])
        .iter()
        .map(Run::name)
        .collect();
        assert_eq!(
            listed,
            [
                "proxies-direct-1-conn-round1",
                "proxies-direct-1-conn-round2",
                "proxies-lb-1-conn-round1",
                "proxies-lb-1-conn-round2",
                "proxies-direct-50-conns-round1",
                "proxies-lb-50-conns-round1",
                "tls-lb-50-conns-round1",
            ]
        );
    }

    #[test]
    fn slugs_are_file_names() {
        assert_eq!(slug("lb --admin"), "lb-admin");
        assert_eq!(
            slug("nginx random two least_conn"),
            "nginx-random-two-least-conn"
        );
        assert_eq!(slug("open 3500/s"), "open-3500-s");
        assert_eq!(slug("50 conns, no keep-alive"), "50-conns-no-keep-alive");
    }
}
