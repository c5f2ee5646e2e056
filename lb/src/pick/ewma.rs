//! `--balance ewma`: latency-aware choice by peak EWMA (Finagle, tower, linkerd).
//!
//! Least-conn and P2C see a slow backend only through the requests piling up on it. Peak EWMA
//! looks at how long its answers take. Each backend's [`Load`](super::Load) keeps an estimate of
//! its round-trip time (time to the response head) that jumps up at once on a slow answer and
//! glides down over `--ewma-decay` (see [`super::load`]). The cost of sending one more request
//! to a backend is then
//!
//! ```text
//!   cost = rtt estimate x (in flight + 1) / weight
//!
//!   a: 0.2ms x (3+1) / 1 = 0.8      b: 20ms x (0+1) / 1 = 20       -> a, although busier
//! ```
//!
//! "In flight + 1": the request we are placing would wait behind those already there. Two members
//! are drawn at random in proportion to weight and the cheaper one wins (ties: the first draw),
//! exactly as in [`super::p2c`] but on cost instead of plain load. A backend 100x slower than the
//! others only gets a request when the others have ~100 in flight each, or when its estimate has
//! faded long enough to be worth a fresh look.
//!
//! A backend that was never measured is assumed to answer in `Settings::ewma_default_rtt`,
//! 1 ms by default. linkerd assumes 30 ms, which suits RPCs between services in a data center;
//! lb's backends are often on loopback (~0.1 ms) or a LAN. The guess matters until the first
//! answer replaces it, and the two ways of being wrong are not equal:
//! - too high (30 ms against 0.1 ms backends): the new backend looks 300x worse and gets no
//!   traffic until the others are very busy;
//! - too low: it looks better than it is and collects requests until its first answer comes
//!   back; the `(in flight + 1)` factor bounds how many.
//!
//! 1 ms is an honest "fast, but not loopback-fast" guess: a new backend is tried as soon as the
//! measured ones are busy enough to cost more than 1 ms (on loopback, ~10 requests in flight
//! each; on a LAN, one or two), and it is not flooded meanwhile: it looks no better than a
//! backend that really answers in 1 ms. (Under a strictly sequential client an unmeasured backend
//! may stay unused: nothing is waiting, so there is little to gain.)
//!
//! The failover order after the winner: the other draw, then the rest from cheapest to dearest.

use std::fmt;
use std::time::{Duration, Instant};

use super::p2c::{draw, Random};
use super::{Detail, Label, MemberSpec, Members, Order, RequestInfo, Selection, Settings, Snap};

/// `Settings::ewma_default_rtt`'s default: the RTT assumed for a backend never measured.
pub const DEFAULT_RTT: Duration = Duration::from_millis(1);

/// Nothing answers faster than this: it keeps `(in flight + 1)` meaningful when an estimate has
/// faded to almost nothing.
const MIN_RTT_NS: f64 = 1_000.0;

#[derive(Debug)]
pub struct Ewma {
    weights: Box<[u32]>,
    slow_start: Duration,
    default_rtt_ns: f64,
    random: Random,
}

