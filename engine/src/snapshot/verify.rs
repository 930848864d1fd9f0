//! The snapshot file's verifier: the one set of rules for what a snapshot
//! file's bytes mean, so that nothing that reads a snapshot can reach
//! another verdict on it than recovery does.
//!
//! It is sans-IO: it never reads a file. A driver hands it the file's
//! length, its header block and then its body, in order and in chunks of
//! any size, and gets a [`SnapshotReport`] back: the decoded header and
//! section table and every [`SnapshotDamage`], each naming the file, the
//! byte offset and what is wrong ([`SnapshotFault`]). Two drivers feed it:
//!
//! * the loader in [`super::store`] (over the [`Storage`] trait, on the
//!   reactor): recovery, `Shard::reset_to` and cold restore. It stops at the
//!   first damage ([`SnapshotVerifier::first_damage`]) and reports it as
//!   [`SnapshotError::Damaged`];
//! * the read-only scan in [`super::inspect`] (plain `std::fs` reads):
//!   `ringstore snapshot inspect|verify` and the check before an upload to
//!   object storage. It goes on past damage to describe all of it.
//!
//! The checks, in order (`engine/FORMAT.md`, "Loading"; the first that
//! fails is what the loader reports):
//!
//! | check | offset named | stops the header checks? |
//! |---|---|---|
//! | the file holds the 4096-byte header block | end of file | yes |
//! | magic | 4 | yes |
//! | `header_checksum` (covers the section table) | 0 | yes |
//! | version | 8 | yes |
//! | watermark matches the file name | 16 | no |
//! | domain is the shard's (when one is given) | 32 | no |
//! | `body_bytes` does not overflow, the file holds the body | 56 / end of file | body not read |
//! | at most [`SECTION_COUNT_MAX`] sections | 12 | yes |
//! | each entry: a valid name, unique, starting where the previous ends | the entry | body not read |
//! | the sections fill the body exactly | 56 | body not read |
//! | each section's checksum | the section | no |
//! | the body is all there (the file did not shrink while read) | end of file | yes |
//! | `file_checksum` | 64 | — |
//!
//! A file is intact only if no check fails. Decisions about a directory of
//! generations (which one an open loads, whether it covers the journal)
//! are in [`snapshot_covers_journal`], shared the same way.
//!
//! [`Storage`]: ringstore_journal::storage::Storage

use crate::error::{Error, SkippedSnapshot, SnapshotError};
use crate::format::*;
use ringstore_journal::format::align_up;
use serde::Serialize;
use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use uuid::Uuid;
use zerocopy::FromBytes;

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

/// The damage types live with the engine's other errors (`crate::error`);
/// here under their old path too.
pub use crate::error::{SnapshotDamage, SnapshotFault};

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

/// The verdict on one snapshot file: everything the verifier decoded and
/// every check that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotReport {
    /// The file.
    pub path: PathBuf,
    /// The op in its name (0 if the name is not a snapshot's).
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
    /// Whether the body was to be checked ([`Check::Full`]).
    pub full_check: bool,
    /// Everything that failed verification, in the order of the checks.
    pub damage: Vec<SnapshotDamage>,
    /// A read of the file that failed (twice: the loader reads a file
    /// again before it skips it): nothing after it was checked, and the
    /// file is not intact, as an open skips it.
    pub read_failure: Option<ReadFailure>,
}

/// A read of a snapshot file that failed: the call, where, and the
/// operating system's error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadFailure {
    /// The call, e.g. `"read"`.
    pub op: &'static str,
    /// The byte offset read.
    pub offset: u64,
    /// The error number, if the system gave one.
    pub os_error: Option<i32>,
    /// The error as the system described it.
    pub message: String,
}

impl ReadFailure {
    /// The failure of `op` at `offset` with `error`.
    pub fn new(op: &'static str, offset: u64, error: &std::io::Error) -> ReadFailure {
        ReadFailure {
            op,
            offset,
            os_error: error.raw_os_error(),
            message: error.to_string(),
        }
    }
}

impl SnapshotReport {
    /// True when every check made passed and every read succeeded.
    pub fn is_intact(&self) -> bool {
        self.damage.is_empty() && self.read_failure.is_none()
    }

