//! Space accounting and reservations.
//!
//! The ledger holds the cache's limits and four numbers: bytes and objects
//! in committed objects (`used`), and bytes and objects promised to
//! outstanding [`Reservation`]s (`reserved`). A reservation is granted only if
//! `used + reserved + asked <= limit` for both bytes and objects (and the
//! filesystem keeps its free-space floor), so `used + reserved` never exceeds
//! the limits through this path. (Objects found on disk at startup, each
//! within the byte limit, can together put `used` above a lowered limit;
//! the cache then trims. Their sizes are added checked, never saturated, so
//! trims can always take them apart again.)
//!
//! Waiting is FIFO: a request that must wait takes a ticket, and only the
//! oldest ticket may be granted, so a stream of small requests cannot starve a
//! large one. A waiting request asks for a trim (the caller's `on_wait`) and
//! sleeps on a glommio timer or a wake-up — it never blocks the reactor. At
//! its deadline it gives up with [`Error::ReservationTimeout`].
//!
//! A [`Reservation`] is an RAII guard: what it still holds is returned to the
//! ledger when it drops, and waiters are woken. Guards from the same cache
//! merge; committing converts part of a guard into `used`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use event_listener::Event;
use ringstore_journal::storage::FsSpace;

/// Most reservations that may wait at once; more fail with
/// [`Error::TooManyWaiters`].
pub const RESERVATION_WAITERS_MAX: usize = 4096;

/// How often a waiter re-checks the free-space floor (nobody notifies when
/// another process frees disk space).
pub const FLOOR_RECHECK_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LedgerState {
    pub(crate) used_bytes: u64,
    pub(crate) used_objects: u64,
    pub(crate) reserved_bytes: u64,
    pub(crate) reserved_objects: u64,
    pub(crate) peak_bytes: u64,
    pub(crate) peak_objects: u64,
    /// What queued (not yet granted) requests ask for: trims make room for
    /// these too.
    pub(crate) waiting_bytes: u64,
    pub(crate) waiting_objects: u64,
}

/// Limits plus what is used and promised (see the module docs).
/// How the ledger learns the cache filesystem's free space (the disk's
/// `fs_space` of the root).
pub(crate) type SpaceProbe = Box<dyn Fn() -> std::io::Result<FsSpace>>;

pub(crate) struct Ledger {
    pub(crate) bytes_limit: u64,
    pub(crate) objects_limit: u64,
    min_free_bytes: u64,
    /// The cache root, for the free-space floor.
    /// The free space of the cache's filesystem, asked for the floor.
    space: SpaceProbe,
    state: RefCell<LedgerState>,
    queue: RefCell<VecDeque<u64>>,
    next_ticket: std::cell::Cell<u64>,
    changed: Event,
}

impl Ledger {
    pub(crate) fn new(
        bytes_limit: u64,
        objects_limit: u64,
        min_free_bytes: u64,
        space: SpaceProbe,
    ) -> Ledger {
        Ledger {
            bytes_limit,
            objects_limit,
            min_free_bytes,
            space,
            state: RefCell::new(LedgerState::default()),
            queue: RefCell::new(VecDeque::new()),
            next_ticket: std::cell::Cell::new(0),
            changed: Event::new(),
        }
    }

    pub(crate) fn state(&self) -> LedgerState {
        *self.state.borrow()
    }

    /// Adds the size of files found on disk (startup, an exhaustive trim)
    /// to `used`, unless the sum would pass `u64::MAX`: then nothing is
    /// added and the answer is false (a saturated `used` could not be
    /// taken apart again by [`Ledger::sub_used`]). Commits need no check:
    /// their reservations kept `used + reserved` within the limit.
    pub(crate) fn try_add_used(&self, bytes: u64, objects: u64) -> bool {
        let mut s = self.state.borrow_mut();
        let (Some(used_bytes), Some(used_objects)) = (
            s.used_bytes.checked_add(bytes),
            s.used_objects.checked_add(objects),
        ) else {
            return false;
        };
        s.used_bytes = used_bytes;
        s.used_objects = used_objects;
        Self::note_peak(&mut s);
        true
    }

    /// Removes a committed object's size from `used` (trim, invalidate,
    /// replace). Going below zero is an accounting bug.
    pub(crate) fn sub_used(&self, bytes: u64, objects: u64) {
        {
            let mut s = self.state.borrow_mut();
            let (Some(used_bytes), Some(used_objects)) = (
                s.used_bytes.checked_sub(bytes),
                s.used_objects.checked_sub(objects),
            ) else {
                panic!(
                    "cache accounting underflow: used {}/{} minus {bytes}/{objects}",
                    s.used_bytes, s.used_objects
                );
            };
            s.used_bytes = used_bytes;
            s.used_objects = used_objects;
        }
        self.changed.notify(usize::MAX);
    }

