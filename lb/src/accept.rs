//! Step 1 of a request: accept the client's TCP connection and serve HTTP/1.1 on it.
//!
//! Each connection runs in its own task, on one worker thread, and is served by `serve.rs`'s loop
//! (request heads read, each request handed to [`crate::proxy::handle`] in order, responses
//! written). This module gets connections there:
//! - one acceptor handing each connection to the worker thread serving the fewest (`--threads`);
//! - a cap on concurrent connections (`--max-conns`): a semaphore permit per connection; past the
//!   cap we stop calling `accept`, so new clients wait in the kernel's queue instead of failing;
//! - `-s`: the TLS handshake, within `--header-timeout`;
//! - graceful shutdown: on the stop signal every connection finishes the request it is serving
//!   and closes; each worker waits for that up to `--grace`, then cuts off the rest.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::downstream::ConnInfo;
use crate::dump::{Leg, Tapped};
use crate::serve::{serve_http, stopped, Ended};
use crate::stats::Stats;
use crate::trace::Trace;
use crate::Balancer;

/// How many finished handshakes the kernel may queue for us (capped by `net.core.somaxconn`).
/// tokio's `TcpListener::bind` uses 128, like std: a burst of more new clients than that
/// (or more than that waiting past `--max-conns`) would have their SYNs dropped and retried only
/// after a second or more.
const LISTEN_BACKLOG: u32 = 4096;

/// Bind the listening socket, with a backlog sized for thousands of clients.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // Restarting lb must not fail because of connections of the previous run in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Connection numbers for `--trace`, unique across worker threads.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// An accepted connection on its way to a worker.
#[derive(Debug)]
pub struct Accepted {
    /// A plain socket: it is registered with the event loop of the worker that serves it.
    stream: std::net::TcpStream,
    peer: SocketAddr,
    /// Held for the life of the connection: the `--max-conns` cap.
    permit: OwnedSemaphorePermit,
}

/// The acceptor's handle on one worker: where to send connections, and how many it serves.
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    tx: mpsc::UnboundedSender<Accepted>,
    live: Arc<AtomicUsize>,
}

/// A worker's end: the connections handed to it.
#[derive(Debug)]
pub struct WorkerInbox {
    rx: mpsc::UnboundedReceiver<Accepted>,
    live: Arc<AtomicUsize>,
}

/// A connected pair of [`WorkerHandle`] (for the acceptor) and [`WorkerInbox`] (for the worker).
pub fn worker_channel() -> (WorkerHandle, WorkerInbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let live = Arc::new(AtomicUsize::new(0));
    (
        WorkerHandle {
            tx,
            live: live.clone(),
        },
        WorkerInbox { rx, live },
    )
}

/// Accept connections until `stop` flips to true, handing each to the worker serving the fewest.
///
/// One acceptor, rather than every worker calling `accept` on the shared socket, because the
/// kernel would wake whichever worker it likes: with a burst of new clients one worker can end up
/// with most of them while the other core idles. `permits` is the `--max-conns` cap.
pub async fn accept_loop(
    listener: TcpListener,
    workers: Vec<WorkerHandle>,
    mut stop: watch::Receiver<bool>,
    permits: Arc<Semaphore>,
) {
    let mut turn = 0usize;
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
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        // The least busy worker; ties go round robin so that an idle balancer spreads too.
        turn = turn.wrapping_add(1);
        let n = workers.len().max(1);
        let chosen = (0..n).map(|k| (turn + k) % n).min_by_key(|&i| {
            workers
                .get(i)
                .map_or(usize::MAX, |w| w.live.load(Ordering::Relaxed))
        });
        if let Some(worker) = chosen.and_then(|i| workers.get(i)) {
            worker.live.fetch_add(1, Ordering::Relaxed);
            let _ = worker.tx.send(Accepted {
                stream,
                peer,
                permit,
            });
        }
    }
    // Dropping `workers` closes their inboxes: each worker drains and returns.
}

