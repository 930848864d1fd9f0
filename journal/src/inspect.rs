//! Read-only inspection of a journal directory: what `ringstore wal
//! inspect`, `wal verify` and `wal dump` show.
//!
//! [`scan_journal`] walks the segments the way recovery does — the same
//! header checks, the same entry checks ([`check_entry_header`] and the
//! payload checksum), the same decision table (see [`crate::recovery`]) —
//! but with plain `std::fs` reads instead of the journal's storage backend:
//! it never creates, truncates, removes or locks anything, needs no glommio
//! reactor and no O_DIRECT (so it works on tmpfs, on a copy, and next to a
//! running shard), and it does not stop at the first problem. Where recovery
//! returns an error, the scan records a [`Damage`] naming the file and byte
//! offset and carries on with the next segment, so one run reports
//! everything that is wrong. Where recovery would cut a torn tail or remove
//! an incomplete last segment, the scan reports that ([`Tail::Torn`],
//! [`SegmentEnd::Incomplete`]) and changes nothing.
//!
//! The scan also checks what recovery leaves to the engine's replay: that
//! every op above the watermark up to the last op is present
//! ([`JournalReport::missing_ops`], [`JournalReport::leading_gap`]).
//!
//! Trade-off: this module restates recovery's scan loop for synchronous
//! reads (recovery's is async over [`crate::storage::Storage`] with read
//! ahead). The checks themselves are shared: entry headers through
//! [`check_entry_header`], segment headers through [`check_segment_header`].
//! The tests below pin that both agree on the decision table's rows.

use crate::config::{
    BATCH_BYTES_MAX_LIMIT, ENTRY_BYTES_MAX_LIMIT, SEGMENT_BYTES_MAX, WRITES_IN_FLIGHT_MAX,
};
use crate::format::{
    align_down, check_entry_header, EntryHeader, EntryKind, HeaderFault, SegmentHeader,
    BLOCK_BYTES, ENTRY_HEADER_BYTES, FLAG_FIRST_IN_WRITE, FORMAT_VERSION, SEGMENT_DATA_OFFSET,
    SEGMENT_FLAG_NO_SYNC, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC,
};
use crate::recovery::EvidenceSearch;
use crate::segment::{segment_file_name, segment_generation};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use zerocopy::FromBytes;

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

/// Bytes that fail verification where valid data must be: what recovery
/// reports as `Error::Corruption` (or `Error::UnsupportedVersion`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The damaged file (or the journal directory, for a missing segment).
    pub path: PathBuf,
    /// Byte offset of the damaged structure.
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
/// file, or fewer if the file is shorter): the same checks recovery makes.
pub fn check_segment_header(block: &[u8], generation: u64) -> SegmentHeaderStatus {
    if (block.len() as u64) < BLOCK_BYTES {
        return SegmentHeaderStatus::Unverified;
    }
    let Ok((header, _)) = SegmentHeader::read_from_prefix(block) else {
        return SegmentHeaderStatus::Unverified;
    };
    if header.magic.get() != SEGMENT_MAGIC || header.checksum.get() != header.compute_checksum() {
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
    if header.flags.get() & !SEGMENT_FLAG_NO_SYNC != 0 {
        return bad(
            0,
            format!("segment header has unknown flags {:#x}", header.flags.get()),
        );
    }
    SegmentHeaderStatus::Valid(header)
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
    /// Most writes in flight at once.
    pub writes_in_flight: u32,
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
            writes_in_flight: h.writes_in_flight.get(),
        }
    }
}

/// How the scan of one segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEnd {
    /// Zeroed space (or the end of the file) after the last entry: a clean
    /// end of the log (decision table row 1).
    Clean {
        /// End of the valid entries.
        offset: u64,
    },
    /// Reached the end of the valid data its successor's header records
    /// (`prev_end`).
    Sealed {
        /// End of the valid entries.
        offset: u64,
    },
    /// A torn write at the end of the last segment: recovery cuts the log
    /// here (rows 2–4, 13). The bytes were never acknowledged.
    Torn {
        /// Where the log ends.
        offset: u64,
        /// What did not verify there.
        reason: String,
    },
    /// Damage where valid data must be; the scan of this segment stopped.
    Damaged {
        /// Where.
        offset: u64,
    },
    /// A last file with neither a verifying header nor data: a spare, or a
    /// creation a crash interrupted. Recovery removes it (row 7).
    Incomplete,
    /// Not scanned: its header does not verify.
    Unscanned,
    /// The observer stopped the scan here.
    Stopped {
        /// Where the scan stood.
        offset: u64,
    },
}

