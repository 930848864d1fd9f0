//! Recovery: check the directory against its superblock, read each write's
//! index, verify the tail, rebuild the ring index, and decide what a
//! damaged byte range means.
//!
//! The rules live in [`crate::verify`], which is sans-IO and shared with the
//! read-only scan behind `ringstore wal verify`; this module reads the bytes
//! it asks for (with read-ahead, on the reactor) and acts on its verdicts:
//! it removes the leftovers a crash explains, rebuilds the index, and cuts
//! the tail the verifier allows to be cut.
//!
//! # What is vouched for
//!
//! * The superblock records which segment generations must exist and where
//!   each closed segment's data ends (as does the next segment's header,
//!   `prev_end`). A segment is created complete — preallocated and synced
//!   before its header is written, its header synced before the superblock
//!   names it, the superblock durable before any write goes to it — so a
//!   missing, short, zero-length or foreign segment is damage, never a
//!   crash artifact.
//! * A clean close records the last segment's end in the superblock too, so
//!   after one nothing is undecidable.
//! * Recovery fsyncs the directory and the superblock before it reads them:
//!   what it acts on is what a crash keeps.
//! * Every write's first entry records `durable_before`: the end of the
//!   writes that had finished, in order, when it was issued. Damage before
//!   any later write's `durable_before` lies in acknowledged data. A write
//!   is issued only once fewer than `writes_in_flight` (D, recorded in the
//!   segment header) writes are unfinished, so the D-th write after a
//!   finished one always vouches for it.
//!
//! What is left is the tail no later write vouches for: the last write
//! after an idle period, up to D writes under load. Damage there cannot be
//! told apart from a write torn by the crash. Recovery cuts it (rows 2–4)
//! and says so: [`TailState::Torn`] carries the file, the offset, the reason
//! and the ops whose entries still verify in the cut bytes (they may have
//! been acknowledged), it is logged as a warning, and `Recovery::Strict`
//! refuses instead. A write every sector of which reads back as zeros
//! looks exactly like a write that never reached the disk (row 1): nothing
//! is cut, but after any unclean shutdown [`RecoveryReport::unrecorded_end`]
//! says where the end was found and the highest op found, above which an
//! acknowledged op may have been lost that way.
//!
//! # Uncertain tail
//!
//! A consensus protocol relies on a replica never forgetting what it
//! acknowledged: the entries it told a leader it holds, and its vote. The
//! journal loses neither to a crash: an acknowledged write was fdatasync'd,
//! and damage in anything vouched for is an error, not a cut. What it cannot
//! prove is the tail: the last writes no later write vouches for, cut if
//! their bytes do not verify. [`RecoveryReport::tail_is_uncertain`] says
//! when that happened. A replica for which it is true must not vote (nor
//! stand for election) until a peer has repaired its log and it has seen a
//! term newer than any it may have voted in. Its hard state (the last
//! hard-state record) may be older than the one it acted on, unless it
//! copied it into the superblock ([`crate::Journal::copy_hard_state_to_superblock`],
//! which a replica does for every vote). Such a
//! cut is routine after a crash under load (the writes in flight are torn),
//! so a cluster whose replicas all lost power at once can find them all
//! uncertain; it needs an operator's decision to go on, which is the price
//! of never voting twice. The raft adapter (`ringstore::raft`, "Uncertain
//! tail") follows this rule.
//!
//! A write every sector of which the disk wiped to zeros after its
//! fdatasync is not detectable at all (row 1 below); after an unclean
//! shutdown [`RecoveryReport::unrecorded_end`] names where the log ended.
//! In a recycled segment (row 16) the same holds for a last write whose
//! every header reads back garbled (a flipped bit, a torn or a misdirected
//! write leaves one of them, and is cut as above): a replica that wants
//! such damage reported as an uncertain tail opens its journal with
//! `JournalBuilder::recycle_segments(false)`.
//! Such a lost write is outside the fault model (`DESIGN.md`: an
//! acknowledged append is kept while its entry is intact on disk), and
//! outside what Raft's safety argument allows a replica's storage to do.
//!
//! # What is read
//!
//! Every write ends with an index of its entries (`journal/FORMAT.md`,
//! "Write index"). Recovery reads, of each write that a later write's
//! `durable_before` or the segment's recorded end vouches for, only its
//! first header, its index, its padding header and any hard-state payload
//! ([`crate::verify::SegmentScanner::indexed`]):
//! a 1 GiB journal of 2 MiB writes opens after reading about 1,000 small
//! ranges instead of every byte. The writes nothing vouches for (the tail
//! after a crash) and any write whose first header or index does not verify
//! are read in full, under the table below. A payload, or an entry header
//! after the first, inside a vouched-for write is not read: a damaged one is
//! reported by the first read of that entry (`Error::Corruption` with the
//! file and offset), by the scrubber (`JournalBuilder::scrub_rate`) and by
//! `ringstore wal verify`, which reads every byte
//! (see FORMAT.md, "Recovery", for the two verdicts side by side). Such an
//! entry can only be damaged at rest — it was durable when a later write
//! was issued — so no crash explains it and nothing would be cut for it.
//!
//! # Decision table
//!
//! At the first position `p` where the next entry does not verify, among
//! the bytes recovery reads (see above: rows 5 and 6 apply to a write's
//! first header or its index; a payload there is reported when read):
//!
//! | row | where | header at `p` | payload | evidence within reach after `p` | decision |
//! |-----|-------|---------------|---------|-------------------------------------------------|----------|
//! | 1 | last segment | zeroed | — | no non-zero byte | clean end of the log at `p` |
//! | 2 | last segment | zeroed or checksum mismatch | — | none | cut at `p`, reported with the ops seen (`Strict`: error) |
//! | 3 | last segment | valid | checksum mismatch | none | cut at `p`, reported with the ops seen (`Strict`: error) |
//! | 4 | last segment | from another generation (stale bytes) | — | none | cut at `p`, reported (`Strict`: error) |
//! | 5 | last segment | any fault of rows 1–4 | any | a write start whose `durable_before` is past `p` | [`Error::Corruption`] at `p` |
//! | 6 | a segment with a recorded end (a successor's `prev_end`, or the superblock's after a clean close or salvage) | any fault before that end | any | — | [`Error::Corruption`] at `p` |
//! | 7 | generation `last + 1` of the superblock | segment header invalid, no data | — | — | incomplete segment creation: file removed |
//! | 8 | a generation the superblock records, or `last + 1` holding data | segment header invalid | — | — | [`Error::Corruption`] at 0 |
//! | 9 | a generation the superblock records | file missing, shorter or longer than its header says, zero length, or of another journal | — | — | [`Error::Corruption`] naming the file |
//! | 10 | anywhere | two ops above the watermark in one ring slot | — | — | [`Error::Corruption`] at the later entry |
//! | 11 | any segment or superblock | verifies, version unknown | — | — | [`Error::UnsupportedVersion`] |
//! | 12 | last segment | names another offset, or such a header follows | any | a misdirected copy | [`Error::Corruption`] at `p` |
//! | 13 | last segment written with `NoSync` | any fault of rows 1–4 | any | no vouching write (NoSync writes vouch for nothing) | cut at `p`, reported: any number of its writes may be torn |
//! | 14 | below the superblock's first generation | — | — | — | a retirement a crash interrupted: file removed |
//! | 15 | superblock | neither copy verifies, or missing while segments exist | — | — | [`Error::Corruption`] naming the superblock |
//! | 16 | last segment flagged recycled (its file held an older segment, whose bytes lie past the last write) | zeroed, checksum mismatch, or from an older generation | — | no header of this generation or a later one (older bytes prove nothing) | clean end of the log at `p`; with such a header (or one of a later generation at `p`), rows 2–5 as above |
//!
//! "Within reach": up to D × `batch_bytes_max` after `p`.
//!
//! A "write start" is an entry header that verifies, names this segment's
//! generation and its own offset, and carries the first-in-write flag, at a
//! block boundary. Entries in the middle of a torn write may verify too
//! (sectors can persist out of order) but never carry that flag.
//!
//! Recovery never writes into an existing segment: after it, the journal
//! creates a new segment whose header records the cut, so stale bytes past
//! a cut are never scanned as live again and a second recovery reaches the
//! same state.

