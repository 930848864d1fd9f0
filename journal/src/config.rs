//! Journal settings: the builder, its validation, and the policy enums.
//!
//! Every setting has a named default and a valid range; `open()` checks them
//! all and returns [`Error::InvalidConfig`] naming the first bad one. Nothing
//! is clamped silently.

use crate::error::{Error, Result};
use crate::format::{
    align_up, entry_footprint, index_footprint, BLOCK_BYTES, ENTRY_HEADER_BYTES,
    SEGMENT_DATA_OFFSET,
};
use crate::index::SLOT_BYTES;
use crate::storage::{DmaStorage, Storage};
use crate::superblock::JournalOwner;
use crate::Journal;
use std::path::PathBuf;

/// Default ring slots: ops that may sit above the watermark at once.
pub const SLOT_COUNT_DEFAULT: u64 = 1 << 16;
/// Most ring slots (the index costs `SLOT_BYTES` each: 2 GiB at this limit).
pub const SLOT_COUNT_MAX: u64 = 1 << 26;
/// Default segment file size.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Largest segment: entry offsets are stored as `u32`.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 31;
/// Default largest payload.
pub const ENTRY_BYTES_MAX_DEFAULT: u64 = 1 << 20;
/// Upper bound for `entry_bytes_max`.
pub const ENTRY_BYTES_MAX_LIMIT: u64 = 64 << 20;
/// Default largest group-commit write.
pub const BATCH_BYTES_MAX_DEFAULT: u64 = 2 << 20;
/// Upper bound for `batch_bytes_max`.
pub const BATCH_BYTES_MAX_LIMIT: u64 = 256 << 20;
/// Default group-commit writes in flight at once.
pub const WRITES_IN_FLIGHT_DEFAULT: u32 = 2;
/// Upper bound for `writes_in_flight`.
pub const WRITES_IN_FLIGHT_MAX: u32 = 8;
/// Default largest group-commit write made inline with blocking system calls
/// (see [`JournalBuilder::inline_write_bytes_max`]).
pub const INLINE_WRITE_BYTES_MAX_DEFAULT: u64 = 64 << 10;

const _: () = assert!(SEGMENT_BYTES_DEFAULT.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(BATCH_BYTES_MAX_DEFAULT.is_multiple_of(BLOCK_BYTES));
const _: () =
    assert!(SEGMENT_BYTES_DEFAULT >= SEGMENT_DATA_OFFSET + BATCH_BYTES_MAX_DEFAULT + BLOCK_BYTES);
const _: () = assert!(SLOT_BYTES as u64 * SLOT_COUNT_MAX <= 2 << 30);

/// What an acknowledged append survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// [`Durability::Sync`] or [`Durability::WriteThrough`], whichever this
    /// device makes durable faster: at open the journal times both on
    /// blocks prepared the way its segments are ([`Preallocation`]), and
    /// takes write-through only when it is clearly faster (see
    /// [`crate::durability`]). Survives the same as either. The choice is
    /// in [`crate::JournalStats::durability`] and the log. A backend that
    /// cannot time I/O (the simulator's in-memory disk) takes `Sync`.
    #[default]
    Auto,
    /// fdatasync after every group-commit write, before any append in it
    /// resolves. An acknowledged entry survives process crashes, kernel
    /// crashes and power loss (given a device that honours flushes).
    Sync,
    /// Segments are written with O_DSYNC: each group-commit write is durable
    /// when it completes, with no separate fdatasync — one I/O round trip per
    /// group commit instead of two. Survives the same as [`Durability::Sync`].
    WriteThrough,
    /// No fdatasync: an append resolves once its O_DIRECT write completed.
    /// Survives a process crash (kill -9). Power loss or a kernel crash may
    /// lose acknowledged entries (device write cache, unconverted extents);
    /// recovery still never serves a torn or corrupt entry.
    NoSync,
}

/// What recovery does with a damaged tail of the last segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recovery {
    /// Cut bytes at the log's tail that do not verify when nothing proves
    /// them durable (no later write vouches for them), and report the cut in
    /// [`crate::RecoveryReport::tail`] with the ops that may have been
    /// acknowledged, and as a warning in the log. See the `recovery` module
    /// for the window this leaves.
    #[default]
    TruncateTornTail,
    /// Cut nothing that could have been acknowledged: any damage, even a
    /// torn tail, is [`Error::Corruption`]. Only a tail of zeros ends the
    /// log.
    Strict,
}

