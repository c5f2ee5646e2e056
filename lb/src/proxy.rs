//! The file to read first: one request, from the moment its head has been read until its response
//! head goes back. [`handle`] runs the steps of a request in order (the numbers are the ones used
//! everywhere: ARCHITECTURE.md, each module's opening comment, `--trace`):
//!
//! 1. [`crate::accept`] accepted the connection and [`crate::serve`] read the request head;
//! 2. check the request ([`check_request`]): HTTP/1.1 needs exactly one `Host`;
//! 3. [`crate::route`]: which group of backends serves this Host and path;
//! 4. [`crate::pick`] names the member to try first, [`crate::failover`] walks on from there;
//! 5. [`crate::upstream`]: a pooled (or new) connection to that backend;
//! 6. [`crate::forward`]: rewrite the head (target, hop-by-hop headers, X-Forwarded-For, Via);
//! 7. [`Exchange::send`]: send it, streaming the body ([`crate::body`]), and wait for the response
//!    head (`--response-timeout`). If the backend fails before answering, [`crate::retry`] says
//!    whether the request may go to the next member;
//! 8. the response streams back through [`crate::response::ResponseBody`];
//! 9. its end, [`crate::response::Completion::finish`], pools the connection and writes the
//!    [`crate::access_log`] line.
//!
//! Every failure becomes a [`ProxyError`], turned into a status code in one place ([`crate::respond`]).
//!
//! **Invariant:** nothing here panics or buffers a body (a small body kept for a retry is a list of
//! reference-counted frames, not a copy).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use std::task::Poll;

use http::uri::PathAndQuery;
use http::{header, Response, StatusCode, Uri, Version};
use tokio::time::Sleep;

use crate::access_log::Record;
use crate::body::{IdleTimer, RequestBody};
use crate::downstream::ConnInfo;
use crate::error::{BoxError, ClientBodyError, ConnectError, ProxyError};
use crate::failover::Walk;
use crate::h1::{self, Asked, HeadFields, RequestHead, SendError, Sending};
use crate::pick::RequestInfo;
use crate::respond;
use crate::response::{Completion, ResponseBody};
use crate::retry::{Outgoing, Replay};
use crate::route::{rewrite, Group, Member};
use crate::upstream::{Backend, Upstream};
use crate::Balancer;

/// Answer one request. Never fails; failures are answered with an error status.
pub async fn handle(
    head: RequestHead,
    body: RequestBody,
    balancer: &Balancer,
    conn: &Arc<ConnInfo>,
) -> Response<ResponseBody> {
    let mut exchange = Exchange::begin(balancer, conn, &head);
    let response = match exchange.proxy(head, body).await {
        Ok(response) => response,
        Err(error) => {
            conn.trace
                .event(8, exchange.number, format_args!("error: {error}"));
            respond::error_response(&error)
        }
    };
    exchange.respond(response)
}

/// The state of one request while it is being proxied.
struct Exchange<'a> {
    balancer: &'a Balancer,
    conn: &'a ConnInfo,
    number: u64,
    /// The request's end: logs it exactly once, even if this exchange is dropped half-way. Boxed
    /// from the start: the response body keeps it until the end, and the box moves instead of
    /// the record (a few hundred bytes) at every step.
    completion: Box<Completion>,
}

impl<'a> Exchange<'a> {
    /// Step 1 is done: count the request in flight, trace its head, start its log record.
    fn begin(balancer: &'a Balancer, conn: &'a Arc<ConnInfo>, head: &RequestHead) -> Self {
        let in_flight = conn.begin_request();
        let number = in_flight.number();
        if conn.trace.is_enabled() {
            conn.trace.event(
                1,
                number,
                format_args!(
                    "request head read: {} {} {:?} (host {})",
                    head.method,
                    head.uri,
                    head.version,
                    head.fields.get_str(&header::HOST).unwrap_or("-")
                ),
            );
        }
        let record = Record::start(head, number, conn.peer, conn.scheme, &balancer.log);
        let completion = Box::new(Completion::new(
            record,
            balancer.log.clone(),
            conn.trace.clone(),
            in_flight,
            balancer.stats.clone(),
        ));
        Exchange {
            balancer,
            conn,
            number,
            completion,
        }
    }

