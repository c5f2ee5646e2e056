//! Step 1 of a request: accept the client's TCP connection and serve HTTP/1.1 on it.
//!
//! Each connection runs in its own task. hyper parses request heads (rejecting malformed ones with
//! 400 and oversized ones with 431) and calls [`crate::proxy::handle`] once per request, in order,
//! so pipelined requests are answered in order. Around hyper, this module adds what it lacks:
//! - one acceptor handing each connection to the worker thread serving the fewest (`--threads`);
//! - a cap on concurrent connections (`--max-conns`): a semaphore permit per connection; past the
//!   cap we stop calling `accept`, so new clients wait in the kernel's queue instead of failing;
//! - a watchdog for the header and idle timeouts, which hyper cannot tell apart (`watchdog.rs`);
//! - graceful shutdown: on the stop signal every connection finishes the request it is serving
//!   and closes; each worker waits for that up to `--grace`, then cuts off the rest;
//! - a log line for each request head hyper refused (400, 431) or that never completed (408):
//!   those never reach `proxy::handle`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::access_log::Record;
use crate::downstream::ConnInfo;
use crate::dump::{Leg, Tapped};
use crate::stats::Stats;
use crate::trace::Trace;
use crate::watchdog::{Expired, Watchdog, WatchedIo};
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

/// The client's socket as hyper sees it.
type ClientIo<S> = TokioIo<WatchedIo<S>>;

/// Serve HTTP/1.1 on `io` (plain or TLS) until the client closes, idles out, or shutdown ends it.
///
/// A connection alternates between two states. Served: a hyper connection reads request heads
/// and writes responses, with its read and write buffers (8 KiB each) and its state. Parked,
/// once it has been idle for a second (`watchdog::PARK_AFTER`): hyper's connection is gone and
/// only the socket remains, until the client's next bytes arrive, which a new hyper connection
/// then reads first. This is what nginx and HAProxy do with a keep-alive connection between
/// requests, and why ten thousand idle clients cost them little memory.
async fn serve_http<S>(
    io: S,
    info: &Arc<ConnInfo>,
    balancer: &Arc<Balancer>,
    mut stop: watch::Receiver<bool>,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut io = TokioIo::new(WatchedIo::new(io, info.clone()));
    let mut watchdog = Watchdog::new(info.clone(), &balancer.timeouts);
    loop {
        io = match serve_requests(io, info, balancer, &mut watchdog, &mut stop).await {
            Served::Ended(ended) => {
                // A socket hyper handed over (a tunnel's) must be shut down for real.
                info.set_parked(false);
                return ended;
            }
            Served::Parked(io) => io,
        };
        if let Some(ended) = park(&mut io, info, &mut watchdog, &mut stop).await {
            return ended;
        }
    }
}

/// How serving requests with hyper stopped.
enum Served<S> {
    Ended(Ended),
    /// Idle for a while: hyper let go of the socket, which is given back.
    Parked(ClientIo<S>),
}

/// Serve requests with a hyper connection until the connection ends or parks.
async fn serve_requests<S>(
    io: ClientIo<S>,
    info: &Arc<ConnInfo>,
    balancer: &Arc<Balancer>,
    watchdog: &mut Watchdog,
    stop: &mut watch::Receiver<bool>,
) -> Served<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let (balancer, info) = (balancer.clone(), info.clone());
        service_fn(move |request| crate::proxy::handle(request, balancer.clone(), info.clone()))
    };
    // Boxed, so that a parked connection's task does not keep room for it.
    let mut connection = Box::new(
        http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(None) // the watchdog does it, see `watchdog.rs`
            .max_header_size(balancer.limits.max_header_bytes)
            .serve_connection(io, service)
            .with_upgrades(),
    );
    let stop_signal = stopped(stop);
    tokio::pin!(stop_signal);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = &mut *connection => {
                if info.is_parked() && result.is_ok() {
                    if let Some(parts) = connection.into_parts() {
                        return park_or_close(parts.io, &parts.read_buf, info).await;
                    }
                }
                return Served::Ended(Ended::from_result(result, stopping));
            }
            _ = &mut stop_signal, if !stopping => {
                stopping = true;
                Pin::new(&mut *connection).graceful_shutdown();
            }
            expired = watchdog.expired() => match expired {
                Expired::Head => return Served::Ended(Ended::HeadTimeout(balancer.timeouts.header)),
                Expired::Idle if stopping => return Served::Ended(Ended::IdleDuringShutdown),
                Expired::Idle => {
                    info.trace.conn_event(format_args!("closing: idle (--idle-timeout / --header-timeout)"));
                    stopping = true;
                    Pin::new(&mut *connection).graceful_shutdown();
                }
                // hyper closes an idle connection at once when told to shut down gracefully; the
                // socket's wrapper keeps the socket open (`WatchedIo::poll_shutdown`).
                Expired::Park if !stopping => {
                    info.trace.conn_event(format_args!("parking: idle, letting go of hyper's connection and its buffers"));
                    info.set_parked(true);
                    Pin::new(&mut *connection).graceful_shutdown();
                }
                Expired::Park => {}
            },
        }
    }
}