/// One segment file and what the scan found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    /// The file.
    pub path: PathBuf,
    /// The generation in its name.
    pub generation: u64,
    /// The file's length.
    pub file_bytes: u64,
    /// Its header, if it verified.
    pub header: Option<SegmentHeaderFields>,
    /// Data entries that verified.
    pub data_entries: u64,
    /// Bytes of those entries (headers, payloads, alignment).
    pub data_bytes: u64,
    /// Watermark records that verified.
    pub watermark_records: u64,
    /// Padding entries that verified.
    pub padding_entries: u64,
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
}

impl SegmentReport {
    fn new(path: PathBuf, generation: u64, file_bytes: u64) -> SegmentReport {
        SegmentReport {
            path,
            generation,
            file_bytes,
            header: None,
            data_entries: 0,
            data_bytes: 0,
            watermark_records: 0,
            padding_entries: 0,
            writes: 0,
            op_min: None,
            op_max: None,
            epoch_max: None,
            watermark: 0,
            end: SegmentEnd::Unscanned,
        }
    }
}

/// How the log ends, as recovery would decide it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// No segments: a new (or never opened) journal.
    Empty,
    /// Zeroed space after the last entry.
    Clean {
        /// The last segment.
        path: PathBuf,
        /// End of the log.
        offset: u64,
    },
    /// Unacknowledged bytes of a torn write after the last valid entry;
    /// recovery (in its default mode) cuts them, `Recovery::Strict` refuses.
    Torn {
        /// The last segment.
        path: PathBuf,
        /// Where the log ends.
        offset: u64,
        /// What did not verify there.
        reason: String,
    },
    /// Not decided: the last segment is damaged or was not scanned to its
    /// end.
    Unknown,
}

/// Everything [`scan_journal`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalReport {
    /// The journal directory.
    pub dir: PathBuf,
    /// The segment files, oldest first (incomplete last files included).
    pub segments: Vec<SegmentReport>,
    /// The watermark: the largest of all header watermarks and records.
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
    /// the record of that watermark (or a later segment's header) outlives
    /// them. A torn tail can take the newest watermark record with it,
    /// though; then retired ops show up here, and replay needs a snapshot at
    /// or above the range's end. So this is damage unless the tail is torn.
    pub leading_gap: Option<(u64, u64)>,
    /// How the log ends.
    pub tail: Tail,
    /// Damage found, in scan order.
    pub damage: Vec<Damage>,
    /// Entries that failed verification once but verified when read again.
    pub transient_read_faults: u64,
    /// Bytes of segment files (what a progress bar counts to).
    pub file_bytes: u64,
    /// False if the observer stopped the scan early.
    pub complete: bool,
}

impl JournalReport {
    /// True when nothing is damaged and no op is missing (a torn tail is
    /// not damage: recovery cuts it and nothing acknowledged is lost; see
    /// [`JournalReport::leading_gap`] for what it may take along).
    pub fn is_intact(&self) -> bool {
        self.damage.is_empty()
            && self.missing_op_count == 0
            && (self.leading_gap.is_none() || matches!(self.tail, Tail::Torn { .. }))
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

/// The segment files in `dir` as `(generation, path, file length)`, oldest
/// first.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf, u64)>, InspectError> {
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
    let mut found = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io_error("list directory", dir, None))? {
        let item = item.map_err(io_error("list directory", dir, None))?;
        let Some(generation) = segment_generation(&item.file_name()) else {
            continue;
        };
        let path = item.path();
        let len = std::fs::metadata(&path)
            .map_err(io_error("stat", &path, None))?
            .len();
        found.push((generation, path, len));
    }
    found.sort_unstable_by_key(|(generation, _, _)| *generation);
    Ok(found)
}