use crate::config::{JournalConfig, Recovery};
use crate::error::{Error, Result};
use crate::format::{EntryHeader, EntryKind, BLOCK_BYTES, ENTRY_HEADER_BYTES, SEGMENT_DATA_OFFSET};
use crate::index::{Location, RingIndex};
use crate::segment::{segment_file_name, Segment};
use crate::storage::{Storage, StorageFile};
use crate::superblock::{self, SUPERBLOCK_FILE_NAME};
use crate::verify::{
    self, check_segment_header, FoundSuperblock, PlannedSegment, Refusal, SegmentFacts,
    SegmentHeaderStatus, SegmentOutcome, SegmentScanner, Step,
};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Bytes read per call while scanning.
const SCAN_READ_BYTES: u64 = 1 << 20;
/// Segments scanned at once.
const SEGMENT_SCANS_IN_FLIGHT: usize = 4;
/// Scan reads kept in flight ahead of the one being parsed.
const SCAN_READS_AHEAD: usize = 4;
/// A scan skipping from index to index reads sequentially (and ahead)
/// while its next bytes lie less than this past what it read last, twice
/// in a row, and otherwise reads just the blocks it needs.
const SPARSE_JUMP_BYTES: u64 = SCAN_READ_BYTES;
/// Least bytes read after a jump: a write's index, its padding and the
/// next write's first header usually lie within them.
const SPARSE_READ_BYTES: u64 = 16 << 10;
/// Sparse reads issued ahead at the positions the last three predict:
/// writes of one size lie one stride apart, and a walk that reads two
/// places per write (its index, then the next write's first header) repeats
/// every second jump. Without them the walk from index to index is a chain
/// of reads, each waiting for the last (about 250 per 256 MiB segment of
/// 1 MiB writes).
const SPARSE_READS_AHEAD: usize = 8;
/// Longest sparse read repeated ahead (larger indexes are not predicted:
/// up to [`SPARSE_READS_AHEAD`] of them per segment scanned would be held).
const SPARSE_AHEAD_READ_BYTES_MAX: u64 = 64 << 10;
const _: () = assert!(SCAN_READ_BYTES.is_multiple_of(BLOCK_BYTES));

