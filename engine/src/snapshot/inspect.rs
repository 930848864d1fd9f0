//! Read-only inspection of a shard's snapshot files and identity file: what
//! `ringstore snapshot inspect` and `snapshot verify` show.
//!
//! The checks are the loader's (`engine/FORMAT.md`, "Loading"; see
//! [`super::store`]), made with plain `std::fs` reads: nothing is created,
//! removed or locked, no glommio reactor or O_DIRECT is needed, so it works
//! on tmpfs, on a copy, and next to a running shard. Unlike the loader,
//! which stops at the first problem and skips to an older generation,
//! [`inspect_snapshot`] decodes as much as it can and returns every problem
//! as a [`SnapshotDamage`] naming the file and byte offset, so a damaged
//! file is described, not just refused.
//!
//! [`Check::Header`] reads only the 4 KiB header block (header, section
//! table, file length, name and domain); [`Check::Full`] also reads the
//! body and checks every section's CRC and the whole-file CRC.
//!
//! Trade-off: the header-block checks restate those of the async loader in
//! `store.rs` for synchronous reads; the format structs, constants and the
//! whole-file hasher ([`header_block_hasher`]) are shared.

use super::format::*;
use super::store::{parse_snapshot_file_name, snapshot_file_name};
use crate::identity::IDENTITY_FILE_NAME;
use ringstore_journal::format::align_up;
use serde::Serialize;
use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use uuid::Uuid;
use zerocopy::FromBytes;

/// Bytes read per call while checking a body.
pub const VERIFY_READ_BYTES: usize = 4 << 20;

/// Suffix of a snapshot being written (see `engine/FORMAT.md`).
const TEMP_SUFFIX: &str = ".snap.tmp";

/// Why a snapshot directory or file could not be inspected at all (the
/// journal scan's error type: the same three cases). Damage inside a file
/// is not an error: it is part of the [`SnapshotReport`].
pub use ringstore_journal::inspect::InspectError;

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

/// How much of a snapshot file to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The header block only: header checksum, version, name, domain, file
    /// length and section table. Reads 4 KiB.
    Header,
    /// Everything the loader checks: also every section's CRC and the
    /// whole-file CRC. Reads the whole body.
    Full,
}

/// Something in a snapshot file that fails verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotDamage {
    /// The file.
    pub path: PathBuf,
    /// Byte offset of the damaged field or section.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for SnapshotDamage {
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

/// The decoded snapshot header. Trust it only if
/// [`SnapshotReport::header_verified`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderInfo {
    /// Format version.
    pub version: u32,
    /// Entries in the section table.
    pub section_count: u32,
    /// The op the state is after.
    pub watermark: u64,
    /// The largest epoch seen.
    pub epoch: u64,
    /// The domain.
    pub domain: Uuid,
    /// When it was written, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Bytes of all sections.
    pub body_bytes: u64,
    /// The header block's CRC-32, as recorded.
    pub header_checksum: u32,
    /// The whole-file CRC-32, as recorded.
    pub file_checksum: u32,
}

/// One entry of the section table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SectionInfo {
    /// The name (invalid bytes replaced).
    pub name: String,
    /// The section's own format version.
    pub version: u32,
    /// Where it starts in the file.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// Its CRC-32, as recorded.
    pub checksum: u32,
    /// Whether its bytes match the CRC (`None`: not checked).
    pub checksum_ok: Option<bool>,
}

/// Everything [`inspect_snapshot`] found in one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotReport {
    /// The file.
    pub path: PathBuf,
    /// The op in its name.
    pub name_watermark: u64,
    /// The file's length.
    pub file_bytes: u64,
    /// The header, if the file is long enough and the magic matches.
    pub header: Option<HeaderInfo>,
    /// The header block's checksum verified.
    pub header_verified: bool,
    /// The section table (empty unless the header verified).
    pub sections: Vec<SectionInfo>,
    /// Whether the whole-file CRC matches (`None`: not checked).
    pub file_checksum_ok: Option<bool>,
    /// What was checked.
    pub full_check: bool,
    /// Everything that failed verification.
    pub damage: Vec<SnapshotDamage>,
}

impl SnapshotReport {
    /// True when every check made passed.
    pub fn is_intact(&self) -> bool {
        self.damage.is_empty()
    }
}