/// How a new segment file gets its disk space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Preallocation {
    /// fallocate (unwritten extents). Cheap to create; the first write of
    /// each block makes its fdatasync also commit an extent conversion.
    /// Where fallocate is unsupported (EOPNOTSUPP) zeros are written instead.
    #[default]
    Fallocate,
    /// fallocate, then write zeros over the whole file and sync it, so later
    /// fdatasyncs overwrite written blocks and commit no metadata: lowest
    /// append latency, at the cost of writing each segment twice.
    ZeroFill,
}

/// Validated settings of an open journal.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Directory holding the segment files.
    pub dir: PathBuf,
    /// Ring slots.
    pub slot_count: u64,
    /// Bytes per segment file.
    pub segment_bytes: u64,
    /// Largest payload.
    pub entry_bytes_max: u64,
    /// Largest group-commit write.
    pub batch_bytes_max: u64,
    /// What acknowledged appends survive. After open: the durability in
    /// use, never [`Durability::Auto`] (see [`crate::Journal::durability_choice`]).
    pub durability: Durability,
    /// Torn-tail policy.
    pub recovery: Recovery,
    /// How segments get disk space.
    pub preallocation: Preallocation,
    /// Group-commit writes in flight at once.
    pub writes_in_flight: u32,
    /// Largest group-commit write made inline with blocking system calls
    /// (0: none). See [`JournalBuilder::inline_write_bytes_max`].
    pub inline_write_bytes_max: u64,
    /// Who the journal must belong to (checked against its superblock).
    pub owner: Option<JournalOwner>,
    /// The scrubber's read rate (`None`: no scrubber).
    pub scrub_bytes_per_second: Option<std::num::NonZeroU64>,
    /// Retired segments larger than this are shrunk this many bytes at a
    /// time before they are removed (0: removed at once). See
    /// [`JournalBuilder::reclaim_step_bytes`].
    pub reclaim_step_bytes: u64,
    /// Retired segments are kept for reuse as next segments. See
    /// [`JournalBuilder::recycle_segments`].
    pub recycle_segments: bool,
    /// The hard state an open that cuts the tail makes durable before it
    /// records the cut. See [`JournalBuilder::hard_state_after_cut`].
    pub hard_state_after_cut: Option<HardStateAfterCut>,
}

/// See [`JournalBuilder::hard_state_after_cut`]: the newest hard state
/// and the log's last op after the cut, to the hard state to keep.
pub type HardStateAfterCut = fn(hard_state: &[u8], last_op: u64) -> Vec<u8>;

/// Builds and opens a [`Journal`]. See [`Journal::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until open() is called"]
pub struct JournalBuilder<S: Storage = DmaStorage> {
    config: JournalConfig,
    storage: S,
}

impl JournalBuilder<DmaStorage> {
    pub(crate) fn new(dir: PathBuf) -> JournalBuilder<DmaStorage> {
        JournalBuilder {
            config: JournalConfig {
                // Resolved here (no filesystem access), which also pins the
                // journal to the directory meant at build time.
                dir: crate::glommio_quirks::absolute_dir(&dir),
                slot_count: SLOT_COUNT_DEFAULT,
                segment_bytes: SEGMENT_BYTES_DEFAULT,
                entry_bytes_max: ENTRY_BYTES_MAX_DEFAULT,
                batch_bytes_max: BATCH_BYTES_MAX_DEFAULT,
                durability: Durability::default(),
                recovery: Recovery::default(),
                preallocation: Preallocation::default(),
                writes_in_flight: WRITES_IN_FLIGHT_DEFAULT,
                inline_write_bytes_max: INLINE_WRITE_BYTES_MAX_DEFAULT,
                owner: None,
                scrub_bytes_per_second: None,
                reclaim_step_bytes: crate::journal::RECLAIM_STEP_BYTES_DEFAULT,
                recycle_segments: true,
                hard_state_after_cut: None,
            },
            storage: DmaStorage::new(),
        }
    }

