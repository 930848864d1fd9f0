//! The shard's domain identity: which domain (a UUID) its data belongs to.
//!
//! Written when a shard is created or reset into a domain, to `<shard
//! dir>/identity` (format in `engine/FORMAT.md`) through the same temporary
//! file, fdatasync, rename and directory fsync as a snapshot; and once more
//! when the shard's first open has created its journal, with the flag that
//! says so ([`Identity::journal_created`]). From then on an open that finds
//! no journal refuses: an empty journal in its place would silently drop
//! every acknowledged op above the newest snapshot.
//! Snapshots carry the domain too, and a snapshot of another domain is never
//! loaded; object storage keys are prefixed with it.
//!
//! # One verdict
//!
//! [`decode_identity`] (bytes in, identity or damage out) and
//! [`identity_verdict`] (what an open does with what it found) are sans-IO
//! and are the only place the rules live. Recovery calls them over the
//! [`Storage`] trait ([`read_identity_bytes`]); `ringstore snapshot
//! inspect|verify` over plain reads
//! ([`crate::snapshot::inspect::read_identity_file`]). So both reach the
//! same verdict, with the same message:
//!
//! | identity file | the shard directory holds | verdict |
//! |---|---|---|
//! | verifies (magic, checksum, version 1), journal flag clear | anything | the domain it names |
//! | verifies, journal flag set | `journal/superblock` or a segment file | the domain it names |
//! | verifies, journal flag set | neither in `journal/` | refused: the journal is gone |
//! | missing | no snapshot file and an empty or missing `journal/` | a new shard: an open creates a random domain |
//! | missing | a `snapshots/snapshot-<op>.snap` or any entry in `journal/` | refused: the domain of that data is unknown |
//! | shorter than its 40-byte header (zero-length included) | anything | refused: damaged |
//! | wrong magic | anything | refused: damaged |
//! | checksum mismatch | anything | refused: damaged |
//! | checksum verifies, version not 1 | anything | refused: another format version |
//!
//! The zeros after the header and the flag bits other than
//! [`IDENTITY_FLAG_JOURNAL_CREATED`] are not checked (no build has given
//! them a meaning).
//!
//! [`Storage`]: ringstore_journal::storage::Storage

use super::{IDENTITY_TEMP_NAME, JOURNAL_DIR_NAME, SNAPSHOT_DIR_NAME};
use crate::error::{Error, Result};
use crate::format::parse_snapshot_file_name;
use crate::format::{
    unix_ms_now, IdentityHeader, BLOCK_BYTES, IDENTITY_FLAG_JOURNAL_CREATED,
    IDENTITY_FORMAT_VERSION, IDENTITY_HEADER_BYTES, IDENTITY_MAGIC,
};
use ringstore_journal::segment_generation;
use ringstore_journal::storage::{IoBuf, Storage, StorageFile};
use ringstore_journal::superblock::SUPERBLOCK_FILE_NAME;
use serde::Serialize;
use std::ffi::OsString;
use std::{
    io,
    path::{Path, PathBuf},
};
use uuid::Uuid;
use zerocopy::{FromBytes, IntoBytes};

/// Name of the identity file in the shard directory.
pub const IDENTITY_FILE_NAME: &str = "identity";

/// The damage types live with the engine's other errors (`crate::error`),
/// which every module may name; here under their old path too.
pub use crate::error::{IdentityDamage, IdentityFault};

/// A verified identity file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The domain the shard's data belongs to.
    pub domain: Uuid,
    /// When the shard joined it, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// The shard's journal exists (its first open created it): an open
    /// that finds none refuses.
    pub journal_created: bool,
}

impl Identity {
    /// A shard joining `domain` now, its journal not created yet.
    pub fn new(domain: Uuid) -> Identity {
        Identity {
            domain,
            created_unix_ms: unix_ms_now(),
            journal_created: false,
        }
    }
}