    /// Why the loader refuses the file: its first damage, or else the read
    /// that failed.
    pub fn refusal(&self) -> Option<SnapshotError> {
        if let Some(damage) = self.damage.first() {
            return Some(SnapshotError::Damaged(damage.clone()));
        }
        self.read_failure.as_ref().map(|failure| SnapshotError::Io {
            op: failure.op,
            path: self.path.clone(),
            offset: failure.offset,
            source: std::sync::Arc::new(match failure.os_error {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::other(failure.message.clone()),
            }),
        })
    }

    fn add_damage(&mut self, offset: u64, fault: SnapshotFault) {
        self.damage.push(SnapshotDamage {
            path: self.path.clone(),
            offset,
            fault,
        });
    }
}

/// Offset of a header field.
macro_rules! at {
    ($field:ident) => {
        std::mem::offset_of!(SnapshotHeader, $field) as u64
    };
}

/// Verifies one snapshot file from bytes a driver reads: see the module
/// docs. Feed it [`SnapshotVerifier::header_block`], then (for
/// [`Check::Full`]) the bytes of [`SnapshotVerifier::body_range`] through
/// [`SnapshotVerifier::body`], then [`SnapshotVerifier::finish`].
#[derive(Debug)]
pub struct SnapshotVerifier {
    report: SnapshotReport,
    domain: Option<Uuid>,
    /// Set once the header block allows the body to be checked.
    body: Option<BodyCheck>,
}

/// The state of the body check.
#[derive(Debug)]
struct BodyCheck {
    /// `(len, recorded checksum)` of each section, in table order.
    table: Vec<(u64, u32)>,
    /// The section being fed.
    index: usize,
    /// Bytes of it still to come.
    section_left: u64,
    section_hasher: crc32fast::Hasher,
    /// The whole-file checksum so far (the header block with its checksum
    /// fields zeroed, then each complete section).
    file_hasher: crc32fast::Hasher,
    /// Body bytes fed.
    fed: u64,
    body_bytes: u64,
}