    /// Steps 2 to 8: check, route, pick, rewrite, connect and send (again elsewhere if the backend
    /// fails and that is safe), then relay the response head.
    async fn proxy(
        &mut self,
        head: RequestHead,
        body: RequestBody,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        check_request(&head)?;
        let group = self.route(&head)?;
        let original = head
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut walk = self.pick(group, &head, &original);
        let (member, backend) = walk.next_member().ok_or_else(|| walk.gave_up())?;
        if member.redirect {
            return Ok(self.redirect(group, member, &backend, &original));
        }
        let upgrade = crate::forward::is_upgrade(head.version, &head.fields);
        let target = self.target(group, member, &original)?;
        let outgoing = self.forward(head, body, target);
        let first = Target {
            group,
            member,
            backend,
            original: &original,
        };
        match self.deliver(&mut walk, first, outgoing, upgrade).await? {
            Delivered::Answer(answer) => Ok(self.relay(answer, upgrade)),
            Delivered::Redirect(response) => Ok(*response),
        }
    }

    /// Step 4: the group's strategy orders its members for this request.
    fn pick(&self, group: &'a Group, head: &RequestHead, original: &PathAndQuery) -> Walk<'a> {
        let keys = RequestInfo {
            client: Some(self.conn.peer.ip()),
            path_and_query: original.as_str(),
            headers: &head.fields,
        };
        Walk::start(
            group,
            &self.balancer.backends,
            self.balancer.retries,
            &keys,
            &self.conn.trace,
            self.number,
        )
    }

    /// Steps 5 and 7, as often as the retry rules allow: send `outgoing` to the member in `to`; if
    /// that backend fails before answering, send it (or its kept copy) to the walk's next member.
    async fn deliver(
        &mut self,
        walk: &mut Walk<'a>,
        mut to: Target<'a, '_>,
        mut outgoing: Box<Outgoing>,
        upgrade: bool,
    ) -> Result<Delivered, ProxyError> {
        let limit = self.balancer.limits.retry_body_bytes;
        // A retry needs a copy of the body as it streams past: arrange one only when a retry is
        // possible.
        let mut replay = (!upgrade && walk.has_more())
            .then(|| Replay::capture(&mut outgoing, limit))
            .flatten();
        let mut sleep = std::pin::pin!(None);
        let mut deadline = Deadline {
            sleep: sleep.as_mut(),
        };
        let mut unsent = Some(outgoing);
        let mut first = true;
        loop {
            self.completion.backend = Some(to.backend.clone());
            let outgoing = match unsent.take() {
                // `forward` aimed it at the first member already.
                Some(outgoing) if first => outgoing,
                Some(mut outgoing) => {
                    outgoing.head.uri = self.target(to.group, to.member, to.original)?;
                    outgoing
                }
                None => {
                    let target = self.target(to.group, to.member, to.original)?;
                    replay
                        .as_ref()
                        .and_then(|r| r.again(target))
                        .ok_or_else(|| walk.gave_up())?
                }
            };
            first = false;
            // In flight on this backend (what least-conn and p2c compare) until the body ends.
            let in_flight = to.backend.load.clone().start_owned();
            match self
                .attempt(&to.backend, outgoing, upgrade, &mut deadline)
                .await
            {
                Attempt::Answered(answer) => {
                    self.completion.in_flight_on_backend = Some(in_flight);
                    return Ok(Delivered::Answer(answer));
                }
                Attempt::NotSent(outgoing, why) => {
                    to.backend.stats.connect_failures.fetch_add(1, Relaxed);
                    walk.failed(why, false);
                    unsent = Some(outgoing);
                }
                Attempt::Lost(error, spent) => {
                    to.backend.stats.lost.fetch_add(1, Relaxed);
                    if replay.is_none() && walk.has_more() {
                        return Err(error); // it may not be sent again (see `retry.rs`)
                    }
                    if let Some(replay) = replay.as_mut() {
                        replay.keep_head(spent.head);
                    }
                    walk.failed(error.to_string(), true);
                }
                Attempt::Fatal(error) => return Err(error),
            }
            (to.member, to.backend) = walk
                .retry(&self.conn.trace, self.number)
                .ok_or_else(|| walk.gave_up())?;
            self.balancer.stats.retries.fetch_add(1, Relaxed);
            if to.member.redirect {
                let redirect = self.redirect(to.group, to.member, &to.backend, to.original);
                return Ok(Delivered::Redirect(Box::new(redirect)));
            }
        }
    }

    /// Step 3: which group serves this Host and path. An absolute-form target
    /// (`GET http://host/x`) carries the host itself.
    fn route(&self, head: &RequestHead) -> Result<&'a Group, ProxyError> {
        let host = head
            .uri
            .host()
            .or_else(|| head.fields.get_str(&header::HOST));
        let path = head.uri.path();
        let Some(group) = self.balancer.router.route(host, path) else {
            return Err(ProxyError::NoRoute {
                host: host.unwrap_or("").to_string(),
                path: path.to_string(),
            });
        };
        self.conn.trace.event(
            3,
            self.number,
            format_args!(
                "route: prefix {} (vhost {}) -> group of {}",
                group.prefix,
                group.vhost.as_deref().unwrap_or("*"),
                group.members.len()
            ),
        );
        Ok(group)
    }

