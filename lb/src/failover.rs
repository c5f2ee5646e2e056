//! Step 4 of a request, continued: the order in which the members of a group are tried, and how
//! many may be.
//!
//! The strategy in `pick/` names the member to try first; [`Walk`] goes on from there around the
//! group, skipping members whose backend is marked down (`health.rs`), until one answers or the
//! attempt budget (`--retries` + 1) is spent. If *every* member is marked down it tries them all
//! anyway ("panic mode", as Envoy calls it): a refused connection costs microseconds, and a backend
//! that just came back gets traffic at once instead of after its cool-down.

use std::sync::Arc;

use crate::error::ProxyError;
use crate::pick::{failover_order, Selection};
use crate::route::{Group, Member};
use crate::trace::Trace;
use crate::upstream::Backend;

/// One request's walk over its group.
#[derive(Debug)]
pub struct Walk<'g> {
    group: &'g Group,
    backends: &'g [Arc<Backend>],
    /// The strategy's choice: the walk starts there and goes round the group once.
    first: usize,
    /// How many slots have been visited.
    visited: usize,
    any_up: bool,
    /// Attempts made so far (a connect or a send to one backend is one attempt).
    pub attempts: usize,
    /// Attempts allowed in all: `--retries` + 1.
    pub budget: usize,
    /// Why the last attempt failed.
    last_failure: Option<String>,
    /// Whether any attempt failed after its request was sent (rather than while connecting).
    lost_any: bool,
}

impl<'g> Walk<'g> {
    /// Ask the group's strategy where to start; `retries` bounds the attempts after the first.
    pub fn start(
        group: &'g Group,
        backends: &'g [Arc<Backend>],
        retries: Option<usize>,
        trace: &Trace,
        request: u64,
    ) -> Self {
        let len = group.members.len();
        let first = group.selection.pick(len);
        trace.event(
            request,
            format_args!(
                "pick: round robin slot {first} of {len} (counter {})",
                group.selection.count()
            ),
        );
        let usable = |m: &Member| {
            backends
                .get(m.backend)
                .is_some_and(|b| b.health.is_available())
        };
        // Default: every other member gets one chance.
        let retries = retries.unwrap_or(len.saturating_sub(1));
        Walk {
            group,
            backends,
            first,
            visited: 0,
            any_up: group.members.iter().any(usable),
            attempts: 0,
            budget: retries.saturating_add(1),
            last_failure: None,
            lost_any: false,
        }
    }

    /// The next member worth an attempt, if the budget allows one; counts the attempt.
    pub fn next(&mut self, trace: &Trace, request: u64) -> Option<(&'g Member, Arc<Backend>)> {
        if self.attempts >= self.budget {
            return None;
        }
        let len = self.group.members.len();
        while let Some(slot) = failover_order(self.first, len).nth(self.visited) {
            self.visited += 1;
            let Some(member) = self.group.members.get(slot) else {
                continue;
            };
            let Some(backend) = self.backends.get(member.backend) else {
                continue;
            };
            if self.any_up && !backend.health.is_available() {
                trace.event(request, format_args!("skip {}: marked down", backend.name));
                continue;
            }
            self.attempts += 1;
            return Some((member, backend.clone()));
        }
        None
    }

    /// The attempt on the current member failed before anything was sent (`sent = false`) or
    /// after (`sent = true`).
    pub fn failed(&mut self, why: String, sent: bool) {
        self.lost_any |= sent;
        self.last_failure = Some(why);
    }

    /// The next member for a retry, traced with the reason (`retry 1/2 on ... after: ...`).
    pub fn retry(&mut self, trace: &Trace, request: u64) -> Option<(&'g Member, Arc<Backend>)> {
        let next = self.next(trace, request)?;
        trace.event(
            request,
            format_args!(
                "retry {}/{} on {} after: {}",
                self.attempts - 1,
                self.budget - 1,
                next.1.name,
                self.last_failure.as_deref().unwrap_or("-")
            ),
        );
        Some(next)
    }

    /// No member left to try (or no attempt left): the error the client gets.
    pub fn gave_up(&self) -> ProxyError {
        let last = self
            .last_failure
            .clone()
            .unwrap_or_else(|| "no backend available".to_string());
        if self.lost_any {
            ProxyError::GaveUp {
                attempts: self.attempts,
                last,
            }
        } else {
            ProxyError::AllBackendsDown {
                prefix: self.group.prefix.clone(),
                last,
            }
        }
    }
}
