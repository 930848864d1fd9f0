//! Read-only inspection of a shard's identity and snapshot files: what
//! `ringstore snapshot inspect` and `snapshot verify` show, and the check
//! before a snapshot is uploaded to object storage.
//!
//! This module only reads: plain `std::fs` reads, nothing created, removed
//! or locked, no glommio reactor or O_DIRECT, so it works on tmpfs, on a
//! copy, and next to a running shard. It decides nothing itself: every
//! verdict is that of the sans-IO verifiers recovery uses too —
//! [`SnapshotVerifier`] for each snapshot file,
//! [`crate::layout::identity::identity_verdict`] for the identity, and
//! [`snapshot_covers_journal`] for the generations against the journal's
//! watermark — so `snapshot verify` refuses a shard exactly when opening it
//! would, with the same message. Unlike the loader, which stops at the
//! first problem and skips to an older generation, [`inspect_snapshot`]
//! goes on past damage and reports all of it, so a damaged file is
//! described, not just refused.
//!
//! [`Check::Header`] reads only each file's 4 KiB header block (header,
//! section table, file length, name and domain); [`Check::Full`] also reads
//! the body, checks every section's CRC and the whole-file CRC, and reads
//! the journal's watermark (its read-only scan) to decide what an open
//! would.

use super::store::parse_snapshot_file_name;
use crate::error::{Error, SkippedSnapshot};
use crate::layout::identity::{
    data_files, identity_verdict, journal_listing, IdentityDamage, IdentityVerdict,
    IDENTITY_FILE_NAME,
};
use crate::layout::{JOURNAL_DIR_NAME, RESTORE_MARKER_NAME, SNAPSHOT_DIR_NAME};
use serde::Serialize;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use uuid::Uuid;

pub use super::verify::{
    snapshot_covers_journal, Check, HeaderInfo, ReadFailure, SectionInfo, SnapshotDamage,
    SnapshotFault, SnapshotReport, SnapshotVerifier,
};
use crate::format::{BLOCK_BYTES, HEADER_BLOCK_BYTES};

/// Bytes read per call while checking a body.
pub const VERIFY_READ_BYTES: usize = 4 << 20;

