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
//! # Extensions
//!
//! The shard is the core; object-store upload, cold restore and reset are
//! extensions built on it. They use the shard's public methods, the
//! `pub(crate)` methods under "For extensions" below, and the hook trait
//! `ShardHooks`: the core tells an extension that a snapshot was
//! persisted, that the shard joined another domain, that it is closing;
//! an extension tells the core how far the watermark may advance
//! (`ShardHooks::watermark_limit`). The core never names an extension:
//! the builder's open attaches them. The object-store upload is one: in
//! its default mode the watermark waits for the upload (see
//! `object_store`).
//!
//! The shard's lifecycle (serving, checkpointing, resetting, closing,
//! poisoned) is one `Lifecycle` value; its transitions are in
//! `crate::lifecycle`.
//!
//! # State and `.await`
//!
//! The shard's mutable state lives in `RefCell`s that are borrowed only
//! between awaits (the crate denies `clippy::await_holding_refcell_ref`).

use crate::config::{ShardBuilder, ShardConfig};
use crate::error::{Error, Result};
use crate::layout::identity::{write_identity, Identity};
use crate::layout::lock::DirLock;
use crate::lifecycle::Lifecycle;
use crate::machine::{encode_into, OpId, StateMachine};
use crate::metrics::{LatencySummary, ShardMetrics, METRICS_PUBLISH_INTERVAL};
use crate::recovery::{Recovered, ShardRecoveryReport, SnapshotPoint};
use crate::snapshot::{Pacing, SnapshotDamage, SnapshotMeta, SnapshotStore};
use event_listener::Event;
use futures_channel::oneshot;
use ringstore_journal::storage::{DmaStorage, Storage};
use ringstore_journal::{Journal, JournalStats};
use std::{
    any::Any,
    cell::{Cell, RefCell},
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
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
    /// Snapshots uploaded to object storage (by the object-store extension).
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
    /// Newest snapshots the scrubber found damaged or unreadable that a
    /// checkpoint then replaced from the state in memory.
    pub damaged_snapshots_replaced: u64,
    /// Snapshot reads of the scrubber that failed (the file is tried again
    /// next pass). A block that fails every read is logged at error level
    /// with its offset, once per place; other failures as warnings.
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

/// What an extension hears from the shard, and how it holds the
/// watermark back. Hooks run on the shard's reactor and must not wait (an
/// extension spawns a task for that, as the upload does).
/// [`ShardHooks::watermark_limit`] and [`ShardHooks::describe`] are asked
/// while the shard's state is borrowed and read only the extension's own;
/// the other hooks are called with none of the shard's cells borrowed and
/// may call its methods.
pub(crate) trait ShardHooks<M: StateMachine, S: Storage> {
    /// The shard is open: start background work here. A task must hold
    /// only a [`WeakShard`], so that dropping the shard ends it.
    fn opened(&self, shard: &Shard<M, S>);

    /// A snapshot was persisted and is now the shard's newest: by a
    /// checkpoint, or by a reset (at the op its numbering restarts above).
    fn snapshot_persisted(&self, snapshot: &SnapshotMeta);

    /// The highest op the journal's watermark may advance to for this
    /// extension (`None`: no limit). It must be 0 or a snapshot's op: the
    /// watermark never stops between two snapshots. The core takes the
    /// smallest limit of all extensions; when an extension raises its
    /// limit it asks the core to advance
    /// ([`Shard::advance_watermark_and_prune`]).
    fn watermark_limit(&self) -> Option<u64>;

    /// The op of a snapshot file the extension is reading and may give a
    /// second name (`None`: none). A prune removes that file whole instead
    /// of shrinking it in steps: a name made from a descriptor opened
    /// before the prune's rename would otherwise name a shrinking file.
    fn snapshot_in_use(&self) -> Option<u64>;

    /// The shard joined `domain` (a reset into an empty shard). A failure
    /// fails the reset.
    fn domain_changed(&self, domain: Uuid) -> Result<()>;

    /// A line for [`Shard::describe`].
    fn describe(&self) -> String;

    /// A close began: stop background work (a request in flight may be
    /// abandoned).
    fn begin_close(&self);

    /// After the compaction task stopped: wait for background work to end
    /// and release what the extension holds. Its error is the close's
    /// (after the journal's).
    fn close(&self) -> Pin<Box<dyn Future<Output = Result<()>> + '_>>;

    /// For [`Shard::hook`]: the extension's own state behind the trait.
    fn as_any(&self) -> &dyn Any;
}

/// A handle that does not keep the shard open: background tasks of
/// extensions hold one and stop when [`WeakShard::upgrade`] fails.
pub(crate) struct WeakShard<M: StateMachine, S: Storage>(Weak<Inner<M, S>>);

impl<M: StateMachine, S: Storage> WeakShard<M, S> {
    /// The shard, if it is still there.
    pub(crate) fn upgrade(&self) -> Option<Shard<M, S>> {
        self.0.upgrade().map(|inner| Shard { inner })
    }
}

struct Parked<M: StateMachine> {
    epoch: u64,
    command: M::Command,
    bytes: u64,
    reply: oneshot::Sender<Outcome<M>>,
}

struct Progress<M: StateMachine> {
    /// The last op applied.
    applied: OpId,
    /// Durable ops waiting for an earlier op to be applied.
    parked: BTreeMap<u64, Parked<M>>,
    /// Bytes of commands applied since open (replay included).
    command_bytes_total: u64,
    snapshot: Option<SnapshotPoint>,
    /// Watermark of the snapshot before `snapshot`, if any.
    previous_snapshot: Option<u64>,
    /// `snapshot`'s op while the snapshot scrubber has found its file
    /// damaged or unreadable: the one an open loads, and the journal may
    /// be compacted up to it. The next checkpoint is due at once and
    /// writes a snapshot even with nothing applied since (at the same op:
    /// its rename replaces the damaged file), from the state in memory.
    newest_snapshot_damaged: Option<u64>,
    /// Serving, checkpointing, resetting, closing or poisoned: every
    /// transition is a method of [`Lifecycle`].
    lifecycle: Lifecycle,
    /// Submits currently waiting for ring slots.
    ring_waiters: u64,
    /// Set by a reset: the next op must be `op + 1`, at `epoch` or later.
    reset_floor: Option<OpId>,
    /// Submits between their start and their outcome.
    submits_in_flight: u64,
    stats: ShardStats,
}

/// Largest command-encoding buffer a shard keeps between submits, in
/// bytes: one large command does not pin its size for the shard's life.
const ENCODE_SCRATCH_KEPT_BYTES_MAX: usize = 64 << 10;

struct Inner<M: StateMachine, S: Storage> {
    config: ShardConfig,
    storage: S,
    domain: Cell<Uuid>,
    journal: Journal<S>,
    snapshots: SnapshotStore<S>,
    machine: RefCell<M>,
    progress: RefCell<Progress<M>>,
    recovery: ShardRecoveryReport,
    /// Notified when a checkpoint may be due, and at close.
    checkpoint_wanted: Event,
    /// Notified when the watermark moved or the shard failed.
    slots_freed: Event,
    /// Notified when a checkpoint ends.
    checkpoint_ended: Event,
    compaction_task: RefCell<Option<glommio::Task<()>>>,
    /// The extensions the builder attached (see [`ShardHooks`]).
    hooks: Vec<Rc<dyn ShardHooks<M, S>>>,
    metrics: ShardMetrics,
    metrics_task: RefCell<Option<glommio::Task<()>>>,
    /// The snapshot scrubber, if it runs.
    scrub_task: RefCell<Option<glommio::Task<()>>>,
    /// What the snapshot scrubber found, each place once, oldest first (at
    /// most [`SNAPSHOT_SCRUB_DAMAGE_KEPT`] of each kind): checksum damage,
    /// and blocks that failed every read (file, offset).
    snapshot_scrub_damage: RefCell<Vec<SnapshotDamage>>,
    snapshot_scrub_unreadable: RefCell<Vec<(PathBuf, u64)>>,
    /// `<dir>/lock`, held until the shard is closed.
    lock: RefCell<Option<DirLock<S::Lock>>>,
    /// A command's encoding, kept between submits (taken while in use: a
    /// submit that finds it taken encodes into a new one).
    encode_scratch: Cell<Vec<u8>>,
}

/// One shard. Cheap to clone (clones are the same shard); `!Send`: it lives
/// on the glommio reactor that opened it.
pub struct Shard<M: StateMachine, S: Storage = DmaStorage> {
    inner: Rc<Inner<M, S>>,
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

#[cfg(feature = "sim")]
impl<M: StateMachine, S: Storage> Shard<M, S> {
    /// The snapshot generations' files and the shard's domain, for the
    /// simulation's damage at rest (`crate::sim`).
    pub(crate) fn snapshot_files(&self) -> Result<(Vec<PathBuf>, uuid::Uuid)> {
        let files = self.inner.snapshots.generations()?;
        Ok((
            files.into_iter().map(|(_, path)| path).collect(),
            self.inner.domain.get(),
        ))
    }
}

impl<M: StateMachine, S: Storage> Shard<M, S> {
    /// Starts the shard recovery rebuilt, with the extensions the builder
    /// attached: the metrics publisher, the snapshot scrubber and the
    /// compaction task, then each extension's [`ShardHooks::opened`]. The
    /// builder's open (`open.rs`) calls it.
    pub(crate) fn start(
        recovered: Recovered<M, S>,
        hooks: Vec<Rc<dyn ShardHooks<M, S>>>,
    ) -> Shard<M, S> {
        let automatic = recovered.config.automatic_checkpoints;
        let metrics = ShardMetrics::new(&recovered.metrics_label)
            .with_recovery(
                &recovered.metrics_label,
                &recovered.report.journal,
                recovered.report.skipped_snapshots.len(),
            )
            .with_durability(
                &recovered.metrics_label,
                recovered.journal.durability_choice().chosen,
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
                newest_snapshot_damaged: None,
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
            hooks,
            metrics,
            metrics_task: RefCell::new(None),
            scrub_task: RefCell::new(None),
            snapshot_scrub_damage: RefCell::new(Vec::new()),
            snapshot_scrub_unreadable: RefCell::new(Vec::new()),
            lock: RefCell::new(recovered.lock),
            encode_scratch: Cell::new(Vec::new()),
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
        let shard = Shard { inner };
        for hook in &shard.inner.hooks {
            hook.opened(&shard);
        }
        shard
    }

    /// Submits a command. Resolves once it is durable and applied, with the
    /// state machine's reply or rejection.
    ///
    /// Errors: [`Error::Backpressure`] if the ring stays full past
    /// `ring_full_wait_max`, and [`Error::CommandEncode`] or a too-large
    /// entry, all before the command reaches the journal (it is not
    /// applied). A journal failure after the command got its op poisons the
    /// shard; the command's fate is then unknown until the shard is
    /// reopened (it is applied then if its entry was durable). So is the
    /// fate of every command still waiting to be applied when the shard is
    /// poisoned for another reason ([`Error::Poisoned`]): its entry may be
    /// durable, and then the reopen applies it.
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
        let started = Instant::now();
        let _counted = InFlight::enter(self);
        let queued = match self.queue_command(command, OnRingFull::Wait).await? {
            Queued::Queued(queued) => queued,
            Queued::RingFull(_) => unreachable!("a waiting queue_command waits"),
        };
        self.finish_command(queued, started).await
    }

    /// Submits `commands` in order, as if each were [`Shard::submit`]ted one
    /// after the other without waiting, and resolves once every one is
    /// durable and applied, with each command's result in order. They share
    /// group commits, and one task waits for them all instead of one per
    /// command: the runtime serves a batch of commands from another thread
    /// this way. A command refused before it got its op (too large, could
    /// not be encoded, backpressure) fails alone.
    ///
    /// Cancel-safe as [`Shard::submit`] is.
    pub async fn submit_many(
        &self,
        commands: impl IntoIterator<Item = M::Command>,
    ) -> Vec<Result<Outcome<M>>> {
        let mut outcomes = Vec::new();
        self.submit_each(commands, |outcome| outcomes.push(outcome))
            .await;
        outcomes
    }

    /// [`Shard::submit_many`], handing each command's result to `reply` in
    /// order as soon as it is known.
    pub(crate) async fn submit_each(
        &self,
        commands: impl IntoIterator<Item = M::Command>,
        mut reply: impl FnMut(Result<Outcome<M>>),
    ) {
        let started = Instant::now();
        let _counted = InFlight::enter(self);
        let mut queued = Vec::new();
        for mut command in commands {
            loop {
                // With commands of this batch queued, a full ring is not
                // waited on: they are applied first (slots come free only
                // once what holds them is applied and checkpointed, and
                // later ops, other submitters' too, apply after them).
                let on_full = if queued.is_empty() {
                    OnRingFull::Wait
                } else {
                    OnRingFull::Return
                };
                match self.queue_command(command, on_full).await {
                    Ok(Queued::Queued(guard)) => queued.push(Ok(guard)),
                    Ok(Queued::RingFull(back)) => {
                        self.finish_commands(&mut queued, &mut reply, started).await;
                        command = back;
                        continue;
                    }
                    Err(e) => queued.push(Err(e)),
                }
                break;
            }
        }
        self.finish_commands(&mut queued, &mut reply, started).await;
    }

    /// [`Shard::finish_command`] for each of `queued` in order, each result
    /// handed to `reply`.
    async fn finish_commands<'a>(
        &'a self,
        queued: &mut Vec<Result<OrphanGuard<'a, M, S>>>,
        reply: &mut impl FnMut(Result<Outcome<M>>),
        started: Instant,
    ) {
        for queued in queued.drain(..) {
            reply(match queued {
                Ok(queued) => self
                    .finish_command(queued, started)
                    .await
                    .map(|(_, outcome)| outcome),
                Err(e) => Err(e),
            });
        }
    }

    /// Encodes `command` and queues its entry in the journal: from here it
    /// has its op and will be applied in order, whatever becomes of the
    /// returned guard (dropping it hands the command to a task of its own).
    /// On a full ring it waits for slots, or with [`OnRingFull::Return`]
    /// hands the command back.
    async fn queue_command(
        &self,
        command: M::Command,
        on_full: OnRingFull,
    ) -> Result<Queued<'_, M, S>> {
        self.usable()?;
        let inner = &*self.inner;
        let mut payload = inner.encode_scratch.take();
        if let Err(e) = encode_into(&command, &mut payload) {
            return Err(Error::CommandEncode(Arc::new(e)));
        }
        let queued = self.queue_payload(&payload, on_full).await;
        let payload_len = payload.len() as u64;
        if payload.capacity() <= ENCODE_SCRATCH_KEPT_BYTES_MAX {
            inner.encode_scratch.set(payload);
        }
        Ok(match queued? {
            Some(queued) => Queued::Queued(OrphanGuard {
                shard: self,
                pending: Some((queued, command, payload_len)),
            }),
            None => Queued::RingFull(command),
        })
    }

    /// Queues an encoded command in the journal; `None` on a full ring
    /// with [`OnRingFull::Return`].
    async fn queue_payload(
        &self,
        payload: &[u8],
        on_full: OnRingFull,
    ) -> Result<Option<ringstore_journal::QueuedAppend>> {
        let mut waited_since: Option<Instant> = None;
        loop {
            match self.inner.journal.queue_append(payload).await {
                Ok(queued) => return Ok(Some(queued)),
                Err(ringstore_journal::Error::RingFull { .. }) => {
                    if on_full == OnRingFull::Return {
                        return Ok(None);
                    }
                    let since = *waited_since.get_or_insert_with(Instant::now);
                    self.wait_for_slots(since).await?;
                }
                // Refused before it got an op: nothing to undo.
                Err(e @ ringstore_journal::Error::EntryTooLarge { .. }) => return Err(e.into()),
                // The journal is closing (a close while this waited for
                // room): refused before it got an op, not a failure.
                Err(ringstore_journal::Error::Closed) => return Err(Error::Closed),
                // Anything else may have come after an op was handed out
                // (a batch failed at rollover on a full disk): a gap the
                // shard cannot apply past.
                Err(e) => return Err(self.poison(Error::Journal(e))),
            }
        }
    }

    /// Waits for a queued command's entry to be durable and applies it in
    /// order; records its ack latency from `started`.
    async fn finish_command(
        &self,
        mut orphan: OrphanGuard<'_, M, S>,
        started: Instant,
    ) -> Result<(OpId, Outcome<M>)> {
        let durable = match &orphan.pending {
            Some((queued, _, _)) => queued.durable().await,
            None => unreachable!("set by queue_command"),
        };
        let (queued, command, bytes) = orphan.pending.take().expect("set by queue_command");
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
        inner.progress.borrow_mut().stats.ring_full_waits += 1;
        // Counted for as long as it waits, however the wait ends (a caller
        // may drop the submit meanwhile): the count steers checkpoints and
        // the watermark while it is not zero.
        let _waiting = RingWaiter::enter(inner);
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
        drop(_waiting);
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
            } else if progress.lifecycle.poisoned().is_some() {
                // A poison dropped what was parked, so an op below this one
                // may never be applied: waiting could last for ever. Its
                // fate is unknown until the reopen, as the poison says.
                drop(progress);
                return Err(self.poisoned_error());
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
    /// running checkpoint first. Submits go on meanwhile. Once a close has
    /// begun it fails with [`Error::Closed`], writing nothing.
    pub async fn checkpoint(&self) -> Result<CheckpointOutcome> {
        loop {
            let listener = {
                let mut progress = self.inner.progress.borrow_mut();
                if let Some(cause) = progress.lifecycle.poisoned() {
                    return Err(Error::Poisoned {
                        cause: Box::new(cause.clone()),
                    });
                }
                if progress.lifecycle.is_closing() {
                    // The close may have passed its wait for the snapshot
                    // directory and be about to hand the directory on: a
                    // snapshot written now could land under the next
                    // owner's (as a reset refuses, see `reset`).
                    return Err(Error::Closed);
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
        let (at, bytes_total, last, last_damaged) = {
            let progress = inner.progress.borrow();
            let last_damaged = progress
                .snapshot
                .is_some_and(|s| progress.newest_snapshot_damaged == Some(s.watermark));
            (
                progress.applied,
                progress.command_bytes_total,
                progress.snapshot,
                last_damaged,
            )
        };
        let mut written = None;
        let last_op = last.map_or(0, |s| s.watermark);
        if at.op > last_op || last_damaged {
            let epoch = inner.journal.epoch().max(at.epoch);
            let frozen = inner.machine.borrow().freeze();
            let started = Instant::now();
            let busy = || self.checkpoint_should_give_way();
            let pacing = Pacing::new(&busy, inner.config.checkpoint_busy_write_percent);
            let persisted = inner
                .snapshots
                .persist_paced(frozen, at.op, epoch, inner.domain.get(), pacing)
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
                // Read again: the scrubber may have found the newest one
                // damaged while this checkpoint wrote.
                let last_damaged =
                    last.is_some_and(|s| progress.newest_snapshot_damaged == Some(s.watermark));
                if last_damaged {
                    // Rewritten at its op, the damaged file is gone; past
                    // it, no fallback either way: the watermark stays
                    // where it is (below the damaged one, if it was) until
                    // the next checkpoint makes this one the previous.
                    progress.newest_snapshot_damaged = None;
                    progress.stats.damaged_snapshots_replaced += 1;
                    if at.op > last_op {
                        progress.previous_snapshot = None;
                    }
                } else {
                    progress.previous_snapshot = last.map(|s| s.watermark);
                }
                progress.snapshot = Some(SnapshotPoint {
                    watermark: at.op,
                    epoch,
                    command_bytes_total: bytes_total,
                });
            }
            for hook in &inner.hooks {
                hook.snapshot_persisted(&meta);
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

    /// Whether a running checkpoint gives way to submits: while some are in
    /// flight, but not while one waits for ring slots, nor once the free
    /// slots are down to half the count that triggers a checkpoint (the
    /// checkpoint is what frees them: it hurries while the other half is
    /// still there to absorb submits).
    fn checkpoint_should_give_way(&self) -> bool {
        let inner = &*self.inner;
        let progress = inner.progress.borrow();
        progress.submits_in_flight > 0
            && progress.ring_waiters == 0
            && inner.journal.remaining_capacity() >= inner.config.ring_free_slots_min / 2
    }

    /// Moves the watermark as far as [`Inner::watermark_target`] allows,
    /// then prunes old local snapshots, then moves it again (the target
    /// may have moved while a prune in steps ran). Returns the watermark
    /// before and the larger target. Only with the snapshot directory held (a checkpoint
    /// running, or [`Shard::hold_snapshots`]). An extension that raised its
    /// [`ShardHooks::watermark_limit`] calls it to report that the
    /// watermark may now advance.
    pub(crate) async fn advance_watermark_and_prune(&self) -> Result<(u64, u64)> {
        let inner = &*self.inner;
        let before = inner.journal.watermark();
        let target = self.advance_watermark().await?;
        self.prune().await;
        // A prune in steps takes a while, and submits that filled the ring
        // meanwhile move the target (to the newest snapshot): they would
        // otherwise wait for the next checkpoint.
        let target = target.max(self.advance_watermark().await?);
        Ok((before, target))
    }

    /// Moves the watermark to [`Inner::watermark_target`]; returns it.
    async fn advance_watermark(&self) -> Result<u64> {
        let inner = &*self.inner;
        let target = inner.watermark_target();
        if target > inner.journal.watermark() {
            if let Err(e) = inner.journal.advance_watermark(target).await {
                return Err(self.journal_failed(e));
            }
            inner.slots_freed.notify(usize::MAX);
        }
        Ok(target)
    }

    /// Removes snapshot generations beyond the configured count. A failure
    /// is counted and retried at the next checkpoint: the extra files cost
    /// only space.
    pub(crate) async fn prune(&self) {
        let inner = &*self.inner;
        // Recovery can use any snapshot at or above the journal's watermark
        // (the previous generation among them): none of those goes.
        let protect_from = inner.journal.watermark();
        let keep = inner.config.snapshot_generations;
        // Old snapshots give their space back as retired segments do (0:
        // at once). The scrubber and the upload may be reading one: they
        // tell a shrunk file from damage by its name being gone.
        let step_bytes = inner.journal.config().reclaim_step_bytes;
        let pruned = if step_bytes > 0 {
            // The steps take about 1.3 s per GiB, and submits that fill the
            // ring meanwhile would wait for the next checkpoint, which
            // waits for this one. So while they run, waiting submits move
            // the watermark on to the newest snapshot at once; if that
            // frees nothing (it is there already), the steps end and the
            // rest goes at once, so that the next checkpoint can start: a
            // discard stall of every fdatasync (up to 450 ms for 1 GiB in
            // the bench) rather than a ring full for the rest of the steps
            // and a checkpoint (submits failed with `Backpressure` after
            // 10 s in the bench, which starts no checkpoint of its own).
            let done = Cell::new(false);
            // Stuck: submits wait, the watermark is at its target, and what
            // holds it there is the newest snapshot, not an extension's
            // limit (an upload that has not landed: the next checkpoint
            // would free nothing either, so the steps go on).
            let ring_stuck = || {
                let newest = inner.progress.borrow().snapshot.map_or(0, |s| s.watermark);
                inner.progress.borrow().ring_waiters > 0
                    && inner.watermark_target() <= inner.journal.watermark()
                    && inner
                        .hooks_watermark_limit()
                        .is_none_or(|limit| limit >= newest)
            };
            let keep_shrinking = || self.usable().is_ok() && !ring_stuck();
            let in_use = |op| inner.snapshot_in_use(op);
            let prune = async {
                let pruned = inner
                    .snapshots
                    .prune_in_steps(keep, protect_from, step_bytes, &keep_shrinking, &in_use)
                    .await;
                done.set(true);
                pruned
            };
            let relieve = async {
                while !done.get() {
                    if inner.progress.borrow().ring_waiters > 0 {
                        if let Err(error) = self.advance_watermark().await {
                            // Left to the advance after the prune, which
                            // reports it.
                            tracing::warn!(%error, "moving the watermark during a prune failed");
                            break;
                        }
                    }
                    glommio::timer::sleep(PRUNE_RING_WATCH_INTERVAL).await;
                }
            };
            futures_lite::future::zip(prune, relieve).await.0
        } else {
            inner.snapshots.prune(keep, protect_from).await
        };
        match pruned {
            Ok(removed) => inner.progress.borrow_mut().stats.snapshots_pruned += removed as u64,
            Err(e) => {
                tracing::warn!(error = %e, "removing old snapshots failed; retrying at the next checkpoint");
                inner.progress.borrow_mut().stats.prune_failures += 1;
            }
        }
    }

    /// An extension found the snapshot at `op` damaged (the upload's
    /// check): replaced at once if it is the newest, as the scrubber's
    /// findings are ([`Inner::replace_if_newest`]).
    pub(crate) fn snapshot_found_damaged(&self, op: u64) {
        self.inner.replace_if_newest(op);
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

    /// The damage the snapshot scrubber ([`crate::ShardBuilder::scrub_rate`])
    /// found, oldest first, each place once: the file, the offset and the
    /// fault; at most [`SNAPSHOT_SCRUB_DAMAGE_KEPT`] (each is also logged
    /// and counted in [`ShardStats::snapshot_scrub_damage`]). The journal's
    /// findings are `shard.journal().scrub_damage()`.
    pub fn snapshot_scrub_damage(&self) -> Vec<SnapshotDamage> {
        self.inner.snapshot_scrub_damage.borrow().clone()
    }

    /// The blocks of snapshot files the scrubber could not read, each
    /// failing every read (file, byte offset of the block), oldest first,
    /// each once; at most [`SNAPSHOT_SCRUB_DAMAGE_KEPT`].
    pub fn snapshot_scrub_unreadable(&self) -> Vec<(PathBuf, u64)> {
        self.inner.snapshot_scrub_unreadable.borrow().clone()
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
             previous snapshot {:?}, {}ring waiters {}, parked ops {:?}, checkpointing {}, \
             poisoned {}",
            progress.applied,
            journal.next_op(),
            journal.watermark(),
            journal.remaining_capacity(),
            progress.snapshot.map(|s| s.watermark),
            progress.previous_snapshot,
            self.inner
                .hooks
                .iter()
                .map(|hook| format!("{}, ", hook.describe()))
                .collect::<String>(),
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
        for hook in &self.inner.hooks {
            // Background work stops (an upload in flight is abandoned: the
            // next open uploads the newest snapshot again).
            hook.begin_close();
        }
        let task = self.inner.compaction_task.borrow_mut().take();
        if let Some(task) = task {
            task.await;
        }
        // A reset holding the snapshot directory finishes first: once the
        // lock goes, another process may open the directory, and a reset
        // still writing would put its snapshot under that one's history.
        // A reset that takes the directory after this refuses (closing).
        loop {
            let ended = {
                if !self.inner.progress.borrow().lifecycle.snapshots_held() {
                    break;
                }
                self.inner.checkpoint_ended.listen()
            };
            ended.await;
        }
        let mut hooks_closed = Ok(());
        for hook in &self.inner.hooks {
            let closed = hook.close().await;
            hooks_closed = hooks_closed.and(closed);
        }
        // Dropping the publisher's and the scrubber's handles cancels them.
        drop(self.inner.metrics_task.borrow_mut().take());
        drop(self.inner.scrub_task.borrow_mut().take());
        let closed = self
            .inner
            .journal
            .close()
            .await
            .map_err(Error::from)
            .and(hooks_closed);
        self.inner.publish_metrics();
        // Another process may open the directory from here on.
        drop(self.inner.lock.borrow_mut().take());
        closed
    }

    /// Whether [`Shard::close`] has begun.
    pub(crate) fn is_closing(&self) -> bool {
        self.inner.progress.borrow().lifecycle.is_closing()
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

    // For extensions: the `pub(crate)` surface reset, object storage and
    // cold restore use besides the public methods and [`ShardHooks`]. No
    // extension touches `Inner` or `Progress`.

    pub(crate) fn submits_in_flight(&self) -> u64 {
        self.inner.progress.borrow().submits_in_flight
    }

    /// Waits until the snapshot directory is free and holds it (as a
    /// checkpoint does) until the returned guard is dropped: a reset has
    /// the shard's snapshots to itself, an extension advancing the
    /// watermark does not race a checkpoint.
    pub(crate) async fn hold_snapshots(&self) -> SnapshotsHeld<'_, M, S> {
        loop {
            let listener = {
                let mut progress = self.inner.progress.borrow_mut();
                if progress.lifecycle.hold_snapshots() {
                    return SnapshotsHeld { shard: self };
                }
                self.inner.checkpoint_ended.listen()
            };
            listener.await;
        }
    }

    fn release_snapshots(&self) {
        self.inner
            .progress
            .borrow_mut()
            .lifecycle
            .release_snapshots();
        self.inner.checkpoint_ended.notify(usize::MAX);
    }

    /// A handle for an extension's background task.
    pub(crate) fn downgrade(&self) -> WeakShard<M, S> {
        WeakShard(Rc::downgrade(&self.inner))
    }

    /// The extension of type `T` the builder attached, if any.
    pub(crate) fn hook<T: 'static>(&self) -> Option<&T> {
        self.inner
            .hooks
            .iter()
            .find_map(|hook| hook.as_any().downcast_ref::<T>())
    }

    /// Updates the counters [`Shard::stats`] reports (an extension's own
    /// among them).
    pub(crate) fn update_stats(&self, update: impl FnOnce(&mut ShardStats)) {
        update(&mut self.inner.progress.borrow_mut().stats);
    }

    /// The shard's metrics.
    pub(crate) fn metrics(&self) -> &ShardMetrics {
        &self.inner.metrics
    }

    /// Moves the shard into `domain`: the identity file, then the
    /// (empty) journal's owner, then the extensions
    /// ([`ShardHooks::domain_changed`]). Only for a shard that holds no
    /// data (a reset checks that first). A crash after the identity is
    /// harmless: an empty journal takes the identity's domain at the next
    /// open.
    pub(crate) async fn join_domain(&self, domain: Uuid) -> Result<()> {
        let inner = &*self.inner;
        let identity = Identity {
            journal_created: true,
            ..Identity::new(domain)
        };
        write_identity(&inner.storage, &inner.config.dir, &identity).await?;
        let placement = inner.journal.owner().unwrap_or_default();
        inner
            .journal
            .set_owner(ringstore_journal::JournalOwner {
                domain: *domain.as_bytes(),
                ..placement
            })
            .await?;
        inner.domain.set(domain);
        for hook in &inner.hooks {
            hook.domain_changed(domain)?;
        }
        Ok(())
    }

    /// Restarts the shard's numbering above `floor` with `machine` as its
    /// state, `snapshot` (persisted at `floor.op`, `floor.epoch`) as its
    /// newest snapshot: raises the journal's epoch to `floor.epoch` and its
    /// watermark to `floor.op`, checks the next op is `floor.op + 1`, and
    /// from then on checks the first op applied is above the floor
    /// ([`Error::ResetCheck`]). Only with the snapshots held and no submit
    /// in flight (a reset). A journal failure poisons the shard: the
    /// snapshot is in place and recovery finishes the job.
    pub(crate) async fn restart_numbering(
        &self,
        machine: M,
        floor: OpId,
        snapshot: &SnapshotMeta,
    ) -> Result<()> {
        let inner = &*self.inner;
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
        for hook in &inner.hooks {
            hook.snapshot_persisted(snapshot);
        }
        inner.slots_freed.notify(usize::MAX);
        Ok(())
    }
}

/// The snapshot directory, held ([`Shard::hold_snapshots`]); handed back
/// on drop, however the holder ends.
pub(crate) struct SnapshotsHeld<'a, M: StateMachine, S: Storage> {
    shard: &'a Shard<M, S>,
}

impl<M: StateMachine, S: Storage> Drop for SnapshotsHeld<'_, M, S> {
    fn drop(&mut self) {
        self.shard.release_snapshots();
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
        let frees_slots = match self.hooks_watermark_limit() {
            // Under an extension's limit a new snapshot frees nothing until
            // the limit passes it (object storage: until it is uploaded):
            // under pressure take one only once the limit reached the
            // previous one (else every op applied while the store is down
            // would write a snapshot).
            Some(limit) => {
                (ops_since > 0 && limit >= newest) || limit.min(newest) > journal_watermark
            }
            None => ops_since > 0 || newest > journal_watermark,
        };
        ops_since >= self.config.checkpoint_ops_max
            || bytes_since >= self.config.checkpoint_bytes_max
            || (ring_pressure && frees_slots)
            || (last.is_some() && progress.newest_snapshot_damaged == Some(newest))
    }

    /// Whether an extension is reading the snapshot at `op`
    /// ([`ShardHooks::snapshot_in_use`]).
    fn snapshot_in_use(&self, op: u64) -> bool {
        self.hooks
            .iter()
            .any(|hook| hook.snapshot_in_use() == Some(op))
    }

    /// The smallest [`ShardHooks::watermark_limit`] of the extensions
    /// (with object storage in `BeforeCompaction` mode: the newest
    /// uploaded snapshot), which the watermark may not pass.
    fn hooks_watermark_limit(&self) -> Option<u64> {
        self.hooks
            .iter()
            .filter_map(|hook| hook.watermark_limit())
            .min()
    }

    /// The snapshot scrubber found the snapshot at `op` damaged or
    /// unreadable: if it is the newest, the one an open loads (and the
    /// journal may be compacted up to it), a checkpoint replaces it at
    /// once from the state in memory ([`Progress::newest_snapshot_damaged`]).
    pub(crate) fn replace_if_newest(&self, op: u64) {
        let mut progress = self.progress.borrow_mut();
        if progress.snapshot.map(|s| s.watermark) != Some(op) {
            return;
        }
        progress.newest_snapshot_damaged = Some(op);
        drop(progress);
        tracing::error!(
            op,
            "the newest snapshot is damaged: a checkpoint replaces it now from the state in memory"
        );
        self.checkpoint_wanted.notify(1);
    }

    /// Where the watermark may go after the newest snapshot: the previous
    /// snapshot (so a damaged newest one can be replaced by it plus the
    /// journal) unless that leaves the ring short, then the newest; and,
    /// while uploads gate compaction, no further than the newest uploaded
    /// snapshot. Never below where it is.
    fn watermark_target(&self) -> u64 {
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
        // watermark), and so is every extension's limit: the minimum is too.
        let target = match self.hooks_watermark_limit() {
            Some(limit) => target.min(limit),
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

/// Counts a submit waiting for ring slots in `ring_waiters` for as long as
/// it waits, however the wait ends.
struct RingWaiter<'a, M: StateMachine, S: Storage> {
    inner: &'a Inner<M, S>,
}

impl<'a, M: StateMachine, S: Storage> RingWaiter<'a, M, S> {
    fn enter(inner: &'a Inner<M, S>) -> Self {
        inner.progress.borrow_mut().ring_waiters += 1;
        RingWaiter { inner }
    }
}

impl<M: StateMachine, S: Storage> Drop for RingWaiter<'_, M, S> {
    fn drop(&mut self) {
        self.inner.progress.borrow_mut().ring_waiters -= 1;
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
/// What [`Shard::queue_command`] does on a full ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnRingFull {
    /// Waits for slots (at most `ring_full_wait_max`).
    Wait,
    /// Hands the command back at once.
    Return,
}

/// A command [`Shard::queue_command`] queued, or handed back on a full ring.
enum Queued<'a, M: StateMachine, S: Storage> {
    Queued(OrphanGuard<'a, M, S>),
    RingFull(M::Command),
}

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
        self.shard.release_snapshots();
    }
}

/// How often a prune in steps looks for submits waiting for ring slots.
const PRUNE_RING_WATCH_INTERVAL: Duration = Duration::from_millis(5);

/// Pause between two passes of the snapshot scrubber.
const SNAPSHOT_SCRUB_PASS_PAUSE: Duration = Duration::from_millis(100);

/// Findings of each kind [`Shard::snapshot_scrub_damage`] and
/// [`Shard::snapshot_scrub_unreadable`] keep (later ones are still logged
/// and counted).
pub const SNAPSHOT_SCRUB_DAMAGE_KEPT: usize = 16;

/// Keeps `finding` in `kept` unless it is full.
fn keep_finding<T>(kept: &RefCell<Vec<T>>, finding: T) {
    let mut kept = kept.borrow_mut();
    if kept.len() < SNAPSHOT_SCRUB_DAMAGE_KEPT {
        kept.push(finding);
    }
}

/// The snapshot scrubber: every generation, every byte, pass after pass, at
/// `rate` (see [`crate::ShardBuilder::scrub_rate`]).
async fn scrub_snapshots<M: StateMachine, S: Storage>(
    inner: Weak<Inner<M, S>>,
    rate: std::num::NonZeroU64,
) {
    let mut pacer = ringstore_journal::pace::Pacer::new(rate);
    let mut reported: Vec<(PathBuf, u64)> = Vec::new();
    let mut unreadable_reported: Vec<(PathBuf, u64)> = Vec::new();
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
        for (op, path) in generations {
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
                    reported.push((damage.path.clone(), damage.offset));
                    keep_finding(&inner.snapshot_scrub_damage, damage);
                    inner.progress.borrow_mut().stats.snapshot_scrub_damage += 1;
                    inner.metrics.record_snapshot_scrub_damage();
                    inner.replace_if_newest(op);
                }
                Err(error) => {
                    inner.progress.borrow_mut().stats.snapshot_scrub_read_errors += 1;
                    inner.metrics.record_snapshot_scrub_read_error();
                    match ringstore_journal::storage::UnreadableBlock::in_error(&error) {
                        // A block that fails every read: logged once per
                        // place, as damage is.
                        Some(block) => {
                            if !unreadable_reported
                                .iter()
                                .any(|(p, o)| *p == path && *o == block.offset)
                            {
                                tracing::error!(
                                    path = %path.display(),
                                    offset = block.offset,
                                    error = %block.source,
                                    "the snapshot scrubber cannot read a block of this snapshot: \
                                     a load of it fails and an open passes over it"
                                );
                                unreadable_reported.push((path.clone(), block.offset));
                                keep_finding(
                                    &inner.snapshot_scrub_unreadable,
                                    (path.clone(), block.offset),
                                );
                                inner.replace_if_newest(op);
                            }
                        }
                        None => tracing::warn!(
                            path = %path.display(),
                            %error,
                            "the snapshot scrubber could not read a snapshot; it tries again next pass"
                        ),
                    }
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
