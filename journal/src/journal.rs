//! The journal: appends, replica writes, reads, the watermark, and the
//! group-commit writer task.
//!
//! # Group commit
//!
//! Appenders copy their entry into the *filling* batch — one aligned buffer
//! of at most `batch_bytes_max` bytes — and wait on that batch's completion.
//! A single writer task per journal takes the filling batch whenever it has
//! entries, stamps each entry header with the segment generation and offset
//! the batch lands at, writes it with one O_DIRECT write, calls fdatasync
//! once, then publishes the entries in the ring index and wakes every
//! appender of the batch. While batches are being written the next one
//! fills, so the batch size grows with load. When the filling batch is full,
//! appenders wait for the writer to take it, and the writer waits while
//! `writes_in_flight` writes (default 2) are in flight: that bound is the
//! backpressure.
//!
//! Up to `writes_in_flight` writes (each with its fdatasync) are in flight
//! at once, at increasing offsets, and batches are acknowledged in order: a
//! batch resolves only after every earlier batch is durable. So after a
//! crash up to `writes_in_flight` writes at the tail may be torn, and
//! recovery looks that many writes past damage for a later write that
//! vouches for it (see the `recovery` module); with `writes_in_flight(1)`
//! writes are strictly serial and at most one can be torn.
//!
//! # Poisoning
//!
//! If a write or fdatasync fails, the journal cannot know what reached the
//! disk (and Linux may drop the dirty state after a failed fsync), so it
//! stops: the failing batch's appenders get the error and every later call
//! returns [`Error::Poisoned`] until the journal is reopened, which recovers
//! from what is durable.

use crate::config::{Durability, JournalBuilder, JournalConfig};
use crate::error::{Error, Result};
use crate::format::{
    align_down, align_up, check_entry_header, entry_footprint, EntryHeader, EntryKind, BLOCK_BYTES,
    ENTRY_HEADER_BYTES, ENTRY_MAGIC, FLAG_FIRST_IN_WRITE, HARD_STATE_BYTES_MAX,
    SEGMENT_DATA_OFFSET,
};
use crate::glommio_quirks::reactor_turn;
use crate::index::{Location, Lookup, Reservation, RingIndex};
use crate::recovery::{recover, RecoveryReport};
use crate::segment::{
    activate_segment, create_segment, prepare_segment_file, CreateError, Predecessor, PreparedFile,
    Segment,
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
    /// Segments retired by watermark advances.
    pub segments_retired: u64,
    /// Truncations made durable ([`Journal::truncate_after`]).
    pub truncations: u64,
    /// Hard states made durable ([`Journal::set_hard_state`]).
    pub hard_states: u64,
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
    work: Rc<Event>,
    /// Wakes appenders waiting for room in the filling batch.
    space: Event,
    /// Wakes `close()` when the writer has exited.
    writer_exited: Event,
    /// Wakes a rollover waiting for the spare segment's preparation.
    spare_ready: Event,
    /// Wakes the writer when a write in flight finished.
    pipeline: Event,
    recovery: RecoveryReport,
    /// The superblock as last written, and its sequence.
    superblock: RefCell<(JournalSuperblock, u64)>,
    /// A superblock update is running (they are serialized).
    superblock_busy: Cell<bool>,
    /// Wakes an update waiting for the running one.
    superblock_idle: Event,
}