impl Ewma {
    pub fn new(members: &[MemberSpec<'_>], settings: &Settings) -> Self {
        Ewma {
            weights: members.iter().map(|m| m.weight).collect(),
            slow_start: settings.slow_start,
            default_rtt_ns: settings.ewma_default_rtt.as_secs_f64() * 1e9,
            random: Random::new(settings.seed),
        }
    }

    /// [`Selection::order`] with the clock given (the estimates fade with time): for tests and
    /// simulations.
    pub fn order_at<'a>(
        &'a self,
        members: &dyn Members,
        order: &mut Order,
        now: Instant,
    ) -> super::Why<'a> {
        let all_down = order.read(&self.weights, members, self.slow_start);
        for (slot, m) in order.members.iter_mut().enumerate() {
            if !m.eligible {
                continue;
            }
            let measured = members.load(slot).and_then(|l| l.rtt_nanos(now));
            m.measured = measured.is_some();
            m.rtt_ns = measured.unwrap_or(self.default_rtt_ns).max(MIN_RTT_NS);
            // The effective weight is in thousandths; the common factor does not change choices.
            m.cost = m.rtt_ns * (m.in_flight as f64 + 1.0) / m.effective() as f64;
        }
        let by_cost = |a: &Snap, b: &Snap| a.cost.total_cmp(&b.cost);
        let Some(first) = draw(&order.members, None, &self.random) else {
            return super::Why::empty();
        };
        let second = draw(&order.members, Some(first), &self.random);
        let cheaper = |a: usize, b: usize| match (order.member(a), order.member(b)) {
            (Some(ma), Some(mb)) => by_cost(ma, mb).is_lt(),
            _ => false,
        };
        let (winner, loser) = match second {
            Some(s) if cheaper(s, first) => (s, Some(first)),
            _ => (first, second),
        };
        match loser {
            Some(l) => order.fill(&[winner, l], by_cost),
            None => order.fill(&[winner], by_cost),
        }
        let drawn = |slot: Option<usize>| slot.and_then(|s| Some((s, *order.member(s)?)));
        let Some(first) = drawn(Some(first)) else {
            return super::Why::empty();
        };
        super::Why::new(
            Detail::Ewma(Why {
                slot: winner,
                first,
                second: drawn(second),
            }),
            all_down,
        )
    }
}

impl Selection for Ewma {
    fn order<'a>(
        &'a self,
        _request: &RequestInfo<'a>,
        members: &dyn Members,
        order: &mut Order,
    ) -> super::Why<'a> {
        self.order_at(members, order, Instant::now())
    }
}

/// `ewma -> slot 0 (drew slot 2 and slot 0: rtt 20.000ms x (0+1)/w1 vs rtt 0.150ms x (3+1)/w1)`.
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
        f.write_str("ewma -> ")?;
        label(f, self.slot)?;
        let (first, a) = &self.first;
        let Some((second, b)) = &self.second else {
            f.write_str(" (the only candidate: ")?;
            write_cost(f, a)?;
            return f.write_str(")");
        };
        f.write_str(" (drew ")?;
        label(f, *first)?;
        f.write_str(" and ")?;
        label(f, *second)?;
        f.write_str(": ")?;
        write_cost(f, a)?;
        f.write_str(" vs ")?;
        write_cost(f, b)?;
        f.write_str(")")
    }
}

