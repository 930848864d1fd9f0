//! Writing the journal's superblock: creation under a temporary name, and
//! updates serialized one after the other.

use super::*;

impl<S: Storage> Shared<S> {
    /// Writes the superblock with `change` applied (and the current durable
    /// watermark, or the compacted floor above it), after any update
    /// already running. A failure poisons: the
    /// superblock's state on disk is unknown.
    pub(super) async fn update_superblock(
        &self,
        change: impl FnOnce(&mut JournalSuperblock),
    ) -> Result<()> {
        while self.superblock_busy.get() {
            notified(&self.superblock_idle).await;
        }
        // Cleared however this future ends, dropped mid-write included, so
        // a cancelled caller cannot stall every later update.
        self.superblock_busy.set(true);
        let _busy = BusyGuard(self);
        let (next, sequence) = {
            let (current, sequence) = &*self.superblock.borrow();
            let mut next = current.clone();
            change(&mut next);
            let state = self.state.borrow();
            // The compacted floor too: a full disk's advance retires the
            // segments under it before its watermark record is written
            // (the caller's snapshot covers them), and a crash between the
            // two must not leave their ops below no watermark.
            next.watermark = next
                .watermark
                .max(state.durable_watermark)
                .max(state.compacted_floor);
            // Carried here so that retiring the segment holding its record
            // does not lose it.
            next.hard_state_sequence = state.hard_state.0;
            next.hard_state.clone_from(&state.hard_state.1);
            (
                next,
                (*sequence).max(self.superblock_sequence_tried.get()) + 1,
            )
        };
        self.superblock_sequence_tried.set(sequence);
        let path = self.config.dir.join(SUPERBLOCK_FILE_NAME);
        let result = write_superblock(&self.storage, &path, sequence, &next).await;
        if result.is_ok() {
            *self.superblock.borrow_mut() = (next, sequence);
        }
        result.map_err(|e| self.poison(e))
    }
}

/// Ends a superblock update: clears the busy flag and wakes the next one.
struct BusyGuard<'a, S: Storage>(&'a Shared<S>);

impl<S: Storage> Drop for BusyGuard<'_, S> {
    fn drop(&mut self) {
        self.0.superblock_busy.set(false);
        wake_all(&self.0.superblock_idle);
    }
}

/// Writes both copies of the journal superblock (see `superblock`).
pub(super) async fn write_superblock<S: Storage>(
    storage: &S,
    path: &Path,
    sequence: u64,
    sb: &JournalSuperblock,
) -> Result<()> {
    // Both copies held a state the journal had when it opened (recovery
    // repairs them first; an update whose future was dropped mid-write may
    // have left one copy with its state, under a sequence no later update
    // reuses), so either may go first, unless one has rotten since: the
    // copy written last must be one that verifies now, or a crash while the
    // first is written leaves none. Both copies are read back (8 KiB) to
    // pick it, and read again while they disagree between reads (as
    // recovery does: a transient fault must not make the good copy look
    // bad); a read that fails keeps the usual order.
    let read = superblock::settle_reads(SuperblockKind::Journal, || async {
        superblock::read_file(storage, path)
            .await?
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    })
    .await;
    let keep_last = match read.map(|(bytes, _)| bytes) {
        Ok(bytes) => match superblock::decode(&bytes, SuperblockKind::Journal) {
            Ok(chosen) => {
                for fault in &chosen.stale_or_damaged {
                    tracing::warn!(
                        path = %path.display(),
                        offset = fault.offset,
                        reason = %fault.reason,
                        "superblock copy damaged or stale before an update; the update writes it first"
                    );
                }
                chosen.newest_copy
            }
            Err(fault) => {
                tracing::warn!(path = %path.display(), %fault,
                    "no superblock copy verifies before an update; writing copy 0 first");
                superblock::SUPERBLOCK_COPIES - 1
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => superblock::SUPERBLOCK_COPIES - 1,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e,
                "superblock read back before an update failed; writing copy 0 first");
            superblock::SUPERBLOCK_COPIES - 1
        }
    };
    superblock::write_file(
        storage,
        path,
        false,
        SuperblockKind::Journal,
        sequence,
        &sb.encode(),
        keep_last,
    )
    .await
    .map_err(|f| Error::io(f.op, path, f.offset, f.source))
}

/// Creates a new journal's superblock: written in full under a temporary
/// name, then renamed into place, so `superblock` never exists half-written.
pub(super) async fn create_superblock<S: Storage>(
    storage: &S,
    dir: &Path,
    sb: &JournalSuperblock,
) -> Result<()> {
    let temp = dir.join(SUPERBLOCK_TEMP_NAME);
    let path = dir.join(SUPERBLOCK_FILE_NAME);
    match storage.remove(&temp).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove", &temp, None, e)),
    }
    superblock::write_file(
        storage,
        &temp,
        true,
        SuperblockKind::Journal,
        1,
        &sb.encode(),
        superblock::SUPERBLOCK_COPIES - 1,
    )
    .await
    .map_err(|f| Error::io(f.op, &temp, f.offset, f.source))?;
    storage
        .rename(&temp, &path)
        .await
        .map_err(|e| Error::io("rename superblock", &path, None, e))?;
    storage
        .sync_dir(dir)
        .await
        .map_err(|e| Error::io("fsync directory", dir, None, e))
}
