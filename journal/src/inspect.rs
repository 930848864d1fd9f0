//! Read-only inspection of a journal directory: what `ringstore wal
//! inspect`, `wal verify`, `wal dump` and `wal salvage` see.
//!
//! [`scan_journal`] drives the journal's one verifier ([`crate::verify`])
//! the way recovery does: [`verify::classify_names`] on the directory
//! listing; the superblock's bytes and each segment's [`SegmentFacts`] (its
//! header block, read a second time if it does not verify, and the bytes of
//! its first entry) into [`verify::plan`]; then a [`SegmentScanner`] over
//! every planned segment, answering each [`Step::Read`] from the file — read
//! afresh, not from what was read before, when it says `again`. The reads
//! are plain `std::fs` reads instead of the journal's storage backend, so
//! the scan needs no glommio reactor and no O_DIRECT (it works on tmpfs, on
//! a copy, and next to a running shard), and it never creates, writes,
//! removes or locks anything.
//!
//! # One verdict
//!
//! [`JournalReport::verdict`] answers "what would reopening do?" from the
//! same verifier outcomes recovery acts on:
//!
//! | the verifier says | reopen | [`Verdict`] |
//! |---|---|---|
//! | [`verify::plan`] refuses | error (`Corruption`, `WrongOwner`, `UnsupportedVersion`) | `Refuses` |
//! | a segment's scan ends in [`SegmentOutcome::Damaged`] | error (`Corruption`) | `Refuses` |
//! | the last segment's scan ends in [`SegmentOutcome::Cut`] | cuts the tail and reports it; `Recovery::Strict` refuses | `Cuts` |
//! | anything else | opens | `Opens` |
//!
//! Leftovers a crash explains ([`verify::Plan::leftovers`]) are removed by
//! a reopen: reported here ([`JournalReport::leftovers`]), not a refusal.
//! Stray files are reported and ignored by both.
//!
//! # Carrying on
//!
//! The one deliberate difference from recovery: where recovery returns its
//! first error, the scan records it and carries on, so one run reports
//! everything.
//!
//! * After a damaged segment it scans the next one: the plan knows where
//!   every segment ends.
//! * After a refusal of the plan itself (a missing, short, foreign or
//!   unverifiable segment, a damaged superblock) it scans a best-effort
//!   plan: the generations the superblock records (every one present when
//!   no superblock is readable), each segment that passes its own checks
//!   ([`verify::check_log_segment`]) bounded by the end the superblock
//!   records for it or else by its successor's `prev_end`. The damage
//!   further on, the ops present and where verifying data ends are still
//!   reported, and `ringstore wal salvage` ([`crate::salvage`]) knows what
//!   it can keep. [`JournalReport::planned`] says which of the two ran. The
//!   verdict of such a run is the plan's refusal; what the best-effort scan
//!   finds only adds to [`JournalReport::damage`].
//!
//! Beyond what a reopen checks, the scan checks what the engine's replay
//! needs: every op above the watermark up to the last op present
//! ([`JournalReport::missing_ops`], [`JournalReport::leading_gap`]). It does
//! not check that two ops above the watermark share a ring slot (decision
//! table row 10): that depends on the `slot_count` the journal is opened
//! with, which the directory does not record.

use crate::config::Recovery;
use crate::durability::record::{
    DurabilityRecord, RecordFault, DURABILITY_RECORD_BYTES, DURABILITY_RECORD_FILE_NAME,
};
use crate::format::{
    align_down, EntryHeader, EntryKind, SegmentHeader, BLOCK_BYTES, ENTRY_HEADER_BYTES,
    FLAG_FIRST_IN_WRITE, SEGMENT_DATA_OFFSET, SEGMENT_FLAG_NO_SYNC, SEGMENT_FLAG_RECYCLED,
};
use crate::recovery::TailState;
use crate::segment::segment_file_name;
use crate::superblock::{
    self, CopyFault, JournalOwner, JournalSuperblock, SuperblockKind, SUPERBLOCK_FILE_BYTES,
    SUPERBLOCK_FILE_NAME,
};
use crate::verify::{
    self, FoundSuperblock, Leftover, Names, PlannedSegment, Refusal, SegmentFacts, SegmentOutcome,
    SegmentScanner, Step,
};
pub use crate::verify::{check_segment_header, Damage, SegmentHeaderStatus};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes read per call while scanning.
pub const INSPECT_READ_BYTES: u64 = 1 << 20;
const _: () = assert!(INSPECT_READ_BYTES.is_multiple_of(BLOCK_BYTES));

/// Most missing-op ranges a report lists (the total count is always exact).
pub const MISSING_RANGES_MAX: usize = 64;

/// Why a journal directory could not be scanned at all. Damage inside it is
/// not an error: it is part of the [`JournalReport`].
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The directory does not exist.
    #[error("{path}: no such directory")]
    NotFound {
        /// The directory.
        path: PathBuf,
    },
    /// The path exists but is not a directory.
    #[error("{path}: not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// A read or directory listing failed.
    #[error("{op} failed on {path}{}: {source}", offset_suffix(*offset))]
    Io {
        /// The step, e.g. `"read"`.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The byte offset of a failed read.
        offset: Option<u64>,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

fn offset_suffix(offset: Option<u64>) -> String {
    offset.map_or_else(String::new, |o| format!(" at byte offset {o}"))
}

fn io_error<'a>(
    op: &'static str,
    path: &'a Path,
    offset: Option<u64>,
) -> impl FnOnce(io::Error) -> InspectError + 'a {
    move |source| InspectError::Io {
        op,
        path: path.to_path_buf(),
        offset,
        source,
    }
}

/// The fields of a segment header that verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeaderFields {
    /// Format version.
    pub version: u32,
    /// Where entries start.
    pub data_offset: u32,
    /// Generation (equals the file name's).
    pub generation: u64,
    /// Length of the segment as created.
    pub segment_bytes: u64,
    /// Largest write made to it.
    pub batch_bytes_max: u64,
    /// Generation of the previous segment (0: none).
    pub prev_generation: u64,
    /// End of valid data in the previous segment.
    pub prev_end: u64,
    /// The durable watermark when it was created.
    pub watermark: u64,
    /// Written without fdatasync (`Durability::NoSync`).
    pub no_sync: bool,
    /// The file held a retired segment before (its space past the last
    /// write holds that segment's bytes).
    pub recycled: bool,
    /// Most writes in flight at once.
    pub writes_in_flight: u32,
    /// The journal it belongs to.
    pub journal_id: [u8; 16],
}

impl From<&SegmentHeader> for SegmentHeaderFields {
    fn from(h: &SegmentHeader) -> Self {
        SegmentHeaderFields {
            version: h.version.get(),
            data_offset: h.data_offset.get(),
            generation: h.generation.get(),
            segment_bytes: h.segment_bytes.get(),
            batch_bytes_max: h.batch_bytes_max.get(),
            prev_generation: h.prev_generation.get(),
            prev_end: h.prev_end.get(),
            watermark: h.watermark.get(),
            no_sync: h.flags.get() & SEGMENT_FLAG_NO_SYNC != 0,
            recycled: h.flags.get() & SEGMENT_FLAG_RECYCLED != 0,
            writes_in_flight: h.writes_in_flight.get(),
            journal_id: h.journal_id,
        }
    }
}

/// How the scan of one segment file ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEnd {
    /// The last segment: zeroed space (or the end of the file) after the
    /// last entry (decision table row 1).
    Clean {
        /// End of the valid entries.
        offset: u64,
    },
    /// Reached the end of its data that is recorded (by its successor's
    /// `prev_end` or by the superblock).
    Sealed {
        /// End of the valid entries.
        offset: u64,
    },
    /// Bytes at the end that do not verify and that nothing proves durable
    /// (rows 2–4, 13): a reopen cuts them (`Recovery::Strict` refuses). They
    /// may hold acknowledged entries: `ops` names the ones whose headers
    /// still verify.
    Torn {
        /// Where the log ends.
        offset: u64,
        /// What did not verify there.
        reason: String,
        /// Lowest and highest op of the data entries in the cut bytes whose
        /// headers still verify.
        ops: Option<(u64, u64)>,
        /// How many such entries.
        entries: u64,
    },
    /// Damage where valid data must be; the scan of this segment stopped.
    Damaged {
        /// Where.
        offset: u64,
    },
    /// A file a crash left behind, which a reopen removes (a spare or an
    /// interrupted creation, row 7; a retired segment, row 14).
    Leftover {
        /// Why a crash explains it.
        reason: &'static str,
    },
    /// Not scanned: not part of the log (its header does not verify, it
    /// belongs to another journal, the superblock does not record it), or
    /// the scan stopped before it.
    Unscanned,
    /// The observer stopped the scan here.
    Stopped {
        /// Where the scan stood.
        offset: u64,
    },
}

impl SegmentEnd {
    /// Where the entries that verified end, for the ends that know it.
    pub fn data_end(&self) -> Option<u64> {
        match self {
            SegmentEnd::Clean { offset }
            | SegmentEnd::Sealed { offset }
            | SegmentEnd::Torn { offset, .. }
            | SegmentEnd::Damaged { offset } => Some(*offset),
            _ => None,
        }
    }
}

/// A hard-state record: its sequence and its bytes.
pub type HardStateRecord = (u64, Vec<u8>);

/// One segment file and what the scan found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    /// The file.
    pub path: PathBuf,
    /// The generation in its name.
    pub generation: u64,
    /// The file's length.
    pub file_bytes: u64,
    /// Its header, if it verified (also for a file that is not part of the
    /// log, e.g. one of another journal).
    pub header: Option<SegmentHeaderFields>,
    /// Part of the log a reopen reads (in a best-effort scan: of the log as
    /// far as it can be made out).
    pub in_log: bool,
    /// The end of its data the log records (its successor's `prev_end`, the
    /// superblock's record): the scan reads nothing past it. `None`: the
    /// last segment, whose end the scan finds.
    pub sealed_end: Option<u64>,
    /// Data entries that verified.
    pub data_entries: u64,
    /// Bytes of those entries (headers, payloads, alignment).
    pub data_bytes: u64,
    /// Watermark records that verified.
    pub watermark_records: u64,
    /// Truncation records that verified.
    pub truncate_records: u64,
    /// Hard-state records that verified.
    pub hard_state_records: u64,
    /// The last of them (a salvage keeps the newest hard state of the log
    /// it leaves, see [`crate::salvage`]).
    pub last_hard_state: Option<HardStateRecord>,
    /// Padding entries that verified.
    pub padding_entries: u64,
    /// Write indexes (one per write of this format).
    pub write_indexes: u64,
    /// Group-commit writes (entries flagged first-in-write).
    pub writes: u64,
    /// Smallest data op in it.
    pub op_min: Option<u64>,
    /// Largest data op in it.
    pub op_max: Option<u64>,
    /// Largest epoch of its data entries.
    pub epoch_max: Option<u64>,
    /// Largest watermark it records (header or records).
    pub watermark: u64,
    /// How the scan ended.
    pub end: SegmentEnd,
    /// How a reopen's scan, which reads less, ends, where it differs from
    /// `end` (damage a reopen does not read:
    /// [`JournalReport::damage_found_on_read`]).
    pub reopen_end: Option<SegmentEnd>,
}

