//! The journal: its API (appends, replica writes, reads, the watermark,
//! truncation, the hard state) and the state its parts share. Each part
//! lives in a module of its own:
//!
//! * `writer` — the group-commit writer: batches, the write pipeline, the
//!   in-order acknowledgement.
//! * `reader` — reads of one op, and [`Entries`] with its read-ahead.
//! * `open` — opening: recovery's result turned into a writable journal.
//! * `watermark` — watermark advances and the retirement of segments.
//! * `rollover` — moving to the next segment, prepared in the background.
//! * `superblock_io` — creating and updating the journal's superblock.
//!
//! # Poisoning
//!
//! If a write or fdatasync fails, the journal cannot know what reached the
//! disk (and Linux may drop the dirty state after a failed fsync), so it
//! stops: the failing batch's appenders get the error and every later call
//! returns [`Error::Poisoned`] until the journal is reopened, which recovers
//! from what is durable.

mod open;
mod reader;
mod recycle;
mod rollover;
mod scrub;
mod superblock_io;
mod watermark;
mod writer;

pub use reader::{Entries, ENTRIES_READ_AHEAD_BYTES};
pub use recycle::RECYCLED_SEGMENTS_KEPT;
pub use scrub::{ScrubPass, SCRUB_DAMAGE_KEPT};
pub use watermark::RECLAIM_STEP_BYTES_DEFAULT;
pub use writer::{
    INLINE_STREAK_MAX, INLINE_WRITES_PAUSED_FOR, INLINE_WRITE_AVERAGE_WEIGHT, INLINE_WRITE_SLOW,
};

use rollover::{next_generation, record_rollover};
use superblock_io::{create_superblock, write_superblock};
use writer::{run_write_slot, run_writer, Batch, BatchDone, BatchVecs, WriteSlot, WriterSignal};

use crate::config::{Durability, JournalBuilder, JournalConfig};
use crate::error::{Error, Result};
use crate::format::{
    align_down, align_up, check_entry_header, entry_footprint, index_footprint, write_end,
    EntryHeader, EntryKind, IndexRecord, BLOCK_BYTES, ENTRY_HEADER_BYTES, ENTRY_MAGIC,
    FLAG_FIRST_IN_WRITE, HARD_STATE_BYTES_MAX, INDEX_RECORD_BYTES, SEGMENT_DATA_OFFSET,
};
use crate::glommio_quirks::reactor_turn;
use crate::index::{Location, Lookup, Reservation, RingIndex};
use crate::recovery::{recover, RecoveryReport};
use crate::segment::{
    activate_segment, create_segment, CreateError, Predecessor, PreparedFile, Segment,
};
use crate::storage::{DmaStorage, IoBuf, Storage, StorageFile};
use crate::superblock::{
    self, JournalOwner, JournalSuperblock, SuperblockKind, SUPERBLOCK_FILE_NAME,
};
use crate::verify::SUPERBLOCK_TEMP_NAME;
use event_listener::Event;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use zerocopy::IntoBytes;

/// Space at the end of every segment that only a write carrying a
/// watermark record may use.
pub(crate) const WATERMARK_RESERVE_BYTES: u64 = BLOCK_BYTES;

/// An append that has its op number and is on its way to the disk; see
/// [`Journal::queue_append`].
#[derive(Clone)]
pub struct QueuedAppend {
    op: u64,
    epoch: u64,
    done: Rc<BatchDone>,
}

impl std::fmt::Debug for QueuedAppend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuedAppend")
            .field("op", &self.op)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// A hard state on its way to the disk; see [`Journal::queue_hard_state`].
#[derive(Clone)]
pub struct QueuedHardState {
    done: Rc<BatchDone>,
}

impl std::fmt::Debug for QueuedHardState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuedHardState").finish_non_exhaustive()
    }
}

impl QueuedHardState {
    /// Resolves once the record is durable, or with the error that failed
    /// its write.
    pub async fn durable(&self) -> Result<()> {
        self.done.wait().await
    }
}

impl QueuedAppend {
    /// The op number.
    pub fn op(&self) -> u64 {
        self.op
    }

