//! One shard: a journal, a state machine, its snapshots and the compaction
//! task, on one glommio reactor.
//!
//! # The submit path
//!
//! [`Shard::submit`] encodes the command, appends it to the journal (group
//! commit: concurrent submits share one write and one fdatasync) and, once
//! the entry is durable, applies it in op order. The journal acknowledges in
//! op order, so the submitter of op `n` normally finds op `n - 1` applied and
//! applies its own command at once; if it wakes first it parks the command
//! and the submitter of the missing op applies both. A command is applied
//! only after it is durable, so everything a reply reflects survives a
//! crash.
//!
//! # Checkpoints
//!
//! A checkpoint freezes the state (cheap: the state machines share structure
//! with their frozen image), writes it as a snapshot file while submits go
//! on, and then advances the journal's watermark, which frees ring slots and
//! retires segments. By default the watermark only moves up to the
//! *previous* snapshot, so a damaged newest snapshot can be replaced by the
//! previous one plus the journal (see
//! [`ShardBuilder::journal_keeps_previous_snapshot`]). The compaction task
//! runs one when the ops or bytes since the last snapshot pass their
//! thresholds or the ring runs low; when the ring is full, submits wait for
//! it (bounded by `ring_full_wait_max`).
//!
//! With object storage ([`ShardBuilder::object_store`]) each snapshot is
//! also uploaded by a task of its own; in the default
//! [`UploadMode::BeforeCompaction`](crate::object_store::UploadMode) the
//! watermark waits for the upload (see [`crate::object_store`]).
//!
//! # State and `.await`
//!
//! The shard's mutable state lives in `RefCell`s that are borrowed only
//! between awaits (the crate denies `clippy::await_holding_refcell_ref`).

use crate::config::{ShardBuilder, ShardConfig};
use crate::error::{Error, Result};
use crate::layout::lock::DirLock;
use crate::lifecycle::Lifecycle;
use crate::machine::{encode, OpId, StateMachine};
use crate::metrics::{LatencySummary, ShardMetrics, METRICS_PUBLISH_INTERVAL};
use crate::object_store::{run_uploads, ShardObjects};
use crate::recovery::{recover, ShardRecoveryReport};
use crate::snapshot::{SnapshotMeta, SnapshotStore};
use event_listener::Event;
use futures_channel::oneshot;
use ringstore_journal::storage::{DmaStorage, Storage};
use ringstore_journal::{Journal, JournalStats};
use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    path::{Path, PathBuf},
    rc::{Rc, Weak},
    sync::Arc,
    time::{Duration, Instant},
};
use uuid::Uuid;

/// The names moved to [`crate::layout`]; kept here for code that names
/// them by their old path.
pub use crate::layout::{JOURNAL_DIR_NAME, SNAPSHOT_DIR_NAME};

/// After a full ring, how long a submit pauses before it retries when slots
/// look free already.
const RING_RECHECK_PAUSE: Duration = Duration::from_millis(1);

/// What a submitted command did: applied with a reply, or refused by the
/// state machine's validation (state unchanged). Either way it is in the
/// journal and durable.
pub type Outcome<M> =
    std::result::Result<<M as StateMachine>::Reply, <M as StateMachine>::Rejection>;

/// Counters since the shard was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Commands applied (replies and rejections), replay excluded.
    pub commands_applied: u64,
    /// Commands the state machine rejected.
    pub commands_rejected: u64,
    /// Bytes of encoded commands applied.
    pub command_bytes: u64,
    /// Times a submit found the ring full and waited.
    pub ring_full_waits: u64,
    /// Checkpoints that wrote a snapshot.
    pub checkpoints: u64,
    /// Checkpoints that failed.
    pub checkpoint_failures: u64,
    /// Total time spent writing snapshots.
    pub checkpoint_time: Duration,
    /// Bytes of snapshot files written.
    pub snapshot_bytes_written: u64,
    /// Old snapshot generations removed.
    pub snapshots_pruned: u64,
    /// Failed attempts to remove old generations (retried next time).
    pub prune_failures: u64,
    /// Submit-to-acknowledgement latency of the commands applied.
    pub ack_latency: LatencySummary,
    /// The journal's counters: appends, bytes, fsyncs, group-commit batch
    /// sizes.
    pub journal: JournalStats,
    /// Ring slots holding ops above the watermark.
    pub ring_slots_used: u64,
    /// Ring slots in all.
    pub ring_slots: u64,
    /// Snapshots uploaded to object storage (see [`crate::object_store`]).
    pub snapshot_uploads: u64,
    /// Upload attempts that failed (each is retried after a backoff).
    pub snapshot_upload_failures: u64,
    /// Bytes of snapshot files uploaded.
    pub snapshot_upload_bytes: u64,
    /// Snapshots not uploaded because a newer one superseded them first.
    pub snapshot_uploads_skipped: u64,
    /// Snapshots not uploaded because the local file no longer verified
    /// (each also counted as a failed attempt, and logged with its damage).
    pub snapshot_uploads_refused: u64,
    /// Op of the newest snapshot known to be in object storage (0: none).
    pub snapshot_uploaded_op: u64,
    /// Of the last upload: from the snapshot's persist (or, for one found at
    /// open, from the open) to the end of its upload.
    pub snapshot_upload_lag: Duration,
    /// Old snapshot generations deleted from object storage by retention.
    pub remote_snapshots_deleted: u64,
    /// Retention passes that failed (retried after the next upload).
    pub remote_retention_failures: u64,
    /// Passes of the snapshot scrubber over every snapshot generation
    /// ([`crate::ShardBuilder::scrub_rate`]).
    pub snapshot_scrub_passes: u64,
    /// Snapshot files the scrubber found damaged (each logged with its file
    /// and offset; counted once per place).
    pub snapshot_scrub_damage: u64,
    /// Snapshot files the scrubber could not read (each logged; tried
    /// again next pass).
    pub snapshot_scrub_read_errors: u64,
}

