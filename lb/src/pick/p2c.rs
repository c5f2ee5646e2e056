//! `--balance p2c`: the power of two random choices (Envoy `LEAST_REQUEST`, HAProxy `random(2)`).
//!
//! Draw two members at random and keep the one with fewer requests in flight. Least-conn scans
//! every member and, with many balancers (or many threads) reading the same counters, they all
//! rush to the same least-loaded backend at once. Two random draws avoid the herd, and the
//! choice is still nearly as good: the chance of landing on a badly loaded backend falls
//! exponentially with two choices instead of one (Mitzenmacher, "The Power of Two Choices").
//!
//! ```text
//!   weights a=5 b=1 c=1: draw in proportion to weight, then compare in flight / weight
//!
//!   first draw    ├──────── a ────────┼─ b ─┼─ c ─┤      a (5/7)
//!   second draw   ├─ b ─┼─ c ─┤                          (a left out: distinct when possible)
//!   keep          the lower in flight / weight; on a tie, the FIRST draw
//! ```
//!
//! Weights enter twice: in the draws (a heavy member is drawn more often) and in the comparison
//! (in flight per unit of weight). The tie rule matters at low load, where every comparison is a
//! tie: giving ties to the first draw, which was drawn in proportion to weight, keeps the shares
//! exactly at the weights (5,1,1 -> 71%, 14%, 14%). nginx's `random two least_conn` gives ties to
//! the second draw, which over-represents light members (5,1,1 -> ~24% to `a`).
//!
//! Drawing in proportion to weight walks the members once (O(n)); groups in lb are small. The
//! failover order after the winner: the other draw, then the rest from least to most loaded.
//!
//! The random numbers come from one atomic counter per group run through a mixing function
//! (splitmix64): lock-free, shared by all threads, and reproducible from a seed in tests.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Detail, Label, MemberSpec, Members, Order, RequestInfo, Selection, Settings, Snap};

#[derive(Debug)]
pub struct P2c {
    weights: Box<[u32]>,
    slow_start: Duration,
    random: Random,
}

impl P2c {
    pub fn new(members: &[MemberSpec<'_>], settings: &Settings) -> Self {
        P2c {
            weights: members.iter().map(|m| m.weight).collect(),
            slow_start: settings.slow_start,
            random: Random::new(settings.seed),
        }
    }
}

impl Selection for P2c {
    fn order<'a>(
        &'a self,
        _request: &RequestInfo<'a>,
        members: &dyn Members,
        order: &mut Order,
    ) -> super::Why<'a> {
        let all_down = order.read(&self.weights, members, self.slow_start);
        let Some((first, second)) = draw_two(&order.members, &self.random) else {
            return super::Why::empty();
        };
        let better = |a: usize, b: usize| match (order.member(a), order.member(b)) {
            (Some(ma), Some(mb)) => ma.load_per_weight(mb).is_lt(),
            _ => false,
        };
        let (winner, loser) = match second {
            // Strictly better only: ties stay with the first draw.
            Some(s) if better(s, first) => (s, Some(first)),
            _ => (first, second),
        };
        match loser {
            Some(l) => order.fill(&[winner, l], Snap::load_per_weight),
            None => order.fill(&[winner], Snap::load_per_weight),
        }
        let drawn = |slot: Option<usize>| slot.and_then(|s| Some((s, *order.member(s)?)));
        let Some(first) = drawn(Some(first)) else {
            return super::Why::empty();
        };
        super::Why::new(
            Detail::P2c(Why {
                slot: winner,
                first,
                second: drawn(second),
            }),
            all_down,
        )
    }
}

/// Draw two distinct eligible members, each in proportion to its (slow-start) weight; only one if
/// only one is eligible, none if none is.
fn draw_two(members: &[Snap], random: &Random) -> Option<(usize, Option<usize>)> {
    let first = draw(members, None, random)?;
    Some((first, draw(members, Some(first), random)))
}

/// One eligible member other than `except`, with probability proportional to its weight.
pub(super) fn draw(members: &[Snap], except: Option<usize>, random: &Random) -> Option<usize> {
    let candidates = || {
        members
            .iter()
            .enumerate()
            .filter(move |&(slot, m)| m.eligible && Some(slot) != except)
    };
    let total: u64 = candidates().map(|(_, m)| m.effective()).sum();
    if total == 0 {
        return None;
    }
    // A point on the line of all weights laid end to end; the member whose stretch holds it wins.
    let mut point = random.below(total);
    for (slot, m) in candidates() {
        if point < m.effective() {
            return Some(slot);
        }
        point -= m.effective();
    }
    None
}

/// Pseudo-random numbers for one group: splitmix64 over an atomic counter.
#[derive(Debug)]
pub(super) struct Random {
    state: AtomicU64,
}

impl Random {
    /// Seeded (tests), or from the process's random hash keys (the standard library draws them
    /// from the OS), so two lb processes do not make the same draws.
    pub(super) fn new(seed: Option<u64>) -> Self {
        let seed = seed.unwrap_or_else(|| RandomState::new().hash_one(0x6c62_u64));
        Random {
            state: AtomicU64::new(seed),
        }
    }

