//! The journal's verifier: one set of rules for what a journal directory's
//! bytes mean, shared by recovery (on the reactor, over
//! [`crate::storage::Storage`]) and by the read-only scan of
//! [`crate::inspect`] (`ringstore wal verify`, `inspect`, `salvage`), so the
//! two cannot reach different verdicts.
//!
//! It is sans-IO: it never reads a file. [`plan`] takes what a driver read
//! of the directory (names, the superblock's bytes, each segment's first
//! blocks) and decides which segments make up the log, where each must end,
//! and which files are leftovers a crash explains. [`SegmentScanner`] then
//! walks one segment: it asks for byte ranges ([`Step::Read`]), the driver
//! answers with the bytes, and it reports each entry that verifies
//! ([`Step::Entry`]) and finally how the segment ends ([`Step::Done`]).
//!
//! # What must exist
//!
//! The superblock ([`crate::superblock`]) records the generations that must
//! exist (`first..=last`) and where closed segments end. A missing segment
//! in that range, one of another journal, one shorter or longer than its
//! header says, or one beyond `last + 1` is damage naming the file.
//! Generation `last + 1` may exist without being recorded: the rollover that
//! created it crashed before its superblock update, and no write goes to a
//! segment before that update is durable — so it holds no data, and is
//! removed if its header was never written. Generations below `first` are
//! what a retirement left when a crash interrupted it after the superblock
//! update; they are removed.
//!
//! # Where the log may end
//!
//! See [`crate::recovery`] for the decision table the scanner applies.

use crate::config::{
    BATCH_BYTES_MAX_LIMIT, ENTRY_BYTES_MAX_LIMIT, SEGMENT_BYTES_MAX, WRITES_IN_FLIGHT_MAX,
};
use crate::durability::record::DURABILITY_RECORD_FILE_NAME;
use crate::durability::PROBE_LEFTOVER_NAMES;
use crate::format::{
    check_entry_header, write_end, EntryHeader, EntryKind, HeaderFault, IndexRecord, SegmentHeader,
    BLOCK_BYTES, ENTRY_ALIGN_BYTES, ENTRY_HEADER_BYTES, ENTRY_MAGIC, FLAG_FIRST_IN_WRITE,
    FORMAT_VERSION, HARD_STATE_BYTES_MAX, INDEX_RECORD_BYTES, SEGMENT_DATA_OFFSET,
    SEGMENT_FLAGS_KNOWN, SEGMENT_FLAG_NO_SYNC, SEGMENT_FLAG_RECYCLED, SEGMENT_HEADER_BYTES,
    SEGMENT_MAGIC,
};
use crate::segment::{segment_file_name, segment_generation};
use crate::superblock::{
    self, CopyFault, JournalOwner, JournalSuperblock, SuperblockFault, SuperblockKind,
    SUPERBLOCK_FILE_NAME,
};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use zerocopy::{FromBytes, IntoBytes};

/// Name of the temporary file a new superblock is written to before it is
/// renamed into place (so `superblock` exists only once complete).
pub const SUPERBLOCK_TEMP_NAME: &str = "superblock.tmp";

/// Bytes that fail verification where valid data must be, or a file that
/// must exist and does not: what recovery reports as `Error::Corruption`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The damaged or missing file.
    pub path: PathBuf,
    /// Byte offset of the damaged structure (0 for a missing file).
    pub offset: u64,
    /// What failed to verify.
    pub reason: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at byte offset {}: {}",
            self.path.display(),
            self.offset,
            self.reason
        )
    }
}

/// Why a journal whose largest op or watermark is `u64::MAX` is refused
/// (only forged bytes hold one), by recovery and by the scan alike.
pub const NO_OP_CAN_FOLLOW: &str =
    "an op or watermark of u64::MAX leaves no op number to follow it";

/// Why a journal whose newest hard-state record carries the sequence
/// `u64::MAX` is refused (only forged bytes hold one: the next update would
/// have no sequence to take), by recovery and by the scan alike.
pub const NO_SEQUENCE_CAN_FOLLOW: &str =
    "a hard-state record's sequence of u64::MAX leaves no sequence to follow it";

/// Why a directory cannot be opened as a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Damage (see [`Damage`]).
    Damage(Damage),
    /// The journal belongs to another owner (see `Error::WrongOwner`).
    WrongOwner {
        /// The superblock.
        path: PathBuf,
        /// The owner it records.
        recorded: JournalOwner,
        /// The owner expected.
        expected: JournalOwner,
    },
    /// A file verifies but was written by another format version.
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version it names.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Damage(d) => d.fmt(f),
            Refusal::WrongOwner {
                path,
                recorded,
                expected,
            } => write!(
                f,
                "{}: the journal belongs to {recorded}, not to {expected}",
                path.display()
            ),
            Refusal::UnsupportedVersion {
                path,
                found,
                supported,
            } => write!(
                f,
                "{}: format version {found}, this build reads version {supported}",
                path.display()
            ),
        }
    }
}

fn damage(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Refusal {
    Refusal::Damage(Damage {
        path: path.into(),
        offset,
        reason: reason.into(),
    })
}

/// The names in a journal directory, sorted into what they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// Segment generations, ascending.
    pub generations: Vec<u64>,
    /// `superblock` exists.
    pub superblock: bool,
    /// `superblock.tmp` exists (a superblock creation a crash interrupted).
    pub superblock_temp: bool,
    /// The durability record exists (advisory: never read by recovery;
    /// see [`crate::durability::record`]).
    pub durability_record: bool,
    /// Files a crash in the middle of a durability probe or of writing its
    /// record left ([`crate::durability::PROBE_LEFTOVER_NAMES`]).
    pub probe_leftovers: Vec<OsString>,
    /// Everything else: reported and never opened (a name like a segment's
    /// in upper-case hex is one of these).
    pub stray: Vec<OsString>,
}

/// Sorts a directory listing.
pub fn classify_names(names: &[OsString]) -> Names {
    let mut sorted = Names::default();
    for name in names {
        if let Some(generation) = segment_generation(name) {
            sorted.generations.push(generation);
        } else if name == SUPERBLOCK_FILE_NAME {
            sorted.superblock = true;
        } else if name == SUPERBLOCK_TEMP_NAME {
            sorted.superblock_temp = true;
        } else if name == DURABILITY_RECORD_FILE_NAME {
            sorted.durability_record = true;
        } else if PROBE_LEFTOVER_NAMES.iter().any(|leftover| name == leftover) {
            sorted.probe_leftovers.push(name.clone());
        } else {
            sorted.stray.push(name.clone());
        }
    }
    sorted.generations.sort_unstable();
    sorted.stray.sort();
    sorted.probe_leftovers.sort();
    sorted
}