    /// The target `member` sees: the group's prefix replaced by the member's replacement.
    fn target(
        &self,
        group: &Group,
        member: &Member,
        original: &PathAndQuery,
    ) -> Result<Uri, ProxyError> {
        let path = original.as_str();
        if member.replacement == group.prefix
            && path.starts_with(&*group.prefix)
            && path.starts_with('/')
        {
            // `-b /api backend` (no `=REPLACEMENT`): the target stays as it is, without a copy.
            return Ok(Uri::from(original.clone()));
        }
        rewrite(&group.prefix, &member.replacement, path)
            .parse()
            .map_err(|_| ProxyError::BadRequest("request target cannot be rewritten"))
    }

    /// A `-r` member answers `302 Found` pointing at its backend instead of proxying.
    fn redirect(
        &self,
        group: &Group,
        member: &Member,
        backend: &Backend,
        original: &PathAndQuery,
    ) -> Response<ResponseBody> {
        let target = rewrite(&group.prefix, &member.replacement, original.as_str());
        let location = format!("http://{}{}", backend.name, target);
        self.conn
            .trace
            .event(8, self.number, format_args!("redirect: 302 to {location}"));
        respond::redirect(&location)
    }

    /// Step 6: the client's request becomes the backend's (see `forward.rs`).
    fn forward(&self, mut head: RequestHead, body: RequestBody, target: Uri) -> Box<Outgoing> {
        let needs_host = !head.fields.contains(&header::HOST);
        let added = crate::forward::request(&mut head, target, &self.conn.added);
        Box::new(Outgoing {
            head,
            body,
            added,
            needs_host,
        })
    }

    /// Steps 5 and 7 on one backend: get a connection, send, wait for the response head. A pooled
    /// connection found closed before the request was written is replaced by a fresh one to the
    /// same backend (a stale pool entry never costs a retry).
    async fn attempt(
        &self,
        backend: &Arc<Backend>,
        mut outgoing: Box<Outgoing>,
        upgrade: bool,
        deadline: &mut Deadline<'_>,
    ) -> Attempt {
        let mut fresh_only = false;
        loop {
            let upstream = match self.connect(backend, upgrade, fresh_only).await {
                Ok(upstream) => upstream,
                Err(error) => return Attempt::NotSent(outgoing, error.to_string()),
            };
            let pooled = upstream.was_pooled();
            match self.send(upstream, outgoing, upgrade, deadline).await {
                Sent::Answered(answer) => return Attempt::Answered(answer),
                Sent::NotWritten(unsent, id) if pooled && !fresh_only => {
                    self.conn.trace.event(
                        5,
                        self.number,
                        format_args!("pooled conn #{id} was closed by the backend; reconnecting"),
                    );
                    outgoing = unsent;
                    fresh_only = true;
                }
                Sent::NotWritten(unsent, _) => {
                    return Attempt::NotSent(
                        unsent,
                        "connection closed before the request was written".into(),
                    )
                }
                Sent::Failed(error, pooled, spent) => {
                    return self.lost(backend, error, pooled, spent)
                }
                Sent::Fatal(error) => return Attempt::Fatal(error),
            }
        }
    }