    /// The epoch stamped on the entry.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Resolves once the entry is durable (per the journal's durability),
    /// or with the error that failed its write.
    pub async fn durable(&self) -> Result<()> {
        self.done.wait().await
    }
}

/// One entry read back from the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Op number.
    pub op: u64,
    /// Epoch it was written in.
    pub epoch: u64,
    /// The payload, verified against its checksum.
    pub payload: Vec<u8>,
}

/// An item of [`Entries`]: an entry, or an op the journal does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogItem {
    /// The op is present.
    Present(Entry),
    /// The op was never written, or its write is not durable yet.
    Missing(u64),
}

/// Buckets of [`JournalStats::batch_entries_log2`]: batches of 1 entry up to
/// 2^15 and more.
pub const BATCH_SIZE_BUCKETS: usize = 16;

/// Counters since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Data entries accepted (appends and replica writes).
    pub appends: u64,
    /// Group-commit writes issued.
    pub writes: u64,
    /// Durability points: fdatasync calls after writes, or writes made
    /// through O_DSYNC ([`Durability::WriteThrough`]).
    pub fsyncs: u64,
    /// Of `writes`, those made inline with blocking system calls
    /// ([`JournalBuilder::inline_write_bytes_max`]).
    pub inline_writes: u64,
    /// Times inline writes stopped for [`INLINE_WRITES_PAUSED_FOR`], their
    /// moving average above [`INLINE_WRITE_SLOW`].
    pub inline_write_pauses: u64,
    /// Bytes written by group-commit writes (including padding).
    pub bytes_written: u64,
    /// Entries (of every kind) made durable.
    pub entries_written: u64,
    /// Most entries in one write.
    pub batch_entries_max: u64,
    /// Group-commit batch sizes: element `i` counts the writes that carried
    /// `2^i ..= 2^(i+1) - 1` entries (the last element: that many or more).
    pub batch_entries_log2: [u64; BATCH_SIZE_BUCKETS],
    /// Segments created.
    pub segments_created: u64,
    /// Retired segments (a watermark advance's retirement): their files
    /// removed at once, reclaimed in steps, or kept for recycling.
    pub segments_retired: u64,
    /// Segments made from a retired segment's file and activated
    /// ([`JournalBuilder::recycle_segments`]); also counted in
    /// `segments_created`.
    pub segments_recycled: u64,
    /// Truncations made durable ([`Journal::truncate_after`]).
    pub truncations: u64,
    /// Hard states made durable ([`Journal::set_hard_state`]).
    pub hard_states: u64,
    /// The durability in use ([`Durability::Auto`] resolved at open: see
    /// [`Journal::durability_choice`]).
    pub durability: Durability,
    /// Passes of the scrubber over every segment
    /// ([`JournalBuilder::scrub_rate`]).
    pub scrub_passes: u64,
    /// Bytes the scrubber read.
    pub scrub_bytes: u64,
    /// Places the scrubber found damaged ([`Journal::scrub_damage`]).
    pub scrub_damage: u64,
    /// Segment scans the scrubber could not finish for a read error (the
    /// segment is read again next pass). A block that fails every read is
    /// named by its offset, logged at error level and kept in
    /// [`Journal::scrub_damage`] once per place; a failure that does not
    /// repeat block by block is logged as a warning each time.
    pub scrub_read_errors: u64,
    /// Reads that found an entry damaged (read twice; each logged and
    /// returned as `Error::Corruption` with the file and offset).
    pub read_corruptions: u64,
    /// Reads whose entry failed verification the first time and that were
    /// read again, alone: a transient read error (the second read good),
    /// damage (also counted in `read_corruptions`), or an [`Entries`] walk
    /// just behind the writer whose read ahead was issued before those
    /// bytes were written.
    pub read_retries: u64,
    /// Reads of an entry the disk failed (each logged at error level with
    /// the file, the entry's offset and the block that fails alone, and
    /// returned as `Error::Io`).
    pub read_io_errors: u64,
}

