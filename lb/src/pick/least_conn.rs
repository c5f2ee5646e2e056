//! `--balance least-conn`: send the request to the member with the fewest requests in flight,
//! per unit of weight (nginx `least_conn`, HAProxy `leastconn`).
//!
//! Round robin hands out turns whatever happens to them; a backend that answers slowly piles up
//! requests while the fast ones sit idle. Least-conn looks at the pile: a slow backend holds its
//! requests longer, so it has more in flight, so it is chosen less. No timing needed, only a
//! counter per backend (shared by all worker threads, see [`super::load`]).
//!
//! ```text
//!   in flight / weight      a: ████ 4/w1     b: █ 1/w1     c: ███ 3/w1
//!   least:                                   ^ b
//!   weighted                a: ████ 4/w5 = 0.8            b: █ 1/w1 = 1.0    -> a
//! ```
//!
//! The comparison cross-multiplies (`4 x 1 < 1 x 5`) instead of dividing, so it is exact.
//!
//! Ties matter more than they seem. A client that sends one request at a time always finds every
//! backend at 0 in flight; a "first minimum" tie-break would send it everything to the first
//! backend. As nginx does, the tied members take turns by smooth weighted round robin (see
//! [`super::round_robin`]), so that client sees exactly the round-robin sequence, weights included.
//!
//! The failover order after the winner: the others from least to most loaded (per weight), ties
//! in the order their turns would come.

use std::cmp::Ordering;
use std::fmt;
use std::time::Duration;

use super::round_robin::Smooth;
use super::{Detail, Label, MemberSpec, Members, Order, RequestInfo, Selection, Settings, Snap};

#[derive(Debug)]
pub struct LeastConn {
    weights: Box<[u32]>,
    slow_start: Duration,
    /// Turns among equally loaded members.
    turns: Smooth,
}

impl LeastConn {
    pub fn new(members: &[MemberSpec<'_>], settings: &Settings) -> Self {
        LeastConn {
            weights: members.iter().map(|m| m.weight).collect(),
            slow_start: settings.slow_start,
            turns: Smooth::new(members.len()),
        }
    }
}

impl Selection for LeastConn {
    fn order<'a>(
        &'a self,
        _request: &RequestInfo<'a>,
        members: &dyn Members,
        order: &mut Order,
    ) -> super::Why<'a> {
        let all_down = order.read(&self.weights, members, self.slow_start);
        let least = order
            .members
            .iter()
            .filter(|m| m.eligible)
            .min_by(|a, b| a.load_per_weight(b))
            .copied();
        let Some(least) = least else {
            return super::Why::empty();
        };
        let tied_with_least = |m: &Snap| m.eligible && m.load_per_weight(&least) == Ordering::Equal;
        let tied = order.members.iter().filter(|m| tied_with_least(m)).count();
        let Some(winner) = self.turns.step(&mut order.members, tied_with_least) else {
            return super::Why::empty();
        };
        order.fill(&[winner], |a, b| {
            a.load_per_weight(b).then(b.current.cmp(&a.current))
        });
        let runner_up = order.slots().get(1).and_then(|&s| order.member(s)).copied();
        let Some(&member) = order.member(winner) else {
            return super::Why::empty();
        };
        super::Why::new(
            Detail::LeastConn(Why {
                slot: winner,
                member,
                runner_up,
                tied,
            }),
            all_down,
        )
    }
}

/// `least-conn -> slot 1 (in flight 1/w1 vs 4/w1)`: the winner's load against the next best's.
#[derive(Debug, Clone, Copy)]
pub(super) struct Why {
    slot: usize,
    member: Snap,
    runner_up: Option<Snap>,
    /// How many members shared the lowest load (and so took turns).
    tied: usize,
}

impl Why {
    pub(super) fn slot(&self) -> usize {
        self.slot
    }