impl<S: Storage> Drop for Shared<S> {
    fn drop(&mut self) {
        // Let the writer task see that the journal is gone and exit.
        wake_all(&self.work);
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
    /// Ops at or below this may be gone although the ring watermark is
    /// lower: a watermark advance on a full disk retired their segments
    /// before its record was durable (their slots are freed only then).
    compacted_floor: u64,
    /// The next segment's file, prepared in the background.
    spare: Option<PreparedFile<F>>,
    /// A background preparation is running.
    preparing: bool,
    /// Writes issued and not yet finished.
    writes_in_flight: usize,
    /// The ticket of the newest write in flight.
    last_ticket: Option<Rc<WriteTicket>>,
    filling: Batch<F::Buf>,
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

struct Batch<B> {
    buf: Option<B>,
    len: usize,
    entries: Vec<PendingEntry>,
    done: Rc<BatchDone>,
}

impl<B> Batch<B> {
    fn new() -> Batch<B> {
        Batch {
            buf: None,
            len: 0,
            entries: Vec::new(),
            done: Rc::new(BatchDone::default()),
        }
    }
}

#[derive(Default)]
struct BatchDone {
    result: RefCell<Option<Result<()>>>,
    notify: Event,
}

impl BatchDone {
    fn complete(&self, result: Result<()>) {
        *self.result.borrow_mut() = Some(result);
        wake_all(&self.notify);
    }

    async fn wait(&self) -> Result<()> {
        loop {
            if let Some(result) = self.result.borrow().as_ref() {
                return result.clone();
            }
            notified(&self.notify).await;
        }
    }
}

struct PendingEntry {
    op: u64,
    epoch: u64,
    kind: EntryKind,
    batch_offset: usize,
    payload_len: u32,
    payload_checksum: u32,
    reservation: Option<Reservation>,
    /// Assigned its op by `append` (not a replica write).
    appended: bool,
    /// A hard-state entry's payload: the journal's hard state once durable.
    hard_state: Option<Vec<u8>>,
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

    /// Copies one entry into the filling batch.
    fn enqueue(
        &mut self,
        request: Request<'_>,
        config: &JournalConfig,
    ) -> Result<(u64, Rc<BatchDone>)> {
        let (op, kind, payload, reservation) = match request {
            Request::Append(payload) => {
                let op = self.next_op;
                if op == u64::MAX {
                    return Err(Error::InvalidOp { op });
                }
                let reservation = self.index.reserve(op, self.epoch)?;
                self.next_op += 1;
                (op, EntryKind::Data, payload, Some(reservation))
            }
            Request::Write(op, payload) => {
                if op == 0 || op == u64::MAX {
                    return Err(Error::InvalidOp { op });
                }
                if op <= self.compacted_floor {
                    return Err(Error::BelowWatermark {
                        op,
                        watermark: self.compacted_floor,
                    });
                }
                let reservation = self.index.reserve(op, self.epoch)?;
                self.next_op = self.next_op.max(op + 1);
                (op, EntryKind::Data, payload, Some(reservation))
            }
            Request::Watermark(watermark) => (watermark, EntryKind::Watermark, &[][..], None),
            Request::Truncate(op) => (op, EntryKind::Truncate, &[][..], None),
            Request::HardState(bytes) => {
                // Sequenced, so that of a record and the superblock's copy
                // the newer wins (a salvage can leave an older record).
                let Some(sequence) = (self.hard_state_issued.max(self.hard_state.0))
                    .checked_add(1)
                    .filter(|s| *s != u64::MAX)
                else {
                    return Err(Error::InvalidOp { op: u64::MAX });
                };
                self.hard_state_issued = sequence;
                (sequence, EntryKind::HardState, bytes, None)
            }
        };
        if self.filling.buf.is_none() {
            self.filling.buf = Some(
                self.active()
                    .file
                    .alloc_buf(config.batch_bytes_max as usize),
            );
        }
        let footprint = entry_footprint(payload.len()) as usize;
        let batch_offset = self.filling.len;
        let buf = self
            .filling
            .buf
            .as_mut()
            .expect("allocated above")
            .as_bytes_mut();
        let payload_start = batch_offset + ENTRY_HEADER_BYTES;
        buf[payload_start..payload_start + payload.len()].copy_from_slice(payload);
        buf[payload_start + payload.len()..batch_offset + footprint].fill(0);
        self.filling.entries.push(PendingEntry {
            op,
            epoch: self.epoch,
            kind,
            batch_offset,
            payload_len: payload.len() as u32,
            payload_checksum: crc32fast::hash(payload),
            reservation,
            appended: matches!(request, Request::Append(_)),
            hard_state: match request {
                Request::HardState(bytes) => Some(bytes.to_vec()),
                _ => None,
            },
        });
        self.filling.len += footprint;
        if kind == EntryKind::Data {
            self.stats.appends += 1;
        }
        Ok((op, self.filling.done.clone()))
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
    pub(crate) async fn open_with(config: JournalConfig, storage: S) -> Result<Journal<S>> {
        storage.prepare_dir(&config.dir).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::Unsupported {
                Error::DirectIoUnsupported {
                    path: config.dir.clone(),
                }
            } else {
                Error::io("prepare directory", &config.dir, None, e)
            }
        })?;
        let recovered = recover(&storage, &config).await?;
        let watermark = recovered.report.watermark;
        let sb_path = config.dir.join(SUPERBLOCK_FILE_NAME);
        // The superblock: the recovered one (adopting the configured owner
        // if it records none), or a new one written before any segment.
        let (mut sb, mut sequence) = match &recovered.superblock {
            Some(found) => (found.superblock.clone(), found.sequence),
            None => {
                let sb = JournalSuperblock::new(*uuid::Uuid::new_v4().as_bytes(), config.owner);
                create_superblock(&storage, &config.dir, &sb).await?;
                (sb, 1)
            }
        };
        sb.owner = match (sb.owner, config.owner) {
            // Recovery refused a disagreeing owner unless the journal holds
            // nothing, which then takes the configured one.
            (Some(recorded), Some(configured)) if recorded.agrees_with(&configured) => {
                Some(recorded.completed_by(&configured))
            }
            (recorded, configured) => configured.or(recorded),
        };
        let mut recovered_segments = recovered.segments;
        // A last segment that holds nothing (typically the one the previous
        // open created) is removed and its generation reused, so reopening
        // does not pile up empty segments.
        let mut reuse_generation = None;
        let others_watermark = |segments: &[Segment<S::File>]| {
            let others = &segments[..segments.len().saturating_sub(1)];
            others.iter().map(|s| s.watermark_seen).max().unwrap_or(0)
        };
        // Only if the others or the superblock record its watermark too:
        // between the removal and the new segment's creation a crash must
        // not lose it. And only if the superblock can then record the one
        // before it as the last (none: generation 1), so the generation
        // recreated is `last + 1`, the one unrecorded segment recovery
        // accepts (see `verify::plan`).
        let kept_last = |segments: &[Segment<S::File>]| {
            segments
                .len()
                .checked_sub(2)
                .map_or(0, |i| segments[i].generation)
        };
        // And only if nothing at all lies where its first entry would go
        // (no cut remains of a torn write): a crash between the superblock
        // update and the removal must leave a segment that reads as empty.
        if !recovered.last_holds_bytes
            && recovered_segments.last().is_some_and(|s| {
                s.write_pos == SEGMENT_DATA_OFFSET
                    && s.watermark_seen <= others_watermark(&recovered_segments).max(sb.watermark)
                    && s.generation == kept_last(&recovered_segments) + 1
            })
        {
            let empty = recovered_segments.pop().expect("checked above");
            if let Ok(file) = Rc::try_unwrap(empty.file) {
                let _ = file.close().await;
            }
            // The superblock stops naming it first, so a crash after the
            // removal leaves no recorded segment missing.
            let mut next = sb.clone();
            next.last_generation = recovered_segments.last().map_or(0, |s| s.generation);
            if next.last_generation == 0 {
                next.first_generation = 0;
            }
            next.ends.retain(|(g, _)| *g < empty.generation);
            sequence += 1;
            write_superblock(&storage, &sb_path, sequence, &next).await?;
            sb = next;
            storage
                .remove(&empty.path)
                .await
                .map_err(|e| Error::io("remove empty segment", &empty.path, None, e))?;
            storage
                .sync_dir(&config.dir)
                .await
                .map_err(|e| Error::io("fsync directory", &config.dir, None, e))?;
            reuse_generation = Some(empty.generation);
        }
        let predecessor = recovered_segments.last().map(|s| Predecessor {
            generation: s.generation,
            end: s.write_pos,
        });
        let generation = match (reuse_generation, predecessor) {
            (Some(generation), _) => generation,
            (None, None) => 1,
            (None, Some(p)) => next_generation(&config.dir, p.generation)?,
        };
        // What recovery read of the last segment may not be durable yet (a
        // failed fsync before a restart, or NoSync writes); the new
        // segment's header will vouch for it, so make it durable first.
        if let Some(last) = recovered_segments.last() {
            last.file
                .sync()
                .await
                .map_err(|e| Error::io("fdatasync", &last.path, None, e))?;
        }
        // A segment recovery adopted at `last + 1` (a rollover or open that
        // crashed before its superblock update) is recorded before the next
        // one is created: recovery accepts one unrecorded segment past the
        // last, never two.
        if let Some(adopted) = recovered_segments
            .last()
            .filter(|s| s.generation > sb.last_generation)
        {
            let before = recovered_segments.len().checked_sub(2);
            let predecessor = before.map(|i| &recovered_segments[i]);
            // Its end becomes a recorded one: durable first, as above.
            if let Some(p) = predecessor {
                p.file
                    .sync()
                    .await
                    .map_err(|e| Error::io("fdatasync", &p.path, None, e))?;
            }
            let predecessor = predecessor.map(|p| Predecessor {
                generation: p.generation,
                end: p.write_pos,
            });
            let mut next = sb.clone();
            record_rollover(&mut next, adopted.generation, predecessor);
            sequence += 1;
            write_superblock(&storage, &sb_path, sequence, &next).await?;
            sb = next;
        }
        // Never append into a segment that existed before: see recovery.
        let mut segments: VecDeque<_> = recovered_segments.into();
        let mut needs_fresh_segment = false;
        let created = create_segment(
            &storage,
            &config,
            sb.journal_id,
            generation,
            predecessor,
            watermark,
        )
        .await;
        match created {
            Ok(active) => {
                // Name the new segment (and the previous one's end) before
                // any write goes to it.
                let mut next = sb.clone();
                record_rollover(&mut next, generation, predecessor);
                next.watermark = next.watermark.max(watermark);
                sequence += 1;
                write_superblock(&storage, &sb_path, sequence, &next).await?;
                sb = next;
                segments.push_back(active);
            }
            // A full disk: open anyway so what is there can be read; the
            // first write creates the segment (or fails with NoSpace).
            Err(CreateError {
                error: error @ Error::NoSpace { .. },
                poison: false,
            }) if !segments.is_empty() => {
                tracing::warn!(%error, "no space for a new segment; the journal opens read-mostly");
                needs_fresh_segment = true;
            }
            Err(e) => return Err(e.error),
        }
        let state = State {
            index: recovered.index,
            segments,
            next_op: recovered.max_op.max(watermark) + 1,
            epoch: recovered.max_epoch,
            durable_watermark: watermark,
            needs_fresh_segment,
            retiring: false,
            compacted_floor: 0,
            spare: None,
            preparing: false,
            writes_in_flight: 0,
            last_ticket: None,
            filling: Batch::new(),
            poisoned: None,
            closing: false,
            writer_running: true,
            hard_state: newest_hard_state(recovered.hard_state, &sb),
            hard_state_issued: 0,
            watermark_requested: watermark,
            unissued_failures: (0, None),
            stats: JournalStats {
                segments_created: u64::from(!needs_fresh_segment),
                ..JournalStats::default()
            },
        };
        let shared = Rc::new(Shared {
            config,
            storage,
            state: RefCell::new(state),
            work: Rc::new(Event::new()),
            space: Event::new(),
            writer_exited: Event::new(),
            spare_ready: Event::new(),
            pipeline: Event::new(),
            recovery: recovered.report,
            superblock: RefCell::new((sb, sequence)),
            superblock_busy: Cell::new(false),
            superblock_idle: Event::new(),
        });
        if !needs_fresh_segment {
            shared.prepare_spare();
        }
        glommio::spawn_local(run_writer(Rc::downgrade(&shared), shared.work.clone())).detach();
        Ok(Journal { shared })
    }

    /// Appends `payload` as the next op (leader side). Resolves with the op
    /// number once the entry is durable (per [`Durability`]). Concurrent
    /// appends on the shard share one write and one fdatasync.
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
                // Leave room for the padding header that may end the write.
                if state.filling.len + footprint + ENTRY_HEADER_BYTES <= batch_bytes_max {
                    let epoch = state.epoch;
                    let (op, done) = state.enqueue(request, &shared.config)?;
                    break (op, epoch, done);
                }
            }
            notified(&shared.space).await;
        };
        wake_all(&shared.work);
        Ok((op, epoch, done))
    }

    /// Reads op `op`. `Ok(None)` if the journal does not hold it (never
    /// written, or not durable yet); [`Error::BelowWatermark`] if it was
    /// compacted; [`Error::Corruption`] if its bytes fail verification.
    pub async fn read(&self, op: u64) -> Result<Option<Entry>> {
        let Some(found) = self.locate(op)? else {
            return Ok(None);
        };
        let read = || read_entry(op, &found);
        match read().await {
            // Read once more before reporting damage: a transient read error
            // must not look like corruption.
            Err(Error::Corruption { .. }) => read().await.map(Some),
            other => other.map(Some),
        }
    }

    /// Where op `op` lives: `Ok(None)` if the journal does not hold it.
    fn locate(&self, op: u64) -> Result<Option<Located<S::File>>> {
        let state = self.shared.state.borrow();
        state.usable()?;
        if op <= state.compacted_floor {
            return Err(Error::BelowWatermark {
                op,
                watermark: state.compacted_floor,
            });
        }
        match state.index.lookup(op) {
            Lookup::Compacted => Err(Error::BelowWatermark {
                op,
                watermark: state.index.watermark(),
            }),
            Lookup::Missing | Lookup::Pending => Ok(None),
            Lookup::Durable(location, _) => {
                let segment = state
                    .segment(location.generation)
                    .expect("the index only points into live segments");
                Ok(Some(Located {
                    location,
                    file: segment.file.clone(),
                    path: segment.path.clone(),
                    segment_bytes: segment.segment_bytes,
                    journal_id: segment.journal_id,
                }))
            }
        }
    }

    /// The ops in `range`, in op order, each present or missing. Ops at or
    /// below the watermark yield [`Error::BelowWatermark`].
    pub fn entries(&self, range: RangeInclusive<u64>) -> Entries<S> {
        Entries {
            journal: self.clone(),
            next: *range.start(),
            end: *range.end(),
            done: range.is_empty(),
            window: None,
        }
    }

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
        self.apply_watermark(watermark);
        self.retire_exclusively().await
    }

    /// Durably discards every entry above `op`: a new leader's log
    /// overrides this replica's divergent, uncommitted suffix. Resolves once
    /// the truncation is durable; from then on reads above `op` return
    /// `None`, their ring slots are free, and [`Journal::append`] continues
    /// at `op + 1` (a [`Journal::write`] of those op numbers is accepted in
    /// any epoch).
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
                let room = state.filling.len + footprint + ENTRY_HEADER_BYTES <= batch_bytes_max;
                if !pending && room {
                    // Forget and queue in one step: nothing can be queued
                    // between the two.
                    state.index.truncate_above(op);
                    state.next_op = state.next_op.min(op + 1);
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
        wake_all(&shared.work);
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

    fn apply_watermark(&self, watermark: u64) {
        let mut state = self.shared.state.borrow_mut();
        if watermark > state.index.watermark() {
            state.index.advance(watermark);
        }
        state.next_op = state.next_op.max(watermark + 1);
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

    /// The op the next `append` will get.
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
        wake_all(&self.shared.work);
        wake_all(&self.shared.space);
        while self.shared.state.borrow().writer_running {
            notified(&self.shared.writer_exited).await;
        }
        while self.shared.state.borrow().preparing {
            notified(&self.shared.spare_ready).await;
        }
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
    /// Starts preparing the next segment's file in the background, unless a
    /// spare exists or is being prepared.
    fn prepare_spare(self: &Rc<Self>) {
        let generation = {
            let mut state = self.state.borrow_mut();
            if state.preparing || state.spare.is_some() || state.closing || state.poisoned.is_some()
            {
                return;
            }
            let Some(generation) = state.active().generation.checked_add(1) else {
                return;
            };
            state.preparing = true;
            generation
        };
        let shared = Rc::downgrade(self);
        let preparation = async move {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let prepared = prepare_segment_file(&shared.storage, &shared.config, generation).await;
            {
                let mut state = shared.state.borrow_mut();
                state.preparing = false;
                match prepared {
                    Ok(spare) => state.spare = Some(spare),
                    // The rollover will try again in the foreground and
                    // report the error to the appenders.
                    Err(e) => tracing::warn!(error = %e.error, "preparing the next segment failed"),
                }
            }
            wake_all(&shared.spare_ready);
        };
        glommio::spawn_local(preparation).detach();
    }

    /// Writes the superblock with `change` applied (and the current durable
    /// watermark), after any update already running. A failure poisons: the
    /// superblock's state on disk is unknown.
    async fn update_superblock(&self, change: impl FnOnce(&mut JournalSuperblock)) -> Result<()> {
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
            next.watermark = next.watermark.max(state.durable_watermark);
            // Carried here so that retiring the segment holding its record
            // does not lose it.
            next.hard_state_sequence = state.hard_state.0;
            next.hard_state.clone_from(&state.hard_state.1);
            (next, sequence + 1)
        };
        let path = self.config.dir.join(SUPERBLOCK_FILE_NAME);
        let result = write_superblock(&self.storage, &path, sequence, &next).await;
        if result.is_ok() {
            *self.superblock.borrow_mut() = (next, sequence);
        }
        result.map_err(|e| self.poison(e))
    }

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
            &*self.work,
            &self.spare_ready,
            &self.superblock_idle,
        ] {
            wake_all(event);
        }
        error
    }

    /// Issues one batch: waits for a free place in the write pipeline, rolls
    /// over to a new segment if the batch does not fit (after the writes in
    /// flight finished), reserves the batch's position and starts its write
    /// in a task of its own.
    async fn issue_batch(self: &Rc<Self>, mut batch: Batch<<S::File as StorageFile>::Buf>) {
        let writes_in_flight_max = self.config.writes_in_flight as usize;
        while self.state.borrow().writes_in_flight >= writes_in_flight_max {
            notified(&self.pipeline).await;
        }
        let total = write_bytes(batch.len);
        let place = match self.place_batch(&batch, total).await {
            Ok(place) => place,
            Err(error) => return self.fail_unissued(batch, error),
        };
        let ticket = Rc::new(WriteTicket::default());
        let previous = {
            let mut state = self.state.borrow_mut();
            state.writes_in_flight += 1;
            state.last_ticket.replace(ticket.clone())
        };
        let shared = self.clone();
        let write = async move {
            let buf = batch.buf.take().expect("a batch with entries has a buffer");
            let result = shared.write_and_sync(buf, &batch, &place, total).await;
            shared
                .finish_batch(batch, place, total, result, previous, ticket)
                .await;
        };
        glommio::spawn_local(write).detach();
    }

    /// Where the batch goes: rolls over first if it does not fit.
    async fn place_batch(
        self: &Rc<Self>,
        batch: &Batch<<S::File as StorageFile>::Buf>,
        total: u64,
    ) -> Result<Placement<S::File>> {
        let usable = |state: &State<S::File>| {
            state.usable().or_else(|e| {
                if matches!(e, Error::Closed) {
                    Ok(())
                } else {
                    Err(e)
                }
            })
        };
        let needs_rollover = {
            let state = self.state.borrow();
            usable(&state)?;
            let active = state.active();
            // The last block of each segment is kept for a watermark record,
            // so the watermark can advance (and free space) on a full disk.
            let has_watermark = batch.entries.iter().any(|e| e.kind == EntryKind::Watermark);
            let reserve = if has_watermark {
                0
            } else {
                WATERMARK_RESERVE_BYTES
            };
            state.needs_fresh_segment || active.write_pos + total + reserve > active.segment_bytes
        };
        if needs_rollover {
            // The new segment vouches for all of this one: let its writes finish.
            while self.state.borrow().writes_in_flight > 0 {
                notified(&self.pipeline).await;
            }
            usable(&self.state.borrow())?;
            self.rollover().await?;
        }
        let mut state = self.state.borrow_mut();
        let active = state
            .segments
            .back_mut()
            .expect("an open journal always has an active segment");
        let place = Placement {
            file: active.file.clone(),
            path: active.path.clone(),
            generation: active.generation,
            pos: active.write_pos,
            // NoSync writes are not durable when they finish: they vouch
            // for nothing.
            durable_before: if self.config.durability == Durability::NoSync {
                0
            } else {
                active.durable_end
            },
            journal_id: active.journal_id,
        };
        active.write_pos += total;
        Ok(place)
    }

    /// Stamps the headers and makes the batch durable.
    async fn write_and_sync(
        &self,
        mut buf: <S::File as StorageFile>::Buf,
        batch: &Batch<<S::File as StorageFile>::Buf>,
        place: &Placement<S::File>,
        total: u64,
    ) -> Result<()> {
        stamp_headers(buf.as_bytes_mut(), &batch.entries, place, batch.len);
        buf.trim_to(total as usize);
        if let Err(e) = place.file.write_at(buf, place.pos).await {
            return Err(self.poison(Error::io("write", &place.path, Some(place.pos), e)));
        }
        if self.config.durability == Durability::Sync {
            if let Err(e) = place.file.sync().await {
                return Err(self.poison(Error::io("fdatasync", &place.path, None, e)));
            }
        }
        Ok(())
    }

    /// Acknowledges a batch in issue order: only once every earlier write
    /// succeeded too, so no acknowledged entry ever follows a hole.
    async fn finish_batch(
        &self,
        batch: Batch<<S::File as StorageFile>::Buf>,
        place: Placement<S::File>,
        total: u64,
        mut result: Result<()>,
        previous: Option<Rc<WriteTicket>>,
        ticket: Rc<WriteTicket>,
    ) {
        if let Some(previous) = previous {
            let earlier_ok = previous.wait().await;
            if !earlier_ok && result.is_ok() {
                let cause = self.state.borrow().poisoned.clone();
                result = Err(Error::Poisoned {
                    cause: Box::new(cause.unwrap_or(Error::Closed)),
                });
            }
        }
        {
            let mut state = self.state.borrow_mut();
            if result.is_ok() {
                publish(&mut state, &batch, &place, total, self.config.durability);
            } else {
                for entry in &batch.entries {
                    if let Some(reservation) = entry.reservation {
                        state.index.release(entry.op, reservation);
                    }
                }
            }
            state.writes_in_flight -= 1;
            if state
                .last_ticket
                .as_ref()
                .is_some_and(|t| Rc::ptr_eq(t, &ticket))
            {
                state.last_ticket = None;
            }
        }
        ticket.resolve(result.is_ok());
        wake_all(&self.pipeline);
        batch.done.complete(result);
    }

    /// Fails a batch that was never written (no room for a new segment, or
    /// the journal is poisoned), handing its reservations back — and with
    /// it everything queued after it: the filling batch, and requests still
    /// waiting for room (they fail as they find the recorded failure). The
    /// journal is written in the order it was asked to, so nothing queued
    /// behind a lost write (a hard state behind an append, an append behind
    /// another) may reach the disk without it. Later requests go on as
    /// usual: a full disk that frees up needs no reopen.
    fn fail_unissued(&self, batch: Batch<<S::File as StorageFile>::Buf>, error: Error) {
        let behind = {
            let mut state = self.state.borrow_mut();
            state.unissued_failures = (state.unissued_failures.0 + 1, Some(error.clone()));
            std::mem::replace(&mut state.filling, Batch::new())
        };
        // The later batch first: op numbers are handed back from the top.
        if !behind.entries.is_empty() {
            self.fail_unissued_batch(behind, error.clone());
        }
        self.fail_unissued_batch(batch, error);
        wake_all(&self.space);
    }

    /// Fails one batch that was never written (see `fail_unissued`).
    fn fail_unissued_batch(&self, batch: Batch<<S::File as StorageFile>::Buf>, error: Error) {
        // A truncation changed the index when it was queued: if its record
        // never reaches the disk, memory and disk disagree until a reopen.
        let error = if batch.entries.iter().any(|e| e.kind == EntryKind::Truncate) {
            self.poison(error)
        } else {
            error
        };
        {
            let mut state = self.state.borrow_mut();
            for entry in &batch.entries {
                if let Some(reservation) = entry.reservation {
                    state.index.release(entry.op, reservation);
                }
            }
            // Hand the failed appends' op numbers out again if no later op
            // was assigned meanwhile, so a full disk does not leave gaps in
            // the leader's sequence.
            let appended = batch.entries.iter().filter(|e| e.appended).map(|e| e.op);
            if let (Some(first), Some(last)) = (appended.clone().min(), appended.max()) {
                if state.poisoned.is_none() && state.next_op == last + 1 {
                    state.next_op = first;
                }
            }
        }
        batch.done.complete(Err(error));
    }

    async fn rollover(self: &Rc<Self>) -> Result<()> {
        let (generation, predecessor, watermark, active_file, active_path) = {
            let state = self.state.borrow();
            let active = state.active();
            let predecessor = Predecessor {
                generation: active.generation,
                end: active.write_pos,
            };
            let generation = next_generation(&self.config.dir, active.generation)?;
            let file = active.file.clone();
            (
                generation,
                predecessor,
                state.durable_watermark,
                file,
                active.path.clone(),
            )
        };
        if self.config.durability == Durability::NoSync {
            // The new segment's header vouches for everything before
            // `prev_end`: make it durable first.
            if let Err(e) = active_file.sync().await {
                return Err(self.poison(Error::io("fdatasync", &active_path, None, e)));
            }
        }
        // Take the spare prepared in the background (waiting for it if its
        // preparation is still running), or create the segment here.
        while self.state.borrow().preparing {
            notified(&self.spare_ready).await;
        }
        let spare = self.state.borrow_mut().spare.take();
        let journal_id = self.superblock.borrow().0.journal_id;
        let created = match spare {
            Some(spare) if spare.generation == generation => {
                activate_segment(
                    spare,
                    &self.config,
                    journal_id,
                    Some(predecessor),
                    watermark,
                )
                .await
            }
            _ => {
                create_segment(
                    &self.storage,
                    &self.config,
                    journal_id,
                    generation,
                    Some(predecessor),
                    watermark,
                )
                .await
            }
        };
        match created {
            Ok(segment) => {
                // The superblock names the segment before any write goes to
                // it; recovery relies on that (see `verify`).
                self.update_superblock(|sb| record_rollover(sb, generation, Some(predecessor)))
                    .await?;
                {
                    let mut state = self.state.borrow_mut();
                    state.segments.push_back(segment);
                    state.needs_fresh_segment = false;
                    state.stats.segments_created += 1;
                }
                self.prepare_spare();
                Ok(())
            }
            Err(CreateError {
                error,
                poison: true,
            }) => Err(self.poison(error)),
            Err(CreateError {
                error,
                poison: false,
            }) => Err(error),
        }
    }
}