    fn next_u64(&self) -> u64 {
        const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
        // Each caller, on any thread, gets its own step of the counter, then a bijective mix.
        let mut z = self
            .state
            .fetch_add(GOLDEN, Ordering::Relaxed)
            .wrapping_add(GOLDEN);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by scaling a 64-bit draw (Lemire): no division, no visible bias
    /// for the small `n` used here.
    pub(super) fn below(&self, n: u64) -> u64 {
        let wide = u128::from(self.next_u64()) * u128::from(n);
        u64::try_from(wide >> 64).unwrap_or(0)
    }
}

/// `p2c -> slot 2 (drew slot 0 and slot 2: in flight 3/w5 vs 0/w1)`, in the order drawn.
#[derive(Debug, Clone, Copy)]
pub(super) struct Why {
    slot: usize,
    first: (usize, Snap),
    second: Option<(usize, Snap)>,
}

impl Why {
    pub(super) fn slot(&self) -> usize {
        self.slot
    }

    pub(super) fn write(&self, f: &mut fmt::Formatter<'_>, label: Label<'_>) -> fmt::Result {
        f.write_str("p2c -> ")?;
        label(f, self.slot)?;
        let Some((second, b)) = &self.second else {
            return f.write_str(" (the only candidate)");
        };
        let (first, a) = &self.first;
        f.write_str(" (drew ")?;
        label(f, *first)?;
        f.write_str(" and ")?;
        label(f, *second)?;
        f.write_str(": in flight ")?;
        a.write_share(f)?;
        f.write_str(" vs ")?;
        b.write_share(f)?;
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Status;
    use super::*;

    fn p2c(weights: &[u32], seed: u64) -> P2c {
        let settings = Settings {
            seed: Some(seed),
            ..Settings::default()
        };
        P2c::new(&specs(weights), &settings)
    }

    /// At zero load every comparison is a tie; ties go to the first draw, so the shares are the
    /// weights. (nginx's `random two` gives `a` ~24% here.)
    ///
    /// ```text
    /// weights 5,1,1, 10,000 picks, nothing in flight
    ///           a       b       c
    /// expected  71.4%   14.3%   14.3%     (each within 5 points)
    /// ```
    #[test]
    fn zero_load_respects_weights() {
        for seed in [1, 2, 3] {
            let s = p2c(&[5, 1, 1], seed);
            let c = counts(&picks(&s, &Group::up(3), 10_000), 3);
            let share = |i: usize| c[i] as f64 / 10_000.0;
            assert!((share(0) - 5.0 / 7.0).abs() < 0.05, "{c:?}");
            assert!((share(1) - 1.0 / 7.0).abs() < 0.05, "{c:?}");
            assert!((share(2) - 1.0 / 7.0).abs() < 0.05, "{c:?}");
        }
    }

    /// The two draws are distinct, so with two members both are always compared: the idle one
    /// wins every time.
    ///
    /// ```text
    /// in flight   a 1   b 0
    /// 100 picks:  b b b b ... (never a)
    /// ```
    #[test]
    fn draws_are_distinct() {
        let s = p2c(&[1, 1], 9);
        let g = Group::up(2);
        let _busy = g.loads[0].start();
        assert!(picks(&s, &g, 100).iter().all(|&slot| slot == 1));
    }

    /// The loser of the comparison is the first fallback; then the rest by load.
    #[test]
    fn keeps_the_less_loaded_draw() {
        let s = p2c(&[1, 1, 1, 1], 4);
        let g = Group::up(4);
        let _busy: Vec<_> = [3, 1, 0, 2]
            .iter()
            .enumerate()
            .flat_map(|(slot, &n)| (0..n).map(move |_| slot))
            .map(|slot| g.loads[slot].start())
            .collect();
        let headers = crate::h1::Fields::default();
        let mut order = Order::new();
        for _ in 0..50 {
            let why = s.order(&no_request(&headers), &g, &mut order);
            let [winner, loser, rest @ ..] = order.slots() else {
                panic!("{:?}", order.slots())
            };
            assert!(g.loads[*winner].in_flight() < g.loads[*loser].in_flight());
            let mut sorted_rest = rest.to_vec();
            sorted_rest.sort_by_key(|&s| g.loads[s].in_flight());
            assert_eq!(rest, &sorted_rest[..]);
            assert!(why.to_string().starts_with("p2c -> slot "), "{why}");
        }
    }

    #[test]
    fn trace_line() {
        let s = p2c(&[5, 1], 1);
        let mut g = Group::up(2);
        let headers = crate::h1::Fields::default();
        let mut order = Order::new();
        let why = s.order(&no_request(&headers), &g, &mut order);
        let text = why.to_string();
        assert!(
            text == "p2c -> slot 0 (drew slot 0 and slot 1: in flight 0/w5 vs 0/w1)"
                || text == "p2c -> slot 1 (drew slot 1 and slot 0: in flight 0/w1 vs 0/w5)",
            "{text}"
        );
        g.status[1] = Status::Down;
        let why = s.order(&no_request(&headers), &g, &mut order);
        assert_eq!(why.to_string(), "p2c -> slot 0 (the only candidate)");
    }

    /// Slow start: b just came back (10% of its weight) and its share at zero load is 10% of a
    /// normal member's: 0.1 / 2.1 = 4.8% instead of 33%.
    #[test]
    fn slow_start_lowers_the_draws() {
        let settings = Settings {
            seed: Some(5),
            slow_start: Duration::from_secs(10),
            ..Settings::default()
        };
        let s = P2c::new(&specs(&[1, 1, 1]), &settings);
        let mut g = Group::up(3);
        g.status[1] = Status::Up {
            back_for: Some(Duration::ZERO),
        };
        let c = counts(&picks(&s, &g, 10_000), 3);
        let b = c[1] as f64 / 10_000.0;
        assert!((b - 0.1 / 2.1).abs() < 0.02, "{c:?}");
    }
}
