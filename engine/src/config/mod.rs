//! Shard settings: the builder and the checkpoint policy.
//!
//! Every setting has a documented default and range; `open()` validates
//! them and returns [`Error::InvalidConfig`] naming the first bad one.

use crate::error::{Error, Result};
use crate::machine::StateMachine;
use object_store::{ObjectStoreSettings, UploadMode};
use ringstore_journal::storage::{DmaStorage, Storage};
use ringstore_journal::JournalBuilder;
use std::{future::Future, marker::PhantomData, path::PathBuf, pin::Pin, time::Duration};

pub(crate) mod object_store;

/// Default snapshot generations kept on disk.
pub const SNAPSHOT_GENERATIONS_DEFAULT: usize = 3;
/// Most snapshot generations kept on disk.
pub const SNAPSHOT_GENERATIONS_MAX: usize = 64;
/// Default bytes of commands applied since the last snapshot that trigger a
/// checkpoint.
pub const CHECKPOINT_BYTES_DEFAULT: u64 = 256 << 20;
/// Default longest a submit waits for a checkpoint to free ring slots.
pub const RING_FULL_WAIT_DEFAULT: Duration = Duration::from_secs(10);
/// Default share of the time, in percent, a checkpoint's snapshot writer
/// keeps writing while submits wait ([`CheckpointPolicy::busy_write_percent`]).
/// 25%: in `ringstore-bench engine` on the test host, the 16 submitters'
/// p99 ack latency during a 1 GiB checkpoint was 1.38-1.85x the idle p99
/// over four runs at 25% with 64 KiB writes, against 5.7x with 512 KiB
/// writes at 50%; lower shares made the checkpoint long enough to reach
/// the ring's limit (`bench/PERFORMANCE.md`).
pub const CHECKPOINT_BUSY_WRITE_PERCENT_DEFAULT: u8 = 25;
/// First pause after a failed automatic checkpoint; doubles up to
/// [`CHECKPOINT_RETRY_MAX`].
pub const CHECKPOINT_RETRY_MIN: Duration = Duration::from_millis(50);
/// Longest pause between automatic checkpoint retries.
pub const CHECKPOINT_RETRY_MAX: Duration = Duration::from_secs(5);

/// When the compaction task checkpoints, and how long appends wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Checkpoint once this many ops were applied since the last snapshot.
    /// Default: a quarter of the ring's slots (`None`). Range: 1 to the
    /// slot count.
    pub ops_max: Option<u64>,
    /// Checkpoint once this many bytes of commands were applied since the
    /// last snapshot. Default [`CHECKPOINT_BYTES_DEFAULT`]; at least 1.
    pub bytes_max: u64,
    /// Checkpoint once fewer ring slots than this are free. Default: an
    /// eighth of the ring's slots (`None`). Range: 0 to the slot count − 1.
    pub ring_free_slots_min: Option<u64>,
    /// How long a submit waits for slots when the ring is full before it
    /// fails with [`Error::Backpressure`]. Default
    /// [`RING_FULL_WAIT_DEFAULT`]; at least 1 ms.
    pub ring_full_wait_max: Duration,
    /// While submits are in flight (none of them waiting for ring slots,
    /// and the ring not short of slots), a checkpoint writes its snapshot
    /// in small writes for about this percentage of the time and pauses
    /// for the rest, so that the journal's writes and flushes do not queue
    /// behind it; when the shard is idle it writes at full speed. Lower
    /// keeps the ack latency closer to an idle shard's and makes a busy
    /// checkpoint longer. Default [`CHECKPOINT_BUSY_WRITE_PERCENT_DEFAULT`];
    /// 1 to 100 (100: small writes, no pauses).
    pub busy_write_percent: u8,
    /// Run the compaction task. Default `true`; with `false` only explicit
    /// [`Shard::checkpoint`](crate::Shard::checkpoint) calls checkpoint (and a full ring waits for
    /// one).
    pub automatic: bool,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            ops_max: None,
            bytes_max: CHECKPOINT_BYTES_DEFAULT,
            ring_free_slots_min: None,
            ring_full_wait_max: RING_FULL_WAIT_DEFAULT,
            busy_write_percent: CHECKPOINT_BUSY_WRITE_PERCENT_DEFAULT,
            automatic: true,
        }
    }
}

