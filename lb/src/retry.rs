//! Step 7 of a request, when it fails: may it be sent again, to another backend?
//!
//! A backend that restarts or dies takes with it the requests it had on its connections. Most of
//! them can be sent again elsewhere without the client ever knowing, but only when repeating the
//! request cannot do harm. The rules (nginx's `proxy_next_upstream` and RFC 9110 §9.2.2):
//!
//! ```text
//!   what failed                               GET/HEAD/PUT/DELETE/...    POST/PATCH/...
//!   connect refused / timed out               retry elsewhere            retry elsewhere
//!   request never written (pooled conn dead)  retry                      retry
//!   sent, then reset/closed before a response retry, if body kept whole  502: it may have arrived
//!   response head arrived (any status)        never: it is the answer    never
//!   no response head within --response-timeout 504                       504
//!   backend takes no body byte for --body-timeout 504                     504
//! ```
//!
//! A request is *idempotent* when sending it twice has the same effect as sending it once (GET,
//! HEAD, OPTIONS, TRACE, PUT, DELETE). Even then a retry needs the request itself: the body is
//! consumed as it is written, so before the first attempt [`Replay::capture`] arranges to keep a copy
//! of the body as it streams past, if it is small enough (`--retry-body-bytes`, see `body.rs`). The
//! rewritten head needs no copy: writing it leaves it whole, and the attempt that fails hands it back
//! ([`Replay::keep_head`]). A larger body is not kept, and its request is never retried once it left.
//!
//! Retries are bounded by `--retries` (each backend tried after the first counts one) and never
//! extend `--response-timeout`: all attempts share one deadline.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Uri};
use http_body::Body;

use crate::body::{Kept, RequestBody};
use crate::h1::RequestHead;

/// RFC 9110 §9.2.2: the methods a proxy may repeat on its own.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A request ready to be written to a backend.
#[derive(Debug)]
pub struct Outgoing {
    pub head: RequestHead,
    pub body: RequestBody,
    /// The lines of the fields lb adds (`forward.rs`), written after the request's own.
    pub added: Bytes,
    /// `Host` is absent from the client's request: each attempt names its backend
    /// (`forward::with_host`).
    pub needs_host: bool,
}

/// What it takes to send a request again after it was written: its head and a copy of its body.
#[derive(Debug)]
pub struct Replay {
    /// The rewritten head, handed back by the attempt that lost it (see [`Replay::keep_head`]):
    /// most requests are answered the first time, and never pay for a copy of their head.
    head: Option<RequestHead>,
    added: Bytes,
    needs_host: bool,
    /// The body's copy; `None` for a request without a body (most GETs), which needs none.
    body: Option<Arc<Mutex<Kept>>>,
}

impl Replay {
    /// Keep what a retry of `outgoing` would need, if it may be retried once written: the method
    /// is idempotent and the body is not known to exceed `body_limit` bytes.
    pub fn capture(outgoing: &mut Outgoing, body_limit: usize) -> Option<Replay> {
        if !is_idempotent(&outgoing.head.method) {
            return None;
        }
        let body = if outgoing.body.is_end_stream() {
            None
        } else {
            Some(outgoing.body.keep_copy(body_limit)?)
        };
        Some(Replay {
            head: None,
            added: outgoing.added.clone(),
            needs_host: outgoing.needs_host,
            body,
        })
    }

    /// The head of an attempt that was written and lost: what [`Replay::again`] sends anew.
    /// Writing a request does not consume its head, so keeping it costs nothing; only the first
    /// is kept (every attempt carries the same head, re-aimed).
    pub fn keep_head(&mut self, head: RequestHead) {
        self.head.get_or_insert(head);
    }

    /// The request again, aimed at `backend` with `target`; `None` if the body was not kept whole
    /// (it outgrew the limit, or the client had not finished sending it).
    pub fn again(&self, target: Uri) -> Option<Box<Outgoing>> {
        let head = self.head.as_ref()?;
        let chunks: Vec<Bytes> = match &self.body {
            None => Vec::new(),
            Some(kept) => kept
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .whole()?,
        };
        let mut outgoing = Box::new(Outgoing {
            head: head.clone(),
            body: RequestBody::replay(chunks),
            added: self.added.clone(),
            needs_host: self.needs_host,
        });
        outgoing.head.uri = target;
        Some(outgoing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_methods_are_repeated() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "LOCK"] {
            assert!(!is_idempotent(&m.parse().unwrap()), "{m}");
        }
    }
}