    pub(super) fn write(&self, f: &mut fmt::Formatter<'_>, label: Label<'_>) -> fmt::Result {
        f.write_str("least-conn -> ")?;
        label(f, self.slot)?;
        f.write_str(" (in flight ")?;
        self.member.write_share(f)?;
        match &self.runner_up {
            Some(next) => {
                f.write_str(" vs ")?;
                next.write_share(f)?;
            }
            None => f.write_str(", the only candidate")?,
        }
        if self.tied > 1 {
            write!(f, "; {} tied, taking turns", self.tied)?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{InFlight, Status};
    use super::*;

    fn least_conn(weights: &[u32]) -> LeastConn {
        LeastConn::new(&specs(weights), &Settings::default())
    }

    /// One request at a time: every backend is idle at every pick, so all tie and they take
    /// turns. A "first minimum" tie-break would answer `a a a a a a`.
    ///
    /// ```text
    /// request:   1  2  3  4  5  6  7
    /// 1,1:       a  b  a  b  a  b  a
    /// 1,1,1:     a  b  c  a  b  c  a
    /// 5,1,1:     a  a  b  a  c  a  a      (the smooth round robin sequence)
    /// ```
    #[test]
    fn sequential_client_alternates() {
        assert_eq!(
            letters(&picks(&least_conn(&[1, 1]), &Group::up(2), 7)),
            "a b a b a b a"
        );
        assert_eq!(
            letters(&picks(&least_conn(&[1, 1, 1]), &Group::up(3), 7)),
            "a b c a b c a"
        );
        assert_eq!(
            letters(&picks(&least_conn(&[5, 1, 1]), &Group::up(3), 7)),
            "a a b a c a a"
        );
    }

    /// ```text
    /// in flight (weights)         choice   failover order   trace
    /// 3 1 4      (1,1,1)          b        b a c            in flight 1/w1 vs 3/w1
    /// 4 1 3      (5,1,1)          a        a b c            in flight 4/w5 vs 1/w1
    /// 2 2 0, c down (1,1,1)       a        a b              ties: turns
    /// ```
    #[test]
    fn fewest_in_flight_per_weight() {
        let headers = crate::h1::Fields::default();
        let mut order = Order::new();
        fn busy(g: &Group, n: [usize; 3]) -> Vec<InFlight<'_>> {
            (0..3)
                .flat_map(|slot| (0..n[slot]).map(move |_| slot))
                .map(|slot| g.loads[slot].start())
                .collect()
        }

        let s = least_conn(&[1, 1, 1]);
        let g = Group::up(3);
        let _held = busy(&g, [3, 1, 4]);
        let why = s.order(&no_request(&headers), &g, &mut order);
        assert_eq!(order.slots(), &[1, 0, 2]);
        assert_eq!(
            why.to_string(),
            "least-conn -> slot 1 (in flight 1/w1 vs 3/w1)"
        );

        let s = least_conn(&[5, 1, 1]);
        let g = Group::up(3);
        let _held = busy(&g, [4, 1, 3]);
        let why = s.order(&no_request(&headers), &g, &mut order);
        assert_eq!(order.slots(), &[0, 1, 2]);
        assert_eq!(
            why.to_string(),
            "least-conn -> slot 0 (in flight 4/w5 vs 1/w1)"
        );

        let s = least_conn(&[1, 1, 1]);
        let mut g = Group::up(3);
        g.status[2] = Status::Down;
        let _held = busy(&g, [2, 2, 0]);
        let why = s.order(&no_request(&headers), &g, &mut order);
        assert_eq!(order.slots(), &[0, 1]);
        assert_eq!(
            why.to_string(),
            "least-conn -> slot 0 (in flight 2/w1 vs 2/w1; 2 tied, taking turns)"
        );
        s.order(&no_request(&headers), &g, &mut order);
        assert_eq!(order.first(), Some(1));
    }

    /// Concurrent requests that stay in flight spread in proportion to the weights.
    #[test]
    fn held_requests_spread_by_weight() {
        let s = least_conn(&[3, 1]);
        let g = Group::up(2);
        let headers = crate::h1::Fields::default();
        let mut order = Order::new();
        let mut held = Vec::new();
        for _ in 0..40 {
            s.order(&no_request(&headers), &g, &mut order);
            held.push(g.loads[order.first().unwrap()].start());
        }
        assert_eq!([g.loads[0].in_flight(), g.loads[1].in_flight()], [30, 10]);
    }

    /// A backend that just came back is idle, and plain least-conn would pour requests into it
    /// until it caught up with the others. With slow start its weight is 10%, so its in-flight
    /// count per weight catches up ten times sooner.
    ///
    /// ```text
    /// a, c: 10 in flight each; b back for 0 s; 12 new requests held in flight
    ///                      b gets
    /// without slow start   10 or more (until it reaches 10 too)
    /// with slow start      2 (its 10% weight makes 1 in flight count as 10)
    /// ```
    #[test]
    fn slow_start_stops_the_flood() {
        for (slow_start, most) in [(Duration::ZERO, 12), (Duration::from_secs(30), 2)] {
            let settings = Settings {
                slow_start,
                ..Settings::default()
            };
            let s = LeastConn::new(&specs(&[1, 1, 1]), &settings);
            let mut g = Group::up(3);
            g.status[1] = Status::Up {
                back_for: Some(Duration::ZERO),
            };
            let headers = crate::h1::Fields::default();
            let mut order = Order::new();
            let mut held: Vec<InFlight<'_>> = (0..10)
                .flat_map(|_| [g.loads[0].start(), g.loads[2].start()])
                .collect();
            for _ in 0..12 {
                s.order(&no_request(&headers), &g, &mut order);
                held.push(g.loads[order.first().unwrap()].start());
            }
            let b = g.loads[1].in_flight();
            if slow_start.is_zero() {
                assert!(b >= 10, "{b}");
            } else {
                assert!(b <= most, "{b}");
            }
        }
    }
}
