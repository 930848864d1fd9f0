//! A journal directory's files in memory: putting them on the simulated
//! disk, reading superblocks and segments with the journal's own decoders,
//! recomputing checksums, and applying [`Mutation`]s.

use super::input::{
    Mutation, RawFile, FIELD_BYTES_MAX, FILE_BYTES_MAX, GENERATIONS, RAW_EXTEND, RAW_FILES_MAX,
    RAW_RESEAL,
};
use super::templates::{Template, TEMPLATE_COUNT};
use super::DIR;
use ringstore_journal::format::{EntryHeader, SegmentHeader, BLOCK_BYTES, SEGMENT_HEADER_BYTES};
use ringstore_journal::storage::{MemStorage, Storage};
use ringstore_journal::superblock::{
    self, JournalSuperblock, SuperblockKind, SUPERBLOCK_COPIES, SUPERBLOCK_COPY_BYTES,
    SUPERBLOCK_FILE_BYTES, SUPERBLOCK_FILE_NAME,
};
use ringstore_journal::verify::{
    check_segment_header, SegmentHeaderStatus, SegmentOutcome, SegmentScanner, Step,
    SUPERBLOCK_TEMP_NAME,
};
use ringstore_journal::{segment_file_name, segment_generation};
use std::path::Path;

/// Sector size of the simulated disk (the unit of tearing).
pub const SECTOR_BYTES: usize = 512;

/// A journal directory's files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dir {
    /// The `superblock` file.
    pub superblock: Option<Vec<u8>>,
    /// `superblock.tmp` (a superblock creation a crash interrupted).
    pub superblock_temp: Option<Vec<u8>>,
    /// Segment files `(generation, bytes)` in generation order; generation 0
    /// is a stray file of a segment-like name.
    pub segments: Vec<(u64, Vec<u8>)>,
}

impl Dir {
    /// Puts the files on `storage` under [`DIR`].
    pub(super) fn install(&self, storage: &MemStorage) {
        let dir = Path::new(DIR);
        if let Some(bytes) = &self.superblock {
            storage.insert_file(&dir.join(SUPERBLOCK_FILE_NAME), bytes.clone());
        }
        if let Some(bytes) = &self.superblock_temp {
            storage.insert_file(&dir.join(SUPERBLOCK_TEMP_NAME), bytes.clone());
        }
        for (generation, bytes) in &self.segments {
            storage.insert_file(&dir.join(segment_file_name(*generation)), bytes.clone());
        }
    }

    /// Reads the journal directory back from `storage`.
    pub(super) fn read(storage: &MemStorage) -> Dir {
        let dir = Path::new(DIR);
        let mut read = Dir::default();
        for name in storage.list_dir(dir).expect("list the in-memory directory") {
            let bytes = storage
                .file_bytes(&dir.join(&name))
                .expect("a listed file has bytes");
            if name == SUPERBLOCK_FILE_NAME {
                read.superblock = Some(bytes);
            } else if name == SUPERBLOCK_TEMP_NAME {
                read.superblock_temp = Some(bytes);
            } else {
                let generation = segment_generation(&name)
                    .unwrap_or_else(|| panic!("template: unexpected file {name:?}"));
                read.segments.push((generation, bytes));
            }
        }
        read.segments.sort_by_key(|(generation, _)| *generation);
        read
    }

    /// True if recovery will not take it for a new journal: it has a
    /// superblock or a segment file (a directory with neither is one, and
    /// nothing can tell it from a journal whose every file was lost).
    pub(super) fn holds_journal(&self) -> bool {
        self.superblock.is_some() || self.segments.iter().any(|(g, _)| *g != 0)
    }
}

/// The journal superblock chosen from a superblock file's copies, if any
/// verifies.
pub fn journal_superblock(file: &[u8]) -> Option<JournalSuperblock> {
    let chosen = superblock::decode(file, SuperblockKind::Journal).ok()?;
    JournalSuperblock::decode(&chosen.body).ok()
}

