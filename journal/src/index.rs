//! The in-memory ring index: where each op above the watermark lives.
//!
//! Slot `op % slot_count` holds the location of op `op`. A slot may be taken
//! by a new op only when the op in it is at or below the watermark (its
//! state is in a durable snapshot); otherwise the write is refused before any
//! I/O with [`Error::RingFull`]. The index is allocated once, at open, and
//! costs [`SLOT_BYTES`] bytes per slot.

use crate::error::{Error, Result};
use zerocopy::FromZeros;

/// Where a durable entry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub generation: u64,
    pub offset: u32,
    pub payload_len: u32,
}

/// One ring slot. `op == 0`: empty. `generation == 0`: reserved by a write
/// that is not durable yet. All zeros is an empty slot, so the index is
/// allocated zeroed ([`FromZeros`]): pages the OS hands out zeroed, touched
/// only where ops land, instead of a slot-by-slot fill (about 20 ms for the
/// 32 MiB of 2^20 slots, at every open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, FromZeros)]
#[repr(C)]
pub(crate) struct Slot {
    op: u64,
    epoch: u64,
    generation: u64,
    offset: u32,
    payload_len: u32,
}

/// Bytes of memory per ring slot.
pub const SLOT_BYTES: usize = size_of::<Slot>();
const _: () = assert!(SLOT_BYTES <= 32);

/// What the index knows about an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// At or below the watermark.
    Compacted,
    /// Not in the journal.
    Missing,
    /// Being written; not durable yet.
    Pending,
    /// Durable at this location, with this epoch.
    Durable(Location, u64),
}

#[derive(Debug)]
pub(crate) struct RingIndex {
    slots: Vec<Slot>,
    watermark: u64,
    /// Slots holding a durable op above the watermark, or a pending write.
    live: u64,
    /// Ops being rewritten in a later epoch (few at a time).
    rewrites_in_flight: Vec<u64>,
    /// Largest op that recovery found sharing a slot with a larger op; it
    /// must be at or below the watermark, or the log is inconsistent.
    recovery_evicted_max: u64,
    /// Largest op recovery inserted: live ops lie at most this high, so
    /// [`RingIndex::finish_recovery`] counts them in the slots from the
    /// watermark up to it, not in the whole ring.
    recovery_inserted_max: u64,
}

impl RingIndex {
    pub(crate) fn new(slot_count: u64, watermark: u64) -> RingIndex {
        let slot_count =
            usize::try_from(slot_count).expect("slot_count validated to fit in memory");
        RingIndex {
            slots: Slot::new_vec_zeroed(slot_count).expect("allocate the ring index"),
            watermark,
            live: 0,
            rewrites_in_flight: Vec::new(),
            recovery_evicted_max: 0,
            recovery_inserted_max: 0,
        }
    }

    fn slot_index(&self, op: u64) -> usize {
        (op % self.slots.len() as u64) as usize
    }

    pub(crate) fn slot_count(&self) -> u64 {
        self.slots.len() as u64
    }

    pub(crate) fn watermark(&self) -> u64 {
        self.watermark
    }

    pub(crate) fn remaining_capacity(&self) -> u64 {
        self.slot_count() - self.live
    }

    fn is_live(&self, slot: &Slot) -> bool {
        slot.op > self.watermark
    }

    pub(crate) fn lookup(&self, op: u64) -> Lookup {
        if op <= self.watermark {
            return Lookup::Compacted;
        }
        let slot = &self.slots[self.slot_index(op)];
        if slot.op != op {
            Lookup::Missing
        } else if slot.generation == 0 {
            Lookup::Pending
        } else {
            let location = Location {
                generation: slot.generation,
                offset: slot.offset,
                payload_len: slot.payload_len,
            };
            Lookup::Durable(location, slot.epoch)
        }
    }