/// How the scan of the last segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailState {
    /// No segments: a new journal.
    Empty,
    /// Zeroed space after the last entry (row 1), or the end the superblock
    /// records after a clean close.
    Clean,
    /// Bytes that did not verify at the end of the log were cut (rows 2–4,
    /// 13). Nothing later proved them durable, but they may hold
    /// acknowledged entries: `ops` names the ones whose headers still verify.
    Torn {
        /// The segment file.
        path: PathBuf,
        /// Where the log now ends.
        offset: u64,
        /// What did not verify there.
        reason: String,
        /// The lowest and highest op of the data entries in the cut bytes
        /// whose headers still verify (`None`: none verify).
        ops: Option<(u64, u64)>,
        /// How many such entries.
        entries: u64,
    },
}

impl TailState {
    /// A one-line description for logs and tools, the same words everywhere.
    pub fn describe(&self) -> String {
        match self {
            TailState::Empty => "empty journal".into(),
            TailState::Clean => "clean end".into(),
            TailState::Torn {
                path,
                offset,
                reason,
                ops,
                entries,
            } => format!(
                "cut at {} byte offset {offset} ({reason}); {}",
                path.display(),
                describe_cut_ops(*ops, *entries)
            ),
        }
    }
}

/// How a cut's ops are described in reports and logs.
pub fn describe_cut_ops(ops: Option<(u64, u64)>, entries: u64) -> String {
    match ops {
        None => {
            "no entry in the cut bytes still verifies; any write there may have been acknowledged"
                .into()
        }
        Some((lo, hi)) => format!(
            "{entries} entries of ops {lo}..={hi} in the cut bytes may have been acknowledged"
        ),
    }
}

/// The end of the log after an unclean shutdown: where recovery found it,
/// which nothing recorded (only a clean close records it).
///
/// Everything before it verified. What cannot be known: whether an
/// acknowledged write after it was wiped to zeros by the disk (or its file
/// replaced by an older copy) — that looks exactly like a write the crash
/// kept from reaching the disk. If the caller acknowledged ops above
/// `last_op` (the highest op found), they may be lost; a consensus layer
/// treats them as an uncertain tail to repair from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnrecordedEnd {
    /// The last segment.
    pub path: PathBuf,
    /// Where its valid data ends.
    pub offset: u64,
    /// The highest op found in the whole journal.
    pub last_op: u64,
}

/// What recovery found, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files scanned.
    pub segments: usize,
    /// Data entries that verified (including ones at or below the watermark).
    pub entries: u64,
    /// Bytes of entries scanned.
    pub bytes: u64,
    /// The recovered watermark.
    pub watermark: u64,
    /// How the log ended.
    pub tail: TailState,
    /// Files removed because a crash explains them: a segment whose creation
    /// never completed (row 7), one a retirement left (row 14), an
    /// unfinished superblock creation.
    pub removed: Vec<PathBuf>,
    /// Files in the directory that are not the journal's: reported, ignored.
    pub stray_files: Vec<PathBuf>,
    /// Superblock copies that did not verify or were older than the other
    /// (rewritten at open): "offset: reason".
    pub superblock_repaired: Vec<String>,
    /// Entries, and reads of the superblock, that failed verification once
    /// but verified (or read otherwise) when read again.
    pub transient_read_faults: u64,
    /// Set when the journal was not closed cleanly: where the log ends,
    /// unrecorded (see [`UnrecordedEnd`]). `None` after a clean close (the
    /// superblock records the end) and for a new journal.
    pub unrecorded_end: Option<UnrecordedEnd>,
}

impl RecoveryReport {
    /// True if recovery cut a tail ([`TailState::Torn`]): bytes were there
    /// that did not verify and nothing vouched for, so an entry or a hard
    /// state this journal acknowledged may be among them (a write damaged
    /// after its fdatasync looks exactly like one torn by the crash).
    ///
    /// The rule for a consensus layer (see "Uncertain tail" in the module
    /// docs): such a replica must not vote until a peer has repaired its
    /// log and it has seen a term newer than any it may have voted in.
    ///
    /// Only the open that made the cut reports it: the next open finds the
    /// cut recorded as the segment's end. A consensus layer keeps the
    /// "awaiting repair" state in its hard state, written by the open
    /// itself before it records the cut
    /// ([`crate::JournalBuilder::hard_state_after_cut`]), so that no crash
    /// loses both (the raft adapter does).
    pub fn tail_is_uncertain(&self) -> bool {
        matches!(self.tail, TailState::Torn { .. })
    }
}

pub(crate) struct Recovered<F> {
    pub segments: Vec<Segment<F>>,
    pub index: RingIndex,
    pub max_op: u64,
    pub max_epoch: u64,
    pub report: RecoveryReport,
    pub superblock: Option<FoundSuperblock>,
    /// The last hard-state record in log order (sequence, payload), if any.
    pub hard_state: Option<(u64, Vec<u8>)>,
    /// The last segment's first entry position holds bytes (a write, or the
    /// remains of one recovery cut or that lie past a recorded end): were
    /// the superblock to stop recording the segment, the verifier would
    /// read it as data it must not lose.
    pub last_holds_bytes: bool,
}

/// A sparse read issued ahead: its start, its length, the read.
type SparseRead<F> = (
    u64,
    u64,
    glommio::task::JoinHandle<std::io::Result<<F as StorageFile>::ReadBuf>>,
);