    fn note_peak(s: &mut LedgerState) {
        s.peak_bytes = s
            .peak_bytes
            .max(s.used_bytes.saturating_add(s.reserved_bytes));
        s.peak_objects = s
            .peak_objects
            .max(s.used_objects.saturating_add(s.reserved_objects));
    }

    /// True if `bytes`/`objects` more fit under the limits and the floor.
    fn fits(&self, bytes: u64, objects: u64) -> bool {
        let s = self.state.borrow();
        // Checked, not saturating: a sum past u64::MAX is over any limit (a
        // saturated sum would compare equal to a u64::MAX limit and grant
        // more than exists).
        let bytes_after = s
            .used_bytes
            .checked_add(s.reserved_bytes)
            .and_then(|b| b.checked_add(bytes));
        let objects_after = s
            .used_objects
            .checked_add(s.reserved_objects)
            .and_then(|o| o.checked_add(objects));
        let (Some(bytes_after), Some(objects_after)) = (bytes_after, objects_after) else {
            return false;
        };
        if bytes_after > self.bytes_limit || objects_after > self.objects_limit {
            return false;
        }
        let outstanding = s.reserved_bytes;
        drop(s);
        self.floor_ok(outstanding.saturating_add(bytes))
    }

    fn floor_ok(&self, bytes_to_come: u64) -> bool {
        if self.min_free_bytes == 0 {
            return true;
        }
        match (self.space)() {
            Ok(space) => space.avail_bytes.saturating_sub(bytes_to_come) >= self.min_free_bytes,
            Err(error) => {
                // Unknown free space: do not wedge every reservation on it.
                tracing::warn!(%error, "fstatvfs failed; ignoring the free-space floor once");
                true
            }
        }
    }

    fn grant(self: &Rc<Self>, bytes: u64, objects: u64) -> Reservation {
        let mut s = self.state.borrow_mut();
        s.reserved_bytes = s.reserved_bytes.saturating_add(bytes);
        s.reserved_objects = s.reserved_objects.saturating_add(objects);
        Self::note_peak(&mut s);
        Reservation {
            ledger: Rc::clone(self),
            bytes,
            objects,
        }
    }

    fn release(&self, bytes: u64, objects: u64) {
        {
            let mut s = self.state.borrow_mut();
            let (Some(reserved_bytes), Some(reserved_objects)) = (
                s.reserved_bytes.checked_sub(bytes),
                s.reserved_objects.checked_sub(objects),
            ) else {
                panic!(
                    "cache reservation underflow: reserved {}/{} minus {bytes}/{objects}",
                    s.reserved_bytes, s.reserved_objects
                );
            };
            s.reserved_bytes = reserved_bytes;
            s.reserved_objects = reserved_objects;
        }
        self.changed.notify(usize::MAX);
    }

    /// Grants `bytes`/`objects` now or waits (FIFO) until they fit or
    /// `deadline` passes. `on_wait` is called each time the request has to
    /// wait (the cache uses it to ask for a trim).
    pub(crate) async fn reserve(
        self: &Rc<Self>,
        bytes: u64,
        objects: u64,
        deadline: Instant,
        metrics: &Metrics,
        on_wait: impl Fn(),
    ) -> Result<Reservation> {
        if bytes > self.bytes_limit || objects > self.objects_limit {
            return Err(Error::ReservationTooLarge {
                bytes,
                objects,
                bytes_limit: self.bytes_limit,
                objects_limit: self.objects_limit,
            });
        }
        if self.queue.borrow().is_empty() && self.fits(bytes, objects) {
            return Ok(self.grant(bytes, objects));
        }
        if self.queue.borrow().len() >= RESERVATION_WAITERS_MAX {
            return Err(Error::TooManyWaiters {
                waiters_max: RESERVATION_WAITERS_MAX,
            });
        }
        let started = Instant::now();
        let ticket = Ticket::take(self, bytes, objects);
        metrics.reservation_waits.inc();
        loop {
            event_listener::listener!(self.changed => listen);
            if ticket.is_first() && self.fits(bytes, objects) {
                drop(ticket);
                return Ok(self.grant(bytes, objects));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(ticket);
                metrics.reservation_timeouts.inc();
                return Err(Error::ReservationTimeout {
                    bytes,
                    objects,
                    waited: now.saturating_duration_since(started),
                });
            }
            on_wait();
            let mut nap = deadline.saturating_duration_since(now);
            if self.min_free_bytes > 0 {
                nap = nap.min(FLOOR_RECHECK_INTERVAL);
            }
            future::or(listen, glommio::timer::sleep(nap)).await;
        }
    }
}