/// Suffix of a snapshot being written or removed (see `engine/FORMAT.md`).
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
    /// removes them), or one being written or removed right now.
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

    /// The generations newer than [`SnapshotDirReport::newest_intact`]
    /// (all of them if none is intact), newest first, each with the
    /// reason an open skips it: its first damage, as the loader reports
    /// it.
    pub fn skipped_by_open(&self) -> Vec<SkippedSnapshot> {
        self.snapshots
            .iter()
            .rev()
            .map_while(|s| s.refusal().map(|reason| (s, reason)))
            .map(|(s, reason)| SkippedSnapshot {
                path: s.path.clone(),
                reason,
            })
            .collect()
    }

    /// Bytes of all snapshot files.
    pub fn file_bytes(&self) -> u64 {
        self.snapshots.iter().map(|s| s.file_bytes).sum()
    }

    /// True if any file has damage.
    pub fn damage_found(&self) -> bool {
        self.snapshots.iter().any(|s| !s.is_intact())
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
        let report = match inspect_snapshot(&path, check, domain, &mut |n| progress(done + n)) {
            Ok(report) => report,
            // Listed, then gone: removed meanwhile (a running shard's
            // prune), so no open will see it either.
            Err(InspectError::Io {
                op: "open", source, ..
            }) if source.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
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

/// Checks the snapshot file at `path` (see [`Check`]) with
/// [`SnapshotVerifier`]; with `domain`, a snapshot of another domain counts
/// as damage. `progress` is called with the bytes of this file checked so
/// far.
///
/// Only a file that cannot be opened is an error. A read that fails is
/// made once more (the loader reads a file twice before it skips it); if
/// it fails again, the report carries it ([`SnapshotReport::read_failure`])
/// and the file counts as not intact, as an open passes over it.
pub fn inspect_snapshot(
    path: &Path,
    check: Check,
    domain: Option<Uuid>,
    progress: &mut dyn FnMut(u64),
) -> Result<SnapshotReport, InspectError> {
    let file = match ringstore_journal::inspect::open_regular(path) {
        Ok(file) => file,
        // Not a regular file (a directory, a FIFO) at a snapshot's name: no
        // snapshot to read, which an open passes over as unreadable.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            let failure = ReadFailure::new("open", 0, &e);
            return Ok(SnapshotVerifier::new(path, 0, domain, check).abandon(failure));
        }
        Err(e) => return Err(io_error("open", path, None)(e)),
    };
    let file_bytes = match file.metadata() {
        Ok(meta) => meta.len(),
        Err(e) => {
            let failure = ReadFailure::new("file length", 0, &e);
            return Ok(SnapshotVerifier::new(path, 0, domain, check).abandon(failure));
        }
    };
    let mut verifier = SnapshotVerifier::new(path, file_bytes, domain, check);
    let mut block = vec![0; HEADER_BLOCK_BYTES as usize];
    let got = match read_twice(&file, &mut block, 0) {
        Ok(got) => got,
        Err(failure) => return Ok(verifier.abandon(failure)),
    };
    verifier.header_block(&block[..got]);
    if let Some(range) = verifier.body_range() {
        let mut buf = vec![0; VERIFY_READ_BYTES];
        let mut pos = range.start;
        while pos < range.end {
            let n = (range.end - pos).min(VERIFY_READ_BYTES as u64) as usize;
            let got = match read_twice(&file, &mut buf[..n], pos) {
                Ok(got) => got,
                Err(failure) => return Ok(verifier.abandon(failure)),
            };
            verifier.body(&buf[..got]);
            pos += got as u64;
            progress(pos);
            if got < n {
                // Shorter than when its length was checked (a concurrent
                // truncation): the verifier reports where it ends.
                break;
            }
        }
    }
    progress(file_bytes);
    Ok(verifier.finish())
}

/// [`read_fully`], made once more if it fails.
fn read_twice(file: &File, buf: &mut [u8], offset: u64) -> Result<usize, ReadFailure> {
    read_fully(file, buf, offset)
        .or_else(|_| read_fully(file, buf, offset))
        .map_err(|e| ReadFailure::new("read", offset, &e))
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

/// The identity of a shard directory, and an open's verdict on it
/// ([`identity_verdict`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum IdentityReport {
    /// No identity file, and no data: a new shard (an open creates a
    /// domain).
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
    /// An open refuses the directory over it: damaged, another format
    /// version, or missing where data exists. The message is the open's.
    Refused(IdentityDamage),
}

impl IdentityReport {
    /// The domain, if the file verifies.
    pub fn domain(&self) -> Option<Uuid> {
        match self {
            IdentityReport::Valid { domain, .. } => Some(*domain),
            _ => None,
        }
    }

    /// Why an open refuses, if it does.
    pub fn refusal(&self) -> Option<&IdentityDamage> {
        match self {
            IdentityReport::Refused(damage) => Some(damage),
            _ => None,
        }
    }
}

/// Reads `<shard_dir>/identity` (format in `engine/FORMAT.md`) and decides
/// what an open would make of it, given what else the directory holds.
pub fn read_identity_file(shard_dir: &Path) -> Result<IdentityReport, InspectError> {
    let path = shard_dir.join(IDENTITY_FILE_NAME);
    let bytes = match ringstore_journal::inspect::open_regular(&path) {
        Ok(file) => {
            let mut bytes = vec![0; BLOCK_BYTES as usize];
            let got = read_fully(&file, &mut bytes, 0).map_err(io_error("read", &path, Some(0)))?;
            bytes.truncate(got);
            Some(bytes)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error("open", &path, None)(e)),
    };
    let snapshot_names: Vec<OsString> = list_snapshot_files(&shard_dir.join(SNAPSHOT_DIR_NAME))?
        .snapshots
        .iter()
        .filter_map(|(_, p)| p.file_name().map(|n| n.to_os_string()))
        .collect();
    // As an open lists it (`journal_listing`).
    let journal_dir = shard_dir.join(JOURNAL_DIR_NAME);
    let listed = std::fs::read_dir(&journal_dir)
        .and_then(|entries| entries.map(|e| e.map(|e| e.file_name())).collect());
    let journal_names: Vec<OsString> =
        journal_listing(listed).map_err(io_error("list", &journal_dir, None))?;
    let data = data_files(shard_dir, &snapshot_names, &journal_names);
    Ok(match identity_verdict(&path, bytes.as_deref(), &data) {
        Ok(IdentityVerdict::Found(identity)) => IdentityReport::Valid {
            path,
            domain: identity.domain,
            created_unix_ms: identity.created_unix_ms,
        },
        Ok(IdentityVerdict::Create) => IdentityReport::Missing { path },
        Err(damage) => IdentityReport::Refused(damage),
    })
}

/// Everything `ringstore snapshot inspect|verify` finds in one shard
/// directory, and the verdict an open would reach on its identity and
/// snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct ShardSnapshotsReport {
    /// The shard directory.
    pub dir: PathBuf,
    /// The identity and its verdict.
    pub identity: IdentityReport,
    /// Every snapshot file.
    pub snapshots: SnapshotDirReport,
    /// The journal's watermark as its read-only scan finds it (`None`: not
    /// read, [`Check::Header`]).
    pub journal_watermark: Option<u64>,
    /// Whether that scan found the journal intact. Journal damage is `wal
    /// verify`'s verdict, not part of this one.
    pub journal_intact: Option<bool>,
    /// The generation an open loads: the newest that verifies (given the
    /// checks made).
    pub loads: Option<u64>,
    /// The newer generations an open skips, newest first, with the reason.
    #[serde(skip)]
    pub skipped: Vec<SkippedSnapshot>,
    /// Why an open refuses the shard over its identity or snapshots, as
    /// the open's error says it (`None`: it accepts them). For
    /// [`Check::Header`] only the identity is decided.
    #[serde(serialize_with = "serialize_refusal")]
    pub refusal: Option<Error>,
}

