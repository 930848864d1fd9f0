//! The snapshot scrubber's read of one file: every byte, with the verifier
//! a load uses ([`Check::Full`]), paced to the scrubber's rate; unpaced, the
//! object-store upload's check of a file before it sends it. The task
//! that runs it over a shard's snapshot generations, pass after pass, is in
//! `shard.rs` ([`crate::ShardBuilder::scrub_rate`]). A failed read is read
//! again a block at a time, so the error names a block that fails every
//! read ([`ringstore_journal::storage::UnreadableBlock`]).

use super::verify::{Check, SnapshotDamage, SnapshotVerifier};
use crate::format::{BLOCK_BYTES, HEADER_BLOCK_BYTES};
use ringstore_cache::FileDigest;
use ringstore_journal::format::align_up;
use ringstore_journal::pace::Pacer;
use ringstore_journal::storage::{read_locating_unreadable, Storage, StorageFile};
use std::io;
use std::num::NonZeroU64;
use std::path::Path;
use uuid::Uuid;

/// Bytes read at a time.
const SCRUB_READ_BYTES: u64 = 1 << 20;

/// Reads and verifies the snapshot file at `path`: its first damage, if
/// any. `None` too when the file is gone (pruned meanwhile, even while it
/// was read: see [`pruned_while_read`]) or when `go_on` turns false
/// between two reads (the shard is closing).
pub(crate) async fn scrub_snapshot<S: Storage>(
    storage: &S,
    path: &Path,
    domain: Option<Uuid>,
    pacer: &mut Pacer,
    go_on: &dyn Fn() -> bool,
) -> io::Result<Option<SnapshotDamage>> {
    let Some((id, file)) = open_named(storage, path).await? else {
        return Ok(None);
    };
    let result = match scrub_open_file(&file, path, domain, pacer, go_on, None).await {
        Ok(None) => Ok(None),
        _ if pruned_while_read(storage, path, id).await => Ok(None),
        other => other,
    };
    let _ = file.close().await;
    result
}