/// What [`Shard::checkpoint`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointOutcome {
    /// The snapshot written, if the state changed since the last one.
    pub snapshot: Option<SnapshotMeta>,
    /// The journal's watermark afterwards.
    pub watermark: u64,
    /// Whether the watermark moved.
    pub watermark_advanced: bool,
}

/// The newest snapshot the shard relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnapshotPoint {
    pub watermark: u64,
    pub epoch: u64,
    /// `command_bytes_total` when it was frozen.
    pub command_bytes_total: u64,
}

struct Parked<M: StateMachine> {
    epoch: u64,
    command: M::Command,
    bytes: u64,
    reply: oneshot::Sender<Outcome<M>>,
}

pub(crate) struct Progress<M: StateMachine> {
    /// The last op applied.
    pub applied: OpId,
    /// Durable ops waiting for an earlier op to be applied.
    parked: BTreeMap<u64, Parked<M>>,
    /// Bytes of commands applied since open (replay included).
    pub command_bytes_total: u64,
    pub snapshot: Option<SnapshotPoint>,
    /// Watermark of the snapshot before `snapshot`, if any.
    pub previous_snapshot: Option<u64>,
    /// Serving, checkpointing, resetting, closing or poisoned: every
    /// transition is a method of [`Lifecycle`].
    lifecycle: Lifecycle,
    /// Submits currently waiting for ring slots.
    ring_waiters: u64,
    /// Set by a reset: the next op must be `op + 1`, at `epoch` or later.
    pub reset_floor: Option<OpId>,
    /// Submits between their start and their outcome.
    submits_in_flight: u64,
    pub stats: ShardStats,
}

pub(crate) struct Inner<M: StateMachine, S: Storage> {
    pub config: ShardConfig,
    pub storage: S,
    pub domain: Cell<Uuid>,
    pub journal: Journal<S>,
    pub snapshots: SnapshotStore<S>,
    pub machine: RefCell<M>,
    pub progress: RefCell<Progress<M>>,
    recovery: ShardRecoveryReport,
    /// Notified when a checkpoint may be due, and at close.
    checkpoint_wanted: Event,
    /// Notified when the watermark moved or the shard failed.
    slots_freed: Event,
    /// Notified when a checkpoint ends.
    checkpoint_ended: Event,
    compaction_task: RefCell<Option<glommio::Task<()>>>,
    /// Object storage, if configured: the cache, the store, the upload
    /// task's state.
    pub objects: Option<ShardObjects>,
    pub metrics: ShardMetrics,
    metrics_task: RefCell<Option<glommio::Task<()>>>,
    /// The snapshot scrubber, if it runs.
    scrub_task: RefCell<Option<glommio::Task<()>>>,
    /// `<dir>/lock`, held until the shard is closed.
    lock: RefCell<Option<DirLock>>,
}

/// One shard. Cheap to clone (clones are the same shard); `!Send`: it lives
/// on the glommio reactor that opened it.
pub struct Shard<M: StateMachine, S: Storage = DmaStorage> {
    pub(crate) inner: Rc<Inner<M, S>>,
}

impl<M: StateMachine, S: Storage> Clone for Shard<M, S> {
    fn clone(&self) -> Self {
        Shard {
            inner: self.inner.clone(),
        }
    }
}

impl<M: StateMachine> Shard<M, DmaStorage> {
    /// A builder for the shard in `dir` (created if missing).
    pub fn builder(dir: impl Into<PathBuf>) -> ShardBuilder<M, DmaStorage> {
        ShardBuilder::new(dir.into())
    }
}

impl<M: StateMachine, S: Storage> Shard<M, S> {
    /// Opens the shard `config` describes inside the calling glommio
    /// executor: recovers it and starts its compaction task (the same as
    /// [`ShardBuilder::open`]). No threads are started; with an object store
    /// the requests go to its one I/O thread.
    pub async fn open(config: ShardBuilder<M, S>) -> Result<Shard<M, S>> {
        Shard::open_with(config).await
    }

