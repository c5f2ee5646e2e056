//! `--delay` and `--delay-jitter`: a backend that is slow on purpose. A load balancer's strategies
//! only differ when its backends do; with one backend started as `restful-server -p 8911 --delay
//! 20ms`, round robin still sends it a third of the traffic while a load-aware strategy sends it
//! less (see `cargo xtask bench`'s "one slow backend" scenario).
//!
//! The delay is a middleware around the whole router, so it applies to every route (404s and the
//! static files included): the request is answered as usual, and its response waits before its
//! head is sent. The wait is a tokio timer, not a blocked thread, so a slow backend still serves any
//! number of requests at once, each of them late: like a real backend whose work takes time, not
//! like one that can only do one thing at a time.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;

/// The most `--delay` and `--delay-jitter` accept each: a minute, as `/api/v1/delay?ms=N`, so a
/// typo (`--delay 20m` for `20ms`) is refused rather than hanging every request for twenty minutes.
pub const DELAY_FLAG_CAP: Duration = Duration::from_secs(60);

/// How long every response waits: `fixed`, plus a random part drawn uniformly from `0..jitter`
/// for each request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delay {
    /// `--delay`: the wait every response has.
    pub fixed: Duration,
    /// `--delay-jitter`: the most a request waits on top of `fixed` (exclusive).
    pub jitter: Duration,
}

impl Delay {
    /// No wait at all (the default).
    pub fn is_zero(&self) -> bool {
        self.fixed.is_zero() && self.jitter.is_zero()
    }

    /// The wait for a request whose random number is `random`: `fixed + jitter * random / 2^64`,
    /// so `0..jitter` is covered evenly and `jitter` itself is never reached.
    pub fn wait(&self, random: u64) -> Duration {
        let jitter_ns = self.jitter.as_nanos();
        // Both factors are below 2^64 (a duration within the cap is about 2^36 ns), so the
        // product fits in a u128 and the result is below `jitter_ns`.
        let extra_ns = (jitter_ns * u128::from(random)) >> 64;
        self.fixed + Duration::from_nanos(u64::try_from(extra_ns).unwrap_or(u64::MAX))
    }

    /// `router` with every response delayed; `router` itself when there is no delay, so that a
    /// server without `--delay` runs exactly the same code as before the flag existed.
    pub fn wrap(self, router: Router) -> Router {
        if self.is_zero() {
            return router;
        }
        let state = Arc::new(Jitter {
            delay: self,
            keys: RandomState::new(),
            drawn: AtomicU64::new(0),
        });
        router.layer(middleware::from_fn_with_state(state, delay_response))
    }
}

/// What the middleware needs: the delay and a source of random numbers.
///
/// The random numbers come from the standard library's `RandomState`, the keyed hash that
/// `HashMap` uses against collision attacks: its keys are random for every process, so hashing
/// 0, 1, 2, ... gives a different unpredictable sequence in every server. That is plenty for
/// jitter and needs no dependency; the counter is the only shared state, one atomic add per
/// request.
struct Jitter {
    delay: Delay,
    keys: RandomState,
    drawn: AtomicU64,
}

impl Jitter {
    fn random(&self) -> u64 {
        let mut hasher = self.keys.build_hasher();
        hasher.write_u64(self.drawn.fetch_add(1, Ordering::Relaxed));
        hasher.finish()
    }
}

/// The middleware: let the request be answered, then hold the response back until the wait is
/// over. The handler runs first so that a request body is read as usual; what the client sees is
/// a response head that comes `wait` later than it would have.
async fn delay_response(
    State(jitter): State<Arc<Jitter>>,
    request: Request,
    next: Next,
) -> Response {
    let wait = jitter.delay.wait(jitter.random());
    let response = next.run(request).await;
    tokio::time::sleep(wait).await;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{get, TEST_ADDR};
    use crate::{app, Config};
    use std::time::Instant;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_wait_is_fixed_plus_a_share_of_the_jitter_never_all_of_it() {
        let delay = Delay {
            fixed: 20 * MS,
            jitter: 10 * MS,
        };
        //   random       wait
        //   0            20 ms          the least
        //   2^63         25 ms          half the jitter
        //   u64::MAX     < 30 ms        the most, just short of fixed + jitter
        assert_eq!(delay.wait(0), 20 * MS);
        assert_eq!(delay.wait(1 << 63), 25 * MS);
        assert!(delay.wait(u64::MAX) < 30 * MS);
        assert!(delay.wait(u64::MAX) > 30 * MS - Duration::from_nanos(2));

        let no_jitter = Delay {
            fixed: 20 * MS,
            jitter: Duration::ZERO,
        };
        assert_eq!(no_jitter.wait(u64::MAX), 20 * MS);
        assert!(Delay::default().is_zero());
        assert_eq!(Delay::default().wait(u64::MAX), Duration::ZERO);
    }

    #[test]
    fn the_largest_accepted_delay_and_jitter_do_not_overflow() {
        let delay = Delay {
            fixed: DELAY_FLAG_CAP,
            jitter: DELAY_FLAG_CAP,
        };
        assert!(delay.wait(u64::MAX) < 2 * DELAY_FLAG_CAP);
    }

    #[test]
    fn jitter_spreads_over_its_whole_range_and_stays_inside_it() {
        let jitter = Jitter {
            delay: Delay {
                fixed: 5 * MS,
                jitter: 10 * MS,
            },
            keys: RandomState::new(),
            drawn: AtomicU64::new(0),
        };
        let waits: Vec<Duration> = (0..10_000)
            .map(|_| jitter.delay.wait(jitter.random()))
            .collect();
        assert!(waits.iter().all(|w| (5 * MS..15 * MS).contains(w)));
        // Uniform: each millisecond of the ten gets about a tenth of the draws.
        for ms in 5..15 {
            let bucket = ms * MS..(ms + 1) * MS;
            let count = waits.iter().filter(|w| bucket.contains(w)).count();
            assert!((800..1200).contains(&count), "{ms} ms: {count} of 10000");
        }
    }

    #[tokio::test]
    async fn every_route_waits_404s_included() {
        let delay = Delay {
            fixed: 50 * MS,
            jitter: Duration::ZERO,
        };
        let app = delay.wrap(app(Config::default(), TEST_ADDR));
        for (path, status) in [("/", 200), ("/api/v1/whoami", 200), ("/nope", 404)] {
            let start = Instant::now();
            let reply = get(&app, path).await;
            assert_eq!(reply.status.as_u16(), status, "{path}");
            assert!(start.elapsed() >= 50 * MS, "{path}: {:?}", start.elapsed());
            assert!(reply.headers.contains_key(crate::X_SERVED_BY), "{path}");
        }
    }
}
