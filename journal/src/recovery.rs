//! Recovery: scan the segments, verify every entry, rebuild the ring index,
//! and decide what a damaged byte range means.
//!
//! Segments are scanned in generation order. Each one starts with a
//! [`SegmentHeader`]; the header of segment `g + 1` records where the valid
//! data of segment `g` ends (`prev_end`), because a segment is only created
//! once everything before it is durable (the previous segment is synced
//! first, also on open and in `NoSync` mode). So damage in any segment but
//! the last lies in acknowledged data, and only the last segment can end in a
//! torn write. In `Sync` and `WriteThrough` mode at most
//! `writes_in_flight` writes (D, recorded in the segment header) are
//! unfinished at any time and they are acknowledged in issue order, so only
//! the last D writes can be torn, and D valid writes after a damaged one
//! prove the damage is in the middle. A segment written in `NoSync` mode says so in
//! its header; any number of writes at its end may be torn (row 13).
//!
//! Only zeroed bytes end a log cleanly. `Recovery::Strict` turns every other
//! tail decision into an error; it cannot tell a lost write whose sectors
//! all read as zeros from one never issued, and neither can anything else.
//!
//! # Decision table
//!
//! At the first position `p` where the next entry does not verify:
//!
//! | row | where | header at `p` | payload | evidence within reach after `p`? | decision |
//! |-----|-------|---------------|---------|-------------------------------------------------|----------|
//! | 1 | last segment | zeroed | — | no | clean end of the log at `p` |
//! | 2 | last segment | checksum mismatch | — | no | torn tail: cut at `p` (`Strict`: error) |
//! | 3 | last segment | valid | checksum mismatch | no | torn tail: cut at `p` (`Strict`: error) |
//! | 4 | last segment | from another generation (stale bytes) | — | no | torn tail: cut at `p` (`Strict`: error) |
//! | 5 | last segment | any fault of rows 1–4 | any | `writes_in_flight` valid write starts | [`Error::Corruption`] at `p` |
//! | 6 | earlier segment, before its successor's `prev_end` | any fault | any | — | [`Error::Corruption`] at `p` |
//! | 7 | last segment | segment header invalid, no valid first entry | — | — | incomplete segment creation: file removed |
//! | 8 | any other segment, or with a valid first entry | segment header invalid | — | — | [`Error::Corruption`] at 0 |
//! | 9 | between segments | generation missing from the sequence | — | — | [`Error::Corruption`] naming the gap |
//! | 10 | anywhere | two ops above the watermark in one ring slot | — | — | [`Error::Corruption`] at the later entry |
//! | 11 | any segment | header verifies, version unknown | — | — | [`Error::UnsupportedVersion`] |
//! | 12 | last segment | names another offset, or such a header follows | any | a misdirected copy | [`Error::Corruption`] at `p` |
//! | 13 | last segment written with `NoSync` | any fault of rows 1–4 | any | not looked for | cut at `p`: any number of its writes may be torn |
//!
//! "Within reach": the D-th write after the damaged one starts at most
//! D × `batch_bytes_max` after the damaged write's start, which is at or
//! before `p`, where D is the segment's `writes_in_flight` (both recorded in
//! its header). With D writes in flight at a crash, fewer than D valid
//! writes after the damage prove nothing: those may be the unfinished ones.
//!
//! A "valid write start" is an entry header that verifies, names this
//! segment's generation and its own offset, and carries the
//! first-in-write flag, at a block boundary. Entries in the middle of a torn
//! write may verify too (sectors can persist out of order) but never carry
//! that flag, so they do not make a torn tail look like mid-log damage.
//!
//! Recovery never writes into an existing segment: after it, the journal
//! creates a new segment whose header records the cut, so stale bytes past
//! a cut are never scanned as live again and a second recovery reaches the
//! same state (rows 2–4 are decided the same way each time; row 7 removes a
//! file that holds no data).

