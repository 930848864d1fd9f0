//! The snapshot scrubber's read of one file: every byte, with the verifier
//! a load uses ([`Check::Full`]), paced to the scrubber's rate; unpaced, the
//! object-store upload's check of a file before it sends it. The task
//! that runs it over a shard's snapshot generations, pass after pass, is in
//! `shard.rs` ([`crate::ShardBuilder::scrub_rate`]). A failed read is read
//! again a block at a time, so the error names a block that fails every
//! read ([`ringstore_journal::storage::UnreadableBlock`]).

use super::verify::{Check, SnapshotDamage, SnapshotVerifier};
use crate::format::{BLOCK_BYTES, HEADER_BLOCK_BYTES};
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
/// any. `None` too when the file is gone (pruned meanwhile) or when
/// `go_on` turns false between two reads (the shard is closing).
pub(crate) async fn scrub_snapshot<S: Storage>(
    storage: &S,
    path: &Path,
    domain: Option<Uuid>,
    pacer: &mut Pacer,
    go_on: &dyn Fn() -> bool,
) -> io::Result<Option<SnapshotDamage>> {
    let file = match storage.open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let result = scrub_open_file(&file, path, domain, pacer, go_on).await;
    let _ = file.close().await;
    result
}

/// Reads and verifies the snapshot file at `path` at full speed, as a
/// load would: its first damage, if any (the upload's check before it
/// sends a file). A file that is gone is an error (`NotFound`).
pub(crate) async fn verify_snapshot_file<S: Storage>(
    storage: &S,
    path: &Path,
    domain: Option<Uuid>,
) -> io::Result<Option<SnapshotDamage>> {
    let file = storage.open(path).await?;
    let mut pacer = Pacer::new(NonZeroU64::MAX);
    let result = scrub_open_file(&file, path, domain, &mut pacer, &|| true).await;
    let _ = file.close().await;
    result
}

async fn scrub_open_file<F: StorageFile>(
    file: &F,
    path: &Path,
    domain: Option<Uuid>,
    pacer: &mut Pacer,
    go_on: &dyn Fn() -> bool,
) -> io::Result<Option<SnapshotDamage>> {
    let len = file.file_len().await?;
    let mut verifier = SnapshotVerifier::new(path, len, domain, Check::Full);
    if !pacer.pace(go_on).await {
        return Ok(None);
    }
    if len < HEADER_BLOCK_BYTES {
        verifier.header_block(&[]);
    } else {
        let block = read_locating_unreadable(file, 0, HEADER_BLOCK_BYTES as usize, go_on).await?;
        pacer.note(block.len() as u64);
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
            pos += take as u64;
        }
    }
    Ok(verifier.finish().damage.into_iter().next())
}