/// Where a batch is written.
struct Placement<F> {
    file: Rc<F>,
    path: PathBuf,
    generation: u64,
    pos: u64,
    /// Stamped into the write's first entry: see `EntryHeader::durable_before`.
    durable_before: u64,
    /// Seeds the entry headers' checksums.
    journal_id: [u8; 16],
}

/// Resolves once a write has finished, saying whether it and every write
/// issued before it succeeded.
#[derive(Default)]
struct WriteTicket {
    outcome: std::cell::Cell<Option<bool>>,
    notify: Event,
}

impl WriteTicket {
    fn resolve(&self, ok: bool) {
        self.outcome.set(Some(ok));
        wake_all(&self.notify);
    }

    async fn wait(&self) -> bool {
        loop {
            if let Some(ok) = self.outcome.get() {
                return ok;
            }
            notified(&self.notify).await;
        }
    }
}

/// Makes a durable batch visible: ring index, segment bookkeeping, stats.
fn publish<F: StorageFile>(
    state: &mut State<F>,
    batch: &Batch<F::Buf>,
    place: &Placement<F>,
    total: u64,
    durability: Durability,
) {
    let mut max_op = 0;
    let mut watermark = 0;
    for entry in &batch.entries {
        match entry.kind {
            EntryKind::Data => {
                let location = Location {
                    generation: place.generation,
                    offset: (place.pos + entry.batch_offset as u64) as u32,
                    payload_len: entry.payload_len,
                };
                let reservation = entry.reservation.expect("data entries hold a reservation");
                state
                    .index
                    .commit(entry.op, entry.epoch, reservation, location);
                max_op = max_op.max(entry.op);
            }
            EntryKind::Watermark => watermark = watermark.max(entry.op),
            // The index forgot the ops when the record was queued.
            EntryKind::Truncate => state.stats.truncations += 1,
            EntryKind::HardState => {
                state.hard_state = (entry.op, entry.hard_state.clone().unwrap_or_default());
                state.stats.hard_states += 1;
            }
            EntryKind::Padding => unreachable!("padding is added at stamping, never queued"),
        }
    }
    state.durable_watermark = state.durable_watermark.max(watermark);
    let segment = state
        .segments
        .iter_mut()
        .rev()
        .find(|s| s.generation == place.generation)
        .expect("a segment with writes in flight is never retired or replaced");
    segment.max_op = segment.max_op.max(max_op);
    segment.watermark_seen = segment.watermark_seen.max(watermark);
    // Batches are published in issue order, each only once every earlier one
    // succeeded: everything before this write's end is durable.
    segment.durable_end = segment.durable_end.max(place.pos + total);
    let stats = &mut state.stats;
    stats.writes += 1;
    stats.fsyncs += u64::from(durability != Durability::NoSync);
    stats.bytes_written += total;
    stats.entries_written += batch.entries.len() as u64;
    stats.batch_entries_max = stats.batch_entries_max.max(batch.entries.len() as u64);
    let bucket = (batch.entries.len().max(1).ilog2() as usize).min(BATCH_SIZE_BUCKETS - 1);
    stats.batch_entries_log2[bucket] += 1;
}