impl SegmentReport {
    fn new(path: PathBuf, generation: u64, file_bytes: u64) -> SegmentReport {
        SegmentReport {
            path,
            generation,
            file_bytes,
            header: None,
            in_log: false,
            sealed_end: None,
            reopen_end: None,
            data_entries: 0,
            data_bytes: 0,
            watermark_records: 0,
            truncate_records: 0,
            hard_state_records: 0,
            last_hard_state: None,
            padding_entries: 0,
            write_indexes: 0,
            writes: 0,
            op_min: None,
            op_max: None,
            epoch_max: None,
            watermark: 0,
            end: SegmentEnd::Unscanned,
        }
    }
}

/// How the log ends, as a reopen would decide it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// No segments: a new (or never opened) journal.
    Empty,
    /// Zeroed space after the last entry, or the end the log records.
    Clean {
        /// The last segment.
        path: PathBuf,
        /// End of the log.
        offset: u64,
    },
    /// Bytes at the end of the log that do not verify and that nothing
    /// proves durable: a reopen (in its default mode) cuts them and reports
    /// the cut, `Recovery::Strict` refuses. Like
    /// [`TailState::Torn`].
    Torn {
        /// The last segment.
        path: PathBuf,
        /// Where the log ends.
        offset: u64,
        /// What did not verify there.
        reason: String,
        /// Lowest and highest op of the data entries in the cut bytes whose
        /// headers still verify (`None`: none verify). They may have been
        /// acknowledged.
        ops: Option<(u64, u64)>,
        /// How many such entries.
        entries: u64,
    },
    /// Not decided: the log's last segment is damaged, was not scanned to
    /// its end, or the log could not be made out.
    Unknown,
}

impl Tail {
    /// What recovery reports for this tail (`None` for [`Tail::Unknown`]).
    pub fn tail_state(&self) -> Option<TailState> {
        match self {
            Tail::Empty => Some(TailState::Empty),
            Tail::Clean { .. } => Some(TailState::Clean),
            Tail::Torn {
                path,
                offset,
                reason,
                ops,
                entries,
            } => Some(TailState::Torn {
                path: path.clone(),
                offset: *offset,
                reason: reason.clone(),
                ops: *ops,
                entries: *entries,
            }),
            Tail::Unknown => None,
        }
    }

    /// A one-line description in the words recovery logs
    /// ([`TailState::describe`], [`crate::describe_cut_ops`]).
    pub fn describe(&self) -> String {
        match self.tail_state() {
            Some(state) => state.describe(),
            None => "undecided (the log's last segment is damaged or was not scanned)".into(),
        }
    }
}

/// What reopening the journal would do, from the verifier's outcomes (see
/// the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It opens as it is (after removing leftovers).
    Opens,
    /// It opens after cutting the tail ([`Tail::Torn`]), which it reports;
    /// `Recovery::Strict` refuses.
    Cuts,
    /// It refuses: [`JournalReport::refusal`] is the error it returns.
    Refuses,
}

/// The superblock a scan found, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuperblockReport {
    /// The file.
    pub path: PathBuf,
    /// The sequence of the copy in use.
    pub sequence: u64,
    /// The journal's id.
    pub journal_id: [u8; 16],
    /// The recorded owner.
    pub owner: Option<JournalOwner>,
    /// Oldest generation that must exist (0: none yet).
    pub first_generation: u64,
    /// Newest generation that must exist.
    pub last_generation: u64,
    /// The watermark it records.
    pub watermark: u64,
    /// The segment ends it records, `(generation, end)`.
    pub ends: Vec<(u64, u64)>,
    /// The hard state it records (empty: none).
    pub hard_state: Vec<u8>,
    /// That hard state's sequence (0: none).
    pub hard_state_sequence: u64,
    /// Copies that did not verify or were older (a reopen rewrites them).
    pub damaged_copies: Vec<CopyFault>,
}

impl SuperblockReport {
    fn new(
        path: PathBuf,
        sb: &JournalSuperblock,
        sequence: u64,
        damaged_copies: Vec<CopyFault>,
    ) -> SuperblockReport {
        SuperblockReport {
            path,
            sequence,
            journal_id: sb.journal_id,
            owner: sb.owner,
            first_generation: sb.first_generation,
            last_generation: sb.last_generation,
            watermark: sb.watermark,
            ends: sb.ends.clone(),
            hard_state: sb.hard_state.clone(),
            hard_state_sequence: sb.hard_state_sequence,
            damaged_copies,
        }
    }

    fn from_found(path: PathBuf, found: &FoundSuperblock) -> SuperblockReport {
        SuperblockReport::new(
            path,
            &found.superblock,
            found.sequence,
            found.damaged_copies.clone(),
        )
    }

    /// Its contents as the verifier decodes them.
    pub fn superblock(&self) -> JournalSuperblock {
        JournalSuperblock {
            journal_id: self.journal_id,
            owner: self.owner,
            first_generation: self.first_generation,
            last_generation: self.last_generation,
            watermark: self.watermark,
            ends: self.ends.clone(),
            hard_state: self.hard_state.clone(),
            hard_state_sequence: self.hard_state_sequence,
        }
    }
}

/// Everything [`scan_journal`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalReport {
    /// The journal directory.
    pub dir: PathBuf,
    /// The superblock, if a copy verifies (also in a best-effort scan).
    pub superblock: Option<SuperblockReport>,
    /// Every segment file, by generation (leftovers and files that are not
    /// part of the log included).
    pub segments: Vec<SegmentReport>,
    /// The watermark: the largest of the superblock's, the headers' and the
    /// records' (of the segments in the log), as recovery computes it.
    pub watermark: u64,
    /// Largest epoch of any data entry (0: none).
    pub epoch_max: u64,
    /// Data entries that verified, at or below the watermark included.
    pub data_entries: u64,
    /// Bytes of those entries.
    pub data_bytes: u64,
    /// Smallest data op.
    pub op_min: Option<u64>,
    /// Largest data op.
    pub op_max: Option<u64>,
    /// Data entries for an op seen before (a rewrite after a view change;
    /// the greater epoch wins).
    pub duplicate_ops: u64,
    /// Ops that no entry holds between two ops present above the watermark
    /// (at most [`MISSING_RANGES_MAX`] ranges, inclusive). Replay cannot
    /// pass them.
    pub missing_ops: Vec<(u64, u64)>,
    /// How many ops `missing_ops` covers in total (all ranges counted).
    pub missing_op_count: u64,
    /// Ops above the watermark and below the first op present above it
    /// that no entry holds (inclusive). An intact journal has none:
    /// segments are retired only once the watermark covers their ops, and
    /// the superblock and later segments' headers keep that watermark. So
    /// this is damage, unless the tail is torn (a cut may take a watermark
    /// record along; then replay needs a snapshot at or above the range's
    /// end).
    pub leading_gap: Option<(u64, u64)>,
    /// How the log ends.
    pub tail: Tail,
    /// What reopening would do.
    pub verdict: Verdict,
    /// The error reopening would return (with the default recovery): the
    /// plan's refusal, or the first damaged segment's. `Some` exactly when
    /// the verdict is [`Verdict::Refuses`].
    pub refusal: Option<Refusal>,
    /// All damage found, the refusal's first, then in scan order.
    pub damage: Vec<Damage>,
    /// The part of [`JournalReport::damage`] a reopen does not read, so
    /// does not refuse: payloads and headers inside writes that a later
    /// write vouches for (a reopen reads each write's first header and
    /// index, see [`SegmentScanner::indexed`]). Reading an entry there
    /// returns `Error::Corruption` naming the file and offset; a journal
    /// with such damage is not intact.
    pub damage_found_on_read: Vec<Damage>,
    /// Files a crash explains, which a reopen removes.
    pub leftovers: Vec<Leftover>,
    /// Files that are not the journal's: reported, never opened.
    pub stray: Vec<PathBuf>,
    /// The durability record ([`crate::durability::record`]): `None` if
    /// there is none, else what it holds or why an open would not take it
    /// (never damage: such an open probes again).
    pub durability_record: Option<Result<DurabilityRecord, String>>,
    /// Files that verify but were written by another format version (a
    /// refusal that is not damage: a build that reads them opens them).
    pub unsupported: Vec<PathBuf>,
    /// True if the verifier's plan accepted the directory; false if it
    /// refused and the segments were scanned best-effort (module docs).
    pub planned: bool,
    /// Entries that failed verification once but verified when read again.
    pub transient_read_faults: u64,
    /// Bytes of segment files (what a progress bar counts to).
    pub file_bytes: u64,
    /// False if the observer stopped the scan early (then the verdict only
    /// covers what was scanned).
    pub complete: bool,
}

impl JournalReport {
    fn new(dir: &Path, file_bytes: u64) -> JournalReport {
        JournalReport {
            dir: dir.to_path_buf(),
            superblock: None,
            segments: Vec::new(),
            watermark: 0,
            epoch_max: 0,
            data_entries: 0,
            data_bytes: 0,
            op_min: None,
            op_max: None,
            duplicate_ops: 0,
            missing_ops: Vec::new(),
            missing_op_count: 0,
            leading_gap: None,
            tail: Tail::Empty,
            verdict: Verdict::Opens,
            refusal: None,
            damage: Vec::new(),
            damage_found_on_read: Vec::new(),
            leftovers: Vec::new(),
            stray: Vec::new(),
            durability_record: None,
            unsupported: Vec::new(),
            planned: false,
            transient_read_faults: 0,
            file_bytes,
            complete: true,
        }
    }

    /// True when a reopen does not refuse and no op is missing above the
    /// watermark (a torn tail is not damage: a reopen cuts and reports it;
    /// see [`JournalReport::leading_gap`] for what it may take along).
    pub fn is_intact(&self) -> bool {
        self.verdict != Verdict::Refuses
            && self.damage_found_on_read.is_empty()
            && self.missing_op_count == 0
            && (self.leading_gap.is_none() || matches!(self.tail, Tail::Torn { .. }))
    }

    /// Whether opening the journal with `recovery` fails.
    pub fn reopen_refuses(&self, recovery: Recovery) -> bool {
        match self.verdict {
            Verdict::Opens => false,
            Verdict::Cuts => recovery == Recovery::Strict,
            Verdict::Refuses => true,
        }
    }

