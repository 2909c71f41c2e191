//! Out-of-order acknowledgement tracking.
//!
//! [`AckSet`] keeps the contiguous low-water mark (every seq below it is acknowledged) and the
//! acknowledged ranges above it, as disjoint, non-adjacent half-open ranges. Its memory grows
//! with the number of *holes* (records handed out but not yet acknowledged, interleaved with
//! acknowledged ones), not with the number of records, so a corrupt region of a million lost
//! sequence numbers costs one range.

use std::collections::BTreeMap;

use crate::Seq;

/// The acknowledged sequence numbers of a queue.
#[derive(Debug, Clone, Default)]
pub struct AckSet {
    low: Seq,
    /// start → end (exclusive); every range starts above `low` and they never touch.
    above: BTreeMap<Seq, Seq>,
    /// Total count of seqs in `above`.
    above_count: u64,
}

impl AckSet {
    /// A set where everything below `low` is acknowledged.
    pub fn new(low: Seq) -> Self {
        AckSet {
            low,
            above: BTreeMap::new(),
            above_count: 0,
        }
    }

    /// Every seq below this is acknowledged.
    pub fn low_water(&self) -> Seq {
        self.low
    }

    /// How many seqs at or above the low-water mark are acknowledged.
    pub fn acked_above(&self) -> u64 {
        self.above_count
    }

    /// Whether `seq` is acknowledged.
    #[cfg(test)]
    pub fn contains(&self, seq: Seq) -> bool {
        seq < self.low
            || self
                .above
                .range(..=seq)
                .next_back()
                .is_some_and(|(_, &end)| seq < end)
    }

    /// Acknowledges `[start, end)`. Returns how many seqs were newly acknowledged.
    pub fn insert_range(&mut self, start: Seq, end: Seq) -> u64 {
        let start = start.max(self.low);
        if start >= end {
            return 0;
        }
        let mut new_start = start;
        let mut new_end = end;
        let mut covered = 0;
        // Absorb every existing range that overlaps or touches [start, end).
        let touching: Vec<(Seq, Seq)> = self
            .above
            .range(..=end)
            .rev()
            .take_while(|(_, e)| **e >= start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            self.above.remove(&s);
            self.above_count -= e - s;
            covered += e.min(end).saturating_sub(s.max(start));
            new_start = new_start.min(s);
            new_end = new_end.max(e);
        }
        let added = (end - start) - covered;
        if new_start == self.low {
            self.low = new_end;
        } else {
            self.above.insert(new_start, new_end);
            self.above_count += new_end - new_start;
        }
        added
    }

    /// Acknowledges one seq. Returns whether it was newly acknowledged.
    #[cfg(test)]
    pub fn insert(&mut self, seq: Seq) -> bool {
        self.insert_range(seq, seq.saturating_add(1)) == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn out_of_order_acks_advance_the_low_water_mark_only_when_contiguous() {
        let mut a = AckSet::new(0);
        assert!(a.insert(2));
        assert!(a.insert(1));
        assert_eq!(a.low_water(), 0);
        assert!(!a.insert(2));
        assert!(a.insert(0));
        assert_eq!(a.low_water(), 3);
        assert_eq!(a.acked_above(), 0);
        assert_eq!(a.insert_range(10, 20), 10);
        assert_eq!(a.insert_range(5, 15), 5);
        assert_eq!(a.insert_range(3, 5), 2);
        assert_eq!(a.low_water(), 20);
    }

    proptest! {
        #[test]
        fn matches_a_set_model(ops in proptest::collection::vec((0u64..64, 1u64..6), 0..80)) {
            let mut a = AckSet::new(0);
            let mut model = BTreeSet::new();
            for (start, len) in ops {
                let before = model.len();
                model.extend(start..start + len);
                let added = a.insert_range(start, start + len);
                prop_assert_eq!(added as usize, model.len() - before);
                let low = (0..).find(|s| !model.contains(s)).unwrap();
                prop_assert_eq!(a.low_water(), low);
                prop_assert_eq!(a.acked_above() as usize, model.range(low..).count());
                for s in 0..80 {
                    prop_assert_eq!(a.contains(s), model.contains(&s));
                }
            }
        }
    }
}