fn serialize_refusal<S: serde::Serializer>(
    refusal: &Option<Error>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match refusal {
        Some(error) => serializer.serialize_some(&error.to_string()),
        None => serializer.serialize_none(),
    }
}

impl ShardSnapshotsReport {
    /// True if an open refuses the shard over its identity or snapshots.
    pub fn open_refused(&self) -> bool {
        self.refusal.is_some()
    }

    /// True if anything failed a check, whether or not an open refuses
    /// over it (a damaged generation an open skips, say).
    pub fn damage_found(&self) -> bool {
        self.open_refused() || self.snapshots.damage_found()
    }
}

/// Inspects the shard directory `shard_dir` (see the module docs).
/// `progress` is called with the snapshot bytes checked so far.
pub fn inspect_shard(
    shard_dir: &Path,
    check: Check,
    progress: &mut dyn FnMut(u64),
) -> Result<ShardSnapshotsReport, InspectError> {
    let identity = read_identity_file(shard_dir)?;
    let snapshot_dir = shard_dir.join(SNAPSHOT_DIR_NAME);
    let snapshots = inspect_snapshot_dir(&snapshot_dir, check, identity.domain(), progress)?;
    let loads = snapshots.newest_intact();
    let skipped = snapshots.skipped_by_open();
    let mut report = ShardSnapshotsReport {
        dir: shard_dir.to_path_buf(),
        identity,
        snapshots,
        journal_watermark: None,
        journal_intact: None,
        loads,
        skipped,
        refusal: None,
    };
    // The order of an open: the marker of an unfinished cold restore (a
    // restore's half work, not a shard), the identity (it gives the domain
    // the snapshots are checked against), then the snapshots against the
    // journal's watermark.
    let marker = shard_dir.join(RESTORE_MARKER_NAME);
    match std::fs::symlink_metadata(&marker) {
        Ok(_) => {
            report.refusal = Some(Error::RestoreIncomplete { path: marker });
            return Ok(report);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("stat", &marker, None)(e)),
    }
    if let Some(damage) = report.identity.refusal() {
        report.refusal = Some(Error::Identity(damage.clone()));
        return Ok(report);
    }
    if check == Check::Header {
        return Ok(report);
    }
    let journal_dir = shard_dir.join(JOURNAL_DIR_NAME);
    let (watermark, intact) = match ringstore_journal::inspect::scan_journal(&journal_dir, &mut ())
    {
        // A raft node's open checks against its purged id too.
        Ok(journal) => (
            journal.watermark.max(raft_purged_op(&journal).unwrap_or(0)),
            journal.is_intact(),
        ),
        // An open creates it.
        Err(InspectError::NotFound { .. }) => (0, true),
        Err(e) => return Err(e),
    };
    report.journal_watermark = Some(watermark);
    report.journal_intact = Some(intact);
    let loaded = report
        .snapshots
        .snapshots
        .iter()
        .rev()
        .find(|s| s.is_intact())
        .map(|s| (s.name_watermark, s.path.as_path()));
    report.refusal = snapshot_covers_journal(
        &snapshot_dir,
        loaded,
        &report.skipped,
        &journal_dir,
        watermark,
    )
    .err();
    Ok(report)
}