/// Recomputes the checksum of every copy of a superblock file that is
/// complete.
fn reseal_superblock(file: &mut [u8]) {
    for copy in 0..SUPERBLOCK_COPIES {
        reseal_superblock_copy(file, copy);
    }
}

fn reseal_superblock_copy(file: &mut [u8], copy: usize) {
    let start = copy * SUPERBLOCK_COPY_BYTES as usize;
    let end = start + SUPERBLOCK_COPY_BYTES as usize;
    if file.len() >= end {
        let checksum = crc32fast::hash(&file[start + 4..end]);
        file[start..start + 4].copy_from_slice(&checksum.to_le_bytes());
    }
}

/// Recomputes a segment header's checksum (if the file holds one).
fn reseal_segment_header(bytes: &mut [u8]) {
    if bytes.len() >= SEGMENT_HEADER_BYTES {
        let checksum = crc32fast::hash(&bytes[4..SEGMENT_HEADER_BYTES]);
        bytes[..4].copy_from_slice(&checksum.to_le_bytes());
    }
}

/// Runs the journal's own verifier over a segment file held in memory
/// (unsealed, as recovery scans a last segment): the entries that verify
/// and how the scan ended. `None` if its header does not verify.
pub fn scan_segment(bytes: &[u8], generation: u64) -> Option<(Vec<EntryHeader>, SegmentOutcome)> {
    let block = &bytes[..bytes.len().min(BLOCK_BYTES as usize)];
    let SegmentHeaderStatus::Valid(header) = check_segment_header(block, generation) else {
        return None;
    };
    let mut scanner = SegmentScanner::new(&header, None);
    let mut entries = Vec::new();
    let mut step = scanner.step(None);
    loop {
        step = match step {
            Step::Read { pos, len, .. } => {
                let start = (pos as usize).min(bytes.len());
                let end = (pos.saturating_add(len) as usize).min(bytes.len());
                scanner.step(Some(&bytes[start..end]))
            }
            Step::Entry(entry) => {
                entries.push(entry);
                scanner.step(None)
            }
            Step::Done(outcome) => return Some((entries, outcome)),
        };
    }
}

pub(super) fn outcome_end(outcome: &SegmentOutcome) -> u64 {
    match outcome {
        SegmentOutcome::Sealed { end } | SegmentOutcome::Clean { end } => *end,
        SegmentOutcome::Cut(cut) => cut.offset,
        SegmentOutcome::Damaged { offset, .. } => *offset,
    }
}

/// Picks a file: `file % count`.
fn pick(count: usize, file: u8) -> usize {
    usize::from(file) % count
}