    /// Accept a filesystem without O_DIRECT (tmpfs), where glommio falls
    /// back to buffered I/O plus fdatasync. Default: `false`, and such a
    /// directory fails to open with [`Error::DirectIoUnsupported`].
    pub fn allow_buffered_io(mut self, allow: bool) -> Self {
        self.storage = if allow {
            DmaStorage::allowing_buffered_io()
        } else {
            DmaStorage::new()
        };
        self
    }
}

impl<S: Storage> JournalBuilder<S> {
    /// Use another storage backend (e.g. [`crate::storage::MemStorage`] for
    /// simulation).
    pub fn storage<T: Storage>(self, storage: T) -> JournalBuilder<T> {
        JournalBuilder {
            config: self.config,
            storage,
        }
    }

    /// Ring slots: how many ops may sit above the watermark at once.
    /// Default [`SLOT_COUNT_DEFAULT`]; valid `1..=SLOT_COUNT_MAX`.
    pub fn slot_count(mut self, slot_count: u64) -> Self {
        self.config.slot_count = slot_count;
        self
    }

    /// Size of each segment file. Default [`SEGMENT_BYTES_DEFAULT`]; a
    /// multiple of 4096, at most [`SEGMENT_BYTES_MAX`], and at least one
    /// header block plus `batch_bytes_max` plus one block kept for a
    /// watermark record.
    pub fn segment_bytes(mut self, segment_bytes: u64) -> Self {
        self.config.segment_bytes = segment_bytes;
        self
    }

    /// Largest payload accepted. Default [`ENTRY_BYTES_MAX_DEFAULT`]; valid
    /// `1..=ENTRY_BYTES_MAX_LIMIT`, and one entry must fit in a batch.
    pub fn entry_bytes_max(mut self, entry_bytes_max: u64) -> Self {
        self.config.entry_bytes_max = entry_bytes_max;
        self
    }

    /// Largest group-commit write, and so the bound on queued bytes before
    /// appends wait (backpressure). Default [`BATCH_BYTES_MAX_DEFAULT`]; a
    /// multiple of 4096 up to [`BATCH_BYTES_MAX_LIMIT`].
    ///
    /// The journal holds up to `writes_in_flight + 1` batch buffers at once.
    /// Size glommio's registered I/O memory
    /// (`LocalExecutorBuilder::io_memory`, 10 MiB by default) to hold them,
    /// or the buffers come from the heap and each batch pays page faults (in
    /// the bench here, 64 KiB bulk appends with 4 MiB batches reached 0.69x
    /// of the device's write bandwidth on the default pool and 0.86x with a
    /// 64 MiB one).
    pub fn batch_bytes_max(mut self, batch_bytes_max: u64) -> Self {
        self.config.batch_bytes_max = batch_bytes_max;
        self
    }

    /// Group-commit writes in flight at once: while one write (and its
    /// fdatasync) is in flight the next batch is already written, and
    /// batches are acknowledged in order. Recovery looks this many writes
    /// past damage for a later write that vouches for it (see the `recovery`
    /// module); after a crash, up to this many writes at the tail may be
    /// unvouched for. Default
    /// [`WRITES_IN_FLIGHT_DEFAULT`]; valid `1..=WRITES_IN_FLIGHT_MAX`
    /// (1: strictly serial writes).
    pub fn writes_in_flight(mut self, writes: u32) -> Self {
        self.config.writes_in_flight = writes;
        self
    }

    /// Largest group-commit write made *inline*: when no other write is in
    /// flight, a write of at most this many bytes (and its fdatasync, or
    /// its O_DSYNC) is a blocking `pwrite(2)` (and `fdatasync(2)`) on the
    /// reactor thread instead of a submission to io_uring, where the
    /// kernel hands the fdatasync to a worker thread and the reactor learns
    /// of each completion a wake-up later. Before it, the tasks already
    /// runnable run; during it, the reactor runs nothing else. Once the
    /// moving average of inline write times exceeds
    /// [`crate::INLINE_WRITE_SLOW`] (the disk in a slow spell), inline
    /// writes stop for [`crate::INLINE_WRITES_PAUSED_FOR`]; and a run of
    /// them without a reactor turn ends after [`crate::INLINE_STREAK_MAX`],
    /// so that other tasks' I/O is not held back.
    /// Larger writes, and writes while another is in flight, go through
    /// io_uring as before: a large batch is better overlapped with the next
    /// one's filling.
    ///
    /// Default [`INLINE_WRITE_BYTES_MAX_DEFAULT`]; 0 turns inline writes
    /// off, which a reactor that also serves latency-sensitive work should
    /// do (a raft node's journal does: its network waits otherwise). The
    /// durability and the format are the same either way. Counted in
    /// [`crate::JournalStats::inline_writes`].
    pub fn inline_write_bytes_max(mut self, bytes: u64) -> Self {
        self.config.inline_write_bytes_max = bytes;
        self
    }