/// A write-ahead log owned by one shard. Cheap to clone (all clones are the
/// same journal); `!Send`: it lives on one glommio reactor.
///
/// The next segment's file is prepared by a background task on the same
/// reactor, so rolling over to it costs one header write. Call
/// [`Journal::close`] before opening the same directory again: it waits for
/// that task and removes the unused spare.
///
/// ```no_run
/// # async fn demo() -> ringstore_journal::Result<()> {
/// use ringstore_journal::Journal;
/// let journal = Journal::builder("/var/lib/shard-0/wal").slot_count(1 << 16).open().await?;
/// let op = journal.append(b"hello").await?; // durable once this resolves
/// assert_eq!(journal.read(op).await?.unwrap().payload, b"hello");
/// journal.advance_watermark(op).await?; // after a snapshot covering `op` is durable
/// journal.close().await?;
/// # Ok(()) }
/// ```
pub struct Journal<S: Storage = DmaStorage> {
    shared: Rc<Shared<S>>,
}

impl<S: Storage> Clone for Journal<S> {
    fn clone(&self) -> Self {
        Journal {
            shared: self.shared.clone(),
        }
    }
}

impl<S: Storage> std::fmt::Debug for Journal<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.shared.config.dir)
            .finish_non_exhaustive()
    }
}

struct Shared<S: Storage> {
    config: JournalConfig,
    storage: S,
    state: RefCell<State<S::File>>,
    /// Wakes the writer: the filling batch has entries, or closing.
    work: Rc<WriterSignal>,
    /// Wakes appenders waiting for room in the filling batch.
    space: Event,
    /// Wakes `close()` when the writer has exited.
    writer_exited: Event,
    /// Wakes a rollover waiting for the spare segment's preparation.
    spare_ready: Event,
    /// Wakes `close()` when a retirement or the reclaiming of retired
    /// segments has ended.
    reclaim_done: Event,
    /// Wakes the writer and the next write in issue order when a write in
    /// flight finished.
    pipeline: Event,
    /// The write pipeline's places, one per write in flight at most.
    write_slots: Box<[Rc<WriteSlot<S>>]>,
    /// Whether the reactor turned since the current run of inline writes
    /// began.
    turns: crate::glommio_quirks::TurnWatch,
    recovery: RecoveryReport,
    durability_choice: crate::durability::DurabilityChoice,
    /// The superblock as last written, and its sequence.
    superblock: RefCell<(JournalSuperblock, u64)>,
    /// A superblock update is running (they are serialized).
    superblock_busy: Cell<bool>,
    /// The highest sequence an update started to write, finished or not:
    /// the next update writes a higher one, so two copies never share a
    /// sequence with different contents (an update cut short by its
    /// future's drop may have written one copy).
    superblock_sequence_tried: Cell<u64>,
    /// Wakes an update waiting for the running one.
    superblock_idle: Event,
    /// Damage the scrubber found (see [`Journal::scrub_damage`]).
    scrub_damage: RefCell<Vec<crate::verify::Damage>>,
    /// Every place the scrubber reported (each is reported once).
    scrub_reported: RefCell<std::collections::HashSet<(PathBuf, u64, scrub::FindingKind)>>,
}

impl<S: Storage> Drop for Shared<S> {
    fn drop(&mut self) {
        // Entries still waiting in the filling batch are never written: a
        // journal dropped without `close` fails them rather than leave
        // their `durable()` waiting for ever. (Every write already issued
        // holds the journal until it finishes.)
        let filling = std::mem::replace(&mut self.state.get_mut().filling, Batch::new());
        if !filling.is_empty() {
            filling.fail(Error::Closed);
        }
        // Let the writer and the write slots see that the journal is gone
        // and exit.
        self.work.signal();
        for slot in self.write_slots.iter() {
            slot.close();
        }
    }
}