    /// Step 5: a connection to `backend`, pooled if possible. A failure marks the backend down
    /// for `--fail-timeout`: nothing was sent, so the next member may be tried for any method.
    async fn connect(
        &self,
        backend: &Arc<Backend>,
        upgrade: bool,
        fresh_only: bool,
    ) -> Result<Upstream, ConnectError> {
        // An upgrade (WebSocket) gets a connection of its own: it becomes a tunnel.
        let connected = if upgrade || fresh_only {
            Box::pin(backend.connect()).await // boxed: see `Backend::checkout`
        } else {
            backend.checkout().await
        };
        let trace = &self.conn.trace;
        match &connected {
            Ok(upstream) => {
                backend.health.connect_succeeded();
                match upstream.connect_time {
                    Some(t) => trace.event(
                        5,
                        self.number,
                        format_args!(
                            "upstream: new conn #{} to {} (connect {:.3}ms)",
                            upstream.id,
                            backend.name,
                            t.as_secs_f64() * 1e3
                        ),
                    ),
                    None => trace.event(
                        5,
                        self.number,
                        format_args!(
                            "upstream: reusing pooled conn #{} to {}",
                            upstream.id, backend.name
                        ),
                    ),
                }
            }
            Err(error) => {
                trace.event(5, self.number, format_args!("upstream: {error}"));
                self.mark_down(backend, error);
            }
        }
        connected
    }

    fn mark_down(&self, backend: &Backend, why: &dyn std::fmt::Display) {
        if backend.health.connect_failed(self.balancer.fail_timeout) {
            tracing::warn!(
                "backend {} is down ({why}); skipping it for {:?}",
                backend.name,
                self.balancer.fail_timeout
            );
        }
    }

    /// The backend failed after the request was (at least partly) written and before any response
    /// arrived. Its other idle connections are likely dead too (it is restarting, or died): drop
    /// them. A failure on a fresh connection, or a reset, also marks it down; a pooled connection
    /// closed in that instant is the ordinary keep-alive race and does not.
    fn lost(
        &self,
        backend: &Backend,
        error: h1::Error,
        pooled: bool,
        spent: Box<Outgoing>,
    ) -> Attempt {
        let dropped = backend.forget_idle();
        let why = retry_reason(&error, pooled);
        self.conn.trace.event(
            7,
            self.number,
            format_args!(
                "{why}; dropped {dropped} idle pooled conn(s) to {}",
                backend.name
            ),
        );
        if !pooled || error.is_reset() {
            self.mark_down(backend, &why);
        }
        let error = ProxyError::Upstream {
            backend: backend.name.to_string(),
            what: why,
            source: error,
        };
        Attempt::Lost(error, spent)
    }