    /// What a reopen would do, in one line.
    pub fn describe_verdict(&self) -> String {
        match (&self.verdict, &self.refusal) {
            (Verdict::Refuses, Some(refusal)) => format!("refuses: {refusal}"),
            (Verdict::Cuts, _) => format!(
                "opens after cutting the tail (Recovery::Strict refuses): {}",
                self.tail.describe()
            ),
            _ => {
                let mut verdict = if self.leftovers.is_empty() {
                    "opens".to_string()
                } else {
                    format!(
                        "opens, after removing {} file(s) a crash left behind",
                        self.leftovers.len()
                    )
                };
                if let Some(first) = self.damage_found_on_read.first() {
                    verdict += &format!(
                        "; reading the entries at {} damaged place(s) fails (first: {first})",
                        self.damage_found_on_read.len()
                    );
                }
                verdict
            }
        }
    }

    /// The report of segment `generation`, if its file exists.
    pub fn segment(&self, generation: u64) -> Option<&SegmentReport> {
        self.segments.iter().find(|s| s.generation == generation)
    }
}

/// One verified entry, as handed to [`ScanObserver::entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryInfo {
    /// Generation of its segment.
    pub generation: u64,
    /// Byte offset of its header in the segment.
    pub offset: u64,
    /// Op number (for a watermark record: the watermark).
    pub op: u64,
    /// Epoch.
    pub epoch: u64,
    /// What it is.
    pub kind: EntryKind,
    /// Payload length.
    pub payload_len: u32,
    /// CRC-32 of the payload, as recorded (and verified, for data).
    pub payload_checksum: u32,
    /// First entry of its group-commit write.
    pub first_in_write: bool,
}

impl EntryInfo {
    fn from_header(header: &EntryHeader, kind: EntryKind) -> EntryInfo {
        EntryInfo {
            generation: header.generation.get(),
            offset: u64::from(header.offset.get()),
            op: header.op.get(),
            epoch: header.epoch.get(),
            kind,
            payload_len: header.payload_len.get(),
            payload_checksum: header.payload_checksum.get(),
            first_in_write: header.flags & FLAG_FIRST_IN_WRITE != 0,
        }
    }
}

/// Sees the scan as it goes. Every method has a default that does nothing.
pub trait ScanObserver {
    /// Called once before the scan with the bytes of all segment files.
    fn begin(&mut self, _file_bytes: u64) {}
    /// Called now and then with the bytes scanned so far (of the total given
    /// to `begin`).
    fn progress(&mut self, _bytes_done: u64) {}
    /// Called for every entry that verifies, in log order; `payload` is the
    /// data entry's payload (empty for the other kinds). `Break` stops the
    /// scan; the report then has `complete == false`.
    fn entry(&mut self, _entry: &EntryInfo, _payload: &[u8]) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

impl ScanObserver for () {}

/// The names in the journal directory `dir`, after checking it is one.
pub fn list_dir(dir: &Path) -> Result<Vec<OsString>, InspectError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(InspectError::NotADirectory {
                path: dir.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(InspectError::NotFound {
                path: dir.to_path_buf(),
            })
        }
        Err(e) => return Err(io_error("stat", dir, None)(e)),
    }
    let mut names = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io_error("list directory", dir, None))? {
        let item = item.map_err(io_error("list directory", dir, None))?;
        names.push(item.file_name());
    }
    Ok(names)
}

/// The segment files in `dir` as `(generation, path, file length)`, oldest
/// first.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf, u64)>, InspectError> {
    let names = verify::classify_names(&list_dir(dir)?);
    let mut found = Vec::with_capacity(names.generations.len());
    for generation in names.generations {
        let path = dir.join(segment_file_name(generation));
        let len = std::fs::metadata(&path)
            .map_err(io_error("stat", &path, None))?
            .len();
        found.push((generation, path, len));
    }
    Ok(found)
}

/// Opens `path` for reading without blocking on a FIFO (or another special
/// file) planted at a journal or snapshot file's name, and refuses anything
/// but a regular file (`InvalidData`, "not a regular file"): the read-only
/// tools must answer, never hang.
pub fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Reads the superblock file of `dir` as recovery does: `None` if there is
/// none, else up to [`SUPERBLOCK_FILE_BYTES`] of it.
pub fn read_superblock(dir: &Path) -> Result<Option<Vec<u8>>, InspectError> {
    let path = dir.join(SUPERBLOCK_FILE_NAME);
    let file = match open_regular(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("open", &path, None)(e)),
    };
    // As the open reads it (`superblock::settle_reads`), so the two agree
    // under transient read faults.
    let read = || {
        let mut bytes = vec![0; SUPERBLOCK_FILE_BYTES as usize];
        let got = read_fully(&file, &mut bytes, 0);
        std::future::ready(got.map(|got| {
            bytes.truncate(got);
            bytes
        }))
    };
    let settled =
        futures_lite::future::block_on(superblock::settle_reads(SuperblockKind::Journal, read));
    let (bytes, _) = settled.map_err(io_error("read", &path, Some(0)))?;
    Ok(Some(bytes))
}

/// The owner the superblock of the journal in `dir` records: `None` if
/// there is no superblock, no copy verifies or it records none (a
/// caller's choice made on it must also hold for such a journal).
pub fn recorded_owner(dir: &Path) -> Result<Option<JournalOwner>, InspectError> {
    Ok(read_superblock(dir)?
        .and_then(|bytes| decode_superblock(&bytes))
        .and_then(|(sb, _, _)| sb.owner))
}

/// The durability record in `dir`, or why an open would not take it.
fn read_durability_record(dir: &Path) -> Result<DurabilityRecord, String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(DURABILITY_RECORD_FILE_NAME);
    // As the open reads it: never through a symlink, never blocking on a
    // FIFO, a regular file only.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| format!("cannot open: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    let len = meta.len();
    if len != DURABILITY_RECORD_BYTES as u64 {
        return Err(RecordFault::Length(len).to_string());
    }
    let mut bytes = vec![0; DURABILITY_RECORD_BYTES];
    let got = read_fully(&file, &mut bytes, 0).map_err(|e| format!("cannot read: {e}"))?;
    bytes.truncate(got);
    DurabilityRecord::decode(&bytes).map_err(|fault| fault.to_string())
}

/// Where the last group-commit write of the journal in `dir` starts: its
/// segment file and the offset of its first entry (`None`: no write
/// verifies). What a test damages to make recovery cut the tail, which is
/// that write when nothing after it vouches for it.
pub fn last_write(dir: &Path) -> Result<Option<(PathBuf, u64)>, InspectError> {
    struct LastWrite(Option<(u64, u64)>);
    impl ScanObserver for LastWrite {
        fn entry(&mut self, entry: &EntryInfo, _payload: &[u8]) -> ControlFlow<()> {
            if entry.first_in_write {
                self.0 = Some((entry.generation, entry.offset));
            }
            ControlFlow::Continue(())
        }
    }
    let mut last = LastWrite(None);
    scan_journal(dir, &mut last)?;
    Ok(last
        .0
        .map(|(generation, offset)| (dir.join(segment_file_name(generation)), offset)))
}

/// Scans the journal in `dir`: reads and verifies every entry, strictly
/// read-only. See the module docs. Like an open without an owner, it
/// accepts a journal of any owner; [`scan_journal_as`] checks it.
pub fn scan_journal(
    dir: &Path,
    observer: &mut dyn ScanObserver,
) -> Result<JournalReport, InspectError> {
    scan_journal_as(dir, None, observer)
}

/// [`scan_journal`] for a journal expected to belong to `owner`, as an open
/// with that owner (`JournalBuilder::owner`) expects: a journal that holds
/// data and records another owner is refused
/// ([`Refusal::WrongOwner`]).
pub fn scan_journal_as(
    dir: &Path,
    owner: Option<JournalOwner>,
    observer: &mut dyn ScanObserver,
) -> Result<JournalReport, InspectError> {
    let names = verify::classify_names(&list_dir(dir)?);
    let superblock_bytes = if names.superblock {
        read_superblock(dir)?
    } else {
        None
    };
    scan_view(dir, &names, superblock_bytes.as_deref(), owner, observer)
}

