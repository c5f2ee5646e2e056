//! The HTML report: a well-formed page, one chart per kind with the run's own data, nothing
//! fetched from elsewhere, and `loadgen report` drawing the same page from the saved JSON.
//!
//! Client: the binary (`support::loadgen`): `--html` and `loadgen report` are command-line
//! features, and the page is read from the file it writes. Target: `support::Backends`.

use std::collections::BTreeMap;

use loadgen::Report;

use crate::support::{loadgen, Backends};

/// The start tags of the page, in order, with their attributes; panics (naming the tag) when
/// an element is closed that was not open, or left open. A small checker for the HTML loadgen
/// writes: every element closed (or self-closed, or void), attribute values quoted.
fn parse(html: &str) -> Vec<(String, BTreeMap<String, String>)> {
    const VOID: [&str; 6] = ["meta", "br", "hr", "img", "input", "link"];
    let mut open: Vec<String> = Vec::new();
    let mut tags = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        let end = start + rest[start..].find('>').expect("a tag without its >");
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let top = open.pop();
            assert_eq!(top.as_deref(), Some(name), "</{name}> closes {top:?}");
            continue;
        }
        let self_closing = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let (name, mut attrs_text) = tag.split_once(' ').unwrap_or((tag, ""));
        let mut attrs = BTreeMap::new();
        while let Some(eq) = attrs_text.find("=\"") {
            let key = attrs_text[..eq].trim().to_owned();
            let value_end = attrs_text[eq + 2..]
                .find('"')
                .expect("an unquoted attribute");
            attrs.insert(key, attrs_text[eq + 2..eq + 2 + value_end].to_owned());
            attrs_text = &attrs_text[eq + 3 + value_end..];
        }
        if !self_closing && !VOID.contains(&name) {
            open.push(name.to_owned());
        }
        tags.push((name.to_owned(), attrs));
    }
    assert!(open.is_empty(), "left open: {open:?}");
    tags
}

#[test]
fn the_html_report_draws_every_chart_from_the_run() {
    let server = Backends::start(&["a", "b"]);
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let html_path = dir.path().join("run.html").display().to_string();
    let json_path = dir.path().join("run.json").display().to_string();
    let args = [
        url.as_str(),
        "-z",
        "3s",
        "-q",
        "100",
        "-c",
        "2",
        "--html",
        &html_path,
        "--json-out",
        &json_path,
    ];
    let out = loadgen(&args);
    // On a busy machine the open loop may judge its own pacing untrustworthy (exit 1): the
    // report is written either way, and it is the report that is checked here.
    assert!(matches!(out.code(), Some(0 | 1)), "{out}");
    let html = std::fs::read_to_string(&html_path).unwrap();
    let report: Report =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let seconds = report.series.len();
    // 3 s of sends; answers may spill into a fourth second or more on a busy machine.
    assert!(seconds >= 3, "{}", report.render_series());

    let tags = parse(&html);
    // Nothing from elsewhere: no script, stylesheet, image, frame or link to follow.
    for (name, attrs) in &tags {
        assert!(
            !["script", "link", "img", "iframe", "object", "embed"].contains(&name.as_str()),
            "<{name}>"
        );
        for key in ["src", "href", "xlink:href"] {
            assert!(!attrs.contains_key(key), "<{name} {key}=...>");
        }
    }
    assert!(!html.contains("url(") && !html.contains("@import"));

    // One figure per chart, each with an SVG; the open loop adds the omission chart.
    let figures: Vec<&str> = tags
        .iter()
        .filter(|(name, _)| name == "figure")
        .filter_map(|(_, a)| a.get("id").map(String::as_str))
        .collect();
    assert_eq!(
        figures,
        [
            "chart-throughput",
            "chart-latency",
            "chart-backends",
            "chart-status",
            "chart-spectrum",
            "chart-omission"
        ]
    );
    assert_eq!(
        tags.iter().filter(|(n, _)| n == "svg").count(),
        figures.len()
    );

    // The time charts have one point per second of the run, for every line and band.
    let points = |series: &str| -> Vec<usize> {
        tags.iter()
            .filter(|(_, a)| a.get("data-series").map(String::as_str) == Some(series))
            .map(|(_, a)| a["data-points"].parse().unwrap())
            .collect()
    };
    assert_eq!(points("sent"), [seconds]);
    assert_eq!(points("answered"), [seconds]);
    assert_eq!(points("p99"), [seconds]);
    assert_eq!(points("a"), [seconds]);
    assert_eq!(points("b"), [seconds]);
    assert_eq!(points("2xx"), [seconds]);
    assert_eq!(points("errors"), [seconds]);
    assert_eq!(points("uncorrected").len(), 1);
    assert_eq!(points("corrected").len(), 2);
    // Axes say their units.
    for label in [
        "time (s)",
        "requests/s",
        "share of responses (%)",
        "percentile (log scale)",
    ] {
        assert!(html.contains(label), "no axis labelled {label}");
    }
    assert!(html.contains("latency (µs)") || html.contains("latency (ms)"));
    // The summary has the run's numbers.
    assert!(html.contains(&format!("{} responses", report.responses)));

    // `loadgen report` draws the same page from the JSON.
    let again = dir.path().join("again.html").display().to_string();
    let args = ["report", json_path.as_str(), "--html", &again];
    let out = loadgen(&args);
    assert!(matches!(out.code(), Some(0 | 1)), "{out}");
    assert!(out.stdout().contains("Requests/sec"));
    assert_eq!(std::fs::read_to_string(&again).unwrap(), html);
}
