//! loadgen: an HTTP/1.1 traffic generator that measures throughput and latency and checks how a
//! load balancer spreads requests over its backends.
//!
//! The library does the work; the `loadgen` binary only parses arguments ([`cli`]) and prints.
//! Read the modules in this order, which is also the life of a run:
//!
//! 1. [`plan`]: what to send — the [`Plan`] (target, count or duration, connections, rate, and
//!    the [`stages`] that ramp the rate or the connections), which statuses count as success
//!    ([`ok_status`]), and the per-request keys that `{n}` in a header stands for ([`keys`]).
//! 2. [`run`](mod@run): one event-loop thread per core, one worker per connection on them, in the
//!    closed or the open loop; in the open loop `pace` (private) keeps the schedule with a
//!    microsecond timer per worker and tells the generator's own lateness from the target's lag.
//!    Each thread reports its CPU time (`cpu_time`, private).
//! 3. `conn` (private): one persistent hyper connection per worker, over plain TCP or over
//!    [`tls`] for an `https://` URL; what goes wrong on it is sorted into the classes of
//!    [`failure`].
//! 4. [`report`]: HDR histograms, per-status / per-error / per-backend counts, text and JSON,
//!    merging runs from several machines; whether the open loop kept its schedule; and the
//!    [`series`], what each second of the run looked like.
//! 5. [`check`]: judging `--expect round-robin | even | weights=... | sticky=HEADER` (pure
//!    logic).
//! 6. Around runs: [`html`] draws a report as one self-contained page of charts, and
//!    [`find_max`] runs one open-loop step after another to find the highest rate that meets an
//!    objective ([`slo`]).
//!
//! **Invariants:** memory does not grow with the number of requests (histograms, never a list of
//! samples, except the first `Plan::keep_samples`; the [`series`] grows with the run's duration,
//! about a kilobyte per second and backend); every request started ends up counted either
//! as a response or as exactly one error class; a failing server never makes `run` return `Err`
//! (it makes the report fail: transport errors and responses outside `--ok-status` both count
//! against `--max-errors`); in the open loop no request leaves before its scheduled time, and
//! latency is never measured from later than it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut plan = loadgen::Plan::new("http://127.0.0.1:8080/")?;
//! plan.requests = Some(100);
//! plan.expect = Some(loadgen::Expectation::RoundRobin);
//! let report = loadgen::run(plan).await?;
//! print!("{}", report.render_text());
//! assert!(report.passed());
//! # Ok(()) }
//! ```
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod check;
pub mod cli;
mod conn;
mod cpu_time;
pub mod failure;
pub mod find_max;
pub mod html;
pub mod keys;
pub mod ok_status;
mod pace;
pub mod plan;
pub mod report;
pub mod run;
pub mod series;
pub mod slo;
pub mod stages;
pub mod tls;

pub use check::{Expectation, Verdict};
pub use failure::ErrorClass;
pub use ok_status::OkStatus;
pub use plan::{Plan, PlanError};
pub use report::{Report, Sample};
pub use run::{run, RunError};
pub use tls::Trust;