/// hyper let go of a connection told to park: keep the socket, with the bytes hyper had read ahead
/// (a head arriving: the header timeout applies to it, and it is served at once), unless hyper
/// still wrote after being told, which means it was finishing an answer, perhaps one that closes
/// the connection (`Connection: close`, HTTP/1.0): then close it, as hyper would have.
async fn park_or_close<S>(mut io: ClientIo<S>, read_ahead: &[u8], info: &ConnInfo) -> Served<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if io.inner_mut().take_wrote_while_parked() {
        info.set_parked(false);
        let _ = timeout(Duration::from_secs(1), io.inner_mut().shutdown()).await;
        return Served::Ended(Ended::Closed);
    }
    if !read_ahead.is_empty() {
        info.head_bytes_arrived();
        // A copy: the bytes hyper read ahead keep its whole buffer alive.
        io.inner_mut().unread(Bytes::copy_from_slice(read_ahead));
    }
    Served::Parked(io)
}

/// Wait, holding only the socket, for the client's next bytes; `None` once they are in (kept in
/// the socket's wrapper for the next hyper connection), or how the connection ended meanwhile.
async fn park<S>(
    io: &mut ClientIo<S>,
    info: &Arc<ConnInfo>,
    watchdog: &mut Watchdog,
    stop: &mut watch::Receiver<bool>,
) -> Option<Ended>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if io.inner_mut().has_unread() {
        // hyper had read part of the next request already: serve it now.
        info.set_parked(false);
        watchdog.look_again();
        return None;
    }
    let mut first = [0u8; 512];
    let ended = tokio::select! {
        read = io.inner_mut().read(&mut first) => match read {
            Ok(n) if n > 0 => {
                io.inner_mut().unread(Bytes::copy_from_slice(&first[..n]));
                info.set_parked(false);
                watchdog.look_again();
                return None;
            }
            _ => Ended::Closed,
        },
        _ = stopped(stop) => Ended::IdleDuringShutdown,
        // Only the idle deadline applies to a parked connection: its first byte unparks it.
        _ = watchdog.expired() => {
            info.trace.conn_event(format_args!("closing: idle (--idle-timeout / --header-timeout)"));
            Ended::Closed
        }
    };
    info.set_parked(false); // so that the socket is shut down properly
    let _ = timeout(Duration::from_secs(1), io.inner_mut().shutdown()).await;
    Some(ended)
}

/// Why a client connection ended.
#[derive(Debug)]
enum Ended {
    Closed,
    Shutdown,
    IdleDuringShutdown,
    /// A request head started arriving and did not complete in time.
    HeadTimeout(Duration),
    /// `-s`: the TLS handshake failed (plain HTTP to the TLS port, a bad client) or stalled.
    Handshake(String),
    Error(hyper::Error),
}

impl Ended {
    fn from_result(result: Result<(), hyper::Error>, stopping: bool) -> Self {
        match result {
            Ok(()) if stopping => Ended::Shutdown,
            Ok(()) => Ended::Closed,
            Err(e) => Ended::Error(e),
        }
    }

    /// Say how the connection ended: `--trace`, and the log line of a request head that never
    /// reached `proxy::handle` (hyper answered it, or we dropped it), with `-` for what is unknown.
    fn record(&self, peer: SocketAddr, balancer: &Balancer, trace: &Trace) {
        if let Some(status) = self.rejected_status() {
            balancer.stats.unserved.record(status, Duration::ZERO, 0);
            balancer.log.write(&Record::rejected(peer, status));
        }
        trace.conn_event(format_args!("closed ({self})"));
    }

    /// The status of a request head refused before it became a request: hyper answers 431 to an
    /// oversized head and 400 to a malformed one; a head that never completed is 408.
    fn rejected_status(&self) -> Option<u16> {
        match self {
            Ended::Error(e) if e.is_parse_too_large() => Some(431),
            Ended::Error(e) if e.is_parse() => Some(400),
            Ended::HeadTimeout(_) => Some(408),
            _ => None,
        }
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
            Ended::Error(e) => write!(f, "error: {e}"),
            Ended::Handshake(why) => write!(f, "TLS handshake failed: {why}"),
        }
    }
}

/// Completes once the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