/// [`scan_journal`] over a given view of `dir`: the names in it and the
/// superblock's bytes (the segment files are read from `dir`). Salvage
/// checks the journal it is about to leave behind with it before it
/// changes anything.
pub(crate) fn scan_view(
    dir: &Path,
    names: &Names,
    superblock_bytes: Option<&[u8]>,
    owner: Option<JournalOwner>,
    observer: &mut dyn ScanObserver,
) -> Result<JournalReport, InspectError> {
    // What the plan needs of every segment.
    let mut files: BTreeMap<u64, (File, u64)> = BTreeMap::new();
    let mut facts = Vec::with_capacity(names.generations.len());
    for &generation in &names.generations {
        let path = dir.join(segment_file_name(generation));
        let file = open_regular(&path).map_err(io_error("open", &path, None))?;
        let len = file
            .metadata()
            .map_err(io_error("stat", &path, None))?
            .len();
        facts.push(read_facts(&file, &path, generation, len)?);
        files.insert(generation, (file, len));
    }
    let file_bytes = files.values().map(|(_, len)| *len).sum();
    observer.begin(file_bytes);
    let mut report = JournalReport::new(dir, file_bytes);
    if names.durability_record {
        report.durability_record = Some(read_durability_record(dir));
    }
    let sb_path = dir.join(SUPERBLOCK_FILE_NAME);

    let log = match verify::plan(dir, names, superblock_bytes, &facts, owner) {
        Ok(plan) => {
            report.planned = true;
            report.superblock = plan
                .superblock
                .as_ref()
                .map(|found| SuperblockReport::from_found(sb_path, found));
            report.leftovers = plan.leftovers;
            report.stray = plan.stray;
            plan.segments
        }
        Err(refusal) => {
            report.damage.push(refusal_damage(&refusal));
            if let Refusal::UnsupportedVersion { path, .. } = &refusal {
                report.unsupported.push(path.clone());
            }
            report.refusal = Some(refusal);
            let decoded = superblock_bytes.and_then(decode_superblock);
            report.superblock = decoded.as_ref().map(|(sb, sequence, faults)| {
                SuperblockReport::new(sb_path, sb, *sequence, faults.clone())
            });
            let fallback = best_effort_plan(dir, names, decoded.as_ref().map(|d| &d.0), &facts);
            for damage in fallback.damage {
                add_damage(&mut report.damage, damage);
            }
            for path in fallback.unsupported {
                if !report.unsupported.contains(&path) {
                    report.unsupported.push(path);
                }
            }
            report.leftovers = fallback.leftovers;
            report.stray = fallback.stray;
            fallback.segments
        }
    };

    for f in &facts {
        let path = dir.join(segment_file_name(f.generation));
        let mut segment = SegmentReport::new(path, f.generation, f.len);
        if let SegmentHeaderStatus::Valid(header) =
            check_segment_header(&f.header_block, f.generation)
        {
            segment.header = Some(SegmentHeaderFields::from(&header));
        }
        if let Some(leftover) = report.leftovers.iter().find(|l| l.path == segment.path) {
            segment.end = SegmentEnd::Leftover {
                reason: leftover.reason,
            };
        }
        report.segments.push(segment);
    }

    // Scan the log.
    let mut ops = OpSet::default();
    let mut stopped = false;
    let mut first_damaged: Option<Damage> = None;
    for planned in &log {
        let done_before: u64 = files
            .range(..planned.generation)
            .map(|(_, (_, len))| *len)
            .sum();
        observer.progress(done_before);
        let (file, _) = files
            .get(&planned.generation)
            .expect("a plan only names segments that were listed");
        let segment = report
            .segments
            .iter_mut()
            .find(|s| s.generation == planned.generation)
            .expect("every listed segment has a report");
        segment.in_log = true;
        segment.sealed_end = planned.sealed_end;
        segment.watermark = planned.header.watermark.get();
        if stopped {
            continue;
        }
        let mut scan = Scan {
            file,
            segment,
            ops: &mut ops,
            observer,
            done_before,
            transient_read_faults: 0,
        };
        let outcome = scan.run(planned)?;
        report.transient_read_faults += scan.transient_read_faults;
        match outcome {
            None => stopped = true,
            Some(SegmentOutcome::Damaged { offset, reason }) => {
                let damage = Damage {
                    path: planned.path.clone(),
                    offset,
                    reason,
                };
                // Does a reopen, which reads less, see it? Where the full
                // scan finds nothing wrong the two scans agree by
                // construction (the reopen's falls back to the full rules
                // at the first write nothing vouches for).
                let mut later_damage = Vec::new();
                let (reopen, past_damage) = reopen_scan(file, planned, segment.file_bytes, offset)
                    .map_err(io_error("read", &planned.path, None))?;
                match reopen {
                    SegmentOutcome::Damaged { .. } => {
                        first_damaged.get_or_insert_with(|| damage.clone());
                    }
                    other => {
                        report.damage_found_on_read.push(damage.clone());
                        segment.reopen_end = Some(segment_end(&other));
                        // The entries from the damaged one on are in the
                        // log a reopen sees (their writes' indexes list
                        // them; a read verifies each): counted, so that
                        // the ops after one damaged payload are not called
                        // missing. The index and padding entries of the
                        // vouched writes past the damage are not counted
                        // (the walk by index hands out only what an index
                        // lists); those of a tail scanned in full are.
                        for header in &past_damage {
                            if let Some(kind) = header.entry_kind() {
                                record(segment, &mut ops, &EntryInfo::from_header(header, kind));
                            }
                        }
                        // Every byte is still read: each later entry's
                        // header and payload, as a read of it would check
                        // them.
                        let later = past_damage
                            .iter()
                            .filter(|h| u64::from(h.offset.get()) > offset);
                        later_damage = check_entries(file, planned, segment.file_bytes, later)
                            .map_err(io_error("read", &planned.path, None))?;
                        report
                            .damage_found_on_read
                            .extend(later_damage.iter().cloned());
                    }
                }
                add_damage(&mut report.damage, damage);
                for found in later_damage {
                    add_damage(&mut report.damage, found);
                }
            }
            Some(_) => {}
        }
    }
    observer.progress(file_bytes);

    report.complete = !stopped;
    for segment in report.segments.iter().filter(|s| s.in_log) {
        report.watermark = report.watermark.max(segment.watermark);
        report.data_entries += segment.data_entries;
        report.data_bytes += segment.data_bytes;
        report.epoch_max = report.epoch_max.max(segment.epoch_max.unwrap_or(0));
        report.op_min = min_some(report.op_min, segment.op_min);
        report.op_max = report.op_max.max(segment.op_max);
    }
    if let Some(sb) = &report.superblock {
        report.watermark = report.watermark.max(sb.watermark);
    }
    report.duplicate_ops = ops.duplicates;
    if report.complete {
        let gaps = ops.missing_above(report.watermark, MISSING_RANGES_MAX);
        report.leading_gap = gaps.leading;
        report.missing_ops = gaps.interior;
        report.missing_op_count = gaps.interior_count;
    }
    let last = log
        .last()
        .and_then(|planned| report.segment(planned.generation));
    report.tail = match last {
        None if report.planned => Tail::Empty,
        None => Tail::Unknown,
        Some(segment) => match segment.reopen_end.as_ref().unwrap_or(&segment.end) {
            SegmentEnd::Clean { offset } | SegmentEnd::Sealed { offset } => Tail::Clean {
                path: segment.path.clone(),
                offset: *offset,
            },
            SegmentEnd::Torn {
                offset,
                reason,
                ops,
                entries,
            } => Tail::Torn {
                path: segment.path.clone(),
                offset: *offset,
                reason: reason.clone(),
                ops: *ops,
                entries: *entries,
            },
            _ => Tail::Unknown,
        },
    };
    // The verdict: recovery's first error, else its cut.
    if report.refusal.is_none() {
        report.refusal = first_damaged.map(Refusal::Damage);
    }
    // What recovery refuses once every segment is read: an op or a
    // watermark no op number can follow.
    if report.refusal.is_none()
        && report.complete
        && report.op_max.unwrap_or(0).max(report.watermark) == u64::MAX
    {
        report.refusal = Some(Refusal::Damage(Damage {
            path: dir.to_path_buf(),
            offset: 0,
            reason: verify::NO_OP_CAN_FOLLOW.to_owned(),
        }));
    }
    if report.refusal.is_none()
        && report.complete
        && report
            .segments
            .iter()
            .rev()
            .find_map(|segment| segment.last_hard_state.as_ref())
            .is_some_and(|(sequence, _)| *sequence == u64::MAX)
    {
        report.refusal = Some(Refusal::Damage(Damage {
            path: dir.to_path_buf(),
            offset: 0,
            reason: verify::NO_SEQUENCE_CAN_FOLLOW.to_owned(),
        }));
    }
    report.verdict = if report.refusal.is_some() {
        Verdict::Refuses
    } else if matches!(report.tail, Tail::Torn { .. }) {
        Verdict::Cuts
    } else {
        Verdict::Opens
    };
    Ok(report)
}

/// A segment of the best-effort log if it passes the plan's own checks;
/// otherwise the damage (an unsupported version is also noted).
fn log_segment(
    generation: u64,
    path: PathBuf,
    facts: &SegmentFacts,
    journal_id: [u8; 16],
    unsupported: &mut Vec<PathBuf>,
) -> Result<PlannedSegment, Damage> {
    match verify::check_log_segment(&path, facts, journal_id) {
        Ok(header) => Ok(PlannedSegment {
            generation,
            path,
            header,
            sealed_end: None,
        }),
        Err(refusal) => {
            if let Refusal::UnsupportedVersion { path, .. } = &refusal {
                unsupported.push(path.clone());
            }
            Err(refusal_damage(&refusal))
        }
    }
}

/// A refusal as a [`Damage`] entry (an unsupported version and another
/// owner included).
fn refusal_damage(refusal: &Refusal) -> Damage {
    match refusal {
        Refusal::Damage(damage) => damage.clone(),
        Refusal::WrongOwner {
            path,
            recorded,
            expected,
        } => Damage {
            path: path.clone(),
            offset: 0,
            reason: format!("the journal belongs to {recorded}, not to {expected}"),
        },
        Refusal::UnsupportedVersion {
            path,
            found,
            supported,
        } => Damage {
            path: path.clone(),
            offset: 0,
            reason: format!("format version {found}, this build reads version {supported}"),
        },
    }
}

/// Adds `damage` unless the same place is named already.
fn add_damage(list: &mut Vec<Damage>, damage: Damage) {
    if !list
        .iter()
        .any(|d| d.path == damage.path && d.offset == damage.offset)
    {
        list.push(damage);
    }
}

/// The superblock's contents if a copy verifies and its body decodes:
/// (superblock, sequence, copies that did not verify).
fn decode_superblock(bytes: &[u8]) -> Option<(JournalSuperblock, u64, Vec<CopyFault>)> {
    let chosen = superblock::decode(bytes, SuperblockKind::Journal).ok()?;
    let sb = JournalSuperblock::decode(&chosen.body).ok()?;
    Some((sb, chosen.sequence, chosen.stale_or_damaged))
}

/// What [`best_effort_plan`] makes of a directory the plan refused.
#[derive(Debug, Default)]
struct BestEffort {
    segments: Vec<PlannedSegment>,
    leftovers: Vec<Leftover>,
    stray: Vec<PathBuf>,
    damage: Vec<Damage>,
    unsupported: Vec<PathBuf>,
}

/// Where the log starts when no superblock copy says: at the oldest
/// segment file up to `top` that holds a header or data. A retired segment
/// kept for recycling has its front zeroed before it is kept
/// (`segment::zero_for_recycling`): it holds neither, and is not where the
/// log begins, whether or not a gap lies between it and the log (a
/// checkpoint that retires more segments than are kept removes the rest).
/// A file of the log whose first 8 KiB the disk zeroed reads the same way:
/// salvage then moves it aside as a leftover, into its quarantine folder.
fn log_start_without_superblock(generations: &[u64], top: u64, facts: &[SegmentFacts]) -> u64 {
    let holds_nothing = |generation: u64| {
        facts.iter().any(|f| {
            f.generation == generation
                && check_segment_header(&f.header_block, generation)
                    == SegmentHeaderStatus::Unverified
                && !f.holds_data()
        })
    };
    generations
        .iter()
        .copied()
        .take_while(|g| *g <= top)
        .find(|g| !holds_nothing(*g))
        .unwrap_or(top)
}

