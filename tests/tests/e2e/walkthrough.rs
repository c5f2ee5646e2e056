//! The original article's walkthrough: requests alternate, the log says so, in the documented format.

use std::time::Duration;

use tests::{http_get, port_is_taken, project_root};

use crate::{served_by, setup};

/// `1465822060 GET / backend=127.0.0.1:8910` with every run of digits replaced by `N`, so a line
/// from the docs and a line from a live run (other time, other port) can be compared.
fn shape(line: &str) -> String {
    let mut out = String::new();
    for c in line.chars() {
        if !c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('N') {
            out.push('N');
        }
    }
    out
}

#[test]
fn requests_alternate_and_each_log_line_names_the_backend_that_answered() {
    let (mut lb, addr, backends) = setup(&[]);
    let mut answered = Vec::new();
    for _ in 0..6 {
        let (status, headers, body) = http_get(addr, "/").unwrap();
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&body).contains("RESTful API demo"));
        answered.push(served_by(&headers));
    }
    let names: Vec<String> = backends.iter().map(|(_, a)| a.to_string()).collect();
    let expected: Vec<String> = (0..6).map(|i| names[i % 2].clone()).collect();
    assert_eq!(answered, expected, "X-Served-By must alternate");

    let log: Vec<String> = (0..6)
        .map(|_| {
            lb.next_stdout(Duration::from_secs(5))
                .unwrap_or_else(|| panic!("{}", lb.transcript()))
        })
        .collect();
    for (line, name) in log.iter().zip(&expected) {
        let (time, rest) = line.split_once(' ').unwrap();
        assert!(
            time.parse::<u64>().is_ok(),
            "log line starts with unix seconds: {line}"
        );
        assert_eq!(rest, format!("GET / backend={name}"), "log line: {line}");
    }
}

#[test]
fn the_walkthrough_document_shows_what_lb_really_prints() {
    let doc = std::fs::read_to_string(project_root().join("docs/walkthrough.md")).unwrap();
    let documented: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains(" backend="))
        .collect();
    assert!(
        documented.len() >= 4,
        "docs/walkthrough.md should show lb's log lines"
    );

    let (mut lb, addr, _backends) = setup(&[]);
    http_get(addr, "/").unwrap();
    let real = lb.next_stdout(Duration::from_secs(5)).unwrap();
    for line in documented {
        assert_eq!(
            shape(line.trim()),
            shape(&real),
            "documented line {line:?} differs from real output {real:?}"
        );
    }
    let startup = lb.stderr_lines().join("\n");
    assert!(
        doc.contains(&shape_free_startup(&startup)),
        "docs should show lb's startup lines:\n{startup}"
    );
}

/// The first startup line with its port numbers replaced by the walkthrough's fixed ones.
fn shape_free_startup(stderr: &str) -> String {
    let first = stderr.lines().next().unwrap_or_default();
    // "Adding backend for / : 127.0.0.1:PORT [redirect=0,prefix_replacement=/]"
    let (head, tail) = first.split_once("127.0.0.1:").unwrap();
    let tail = tail.split_once(' ').map(|(_, t)| t).unwrap_or_default();
    format!("{head}127.0.0.1:8910 {tail}")
}

/// `cargo xtask demo` on its real ports, when they are free.
#[test]
fn cargo_xtask_demo_passes() {
    if let Some(port) = [8000, 8910, 8911].into_iter().find(|p| port_is_taken(*p)) {
        eprintln!("SKIPPED cargo_xtask_demo_passes: port {port} is taken on this machine, and the demo uses fixed ports");
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .current_dir(project_root())
        .args(["xtask", "demo", "-n", "6"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("Verdict: PASS"),
        "cargo xtask demo failed ({})\n--- stdout:\n{stdout}\n--- stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let logged: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" GET / backend="))
        .collect();
    assert_eq!(
        logged.len(),
        6,
        "the demo shows lb's log lines verbatim:\n{stdout}"
    );
    assert!(
        logged[0].ends_with("backend=127.0.0.1:8910")
            && logged[1].ends_with("backend=127.0.0.1:8911")
    );
}