/// Reads a file sequentially through an aligned window, keeping the next
/// chunk's read in flight while the current one is parsed.
struct ScanReader<F: StorageFile> {
    file: Rc<F>,
    file_len: u64,
    start: u64,
    bytes: Vec<u8>,
    /// The read of `[start, start + SCAN_READ_BYTES)` already issued.
    ahead:
        std::collections::VecDeque<(u64, glommio::task::JoinHandle<std::io::Result<F::ReadBuf>>)>,
    /// The last sparse read the window did not hold was near its end.
    last_miss_near: bool,
    /// Where the last three sparse reads started, newest last.
    sparse_starts: [Option<u64>; 3],
    /// Sparse reads issued ahead at the predicted starts.
    sparse_ahead: std::collections::VecDeque<SparseRead<F>>,
}

impl<F: StorageFile> ScanReader<F> {
    fn new(file: Rc<F>, file_len: u64) -> Self {
        ScanReader {
            file,
            file_len,
            start: 0,
            bytes: Vec::new(),
            ahead: std::collections::VecDeque::new(),
            last_miss_near: false,
            sparse_starts: [None; 3],
            sparse_ahead: std::collections::VecDeque::new(),
        }
    }

    /// Forgets what was read, so the next `get` reads the disk again.
    fn invalidate(&mut self) {
        self.bytes.clear();
        self.ahead.clear();
        self.sparse_ahead.clear();
    }

    /// Keeps up to `SCAN_READS_AHEAD` chunk reads in flight from `start` on.
    fn read_ahead(&mut self, start: u64) {
        let mut next = self
            .ahead
            .back()
            .map_or(start, |(s, _)| s + SCAN_READ_BYTES);
        while self.ahead.len() < SCAN_READS_AHEAD && next < self.file_len {
            let file = self.file.clone();
            let read = async move { file.read_at(next, SCAN_READ_BYTES as usize).await };
            self.ahead
                .push_back((next, glommio::spawn_local(read).detach()));
            next += SCAN_READ_BYTES;
        }
    }

    async fn read_chunk(&mut self, start: u64) -> std::io::Result<F::ReadBuf> {
        while let Some((ahead_start, handle)) = self.ahead.pop_front() {
            if ahead_start == start {
                if let Some(read) = handle.await {
                    return read;
                }
                break;
            }
            // A read-ahead the scan jumped past: its result is dropped.
        }
        self.ahead.clear();
        self.file.read_at(start, SCAN_READ_BYTES as usize).await
    }

    /// Bytes `[pos, pos + len)`, or fewer at end of file (none past it).
    async fn get(&mut self, pos: u64, len: u64) -> std::io::Result<&[u8]> {
        if pos >= self.file_len {
            return Ok(&[]);
        }
        let end = pos.saturating_add(len).min(self.file_len);
        let window_end = self.start + self.bytes.len() as u64;
        if pos < self.start || end > window_end {
            let read_start = crate::format::align_down(pos, BLOCK_BYTES);
            // Keep what the window already holds from `read_start` on.
            let mut bytes = if read_start >= self.start && read_start < window_end {
                self.bytes[(read_start - self.start) as usize..].to_vec()
            } else {
                Vec::new()
            };
            let mut next = read_start + bytes.len() as u64;
            while next < end || bytes.is_empty() {
                let Ok(chunk) = self.read_chunk(next).await else {
                    return self.get_exact(pos, end).await;
                };
                if chunk.is_empty() {
                    break;
                }
                bytes.extend_from_slice(&chunk);
                next += chunk.len() as u64;
            }
            self.start = read_start;
            self.bytes = bytes;
            self.read_ahead(next);
        }
        let to = ((end - self.start) as usize).min(self.bytes.len());
        let from = ((pos - self.start) as usize).min(to);
        Ok(&self.bytes[from..to])
    }

    /// Bytes `[pos, pos + len)` for a scan that skips from index to index.
    /// Where the writes are small, the indexes lie close together and the
    /// sequential reads of [`Self::get`] (with read-ahead) are fastest;
    /// where they are large, read-ahead would read the payloads the scan
    /// skips. So: two misses in a row less than `SPARSE_JUMP_BYTES` past
    /// what was read go sequential; any other miss reads just the blocks
    /// asked for (at least `SPARSE_READ_BYTES`), or takes them from a read
    /// issued ahead at a predicted position ([`Self::read_sparse_ahead`]),
    /// with no sequential read ahead.
    async fn get_sparse(&mut self, pos: u64, len: u64) -> std::io::Result<&[u8]> {
        if pos >= self.file_len {
            return Ok(&[]);
        }
        let end = pos.saturating_add(len).min(self.file_len);
        let window_end = self.start + self.bytes.len() as u64;
        if pos >= self.start && end <= window_end {
            return self.get(pos, len).await;
        }
        let near = !self.bytes.is_empty()
            && pos >= self.start
            && pos < window_end.saturating_add(SPARSE_JUMP_BYTES);
        let dense = near && self.last_miss_near;
        self.last_miss_near = near;
        if dense {
            return self.get(pos, len).await;
        }
        self.ahead.clear();
        let file_end = crate::format::align_up(self.file_len, BLOCK_BYTES);
        let read_start = crate::format::align_down(pos, BLOCK_BYTES);
        let read_end = crate::format::align_up(end, BLOCK_BYTES)
            .max(read_start + SPARSE_READ_BYTES)
            .min(file_end);
        let read_len = read_end - read_start;
        let read = match self.take_sparse_ahead(read_start, read_len).await {
            Some(read) => read,
            None => {
                self.sparse_ahead.clear();
                self.file.read_at(read_start, read_len as usize).await
            }
        };
        let Ok(bytes) = read else {
            return self.get_exact(pos, end).await;
        };
        self.start = read_start;
        self.bytes = bytes.to_vec();
        self.sparse_starts = [
            self.sparse_starts[1],
            self.sparse_starts[2],
            Some(read_start),
        ];
        if read_len <= SPARSE_AHEAD_READ_BYTES_MAX {
            self.read_sparse_ahead(read_len, file_end);
        }
        let to = ((end - self.start) as usize).min(self.bytes.len());
        let from = ((pos - self.start) as usize).min(to);
        Ok(&self.bytes[from..to])
    }
}