/// After [`verify::plan`] refused: the log as far as it can be made out,
/// with the same rules where they still apply (see the module docs). Only
/// for reporting and salvage; the verdict is the plan's.
fn best_effort_plan(
    dir: &Path,
    names: &Names,
    sb: Option<&JournalSuperblock>,
    facts: &[SegmentFacts],
) -> BestEffort {
    let mut out = BestEffort {
        stray: names.stray.iter().map(|n| dir.join(n)).collect(),
        ..BestEffort::default()
    };
    let mut damage = |path: PathBuf, offset: u64, reason: String| {
        add_damage(
            &mut out.damage,
            Damage {
                path,
                offset,
                reason,
            },
        )
    };
    out.leftovers = verify::crash_leftovers(dir, names);
    let facts_of = |generation: u64| facts.iter().find(|f| f.generation == generation);
    // Without a readable superblock, the journal is the one most segment
    // headers name (a foreign segment dropped in is the odd one out).
    let journal_id = sb
        .map(|sb| sb.journal_id)
        .or_else(|| majority_journal_id(facts))
        .unwrap_or_default();
    let generations = &names.generations;
    let (first, last) = match sb {
        Some(sb) => (sb.first_generation, sb.last_generation),
        None => {
            let (Some(&lo), Some(&hi)) = (generations.first(), generations.last()) else {
                return out;
            };
            // The newest file without a header or data is a spare, as
            // `last + 1` is with a superblock.
            let spare = facts_of(hi).is_some_and(|f| {
                check_segment_header(&f.header_block, hi) == SegmentHeaderStatus::Unverified
                    && !f.holds_data()
            });
            let top = if spare { hi - 1 } else { hi };
            if top < lo {
                (0, top)
            } else {
                (log_start_without_superblock(generations, top, facts), top)
            }
        }
    };
    let recorded = || {
        if first == 0 {
            "no segments".to_string()
        } else {
            format!("generations {first}..={last}")
        }
    };
    let sb_path = dir.join(SUPERBLOCK_FILE_NAME);
    let mut log = Vec::new();
    let mut unsupported = Vec::new();
    let mut expected = first;
    for &generation in generations {
        let path = dir.join(segment_file_name(generation));
        if first != 0 && generation < first {
            out.leftovers.push(Leftover {
                path,
                reason:
                    "a retired segment (kept for recycling, or its removal interrupted by a crash)",
            });
            continue;
        }
        if first == 0 || generation > last {
            continue;
        }
        if generation > expected {
            let missing = if generation - expected == 1 {
                format!("segment file is missing; the log holds {}", recorded())
            } else {
                format!(
                    "segment files of generations {expected}..={} are missing; the log holds {}",
                    generation - 1,
                    recorded()
                )
            };
            damage(dir.join(segment_file_name(expected)), 0, missing);
        }
        expected = generation + 1;
        let Some(f) = facts_of(generation) else {
            continue;
        };
        match log_segment(generation, path, f, journal_id, &mut unsupported) {
            Ok(planned) => log.push(planned),
            Err(d) => damage(d.path, d.offset, d.reason),
        }
    }
    if first != 0 && expected <= last {
        damage(
            dir.join(segment_file_name(expected)),
            0,
            format!(
                "segment files from generation {expected} on are missing; the log holds {}",
                recorded()
            ),
        );
    }
    // The generation after the last: as the plan decides it.
    let next = last + 1;
    if let Some(f) = facts_of(next) {
        let path = dir.join(segment_file_name(next));
        match check_segment_header(&f.header_block, next) {
            SegmentHeaderStatus::Valid(_) if !f.holds_data() => {
                match log_segment(next, path, f, journal_id, &mut unsupported) {
                    Ok(planned) => log.push(planned),
                    Err(d) => damage(d.path, d.offset, d.reason),
                }
            }
            SegmentHeaderStatus::Unverified if !f.holds_data() => out.leftovers.push(Leftover {
                path,
                reason: "a segment whose creation did not complete (no header, no data)",
            }),
            _ => damage(
                path,
                0,
                format!(
                    "segment {next} holds data but the superblock does not record it (it records {})",
                    recorded()
                ),
            ),
        }
    }
    for &generation in generations.iter().filter(|g| **g > next) {
        damage(
            dir.join(segment_file_name(generation)),
            0,
            format!(
                "segment {generation} is not recorded in the superblock (it records {})",
                recorded()
            ),
        );
    }
    // Where each segment ends: the superblock's record, else its
    // successor's `prev_end` if the two link up.
    for i in 0..log.len() {
        let generation = log[i].generation;
        let recorded_end = sb.and_then(|sb| sb.end_of(generation));
        let mut successor_end = None;
        if let Some(next) = log.get(i + 1).filter(|n| n.generation == generation + 1) {
            if next.header.prev_generation.get() != generation {
                damage(
                    next.path.clone(),
                    0,
                    format!(
                        "segment header names previous generation {}, expected {generation}",
                        next.header.prev_generation.get()
                    ),
                );
            } else {
                successor_end = Some(next.header.prev_end.get());
            }
            if let (Some(r), Some(p)) = (recorded_end, successor_end) {
                if r != p {
                    damage(
                        sb_path.clone(),
                        0,
                        format!(
                            "the superblock records the end of {} at {r}, the next segment's \
                             header at {p}",
                            segment_file_name(generation)
                        ),
                    );
                }
            }
        }
        log[i].sealed_end = recorded_end.or(successor_end);
    }
    out.segments = log;
    out.unsupported = unsupported;
    out
}

/// The journal id most verifying segment headers carry (ties: the newest
/// segment's).
fn majority_journal_id(facts: &[SegmentFacts]) -> Option<[u8; 16]> {
    let mut counts: HashMap<[u8; 16], (usize, u64)> = HashMap::new();
    for f in facts {
        if let SegmentHeaderStatus::Valid(header) =
            check_segment_header(&f.header_block, f.generation)
        {
            let entry = counts.entry(header.journal_id).or_insert((0, 0));
            entry.0 += 1;
            entry.1 = entry.1.max(f.generation);
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, count_newest)| *count_newest)
        .map(|(id, _)| id)
}

/// Reads what [`verify::plan`] needs of a segment, as recovery does: its
/// header block (a second time if it does not verify, so a transient read
/// error does not count) and the first entry's bytes (again while reads of
/// them disagree, when they hold neither zeros nor a header that verifies).
fn read_facts(
    file: &File,
    path: &Path,
    generation: u64,
    len: u64,
) -> Result<SegmentFacts, InspectError> {
    let read = |pos: u64, want: u64| -> Result<Vec<u8>, InspectError> {
        let want = want.min(len.saturating_sub(pos)) as usize;
        let mut bytes = vec![0; want];
        let got = read_fully(file, &mut bytes, pos).map_err(io_error("read", path, Some(pos)))?;
        bytes.truncate(got);
        Ok(bytes)
    };
    let mut header_block = read(0, BLOCK_BYTES)?;
    if !matches!(
        check_segment_header(&header_block, generation),
        SegmentHeaderStatus::Valid(_)
    ) {
        header_block = read(0, BLOCK_BYTES)?;
    }
    let mut facts = SegmentFacts {
        generation,
        len,
        header_block,
        first_entry: read(SEGMENT_DATA_OFFSET, ENTRY_HEADER_BYTES as u64)?,
    };
    // As recovery does (see `SegmentFacts::first_entry_needs_reread`).
    for _ in 1..verify::FIRST_ENTRY_READS_MAX {
        if !facts.first_entry_needs_reread() {
            break;
        }
        let again = read(SEGMENT_DATA_OFFSET, ENTRY_HEADER_BYTES as u64)?;
        if again == facts.first_entry {
            break;
        }
        facts.first_entry = again;
    }
    Ok(facts)
}

fn min_some(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
pub(crate) fn read_fully(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The data ops seen, as disjoint inclusive ranges keyed by start.
#[derive(Debug, Default, Clone)]
pub(crate) struct OpSet {
    ranges: BTreeMap<u64, u64>,
    duplicates: u64,
}

impl OpSet {
    pub(crate) fn insert(&mut self, op: u64) {
        // The range starting at or before `op`.
        if let Some((&start, &end)) = self.ranges.range(..=op).next_back() {
            if op <= end {
                self.duplicates += 1;
                return;
            }
            if op == end + 1 {
                let mut new_end = op;
                if let Some(next_end) = op.checked_add(1).and_then(|n| self.ranges.remove(&n)) {
                    new_end = next_end;
                }
                self.ranges.insert(start, new_end);
                return;
            }
        }
        let mut new_end = op;
        if let Some(next_end) = op.checked_add(1).and_then(|n| self.ranges.remove(&n)) {
            new_end = next_end;
        }
        self.ranges.insert(op, new_end);
    }

    /// Forgets every op above `op` (a truncation record).
    pub(crate) fn truncate_above(&mut self, op: u64) {
        let above = op.saturating_add(1);
        self.ranges.split_off(&above);
        if let Some((_, end)) = self.ranges.range_mut(..above).next_back() {
            *end = (*end).min(op);
        }
    }

    /// The ranges, ascending.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(a, b)| (*a, *b))
    }

    /// How many distinct ops.
    pub(crate) fn count(&self) -> u64 {
        self.ranges.iter().map(|(a, b)| b - a + 1).sum()
    }

    /// The gaps in `(watermark, max op]`: the one before the first op
    /// present above the watermark, and up to `limit` after it.
    fn missing_above(&self, watermark: u64, limit: usize) -> Gaps {
        let mut gaps = Gaps::default();
        let mut next = watermark.saturating_add(1);
        let mut seen_above = false;
        for (&start, &end) in &self.ranges {
            if end < next {
                continue;
            }
            if start > next {
                if !seen_above {
                    gaps.leading = Some((next, start - 1));
                } else {
                    gaps.interior_count += start - next;
                    if gaps.interior.len() < limit {
                        gaps.interior.push((next, start - 1));
                    }
                }
            }
            seen_above = true;
            next = end.saturating_add(1);
        }
        gaps
    }
}

/// See [`OpSet::missing_above`].
#[derive(Debug, Default, PartialEq, Eq)]
struct Gaps {
    leading: Option<(u64, u64)>,
    interior: Vec<(u64, u64)>,
    interior_count: u64,
}

/// A window over a file: the bytes of `[start, start + bytes.len())`.
pub(crate) struct Window<'f> {
    file: &'f File,
    file_len: u64,
    start: u64,
    bytes: Vec<u8>,
}