/// The files in `names` that a crash explains and a reopen removes before
/// it looks at the rest.
pub fn crash_leftovers(dir: &Path, names: &Names) -> Vec<Leftover> {
    let mut leftovers = Vec::new();
    if names.superblock_temp {
        leftovers.push(Leftover {
            path: dir.join(SUPERBLOCK_TEMP_NAME),
            reason: "a superblock whose creation did not complete",
        });
    }
    for name in &names.probe_leftovers {
        leftovers.push(Leftover {
            path: dir.join(name),
            reason: "left by a durability probe a crash interrupted",
        });
    }
    leftovers
}

/// The outcome of checking a segment header block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentHeaderStatus {
    /// The header verifies and its fields are in range.
    Valid(SegmentHeader),
    /// Magic or checksum do not match, or the file is shorter than a block:
    /// never written (a spare), torn, or destroyed.
    Unverified,
    /// The header verifies but something in its block is impossible.
    Damaged {
        /// Where in the file.
        offset: u64,
        /// What.
        reason: String,
    },
    /// The header verifies but was written by another format version.
    UnsupportedVersion(u32),
}

/// Checks block 0 of segment `generation` (the first [`BLOCK_BYTES`] of the
/// file, or fewer if the file is shorter).
pub fn check_segment_header(block: &[u8], generation: u64) -> SegmentHeaderStatus {
    if (block.len() as u64) < BLOCK_BYTES {
        return SegmentHeaderStatus::Unverified;
    }
    let Ok((header, _)) = SegmentHeader::read_from_prefix(block) else {
        return SegmentHeaderStatus::Unverified;
    };
    if header.magic.get() != SEGMENT_MAGIC || header.checksum.get() != header.compute_checksum() {
        // A header of another format version has another size, so its
        // checksum cannot verify here; its version field still can be read.
        if header.magic.get() == SEGMENT_MAGIC && header.version.get() != FORMAT_VERSION {
            return SegmentHeaderStatus::UnsupportedVersion(header.version.get());
        }
        return SegmentHeaderStatus::Unverified;
    }
    let bad = |offset: u64, reason: String| SegmentHeaderStatus::Damaged { offset, reason };
    if block[SEGMENT_HEADER_BYTES..BLOCK_BYTES as usize]
        .iter()
        .any(|b| *b != 0)
    {
        return bad(
            SEGMENT_HEADER_BYTES as u64,
            "stray bytes after the segment header (a misdirected write)".into(),
        );
    }
    if header.version.get() != FORMAT_VERSION {
        return SegmentHeaderStatus::UnsupportedVersion(header.version.get());
    }
    if header.generation.get() != generation {
        return bad(
            0,
            format!(
                "segment header names generation {}, the file name {generation}",
                header.generation.get()
            ),
        );
    }
    if u64::from(header.data_offset.get()) != SEGMENT_DATA_OFFSET {
        return bad(
            0,
            format!(
                "segment header names data offset {}",
                header.data_offset.get()
            ),
        );
    }
    let segment_bytes = header.segment_bytes.get();
    if !segment_bytes.is_multiple_of(BLOCK_BYTES)
        || segment_bytes <= SEGMENT_DATA_OFFSET
        || segment_bytes > SEGMENT_BYTES_MAX
    {
        return bad(0, format!("segment header names size {segment_bytes}"));
    }
    let batch_bytes_max = header.batch_bytes_max.get();
    if !batch_bytes_max.is_multiple_of(BLOCK_BYTES)
        || batch_bytes_max == 0
        || batch_bytes_max > BATCH_BYTES_MAX_LIMIT
        || batch_bytes_max > segment_bytes - SEGMENT_DATA_OFFSET
    {
        return bad(
            0,
            format!("segment header names batch size {batch_bytes_max}"),
        );
    }
    let writes_in_flight = header.writes_in_flight.get();
    if writes_in_flight == 0 || writes_in_flight > WRITES_IN_FLIGHT_MAX {
        return bad(
            0,
            format!("segment header names {writes_in_flight} writes in flight"),
        );
    }
    if header.flags.get() & !SEGMENT_FLAGS_KNOWN != 0 {
        return bad(
            0,
            format!("segment header has unknown flags {:#x}", header.flags.get()),
        );
    }
    SegmentHeaderStatus::Valid(header)
}

/// What a driver read of one segment file for [`plan`].
#[derive(Debug, Clone)]
pub struct SegmentFacts {
    /// The generation in its name.
    pub generation: u64,
    /// The file's length.
    pub len: u64,
    /// Its first [`BLOCK_BYTES`] (fewer if the file is shorter).
    pub header_block: Vec<u8>,
    /// The entry-header-sized bytes at [`SEGMENT_DATA_OFFSET`] (fewer or
    /// none if the file is shorter).
    pub first_entry: Vec<u8>,
}

/// Most reads of a segment's first entry position that disagree before
/// the last is taken ([`SegmentFacts::first_entry_needs_reread`]).
pub const FIRST_ENTRY_READS_MAX: usize = 3;

impl SegmentFacts {
    /// True if the first entry position holds neither zeros nor a header
    /// that verifies: what a transient read fault makes of zeros, and what
    /// [`SegmentFacts::holds_data`] takes for damaged data. Recovery and
    /// the scan then read it again (up to [`FIRST_ENTRY_READS_MAX`] times,
    /// until two reads agree), so one flipped bit in one read does not
    /// refuse an open that a retry would let through.
    pub fn first_entry_needs_reread(&self) -> bool {
        !self.first_entry.iter().all(|b| *b == 0) && self.check_first_entry().is_err()
    }

    /// The first entry position checked as a write's first header, keyed
    /// by the segment header's journal id read raw (the header itself may
    /// not verify).
    fn check_first_entry(&self) -> Result<EntryHeader, HeaderFault> {
        let mut journal_id = [0u8; 16];
        if let Some(raw) = self.header_block.get(72..88) {
            journal_id.copy_from_slice(raw);
        }
        check_entry_header(
            &self.first_entry,
            &journal_id,
            self.generation,
            SEGMENT_DATA_OFFSET,
            self.len.max(SEGMENT_DATA_OFFSET + BLOCK_BYTES),
            ENTRY_BYTES_MAX_LIMIT,
        )
    }

    /// True if the first entry position holds a verifying write start, or
    /// anything but zeros (data whose header was damaged).
    pub fn holds_data(&self) -> bool {
        if self.first_entry.iter().all(|b| *b == 0) {
            return false;
        }
        // Anything non-zero at the first entry's place is data (a write
        // start, or one damaged) unless it is a stale header of another
        // generation, which a recycled file could hold.
        !matches!(self.check_first_entry(), Err(HeaderFault::StaleGeneration))
    }
}

/// One segment of the log and where its scan must stop.
#[derive(Debug, Clone)]
pub struct PlannedSegment {
    /// Its generation.
    pub generation: u64,
    /// Its path.
    pub path: PathBuf,
    /// Its verified header.
    pub header: SegmentHeader,
    /// Where its data ends, when known: the next segment's `prev_end`, or
    /// the superblock's record (a clean close, a salvage). Every byte before
    /// it must verify; nothing after it is read. `None`: the last segment,
    /// whose end the scan finds.
    pub sealed_end: Option<u64>,
}

