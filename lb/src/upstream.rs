//! Step 4 of a request: get a connection to the chosen backend, reusing an idle one when we can.
//!
//! Opening a TCP connection per request (what hyper's `gateway.rs` example does) costs a handshake
//! and a socket in TIME_WAIT every time. Instead each backend keeps a small pool of idle HTTP/1.1
//! connections. A connection goes back into the pool only after its response body was read to the
//! end (an HTTP/1.1 connection carries one exchange at a time), and is thrown away if it sat idle
//! longer than `--pool-idle-timeout`, which should be shorter than the backend's own keep-alive so
//! that we never pick a connection the backend is just about to close.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::RequestBody;
use crate::error::ConnectError;
use crate::health::Health;

/// The sending half of one HTTP/1.1 connection to a backend.
pub type Sender = SendRequest<RequestBody>;

/// One backend server and its pool of idle connections.
#[derive(Debug)]
pub struct Backend {
    /// The address as written on the command line (`127.0.0.1:8910`): what logs show.
    pub name: String,
    addr: SocketAddr,
    pub health: Health,
    idle: Mutex<Vec<IdleConn>>,
    next_id: AtomicU64,
    settings: PoolSettings,
}

#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

#[derive(Debug)]
struct IdleConn {
    sender: Sender,
    id: u64,
    since: Instant,
}

/// A connection checked out of the pool (or freshly made) for one request.
#[derive(Debug)]
pub struct Upstream {
    pub sender: Sender,
    /// Per-backend connection number, shown by `--trace`.
    pub id: u64,
    /// How long connecting took, or `None` for a reused pooled connection.
    pub connect_time: Option<Duration>,
}

impl Backend {
    pub fn new(name: String, addr: SocketAddr, settings: PoolSettings) -> Self {
        Backend {
            name,
            addr,
            health: Health::default(),
            idle: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            settings,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection ready to carry one request: the most recently used idle one, or a new one.
    pub async fn checkout(&self) -> Result<Upstream, ConnectError> {
        while let Some(mut idle) = self.pop_idle() {
            if idle.since.elapsed() > self.settings.idle_timeout || idle.sender.is_closed() {
                continue; // dropping the sender closes the connection
            }
            // The previous exchange is complete, but the connection task may not have noticed yet.
            if idle.sender.is_ready()
                || tokio::time::timeout(Duration::from_millis(50), idle.sender.ready())
                    .await
                    .is_ok_and(|r| r.is_ok())
            {
                return Ok(Upstream {
                    sender: idle.sender,
                    id: idle.id,
                    connect_time: None,
                });
            }
        }
        self.connect().await
    }

    /// Open a new connection: TCP connect (bounded by `--connect-timeout`), then the HTTP/1.1 handshake.
    pub async fn connect(&self) -> Result<Upstream, ConnectError> {
        let started = Instant::now();
        let timeout = self.settings.connect_timeout;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(self.addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                return Err(ConnectError::Io {
                    backend: self.name.clone(),
                    source,
                })
            }
            Err(_) => {
                return Err(ConnectError::Timeout {
                    backend: self.name.clone(),
                    timeout,
                })
            }
        };
        // Proxies write small heads and forward small chunks: do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake {
                backend: self.name.clone(),
                source,
            })?;
        // The connection object drives the socket; it ends when the backend closes or every
        // `Sender` is dropped. `with_upgrades` lets a 101 response hand the socket to a tunnel.
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(Upstream {
            sender,
            id,
            connect_time: Some(started.elapsed()),
        })
    }

    /// Return a connection whose exchange completed cleanly, so the next request can reuse it.
    pub fn checkin(&self, sender: Sender, id: u64) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.settings.max_idle {
            idle.push(IdleConn {
                sender,
                id,
                since: Instant::now(),
            });
        }
    }

    /// Close idle connections older than the pool idle timeout (called periodically).
    pub fn evict_expired(&self) {
        let limit = self.settings.idle_timeout;
        self.lock()
            .retain(|c| c.since.elapsed() <= limit && !c.sender.is_closed());
    }

    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    fn pop_idle(&self) -> Option<IdleConn> {
        self.lock().pop()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<IdleConn>> {
        // A panic while holding this lock cannot leave the Vec half-updated, so poisoning is ignored.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
