//! Resetting a shard to a snapshot (cold restore from object storage).
//!
//! [`Shard::reset_to`] replaces the shard's state with a snapshot's and
//! moves the shard's numbering past everything it has seen, so a command
//! after the reset can never be confused with one from before it:
//!
//! 1. Load and verify the snapshot; restore its state (nothing changes if
//!    either fails). A snapshot of another domain is refused unless the
//!    shard holds no data, which then joins that domain (`identity` is
//!    rewritten, after step 3).
//! 2. `B` = one above the largest op the shard has seen (the journal's
//!    last op, the newest local snapshot, the applied op, the snapshot's own
//!    watermark, and, with an object store, a ring above every snapshot key
//!    and numbering claim the snapshot's domain has there, as a cold
//!    restore numbers: the shard's uploads then never take a key of the
//!    domain's history); `E` = one above the largest epoch likewise. With
//!    an object store, `B` and `E` are then claimed there (an empty object
//!    under `<domain>/numbering/`) before anything changes: until the
//!    reset's snapshot is uploaded, that claim is all that tells a later
//!    restore the numbers this shard goes on to acknowledge.
//! 3. Persist the restored state as the local snapshot at op `B`, epoch `E`;
//!    a shard joining the snapshot's domain joins it now.
//! 4. Raise the journal's epoch to `E` and its watermark to `B`.
//! 5. The first op submitted afterwards is checked to be `B + 1` at epoch
//!    `E` or later ([`Error::ResetCheck`] otherwise).
//!
//! Reset is an extension of the shard: it uses the shard's public methods
//! and the core's `pub(crate)` surface for extensions (`begin_reset`,
//! `hold_snapshots`, `join_domain`, `restart_numbering`; see
//! [`crate::shard`]), never its fields. Step 4 and the check of step 5 are
//! the core's (`Shard::restart_numbering`): the numbering floor is an
//! invariant of the shard, whoever asks for it.
//!
//! A crash before step 3 completes leaves the shard as it was. A crash
//! between 3 and 4 is finished by recovery, which raises the journal's
//! watermark and epoch to the newest snapshot's. A shard joining a domain
//! writes the snapshot before it rewrites its identity, so a crash (or a
//! failed write) in between leaves it in its own domain, as it was, with a
//! snapshot of the other domain that its recovery skips (reported) and a
//! reset run again passes over; joining first left an empty shard of the
//! new domain numbering from op 1, whose ops would take numbers of that
//! domain's history. Such a left-over snapshot stays until a reset is run
//! again or it is removed by hand (`ringstore snapshot verify` names it);
//! until then it counts as one of the generations the shard keeps. A reset
//! dropped by its caller once its snapshot write began poisons the shard
//! ([`ResetError::Abandoned`]): a reopen finishes or undoes it.
//!
//! With object storage the snapshot written in step 3 is uploaded like any
//! checkpoint's, under the (new) domain: a later cold restore then numbers
//! above this reset too.

use crate::error::{Error, PersistStage, SnapshotDamage, SnapshotError, SnapshotFault};
use crate::machine::{restore_state, OpId, StateMachine};
use crate::shard::Shard;
use crate::snapshot::{LoadedSnapshot, SnapshotMeta};
use ringstore_journal::storage::Storage;
use std::{path::Path, path::PathBuf, sync::Arc, time::Duration};
use uuid::Uuid;

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