/// `rtt 0.150ms x (3+1)/w1`, with `(default)` after an RTT that was never measured.
fn write_cost(f: &mut fmt::Formatter<'_>, m: &Snap) -> fmt::Result {
    write!(f, "rtt {:.3}ms", m.rtt_ns / 1e6)?;
    if !m.measured {
        f.write_str(" (default)")?;
    }
    write!(f, " x ({}+1)/w{}", m.in_flight, m.weight)?;
    if m.ramp < super::slow_start::FULL {
        write!(f, "@{}%", m.ramp / 10)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::InFlight;
    use super::*;

    fn ewma(weights: &[u32], seed: u64) -> Ewma {
        let settings = Settings {
            seed: Some(seed),
            ..Settings::default()
        };
        Ewma::new(&specs(weights), &settings)
    }

    fn ms(n: f64) -> Duration {
        Duration::from_secs_f64(n / 1e3)
    }

    /// Simulated samples: a and b answer in 10 ms, c in 100 ms. With nothing in flight c never
    /// wins (the two draws are distinct, so a fast member is always in the pair); with a and b
    /// busy enough, c wins whenever it is drawn.
    ///
    /// ```text
    /// rtt (ms)        10    10    100
    /// in flight        0     0      0     ->  c gets 0 of 1,000
    /// in flight       10    10      0     ->  c wins when drawn: 10 x 11 = 110  >  100 x 1
    /// ```
    #[test]
    fn slow_backend_loses() {
        let s = ewma(&[1, 1, 1], 3);
        let g = Group::up(3);
        let now = Instant::now();
        for (slot, rtt) in [10.0, 10.0, 100.0].into_iter().enumerate() {
            g.loads[slot].observe_at(ms(rtt), now);
        }
        let mut order = Order::new();
        let mut c = 0;
        for _ in 0..1000 {
            s.order_at(&g, &mut order, now);
            c += usize::from(order.first() == Some(2));
        }
        assert_eq!(c, 0);

        let _busy: Vec<InFlight<'_>> = (0..10)
            .flat_map(|_| [g.loads[0].start(), g.loads[1].start()])
            .collect();
        let mut c = 0;
        for _ in 0..300 {
            let why = s.order_at(&g, &mut order, now).to_string();
            let drawn = &order.slots()[..2];
            if drawn.contains(&2) {
                assert_eq!(drawn[0], 2, "{why}");
                assert!(why.contains("rtt 100.000ms x (0+1)/w1"), "{why}");
                c += 1;
            }
        }
        // c is in 2 of the 3 possible pairs.
        assert!((150..=250).contains(&c), "{c}");
    }

    /// A backend that turns slow is avoided from its first slow answer (the peak), and tried again
    /// once its estimate has faded (here tau = 10 s: after ~40 s, 100 ms x e^-4 < 2 ms).
    #[test]
    fn a_slow_answer_counts_at_once_and_fades() {
        let s = ewma(&[1, 1], 8);
        let g = Group::up(2);
        let t0 = Instant::now();
        g.loads[0].observe_at(ms(2.0), t0);
        g.loads[1].observe_at(ms(2.0), t0);
        g.loads[1].observe_at(ms(100.0), t0 + ms(1.0));
        let mut order = Order::new();
        s.order_at(&g, &mut order, t0 + ms(2.0));
        assert_eq!(order.slots(), &[0, 1]);
        // 40 s later, with no samples at all: both faded by the same factor, b still dearer.
        s.order_at(&g, &mut order, t0 + Duration::from_secs(40));
        assert_eq!(order.first(), Some(0));
        // a keeps answering in 2 ms; b, left alone, fades below it.
        for i in 1..=40 {
            g.loads[0].observe_at(ms(2.0), t0 + Duration::from_secs(i));
        }
        s.order_at(&g, &mut order, t0 + Duration::from_secs(40));
        assert_eq!(order.first(), Some(1));
    }

    /// Unmeasured members cost the default RTT, and the trace says so.
    #[test]
    fn unmeasured_members_use_the_default() {
        let s = ewma(&[1, 1], 1);
        let g = Group::up(2);
        let now = Instant::now();
        g.loads[0].observe_at(ms(0.1), now);
        let mut order = Order::new();
        let why = s.order_at(&g, &mut order, now).to_string();
        assert_eq!(order.first(), Some(0));
        assert!(why.contains("rtt 1.000ms (default) x (0+1)/w1"), "{why}");
        assert!(why.contains("rtt 0.100ms x (0+1)/w1"), "{why}");
    }

    /// Weight divides the cost: with equal RTTs, a weight-3 member takes ~3x the in-flight load.
    #[test]
    fn weight_divides_the_cost() {
        let s = ewma(&[3, 1], 2);
        let g = Group::up(2);
        let now = Instant::now();
        for load in &g.loads {
            load.observe_at(ms(5.0), now);
        }
        let mut order = Order::new();
        let mut held = Vec::new();
        for _ in 0..40 {
            s.order_at(&g, &mut order, now);
            held.push(g.loads[order.first().unwrap()].start());
        }
        let (a, b) = (g.loads[0].in_flight(), g.loads[1].in_flight());
        assert!((29..=31).contains(&a) && a + b == 40, "{a} {b}");
    }
}