    pub(crate) async fn open_with(builder: ShardBuilder<M, S>) -> Result<Shard<M, S>> {
        builder.validate_early()?;
        let mut recovered = recover(builder).await?;
        let objects = match recovered.object_store.take() {
            Some(settings) => {
                match ShardObjects::open(settings, &recovered.config.dir, recovered.domain).await {
                    Ok(objects) => Some(objects),
                    Err(e) => {
                        let _ = recovered.journal.close().await;
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        let automatic = recovered.config.automatic_checkpoints;
        let metrics = ShardMetrics::new(&recovered.metrics_label).with_recovery(
            &recovered.metrics_label,
            &recovered.report.journal,
            recovered.report.skipped_snapshots.len(),
        );
        let inner = Rc::new(Inner {
            config: recovered.config,
            storage: recovered.storage,
            domain: Cell::new(recovered.domain),
            journal: recovered.journal,
            snapshots: recovered.snapshots,
            machine: RefCell::new(recovered.machine),
            progress: RefCell::new(Progress {
                applied: recovered.applied,
                parked: BTreeMap::new(),
                command_bytes_total: recovered.report.replayed_bytes,
                snapshot: recovered.snapshot,
                previous_snapshot: recovered.previous_snapshot,
                lifecycle: Lifecycle::Serving,
                ring_waiters: 0,
                reset_floor: None,
                submits_in_flight: 0,
                stats: ShardStats::default(),
            }),
            recovery: recovered.report,
            checkpoint_wanted: Event::new(),
            slots_freed: Event::new(),
            checkpoint_ended: Event::new(),
            compaction_task: RefCell::new(None),
            objects,
            metrics,
            metrics_task: RefCell::new(None),
            scrub_task: RefCell::new(None),
            lock: RefCell::new(recovered.lock),
        });
        let task = glommio::spawn_local(publish_metrics(Rc::downgrade(&inner)));
        *inner.metrics_task.borrow_mut() = Some(task);
        if let Some(rate) = inner.config.scrub_bytes_per_second {
            let task = glommio::spawn_local(scrub_snapshots(Rc::downgrade(&inner), rate));
            *inner.scrub_task.borrow_mut() = Some(task);
        }
        if automatic {
            let task = glommio::spawn_local(run_compaction(Rc::downgrade(&inner)));
            *inner.compaction_task.borrow_mut() = Some(task);
        }
        if let Some(objects) = &inner.objects {
            objects.set_task(glommio::spawn_local(run_uploads(Rc::downgrade(&inner))));
        }
        Ok(Shard { inner })
    }

    /// Submits a command. Resolves once it is durable and applied, with the
    /// state machine's reply or rejection.
    ///
    /// Errors: [`Error::Backpressure`] if the ring stays full past
    /// `ring_full_wait_max`, and [`Error::CommandEncode`] or a too-large
    /// entry, all before the command reaches the journal (it is not
    /// applied). A journal failure after the command got its op poisons the
    /// shard; the command's fate is then unknown until the shard is
    /// reopened (it is applied then if its entry was durable).
    ///
    /// Cancel-safe: dropping the future once the command has its op does not
    /// stop it from being applied in order (a background task finishes it),
    /// so later submits are not held up.
    pub async fn submit(&self, command: M::Command) -> Result<Outcome<M>> {
        self.submit_at(command).await.map(|(_, outcome)| outcome)
    }

    /// [`Shard::submit`], also returning the op and epoch the command was
    /// applied at.
    pub async fn submit_at(&self, command: M::Command) -> Result<(OpId, Outcome<M>)> {
        self.usable()?;
        let started = Instant::now();
        let _counted = InFlight::enter(self);
        let payload = encode(&command).map_err(|e| Error::CommandEncode(Arc::new(e)))?;
        let inner = &*self.inner;
        let mut waited_since: Option<Instant> = None;
        let queued = loop {
            match inner.journal.queue_append(&payload).await {
                Ok(queued) => break queued,
                Err(ringstore_journal::Error::RingFull { .. }) => {
                    let since = *waited_since.get_or_insert_with(Instant::now);
                    self.wait_for_slots(since).await?;
                }
                // Refused before it got an op: nothing to undo.
                Err(e @ ringstore_journal::Error::EntryTooLarge { .. }) => return Err(e.into()),
                // Anything else may have come after an op was handed out
                // (a batch failed at rollover on a full disk): a gap the
                // shard cannot apply past.
                Err(e) => return Err(self.poison(Error::Journal(e))),
            }
        };
        // From here the command has its op and must be applied in order,
        // whether or not this future is still there to see it.
        let mut orphan = OrphanGuard {
            shard: self,
            pending: Some((queued, command, payload.len() as u64)),
        };
        let durable = match &orphan.pending {
            Some((queued, _, _)) => queued.durable().await,
            None => unreachable!("set above"),
        };
        let (queued, command, bytes) = orphan.pending.take().expect("set above");
        if let Err(e) = durable {
            return Err(self.poison(Error::Journal(e)));
        }
        let at = OpId {
            op: queued.op(),
            epoch: queued.epoch(),
        };
        let outcome = self.apply_durable(at.op, at.epoch, command, bytes).await?;
        self.inner.metrics.record_ack(started.elapsed());
        Ok((at, outcome))
    }

    async fn wait_for_slots(&self, since: Instant) -> Result<()> {
        let inner = &*self.inner;
        let waited = since.elapsed();
        let wait_max = inner.config.ring_full_wait_max;
        if waited >= wait_max {
            return Err(Error::Backpressure { waited });
        }
        let listener = inner.slots_freed.listen();
        {
            let mut progress = inner.progress.borrow_mut();
            progress.stats.ring_full_waits += 1;
            progress.ring_waiters += 1;
        }
        inner.checkpoint_wanted.notify(usize::MAX);
        // Slots may have been freed between the append and the listen; then
        // retry after a short pause rather than at once (a slot can read as
        // free while the next op's slot is still taken).
        let pause = if inner.journal.remaining_capacity() == 0 {
            wait_max - waited
        } else {
            RING_RECHECK_PAUSE.min(wait_max - waited)
        };
        let timer = glommio::timer::Timer::new(pause);
        futures_lite::future::or(listener, async {
            timer.await;
        })
        .await;
        inner.progress.borrow_mut().ring_waiters -= 1;
        self.usable()
    }

    /// Applies op `op` once every earlier op is applied; returns its
    /// outcome.
    async fn apply_durable(
        &self,
        op: u64,
        epoch: u64,
        command: M::Command,
        bytes: u64,
    ) -> Result<Outcome<M>> {
        let mut command = Some(command);
        let receiver = {
            let mut progress = self.inner.progress.borrow_mut();
            if let Some(floor) = progress.reset_floor {
                // Every op after a reset numbers above it, in a later epoch.
                if op <= floor.op || epoch < floor.epoch {
                    drop(progress);
                    return Err(self.poison(Error::ResetCheck {
                        op,
                        epoch,
                        expected_op: floor.op + 1,
                        expected_epoch: floor.epoch,
                    }));
                }
                if op == floor.op + 1 {
                    progress.reset_floor = None;
                }
            }
            assert!(op > progress.applied.op, "op {op} applied twice");
            if op == progress.applied.op + 1 {
                None
            } else {
                let (reply, receiver) = oneshot::channel();
                progress.parked.insert(
                    op,
                    Parked {
                        epoch,
                        command: command.take().expect("not parked yet"),
                        bytes,
                        reply,
                    },
                );
                Some(receiver)
            }
        };
        match receiver {
            None => {
                let command = command.expect("not parked");
                let outcome = self.apply_one(OpId { op, epoch }, command, bytes);
                self.apply_parked();
                Ok(outcome)
            }
            Some(receiver) => match receiver.await {
                Ok(outcome) => Ok(outcome),
                Err(_) => Err(self.poisoned_error()),
            },
        }
    }

    fn apply_one(&self, at: OpId, command: M::Command, bytes: u64) -> Outcome<M> {
        let outcome = self.inner.machine.borrow_mut().apply(at, command);
        self.inner.metrics.record_applied(outcome.is_err());
        let due = {
            let mut progress = self.inner.progress.borrow_mut();
            progress.applied = at;
            progress.command_bytes_total += bytes;
            progress.stats.commands_applied += 1;
            progress.stats.command_bytes += bytes;
            progress.stats.commands_rejected += u64::from(outcome.is_err());
            self.inner.checkpoint_due(&progress)
        };
        if due {
            self.inner.checkpoint_wanted.notify(1);
        }
        outcome
    }

    fn apply_parked(&self) {
        loop {
            let next = {
                let mut progress = self.inner.progress.borrow_mut();
                let next_op = progress.applied.op + 1;
                progress.parked.remove(&next_op).map(|p| (next_op, p))
            };
            let Some((op, parked)) = next else {
                return;
            };
            let outcome = self.apply_one(
                OpId {
                    op,
                    epoch: parked.epoch,
                },
                parked.command,
                parked.bytes,
            );
            // The submitter may have gone away; the command is applied anyway.
            let _ = parked.reply.send(outcome);
        }
    }

    /// Reads the state: `read` runs against the state with every command
    /// acknowledged so far applied.
    pub fn read<T>(&self, read: impl FnOnce(&M) -> T) -> T {
        read(&self.inner.machine.borrow())
    }

    /// Takes a checkpoint now: a snapshot of the applied state (unless one
    /// at this op exists), then the watermark advance it allows. Waits for a
    /// running checkpoint first. Submits go on meanwhile.
    pub async fn checkpoint(&self) -> Result<CheckpointOutcome> {
        loop {
            let listener = {
                let mut progress = self.inner.progress.borrow_mut();
                if let Some(cause) = progress.lifecycle.poisoned() {
                    return Err(Error::Poisoned {
                        cause: Box::new(cause.clone()),
                    });
                }
                if progress.lifecycle.hold_snapshots() {
                    break;
                }
                self.inner.checkpoint_ended.listen()
            };
            listener.await;
        }
        let running = CheckpointGuard { shard: self };
        let started = Instant::now();
        let result = self.checkpoint_exclusive().await;
        std::mem::forget(running);
        let due = {
            let mut progress = self.inner.progress.borrow_mut();
            progress.lifecycle.release_snapshots();
            match &result {
                Ok(outcome) => {
                    if let Some(meta) = &outcome.snapshot {
                        progress.stats.checkpoints += 1;
                        progress.stats.snapshot_bytes_written += meta.file_bytes;
                        self.inner
                            .metrics
                            .record_checkpoint(Some(started.elapsed()));
                    }
                }
                Err(_) => {
                    progress.stats.checkpoint_failures += 1;
                    self.inner.metrics.record_checkpoint(None);
                }
            }
            self.inner.checkpoint_due(&progress)
        };
        self.inner.checkpoint_ended.notify(usize::MAX);
        // Applies during the checkpoint did not ask for another one.
        if due {
            self.inner.checkpoint_wanted.notify(1);
        }
        result
    }

    async fn checkpoint_exclusive(&self) -> Result<CheckpointOutcome> {
        let inner = &*self.inner;
        let (at, bytes_total, last) = {
            let progress = inner.progress.borrow();
            (
                progress.applied,
                progress.command_bytes_total,
                progress.snapshot,
            )
        };
        let mut written = None;
        if at.op > last.map_or(0, |s| s.watermark) {
            let epoch = inner.journal.epoch().max(at.epoch);
            let frozen = inner.machine.borrow().freeze();
            let started = Instant::now();
            let persisted = inner
                .snapshots
                .persist_paced(frozen, at.op, epoch, inner.domain.get(), &|| {
                    inner.progress.borrow().submits_in_flight > 0
                })
                .await;
            let meta = match persisted {
                Ok(meta) => meta,
                Err(e) => {
                    if let Error::Persist { stage, .. } = &e {
                        if !stage.retry_is_safe() {
                            return Err(self.poison(e));
                        }
                    }
                    return Err(e);
                }
            };
            {
                let mut progress = inner.progress.borrow_mut();
                progress.stats.checkpoint_time += started.elapsed();
                progress.previous_snapshot = last.map(|s| s.watermark);
                progress.snapshot = Some(SnapshotPoint {
                    watermark: at.op,
                    epoch,
                    command_bytes_total: bytes_total,
                });
            }
            if let Some(objects) = &inner.objects {
                objects.snapshot_written(at.op);
            }
            written = Some(meta);
        }
        let (before, target) = self.advance_watermark_and_prune().await?;
        Ok(CheckpointOutcome {
            snapshot: written,
            watermark: inner.journal.watermark(),
            watermark_advanced: target > before,
        })
    }

    /// Moves the watermark as far as [`Inner::watermark_target`] allows,
    /// then prunes old local snapshots. Returns the watermark before and
    /// the target. Only with checkpoints excluded (a checkpoint running, or
    /// [`Shard::exclude_checkpoints`]).
    pub(crate) async fn advance_watermark_and_prune(&self) -> Result<(u64, u64)> {
        let inner = &*self.inner;
        let before = inner.journal.watermark();
        let target = inner.watermark_target();
        if target > before {
            if let Err(e) = inner.journal.advance_watermark(target).await {
                return Err(self.journal_failed(e));
            }
            inner.slots_freed.notify(usize::MAX);
        }
        self.prune().await;
        Ok((before, target))
    }

    /// Removes snapshot generations beyond the configured count. A failure
    /// is counted and retried at the next checkpoint: the extra files cost
    /// only space.
    pub(crate) async fn prune(&self) {
        let inner = &*self.inner;
        // Recovery can use any snapshot at or above the journal's watermark
        // (the previous generation among them): none of those goes.
        let protect_from = inner.journal.watermark();
        match inner
            .snapshots
            .prune(inner.config.snapshot_generations, protect_from)
            .await
        {
            Ok(removed) => inner.progress.borrow_mut().stats.snapshots_pruned += removed as u64,
            Err(e) => {
                tracing::warn!(error = %e, "removing old snapshots failed; retrying at the next checkpoint");
                inner.progress.borrow_mut().stats.prune_failures += 1;
            }
        }
    }

    /// The shard's domain.
    pub fn domain(&self) -> Uuid {
        self.inner.domain.get()
    }

    /// The last op applied.
    pub fn applied(&self) -> OpId {
        self.inner.progress.borrow().applied
    }

    /// The op of the newest snapshot the shard relies on (0: none).
    pub fn snapshot_watermark(&self) -> u64 {
        self.inner
            .progress
            .borrow()
            .snapshot
            .map_or(0, |s| s.watermark)
    }

    /// The shard's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.config.dir
    }

    /// The journal (for inspection: appends must go through
    /// [`Shard::submit`]).
    pub fn journal(&self) -> &Journal<S> {
        &self.inner.journal
    }

    /// The snapshot directory.
    pub fn snapshots(&self) -> &SnapshotStore<S> {
        &self.inner.snapshots
    }

    /// Counters since open, and the ack latency percentiles. Also
    /// publishes the journal's counters to the metrics facade.
    pub fn stats(&self) -> ShardStats {
        self.inner.publish_metrics();
        let mut stats = self.inner.progress.borrow().stats;
        stats.ack_latency = self.inner.metrics.ack_latency();
        stats.journal = self.inner.journal.stats();
        stats.ring_slots = self.inner.journal.config().slot_count;
        stats.ring_slots_used = stats.ring_slots - self.inner.journal.remaining_capacity();
        stats
    }

    /// A one-line summary of the shard's progress, for diagnostics.
    pub fn describe(&self) -> String {
        let progress = self.inner.progress.borrow();
        let journal = &self.inner.journal;
        format!(
            "applied {:?}, journal next op {}, watermark {}, free slots {}, snapshot {:?}, \
             previous snapshot {:?}, uploaded snapshot {:?}, ring waiters {}, parked ops {:?}, \
             checkpointing {}, poisoned {}",
            progress.applied,
            journal.next_op(),
            journal.watermark(),
            journal.remaining_capacity(),
            progress.snapshot.map(|s| s.watermark),
            progress.previous_snapshot,
            self.inner.objects.as_ref().map(ShardObjects::uploaded),
            progress.ring_waiters,
            progress.parked.keys().collect::<Vec<_>>(),
            progress.lifecycle.snapshots_held(),
            progress.lifecycle.poisoned().is_some(),
        )
    }

    /// What recovery found and did when the shard was opened.
    pub fn recovery_report(&self) -> &ShardRecoveryReport {
        &self.inner.recovery
    }

    /// The validated settings.
    pub fn config(&self) -> &ShardConfig {
        &self.inner.config
    }

    /// Stops the compaction task (letting a running checkpoint finish),
    /// then closes the journal, which writes what is queued. Submits that
    /// were acknowledged are durable; later calls fail with
    /// [`Error::Closed`].
    pub async fn close(&self) -> Result<()> {
        self.inner.progress.borrow_mut().lifecycle.begin_close();
        self.inner.checkpoint_wanted.notify(usize::MAX);
        self.inner.slots_freed.notify(usize::MAX);
        if let Some(objects) = &self.inner.objects {
            // An upload in flight is abandoned (the next open uploads the
            // newest snapshot again).
            objects.begin_close();
        }
        let task = self.inner.compaction_task.borrow_mut().take();
        if let Some(task) = task {
            task.await;
        }
        let objects_closed = match &self.inner.objects {
            Some(objects) => objects.close().await,
            None => Ok(()),
        };
        // Dropping the publisher's and the scrubber's handles cancels them.
        drop(self.inner.metrics_task.borrow_mut().take());
        drop(self.inner.scrub_task.borrow_mut().take());
        let closed = self
            .inner
            .journal
            .close()
            .await
            .map_err(Error::from)
            .and(objects_closed);
        self.inner.publish_metrics();
        // Another process may open the directory from here on.
        drop(self.inner.lock.borrow_mut().take());
        closed
    }

    pub(crate) fn usable(&self) -> Result<()> {
        match self.inner.progress.borrow().lifecycle.refusal() {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        }
    }

    /// Records the first failure that makes the shard's state
    /// untrustworthy; parked submitters and ring waiters fail.
    pub(crate) fn poison(&self, error: Error) -> Error {
        let parked = {
            let mut progress = self.inner.progress.borrow_mut();
            if progress.lifecycle.poison(&error) {
                tracing::error!(%error, dir = %self.inner.config.dir.display(), "shard poisoned");
            }
            std::mem::take(&mut progress.parked)
        };
        // Dropping the senders fails the parked submitters.
        drop(parked);
        self.inner.slots_freed.notify(usize::MAX);
        self.inner.checkpoint_wanted.notify(usize::MAX);
        error
    }

    pub(crate) fn journal_failed(&self, error: ringstore_journal::Error) -> Error {
        if self.inner.journal.is_poisoned() || error.is_poisoned() {
            self.poison(Error::Journal(error))
        } else {
            Error::Journal(error)
        }
    }

    fn poisoned_error(&self) -> Error {
        match self.inner.progress.borrow().lifecycle.poisoned() {
            Some(cause) => Error::Poisoned {
                cause: Box::new(cause.clone()),
            },
            None => Error::Closed,
        }
    }

    pub(crate) fn is_poisoned_or_closing(&self) -> bool {
        self.inner
            .progress
            .borrow()
            .lifecycle
            .is_poisoned_or_closing()
    }

    /// Refuses submits (and other resets) from now on, or fails with the
    /// refusal the shard gives now. [`Shard::end_reset`] undoes it.
    pub(crate) fn begin_reset(&self) -> Result<()> {
        self.inner.progress.borrow_mut().lifecycle.begin_reset()
    }

    pub(crate) fn end_reset(&self) {
        self.inner.progress.borrow_mut().lifecycle.end_reset();
    }

    pub(crate) fn submits_in_flight(&self) -> u64 {
        self.inner.progress.borrow().submits_in_flight
    }

    /// Waits until no checkpoint runs and marks one running, so a reset
    /// has the shard's snapshots to itself.
    pub(crate) async fn exclude_checkpoints(&self) {
        loop {
            let listener = {
                let mut progress = self.inner.progress.borrow_mut();
                if progress.lifecycle.hold_snapshots() {
                    return;
                }
                self.inner.checkpoint_ended.listen()
            };
            listener.await;
        }
    }

    pub(crate) fn allow_checkpoints(&self) {
        self.inner
            .progress
            .borrow_mut()
            .lifecycle
            .release_snapshots();
        self.inner.checkpoint_ended.notify(usize::MAX);
    }

    pub(crate) fn notify_slots_freed(&self) {
        self.inner.slots_freed.notify(usize::MAX);
    }
}

impl<M: StateMachine, S: Storage> Inner<M, S> {
    fn publish_metrics(&self) {
        let slots = self.journal.config().slot_count;
        let used = slots - self.journal.remaining_capacity();
        self.metrics.publish(&self.journal.stats(), used, slots);
    }

    /// Whether the compaction task should checkpoint now.
    fn checkpoint_due(&self, progress: &Progress<M>) -> bool {
        if progress.lifecycle.snapshots_held() || progress.lifecycle.poisoned().is_some() {
            return false;
        }
        let last = progress.snapshot;
        let ops_since = progress.applied.op - last.map_or(0, |s| s.watermark);
        let bytes_since = progress.command_bytes_total - last.map_or(0, |s| s.command_bytes_total);
        let journal_watermark = self.journal.watermark();
        let newest = last.map_or(0, |s| s.watermark);
        let ring_pressure = progress.ring_waiters > 0
            || self.journal.remaining_capacity() < self.config.ring_free_slots_min;
        let frees_slots = match self.upload_gate() {
            // A new snapshot frees nothing until it is uploaded: under
            // pressure take one only once the previous one is up (else every
            // op applied while the store is down would write a snapshot).
            Some(uploaded) => {
                (ops_since > 0 && uploaded >= newest) || uploaded.min(newest) > journal_watermark
            }
            None => ops_since > 0 || newest > journal_watermark,
        };
        ops_since >= self.config.checkpoint_ops_max
            || bytes_since >= self.config.checkpoint_bytes_max
            || (ring_pressure && frees_slots)
    }

    /// With [`UploadMode::BeforeCompaction`](crate::object_store::UploadMode):
    /// the newest uploaded snapshot, which the watermark may not pass.
    fn upload_gate(&self) -> Option<u64> {
        self.objects.as_ref().and_then(ShardObjects::gate)
    }

    /// Where the watermark may go after the newest snapshot: the previous
    /// snapshot (so a damaged newest one can be replaced by it plus the
    /// journal) unless that leaves the ring short, then the newest; and,
    /// while uploads gate compaction, no further than the newest uploaded
    /// snapshot. Never below where it is.
    pub(crate) fn watermark_target(&self) -> u64 {
        let progress = self.progress.borrow();
        let current = self.journal.watermark();
        let Some(newest) = progress.snapshot.map(|s| s.watermark) else {
            return current;
        };
        let target = if !self.config.journal_keeps_previous_snapshot {
            newest
        } else {
            let previous = progress.previous_snapshot.unwrap_or(0).max(current);
            let freed_by_previous = previous - current;
            let free_after_previous = self.journal.remaining_capacity() + freed_by_previous;
            if free_after_previous >= self.config.ring_free_slots_min && progress.ring_waiters == 0
            {
                previous
            } else {
                newest
            }
        };
        // Every candidate above is a snapshot's op (or the current
        // watermark), and so is the uploaded one: the minimum is too.
        let target = match self.upload_gate() {
            Some(uploaded) => target.min(uploaded),
            None => target,
        };
        target.max(current)
    }
}

/// The compaction task: checkpoints whenever one is due, backing off after
/// failures, until the shard closes or is poisoned.
async fn run_compaction<M: StateMachine, S: Storage>(inner: Weak<Inner<M, S>>) {
    let mut backoff = crate::config::CHECKPOINT_RETRY_MIN;
    loop {
        let listener = {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let progress = inner.progress.borrow();
            if progress.lifecycle.is_poisoned_or_closing() {
                return;
            }
            if inner.checkpoint_due(&progress) {
                None
            } else {
                Some(inner.checkpoint_wanted.listen())
            }
        };
        if let Some(listener) = listener {
            listener.await;
            continue;
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let shard = Shard { inner };
        match shard.checkpoint().await {
            Ok(outcome) => {
                backoff = crate::config::CHECKPOINT_RETRY_MIN;
                if outcome.snapshot.is_none() && !outcome.watermark_advanced {
                    // Nothing to do until more ops arrive (unless some did
                    // while the checkpoint ran).
                    let listener = shard.inner.checkpoint_wanted.listen();
                    let ops_arrived = shard.applied().op > shard.snapshot_watermark();
                    let stop = shard.is_poisoned_or_closing();
                    drop(shard);
                    if stop {
                        return;
                    }
                    if !ops_arrived {
                        listener.await;
                    }
                }
            }
            Err(e) => {
                if shard.is_poisoned_or_closing() {
                    return;
                }
                tracing::warn!(error = %e, retry_in = ?backoff, "checkpoint failed");
                drop(shard);
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(crate::config::CHECKPOINT_RETRY_MAX);
            }
        }
    }
}

/// Counts a submit (or an orphaned apply) in `submits_in_flight` for as
/// long as it lives, however it ends.
struct InFlight<'a, M: StateMachine, S: Storage> {
    shard: &'a Shard<M, S>,
}

impl<'a, M: StateMachine, S: Storage> InFlight<'a, M, S> {
    fn enter(shard: &'a Shard<M, S>) -> Self {
        shard.inner.progress.borrow_mut().submits_in_flight += 1;
        InFlight { shard }
    }
}

impl<M: StateMachine, S: Storage> Drop for InFlight<'_, M, S> {
    fn drop(&mut self) {
        self.shard.inner.progress.borrow_mut().submits_in_flight -= 1;
    }
}

/// Holds a queued command while its submit waits for durability. If the
/// submit is dropped in that window, the command still gets applied in
/// order: a background task waits for it and applies it.
struct OrphanGuard<'a, M: StateMachine, S: Storage> {
    shard: &'a Shard<M, S>,
    pending: Option<(ringstore_journal::QueuedAppend, M::Command, u64)>,
}

impl<M: StateMachine, S: Storage> Drop for OrphanGuard<'_, M, S> {
    fn drop(&mut self) {
        let Some((queued, command, bytes)) = self.pending.take() else {
            return;
        };
        let shard = self.shard.clone();
        glommio::spawn_local(async move {
            let _counted = InFlight::enter(&shard);
            match queued.durable().await {
                Ok(()) => {
                    let _ = shard
                        .apply_durable(queued.op(), queued.epoch(), command, bytes)
                        .await;
                }
                Err(e) => {
                    shard.poison(Error::Journal(e));
                }
            }
        })
        .detach();
    }
}