/// Why a reset failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ResetError {
    /// `reset_to` was given a snapshot of another domain, on a shard that
    /// already holds data.
    #[error(
        "{path} belongs to domain {snapshot}, this shard holds data of domain {shard}; reset \
         a shard only to its own domain's snapshots, or restore into an empty data dir"
    )]
    DomainMismatch {
        /// The snapshot.
        path: PathBuf,
        /// The shard's domain.
        shard: Uuid,
        /// The snapshot's domain.
        snapshot: Uuid,
    },

    /// The new numbering would have to start past the last op or epoch
    /// number: the snapshot, the shard or (with an object store) a key of
    /// the domain there names one at the end of the range. Nothing changed.
    #[error(
        "{path}: no numbering is left above op {op_seen} and epoch {epoch_seen}, the largest \
         the snapshot, the shard or the domain's keys in object storage name (nothing was \
         changed)"
    )]
    NumberingExhausted {
        /// The snapshot.
        path: PathBuf,
        /// The largest op seen.
        op_seen: u64,
        /// The largest epoch seen.
        epoch_seen: u64,
    },

    /// The reset was dropped (its caller's future) while it wrote its
    /// snapshot or restarted the numbering: whether it took is not known
    /// in memory, so the shard is poisoned; reopening it finishes or
    /// undoes the reset.
    #[error(
        "a reset was dropped while it wrote its snapshot or restarted the numbering; the shard \
         is poisoned, reopen it (recovery finishes or undoes the reset)"
    )]
    Abandoned,

    /// The shard refused the reset ([`Error::Resetting`], [`Error::Closed`],
    /// [`Error::Poisoned`]) or a step failed: loading the snapshot, its
    /// sections, persisting it ([`Error::Persist`]), the journal, the
    /// numbering check ([`Error::ResetCheck`]). Where the shard's state
    /// could no longer be trusted it is poisoned.
    #[error(transparent)]
    Shard(#[from] Error),
}

impl From<ResetError> for Error {
    fn from(error: ResetError) -> Error {
        match error {
            ResetError::Shard(error) => error,
            other => Error::extension("reset", other),
        }
    }
}

impl<M: StateMachine, S: Storage> Shard<M, S> {
    /// Resets the shard to the snapshot file at `snapshot` (on the shard's
    /// storage; e.g. downloaded from object storage). See the module docs.
    /// Submits are refused with [`Error::Resetting`] while it runs; it waits
    /// for submits already in flight and for a running checkpoint.
    pub async fn reset_to(&self, snapshot: &Path) -> Result<ResetOutcome, ResetError> {
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
    ) -> Result<ResetOutcome, ResetError> {
        self.reset(Source::Loaded(Box::new(loaded)), seen_elsewhere)
            .await
    }

    async fn reset(
        &self,
        source: Source<'_>,
        seen_elsewhere: OpId,
    ) -> Result<ResetOutcome, ResetError> {
        let _resetting = ResettingGuard::enter(self)?;
        self.drain_submits().await;
        let _held = self.hold_snapshots().await;
        // A close that began meanwhile did not wait for this reset (it held
        // nothing then) and may have handed the directory on: write nothing.
        if self.is_closing() {
            return Err(Error::Closed.into());
        }
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
    ) -> Result<ResetOutcome, ResetError> {
        let journal = self.journal();
        let snapshots = self.snapshots();
        // A cold restore passes the store's keys in `seen_elsewhere`.
        let from_file = matches!(source, Source::File(_));
        // 1. Load, verify, restore.
        let loaded = match source {
            Source::File(path) => snapshots.load(path, None).await.map_err(Error::from)?,
            Source::Loaded(loaded) => *loaded,
        };
        let path = &loaded.meta.path.clone();
        let machine = restore_state::<M>(loaded.sections).map_err(|e| Error::Restore {
            path: path.to_path_buf(),
            source: Arc::new(e),
        })?;
        let source = loaded.meta;
        let generations = snapshots.generations()?;
        let applied = self.applied();
        let joins = source.domain != self.domain();
        if joins && !self.holds_no_data(&generations, source.domain).await? {
            return Err(ResetError::DomainMismatch {
                path: path.to_path_buf(),
                shard: self.domain(),
                snapshot: source.domain,
            });
        }
        // Before anything changes: a store that cannot be listed fails the
        // reset with nothing done.
        let remote_floor = if from_file {
            self.remote_numbering_floor(source.domain).await?
        } else {
            OpId { op: 0, epoch: 0 }
        };
        // 2. The new floor.
        let newest_local = generations.last().map_or(0, |(op, _)| *op);
        let op_seen = source
            .watermark
            .max(journal.next_op().saturating_sub(1))
            .max(applied.op)
            .max(newest_local)
            .max(seen_elsewhere.op)
            .max(remote_floor.op);
        let epoch_seen = source
            .epoch
            .max(journal.epoch())
            .max(applied.epoch)
            .max(seen_elsewhere.epoch)
            .max(remote_floor.epoch);
        // The floor, and the first op after it, must both exist.
        let (Some(_), Some(epoch)) = (op_seen.checked_add(2), epoch_seen.checked_add(1)) else {
            return Err(ResetError::NumberingExhausted {
                path: path.to_path_buf(),
                op_seen,
                epoch_seen,
            });
        };
        let floor = OpId {
            op: op_seen + 1,
            epoch,
        };
        // With an object store, the floor is claimed there before anything
        // here changes (see `Shard::claim_numbering`): a store that cannot
        // take the claim fails the reset with nothing done.
        self.claim_numbering(source.domain, floor).await?;
        // From here until the numbering restarted, a reset dropped midway
        // (its caller's future dropped) poisons the shard: the snapshot may
        // be in place, or the identity half rewritten, while the shard
        // would otherwise go on in its old history.
        let unfinished = PoisonIfDropped { shard: self };
        // 3. The local snapshot at the new numbering, in the snapshot's
        // domain. A joining shard takes that domain only once the snapshot
        // is in place (below).
        let frozen = machine.freeze();
        let persisted = snapshots
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
            ) => {
                unfinished.disarm();
                return Err(self.poison(e).into());
            }
            // Nothing under a snapshot's name: the shard is as it was.
            Err(e) => {
                unfinished.disarm();
                return Err(e.into());
            }
        };
        if joins {
            // The snapshot of the new domain is in place: a reopen after a
            // failure here is either the shard as it was (the identity not
            // rewritten: recovery skips that snapshot, a reset run again
            // passes over it) or the joined shard, numbered from the
            // snapshot. Never an empty shard of the new domain numbering
            // from op 1, which is what joining first left after a crash
            // or a failed snapshot write.
            if let Err(e) = self.join_domain(source.domain).await {
                unfinished.disarm();
                return Err(self.poison(e).into());
            }
        }
        // 4, 5. The journal, the state, the check of the next op. The
        // snapshot is in place: a failure here leaves the shard to a
        // reopen, which finishes the reset.
        if let Err(e) = self.restart_numbering(machine, floor, &snapshot).await {
            unfinished.disarm();
            return Err(self.poison(e).into());
        }
        unfinished.disarm();
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

