//! The file to read first: one request, from the moment hyper hands it to us until its response
//! head goes back. [`handle`] calls each stage in order:
//!
//! 1. check the request ([`check_request`]): HTTP/1.1 needs exactly one `Host`;
//! 2. [`crate::route`]: which group of backends serves this Host and path;
//! 3. [`crate::pick`]: which member of the group goes first (round robin), then
//!    [`connect_with_failover`] walks the group until one backend accepts a connection;
//! 4. [`crate::upstream`]: that connection comes from the backend's pool when possible;
//! 5. [`crate::forward`]: rewrite the head (target, hop-by-hop headers, X-Forwarded-For, Via);
//! 6. [`send`]: send it, streaming the body, and wait for the response head (`--response-timeout`);
//! 7. the response body streams back through [`crate::body::ResponseBody`], whose completion
//!    pools the connection and writes the [`crate::access_log`] line.
//!
//! Every failure becomes a [`ProxyError`], turned into a status code in one place ([`crate::respond`]).
//!
//! **Invariant:** nothing here panics or buffers a body.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{header, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use crate::accept::ConnInfo;
use crate::access_log::{unix_now, Record};
use crate::body::{Completion, RequestBody, ResponseBody};
use crate::error::{ClientBodyError, ConnectError, ProxyError};
use crate::pick::{failover_order, Selection};
use crate::respond;
use crate::route::{rewrite, Group, Member};
use crate::upstream::{self, Backend, Upstream};
use crate::Balancer;

/// hyper's service: answer one request. Never fails; failures are answered with an error status.
pub async fn handle(
    request: Request<Incoming>,
    balancer: Arc<Balancer>,
    conn: Arc<ConnInfo>,
) -> Result<Response<ResponseBody>, Infallible> {
    let in_flight = conn.begin_request();
    let number = in_flight.number();
    let trace = conn.trace.clone();
    trace.event(
        number,
        format_args!(
            "request head read: {} {} {:?} (host {})",
            request.method(),
            request.uri(),
            request.version(),
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("-")
        ),
    );
    // What the log line needs is copied out of the request before it moves on; without `-l` the
    // copies (a few allocations per request) are skipped.
    let logged = balancer.log.is_enabled();
    let copied = |name| {
        logged
            .then(|| request.headers().get(name).cloned())
            .flatten()
    };
    let mut record = Record {
        request: number,
        started: Instant::now(),
        unix_time: if logged { unix_now() } else { 0 },
        client: conn.peer,
        method: request.method().clone(),
        target: if logged {
            request
                .uri()
                .path_and_query()
                .map_or_else(|| request.uri().to_string(), |p| p.to_string())
        } else {
            String::new()
        },
        version: request.version(),
        backend: None,
        status: 0,
        bytes: 0,
        duration: Default::default(),
        referer: copied(header::REFERER),
        user_agent: copied(header::USER_AGENT),
    };

    let mut exchange = Exchange {
        balancer: &balancer,
        conn: &conn,
        number,
        served_by: None,
        upstream: None,
    };
    let mut response = match exchange.proxy(request).await {
        Ok(response) => response,
        Err(error) => {
            trace.event(number, format_args!("error: {error}"));
            respond::error_response(&error)
        }
    };
    if logged {
        record.backend = exchange.served_by.as_ref().map(|b| b.name.clone());
    }
    record.status = response.status().as_u16();
    let upstream = exchange.upstream.take();
    response.body_mut().on_complete(Completion {
        upstream,
        driver: None,
        record,
        log: balancer.log.clone(),
        trace,
        bytes: 0,
        clean: false,
        in_flight: Some(in_flight),
    });
    Ok(response)
}

/// The state of one request while it is being proxied.
struct Exchange<'a> {
    balancer: &'a Balancer,
    conn: &'a ConnInfo,
    number: u64,
    /// The backend that answered (for the log line), once known.
    served_by: Option<Arc<Backend>>,
    /// The upstream connection to return to the pool when the response body ends.
    upstream: Option<(Arc<Backend>, crate::upstream::Sender, u64)>,
}

