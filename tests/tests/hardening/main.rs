//! The hardening suite: `lb` (the real binary) against clients and backends that break HTTP on
//! purpose, slow ones, and many at once. Each module is one theme:
//!
//! - `support`: lb in front of some backends, `/proc` readers;
//! - `framing`: every parsing and framing row of `proxy-rules.md`, from raw sockets, with what the
//!   backend received (nothing, or exactly one well-formed request; never a smuggled one);
//! - `messages`: pipelining, `Expect: 100-continue`, hop-by-hop headers in both directions;
//! - `bad_backend`: backends that hang, reset, cut a body short, send garbage, bodies on 204/HEAD,
//!   drip, close, send trailers; what the client sees each time;
//! - `timeouts`: header read (slowloris), keep-alive idle, upstream connect and response, body
//!   idle both ways, `--max-conns`;
//! - `resources`: thousands of idle connections, clients vanishing mid-response, 200 MB each way;
//! - `health`: passive ejection, active health checks, every backend down;
//! - `retries`: which failed requests go to the next backend (idempotent ones, ones that never
//!   left), which never do (a POST that was sent, a body over the limit, a started response).
//!
//! The misbehaving backend (`tests::BadBackend`), the raw client (`tests::RawClient`) and reqwest
//! (`tests::http`) come from the harness, described in `tests/README.md`. Raw bytes are the rule
//! here, since framing is what most of these tests are about; each file's opening comment says
//! where reqwest is used instead.

mod bad_backend;
mod framing;
mod health;
mod messages;
mod resources;
mod retries;
mod support;
mod timeouts;