struct State<F: StorageFile> {
    index: RingIndex,
    /// Oldest first; the back is the active segment.
    segments: VecDeque<Segment<F>>,
    next_op: u64,
    epoch: u64,
    /// Largest watermark whose record is durable; new segment headers carry it.
    durable_watermark: u64,
    /// The back segment is a recovered one (opened on a full disk): the next
    /// write must create a segment first.
    needs_fresh_segment: bool,
    /// A segment retirement is in progress.
    retiring: bool,
    /// Retired segments whose files are still being shrunk and removed,
    /// oldest first (see `Journal::reclaim_retired`).
    reclaim: VecDeque<Segment<F>>,
    /// A task is reclaiming them.
    reclaiming: bool,
    /// Retired segments kept to become next segments, oldest first (see
    /// `recycle`): files below the superblock's first generation.
    recyclable: VecDeque<Segment<F>>,
    /// Ops at or below this may be gone although the ring watermark is
    /// lower: a watermark advance on a full disk retired their segments
    /// before its record was durable (their slots are freed only then).
    compacted_floor: u64,
    /// The next segment's file, prepared in the background.
    spare: Option<PreparedFile<F>>,
    /// A background preparation is running.
    preparing: bool,
    /// A rollover waits for the spare being prepared: its zero-fill stops
    /// giving way (the appenders wait on it too).
    spare_awaited: bool,
    /// Writes issued and not yet finished.
    writes_in_flight: usize,
    /// Inline writes are paused until then (see [`INLINE_WRITE_SLOW`]).
    inline_paused_until: Option<std::time::Instant>,
    /// Moving average of inline write times.
    inline_write_average: std::time::Duration,
    /// The current run of inline writes without a reactor turn.
    inline_streak: Option<writer::InlineStreak>,
    /// Writes issued so far: the next write's place in issue order.
    writes_issued: u64,
    /// Writes finished so far, in issue order (a write finishes only after
    /// every earlier one).
    writes_finished: u64,
    /// Whether the last write to finish, and every one before it in the
    /// same run of writes in flight, succeeded.
    previous_write_ok: bool,
    filling: Batch<F::Buf>,
    /// Vectors of finished batches, for the next ones.
    recycled: BatchVecs,
    poisoned: Option<Error>,
    closing: bool,
    writer_running: bool,
    stats: JournalStats,
    /// The newest durable hard state (empty: none) and its sequence: of
    /// the last hard-state record in log order and the superblock's, the
    /// one with the greater sequence.
    hard_state: (u64, Vec<u8>),
    /// The sequence given to the last hard state queued.
    hard_state_issued: u64,
    /// The largest watermark an advance was asked for (durable or not): a
    /// truncation below it could free ops a snapshot already covers.
    watermark_requested: u64,
    /// Batches that failed before their write was issued, and the error of
    /// the last: a request submitted before such a failure and not yet
    /// queued fails with it too (see `Shared::fail_unissued`).
    unissued_failures: (u64, Option<Error>),
}