/// Applies `mutation` to `dir` (segments kept in generation order).
pub(super) fn apply(dir: &mut Dir, mutation: &Mutation, templates: &[Template]) {
    let copy_bytes = SUPERBLOCK_COPY_BYTES as usize;
    let count = dir.segments.len();
    match mutation {
        Mutation::FlipBit { file, bit } if count > 0 => {
            let bytes = &mut dir.segments[pick(count, *file)].1;
            if !bytes.is_empty() {
                let bit = *bit as usize % (bytes.len() * 8);
                bytes[bit / 8] ^= 1 << (bit % 8);
            }
        }
        Mutation::ZeroSectors {
            file,
            sector,
            count: sectors_after,
        } if count > 0 => {
            let bytes = &mut dir.segments[pick(count, *file)].1;
            let sectors = bytes.len().div_ceil(SECTOR_BYTES);
            if sectors > 0 {
                let start = usize::from(*sector) % sectors * SECTOR_BYTES;
                let end =
                    (start + (usize::from(*sectors_after) + 1) * SECTOR_BYTES).min(bytes.len());
                bytes[start..end].fill(0);
            }
        }
        Mutation::Truncate { file, len } if count > 0 => {
            let bytes = &mut dir.segments[pick(count, *file)].1;
            let len = *len as usize % (bytes.len() + 1);
            bytes.truncate(len);
        }
        Mutation::CopySectors {
            from_file,
            from_sector,
            to_file,
            to_sector,
            count: sectors_after,
        } if count > 0 => {
            let from = dir.segments[pick(count, *from_file)].1.clone();
            let to = &mut dir.segments[pick(count, *to_file)].1;
            let (from_sectors, to_sectors) = (
                from.len().div_ceil(SECTOR_BYTES),
                to.len().div_ceil(SECTOR_BYTES),
            );
            if from_sectors > 0 && to_sectors > 0 {
                let src = usize::from(*from_sector) % from_sectors * SECTOR_BYTES;
                let dst = usize::from(*to_sector) % to_sectors * SECTOR_BYTES;
                let len = ((usize::from(*sectors_after) + 1) * SECTOR_BYTES)
                    .min(from.len() - src)
                    .min(to.len() - dst);
                to[dst..dst + len].copy_from_slice(&from[src..src + len]);
            }
        }
        Mutation::Remove { file } if count > 0 => {
            dir.segments.remove(pick(count, *file));
        }
        Mutation::Rename { file, generation } if count > 0 => {
            let (_, bytes) = dir.segments.remove(pick(count, *file));
            put_segment(dir, u64::from(*generation % GENERATIONS), bytes);
        }
        Mutation::Poke {
            file,
            offset,
            bytes: poke,
        } if count > 0 => {
            let bytes = &mut dir.segments[pick(count, *file)].1;
            if !bytes.is_empty() {
                let start = *offset as usize % bytes.len();
                let len = poke.len().min(bytes.len() - start);
                bytes[start..start + len].copy_from_slice(&poke[..len]);
            }
        }
        Mutation::SuperblockFlipBit { copy, bit } => {
            if let Some(file) = &mut dir.superblock {
                let bit = usize::from(*bit) % (copy_bytes * 8);
                let byte = usize::from(*copy) % SUPERBLOCK_COPIES * copy_bytes + bit / 8;
                if byte < file.len() {
                    file[byte] ^= 1 << (bit % 8);
                }
            }
        }
        Mutation::SuperblockZeroCopy { copy } => {
            if let Some(file) = &mut dir.superblock {
                let start = (usize::from(*copy) % SUPERBLOCK_COPIES * copy_bytes).min(file.len());
                let end = (start + copy_bytes).min(file.len());
                file[start..end].fill(0);
            }
        }
        Mutation::SuperblockTruncate { len } => {
            if let Some(file) = &mut dir.superblock {
                let len = usize::from(*len) % (file.len() + 1);
                file.truncate(len);
            }
        }
        Mutation::SuperblockRemove => dir.superblock = None,
        Mutation::SuperblockFrom {
            template,
            version,
            which,
        } => {
            let source = &templates[usize::from(*template) % TEMPLATE_COUNT];
            let Some(from) = source.superblock_version(*version) else {
                return;
            };
            let (from_copy, to_copy) = match which % 5 {
                0 => {
                    dir.superblock = Some(from.clone());
                    return;
                }
                1 => (0, 0),
                2 => (1, 1),
                3 => (0, 1),
                _ => (1, 0),
            };
            let to = dir
                .superblock
                .get_or_insert_with(|| vec![0; SUPERBLOCK_FILE_BYTES as usize]);
            let src = (from_copy * copy_bytes).min(from.len());
            let src_end = (src + copy_bytes).min(from.len());
            let dst = to_copy * copy_bytes;
            if to.len() < dst + (src_end - src) {
                to.resize(dst + (src_end - src), 0);
            }
            to[dst..dst + (src_end - src)].copy_from_slice(&from[src..src_end]);
        }
        Mutation::SegmentFrom {
            template,
            file,
            generation,
        } => {
            let source = &templates[usize::from(*template) % TEMPLATE_COUNT];
            if !source.dir.segments.is_empty() {
                let (_, bytes) = &source.dir.segments[pick(source.dir.segments.len(), *file)];
                put_segment(dir, u64::from(*generation % GENERATIONS), bytes.clone());
            }
        }
        Mutation::SuperblockWrite {
            copy,
            offset,
            len,
            value,
        } => {
            let copy = usize::from(*copy) % SUPERBLOCK_COPIES;
            let start = copy * copy_bytes;
            if let Some(file) = dir
                .superblock
                .as_mut()
                .filter(|f| f.len() >= start + copy_bytes)
            {
                let len = usize::from(*len) % FIELD_BYTES_MAX + 1;
                let at = start + 4 + usize::from(*offset) % (copy_bytes - 4 - len + 1);
                file[at..at + len].copy_from_slice(&value.to_le_bytes()[..len]);
                reseal_superblock_copy(file, copy);
            }
        }
        Mutation::SegmentHeaderWrite {
            file,
            offset,
            len,
            value,
        } if count > 0 => {
            let bytes = &mut dir.segments[pick(count, *file)].1;
            if bytes.len() >= SEGMENT_HEADER_BYTES {
                let len = usize::from(*len) % FIELD_BYTES_MAX + 1;
                let at = 4 + usize::from(*offset) % (SEGMENT_HEADER_BYTES - 4 - len + 1);
                bytes[at..at + len].copy_from_slice(&value.to_le_bytes()[..len]);
                reseal_segment_header(bytes);
            }
        }
        // A segment mutation with no segment left.
        _ => {}
    }
}