/// The snapshots of one directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotDirReport {
    /// The directory.
    pub dir: PathBuf,
    /// False if the directory does not exist (a shard that never
    /// checkpointed, or not a shard).
    pub exists: bool,
    /// One report per `snapshot-<op>.snap`, oldest first.
    pub snapshots: Vec<SnapshotReport>,
    /// `*.snap.tmp` files: snapshots a crash interrupted (the next open
    /// removes them), or one being written right now.
    pub temp_files: Vec<PathBuf>,
}

impl SnapshotDirReport {
    /// The watermark of the newest snapshot with no damage found: the one
    /// recovery would load (given the checks made).
    pub fn newest_intact(&self) -> Option<u64> {
        self.snapshots
            .iter()
            .rev()
            .find(|s| s.is_intact())
            .map(|s| s.name_watermark)
    }

    /// Bytes of all snapshot files.
    pub fn file_bytes(&self) -> u64 {
        self.snapshots.iter().map(|s| s.file_bytes).sum()
    }
}

/// The files of a snapshot directory, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotFiles {
    /// `snapshot-<op>.snap` files as `(op, path)`, oldest first.
    pub snapshots: Vec<(u64, PathBuf)>,
    /// `*.snap.tmp` files.
    pub temp_files: Vec<PathBuf>,
}

/// The snapshot and temporary files in `dir`. A missing directory holds
/// none.
pub fn list_snapshot_files(dir: &Path) -> Result<SnapshotFiles, InspectError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SnapshotFiles::default()),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Err(InspectError::NotADirectory {
                path: dir.to_path_buf(),
            })
        }
        Err(e) => return Err(io_error("list directory", dir, None)(e)),
    };
    let mut snapshots = Vec::new();
    let mut temps = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("list directory", dir, None))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(op) = parse_snapshot_file_name(name) {
            snapshots.push((op, entry.path()));
        } else if name.ends_with(TEMP_SUFFIX) {
            temps.push(entry.path());
        }
    }
    snapshots.sort();
    temps.sort();
    Ok(SnapshotFiles {
        snapshots,
        temp_files: temps,
    })
}

/// Inspects every snapshot file in `dir` (see [`inspect_snapshot`]).
/// `progress` is called with the bytes checked so far, of
/// [`SnapshotDirReport::file_bytes`] in all.
pub fn inspect_snapshot_dir(
    dir: &Path,
    check: Check,
    domain: Option<Uuid>,
    progress: &mut dyn FnMut(u64),
) -> Result<SnapshotDirReport, InspectError> {
    let exists = dir.is_dir();
    let SnapshotFiles {
        snapshots: files,
        temp_files,
    } = list_snapshot_files(dir)?;
    let mut snapshots = Vec::with_capacity(files.len());
    let mut done = 0;
    for (_, path) in files {
        let report = inspect_snapshot(&path, check, domain, &mut |n| progress(done + n))?;
        done += report.file_bytes;
        progress(done);
        snapshots.push(report);
    }
    Ok(SnapshotDirReport {
        dir: dir.to_path_buf(),
        exists,
        snapshots,
        temp_files,
    })
}

/// Checks the snapshot file at `path` (see [`Check`]); with `domain`, a
/// snapshot of another domain counts as damage. `progress` is called with
/// the bytes of this file checked so far.
pub fn inspect_snapshot(
    path: &Path,
    check: Check,
    domain: Option<Uuid>,
    progress: &mut dyn FnMut(u64),
) -> Result<SnapshotReport, InspectError> {
    let file = File::open(path).map_err(io_error("open", path, None))?;
    let file_bytes = file.metadata().map_err(io_error("stat", path, None))?.len();
    let name_watermark = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_snapshot_file_name)
        .unwrap_or(0);
    let mut report = SnapshotReport {
        path: path.to_path_buf(),
        name_watermark,
        file_bytes,
        header: None,
        header_verified: false,
        sections: Vec::new(),
        file_checksum_ok: None,
        full_check: check == Check::Full,
        damage: Vec::new(),
    };
    let mut block = vec![0; HEADER_BLOCK_BYTES as usize];
    let got = read_fully(&file, &mut block, 0).map_err(io_error("read", path, Some(0)))?;
    if got < block.len() {
        report.add_damage(
            got as u64,
            format!("file is {got} bytes, the header block needs {HEADER_BLOCK_BYTES} (truncated)"),
        );
        return Ok(report);
    }
    let Some(table) = check_header_block(&block, &mut report, domain) else {
        return Ok(report);
    };
    if check == Check::Full {
        check_body(&file, &block, table, &mut report, progress)?;
    }
    Ok(report)
}