impl<'f> Window<'f> {
    pub(crate) fn new(file: &'f File, file_len: u64) -> Window<'f> {
        Window {
            file,
            file_len,
            start: 0,
            bytes: Vec::new(),
        }
    }

    /// Forgets what was read, so the next `get` reads the file again.
    pub(crate) fn invalidate(&mut self) {
        self.bytes.clear();
    }

    /// Bytes `[pos, pos + len)`, or fewer at the end of the file.
    pub(crate) fn get(&mut self, pos: u64, len: u64) -> io::Result<&[u8]> {
        if pos >= self.file_len {
            return Ok(&[]);
        }
        let end = pos.saturating_add(len).min(self.file_len);
        let window_end = self.start + self.bytes.len() as u64;
        if pos < self.start || end > window_end {
            let read_start = align_down(pos, BLOCK_BYTES);
            let read_end = end.max(read_start + INSPECT_READ_BYTES).min(self.file_len);
            self.bytes.resize((read_end - read_start) as usize, 0);
            let got = read_fully(self.file, &mut self.bytes, read_start)?;
            self.bytes.truncate(got);
            self.start = read_start;
        }
        let to = ((end - self.start) as usize).min(self.bytes.len());
        let from = ((pos - self.start) as usize).min(to);
        Ok(&self.bytes[from..to])
    }
}

fn segment_end(outcome: &SegmentOutcome) -> SegmentEnd {
    match outcome {
        SegmentOutcome::Sealed { end } => SegmentEnd::Sealed { offset: *end },
        SegmentOutcome::Clean { end } => SegmentEnd::Clean { offset: *end },
        SegmentOutcome::Cut(cut) => SegmentEnd::Torn {
            offset: cut.offset,
            reason: cut.reason.clone(),
            ops: cut.ops,
            entries: cut.entries,
        },
        SegmentOutcome::Damaged { offset, .. } => SegmentEnd::Damaged { offset: *offset },
    }
}

/// How a reopen's scan of `planned` ends: the walk from index to index
/// that recovery makes ([`SegmentScanner::indexed`]).
fn reopen_scan(
    file: &File,
    planned: &PlannedSegment,
    file_len: u64,
    from: u64,
) -> io::Result<(SegmentOutcome, Vec<EntryHeader>)> {
    let mut window = Window::new(file, file_len);
    let mut scanner = SegmentScanner::indexed(&planned.header, planned.sealed_end);
    let mut from_on = Vec::new();
    let mut step = scanner.step(None);
    loop {
        step = match step {
            Step::Read {
                pos, len, again, ..
            } => {
                if again {
                    window.invalidate();
                }
                scanner.step(Some(window.get(pos, len)?))
            }
            Step::Entry(header) => {
                if u64::from(header.offset.get()) >= from {
                    from_on.push(header);
                }
                scanner.step(None)
            }
            Step::Done(outcome) => return Ok((outcome, from_on)),
        };
    }
}

/// Checks the entries a write's index lists (`listed`) against the bytes
/// at their places, as reading each would: the header verifies and says
/// what the index says, the payload matches its checksum. One damage per
/// entry that does not.
fn check_entries<'h>(
    file: &File,
    planned: &PlannedSegment,
    file_len: u64,
    listed: impl Iterator<Item = &'h EntryHeader>,
) -> io::Result<Vec<Damage>> {
    let mut window = Window::new(file, file_len);
    let mut found = Vec::new();
    for listed in listed {
        let offset = u64::from(listed.offset.get());
        let header = crate::format::check_entry_header(
            window.get(offset, ENTRY_HEADER_BYTES as u64)?,
            &planned.header.journal_id,
            planned.header.generation.get(),
            offset,
            planned.header.segment_bytes.get(),
            crate::config::ENTRY_BYTES_MAX_LIMIT,
        );
        let reason = match header {
            Err(fault) => Some(fault.describe().to_string()),
            Ok(h)
                if (h.op, h.epoch, h.payload_len, h.payload_checksum, h.kind)
                    != (
                        listed.op,
                        listed.epoch,
                        listed.payload_len,
                        listed.payload_checksum,
                        listed.kind,
                    ) =>
            {
                Some("entry header does not say what its write's index says".to_string())
            }
            Ok(h) if h.entry_kind().is_some_and(EntryKind::carries_payload) => {
                let len = u64::from(h.payload_len.get());
                let payload = window.get(offset + ENTRY_HEADER_BYTES as u64, len)?;
                (crc32fast::hash(payload) != h.payload_checksum.get())
                    .then(|| "payload checksum mismatch".to_string())
            }
            Ok(_) => None,
        };
        if let Some(reason) = reason {
            found.push(Damage {
                path: planned.path.clone(),
                offset,
                reason,
            });
        }
    }
    Ok(found)
}

/// The scan of one planned segment: the driver of a [`SegmentScanner`].
struct Scan<'a> {
    file: &'a File,
    segment: &'a mut SegmentReport,
    ops: &'a mut OpSet,
    observer: &'a mut dyn ScanObserver,
    done_before: u64,
    transient_read_faults: u64,
}

impl Scan<'_> {
    /// Runs the scanner to its outcome (`None`: the observer stopped it),
    /// recording every entry and how the segment ends.
    fn run(&mut self, planned: &PlannedSegment) -> Result<Option<SegmentOutcome>, InspectError> {
        let path = planned.path.clone();
        let mut window = Window::new(self.file, self.segment.file_bytes);
        let mut scanner = SegmentScanner::new(&planned.header, planned.sealed_end);
        let mut reported = 0;
        let mut step = scanner.step(None);
        let outcome = loop {
            step = match step {
                Step::Read {
                    pos, len, again, ..
                } => {
                    if again {
                        window.invalidate();
                    }
                    let bytes = window
                        .get(pos, len)
                        .map_err(io_error("read", &path, Some(pos)))?;
                    scanner.step(Some(bytes))
                }
                Step::Entry(header) => {
                    let offset = u64::from(header.offset.get());
                    if offset >= reported + INSPECT_READ_BYTES {
                        self.observer.progress(self.done_before + offset);
                        reported = offset;
                    }
                    // The scanner hands out only entries whose kind verified.
                    if let Some(kind) = header.entry_kind() {
                        let info = EntryInfo::from_header(&header, kind);
                        self.record(&info);
                        let payload_len = if kind.carries_payload() {
                            u64::from(header.payload_len.get())
                        } else {
                            0
                        };
                        let payload = window
                            .get(offset + ENTRY_HEADER_BYTES as u64, payload_len)
                            .map_err(io_error("read", &path, Some(offset)))?;
                        if kind == EntryKind::HardState
                            && crc32fast::hash(payload) == info.payload_checksum
                        {
                            self.segment.last_hard_state = Some((info.op, payload.to_vec()));
                        }
                        if self.observer.entry(&info, payload).is_break() {
                            self.segment.end = SegmentEnd::Stopped { offset };
                            self.transient_read_faults = scanner.transient_read_faults();
                            return Ok(None);
                        }
                    }
                    scanner.step(None)
                }
                Step::Done(outcome) => break outcome,
            };
        };
        self.transient_read_faults = scanner.transient_read_faults();
        self.segment.end = segment_end(&outcome);
        Ok(Some(outcome))
    }

    fn record(&mut self, info: &EntryInfo) {
        record(self.segment, self.ops, info);
    }
}