    /// Who the journal belongs to: a domain, a shard index and the shard
    /// count (0 when unknown: then only the domain is compared). Recorded in
    /// the journal's superblock; opening a journal that holds data and
    /// records another owner fails with [`crate::Error::WrongOwner`] naming
    /// the superblock (a journal directory of another shard or domain). A
    /// journal without a recorded owner, or holding nothing, takes this one.
    /// Default: none, and any journal opens.
    pub fn owner(mut self, owner: JournalOwner) -> Self {
        self.config.owner = Some(owner);
        self
    }

    /// Runs a scrubber that re-reads every segment, every byte, verifying
    /// it the way `ringstore wal verify` does, reading `bytes_per_second`
    /// on average, pass after pass. Recovery reads each write's index, not
    /// its payloads, so a payload damaged at rest is otherwise found only
    /// when its entry is read; the scrubber reports it (a log line,
    /// `JournalStats::scrub_damage`, [`crate::Journal::scrub_damage`]) and
    /// changes nothing. Default 0: no scrubber.
    pub fn scrub_rate(mut self, bytes_per_second: u64) -> Self {
        self.config.scrub_bytes_per_second = std::num::NonZeroU64::new(bytes_per_second);
        self
    }

    /// How a retired segment's disk space is given back. On a filesystem
    /// mounted with online discard (ext4 `-o discard`), the blocks a
    /// removal frees are discarded inside the filesystem journal's commit,
    /// and every fdatasync waiting on that commit waits for the discard: a
    /// checkpoint retiring 1 GiB of segments at once held acknowledgements
    /// for 140-150 ms on this project's test host. So a retired segment
    /// larger than `bytes` is shrunk by `bytes` at a time in the background
    /// (each step synced, with a pause between steps), then removed.
    /// Default [`RECLAIM_STEP_BYTES_DEFAULT`](crate::RECLAIM_STEP_BYTES_DEFAULT);
    /// 0 removes retired segments at once (without online discard a
    /// removal is cheap). With less than four segments' worth of space
    /// free (or a journal opened on a full disk), retired segments are
    /// removed at once: the next rollovers need the space. So are they
    /// while a reader still holds one, and when the journal closes.
    pub fn reclaim_step_bytes(mut self, bytes: u64) -> Self {
        self.config.reclaim_step_bytes = bytes;
        self
    }

    /// Whether a retired segment's file becomes a later segment instead of
    /// being removed (default `true`). Its blocks are then already written:
    /// no zero-fill ([`Preallocation::ZeroFill`]) and no unwritten extents
    /// to convert on the first fdatasync of each block
    /// ([`Preallocation::Fallocate`]), and no discard of the freed space
    /// (see [`JournalBuilder::reclaim_step_bytes`]). At most
    /// [`RECYCLED_SEGMENTS_KEPT`](crate::RECYCLED_SEGMENTS_KEPT) wait for
    /// reuse; a segment is removed instead while a reader holds it, when
    /// space is short, and when the journal closes. The new segment's
    /// header is flagged recycled: recovery then reads the older bytes
    /// past its last write as the end of the log (see `FORMAT.md`). With
    /// `false`, every segment is a new file and its space past the last
    /// write reads as zeros.
    pub fn recycle_segments(mut self, recycle: bool) -> Self {
        self.config.recycle_segments = recycle;
        self
    }