impl Exchange<'_> {
    async fn proxy(
        &mut self,
        request: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        check_request(&request)?;
        let trace = &self.conn.trace;

        // Step 2: route. An absolute-form target (`GET http://host/x`) carries the host itself.
        let host = request.uri().host().or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let path = request.uri().path();
        let Some(group) = self.balancer.router.route(host, path) else {
            return Err(ProxyError::NoRoute {
                host: host.unwrap_or("").to_string(),
                path: path.to_string(),
            });
        };
        trace.event(
            self.number,
            format_args!(
                "route: prefix {} (vhost {}) -> group of {}",
                group.prefix,
                group.vhost.as_deref().unwrap_or("*"),
                group.members.len()
            ),
        );

        // Step 3 and 4: pick a member, connect (with failover).
        // An upgrade (WebSocket) needs a connection of its own that can become a tunnel.
        let upgrade = crate::forward::is_upgrade(request.headers());
        let picked = self.connect_with_failover(group, upgrade).await?;
        let (member, backend) = match &picked {
            Picked::Redirect(member, backend) | Picked::Connected(member, backend, _) => {
                (*member, backend.clone())
            }
        };
        self.served_by = Some(backend.clone());
        let target = rewrite(
            &group.prefix,
            &member.replacement,
            request.uri().path_and_query().map_or("/", |p| p.as_str()),
        );
        let upstream = match picked {
            Picked::Connected(_, _, upstream) => upstream,
            Picked::Redirect(..) => {
                let location = format!("http://{}{}", backend.name, target);
                trace.event(self.number, format_args!("redirect: 302 to {location}"));
                return Ok(respond::redirect(&location));
            }
        };

        // Step 5: rewrite the head.
        let (mut parts, body) = request.into_parts();
        let client_upgrade = crate::forward::is_upgrade(&parts.headers).then(|| {
            let mut probe = Request::new(());
            std::mem::swap(probe.extensions_mut(), &mut parts.extensions);
            hyper::upgrade::on(probe)
        });
        let target: Uri = target
            .parse()
            .map_err(|_| ProxyError::BadRequest("request target cannot be rewritten"))?;
        crate::forward::request(&mut parts, target, self.conn.peer, &backend.name);
        let (body, sent) = RequestBody::new(body, self.balancer.timeouts.body_idle);

        // Step 6: send and wait for the response head.
        let (mut response, upstream) = self
            .send(&backend, upstream, Request::from_parts(parts, body), sent)
            .await?;
        trace.event(
            self.number,
            format_args!("response head received: {}", response.status()),
        );

        let driver = upstream.driver;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client) = client_upgrade {
                tunnel(
                    client,
                    hyper::upgrade::on(&mut response),
                    self.conn.trace.clone(),
                    self.number,
                );
            }
        } else {
            self.upstream = Some((backend.clone(), upstream.sender, upstream.id));
        }
        let (mut parts, incoming) = response.into_parts();
        crate::forward::response(&mut parts);
        Ok(Response::from_parts(
            parts,
            ResponseBody::streamed(incoming, driver, self.balancer.timeouts.body_idle),
        ))
    }

    /// Try the group's members in round-robin order, skipping those that are down, until one
    /// accepts a TCP connection. Nothing has been sent yet, so moving on is safe for any method.
    async fn connect_with_failover<'g>(
        &self,
        group: &'g Group,
        upgrade: bool,
    ) -> Result<Picked<'g>, ProxyError> {
        let trace = &self.conn.trace;
        let backends = &self.balancer.backends;
        let first = group.selection.pick(group.members.len());
        trace.event(
            self.number,
            format_args!(
                "pick: round robin slot {first} of {} (counter {})",
                group.members.len(),
                group.selection.count()
            ),
        );
        // If every member is marked down we try them all anyway ("panic mode", as Envoy calls it):
        // a refused connection costs microseconds, and a backend that just came back gets traffic
        // again at once instead of after its cool-down.
        let usable = |m: &Member| {
            backends
                .get(m.backend)
                .is_some_and(|b| b.health.is_available())
        };
        let any_up = group.members.iter().any(usable);
        let mut last_error: Option<ConnectError> = None;
        for slot in failover_order(first, group.members.len()) {
            let Some(member) = group.members.get(slot) else {
                continue;
            };
            let Some(backend) = backends.get(member.backend) else {
                continue;
            };
            if any_up && !usable(member) {
                trace.event(
                    self.number,
                    format_args!("skip {}: marked down", backend.name),
                );
                continue;
            }
            if member.redirect {
                return Ok(Picked::Redirect(member, backend.clone()));
            }
            let connected = if upgrade {
                backend.connect_detached().await
            } else {
                backend.checkout().await
            };
            match connected {
                Ok(upstream) => {
                    backend.health.connect_succeeded();
                    match upstream.connect_time {
                        Some(t) => trace.event(
                            self.number,
                            format_args!(
                                "upstream: new conn #{} to {} (connect {:.3}ms)",
                                upstream.id,
                                backend.name,
                                t.as_secs_f64() * 1e3
                            ),
                        ),
                        None => trace.event(
                            self.number,
                            format_args!(
                                "upstream: reusing pooled conn #{} to {}",
                                upstream.id, backend.name
                            ),
                        ),
                    }
                    return Ok(Picked::Connected(member, backend.clone(), upstream));
                }
                Err(error) => {
                    trace.event(
                        self.number,
                        format_args!("upstream: {error}; trying the next backend"),
                    );
                    if backend.health.connect_failed(self.balancer.fail_timeout) {
                        tracing::warn!(
                            "backend {} is down ({error}); skipping it for {:?}",
                            backend.name,
                            self.balancer.fail_timeout
                        );
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(ProxyError::AllBackendsDown {
            prefix: group.prefix.clone(),
            last: last_error.map_or_else(|| "no backend available".to_string(), |e| e.to_string()),
        })
    }

    /// Send the request on `upstream` and wait for the response head.
    ///
    /// The response timer starts only once the request body has been fully sent (`sent`), so a
    /// slow upload never counts against the backend. If a pooled connection turns out to have been
    /// closed before the request was written (the backend closed it while it sat idle), the
    /// untouched request is retried once on a fresh connection: a stale pool entry never fails a
    /// request.
    async fn send(
        &self,
        backend: &Arc<Backend>,
        mut upstream: Upstream,
        mut request: Request<RequestBody>,
        mut sent: oneshot::Receiver<()>,
    ) -> Result<(Response<Incoming>, Upstream), ProxyError> {
        let timeout = self.balancer.timeouts.response;
        let mut sent_done = false;
        // Armed (reset) once the body has been sent; until then it is never polled.
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let response = upstream.sender.try_send_request(request);
            tokio::pin!(response);
            let outcome = loop {
                tokio::select! {
                    biased;
                    result = &mut response => break result,
                    _ = &mut sent, if !sent_done => {
                        sent_done = true;
                        deadline.as_mut().reset(tokio::time::Instant::now() + timeout);
                        self.conn.trace.event(
                            self.number,
                            format_args!("request sent upstream (body complete); response timeout {timeout:?} starts"),
                        );
                    }
                    // This task drives the connection's I/O; if it ends, `response` reports how.
                    () = upstream::drive(&mut upstream.driver) => {}
                    () = &mut deadline, if sent_done => {
                        return Err(ProxyError::ResponseTimeout { backend: backend.name.clone(), timeout });
                    }
                }
            };
            match outcome {
                Ok(response) => return Ok((response, upstream)),
                Err(e) => request = self.retry_or_fail(backend, &mut upstream, e).await?,
            }
        }
    }

    /// A send failed: retry on a fresh connection if the request was never written, else give up.
    async fn retry_or_fail(
        &self,
        backend: &Arc<Backend>,
        upstream: &mut Upstream,
        mut error: hyper::client::conn::TrySendError<Request<RequestBody>>,
    ) -> Result<Request<RequestBody>, ProxyError> {
        match error.take_message() {
            Some(request) if upstream.connect_time.is_none() => {
                self.conn.trace.event(
                    self.number,
                    format_args!(
                        "upstream: pooled conn #{} was closed by the backend; reconnecting",
                        upstream.id
                    ),
                );
                // If the backend died in that instant, mark it down so the next requests skip it.
                // (This one gets a 502: its failover window has passed. The race is microseconds wide.)
                *upstream = backend.connect().await.map_err(|e| {
                    backend.health.connect_failed(self.balancer.fail_timeout);
                    ProxyError::Reconnect(e)
                })?;
                Ok(request)
            }
            _ => {
                let source = error.into_error();
                Err(client_body_error(&source).unwrap_or(ProxyError::Upstream {
                    backend: backend.name.clone(),
                    source,
                }))
            }
        }
    }
}

/// A send fails when the *client's* body fails too (a bad chunk, a stalled upload): hyper reports
/// it as an error of the body it was sending, with ours as the cause. That is a client error.
fn client_body_error(error: &hyper::Error) -> Option<ProxyError> {
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        if let Some(body) = e.downcast_ref::<ClientBodyError>() {
            return Some(ProxyError::ClientBody {
                timed_out: matches!(body, ClientBodyError::Stalled(_)),
                reason: body.to_string(),
            });
        }
        cause = e.source();
    }
    None
}

