//! `lb`: a streaming HTTP/1.1 load balancer with the command line of the Mongoose
//! `load_balancer` example, speaking HTTP/1.1 on both legs through its own codec ([`h1`]): round
//! robin by default, as the original, and load-aware or consistent-hashing strategies with
//! `--balance`.
//!
//! The modules follow one request through the balancer, in order (start reading at [`proxy`],
//! whose [`proxy::handle`] runs steps 2 to 8):
//!
//! 0. [`cli`] / [`config`]: the original command line becomes a [`Config`];
//! 1. [`accept`]: accept the connection (connection cap, TLS, shutdown); [`serve`]: read its
//!    requests one by one and write their responses ([`h1::server`]), with [`watchdog`] for the
//!    header and idle timeouts; [`downstream`] is what the request path knows of that client
//!    connection;
//! 2. [`proxy`]: check the request;
//! 3. [`route`]: Host + path -> a group of backends (longest prefix, vhosts first);
//! 4. [`pick`]: the group's strategy orders the members (round robin by default); [`failover`]
//!    walks that order, with [`health`] deciding who is left out;
//! 5. [`upstream`]: a pooled (or new) connection to that backend, spoken to in HTTP/1.1 by [`h1`]
//!    (framing, chunks, when a connection can be reused);
//! 6. [`forward`]: the rewritten request head (hop-by-hop headers, X-Forwarded-For, Via);
//! 7. send: the request [`body`] streamed up; on a failure before the response, [`retry`] says
//!    whether the request may go to the next member;
//! 8. [`response`]: the response body streamed down ([`respond`] for answers lb writes itself);
//! 9. [`response::Completion::finish`]: pool the connection, write the [`access_log`] line,
//!    [`trace`] `done`.
//!
//! Around them: [`error`] (what can fail), [`probe`] (active health checks), [`shutdown`].

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod accept;
pub mod access_log;
pub mod admin;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod downstream;
pub mod dump;
pub mod error;
pub mod failover;
pub mod forward;
pub mod h1;
pub mod health;
pub mod pick;
pub mod probe;
pub mod proxy;
pub mod respond;
pub mod response;
pub mod retry;
pub mod route;
pub mod serve;
pub mod shutdown;
pub mod stats;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod watchdog;

use std::future::Future;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use config::Config;

use access_log::AccessLog;
use config::{Limits, Timeouts};
use dump::Dump;
use route::Router;
use upstream::{Backend, Connector, PoolSettings};

/// The shared state every request reads: routes, backends, settings, the log handle.
#[derive(Debug)]
pub struct Balancer {
    pub router: Router,
    pub backends: Vec<Arc<Backend>>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub fail_timeout: Duration,
    /// `--retries`: attempts after the first; `None` = each group's size minus 1.
    pub retries: Option<usize>,
    pub trace: bool,
    pub log: AccessLog,
    /// Counters for `--admin`, shared with every request's `Completion`.
    pub stats: Arc<stats::Stats>,
    /// `--balance`, as given (for `--admin`).
    pub balance: String,
    /// `--slow-start` (for `--admin`'s state of a backend).
    pub slow_start: Duration,
    /// `-s`: the TLS handshake for each client connection.
    pub tls: Option<Tls>,
    /// `-D`: where the bytes of both legs are copied.
    pub dump: Dump,
}

impl Balancer {
    /// Resolve every backend address once and group the rules.
    pub fn new(config: &Config, log: AccessLog, dump: Dump) -> std::io::Result<Self> {
        Self::with_connector(config, log, dump, Connector::Tcp)
    }

    /// [`Balancer::new`], reaching backends through `connector` (in-memory pipes in the benchmark
    /// of the request path, `lb/benches/request_path.rs`).
    pub fn with_connector(
        config: &Config,
        log: AccessLog,
        dump: Dump,
        connector: Connector,
    ) -> std::io::Result<Self> {
        let settings = PoolSettings {
            workers: config.threads.max(1),
            connect_timeout: config.timeouts.connect,
            idle_timeout: config.timeouts.pool_idle,
            max_idle: config.limits.pool_max_idle,
        };
        let mut backends: Vec<Arc<Backend>> = Vec::new();
        for rule in &config.rules {
            if backends.iter().any(|b| *b.name == *rule.backend) {
                continue;
            }
            let addr = rule.backend.to_socket_addrs()?.next().ok_or_else(|| {
                std::io::Error::other(format!(
                    "backend address '{}' resolves to nothing",
                    rule.backend
                ))
            })?;
            // Only ewma reads a backend's latency: the other strategies do not pay for timing it.
            let load = match config.balance {
                pick::Balance::Ewma => pick::Load::new(config.ewma_decay),
                _ => pick::Load::in_flight_only(),
            };
            backends.push(Arc::new(Backend::new(
                rule.backend.clone(),
                addr,
                settings,
                load,
                dump.clone(),
                connector.clone(),
            )));
        }
        let router = Router::new(
            &config.rules,
            |name| backends.iter().position(|b| *b.name == *name).unwrap_or(0),
            &config.balance,
            &config.balance_settings,
        );
        Ok(Balancer {
            router,
            backends,
            timeouts: config.timeouts,
            limits: config.limits,
            fail_timeout: config.fail_timeout,
            retries: config.retries,
            trace: config.trace,
            log,
            stats: Arc::new(stats::Stats::default()),
            balance: config.balance.to_string(),
            slow_start: config.balance_settings.slow_start,
            tls: match &config.tls {
                Some(files) => Some(Tls(tls::acceptor(files).map_err(std::io::Error::other)?)),
                None => None,
            },
            dump,
        })
    }
}