impl SnapshotVerifier {
    /// Starts verifying the snapshot file at `path` (its name gives the
    /// watermark the header must state), `file_bytes` long. With `domain`,
    /// a snapshot of another domain is damage.
    pub fn new(path: &Path, file_bytes: u64, domain: Option<Uuid>, check: Check) -> Self {
        let name_watermark = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_snapshot_file_name)
            .unwrap_or(0);
        SnapshotVerifier {
            report: SnapshotReport {
                path: path.to_path_buf(),
                name_watermark,
                file_bytes,
                header: None,
                header_verified: false,
                sections: Vec::new(),
                file_checksum_ok: None,
                full_check: check == Check::Full,
                damage: Vec::new(),
                read_failure: None,
            },
            domain,
            body: None,
        }
    }

    /// The first [`HEADER_BLOCK_BYTES`] of the file (fewer if the file, or
    /// the read, is shorter; a driver need not read a file shorter than the
    /// header block at all). Call once, first.
    pub fn header_block(&mut self, block: &[u8]) {
        assert!(
            self.report.header.is_none() && self.report.damage.is_empty(),
            "header_block is fed once"
        );
        let report = &mut self.report;
        // A file shorter than the header block is judged by its length,
        // whatever the driver read of it; a longer one whose read came back
        // short shrank meanwhile, and ends where the bytes stop.
        let have = if report.file_bytes < HEADER_BLOCK_BYTES {
            report.file_bytes
        } else {
            block.len() as u64
        };
        if have < HEADER_BLOCK_BYTES {
            report.add_damage(
                have,
                SnapshotFault::Truncated {
                    len: have,
                    needed: HEADER_BLOCK_BYTES,
                    what: "the header block",
                },
            );
            return;
        }
        let block = &block[..HEADER_BLOCK_BYTES as usize];
        let Ok((header, _)) = SnapshotHeader::read_from_prefix(block) else {
            unreachable!("the header block holds a header");
        };
        if header.magic.get() != SNAPSHOT_MAGIC {
            report.add_damage(
                at!(magic),
                SnapshotFault::BadMagic {
                    found: header.magic.get(),
                },
            );
            return;
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
        let computed = crc32fast::hash(&block[4..]);
        if header.header_checksum.get() != computed {
            report.add_damage(
                at!(header_checksum),
                SnapshotFault::HeaderChecksum {
                    recorded: header.header_checksum.get(),
                    computed,
                },
            );
            return;
        }
        report.header_verified = true;
        if header.version.get() != SNAPSHOT_FORMAT_VERSION {
            report.add_damage(
                at!(version),
                SnapshotFault::UnsupportedVersion {
                    version: header.version.get(),
                    supported: SNAPSHOT_FORMAT_VERSION,
                },
            );
            return;
        }
        let watermark = header.watermark.get();
        if report.path.file_name().and_then(|n| n.to_str())
            != Some(snapshot_file_name(watermark).as_str())
        {
            report.add_damage(
                at!(watermark),
                SnapshotFault::NameMismatch {
                    header_op: watermark,
                },
            );
        }
        let found = Uuid::from_bytes(header.domain);
        if let Some(expected) = self.domain {
            if found != expected {
                report.add_damage(at!(domain), SnapshotFault::WrongDomain { expected, found });
            }
        }
        let body_bytes = header.body_bytes.get();
        // Bounded first so that rounding up cannot overflow; a length that
        // large fails the length check anyway.
        let needed = BODY_OFFSET.checked_add(align_up(body_bytes.min(u64::MAX / 2), BLOCK_BYTES));
        let mut body_checkable = true;
        match needed {
            None => {
                report.add_damage(
                    at!(body_bytes),
                    SnapshotFault::BodyLengthOverflow { body_bytes },
                );
                body_checkable = false;
            }
            Some(needed) if report.file_bytes < needed => {
                report.add_damage(
                    report.file_bytes,
                    SnapshotFault::Truncated {
                        len: report.file_bytes,
                        needed,
                        what: "its header",
                    },
                );
                body_checkable = false;
            }
            Some(_) => {}
        }
        let section_count = header.section_count.get();
        if section_count as usize > SECTION_COUNT_MAX {
            report.add_damage(
                at!(section_count),
                SnapshotFault::TooManySections {
                    count: section_count,
                },
            );
            return;
        }
        // The section table: contiguous sections that exactly fill the body.
        let mut table = Vec::with_capacity(section_count as usize);
        let mut table_ok = true;
        let mut names = BTreeSet::new();
        let mut expected_offset = Some(BODY_OFFSET);
        for index in 0..section_count as usize {
            let at = SNAPSHOT_HEADER_BYTES + index * SECTION_ENTRY_BYTES;
            let Ok((entry, _)) = SectionEntry::read_from_prefix(&block[at..]) else {
                unreachable!("SECTION_COUNT_MAX entries fit in the header block");
            };
            let name = match entry.name() {
                Some(name) => name.to_owned(),
                None => {
                    report.add_damage(at as u64, SnapshotFault::BadSectionName { index });
                    table_ok = false;
                    String::from_utf8_lossy(&entry.name)
                        .trim_end_matches('\0')
                        .to_owned()
                }
            };
            if !names.insert(name.clone()) {
                report.add_damage(
                    at as u64,
                    SnapshotFault::DuplicateSection { name: name.clone() },
                );
                table_ok = false;
            }
            if Some(entry.offset.get()) != expected_offset {
                report.add_damage(
                    (at + std::mem::offset_of!(SectionEntry, offset)) as u64,
                    SnapshotFault::SectionOffset {
                        name: name.clone(),
                        offset: entry.offset.get(),
                        expected: expected_offset,
                    },
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
            table.push((entry.len.get(), entry.checksum.get()));
        }
        if table_ok && expected_offset != BODY_OFFSET.checked_add(body_bytes) {
            report.add_damage(at!(body_bytes), SnapshotFault::SectionsDoNotFillBody);
            table_ok = false;
        }
        if table_ok && body_checkable && report.full_check {
            let mut body = BodyCheck {
                section_left: table.first().map_or(0, |&(len, _)| len),
                table,
                index: 0,
                section_hasher: crc32fast::Hasher::new(),
                file_hasher: header_block_hasher(block),
                fed: 0,
                body_bytes,
            };
            body.settle(report);
            self.body = Some(body);
        }
    }

    /// The file bytes to feed to [`SnapshotVerifier::body`]: `None` when
    /// the body is not to be checked (header-only check, or the header
    /// block already failed in a way that leaves nothing to check it
    /// against).
    pub fn body_range(&self) -> Option<Range<u64>> {
        self.body
            .as_ref()
            .map(|b| BODY_OFFSET..BODY_OFFSET + b.body_bytes)
    }

    /// The next bytes of the body, in file order, from [`BODY_OFFSET`] on.
    /// Feeding more than [`SnapshotVerifier::body_range`] holds is a bug.
    pub fn body(&mut self, mut bytes: &[u8]) {
        let body = self.body.as_mut().expect("the body is checked");
        assert!(
            bytes.len() as u64 <= body.body_bytes - body.fed,
            "fed past the end of the body"
        );
        while !bytes.is_empty() {
            let take = (body.section_left.min(bytes.len() as u64)) as usize;
            body.section_hasher.update(&bytes[..take]);
            body.section_left -= take as u64;
            body.fed += take as u64;
            bytes = &bytes[take..];
            body.settle(&mut self.report);
        }
    }

    /// The section table, as far as it decoded.
    pub fn sections(&self) -> &[SectionInfo] {
        &self.report.sections
    }

    /// The first check that failed so far: what the loader reports.
    pub fn first_damage(&self) -> Option<&SnapshotDamage> {
        self.report.damage.first()
    }

    /// The report so far, for a file whose next read failed: what was
    /// checked, with the failure, and none of the checks at the body's end.
    pub fn abandon(mut self, failure: ReadFailure) -> SnapshotReport {
        self.report.read_failure = Some(failure);
        self.report
    }

    /// The verdict. A body fed short of its end is a truncation at the
    /// offset where the bytes stopped; otherwise the whole-file checksum is
    /// checked.
    pub fn finish(mut self) -> SnapshotReport {
        let Some(body) = self.body.take() else {
            return self.report;
        };
        if body.fed < body.body_bytes {
            let section = self.report.sections[body.index].name.clone();
            self.report.add_damage(
                BODY_OFFSET + body.fed,
                SnapshotFault::EndsInBody { section },
            );
            return self.report;
        }
        let recorded = self.report.header.as_ref().map_or(0, |h| h.file_checksum);
        let computed = body.file_hasher.finalize();
        self.report.file_checksum_ok = Some(recorded == computed);
        if recorded != computed {
            self.report.add_damage(
                at!(file_checksum),
                SnapshotFault::FileChecksum { recorded, computed },
            );
        }
        self.report
    }
}

impl BodyCheck {
    /// Closes every section whose bytes have all been fed (zero-length ones
    /// included), checking its checksum.
    fn settle(&mut self, report: &mut SnapshotReport) {
        while self.index < self.table.len() && self.section_left == 0 {
            let (len, recorded) = self.table[self.index];
            let hasher = std::mem::replace(&mut self.section_hasher, crc32fast::Hasher::new());
            let computed = hasher.finalize();
            let ok = computed == recorded;
            let section = &mut report.sections[self.index];
            section.checksum_ok = Some(ok);
            if !ok {
                let (offset, name) = (section.offset, section.name.clone());
                report.add_damage(
                    offset,
                    SnapshotFault::SectionChecksum {
                        section: name,
                        recorded,
                        computed,
                    },
                );
            }
            // The whole-file checksum continues from the section's: no
            // second pass over the bytes.
            self.file_hasher
                .combine(&crc32fast::Hasher::new_with_initial_len(computed, len));
            self.index += 1;
            self.section_left = self.table.get(self.index).map_or(0, |&(len, _)| len);
        }
    }
}

/// Verifies a whole snapshot file held in memory (tests, fuzzing, small
/// tools): [`SnapshotVerifier`] fed at once.
pub fn verify_snapshot_bytes(
    path: &Path,
    bytes: &[u8],
    domain: Option<Uuid>,
    check: Check,
) -> SnapshotReport {
    let mut verifier = SnapshotVerifier::new(path, bytes.len() as u64, domain, check);
    verifier.header_block(&bytes[..bytes.len().min(HEADER_BLOCK_BYTES as usize)]);
    if let Some(range) = verifier.body_range() {
        let end = (range.end as usize).min(bytes.len());
        verifier.body(&bytes[range.start as usize..end]);
    }
    verifier.finish()
}

/// The rule an open applies once it knows the journal's watermark: the
/// state is rebuilt from the newest usable snapshot plus the journal's ops
/// above it, so that snapshot must be at or above the watermark (the ops
/// below it were compacted away). `loaded` is the generation chosen (the
/// newest that verifies) as `(watermark, path)`, `skipped` the newer ones
/// passed over, with their reasons. Recovery and `ringstore snapshot
/// verify` both decide with it.
pub fn snapshot_covers_journal(
    snapshot_dir: &Path,
    loaded: Option<(u64, &Path)>,
    skipped: &[SkippedSnapshot],
    journal_dir: &Path,
    journal_watermark: u64,
) -> Result<(), Error> {
    let snapshot_op = loaded.map_or(0, |(op, _)| op);
    if journal_watermark <= snapshot_op {
        return Ok(());
    }
    Err(Error::SnapshotBehindJournal {
        snapshot_dir: snapshot_dir.to_path_buf(),
        snapshot: loaded.map(|(_, path)| path.to_path_buf()),
        snapshot_op,
        journal_dir: journal_dir.to_path_buf(),
        journal_watermark,
        skipped: skipped.to_vec(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    /// A well-formed snapshot file with `sections`, as the writer lays it
    /// out.
    pub(crate) fn snapshot_bytes(
        watermark: u64,
        domain: Uuid,
        sections: &[(&str, &[u8])],
    ) -> Vec<u8> {
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

    fn path(watermark: u64) -> PathBuf {
        Path::new("/snapshots").join(snapshot_file_name(watermark))
    }

    #[test]
    fn chunking_does_not_change_the_verdict() {
        let domain = Uuid::from_u128(7);
        let sections: [(&str, &[u8]); 4] = [
            ("a", b"hello"),
            ("empty", b""),
            ("b.c", &[9; 5000]),
            ("z", b""),
        ];
        let bytes = snapshot_bytes(42, domain, &sections);
        let whole = verify_snapshot_bytes(&path(42), &bytes, Some(domain), Check::Full);
        assert!(whole.is_intact(), "{:?}", whole.damage);
        assert_eq!(whole.file_checksum_ok, Some(true));
        assert!(whole.sections.iter().all(|s| s.checksum_ok == Some(true)));
        let mut damaged = bytes.clone();
        damaged[BODY_OFFSET as usize + 5 + 100] ^= 1;
        for chunk in [1, 3, 4096, 5005] {
            for bytes in [&bytes, &damaged] {
                let mut verifier =
                    SnapshotVerifier::new(&path(42), bytes.len() as u64, Some(domain), Check::Full);
                verifier.header_block(&bytes[..4096]);
                let range = verifier.body_range().unwrap();
                for piece in bytes[range.start as usize..range.end as usize].chunks(chunk) {
                    verifier.body(piece);
                }
                let report = verifier.finish();
                let expected = verify_snapshot_bytes(&path(42), bytes, Some(domain), Check::Full);
                assert_eq!(report, expected, "chunk {chunk}");
            }
        }
    }

    #[test]
    fn a_body_fed_short_is_a_truncation_at_the_offset_where_it_stops() {
        let domain = Uuid::from_u128(7);
        let bytes = snapshot_bytes(5, domain, &[("a", &[1; 300]), ("b", &[2; 300])]);
        let mut verifier = SnapshotVerifier::new(&path(5), bytes.len() as u64, None, Check::Full);
        verifier.header_block(&bytes[..4096]);
        verifier.body(&bytes[4096..4096 + 400]);
        let report = verifier.finish();
        assert_eq!(report.damage.len(), 1, "{:?}", report.damage);
        assert_eq!(report.damage[0].offset, 4096 + 400);
        let fault = &report.damage[0].fault;
        assert!(
            matches!(fault, SnapshotFault::EndsInBody { section } if section == "b"),
            "{fault}"
        );
        assert_eq!(report.sections[0].checksum_ok, Some(true));
        assert_eq!(report.file_checksum_ok, None);
    }

    #[test]
    fn every_damage_names_the_file_and_the_first_is_the_loaders_refusal() {
        let domain = Uuid::from_u128(7);
        let bytes = snapshot_bytes(9, domain, &[("a", b"xyz")]);
        let cases: [(usize, u64); 4] = [
            (4, at!(magic)),
            (20, at!(header_checksum)),
            (4096 + 1, 4096),
            (at!(file_checksum) as usize, at!(header_checksum)),
        ];
        for (flip, offset) in cases {
            let mut damaged = bytes.clone();
            damaged[flip] ^= 0x40;
            let report = verify_snapshot_bytes(&path(9), &damaged, Some(domain), Check::Full);
            let first = report.damage.first().expect("damage");
            assert_eq!(first.path, path(9));
            assert_eq!(first.offset, offset, "flip at {flip}: {first}");
            assert!(
                first.to_string().starts_with("/snapshots/snapshot-"),
                "{first}"
            );
            assert!(matches!(report.refusal(), Some(SnapshotError::Damaged(d)) if &d == first));
        }
        let report = verify_snapshot_bytes(&path(9), &[], None, Check::Full);
        assert_eq!(report.damage.len(), 1);
        assert_eq!(report.damage[0].offset, 0);
        assert!(report.damage[0].to_string().contains("truncated"));
    }
}