impl SnapshotReport {
    fn add_damage(&mut self, offset: u64, reason: impl Into<String>) {
        self.damage.push(SnapshotDamage {
            path: self.path.clone(),
            offset,
            reason: reason.into(),
        });
    }
}

/// Offset of a header field.
macro_rules! at {
    ($field:ident) => {
        std::mem::offset_of!(SnapshotHeader, $field) as u64
    };
}

/// The loader's header-block checks. Fills in the header and section table
/// and records damage; returns the table if the body can be checked
/// against it.
fn check_header_block(
    block: &[u8],
    report: &mut SnapshotReport,
    domain: Option<Uuid>,
) -> Option<Vec<SectionEntry>> {
    let Ok((header, _)) = SnapshotHeader::read_from_prefix(block) else {
        report.add_damage(0, "short header");
        return None;
    };
    if header.magic.get() != SNAPSHOT_MAGIC {
        report.add_damage(
            at!(magic),
            format!("magic {:#010x} is not a snapshot's", header.magic.get()),
        );
        return None;
    }
    report.header = Some(HeaderInfo {
        version: header.version.get(),
        section_count: header.section_count.get(),
        watermark: header.watermark.get(),
        epoch: header.epoch.get(),
        domain: Uuid::from_bytes(header.domain),
        created_unix_ms: header.created_unix_ms.get(),
        body_bytes: header.body_bytes.get(),
        header_checksum: header.header_checksum.get(),
        file_checksum: header.file_checksum.get(),
    });
    if header.header_checksum.get() != crc32fast::hash(&block[4..]) {
        report.add_damage(
            at!(header_checksum),
            "header block checksum mismatch (header or section table damaged)",
        );
        return None;
    }
    report.header_verified = true;
    if header.version.get() != SNAPSHOT_FORMAT_VERSION {
        report.add_damage(
            at!(version),
            format!(
                "snapshot format version {}, this build reads version {SNAPSHOT_FORMAT_VERSION}",
                header.version.get()
            ),
        );
        return None;
    }
    let watermark = header.watermark.get();
    let expected_name = snapshot_file_name(watermark);
    if report.path.file_name().and_then(|n| n.to_str()) != Some(expected_name.as_str()) {
        report.add_damage(
            at!(watermark),
            format!("the header says op {watermark}, the file name does not match"),
        );
    }
    let found = Uuid::from_bytes(header.domain);
    if let Some(expected) = domain {
        if found != expected {
            report.add_damage(
                at!(domain),
                format!("belongs to domain {found}, the shard's identity names {expected}"),
            );
        }
    }
    let body_bytes = header.body_bytes.get();
    let needed = BODY_OFFSET.checked_add(align_up(body_bytes.min(u64::MAX / 2), BLOCK_BYTES));
    let mut body_checkable = true;
    match needed {
        None => {
            report.add_damage(at!(body_bytes), "body length overflows");
            body_checkable = false;
        }
        Some(needed) if report.file_bytes < needed => {
            report.add_damage(
                report.file_bytes,
                format!(
                    "file is {} bytes, its header needs {needed} (truncated)",
                    report.file_bytes
                ),
            );
            body_checkable = false;
        }
        Some(_) => {}
    }
    let section_count = header.section_count.get() as usize;
    if section_count > SECTION_COUNT_MAX {
        report.add_damage(
            at!(section_count),
            format!("{section_count} sections, at most {SECTION_COUNT_MAX}"),
        );
        return None;
    }
    let mut table = Vec::with_capacity(section_count);
    let mut table_ok = true;
    let mut names = BTreeSet::new();
    let mut expected_offset = Some(BODY_OFFSET);
    for i in 0..section_count {
        let at = SNAPSHOT_HEADER_BYTES + i * SECTION_ENTRY_BYTES;
        let Ok((entry, _)) = SectionEntry::read_from_prefix(&block[at..]) else {
            report.add_damage(at as u64, "short section table");
            return None;
        };
        let name = match entry.name() {
            Some(name) => name.to_owned(),
            None => {
                report.add_damage(at as u64, format!("section {i} has a bad name"));
                table_ok = false;
                String::from_utf8_lossy(&entry.name)
                    .trim_end_matches('\0')
                    .to_owned()
            }
        };
        if !names.insert(name.clone()) {
            report.add_damage(at as u64, format!("section {name:?} appears twice"));
            table_ok = false;
        }
        if Some(entry.offset.get()) != expected_offset {
            report.add_damage(
                (at + std::mem::offset_of!(SectionEntry, offset)) as u64,
                format!(
                    "section {name:?} starts at {}, expected {}",
                    entry.offset.get(),
                    expected_offset.map_or("(overflow)".into(), |o| o.to_string())
                ),
            );
            table_ok = false;
        }
        expected_offset = entry
            .offset
            .get()
            .checked_add(entry.len.get())
            .filter(|_| expected_offset.is_some());
        report.sections.push(SectionInfo {
            name,
            version: entry.version.get(),
            offset: entry.offset.get(),
            len: entry.len.get(),
            checksum: entry.checksum.get(),
            checksum_ok: None,
        });
        table.push(entry);
    }
    if table_ok && expected_offset != BODY_OFFSET.checked_add(body_bytes) {
        report.add_damage(at!(body_bytes), "sections do not fill the body exactly");
        table_ok = false;
    }
    (table_ok && body_checkable).then_some(table)
}

