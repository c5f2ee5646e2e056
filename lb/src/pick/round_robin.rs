//! `--balance round-robin` (the default): the members take turns, in proportion to their weights,
//! spread out as evenly as possible. This is nginx's *smooth weighted round robin*.
//!
//! Plain round robin (0, 1, 2, 0, 1, 2, ...) ignores weights. Repeating each member `weight`
//! times (Pingora: `a a a a a b c` for weights 5,1,1) honours them but sends bursts to the heavy
//! member. nginx's rule interleaves instead. Every member keeps a running score, `current`,
//! starting at 0. For each pick:
//!
//! 1. every member that is up adds its weight to its `current`;
//! 2. the largest `current` wins (on a tie, the earlier member);
//! 3. the winner subtracts the total weight, paying for its turn.
//!
//! ```text
//!   weights a=5 b=1 c=1 (total 7)     current after step 1      winner   after step 3
//!   pick 1                            a  5   b  1   c  1          a      a -2
//!   pick 2                            a  3   b  2   c  2          a      a -4
//!   pick 3                            a  1   b  3   c  3          b      b -4
//!   pick 4                            a  6   b -3   c  4          a      a -1
//!   pick 5                            a  4   b -2   c  5          c      c -2
//!   pick 6                            a  9   b -1   c -1          a      a  2
//!   pick 7                            a  7   b  0   c  0          a      a  0   (all back to 0)
//!   sequence: a a b a c a a
//! ```
//!
//! Over any `total` consecutive picks from a fresh start every member gets exactly `weight` turns,
//! and the scores are back at 0. With equal weights it is plain rotation, 0, 1, 2, 0, 1, 2,
//! exactly the order lb used before weights existed.
//!
//! A member that is down takes no part in a pick: it adds nothing, and the total is that of the
//! members that are up, so the others keep their rhythm and the down member's `current` waits
//! untouched until it is back. During slow start a member adds only its ramped weight.
//!
//! The failover order after the winner is "who would win next": the other members by `current`,
//! highest first. The scores are one small `Vec` per group behind a `Mutex`: a pick holds it for
//! one pass over the members, so it is effectively uncontended.

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::{Detail, Label, MemberSpec, Members, Order, RequestInfo, Selection, Settings, Snap};

#[derive(Debug)]
pub struct RoundRobin {
    weights: Box<[u32]>,
    slow_start: Duration,
    turns: Smooth,
}

impl RoundRobin {
    pub fn new(members: &[MemberSpec<'_>], settings: &Settings) -> Self {
        RoundRobin {
            weights: members.iter().map(|m| m.weight).collect(),
            slow_start: settings.slow_start,
            turns: Smooth::new(members.len()),
        }
    }
}

impl Selection for RoundRobin {
    fn order<'a>(
        &'a self,
        _request: &RequestInfo<'a>,
        members: &dyn Members,
        order: &mut Order,
    ) -> super::Why<'a> {
        let all_down = order.read(&self.weights, members, self.slow_start);
        let Some(why) = self.turns.take_turn(order, |m| m.eligible) else {
            return super::Why::empty();
        };
        super::Why::new(Detail::RoundRobin(why), all_down)
    }
}

/// The smooth weighted round robin state of one group: each member's `current`.
///
/// Also used by least-conn (to take turns among equally loaded members) and by hash (for
/// requests without a key).
#[derive(Debug)]
pub(super) struct Smooth {
    current: Mutex<Vec<i64>>,
}

impl Smooth {
    pub(super) fn new(len: usize) -> Self {
        Smooth {
            current: Mutex::new(vec![0; len]),
        }
    }

    /// One pick among the members `among` accepts, then fill `order`: the winner, then the other
    /// eligible members by `current`, highest first.
    pub(super) fn take_turn(
        &self,
        order: &mut Order,
        among: impl Fn(&Snap) -> bool,
    ) -> Option<Why> {
        let winner = self.step(&mut order.members, among)?;
        order.fill(&[winner], |a, b| b.current.cmp(&a.current));
        let member = *order.member(winner)?;
        let total = order
            .members
            .iter()
            .filter(|m| m.eligible)
            .map(|m| u64::from(m.weight))
            .sum();
        Some(Why {
            slot: winner,
            member,
            total,
        })
    }

