//! Resetting a shard to a snapshot (cold restore from object storage).
//!
//! [`Shard::reset_to`] replaces the shard's state with a snapshot's and
//! moves the shard's numbering past everything it has seen, so a command
//! after the reset can never be confused with one from before it:
//!
//! 1. Load and verify the snapshot; restore its state (nothing changes if
//!    either fails). A snapshot of another domain is refused unless the
//!    shard is new and empty, which then joins that domain (`identity` is
//!    rewritten).
//! 2. `B` = one above the largest op the shard has seen (the journal's
//!    last op, the newest local snapshot, the applied op, the snapshot's own
//!    watermark, and for a cold restore every snapshot key in object
//!    storage); `E` = one above the largest epoch likewise.
//! 3. Persist the restored state as the local snapshot at op `B`, epoch `E`.
//! 4. Raise the journal's epoch to `E` and its watermark to `B`.
//! 5. The first op submitted afterwards is checked to be `B + 1` at epoch
//!    `E` or later ([`Error::ResetCheck`] otherwise).
//!
//! A crash before step 3 completes leaves the shard as it was. A crash
//! between 3 and 4 is finished by recovery, which raises the journal's
//! watermark and epoch to the newest snapshot's.
//!
//! With object storage the snapshot written in step 3 is uploaded like any
//! checkpoint's, under the (new) domain: a later cold restore then numbers
//! above this reset too.

use crate::error::{Error, PersistStage, Result};
use crate::layout::identity::{write_identity, Identity};
use crate::machine::{restore_state, OpId, StateMachine};
use crate::shard::{Shard, SnapshotPoint};
use crate::snapshot::{LoadedSnapshot, SnapshotMeta};
use ringstore_journal::storage::Storage;
use std::{path::Path, sync::Arc, time::Duration};

/// How often `reset_to` checks that in-flight submits have finished.
const DRAIN_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// What [`Shard::reset_to`] did.
#[derive(Debug, Clone)]
pub struct ResetOutcome {
    /// The snapshot the state came from.
    pub source: SnapshotMeta,
    /// The local snapshot written at the new numbering.
    pub snapshot: SnapshotMeta,
    /// Op and epoch the shard's numbering now starts above.
    pub floor: OpId,
}

impl<M: StateMachine, S: Storage> Shard<M, S> {
    /// Resets the shard to the snapshot file at `snapshot` (on the shard's
    /// storage; e.g. downloaded from object storage). See the module docs.
    /// Submits are refused with [`Error::Resetting`] while it runs; it waits
    /// for submits already in flight and for a running checkpoint.
    pub async fn reset_to(&self, snapshot: &Path) -> Result<ResetOutcome> {
        let nothing_else = OpId { op: 0, epoch: 0 };
        self.reset(Source::File(snapshot), nothing_else).await
    }

    /// [`Shard::reset_to`] with a snapshot loaded and verified already, and
    /// `seen_elsewhere`: op and epoch the new numbering must also pass (for
    /// a cold restore, the newest snapshot keys in object storage, damaged
    /// ones included).
    pub(crate) async fn reset_to_loaded(
        &self,
        loaded: LoadedSnapshot,
        seen_elsewhere: OpId,
    ) -> Result<ResetOutcome> {
        self.reset(Source::Loaded(Box::new(loaded)), seen_elsewhere)
            .await
    }

    async fn reset(&self, source: Source<'_>, seen_elsewhere: OpId) -> Result<ResetOutcome> {
        let _resetting = ResettingGuard::enter(self)?;
        self.drain_submits().await;
        self.exclude_checkpoints().await;
        let _exclusive = ExclusiveGuard { shard: self };
        self.reset_exclusive(source, seen_elsewhere).await
    }

    async fn drain_submits(&self) {
        while self.submits_in_flight() > 0 {
            glommio::timer::sleep(DRAIN_POLL_INTERVAL).await;
        }
    }

