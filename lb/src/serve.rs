//! Step 1 of a request, continued: one client connection, served request after request.
//!
//! [`serve_http`] is the connection's loop; the HTTP/1.1 it speaks is `h1/server.rs`. Each turn:
//!
//! 1. wait for the next request head, or for the connection to end: the client closes, the
//!    watchdog's header or idle timeout runs out (`watchdog.rs`), or shutdown begins (an idle
//!    connection closes at once). A connection idle for a second is *parked*: its buffers are
//!    let go of, and only the socket is kept until the client's next bytes arrive (this is what
//!    nginx and HAProxy do between requests, and why ten thousand idle clients cost them little);
//! 2. a head lb refuses gets 400 or 431 and the connection closes, with a log line of its own;
//! 3. the request goes to [`crate::proxy::handle`] (steps 2 to 8). Meanwhile the loop watches
//!    the socket: a client that hangs up while its answer is awaited ends the request (logged as
//!    499), and bytes of a next request are kept;
//! 4. the response is written (`h1::server::write_response`), then the connection carries the
//!    next request if both messages ended cleanly and nobody asked to close; after a `101` it
//!    becomes a tunnel between client and backend instead.
//!
//! Requests on one connection are answered one at a time, in order: pipelined requests wait in
//! the buffer.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::timeout;

use crate::access_log::Record;
use crate::downstream::ConnInfo;
use crate::h1::server::{self, lock, Asked, Client, Refused, Shared, Written};
use crate::trace::Trace;
use crate::upstream::Upstream;
use crate::watchdog::{Expired, Watchdog};
use crate::Balancer;

/// Serve HTTP/1.1 on `io` (plain or TLS) until the client closes, idles out, or shutdown ends it.
pub async fn serve_http<S>(
    io: S,
    info: &Arc<ConnInfo>,
    balancer: &Balancer,
    stop: watch::Receiver<bool>,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client: Shared<S> = Arc::new(Mutex::new(Client::new(io)));
    let mut watchdog = Watchdog::new(info.clone(), &balancer.timeouts);
    let max_head = balancer.limits.max_header_bytes;
    let stopping = stop.clone();
    let mut stop = stop;
    let mut stop_signal = pin!(stopped(&mut stop));
    // Where the request being answered runs (steps 2 to 8, [`answer`]): on the heap, since it is
    // large and an idle connection should not keep room for it; kept from one request to the next
    // (the allocation, not the request), and let go of when the connection parks.
    let mut slot = None;
    loop {
        if lock(&client).has_input() {
            info.head_bytes_arrived(); // part of the next head came with the last request
        }
        // 1. The next request head.
        let arrived = || info.head_bytes_arrived();
        let parsed = tokio::select! {
            biased;
            head = poll_fn(|cx| lock(&client).poll_head(max_head, &arrived, cx)) => head,
            _ = &mut stop_signal => return close(&client, Ended::IdleDuringShutdown).await,
            expired = watchdog.expired() => {
                match expired {
                    Expired::Head => {
                        return Ended::HeadTimeout(balancer.timeouts.header);
                    }
                    Expired::Idle => {
                        info.trace.conn_event(format_args!(
                            "closing: idle (--idle-timeout / --header-timeout)"
                        ));
                        return close(&client, Ended::Closed).await;
                    }
                    Expired::Park => {
                        info.trace.conn_event(format_args!(
                            "parking: idle, letting go of the connection's buffers"
                        ));
                        info.set_parked(true);
                        lock(&client).release();
                        slot = None;
                    }
                }
                continue;
            }
        };
        // 2. A head lb refuses.
        let parsed = match parsed {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ended::Closed,
            Err(refused) => {
                if let Some(status) = refused.status() {
                    lock(&client).refuse(status);
                    // Logged now, not when the connection is gone (which lingering may delay).
                    log_refused(info.peer, balancer, status.as_u16());
                    return close(&client, Ended::Refused(refused)).await;
                }
                return Ended::Refused(refused);
            }
        };
        if info.is_parked() {
            // Its next deadline (parking again) may be sooner than the watchdog's timer. (A busy
            // connection never moves the timer: it costs nothing per request.)
            info.set_parked(false);
            watchdog.look_again();
        }
        // 3 and 4: the request answered, in the slot.
        let handling = slot.get_or_insert_with(|| Box::pin(None));
        handling
            .as_mut()
            .set(Some(answer(&client, parsed, balancer, info, &stopping)));
        let next = match handling.as_mut().as_pin_mut() {
            Some(answering) => answering.await,
            None => Next::End(Ended::Closed),
        };
        handling.as_mut().set(None);
        match next {
            Next::KeepAlive => {}
            Next::Close(ended) => return close(&client, ended).await,
            Next::End(ended) => return ended,
            Next::Tunnel(tunnel_to) => {
                let (upstream, number) = *tunnel_to;
                drop(slot);
                // Boxed: rare, and large (an idle connection should not keep room for it).
                return Box::pin(tunnel(client, upstream, &info.trace, number)).await;
            }
        }
    }
}