#[derive(Clone, Copy)]
enum Request<'a> {
    Append(&'a [u8]),
    Write(u64, &'a [u8]),
    Watermark(u64),
    /// Discard every entry above this op (the index already forgot them).
    Truncate(u64),
    HardState(&'a [u8]),
}

impl<F: StorageFile> State<F> {
    fn usable(&self) -> Result<()> {
        if let Some(cause) = &self.poisoned {
            return Err(Error::Poisoned {
                cause: Box::new(cause.clone()),
            });
        }
        if self.closing {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn active(&self) -> &Segment<F> {
        self.segments
            .back()
            .expect("an open journal always has an active segment")
    }

    fn segment(&self, generation: u64) -> Option<&Segment<F>> {
        let at = self.segments.partition_point(|s| s.generation < generation);
        self.segments.get(at).filter(|s| s.generation == generation)
    }

    /// The op below which `next_op` never goes back: every op up to it is
    /// compacted, or covered by a snapshot a watermark advance was asked
    /// for (durable, in flight, or failed: the request is not rolled back,
    /// and the caller's snapshot covers those ops either way).
    fn held_floor(&self) -> u64 {
        self.compacted_floor
            .max(self.durable_watermark)
            .max(self.watermark_requested)
    }
}

#[cfg(feature = "sim")]
impl<S: Storage> Journal<S> {
    /// Where op `op`'s durable entry lies: its segment's path, the entry's
    /// offset there and its payload's length (the simulation aims its
    /// damage at rest at a payload).
    pub(crate) fn entry_place(&self, op: u64) -> Option<(PathBuf, u64, u32)> {
        let state = self.shared.state.borrow();
        match state.index.lookup(op) {
            crate::index::Lookup::Durable(location, _) => {
                let segment = state.segment(location.generation)?;
                Some((
                    segment.path.clone(),
                    u64::from(location.offset),
                    location.payload_len,
                ))
            }
            _ => None,
        }
    }
}

impl Journal<DmaStorage> {
    /// Starts building a journal in `dir` (created if missing) on real
    /// O_DIRECT files. See [`JournalBuilder`] for the settings.
    pub fn builder(dir: impl Into<PathBuf>) -> JournalBuilder<DmaStorage> {
        JournalBuilder::new(dir.into())
    }
}

impl<S: Storage> Journal<S> {
    /// Appends `payload` as the next op (leader side). Resolves with the op
    /// number once the entry is durable (per [`Durability`]). Concurrent
    /// appends on the shard share one write and its fdatasync (or one
    /// O_DSYNC write).
    ///
    /// Fails before any I/O with [`Error::RingFull`] when the next op's slot
    /// still holds an op above the watermark, and with
    /// [`Error::EntryTooLarge`] for an oversized payload.
    pub async fn append(&self, payload: &[u8]) -> Result<u64> {
        self.submit(Request::Append(payload))
            .await
            .map(|(op, _)| op)
    }

    /// Queues `payload` as the next op and returns as soon as it has its op
    /// number, before it is durable: [`QueuedAppend::durable`] waits for
    /// that. The entry is written whether or not anyone waits, so a caller
    /// that must act on every op (apply it, say) learns the op even if it
    /// stops waiting. Fails like [`Journal::append`].
    pub async fn queue_append(&self, payload: &[u8]) -> Result<QueuedAppend> {
        let (op, epoch, done) = self.enqueue(Request::Append(payload)).await?;
        Ok(QueuedAppend { op, epoch, done })
    }

    /// Writes `payload` as op `op` (replica side: ops may arrive out of
    /// order and with gaps). Resolves once durable. Rewriting an op already
    /// present needs a strictly greater epoch (see [`Journal::set_epoch`]);
    /// the later epoch's entry then replaces it.
    pub async fn write(&self, op: u64, payload: &[u8]) -> Result<()> {
        self.submit(Request::Write(op, payload)).await.map(|_| ())
    }

    /// Queues `payload` as op `op` (a replica write, see [`Journal::write`])
    /// and returns once it is queued, before it is durable:
    /// [`QueuedAppend::durable`] waits for that. Requests queued one after
    /// the other reach the disk in that order.
    pub async fn queue_write(&self, op: u64, payload: &[u8]) -> Result<QueuedAppend> {
        let (op, epoch, done) = self.enqueue(Request::Write(op, payload)).await?;
        Ok(QueuedAppend { op, epoch, done })
    }

    /// Queues `request`; resolves with its op and the epoch stamped on it
    /// once durable.
    async fn submit(&self, request: Request<'_>) -> Result<(u64, u64)> {
        let (op, epoch, done) = self.enqueue(request).await?;
        done.wait().await.map(|()| (op, epoch))
    }

    /// Queues `request` in the filling batch (waiting for room) and wakes
    /// the writer; returns its op, its epoch and its batch's completion.
    async fn enqueue(&self, request: Request<'_>) -> Result<(u64, u64, Rc<BatchDone>)> {
        let shared = &*self.shared;
        let payload_len = match request {
            Request::Append(p) | Request::Write(_, p) | Request::HardState(p) => p.len(),
            Request::Watermark(_) | Request::Truncate(_) => 0,
        };
        if payload_len as u64 > shared.config.entry_bytes_max {
            return Err(Error::EntryTooLarge {
                len: payload_len,
                max: shared.config.entry_bytes_max as usize,
            });
        }
        let footprint = entry_footprint(payload_len) as usize;
        let batch_bytes_max = shared.config.batch_bytes_max as usize;
        let failures_seen = shared.state.borrow().unissued_failures.0;
        let (op, epoch, done) = loop {
            {
                let mut state = shared.state.borrow_mut();
                state.usable()?;
                // A batch queued before this request failed while it waited
                // for room: it must not reach the disk without that batch.
                if let (true, Some(error)) = (
                    state.unissued_failures.0 != failures_seen,
                    &state.unissued_failures.1,
                ) {
                    return Err(error.clone());
                }
                if state.filling.fits(footprint, batch_bytes_max) {
                    let epoch = state.epoch;
                    let (op, done) = state.enqueue(request, &shared.config)?;
                    break (op, epoch, done);
                }
            }
            notified(&shared.space).await;
        };
        shared.work.signal();
        Ok((op, epoch, done))
    }
}

impl<S: Storage> Journal<S> {
    /// Durably discards every entry above `op`: a new leader's log
    /// overrides this replica's divergent, uncommitted suffix. Resolves once
    /// the truncation is durable; from then on reads above `op` return
    /// `None`, their ring slots are free, and [`Journal::append`] continues
    /// one above the highest op still held at or below `op` (`op + 1`
    /// unless `op` is a gap a replica's writes left; a reopen finds the
    /// same), or above a watermark asked for if that is higher. A
    /// [`Journal::write`] of those op numbers is accepted in any epoch.
    ///
    /// It is a record in the log, ordered with every other write: an append
    /// queued after it survives it, one queued before it does not. Writes
    /// above `op` still in flight are waited for first. Nothing is rewritten
    /// in place. Refused with [`Error::BelowWatermark`] below the watermark,
    /// or below one an advance still in flight asked for (those ops are in
    /// a snapshot already). If its record cannot be written (a full disk
    /// when it needs a new segment), the journal is poisoned: memory already
    /// forgot the ops the disk still holds; reopen to continue.
    pub async fn truncate_after(&self, op: u64) -> Result<()> {
        let shared = &*self.shared;
        let footprint = entry_footprint(0) as usize;
        let batch_bytes_max = shared.config.batch_bytes_max as usize;
        let done = loop {
            let wait_for_writes = {
                let mut state = shared.state.borrow_mut();
                state.usable()?;
                let floor = state
                    .index
                    .watermark()
                    .max(state.compacted_floor)
                    .max(state.watermark_requested);
                if op == u64::MAX {
                    return Err(Error::InvalidOp { op });
                }
                if op < floor {
                    return Err(Error::BelowWatermark {
                        op,
                        watermark: floor,
                    });
                }
                let pending = state.index.has_pending_above(op);
                let room = state.filling.fits(footprint, batch_bytes_max);
                if !pending && room {
                    // Forget and queue in one step: nothing can be queued
                    // between the two.
                    state.index.truncate_above(op);
                    // One above the highest op still held, as a reopen finds
                    // it (`op + 1` unless `op` is a replica's gap).
                    let held = state.index.highest_held_below(op + 1, state.held_floor());
                    state.next_op = state.next_op.min(held + 1);
                    let (_, done) = state.enqueue(Request::Truncate(op), &shared.config)?;
                    break done;
                }
                pending
            };
            if wait_for_writes {
                notified(&shared.pipeline).await;
            } else {
                notified(&shared.space).await;
            }
        };
        shared.work.signal();
        done.wait().await
    }

    /// Durably records the replica's hard state (its vote and commit point,
    /// at most [`HARD_STATE_BYTES_MAX`] bytes, opaque to the journal).
    /// Resolves once durable. It is a record in the next group-commit write,
    /// ordered with appends: no extra fdatasync, and after a crash a hard
    /// state is never seen without the appends queued before it, nor an
    /// append without the hard states queued before it. Read it back with
    /// [`Journal::hard_state`].
    pub async fn set_hard_state(&self, hard_state: &[u8]) -> Result<()> {
        if hard_state.len() > HARD_STATE_BYTES_MAX {
            return Err(Error::EntryTooLarge {
                len: hard_state.len(),
                max: HARD_STATE_BYTES_MAX,
            });
        }
        self.submit(Request::HardState(hard_state))
            .await
            .map(|_| ())
    }

    /// [`Journal::set_hard_state`] without waiting: the record is queued
    /// behind every entry queued before it (and ahead of every one queued
    /// after), and the returned handle resolves once it is durable. For
    /// what a crash may lose without harm (openraft's committed index),
    /// so the caller need not spend a group commit of its own on it.
    pub async fn queue_hard_state(&self, hard_state: &[u8]) -> Result<QueuedHardState> {
        if hard_state.len() > HARD_STATE_BYTES_MAX {
            return Err(Error::EntryTooLarge {
                len: hard_state.len(),
                max: HARD_STATE_BYTES_MAX,
            });
        }
        let (_, _, done) = self.enqueue(Request::HardState(hard_state)).await?;
        Ok(QueuedHardState { done })
    }

    /// The newest durable hard state (empty if none was ever set).
    pub fn hard_state(&self) -> Vec<u8> {
        self.shared.state.borrow().hard_state.1.clone()
    }

    /// Writes the newest durable hard state into the superblock as well
    /// (both copies, each synced), so that no tail cut can take it: a
    /// record in the log lives in the log's last writes, and recovery cuts
    /// those when they do not verify and nothing vouches for them
    /// ([`crate::RecoveryReport::tail_is_uncertain`]), which damage at rest
    /// after the write's fdatasync cannot be told apart from. A replica
    /// copies its vote here before it grants it: a vote lost that way
    /// would let it vote twice in a term. The open takes whichever of the
    /// two is newer. One superblock update per call; for what changes
    /// rarely.
    pub async fn copy_hard_state_to_superblock(&self) -> Result<()> {
        self.shared.state.borrow().usable()?;
        // `update_superblock` always carries the durable hard state.
        self.shared.update_superblock(|_| {}).await
    }
}

impl<S: Storage> Journal<S> {
    /// Records who the journal belongs to in its superblock, durably (e.g.
    /// after the shard was reset into another domain).
    pub async fn set_owner(&self, owner: JournalOwner) -> Result<()> {
        self.shared.state.borrow().usable()?;
        self.shared
            .update_superblock(|sb| sb.owner = Some(owner))
            .await
    }

    /// The owner recorded in the superblock, if any.
    pub fn owner(&self) -> Option<JournalOwner> {
        self.shared.superblock.borrow().0.owner
    }

    /// Sets the epoch stamped on later appends and writes. Never decreases.
    pub fn set_epoch(&self, epoch: u64) -> Result<()> {
        let mut state = self.shared.state.borrow_mut();
        state.usable()?;
        if epoch < state.epoch {
            return Err(Error::EpochRegression {
                requested: epoch,
                current: state.epoch,
            });
        }
        state.epoch = epoch;
        Ok(())
    }

    /// The epoch stamped on new entries (after open: the largest recovered).
    pub fn epoch(&self) -> u64 {
        self.shared.state.borrow().epoch
    }

    /// The watermark: ops at or below it are compacted.
    pub fn watermark(&self) -> u64 {
        self.shared.state.borrow().index.watermark()
    }

    /// The op the next `append` will get: one above the highest op the
    /// journal holds, is writing, or has compacted or been asked to
    /// compact (a watermark advance). A write that fails
    /// before it reaches the disk (and everything queued behind it) hands
    /// its op numbers back if no later op was assigned meanwhile, so a
    /// replica can check that an append leaves no gap.
    pub fn next_op(&self) -> u64 {
        self.shared.state.borrow().next_op
    }

    /// Ring slots free for new ops above the watermark.
    pub fn remaining_capacity(&self) -> u64 {
        self.shared.state.borrow().index.remaining_capacity()
    }

    /// Counters since open.
    pub fn stats(&self) -> JournalStats {
        self.shared.state.borrow().stats
    }

    /// What recovery found when this journal was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.shared.recovery
    }

    /// The durability in use and how the open chose it (the
    /// [`Durability::Auto`] probe's figures, if it ran).
    pub fn durability_choice(&self) -> &crate::durability::DurabilityChoice {
        &self.shared.durability_choice
    }

    /// The validated settings.
    pub fn config(&self) -> &JournalConfig {
        &self.shared.config
    }

    /// True once a write or fsync failed; reopen to continue.
    pub fn is_poisoned(&self) -> bool {
        self.shared.state.borrow().poisoned.is_some()
    }

    /// Stops accepting calls, writes what is queued, and waits for the
    /// writer to finish. Entries queued before `close` are made durable (or
    /// fail, if the journal is poisoned).
    pub async fn close(&self) -> Result<()> {
        self.shared.state.borrow_mut().closing = true;
        self.shared.work.signal();
        wake_all(&self.shared.space);
        while self.shared.state.borrow().writer_running {
            notified(&self.shared.writer_exited).await;
        }
        while self.shared.state.borrow().preparing {
            notified(&self.shared.spare_ready).await;
        }
        // Retired segments still being reclaimed are removed at once now
        // (a file left would read as an interrupted retirement), those of a
        // retirement still running too.
        while {
            let state = self.shared.state.borrow();
            state.retiring || state.reclaiming
        } {
            notified(&self.shared.reclaim_done).await;
        }
        self.shared.remove_recyclable().await;
        // An unused spare would read as an interrupted segment creation on
        // the next open; remove it now.
        let spare = self.shared.state.borrow_mut().spare.take();
        if let Some(spare) = spare {
            let _ = spare.file.close().await;
            let storage = &self.shared.storage;
            let dir = &self.shared.config.dir;
            storage
                .remove(&spare.path)
                .await
                .map_err(|e| Error::io("remove spare segment", &spare.path, None, e))?;
            storage
                .sync_dir(dir)
                .await
                .map_err(|e| Error::io("fsync directory", dir, None, e))?;
        }
        // A clean close records where the log ends, so the next open has no
        // undecidable tail.
        let last = {
            let state = self.shared.state.borrow();
            let healthy = state.poisoned.is_none() && !state.needs_fresh_segment;
            state
                .segments
                .back()
                .filter(|_| healthy)
                .map(|s| (s.generation, s.write_pos, s.file.clone(), s.path.clone()))
        };
        if let Some((generation, end, file, path)) = last {
            file.sync()
                .await
                .map_err(|e| self.shared.poison(Error::io("fdatasync", &path, None, e)))?;
            self.shared
                .update_superblock(|sb| {
                    sb.ends.retain(|(g, _)| *g != generation);
                    sb.ends.push((generation, end));
                })
                .await?;
        }
        // Close the files now: glommio closes a dropped file on its reactor,
        // which may never get to it once the executor ends.
        let segments = std::mem::take(&mut self.shared.state.borrow_mut().segments);
        for segment in segments {
            if let Ok(file) = Rc::try_unwrap(segment.file) {
                file.close()
                    .await
                    .map_err(|e| Error::io("close", &segment.path, None, e))?;
            }
        }
        Ok(())
    }
}

impl<S: Storage> Shared<S> {
    fn poison(&self, error: Error) -> Error {
        let mut state = self.state.borrow_mut();
        if state.poisoned.is_none() {
            tracing::error!(%error, "journal poisoned");
            state.poisoned = Some(error.clone());
        }
        drop(state);
        // Every waiter re-checks and sees the poison: those waiting for
        // room, for the pipeline, for work, for a spare segment or for the
        // superblock alike.
        for event in [
            &self.space,
            &self.pipeline,
            &self.spare_ready,
            &self.superblock_idle,
        ] {
            wake_all(event);
        }
        self.work.signal();
        error
    }
}

/// Resolves at the next notification of `event` after the call (waiters
/// check their condition first, then wait here; nothing can run in
/// between on the one reactor, so no notification is missed). The listener
/// lives in the waiting future, not on the heap.
async fn notified(event: &Event) {
    event_listener::listener!(event => listener);
    listener.await;
}

/// Wakes every task waiting on `event`. Nothing is allocated when none
/// waits (an `Event` allocates its shared state on first use, and a
/// batch's or a write's completion usually has no waiter left).
fn wake_all(event: &Event) {
    if event.total_listeners() > 0 {
        event.notify(usize::MAX);
    }
}
