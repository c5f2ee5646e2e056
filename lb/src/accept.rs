//! Step 1 of a request: accept the client's TCP connection and serve HTTP/1.1 on it.
//!
//! Each connection runs in its own task. hyper parses request heads (rejecting malformed ones with
//! 400 and oversized ones with 431) and calls [`crate::proxy::handle`] once per request, in order,
//! so pipelined requests are answered in order. Around hyper, this module adds what it lacks:
//! - a cap on concurrent connections (`--max-conns`): a semaphore permit per connection; past the
//!   cap we stop calling `accept`, so new clients wait in the kernel's queue instead of failing;
//! - a keep-alive idle timeout (`--idle-timeout`): hyper has none, so a watchdog closes a
//!   connection that has had no request in flight for that long;
//! - graceful shutdown: on the stop signal every connection finishes the request it is serving
//!   and closes; `run` waits for that up to `--grace`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::health::now_ms;
use crate::trace::Trace;
use crate::Balancer;

/// What the request path knows about the client connection it arrived on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub trace: Trace,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// [`now_ms`] when the last request finished (or the connection was accepted).
    idle_since_ms: AtomicU64,
}

impl ConnInfo {
    /// Count a new request; the returned guard marks it finished when dropped.
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        let number = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if number > 1 {
            self.trace.conn_event(format_args!("keep-alive: request #{number} on this connection"));
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { conn: self.clone(), number }
    }
}

/// A request in progress on a connection; see [`ConnInfo::begin_request`].
#[derive(Debug)]
pub struct InFlight {
    conn: Arc<ConnInfo>,
    number: u64,
}

impl InFlight {
    pub fn number(&self) -> u64 {
        self.number
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.idle_since_ms.store(now_ms(), Ordering::Relaxed);
        self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accept connections until `stop` flips to true, then wait up to `grace` for them to finish.
pub async fn accept_loop(listener: TcpListener, balancer: Arc<Balancer>, mut stop: watch::Receiver<bool>) {
    let max_conns = balancer.limits.max_conns;
    let permits = Arc::new(Semaphore::new(max_conns));
    let next_id = AtomicU64::new(1);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            _ = stopped(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE (out of file descriptors): back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve_connection(stream, peer, id, balancer.clone(), stop.clone(), permit));
    }
    drop(listener);
    // Every connection holds one permit: all permits back means every connection is closed.
    let grace = balancer.timeouts.grace;
    let all = u32::try_from(max_conns).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, permits.acquire_many(all)).await.is_err() {
        tracing::warn!(
            "shutdown: {} connection(s) still busy after --grace {grace:?}; closing them",
            max_conns - permits.available_permits()
        );
    }
}

/// Serve one client connection until it closes, idles out, or shutdown finishes it.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    balancer: Arc<Balancer>,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let trace = Trace::new(balancer.trace, id);
    trace.conn_event(format_args!("accepted from {peer}"));
    let info = Arc::new(ConnInfo {
        peer,
        trace: trace.clone(),
        requests: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        idle_since_ms: AtomicU64::new(now_ms()),
    });
    let service = {
        let (balancer, info) = (balancer.clone(), info.clone());
        service_fn(move |request| crate::proxy::handle(request, balancer.clone(), info.clone()))
    };
    let timeouts = balancer.timeouts;
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header)
        .max_buf_size(balancer.limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);

    let mut stopping = false;
    let reason = loop {
        // The watchdog: when nothing is in flight, the connection may stay idle for --idle-timeout.
        let idle_for = Duration::from_millis(now_ms().saturating_sub(info.idle_since_ms.load(Ordering::Relaxed)));
        let check_in = timeouts.idle.saturating_sub(idle_for).max(Duration::from_millis(10));
        tokio::select! {
            result = connection.as_mut() => break match result {
                Ok(()) if stopping => "shutdown".to_string(),
                Ok(()) => "client closed or keep-alive ended".to_string(),
                Err(e) => format!("error: {e}"),
            },
            _ = stopped(&mut stop), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(check_in), if !stopping => {
                let idle = info.in_flight.load(Ordering::Relaxed) == 0
                    && now_ms().saturating_sub(info.idle_since_ms.load(Ordering::Relaxed)) >= timeouts.idle.as_millis() as u64;
                if idle {
                    trace.conn_event(format_args!("closing: idle for {:?} (--idle-timeout)", timeouts.idle));
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    };
    trace.conn_event(format_args!("closed ({reason})"));
}

/// Completes once the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