/// A file recovery removes, and why a crash explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// The file.
    pub path: PathBuf,
    /// Why it may go.
    pub reason: &'static str,
}

/// The superblock a plan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundSuperblock {
    /// Its contents.
    pub superblock: JournalSuperblock,
    /// Its sequence number.
    pub sequence: u64,
    /// Copies that did not verify or were older (recovery rewrites them
    /// before it changes anything else).
    pub damaged_copies: Vec<CopyFault>,
    /// A copy holding the chosen state.
    pub newest_copy: usize,
}

/// What makes up the log, decided from the directory alone.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The superblock; `None` for a directory holding no journal yet.
    pub superblock: Option<FoundSuperblock>,
    /// The segments to scan, oldest first.
    pub segments: Vec<PlannedSegment>,
    /// Files a crash left behind, to be removed.
    pub leftovers: Vec<Leftover>,
    /// Files that are not the journal's (reported, never opened).
    pub stray: Vec<PathBuf>,
}

/// Decides what makes up the journal in `dir`.
///
/// `superblock_bytes` is the superblock file's content (`None`: no such
/// file); `segments` holds what was read of each segment in
/// `names.generations`; `owner` is who the caller expects to own the
/// journal (`None`: anyone).
pub fn plan(
    dir: &Path,
    names: &Names,
    superblock_bytes: Option<&[u8]>,
    segments: &[SegmentFacts],
    owner: Option<JournalOwner>,
) -> Result<Plan, Refusal> {
    let sb_path = dir.join(SUPERBLOCK_FILE_NAME);
    let stray = names.stray.iter().map(|n| dir.join(n)).collect();
    let mut leftovers = crash_leftovers(dir, names);
    let Some(bytes) = superblock_bytes else {
        if let Some(first) = names.generations.first() {
            return Err(damage(
                &sb_path,
                0,
                format!(
                    "the superblock is missing, but segment files exist (from {})",
                    segment_file_name(*first)
                ),
            ));
        }
        return Ok(Plan {
            superblock: None,
            segments: Vec::new(),
            leftovers,
            stray,
        });
    };
    let chosen = match superblock::decode(bytes, SuperblockKind::Journal) {
        Ok(chosen) => chosen,
        Err(SuperblockFault::UnsupportedVersion(found)) => {
            return Err(Refusal::UnsupportedVersion {
                path: sb_path,
                found,
                supported: superblock::SUPERBLOCK_VERSION,
            })
        }
        Err(fault) => {
            let offset = match &fault {
                SuperblockFault::Damaged(faults) => faults.first().map_or(0, |f| f.offset),
                _ => 0,
            };
            return Err(damage(&sb_path, offset, fault.to_string()));
        }
    };
    let sb = JournalSuperblock::decode(&chosen.body)
        .map_err(|reason| damage(&sb_path, superblock::SUPERBLOCK_HEADER_BYTES as u64, reason))?;
    if chosen.sequence >= superblock::SUPERBLOCK_SEQUENCE_MAX {
        // Only forged bytes hold it, and the updates after it would
        // overflow.
        return Err(damage(
            &sb_path,
            superblock::SUPERBLOCK_COPY_BYTES * chosen.newest_copy as u64 + 16,
            format!(
                "superblock sequence {} is at or above {}, which no journal reaches",
                chosen.sequence,
                superblock::SUPERBLOCK_SEQUENCE_MAX
            ),
        ));
    }
    // A journal that holds nothing (no entry anywhere, no watermark, no
    // hard state) has nothing to mix up: it takes the owner it is given (a
    // fresh shard joining a domain). Any other is refused.
    let holds_data = sb.watermark > 0
        || !sb.hard_state.is_empty()
        || segments.iter().any(SegmentFacts::holds_data);
    if let (Some(expected), Some(found), true) = (owner, sb.owner, holds_data) {
        if !expected.agrees_with(&found) {
            return Err(Refusal::WrongOwner {
                path: sb_path,
                recorded: found,
                expected,
            });
        }
    }
    let facts = |generation: u64| segments.iter().find(|f| f.generation == generation);
    let (first, last) = (sb.first_generation, sb.last_generation);
    let mut planned: Vec<PlannedSegment> = Vec::new();
    for &generation in &names.generations {
        let path = dir.join(segment_file_name(generation));
        if first != 0 && generation < first {
            leftovers.push(Leftover {
                path,
                reason:
                    "a retired segment (kept for recycling, or its removal interrupted by a crash)",
            });
        } else if generation > last + 1 {
            return Err(damage(
                &path,
                0,
                format!(
                    "segment {generation} is not recorded in the superblock (it records {})",
                    recorded(first, last)
                ),
            ));
        }
    }
    if first != 0 {
        for generation in first..=last {
            let path = dir.join(segment_file_name(generation));
            let Some(f) = facts(generation) else {
                return Err(damage(
                    &path,
                    0,
                    format!(
                        "segment file is missing; the superblock records {}",
                        recorded(first, last)
                    ),
                ));
            };
            let header = checked_header(&path, f, &sb)?;
            planned.push(PlannedSegment {
                generation,
                path,
                header,
                sealed_end: sb.end_of(generation),
            });
        }
    }
    let next = last + 1;
    if let Some(f) = facts(next) {
        let path = dir.join(segment_file_name(next));
        match check_segment_header(&f.header_block, next) {
            // A rollover or open that crashed before its superblock update:
            // no write went to it.
            SegmentHeaderStatus::Valid(_) if !f.holds_data() => {
                let header = checked_header(&path, f, &sb)?;
                planned.push(PlannedSegment {
                    generation: next,
                    path,
                    header,
                    sealed_end: None,
                });
            }
            SegmentHeaderStatus::Unverified if !f.holds_data() => leftovers.push(Leftover {
                path,
                reason: "a segment whose creation did not complete (no header, no data)",
            }),
            _ => {
                return Err(damage(
                    &path,
                    0,
                    format!(
                        "segment {next} holds data but the superblock does not record it (it \
                         records {})",
                        recorded(first, last)
                    ),
                ))
            }
        }
    }
    // Each header bounds its predecessor.
    for i in 1..planned.len() {
        let (before, after) = planned.split_at_mut(i);
        let prev = &mut before[i - 1];
        let header = &after[0].header;
        if header.prev_generation.get() != prev.generation {
            return Err(damage(
                &after[0].path,
                0,
                format!(
                    "segment header names previous generation {}, expected {}",
                    header.prev_generation.get(),
                    prev.generation
                ),
            ));
        }
        let prev_end = header.prev_end.get();
        if let Some(recorded_end) = prev.sealed_end {
            if recorded_end != prev_end {
                return Err(damage(
                    &sb_path,
                    0,
                    format!(
                        "the superblock records the end of {} at {recorded_end}, the next \
                         segment's header at {prev_end}",
                        segment_file_name(prev.generation)
                    ),
                ));
            }
        }
        prev.sealed_end = Some(prev_end);
    }
    Ok(Plan {
        superblock: Some(FoundSuperblock {
            superblock: sb,
            sequence: chosen.sequence,
            damaged_copies: chosen.stale_or_damaged,
            newest_copy: chosen.newest_copy,
        }),
        segments: planned,
        leftovers,
        stray,
    })
}

