//! The watermark: advancing it (a record in the log) and retiring the
//! segments it covers.

use super::*;
use crate::glommio_quirks;
use crate::storage::shrink_in_steps;

/// Ops whose ring slots one step of a watermark advance frees (about 0.15
/// ms of walking the slots; see `apply_watermark`).
const WATERMARK_STEP_OPS: u64 = 1 << 16;

/// Default of [`JournalBuilder::reclaim_step_bytes`]: bytes a retired
/// segment's file shrinks by per step before it is removed (see
/// `Journal::reclaim_retired`). Removing 1 GiB of segments at once on a
/// filesystem with online discard stalled acknowledgements for 140-150 ms
/// on this project's test host; at that rate (not measured per step) 8 MiB
/// is about 1 ms of discarding. Snapshot pruning uses it too.
pub const RECLAIM_STEP_BYTES_DEFAULT: u64 = 8 << 20;

/// Free space, in segments, below which retired segments are removed at
/// once rather than shrunk step by step: the next rollovers need it.
const RECLAIM_HEADROOM_SEGMENTS: u64 = 4;

impl<S: Storage> Journal<S> {
    /// Records that every op at or below `watermark` is in a durable
    /// snapshot: writes a watermark record and waits until it is durable,
    /// then frees those ops' ring slots and retires whole segments holding
    /// only such ops: they leave the superblock, and their files are
    /// removed (then the directory synced) before this returns, or, when
    /// larger than [`JournalBuilder::reclaim_step_bytes`] and the disk has
    /// room, shrunk and removed in the background. Live data is never
    /// rewritten. A crash at any step leaves either the old watermark or the
    /// new one, and segments that are either present or no longer needed.
    pub async fn advance_watermark(&self, watermark: u64) -> Result<()> {
        let current = {
            let state = self.shared.state.borrow();
            state.usable()?;
            state.index.watermark()
        };
        if watermark < current {
            return Err(Error::WatermarkRegression {
                requested: watermark,
                current,
            });
        }
        if watermark == current {
            // Its record is durable; the segments it frees may not be
            // retired yet (an advance whose future was dropped after the
            // record).
            return self.retire_exclusively(Reclaim::Paced).await;
        }
        if watermark == u64::MAX {
            return Err(Error::InvalidOp { op: watermark });
        }
        let full_disk = self.shared.state.borrow().needs_fresh_segment;
        if full_disk {
            // Opened on a full disk: the watermark record needs a new
            // segment, and a new segment needs the space of the segments
            // this watermark covers. The caller's snapshot is durable, so
            // they may go first; a crash before the record only leaves ops
            // that the snapshot covers missing. Their ring slots stay taken
            // until the record is durable: reusing one earlier could leave
            // two live ops in a slot after a crash.
            {
                let mut state = self.shared.state.borrow_mut();
                state.compacted_floor = state.compacted_floor.max(watermark);
                state.next_op = state.next_op.max(watermark + 1);
            }
            // The space is needed now: nothing is reclaimed in steps.
            self.retire_exclusively(Reclaim::AtOnce).await?;
        }
        {
            let mut state = self.shared.state.borrow_mut();
            state.watermark_requested = state.watermark_requested.max(watermark);
        }
        self.submit(Request::Watermark(watermark)).await?;
        self.apply_watermark(watermark).await;
        self.retire_exclusively(Reclaim::Paced).await
    }