/// What the connection does once a request has been answered.
enum Next {
    /// Read the next request.
    KeepAlive,
    /// Close, in order.
    Close(Ended),
    /// End at once (the client is gone, or the socket failed).
    End(Ended),
    /// Become a tunnel to this upstream connection (after a `101`; the request's number). Boxed:
    /// rare, and large.
    Tunnel(Box<(Upstream, u64)>),
}

/// Steps 2 to 8 for the request just parsed (`proxy::handle`), then its response written (step
/// 8's end); meanwhile a client that hangs up is noticed (the request is then dropped, and logged
/// as 499).
async fn answer<S>(
    client: &Shared<S>,
    parsed: server::Parsed,
    balancer: &Balancer,
    info: &Arc<ConnInfo>,
    stopping: &watch::Receiver<bool>,
) -> Next
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max_head = balancer.limits.max_header_bytes;
    let mut asked = Asked {
        method: parsed.head.method.clone(),
        version: parsed.head.version,
        keep_alive: parsed.keep_alive,
        body_unclaimed: false,
    };
    let body = server::request_body(client, parsed.body, balancer.timeouts.body_idle);
    // In a block of its own: once it has answered, the handler's state (a few KiB) is gone, and
    // the writing below may reuse its room in this future.
    let answered = {
        let mut handling = pin!(crate::proxy::handle(parsed.head, body, balancer, info));
        poll_fn(|cx| {
            if let Poll::Ready(response) = handling.as_mut().poll(cx) {
                return Poll::Ready(Some(response));
            }
            match lock(client).poll_closed(max_head, cx) {
                Poll::Ready(()) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    };
    let Some(response) = answered else {
        // The client hung up: the request is dropped with this future, and logged as 499.
        return Next::End(Ended::Closed);
    };
    let shutting_down = *stopping.borrow();
    if shutting_down {
        asked.keep_alive = false; // finish this request, then close
    }
    let (parts, mut body) = response.into_parts();
    // Only the connection itself holds it: nobody reads the request body any more.
    asked.body_unclaimed = Arc::strong_count(client) == 1;
    let stall = balancer.timeouts.body_idle;
    let (fields, added) = body.take_fields();
    let head = server::ResponseHead {
        parts: &parts,
        fields: &fields,
        added,
    };
    let written = server::write_response(client, head, &mut body, &asked, max_head, stall).await;
    // A tunnel starts from a request read to its end: nothing of it may leak into the tunnel.
    if parts.status == StatusCode::SWITCHING_PROTOCOLS && lock(client).body_done() {
        if let (Ok(Written::Whole(_)), Some((upstream, number))) = (&written, body.take_tunnel()) {
            return Next::Tunnel(Box::new((upstream, number)));
        }
    }
    drop(body);
    match written {
        Ok(Written::Whole(true)) if lock(client).finish_body() => Next::KeepAlive,
        Ok(Written::Whole(_)) if shutting_down => Next::Close(Ended::Shutdown),
        Ok(Written::Whole(_) | Written::Cut) => Next::Close(Ended::Closed),
        Err(_) => Next::End(Ended::Closed),
    }
}

/// Close the connection in order: what is queued goes out, then the end of the stream; then, if
/// the client may still be sending, what it sends is read and dropped until it closes too (a
/// *lingering close*), so that its unread bytes do not make the kernel reset the connection and
/// destroy the response on its way. All within [`LINGER`].
async fn close<S: AsyncRead + AsyncWrite + Unpin>(
    client: &Mutex<Client<S>>,
    ended: Ended,
) -> Ended {
    let closing = async {
        let _ = poll_fn(|cx| lock(client).poll_close(cx)).await;
        if lock(client).needs_lingering() {
            poll_fn(|cx| lock(client).poll_linger(cx)).await;
        }
    };
    // Boxed: once per connection, and an idle connection should not keep room for it.
    let _ = Box::pin(timeout(LINGER, closing)).await;
    ended
}

/// How long closing a connection may take, lingering included (nginx lingers up to 30 s, 5 s
/// without a byte; lb's clients are tests and demos, which close at once).
const LINGER: Duration = Duration::from_secs(2);

/// After `101 Switching Protocols`, copy bytes both ways between client and backend until either
/// side closes (WebSocket and friends). What either side sent right behind its head goes first.
async fn tunnel<S>(client: Shared<S>, upstream: Upstream, trace: &Trace, n: u64) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(client) = Arc::try_unwrap(client) else {
        trace.event(
            8,
            n,
            format_args!("tunnel not started: the request body is still read"),
        );
        return Ended::Closed;
    };
    let client = client
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (mut client, client_early): (S, Bytes) = client.into_tunnel();
    let (mut backend, backend_early): (_, Bytes) = upstream.conn.into_tunnel();
    let early = async {
        client.write_all(&backend_early).await?;
        backend.write_all(&client_early).await
    };
    if let Err(e) = early.await {
        trace.event(8, n, format_args!("tunnel closed: {e}"));
        return Ended::Closed;
    }
    match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        Ok((up, down)) => trace.event(
            8,
            n,
            format_args!(
                "tunnel closed: {} bytes up, {} bytes down",
                up + client_early.len() as u64,
                down + backend_early.len() as u64
            ),
        ),
        Err(e) => trace.event(8, n, format_args!("tunnel closed: {e}")),
    }
    Ended::Closed
}