fn recorded(first: u64, last: u64) -> String {
    if first == 0 {
        "no segments".into()
    } else {
        format!("generations {first}..={last}")
    }
}

/// [`plan`]'s checks of one segment the log must hold — its header
/// verifies ([`check_segment_header`]), it belongs to journal `journal_id`,
/// and the file is as long as its header says — for drivers that carry on
/// past a refusal ([`crate::inspect`], [`crate::salvage`]) and so cannot
/// take [`plan`]'s all-or-nothing answer. The same words as [`plan`]'s.
pub fn check_log_segment(
    path: &Path,
    facts: &SegmentFacts,
    journal_id: [u8; 16],
) -> Result<SegmentHeader, Refusal> {
    checked_header(path, facts, &JournalSuperblock::new(journal_id, None))
}

/// The verified header of a segment the superblock says must exist, or
/// why it is damage.
fn checked_header(
    path: &Path,
    facts: &SegmentFacts,
    sb: &JournalSuperblock,
) -> Result<SegmentHeader, Refusal> {
    let header = match check_segment_header(&facts.header_block, facts.generation) {
        SegmentHeaderStatus::Valid(header) => header,
        SegmentHeaderStatus::Unverified => {
            let reason = if facts.len == 0 {
                "segment file is empty (zero length)".to_string()
            } else {
                format!(
                    "segment header does not verify (file of {} bytes)",
                    facts.len
                )
            };
            return Err(damage(path, 0, reason));
        }
        SegmentHeaderStatus::Damaged { offset, reason } => {
            return Err(damage(path, offset, reason))
        }
        SegmentHeaderStatus::UnsupportedVersion(found) => {
            return Err(Refusal::UnsupportedVersion {
                path: path.to_path_buf(),
                found,
                supported: FORMAT_VERSION,
            })
        }
    };
    if header.journal_id != sb.journal_id {
        return Err(damage(
            path,
            0,
            "segment belongs to another journal (its journal id differs from the superblock's)",
        ));
    }
    let segment_bytes = header.segment_bytes.get();
    if facts.len != segment_bytes {
        return Err(damage(
            path,
            facts.len.min(segment_bytes),
            format!(
                "segment file is {} bytes, its header says {segment_bytes} (segments are \
                 preallocated before their header is written, so no crash shortens one)",
                facts.len
            ),
        ));
    }
    Ok(header)
}

/// What the scanner asks for or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Pass the bytes `[pos, pos + len)` of the file (fewer at its end) to
    /// the next [`SegmentScanner::step`]. `again`: read them from the device
    /// again, not from what the driver holds (a re-read before a verdict,
    /// so a transient read error cuts nothing). `sparse`: the scan is
    /// skipping from index to index ([`SegmentScanner::indexed`]), so
    /// reading ahead of `pos + len` is likely wasted.
    Read {
        /// Offset.
        pos: u64,
        /// Length.
        len: u64,
        /// Read afresh.
        again: bool,
        /// Skipping through the file.
        sparse: bool,
    },
    /// An entry that verified (data, watermark, truncation, hard state,
    /// a write's index or padding). An entry learnt from its write's index
    /// ([`SegmentScanner::indexed`]) has not had its own header or payload
    /// read: its `checksum` field is zero.
    Entry(EntryHeader),
    /// The scan of the segment is over.
    Done(SegmentOutcome),
}

/// How a segment's scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentOutcome {
    /// Reached its sealed end (see [`PlannedSegment::sealed_end`]).
    Sealed {
        /// End of its data.
        end: u64,
    },
    /// The last segment: zeroed space after the last entry, and nothing but
    /// zeros within reach (decision table row 1), or the end of the file.
    /// In a recycled segment ([`SEGMENT_FLAG_RECYCLED`]) the space after the
    /// last entry holds the older segment's bytes: no header of this
    /// generation, there or within reach.
    Clean {
        /// End of its data.
        end: u64,
    },
    /// The last segment ends in bytes that do not verify and that nothing
    /// proves durable: recovery cuts them (rows 2–4, 13; `Strict` refuses).
    Cut(TailCut),
    /// Damage where valid data must be.
    Damaged {
        /// Where.
        offset: u64,
        /// What.
        reason: String,
    },
}

/// A tail recovery cuts, with what might have been acknowledged in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailCut {
    /// Where the log now ends.
    pub offset: u64,
    /// What did not verify there.
    pub reason: String,
    /// Data entries in the cut bytes whose headers still verify: the lowest
    /// and highest op among them.
    pub ops: Option<(u64, u64)>,
    /// How many such entries.
    pub entries: u64,
    /// The segment was written without fdatasync (`NoSync`): its tail is
    /// not protected against power loss at all.
    pub no_sync: bool,
}

#[derive(Debug, Clone)]
enum Phase {
    Header {
        again: bool,
    },
    Payload {
        header: EntryHeader,
        again: bool,
    },
    Evidence {
        fault: Fault,
    },
    /// Walking by index: the first header of the write at `pos` was asked for.
    WriteFirst,
    /// Walking by index: the header of the write's index was asked for.
    IndexHeader {
        first: EntryHeader,
    },
    /// Walking by index: the index's records were asked for.
    IndexRecords {
        first: EntryHeader,
        index: EntryHeader,
    },
    /// Walking by index: what the walk reads of a write beyond its first
    /// header and index was asked for — a hard-state payload (the last of
    /// `checks.hard_states`) or else the padding header.
    WriteChecks {
        walked: IndexedWrite,
        durable_before: u64,
        checks: WriteChecks,
    },
    /// Handing out the entries of vouched-for writes, then walking on
    /// (`walk`) or scanning in full.
    Drain {
        walk: bool,
    },
    Finished,
}

#[derive(Debug, Clone)]
struct Fault {
    offset: u64,
    reason: &'static str,
    /// The bytes can be space no write of this segment reached: zeros, or
    /// in a recycled segment also the older segment's bytes (see
    /// [`SegmentScanner::unwritten`]).
    unwritten: bool,
    misplaced: bool,
}

/// A write the full scan is inside of: where its index must be, and the
/// records its index must hold (as a running checksum and a count).
#[derive(Debug, Clone)]
struct OpenWrite {
    index_at: u64,
    records: crc32fast::Hasher,
    count: u64,
}

