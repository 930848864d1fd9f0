//! The newest log entries, encoded, in memory: what a leader reads to
//! replicate is almost always what it appended a moment ago, and the
//! journal's read path reads whole windows from the disk (it is built for
//! replay), so replication reads are served from here when they can be.

use std::collections::BTreeMap;

/// Bytes of payload the cache holds at most while its entries are durable;
/// beyond it the oldest durable entries are dropped (reads of them go to the
/// journal). Entries not durable yet are never dropped: the journal cannot
/// serve them, and openraft's reader must not leave them out.
pub const TAIL_CACHE_BYTES_MAX: usize = 64 << 20;

/// Encoded entries by journal op, contiguous from the lowest cached op.
#[derive(Debug, Default)]
pub struct TailCache {
    entries: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
    /// Ops at or below it are durable in the journal.
    durable_through: u64,
    /// Bumped by every truncation: a durability report for entries
    /// inserted before one is stale (their ops may have been written again).
    generation: u64,
}

impl TailCache {
    /// Caches `payload` as op `op`. A gap below it (ops skipped because a
    /// snapshot covers them, or a cache that starts mid-log) resets the
    /// cache, so what it holds is always contiguous.
    pub fn insert(&mut self, op: u64, payload: &[u8]) {
        if let Some((&last, _)) = self.entries.last_key_value() {
            if op != last + 1 {
                self.truncate_after(op.saturating_sub(1));
                if self
                    .entries
                    .last_key_value()
                    .is_some_and(|(&l, _)| l + 1 != op)
                {
                    self.clear();
                }
            }
        }
        self.bytes += payload.len();
        self.entries.insert(op, payload.to_vec());
        self.evict();
    }

    /// Drops the oldest durable entries while the cache is over its bound.
    fn evict(&mut self) {
        while self.bytes > TAIL_CACHE_BYTES_MAX {
            match self.entries.first_key_value() {
                Some((&op, _)) if op <= self.durable_through => {}
                _ => break,
            }
            if let Some((_, evicted)) = self.entries.pop_first() {
                self.bytes -= evicted.len();
            }
        }
    }

    /// The current generation (see [`TailCache::mark_durable`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records that ops up to `op`, inserted in `generation`, are durable
    /// (ignored if a truncation came since).
    pub fn mark_durable(&mut self, op: u64, generation: u64) {
        if generation == self.generation && op > self.durable_through {
            self.durable_through = op;
            self.evict();
        }
    }

    /// Whether `op` is cached.
    pub fn contains(&self, op: u64) -> bool {
        self.entries.contains_key(&op)
    }

    /// Drops every op above `op` (a truncation).
    pub fn truncate_after(&mut self, op: u64) {
        let above = self.entries.split_off(&(op + 1));
        self.bytes -= above.values().map(Vec::len).sum::<usize>();
        self.durable_through = self.durable_through.min(op);
        self.generation += 1;
    }