/// The outcome of picking a member: a `-r` rule answers with a redirect and needs no connection.
enum Picked<'g> {
    Redirect(&'g Member, Arc<Backend>),
    Connected(&'g Member, Arc<Backend>, Upstream),
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host header.
fn check_request<B>(request: &Request<B>) -> Result<(), ProxyError> {
    let hosts = request.headers().get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    if hosts == 0 && request.version() == Version::HTTP_11 {
        return Err(ProxyError::BadRequest(
            "HTTP/1.1 request without a Host header",
        ));
    }
    // hyper has checked that the final coding is chunked and removed it; any other coding
    // (`gzip, chunked`) would reach the backend still applied but no longer declared, since
    // Transfer-Encoding is hop-by-hop. RFC 9112 §6.1 lets us refuse what we do not implement.
    let other_coding = request
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|coding| !coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    if other_coding {
        return Err(ProxyError::BadRequest(
            "Transfer-Encoding other than chunked is not supported",
        ));
    }
    Ok(())
}

/// After `101 Switching Protocols`, copy bytes both ways between client and backend until either
/// side closes (WebSocket and friends).
fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    trace: crate::trace::Trace,
    n: u64,
) {
    tokio::spawn(async move {
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(pair) => pair,
            Err(e) => {
                trace.event(n, format_args!("upgrade failed: {e}"));
                return;
            }
        };
        let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
        match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            Ok((up, down)) => trace.event(
                n,
                format_args!("tunnel closed: {up} bytes up, {down} bytes down"),
            ),
            Err(e) => trace.event(n, format_args!("tunnel closed: {e}")),
        }
    });
}