/// What the walk by index reads of a write besides its first header and
/// its index: its hard-state payloads `(pos, len, checksum)`, checked last
/// first, then its padding header, if any.
#[derive(Debug, Clone)]
struct WriteChecks {
    hard_states: Vec<(u64, u64, u32)>,
    padding_at: Option<u64>,
}

/// A write learnt from its index that no later write has vouched for yet.
#[derive(Debug, Clone)]
struct IndexedWrite {
    start: u64,
    end: u64,
    entries: Vec<EntryHeader>,
}

/// Walks one segment's entries (sans-IO): see the module docs.
///
/// [`SegmentScanner::new`] reads every byte: each header and payload is
/// verified, and each write's index is checked against the entries before
/// it. [`SegmentScanner::indexed`] (recovery) reads only each write's first
/// header, its index, its padding header and any hard-state payload for as
/// long as a later write — or the segment's sealed end — vouches for the
/// writes walked so far; the writes nothing vouches for yet, and any write
/// of which one of those does not verify, are scanned in full, so the
/// verdict on the tail and on damaged structure is the full scan's. What
/// the indexed walk does not read — data payloads and non-first entry
/// headers of vouched-for writes — is verified when an entry is read, by
/// the scrubber and by `ringstore wal verify`.
#[derive(Debug, Clone)]
pub struct SegmentScanner {
    header: SegmentHeader,
    limit: u64,
    sealed: bool,
    pos: u64,
    expect_first: bool,
    expect_padding: bool,
    write: Option<OpenWrite>,
    phase: Phase,
    search: Option<EvidenceSearch>,
    /// The search as it began, for its second pass (see `on_evidence`).
    search_restart: Option<EvidenceSearch>,
    transient_read_faults: u64,
    pending: std::collections::VecDeque<IndexedWrite>,
    ready: std::collections::VecDeque<EntryHeader>,
}

impl SegmentScanner {
    /// A scan of every byte of the segment with this (verified) header;
    /// `sealed_end` as in [`PlannedSegment`].
    pub fn new(header: &SegmentHeader, sealed_end: Option<u64>) -> SegmentScanner {
        let segment_bytes = header.segment_bytes.get();
        SegmentScanner {
            header: *header,
            limit: sealed_end.unwrap_or(segment_bytes).min(segment_bytes),
            sealed: sealed_end.is_some(),
            pos: SEGMENT_DATA_OFFSET,
            expect_first: true,
            expect_padding: false,
            write: None,
            phase: Phase::Header { again: false },
            search: None,
            search_restart: None,
            transient_read_faults: 0,
            pending: std::collections::VecDeque::new(),
            ready: std::collections::VecDeque::new(),
        }
    }

    /// A scan that walks from index to index where later writes vouch for
    /// the earlier ones (see the type's docs).
    pub fn indexed(header: &SegmentHeader, sealed_end: Option<u64>) -> SegmentScanner {
        // Writes acknowledged without fdatasync vouch for nothing: without a
        // recorded end, the walk would gather the whole segment only to
        // scan it again.
        let no_sync = header.flags.get() & SEGMENT_FLAG_NO_SYNC != 0;
        SegmentScanner {
            phase: Phase::Drain {
                walk: !(no_sync && sealed_end.is_none()),
            },
            ..SegmentScanner::new(header, sealed_end)
        }
    }

    /// Where the valid entries scanned so far end.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Entries that failed verification once but verified when read again.
    pub fn transient_read_faults(&self) -> u64 {
        self.transient_read_faults
    }