    /// Step 7: send the request on `upstream` and wait for the response head.
    ///
    /// Writing the request and reading the response go on side by side (`h1/`): a backend may
    /// answer before it has read the whole body. The response timer starts once the request body
    /// has been fully sent (so a slow upload never counts against the backend) and is shared by
    /// every attempt of this request.
    async fn send(
        &self,
        mut upstream: Upstream,
        mut outgoing: Box<Outgoing>,
        upgrade: bool,
        deadline: &mut Deadline<'_>,
    ) -> Sent {
        let body = std::mem::replace(&mut outgoing.body, RequestBody::empty());
        let Outgoing {
            head,
            added,
            needs_host,
            ..
        } = &*outgoing;
        let timeout = self.balancer.timeouts.response;
        if let Some(user) = &upstream.user {
            // `-D` labels this connection's bytes with the request it carries now.
            user.0.store(self.conn.id, Relaxed);
            user.1.store(self.number, Relaxed);
        }
        // Timed only for a strategy that learns from it (ewma).
        let started = upstream
            .backend
            .load
            .measures_rtt()
            .then(std::time::Instant::now);
        let asked = Asked {
            method: head.method.clone(),
            upgrade,
        };
        let with_host;
        let lines = match needs_host {
            true => {
                with_host = crate::forward::with_host(added, &upstream.backend.name);
                &with_host[..]
            }
            false => &added[..],
        };
        let mut sending = Some(upstream.conn.start(head, lines, body));
        // A write that fails is not the end yet: the backend may have answered first (a 413 to an
        // upload it will not read, then a reset), and that answer is what the client should get.
        let mut send_failed = None;
        // A backend that stops reading the body (its socket full) must not hold the request
        // forever: `--body-timeout` applies to our writes too.
        let mut stalled = WriteStall::new(self.balancer.timeouts.body_idle);
        let conn = &mut upstream.conn;
        let result = std::future::poll_fn(|cx| {
            if let (Some(request), None) = (sending.as_mut(), &send_failed) {
                match conn.poll_send(request, cx) {
                    Poll::Ready(Ok(())) => {
                        sending = None;
                        if !deadline.is_armed() {
                            deadline.arm(timeout);
                            self.conn.trace.event(
                                7,
                                self.number,
                                format_args!("request sent upstream (body complete); response timeout {timeout:?} starts"),
                            );
                        }
                    }
                    // Not a byte left: whatever the connection holds is not an answer to this
                    // request (a stale `408` before a close, say); it goes elsewhere untouched.
                    Poll::Ready(Err(error @ SendError::Backend { written: false, .. })) => {
                        return Poll::Ready(Err(error))
                    }
                    Poll::Ready(Err(error)) => send_failed = Some(error),
                    Poll::Pending if stalled.expired(conn, cx) => {
                        return Poll::Ready(Ok(Waited::Stalled));
                    }
                    Poll::Pending => {}
                }
            }
            match conn.poll_head(&asked, cx) {
                Poll::Ready(Ok(head)) => return Poll::Ready(Ok(Waited::Head(head))),
                Poll::Ready(Err(error)) => {
                    return Poll::Ready(Err(send_failed.take().unwrap_or(SendError::Backend {
                        error,
                        written: true,
                    })))
                }
                Poll::Pending => {}
            }
            if let Some(error) = send_failed.take() {
                return Poll::Ready(Err(error));
            }
            if deadline.poll_expired(cx) {
                return Poll::Ready(Ok(Waited::TimedOut));
            }
            Poll::Pending
        })
        .await;
        match result {
            Ok(Waited::Head(head)) => {
                // The latency sample the ewma strategy learns from.
                if let Some(started) = started {
                    upstream.backend.load.observe(started);
                }
                if sending.is_some() {
                    // The backend answered before it had all of the request: what it did not read
                    // could be taken for the next request on this connection. Not reused.
                    upstream.conn.forbid_reuse();
                }
                if send_failed.is_some() {
                    sending = None; // the rest of the body cannot go anywhere now
                }
                Sent::Answered(Box::new(Answer {
                    head,
                    upstream,
                    sending,
                }))
            }
            Ok(Waited::TimedOut) => Sent::Fatal(ProxyError::ResponseTimeout {
                backend: upstream.backend.name.to_string(),
                timeout,
            }),
            Ok(Waited::Stalled) => Sent::Fatal(ProxyError::SendTimeout {
                backend: upstream.backend.name.to_string(),
                timeout: stalled.timer.timeout,
            }),
            Err(SendError::Client(error)) => Sent::Fatal(client_body_error(error)),
            Err(SendError::Backend {
                error,
                written: false,
            }) => match sending.and_then(Sending::into_untouched_body) {
                Some(body) => {
                    outgoing.body = body;
                    Sent::NotWritten(outgoing, upstream.id)
                }
                None => Sent::failed(error, &upstream, outgoing),
            },
            Err(SendError::Backend { error, .. }) => Sent::failed(error, &upstream, outgoing),
        }
    }