impl<F: StorageFile> ScanReader<F> {
    /// Bytes `[pos, end)` read alone, after a read of more than them failed:
    /// a block the disk cannot read among the bytes the scan skips (a
    /// vouched write's payload) is left to the entry's reads and the
    /// scrubber, as damage there is. If these blocks fail too, the error
    /// names the first that fails alone ([`UnreadableBlock`]).
    ///
    /// [`UnreadableBlock`]: crate::storage::UnreadableBlock
    async fn get_exact(&mut self, pos: u64, end: u64) -> std::io::Result<&[u8]> {
        self.invalidate();
        self.sparse_starts = [None; 3];
        let file_end = crate::format::align_up(self.file_len, BLOCK_BYTES);
        let read_start = crate::format::align_down(pos, BLOCK_BYTES);
        let read_end = crate::format::align_up(end, BLOCK_BYTES).min(file_end);
        let bytes = crate::storage::read_locating_unreadable(
            &*self.file,
            read_start,
            (read_end - read_start) as usize,
            &|| true,
        )
        .await?;
        self.start = read_start;
        self.bytes = bytes.to_vec();
        let to = ((end - self.start) as usize).min(self.bytes.len());
        let from = ((pos - self.start) as usize).min(to);
        Ok(&self.bytes[from..to])
    }

    /// Waits for the predicted reads still queued (their results are
    /// dropped). Each is at most [`SPARSE_AHEAD_READ_BYTES_MAX`].
    async fn settle(&mut self) {
        for (_, _, read) in std::mem::take(&mut self.sparse_ahead) {
            let _ = read.await;
        }
    }

    /// Tops up the reads issued ahead: from the last three starts `a < b <
    /// c`, the walk is taken to repeat every second jump, so the next ones
    /// are `b + k·(c − a)` and `c + k·(c − a)` for k = 1, 2, … (one stride
    /// `s` is the case `b = a + s`, `c = a + 2s`). Each is `len` bytes; a
    /// wrong guess costs one small read and is dropped.
    fn read_sparse_ahead(&mut self, len: u64, file_end: u64) {
        let [Some(a), Some(b), Some(c)] = self.sparse_starts else {
            return;
        };
        if !(a < b && b < c) {
            return;
        }
        let period = c - a;
        let (mut first, mut second) = (b + period, c + period);
        if let Some(&(last, _, _)) = self.sparse_ahead.back() {
            // Continue after what is already in flight.
            while first <= last {
                (first, second) = (second, first + period);
            }
        }
        while self.sparse_ahead.len() < SPARSE_READS_AHEAD && first + len <= file_end {
            let file = self.file.clone();
            let read = async move { file.read_at(first, len as usize).await };
            self.sparse_ahead
                .push_back((first, len, glommio::spawn_local(read).detach()));
            (first, second) = (second, first + period);
        }
    }

    /// The read issued ahead that covers `[start, start + len)`, if the
    /// prediction held (those before it are dropped).
    async fn take_sparse_ahead(
        &mut self,
        start: u64,
        len: u64,
    ) -> Option<std::io::Result<F::ReadBuf>> {
        while let Some((ahead_start, ahead_len, _)) = self.sparse_ahead.front() {
            if *ahead_start > start {
                return None;
            }
            let (ahead_start, ahead_len) = (*ahead_start, *ahead_len);
            let (_, _, read) = self.sparse_ahead.pop_front()?;
            if ahead_start == start && ahead_len >= len {
                // `None`: the executor is going away; read directly.
                return read.await;
            }
        }
        None
    }
}

fn read_error(path: &Path, offset: u64) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |err| Error::io("read", path, Some(offset), err)
}

struct SegmentScan {
    max_op: u64,
    max_epoch: u64,
    entries: u64,
    bytes: u64,
    watermark: u64,
    valid_end: u64,
    tail: TailState,
    transient_read_faults: u64,
    /// The sequence and payload of its last hard-state record.
    hard_state: Option<(u64, Vec<u8>)>,
    /// It holds a truncation record.
    truncated: bool,
    /// Its data entries and truncations, in log order.
    items: Vec<ScanItem>,
}

/// What the ring index learns from a segment's scan.
enum ScanItem {
    Data {
        op: u64,
        epoch: u64,
        location: Location,
    },
    Truncate(u64),
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Error {
        match refusal {
            Refusal::Damage(d) => Error::corruption(d.path, d.offset, d.reason),
            Refusal::WrongOwner {
                path,
                recorded,
                expected,
            } => Error::WrongOwner {
                path,
                recorded,
                expected,
            },
            Refusal::UnsupportedVersion {
                path,
                found,
                supported,
            } => Error::UnsupportedVersion {
                path,
                found,
                supported,
            },
        }
    }
}