    async fn reset_exclusive(
        &self,
        source: Source<'_>,
        seen_elsewhere: OpId,
    ) -> Result<ResetOutcome> {
        let inner = &*self.inner;
        // 1. Load, verify, restore.
        let loaded = match source {
            Source::File(path) => inner.snapshots.load(path, None).await?,
            Source::Loaded(loaded) => *loaded,
        };
        let path = &loaded.meta.path.clone();
        let machine = restore_state::<M>(loaded.sections).map_err(|e| Error::Restore {
            path: path.to_path_buf(),
            source: Arc::new(e),
        })?;
        let source = loaded.meta;
        let generations = inner.snapshots.generations()?;
        let applied = self.applied();
        if source.domain != self.domain() {
            let fresh = applied.op == 0
                && inner.journal.next_op() == 1
                && inner.journal.watermark() == 0
                && generations.is_empty();
            if !fresh {
                return Err(Error::DomainMismatch {
                    path: path.to_path_buf(),
                    shard: self.domain(),
                    snapshot: source.domain,
                });
            }
            let identity = Identity {
                journal_created: true,
                ..Identity::new(source.domain)
            };
            write_identity(&inner.storage, &inner.config.dir, &identity).await?;
            // The (empty) journal records its new owner too; a crash before
            // this is harmless: an empty journal takes the identity's domain
            // at the next open.
            let placement = inner.journal.owner().unwrap_or_default();
            inner
                .journal
                .set_owner(ringstore_journal::JournalOwner {
                    domain: *source.domain.as_bytes(),
                    ..placement
                })
                .await?;
            inner.domain.set(source.domain);
            if let Some(objects) = &inner.objects {
                objects.set_domain(source.domain)?;
            }
        }
        // 2. The new floor.
        let newest_local = generations.last().map_or(0, |(op, _)| *op);
        let op_seen = source
            .watermark
            .max(inner.journal.next_op().saturating_sub(1))
            .max(applied.op)
            .max(newest_local)
            .max(seen_elsewhere.op);
        let epoch_seen = source
            .epoch
            .max(inner.journal.epoch())
            .max(applied.epoch)
            .max(seen_elsewhere.epoch);
        let floor = OpId {
            op: op_seen + 1,
            epoch: epoch_seen + 1,
        };
        // 3. The local snapshot at the new numbering.
        let frozen = machine.freeze();
        let persisted = inner
            .snapshots
            .persist(frozen, floor.op, floor.epoch, source.domain)
            .await;
        let snapshot = match persisted {
            Ok(snapshot) => snapshot,
            // The reset snapshot may already be in place under its final
            // name while the shard goes on in its old history: a reopen
            // could then mix the two. Stop here; reopening finishes or
            // undoes the reset consistently.
            Err(
                e @ Error::Persist {
                    stage: PersistStage::Rename | PersistStage::DirSync,
                    ..
                },
            ) => return Err(self.poison(e)),
            Err(e) => return Err(e),
        };
        // 4. The journal.
        inner.journal.set_epoch(floor.epoch)?;
        if let Err(e) = inner.journal.advance_watermark(floor.op).await {
            return Err(self.poison(e.into()));
        }
        let next_op = inner.journal.next_op();
        if next_op != floor.op + 1 {
            return Err(self.poison(Error::ResetCheck {
                op: next_op,
                epoch: inner.journal.epoch(),
                expected_op: floor.op + 1,
                expected_epoch: floor.epoch,
            }));
        }
        *inner.machine.borrow_mut() = machine;
        {
            let mut progress = inner.progress.borrow_mut();
            progress.applied = floor;
            progress.snapshot = Some(SnapshotPoint {
                watermark: floor.op,
                epoch: floor.epoch,
                command_bytes_total: progress.command_bytes_total,
            });
            progress.previous_snapshot = None;
            progress.reset_floor = Some(floor);
        }
        if let Some(objects) = &inner.objects {
            objects.snapshot_written(floor.op);
        }
        self.notify_slots_freed();
        tracing::info!(
            source = %source.path.display(),
            floor_op = floor.op,
            floor_epoch = floor.epoch,
            "shard reset to snapshot"
        );
        Ok(ResetOutcome {
            source,
            snapshot,
            floor,
        })
    }
}

/// Where the snapshot to reset to comes from.
enum Source<'a> {
    /// A file, loaded and verified by the reset.
    File(&'a Path),
    /// Loaded and verified by the caller.
    Loaded(Box<LoadedSnapshot>),
}

/// Refuses submits while a reset runs, and stops refusing however the
/// reset ends (dropped midway included).
struct ResettingGuard<'a, M: StateMachine, S: Storage> {
    shard: &'a Shard<M, S>,
}

impl<'a, M: StateMachine, S: Storage> ResettingGuard<'a, M, S> {
    fn enter(shard: &'a Shard<M, S>) -> Result<Self> {
        shard.begin_reset()?;
        Ok(ResettingGuard { shard })
    }
}

impl<M: StateMachine, S: Storage> Drop for ResettingGuard<'_, M, S> {
    fn drop(&mut self) {
        self.shard.end_reset();
    }
}

/// Lets checkpoints run again however the reset ends.
struct ExclusiveGuard<'a, M: StateMachine, S: Storage> {
    shard: &'a Shard<M, S>,
}

impl<M: StateMachine, S: Storage> Drop for ExclusiveGuard<'_, M, S> {
    fn drop(&mut self) {
        self.shard.allow_checkpoints();
    }
}