/// Clears the `checkpointing` mark if a checkpoint is dropped midway, so
/// later checkpoints (and resets) are not locked out.
struct CheckpointGuard<'a, M: StateMachine, S: Storage> {
    shard: &'a Shard<M, S>,
}

impl<M: StateMachine, S: Storage> Drop for CheckpointGuard<'_, M, S> {
    fn drop(&mut self) {
        self.shard
            .inner
            .progress
            .borrow_mut()
            .lifecycle
            .release_snapshots();
        self.shard.inner.checkpoint_ended.notify(usize::MAX);
    }
}

/// Pause between two passes of the snapshot scrubber.
const SNAPSHOT_SCRUB_PASS_PAUSE: Duration = Duration::from_millis(100);

/// The snapshot scrubber: every generation, every byte, pass after pass, at
/// `rate` (see [`crate::ShardBuilder::scrub_rate`]).
async fn scrub_snapshots<M: StateMachine, S: Storage>(
    inner: Weak<Inner<M, S>>,
    rate: std::num::NonZeroU64,
) {
    let mut pacer = ringstore_journal::pace::Pacer::new(rate);
    let mut reported: Vec<(PathBuf, u64)> = Vec::new();
    let open = || {
        inner
            .upgrade()
            .is_some_and(|inner| !inner.progress.borrow().lifecycle.is_closing())
    };
    loop {
        let (storage, domain, generations) = match inner.upgrade() {
            Some(inner) if !inner.progress.borrow().lifecycle.is_closing() => (
                inner.storage.clone(),
                inner.domain.get(),
                inner.snapshots.generations(),
            ),
            _ => return,
        };
        let generations = match generations {
            Ok(generations) => generations,
            Err(error) => {
                tracing::warn!(%error, "the snapshot scrubber could not list the snapshots");
                Vec::new()
            }
        };
        for (_, path) in generations {
            let scrubbed =
                crate::snapshot::scrub_snapshot(&storage, &path, Some(domain), &mut pacer, &open)
                    .await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            match scrubbed {
                Ok(None) => {}
                Ok(Some(damage)) => {
                    if reported
                        .iter()
                        .any(|(p, o)| *p == damage.path && *o == damage.offset)
                    {
                        continue;
                    }
                    tracing::error!(
                        path = %damage.path.display(),
                        offset = damage.offset,
                        reason = %damage.reason(),
                        "the snapshot scrubber found damage: an open passes over this snapshot \
                         and an upload refuses it"
                    );
                    reported.push((damage.path, damage.offset));
                    inner.progress.borrow_mut().stats.snapshot_scrub_damage += 1;
                    inner.metrics.record_snapshot_scrub_damage();
                }
                Err(error) => {
                    tracing::warn!(
                        path = %path.display(),
                        %error,
                        "the snapshot scrubber could not read a snapshot; it tries again next pass"
                    );
                    inner.progress.borrow_mut().stats.snapshot_scrub_read_errors += 1;
                }
            }
        }
        match inner.upgrade() {
            Some(inner) => {
                inner.progress.borrow_mut().stats.snapshot_scrub_passes += 1;
                inner.metrics.record_snapshot_scrub_pass();
            }
            None => return,
        }
        glommio::timer::sleep(SNAPSHOT_SCRUB_PASS_PAUSE).await;
    }
}

/// Publishes the journal's counters every [`METRICS_PUBLISH_INTERVAL`] until
/// the shard closes (its handle is dropped) or goes away.
async fn publish_metrics<M: StateMachine, S: Storage>(inner: Weak<Inner<M, S>>) {
    loop {
        glommio::timer::sleep(METRICS_PUBLISH_INTERVAL).await;
        match inner.upgrade() {
            Some(inner) => inner.publish_metrics(),
            None => return,
        }
    }
}
