//! Which offset of each partition may be committed while events are handled out of order
//! (several lanes at once): the lowest offset still in flight, or one past the highest done
//! when none is. Committing only that means a crash redelivers every unfinished event and
//! nothing after a gap is skipped. Pure.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
pub struct Offsets {
    partitions: HashMap<i32, Partition>,
}

#[derive(Debug, Default)]
struct Partition {
    in_flight: BTreeSet<i64>,
    /// one past the highest offset done
    done_to: i64,
    /// the last value handed out by [`Offsets::done`]
    committable: i64,
}

impl Offsets {
    /// An event was read and handed to a lane.
    pub fn start(&mut self, partition: i32, offset: i64) {
        let p = self.partitions.entry(partition).or_insert_with(|| Partition { committable: offset, ..Default::default() });
        p.in_flight.insert(offset);
    }

    /// An event is finished; `Some(next)` when the committable offset (the next one to read)
    /// moved forward.
    pub fn done(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.entry(partition).or_default();
        p.in_flight.remove(&offset);
        p.done_to = p.done_to.max(offset + 1);
        let next = p.in_flight.first().copied().unwrap_or(p.done_to);
        (next > p.committable).then(|| {
            p.committable = next;
            next
        })
    }

    /// Events still being handled.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_past_a_contiguous_prefix() {
        let mut o = Offsets::default();
        for off in 10..14 {
            o.start(0, off);
        }
        assert_eq!(o.done(0, 12), None, "10 and 11 are still in flight");
        assert_eq!(o.done(0, 10), Some(11));
        assert_eq!(o.done(0, 13), None, "11 still in flight");
        assert_eq!(o.done(0, 11), Some(14));
        assert_eq!(o.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut o = Offsets::default();
        o.start(0, 5);
        o.start(1, 7);
        assert_eq!(o.done(1, 7), Some(8));
        assert_eq!(o.in_flight(), 1);
        assert_eq!(o.done(0, 5), Some(6));
    }

    /// Whatever the order of completion, the committable offset never passes an unfinished event
    /// and ends one past the last.
    #[test]
    fn never_passes_an_unfinished_event() {
        let orders: [&[i64]; 4] = [&[0, 1, 2, 3, 4], &[4, 3, 2, 1, 0], &[2, 0, 4, 1, 3], &[1, 3, 0, 4, 2]];
        for order in orders {
            let mut o = Offsets::default();
            for off in 0..5 {
                o.start(3, off);
            }
            let mut finished = std::collections::BTreeSet::new();
            let mut last = 0;
            for &off in order {
                finished.insert(off);
                if let Some(next) = o.done(3, off) {
                    assert!((0..next).all(|x| finished.contains(&x)), "{order:?}: {next} passes an unfinished event");
                    assert!(next > last);
                    last = next;
                }
            }
            assert_eq!(last, 5, "{order:?}");
        }
    }
}