/// Decodes and verifies the identity file at `path` from its bytes (its
/// first block, or all of it): sans-IO, the one decoder of the format.
pub fn decode_identity(path: &Path, bytes: &[u8]) -> Result<Identity, IdentityDamage> {
    let damage = |offset: usize, fault: IdentityFault| IdentityDamage {
        path: path.to_path_buf(),
        offset: Some(offset as u64),
        fault,
    };
    let Ok((header, _)) = IdentityHeader::read_from_prefix(bytes) else {
        return Err(damage(
            bytes.len(),
            IdentityFault::Truncated {
                len: bytes.len() as u64,
            },
        ));
    };
    if header.magic.get() != IDENTITY_MAGIC {
        return Err(damage(
            std::mem::offset_of!(IdentityHeader, magic),
            IdentityFault::BadMagic {
                found: header.magic.get(),
            },
        ));
    }
    let computed = header.compute_checksum();
    if header.checksum.get() != computed {
        return Err(damage(
            std::mem::offset_of!(IdentityHeader, checksum),
            IdentityFault::Checksum {
                recorded: header.checksum.get(),
                computed,
            },
        ));
    }
    if header.version.get() != IDENTITY_FORMAT_VERSION {
        return Err(damage(
            std::mem::offset_of!(IdentityHeader, version),
            IdentityFault::UnsupportedVersion {
                version: header.version.get(),
                supported: IDENTITY_FORMAT_VERSION,
            },
        ));
    }
    Ok(Identity {
        domain: Uuid::from_bytes(header.domain),
        created_unix_ms: header.created_unix_ms.get(),
        journal_created: header.flags.get() & IDENTITY_FLAG_JOURNAL_CREATED != 0,
    })
}

/// What opening a shard directory does about its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityVerdict {
    /// The identity file verifies: the shard's data belongs to its domain.
    Found(Identity),
    /// No identity and no data: a new shard, which the open gives a fresh
    /// random domain.
    Create,
}

/// The identity rule of an open (see the module docs' table), sans-IO:
/// `bytes` is the identity file's first block (`None`: no such file),
/// `data` what [`data_files`] found in the directory.
pub fn identity_verdict(
    path: &Path,
    bytes: Option<&[u8]>,
    data: &[PathBuf],
) -> Result<IdentityVerdict, IdentityDamage> {
    match bytes {
        Some(bytes) => {
            let identity = decode_identity(path, bytes)?;
            // A superblock or a segment left: the journal's own open judges
            // it (and `wal salvage` may recover it).
            let journal = path.with_file_name(JOURNAL_DIR_NAME);
            let holds_journal = data.iter().any(|file| {
                file.parent() == Some(journal.as_path())
                    && file.file_name().is_some_and(|name| {
                        name == SUPERBLOCK_FILE_NAME || segment_generation(name).is_some()
                    })
            });
            if identity.journal_created && !holds_journal {
                return Err(IdentityDamage {
                    path: path.to_path_buf(),
                    offset: None,
                    fault: IdentityFault::JournalMissing { journal },
                });
            }
            Ok(IdentityVerdict::Found(identity))
        }
        None if data.is_empty() => Ok(IdentityVerdict::Create),
        None => Err(IdentityDamage {
            path: path.to_path_buf(),
            offset: None,
            fault: IdentityFault::MissingWithData {
                found: data.to_vec(),
            },
        }),
    }
}

/// The files of `shard_dir` that hold data whose domain the identity names,
/// from the names listed in its snapshot and journal directories: every
/// snapshot generation (`snapshot-<op>.snap`; temporary files are removed
/// at open and do not count) and every entry of the journal directory.
pub fn data_files(
    shard_dir: &Path,
    snapshot_names: &[OsString],
    journal_names: &[OsString],
) -> Vec<PathBuf> {
    let snapshots = shard_dir.join(SNAPSHOT_DIR_NAME);
    let journal = shard_dir.join(JOURNAL_DIR_NAME);
    // Snapshots first: they are what a message names first.
    let mut found: Vec<PathBuf> = snapshot_names
        .iter()
        .filter(|n| n.to_str().and_then(parse_snapshot_file_name).is_some())
        .map(|n| snapshots.join(n))
        .collect();
    found.sort();
    // The journal's durability record and a probe's leftovers describe the
    // device, not the shard: a journal directory holding only them (an open
    // that crashed before its superblock) holds no data.
    let not_data = |name: &OsString| {
        name == ringstore_journal::durability::record::DURABILITY_RECORD_FILE_NAME
            || ringstore_journal::durability::PROBE_LEFTOVER_NAMES
                .iter()
                .any(|leftover| name == leftover)
    };
    let mut journal_files: Vec<PathBuf> = journal_names
        .iter()
        .filter(|n| !not_data(n))
        .map(|n| journal.join(n))
        .collect();
    journal_files.sort();
    found.append(&mut journal_files);
    found
}

/// The journal directory's listing as the identity verdict takes it: a
/// missing directory holds nothing; any other failure is an error (a
/// journal that cannot be listed is not a journal that is gone).
pub fn journal_listing(listed: io::Result<Vec<OsString>>) -> io::Result<Vec<OsString>> {
    match listed {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        other => other,
    }
}

