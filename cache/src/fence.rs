//! Fences: a write into the cache that stands for a store object (a
//! download, a write's upload) must not land after that object was
//! invalidated.
//!
//! [`crate::Tiered`] reads and writes the store, then places the bytes in
//! the cache. A [`crate::Tiered::delete`] (or any [`crate::Cache::invalidate`])
//! that runs in between removes nothing yet, so the placement would leave
//! the old object cached and served after the store dropped it. A
//! [`Fence`] taken before the store is touched records the key's
//! invalidation generation; `invalidate` bumps the generation of a fenced
//! key under its key lock, and a fenced placement (a staging commit, an
//! adopt) compares under the same lock and refuses with
//! [`crate::Error::Invalidated`] if it moved. So either the invalidation
//! comes after the placement and removes it, or the placement sees it and
//! places nothing: never a copy of an object the store no longer holds.
//!
//! Only keys with a fence alive have an entry, so the table is bounded by
//! the operations in flight.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// Invalidation generations of the keys with fences alive.
#[derive(Default)]
pub(crate) struct FenceTable {
    keys: RefCell<HashMap<Rc<str>, Fenced>>,
}

struct Fenced {
    /// Fences alive for the key.
    holders: usize,
    /// Invalidations of the key since its first fence was taken.
    generation: u64,
}

impl FenceTable {
    /// A fence over `key` at its current generation.
    pub(crate) fn fence(self: &Rc<Self>, key: &str) -> Fence {
        let mut keys = self.keys.borrow_mut();
        let key: Rc<str> = match keys.get_key_value(key) {
            Some((held, _)) => Rc::clone(held),
            None => Rc::from(key),
        };
        let fenced = keys.entry(Rc::clone(&key)).or_insert(Fenced {
            holders: 0,
            generation: 0,
        });
        fenced.holders += 1;
        let generation = fenced.generation;
        Fence(Rc::new(Registered {
            table: Rc::clone(self),
            key,
            generation: Cell::new(generation),
        }))
    }

    /// Records an invalidation of `key` (called under its key lock).
    pub(crate) fn invalidated(&self, key: &str) {
        if let Some(fenced) = self.keys.borrow_mut().get_mut(key) {
            fenced.generation = fenced.generation.wrapping_add(1);
        }
    }

    fn generation(&self, key: &str) -> Option<u64> {
        self.keys.borrow().get(key).map(|fenced| fenced.generation)
    }
}

/// Taken before a store operation whose bytes are to be placed in the
/// cache at `key`; a placement given it refuses once `key` was invalidated
/// since (see the module docs). Clones share one fence (and what
/// [`Fence::own_invalidation`] records); it ends when the last is dropped.
#[derive(Clone)]
pub struct Fence(Rc<Registered>);

/// One fence's entry in its table, removed when the fence ends.
struct Registered {
    table: Rc<FenceTable>,
    key: Rc<str>,
    generation: Cell<u64>,
}

impl Fence {
    /// The key it fences.
    pub fn key(&self) -> &str {
        &self.0.key
    }

    /// Whether `key` has not been invalidated since the fence was taken
    /// (or since its holder's own invalidation, [`Fence::own_invalidation`]).
    pub fn holds(&self) -> bool {
        self.0.table.generation(&self.0.key) == Some(self.0.generation.get())
    }

    /// Records that the holder itself just invalidated the key, once and
    /// with nothing else invalidating it in between (checked: the
    /// generation must be exactly one past the fence's), so the fence
    /// still holds for what follows. Returns whether it does.
    pub fn own_invalidation(&self) -> bool {
        let next = self.0.generation.get().wrapping_add(1);
        if self.0.table.generation(&self.0.key) == Some(next) {
            self.0.generation.set(next);
            true
        } else {
            false
        }
    }
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("key", &self.0.key)
            .field("holds", &self.holds())
            .finish()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut keys = self.table.keys.borrow_mut();
        if let Some(fenced) = keys.get_mut(&*self.key) {
            fenced.holders -= 1;
            if fenced.holders == 0 {
                keys.remove(&*self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_holds_until_its_key_is_invalidated() {
        let table = Rc::new(FenceTable::default());
        let a = table.fence("d/a");
        let other = table.fence("d/b");
        let a_clone = a.clone();
        assert!(a.holds() && other.holds());
        table.invalidated("d/a");
        assert!(!a.holds(), "invalidated after the fence");
        assert!(other.holds(), "another key");
        let later = table.fence("d/a");
        assert!(later.holds(), "taken after the invalidation");
        // Not fenced: nothing recorded, nothing kept.
        table.invalidated("d/c");
        drop((a, other, later));
        assert!(!a_clone.holds(), "a clone is the same fence");
        drop(a_clone);
        assert!(
            table.keys.borrow().is_empty(),
            "entries end with their fences"
        );
    }

    #[test]
    fn only_the_holders_own_invalidation_keeps_it() {
        let table = Rc::new(FenceTable::default());
        let fence = table.fence("d/a");
        table.invalidated("d/a");
        assert!(fence.own_invalidation() && fence.holds());
        // Another invalidation besides the holder's own: not kept.
        table.invalidated("d/a");
        table.invalidated("d/a");
        assert!(!fence.own_invalidation() && !fence.holds());
    }
}