/// Puts a segment file at `generation`, replacing any file there.
fn put_segment(dir: &mut Dir, generation: u64, bytes: Vec<u8>) {
    dir.segments.retain(|(g, _)| *g != generation);
    dir.segments.push((generation, bytes));
    dir.segments.sort_by_key(|(g, _)| *g);
}

/// True if `mutation`, applied to `dir`, only changes bytes of segment
/// `generation` at or after `from`: a different tearing of the crash that
/// left them unsynced. Flips and zeroed sectors only (they keep the file
/// list, so `dir` is what the mutation sees).
pub(super) fn crash_like(dir: &Dir, mutation: &Mutation, (generation, from): (u64, u64)) -> bool {
    let count = dir.segments.len();
    let target = |file: u8| (count > 0).then(|| &dir.segments[pick(count, file)]);
    match mutation {
        Mutation::FlipBit { file, bit } => target(*file).is_some_and(|(g, bytes)| {
            !bytes.is_empty()
                && *g == generation
                && (*bit as usize % (bytes.len() * 8) / 8) as u64 >= from
        }),
        Mutation::ZeroSectors { file, sector, .. } => target(*file).is_some_and(|(g, bytes)| {
            let sectors = bytes.len().div_ceil(SECTOR_BYTES);
            sectors > 0
                && *g == generation
                && (usize::from(*sector) % sectors * SECTOR_BYTES) as u64 >= from
        }),
        _ => false,
    }
}

/// The directory a raw input describes.
pub(super) fn raw_dir(raw: &[RawFile]) -> Dir {
    let mut dir = Dir::default();
    for file in raw.iter().take(RAW_FILES_MAX) {
        let mut bytes = file.bytes.clone();
        bytes.truncate(FILE_BYTES_MAX);
        let reseal = file.name & RAW_RESEAL != 0;
        match file.name % GENERATIONS {
            0 => {
                if reseal {
                    reseal_superblock(&mut bytes);
                }
                if file.name & RAW_EXTEND != 0 {
                    dir.superblock_temp = Some(bytes);
                } else {
                    dir.superblock = Some(bytes);
                }
            }
            generation => {
                if file.name & RAW_EXTEND != 0 && bytes.len() >= SEGMENT_HEADER_BYTES {
                    let at = std::mem::offset_of!(SegmentHeader, segment_bytes);
                    let named = u64::from_le_bytes(
                        bytes[at..at + 8]
                            .try_into()
                            .expect("eight bytes of segment_bytes"),
                    );
                    let len = named.min(FILE_BYTES_MAX as u64) as usize;
                    if len > bytes.len() {
                        bytes.resize(len, 0);
                    }
                }
                if reseal {
                    reseal_segment_header(&mut bytes);
                }
                put_segment(&mut dir, u64::from(generation), bytes);
            }
        }
    }
    dir
}
