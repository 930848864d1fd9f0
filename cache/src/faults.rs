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
