//! The stop signal for [`crate::serve`]: a future that resolves on Ctrl-C (SIGINT) or SIGTERM, the
//! signal that `kill`, systemd and container runtimes send to ask a process to stop.

use tokio::signal::unix::{signal as unix_signal, SignalKind};

/// Resolves on the first Ctrl-C or SIGTERM. If a handler cannot be installed (which only happens
/// when the process is out of resources), that signal keeps its default action (the process dies
/// on it), and this future waits on the other one.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {err}");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match unix_signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(err) => {
                tracing::warn!("cannot listen for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
