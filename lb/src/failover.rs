//! Step 4 of a request, continued: the order in which the members of a group are tried, and how
//! many may be.
//!
//! The group's strategy (`pick/`) orders the members for this request: the first is its choice,
//! the rest the failover order; members whose backend is marked down (`health.rs`) are left out,
//! unless *every* one is ("panic mode": a refused connection costs microseconds, and a backend that
//! just came back gets traffic at once). [`Walk`] hands them out one attempt at a time, until one
//! answers or the attempt budget (`--retries` + 1) is spent.

use std::cell::RefCell;
use std::sync::Arc;

use crate::error::ProxyError;
use crate::pick::{Load, Members, Order, RequestInfo, Status};
use crate::route::{Group, Member};
use crate::trace::Trace;
use crate::upstream::Backend;

/// One request's walk over its group.
#[derive(Debug)]
pub struct Walk<'g> {
    group: &'g Group,
    backends: &'g [Arc<Backend>],
    /// The strategy's order for this request; its buffers go back to a per-thread spare.
    order: Order,
    /// How many slots of `order` have been handed out.
    visited: usize,
    /// Attempts made so far (a connect or a send to one backend is one attempt).
    attempts: usize,
    /// Attempts allowed in all: `--retries` + 1.
    budget: usize,
    /// Why the last attempt failed.
    last_failure: Option<String>,
    /// Whether any attempt failed after its request was sent (rather than while connecting).
    lost_any: bool,
}

thread_local! {
    /// An `Order`'s buffers, reused by the next request on this thread: choosing allocates nothing.
    static SPARE: RefCell<Option<Order>> = const { RefCell::new(None) };
}

/// The group as the strategy sees it: each member's health and load, read from the backends.
struct View<'g> {
    group: &'g Group,
    backends: &'g [Arc<Backend>],
}

impl View<'_> {
    fn backend(&self, slot: usize) -> Option<&Backend> {
        let member = self.group.members.get(slot)?;
        self.backends.get(member.backend).map(|b| &**b)
    }
}

impl Members for View<'_> {
    fn status(&self, slot: usize) -> Status {
        match self.backend(slot).and_then(|b| b.health.up()) {
            Some(back_for) => Status::Up { back_for },
            None => Status::Down,
        }
    }

    fn load(&self, slot: usize) -> Option<&Load> {
        self.backend(slot).map(|b| &*b.load)
    }
}

impl<'g> Walk<'g> {
    /// Ask the group's strategy for this request's order; `retries` bounds the attempts after
    /// the first (default: every other member gets one chance).
    pub fn start(
        group: &'g Group,
        backends: &'g [Arc<Backend>],
        retries: Option<usize>,
        request: &RequestInfo<'_>,
        trace: &Trace,
        number: u64,
    ) -> Self {
        let mut order = SPARE
            .with(|spare| spare.borrow_mut().take())
            .unwrap_or_default();
        let view = View { group, backends };
        let why = group.selection.order(request, &view, &mut order);
        if trace.is_enabled() {
            let name = |slot: usize| view.backend(slot).map_or("?", |b| &*b.name);
            trace.event(4, number, format_args!("pick: {}", why.named(name)));
        }
        let retries = retries.unwrap_or(group.members.len().saturating_sub(1));
        Walk {
            group,
            backends,
            order,
            visited: 0,
            attempts: 0,
            budget: retries.saturating_add(1),
            last_failure: None,
            lost_any: false,
        }
    }

    /// The next member to try (the first, then the next ones), if the order and the budget allow
    /// one; counts the attempt.
    pub fn next_member(&mut self) -> Option<(&'g Member, Arc<Backend>)> {
        while self.attempts < self.budget {
            let slot = *self.order.slots().get(self.visited)?;
            self.visited += 1;
            let Some(member) = self.group.members.get(slot) else {
                continue;
            };
            let Some(backend) = self.backends.get(member.backend) else {
                continue;
            };
            self.attempts += 1;
            return Some((member, backend.clone()));
        }
        None
    }

    /// Whether another member could still be tried after this attempt (budget and order both
    /// allow one): if not, a request need not keep a copy of itself for a retry.
    pub fn has_more(&self) -> bool {
        self.attempts < self.budget && self.visited < self.order.slots().len()
    }

    /// The attempt on the current member failed before anything was sent (`sent = false`) or
    /// after (`sent = true`).
    pub fn failed(&mut self, why: String, sent: bool) {
        self.lost_any |= sent;
        self.last_failure = Some(why);
    }

    /// The next member for a retry, traced with the reason (`retry 1/2 on ... after: ...`).
    pub fn retry(&mut self, trace: &Trace, number: u64) -> Option<(&'g Member, Arc<Backend>)> {
        let next = self.next_member()?;
        trace.event(
            4,
            number,
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

impl Drop for Walk<'_> {
    fn drop(&mut self) {
        let order = std::mem::take(&mut self.order);
        SPARE.with(|spare| *spare.borrow_mut() = Some(order));
    }
}