    /// The first call passes `None`; every call after a [`Step::Read`]
    /// passes the bytes read; after [`Step::Entry`] pass `None`.
    pub fn step(&mut self, input: Option<&[u8]>) -> Step {
        match std::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::Header { again } => match input {
                None => self.read_header(again),
                Some(bytes) => self.on_header(bytes, again),
            },
            Phase::Payload { header, again } => match input {
                None => {
                    self.phase = Phase::Payload { header, again };
                    Step::Read {
                        pos: self.pos + ENTRY_HEADER_BYTES as u64,
                        len: u64::from(header.payload_len.get()),
                        again,
                        sparse: false,
                    }
                }
                Some(bytes) => self.on_payload(header, bytes, again),
            },
            Phase::Evidence { fault } => self.on_evidence(fault, input),
            Phase::WriteFirst => match input {
                None => self.walk(),
                Some(bytes) => self.on_write_first(bytes),
            },
            Phase::IndexHeader { first } => match input {
                None => self.leave_index(),
                Some(bytes) => self.on_index_header(first, bytes),
            },
            Phase::IndexRecords { first, index } => match input {
                None => self.leave_index(),
                Some(bytes) => self.on_index_records(first, index, bytes),
            },
            Phase::WriteChecks {
                walked,
                durable_before,
                checks,
            } => match input {
                None => self.leave_index(),
                Some(bytes) => self.on_write_check(walked, durable_before, checks, bytes),
            },
            Phase::Drain { walk } => self.drain(walk),
            Phase::Finished => panic!("SegmentScanner::step after Done"),
        }
    }

    /// Whether `bytes`, a header that failed with `fault`, may lie in space
    /// no write of this segment reached. Zeros always. In a recycled
    /// segment also a header of an older generation, and bytes that are no
    /// header at all (the older segment's payloads): a write of this
    /// generation that reached the disk at least in part leaves a header of
    /// this generation, which the search past the fault looks for. A header
    /// of a later generation is no older segment's: data.
    fn unwritten(&self, fault: HeaderFault, bytes: &[u8]) -> bool {
        let recycled = self.header.flags.get() & SEGMENT_FLAG_RECYCLED != 0;
        match fault {
            HeaderFault::Zeroed => true,
            HeaderFault::Checksum => recycled,
            HeaderFault::StaleGeneration => {
                recycled && is_older_generation(bytes, self.header.generation.get())
            }
            HeaderFault::Misplaced | HeaderFault::Invalid => false,
        }
    }

    fn check_header(&self, bytes: &[u8], offset: u64) -> Result<EntryHeader, HeaderFault> {
        check_entry_header(
            bytes,
            &self.header.journal_id,
            self.header.generation.get(),
            offset,
            self.header.segment_bytes.get(),
            // Not the configured entry_bytes_max: the journal may have been
            // written with a larger one.
            ENTRY_BYTES_MAX_LIMIT,
        )
    }

    /// Walking by index: asks for the next write's first header.
    fn walk(&mut self) -> Step {
        if self.pos + ENTRY_HEADER_BYTES as u64 > self.limit {
            return self.leave_index();
        }
        self.phase = Phase::WriteFirst;
        Step::Read {
            pos: self.pos,
            len: ENTRY_HEADER_BYTES as u64,
            again: false,
            sparse: true,
        }
    }

    fn on_write_first(&mut self, bytes: &[u8]) -> Step {
        let first = match self.check_header(bytes, self.pos) {
            Ok(first) if first.flags & FLAG_FIRST_IN_WRITE != 0 => first,
            _ => return self.leave_index(),
        };
        // A verified write start proves its `durable_before` whatever
        // follows it (the evidence a full scan looks for past damage): the
        // writes that end there are vouched for even if this one is cut.
        // Otherwise a write vouched for at one open could be read in full
        // at the next, once a cut ends the segment inside this write.
        self.vouch(u64::from(first.durable_before.get()));
        let index_at = u64::from(first.index_at.get());
        if index_at + ENTRY_HEADER_BYTES as u64 > self.limit {
            return self.leave_index();
        }
        self.phase = Phase::IndexHeader { first };
        Step::Read {
            pos: index_at,
            len: ENTRY_HEADER_BYTES as u64,
            again: false,
            sparse: true,
        }
    }

    fn on_index_header(&mut self, first: EntryHeader, bytes: &[u8]) -> Step {
        let index_at = u64::from(first.index_at.get());
        let index = match self.check_header(bytes, index_at) {
            Ok(index)
                if index.entry_kind() == Some(EntryKind::WriteIndex)
                    && index_at + index.footprint() <= self.limit =>
            {
                index
            }
            _ => return self.leave_index(),
        };
        self.phase = Phase::IndexRecords { first, index };
        Step::Read {
            pos: index_at + ENTRY_HEADER_BYTES as u64,
            len: u64::from(index.payload_len.get()),
            again: false,
            sparse: true,
        }
    }

    fn on_index_records(&mut self, first: EntryHeader, index: EntryHeader, bytes: &[u8]) -> Step {
        let index_at = u64::from(first.index_at.get());
        if bytes.len() as u64 != u64::from(index.payload_len.get())
            || crc32fast::hash(bytes) != index.payload_checksum.get()
            || index.op.get() != (bytes.len() / INDEX_RECORD_BYTES) as u64
        {
            return self.leave_index();
        }
        let mut offset = self.pos;
        let mut entries = Vec::with_capacity(bytes.len() / INDEX_RECORD_BYTES);
        for (i, chunk) in bytes.chunks_exact(INDEX_RECORD_BYTES).enumerate() {
            let record = IndexRecord::read_from_bytes(chunk).expect("a record's size");
            let header = EntryHeader {
                checksum: 0.into(),
                magic: ENTRY_MAGIC.into(),
                op: record.op,
                epoch: record.epoch,
                generation: self.header.generation,
                offset: (offset as u32).into(),
                payload_len: record.payload_len,
                payload_checksum: record.payload_checksum,
                durable_before: if i == 0 {
                    first.durable_before
                } else {
                    0.into()
                },
                kind: record.kind,
                flags: if i == 0 { FLAG_FIRST_IN_WRITE } else { 0 },
                index_at: if i == 0 { first.index_at } else { 0.into() },
                reserved: [0; 2],
            };
            let len = u64::from(record.payload_len.get());
            let valid = record.reserved == [0; 7]
                && match record_kind(&record) {
                    Some(EntryKind::Data) => len <= ENTRY_BYTES_MAX_LIMIT,
                    Some(EntryKind::Watermark | EntryKind::Truncate) => len == 0,
                    Some(EntryKind::HardState) => len <= HARD_STATE_BYTES_MAX as u64,
                    _ => false,
                };
            if !valid || (i == 0 && IndexRecord::of(&first) != record) {
                return self.leave_index();
            }
            offset += header.footprint();
            if offset > index_at {
                return self.leave_index();
            }
            entries.push(header);
        }
        let index_end = index_at + index.footprint();
        let end = write_end(index_end);
        if offset != index_at || end > self.limit {
            return self.leave_index();
        }
        let walked = IndexedWrite {
            start: self.pos,
            end,
            entries,
        };
        let durable_before = u64::from(first.durable_before.get());
        // Of a vouched-for write, recovery leaves only what the read of an
        // entry verifies unread: the padding header is read, and so is a
        // hard-state payload, which recovery uses.
        let checks = WriteChecks {
            hard_states: walked
                .entries
                .iter()
                .filter(|e| e.entry_kind() == Some(EntryKind::HardState))
                .map(|e| {
                    (
                        u64::from(e.offset.get()) + ENTRY_HEADER_BYTES as u64,
                        u64::from(e.payload_len.get()),
                        e.payload_checksum.get(),
                    )
                })
                .collect(),
            padding_at: (index_end < end).then_some(index_end),
        };
        self.next_write_check(walked, durable_before, checks)
    }

    fn next_write_check(
        &mut self,
        walked: IndexedWrite,
        durable_before: u64,
        checks: WriteChecks,
    ) -> Step {
        let (pos, len) = match (checks.hard_states.last(), checks.padding_at) {
            (Some(&(pos, len, _)), _) => (pos, len),
            (None, Some(padding_at)) => (padding_at, ENTRY_HEADER_BYTES as u64),
            (None, None) => return self.walked(walked, durable_before),
        };
        self.phase = Phase::WriteChecks {
            walked,
            durable_before,
            checks,
        };
        Step::Read {
            pos,
            len,
            again: false,
            sparse: true,
        }
    }

    fn on_write_check(
        &mut self,
        walked: IndexedWrite,
        durable_before: u64,
        mut checks: WriteChecks,
        bytes: &[u8],
    ) -> Step {
        if let Some((_, len, checksum)) = checks.hard_states.pop() {
            if bytes.len() as u64 != len || crc32fast::hash(bytes) != checksum {
                return self.leave_index();
            }
            return self.next_write_check(walked, durable_before, checks);
        }
        let padding_at = checks.padding_at.expect("a check was asked for");
        match self.check_header(bytes, padding_at) {
            Ok(padding)
                if padding.entry_kind() == Some(EntryKind::Padding)
                    && padding_at + padding.footprint() == walked.end =>
            {
                self.walked(walked, durable_before)
            }
            _ => self.leave_index(),
        }
    }

    /// A write learnt from its index: it vouches for the earlier writes
    /// that end at its `durable_before` (a write is issued only once
    /// everything before that offset is durable; see the recovery module,
    /// "What can be cut"), and waits for a later one to vouch for it.
    fn walked(&mut self, walked: IndexedWrite, durable_before: u64) -> Step {
        self.vouch(durable_before);
        self.pos = walked.end;
        self.pending.push_back(walked);
        self.drain(true)
    }

    /// The pending writes that end at or before `durable_before` are
    /// vouched for: their entries are ready.
    fn vouch(&mut self, durable_before: u64) {
        while self
            .pending
            .front()
            .is_some_and(|w| w.end <= durable_before)
        {
            let vouched = self.pending.pop_front().expect("checked above");
            self.ready.extend(vouched.entries);
        }
    }

    /// Ends the walk by index: at a sealed end every write walked is
    /// vouched for; otherwise the writes nothing vouched for yet, and what
    /// stopped the walk, are scanned in full.
    fn leave_index(&mut self) -> Step {
        if self.sealed && self.pos == self.limit {
            for vouched in self.pending.drain(..) {
                self.ready.extend(vouched.entries);
            }
        } else if let Some(unvouched) = self.pending.front() {
            self.pos = unvouched.start;
            self.pending.clear();
        }
        self.expect_first = true;
        self.drain(false)
    }

    fn drain(&mut self, walk: bool) -> Step {
        if let Some(entry) = self.ready.pop_front() {
            self.phase = Phase::Drain { walk };
            return Step::Entry(entry);
        }
        if walk {
            self.walk()
        } else {
            self.read_header(false)
        }
    }

    fn read_header(&mut self, again: bool) -> Step {
        if self.pos + ENTRY_HEADER_BYTES as u64 > self.limit {
            self.phase = Phase::Finished;
            let end = self.pos;
            return Step::Done(if self.sealed {
                SegmentOutcome::Sealed { end }
            } else {
                SegmentOutcome::Clean { end }
            });
        }
        self.phase = Phase::Header { again };
        Step::Read {
            pos: self.pos,
            len: ENTRY_HEADER_BYTES as u64,
            again,
            sparse: false,
        }
    }

    /// Whether a verified header may stand at `pos` given the write it is
    /// in: entries tile a write from its first header up to its index, the
    /// index is followed by padding unless it ends on a block boundary.
    fn fits_write(&self, header: &EntryHeader) -> bool {
        let first = header.flags & FLAG_FIRST_IN_WRITE != 0;
        match (header.entry_kind(), &self.write) {
            (Some(EntryKind::Padding), _) => self.expect_padding,
            _ if self.expect_padding => false,
            _ if first => self.write.is_none(),
            (Some(EntryKind::WriteIndex), Some(write)) => self.pos == write.index_at,
            (Some(_), Some(write)) => self.pos + header.footprint() <= write.index_at,
            _ => false,
        }
    }

    fn on_header(&mut self, bytes: &[u8], again: bool) -> Step {
        let checked = match self.check_header(bytes, self.pos) {
            Ok(h) if self.expect_first && h.flags & FLAG_FIRST_IN_WRITE == 0 => {
                Err(HeaderFault::Invalid)
            }
            Ok(h) if self.pos + h.footprint() > self.limit || !self.fits_write(&h) => {
                Err(HeaderFault::Invalid)
            }
            other => other,
        };
        match checked {
            Ok(header) if header.entry_kind().is_some_and(EntryKind::carries_payload) => {
                self.phase = Phase::Payload { header, again };
                Step::Read {
                    pos: self.pos + ENTRY_HEADER_BYTES as u64,
                    len: u64::from(header.payload_len.get()),
                    again,
                    sparse: false,
                }
            }
            Ok(header) => self.accept(header, again),
            Err(fault) => self.on_fault(
                Fault {
                    offset: self.pos,
                    reason: fault.describe(),
                    unwritten: self.unwritten(fault, bytes),
                    misplaced: fault == HeaderFault::Misplaced,
                },
                again,
                None,
            ),
        }
    }

    fn on_payload(&mut self, header: EntryHeader, bytes: &[u8], again: bool) -> Step {
        let len = u64::from(header.payload_len.get());
        if bytes.len() as u64 == len && crc32fast::hash(bytes) == header.payload_checksum.get() {
            return self.accept(header, again);
        }
        self.on_fault(
            Fault {
                offset: self.pos,
                reason: "payload checksum mismatch",
                unwritten: false,
                misplaced: false,
            },
            again,
            Some(header),
        )
    }

    fn accept(&mut self, header: EntryHeader, again: bool) -> Step {
        let end = self.pos + header.footprint();
        match header.entry_kind() {
            Some(EntryKind::Padding) => {
                self.expect_padding = false;
                self.expect_first = true;
            }
            Some(EntryKind::WriteIndex) => {
                let write = self.write.as_ref().expect("fits_write: inside a write");
                if write.count != header.op.get()
                    || write.records.clone().finalize() != header.payload_checksum.get()
                {
                    let fault = Fault {
                        offset: self.pos,
                        reason: "write index does not list the entries of its write",
                        unwritten: false,
                        misplaced: false,
                    };
                    return self.on_fault(fault, again, None);
                }
                self.write = None;
                self.expect_padding = !end.is_multiple_of(BLOCK_BYTES);
                self.expect_first = !self.expect_padding;
            }
            _ => {
                if header.flags & FLAG_FIRST_IN_WRITE != 0 {
                    self.write = Some(OpenWrite {
                        index_at: u64::from(header.index_at.get()),
                        records: crc32fast::Hasher::new(),
                        count: 0,
                    });
                }
                let write = self.write.as_mut().expect("fits_write: inside a write");
                write.records.update(IndexRecord::of(&header).as_bytes());
                write.count += 1;
                self.expect_first = false;
            }
        }
        if again {
            self.transient_read_faults += 1;
        }
        self.pos = end;
        self.phase = Phase::Header { again: false };
        Step::Entry(header)
    }

    fn on_fault(&mut self, fault: Fault, again: bool, header: Option<EntryHeader>) -> Step {
        if !again {
            // Read the bytes again before deciding anything: a transient read
            // error must not cut acknowledged entries.
            return self.read_header(true);
        }
        if self.sealed || fault.misplaced {
            // Row 6: a later segment or the superblock vouches for these
            // bytes. Row 12: bytes meant for another offset are a
            // misdirected write, which no crash produces.
            return self.finish(SegmentOutcome::Damaged {
                offset: fault.offset,
                reason: fault.reason.to_string(),
            });
        }
        let mut search = EvidenceSearch::new(&self.header, fault.offset);
        if let Some(h) = header {
            search.note_cut_entry(&h);
        }
        if !fault.unwritten {
            search.saw_data = true;
        }
        self.search_restart = Some(search.clone());
        self.search = Some(search);
        self.on_evidence(fault, None)
    }

    fn on_evidence(&mut self, fault: Fault, input: Option<&[u8]>) -> Step {
        let search = self
            .search
            .as_mut()
            .expect("an evidence phase has a search");
        if let Some(bytes) = input {
            let candidate = search.candidate;
            if let Some((later, what)) = search.examine(candidate, bytes) {
                let reason = format!("{}, but {what} at offset {later}", fault.reason);
                return self.finish(SegmentOutcome::Damaged {
                    offset: fault.offset,
                    reason,
                });
            }
        }
        if let Some(candidate) = search.next_candidate() {
            return self.read_evidence(fault, candidate, false);
        }
        // No evidence within reach: before a cut (or a clean end) is
        // decided on it, the search runs once more on bytes read afresh,
        // since one transient fault in the one header that vouches for the
        // damage would otherwise turn a refusal into a cut. What either
        // pass saw of data counts.
        if let Some(mut restart) = self.search_restart.take() {
            restart.saw_data |= search.saw_data;
            *search = restart;
            if let Some(candidate) = search.next_candidate() {
                return self.read_evidence(fault, candidate, true);
            }
        }
        let no_sync = self.header.flags.get() & SEGMENT_FLAG_NO_SYNC != 0;
        let outcome = if fault.unwritten && !search.saw_data {
            // Row 1.
            SegmentOutcome::Clean { end: fault.offset }
        } else {
            // Rows 2–4 and 13.
            SegmentOutcome::Cut(TailCut {
                offset: fault.offset,
                reason: fault.reason.to_string(),
                ops: search.cut_ops,
                entries: search.cut_entries,
                no_sync,
            })
        };
        self.pos = fault.offset;
        self.finish(outcome)
    }

    /// Asks for the header-sized bytes at `candidate` of the search for
    /// evidence about `fault` (`again`: read afresh, not from the window).
    fn read_evidence(&mut self, fault: Fault, candidate: u64, again: bool) -> Step {
        self.phase = Phase::Evidence { fault };
        Step::Read {
            pos: candidate,
            len: ENTRY_HEADER_BYTES as u64,
            again,
            sparse: false,
        }
    }

    fn finish(&mut self, outcome: SegmentOutcome) -> Step {
        self.phase = Phase::Finished;
        if let SegmentOutcome::Damaged { offset, .. } = outcome {
            self.pos = offset;
        }
        Step::Done(outcome)
    }
}