    /// Claims the slot for a write of `op` in `epoch`. Returns what to pass
    /// to [`RingIndex::release`] if the write fails without poisoning the
    /// journal. A rewrite of a durable op leaves the durable entry readable
    /// until the rewrite is durable.
    pub(crate) fn reserve(&mut self, op: u64, epoch: u64) -> Result<Reservation> {
        if op <= self.watermark {
            return Err(Error::BelowWatermark {
                op,
                watermark: self.watermark,
            });
        }
        let index = self.slot_index(op);
        let previous = self.slots[index];
        if previous.op == op {
            // A rewrite of the same op: allowed only in a later epoch, and
            // never while another write of it is in flight.
            let in_flight = previous.generation == 0 || self.rewrites_in_flight.contains(&op);
            if in_flight || epoch <= previous.epoch {
                return Err(Error::OpExists {
                    op,
                    epoch,
                    existing_epoch: previous.epoch,
                });
            }
            self.rewrites_in_flight.push(op);
            return Ok(Reservation::Rewrite);
        }
        // A slot whose write (or rewrite) is still in flight stays taken even
        // if the watermark passed its op: the write will publish into it.
        let in_flight = previous.op != 0
            && (previous.generation == 0 || self.rewrites_in_flight.contains(&previous.op));
        if self.is_live(&previous) || in_flight {
            return Err(Error::RingFull {
                op,
                slot: index as u64,
                occupant: previous.op,
                watermark: self.watermark,
            });
        }
        self.live += 1;
        self.slots[index] = Slot {
            op,
            epoch,
            ..Slot::default()
        };
        Ok(Reservation::Fresh { previous })
    }

    /// Undoes a reservation whose write failed.
    pub(crate) fn release(&mut self, op: u64, reservation: Reservation) {
        let index = self.slot_index(op);
        let slot = self.slots[index];
        assert_eq!(slot.op, op, "released slot holds another op");
        match reservation {
            Reservation::Rewrite => self.end_rewrite(op),
            Reservation::Fresh { previous } => {
                assert_eq!(slot.generation, 0, "released slot is not pending");
                // A pending slot counts as live whatever the watermark; the
                // slot it replaced did not.
                self.live -= 1;
                self.slots[index] = previous;
            }
        }
    }

    fn end_rewrite(&mut self, op: u64) {
        let at = self
            .rewrites_in_flight
            .iter()
            .position(|o| *o == op)
            .expect("a rewrite reservation is recorded");
        self.rewrites_in_flight.swap_remove(at);
    }

    /// Records that the reserved write of `op` in `epoch` is durable at
    /// `location`.
    pub(crate) fn commit(
        &mut self,
        op: u64,
        epoch: u64,
        reservation: Reservation,
        location: Location,
    ) {
        let index = self.slot_index(op);
        assert_ne!(location.generation, 0);
        let slot = &mut self.slots[index];
        assert_eq!(slot.op, op, "committed slot holds another op");
        match reservation {
            Reservation::Rewrite => assert_ne!(slot.generation, 0, "a rewritten slot is durable"),
            Reservation::Fresh { .. } => {
                assert_eq!(slot.generation, 0, "committed slot is not pending")
            }
        }
        *slot = Slot {
            op,
            epoch,
            generation: location.generation,
            offset: location.offset,
            payload_len: location.payload_len,
        };
        match reservation {
            Reservation::Rewrite => self.end_rewrite(op),
            // The watermark passed this op while it was in flight: durable
            // now, and no longer live.
            Reservation::Fresh { .. } if op <= self.watermark => self.live -= 1,
            Reservation::Fresh { .. } => {}
        }
    }

    /// Inserts an entry found by recovery. Of two entries for one op the one
    /// with the greater epoch wins (a replica rewrite); of two ops sharing a
    /// slot the greater wins, and the smaller must turn out to be at or below
    /// the watermark (checked by [`RingIndex::finish_recovery`]).
    pub(crate) fn insert_recovered(&mut self, op: u64, epoch: u64, location: Location) {
        self.recovery_inserted_max = self.recovery_inserted_max.max(op);
        let index = self.slot_index(op);
        let slot = self.slots[index];
        let replace = if slot.op == 0 {
            true
        } else if slot.op == op {
            epoch >= slot.epoch
        } else {
            self.recovery_evicted_max = self.recovery_evicted_max.max(slot.op.min(op));
            op > slot.op
        };
        if replace {
            self.slots[index] = Slot {
                op,
                epoch,
                generation: location.generation,
                offset: location.offset,
                payload_len: location.payload_len,
            };
        }
    }

    /// Ends recovery at `watermark`: counts live slots. Returns the largest
    /// op that lost its slot to a larger op while above the watermark, if
    /// any: two live ops in one slot mean the log is inconsistent.
    pub(crate) fn finish_recovery(&mut self, watermark: u64) -> Option<u64> {
        self.watermark = watermark;
        let above = self.recovery_inserted_max.saturating_sub(watermark);
        let is_live = |s: &Slot| s.op > watermark;
        self.live = if above == 0 {
            0
        } else if above >= self.slot_count() {
            self.slots.iter().filter(|s| is_live(s)).count()
        } else {
            // The slots of ops watermark+1 ..= inserted max, wrapping once.
            let start = self.slot_index(watermark + 1);
            let count = above as usize;
            let before_wrap = count.min(self.slots.len() - start);
            self.slots[start..start + before_wrap]
                .iter()
                .chain(&self.slots[..count - before_wrap])
                .filter(|s| is_live(s))
                .count()
        } as u64;
        (self.recovery_evicted_max > watermark).then_some(self.recovery_evicted_max)
    }