    /// Step 8: the backend's response head goes back to the client, its body streams behind it.
    fn relay(&self, answer: Box<Answer>, upgrade: bool) -> Response<ResponseBody> {
        let Answer {
            head,
            upstream,
            sending,
        } = *answer;
        let h1::Head {
            status,
            version,
            mut fields,
            body,
        } = head;
        self.conn.trace.event(
            8,
            self.number,
            format_args!("response head received: {status}"),
        );
        let added = crate::forward::response(status, version, &mut fields);
        let body = match status == StatusCode::SWITCHING_PROTOCOLS && upgrade {
            // The connection becomes a tunnel once the `101` has reached the client (`serve.rs`).
            true => ResponseBody::tunnel(upstream, self.number),
            false => {
                ResponseBody::streamed(upstream, body, sending, self.balancer.timeouts.body_idle)
            }
        };
        // The backend's fields travel with its body, as they came (`h1::Fields`); the response's
        // own header map stays empty.
        let mut response = Response::new(body.with_fields(fields, added));
        *response.status_mut() = status;
        *response.version_mut() = version;
        response
    }

    /// The response (the backend's, or one lb wrote) goes to the client; the body finishes the
    /// request when it ends (step 9).
    fn respond(mut self, mut response: Response<ResponseBody>) -> Response<ResponseBody> {
        self.completion.record.status = response.status().as_u16();
        response.body_mut().on_complete(self.completion);
        response
    }
}

/// `--response-timeout`, shared by all attempts of one request: armed once, when the body has
/// first been sent in full, and never pushed back by a retry. The timer is made when armed (one
/// clock read), not before.
struct Deadline<'p> {
    sleep: Pin<&'p mut Option<Sleep>>,
}

impl Deadline<'_> {
    fn is_armed(&self) -> bool {
        self.sleep.is_some()
    }

    fn arm(&mut self, timeout: std::time::Duration) {
        self.sleep.set(Some(tokio::time::sleep(timeout)));
    }

    /// Armed, and the time is up.
    fn poll_expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.sleep
            .as_mut()
            .as_pin_mut()
            .is_some_and(|sleep| sleep.poll(cx).is_ready())
    }
}

/// The member a request is on its way to, and what it takes to aim it there.
struct Target<'g, 'o> {
    group: &'g Group,
    member: &'g Member,
    backend: Arc<Backend>,
    /// The client's path and query, before `PREFIX=REPLACEMENT`.
    original: &'o PathAndQuery,
}

/// How long a backend has not been taking the request body: runs only while a write waits for
/// the backend's socket (not while lb waits for the client's next bytes), from when it started
/// waiting or last took a byte.
struct WriteStall {
    timer: IdleTimer,
    /// Bytes written when last looked, and whether a write was waiting then.
    written: u64,
    waiting: bool,
}

impl WriteStall {
    fn new(timeout: std::time::Duration) -> Self {
        WriteStall {
            timer: IdleTimer::new(timeout),
            written: 0,
            waiting: false,
        }
    }

    /// After a `poll_send` that returned `Pending`: has the backend taken nothing for too long?
    fn expired(&mut self, conn: &crate::upstream::Conn, cx: &mut std::task::Context<'_>) -> bool {
        if !conn.is_write_blocked() {
            self.waiting = false;
            return false;
        }
        if !self.waiting || conn.written() != self.written {
            self.waiting = true;
            self.written = conn.written();
            self.timer.progress();
        }
        self.timer.poll_expired(cx)
    }
}

/// How waiting for a response head ended, short of an error.
enum Waited {
    Head(h1::Head),
    /// `--response-timeout` passed after the request was sent.
    TimedOut,
    /// The backend took no byte of the request body for `--body-timeout`.
    Stalled,
}

/// A backend's answer: its head, the connection its body follows on, and what is left of the
/// request body if the backend answered before reading all of it.
struct Answer {
    head: h1::Head,
    upstream: Upstream,
    sending: Option<Sending>,
}