use crate::config::{JournalConfig, Recovery};
use crate::config::{
    BATCH_BYTES_MAX_LIMIT, ENTRY_BYTES_MAX_LIMIT, SEGMENT_BYTES_MAX, WRITES_IN_FLIGHT_MAX,
};
use crate::error::{Error, Result};
use crate::format::{
    check_entry_header, EntryHeader, EntryKind, HeaderFault, SegmentHeader, BLOCK_BYTES,
    ENTRY_ALIGN_BYTES, ENTRY_HEADER_BYTES, ENTRY_MAGIC, FLAG_FIRST_IN_WRITE, FORMAT_VERSION,
    SEGMENT_DATA_OFFSET, SEGMENT_FLAG_NO_SYNC, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC,
};
use crate::index::{Location, RingIndex};
use crate::segment::{segment_file_name, segment_generation, Segment};
use crate::storage::{Storage, StorageFile};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use zerocopy::FromBytes;

/// Bytes read per call while scanning.
const SCAN_READ_BYTES: u64 = 1 << 20;
/// Scan reads kept in flight ahead of the one being parsed.
const SCAN_READS_AHEAD: usize = 4;
const _: () = assert!(SCAN_READ_BYTES.is_multiple_of(BLOCK_BYTES));

/// How the scan of the last segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailState {
    /// No segments: a new journal.
    Empty,
    /// Zeroed space after the last entry (row 1).
    Clean,
    /// A torn write was cut off (rows 2–4).
    Torn {
        /// The segment file.
        path: PathBuf,
        /// Where the log now ends.
        offset: u64,
        /// What did not verify there.
        reason: String,
    },
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
    /// A segment removed because its creation never completed (row 7).
    pub removed_incomplete: Option<PathBuf>,
    /// Entries that failed verification once but verified when read again.
    pub transient_read_faults: u64,
}

pub(crate) struct Recovered<F> {
    pub segments: Vec<Segment<F>>,
    pub index: RingIndex,
    pub max_op: u64,
    pub max_epoch: u64,
    pub report: RecoveryReport,
}

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
}

impl<F: StorageFile> ScanReader<F> {
    fn new(file: Rc<F>, file_len: u64) -> Self {
        ScanReader {
            file,
            file_len,
            start: 0,
            bytes: Vec::new(),
            ahead: std::collections::VecDeque::new(),
        }
    }