    /// Steps 1 to 3 of the doc comment over the members `among` accepts; returns the winner and
    /// copies every member's `current` into its snapshot (for the failover order).
    pub(super) fn step(
        &self,
        members: &mut [Snap],
        among: impl Fn(&Snap) -> bool,
    ) -> Option<usize> {
        // No code below can panic while the lock is held, but if some day it does, the scores are
        // still usable: take them rather than propagate the poison.
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total: i64 = 0;
        let mut best: Option<(usize, i64)> = None;
        for (slot, (score, member)) in current.iter_mut().zip(members.iter()).enumerate() {
            if !among(member) {
                continue;
            }
            let weight = i64::try_from(member.effective()).unwrap_or(i64::MAX);
            *score = score.saturating_add(weight);
            total = total.saturating_add(weight);
            // Strictly greater: on a tie the earlier member keeps the lead.
            if best.is_none_or(|(_, top)| *score > top) {
                best = Some((slot, *score));
            }
        }
        let (winner, _) = best?;
        if let Some(score) = current.get_mut(winner) {
            *score = score.saturating_sub(total);
        }
        for (member, score) in members.iter_mut().zip(current.iter()) {
            member.current = *score;
        }
        Some(winner)
    }
}

/// `round-robin -> slot 0 (w5 of 7)`: the winner's weight out of the total weight that took part.
#[derive(Debug, Clone, Copy)]
pub(super) struct Why {
    slot: usize,
    member: Snap,
    total: u64,
}

impl Why {
    pub(super) fn slot(&self) -> usize {
        self.slot
    }

    pub(super) fn write(&self, f: &mut fmt::Formatter<'_>, label: Label<'_>) -> fmt::Result {
        f.write_str("round-robin -> ")?;
        self.write_turn(f, label)
    }

    /// `slot 0 (w5 of 7)`, also used by hash's fallback.
    pub(super) fn write_turn(&self, f: &mut fmt::Formatter<'_>, label: Label<'_>) -> fmt::Result {
        label(f, self.slot)?;
        write!(f, " (w{}", self.member.weight)?;
        if self.member.ramp < super::slow_start::FULL {
            write!(f, "@{}%", self.member.ramp / 10)?;
        }
        write!(f, " of {})", self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Status;
    use super::*;

    fn sequence(weights: &[u32], n: usize) -> String {
        let rr = RoundRobin::new(&specs(weights), &Settings::default());
        letters(&picks(&rr, &Group::up(weights.len()), n))
    }

    /// The reference sequences, measured on nginx, starting fresh:
    ///
    /// ```text
    /// weights    picks
    /// 5,1,1      a a b a c a a
    /// 2,1        a b a
    /// 3,2,1      a b a c b a
    /// 1,1,1      a b c
    /// ```
    #[test]
    fn matches_nginx_sequences() {
        assert_eq!(sequence(&[5, 1, 1], 7), "a a b a c a a");
        assert_eq!(sequence(&[2, 1], 3), "a b a");
        assert_eq!(sequence(&[3, 2, 1], 6), "a b a c b a");
        assert_eq!(sequence(&[1, 1, 1], 3), "a b c");
    }

    /// Equal weights are plain rotation, the order lb used before weights.
    ///
    /// ```text
    /// request:  1  2  3  4  5  6
    /// slot:     0  1  0  1  0  1      (two members)
    /// ```
    #[test]
    fn equal_weights_rotate() {
        assert_eq!(sequence(&[1, 1], 6), "a b a b a b");
        assert_eq!(sequence(&[7, 7, 7], 6), "a b c a b c");
    }

    /// Property: from a fresh start, every aligned window of `sum(weights)` picks gives each
    /// member exactly its weight, for many pseudo-random weight vectors (1..=8 members,
    /// weights 1..=1000, four windows each).
    #[test]
    fn every_window_matches_the_weights() {
        let mut rng = TestRng(0x5EED);
        for case in 0..300 {
            let len = 1 + rng.below(8) as usize;
            // Mostly small weights (short windows), sometimes the full range.
            let top = if case % 10 == 0 { 1000 } else { 12 };
            let weights: Vec<u32> = (0..len).map(|_| 1 + rng.below(top) as u32).collect();
            let total: u32 = weights.iter().sum();
            let rr = RoundRobin::new(&specs(&weights), &Settings::default());
            let all = picks(&rr, &Group::up(len), 4 * total as usize);
            for window in all.chunks(total as usize) {
                let got: Vec<u32> = counts(window, len).iter().map(|&c| c as u32).collect();
                assert_eq!(got, weights, "weights {weights:?}");
            }
        }
    }

    /// The heavy member is spread out: for 5,1,1 at most two `a` in a row within a cycle of 7
    /// (HAProxy: 3, Pingora: 5). (Across cycles `a a | a a` makes 4, as in nginx.)
    #[test]
    fn spreads_the_heavy_member() {
        let rr = RoundRobin::new(&specs(&[5, 1, 1]), &Settings::default());
        let seq = picks(&rr, &Group::up(3), 7);
        let longest = seq
            .chunk_by(|a, b| a == b)
            .filter(|run| run[0] == 0)
            .map(<[usize]>::len)
            .max();
        assert_eq!(longest, Some(2));
    }

    /// A member that is down sits out; the others keep their turns, and the failover order is
    /// "who would win next".
    ///
    /// ```text
    /// weights 1,1,1, b down:   request  1  2  3  4
    ///                          slot     a  c  a  c
    /// b back:                  slot     a  b  c  a  b  c   (plain rotation again)
    /// ```
    #[test]
    fn down_member_sits_out() {
        let rr = RoundRobin::new(&specs(&[1, 1, 1]), &Settings::default());
        let mut group = Group::up(3);
        group.status[1] = Status::Down;
        assert_eq!(letters(&picks(&rr, &group, 4)), "a c a c");
        group.status[1] = Status::UP;
        assert_eq!(letters(&picks(&rr, &group, 6)), "a b c a b c");
    }

    /// One strategy object shared by four threads: the turns are still exact overall (2,800
    /// picks = 400 cycles of 5,1,1).
    #[test]
    fn threads_share_the_turns() {
        let rr = RoundRobin::new(&specs(&[5, 1, 1]), &Settings::default());
        let group = Group::up(3);
        let all: Vec<usize> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| picks(&rr, &group, 700)))
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        assert_eq!(counts(&all, 3), [2000, 400, 400]);
    }

