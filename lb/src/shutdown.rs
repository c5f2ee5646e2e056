//! The stop signal: a future that completes on Ctrl-C (SIGINT) or SIGTERM.
//!
//! [`crate::run`] takes any future as its stop signal, so tests can stop a balancer without
//! sending signals; the binary passes this one.

use std::future::Future;

/// Installs the SIGINT and SIGTERM handlers now, and returns a future that completes on the first
/// of them.
///
/// The handlers are installed by this call, not when the future is first polled: the binary calls
/// it before printing its `Starting LB on` line, so a script (or test) that signals lb as soon as it
/// reads that line finds the handlers in place; until then a signal's default action would kill the
/// process instead of shutting it down gracefully. A handler that cannot be installed (only when
/// the process is out of resources) leaves that signal's default action; the future then waits on
/// the other one.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).ok();
    let mut terminate = signal(SignalKind::terminate()).ok();
    async move {
        let interrupted = async {
            match interrupt.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        let terminated = async {
            match terminate.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = interrupted => {}
            () = terminated => {}
        }
    }
}