    /// Forgets what was read, so the next `get` reads the disk again.
    fn invalidate(&mut self) {
        self.bytes.clear();
        self.ahead.clear();
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
                let chunk = self.read_chunk(next).await?;
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
}

pub(crate) async fn recover<S: Storage>(
    storage: &S,
    config: &JournalConfig,
) -> Result<Recovered<S::File>> {
    let dir = &config.dir;
    let names = storage
        .list_dir(dir)
        .map_err(|e| Error::io("list directory", dir, None, e))?;
    let mut generations: Vec<u64> = names
        .iter()
        .filter_map(|name| segment_generation(name))
        .collect();
    generations.sort_unstable();

    let mut report = RecoveryReport {
        segments: 0,
        entries: 0,
        bytes: 0,
        watermark: 0,
        tail: TailState::Empty,
        removed_incomplete: None,
        transient_read_faults: 0,
    };
    // Row 7 first: a last file without a verifying header and without data
    // is a segment whose creation never completed (a crash, or a spare whose
    // removal a crash undid). Remove such files from the end, so one left
    // beyond a gap does not read as a missing segment.
    while let Some(&generation) = generations.last() {
        let (path, file, len) = open_segment(storage, dir, generation).await?;
        let incomplete = read_segment_header(&file, &path, generation, len)
            .await?
            .is_none()
            && !first_entry_verifies(&file, generation, len).await;
        let _ = file.close().await;
        if !incomplete {
            break;
        }
        storage
            .remove(&path)
            .await
            .map_err(|e| Error::io("remove incomplete segment", &path, None, e))?;
        storage
            .sync_dir(dir)
            .await
            .map_err(|e| Error::io("fsync directory", dir, None, e))?;
        tracing::warn!(path = %path.display(), "removed a segment whose creation did not complete");
        report.removed_incomplete = Some(path);
        generations.pop();
    }
    for pair in generations.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(Error::corruption(
                dir.join(segment_file_name(pair[0] + 1)),
                0,
                format!(
                    "segment generation {} is missing between {} and {}",
                    pair[0] + 1,
                    pair[0],
                    pair[1]
                ),
            ));
        }
    }

    // Open every segment and read its header first: each header bounds its
    // predecessor.
    let mut opened: Vec<(u64, PathBuf, S::File, u64, SegmentHeader)> = Vec::new();
    for generation in generations.iter().copied() {
        let (path, file, len) = open_segment(storage, dir, generation).await?;
        let Some(header) = read_segment_header(&file, &path, generation, len).await? else {
            // Row 8: not the last, or holding data.
            return Err(Error::corruption(
                &path,
                0,
                "segment header does not verify",
            ));
        };
        opened.push((generation, path, file, len, header));
    }

    let mut index = RingIndex::new(config.slot_count, 0);
    let mut segments = Vec::with_capacity(opened.len());
    let mut watermark = 0;
    let mut max_op = 0;
    let mut max_epoch = 0;
    let count = opened.len();
    let successors: Vec<Option<SegmentHeader>> =
        (0..count).map(|i| opened.get(i + 1).map(|o| o.4)).collect();
    for (i, (generation, path, file, len, header)) in opened.into_iter().enumerate() {
        let end_limit = match successors[i] {
            Some(next) if next.prev_generation.get() != generation => {
                return Err(Error::corruption(
                    dir.join(segment_file_name(generation + 1)),
                    0,
                    format!(
                        "segment header names previous generation {}, expected {generation}",
                        next.prev_generation.get()
                    ),
                ));
            }
            Some(next) => Some(next.prev_end.get()),
            None => None,
        };
        watermark = watermark.max(header.watermark.get());
        let file = Rc::new(file);
        let scan = scan_segment(
            file.clone(),
            &path,
            &header,
            len,
            end_limit,
            config,
            &mut index,
        )
        .await?;
        watermark = watermark.max(scan.watermark);
        max_op = max_op.max(scan.max_op);
        max_epoch = max_epoch.max(scan.max_epoch);
        report.entries += scan.entries;
        report.bytes += scan.bytes;
        report.transient_read_faults += scan.transient_read_faults;
        if i + 1 == count {
            report.tail = scan.tail;
        }
        segments.push(Segment {
            generation,
            path,
            file,
            segment_bytes: header.segment_bytes.get(),
            write_pos: scan.valid_end,
            max_op: scan.max_op,
            watermark_seen: scan.watermark.max(header.watermark.get()),
        });
    }
    report.segments = segments.len();
    report.watermark = watermark;
    if let Some(op) = index.finish_recovery(watermark) {
        return Err(Error::corruption(
            dir,
            0,
            format!("op {op} shares its ring slot with a later op while above the watermark {watermark}"),
        ));
    }
    Ok(Recovered {
        segments,
        index,
        max_op,
        max_epoch,
        report,
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

/// Reads and checks a segment header; `Ok(None)` if it does not verify
/// (after reading it twice, so a transient read error does not count).
async fn read_segment_header<F: StorageFile>(
    file: &F,
    path: &Path,
    generation: u64,
    len: u64,
) -> Result<Option<SegmentHeader>> {
    match read_segment_header_once(file, path, generation, len).await {
        Ok(Some(header)) => Ok(Some(header)),
        _ => read_segment_header_once(file, path, generation, len).await,
    }
}

async fn read_segment_header_once<F: StorageFile>(
    file: &F,
    path: &Path,
    generation: u64,
    len: u64,
) -> Result<Option<SegmentHeader>> {
    if len < BLOCK_BYTES {
        return Ok(None);
    }
    let block = file
        .read_at(0, BLOCK_BYTES as usize)
        .await
        .map_err(read_error(path, 0))?;
    let Ok((header, _)) =
        SegmentHeader::read_from_prefix(&block[..SEGMENT_HEADER_BYTES.min(block.len())])
    else {
        return Ok(None);
    };
    if header.magic.get() != SEGMENT_MAGIC || header.checksum.get() != header.compute_checksum() {
        return Ok(None);
    }
    if block[SEGMENT_HEADER_BYTES..].iter().any(|b| *b != 0) {
        // Only the header is ever written to block 0: anything else there
        // is a misdirected write, which may have destroyed a later write.
        return Err(Error::corruption(
            path,
            SEGMENT_HEADER_BYTES as u64,
            "stray bytes after the segment header (a misdirected write)",
        ));
    }
    if header.version.get() != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found: header.version.get(),
            supported: FORMAT_VERSION,
        });
    }
    let bad = |reason: String| Err(Error::corruption(path, 0, reason));
    if header.generation.get() != generation {
        return bad(format!(
            "segment header names generation {}",
            header.generation.get()
        ));
    }
    if u64::from(header.data_offset.get()) != SEGMENT_DATA_OFFSET {
        return bad(format!(
            "segment header names data offset {}",
            header.data_offset.get()
        ));
    }
    let segment_bytes = header.segment_bytes.get();
    if !segment_bytes.is_multiple_of(BLOCK_BYTES)
        || segment_bytes <= SEGMENT_DATA_OFFSET
        || segment_bytes > SEGMENT_BYTES_MAX
    {
        return bad(format!(
            "segment header names size {segment_bytes}, file holds {len}"
        ));
    }
    let batch_bytes_max = header.batch_bytes_max.get();
    if !batch_bytes_max.is_multiple_of(BLOCK_BYTES)
        || batch_bytes_max == 0
        || batch_bytes_max > BATCH_BYTES_MAX_LIMIT
        || batch_bytes_max > segment_bytes - SEGMENT_DATA_OFFSET
    {
        return bad(format!("segment header names batch size {batch_bytes_max}"));
    }
    let writes_in_flight = header.writes_in_flight.get();
    if writes_in_flight == 0 || writes_in_flight > WRITES_IN_FLIGHT_MAX {
        return bad(format!(
            "segment header names {writes_in_flight} writes in flight"
        ));
    }
    if header.flags.get() & !SEGMENT_FLAG_NO_SYNC != 0 {
        return bad(format!(
            "segment header has unknown flags {:#x}",
            header.flags.get()
        ));
    }
    Ok(Some(header))
}