    /// True if a write of an op above `op` is in flight (a fresh one or a
    /// rewrite): a truncation must wait for it.
    pub(crate) fn has_pending_above(&self, op: u64) -> bool {
        self.rewrites_in_flight.iter().any(|o| *o > op)
            || self
                .slots
                .iter()
                .any(|s| s.op > op && s.op > self.watermark && s.generation == 0)
    }

    /// Forgets every durable op above `op` (a truncation); their slots
    /// become free. No write above `op` may be in flight.
    pub(crate) fn truncate_above(&mut self, op: u64) {
        debug_assert!(!self.has_pending_above(op));
        let freed = self.forget_above(op);
        self.live -= freed;
    }

    /// A truncation record found by recovery (live slots are counted at
    /// the end). Truncation is refused below the watermark, so a slot two
    /// ops shared is never one it empties: the smaller op was at or below
    /// the watermark when the larger was written.
    pub(crate) fn truncate_recovered(&mut self, op: u64) {
        self.forget_above(op);
    }

    /// Empties the slots of ops above `op`; returns how many were live.
    fn forget_above(&mut self, op: u64) -> u64 {
        let watermark = self.watermark;
        let mut live = 0;
        for slot in self.slots.iter_mut().filter(|s| s.op > op) {
            if slot.op > watermark {
                live += 1;
            }
            *slot = Slot::default();
        }
        live
    }

    /// The largest op below `below` and above `floor` that the index holds
    /// (pending or durable), or `floor` if none. A failure path: it walks
    /// down a ring's worth of ops (in a log without gaps the first step
    /// finds it), then scans the slots.
    pub(crate) fn highest_held_below(&self, below: u64, floor: u64) -> u64 {
        let floor = floor.max(self.watermark);
        let held = |op: &u64| matches!(self.lookup(*op), Lookup::Pending | Lookup::Durable(..));
        let walked_to = floor.max(below.saturating_sub(self.slot_count()));
        if let Some(op) = (walked_to + 1..below).rev().find(held) {
            return op;
        }
        self.slots
            .iter()
            .map(|s| s.op)
            .filter(|op| *op > floor && *op < below)
            .max()
            .unwrap_or(floor)
    }

    /// The largest op the index holds (0: none).
    pub(crate) fn max_op(&self) -> u64 {
        self.slots.iter().map(|s| s.op).max().unwrap_or(0)
    }

    /// Moves the watermark forward; slots at or below it become free.
    pub(crate) fn advance(&mut self, watermark: u64) {
        assert!(watermark >= self.watermark);
        let old = self.watermark;
        // Pending slots stay live until their write completes (see commit).
        let freed = if watermark - old < self.slot_count() {
            // Ops old+1..=watermark sit in consecutive slots from the first
            // one's, wrapping once at most: two plain slice walks, no
            // division per op (a checkpoint can pass a million ops at once).
            let start = self.slot_index(old + 1);
            let count = (watermark - old) as usize;
            let before_wrap = count.min(self.slots.len() - start);
            let is_durable_op = |(slot, op): (&Slot, u64)| slot.op == op && slot.generation != 0;
            let head = self.slots[start..start + before_wrap]
                .iter()
                .zip(old + 1..)
                .filter(|&pair| is_durable_op(pair))
                .count();
            let tail = self.slots[..count - before_wrap]
                .iter()
                .zip(old + 1 + before_wrap as u64..)
                .filter(|&pair| is_durable_op(pair))
                .count();
            head + tail
        } else {
            self.slots
                .iter()
                .filter(|s| s.op > old && s.op <= watermark && s.generation != 0)
                .count()
        };

        self.live -= freed as u64;
        self.watermark = watermark;
    }
}