    /// Frees the ring slots of ops up to `watermark`, whose record is
    /// durable. Freeing walks the slots of the ops passed (32 bytes each:
    /// about 2 ms per million ops, bound by memory), so a long jump is
    /// taken in steps with a reactor turn between them, and appends are not
    /// held up behind it. Between steps the index's watermark lies below
    /// the record's, which only keeps slots taken a little longer.
    async fn apply_watermark(&self, watermark: u64) {
        {
            let mut state = self.shared.state.borrow_mut();
            state.next_op = state.next_op.max(watermark + 1);
        }
        loop {
            let done = {
                let mut state = self.shared.state.borrow_mut();
                let current = state.index.watermark();
                if watermark <= current {
                    return;
                }
                // A jump of a whole ring or more is one scan of the ring
                // (see `RingIndex::advance`), so it is never split.
                let step = if watermark - current >= state.index.slot_count() {
                    watermark
                } else {
                    watermark.min(current + WATERMARK_STEP_OPS)
                };
                state.index.advance(step);
                step == watermark
            };
            if done {
                return;
            }
            glommio_quirks::reactor_turn().await;
        }
    }

    /// Runs [`Journal::retire_segments`] unless one is running already (it
    /// re-checks the watermark before it stops, so it retires these too).
    async fn retire_exclusively(&self, reclaim: Reclaim) -> Result<()> {
        {
            let mut state = self.shared.state.borrow_mut();
            if state.retiring {
                return Ok(());
            }
            state.retiring = true;
        }
        // Cleared however this future ends, dropped mid-way included (a
        // caller's timeout): a flag left set would stop every later
        // retirement and hold `close` for ever.
        let _retiring = RetiringGuard(&self.shared);
        self.retire_segments(reclaim).await
    }

    /// Retires whole segments at the front whose entries are all at or
    /// below the watermark. The superblock stops naming them first (its
    /// `first` generation moves past them), so a crash at any later step
    /// leaves files recovery recognizes as retired, never a recorded
    /// segment missing. Their files are kept for recycling where they may
    /// be (`Shared::keep_for_recycling`), else deleted. Only one runs at a
    /// time. With [`Reclaim::Paced`],
    /// segments larger than the configured reclaim step are handed to a
    /// task that shrinks their files step by step before removing them.
    async fn retire_segments(&self, reclaim: Reclaim) -> Result<()> {
        loop {
            let (retired, first_kept) = {
                let state = self.shared.state.borrow();
                // A failed directory fsync poisons: nothing may be removed
                // after one that might not be durable.
                state.usable()?;
                // Read afresh each time: a concurrent advance may have moved it.
                let bound = state.index.watermark().max(state.compacted_floor);
                let count = state
                    .segments
                    .iter()
                    .take(state.segments.len().saturating_sub(1))
                    .take_while(|s| s.max_op <= bound)
                    .count();
                if count == 0 {
                    return Ok(());
                }
                (count, state.segments[count].generation)
            };
            self.shared
                .update_superblock(|sb| {
                    sb.first_generation = first_kept;
                    sb.ends.retain(|(g, _)| *g >= first_kept);
                })
                .await?;
            let segments: Vec<_> = {
                let mut state = self.shared.state.borrow_mut();
                state.segments.drain(..retired).collect()
            };
            let step = self.shared.config.reclaim_step_bytes;
            let short = reclaim == Reclaim::AtOnce || self.space_is_short();
            let paced = !short && step > 0;
            let mut removed = false;
            for segment in segments {
                let Some(segment) = self.shared.keep_for_recycling(segment, short).await else {
                    continue;
                };
                if paced && segment.segment_bytes > step {
                    self.shared.state.borrow_mut().reclaim.push_back(segment);
                } else {
                    self.remove_retired(segment).await;
                    removed = true;
                }
            }
            if removed {
                self.sync_dir_after_removal().await?;
            }
            self.start_reclaiming();
        }
    }

    /// Closes a retired segment's file and removes it (not yet durably).
    async fn remove_retired(&self, segment: Segment<S::File>) {
        if let Ok(file) = Rc::try_unwrap(segment.file) {
            let _ = file.close().await;
        }
        // Retired already: a file that stays is removed by the next
        // recovery (it lies below the superblock's first generation).
        if let Err(e) = self.shared.storage.remove(&segment.path).await {
            tracing::warn!(path = %segment.path.display(), error = %e, "removing a retired segment failed; the next open removes it");
        }
        self.shared.state.borrow_mut().stats.segments_retired += 1;
    }