/// Counts one entry of a segment in its report and the log's op set.
fn record(segment: &mut SegmentReport, ops: &mut OpSet, info: &EntryInfo) {
    if info.first_in_write {
        segment.writes += 1;
    }
    match info.kind {
        EntryKind::Data => {
            segment.data_entries += 1;
            segment.data_bytes += crate::format::entry_footprint(info.payload_len as usize);
            segment.op_min = min_some(segment.op_min, Some(info.op));
            segment.op_max = segment.op_max.max(Some(info.op));
            segment.epoch_max = segment.epoch_max.max(Some(info.epoch));
            ops.insert(info.op);
        }
        EntryKind::Watermark => {
            segment.watermark_records += 1;
            segment.watermark = segment.watermark.max(info.op);
        }
        EntryKind::Truncate => {
            segment.truncate_records += 1;
            ops.truncate_above(info.op);
        }
        EntryKind::HardState => segment.hard_state_records += 1,
        EntryKind::Padding => segment.padding_entries += 1,
        EntryKind::WriteIndex => segment.write_indexes += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::SEGMENT_MAGIC;

    #[test]
    fn op_set_merges_ranges_and_finds_gaps() {
        let mut ops = OpSet::default();
        for op in [1, 2, 3, 7, 5, 6, 10, 4, 3] {
            ops.insert(op);
        }
        assert_eq!(ops.duplicates, 1);
        assert_eq!(ops.ranges().collect::<Vec<_>>(), [(1, 7), (10, 10)]);
        // The largest ops (forged bytes only) extend a range, no overflow.
        let mut top = OpSet::default();
        top.insert(u64::MAX - 1);
        top.insert(u64::MAX);
        assert_eq!(top.ranges().collect::<Vec<_>>(), [(u64::MAX - 1, u64::MAX)]);
        assert_eq!(ops.count(), 8);
        let gaps = |leading, interior: &[(u64, u64)], interior_count| Gaps {
            leading,
            interior: interior.to_vec(),
            interior_count,
        };
        assert_eq!(ops.missing_above(0, 10), gaps(None, &[(8, 9)], 2));
        assert_eq!(ops.missing_above(8, 10), gaps(Some((9, 9)), &[], 0));
        assert_eq!(ops.missing_above(10, 10), gaps(None, &[], 0));
        let mut sparse = OpSet::default();
        for op in (2..200).step_by(2) {
            sparse.insert(op);
        }
        assert_eq!(
            sparse.missing_above(0, 4),
            gaps(Some((1, 1)), &[(3, 3), (5, 5), (7, 7), (9, 9)], 98)
        );
        sparse.insert(u64::MAX);
        sparse.insert(u64::MAX - 1);
        assert_eq!(sparse.ranges.get(&(u64::MAX - 1)), Some(&u64::MAX));
    }

    #[test]
    fn a_short_or_zeroed_header_block_is_unverified() {
        assert_eq!(
            check_segment_header(&[], 1),
            SegmentHeaderStatus::Unverified
        );
        assert_eq!(
            check_segment_header(&[0; BLOCK_BYTES as usize], 1),
            SegmentHeaderStatus::Unverified
        );
        assert_eq!(
            check_segment_header(&[0xff; 100], 1),
            SegmentHeaderStatus::Unverified
        );
    }

    use crate::{Journal, JournalBuilder, RecoveryReport};

    const N: u64 = 6;

    fn run<F, Fut>(test: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        glommio::LocalExecutorBuilder::default()
            .spawn(test)
            .expect("spawn executor")
            .join()
            .expect("test panicked");
    }

    fn builder(path: &Path) -> JournalBuilder {
        // Buffered I/O: the unit tests' temp dir may be tmpfs.
        Journal::builder(path)
            .segment_bytes(1 << 20)
            .batch_bytes_max(64 << 10)
            .entry_bytes_max(16 << 10)
            .slot_count(64)
            .allow_buffered_io(true)
    }

    fn payload(op: u64) -> Vec<u8> {
        (0..200).map(|i| (op as usize * 31 + i) as u8).collect()
    }

    /// Ends a session the way a crash does: no close, so the superblock
    /// records nowhere where the last segment ends.
    async fn crash(journal: Journal) {
        glommio::yield_if_needed().await;
        drop(journal);
    }

    /// Appends ops 1..=N one at a time (op `k` is its write's only entry,
    /// at byte 4096 * k of segment 1) and closes cleanly, then reopens
    /// `reopens` times.
    fn write_session(reopens: usize) -> (tempfile::TempDir, PathBuf) {
        write_session_ending(reopens, true)
    }

    /// Like [`write_session`] without reopens, but the session ends in a
    /// crash: the end of segment 1 is recorded nowhere.
    fn write_crashed_session() -> (tempfile::TempDir, PathBuf) {
        write_session_ending(0, false)
    }

    fn write_session_ending(reopens: usize, close: bool) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("journal");
        let p = path.clone();
        run(move || async move {
            let journal = builder(&p).open().await.unwrap();
            for op in 1..=N {
                assert_eq!(journal.append(&payload(op)).await.unwrap(), op);
            }
            if close {
                journal.close().await.unwrap();
            } else {
                crash(journal).await;
            }
            for _ in 0..reopens {
                builder(&p).open().await.unwrap().close().await.unwrap();
            }
        });
        (dir, path)
    }

    /// Three sessions of two ops each: three segments holding data.
    fn write_three_segments() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("journal");
        let p = path.clone();
        run(move || async move {
            for session in 0..3 {
                let journal = builder(&p).open().await.unwrap();
                for op in 2 * session + 1..=2 * session + 2 {
                    assert_eq!(journal.append(&payload(op)).await.unwrap(), op);
                }
                journal.close().await.unwrap();
            }
        });
        (dir, path)
    }

    /// What recovery makes of the directory (it may change it: call last).
    fn recover(path: &Path, recovery: Recovery) -> Result<RecoveryReport, crate::Error> {
        let p = path.to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        run(move || async move {
            let result = match builder(&p).recovery(recovery).open().await {
                Ok(journal) => {
                    let report = journal.recovery_report().clone();
                    journal.close().await.unwrap();
                    Ok(report)
                }
                Err(e) => Err(e),
            };
            tx.send(result).unwrap();
        });
        rx.recv().unwrap()
    }

    fn flip(path: &Path, offset: u64) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[offset as usize] ^= 0x10;
        std::fs::write(path, bytes).unwrap();
    }

    fn segment(path: &Path, generation: u64) -> PathBuf {
        path.join(segment_file_name(generation))
    }

    /// Collects the entries the scan hands out.
    #[derive(Default)]
    struct Collect(Vec<(EntryInfo, Vec<u8>)>, u64, u64);

    impl ScanObserver for Collect {
        fn begin(&mut self, file_bytes: u64) {
            self.1 = file_bytes;
        }
        fn progress(&mut self, done: u64) {
            assert!(done >= self.2 && done <= self.1, "{done} of {}", self.1);
            self.2 = done;
        }
        fn entry(&mut self, entry: &EntryInfo, payload: &[u8]) -> ControlFlow<()> {
            self.0.push((*entry, payload.to_vec()));
            ControlFlow::Continue(())
        }
    }

    #[test]
    fn a_clean_journal_scans_like_recovery_sees_it() {
        let (_dir, path) = write_three_segments();
        let mut seen = Collect::default();
        let report = scan_journal(&path, &mut seen).unwrap();
        assert!(report.is_intact(), "{report:?}");
        assert!(report.complete && report.planned);
        assert_eq!(report.verdict, Verdict::Opens);
        assert_eq!(report.data_entries, 6);
        assert_eq!((report.op_min, report.op_max), (Some(1), Some(6)));
        assert_eq!(seen.2, seen.1, "progress reaches the total");
        let data: Vec<_> = seen
            .0
            .iter()
            .filter(|(e, _)| e.kind == EntryKind::Data)
            .map(|(e, p)| (e.op, e.offset, p.clone()))
            .collect();
        let expected: Vec<_> = (1..=6)
            .map(|op| (op, 4096 * (1 + (op - 1) % 2), payload(op)))
            .collect();
        assert_eq!(data, expected);
        assert!(
            matches!(report.tail, Tail::Clean { .. }),
            "{:?}",
            report.tail
        );
        let in_log: Vec<_> = report
            .segments
            .iter()
            .filter(|s| s.in_log)
            .map(|s| s.generation)
            .collect();
        assert_eq!(in_log, [1, 2, 3], "{:?}", report.segments);
        // The superblock: three segments, the closed ones' ends and the
        // last one's (a clean close) recorded.
        let sb = report.superblock.as_ref().expect("a superblock");
        assert_eq!((sb.first_generation, sb.last_generation), (1, 3));
        assert_eq!(sb.ends.len(), 3, "{sb:?}");
        assert!(sb.damaged_copies.is_empty());
        for s in report.segments.iter().filter(|s| s.in_log) {
            assert_eq!(
                s.sealed_end,
                sb.ends.iter().find(|e| e.0 == s.generation).map(|e| e.1)
            );
            assert!(matches!(s.end, SegmentEnd::Sealed { .. }), "{s:?}");
        }
        // Read-only: the files are byte for byte what they were.
        let before: Vec<_> = list_segments(&path).unwrap();
        let sb_before = std::fs::read(path.join(SUPERBLOCK_FILE_NAME)).unwrap();
        scan_journal(&path, &mut ()).unwrap();
        assert_eq!(list_segments(&path).unwrap(), before);
        assert_eq!(
            std::fs::read(path.join(SUPERBLOCK_FILE_NAME)).unwrap(),
            sb_before
        );

        let recovered = recover(&path, Recovery::TruncateTornTail).unwrap();
        assert_eq!(recovered.entries, report.data_entries);
        assert_eq!(recovered.bytes, report.data_bytes);
        assert_eq!(recovered.watermark, report.watermark);
        assert_eq!(recovered.removed.len(), report.leftovers.len());
    }

    #[test]
    fn damage_in_the_middle_names_the_file_and_offset_and_reopen_leaves_it_to_reads() {
        let (_dir, path) = write_session(0);
        let file = segment(&path, 1);
        flip(&file, 4096 * 3 + ENTRY_HEADER_BYTES as u64 + 5);
        let report = scan_journal(&path, &mut ()).unwrap();
        assert!(!report.is_intact());
        // A payload a later write vouches for: a reopen does not read it.
        assert_eq!(report.verdict, Verdict::Opens);
        assert_eq!(report.damage.len(), 1, "{:?}", report.damage);
        assert_eq!(report.damage_found_on_read, report.damage);
        assert_eq!(report.damage[0].path, file);
        assert_eq!(report.damage[0].offset, 4096 * 3);
        assert!(report.damage[0].reason.contains("payload checksum"));
        assert!(
            matches!(report.tail, Tail::Clean { .. }),
            "{:?}",
            report.tail
        );
        assert!(report.describe_verdict().contains("fails"));
        recover(&path, Recovery::TruncateTornTail).unwrap();
    }

    /// A hard-state record whose sequence is u64::MAX (forged: sequences
    /// count up from 1, and every checksum is made to match): the next
    /// update would have no sequence to take (it overflowed), so recovery
    /// refuses the journal and the scan's verdict says the same.
    #[test]
    fn a_hard_state_sequence_none_can_follow_is_refused_like_recovery() {
        use crate::format::{EntryHeader, IndexRecord, ENTRY_HEADER_BYTES, INDEX_RECORD_BYTES};
        use zerocopy::{FromBytes, IntoBytes};
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("journal");
        let p = path.clone();
        run(move || async move {
            let journal = builder(&p).open().await.unwrap();
            journal.append(&payload(1)).await.unwrap();
            journal.set_hard_state(b"vote").await.unwrap();
            crash(journal).await;
        });
        let mut entries = Collect::default();
        scan_journal(&path, &mut entries).unwrap();
        let record = entries
            .0
            .iter()
            .map(|(info, _)| *info)
            .find(|info| info.kind == EntryKind::HardState)
            .expect("a hard-state record");
        let first = entries
            .0
            .iter()
            .map(|(info, _)| *info)
            .rfind(|info| {
                info.generation == record.generation
                    && info.first_in_write
                    && info.offset <= record.offset
            })
            .expect("its write's first entry");
        let file = segment(&path, record.generation);
        let mut bytes = std::fs::read(&file).unwrap();
        let journal_id: [u8; 16] = {
            let (header, _) = SegmentHeader::read_from_prefix(&bytes[..]).unwrap();
            header.journal_id
        };
        let header_at = |offset: u64| offset as usize..offset as usize + ENTRY_HEADER_BYTES;
        let (mut header, _) =
            EntryHeader::read_from_prefix(&bytes[header_at(record.offset)]).unwrap();
        header.op = u64::MAX.into();
        bytes[header_at(record.offset)].copy_from_slice(header.seal(&journal_id).as_bytes());
        // The write's index lists the record's op too.
        let (first_header, _) =
            EntryHeader::read_from_prefix(&bytes[header_at(first.offset)]).unwrap();
        let index_at = u64::from(first_header.index_at.get());
        let (mut index, _) = EntryHeader::read_from_prefix(&bytes[header_at(index_at)]).unwrap();
        let payload_at = index_at as usize + ENTRY_HEADER_BYTES;
        let payload = payload_at..payload_at + index.payload_len.get() as usize;
        for at in payload.clone().step_by(INDEX_RECORD_BYTES) {
            let (mut listed, _) = IndexRecord::read_from_prefix(&bytes[at..]).unwrap();
            if listed.kind == EntryKind::HardState as u8 {
                listed.op = u64::MAX.into();
                bytes[at..at + INDEX_RECORD_BYTES].copy_from_slice(listed.as_bytes());
            }
        }
        index.payload_checksum = crc32fast::hash(&bytes[payload]).into();
        bytes[header_at(index_at)].copy_from_slice(index.seal(&journal_id).as_bytes());
        std::fs::write(&file, bytes).unwrap();

        refused_by_scan_and_recovery_alike(&path, crate::verify::NO_SEQUENCE_CAN_FOLLOW);
    }

    /// The scan's verdict refuses the journal at `path` for `reason`, and
    /// recovery refuses it with the same words.
    fn refused_by_scan_and_recovery_alike(path: &Path, reason: &str) {
        let report = scan_journal(path, &mut ()).unwrap();
        assert_eq!(report.verdict, Verdict::Refuses, "{:?}", report.damage);
        let refusal = report.refusal.as_ref().map(ToString::to_string).unwrap();
        assert!(refusal.contains(reason), "{refusal}");
        match recover(path, Recovery::TruncateTornTail) {
            Err(crate::Error::Corruption {
                path: p, reason: r, ..
            }) => {
                assert_eq!(p, path);
                assert_eq!(r, reason);
            }
            other => panic!("recovery should refuse: {other:?}"),
        }
    }

    /// A segment header naming a watermark of u64::MAX (forged: the API
    /// refuses it, and the checksum is made to match): recovery refuses the
    /// journal, since no op number can follow it, and the scan's verdict
    /// says the same, in the same words.
    #[test]
    fn a_watermark_no_op_can_follow_is_refused_like_recovery() {
        let (_dir, path) = write_session(1);
        let file = segment(&path, 2);
        let mut bytes = std::fs::read(&file).unwrap();
        let (header, _): (SegmentHeader, _) =
            zerocopy::FromBytes::read_from_prefix(&bytes[..]).unwrap();
        let mut header = header;
        header.watermark = u64::MAX.into();
        let header = header.seal();
        bytes[..size_of::<SegmentHeader>()].copy_from_slice(zerocopy::IntoBytes::as_bytes(&header));
        std::fs::write(&file, bytes).unwrap();
        refused_by_scan_and_recovery_alike(&path, crate::verify::NO_OP_CAN_FOLLOW);
    }

    #[test]
    fn damage_to_a_write_index_is_refused_like_recovery() {
        let (_dir, path) = write_session(0);
        let file = segment(&path, 1);
        // Op 3's write: its entry, then its index.
        let index_at = 4096 * 3 + crate::format::entry_footprint(200) + 9;
        flip(&file, index_at);
        let report = scan_journal(&path, &mut ()).unwrap();
        assert_eq!(report.verdict, Verdict::Refuses);
        assert!(report.damage_found_on_read.is_empty());
        match recover(&path, Recovery::TruncateTornTail) {
            Err(crate::Error::Corruption {
                path: p, offset, ..
            }) => {
                assert_eq!((p, offset), (file, report.damage[0].offset));
            }
            other => panic!("recovery should refuse: {other:?}"),
        }
    }

    #[test]
    fn damage_in_an_earlier_segment_is_found_and_later_segments_still_scanned() {
        let (_dir, path) = write_session(1);
        let file = segment(&path, 1);
        flip(&file, 4096 * N + 9);
        let report = scan_journal(&path, &mut ()).unwrap();
        assert_eq!(report.damage.len(), 1, "{:?}", report.damage);
        assert_eq!(report.damage[0].path, file);
        assert_eq!(report.damage[0].offset, 4096 * N);
        assert_eq!(report.verdict, Verdict::Refuses);
        assert!(
            matches!(report.tail, Tail::Clean { .. }),
            "{:?}",
            report.tail
        );
        assert!(matches!(
            recover(&path, Recovery::TruncateTornTail),
            Err(crate::Error::Corruption { .. })
        ));
    }

    #[test]
    fn a_torn_last_write_after_a_crash_is_a_cut_with_its_ops_not_damage() {
        let (_dir, path) = write_crashed_session();
        let file = segment(&path, 1);
        flip(&file, 4096 * N + ENTRY_HEADER_BYTES as u64 + 17);
        let report = scan_journal(&path, &mut ()).unwrap();
        assert!(report.is_intact(), "{:?}", report.damage);
        assert_eq!(report.verdict, Verdict::Cuts);
        assert!(report.reopen_refuses(Recovery::Strict));
        assert!(!report.reopen_refuses(Recovery::TruncateTornTail));
        match &report.tail {
            Tail::Torn {
                path: p,
                offset,
                reason,
                ops,
                entries,
            } => {
                assert_eq!((p, *offset), (&file, 4096 * N));
                assert!(reason.contains("payload checksum"), "{reason}");
                assert_eq!((*ops, *entries), (Some((N, N)), 1));
            }
            other => panic!("expected a torn tail, got {other:?}"),
        }
        assert_eq!(report.op_max, Some(N - 1));
        assert!(
            matches!(
                recover(&path, Recovery::Strict),
                Err(crate::Error::Corruption { .. })
            ),
            "Strict refuses the cut"
        );
        let recovered = recover(&path, Recovery::TruncateTornTail).unwrap();
        assert_eq!(Some(recovered.tail.clone()), report.tail.tail_state());
        assert_eq!(recovered.tail.describe(), report.tail.describe());
    }

    #[test]
    fn the_same_damage_after_a_clean_close_is_corruption() {
        let (_dir, path) = write_session(0);
        let file = segment(&path, 1);
        flip(&file, 4096 * N + ENTRY_HEADER_BYTES as u64 + 17);
        let report = scan_journal(&path, &mut ()).unwrap();
        assert_eq!(report.damage[0].offset, 4096 * N);
        // The clean close recorded the end: a reopen does not read the
        // last write's payload either; reading its op fails.
        assert_eq!(report.verdict, Verdict::Opens);
        assert_eq!(report.damage_found_on_read, report.damage);
        assert!(!report.is_intact());
        recover(&path, Recovery::TruncateTornTail).unwrap();
    }

    #[test]
    fn a_spare_segment_is_a_leftover_and_a_missing_one_is_damage() {
        let (_dir, path) = write_three_segments();
        let segments = list_segments(&path).unwrap();
        let last = 3;
        for (generation, file, _) in &segments {
            if *generation > last {
                std::fs::remove_file(file).unwrap();
            }
        }
        // A spare: created, space reserved, no header yet.
        std::fs::write(segment(&path, last + 1), vec![0; 8192]).unwrap();
        let report = scan_journal(&path, &mut ()).unwrap();
        assert!(report.is_intact(), "{:?}", report.damage);
        assert_eq!(report.verdict, Verdict::Opens);
        assert!(
            matches!(
                report.segment(last + 1).unwrap().end,
                SegmentEnd::Leftover { .. }
            ),
            "{:?}",
            report.segments
        );
        assert_eq!(report.leftovers.len(), 1);
        std::fs::remove_file(segment(&path, last + 1)).unwrap();
        // Remove a middle segment: the plan refuses; the best-effort scan
        // still reads the others.
        std::fs::remove_file(segment(&path, 2)).unwrap();
        let report = scan_journal(&path, &mut ()).unwrap();
        assert!(!report.planned);
        assert_eq!(report.verdict, Verdict::Refuses);
        assert_eq!(report.damage.len(), 1, "{:?}", report.damage);
        assert!(report.damage[0].reason.contains("missing"));
        assert_eq!(report.damage[0].path, segment(&path, 2));
        assert_eq!(report.missing_ops, [(3, 4)]);
        assert_eq!(report.leading_gap, None);
        for generation in [1, 3] {
            let s = report.segment(generation).unwrap();
            assert!(
                s.in_log && matches!(s.end, SegmentEnd::Sealed { .. }),
                "{s:?}"
            );
        }
        assert!(matches!(
            recover(&path, Recovery::TruncateTornTail),
            Err(crate::Error::Corruption { path: p, .. }) if p == segment(&path, 2)
        ));
    }

    #[test]
    fn stray_files_and_damaged_superblock_copies_are_reported_not_refused() {
        let (_dir, path) = write_three_segments();
        std::fs::write(path.join("notes.txt"), b"hello").unwrap();
        std::fs::write(path.join("segment-000000000000000A.wal"), b"x").unwrap();
        flip(&path.join(SUPERBLOCK_FILE_NAME), 100);
        let report = scan_journal(&path, &mut ()).unwrap();
        assert_eq!(report.verdict, Verdict::Opens, "{:?}", report.damage);
        assert_eq!(report.stray.len(), 2);
        assert_eq!(report.superblock.as_ref().unwrap().damaged_copies.len(), 1);
        let recovered = recover(&path, Recovery::TruncateTornTail).unwrap();
        assert_eq!(recovered.stray_files, report.stray);
        assert_eq!(recovered.superblock_repaired.len(), 1);
        // Both copies: the superblock is damage.
        flip(&path.join(SUPERBLOCK_FILE_NAME), 100);
        flip(&path.join(SUPERBLOCK_FILE_NAME), 4096 + 100);
        let report = scan_journal(&path, &mut ()).unwrap();
        assert_eq!(report.verdict, Verdict::Refuses);
        assert!(report.superblock.is_none());
        assert_eq!(report.damage[0].path, path.join(SUPERBLOCK_FILE_NAME));
        // The segments are still read, without their superblock.
        assert_eq!(report.data_entries, 6, "{report:?}");
    }

    #[test]
    fn watermark_records_are_counted_and_ops_below_it_are_not_missing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("journal");
        let p = path.clone();
        run(move || async move {
            let journal = builder(&p).open().await.unwrap();
            for op in 1..=N {
                journal.append(&payload(op)).await.unwrap();
            }
            journal.advance_watermark(4).await.unwrap();
            journal.append(&payload(N + 1)).await.unwrap();
            journal.close().await.unwrap();
        });
        let report = scan_journal(&path, &mut ()).unwrap();
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.watermark, 4);
        assert_eq!(report.op_max, Some(N + 1));
        assert_eq!(
            recover(&path, Recovery::TruncateTornTail)
                .unwrap()
                .watermark,
            4
        );
    }

    #[test]
    fn a_cut_that_takes_the_watermark_record_leaves_the_superblocks_watermark() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("journal");
        let p = path.clone();
        run(move || async move {
            let journal = builder(&p).open().await.unwrap();
            for op in 1..=N {
                journal.append(&payload(op)).await.unwrap();
            }
            journal.close().await.unwrap();
            let journal = builder(&p).open().await.unwrap();
            journal.append(&payload(N + 1)).await.unwrap();
            journal.append(&payload(N + 2)).await.unwrap();
            // Its record goes after op N + 2; segment 1 is retired, and the
            // superblock's update that retires it records the watermark.
            journal.advance_watermark(N).await.unwrap();
            crash(journal).await;
        });
        let report = scan_journal(&path, &mut ()).unwrap();
        assert!(report.is_intact(), "{report:?}");
        assert_eq!((report.watermark, report.leading_gap), (N, None));
        let last = segment(&path, 2);
        assert!(last.exists() && !segment(&path, 1).exists());
        // The record's header: the last write, nothing vouches for it.
        flip(&last, 4096 * 3 + 3);
        let report = scan_journal(&path, &mut ()).unwrap();
        assert!(
            matches!(
                report.tail,
                Tail::Torn {
                    offset: 12288,
                    ops: None,
                    ..
                }
            ),
            "{:?}",
            report.tail
        );
        assert_eq!(report.superblock.as_ref().unwrap().watermark, N);
        assert_eq!((report.watermark, report.leading_gap), (N, None));
        assert!(report.is_intact());
        let recovered = recover(&path, Recovery::TruncateTornTail).unwrap();
        assert_eq!(recovered.watermark, N);
        assert_eq!(recovered.entries, 2);
    }

    #[test]
    fn the_observer_can_stop_the_scan() {
        struct StopAfter(u64);
        impl ScanObserver for StopAfter {
            fn entry(&mut self, entry: &EntryInfo, _: &[u8]) -> ControlFlow<()> {
                if entry.op >= self.0 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            }
        }
        let (_dir, path) = write_session(1);
        let report = scan_journal(&path, &mut StopAfter(2)).unwrap();
        assert!(!report.complete);
        assert_eq!(report.op_max, Some(2));
        assert_eq!(report.missing_op_count, 0);
    }

    #[test]
    fn arbitrary_bytes_in_segment_files_never_panic() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..50 {
            let len = (next() % (3 * BLOCK_BYTES)) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 && len >= 8 {
                bytes[4..8].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
            }
            std::fs::write(path.join(segment_file_name(1 + round % 3)), &bytes).unwrap();
            if round == 20 {
                std::fs::write(path.join(SUPERBLOCK_FILE_NAME), &bytes).unwrap();
            }
            let report = scan_journal(path, &mut ()).unwrap();
            assert_eq!(report.verdict, Verdict::Refuses);
        }
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let err = scan_journal(Path::new("/nonexistent/ringstore/journal"), &mut ())
            .expect_err("no such directory");
        assert!(matches!(err, InspectError::NotFound { .. }), "{err}");
    }
}