/// True if the first block of data holds a verifying write start.
async fn first_entry_verifies<F: StorageFile>(file: &F, generation: u64, len: u64) -> bool {
    if len < SEGMENT_DATA_OFFSET + BLOCK_BYTES {
        return false;
    }
    match file
        .read_at(SEGMENT_DATA_OFFSET, BLOCK_BYTES as usize)
        .await
    {
        Ok(block) => check_entry_header(&block, generation, SEGMENT_DATA_OFFSET, len, u64::MAX)
            .is_ok_and(|h| h.flags & FLAG_FIRST_IN_WRITE != 0),
        // Unreadable: treat as data, so the caller reports corruption
        // rather than deleting something it could not inspect.
        Err(_) => true,
    }
}

async fn scan_segment<F: StorageFile>(
    file: Rc<F>,
    path: &Path,
    segment: &SegmentHeader,
    file_len: u64,
    end_limit: Option<u64>,
    config: &JournalConfig,
    index: &mut RingIndex,
) -> Result<SegmentScan> {
    let generation = segment.generation.get();
    let segment_bytes = segment.segment_bytes.get();
    let limit = end_limit.unwrap_or(segment_bytes).min(segment_bytes);
    let mut reader = ScanReader::new(file, file_len);
    let mut scan = SegmentScan {
        max_op: 0,
        max_epoch: 0,
        entries: 0,
        bytes: 0,
        watermark: 0,
        valid_end: SEGMENT_DATA_OFFSET,
        tail: TailState::Clean,
        transient_read_faults: 0,
    };
    let mut pos = SEGMENT_DATA_OFFSET;
    // After the header block or a padding entry the next entry must start a
    // write.
    let mut expect_first = true;
    loop {
        scan.valid_end = pos;
        if pos + ENTRY_HEADER_BYTES as u64 > limit {
            return Ok(scan);
        }
        if pos + ENTRY_HEADER_BYTES as u64 > file_len {
            // The file is shorter than its header says: its size change was
            // never made durable, so nothing acknowledged lies past it —
            // unless a later segment vouches for more.
            if end_limit.is_some() {
                return Err(Error::corruption(
                    path,
                    pos,
                    format!("segment file ends at {file_len}, before its recorded end"),
                ));
            }
            return Ok(scan);
        }
        let spot = Spot {
            path,
            generation,
            segment_bytes,
            limit,
            pos,
            expect_first,
            // Not the configured entry_bytes_max: the journal may have been
            // written with a larger one.
            entry_bytes_max: ENTRY_BYTES_MAX_LIMIT,
        };
        let mut verdict = verify_at(&mut reader, &spot).await?;
        if verdict.is_err() {
            // Read the bytes again before deciding anything: a transient
            // read error must not cut acknowledged entries.
            reader.invalidate();
            verdict = verify_at(&mut reader, &spot).await?;
            if verdict.is_ok() {
                scan.transient_read_faults += 1;
            }
        }
        let header = match verdict {
            Ok(header) => header,
            Err(damage) => {
                return finish_at_damage(
                    &mut reader,
                    path,
                    segment,
                    end_limit,
                    config,
                    scan,
                    damage,
                )
                .await;
            }
        };
        let kind = header.entry_kind().expect("verify_at validated the kind");
        match kind {
            EntryKind::Data => record_entry(&mut scan, &header, index),
            EntryKind::Watermark => scan.watermark = scan.watermark.max(header.op.get()),
            EntryKind::Padding => {}
        }
        pos += header.footprint();
        expect_first = kind == EntryKind::Padding;
    }
}