/// Reads the first block of the identity file in `dir`: `Ok(None)` if
/// there is none. [`identity_verdict`] decides what it means.
pub async fn read_identity_bytes<S: Storage>(storage: &S, dir: &Path) -> Result<Option<Vec<u8>>> {
    let path = dir.join(IDENTITY_FILE_NAME);
    let file = match storage.open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open identity file", &path, e)),
    };
    let read = file.read_at(0, BLOCK_BYTES as usize).await;
    let _ = file.close().await;
    let bytes = read.map_err(|e| Error::io("read identity file", &path, e))?;
    Ok(Some(bytes.to_vec()))
}

/// Reads and verifies the identity in `dir`: `Ok(None)` if there is none.
pub async fn read_identity<S: Storage>(storage: &S, dir: &Path) -> Result<Option<Identity>> {
    let path = dir.join(IDENTITY_FILE_NAME);
    match read_identity_bytes(storage, dir).await? {
        Some(bytes) => Ok(Some(decode_identity(&path, &bytes)?)),
        None => Ok(None),
    }
}

/// Records in `dir`'s identity that the shard's journal exists (its
/// superblock is durable): from now on an open that finds no journal
/// refuses. Nothing is written if the identity says so already.
pub async fn record_journal_created<S: Storage>(
    storage: &S,
    dir: &Path,
    identity: &Identity,
) -> Result<()> {
    if identity.journal_created {
        return Ok(());
    }
    let recorded = Identity {
        journal_created: true,
        ..*identity
    };
    write_identity(storage, dir, &recorded).await
}

/// The identity file's bytes for `identity` (one block: the header, then
/// zeros), the encoder [`decode_identity`] reads.
pub fn encode_identity(identity: &Identity) -> Vec<u8> {
    let flags = if identity.journal_created {
        IDENTITY_FLAG_JOURNAL_CREATED
    } else {
        0
    };
    let mut header = IdentityHeader {
        checksum: 0.into(),
        magic: IDENTITY_MAGIC.into(),
        version: IDENTITY_FORMAT_VERSION.into(),
        flags: flags.into(),
        domain: *identity.domain.as_bytes(),
        created_unix_ms: identity.created_unix_ms.into(),
    };
    header.checksum = header.compute_checksum().into();
    let mut block = vec![0u8; BLOCK_BYTES as usize];
    block[..IDENTITY_HEADER_BYTES].copy_from_slice(header.as_bytes());
    block
}

