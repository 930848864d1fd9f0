//! A minimal wake-all notification for tasks on one reactor.
//!
//! Waiters loop: check a condition, and if it does not hold, await
//! [`Notify::wait`]; whoever changes the condition calls
//! [`Notify::notify_all`]. Spurious wake-ups are harmless because waiters
//! re-check. No allocation per wait beyond the waker list's growth.

use std::{
    cell::RefCell,
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
};

#[derive(Debug, Default)]
pub(crate) struct Notify {
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    /// Wakes every task waiting now.
    pub(crate) fn notify_all(&self) {
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    /// Resolves after the next `notify_all` (or spuriously).
    pub(crate) fn wait(&self) -> Wait<'_> {
        Wait {
            notify: self,
            registered: false,
        }
    }
}

pub(crate) struct Wait<'a> {
    notify: &'a Notify,
    registered: bool,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered {
            return Poll::Ready(());
        }
        self.registered = true;
        self.notify.wakers.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}