/// What a reservation changed, so it can be undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reservation {
    /// The slot was taken for a new op; it held `previous`.
    Fresh {
        /// The slot's contents before.
        previous: Slot,
    },
    /// A rewrite of the durable op in the slot, in a later epoch.
    Rewrite,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(generation: u64) -> Location {
        Location {
            generation,
            offset: 4096,
            payload_len: 1,
        }
    }

    /// Reserves `op` in epoch 1 and commits it in generation 1.
    fn write_durably(index: &mut RingIndex, op: u64) {
        let reservation = index.reserve(op, 1).unwrap();
        index.commit(op, 1, reservation, at(1));
    }

    /// Live slots counted the slow way: a pending slot, or a durable one
    /// above the watermark.
    fn live_by_scan(index: &RingIndex) -> u64 {
        index
            .slots
            .iter()
            .filter(|s| s.op != 0 && (s.generation == 0 || s.op > index.watermark))
            .count() as u64
    }

    #[test]
    fn highest_held_below_finds_the_op_under_a_gap_of_any_length() {
        for slot_count in 1..=6u64 {
            for gap in 0..=3 * slot_count {
                let mut index = RingIndex::new(slot_count, 0);
                write_durably(&mut index, 2);
                let below = 3 + gap;
                assert_eq!(index.highest_held_below(below, 0), 2, "{slot_count} {gap}");
                assert_eq!(index.highest_held_below(below, 2), 2, "floor at the op");
                assert_eq!(index.highest_held_below(2, 0), 0, "nothing below 2");
                // A pending write counts as held.
                if gap > 0 && gap < slot_count {
                    let top = 2 + gap;
                    index.reserve(top, 1).unwrap();
                    assert_eq!(index.highest_held_below(top + 1, 0), top);
                }
            }
        }
    }

    #[test]
    fn highest_held_below_never_goes_under_the_floor_or_the_watermark() {
        let mut index = RingIndex::new(8, 0);
        for op in 1..=6 {
            write_durably(&mut index, op);
        }
        assert_eq!(index.highest_held_below(7, 0), 6);
        assert_eq!(index.highest_held_below(7, 9), 9, "a floor above every op");
        assert_eq!(index.highest_held_below(3, 4), 4, "`below` under the floor");
        index.advance(4);
        assert_eq!(
            index.highest_held_below(5, 0),
            4,
            "compacted ops are not held"
        );
        assert_eq!(index.highest_held_below(7, 0), 6);
    }

    #[test]
    fn advance_frees_exactly_the_durable_ops_it_passes() {
        // Rings of a few slots, ops with gaps, pending writes and jumps of
        // every size up to and past the ring, wrapping at every offset.
        for slot_count in 1..=9u64 {
            for jump in 1..=2 * slot_count + 1 {
                let mut index = RingIndex::new(slot_count, 0);
                let mut next = 1;
                for round in 0..12u64 {
                    while next <= index.watermark() + slot_count {
                        // Every third op is skipped (a replica's gap); every
                        // fifth stays pending.
                        if next % 3 != 0 {
                            let r = index.reserve(next, 1).unwrap();
                            if (next + round) % 5 != 0 {
                                index.commit(next, 1, r, at(1));
                            }
                        }
                        next += 1;
                    }
                    index.advance(index.watermark() + jump.min(next - 1 - index.watermark()));
                    assert_eq!(
                        index.live,
                        live_by_scan(&index),
                        "{slot_count} slots, jump {jump}"
                    );
                    // Pending writes complete, as the writer would.
                    for op in index.watermark().saturating_sub(slot_count) + 1..next {
                        let slot = index.slots[index.slot_index(op)];
                        if slot.op == op && slot.generation == 0 {
                            index.commit(
                                op,
                                1,
                                Reservation::Fresh {
                                    previous: Slot::default(),
                                },
                                at(1),
                            );
                        }
                    }
                    assert_eq!(index.live, live_by_scan(&index));
                }
            }
        }
    }

    #[test]
    fn finish_recovery_counts_live_slots_like_a_full_scan() {
        // Rings of a few slots; recovered ops with gaps, below, at and above
        // the watermark, some sharing a slot, wrapping at every offset; the
        // watermark below, inside and past the ops' range.
        for slot_count in 1..=7u64 {
            for first in 1..=2 * slot_count {
                for span in 0..=2 * slot_count {
                    for watermark in 0..=first + span + 1 {
                        let mut index = RingIndex::new(slot_count, 0);
                        for op in (first..=first + span).filter(|op| op % 4 != 2) {
                            index.insert_recovered(op, 1, at(1));
                        }
                        index.finish_recovery(watermark);
                        assert_eq!(
                            index.live,
                            live_by_scan(&index),
                            "{slot_count} slots, ops {first}..={}, watermark {watermark}",
                            first + span
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn full_ring_refuses_until_watermark_advances() {
        let mut index = RingIndex::new(4, 0);
        for op in 1..=4 {
            write_durably(&mut index, op);
        }
        assert_eq!(index.remaining_capacity(), 0);
        assert!(matches!(
            index.reserve(5, 1),
            Err(Error::RingFull { occupant: 1, .. })
        ));
        index.advance(1);
        assert_eq!(index.remaining_capacity(), 1);
        index.reserve(5, 1).unwrap();
        assert_eq!(index.lookup(5), Lookup::Pending);
        assert_eq!(index.lookup(1), Lookup::Compacted);
        assert_eq!(index.lookup(9), Lookup::Missing);
    }

    #[test]
    fn rewrite_needs_greater_epoch_and_release_restores() {
        let mut index = RingIndex::new(8, 0);
        let r = index.reserve(3, 1).unwrap();
        assert!(matches!(index.reserve(3, 2), Err(Error::OpExists { .. })));
        index.release(3, r);
        assert_eq!(index.lookup(3), Lookup::Missing);
        assert_eq!(index.remaining_capacity(), 8);
        let r = index.reserve(3, 1).unwrap();
        index.commit(3, 1, r, at(1));
        assert!(matches!(index.reserve(3, 1), Err(Error::OpExists { .. })));
        let r = index.reserve(3, 2).unwrap();
        // The durable entry stays readable while its rewrite is in flight.
        assert_eq!(index.lookup(3), Lookup::Durable(at(1), 1));
        assert!(matches!(index.reserve(3, 3), Err(Error::OpExists { .. })));
        index.release(3, r);
        assert_eq!(index.lookup(3), Lookup::Durable(at(1), 1));
        assert_eq!(index.remaining_capacity(), 7);
        let r = index.reserve(3, 2).unwrap();
        index.commit(3, 2, r, at(2));
        assert_eq!(index.lookup(3), Lookup::Durable(at(2), 2));
        assert_eq!(index.remaining_capacity(), 7);
    }

    #[test]
    fn watermark_passing_an_in_flight_write_keeps_its_slot() {
        let mut index = RingIndex::new(4, 0);
        let r5 = index.reserve(5, 1).unwrap();
        index.advance(10);
        // Op 13 maps to op 5's slot, whose write is still in flight.
        assert!(matches!(
            index.reserve(13, 1),
            Err(Error::RingFull { occupant: 5, .. })
        ));
        assert_eq!(index.remaining_capacity(), 3);
        index.commit(5, 1, r5, at(1));
        assert_eq!(index.remaining_capacity(), 4);
        assert_eq!(index.lookup(5), Lookup::Compacted);
        let r13 = index.reserve(13, 1).unwrap();
        index.advance(20);
        index.release(13, r13);
        assert_eq!(index.remaining_capacity(), 4);
    }

    /// Found by the `journal_ops` fuzz target: a rewrite in flight, the
    /// watermark passing its op, and another op taking the slot made the
    /// rewrite's commit panic.
    #[test]
    fn a_slot_with_a_rewrite_in_flight_stays_taken() {
        let mut index = RingIndex::new(4, 0);
        let r = index.reserve(3, 1).unwrap();
        index.commit(3, 1, r, at(1));
        let rewrite = index.reserve(3, 2).unwrap();
        index.advance(5);
        assert!(matches!(
            index.reserve(7, 2),
            Err(Error::RingFull { occupant: 3, .. })
        ));
        index.commit(3, 2, rewrite, at(2));
        assert_eq!(index.lookup(3), Lookup::Compacted);
        let r = index.reserve(7, 2).unwrap();
        index.commit(7, 2, r, at(2));
        assert_eq!(index.lookup(7), Lookup::Durable(at(2), 2));
    }

    #[test]
    fn recovery_conflicts_must_be_below_watermark() {
        let mut index = RingIndex::new(4, 0);
        index.insert_recovered(2, 1, at(1));
        index.insert_recovered(6, 1, at(2));
        assert_eq!(index.finish_recovery(1), Some(2));
        let mut index = RingIndex::new(4, 0);
        index.insert_recovered(2, 1, at(1));
        index.insert_recovered(6, 1, at(2));
        assert_eq!(index.finish_recovery(2), None);
        assert_eq!(index.lookup(6), Lookup::Durable(at(2), 1));
    }
}
