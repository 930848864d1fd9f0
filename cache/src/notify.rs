//! Single-threaded wake-ups and locks for one shard's tasks.
//!
//! Everything here lives on one glommio executor (`!Send`), so a `Cell` and a
//! list of wakers replace what would be a mutex and a condvar elsewhere.
//! Waiting never blocks the reactor: a waiting task is simply not polled until
//! someone calls [`Notify::notify_all`].

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A broadcast wake-up: every [`Listen`] created before a `notify_all` call
/// completes after it.
#[derive(Default)]
pub(crate) struct Notify {
    epoch: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    pub(crate) fn new() -> Notify {
        Notify::default()
    }

    /// Wakes every current listener.
    pub(crate) fn notify_all(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    /// A future that completes at the next `notify_all`. Create it *before*
    /// re-checking the condition you wait for, so no wake-up is missed.
    pub(crate) fn listen(&self) -> Listen<'_> {
        Listen {
            notify: self,
            epoch: self.epoch.get(),
        }
    }
}

/// See [`Notify::listen`].
pub(crate) struct Listen<'a> {
    notify: &'a Notify,
    epoch: u64,
}

impl Future for Listen<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.epoch.get() != self.epoch {
            return Poll::Ready(());
        }
        let mut wakers = self.notify.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Per-key mutual exclusion for namespace changes (link, rename, unlink of an
/// object). Without it a trim's `unlink(key)` could be reordered by io-wq
/// after a concurrent `rename(staging, key)` and delete the new object.
#[derive(Default)]
pub(crate) struct KeyLocks {
    held: RefCell<HashSet<Rc<str>>>,
    released: Notify,
}

impl KeyLocks {
    /// Waits until `key` is free, then holds it until the guard drops.
    pub(crate) async fn lock(self: &Rc<Self>, key: &str) -> KeyGuard {
        loop {
            let listen = self.released.listen();
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
        self.locks.released.notify_all();
    }
}

/// A one-holder async lock (used to run one trim at a time).
#[derive(Default)]
pub(crate) struct AsyncLock {
    held: Cell<bool>,
    released: Notify,
}

impl AsyncLock {
    pub(crate) async fn lock(self: &Rc<Self>) -> AsyncLockGuard {
        loop {
            let listen = self.released.listen();
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
        self.lock.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_completes_only_after_notify() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async move {
                let notify = Rc::new(Notify::new());
                let flag = Rc::new(Cell::new(false));
                let task = glommio::spawn_local({
                    let notify = Rc::clone(&notify);
                    let flag = Rc::clone(&flag);
                    async move {
                        let listen = notify.listen();
                        listen.await;
                        flag.get()
                    }
                });
                glommio::yield_if_needed().await;
                futures_lite::future::yield_now().await;
                flag.set(true);
                notify.notify_all();
                assert!(task.await);
            })
            .unwrap()
            .join()
            .unwrap();
    }

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
