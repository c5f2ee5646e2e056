//! When a backend fails before answering, which requests `lb` sends again to the next backend,
//! and which it must not (see `lb/src/retry.rs` for the rules). Each test puts a backend that
//! breaks in a chosen way first in the rotation and a healthy one second, then checks what the
//! client got and, above all, how many copies of the request each backend received.
//!
//! Clients: reqwest, one new connection per request (so that reqwest itself never has a reused
//! connection to retry on); raw bytes only to see a response cut short.

use std::time::Duration;

use tests::bad_backend::{BadBackend, Behaviour};
use tests::http::{client, get, send, url};
use tests::{eventually, RawClient};

use crate::support::lb;

/// A backend that reads every request and then breaks the connection the given way.
fn breaking(how: Behaviour) -> BadBackend {
    let backend = BadBackend::start().unwrap();
    backend.set_override(Some(how));
    backend
}

/// A GET that the first backend read and then reset is answered by the second, once; the trace
/// says why it was repeated and the log names the backend that answered.
#[test]
fn a_get_lost_to_a_reset_is_retried_on_the_next_backend() {
    let (bad, good) = (breaking(Behaviour::Reset), BadBackend::start().unwrap());
    let (mut proc, addr) = lb(&[bad.addr(), good.addr()], &["--trace", "-l", "-"]);
    let r = get(addr, "/x");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("GET /x"), "{}", r.text());
    assert_eq!(bad.requests().len(), 1, "the first backend got it once");
    assert_eq!(good.requests().len(), 1, "the second backend got it once");
    let retry = proc
        .wait_stderr("retry 1/1 on", Duration::from_secs(5))
        .unwrap();
    assert!(
        retry.contains(&good.addr().to_string()) && retry.contains("before response head"),
        "{retry}"
    );
    let line = proc.wait_stdout("GET /x", Duration::from_secs(5)).unwrap();
    assert!(
        line.ends_with(&format!("backend={}", good.addr())),
        "the log names the backend that answered: {line}"
    );
}

/// A POST may have been acted on by a backend that read it and then died: it is never sent a
/// second time (502), whether the backend reset the connection or closed it.
#[test]
fn a_post_is_never_delivered_twice() {
    for how in [Behaviour::Reset, Behaviour::Drop] {
        let (bad, good) = (breaking(how.clone()), BadBackend::start().unwrap());
        let (_lb, addr) = lb(&[bad.addr(), good.addr()], &[]);
        let r = send(client().post(url(addr, "/order")).body("hello"));
        assert_eq!(r.status, 502, "{how:?}: {}", r.text());
        assert_eq!(bad.requests().len(), 1, "{how:?}: the POST arrived once");
        assert!(bad.requests()[0].complete && bad.requests()[0].body == b"hello");
        std::thread::sleep(Duration::from_millis(100));
        assert!(good.requests().is_empty(), "{how:?}: never a second copy");
    }
}

/// A POST that never left (the first backend refuses connections) goes to the next backend.
#[test]
fn a_post_that_never_left_goes_to_the_next_backend() {
    let closed = BadBackend::start().unwrap();
    let closed_addr = closed.addr();
    closed.stop(); // nothing listens there any more: connecting is refused
    let good = BadBackend::start().unwrap();
    let (_lb, addr) = lb(&[closed_addr, good.addr()], &[]);
    let r = send(client().post(url(addr, "/order")).body("hello"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(good.requests().len(), 1);
    assert_eq!(good.requests()[0].body, b"hello");
}

/// An idempotent request with a small body (a PUT of 1000 bytes) is repeated with its whole
/// body; with a body over `--retry-body-bytes` it is not repeated at all.
#[test]
fn a_put_is_retried_with_its_body_only_under_the_limit() {
    let body = vec![b'p'; 1000];
    let put = |addr| send(client().put(url(addr, "/doc")).body(body.clone()));

    let (bad, good) = (breaking(Behaviour::Drop), BadBackend::start().unwrap());
    let (_lb, addr) = lb(&[bad.addr(), good.addr()], &[]);
    let r = put(addr);
    assert_eq!(r.status, 200, "{}", r.text());
    let received = good.requests();
    assert_eq!(received.len(), 1);
    assert!(
        received[0].complete && received[0].body == body,
        "the whole body again"
    );

    let (bad, good) = (breaking(Behaviour::Drop), BadBackend::start().unwrap());
    let (_lb, addr) = lb(&[bad.addr(), good.addr()], &["--retry-body-bytes", "512"]);
    let r = put(addr);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(bad.requests().len(), 1);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        good.requests().is_empty(),
        "a body that was not kept is not replayed"
    );
}

/// `--retries N` bounds the attempts at N + 1, whatever the size of the group; by default every
/// member gets one chance; `--retries 0` tries one backend only.
#[test]
fn retries_are_bounded() {
    for (flags, attempts) in [
        (&["--retries", "1"][..], 2),
        (&[][..], 3),
        (&["--retries", "0"][..], 1),
    ] {
        let bad: Vec<BadBackend> = (0..3).map(|_| breaking(Behaviour::Reset)).collect();
        let addrs: Vec<_> = bad.iter().map(BadBackend::addr).collect();
        let (_lb, addr) = lb(&addrs, flags);
        let r = get(addr, "/x");
        assert_eq!(r.status, 502, "{flags:?}: {}", r.text());
        let total = || bad.iter().map(|b| b.requests().len()).sum::<usize>();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(total(), attempts, "{flags:?}: copies received in all");
        assert!(
            r.text().contains(&format!("after {attempts} attempt")),
            "{flags:?}: the 502 says how often lb tried: {}",
            r.text()
        );
    }
}

/// Once a response has started, it is the answer: a body cut short is not repeated elsewhere
/// (the client sees the truncation), and the next backend never hears of the request.
#[test]
fn a_started_response_is_never_retried() {
    let cut = BadBackend::start().unwrap(); // `/short`: a head, 100 of 1000 bytes, then FIN
    let good = breaking(Behaviour::Status(200));
    let (_lb, addr) = lb(&[cut.addr(), good.addr()], &[]);
    let mut client = RawClient::connect(addr);
    client.send(b"GET /short HTTP/1.1\r\nHost: lb.test\r\n\r\n");
    let r = client
        .any_response(false)
        .expect("the head of the cut response");
    assert_eq!(r.status, 200);
    assert!(!r.complete, "the client sees the truncation");
    assert!(eventually(Duration::from_secs(2), || cut.requests().len() == 1));
    std::thread::sleep(Duration::from_millis(100));
    assert!(good.requests().is_empty(), "not retried");
}