pub(crate) async fn recover<S: Storage>(
    storage: &S,
    config: &JournalConfig,
) -> Result<Recovered<S::File>> {
    let dir = &config.dir;
    // Everything below is decided from the directory listing and the
    // superblock as they read now: make them durable first. A change the
    // last run could not sync (a close whose directory fsync failed after
    // it removed its spare segment) must not come back after a crash once
    // recovery has acted on its absence.
    storage
        .sync_dir(dir)
        .await
        .map_err(|e| Error::io("fsync directory", dir, None, e))?;
    let listing = storage
        .list_dir(dir)
        .map_err(|e| Error::io("list directory", dir, None, e))?;
    let names = verify::classify_names(&listing);
    let sb_path = dir.join(SUPERBLOCK_FILE_NAME);
    let (sb_bytes, sb_transient_faults) = if names.superblock {
        read_superblock_durably(storage, &sb_path).await?
    } else {
        (None, 0)
    };
    let mut files = Vec::with_capacity(names.generations.len());
    let mut facts = Vec::with_capacity(names.generations.len());
    for &generation in &names.generations {
        let (path, file, len) = open_segment(storage, dir, generation).await?;
        facts.push(read_facts(&file, &path, generation, len).await?);
        files.push((generation, file, len));
    }
    let plan = verify::plan(dir, &names, sb_bytes.as_deref(), &facts, config.owner)?;

    let mut report = RecoveryReport {
        segments: 0,
        entries: 0,
        bytes: 0,
        watermark: 0,
        tail: TailState::Empty,
        removed: Vec::new(),
        stray_files: plan.stray.clone(),
        superblock_repaired: Vec::new(),
        transient_read_faults: sb_transient_faults,
        unrecorded_end: None,
    };
    for stray in &plan.stray {
        tracing::warn!(path = %stray.display(), "ignoring a file that is not part of the journal");
    }
    let mut plan = plan;
    if let Some(found) = &mut plan.superblock {
        for fault in &found.damaged_copies {
            tracing::warn!(
                path = %sb_path.display(),
                offset = fault.offset,
                reason = %fault.reason,
                "superblock copy damaged or stale; the other copy is used and this one is rewritten"
            );
            report
                .superblock_repaired
                .push(format!("byte offset {}: {}", fault.offset, fault.reason));
        }
        if !found.damaged_copies.is_empty() {
            // Both copies hold the chosen state again before anything is
            // removed on its strength, the stale one written first: a crash
            // now cannot bring back an older state (see `superblock`).
            let sequence = found.sequence + 1;
            superblock::write_file(
                storage,
                &sb_path,
                false,
                superblock::SuperblockKind::Journal,
                sequence,
                &found.superblock.encode(),
                found.newest_copy,
            )
            .await
            .map_err(|f| Error::io(f.op, &sb_path, f.offset, f.source))?;
            found.sequence = sequence;
        }
    }
    for leftover in &plan.leftovers {
        if let Some(i) = files
            .iter()
            .position(|(g, _, _)| dir.join(segment_file_name(*g)) == leftover.path)
        {
            let (_, file, _) = files.remove(i);
            let _ = file.close().await;
        }
        storage
            .remove(&leftover.path)
            .await
            .map_err(|e| Error::io("remove", &leftover.path, None, e))?;
        tracing::warn!(path = %leftover.path.display(), reason = leftover.reason, "removed a file a crash left behind");
        report.removed.push(leftover.path.clone());
    }
    if !plan.leftovers.is_empty() {
        storage
            .sync_dir(dir)
            .await
            .map_err(|e| Error::io("fsync directory", dir, None, e))?;
    }

    let mut index = RingIndex::new(config.slot_count, 0);
    let mut segments = Vec::with_capacity(plan.segments.len());
    let mut watermark = plan
        .superblock
        .as_ref()
        .map_or(0, |f| f.superblock.watermark);
    let mut max_op = 0;
    let mut max_epoch = 0;
    let mut hard_state = None;
    let mut truncated = false;
    let count = plan.segments.len();
    // Segments are scanned a few at a time (a scan from index to index is a
    // chain of small reads, each waiting for the last) and applied to the
    // index in log order; the first error in log order is the one returned.
    let mut scans = std::collections::VecDeque::new();
    let mut planned_segments = plan.segments.into_iter().enumerate();
    loop {
        while scans.len() < SEGMENT_SCANS_IN_FLIGHT {
            let Some((i, planned)) = planned_segments.next() else {
                break;
            };
            let position = files
                .iter()
                .position(|(g, _, _)| *g == planned.generation)
                .expect("the plan only names segments that were opened");
            let (_, file, len) = files.remove(position);
            let file = Rc::new(file);
            // A task, not detached: an error returned below drops (and so
            // cancels) the scans still running.
            let scan = glommio::spawn_local(scan_segment(
                file.clone(),
                planned.clone(),
                len,
                config.recovery,
            ));
            scans.push_back((i, planned, file, scan));
        }
        let Some((i, planned, file, scan)) = scans.pop_front() else {
            break;
        };
        let header = planned.header;
        watermark = watermark.max(header.watermark.get());
        let mut scan = scan.await?;
        for item in std::mem::take(&mut scan.items) {
            match item {
                ScanItem::Data {
                    op,
                    epoch,
                    location,
                } => index.insert_recovered(op, epoch, location),
                // In log order: the entries above it written before it
                // are gone, those written after it stay.
                ScanItem::Truncate(op) => index.truncate_recovered(op),
            }
        }
        watermark = watermark.max(scan.watermark);
        max_op = max_op.max(scan.max_op);
        max_epoch = max_epoch.max(scan.max_epoch);
        if scan.hard_state.is_some() {
            hard_state = scan.hard_state;
        }
        truncated |= scan.truncated;
        report.entries += scan.entries;
        report.bytes += scan.bytes;
        report.transient_read_faults += scan.transient_read_faults;
        if i + 1 == count {
            report.tail = scan.tail;
            if planned.sealed_end.is_none() {
                report.unrecorded_end = Some(UnrecordedEnd {
                    path: planned.path.clone(),
                    offset: scan.valid_end,
                    last_op: 0,
                });
            }
        }
        segments.push(Segment {
            generation: planned.generation,
            path: planned.path,
            file,
            segment_bytes: header.segment_bytes.get(),
            write_pos: scan.valid_end,
            max_op: scan.max_op,
            watermark_seen: scan.watermark.max(header.watermark.get()),
            durable_end: scan.valid_end,
            journal_id: header.journal_id,
            reusable: false,
        });
    }
    for (_, file, _) in files {
        let _ = file.close().await;
    }
    report.segments = segments.len();
    report.watermark = watermark;
    if max_op.max(watermark) == u64::MAX {
        // No op can follow it: only forged bytes hold it.
        return Err(Error::corruption(dir, 0, crate::verify::NO_OP_CAN_FOLLOW));
    }
    if hard_state
        .as_ref()
        .is_some_and(|(sequence, _)| *sequence == u64::MAX)
    {
        return Err(Error::corruption(
            dir,
            0,
            crate::verify::NO_SEQUENCE_CAN_FOLLOW,
        ));
    }
    if truncated {
        // The largest op left after the truncations.
        max_op = index.max_op();
    }
    if let Some(end) = &mut report.unrecorded_end {
        end.last_op = max_op.max(watermark);
        tracing::info!(
            path = %end.path.display(),
            offset = end.offset,
            last_op = end.last_op,
            "the journal was not closed cleanly: its end is not recorded, so an acknowledged \
             write after it that the disk wiped to zeros could not be told from one never made \
             durable"
        );
    }
    if let Some(op) = index.finish_recovery(watermark) {
        return Err(Error::corruption(
            dir,
            0,
            format!("op {op} shares its ring slot with a later op while above the watermark {watermark}"),
        ));
    }
    let last_holds_bytes = segments.last().is_some_and(|last| {
        facts
            .iter()
            .find(|f| f.generation == last.generation)
            .is_some_and(SegmentFacts::holds_data)
    });
    Ok(Recovered {
        segments,
        index,
        max_op,
        max_epoch,
        report,
        superblock: plan.superblock,
        hard_state,
        last_holds_bytes,
    })
}