/// Where the scan stands.
struct Spot<'a> {
    path: &'a Path,
    generation: u64,
    segment_bytes: u64,
    limit: u64,
    pos: u64,
    expect_first: bool,
    entry_bytes_max: u64,
}

/// Verifies the entry at `spot.pos`: header, placement, and payload.
async fn verify_at<F: StorageFile>(
    reader: &mut ScanReader<F>,
    spot: &Spot<'_>,
) -> Result<std::result::Result<EntryHeader, Damage>> {
    let pos = spot.pos;
    let bytes = reader
        .get(pos, ENTRY_HEADER_BYTES as u64)
        .await
        .map_err(read_error(spot.path, pos))?;
    let checked = check_entry_header(
        bytes,
        spot.generation,
        pos,
        spot.segment_bytes,
        spot.entry_bytes_max,
    );
    let header = match checked {
        Ok(h) if spot.expect_first && h.flags & FLAG_FIRST_IN_WRITE == 0 => {
            Err(HeaderFault::Invalid)
        }
        Ok(h) if pos + h.footprint() > spot.limit => Err(HeaderFault::Invalid),
        other => other,
    };
    let header = match header {
        Ok(header) => header,
        Err(fault) => {
            return Ok(Err(Damage {
                offset: pos,
                reason: fault.describe(),
                zeroed: fault == HeaderFault::Zeroed,
                misplaced: fault == HeaderFault::Misplaced,
            }))
        }
    };
    if header.entry_kind() == Some(EntryKind::Data) {
        let len = u64::from(header.payload_len.get());
        let payload = reader
            .get(pos + ENTRY_HEADER_BYTES as u64, len)
            .await
            .map_err(read_error(spot.path, pos))?;
        if payload.len() as u64 != len || crc32fast::hash(payload) != header.payload_checksum.get()
        {
            return Ok(Err(Damage {
                offset: pos,
                reason: "payload checksum mismatch",
                zeroed: false,
                misplaced: false,
            }));
        }
    }
    Ok(Ok(header))
}

fn record_entry(scan: &mut SegmentScan, header: &EntryHeader, index: &mut RingIndex) {
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
    index.insert_recovered(op, epoch, location);
}

struct Damage {
    offset: u64,
    reason: &'static str,
    zeroed: bool,
    misplaced: bool,
}

/// Applies the decision table (rows 1–6) to damage found at `damage.offset`.
async fn finish_at_damage<F: StorageFile>(
    reader: &mut ScanReader<F>,
    path: &Path,
    segment: &SegmentHeader,
    end_limit: Option<u64>,
    config: &JournalConfig,
    mut scan: SegmentScan,
    damage: Damage,
) -> Result<SegmentScan> {
    let offset = damage.offset;
    if end_limit.is_some() || damage.misplaced {
        // Row 6: a later segment exists, so this data was durable. Row 12:
        // bytes meant for another offset are a misdirected write, which no
        // crash produces.
        return Err(Error::corruption(path, offset, damage.reason));
    }
    // In a segment written without fdatasync any number of writes at its
    // end may be torn, so later valid data proves nothing there.
    if segment.flags.get() & SEGMENT_FLAG_NO_SYNC == 0 {
        if let Some((later, what)) = evidence_after_damage(reader, path, segment, offset).await? {
            // Rows 5 and 12.
            return Err(Error::corruption(
                path,
                offset,
                format!("{}, but {what} at offset {later}", damage.reason),
            ));
        }
    }
    scan.valid_end = offset;
    if damage.zeroed {
        // Row 1.
        scan.tail = TailState::Clean;
        return Ok(scan);
    }
    if config.recovery == Recovery::Strict {
        return Err(Error::corruption(
            path,
            offset,
            format!("{} (torn tail; recovery is Strict)", damage.reason),
        ));
    }
    // Rows 2–4.
    tracing::warn!(path = %path.display(), offset, reason = damage.reason, "cutting a torn tail");
    scan.tail = TailState::Torn {
        path: path.to_path_buf(),
        offset,
        reason: damage.reason.to_string(),
    };
    Ok(scan)
}