/// Settings of an open shard, validated.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// The shard's directory: `identity`, `journal/`, `snapshots/`.
    pub dir: PathBuf,
    /// Checkpoint after this many ops.
    pub checkpoint_ops_max: u64,
    /// Checkpoint after this many command bytes.
    pub checkpoint_bytes_max: u64,
    /// Checkpoint below this many free ring slots.
    pub ring_free_slots_min: u64,
    /// Longest wait for ring slots.
    pub ring_full_wait_max: Duration,
    /// A busy checkpoint's share of the time writing, in percent.
    pub checkpoint_busy_write_percent: u8,
    /// Whether the compaction task runs.
    pub automatic_checkpoints: bool,
    /// Snapshot generations kept.
    pub snapshot_generations: usize,
    /// Whether the journal keeps the ops above the previous snapshot too.
    pub journal_keeps_previous_snapshot: bool,
    /// How snapshots reach object storage (`None`: no object store; see
    /// [`crate::object_store`]).
    pub upload_mode: Option<UploadMode>,
    /// Snapshot generations kept in object storage (0: no object store).
    pub remote_snapshot_generations: usize,
    /// The scrubbers' read rate, each of the journal's and the snapshots'
    /// (`None`: no scrubbing; see [`ShardBuilder::scrub_rate`]).
    pub scrub_bytes_per_second: Option<std::num::NonZeroU64>,
}

type JournalSetup<S> = Box<dyn FnOnce(JournalBuilder<S>) -> JournalBuilder<S>>;

/// A step an extension runs in the open (`crate::recovery`, step 0) with
/// the directory locked, before anything in it is read: given the
/// storage, the shard directory and whether the restore marker is there.
/// A cold restore sets it to clear an unfinished restore's leftovers and
/// write the marker and the new identity.
pub(crate) type PrepareDir<S> =
    Box<dyn FnOnce(S, PathBuf, bool) -> Pin<Box<dyn Future<Output = Result<()>>>>>;

/// Builds and opens a [`Shard`](crate::Shard). See
/// [`Shard::builder`](crate::Shard::builder).
#[must_use = "a builder does nothing until open() is called"]
pub struct ShardBuilder<M: StateMachine, S: Storage = DmaStorage> {
    pub(crate) dir: PathBuf,
    pub(crate) storage: S,
    pub(crate) journal_setup: JournalSetup<S>,
    pub(crate) policy: CheckpointPolicy,
    pub(crate) snapshot_generations: usize,
    pub(crate) journal_keeps_previous_snapshot: bool,
    /// Take `<dir>/lock` (real directories only, not simulated disks).
    pub(crate) lock_dir: bool,
    /// The `shard` label on the shard's metrics.
    pub(crate) metrics_label: Option<String>,
    /// Snapshots to object storage (real directories only).
    pub(crate) object_store: Option<ObjectStoreSettings>,
    /// Set by a cold restore: prepares the (empty) directory as a new
    /// shard behind the restore marker, in place of the refusal a marked
    /// directory gets.
    pub(crate) prepare_dir: Option<PrepareDir<S>>,
    /// Which shard of how many this is (recorded in the journal's
    /// superblock next to the domain).
    pub(crate) placement: Option<(u32, u32)>,
    pub(crate) scrub_bytes_per_second: Option<std::num::NonZeroU64>,
    /// Whether a directory holding no shard becomes a new one.
    pub(crate) create_if_missing: bool,
    pub(crate) machine: PhantomData<M>,
}

impl<M: StateMachine> ShardBuilder<M, DmaStorage> {
    pub(crate) fn new(dir: PathBuf) -> ShardBuilder<M, DmaStorage> {
        ShardBuilder {
            dir: ringstore_journal::glommio_quirks::absolute_dir(&dir),
            storage: DmaStorage::new(),
            journal_setup: Box::new(|builder| builder),
            policy: CheckpointPolicy::default(),
            snapshot_generations: SNAPSHOT_GENERATIONS_DEFAULT,
            journal_keeps_previous_snapshot: true,
            lock_dir: true,
            metrics_label: None,
            object_store: None,
            prepare_dir: None,
            placement: None,
            scrub_bytes_per_second: None,
            create_if_missing: true,
            machine: PhantomData,
        }
    }

    /// Sends every snapshot to object storage through a local cache, and
    /// lets [`crate::cold_restore`] rebuild the shard from there: see
    /// [`crate::object_store`] for the upload modes, retries and retention.
    /// Default: none (snapshots stay local). Only for shards on real
    /// directories (this builder's [`DmaStorage`]); a shard given another
    /// storage backend refuses it at open.
    pub fn object_store(mut self, settings: ObjectStoreSettings) -> Self {
        self.object_store = Some(settings);
        self
    }
}