/// A worker: serve the connections the acceptor hands over until it stops, then wait up to
/// `--grace` for them to finish, and cut off those that have not (each request cut off still gets
/// its log line, from its `Completion`).
pub async fn worker_loop(
    mut inbox: WorkerInbox,
    balancer: Arc<Balancer>,
    stop: watch::Receiver<bool>,
) {
    // This worker's connections, so that it can wait for them, and end them after --grace.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = inbox.rx.recv() => match accepted {
                Some(accepted) => {
                    if let Some(serve) = prepare(accepted, &inbox.live, &balancer, &stop) {
                        connections.spawn(serve);
                    }
                }
                None => break,
            },
            // Reap finished connections as they end, so the set stays as small as the live ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let grace = balancer.timeouts.grace;
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(
            "shutdown: {} connection(s) still busy after --grace {grace:?}; closing them",
            connections.len()
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// Register an accepted socket with this worker's event loop; `None` (logged) if that fails.
fn prepare(
    accepted: Accepted,
    live: &Arc<AtomicUsize>,
    balancer: &Arc<Balancer>,
    stop: &watch::Receiver<bool>,
) -> Option<impl std::future::Future<Output = ()>> {
    let Accepted {
        stream,
        peer,
        permit,
    } = accepted;
    let held = Held::new(permit, live.clone(), balancer.stats.clone());
    let stream = match stream
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(stream))
    {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!("cannot serve a connection from {peer}: {e}");
            return None;
        }
    };
    let _ = stream.set_nodelay(true); // small heads and chunks: never wait for Nagle
    Some(serve_connection(
        stream,
        peer,
        balancer.clone(),
        stop.clone(),
        Some(held),
    ))
}

/// Serve one client connection over any byte stream, outside the acceptor and its `--max-conns`
/// cap: the in-memory benchmark of the request path (`lb/benches/request_path.rs`) serves one end
/// of an in-memory pipe with it.
pub async fn serve_stream<S>(
    stream: S,
    peer: SocketAddr,
    balancer: Arc<Balancer>,
    stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_connection(stream, peer, balancer, stop, None).await;
}

/// What a connection holds while it lives: its `--max-conns` permit, its place in the
/// worker's count of live connections and in `--admin`'s count of open connections.
struct Held {
    _cap: OwnedSemaphorePermit,
    live: Arc<AtomicUsize>,
    stats: Arc<Stats>,
}

impl Held {
    fn new(cap: OwnedSemaphorePermit, live: Arc<AtomicUsize>, stats: Arc<Stats>) -> Self {
        stats.connections_accepted.fetch_add(1, Ordering::Relaxed);
        stats.connections_open.fetch_add(1, Ordering::Relaxed);
        Held {
            _cap: cap,
            live,
            stats,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serve one client connection until it closes, idles out, or shutdown finishes it.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    balancer: Arc<Balancer>,
    stop: watch::Receiver<bool>,
    _held: Option<Held>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let id = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
    let trace = Trace::new(balancer.trace, id);
    trace.conn_event(format_args!("accepted from {peer}"));
    let scheme = if balancer.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let info = Arc::new(ConnInfo::new(id, peer, scheme, trace.clone()));
    let tap = || Leg::Client(info.clone());
    let ended = match &balancer.tls {
        None => {
            let io = Tapped::new(stream, &balancer.dump, tap);
            serve_http(io, &info, &balancer, stop).await
        }
        // The handshake is part of reading the first request head: --header-timeout bounds it.
        // Boxed: a TLS connection's state is large, and a plain connection's task (kept for as
        // long as the client stays connected) should not make room for it.
        Some(tls) => {
            Box::pin(async {
                match timeout(balancer.timeouts.header, tls.0.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let io = Tapped::new(stream, &balancer.dump, tap);
                        serve_http(io, &info, &balancer, stop).await
                    }
                    Ok(Err(e)) => Ended::Handshake(e.to_string()),
                    Err(_) => Ended::Handshake(format!(
                        "no TLS handshake within {:?} (--header-timeout)",
                        balancer.timeouts.header
                    )),
                }
            })
            .await
        }
    };
    ended.record(peer, &balancer, &trace);
}
