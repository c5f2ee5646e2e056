//! The `lb` binary's command line: each mistake exits 2 with a message naming the flag before
//! anything binds, a taken port exits 1 with one line, `-p 0` says where it listens, `-l -`
//! keeps stdout for log lines only, and `--trace` tells the life of a request in order.
//!
//! One-shot runs with `assert_cmd`; a running lb through the harness, with reqwest.

use assert_cmd::Command;
use tests::{get, PATIENCE};

use crate::support::{assert_log_line, lb_process, Backend, LB};

fn lb() -> Command {
    let mut command = Command::new(LB);
    command.timeout(PATIENCE);
    command
}

#[test]
fn no_backend_is_a_usage_error() {
    let output = lb().assert().code(2).get_output().clone();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Usage:"), "{stderr}");
    assert!(
        stderr.contains("at least one backend is required: add -b PREFIX HOST:PORT"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

/// Each bad command line exits 2, says what is wrong with which flag on stderr, and prints
/// nothing on stdout (where log lines would go).
#[test]
fn each_command_line_error_exits_2_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["-b", "/", "nonsense"],
            "invalid backend address 'nonsense' for -b /: expected HOST:PORT",
        ),
        (
            &["-b", "/", "127.0.0.1"],
            "invalid backend address '127.0.0.1' for -b /: expected HOST:PORT",
        ),
        (
            &["-b", "api", "127.0.0.1:1"],
            "invalid prefix 'api' for -b api 127.0.0.1:1: expected a path starting with '/'",
        ),
        (
            &["--connect-timeout", "soon", "-b", "/", "127.0.0.1:1"],
            "--connect-timeout",
        ),
        (&["--grace", "10", "-b", "/", "127.0.0.1:1"], "--grace"),
        (
            &["-p", "eighty", "-b", "/", "127.0.0.1:1"],
            "invalid -p 'eighty': expected PORT or IP:PORT",
        ),
        (
            &["-b", "/", "127.0.0.1:1", "-r"],
            "-r, -v and -w apply to the next -b",
        ),
        (
            &["-w", "0", "-b", "/", "127.0.0.1:1"],
            "invalid -w \"0\": a weight is a whole number from 1 to 1000, e.g. -w 5 -b / 127.0.0.1:1",
        ),
        (&["-w", "1001", "-b", "/", "127.0.0.1:1"], "invalid -w \"1001\""),
        (
            &["--balance", "fastest", "-b", "/", "127.0.0.1:1"],
            "invalid --balance \"fastest\": expected one of round-robin, least-conn, p2c, ewma, hash:ip",
        ),
        (
            &["--balance", "hash:header:", "-b", "/", "127.0.0.1:1"],
            "invalid --balance \"hash:header:\"",
        ),
        (
            &["--hash-balance-factor", "0.5", "-b", "/", "127.0.0.1:1"],
            "invalid --hash-balance-factor \"0.5\"",
        ),
        (&["-b", "/"], "-b"),
        (
            &["--no-such-flag", "-b", "/", "127.0.0.1:1"],
            "--no-such-flag",
        ),
        (
            &["--health-check", "health", "-b", "/", "127.0.0.1:1"],
            "invalid --health-check 'health'",
        ),
    ];
    for (args, expected) in cases {
        let output = lb().args(*args).assert().code(2).get_output().clone();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expected),
            "lb {}: stderr should contain {expected:?}:\n{stderr}",
            args.join(" ")
        );
        assert!(
            output.stdout.is_empty(),
            "lb {}: stdout: {:?}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

#[test]
fn help_exits_0() {
    let output = lb().arg("--help").assert().success().get_output().clone();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("-b") && stdout.contains("Examples:"),
        "{stdout}"
    );
}

/// A port someone else holds: exit 1 with one line that names the address.
#[test]
fn a_taken_port_exits_1_with_one_line_naming_the_address() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let output = lb()
        .args(["-p", &addr, "-b", "/", "127.0.0.1:1"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.starts_with("Adding backend for "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    assert!(
        errors[0].starts_with("lb: ") && errors[0].contains(&addr),
        "{stderr}"
    );
    assert!(!stderr.contains("Starting LB"), "{stderr}");
}

/// `-p 0 -l -`: the startup lines go to stderr (with the port the system picked), and stdout
/// carries nothing but one log line per request, in the original's format.
#[test]
fn port_0_reports_the_address_and_stdout_carries_only_log_lines() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let mut lb = lb_process(&["-p", "0", "-l", "-", "-b", "/", &a_addr, "-b", "/", &b_addr]);
    let addr = lb.addr;
    lb.check(
        addr.ip().is_loopback() && addr.port() != 0,
        format!("-p 0 should listen on 127.0.0.1 with a real port, not {addr}"),
    );
    let startup = format!("Adding backend for / : {a_addr} [redirect=0,prefix_replacement=/]");
    let has_startup = lb.stderr_lines().iter().any(|l| l.contains(&startup));
    lb.check(has_startup, "the original's startup line for each -b");

    for expected in ["a", "b", "a", "b"] {
        let reply = get(addr, "/");
        lb.check(
            reply.status == 200 && reply.served_by() == expected,
            format!("expected 200 from {expected}, got {reply:?}"),
        );
    }
    let lines = lb.wait_stdout_lines(4, PATIENCE).unwrap();
    lb.signal("TERM").unwrap();
    let status = lb.wait_exit(PATIENCE).unwrap();
    lb.check(status.success(), format!("exit status {status}"));

    let lines_at_exit = lb.stdout_lines().len();
    lb.check(lines_at_exit == 4, "exactly four lines on stdout");
    for (n, line) in lines.iter().enumerate() {
        let backend = if n % 2 == 0 { &a_addr } else { &b_addr };
        assert_log_line(line, "GET", "/", backend);
    }
}

/// `--trace`: one request, and the stages it went through, in order, on stderr.
#[test]
fn trace_shows_each_stage_of_a_request_in_order() {
    let a = Backend::start("a");
    let a_addr = a.addr.to_string();
    let mut lb = lb_process(&["-p", "0", "--trace", "-b", "/", &a_addr]);

    let reply = get(lb.addr, "/");
    lb.check(reply.status == 200, format!("{reply:?}"));
    lb.wait_stderr("done status=200", PATIENCE).unwrap();

    let trace: Vec<String> = lb
        .stderr_lines()
        .iter()
        .filter(|line| line.starts_with("trace conn="))
        .cloned()
        .collect();
    let mut position = 0;
    for stage in [
        "accepted",
        "request head read",
        "route:",
        "pick:",
        "upstream:",
        "response head received",
        "done status=200",
    ] {
        match trace[position..]
            .iter()
            .position(|line| line.contains(stage))
        {
            Some(found) => position += found + 1,
            None => lb.fail(format!(
                "no trace line with {stage:?} after line {position}"
            )),
        }
    }
}