/// Whether `bytes`, an entry header that verifies but names another
/// generation, names one older than `generation`.
fn is_older_generation(bytes: &[u8], generation: u64) -> bool {
    EntryHeader::read_from_prefix(bytes).is_ok_and(|(h, _)| h.generation.get() < generation)
}

fn record_kind(record: &IndexRecord) -> Option<EntryKind> {
    EntryKind::from_u8(record.kind)
}

/// The search past damage at `offset` of the last segment: for proof that
/// the damaged bytes were durable, and for what a cut would remove.
///
/// * A write start (a verifying header flagged first-in-write, at its own
///   offset) whose `durable_before` lies past the damage: when that write
///   was issued, the damaged bytes were durable — acknowledged data. A
///   write is issued only once fewer than `writes_in_flight` (D) writes are
///   unfinished, and writes finish in order, so the D-th write after a
///   finished one always vouches for it; it starts at most
///   D × `batch_bytes_max` after the damaged write's start, which is at or
///   before `offset`. That bounds the search.
/// * A verifying header of this generation at an 8-byte position other
///   than the offset it names: a misdirected write. A torn write leaves
///   sectors at their own offsets or none, so no crash produces it.
///
/// On the way it notes whether a write reached the disk there, at least in
/// part — any byte in reach is non-zero, or in a recycled segment (whose
/// space holds an older segment's bytes) a header of this generation lies
/// in reach — and which data entries still verify there (ops a cut would
/// remove, which may have been acknowledged).
#[derive(Debug, Clone)]
pub struct EvidenceSearch {
    journal_id: [u8; 16],
    generation: u64,
    segment_bytes: u64,
    damage_offset: u64,
    reach: u64,
    candidate: u64,
    /// The segment is recycled: non-zero bytes prove nothing.
    recycled: bool,
    saw_data: bool,
    cut_ops: Option<(u64, u64)>,
    cut_entries: u64,
}