/// Writes `identity` in `dir`, durably (replacing any).
pub async fn write_identity<S: Storage>(
    storage: &S,
    dir: &Path,
    identity: &Identity,
) -> Result<()> {
    let temp = dir.join(IDENTITY_TEMP_NAME);
    let path = dir.join(IDENTITY_FILE_NAME);
    match storage.remove(&temp).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove stale identity temp file", &temp, e)),
    }
    let file = storage
        .create(&temp, false)
        .await
        .map_err(|e| Error::io("create identity file", &temp, e))?;
    let mut buf = file.alloc_buf(BLOCK_BYTES as usize);
    buf.as_bytes_mut()
        .copy_from_slice(&encode_identity(identity));
    let written = match file.write_at(buf, 0).await {
        Ok(()) => file
            .sync()
            .await
            .map_err(|e| Error::io("fdatasync identity file", &temp, e)),
        Err(e) => Err(Error::io("write identity file", &temp, e)),
    };
    let _ = file.close().await;
    written?;
    storage
        .rename(&temp, &path)
        .await
        .map_err(|e| Error::io("rename identity file", &path, e))?;
    storage
        .sync_dir(dir)
        .await
        .map_err(|e| Error::io("fsync shard directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_the_identity_records_must_be_there() {
        let path = Path::new("/d/shard-000/identity");
        let superblock = PathBuf::from("/d/shard-000/journal/superblock");
        let mut identity = Identity::new(Uuid::from_u128(3));
        let verdict = |identity: &Identity, data: &[PathBuf]| {
            let bytes = encode_identity(identity);
            assert_eq!(decode_identity(path, &bytes), Ok(*identity), "round trip");
            identity_verdict(path, Some(&bytes), data)
        };
        // Not recorded yet (a new shard, or one written before the flag):
        // no journal is fine.
        assert_eq!(
            verdict(&identity, &[]),
            Ok(IdentityVerdict::Found(identity))
        );
        identity.journal_created = true;
        assert_eq!(
            verdict(&identity, std::slice::from_ref(&superblock)),
            Ok(IdentityVerdict::Found(identity))
        );
        // A segment without its superblock: the journal's own open judges
        // it (and salvage may recover it).
        let segment =
            PathBuf::from("/d/shard-000/journal").join(ringstore_journal::segment_file_name(1));
        assert!(verdict(&identity, &[segment]).is_ok());
        // Recorded, and nothing of it (or only a stray file) is there:
        // refused, naming the journal directory.
        let stray = PathBuf::from("/d/shard-000/journal/notes.txt");
        for data in [vec![], vec![stray]] {
            let damage = verdict(&identity, &data).unwrap_err();
            assert_eq!(
                damage.fault,
                IdentityFault::JournalMissing {
                    journal: PathBuf::from("/d/shard-000/journal")
                }
            );
            assert!(damage.to_string().contains("restore the shard"), "{damage}");
        }
    }

    fn identity_bytes(version: u32) -> Vec<u8> {
        let mut header = IdentityHeader {
            checksum: 0.into(),
            magic: IDENTITY_MAGIC.into(),
            version: version.into(),
            flags: 0.into(),
            domain: *Uuid::from_u128(9).as_bytes(),
            created_unix_ms: 5.into(),
        };
        header.checksum = header.compute_checksum().into();
        let mut bytes = header.as_bytes().to_vec();
        bytes.resize(BLOCK_BYTES as usize, 0);
        bytes
    }

    /// One row of the module docs' table each.
    #[test]
    fn every_row_of_the_verdict_table() {
        let path = Path::new("/shard/identity");
        let data = [PathBuf::from("/shard/journal/superblock")];
        let good = identity_bytes(IDENTITY_FORMAT_VERSION);
        let found = |bytes: &[u8], data: &[PathBuf]| identity_verdict(path, Some(bytes), data);
        for data in [&data[..], &[]] {
            assert!(matches!(
                found(&good, data),
                Ok(IdentityVerdict::Found(Identity {
                    domain,
                    created_unix_ms: 5,
                    journal_created: false
                }))
                    if domain == Uuid::from_u128(9)
            ));
        }
        assert_eq!(
            identity_verdict(path, None, &[]),
            Ok(IdentityVerdict::Create)
        );
        let missing = identity_verdict(path, None, &data).unwrap_err();
        assert_eq!((missing.path.as_path(), missing.offset), (path, None));
        let message = missing.to_string();
        assert!(message.contains("missing") && message.contains("/shard/journal/superblock"));

        let refused = |bytes: &[u8]| found(bytes, &[]).unwrap_err();
        let cases: [(Vec<u8>, u64, &str); 5] = [
            (Vec::new(), 0, "truncated"),
            (good[..39].to_vec(), 39, "truncated"),
            (
                {
                    let mut b = good.clone();
                    b[5] ^= 1;
                    b
                },
                4,
                "magic",
            ),
            (
                {
                    let mut b = good.clone();
                    b[20] ^= 1;
                    b
                },
                0,
                "checksum mismatch",
            ),
            (identity_bytes(2), 8, "identity format version 2"),
        ];
        for (bytes, offset, reason) in cases {
            let damage = refused(&bytes);
            assert_eq!(damage.offset, Some(offset), "{damage}");
            let message = damage.to_string();
            assert!(message.starts_with(&format!("/shard/identity at byte offset {offset}: ")));
            assert!(message.contains(reason), "{message}");
        }
        // The zeros after the header are not checked.
        let mut padded = good.clone();
        padded[100] = 1;
        assert!(found(&padded, &[]).is_ok());
    }

    #[test]
    fn data_files_are_snapshot_generations_then_journal_entries() {
        let names = |n: &[&str]| n.iter().map(OsString::from).collect::<Vec<_>>();
        let found = data_files(
            Path::new("/s"),
            &names(&[
                "snapshot-00000000000000000002.snap",
                "snapshot-00000000000000000003.snap.tmp",
                "notes",
                "snapshot-00000000000000000001.snap",
            ]),
            &names(&[
                "superblock",
                "durability-choice",
                "durability-choice.tmp",
                "durability-probe-sync",
            ]),
        );
        let expected = [
            "/s/snapshots/snapshot-00000000000000000001.snap",
            "/s/snapshots/snapshot-00000000000000000002.snap",
            "/s/journal/superblock",
        ];
        assert_eq!(found, expected.map(PathBuf::from));
    }
}
