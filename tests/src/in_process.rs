//! [`InProcess`]: a server that runs inside the test process, on a thread and a tokio runtime of
//! its own, so that tests stay plain blocking functions whatever they start: a test's blocking
//! client never stalls the server it talks to, and the server never depends on the test's runtime.
//!
//! The servers of this workspace share one shape, `serve(listener, config, shutdown)` (see
//! `lb::run`, `restful_server::serve`), and that is what [`InProcess::start`] runs: a test
//! crate that has the server's library passes a closure such as
//! `|listener, shutdown| lb::run(listener, config, shutdown)`. (This crate does not depend on `lb`
//! or `restful-server` itself, so that their own tests can depend on it.)

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::PATIENCE;

/// The stop signal handed to a server: completes when [`InProcess::stop`] is called.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// How a server's thread ended.
#[derive(Debug)]
enum Ended {
    /// The server future returned this.
    Returned(io::Result<()>),
    /// [`InProcess::abort`] or a drop dropped it.
    Aborted,
}

/// A server future running on a thread of its own; aborted (every socket closed) when dropped.
#[derive(Debug)]
pub struct InProcess {
    pub addr: SocketAddr,
    name: String,
    /// Completes the server's shutdown future: a graceful stop.
    graceful: Option<oneshot::Sender<()>>,
    /// Drops the server future and the runtime with every task on it: an abrupt stop.
    abort: Option<oneshot::Sender<()>>,
    /// How the server ended.
    done: mpsc::Receiver<Ended>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    /// Run `serve(listener, shutdown)` on a new thread with a single-threaded tokio runtime, on
    /// `listener` (bound by the caller, so that it can choose the address and options).
    pub fn start<F, Fut>(name: &str, listener: std::net::TcpListener, serve: F) -> InProcess
    where
        F: FnOnce(tokio::net::TcpListener, Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = io::Result<()>> + 'static,
    {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{name}: no local address: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (graceful, stopped) = oneshot::channel::<()>();
        let (abort, aborted) = oneshot::channel::<()>();
        let (done_tx, done) = mpsc::channel();
        let thread_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("{thread_name}: cannot build a runtime: {e}"));
                let ended = runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => return Ended::Returned(Err(e)),
                    };
                    // Only an explicit stop completes it: a dropped sender (the test ended
                    // without one) means an abort, not a graceful shutdown.
                    let shutdown: Shutdown = Box::pin(async move {
                        if stopped.await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    });
                    tokio::select! {
                        result = serve(listener, shutdown) => Ended::Returned(result),
                        _ = aborted => Ended::Aborted,
                    }
                });
                // Dropping the runtime drops every task still on it: connections close.
                drop(runtime);
                let _ = done_tx.send(ended);
            })
            .unwrap_or_else(|e| panic!("{name}: cannot start a thread: {e}"));
        InProcess {
            addr,
            name: name.to_string(),
            graceful: Some(graceful),
            abort: Some(abort),
            done,
            thread: Some(thread),
        }
    }

    /// Bind `127.0.0.1:0` for [`InProcess::start`].
    pub fn loopback_listener() -> std::net::TcpListener {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:0: {e}"))
    }

    /// Complete the server's shutdown future and wait (at most [`PATIENCE`]) for it to return:
    /// for `lb` and `restful-server`, in-flight requests finish first and idle connections close.
    /// Panics if the server returned an error, or takes too long.
    pub fn stop(&mut self) {
        if let Some(graceful) = self.graceful.take() {
            let _ = graceful.send(());
        }
        self.wait(PATIENCE);
    }

    /// Stop at once: drop the server and every connection it has, as `kill` would.
    pub fn abort(&mut self) {
        if let Some(abort) = self.abort.take() {
            let _ = abort.send(());
        }
        self.wait(PATIENCE);
    }

    fn wait(&mut self, limit: Duration) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        match self.done.recv_timeout(limit) {
            Ok(Ended::Returned(Ok(())) | Ended::Aborted) => {}
            Ok(Ended::Returned(Err(e))) => panic!("{} ({}) failed: {e}", self.name, self.addr),
            Err(_) => panic!(
                "{} ({}) still running {limit:?} after the stop signal",
                self.name, self.addr
            ),
        }
        let _ = thread.join();
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(abort) = self.abort.take() {
            let _ = abort.send(());
        }
        // Not joined: a test that is already failing must not wait for a server too.
    }
}
