//! The original article's walkthrough: requests alternate, the log says so, in the documented format.
//!
//! Clients: reqwest, one new connection per request (as the documented curl commands are).

use std::time::Duration;

use tests::http::{client, get, send, url};
use tests::{cluster, port_is_taken, project_root};

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
    let cluster = cluster(2, &[]);
    let mut lb = cluster.lb;
    let mut answered = Vec::new();
    for _ in 0..6 {
        let reply = get(lb.addr, "/");
        assert_eq!(reply.status, 200);
        assert!(reply.text().contains("RESTful API demo"));
        answered.push(reply.served_by().to_string());
    }
    let names: Vec<String> = cluster
        .backends
        .iter()
        .map(|b| b.addr.to_string())
        .collect();
    let expected: Vec<String> = (0..6).map(|i| names[i % 2].clone()).collect();
    assert_eq!(answered, expected, "X-Served-By must alternate");

    let log: Vec<String> = (0..6)
        .map(|_| match lb.next_stdout(Duration::from_secs(5)) {
            Some(line) => line,
            None => lb.fail("fewer log lines than requests on lb's stdout"),
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

/// The fenced `text` blocks of docs/walkthrough.md whose lines start with `prefix`.
fn documented_lines(doc: &str, prefix: &str) -> Vec<String> {
    doc.lines()
        .map(str::trim)
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// A line with what differs from run to run made comparable: the real backends' and lb's addresses
/// become the walkthrough's fixed ones, the client's port `PORT`, timings `T`, byte counts `N` (the
/// demo page names its backend, so its size depends on the port's digits).
fn normalized(line: &str, ports: &[(String, &str)]) -> String {
    let mut line = line.to_string();
    for (real, documented) in ports {
        line = line.replace(real.as_str(), documented);
    }
    let mut out = String::new();
    let mut rest = line.as_str();
    while let Some(c) = rest.chars().next() {
        let number = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let replacement = if !c.is_ascii_digit() {
            None
        } else if ["+", "connect ", "duration="]
            .iter()
            .any(|p| out.ends_with(p))
        {
            Some("T")
        } else if out.ends_with("bytes=") {
            Some("N")
        } else if out.ends_with("accepted from 127.0.0.1:") {
            Some("PORT")
        } else {
            None
        };
        match replacement {
            Some(r) => {
                out.push_str(r);
                rest = &rest[number..];
            }
            None => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out
}

/// Section 3 and 4 of the walkthrough, run for real: the log excerpt and the `--trace` block show
/// what `lb` prints for the documented commands (three GETs and a POST, `--threads 1`), line by
/// line, in order.
#[test]
fn the_walkthrough_document_shows_what_lb_really_prints() {
    let doc = std::fs::read_to_string(project_root().join("docs/walkthrough.md")).unwrap();
    let log_doc: Vec<String> = documented_lines(&doc, "17")
        .into_iter()
        .filter(|l| l.contains(" backend="))
        .collect();
    let trace_doc = documented_lines(&doc, "trace conn=");
    assert!(
        log_doc.len() == 4 && trace_doc.len() > 10,
        "docs/walkthrough.md should show lb's log and trace"
    );

    let cluster = cluster(2, &["--trace", "--threads", "1"]);
    let (mut lb, backends) = (cluster.lb, cluster.backends);
    let addr = lb.addr;
    for _ in 0..3 {
        assert_eq!(get(addr, "/").status, 200);
    }
    // What `curl -d n1=1 -d n2=2.5` sends.
    let reply = send(
        client()
            .post(url(addr, "/api/v1/sum"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("n1=1&n2=2.5"),
    );
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "{\"result\":3.5}")
    );
    let log: Vec<String> = (0..4)
        .map(|_| match lb.next_stdout(Duration::from_secs(5)) {
            Some(line) => line,
            None => lb.fail("fewer log lines than requests on lb's stdout"),
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let ports = [
        (backends[0].addr.to_string(), "127.0.0.1:8910"),
        (backends[1].addr.to_string(), "127.0.0.1:8911"),
        (addr.to_string(), "127.0.0.1:8000"),
    ];
    for (documented, real) in log_doc.iter().zip(&log) {
        assert_eq!(
            shape(documented),
            shape(&normalized(real, &ports)),
            "log line {documented:?} vs real {real:?}"
        );
    }
    let real: Vec<String> = lb
        .stderr_lines()
        .iter()
        .filter(|l| l.starts_with("trace conn="))
        .map(|l| normalized(l, &ports))
        .collect();
    // Every documented line, in order, among the real ones.
    let mut from = 0;
    for line in &trace_doc {
        let want = normalized(line, &[]);
        match real[from..].iter().position(|r| *r == want) {
            Some(i) => from += i + 1,
            None => panic!("documented trace line\n  {line}\nis not printed (in this order) by a real run:\n{}", real.join("\n")),
        }
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
    let output = tests::cargo()
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