impl<M: StateMachine, S: Storage> ShardBuilder<M, S> {
    /// Uses another storage backend (the in-memory fault-injecting disk in
    /// simulations). Resets the journal settings made so far: call it first.
    pub fn storage<T: Storage>(self, storage: T) -> ShardBuilder<M, T> {
        ShardBuilder {
            dir: self.dir,
            storage,
            journal_setup: Box::new(|builder| builder),
            policy: self.policy,
            snapshot_generations: self.snapshot_generations,
            journal_keeps_previous_snapshot: self.journal_keeps_previous_snapshot,
            // Not on another backend: the simulations open, crash and
            // reopen their shards from one driver, and object storage
            // takes this as "a real directory" (`validate_early`).
            lock_dir: false,
            metrics_label: self.metrics_label,
            // Kept, so that open() refuses it rather than silently
            // dropping it (object storage needs real files).
            object_store: self.object_store,
            // Typed for the old storage; a cold restore sets it last, on
            // a builder of real directories.
            prepare_dir: None,
            placement: self.placement,
            scrub_bytes_per_second: self.scrub_bytes_per_second,
            create_if_missing: self.create_if_missing,
            machine: PhantomData,
        }
    }

    /// Journal settings (slot count, segment size, durability, ...), applied
    /// to the journal's own builder; see `ringstore_journal::JournalBuilder`
    /// for each setting's default and range.
    pub fn journal(
        mut self,
        setup: impl FnOnce(JournalBuilder<S>) -> JournalBuilder<S> + 'static,
    ) -> Self {
        self.journal_setup = Box::new(setup);
        self
    }

    /// Scrubs the shard's durable files in the background: the journal's
    /// scrubber (`ringstore_journal::JournalBuilder::scrub_rate`) and one
    /// that re-reads every snapshot generation, every byte, with the
    /// verifier a load uses, each reading `bytes_per_second` on average,
    /// pass after pass. Damage is logged with its file and offset and
    /// counted (`ShardStats::snapshot_scrub_damage`,
    /// `ringstore_snapshot_scrub_damage_total`; the journal's in
    /// `ShardStats::journal`), never repaired: a read of a damaged entry
    /// fails, an open passes over a damaged snapshot, an upload refuses
    /// it. A snapshot pruned while the scrubber reads it (renamed, then
    /// shrunk in steps) is no snapshot any more and not reported. Default
    /// 0: no scrubbing.
    pub fn scrub_rate(mut self, bytes_per_second: u64) -> Self {
        self.scrub_bytes_per_second = std::num::NonZeroU64::new(bytes_per_second);
        self
    }

    /// When to checkpoint (see [`CheckpointPolicy`]).
    pub fn checkpoint_policy(mut self, policy: CheckpointPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Snapshot generations kept on disk. Default
    /// [`SNAPSHOT_GENERATIONS_DEFAULT`]; range 1 to
    /// [`SNAPSHOT_GENERATIONS_MAX`] (at least 2 while the journal keeps the
    /// previous snapshot's ops).
    pub fn snapshot_generations(mut self, generations: usize) -> Self {
        self.snapshot_generations = generations;
        self
    }

    /// Whether the journal keeps the ops above the *previous* snapshot, not
    /// just above the newest. Default `true`: if the newest snapshot is
    /// later found damaged, recovery falls back to the previous one and
    /// replays the journal from there, losing nothing. Costs ring slots and
    /// disk for one more checkpoint interval. Under ring pressure the
    /// watermark advances to the newest snapshot regardless.
    pub fn journal_keeps_previous_snapshot(mut self, keep: bool) -> Self {
        self.journal_keeps_previous_snapshot = keep;
        self
    }

    /// Whether an open of a directory that holds no shard (no identity
    /// file and no data, or no directory at all) creates a new, empty
    /// shard there. `false` refuses it with [`crate::Error::NoShard`]: give
    /// it on every open after the first, so that a directory that is gone
    /// (a volume not mounted, a wiped host, an operator's `rm`) is refused
    /// rather than started empty, which would lose every command the shard
    /// acknowledged without a word. A shard created is logged (info, with
    /// its directory and new domain) and counted in
    /// `ringstore_shards_created_total`. [`crate::runtime::Engine`] does
    /// this for its shards through the data directory's superblock
    /// (`runtime::startup::check_created_shards`). Default: `true`.
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }

