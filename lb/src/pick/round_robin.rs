//! Round robin: the members take turns, 0, 1, 2, 0, 1, 2, ...
//!
//! One atomic counter per group, incremented once per request (also when the chosen backend then
//! fails, as in the original). `fetch_add` makes concurrent requests on different threads each get
//! their own turn without a lock.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Selection;

#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// How many requests this group has seen (the counter shown by `--trace`).
    pub fn count(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }
}

impl Selection for RoundRobin {
    fn pick(&self, len: usize) -> usize {
        // Relaxed is enough: we only need each caller to get a distinct ticket, not ordering with
        // other memory operations.
        self.next.fetch_add(1, Ordering::Relaxed) % len.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ```text
    /// request:  1  2  3  4  5  6
    /// slot:     0  1  0  1  0  1      (two members)
    /// ```
    #[test]
    fn alternates_between_two() {
        let rr = RoundRobin::default();
        let picks: Vec<usize> = (0..6).map(|_| rr.pick(2)).collect();
        assert_eq!(picks, vec![0, 1, 0, 1, 0, 1]);
        assert_eq!(rr.count(), 6);
    }

    #[test]
    fn cycles_through_three() {
        let rr = RoundRobin::default();
        let picks: Vec<usize> = (0..6).map(|_| rr.pick(3)).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }
}
