//! Counts per time slot in a fixed ring, updated by many threads without a lock.
//!
//! Each cell is one `AtomicU64` holding its slot number in the high 32 bits and that slot's
//! count in the low 32 bits. A writer for slot `s` uses cell `s % N`: when the cell still holds an
//! older slot, one compare-and-swap replaces it with `(s, n)`, so the old count is forgotten and
//! the new one started in the same step; when it holds `s`, the count is raised by a
//! compare-and-swap of the whole word. A reader therefore never sees a count under the wrong
//! slot, and no count is lost to a race between rotating and counting. A writer whose slot the
//! ring has already moved past (it holds `s + kN`) adds its count to the ring's total only: that
//! slot is no longer kept.
//!
//! The total since the start is the slots still held plus the counts of those rotated out,
//! which the writer that rotates a cell adds up (once per slot, not per request): a request
//! costs one compare-and-swap.
//!
//! Pure: the caller passes the slot number (time since the process started, divided by the slot
//! width); nothing here reads a clock.

use std::sync::atomic::{AtomicU64, Ordering};

/// The last `N` slots' counts.
pub struct Ring<const N: usize> {
    cells: [AtomicU64; N],
    /// Counts of the slots no longer held.
    gone: AtomicU64,
}

impl<const N: usize> Default for Ring<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> std::fmt::Debug for Ring<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ring<{N}>")
    }
}

fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

fn pack(slot: u32, count: u32) -> u64 {
    (u64::from(slot) << 32) | u64::from(count)
}

impl<const N: usize> Ring<N> {
    pub fn new() -> Self {
        // (slot 0, count 0) in every cell: an empty ring reads as zeros everywhere
        Ring { cells: std::array::from_fn(|_| AtomicU64::new(0)), gone: AtomicU64::new(0) }
    }

    /// Adds `n` to slot `slot`.
    pub fn add(&self, slot: u32, n: u32) {
        let cell = &self.cells[slot as usize % N];
        let mut word = cell.load(Ordering::Relaxed);
        loop {
            let (held, count) = unpack(word);
            let (next, rotated) = match held.cmp(&slot) {
                // a count that would reach the slot bits saturates instead (4 billion per slot)
                std::cmp::Ordering::Equal => (pack(slot, count.saturating_add(n)), 0),
                std::cmp::Ordering::Less => (pack(slot, n), count),
                // the ring has moved past this slot: only the total keeps it
                std::cmp::Ordering::Greater => {
                    self.gone.fetch_add(u64::from(n), Ordering::Relaxed);
                    return;
                }
            };
            match cell.compare_exchange_weak(word, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    if rotated > 0 {
                        self.gone.fetch_add(u64::from(rotated), Ordering::Relaxed);
                    }
                    return;
                }
                Err(actual) => word = actual,
            }
        }
    }

    /// The count of slot `slot`, 0 when the ring no longer (or not yet) holds it.
    pub fn get(&self, slot: u32) -> u64 {
        let (held, count) = unpack(self.cells[slot as usize % N].load(Ordering::Relaxed));
        if held == slot {
            u64::from(count)
        } else {
            0
        }
    }

    /// The sum of the slots `from..=to` that the ring still holds.
    pub fn sum(&self, from: u32, to: u32) -> u64 {
        let from = from.max(to.saturating_sub(N as u32 - 1));
        self.cells
            .iter()
            .map(|c| unpack(c.load(Ordering::Relaxed)))
            .filter(|(held, _)| (from..=to).contains(held))
            .map(|(_, count)| u64::from(count))
            .sum()
    }

    /// Everything counted since the ring was made.
    pub fn total(&self) -> u64 {
        let held: u64 = self.cells.iter().map(|c| u64::from(unpack(c.load(Ordering::Relaxed)).1)).sum();
        self.gone.load(Ordering::Relaxed) + held
    }

    /// The counts of the `len` slots ending with `to`, oldest first (0 for slots not held).
    pub fn series(&self, to: u32, len: usize) -> Vec<u64> {
        (0..len as u32).rev().map(|back| to.checked_sub(back).map_or(0, |s| self.get(s))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_per_slot_and_forgets_slots_the_ring_moved_past() {
        let r: Ring<4> = Ring::new();
        r.add(0, 1);
        r.add(0, 2);
        r.add(1, 5);
        assert_eq!((r.get(0), r.get(1), r.get(2)), (3, 5, 0));
        assert_eq!(r.sum(0, 1), 8);
        // slot 4 reuses slot 0's cell: slot 0 is gone, slot 4 starts at its own count
        r.add(4, 7);
        assert_eq!((r.get(0), r.get(4)), (0, 7));
        assert_eq!(r.sum(0, 4), 12);
        // a late writer for slot 0 does not touch slot 4, and counts in the total only
        r.add(0, 100);
        assert_eq!((r.get(0), r.get(4)), (0, 7));
        assert_eq!(r.total(), 1 + 2 + 5 + 7 + 100);
        // the six slots ending with 4: before the first slot, slot 0 (gone), 1, 2, 3, 4
        assert_eq!(r.series(4, 6), vec![0, 0, 5, 0, 0, 7]);
    }

    #[test]
    fn many_threads_lose_no_count() {
        let r = std::sync::Arc::new(Ring::<8>::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        r.add(i / 5_000, 1);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!((0..4).map(|s| r.get(s)).collect::<Vec<_>>(), vec![20_000; 4]);
        assert_eq!(r.sum(0, 3), 80_000);
        assert_eq!(r.total(), 80_000);
    }

    proptest! {
        /// Writes in any order (late writers included): the total is everything written.
        #[test]
        fn the_total_counts_every_write(writes in prop::collection::vec((0u32..40, 1u32..5), 0..200)) {
            let r: Ring<8> = Ring::new();
            for (slot, n) in &writes {
                r.add(*slot, *n);
            }
            prop_assert_eq!(r.total(), writes.iter().map(|(_, n)| u64::from(*n)).sum::<u64>());
        }

        /// Against a map of every slot's count: the ring answers for the last N slots exactly.
        #[test]
        fn agrees_with_a_map_over_the_last_n_slots(writes in prop::collection::vec((0u32..40, 1u32..5), 0..200)) {
            let r: Ring<8> = Ring::new();
            let mut reference = std::collections::BTreeMap::<u32, u64>::new();
            let mut newest = 0u32;
            // slots arrive in time order (the edge counts a request when it ends)
            let mut writes = writes;
            writes.sort_by_key(|(s, _)| *s);
            for (slot, n) in writes {
                r.add(slot, n);
                newest = newest.max(slot);
                *reference.entry(slot).or_default() += u64::from(n);
            }
            for slot in newest.saturating_sub(7)..=newest {
                prop_assert_eq!(r.get(slot), reference.get(&slot).copied().unwrap_or(0));
            }
            let window: u64 = reference.range(newest.saturating_sub(7)..=newest).map(|(_, n)| n).sum();
            prop_assert_eq!(r.sum(0, newest), window);
            prop_assert_eq!(r.total(), reference.values().sum::<u64>());
        }
    }
}
