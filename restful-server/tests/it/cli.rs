//! The command line as a user meets it: what is printed and which exit status comes back.
//!
//! One-shot runs with `assert_cmd`; a running server through the harness, with reqwest.

use std::time::Duration;

use tests::{get, PATIENCE};

use crate::{server, BIN};

/// Runs the binary to completion; `assert_cmd` prints the command, stdout and stderr if the exit
/// status is not the expected one. Returns stdout and stderr.
fn run_expecting(args: &[&str], code: i32) -> (String, String) {
    let assert = assert_cmd::Command::new(BIN)
        .args(args)
        .timeout(PATIENCE)
        .assert()
        .code(code);
    let output = assert.get_output();
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_flag_is_clap_s_error_and_exit_2() {
    let (_, stderr) = run_expecting(&["--bogus"], 2);
    assert!(stderr.contains("--bogus"), "{stderr}");
}

#[test]
fn a_bad_port_is_one_line_naming_p_and_exit_2() {
    for bad in ["99999", "not-a-port"] {
        let (_, stderr) = run_expecting(&["-p", bad], 2);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(bad), "{stderr}");
        assert!(stderr.contains("-p expects PORT or IP:PORT"), "{stderr}");
    }
}

#[test]
fn a_bad_delay_is_one_line_naming_the_flag_and_exit_2() {
    for (flag, bad) in [
        ("--delay", "20"),
        ("--delay-jitter", "soon"),
        ("--delay", "5h"),
    ] {
        let (stdout, stderr) = run_expecting(&["-p", "0", flag, bad], 2);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(flag) && stderr.contains(bad), "{stderr}");
        assert!(
            stderr.contains("e.g. 20ms") || stderr.contains("at most 1m"),
            "{stderr}"
        );
        assert_eq!(stdout, "", "nothing may claim to be listening");
    }
}

#[test]
fn help_says_how_to_listen_on_all_interfaces() {
    let (stdout, _) = run_expecting(&["--help"], 0);
    assert!(stdout.contains("-p 0.0.0.0:PORT"), "{stdout}");
    assert!(stdout.contains("/api/v1/bytes?n=N"), "{stdout}");
}

#[test]
fn a_taken_port_is_one_line_and_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (stdout, stderr) = run_expecting(&["-p", &addr], 1);
    assert_eq!(
        stderr,
        format!(
            "restful-server: cannot listen on {addr}: Address already in use \
             (is another server running? pick another port with -p)\n"
        )
    );
    assert_eq!(stdout, "", "nothing may claim to be listening");
}

#[test]
fn a_missing_docroot_is_one_line_and_exit_1() {
    let (_, stderr) = run_expecting(&["-p", "0", "-d", "/no/such/docroot"], 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("-d /no/such/docroot"), "{stderr}");
}

#[test]
fn sigterm_stops_the_server_with_exit_0() {
    let mut server = server(&["-p", "0"]);
    assert_eq!(get(server.addr, "/").status, 200);
    server.signal("TERM").unwrap();
    let status = server.wait_exit(PATIENCE).unwrap();
    if status.code() != Some(0) {
        server.fail(format!("SIGTERM gave {status}"));
    }
    // Once it has exited nothing listens there any more.
    let connect = std::net::TcpStream::connect_timeout(&server.addr, Duration::from_secs(2));
    assert!(connect.is_err(), "still listening after exit");
}

#[test]
fn ctrl_c_stops_the_server_with_exit_0() {
    let mut server = server(&["-p", "0"]);
    server.signal("INT").unwrap();
    let status = server.wait_exit(PATIENCE).unwrap();
    if status.code() != Some(0) {
        server.fail(format!("SIGINT gave {status}"));
    }
}