    /// Makes removals durable. A failed directory fsync poisons: nothing
    /// may be removed after one that might not be durable.
    async fn sync_dir_after_removal(&self) -> Result<()> {
        let dir = &self.shared.config.dir;
        match self.shared.storage.sync_dir(dir).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self
                .shared
                .poison(Error::io("fsync directory", dir, None, e))),
        }
    }

    /// Whether free space is too short to give retired segments back
    /// slowly (or cannot be told).
    fn space_is_short(&self) -> bool {
        let config = &self.shared.config;
        let headroom = RECLAIM_HEADROOM_SEGMENTS.saturating_mul(config.segment_bytes);
        match self.shared.storage.fs_space(&config.dir) {
            Ok(space) => space.avail_bytes < headroom,
            Err(_) => true,
        }
    }

    /// Starts the task that reclaims queued retired segments, unless it
    /// runs already. The task holds the journal weakly: a journal dropped
    /// without `close` leaves the rest to the next open.
    fn start_reclaiming(&self) {
        {
            let mut state = self.shared.state.borrow_mut();
            if state.reclaiming || state.reclaim.is_empty() {
                return;
            }
            state.reclaiming = true;
        }
        let shared = Rc::downgrade(&self.shared);
        glommio::spawn_local(async move {
            Journal::reclaim_retired(&shared).await;
            if let Some(shared) = shared.upgrade() {
                shared.state.borrow_mut().reclaiming = false;
                wake_all(&shared.reclaim_done);
            }
        })
        .detach();
    }

    /// Shrinks each queued retired segment's file by the configured reclaim
    /// step at a time, each step synced and followed by a pause, then removes
    /// it: the blocks come free (and are discarded) a few MiB per journal
    /// commit instead of a whole segment in one. A closing or failed
    /// journal removes the rest at once. Nothing here is live data: the
    /// superblock stopped naming these files before they were queued, and
    /// a crash at any step leaves a file the next open removes.
    async fn reclaim_retired(shared: &Weak<Shared<S>>) {
        loop {
            let journal = match shared.upgrade() {
                Some(shared) => Journal { shared },
                None => return,
            };
            let Some(segment) = journal.shared.state.borrow_mut().reclaim.pop_front() else {
                return;
            };
            // Shrinking never grows a file: start from its real length.
            let len = segment.file.file_len().await.unwrap_or(0);
            // Removed whole instead: when closing or failed, when space runs
            // short, and while a reader still holds the file (a shrunk file
            // would read as damage to it).
            let keep_shrinking = || {
                journal.shared.state.borrow().usable().is_ok()
                    && Rc::strong_count(&segment.file) == 1
                    && !journal.space_is_short()
            };
            let step = journal.shared.config.reclaim_step_bytes;
            if let Err(e) = shrink_in_steps(&*segment.file, len, step, keep_shrinking).await {
                tracing::warn!(path = %segment.path.display(), error = %e, "shrinking a retired segment failed; removing it whole");
            }
            journal.remove_retired(segment).await;
            // Poisoned already (and logged) if this fails: the rest is
            // still removed, as a poisoned journal's retirement would.
            let _ = journal.sync_dir_after_removal().await;
        }
    }
}

/// How [`Journal::retire_segments`] frees retired segments' space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reclaim {
    /// Removed before the call returns: a full disk needs the space now.
    AtOnce,
    /// Large segments shrunk step by step in the background.
    Paced,
}

/// Ends a retirement: clears the flag and wakes `close`, which waits for
/// it.
struct RetiringGuard<'a, S: Storage>(&'a Shared<S>);

impl<S: Storage> Drop for RetiringGuard<'_, S> {
    fn drop(&mut self) {
        if let Ok(mut state) = self.0.state.try_borrow_mut() {
            state.retiring = false;
        }
        wake_all(&self.0.reclaim_done);
    }
}