/// Checks every section's CRC and the whole-file CRC, reading the body
/// front to back.
fn check_body(
    file: &File,
    block: &[u8],
    table: Vec<SectionEntry>,
    report: &mut SnapshotReport,
    progress: &mut dyn FnMut(u64),
) -> Result<(), InspectError> {
    let mut file_hasher = header_block_hasher(block);
    let mut buf = vec![0; VERIFY_READ_BYTES];
    let mut truncated = false;
    for (i, entry) in table.iter().enumerate() {
        let start = entry.offset.get();
        let end = start + entry.len.get();
        let mut hasher = crc32fast::Hasher::new();
        let mut pos = start;
        while pos < end {
            let n = (end - pos).min(VERIFY_READ_BYTES as u64) as usize;
            let got = read_fully(file, &mut buf[..n], pos).map_err(io_error(
                "read",
                &report.path,
                Some(pos),
            ))?;
            hasher.update(&buf[..got]);
            pos += got as u64;
            progress(pos);
            if got < n {
                // Shorter than when its length was checked: a concurrent
                // truncation, reported rather than trusted.
                report.add_damage(pos, "file ends inside this section (truncated)");
                truncated = true;
                break;
            }
        }
        if truncated {
            break;
        }
        let checksum = hasher.finalize();
        let ok = checksum == entry.checksum.get();
        report.sections[i].checksum_ok = Some(ok);
        if !ok {
            let name = report.sections[i].name.clone();
            report.add_damage(
                start,
                format!(
                    "section {name:?} fails its checksum (recorded {:#010x}, computed \
                     {checksum:#010x})",
                    entry.checksum.get()
                ),
            );
        }
        file_hasher.combine(&crc32fast::Hasher::new_with_initial_len(
            checksum,
            entry.len.get(),
        ));
    }
    if !truncated {
        let ok = file_hasher.finalize() == report.header.as_ref().map_or(0, |h| h.file_checksum);
        report.file_checksum_ok = Some(ok);
        if !ok {
            report.add_damage(at!(file_checksum), "whole-file checksum mismatch");
        }
    }
    progress(report.file_bytes);
    Ok(())
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

/// What the identity file of a shard directory holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum IdentityReport {
    /// No identity file (a shard that was never opened).
    Missing {
        /// Where it would be.
        path: PathBuf,
    },
    /// It verifies.
    Valid {
        /// The file.
        path: PathBuf,
        /// The domain the shard's data belongs to.
        domain: Uuid,
        /// When the shard joined it, ms since the Unix epoch.
        created_unix_ms: u64,
    },
    /// It does not verify.
    Damaged {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad field.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

impl IdentityReport {
    /// The domain, if the file verifies.
    pub fn domain(&self) -> Option<Uuid> {
        match self {
            IdentityReport::Valid { domain, .. } => Some(*domain),
            _ => None,
        }
    }
}

/// Reads `<shard_dir>/identity` (format in `engine/FORMAT.md`).
pub fn read_identity_file(shard_dir: &Path) -> Result<IdentityReport, InspectError> {
    let path = shard_dir.join(IDENTITY_FILE_NAME);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(IdentityReport::Missing { path })
        }
        Err(e) => return Err(io_error("open", &path, None)(e)),
    };
    let mut bytes = vec![0; BLOCK_BYTES as usize];
    let got = read_fully(&file, &mut bytes, 0).map_err(io_error("read", &path, Some(0)))?;
    let damaged = |path: PathBuf, offset: u64, reason: String| {
        Ok(IdentityReport::Damaged {
            path,
            offset,
            reason,
        })
    };
    let Ok((header, _)) = IdentityHeader::read_from_prefix(&bytes[..got]) else {
        return damaged(
            path,
            got as u64,
            format!("{got} bytes, the header needs {IDENTITY_HEADER_BYTES} (truncated)"),
        );
    };
    if header.magic.get() != IDENTITY_MAGIC {
        return damaged(path, 4, "bad magic".into());
    }
    if header.checksum.get() != header.compute_checksum() {
        return damaged(path, 0, "checksum mismatch".into());
    }
    if header.version.get() != IDENTITY_FORMAT_VERSION {
        return damaged(
            path,
            8,
            format!(
                "identity format version {}, this build reads version {IDENTITY_FORMAT_VERSION}",
                header.version.get()
            ),
        );
    }
    Ok(IdentityReport::Valid {
        path,
        domain: Uuid::from_bytes(header.domain),
        created_unix_ms: header.created_unix_ms.get(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    /// A well-formed snapshot file with `sections`, as the writer lays it
    /// out.
    fn snapshot_bytes(watermark: u64, domain: Uuid, sections: &[(&str, &[u8])]) -> Vec<u8> {
        let mut block = vec![0u8; HEADER_BLOCK_BYTES as usize];
        let mut body = Vec::new();
        for (i, (name, bytes)) in sections.iter().enumerate() {
            let mut entry = SectionEntry {
                name: [0; 40],
                version: 1.into(),
                checksum: crc32fast::hash(bytes).into(),
                offset: (BODY_OFFSET + body.len() as u64).into(),
                len: (bytes.len() as u64).into(),
            };
            entry.name[..name.len()].copy_from_slice(name.as_bytes());
            let at = SNAPSHOT_HEADER_BYTES + i * SECTION_ENTRY_BYTES;
            block[at..at + SECTION_ENTRY_BYTES].copy_from_slice(entry.as_bytes());
            body.extend_from_slice(bytes);
        }
        let mut header = SnapshotHeader {
            header_checksum: 0.into(),
            magic: SNAPSHOT_MAGIC.into(),
            version: SNAPSHOT_FORMAT_VERSION.into(),
            section_count: (sections.len() as u32).into(),
            watermark: watermark.into(),
            epoch: 3.into(),
            domain: *domain.as_bytes(),
            created_unix_ms: 1_700_000_000_000.into(),
            body_bytes: (body.len() as u64).into(),
            file_checksum: 0.into(),
            reserved: 0.into(),
        };
        block[..SNAPSHOT_HEADER_BYTES].copy_from_slice(header.as_bytes());
        let mut hasher = header_block_hasher(&block);
        hasher.update(&body);
        header.file_checksum = hasher.finalize().into();
        block[..SNAPSHOT_HEADER_BYTES].copy_from_slice(header.as_bytes());
        header.header_checksum = crc32fast::hash(&block[4..]).into();
        block[..SNAPSHOT_HEADER_BYTES].copy_from_slice(header.as_bytes());
        let mut file = block;
        file.extend_from_slice(&body);
        file.resize(align_up(file.len() as u64, BLOCK_BYTES) as usize, 0);
        file
    }

    fn write(dir: &Path, watermark: u64, bytes: &[u8]) -> PathBuf {
        let path = dir.join(snapshot_file_name(watermark));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_good_snapshot_verifies_and_every_flipped_byte_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let domain = Uuid::from_u128(7);
        let bytes = snapshot_bytes(42, domain, &[("a", b"hello"), ("b.c", &[9; 5000])]);
        let path = write(dir.path(), 42, &bytes);
        let report = inspect_snapshot(&path, Check::Full, Some(domain), &mut |_| {}).unwrap();
        assert!(report.is_intact(), "{:?}", report.damage);
        assert_eq!(report.header.as_ref().unwrap().watermark, 42);
        assert_eq!(report.sections.len(), 2);
        assert_eq!(report.sections[1].offset, BODY_OFFSET + 5);
        assert_eq!(report.file_checksum_ok, Some(true));
        // Every covered byte: header, table, the zeros after it, the body.
        let body_end = BODY_OFFSET as usize + 5005;
        for at in (0..body_end).step_by(7) {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x04;
            std::fs::write(&path, &damaged).unwrap();
            let report = inspect_snapshot(&path, Check::Full, None, &mut |_| {}).unwrap();
            assert!(!report.is_intact(), "flip at {at} not caught");
        }
        // A flip in a section names that section's offset.
        let mut damaged = bytes.clone();
        damaged[BODY_OFFSET as usize + 100] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        let report = inspect_snapshot(&path, Check::Full, None, &mut |_| {}).unwrap();
        assert_eq!(report.damage.len(), 2, "{:?}", report.damage);
        assert_eq!(report.damage[0].offset, BODY_OFFSET + 5);
        assert!(report.damage[0].reason.contains("\"b.c\""));
        assert_eq!(report.sections[1].checksum_ok, Some(false));
        // The header-only check does not read the body.
        let report = inspect_snapshot(&path, Check::Header, None, &mut |_| {}).unwrap();
        assert!(report.is_intact());
        assert_eq!(report.sections[1].checksum_ok, None);
    }

    #[test]
    fn truncation_name_and_domain_mismatches_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let domain = Uuid::from_u128(7);
        let bytes = snapshot_bytes(5, domain, &[("a", &[1; 9000])]);
        let path = write(dir.path(), 5, &bytes[..8192]);
        let report = inspect_snapshot(&path, Check::Full, None, &mut |_| {}).unwrap();
        assert_eq!(report.damage.len(), 1);
        assert!(report.damage[0].reason.contains("truncated"));
        let path = write(dir.path(), 6, &bytes);
        let report =
            inspect_snapshot(&path, Check::Full, Some(Uuid::from_u128(8)), &mut |_| {}).unwrap();
        let reasons: Vec<_> = report.damage.iter().map(|d| d.reason.as_str()).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("file name"));
        assert!(reasons[1].contains("domain"));
        let path = write(dir.path(), 7, &bytes[..100]);
        let report = inspect_snapshot(&path, Check::Full, None, &mut |_| {}).unwrap();
        assert!(report.damage[0].reason.contains("truncated"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let domain = Uuid::from_u128(1);
        let good = snapshot_bytes(1, domain, &[("a", b"xyz"), ("b", b"")]);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..300 {
            let mut bytes = good.clone();
            for _ in 0..1 + round % 4 {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = next() as u8;
            }
            bytes.truncate((next() % (bytes.len() as u64 + 1)) as usize);
            let path = write(dir.path(), 1, &bytes);
            let _ = inspect_snapshot(&path, Check::Full, Some(domain), &mut |_| {}).unwrap();
        }
    }

    #[test]
    fn a_directory_lists_generations_and_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let domain = Uuid::from_u128(3);
        write(dir.path(), 10, &snapshot_bytes(10, domain, &[("a", b"1")]));
        write(dir.path(), 20, &snapshot_bytes(20, domain, &[("a", b"2")]));
        std::fs::write(
            dir.path().join("snapshot-00000000000000000030.snap.tmp"),
            b"x",
        )
        .unwrap();
        std::fs::write(dir.path().join("unrelated"), b"x").unwrap();
        let report =
            inspect_snapshot_dir(dir.path(), Check::Full, Some(domain), &mut |_| {}).unwrap();
        assert!(report.exists);
        let ops: Vec<_> = report.snapshots.iter().map(|s| s.name_watermark).collect();
        assert_eq!(ops, [10, 20]);
        assert_eq!(report.temp_files.len(), 1);
        assert_eq!(report.newest_intact(), Some(20));
        let missing =
            inspect_snapshot_dir(&dir.path().join("none"), Check::Full, None, &mut |_| {}).unwrap();
        assert!(!missing.exists && missing.snapshots.is_empty());
    }

    #[test]
    fn the_identity_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_identity_file(dir.path()).unwrap(),
            IdentityReport::Missing { .. }
        ));
        let mut header = IdentityHeader {
            checksum: 0.into(),
            magic: IDENTITY_MAGIC.into(),
            version: IDENTITY_FORMAT_VERSION.into(),
            reserved: 0.into(),
            domain: *Uuid::from_u128(9).as_bytes(),
            created_unix_ms: 5.into(),
        };
        header.checksum = header.compute_checksum().into();
        let mut bytes = header.as_bytes().to_vec();
        bytes.resize(BLOCK_BYTES as usize, 0);
        std::fs::write(dir.path().join(IDENTITY_FILE_NAME), &bytes).unwrap();
        let report = read_identity_file(dir.path()).unwrap();
        assert_eq!(report.domain(), Some(Uuid::from_u128(9)));
        bytes[20] ^= 1;
        std::fs::write(dir.path().join(IDENTITY_FILE_NAME), &bytes).unwrap();
        assert!(matches!(
            read_identity_file(dir.path()).unwrap(),
            IdentityReport::Damaged { offset: 0, .. }
        ));
    }
}
