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

    let (mut lb, addr, backends) = setup(&["--trace", "--threads", "1"]);
    for _ in 0..3 {
        assert_eq!(http_get(addr, "/").unwrap().0, 200);
    }
    let (status, body) = http_post(addr, "/api/v1/sum", "n1=1&n2=2.5");
    assert_eq!((status, body.as_str()), (200, "{\"result\":3.5}"));
    let log: Vec<String> = (0..4)
        .map(|_| {
            lb.next_stdout(Duration::from_secs(5))
                .unwrap_or_else(|| panic!("{}", lb.transcript()))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let ports = [
        (backends[0].1.to_string(), "127.0.0.1:8910"),
        (backends[1].1.to_string(), "127.0.0.1:8911"),
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

/// `POST path` with a form body on a fresh connection: status and body.
fn http_post(addr: std::net::SocketAddr, path: &str, form: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
    let body = raw.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
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
