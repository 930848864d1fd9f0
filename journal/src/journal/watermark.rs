//! The watermark: advancing it (a record in the log) and retiring the
//! segments it covers.

use super::*;
use crate::glommio_quirks;

/// Ops whose ring slots one step of a watermark advance frees (about 0.15
/// ms of walking the slots; see `apply_watermark`).
const WATERMARK_STEP_OPS: u64 = 1 << 16;

impl<S: Storage> Journal<S> {
    /// Records that every op at or below `watermark` is in a durable
    /// snapshot: writes a watermark record and waits until it is durable,
    /// then frees those ops' ring slots and deletes whole segments holding
    /// only such ops (then syncs the directory). Live data is never
    /// rewritten. A crash at any step leaves either the old watermark or the
    /// new one, and segments that are either present or no longer needed.
    pub async fn advance_watermark(&self, watermark: u64) -> Result<()> {
        {
            let state = self.shared.state.borrow();
            state.usable()?;
            let current = state.index.watermark();
            if watermark < current {
                return Err(Error::WatermarkRegression {
                    requested: watermark,
                    current,
                });
            }
            if watermark == current {
                return Ok(());
            }
            if watermark == u64::MAX {
                return Err(Error::InvalidOp { op: watermark });
            }
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
            self.retire_exclusively().await?;
        }
        {
            let mut state = self.shared.state.borrow_mut();
            state.watermark_requested = state.watermark_requested.max(watermark);
        }
        self.submit(Request::Watermark(watermark)).await?;
        self.apply_watermark(watermark).await;
        self.retire_exclusively().await
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
    async fn retire_exclusively(&self) -> Result<()> {
        {
            let mut state = self.shared.state.borrow_mut();
            if state.retiring {
                return Ok(());
            }
            state.retiring = true;
        }
        let result = self.retire_segments().await;
        self.shared.state.borrow_mut().retiring = false;
        result
    }

    /// Deletes whole segments at the front whose entries are all at or
    /// below the watermark. The superblock stops naming them first (its
    /// `first` generation moves past them), so a crash at any later step
    /// leaves files recovery recognizes as retired, never a recorded
    /// segment missing. Only one runs at a time.
    async fn retire_segments(&self) -> Result<()> {
        let storage = &self.shared.storage;
        let dir = &self.shared.config.dir;
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
            for segment in segments {
                if let Ok(file) = Rc::try_unwrap(segment.file) {
                    let _ = file.close().await;
                }
                // Retired already: a file that stays is removed by the next
                // recovery (it lies below the superblock's first generation).
                if let Err(e) = storage.remove(&segment.path).await {
                    tracing::warn!(path = %segment.path.display(), error = %e, "removing a retired segment failed; the next open removes it");
                }
                self.shared.state.borrow_mut().stats.segments_retired += 1;
            }
            if let Err(e) = storage.sync_dir(dir).await {
                return Err(self
                    .shared
                    .poison(Error::io("fsync directory", dir, None, e)));
            }
        }
    }
}