/// Opens the snapshot at `path`, with the identity of the file opened
/// (stat before and after the open agree on it): `None` when the name is
/// gone, or named another file in between (a prune, or a newer file put
/// there), so there is nothing of that name to check now.
async fn open_named<S: Storage>(
    storage: &S,
    path: &Path,
) -> io::Result<Option<((u64, u64), S::File)>> {
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    let before = match storage.stat(path).await {
        Ok(meta) => meta.id,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let file = match storage.open(path).await {
        Ok(file) => file,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let still = match storage.stat(path).await {
        Ok(after) if after.id == before => return Ok(Some((before, file))),
        Ok(_) => Ok(None),
        Err(e) if gone(&e) => Ok(None),
        Err(e) => Err(e),
    };
    let _ = file.close().await;
    still
}

/// Whether the snapshot file `read` (its identity when it was opened) no
/// longer has its name `path`: a prune renames a file before it shrinks it
/// ([`super::SnapshotStore::prune_in_steps`]), so what a read of a file
/// whose name is gone found wrong (damage, a short read, an error) may be
/// the prune's, and the file is no snapshot any more. One still named is
/// what an open would load: what was found there stands, and so it does
/// when the name cannot be looked up.
async fn pruned_while_read<S: Storage>(storage: &S, path: &Path, read: (u64, u64)) -> bool {
    match storage.stat(path).await {
        Ok(named) => named.id != read,
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// Reads and verifies the snapshot file at `path` at full speed, as a
/// load would (the upload's check before it sends a file): its first
/// damage, or the digest of every byte of the file as this check read it,
/// which the upload then holds the bytes it sends to
/// ([`ringstore_cache::Tiered::put_file_checked`]), so the store gets the
/// bytes checked here or none. A file that is gone, before or while it is
/// read ([`pruned_while_read`]), is an error (`NotFound`).
pub(crate) async fn verify_snapshot_file<S: Storage>(
    storage: &S,
    path: &Path,
    domain: Option<Uuid>,
) -> io::Result<Result<FileDigest, SnapshotDamage>> {
    let pruned = || {
        io::Error::new(
            io::ErrorKind::NotFound,
            "the snapshot was pruned while it was checked",
        )
    };
    let Some((id, file)) = open_named(storage, path).await? else {
        return Err(pruned());
    };
    let mut pacer = Pacer::new(NonZeroU64::MAX);
    let mut digest = FileHasher::default();
    let checked = async {
        match scrub_open_file(&file, path, domain, &mut pacer, &|| true, Some(&mut digest)).await? {
            Some(damage) => Ok(Err(damage)),
            // The bytes after the body (the zero padding) go up too.
            None => Ok(Ok(digest.finish(&file).await?)),
        }
    };
    let result = match checked.await {
        Ok(Ok(digest)) => Ok(Ok(digest)),
        _ if pruned_while_read(storage, path, id).await => Err(pruned()),
        other => other,
    };
    let _ = file.close().await;
    result
}

/// The CRC-32 of a file's bytes, fed in order from offset 0 as they are
/// read; [`FileHasher::finish`] reads and adds whatever was not fed.
#[derive(Default)]
struct FileHasher {
    crc32: crc32fast::Hasher,
    /// Bytes fed so far: the next byte fed must be at this offset.
    fed: u64,
    /// The file's length when the check began (set by the check): the
    /// digest covers that much, so bytes a growing file gained after it
    /// are not counted as checked.
    len: u64,
}

impl FileHasher {
    /// Adds `bytes`, read at `at`, if they continue what was fed (a read
    /// elsewhere is left for `finish`).
    fn feed(&mut self, at: u64, bytes: &[u8]) {
        if at == self.fed {
            self.crc32.update(bytes);
            self.fed += bytes.len() as u64;
        }
    }

    /// Reads the rest of `file` from the last byte fed up to the length
    /// the check began with, and returns the digest of all of it.
    async fn finish<F: StorageFile>(mut self, file: &F) -> io::Result<FileDigest> {
        let len = self.len;
        while self.fed < len {
            let want = (len - self.fed).min(SCRUB_READ_BYTES);
            // Whole blocks from a block boundary (O_DIRECT): start at the
            // block holding the next byte, keep what follows it.
            let start = self.fed - self.fed % BLOCK_BYTES;
            let bytes = read_locating_unreadable(
                file,
                start,
                align_up(want + (self.fed - start), BLOCK_BYTES) as usize,
                &|| true,
            )
            .await?;
            let skip = (self.fed - start) as usize;
            if bytes.len() <= skip {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the file ended at byte {} of {len} while it was read",
                        self.fed
                    ),
                ));
            }
            let end = bytes.len().min(skip + want as usize);
            self.crc32.update(&bytes[skip..end]);
            self.fed += (end - skip) as u64;
        }
        Ok(FileDigest {
            bytes: self.fed,
            crc32: self.crc32.finalize(),
        })
    }
}

async fn scrub_open_file<F: StorageFile>(
    file: &F,
    path: &Path,
    domain: Option<Uuid>,
    pacer: &mut Pacer,
    go_on: &dyn Fn() -> bool,
    mut digest: Option<&mut FileHasher>,
) -> io::Result<Option<SnapshotDamage>> {
    let len = file.file_len().await?;
    if let Some(digest) = digest.as_deref_mut() {
        digest.len = len;
    }
    let mut verifier = SnapshotVerifier::new(path, len, domain, Check::Full);
    if !pacer.pace(go_on).await {
        return Ok(None);
    }
    if len < HEADER_BLOCK_BYTES {
        verifier.header_block(&[]);
    } else {
        let block = read_locating_unreadable(file, 0, HEADER_BLOCK_BYTES as usize, go_on).await?;
        pacer.note(block.len() as u64);
        if let Some(digest) = digest.as_deref_mut() {
            digest.feed(0, &block);
        }
        verifier.header_block(&block);
    }
    if let Some(body) = verifier.body_range() {
        let mut pos = body.start;
        while pos < body.end && verifier.first_damage().is_none() {
            if !pacer.pace(go_on).await {
                return Ok(None);
            }
            let want = (body.end - pos).min(SCRUB_READ_BYTES);
            // Whole blocks (O_DIRECT); the last may run past the end of
            // the file, which returns what there is.
            let bytes =
                read_locating_unreadable(file, pos, align_up(want, BLOCK_BYTES) as usize, go_on)
                    .await?;
            let take = bytes.len().min(want as usize);
            if take == 0 {
                break;
            }
            verifier.body(&bytes[..take]);
            pacer.note(take as u64);
            if let Some(digest) = digest.as_deref_mut() {
                digest.feed(pos, &bytes[..take]);
            }
            pos += take as u64;
        }
    }
    Ok(verifier.finish().damage.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::verify::tests::snapshot_bytes;
    use ringstore_journal::storage::{FaultConfig, MemStorage};

    /// A prune renames a snapshot and shrinks it while a check reads it
    /// (after its first read, of 8): the check is told the file is gone (the
    /// upload then skips it as superseded) and the scrubber says nothing,
    /// where a file that shrank under its own name is damage to both.
    #[test]
    fn a_file_pruned_while_it_is_checked_is_gone_not_damaged() {
        for renamed in [true, false] {
            futures_lite::future::block_on(async {
                let faults = FaultConfig {
                    yield_rate: 1.0,
                    ..FaultConfig::none()
                };
                let storage = MemStorage::with_faults(7, faults);
                let path = Path::new("/snapshot-00000000000000000042.snap");
                let body = vec![7u8; 8 * SCRUB_READ_BYTES as usize];
                let domain = Uuid::from_u128(9);
                storage.insert_file(path, snapshot_bytes(42, domain, &[("kv", &body)]));
                let doomed = Path::new("/snapshot-00000000000000000042.snap.tmp");
                let prune = async {
                    while storage.bytes_read() == 0 {
                        futures_lite::future::yield_now().await;
                    }
                    let name = if renamed {
                        storage.rename(path, doomed).await.unwrap();
                        doomed
                    } else {
                        path
                    };
                    let file = storage.open(name).await.unwrap();
                    file.truncate(HEADER_BLOCK_BYTES + SCRUB_READ_BYTES)
                        .await
                        .unwrap();
                    file.close().await.unwrap();
                };
                let check = verify_snapshot_file(&storage, path, Some(domain));
                let (checked, ()) = futures_lite::future::zip(check, prune).await;
                match checked {
                    Err(e) if renamed => assert_eq!(e.kind(), io::ErrorKind::NotFound),
                    Ok(Err(damage)) if !renamed => {
                        assert!(
                            matches!(damage.fault, crate::error::SnapshotFault::EndsInBody { .. }),
                            "{damage}"
                        )
                    }
                    other => panic!("renamed {renamed}: {other:?}"),
                }
            });
        }
    }

    /// The digest covers every byte of the file once, in order, whatever
    /// the check fed it (nothing, the first block, all but a tail that does
    /// not start on a block, or all of it).
    #[test]
    fn the_upload_digest_is_the_crc_of_the_whole_file() {
        futures_lite::future::block_on(async {
            let storage = MemStorage::new();
            let path = Path::new("/snapshot");
            let bytes: Vec<u8> = (0..3 * BLOCK_BYTES + 1234)
                .map(|i| (i * 7 % 251) as u8)
                .collect();
            storage.insert_file(path, bytes.clone());
            let file = storage.open(path).await.unwrap();
            let whole = FileDigest {
                bytes: bytes.len() as u64,
                crc32: crc32fast::hash(&bytes),
            };
            let fed_up_to = [0, BLOCK_BYTES, 2 * BLOCK_BYTES + 100, bytes.len() as u64];
            for fed in fed_up_to {
                let mut hasher = FileHasher {
                    len: bytes.len() as u64,
                    ..FileHasher::default()
                };
                hasher.feed(0, &bytes[..fed as usize]);
                // A read elsewhere is not fed.
                hasher.feed(fed + 1, &bytes[..1]);
                assert_eq!(hasher.finish(&file).await.unwrap(), whole, "fed {fed}");
            }
            let _ = file.close().await;
        });
    }
}