/// Why a client connection ended.
#[derive(Debug)]
pub enum Ended {
    Closed,
    Shutdown,
    IdleDuringShutdown,
    /// A request head started arriving and did not complete in time.
    HeadTimeout(Duration),
    /// `-s`: the TLS handshake failed (plain HTTP to the TLS port, a bad client) or stalled.
    Handshake(String),
    /// A request head lb refused (answered 400 or 431, or not at all).
    Refused(Refused),
}

impl Ended {
    /// Say how the connection ended: `--trace`, and the log line of a request head that never
    /// reached `proxy::handle` (lb answered it, or dropped it), with `-` for what is unknown.
    /// (A head lb answered with 400 or 431 was logged when it was refused.)
    pub fn record(&self, peer: std::net::SocketAddr, balancer: &Balancer, trace: &Trace) {
        if let Ended::HeadTimeout(_) = self {
            log_refused(peer, balancer, 408);
        }
        trace.conn_event(format_args!("closed ({self})"));
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Closed => f.write_str("client closed or keep-alive ended"),
            Ended::Shutdown => f.write_str("shutdown"),
            Ended::IdleDuringShutdown => f.write_str("idle during shutdown"),
            Ended::HeadTimeout(t) => {
                write!(
                    f,
                    "no complete request head within {t:?} (--header-timeout)"
                )
            }
            Ended::Handshake(why) => write!(f, "TLS handshake failed: {why}"),
            Ended::Refused(refused) => write!(f, "refused: {refused}"),
        }
    }
}

/// The log line (and the count) of a request head that never became a request: 400 malformed,
/// 431 oversized, 408 never completed; `-` for what is unknown.
fn log_refused(peer: std::net::SocketAddr, balancer: &Balancer, status: u16) {
    balancer.stats.unserved.record(status, Duration::ZERO, 0);
    balancer.log.write(&Record::rejected(peer, status));
}

/// Completes once the stop flag is set (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
