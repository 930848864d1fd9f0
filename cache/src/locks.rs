//! Single-threaded locks for one shard's tasks: per-key exclusion for
//! namespace changes and a one-holder lock for trims.
//!
//! Everything here lives on one glommio executor (`!Send`), so a `Cell`
//! and an [`Event`] (event-listener) replace what would be a mutex and a
//! condvar elsewhere. Waiting never blocks the reactor: a waiting task is
//! simply not polled until the holder releases.

use event_listener::Event;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;

/// Per-key mutual exclusion for namespace changes (link, rename, unlink of an
/// object). Without it a trim's `unlink(key)` could be reordered by io-wq
/// after a concurrent `rename(staging, key)` and delete the new object.
#[derive(Default)]
pub(crate) struct KeyLocks {
    held: RefCell<HashSet<Rc<str>>>,
    released: Event,
}

impl KeyLocks {
    /// Waits until `key` is free, then holds it until the guard drops.
    pub(crate) async fn lock(self: &Rc<Self>, key: &str) -> KeyGuard {
        loop {
            event_listener::listener!(self.released => listen);
            if let Some(guard) = self.try_lock(key) {
                return guard;
            }
            listen.await;
        }
    }

    /// Takes `key` if nobody holds it.
    pub(crate) fn try_lock(self: &Rc<Self>, key: &str) -> Option<KeyGuard> {
        let mut held = self.held.borrow_mut();
        if held.contains(key) {
            return None;
        }
        let key: Rc<str> = Rc::from(key);
        held.insert(Rc::clone(&key));
        Some(KeyGuard {
            locks: Rc::clone(self),
            key,
        })
    }

    pub(crate) fn is_locked(&self, key: &str) -> bool {
        self.held.borrow().contains(key)
    }
}

/// Holds a key in [`KeyLocks`] until dropped.
pub(crate) struct KeyGuard {
    locks: Rc<KeyLocks>,
    key: Rc<str>,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        self.locks.held.borrow_mut().remove(&self.key);
        self.locks.released.notify(usize::MAX);
    }
}

/// A one-holder async lock (used to run one trim at a time).
#[derive(Default)]
pub(crate) struct AsyncLock {
    held: Cell<bool>,
    released: Event,
}

impl AsyncLock {
    pub(crate) async fn lock(self: &Rc<Self>) -> AsyncLockGuard {
        loop {
            event_listener::listener!(self.released => listen);
            if !self.held.get() {
                self.held.set(true);
                return AsyncLockGuard {
                    lock: Rc::clone(self),
                };
            }
            listen.await;
        }
    }
}

/// Holds an [`AsyncLock`] until dropped.
pub(crate) struct AsyncLockGuard {
    lock: Rc<AsyncLock>,
}

impl Drop for AsyncLockGuard {
    fn drop(&mut self) {
        self.lock.held.set(false);
        self.lock.released.notify(usize::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lock_excludes_same_key_only() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async move {
                let locks = Rc::new(KeyLocks::default());
                let a = locks.lock("a").await;
                assert!(locks.try_lock("a").is_none());
                assert!(locks.try_lock("b").is_some());
                drop(a);
                assert!(locks.try_lock("a").is_some());
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
