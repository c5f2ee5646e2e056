//! Step 3 of a request: which member of the group serves it.
//!
//! A selection strategy only answers "which slot first?"; it never does I/O and never looks at
//! health. The proxy then walks the group from that slot, skipping backends that are down, so
//! failover and health filtering work the same for any strategy.
//!
//! **Invariant:** nothing in `pick/` performs I/O or blocks.

mod round_robin;

pub use round_robin::RoundRobin;

/// A way to choose the first backend to try among `len` members of a group.
pub trait Selection: Send + Sync {
    /// The slot (in `0..len`) to try first for the next request; `len` is at least 1.
    fn pick(&self, len: usize) -> usize;
}

/// The order in which to try the members of a group: `first`, then the following slots, wrapping.
///
/// ```text
/// len = 3, first = 1:   1 -> 2 -> 0
/// ```
pub fn failover_order(first: usize, len: usize) -> impl Iterator<Item = usize> {
    (0..len).map(move |i| (first + i) % len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_walks_the_ring_once() {
        assert_eq!(failover_order(1, 3).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(failover_order(0, 1).collect::<Vec<_>>(), vec![0]);
    }
}
