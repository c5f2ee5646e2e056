//! Step 1 of a request: accept the client's TCP connection and serve HTTP/1.1 on it.
//!
//! Each connection runs in its own task. hyper parses request heads (rejecting malformed ones with
//! 400 and oversized ones with 431) and calls [`crate::proxy::handle`] once per request, in order,
//! so pipelined requests are answered in order. Around hyper, this module adds what it lacks:
//! - one acceptor handing each connection to the worker thread serving the fewest (`--threads`);
//! - a cap on concurrent connections (`--max-conns`): a semaphore permit per connection; past the
//!   cap we stop calling `accept`, so new clients wait in the kernel's queue instead of failing;
//! - a watchdog for two timeouts hyper cannot tell apart. hyper's own `header_read_timeout` also
//!   starts while a keep-alive connection waits for its next request, so it would double as the idle
//!   timeout. We want a short `--header-timeout` (a slowloris client dripping a head byte by byte)
//!   and a longer `--idle-timeout` (a polite client keeping its connection for the next request).
//!   The socket is wrapped in [`WatchedIo`], which notes when the first byte of a new head arrives;
//!   the watchdog then knows which of the two deadlines applies;
//! - graceful shutdown: on the stop signal every connection finishes the request it is serving
//!   and closes; `run` waits for that up to `--grace`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::downstream::ConnInfo;
use crate::health::now_ms;
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
/// `--grace` for them to finish.
pub async fn worker_loop(
    mut inbox: WorkerInbox,
    balancer: Arc<Balancer>,
    stop: watch::Receiver<bool>,
) {
    let max_conns = balancer.limits.max_conns;
    // This worker's connections, so that it knows when they are all closed.
    let mine = Arc::new(Semaphore::new(max_conns));
    while let Some(Accepted {
        stream,
        peer,
        permit,
    }) = inbox.rx.recv().await
    {
        let stream = match stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream))
        {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("cannot serve a connection from {peer}: {e}");
                inbox.live.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
        };
        let id = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
        let held = Held {
            _cap: permit,
            _mine: mine.clone().try_acquire_owned().ok(),
            live: inbox.live.clone(),
        };
        tokio::spawn(serve_connection(
            stream,
            peer,
            id,
            balancer.clone(),
            stop.clone(),
            held,
        ));
    }
    // Every connection holds one permit: all permits back means every connection is closed.
    let grace = balancer.timeouts.grace;
    let all = u32::try_from(max_conns).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, mine.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            "shutdown: {} connection(s) still busy after --grace {grace:?}; closing them",
            max_conns - mine.available_permits()
        );
    }
}

/// What a connection holds while it lives: its `--max-conns` permit, its worker's drain permit,
/// and its place in the worker's count of live connections.
struct Held {
    _cap: OwnedSemaphorePermit,
    _mine: Option<OwnedSemaphorePermit>,
    live: Arc<AtomicUsize>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serve one client connection until it closes, idles out, or shutdown finishes it.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    balancer: Arc<Balancer>,
    mut stop: watch::Receiver<bool>,
    _held: Held,
) {
    let _ = stream.set_nodelay(true);
    let trace = Trace::new(balancer.trace, id);
    trace.conn_event(format_args!("accepted from {peer}"));
    let info = Arc::new(ConnInfo::new(peer, trace.clone()));
    let service = {
        let (balancer, info) = (balancer.clone(), info.clone());
        service_fn(move |request| crate::proxy::handle(request, balancer.clone(), info.clone()))
    };
    let timeouts = balancer.timeouts;
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None) // the watchdog below does it, see the module comment
        .max_header_size(balancer.limits.max_header_bytes)
        .serve_connection(
            TokioIo::new(WatchedIo {
                inner: stream,
                conn: info.clone(),
            }),
            service,
        )
        .with_upgrades();
    tokio::pin!(connection);

    // The watchdog's futures live across loop turns: re-creating a timer on every state change
    // would cost a timer-wheel insertion per request.
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut armed_for: Option<u64> = None;
    let stop_signal = stopped(&mut stop);
    tokio::pin!(stop_signal);
    let changed = info.changed.notified();
    tokio::pin!(changed);

    let mut stopping = false;
    let reason = loop {
        // Sleep until the deadline that applies now. While a request is in flight none does; the
        // timer then only comes back to look again after --idle-timeout.
        let want = match deadline(&info, timeouts.header, timeouts.idle) {
            Deadline::Head(at) | Deadline::Idle(at) => Some(at),
            Deadline::None => armed_for.or(Some(now_ms() + timeouts.idle.as_millis() as u64)),
        };
        if want != armed_for {
            let wait = want.unwrap_or(0).saturating_sub(now_ms()).max(5);
            timer
                .as_mut()
                .reset(tokio::time::Instant::now() + Duration::from_millis(wait));
            armed_for = want;
        }
        tokio::select! {
            result = connection.as_mut() => break match result {
                Ok(()) if stopping => "shutdown".to_string(),
                Ok(()) => "client closed or keep-alive ended".to_string(),
                Err(e) => format!("error: {e}"),
            },
            _ = &mut stop_signal, if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            // A request ended or a new head started arriving: loop to re-arm for the new deadline.
            _ = &mut changed => changed.set(info.changed.notified()),
            _ = &mut timer => {
                armed_for = None;
                match deadline(&info, timeouts.header, timeouts.idle) {
                    // A request head started arriving but is still incomplete: drop the
                    // connection (nothing is in flight, so nothing is lost).
                    Deadline::Head(at) if at <= now_ms() => {
                        break format!("no complete request head within {:?} (--header-timeout)", timeouts.header)
                    }
                    Deadline::Idle(at) if at <= now_ms() && !stopping => {
                        trace.conn_event(format_args!("closing: idle (--idle-timeout / --header-timeout)"));
                        stopping = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    Deadline::Idle(at) if at <= now_ms() => break "idle during shutdown".to_string(),
                    _ => {}
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

/// Which timeout applies to a connection right now, as an absolute [`now_ms`] time.
enum Deadline {
    /// A request is in flight: body timeouts apply, not these.
    None,
    /// Part of a request head has arrived: the rest must come by then.
    Head(u64),
    /// Nothing in flight, nothing arriving: the connection may idle until then.
    Idle(u64),
}

fn deadline(conn: &ConnInfo, header: Duration, idle: Duration) -> Deadline {
    if conn.is_busy() {
        return Deadline::None;
    }
    let head_started = conn.head_started_ms();
    if head_started != 0 {
        return Deadline::Head(head_started + header.as_millis() as u64);
    }
    // Before the first request a silent client gets only the header timeout.
    let allowed = if conn.requests() == 0 { header } else { idle };
    Deadline::Idle(conn.idle_since_ms() + allowed.as_millis() as u64)
}

/// The client socket, noting when the first byte of a request head arrives.
struct WatchedIo {
    inner: TcpStream,
    conn: Arc<ConnInfo>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.head_bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