/// Opens segment `generation` of `dir`: its path, handle and length.
async fn open_segment<S: Storage>(
    storage: &S,
    dir: &Path,
    generation: u64,
) -> Result<(PathBuf, S::File, u64)> {
    let path = dir.join(segment_file_name(generation));
    let file = storage
        .open(&path)
        .await
        .map_err(|e| Error::io("open", &path, None, e))?;
    let len = file
        .file_len()
        .await
        .map_err(|e| Error::io("stat", &path, None, e))?;
    Ok((path, file, len))
}

/// Reads what [`verify::plan`] needs of a segment: its header block (twice
/// if it does not verify, so a transient read error does not count) and
/// the first entry position (again while reads of it disagree, when it
/// holds neither zeros nor a header that verifies).
async fn read_facts<F: StorageFile>(
    file: &F,
    path: &Path,
    generation: u64,
    len: u64,
) -> Result<SegmentFacts> {
    let read = |pos: u64, want: u64| async move {
        if pos >= len {
            return Ok(Vec::new());
        }
        // A block that fails every read is named as such (`UnreadableBlock`).
        let bytes =
            crate::storage::read_locating_unreadable(file, pos, BLOCK_BYTES as usize, &|| true)
                .await
                .map_err(read_error(path, pos))?;
        Ok::<_, Error>(bytes[..(want as usize).min(bytes.len())].to_vec())
    };
    let mut header_block = read(0, BLOCK_BYTES).await?;
    if !matches!(
        check_segment_header(&header_block, generation),
        SegmentHeaderStatus::Valid(_)
    ) {
        header_block = read(0, BLOCK_BYTES).await?;
    }
    let mut facts = SegmentFacts {
        generation,
        len,
        header_block,
        first_entry: read(SEGMENT_DATA_OFFSET, ENTRY_HEADER_BYTES as u64).await?,
    };
    for _ in 1..crate::verify::FIRST_ENTRY_READS_MAX {
        if !facts.first_entry_needs_reread() {
            break;
        }
        let again = read(SEGMENT_DATA_OFFSET, ENTRY_HEADER_BYTES as u64).await?;
        if again == facts.first_entry {
            break;
        }
        facts.first_entry = again;
    }
    Ok(facts)
}