/// A raft node's journal (its owner records
/// [`crate::raft::RAFT_NODE_SHARDS`]): the op of the purged id its newest
/// hard state records, the newer of the superblock's and the log's last
/// record by sequence, as the journal's open chooses it. A raft shard's
/// open checks the snapshots against it as well as the watermark (a purge
/// a crash cut short between its two steps).
#[cfg(feature = "openraft")]
fn raft_purged_op(journal: &ringstore_journal::inspect::JournalReport) -> Option<u64> {
    let superblock = journal.superblock.as_ref()?;
    if superblock.owner?.shards != crate::raft::RAFT_NODE_SHARDS {
        return None;
    }
    let kept = (
        superblock.hard_state_sequence,
        superblock.hard_state.as_slice(),
    );
    let newest = match journal
        .segments
        .iter()
        .rev()
        .find_map(|segment| segment.last_hard_state.as_ref())
    {
        Some((sequence, bytes)) if *sequence > kept.0 => bytes.as_slice(),
        _ => kept.1,
    };
    crate::raft::purged_op_of(newest)
}

/// Without the `openraft` feature no raft node's directory is opened.
#[cfg(not(feature = "openraft"))]
fn raft_purged_op(_journal: &ringstore_journal::inspect::JournalReport) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::*;
    use crate::snapshot::snapshot_file_name;
    use crate::snapshot::verify::tests::snapshot_bytes;

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
        assert!(report.damage[0].reason().contains("\"b.c\""));
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
        assert!(report.damage[0].reason().contains("truncated"));
        let path = write(dir.path(), 6, &bytes);
        let report =
            inspect_snapshot(&path, Check::Full, Some(Uuid::from_u128(8)), &mut |_| {}).unwrap();
        let reasons: Vec<_> = report.damage.iter().map(|d| d.reason()).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("file name"));
        assert!(reasons[1].contains("domain"));
        let path = write(dir.path(), 7, &bytes[..100]);
        let report = inspect_snapshot(&path, Check::Full, None, &mut |_| {}).unwrap();
        assert!(report.damage[0].reason().contains("truncated"));
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
        let mut bytes =
            crate::layout::identity::encode_identity(&crate::layout::identity::Identity {
                domain: Uuid::from_u128(9),
                created_unix_ms: 5,
                journal_created: false,
            });
        std::fs::write(dir.path().join(IDENTITY_FILE_NAME), &bytes).unwrap();
        let report = read_identity_file(dir.path()).unwrap();
        assert_eq!(report.domain(), Some(Uuid::from_u128(9)));
        bytes[20] ^= 1;
        std::fs::write(dir.path().join(IDENTITY_FILE_NAME), &bytes).unwrap();
        assert!(matches!(
            read_identity_file(dir.path()).unwrap(),
            IdentityReport::Refused(IdentityDamage {
                offset: Some(0),
                ..
            })
        ));
        // Missing, with a journal beside it: refused, naming what is there.
        std::fs::remove_file(dir.path().join(IDENTITY_FILE_NAME)).unwrap();
        std::fs::create_dir(dir.path().join(JOURNAL_DIR_NAME)).unwrap();
        assert!(matches!(
            read_identity_file(dir.path()).unwrap(),
            IdentityReport::Missing { .. }
        ));
        std::fs::write(dir.path().join(JOURNAL_DIR_NAME).join("x"), b"").unwrap();
        let report = read_identity_file(dir.path()).unwrap();
        let damage = report.refusal().expect("refused");
        assert_eq!(damage.offset, None);
        assert!(damage.to_string().contains("missing"), "{damage}");
        assert!(damage.to_string().contains("journal/x"), "{damage}");
    }
}
