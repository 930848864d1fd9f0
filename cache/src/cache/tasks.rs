//! The background tasks: threshold trims, and periodic persistence of the
//! tracker with retries of deferred unlinks.

use super::*;

/// Asks the background trimmer for a trim.
pub(crate) fn request_trim(signal: &TrimSignal) {
    signal.requested.set(true);
    signal.wakeup.notify(usize::MAX);
}

/// Background trims: waits for a request (threshold passed, a reservation
/// waiting, ENOSPC while throttled), then runs a fast trim, after the
/// throttle interval if one just ran.
pub(super) async fn trimmer<S: CacheDisk>(shared: Weak<Shared<S>>, signal: Rc<TrimSignal>) {
    loop {
        event_listener::listener!(signal.wakeup => listen);
        if !signal.requested.get() {
            listen.await;
            continue;
        }
        signal.requested.set(false);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closed.get() {
            return;
        }
        match trim::run(&shared, TrimKind::Fast, Trigger::Background, true).await {
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "background trim failed"),
        }
    }
}

/// Periodic persistence of the tracker (when it changed) and retries of
/// dead staging unlinks.
pub(super) async fn persister<S: CacheDisk>(shared: Weak<Shared<S>>) {
    let Some(interval) = shared.upgrade().map(|s| s.cfg.tracker_persist_interval) else {
        return;
    };
    loop {
        glommio::timer::sleep(interval).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closed.get() {
            return;
        }
        shared.retry_pending_unlinks().await;
        if shared.tracker.borrow().is_dirty() {
            if let Err(error) = shared.persist_tracker().await {
                tracing::warn!(%error, "persisting the access tracker failed");
            }
        }
    }
}