/// A place in the reservation queue; leaving it (grant, timeout, or the
/// waiting future being dropped) wakes the next in line.
struct Ticket {
    ledger: Rc<Ledger>,
    id: u64,
    bytes: u64,
    objects: u64,
}

impl Ticket {
    fn take(ledger: &Rc<Ledger>, bytes: u64, objects: u64) -> Ticket {
        let id = ledger.next_ticket.get();
        ledger.next_ticket.set(id.wrapping_add(1));
        ledger.queue.borrow_mut().push_back(id);
        {
            let mut s = ledger.state.borrow_mut();
            s.waiting_bytes = s.waiting_bytes.saturating_add(bytes);
            s.waiting_objects = s.waiting_objects.saturating_add(objects);
        }
        Ticket {
            ledger: Rc::clone(ledger),
            id,
            bytes,
            objects,
        }
    }

    fn is_first(&self) -> bool {
        self.ledger.queue.borrow().front() == Some(&self.id)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.ledger.queue.borrow_mut().retain(|&t| t != self.id);
        {
            let mut s = self.ledger.state.borrow_mut();
            // Added with saturating_add, so subtract the same way: the
            // counters are sums of what is still waiting, never negative.
            s.waiting_bytes = s.waiting_bytes.saturating_sub(self.bytes);
            s.waiting_objects = s.waiting_objects.saturating_sub(self.objects);
        }
        self.ledger.changed.notify(usize::MAX);
    }
}

/// Space promised to its holder: bytes and objects that no one else can take.
/// Dropping it returns what is left to the cache and wakes waiters.
#[derive(Debug)]
#[must_use = "a reservation is released as soon as it is dropped"]
pub struct Reservation {
    ledger: Rc<Ledger>,
    bytes: u64,
    objects: u64,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("bytes_limit", &self.bytes_limit)
            .field("objects_limit", &self.objects_limit)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl Reservation {
    /// Bytes still held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Objects still held.
    pub fn objects(&self) -> u64 {
        self.objects
    }

    /// Takes over everything `other` holds. Fails (and releases `other`) if
    /// it comes from a different cache.
    pub fn merge(&mut self, mut other: Reservation) -> Result<()> {
        if !Rc::ptr_eq(&self.ledger, &other.ledger) {
            return Err(Error::ForeignReservation);
        }
        self.bytes = self.bytes.saturating_add(std::mem::take(&mut other.bytes));
        self.objects = self
            .objects
            .saturating_add(std::mem::take(&mut other.objects));
        Ok(())
    }

    /// True if both reservations come from the same cache.
    pub(crate) fn same_ledger(&self, ledger: &Rc<Ledger>) -> bool {
        Rc::ptr_eq(&self.ledger, ledger)
    }

    /// Turns `bytes`/`objects` of this reservation into committed usage.
    /// Asking for more than is held is a bug in the caller.
    pub(crate) fn commit(&mut self, bytes: u64, objects: u64) {
        assert!(
            bytes <= self.bytes,
            "commit of {bytes} bytes, {} reserved",
            self.bytes
        );
        assert!(
            objects <= self.objects,
            "commit of {objects} objects, {} reserved",
            self.objects
        );
        {
            let mut s = self.ledger.state.borrow_mut();
            s.reserved_bytes -= bytes;
            s.reserved_objects -= objects;
            s.used_bytes = s.used_bytes.saturating_add(bytes);
            s.used_objects = s.used_objects.saturating_add(objects);
        }
        self.bytes -= bytes;
        self.objects -= objects;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 || self.objects > 0 {
            self.ledger.release(self.bytes, self.objects);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes from the disk go through `try_add_used` before the tracker
    /// sees them: one that would take the total past `u64::MAX` is refused
    /// and the total left as it was, so the tracker's `u64` sum (which
    /// equals it) cannot overflow and every size can be taken off again.
    #[test]
    fn a_size_taking_the_total_past_u64_max_is_refused_and_changes_nothing() {
        let space: SpaceProbe = Box::new(|| {
            Ok(FsSpace {
                total_bytes: u64::MAX,
                avail_bytes: u64::MAX,
            })
        });
        let ledger = Ledger::new(1 << 30, 1_000, 0, space);
        assert!(ledger.try_add_used(u64::MAX - 7, 1));
        assert!(!ledger.try_add_used(8, 1));
        assert!(!ledger.try_add_used(u64::MAX, 1));
        let s = ledger.state();
        assert_eq!((s.used_bytes, s.used_objects), (u64::MAX - 7, 1));
        assert!(ledger.try_add_used(7, 1));
        ledger.sub_used(u64::MAX - 7, 1);
        ledger.sub_used(7, 1);
        let s = ledger.state();
        assert_eq!((s.used_bytes, s.used_objects), (0, 0));
    }
}
