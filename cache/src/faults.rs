//! Fault-injection hooks (feature `sim`). They let tests and the model
//! checker drive the paths real faults take — a full filesystem, a failed
//! unlink of a committed staging name — on any machine, including ones where
//! a loop device cannot be mounted.

use std::cell::Cell;

/// Counters of faults still to inject. Share one with the cache through
/// [`crate::CacheBuilder::faults`]; each hook fires once per count.
#[derive(Debug, Default)]
pub struct Faults {
    enospc_writes: Cell<u32>,
    staging_unlinks: Cell<u32>,
    short_reads: Cell<u32>,
    short_writes: Cell<u32>,
    pauses_after_place: Cell<u32>,
    dir_sync_failures: Cell<u32>,
    refused_unlinks: Cell<u32>,
}

impl Faults {
    /// A new set with nothing armed.
    pub fn new() -> Faults {
        Faults::default()
    }

    /// The next `n` object-data writes fail with ENOSPC (before reaching
    /// the file), exactly as a full filesystem would report it.
    pub fn fail_next_writes_with_enospc(&self, n: u32) {
        self.enospc_writes.set(n);
    }

    /// The next `n` unlinks of a staging name after a successful link fail
    /// with EIO.
    pub fn fail_next_staging_unlinks(&self, n: u32) {
        self.staging_unlinks.set(n);
    }

    /// The next `n` object reads return at most half the bytes asked for,
    /// as the kernel does for a read above `MAX_RW_COUNT` (0x7ffff000 bytes).
    pub fn shorten_next_reads(&self, n: u32) {
        self.short_reads.set(n);
    }

    /// The next `n` object-data writes write at most half their bytes, as
    /// the kernel does for a write above `MAX_RW_COUNT` (0x7ffff000 bytes).
    pub fn shorten_next_writes(&self, n: u32) {
        self.short_writes.set(n);
    }

    /// The next `n` commits (and puts) yield to the executor right after
    /// their link/rename returns, before accounting for it: a caller that
    /// drops the commit at that point must not lose the accounting.
    pub fn pause_next_commits_after_place(&self, n: u32) {
        self.pauses_after_place.set(n);
    }

    /// The next `n` fsyncs of a directory under `objects/` (or of
    /// `objects/` itself) fail with EIO.
    pub fn fail_next_dir_syncs(&self, n: u32) {
        self.dir_sync_failures.set(n);
    }

    /// The next `n` unlinks of an object file the startup walk refused
    /// (not accounted) fail with EIO.
    pub fn fail_next_refused_unlinks(&self, n: u32) {
        self.refused_unlinks.set(n);
    }

    pub(crate) fn take_refused_unlink(&self) -> bool {
        take(&self.refused_unlinks)
    }

    pub(crate) fn take_dir_sync_failure(&self) -> bool {
        take(&self.dir_sync_failures)
    }

    pub(crate) fn take_pause_after_place(&self) -> bool {
        take(&self.pauses_after_place)
    }

    pub(crate) fn take_short_read(&self) -> bool {
        take(&self.short_reads)
    }

    pub(crate) fn take_short_write(&self) -> bool {
        take(&self.short_writes)
    }

    pub(crate) fn take_enospc_write(&self) -> bool {
        take(&self.enospc_writes)
    }

    pub(crate) fn take_staging_unlink(&self) -> bool {
        take(&self.staging_unlinks)
    }
}

fn take(counter: &Cell<u32>) -> bool {
    let n = counter.get();
    if n == 0 {
        return false;
    }
    counter.set(n - 1);
    true
}