impl EvidenceSearch {
    /// A search for evidence after damage at `offset` of `segment`.
    pub fn new(segment: &SegmentHeader, offset: u64) -> EvidenceSearch {
        let depth = u64::from(segment.writes_in_flight.get());
        EvidenceSearch {
            journal_id: segment.journal_id,
            generation: segment.generation.get(),
            segment_bytes: segment.segment_bytes.get(),
            damage_offset: offset,
            reach: offset.saturating_add(depth.saturating_mul(segment.batch_bytes_max.get())),
            candidate: offset,
            recycled: segment.flags.get() & SEGMENT_FLAG_RECYCLED != 0,
            saw_data: false,
            cut_ops: None,
            cut_entries: 0,
        }
    }

    /// The next offset to read `ENTRY_HEADER_BYTES` at, or `None` when the
    /// search is out of reach.
    pub fn next_candidate(&mut self) -> Option<u64> {
        self.candidate += ENTRY_ALIGN_BYTES;
        let fits = self.candidate + ENTRY_HEADER_BYTES as u64 <= self.segment_bytes;
        (self.candidate <= self.reach && fits).then_some(self.candidate)
    }

    fn note_cut_entry(&mut self, header: &EntryHeader) {
        if header.entry_kind() != Some(EntryKind::Data) {
            return;
        }
        let op = header.op.get();
        self.cut_entries += 1;
        self.cut_ops = Some(match self.cut_ops {
            None => (op, op),
            Some((lo, hi)) => (lo.min(op), hi.max(op)),
        });
    }

    /// What the bytes read at `candidate` prove, if anything yet.
    pub fn examine(&mut self, candidate: u64, bytes: &[u8]) -> Option<(u64, &'static str)> {
        let step = (ENTRY_ALIGN_BYTES as usize).min(bytes.len());
        if !self.recycled && bytes[..step].iter().any(|b| *b != 0) {
            self.saw_data = true;
        }
        if bytes.len() < 8 || bytes[4..8] != ENTRY_MAGIC.to_le_bytes() {
            return None;
        }
        match check_entry_header(
            bytes,
            &self.journal_id,
            self.generation,
            candidate,
            self.segment_bytes,
            ENTRY_BYTES_MAX_LIMIT,
        ) {
            Ok(h) => {
                self.saw_data = true;
                self.note_cut_entry(&h);
                let vouched = u64::from(h.durable_before.get());
                (h.flags & FLAG_FIRST_IN_WRITE != 0 && vouched > self.damage_offset)
                    .then_some((candidate, "a later write records it as durable"))
            }
            Err(HeaderFault::Misplaced) => Some((candidate, "a misdirected write lies later")),
            // No older segment's bytes: a write reached the disk here.
            Err(HeaderFault::StaleGeneration) if !is_older_generation(bytes, self.generation) => {
                self.saw_data = true;
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_into_kinds() {
        let names: Vec<OsString> = [
            "segment-0000000000000002.wal",
            "segment-0000000000000001.wal",
            "segment-000000000000000A.wal",
            "superblock",
            "superblock.tmp",
            "durability-choice",
            "durability-choice.tmp",
            "durability-probe-sync",
            "notes.txt",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let sorted = classify_names(&names);
        assert_eq!(sorted.generations, vec![1, 2]);
        assert!(sorted.superblock && sorted.superblock_temp && sorted.durability_record);
        assert_eq!(
            sorted.probe_leftovers,
            vec![
                OsString::from("durability-choice.tmp"),
                OsString::from("durability-probe-sync")
            ]
        );
        assert_eq!(
            sorted.stray,
            vec![
                OsString::from("notes.txt"),
                OsString::from("segment-000000000000000A.wal")
            ]
        );
    }
}