/// The TLS acceptor (`-s`), shown as `Tls` in debug output (rustls' acceptor has no `Debug`).
pub struct Tls(pub tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

/// Print the original's startup lines (on stderr, so `-l -` keeps stdout for log lines). A weight
/// is shown only when `-w` gave one, so that the original's lines stay byte-identical without it.
pub fn print_rules(config: &Config) {
    for rule in &config.rules {
        let weight = rule
            .weight
            .map(|w| format!(",weight={w}"))
            .unwrap_or_default();
        eprintln!(
            "Adding backend for {}{} : {} [redirect={},prefix_replacement={}{weight}]",
            rule.vhost.as_deref().unwrap_or(""),
            rule.prefix,
            rule.backend,
            u8::from(rule.redirect),
            rule.replacement
        );
    }
}

/// Run the balancer on an already-bound listener until `shutdown` completes, then drain
/// in-flight requests (up to `--grace`) and flush the access log.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    run_with_admin(listener, None, config, shutdown).await
}

/// [`run`], with the `--admin` endpoints served on `admin` (see [`admin`]).
pub async fn run_with_admin(
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let listen = listener.local_addr()?.to_string();
    let (log, writer) = match &config.log {
        Some(target) => {
            let (log, writer) = AccessLog::start(target, config.log_format)?;
            (log, Some(writer))
        }
        None => (AccessLog::default(), None),
    };
    let (dump, dump_writer) = match &config.dump {
        Some(target) => {
            let (dump, writer) = Dump::start(target)?;
            (dump, Some(writer))
        }
        None => (Dump::default(), None),
    };
    let balancer = Arc::new(Balancer::new(&config, log, dump)?);

    let mut background = spawn_background(&balancer, &config);
    if let Some(admin) = admin {
        background.push(tokio::spawn(admin::serve(admin, balancer.clone(), listen)));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let permits = Arc::new(tokio::sync::Semaphore::new(config.limits.max_conns));
    let workers = start_workers(listener, &balancer, stop_rx, permits, config.threads)?;
    shutdown.await;
    eprintln!(
        "lb: shutting down: no new connections, waiting up to {:?} for in-flight requests",
        config.timeouts.grace
    );
    let _ = stop_tx.send(true);
    for worker in workers {
        let _ = worker.await;
    }
    for task in background {
        task.abort();
    }
    drop(balancer);
    if let Some(writer) = dump_writer {
        let dropped = tokio::task::spawn_blocking(move || writer.finish())
            .await
            .map_err(std::io::Error::other)??;
        if dropped > 0 {
            eprintln!("lb: {dropped} -D chunks were dropped because the dump could not keep up");
        }
    }
    if let Some(writer) = writer {
        let dropped = tokio::task::spawn_blocking(move || writer.finish())
            .await
            .map_err(std::io::Error::other)??;
        if dropped > 0 {
            eprintln!(
                "lb: {dropped} access-log lines were dropped because the log could not keep up"
            );
        }
    }
    Ok(())
}

/// Serve `listener` with `threads` workers, each running its own single-threaded event loop on a
/// thread of its own (like nginx's worker processes: a request never hops between threads, so no
/// cross-thread wake-ups). An acceptor on the caller's runtime hands each new connection to the
/// least busy worker. With `threads <= 1` the one worker runs on the caller's runtime. The returned
/// tasks end once the acceptor has stopped and every worker has drained its connections.
fn start_workers(
    listener: TcpListener,
    balancer: &Arc<Balancer>,
    stop: tokio::sync::watch::Receiver<bool>,
    permits: Arc<tokio::sync::Semaphore>,
    threads: usize,
) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    let mut handles = Vec::new();
    if threads <= 1 {
        let (handle, inbox) = accept::worker_channel();
        handles.push(handle);
        tasks.push(tokio::spawn(accept::worker_loop(
            inbox,
            balancer.clone(),
            stop.clone(),
        )));
    } else {
        for id in 0..threads {
            let (handle, inbox) = accept::worker_channel();
            handles.push(handle);
            let (balancer, stop) = (balancer.clone(), stop.clone());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let thread = std::thread::Builder::new()
                .name(format!("lb-worker-{id}"))
                .spawn(move || {
                    upstream::set_worker_id(id);
                    runtime.block_on(accept::worker_loop(inbox, balancer, stop));
                })?;
            tasks.push(tokio::task::spawn_blocking(move || {
                let _ = thread.join();
            }));
        }
    }
    tasks.push(tokio::spawn(accept::accept_loop(
        listener, handles, stop, permits,
    )));
    Ok(tasks)
}

/// The pool reaper and, with `--health-check`, the prober.
fn spawn_background(balancer: &Arc<Balancer>, config: &Config) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let backends = balancer.backends.clone();
    let every = (config.timeouts.pool_idle / 2).max(Duration::from_millis(100));
    tasks.push(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            for backend in &backends {
                backend.evict_expired();
            }
        }
    }));
    if let Some(check) = config.health_check.clone() {
        tasks.push(tokio::spawn(probe::run(balancer.backends.clone(), check)));
    }
    tasks
}
