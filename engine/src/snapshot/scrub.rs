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
    let opened =
        async { io::Result::Ok((storage.stat(path).await?.id, storage.open(path).await?)) };
    let (id, file) = match opened.await {
        Ok(opened) => opened,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut result = scrub_open_file(&file, path, domain, pacer, go_on, None).await;
    if matches!(result, Ok(Some(_))) && pruned_while_read(storage, path, id).await? {
        result = Ok(None);
    }
    let _ = file.close().await;
    result
}

/// Whether the snapshot file whose identity was `read` (stat before it was
/// opened) no longer has its name `path`: a prune renames a file before it
/// shrinks it ([`super::SnapshotStore::prune_in_steps`]), so damage read in
/// a file whose name is gone may be the prune's, and the file is no
/// snapshot any more. One still named is what an open would load: its
/// damage is real.
async fn pruned_while_read<S: Storage>(
    storage: &S,
    path: &Path,
    read: (u64, u64),
) -> io::Result<bool> {
    match storage.stat(path).await {
        Ok(named) => Ok(named.id != read),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
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
    let id = storage.stat(path).await?.id;
    let file = storage.open(path).await?;
    let mut pacer = Pacer::new(NonZeroU64::MAX);
    let mut digest = FileHasher::default();
    let result =
        scrub_open_file(&file, path, domain, &mut pacer, &|| true, Some(&mut digest)).await;
    let result = match result {
        Ok(Some(_)) if pruned_while_read(storage, path, id).await? => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the snapshot was pruned while it was checked",
        )),
        Ok(Some(damage)) => Ok(Err(damage)),
        // The bytes after the body (the zero padding) go up too.
        Ok(None) => match digest.finish(&file).await {
            Ok(digest) => Ok(Ok(digest)),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
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
