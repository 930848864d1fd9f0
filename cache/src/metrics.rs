//! Counters. The cache is per shard and `!Send`, so plain `Cell<u64>`s do;
//! [`crate::Cache::stats`] copies them into a [`CacheStats`] snapshot that an
//! embedder can export however it likes.

use std::cell::Cell;

/// A snapshot of one cache's size, limits and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Bytes in committed objects.
    pub bytes: u64,
    /// Committed objects.
    pub objects: u64,
    /// Bytes held by outstanding reservations (including staging files).
    pub reserved_bytes: u64,
    /// Objects held by outstanding reservations.
    pub reserved_objects: u64,
    /// The byte limit in force (a percent limit resolved at open).
    pub bytes_limit: u64,
    /// The object limit in force.
    pub objects_limit: u64,
    /// Highest `bytes + reserved_bytes` seen since open.
    pub bytes_high_watermark: u64,
    /// Highest `objects + reserved_objects` seen since open.
    pub objects_high_watermark: u64,
    /// `get` calls that returned an object.
    pub hits: u64,
    /// `get` calls that found nothing.
    pub misses: u64,
    /// Objects written by `put`.
    pub puts: u64,
    /// Staging files committed.
    pub commits: u64,
    /// Commits refused because the key existed.
    pub commit_conflicts: u64,
    /// Fenced commits and adopts refused because their key was invalidated
    /// after the fence was taken ([`crate::Error::Invalidated`]).
    pub fenced_placements_refused: u64,
    /// Files adopted as objects by a hard link (`Cache::adopt`).
    pub adopted_linked: u64,
    /// Files adopted as objects by a copy (another filesystem).
    pub adopted_copied: u64,
    /// Adopts refused because the file was not the one they were given
    /// or began with ([`crate::Error::AdoptedFileChanged`]).
    pub adopted_files_changed: u64,
    /// Objects removed by `invalidate`.
    pub invalidations: u64,
    /// Trims that used only the in-memory access order.
    pub trims_fast: u64,
    /// Trims that walked the whole directory first.
    pub trims_exhaustive: u64,
    /// Trims triggered by ENOSPC (also counted under fast/exhaustive).
    pub trims_enospc: u64,
    /// Trims started in the background by the high-watermark threshold or a
    /// waiting reservation (also counted under fast/exhaustive).
    pub trims_background: u64,
    /// Trims that first had to wait out the throttle interval.
    pub trims_throttled: u64,
    /// Objects removed by trims.
    pub objects_trimmed: u64,
    /// Bytes removed by trims.
    pub bytes_trimmed: u64,
    /// Reservations that had to wait.
    pub reservation_waits: u64,
    /// Reservations that timed out.
    pub reservation_timeouts: u64,
    /// Staging files closed or dropped without a commit.
    pub staging_abandoned: u64,
    /// Commits whose staging-name unlink failed (object still committed).
    pub staging_unlink_failures: u64,
    /// Orphaned `.part` files removed at startup or later.
    pub orphans_removed: u64,
    /// Empty directories removed.
    pub empty_dirs_removed: u64,
    /// Tracker files written.
    pub tracker_persists: u64,
    /// Tracker files ignored at startup (wrong version, corrupt).
    pub tracker_load_failures: u64,
    /// fsyncs of directories under `objects/` (including `objects/`).
    pub dir_syncs: u64,
    /// Reads that found an object damaged or without a checksum, or
    /// refused one by its size before reading it
    /// ([`crate::Error::CorruptObject`], [`crate::Error::UnverifiableObject`]).
    pub damaged_objects: u64,
    /// Object files the startup walk refused to account for: larger than
    /// the byte limit, or of another size than their checksum records (a
    /// sparse file, a damaged inode). Each is removed; one whose unlink
    /// fails is counted too, logged as an error, and left untracked.
    pub refused_at_startup: u64,
}

/// Live counters behind [`CacheStats`].
#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) puts: Counter,
    pub(crate) commits: Counter,
    pub(crate) commit_conflicts: Counter,
    pub(crate) fenced_placements_refused: Counter,
    pub(crate) adopted_linked: Counter,
    pub(crate) adopted_copied: Counter,
    pub(crate) adopted_files_changed: Counter,
    pub(crate) invalidations: Counter,
    pub(crate) trims_fast: Counter,
    pub(crate) trims_exhaustive: Counter,
    pub(crate) trims_enospc: Counter,
    pub(crate) trims_background: Counter,
    pub(crate) trims_throttled: Counter,
    pub(crate) objects_trimmed: Counter,
    pub(crate) bytes_trimmed: Counter,
    pub(crate) reservation_waits: Counter,
    pub(crate) reservation_timeouts: Counter,
    pub(crate) staging_abandoned: Counter,
    pub(crate) staging_unlink_failures: Counter,
    pub(crate) orphans_removed: Counter,
    pub(crate) empty_dirs_removed: Counter,
    pub(crate) tracker_persists: Counter,
    pub(crate) tracker_load_failures: Counter,
    pub(crate) dir_syncs: Counter,
    pub(crate) damaged_objects: Counter,
    pub(crate) refused_at_startup: Counter,
}

/// A monotonically increasing counter.
#[derive(Default)]
pub(crate) struct Counter(Cell<u64>);

impl Counter {
    pub(crate) fn add(&self, n: u64) {
        self.0.set(self.0.get().saturating_add(n));
    }

    pub(crate) fn inc(&self) {
        self.add(1);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.get()
    }
}

impl Metrics {
    /// Fills the counter fields of `stats` (sizes are filled by the caller).
    pub(crate) fn fill(&self, stats: &mut CacheStats) {
        stats.hits = self.hits.get();
        stats.misses = self.misses.get();
        stats.puts = self.puts.get();
        stats.commits = self.commits.get();
        stats.commit_conflicts = self.commit_conflicts.get();
        stats.fenced_placements_refused = self.fenced_placements_refused.get();
        stats.adopted_linked = self.adopted_linked.get();
        stats.adopted_copied = self.adopted_copied.get();
        stats.adopted_files_changed = self.adopted_files_changed.get();
        stats.invalidations = self.invalidations.get();
        stats.trims_fast = self.trims_fast.get();
        stats.trims_exhaustive = self.trims_exhaustive.get();
        stats.trims_enospc = self.trims_enospc.get();
        stats.trims_background = self.trims_background.get();
        stats.trims_throttled = self.trims_throttled.get();
        stats.objects_trimmed = self.objects_trimmed.get();
        stats.bytes_trimmed = self.bytes_trimmed.get();
        stats.reservation_waits = self.reservation_waits.get();
        stats.reservation_timeouts = self.reservation_timeouts.get();
        stats.staging_abandoned = self.staging_abandoned.get();
        stats.staging_unlink_failures = self.staging_unlink_failures.get();
        stats.orphans_removed = self.orphans_removed.get();
        stats.empty_dirs_removed = self.empty_dirs_removed.get();
        stats.tracker_persists = self.tracker_persists.get();
        stats.tracker_load_failures = self.tracker_load_failures.get();
        stats.dir_syncs = self.dir_syncs.get();
        stats.damaged_objects = self.damaged_objects.get();
        stats.refused_at_startup = self.refused_at_startup.get();
    }
}
