//! The newest log entries, encoded, in memory: what a leader reads to
//! replicate is almost always what it appended a moment ago, and the
//! journal's read path reads whole windows from the disk (it is built for
//! replay), so replication reads are served from here when they can be.

use std::collections::BTreeMap;

/// Bytes of payload the cache holds at most; beyond it the oldest entries
/// are dropped (reads of them go to the journal).
pub const TAIL_CACHE_BYTES_MAX: usize = 64 << 20;

/// Encoded entries by journal op, contiguous from the lowest cached op.
#[derive(Debug, Default)]
pub struct TailCache {
    entries: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
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
        while self.bytes > TAIL_CACHE_BYTES_MAX {
            match self.entries.pop_first() {
                Some((_, evicted)) => self.bytes -= evicted.len(),
                None => break,
            }
        }
    }

    /// Drops every op above `op` (a truncation).
    pub fn truncate_after(&mut self, op: u64) {
        let above = self.entries.split_off(&(op + 1));
        self.bytes -= above.values().map(Vec::len).sum::<usize>();
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
    fn it_stays_within_its_byte_bound() {
        let mut cache = TailCache::default();
        let payload = vec![0u8; 1 << 20];
        for op in 1..=100 {
            cache.insert(op, &payload);
        }
        assert!(cache.bytes <= TAIL_CACHE_BYTES_MAX);
        assert_eq!(cache.get(100, 100).map(|v| v.len()), Some(1));
        assert_eq!(cache.get(1, 1), None);
    }
}