/// Scans the journal in `dir`: reads and verifies every entry, strictly
/// read-only. See the module docs.
pub fn scan_journal(
    dir: &Path,
    observer: &mut dyn ScanObserver,
) -> Result<JournalReport, InspectError> {
    let listed = list_segments(dir)?;
    let file_bytes = listed.iter().map(|(_, _, len)| *len).sum();
    observer.begin(file_bytes);
    let mut report = JournalReport {
        dir: dir.to_path_buf(),
        segments: Vec::with_capacity(listed.len()),
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
        damage: Vec::new(),
        transient_read_faults: 0,
        file_bytes,
        complete: true,
    };

    // Open every file and check its header first: each header bounds its
    // predecessor's data.
    let mut opened: Vec<(File, SegmentReport, SegmentHeaderStatus)> = Vec::new();
    for (generation, path, len) in listed {
        let file = File::open(&path).map_err(io_error("open", &path, None))?;
        let block = read_block(&file, &path, 0, len)?;
        let status = check_segment_header(&block, generation);
        opened.push((file, SegmentReport::new(path, generation, len), status));
    }
    // Row 7: last files with neither a verifying header nor data are
    // spares or interrupted creations.
    let mut incomplete = Vec::new();
    while let Some((file, segment, status)) = opened.last() {
        if *status != SegmentHeaderStatus::Unverified
            || first_entry_verifies(file, segment.generation, segment.file_bytes)
        {
            break;
        }
        if let Some((_, mut segment, _)) = opened.pop() {
            segment.end = SegmentEnd::Incomplete;
            incomplete.push(segment);
        }
    }
    incomplete.reverse();
    // Row 9: the generations present form one contiguous run.
    for pair in opened.windows(2) {
        let (a, b) = (pair[0].1.generation, pair[1].1.generation);
        if b != a + 1 {
            report.damage.push(Damage {
                path: dir.join(segment_file_name(a + 1)),
                offset: 0,
                reason: format!(
                    "segment generation {} is missing between {a} and {b}",
                    a + 1
                ),
            });
        }
    }

    let mut ops = OpSet::default();
    let mut done_before = 0;
    let count = opened.len();
    let successor_headers: Vec<Option<(u64, SegmentHeader)>> = (0..count)
        .map(|i| {
            opened.get(i + 1).and_then(|(_, s, status)| match status {
                SegmentHeaderStatus::Valid(h) => Some((s.generation, *h)),
                _ => None,
            })
        })
        .collect();
    let mut stopped = false;
    for (i, (file, mut segment, status)) in opened.into_iter().enumerate() {
        let last = i + 1 == count;
        let header = match status {
            SegmentHeaderStatus::Valid(header) => header,
            SegmentHeaderStatus::Unverified => {
                // Row 8.
                report.damage.push(Damage {
                    path: segment.path.clone(),
                    offset: 0,
                    reason: if last {
                        "segment header does not verify, but the segment holds data".into()
                    } else {
                        "segment header does not verify".into()
                    },
                });
                segment.end = SegmentEnd::Damaged { offset: 0 };
                done_before += segment.file_bytes;
                report.segments.push(segment);
                continue;
            }
            SegmentHeaderStatus::Damaged { offset, reason } => {
                report.damage.push(Damage {
                    path: segment.path.clone(),
                    offset,
                    reason,
                });
                segment.end = SegmentEnd::Damaged { offset };
                done_before += segment.file_bytes;
                report.segments.push(segment);
                continue;
            }
            SegmentHeaderStatus::UnsupportedVersion(found) => {
                // Row 11.
                report.damage.push(Damage {
                    path: segment.path.clone(),
                    offset: 0,
                    reason: format!(
                        "unsupported format version {found} (this build reads version \
                         {FORMAT_VERSION})"
                    ),
                });
                done_before += segment.file_bytes;
                report.segments.push(segment);
                continue;
            }
        };
        segment.header = Some(SegmentHeaderFields::from(&header));
        segment.watermark = header.watermark.get();
        // The successor's header bounds this segment's data (row 6), if it
        // is the next generation and verified.
        let end_limit = match successor_headers[i] {
            Some((next_generation, next)) if next_generation == segment.generation + 1 => {
                if next.prev_generation.get() != segment.generation {
                    report.damage.push(Damage {
                        path: dir.join(segment_file_name(next_generation)),
                        offset: 0,
                        reason: format!(
                            "segment header names previous generation {}, expected {}",
                            next.prev_generation.get(),
                            segment.generation
                        ),
                    });
                }
                Some(next.prev_end.get())
            }
            _ => None,
        };
        if !stopped {
            let mut scan = SegmentScan {
                file: &file,
                header: &header,
                segment: &mut segment,
                end_limit,
                last,
                ops: &mut ops,
                observer,
                done_before,
                transient_read_faults: 0,
                damage: &mut report.damage,
            };
            let flow = scan.run()?;
            report.transient_read_faults += scan.transient_read_faults;
            stopped = flow.is_break();
        }
        done_before += segment.file_bytes;
        observer.progress(done_before);
        report.segments.push(segment);
    }
    for segment in incomplete {
        done_before += segment.file_bytes;
        report.segments.push(segment);
    }
    observer.progress(done_before);

    report.complete = !stopped;
    for segment in &report.segments {
        report.watermark = report.watermark.max(segment.watermark);
        report.data_entries += segment.data_entries;
        report.data_bytes += segment.data_bytes;
        report.epoch_max = report.epoch_max.max(segment.epoch_max.unwrap_or(0));
        report.op_min = min_some(report.op_min, segment.op_min);
        report.op_max = report.op_max.max(segment.op_max);
    }
    report.duplicate_ops = ops.duplicates;
    if report.complete {
        let gaps = ops.missing_above(report.watermark, MISSING_RANGES_MAX);
        report.leading_gap = gaps.leading;
        report.missing_ops = gaps.interior;
        report.missing_op_count = gaps.interior_count;
    }
    let last_scanned = report
        .segments
        .iter()
        .rev()
        .find(|s| s.end != SegmentEnd::Incomplete);
    report.tail = match last_scanned {
        None => Tail::Empty,
        Some(segment) => match &segment.end {
            SegmentEnd::Clean { offset } | SegmentEnd::Sealed { offset } => Tail::Clean {
                path: segment.path.clone(),
                offset: *offset,
            },
            SegmentEnd::Torn { offset, reason } => Tail::Torn {
                path: segment.path.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            _ => Tail::Unknown,
        },
    };
    Ok(report)
}

fn min_some(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Reads `BLOCK_BYTES` at `offset` (fewer at the end of the file).
fn read_block(file: &File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, InspectError> {
    let want = BLOCK_BYTES.min(len.saturating_sub(offset)) as usize;
    let mut block = vec![0; want];
    let got = read_fully(file, &mut block, offset).map_err(io_error("read", path, Some(offset)))?;
    block.truncate(got);
    Ok(block)
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_fully(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
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

/// True if the first data block holds a verifying write start (row 7's
/// "with a valid first entry"). An unreadable block counts as data, so it is
/// reported rather than passed over.
fn first_entry_verifies(file: &File, generation: u64, len: u64) -> bool {
    if len < SEGMENT_DATA_OFFSET + BLOCK_BYTES {
        return false;
    }
    let mut block = vec![0; BLOCK_BYTES as usize];
    match read_fully(file, &mut block, SEGMENT_DATA_OFFSET) {
        Ok(got) if got == block.len() => {
            check_entry_header(&block, generation, SEGMENT_DATA_OFFSET, len, u64::MAX)
                .is_ok_and(|h| h.flags & FLAG_FIRST_IN_WRITE != 0)
        }
        Ok(_) => false,
        Err(_) => true,
    }
}

/// The data ops seen, as disjoint inclusive ranges keyed by start.
#[derive(Default)]
struct OpSet {
    ranges: BTreeMap<u64, u64>,
    duplicates: u64,
}

impl OpSet {
    fn insert(&mut self, op: u64) {
        // The range starting at or before `op`.
        if let Some((&start, &end)) = self.ranges.range(..=op).next_back() {
            if op <= end {
                self.duplicates += 1;
                return;
            }
            if op == end + 1 {
                let mut new_end = op;
                if let Some(&next_end) = self.ranges.get(&(op + 1)) {
                    self.ranges.remove(&(op + 1));
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
struct Window<'f> {
    file: &'f File,
    file_len: u64,
    start: u64,
    bytes: Vec<u8>,
}

impl<'f> Window<'f> {
    fn new(file: &'f File, file_len: u64) -> Window<'f> {
        Window {
            file,
            file_len,
            start: 0,
            bytes: Vec::new(),
        }
    }

    /// Forgets what was read, so the next `get` reads the file again.
    fn invalidate(&mut self) {
        self.bytes.clear();
    }

    /// Bytes `[pos, pos + len)`, or fewer at the end of the file.
    fn get(&mut self, pos: u64, len: u64) -> io::Result<&[u8]> {
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

/// Why the entry at a position is not live.
struct Fault {
    offset: u64,
    reason: &'static str,
    zeroed: bool,
    misplaced: bool,
}

/// The scan of one segment whose header verified.
struct SegmentScan<'a> {
    file: &'a File,
    header: &'a SegmentHeader,
    segment: &'a mut SegmentReport,
    end_limit: Option<u64>,
    last: bool,
    ops: &'a mut OpSet,
    observer: &'a mut dyn ScanObserver,
    done_before: u64,
    transient_read_faults: u64,
    damage: &'a mut Vec<Damage>,
}

impl SegmentScan<'_> {
    fn run(&mut self) -> Result<ControlFlow<()>, InspectError> {
        let path = self.segment.path.clone();
        let generation = self.segment.generation;
        let file_len = self.segment.file_bytes;
        let segment_bytes = self.header.segment_bytes.get();
        let limit = self.end_limit.unwrap_or(segment_bytes).min(segment_bytes);
        let mut window = Window::new(self.file, file_len);
        let mut pos = SEGMENT_DATA_OFFSET;
        let mut reported = 0;
        // After the header block or a padding entry the next entry must
        // start a write.
        let mut expect_first = true;
        loop {
            if pos >= reported + INSPECT_READ_BYTES {
                self.observer.progress(self.done_before + pos);
                reported = pos;
            }
            if pos + ENTRY_HEADER_BYTES as u64 > limit {
                self.segment.end = if self.end_limit.is_some() {
                    SegmentEnd::Sealed { offset: pos }
                } else {
                    SegmentEnd::Clean { offset: pos }
                };
                return Ok(ControlFlow::Continue(()));
            }
            if pos + ENTRY_HEADER_BYTES as u64 > file_len {
                // The file is shorter than its header says: its size change
                // was never durable, so nothing acknowledged lies past it —
                // unless a later segment vouches for more.
                if self.end_limit.is_some() {
                    self.report_damage(
                        &path,
                        pos,
                        format!("segment file ends at {file_len}, before its recorded end"),
                    );
                } else {
                    self.segment.end = SegmentEnd::Clean { offset: pos };
                }
                return Ok(ControlFlow::Continue(()));
            }
            let mut verdict = verify_at(
                &mut window,
                &path,
                generation,
                segment_bytes,
                limit,
                pos,
                expect_first,
            )?;
            if verdict.is_err() {
                // Read the bytes again before deciding anything.
                window.invalidate();
                verdict = verify_at(
                    &mut window,
                    &path,
                    generation,
                    segment_bytes,
                    limit,
                    pos,
                    expect_first,
                )?;
                if verdict.is_ok() {
                    self.transient_read_faults += 1;
                }
            }
            let (header, kind) = match verdict {
                Ok(found) => found,
                Err(fault) => {
                    self.finish_at_fault(&mut window, &path, fault)?;
                    return Ok(ControlFlow::Continue(()));
                }
            };
            let info = EntryInfo::from_header(&header, kind);
            self.record(&info);
            let payload_len = if kind == EntryKind::Data {
                u64::from(header.payload_len.get())
            } else {
                0
            };
            let payload = window
                .get(pos + ENTRY_HEADER_BYTES as u64, payload_len)
                .map_err(io_error("read", &path, Some(pos)))?;
            if self.observer.entry(&info, payload).is_break() {
                self.segment.end = SegmentEnd::Stopped { offset: pos };
                return Ok(ControlFlow::Break(()));
            }
            pos += header.footprint();
            expect_first = kind == EntryKind::Padding;
        }
    }

    fn record(&mut self, info: &EntryInfo) {
        let segment = &mut *self.segment;
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
                self.ops.insert(info.op);
            }
            EntryKind::Watermark => {
                segment.watermark_records += 1;
                segment.watermark = segment.watermark.max(info.op);
            }
            EntryKind::Padding => segment.padding_entries += 1,
        }
    }

    fn report_damage(&mut self, path: &Path, offset: u64, reason: String) {
        self.damage.push(Damage {
            path: path.to_path_buf(),
            offset,
            reason,
        });
        self.segment.end = SegmentEnd::Damaged { offset };
    }

    /// Applies the decision table (rows 1–6, 12, 13) to a fault.
    fn finish_at_fault(
        &mut self,
        window: &mut Window<'_>,
        path: &Path,
        fault: Fault,
    ) -> Result<(), InspectError> {
        let offset = fault.offset;
        if !self.last && self.end_limit.is_none() && fault.zeroed {
            // Its successor is missing or its header is damaged (reported
            // already), so nothing records where this segment's data ends:
            // zeroed space is the best guess.
            self.segment.end = SegmentEnd::Clean { offset };
            return Ok(());
        }
        if !self.last || fault.misplaced {
            // Row 6: a later segment exists, so this data was durable.
            // Row 12: a misdirected write, which no crash produces.
            self.report_damage(path, offset, fault.reason.to_string());
            return Ok(());
        }
        if self.header.flags.get() & SEGMENT_FLAG_NO_SYNC == 0 {
            if let Some((later, what)) = evidence_after(window, path, self.header, offset)? {
                // Rows 5 and 12.
                self.report_damage(
                    path,
                    offset,
                    format!("{}, but {what} at offset {later}", fault.reason),
                );
                return Ok(());
            }
        }
        self.segment.end = if fault.zeroed {
            // Row 1.
            SegmentEnd::Clean { offset }
        } else {
            // Rows 2–4, 13.
            SegmentEnd::Torn {
                offset,
                reason: fault.reason.to_string(),
            }
        };
        Ok(())
    }
}

/// Verifies the entry at `pos`: header, placement and payload.
fn verify_at(
    window: &mut Window<'_>,
    path: &Path,
    generation: u64,
    segment_bytes: u64,
    limit: u64,
    pos: u64,
    expect_first: bool,
) -> Result<Result<(EntryHeader, EntryKind), Fault>, InspectError> {
    let bytes = window
        .get(pos, ENTRY_HEADER_BYTES as u64)
        .map_err(io_error("read", path, Some(pos)))?;
    let checked = if bytes.len() < ENTRY_HEADER_BYTES {
        Err(HeaderFault::Invalid)
    } else {
        // Not the configured entry_bytes_max: the journal may have been
        // written with a larger one.
        check_entry_header(bytes, generation, pos, segment_bytes, ENTRY_BYTES_MAX_LIMIT)
    };
    let checked = match checked {
        Ok(h) if expect_first && h.flags & FLAG_FIRST_IN_WRITE == 0 => Err(HeaderFault::Invalid),
        Ok(h) if pos + h.footprint() > limit => Err(HeaderFault::Invalid),
        other => other,
    };
    let fault = |fault: HeaderFault| Fault {
        offset: pos,
        reason: fault.describe(),
        zeroed: fault == HeaderFault::Zeroed,
        misplaced: fault == HeaderFault::Misplaced,
    };
    let header = match checked {
        Ok(header) => header,
        Err(f) => return Ok(Err(fault(f))),
    };
    let Some(kind) = header.entry_kind() else {
        return Ok(Err(fault(HeaderFault::Invalid)));
    };
    if kind == EntryKind::Data {
        let len = u64::from(header.payload_len.get());
        let payload = window
            .get(pos + ENTRY_HEADER_BYTES as u64, len)
            .map_err(io_error("read", path, Some(pos)))?;
        if payload.len() as u64 != len || crc32fast::hash(payload) != header.payload_checksum.get()
        {
            return Ok(Err(Fault {
                offset: pos,
                reason: "payload checksum mismatch",
                zeroed: false,
                misplaced: false,
            }));
        }
    }
    Ok(Ok((header, kind)))
}

/// Evidence that a fault at `offset` of the last segment is not a torn
/// tail (rows 5 and 12): `writes_in_flight` valid write starts within
/// reach, or a misdirected header. Same search as recovery's.
fn evidence_after(
    window: &mut Window<'_>,
    path: &Path,
    segment: &SegmentHeader,
    offset: u64,
) -> Result<Option<(u64, &'static str)>, InspectError> {
    let mut search = EvidenceSearch::new(segment, offset);
    while let Some(candidate) = search.next_candidate() {
        let bytes = window
            .get(candidate, ENTRY_HEADER_BYTES as u64)
            .map_err(io_error("read", path, Some(candidate)))?;
        if bytes.len() < ENTRY_HEADER_BYTES {
            break;
        }
        if let Some(found) = search.examine(candidate, bytes) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_set_merges_ranges_and_finds_gaps() {
        let mut ops = OpSet::default();
        for op in [1, 2, 3, 7, 5, 6, 10, 4, 3] {
            ops.insert(op);
        }
        assert_eq!(ops.duplicates, 1);
        assert_eq!(
            ops.ranges.iter().collect::<Vec<_>>(),
            [(&1, &7), (&10, &10)]
        );
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

    use crate::{Journal, JournalBuilder, RecoveryReport, TailState};

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

    /// Appends ops 1..=N one at a time (op `k` is its write's only entry,
    /// at byte 4096 * k of segment 1), then reopens `reopens` times.
    fn write_session(reopens: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("journal");
        let p = path.clone();
        run(move || async move {
            let journal = builder(&p).open().await.unwrap();
            for op in 1..=N {
                assert_eq!(journal.append(&payload(op)).await.unwrap(), op);
            }
            journal.close().await.unwrap();
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
    fn recover(path: &Path) -> Result<RecoveryReport, crate::Error> {
        let p = path.to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        run(move || async move {
            let result = match builder(&p).open().await {
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
        assert!(report.complete);
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
        assert!(report.segments.len() >= 3, "{:?}", report.segments);
        // Read-only: the files are byte for byte what they were.
        let before: Vec<_> = list_segments(&path).unwrap();
        scan_journal(&path, &mut ()).unwrap();
        assert_eq!(list_segments(&path).unwrap(), before);

        let recovered = recover(&path).unwrap();
        assert_eq!(recovered.entries, report.data_entries);
        assert_eq!(recovered.bytes, report.data_bytes);
        assert_eq!(recovered.watermark, report.watermark);
    }

    #[test]
    fn damage_in_the_middle_names_the_file_and_offset_like_recovery() {
        let (_dir, path) = write_session(0);
        let file = segment(&path, 1);
        flip(&file, 4096 * 3 + ENTRY_HEADER_BYTES as u64 + 5);
        let report = scan_journal(&path, &mut ()).unwrap();
        assert!(!report.is_intact());
        assert_eq!(report.damage.len(), 1, "{:?}", report.damage);
        assert_eq!(report.damage[0].path, file);
        assert_eq!(report.damage[0].offset, 4096 * 3);
        assert!(report.damage[0].reason.contains("payload checksum"));
        assert_eq!(report.tail, Tail::Unknown);
        match recover(&path) {
            Err(crate::Error::Corruption {
                path: p, offset, ..
            }) => {
                assert_eq!((p, offset), (file, 4096 * 3));
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
        assert!(
            matches!(report.tail, Tail::Clean { .. }),
            "{:?}",
            report.tail
        );
        assert!(matches!(
            recover(&path),
            Err(crate::Error::Corruption { .. })
        ));
    }

    #[test]
    fn a_torn_last_write_is_a_torn_tail_not_damage() {
        let (_dir, path) = write_session(0);
        let file = segment(&path, 1);
        flip(&file, 4096 * N + ENTRY_HEADER_BYTES as u64 + 17);
        let report = scan_journal(&path, &mut ()).unwrap();
        assert!(report.is_intact(), "{:?}", report.damage);
        match &report.tail {
            Tail::Torn {
                path: p,
                offset,
                reason,
            } => {
                assert_eq!((p, *offset), (&file, 4096 * N));
                assert!(reason.contains("payload checksum"), "{reason}");
            }
            other => panic!("expected a torn tail, got {other:?}"),
        }
        assert_eq!(report.op_max, Some(N - 1));
        match recover(&path).unwrap().tail {
            TailState::Torn { offset, .. } => assert_eq!(offset, 4096 * N),
            other => panic!("recovery should cut a torn tail: {other:?}"),
        }
    }

    #[test]
    fn a_spare_segment_is_incomplete_not_damage_and_a_gap_is_damage() {
        let (_dir, path) = write_three_segments();
        let segments = list_segments(&path).unwrap();
        assert_eq!(segments.len(), 3);
        let last = segments.last().unwrap().0;
        // A spare: created, space reserved, no header yet.
        std::fs::write(segment(&path, last + 1), vec![0; 8192]).unwrap();
        let report = scan_journal(&path, &mut ()).unwrap();
        assert!(report.is_intact(), "{:?}", report.damage);
        assert_eq!(report.segments.last().unwrap().end, SegmentEnd::Incomplete);
        std::fs::remove_file(segment(&path, last + 1)).unwrap();
        // Remove a middle segment.
        std::fs::remove_file(&segments[1].1).unwrap();
        let report = scan_journal(&path, &mut ()).unwrap();
        assert_eq!(report.damage.len(), 1, "{:?}", report.damage);
        assert!(report.damage[0].reason.contains("missing"));
        assert_eq!(report.damage[0].path, segments[1].1);
        assert_eq!(report.missing_ops, [(3, 4)]);
        assert_eq!(report.leading_gap, None);
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
        assert_eq!(recover(&path).unwrap().watermark, 4);
    }

    #[test]
    fn retired_ops_behind_a_watermark_record_cut_with_a_torn_tail_are_a_leading_gap() {
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
            // Its record goes after op N + 2; segment 1 is retired.
            journal.advance_watermark(N).await.unwrap();
            journal.close().await.unwrap();
        });
        let report = scan_journal(&path, &mut ()).unwrap();
        assert!(report.is_intact(), "{report:?}");
        assert_eq!((report.watermark, report.leading_gap), (N, None));
        let last = segment(&path, 2);
        assert!(last.exists() && !segment(&path, 1).exists());
        flip(&last, 4096 * 2 + ENTRY_HEADER_BYTES as u64 + 3);
        let report = scan_journal(&path, &mut ()).unwrap();
        assert!(
            matches!(report.tail, Tail::Torn { offset: 8192, .. }),
            "{:?}",
            report.tail
        );
        assert_eq!(report.watermark, 0);
        assert_eq!(report.leading_gap, Some((1, N)));
        assert!(report.is_intact(), "the torn tail explains the gap");
        let recovered = recover(&path).unwrap();
        assert_eq!(recovered.watermark, 0);
        assert_eq!(recovered.entries, 1);
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
            let _ = scan_journal(path, &mut ()).unwrap();
        }
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let err = scan_journal(Path::new("/nonexistent/ringstore/journal"), &mut ())
            .expect_err("no such directory");
        assert!(matches!(err, InspectError::NotFound { .. }), "{err}");
    }
}