    /// For a replica that must remember a cut tail
    /// ([`crate::RecoveryReport::tail_is_uncertain`]) until it is repaired:
    /// when recovery cuts the tail, the open hands the newest hard state
    /// and the log's last op after the cut to `mark`, and writes what it
    /// returns into the superblock as the hard state, durably, before it
    /// does anything that records the cut (a new segment names the old
    /// one's end, after which a reopen no longer sees a cut). A crash before
    /// that write leaves the cut to be found again; after it, the mark is
    /// there. At most [`crate::format::HARD_STATE_BYTES_MAX`] bytes
    /// (longer fails the open with [`Error::EntryTooLarge`]). Default: none.
    pub fn hard_state_after_cut(mut self, mark: HardStateAfterCut) -> Self {
        self.config.hard_state_after_cut = Some(mark);
        self
    }

    /// What acknowledged appends survive. Default [`Durability::Auto`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.config.durability = durability;
        self
    }

    /// Torn-tail policy. Default [`Recovery::TruncateTornTail`].
    pub fn recovery(mut self, recovery: Recovery) -> Self {
        self.config.recovery = recovery;
        self
    }

    /// How new segments get disk space. Default [`Preallocation::Fallocate`].
    pub fn preallocation(mut self, preallocation: Preallocation) -> Self {
        self.config.preallocation = preallocation;
        self
    }

    /// Validates the settings, recovers what the directory holds and opens
    /// the journal. Must run inside a glommio executor (for `DmaStorage`).
    pub async fn open(mut self) -> Result<Journal<S>> {
        validate(&self.config)?;
        // Absolute, so error messages name the real place and directory
        // handles do not depend on the working directory.
        self.config.dir = std::path::absolute(&self.config.dir)
            .map_err(|e| Error::io("resolve directory", &self.config.dir, None, e))?;
        Journal::open_with(self.config, self.storage).await
    }
}

fn invalid(setting: &'static str, value: u64, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        setting,
        value,
        reason: reason.into(),
    }
}

pub(crate) fn validate(config: &JournalConfig) -> Result<()> {
    if config.slot_count == 0 || config.slot_count > SLOT_COUNT_MAX {
        return Err(invalid(
            "slot_count",
            config.slot_count,
            format!("must be in 1..={SLOT_COUNT_MAX}"),
        ));
    }
    if config.entry_bytes_max == 0 || config.entry_bytes_max > ENTRY_BYTES_MAX_LIMIT {
        return Err(invalid(
            "entry_bytes_max",
            config.entry_bytes_max,
            format!("must be in 1..={ENTRY_BYTES_MAX_LIMIT}"),
        ));
    }
    // One entry of the largest size, the write's index listing it, and the
    // padding header ending the write.
    let batch_min = align_up(
        entry_footprint(config.entry_bytes_max as usize)
            + index_footprint(1)
            + ENTRY_HEADER_BYTES as u64,
        BLOCK_BYTES,
    );
    if !config.batch_bytes_max.is_multiple_of(BLOCK_BYTES)
        || config.batch_bytes_max < batch_min
        || config.batch_bytes_max > BATCH_BYTES_MAX_LIMIT
    {
        return Err(invalid(
            "batch_bytes_max",
            config.batch_bytes_max,
            format!(
                "must be a multiple of {BLOCK_BYTES} in {batch_min}..={BATCH_BYTES_MAX_LIMIT} \
                 (one entry of entry_bytes_max must fit)"
            ),
        ));
    }
    // Recorded in every segment header and checked there by recovery: a
    // value outside the range would be written, acknowledged, and then
    // refuse the next open; 0 would leave every append waiting for a slot.
    if config.writes_in_flight == 0 || config.writes_in_flight > WRITES_IN_FLIGHT_MAX {
        return Err(invalid(
            "writes_in_flight",
            u64::from(config.writes_in_flight),
            format!("must be in 1..={WRITES_IN_FLIGHT_MAX}"),
        ));
    }
    let segment_min =
        SEGMENT_DATA_OFFSET + config.batch_bytes_max + crate::journal::WATERMARK_RESERVE_BYTES;
    if !config.segment_bytes.is_multiple_of(BLOCK_BYTES)
        || config.segment_bytes < segment_min
        || config.segment_bytes > SEGMENT_BYTES_MAX
    {
        return Err(invalid(
            "segment_bytes",
            config.segment_bytes,
            format!(
                "must be a multiple of {BLOCK_BYTES} in {segment_min}..={SEGMENT_BYTES_MAX} \
                 (a header block, one batch and a watermark block must fit)"
            ),
        ));
    }
    Ok(())
}