    #[test]
    fn failover_order_is_who_wins_next() {
        let rr = RoundRobin::new(&specs(&[5, 1, 1]), &Settings::default());
        let headers = crate::h1::Fields::default();
        let mut order = Order::new();
        let group = Group::up(3);
        // Pick 1: a wins (a -2, b 1, c 1); next would be b (tie with c: earlier first).
        let why = rr.order(&no_request(&headers), &group, &mut order);
        assert_eq!(order.slots(), &[0, 1, 2]);
        assert_eq!(why.to_string(), "round-robin -> slot 0 (w5 of 7)");
    }

    /// Slow start: b came back and ramps from 10% to 100% of its weight over 10 s. With equal
    /// weights b's share of 1,000 picks at each point of the ramp is about ramp / (2 + ramp).
    ///
    /// ```text
    /// b back for:   0 s    2.5 s   5 s    7.5 s   10 s
    /// ramp:         10%    32.5%   55%    77.5%   100%
    /// b's share:    4.8%   14.0%   21.6%  27.9%   33.3%
    /// ```
    #[test]
    fn slow_start_ramps_the_share() {
        let settings = Settings {
            slow_start: Duration::from_secs(10),
            ..Settings::default()
        };
        let rr = RoundRobin::new(&specs(&[1, 1, 1]), &settings);
        let mut group = Group::up(3);
        let mut shares = Vec::new();
        for quarter in 0..=4u64 {
            let back_for = Duration::from_millis(2500 * quarter);
            group.status[1] = Status::Up {
                back_for: Some(back_for),
            };
            let share = counts(&picks(&rr, &group, 1000), 3)[1] as f64 / 1000.0;
            let ramp = 0.1 + 0.9 * quarter as f64 / 4.0;
            assert!(
                (share - ramp / (2.0 + ramp)).abs() < 0.01,
                "{quarter}: {share}"
            );
            shares.push(share);
        }
        assert!(shares.windows(2).all(|w| w[0] < w[1]), "{shares:?}");
    }
}
