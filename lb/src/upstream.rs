//! Step 5 of a request: get a connection to the chosen backend, reusing an idle one when we can.
//!
//! Opening a TCP connection per request (what hyper's `gateway.rs` example does) costs a handshake
//! and a socket in TIME_WAIT every time. Instead each backend keeps a small pool of idle HTTP/1.1
//! connections. A connection goes back into the pool only after its response body was read to the
//! end (an HTTP/1.1 connection carries one exchange at a time), and is thrown away if it sat idle
//! longer than `--pool-idle-timeout`, which should be shorter than the backend's own keep-alive so
//! that we never pick a connection the backend is just about to close.
//!
//! A connection is an [`h1::Conn`]: the socket, a read buffer and a write buffer. It has no task
//! of its own: the request's task reads and writes it while the exchange lasts (`proxy.rs` while
//! sending, `response.rs` while streaming the body back), so a request costs no wake-ups between
//! tasks. An idle pooled connection is read once more on checkout, without waiting, which is how we
//! notice that the backend closed it meanwhile.
//!
//! With several worker threads (`--threads`), each worker has its own event loop, so each keeps
//! its own pool per backend: a connection's socket is registered with the event loop that opened
//! it, and is only ever used from that thread.
//!
//! A backend is reached over TCP, except in the in-memory benchmark (`lb/benches/request_path.rs`),
//! whose [`Connector::Memory`] hands out one end of an in-memory pipe instead of a socket, so that
//! the request path's own cost is measured without the kernel's.

use std::cell::Cell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;

use crate::clock::now_ms;
use crate::dump::{Dump, Leg, Tapped};
use crate::error::ConnectError;
use crate::h1;
use crate::health::Health;
use crate::pick::Load;
use crate::stats::BackendStats;

/// The socket under an upstream connection, tapped for `-D` when it is on.
pub type Io = Tapped<Stream>;

/// One HTTP/1.1 connection to a backend.
pub type Conn = h1::Conn<Io>;

/// How connections to backends are opened.
#[derive(Clone, Default)]
pub enum Connector {
    /// A TCP connection to the backend's address: what `lb` always does.
    #[default]
    Tcp,
    /// One end of an in-memory pipe, made by the function given the backend's address (the other
    /// end goes to an in-memory backend): for benchmarks of the user-space path.
    Memory(Arc<dyn Fn(SocketAddr) -> DuplexStream + Send + Sync>),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Connector::Tcp => "Tcp",
            Connector::Memory(_) => "Memory",
        })
    }
}