/// Evidence that damage at `offset` of the last segment is not a torn
/// tail: the position and kind of the proof found after it.
///
/// * `writes_in_flight` (D, from the segment header) valid write starts:
///   at most D writes were unfinished at a crash and any acknowledged write
///   precedes them all (acknowledgements are in order), so a D-th write
///   after the damaged one means the damaged one had finished — damage in
///   the middle. A valid write start is a verifying header flagged
///   first-in-write at a block boundary; the D-th one begins at most
///   D × `batch_bytes_max` after the damaged write's start, which is at or
///   before `offset`.
/// * A verifying header of this generation at an 8-byte position other than
///   the offset it names: a misdirected write. A torn write leaves sectors
///   at their own offsets or none, so this cannot come from a crash.
async fn evidence_after_damage<F: StorageFile>(
    reader: &mut ScanReader<F>,
    path: &Path,
    segment: &SegmentHeader,
    offset: u64,
) -> Result<Option<(u64, &'static str)>> {
    let mut search = EvidenceSearch::new(segment, offset);
    while let Some(candidate) = search.next_candidate() {
        let bytes = reader
            .get(candidate, ENTRY_HEADER_BYTES as u64)
            .await
            .map_err(read_error(path, candidate))?;
        if let Some(found) = search.examine(candidate, bytes) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The search behind [`evidence_after_damage`], shared with the read-only
/// scan of `crate::inspect`: which offsets to read (`next_candidate`) and
/// what a header-sized read there proves (`examine`).
pub(crate) struct EvidenceSearch {
    generation: u64,
    segment_bytes: u64,
    depth: u64,
    reach: u64,
    write_starts: u64,
    candidate: u64,
}

impl EvidenceSearch {
    /// A search for evidence after damage at `offset` of `segment`.
    pub(crate) fn new(segment: &SegmentHeader, offset: u64) -> EvidenceSearch {
        let depth = u64::from(segment.writes_in_flight.get());
        EvidenceSearch {
            generation: segment.generation.get(),
            segment_bytes: segment.segment_bytes.get(),
            depth,
            reach: offset.saturating_add(depth.saturating_mul(segment.batch_bytes_max.get())),
            write_starts: 0,
            candidate: offset,
        }
    }

    /// The next offset to read `ENTRY_HEADER_BYTES` at, or `None` when the
    /// search is out of reach.
    pub(crate) fn next_candidate(&mut self) -> Option<u64> {
        self.candidate += ENTRY_ALIGN_BYTES;
        let fits = self.candidate + ENTRY_HEADER_BYTES as u64 <= self.segment_bytes;
        (self.candidate <= self.reach && fits).then_some(self.candidate)
    }

    /// What the bytes read at `candidate` prove, if anything yet.
    pub(crate) fn examine(&mut self, candidate: u64, bytes: &[u8]) -> Option<(u64, &'static str)> {
        if bytes.len() < 8 || bytes[4..8] != ENTRY_MAGIC.to_le_bytes() {
            return None;
        }
        match check_entry_header(
            bytes,
            self.generation,
            candidate,
            self.segment_bytes,
            ENTRY_BYTES_MAX_LIMIT,
        ) {
            Ok(h) if h.flags & FLAG_FIRST_IN_WRITE != 0 => {
                self.write_starts += 1;
                (self.write_starts >= self.depth).then_some((candidate, "valid writes follow it"))
            }
            Err(HeaderFault::Misplaced) => Some((candidate, "a misdirected write lies later")),
            _ => None,
        }
    }
}