impl<M: StateMachine, S: Storage> Shard<M, S> {
    /// Whether the shard holds no data, so that a reset may make it join
    /// `joining`: nothing applied, an empty journal, and no snapshot but
    /// ones whose header names `joining` (what a reset into that domain
    /// leaves when it is cut short before the join; recovery skips them,
    /// and the new reset numbers above them). A snapshot that cannot be
    /// read is an error, not data. Only a reset that joins a domain asks,
    /// and a fresh shard has no snapshot to read.
    async fn holds_no_data(
        &self,
        generations: &[(u64, PathBuf)],
        joining: Uuid,
    ) -> Result<bool, Error> {
        let journal = self.journal();
        if self.applied().op != 0 || journal.next_op() != 1 || journal.watermark() != 0 {
            return Ok(false);
        }
        for (_, path) in generations {
            match self.snapshots().load(path, Some(self.domain())).await {
                Err(SnapshotError::Damaged(SnapshotDamage {
                    fault: SnapshotFault::WrongDomain { found, .. },
                    ..
                })) if found == joining => {}
                Err(e @ SnapshotError::Io { .. }) => return Err(e.into()),
                _ => return Ok(false),
            }
        }
        Ok(true)
    }
}

/// Poisons the shard if dropped before [`PoisonIfDropped::disarm`]: a
/// reset abandoned (its caller's future dropped) between the start of its
/// snapshot write and the restart of the numbering, where the shard can no
/// longer tell whether the reset took.
struct PoisonIfDropped<'a, M: StateMachine, S: Storage> {
    shard: &'a Shard<M, S>,
}

impl<M: StateMachine, S: Storage> PoisonIfDropped<'_, M, S> {
    /// The reset decided (finished, or failed with the shard as it was or
    /// poisoned already).
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl<M: StateMachine, S: Storage> Drop for PoisonIfDropped<'_, M, S> {
    fn drop(&mut self) {
        self.shard.poison(ResetError::Abandoned.into());
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
    fn enter(shard: &'a Shard<M, S>) -> Result<Self, Error> {
        shard.begin_reset()?;
        Ok(ResettingGuard { shard })
    }
}

impl<M: StateMachine, S: Storage> Drop for ResettingGuard<'_, M, S> {
    fn drop(&mut self) {
        self.shard.end_reset();
    }
}