    /// Drops every op at or below `op` (a purge).
    pub fn forget_through(&mut self, op: u64) {
        let kept = self.entries.split_off(&(op + 1));
        let dropped = std::mem::replace(&mut self.entries, kept);
        self.bytes -= dropped.values().map(Vec::len).sum::<usize>();
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The payloads of ops `first..=last` (`None`: to the newest), if the
    /// cache holds all of them and, for an open end, holds the newest op.
    pub fn get_range(&self, first: u64, last: Option<u64>) -> Option<Vec<Vec<u8>>> {
        let (&highest, _) = self.entries.last_key_value()?;
        self.get(first, last.unwrap_or(highest))
    }

    /// The payloads of the cached run that starts at `first`, up to `last`
    /// (`None`: to the newest); empty if `first` is not cached.
    pub fn get_from(&self, first: u64, last: Option<u64>) -> Vec<Vec<u8>> {
        if !self.entries.contains_key(&first) {
            return Vec::new();
        }
        let last = last.unwrap_or(u64::MAX);
        if first > last {
            return Vec::new();
        }
        self.entries
            .range(first..=last)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// The payloads of ops `first..=last`, if the cache holds all of them.
    pub fn get(&self, first: u64, last: u64) -> Option<Vec<Vec<u8>>> {
        if first > last {
            return Some(Vec::new());
        }
        let (&lowest, _) = self.entries.first_key_value()?;
        let (&highest, _) = self.entries.last_key_value()?;
        if first < lowest || last > highest {
            return None;
        }
        Some(
            self.entries
                .range(first..=last)
                .map(|(_, p)| p.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let mut cache = TailCache::default();
        for op in 5..=9 {
            cache.insert(op, &[op as u8]);
        }
        assert_eq!(cache.get(5, 9).map(|v| v.len()), Some(5));
        assert_eq!(cache.get(7, 6), Some(Vec::new()));
        assert_eq!(cache.get(4, 6), None);
        assert_eq!(cache.get(8, 10), None);
        assert_eq!(cache.get_from(8, Some(10)), vec![vec![8], vec![9]]);
        assert_eq!(cache.get_from(8, None), vec![vec![8], vec![9]]);
        assert_eq!(cache.get_from(4, None), Vec::<Vec<u8>>::new());
        assert_eq!(cache.get_from(9, Some(8)), Vec::<Vec<u8>>::new());
        cache.truncate_after(7);
        assert_eq!(cache.get(8, 8), None);
        assert_eq!(cache.get(6, 7), Some(vec![vec![6], vec![7]]));
        // A rewrite after a truncation continues the run.
        cache.insert(8, &[80]);
        assert_eq!(cache.get(7, 8), Some(vec![vec![7], vec![80]]));
        cache.forget_through(6);
        assert_eq!(cache.get(6, 8), None);
        assert_eq!(cache.get(7, 8).map(|v| v.len()), Some(2));
        // A gap resets it: nothing below the gap is served as if contiguous.
        cache.insert(20, &[20]);
        assert_eq!(cache.get(8, 8), None);
        assert_eq!(cache.get(20, 20), Some(vec![vec![20]]));
    }

    #[test]
    fn an_insert_below_the_end_replaces_the_suffix() {
        let mut cache = TailCache::default();
        for op in 1..=5 {
            cache.insert(op, &[op as u8]);
        }
        cache.insert(3, &[30]);
        assert_eq!(cache.get(1, 3), Some(vec![vec![1], vec![2], vec![30]]));
        assert_eq!(cache.get(4, 4), None);
    }

    #[test]
    fn it_stays_within_its_byte_bound_once_entries_are_durable() {
        let mut cache = TailCache::default();
        let payload = vec![0u8; 1 << 20];
        for op in 1..=100 {
            cache.insert(op, &payload);
        }
        // Nothing is durable yet: nothing may go (the journal cannot serve
        // those entries).
        assert_eq!(cache.get(1, 100).map(|v| v.len()), Some(100));
        cache.mark_durable(100, cache.generation());
        assert!(cache.bytes <= TAIL_CACHE_BYTES_MAX);
        assert_eq!(cache.get(100, 100).map(|v| v.len()), Some(1));
        assert_eq!(cache.get(1, 1), None);
    }

    #[test]
    fn a_durability_report_from_before_a_truncation_is_ignored() {
        let mut cache = TailCache::default();
        let payload = vec![0u8; 1 << 20];
        for op in 1..=80 {
            cache.insert(op, &payload);
        }
        let before = cache.generation();
        cache.truncate_after(10);
        for op in 11..=80 {
            cache.insert(op, &payload);
        }
        // The report for the first ops 11..=80 comes late: the rewritten
        // ones are not durable, and stay.
        cache.mark_durable(80, before);
        assert_eq!(cache.get(11, 80).map(|v| v.len()), Some(70));
        // Durable through 10: only those may go, and the cache is still
        // over its bound with what is left.
        cache.mark_durable(10, cache.generation());
        assert_eq!(cache.get(1, 1), None);
        assert_eq!(cache.get(11, 80).map(|v| v.len()), Some(70));
    }
}