/// The byte stream under an upstream connection (see [`Connector`]).
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Memory(DuplexStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Memory(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Memory(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Memory(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Memory(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One backend server and its pool of idle connections.
#[derive(Debug)]
pub struct Backend {
    /// The address as written on the command line (`127.0.0.1:8910`): what logs show (shared, so
    /// that each request's log record takes it without a copy).
    pub name: Arc<str>,
    addr: SocketAddr,
    pub health: Health,
    /// Requests in flight and the latency estimate, shared by every worker and group (`pick/`).
    pub load: Arc<Load>,
    /// What `--admin` shows of this backend.
    pub stats: BackendStats,
    /// One pool per worker thread, indexed by [`worker_id`].
    idle: Vec<Mutex<Vec<IdleConn>>>,
    next_id: AtomicU64,
    settings: PoolSettings,
    /// `-D`: where this backend's connections copy their bytes.
    dump: Dump,
    connector: Connector,
}

#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Worker threads, hence pools per backend.
    pub workers: usize,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

struct IdleConn {
    conn: Box<Conn>,
    id: u64,
    /// When it went idle, in [`now_ms`] time.
    since_ms: u64,
    user: Option<Arc<(AtomicU64, AtomicU64)>>,
}

impl std::fmt::Debug for IdleConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdleConn(#{})", self.id)
    }
}

/// One connection to a backend, from checkout (or connect) to check-in: the request's task holds it
/// while the exchange lasts, then [`Upstream::check_in`] returns it to the pool.
pub struct Upstream {
    pub backend: Arc<Backend>,
    /// Boxed once, when connected: an `Upstream` moves a dozen times per request (checkout,
    /// send, the answer, the response body, check-in), and a pointer is cheaper to move than a
    /// connection's socket and buffers.
    pub conn: Box<Conn>,
    /// Per-backend connection number, shown by `--trace`.
    pub id: u64,
    /// How long connecting took, or `None` for a reused pooled connection.
    pub connect_time: Option<Duration>,
    /// With `-D`: the client connection and request this connection carries now (for the dump's
    /// labels); the request path sets it.
    pub user: Option<Arc<(AtomicU64, AtomicU64)>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upstream({} #{})", self.backend.name, self.id)
    }
}

impl Upstream {
    /// Whether this connection came from the pool (it carried an earlier exchange).
    pub fn was_pooled(&self) -> bool {
        self.connect_time.is_none()
    }

    /// The exchange ended cleanly: give the connection back to its backend's pool so the next
    /// request can reuse it. Returns false if it could not be kept (the exchange left it unfit,
    /// the backend closed it, or the pool is full); dropping it then closes it.
    pub fn check_in(self) -> bool {
        let Upstream {
            backend,
            conn,
            id,
            user,
            ..
        } = self;
        backend.checkin(conn, id, user)
    }
}

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Mark the current thread as worker `id` (each worker thread calls this once at start).
pub fn set_worker_id(id: usize) {
    WORKER.with(|w| w.set(id));
}

/// The worker thread we are on (0 when there is only one).
pub fn worker_id() -> usize {
    WORKER.with(Cell::get)
}

impl Backend {
    pub fn new(
        name: String,
        addr: SocketAddr,
        settings: PoolSettings,
        load: Load,
        dump: Dump,
        connector: Connector,
    ) -> Self {
        Backend {
            name: name.into(),
            addr,
            health: Health::default(),
            load: Arc::new(load),
            stats: BackendStats::default(),
            idle: (0..settings.workers.max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            next_id: AtomicU64::new(1),
            settings,
            dump,
            connector,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection ready to carry one request: the most recently used idle one, or a new one.
    pub async fn checkout(self: &Arc<Self>) -> Result<Upstream, ConnectError> {
        while let Some(mut idle) = self.pop_idle() {
            let idle_for = Duration::from_millis(now_ms().saturating_sub(idle.since_ms));
            if idle_for > self.settings.idle_timeout || idle.conn.closed_while_idle() {
                continue; // dropping it closes the socket
            }
            return Ok(Upstream {
                backend: self.clone(),
                conn: idle.conn,
                id: idle.id,
                connect_time: None,
                user: idle.user,
            });
        }
        // Boxed: connecting (DNS-free, but a TCP connect under a timeout) is a large future, and
        // every request's future would carry its size (and copy it) although most reuse a pooled
        // connection.
        Box::pin(self.connect()).await
    }

    /// Open a new connection (see [`Connector`]).
    pub async fn connect(self: &Arc<Self>) -> Result<Upstream, ConnectError> {
        let started = Instant::now();
        let stream = match &self.connector {
            Connector::Tcp => Stream::Tcp(self.connect_tcp().await?),
            Connector::Memory(make) => Stream::Memory(make(self.addr)),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let user = self.dump.is_enabled().then(Arc::default);
        let stream = Tapped::new(stream, &self.dump, || Leg::Backend {
            id,
            backend: self.name.to_string(),
            user: user.clone().unwrap_or_default(),
        });
        Ok(Upstream {
            backend: self.clone(),
            conn: Box::new(h1::Conn::new(stream)),
            id,
            connect_time: Some(started.elapsed()),
            user,
        })
    }

    /// TCP connect, bounded by `--connect-timeout`.
    async fn connect_tcp(&self) -> Result<TcpStream, ConnectError> {
        let timeout = self.settings.connect_timeout;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(self.addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                return Err(ConnectError::Io {
                    backend: self.name.to_string(),
                    source,
                })
            }
            Err(_) => {
                return Err(ConnectError::Timeout {
                    backend: self.name.to_string(),
                    timeout,
                })
            }
        };
        // Proxies write small heads and forward small chunks: do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Return a connection whose exchange completed cleanly (see [`Upstream::check_in`]).
    fn checkin(&self, conn: Box<Conn>, id: u64, user: Option<Arc<(AtomicU64, AtomicU64)>>) -> bool {
        if !conn.is_reusable() {
            return false;
        }
        let Some(pool) = self.pool() else {
            return false;
        };
        let mut idle = lock(pool);
        if idle.len() >= self.settings.max_idle {
            return false;
        }
        idle.push(IdleConn {
            conn,
            id,
            user,
            since_ms: now_ms(),
        });
        true
    }

    /// Close idle connections older than the pool idle timeout (called periodically).
    pub fn evict_expired(&self) {
        let limit = self.settings.idle_timeout;
        for pool in &self.idle {
            let now = now_ms();
            lock(pool).retain(|c| Duration::from_millis(now.saturating_sub(c.since_ms)) <= limit);
        }
    }

    /// Close every idle pooled connection to this backend, on every worker. Called when an
    /// exchange with it failed before its response: a backend that is restarting or died has
    /// closed (or will reset) the others too, and the next requests should not each find that out
    /// by losing their own attempt. Connections held by requests in flight are not touched.
    pub fn forget_idle(&self) -> usize {
        self.idle
            .iter()
            .map(|pool| std::mem::take(&mut *lock(pool)).len())
            .sum()
    }

    /// Idle pooled connections, over all workers.
    pub fn idle_count(&self) -> usize {
        self.idle.iter().map(|pool| lock(pool).len()).sum()
    }

    fn pop_idle(&self) -> Option<IdleConn> {
        self.pool().and_then(|pool| lock(pool).pop())
    }

    /// This worker's pool.
    fn pool(&self) -> Option<&Mutex<Vec<IdleConn>>> {
        self.idle.get(worker_id() % self.idle.len().max(1))
    }
}

/// Only the owning worker uses a pool (and the reaper, rarely), so the lock is uncontended. A
/// panic while holding it cannot leave the Vec half-updated, so poisoning is ignored.
fn lock(pool: &Mutex<Vec<IdleConn>>) -> std::sync::MutexGuard<'_, Vec<IdleConn>> {
    pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