/// The generation after `generation`, or an error naming the directory if
/// the numbers ran out (only a hostile file name can get there).
fn next_generation(dir: &Path, generation: u64) -> Result<u64> {
    generation.checked_add(1).ok_or_else(|| {
        Error::corruption(
            dir,
            0,
            format!("segment generation {generation} cannot be followed"),
        )
    })
}

/// Bytes written for a batch of `len` bytes of entries: up to the next block
/// boundary at which a padding entry header still fits, so that every write
/// ends either exactly on a boundary or with a padding entry (recovery then
/// never has to guess where a write ended).
fn write_bytes(len: usize) -> u64 {
    let len = len as u64;
    if len.is_multiple_of(BLOCK_BYTES) {
        len
    } else {
        align_up(len + ENTRY_HEADER_BYTES as u64, BLOCK_BYTES)
    }
}

/// Writes each entry's header into the batch buffer now that its final
/// position is known, and pads the tail up to the end of the write.
fn stamp_headers<F>(buf: &mut [u8], entries: &[PendingEntry], place: &Placement<F>, len: usize) {
    let (generation, pos) = (place.generation, place.pos);
    for (i, entry) in entries.iter().enumerate() {
        let first = i == 0;
        let header = EntryHeader {
            checksum: 0.into(),
            magic: ENTRY_MAGIC.into(),
            op: entry.op.into(),
            epoch: entry.epoch.into(),
            generation: generation.into(),
            offset: ((pos + entry.batch_offset as u64) as u32).into(),
            payload_len: entry.payload_len.into(),
            payload_checksum: entry.payload_checksum.into(),
            durable_before: if first {
                place.durable_before as u32
            } else {
                0
            }
            .into(),
            kind: entry.kind as u8,
            flags: if first { FLAG_FIRST_IN_WRITE } else { 0 },
            reserved: [0; 6],
        }
        .seal(&place.journal_id);
        buf[entry.batch_offset..entry.batch_offset + ENTRY_HEADER_BYTES]
            .copy_from_slice(header.as_bytes());
    }
    let end = write_bytes(len) as usize;
    buf[len..end].fill(0);
    if end > len {
        let gap = end - len;
        let padding = EntryHeader {
            checksum: 0.into(),
            magic: ENTRY_MAGIC.into(),
            op: 0.into(),
            epoch: 0.into(),
            generation: generation.into(),
            offset: ((pos + len as u64) as u32).into(),
            payload_len: ((gap - ENTRY_HEADER_BYTES) as u32).into(),
            payload_checksum: 0.into(),
            durable_before: 0.into(),
            kind: EntryKind::Padding as u8,
            flags: 0,
            reserved: [0; 6],
        }
        .seal(&place.journal_id);
        buf[len..len + ENTRY_HEADER_BYTES].copy_from_slice(padding.as_bytes());
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

/// Of the last hard-state record recovery found and the superblock's copy,
/// the one with the greater sequence.
fn newest_hard_state(record: Option<(u64, Vec<u8>)>, sb: &JournalSuperblock) -> (u64, Vec<u8>) {
    let kept = (sb.hard_state_sequence, sb.hard_state.clone());
    match record {
        Some(record) if record.0 > kept.0 => record,
        _ => kept,
    }
}

/// Records a new last segment in a superblock: `generation` must now exist,
/// and its predecessor's data ends where the new segment's header says.
fn record_rollover(sb: &mut JournalSuperblock, generation: u64, predecessor: Option<Predecessor>) {
    if sb.first_generation == 0 {
        sb.first_generation = generation;
    }
    sb.last_generation = generation;
    sb.ends.retain(|(g, _)| *g < generation);
    if let Some(p) = predecessor {
        sb.ends.retain(|(g, _)| *g != p.generation);
        sb.ends.push((p.generation, p.end));
    }
    // Only the newest are recorded (older segments' ends are in their
    // successors' headers): keep memory bounded too.
    let excess = sb.ends.len().saturating_sub(superblock::SEGMENT_ENDS_MAX);
    sb.ends.drain(..excess);
}

/// Writes both copies of the journal superblock (see `superblock`).
async fn write_superblock<S: Storage>(
    storage: &S,
    path: &Path,
    sequence: u64,
    sb: &JournalSuperblock,
) -> Result<()> {
    superblock::write_file(
        storage,
        path,
        false,
        SuperblockKind::Journal,
        sequence,
        &sb.encode(),
        // Both copies hold the same state before every update (recovery
        // repairs them first), so either may go first.
        superblock::SUPERBLOCK_COPIES - 1,
    )
    .await
    .map_err(|f| Error::io(f.op, path, f.offset, f.source))
}

/// Creates a new journal's superblock: written in full under a temporary
/// name, then renamed into place, so `superblock` never exists half-written.
async fn create_superblock<S: Storage>(
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

/// Where an op's entry lives, with what reading it needs.
struct Located<F> {
    location: Location,
    file: Rc<F>,
    path: PathBuf,
    segment_bytes: u64,
    journal_id: [u8; 16],
}

impl<F> Located<F> {
    /// The block-aligned byte range holding the entry.
    fn block_range(&self) -> (u64, u64) {
        let offset = u64::from(self.location.offset);
        let len = (ENTRY_HEADER_BYTES + self.location.payload_len as usize) as u64;
        (
            align_down(offset, BLOCK_BYTES),
            align_up(offset + len, BLOCK_BYTES),
        )
    }
}

/// Reads op `op`'s entry with one read and verifies it.
async fn read_entry<F: StorageFile>(op: u64, found: &Located<F>) -> Result<Entry> {
    let (start, end) = found.block_range();
    let offset = u64::from(found.location.offset);
    let bytes = found
        .file
        .read_at(start, (end - start) as usize)
        .await
        .map_err(|e| Error::io("read", &found.path, Some(offset), e))?;
    verify_entry(op, found, &bytes, start)
}

/// Verifies op `op`'s entry in `bytes`, which were read from file offset
/// `bytes_start` and must cover the entry.
fn verify_entry<F>(op: u64, found: &Located<F>, bytes: &[u8], bytes_start: u64) -> Result<Entry> {
    let location = found.location;
    let path = &found.path;
    // Not the configured limit: the entry may predate a smaller one.
    let entry_bytes_max = crate::config::ENTRY_BYTES_MAX_LIMIT;
    let offset = u64::from(location.offset);
    let payload_len = location.payload_len as usize;
    let at = (offset - bytes_start) as usize;
    let corrupt = |reason: String| Error::corruption(path, offset, reason);
    if bytes.len() < at + ENTRY_HEADER_BYTES + payload_len {
        return Err(corrupt(format!("file ends before op {op}'s entry")));
    }
    let header = check_entry_header(
        &bytes[at..],
        &found.journal_id,
        location.generation,
        offset,
        found.segment_bytes,
        entry_bytes_max,
    )
    .map_err(|fault| corrupt(format!("op {op}: {}", fault.describe())))?;
    if header.op.get() != op
        || header.entry_kind() != Some(EntryKind::Data)
        || header.payload_len.get() != location.payload_len
    {
        return Err(corrupt(format!(
            "entry header names op {}, expected op {op}",
            header.op.get()
        )));
    }
    let payload = &bytes[at + ENTRY_HEADER_BYTES..at + ENTRY_HEADER_BYTES + payload_len];
    if crc32fast::hash(payload) != header.payload_checksum.get() {
        return Err(corrupt(format!("op {op}: payload checksum mismatch")));
    }
    Ok(Entry {
        op,
        epoch: header.epoch.get(),
        payload: payload.to_vec(),
    })
}

/// The writer task: takes the filling batch whenever it has entries.
async fn run_writer<S: Storage>(shared: Weak<Shared<S>>, work: Rc<Event>) {
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        enum Next<B> {
            Write(Batch<B>),
            AwaitInFlight,
            Exit,
            Idle,
        }
        let next = {
            let mut state = shared.state.borrow_mut();
            if !state.filling.entries.is_empty() {
                Next::Write(std::mem::replace(&mut state.filling, Batch::new()))
            } else if state.closing && state.writes_in_flight > 0 {
                Next::AwaitInFlight
            } else if state.closing {
                state.writer_running = false;
                Next::Exit
            } else {
                Next::Idle
            }
        };
        match next {
            Next::Write(batch) => {
                wake_all(&shared.space);
                shared.issue_batch(batch).await;
            }
            Next::AwaitInFlight => notified(&shared.pipeline).await,
            Next::Exit => {
                wake_all(&shared.writer_exited);
                return;
            }
            Next::Idle => {
                drop(shared);
                notified(&work).await;
            }
        }
    }
}

/// Bytes [`Entries`] reads ahead in one read: consecutive ops of a leader's
/// log sit next to each other, so a replay reads the log in windows this
/// large, the next one in flight while the current one is verified, instead
/// of one block per op.
pub const ENTRIES_READ_AHEAD_BYTES: u64 = 4 << 20;

/// Async iterator over a range of ops; see [`Journal::entries`].
pub struct Entries<S: Storage = DmaStorage> {
    journal: Journal<S>,
    next: u64,
    end: u64,
    done: bool,
    window: Option<Window<S::File>>,
}

/// Bytes of one segment read ahead, with the read of what follows them in
/// flight.
struct Window<F: StorageFile> {
    generation: u64,
    /// File offset of `bytes[0]`.
    start: u64,
    bytes: Vec<u8>,
    /// The read of the bytes right after `bytes`: its offset and the read.
    ahead: Option<(u64, glommio::Task<std::io::Result<F::ReadBuf>>)>,
}

impl<F: StorageFile> Window<F> {
    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    fn covers(&self, generation: u64, start: u64, end: u64) -> bool {
        self.generation == generation && self.start <= start && end <= self.end()
    }

    /// Starts reading the next [`ENTRIES_READ_AHEAD_BYTES`] after the
    /// window, up to the end of the segment.
    /// Returns whether a read was started; the caller then lets the reactor
    /// turn once ([`reactor_turn`]), so the read is submitted before the
    /// caller goes back to verifying entries.
    fn read_ahead(&mut self, found: &Located<F>) -> bool {
        let from = self.end();
        if self.ahead.is_some() || from >= found.segment_bytes {
            return false;
        }
        let len = ENTRIES_READ_AHEAD_BYTES.min(found.segment_bytes - from) as usize;
        let file = found.file.clone();
        let read = glommio::spawn_local(async move { file.read_at(from, len).await });
        self.ahead = Some((from, read));
        true
    }
}

impl<S: Storage> std::fmt::Debug for Entries<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entries")
            .field("next", &self.next)
            .field("end", &self.end)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<S: Storage> Entries<S> {
    /// The next op in the range, or `None` past its end. An error ends the
    /// iteration.
    pub async fn next(&mut self) -> Option<Result<LogItem>> {
        if self.done {
            return None;
        }
        let op = self.next;
        if op >= self.end {
            self.done = true;
        } else {
            self.next += 1;
        }
        let item = match self.read(op).await {
            Ok(Some(entry)) => Ok(LogItem::Present(entry)),
            Ok(None) => Ok(LogItem::Missing(op)),
            Err(error) => {
                self.done = true;
                Err(error)
            }
        };
        Some(item)
    }

    async fn read(&mut self, op: u64) -> Result<Option<Entry>> {
        let Some(found) = self.journal.locate(op)? else {
            return Ok(None);
        };
        let (start, end) = found.block_range();
        self.fill(&found, start, end).await?;
        let window = self.window.as_mut().expect("filled above");
        if window.read_ahead(&found) {
            reactor_turn().await;
        }
        let window = self.window.as_ref().expect("filled above");
        match verify_entry(op, &found, &window.bytes, window.start) {
            Ok(entry) => Ok(Some(entry)),
            // Read once more, alone, before reporting damage: a transient
            // read error must not look like corruption.
            Err(Error::Corruption { .. }) => {
                self.window = None;
                read_entry(op, &found).await.map(Some)
            }
            Err(other) => Err(other),
        }
    }

    /// Makes the window cover `start..end` of the entry's segment: extends
    /// it with the read ahead when the entry continues where it ends,
    /// otherwise reads a fresh window.
    async fn fill(&mut self, found: &Located<S::File>, start: u64, end: u64) -> Result<()> {
        let generation = found.location.generation;
        let offset = u64::from(found.location.offset);
        let io_error = |e| Error::io("read", &found.path, Some(offset), e);
        if let Some(window) = &mut self.window {
            if window.covers(generation, start, end) {
                return Ok(());
            }
            let continues = window.generation == generation
                && window.start <= start
                && start <= window.end()
                && window
                    .ahead
                    .as_ref()
                    .is_some_and(|(at, _)| *at == window.end());
            if continues {
                // Keep only what the entry needs, then append what was read
                // ahead (more than once for an entry larger than a window).
                window.bytes.drain(..(start - window.start) as usize);
                window.start = start;
                while window.end() < end {
                    let Some((_, read)) = window.ahead.take() else {
                        break;
                    };
                    let bytes = read.await.map_err(io_error)?;
                    let short = bytes.is_empty();
                    window.bytes.extend_from_slice(&bytes);
                    if short {
                        break;
                    }
                    if window.read_ahead(found) {
                        reactor_turn().await;
                    }
                }
                if window.covers(generation, start, end) {
                    return Ok(());
                }
            }
        }
        let len = (end - start)
            .max(ENTRIES_READ_AHEAD_BYTES)
            .min(found.segment_bytes.saturating_sub(start).max(end - start));
        let bytes = found
            .file
            .read_at(start, len as usize)
            .await
            .map_err(io_error)?;
        self.window = Some(Window {
            generation,
            start,
            bytes: bytes.to_vec(),
            ahead: None,
        });
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn superblock_with(sequence: u64, hard_state: &[u8]) -> JournalSuperblock {
        JournalSuperblock {
            hard_state: hard_state.to_vec(),
            hard_state_sequence: sequence,
            ..JournalSuperblock::new([1; 16], None)
        }
    }

    #[test]
    fn the_hard_state_with_the_greater_sequence_holds() {
        let sb = superblock_with(7, b"superblock's");
        // A salvage kept an older record: the superblock's copy holds.
        let older = Some((5, b"older record".to_vec()));
        assert_eq!(newest_hard_state(older, &sb), (7, b"superblock's".to_vec()));
        // The usual case: the log's last record is the newest.
        let newer = Some((9, b"newer record".to_vec()));
        assert_eq!(newest_hard_state(newer, &sb), (9, b"newer record".to_vec()));
        assert_eq!(newest_hard_state(None, &sb), (7, b"superblock's".to_vec()));
        // Nothing anywhere: none.
        assert_eq!(
            newest_hard_state(None, &superblock_with(0, b"")),
            (0, Vec::new())
        );
    }
}
