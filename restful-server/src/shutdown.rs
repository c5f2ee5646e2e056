//! The stop signal for [`crate::serve`]: a future that resolves on Ctrl-C (SIGINT) or SIGTERM, the
//! signal that `kill`, systemd and container runtimes send to ask a process to stop.

use std::future::Future;

use tokio::signal::unix::{signal as unix_signal, Signal, SignalKind};

/// Installs the SIGINT and SIGTERM handlers now, and returns a future that resolves on the first
/// of them.
///
/// The handlers are installed by this call, not when the future is first polled: the binary calls
/// it before printing its "Starting" line, so a test (or script) that sends SIGTERM as soon as it
/// reads that line finds the handler in place. Until a handler is installed the signal's default
/// action applies, which kills the process instead of shutting it down gracefully.
///
/// If a handler cannot be installed (only when the process is out of resources), that signal keeps
/// its default action, and the future waits on the other one.
///
/// Must be called from within a tokio runtime.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    let interrupt = install(SignalKind::interrupt(), "SIGINT");
    let terminate = install(SignalKind::terminate(), "SIGTERM");
    async move {
        tokio::select! {
            () = received(interrupt) => {}
            () = received(terminate) => {}
        }
    }
}

fn install(kind: SignalKind, name: &str) -> Option<Signal> {
    unix_signal(kind)
        .inspect_err(|err| tracing::warn!("cannot handle {name}: {err}"))
        .ok()
}

/// Resolves when the signal arrives; never, if its handler could not be installed.
async fn received(signal: Option<Signal>) {
    match signal {
        Some(mut signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}