/// How delivering a request ended, short of an error.
///
/// The answer (and the request, in [`Attempt`] and [`Sent`]) travel boxed: each is a few hundred
/// bytes, and every `.await` between `send` and `relay` would copy it again. A pointer moves for
/// the price of one allocation.
enum Delivered {
    /// A backend answered with this head; its body follows on the connection.
    Answer(Box<Answer>),
    /// The walk reached a `-r` member: lb answers with a redirect itself.
    Redirect(Box<Response<ResponseBody>>),
}

/// What one attempt on one backend came to.
enum Attempt {
    /// A response head arrived: that is the answer, whatever its status.
    Answered(Box<Answer>),
    /// Nothing was written (connect failed, or the connection closed first): safe to send anywhere.
    NotSent(Box<Outgoing>, String),
    /// Written, then the connection failed before a response: only a replay may try again, with
    /// the spent request handed back here (its head is what a replay sends again).
    Lost(ProxyError, Box<Outgoing>),
    /// Nothing more to try: a timeout, the client's own body failing, a malformed response.
    Fatal(ProxyError),
}

/// What sending on one connection came to.
enum Sent {
    Answered(Box<Answer>),
    /// Not a byte left (the connection had closed); the request comes back whole. Carries the
    /// conn id.
    NotWritten(Box<Outgoing>, u64),
    /// The connection failed after the request was written; `bool` = it was a pooled connection.
    /// The request comes back (its head is what a replay sends; its body is spent).
    Failed(h1::Error, bool, Box<Outgoing>),
    Fatal(ProxyError),
}

impl Sent {
    /// Sorting a failure after the request was (at least partly) written: a malformed response
    /// ends the request; the connection failing may be retried.
    fn failed(error: h1::Error, upstream: &Upstream, outgoing: Box<Outgoing>) -> Sent {
        match error {
            h1::Error::Malformed(_) => Sent::Fatal(ProxyError::Upstream {
                backend: upstream.backend.name.to_string(),
                what: "sent a malformed response".into(),
                source: error,
            }),
            error => Sent::Failed(error, upstream.was_pooled(), outgoing),
        }
    }
}

/// Why an exchange was lost, as `--trace` and the error page say it.
fn retry_reason(error: &h1::Error, pooled: bool) -> String {
    let conn = if pooled {
        "pooled connection"
    } else {
        "connection"
    };
    if error.is_reset() {
        format!("{conn} reset before response head")
    } else if matches!(error, h1::Error::Closed) {
        format!("{conn} closed before response head")
    } else {
        format!("{conn} failed before response head: {error}")
    }
}

/// The client's own body failed while it was being sent (a bad chunk, a stalled upload): that is
/// the client's error, not the backend's.
fn client_body_error(error: BoxError) -> ProxyError {
    match error.downcast::<ClientBodyError>() {
        Ok(body) => ProxyError::ClientBody {
            timed_out: matches!(*body, ClientBodyError::Stalled(_)),
            reason: body.to_string(),
        },
        Err(other) => ProxyError::ClientBody {
            timed_out: false,
            reason: other.to_string(),
        },
    }
}

/// Step 2 (RFC 9112 §3.2): an HTTP/1.1 request carries exactly one Host header.
fn check_request(head: &RequestHead) -> Result<(), ProxyError> {
    let hosts = head.fields.values(&header::HOST).count();
    if hosts > 1 {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    if hosts == 0 && head.version == Version::HTTP_11 {
        return Err(ProxyError::BadRequest(
            "HTTP/1.1 request without a Host header",
        ));
    }
    // `h1::framing::client_request` has checked that the final coding is chunked, which lb
    // decodes; any other coding (`gzip, chunked`) would reach the backend still applied but no
    // longer declared, since Transfer-Encoding is hop-by-hop. RFC 9112 §6.1 lets us refuse what we
    // do not implement.
    let other_coding = head
        .fields
        .values(&header::TRANSFER_ENCODING)
        .flat_map(|v| v.split(|&b| b == b','))
        .any(|coding| !coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    if other_coding {
        return Err(ProxyError::BadRequest(
            "Transfer-Encoding other than chunked is not supported",
        ));
    }
    Ok(())
}