/// Drives the verifier over one segment, recording every entry (in
/// `SegmentScan::items`, for the ring index, in log order).
async fn scan_segment<F: StorageFile>(
    file: Rc<F>,
    planned: PlannedSegment,
    file_len: u64,
    recovery: Recovery,
) -> Result<SegmentScan> {
    let path = &planned.path;
    let mut reader = ScanReader::new(file, file_len);
    let mut scanner = SegmentScanner::indexed(&planned.header, planned.sealed_end);
    let mut scan = SegmentScan {
        max_op: 0,
        max_epoch: 0,
        entries: 0,
        bytes: 0,
        watermark: 0,
        valid_end: SEGMENT_DATA_OFFSET,
        tail: TailState::Clean,
        transient_read_faults: 0,
        hard_state: None,
        truncated: false,
        items: Vec::new(),
    };
    let mut step = scanner.step(None);
    let outcome = loop {
        step = match step {
            Step::Read {
                pos,
                len,
                again,
                sparse,
            } => {
                if again {
                    reader.invalidate();
                }
                let bytes = if sparse {
                    reader.get_sparse(pos, len).await
                } else {
                    reader.get(pos, len).await
                };
                scanner.step(Some(bytes.map_err(read_error(path, pos))?))
            }
            Step::Entry(header) => {
                match header.entry_kind() {
                    Some(EntryKind::Data) => record_entry(&mut scan, &header),
                    Some(EntryKind::Watermark) => {
                        scan.watermark = scan.watermark.max(header.op.get());
                    }
                    // In log order: the entries above it written before it
                    // are gone, those written after it stay.
                    Some(EntryKind::Truncate) => {
                        scan.items.push(ScanItem::Truncate(header.op.get()));
                        scan.truncated = true;
                    }
                    Some(EntryKind::HardState) => {
                        // The scanner verified the payload (the walk by
                        // index reads hard states too); it is still in the
                        // reader's window.
                        let pos = u64::from(header.offset.get()) + ENTRY_HEADER_BYTES as u64;
                        let len = u64::from(header.payload_len.get());
                        let bytes = reader
                            .get_sparse(pos, len)
                            .await
                            .map_err(read_error(path, pos))?;
                        if crc32fast::hash(bytes) != header.payload_checksum.get() {
                            return Err(Error::corruption(
                                path,
                                pos,
                                "hard-state payload changed between two reads",
                            ));
                        }
                        scan.hard_state = Some((header.op.get(), bytes.to_vec()));
                    }
                    _ => {}
                }
                scanner.step(None)
            }
            Step::Done(outcome) => break outcome,
        };
    };
    // The predicted reads still queued hold the segment's file: let them
    // finish, so they do not keep a segment the journal soon retires from
    // being recycled or shrunk (both check that the journal holds it
    // alone). Reads dropped earlier finish on their own.
    reader.settle().await;
    scan.transient_read_faults = scanner.transient_read_faults();
    match outcome {
        SegmentOutcome::Sealed { end } | SegmentOutcome::Clean { end } => scan.valid_end = end,
        SegmentOutcome::Damaged { offset, reason } => {
            return Err(Error::corruption(path, offset, reason))
        }
        SegmentOutcome::Cut(cut) => {
            let ops = describe_cut_ops(cut.ops, cut.entries);
            if recovery == Recovery::Strict {
                return Err(Error::corruption(
                    path,
                    cut.offset,
                    format!(
                        "{}: the log's tail does not verify and nothing proves it durable; {ops} (recovery is Strict, so nothing is cut)",
                        cut.reason
                    ),
                ));
            }
            tracing::warn!(
                path = %path.display(),
                offset = cut.offset,
                reason = %cut.reason,
                ops = %ops,
                "cutting the log's tail: its bytes do not verify and nothing proves them durable"
            );
            scan.valid_end = cut.offset;
            scan.tail = TailState::Torn {
                path: path.clone(),
                offset: cut.offset,
                reason: cut.reason,
                ops: cut.ops,
                entries: cut.entries,
            };
        }
    }
    Ok(scan)
}

fn record_entry(scan: &mut SegmentScan, header: &EntryHeader) {
    let op = header.op.get();
    let epoch = header.epoch.get();
    scan.max_op = scan.max_op.max(op);
    scan.max_epoch = scan.max_epoch.max(epoch);
    scan.entries += 1;
    scan.bytes += header.footprint();
    let location = Location {
        generation: header.generation.get(),
        offset: header.offset.get(),
        payload_len: header.payload_len.get(),
    };
    scan.items.push(ScanItem::Data {
        op,
        epoch,
        location,
    });
}

/// Reads the superblock file after an fdatasync, so what recovery acts on
/// is what a crash keeps (the last run's update may have failed between its
/// write and its sync).
async fn read_superblock_durably<S: Storage>(
    storage: &S,
    path: &Path,
) -> Result<(Option<Vec<u8>>, u64)> {
    let file = match storage.open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, 0)),
        Err(e) => return Err(Error::io("open superblock", path, None, e)),
    };
    let synced = file.sync().await;
    let read = superblock::settle_reads(superblock::SuperblockKind::Journal, || async {
        Ok::<_, std::io::Error>(
            file.read_at(0, superblock::SUPERBLOCK_FILE_BYTES as usize)
                .await?
                .to_vec(),
        )
    })
    .await;
    let _ = file.close().await;
    synced.map_err(|e| Error::io("fdatasync superblock", path, None, e))?;
    let (bytes, transient) = read.map_err(|e| Error::io("read superblock", path, Some(0), e))?;
    Ok((Some(bytes), transient))
}