    /// The value of the `shard` label on this shard's metrics (see
    /// [`crate::metrics`]). Default: the directory's name.
    pub fn metrics_label(mut self, label: impl Into<String>) -> Self {
        self.metrics_label = Some(label.into());
        self
    }

    /// Which shard (`index`, from 0) of how many (`shards`) this is in its
    /// data directory. Recorded in the journal's superblock with the
    /// domain, so a journal directory moved to another shard's place is
    /// refused at open ([`crate::Error::ForeignJournal`], naming the identity
    /// file and the journal's superblock). [`crate::runtime::Engine`] sets
    /// it. Default: not
    /// recorded, and only the domain is checked.
    pub fn placement(mut self, index: u32, shards: u32) -> Self {
        self.placement = Some((index, shards));
        self
    }

    pub(crate) fn validate(&self, slot_count: u64) -> Result<ShardConfig> {
        let invalid = |setting: &'static str, value: String, reason: String| {
            Err(Error::InvalidConfig {
                setting,
                value,
                reason,
            })
        };
        let policy = &self.policy;
        let ops_max = policy.ops_max.unwrap_or((slot_count / 4).max(1));
        if ops_max == 0 || ops_max > slot_count {
            return invalid(
                "checkpoint ops_max",
                ops_max.to_string(),
                format!("1 to the ring's slot count ({slot_count})"),
            );
        }
        if policy.bytes_max == 0 {
            return invalid("checkpoint bytes_max", "0".into(), "at least 1".into());
        }
        let free_min = policy.ring_free_slots_min.unwrap_or(slot_count / 8);
        if free_min >= slot_count {
            return invalid(
                "checkpoint ring_free_slots_min",
                free_min.to_string(),
                format!("0 to the ring's slot count - 1 ({})", slot_count - 1),
            );
        }
        if policy.ring_full_wait_max < Duration::from_millis(1) {
            return invalid(
                "checkpoint ring_full_wait_max",
                format!("{:?}", policy.ring_full_wait_max),
                "at least 1 ms".into(),
            );
        }
        if !(1..=100).contains(&policy.busy_write_percent) {
            return invalid(
                "checkpoint busy_write_percent",
                policy.busy_write_percent.to_string(),
                "1 to 100".into(),
            );
        }
        let generations_min = if self.journal_keeps_previous_snapshot {
            2
        } else {
            1
        };
        if !(generations_min..=SNAPSHOT_GENERATIONS_MAX).contains(&self.snapshot_generations) {
            return invalid(
                "snapshot_generations",
                self.snapshot_generations.to_string(),
                format!("{generations_min} to {SNAPSHOT_GENERATIONS_MAX}"),
            );
        }
        Ok(ShardConfig {
            dir: self.dir.clone(),
            checkpoint_ops_max: ops_max,
            checkpoint_bytes_max: policy.bytes_max,
            ring_free_slots_min: free_min,
            ring_full_wait_max: policy.ring_full_wait_max,
            checkpoint_busy_write_percent: policy.busy_write_percent,
            automatic_checkpoints: policy.automatic,
            snapshot_generations: self.snapshot_generations,
            journal_keeps_previous_snapshot: self.journal_keeps_previous_snapshot,
            upload_mode: self.object_store.as_ref().map(|o| o.upload_mode()),
            remote_snapshot_generations: self
                .object_store
                .as_ref()
                .map_or(0, ObjectStoreSettings::generations),
            scrub_bytes_per_second: self.scrub_bytes_per_second,
        })
    }

    /// The shard directory.
    pub(crate) fn shard_dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The object-store settings, if given.
    pub(crate) fn object_store_settings(&self) -> Option<&ObjectStoreSettings> {
        self.object_store.as_ref()
    }

    /// Has the open run `step` (see [`PrepareDir`]) in place of refusing a
    /// directory that holds the restore marker. For a cold restore.
    pub(crate) fn prepare_dir_with(mut self, step: PrepareDir<S>) -> Self {
        self.prepare_dir = Some(step);
        self
    }

    /// Checks the settings that must be right before anything is opened.
    pub(crate) fn validate_early(&self) -> Result<()> {
        if let Some(settings) = &self.object_store {
            if !self.lock_dir {
                return Err(Error::InvalidConfig {
                    setting: "object_store",
                    value: settings.remote().describe().to_string(),
                    reason: "object storage needs a shard on a real directory (DmaStorage), \
                             not another storage backend"
                        .into(),
                });
            }
            settings.validate()?;
        }
        Ok(())
    }
}
