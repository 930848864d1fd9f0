//! Recycling retired segments. A retired segment's file has its front
//! zeroed and is kept, under its old name below the superblock's first
//! generation, until the next spare is prepared; then it is renamed to the
//! spare's name and activated with a header flagged recycled (`FORMAT.md`, "Segment
//! header"). Its blocks are written ones, so the new segment needs no
//! zero-fill, its first fdatasync of each block converts no extent, and the
//! filesystem discards nothing. A crash at any step leaves a file recovery
//! removes: a retired one, or a spare.

use super::*;
use crate::segment::{
    prepare_segment_file, recycle_segment_file, zero_for_recycling, CreateError, PreparedFile,
    SparePacing,
};

/// Most retired segments kept for recycling at once: one per rollover is
/// what a journal whose watermark keeps pace with its appends needs, and a
/// second covers a checkpoint that retires two segments at once. Any more
/// give their space back to the filesystem.
pub const RECYCLED_SEGMENTS_KEPT: usize = 2;

impl<S: Storage> Shared<S> {
    /// Keeps a retired segment (already out of the superblock) for
    /// recycling if it may be kept, its front zeroed and synced first
    /// (`segment::zero_for_recycling`), or hands it back to be removed:
    /// when recycling is off, the file is not this open's
    /// ([`Segment::reusable`]) or of another size, a reader still holds it
    /// (it would read a new segment's bytes as damage), enough are kept,
    /// `space_short`, the journal is closing or failed, or the zeroing
    /// failed.
    pub(super) async fn keep_for_recycling(
        &self,
        segment: Segment<S::File>,
        space_short: bool,
    ) -> Option<Segment<S::File>> {
        let keep = {
            let state = self.state.borrow();
            self.config.recycle_segments
                && segment.reusable
                && segment.segment_bytes == self.config.segment_bytes
                && Rc::strong_count(&segment.file) == 1
                && state.recyclable.len() < RECYCLED_SEGMENTS_KEPT
                && !space_short
                && !state.closing
                && state.poisoned.is_none()
        };
        if !keep {
            return Some(segment);
        }
        if let Err(e) = zero_for_recycling(&*segment.file, &segment.path).await {
            tracing::warn!(path = %segment.path.display(), error = %e, "zeroing a retired segment to keep it for recycling failed; it is removed");
            return Some(segment);
        }
        let mut state = self.state.borrow_mut();
        state.stats.segments_retired += 1;
        state.recyclable.push_back(segment);
        None
    }

    /// The file for segment `generation`: a kept retired segment's,
    /// recycled, or else a new one prepared as `pacing` lets it. A kept
    /// file that cannot be recycled is removed and the next one (or a new
    /// file) is tried.
    pub(super) async fn spare_file(
        &self,
        generation: u64,
        pacing: SparePacing<'_>,
    ) -> Result<PreparedFile<S::File>, CreateError> {
        loop {
            let kept = self.state.borrow_mut().recyclable.pop_front();
            let Some(segment) = kept else {
                break;
            };
            let Ok(file) = Rc::try_unwrap(segment.file) else {
                // Nothing hands out a kept segment's file: not reached.
                let _ = self.storage.remove(&segment.path).await;
                continue;
            };
            match recycle_segment_file(
                &self.storage,
                &self.config,
                (segment.path.clone(), file),
                generation,
            )
            .await
            {
                Ok(prepared) => return Ok(prepared),
                Err(e) if e.poison => return Err(e),
                Err(e) => {
                    tracing::warn!(path = %segment.path.display(), error = %e.error, "recycling a retired segment failed; it is removed");
                }
            }
        }
        prepare_segment_file(&self.storage, &self.config, generation, pacing).await
    }

    /// Removes the kept retired segments and syncs the directory, at close.
    /// Best effort: a file left (or whose removal a crash undoes) lies
    /// below the superblock's first generation, and the next open removes
    /// it as retired, so a failure is logged and the close goes on.
    pub(super) async fn remove_recyclable(&self) {
        let kept = std::mem::take(&mut self.state.borrow_mut().recyclable);
        if kept.is_empty() {
            return;
        }
        for segment in kept {
            if let Ok(file) = Rc::try_unwrap(segment.file) {
                let _ = file.close().await;
            }
            if let Err(e) = self.storage.remove(&segment.path).await {
                tracing::warn!(path = %segment.path.display(), error = %e, "removing a retired segment kept for recycling failed; the next open removes it");
            }
        }
        let dir = &self.config.dir;
        if let Err(e) = self.storage.sync_dir(dir).await {
            tracing::warn!(dir = %dir.display(), error = %e, "fsync of the directory after removing retired segments failed; the next open removes any that come back");
        }
    }
}
