//! Cold restore: rebuilding a shard whose local disk is gone from its
//! snapshots in object storage.
//!
//! [`restore`] takes the builder of the shard to rebuild (its directory,
//! journal settings and [`ObjectStoreSettings`]) and the domain, and
//! returns the running shard:
//!
//! 1. **List** `<domain>/snapshots/` in the store. Nothing local is touched
//!    before the store has answered: a wrong domain or store ends here with
//!    [`ColdRestoreError::NoRemoteSnapshot`].
//! 2. **Open** the directory as a new shard of the domain, behind the
//!    marker file [`RESTORE_MARKER_NAME`]. A directory that holds a shard
//!    (`identity`, journal files, snapshots) is refused with
//!    [`ColdRestoreError::RestoreTargetHoldsShard`]; one holding the marker of an
//!    earlier restore that did not finish has that restore's leftovers
//!    removed first. While the marker exists a plain open refuses the
//!    directory ([`crate::Error::RestoreIncomplete`]), so a crash mid-restore can
//!    never leave something that opens as an empty shard of the domain.
//! 3. **Download and verify**, newest generation first: through the shard's
//!    cache ([`Tiered::get_path`]; straight to disk if the cache cannot hold
//!    it), linked into `<dir>/restore/`, then loaded with every check a
//!    local snapshot gets (header, section and whole-file CRCs, the name,
//!    the domain): the same verifier ([`crate::snapshot::verify`]) through
//!    the same loader as recovery, so the object passed the pre-upload
//!    check and a restore by the same rules. A generation that fails is downloaded and checked once
//!    more (its cached copy dropped), then reported in
//!    [`ColdRestoreReport::skipped`] with the reason (and logged at error
//!    level, and counted in `ringstore_cold_restore_snapshots_skipped_total`,
//!    as one gone from the store when downloaded is), and the previous
//!    generation is tried. A read of the downloaded file that fails on the
//!    local disk (on the last attempt) is no reason to fall back: the
//!    restore fails with it. All of them damaged is
//!    [`ColdRestoreError::RemoteSnapshotsDamaged`], listing why.
//! 4. **Reset** the shard to it ([`crate::reset`]): op numbers continue
//!    above every key listed (so the shard's next snapshots never collide
//!    with a damaged newer object) and every numbering claim of an earlier
//!    reset or restore of the domain (`<domain>/numbering/`, written before
//!    that reset numbered its shard; this restore writes its own, so a store
//!    that refuses writes fails the restore here, after the download, with
//!    everything it created removed), *plus one ring* (the journal's
//!    `slot_count`): the lost journal held the ops above its watermark, at
//!    most a ring of them, and in [`UploadMode::BeforeCompaction`](crate::UploadMode::BeforeCompaction) the
//!    watermark never passed the newest uploaded snapshot, so every op the
//!    lost shard acknowledged is below the new numbering (given the same
//!    `slot_count`). In [`UploadMode::Background`](crate::UploadMode::Background) uploads may lag by more
//!    than a ring, and that bound does not hold. Epochs continue above the
//!    snapshot's and above those of damaged generations whose header still
//!    verifies; an epoch the lost journal used after its last uploaded
//!    snapshot is not known here (the broker that set it is). The reset's
//!    snapshot is uploaded like a checkpoint's. A claim above every
//!    snapshot listed is a reset whose snapshot never reached the store
//!    (a `reset_to` moves the watermark without waiting for its upload):
//!    the state it set is not the one restored, unless it was the same
//!    (a restore's), so it is reported
//!    ([`ColdRestoreReport::unuploaded_reset`], at error level, counted
//!    in `ringstore_cold_restore_unuploaded_resets_total`).
//! 5. **Finish**: remove `<dir>/restore/` and the marker (then fsync the
//!    directory).
//!
//! If a step after 2 fails, the shard is closed and everything the restore
//! created is removed, the marker last (a restore only ever writes into a
//! directory that held no shard, so all of it is its own); the cache
//! directory stays, with whatever it downloaded.
//!
//! Cold restore is an extension: step 2 runs inside the shard's open as
//! the builder's directory-preparation step (the core's recovery calls it
//! without knowing what it is), and the rest uses the shard's API, the
//! object-store extension and [`crate::reset`]. Its errors are
//! [`ColdRestoreError`]; the core's [`Error`] carries one only as an
//! [`Error::Extension`] (from `EngineBuilder::restore_shard`).
//!
//! ```no_run
//! use ringstore::broker::Metadata;
//! use ringstore::object_store::{ObjectStoreSettings, Remote};
//! use ringstore::Shard;
//!
//! let remote = Remote::local("/mnt/backup/ringstore-objects").open()?;
//! let domain: uuid::Uuid = "6f1c0f64-5d4e-4a3b-9c2d-1e0f9a8b7c6d".parse().expect("uuid");
//! glommio::LocalExecutorBuilder::default()
//!     .spawn(move || async move {
//!         let builder = Shard::<Metadata>::builder("/var/lib/broker/shard-0")
//!             .object_store(ObjectStoreSettings::new(remote));
//!         let (shard, report) = ringstore::cold_restore::restore(builder, domain).await?;
//!         println!("restored op {} (skipped {})", report.reset.source.watermark, report.skipped.len());
//!         shard.close().await
//!     })
//!     .expect("reactor")
//!     .join()
//!     .expect("reactor")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::config::ShardBuilder;
use crate::error::{Error, SnapshotError};
use crate::layout::identity::{write_identity, Identity};
use crate::layout::{IDENTITY_FILE_NAME, IDENTITY_TEMP_NAME, JOURNAL_DIR_NAME, SNAPSHOT_DIR_NAME};
use crate::machine::{OpId, StateMachine};
use crate::object_store::{
    numbering_claimed, parse_snapshot_key, ObjectStoreError, ObjectStoreSettings, ShardObjects,
    SNAPSHOT_KEY_PREFIX,
};
use crate::reset::{ResetError, ResetOutcome};
use crate::shard::Shard;
use crate::snapshot::inspect::{inspect_snapshot, Check};
use crate::snapshot::snapshot_file_name;
use ringstore_cache::{RemoteError, Tiered};
use ringstore_journal::storage::{
    copy_file, create_dir_all_durably, errno, remove_tree, BufferedFile as _, DmaStorage, Storage,
};
use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use uuid::Uuid;

/// The marker and the staging directory are names of the shard directory,
/// owned by [`crate::layout`]; here too for code that names them by this
/// path.
pub use crate::layout::{RESTORE_MARKER_NAME, RESTORE_STAGING_DIR_NAME};
/// Times one generation is downloaded and verified before it is skipped:
/// a bit flipped in transit or in the cached copy must not pass for a
/// damaged object.
const VERIFY_ATTEMPTS_MAX: u32 = 2;

/// A snapshot generation in object storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSnapshot {
    /// Its key, relative to the domain (`snapshots/snapshot-<op>.snap`).
    pub key: String,
    /// The op in its name.
    pub op: u64,
    /// Its size.
    pub bytes: u64,
}

/// Why a generation was passed over.
#[derive(Debug, Clone)]
pub enum SkipReason {
    /// It failed verification (twice).
    Damaged(SnapshotError),
    /// It was listed, then gone when downloaded.
    Vanished,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Damaged(reason) => write!(f, "{reason}"),
            SkipReason::Vanished => f.write_str("listed, but gone when downloaded"),
        }
    }
}

/// A generation [`restore`] did not use, and why.
#[derive(Debug, Clone)]
pub struct SkippedRemoteSnapshot {
    /// The generation.
    pub snapshot: RemoteSnapshot,
    /// Why.
    pub reason: SkipReason,
}

fn describe_skipped(skipped: &[SkippedRemoteSnapshot]) -> String {
    let parts: Vec<String> = skipped
        .iter()
        .map(|s| format!("{}: {}", s.snapshot.key, s.reason))
        .collect();
    parts.join("; ")
}

/// Why a cold restore failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ColdRestoreError {
    /// The object store holds no snapshot of the domain.
    #[error(
        "no snapshot of domain {domain} in object storage ({store}, under {prefix}/): check the \
         domain UUID and the object-store settings"
    )]
    NoRemoteSnapshot {
        /// The domain asked for.
        domain: Uuid,
        /// The store (`Remote::describe`).
        store: String,
        /// The prefix listed.
        prefix: String,
    },

    /// Every snapshot generation of the domain in object storage failed
    /// verification.
    #[error(
        "every snapshot of domain {domain} in object storage is damaged, nothing to restore: {}",
        describe_skipped(skipped)
    )]
    RemoteSnapshotsDamaged {
        /// The domain.
        domain: Uuid,
        /// Each generation and why it was refused, newest first.
        skipped: Vec<SkippedRemoteSnapshot>,
    },

    /// The restore was pointed at a directory that holds a shard.
    #[error(
        "{path} already holds a shard ({found}); a cold restore rebuilds a lost shard into an \
         empty directory: move this one aside first"
    )]
    RestoreTargetHoldsShard {
        /// The shard directory.
        path: PathBuf,
        /// What was found there.
        found: String,
    },

    /// Listing, downloading or caching a snapshot failed.
    #[error(transparent)]
    ObjectStore(#[from] ObjectStoreError),

    /// Resetting the shard to the downloaded snapshot failed.
    #[error(transparent)]
    Reset(#[from] ResetError),

    /// The shard failed: its settings, its open, a file operation of the
    /// restore (`Error::Io`, naming the call and the path).
    #[error(transparent)]
    Shard(#[from] Error),
}

impl From<ColdRestoreError> for Error {
    fn from(error: ColdRestoreError) -> Error {
        match error {
            ColdRestoreError::Shard(error) => error,
            ColdRestoreError::Reset(error) => error.into(),
            other => Error::extension("cold restore", other),
        }
    }
}

impl ColdRestoreError {
    /// The restore's own error back out of the core's, where the open
    /// carried it (step 2 runs inside the open).
    fn from_shard(error: Error) -> ColdRestoreError {
        if let Error::Extension(extension) = &error {
            if let Some(own) = extension.downcast_ref::<ColdRestoreError>() {
                return own.clone();
            }
        }
        ColdRestoreError::Shard(error)
    }
}

type Result<T, E = ColdRestoreError> = std::result::Result<T, E>;

/// What [`restore`] did.
#[derive(Debug, Clone)]
pub struct ColdRestoreReport {
    /// The domain.
    pub domain: Uuid,
    /// The store (`Remote::describe`).
    pub store: String,
    /// Every generation listed, newest first.
    pub listed: Vec<RemoteSnapshot>,
    /// The generation restored.
    pub restored: RemoteSnapshot,
    /// The reset: the snapshot's op and epoch (`reset.source`; its path was
    /// the staging copy, removed since), the new floor (`reset.floor`: the
    /// next op is `floor.op + 1` at epoch `floor.epoch` or later) and the
    /// local snapshot written at it.
    pub reset: ResetOutcome,
    /// Newer generations that were passed over, newest first.
    pub skipped: Vec<SkippedRemoteSnapshot>,
    /// Bytes downloaded (verification retries included; cache hits not).
    pub downloaded_bytes: u64,
    /// The numbering an earlier reset or restore of the domain claimed in
    /// the store, when it is above every snapshot listed: that reset's
    /// snapshot never reached the store (the disk was lost first), so the
    /// state it set is not what was restored unless it was this state
    /// (a restore's is; a `reset_to` another snapshot's is not). Logged at
    /// error level and counted in
    /// `ringstore_cold_restore_unuploaded_resets_total`.
    pub unuploaded_reset: Option<OpId>,
    /// The whole restore, listing to finish.
    pub elapsed: Duration,
}

/// Rebuilds the shard of `builder` (which must have
/// [`ShardBuilder::object_store`]) from the newest intact snapshot of
/// `domain` in object storage, and returns it running. See the module docs.
pub async fn restore<M: StateMachine>(
    builder: ShardBuilder<M, DmaStorage>,
    domain: Uuid,
) -> Result<(Shard<M>, ColdRestoreReport)> {
    let started = Instant::now();
    builder.validate_early()?;
    let Some(settings) = builder.object_store_settings().cloned() else {
        return Err(Error::InvalidConfig {
            setting: "object_store",
            value: "none".into(),
            reason: "a cold restore needs the object store (ShardBuilder::object_store)".into(),
        }
        .into());
    };
    // 1. List.
    let listed = list_generations(&settings, domain).await?;
    // 2. Open behind the marker.
    let dir = builder.shard_dir().to_path_buf();
    let builder = builder.prepare_dir_with(Box::new(
        move |storage: DmaStorage, dir: PathBuf, marked| {
            Box::pin(async move {
                prepare_dir(&storage, &dir, domain, marked)
                    .await
                    .map_err(Error::from)
            })
        },
    ));
    let shard = builder.open().await.map_err(ColdRestoreError::from_shard)?;
    // 3, 4.
    let restored = restore_newest_intact(&shard, domain, &listed).await;
    let restored = match restored {
        Ok(restored) => finish(&dir).await.map(|()| restored),
        Err(e) => Err(e),
    };
    match restored {
        Ok((restored, reset, skipped, downloaded_bytes, unuploaded_reset)) => {
            if let Some(claim) = unuploaded_reset {
                metrics::counter!("ringstore_cold_restore_unuploaded_resets_total").increment(1);
                tracing::error!(
                    dir = %dir.display(),
                    %domain,
                    claimed_op = claim.op,
                    restored_op = restored.op,
                    "a reset or restore of this domain at op {} never uploaded its snapshot: \
                     restored the store's newest intact snapshot (op {}) instead; whatever \
                     state that reset set, and every op acknowledged after it, is not restored",
                    claim.op,
                    restored.op
                );
            }
            let report = ColdRestoreReport {
                domain,
                store: settings.remote().describe().to_string(),
                listed,
                restored,
                reset,
                skipped,
                downloaded_bytes,
                unuploaded_reset,
                elapsed: started.elapsed(),
            };
            tracing::info!(
                dir = %dir.display(),
                %domain,
                key = report.restored.key,
                floor_op = report.reset.floor.op,
                floor_epoch = report.reset.floor.epoch,
                skipped = report.skipped.len(),
                "shard restored from object storage"
            );
            Ok((shard, report))
        }
        Err(e) => {
            abandon(shard, &dir).await;
            Err(e)
        }
    }
}

/// The domain's snapshot generations in the store, newest first.
async fn list_generations(
    settings: &ObjectStoreSettings,
    domain: Uuid,
) -> Result<Vec<RemoteSnapshot>> {
    let remote = settings.remote();
    let prefix = format!("{domain}/{SNAPSHOT_KEY_PREFIX}");
    let listed = remote
        .list(&prefix)
        .await
        .map_err(|e| ObjectStoreError::new("list the domain's snapshots", e.into()))?;
    let domain_prefix = format!("{domain}/");
    let mut generations: Vec<RemoteSnapshot> = listed
        .into_iter()
        .filter_map(|info| {
            let key = info.key.strip_prefix(&domain_prefix)?.to_owned();
            let op = parse_snapshot_key(&key)?;
            Some(RemoteSnapshot {
                key,
                op,
                bytes: info.bytes,
            })
        })
        .collect();
    generations.sort_unstable_by_key(|g| std::cmp::Reverse(g.op));
    if generations.is_empty() {
        return Err(ColdRestoreError::NoRemoteSnapshot {
            domain,
            store: remote.describe().to_string(),
            prefix,
        });
    }
    Ok(generations)
}

type Restored = (
    RemoteSnapshot,
    ResetOutcome,
    Vec<SkippedRemoteSnapshot>,
    u64,
    Option<OpId>,
);

/// Steps 3 and 4: the newest generation that verifies, reset to.
async fn restore_newest_intact<M: StateMachine>(
    shard: &Shard<M>,
    domain: Uuid,
    listed: &[RemoteSnapshot],
) -> Result<Restored> {
    let objects = shard
        .hook::<ShardObjects>()
        .expect("the shard was opened with an object store");
    let tiered = objects.tiered().ok_or(Error::Closed)?;
    let staging = shard.dir().join(RESTORE_STAGING_DIR_NAME);
    create_dir_all_durably(&DmaStorage::new(), &staging)
        .await
        .map_err(|e| Error::io("create the restore directory", &staging, e))?;
    let downloaded_before = tiered.stats().downloaded_bytes;
    let mut direct_bytes = 0;
    // Numbering goes above every key listed, damaged ones included, and
    // a ring above that: the ops the lost journal held above its watermark
    // (see step 4 of the module docs).
    // The claims of earlier resets and restores count as keys: until its
    // snapshot was uploaded, a claim was all the store held of a restored
    // shard's numbering.
    let ring = shard.journal().config().slot_count;
    let claimed = numbering_claimed(tiered.remote(), domain).await?;
    // A claim is written before its reset's snapshot at the same op: one
    // above every snapshot listed is a reset whose snapshot never arrived.
    let newest_listed = listed.iter().map(|g| g.op).max().unwrap_or(0);
    let unuploaded_reset = (claimed.op > newest_listed).then_some(claimed);
    let mut seen = OpId {
        op: listed
            .iter()
            .map(|g| g.op)
            .chain([claimed.op])
            .max()
            .unwrap_or(0)
            .saturating_add(ring),
        epoch: claimed.epoch,
    };
    let mut skipped = Vec::new();
    for generation in listed {
        let staged = staging.join(snapshot_file_name(generation.op));
        let mut reason = SkipReason::Vanished;
        // The last attempt's read of the downloaded file failed here: the
        // local disk's fault, not damage in the store, and no reason to
        // fall back to an older generation (every op between the two would
        // be lost): the restore fails, naming the file.
        let mut local_error = None;
        for _ in 0..VERIFY_ATTEMPTS_MAX {
            remove_if_present(&staged).await?;
            match fetch(&tiered, &generation.key, &staged).await? {
                Fetched::Missing => {
                    reason = SkipReason::Vanished;
                    local_error = None;
                    break;
                }
                Fetched::Cached => {}
                Fetched::Direct(bytes) => direct_bytes += bytes,
            }
            match shard.snapshots().load(&staged, Some(domain)).await {
                Ok(loaded) => {
                    let reset = shard.reset_to_loaded(loaded, seen).await?;
                    let downloaded =
                        tiered.stats().downloaded_bytes - downloaded_before + direct_bytes;
                    return Ok((
                        generation.clone(),
                        reset,
                        skipped,
                        downloaded,
                        unuploaded_reset,
                    ));
                }
                Err(error @ SnapshotError::Io { .. }) => {
                    tracing::warn!(key = generation.key, %error,
                        "reading the downloaded snapshot failed; downloading it again");
                    local_error = Some(error);
                    let full = tiered
                        .object_key(&generation.key)
                        .map_err(|e| ObjectStoreError::new("name a snapshot object", e))?;
                    tiered.cache().invalidate(&full).await.map_err(|e| {
                        ObjectStoreError::new("drop an unreadable cached snapshot", e)
                    })?;
                }
                Err(damage) => {
                    tracing::warn!(key = generation.key, %damage, "snapshot from object storage does not verify");
                    local_error = None;
                    if let Some(epoch) = readable_epoch(&staged) {
                        seen.epoch = seen.epoch.max(epoch);
                    }
                    // Download it again rather than trust the cached copy.
                    let full = tiered
                        .object_key(&generation.key)
                        .map_err(|e| ObjectStoreError::new("name a snapshot object", e))?;
                    tiered
                        .cache()
                        .invalidate(&full)
                        .await
                        .map_err(|e| ObjectStoreError::new("drop a damaged cached snapshot", e))?;
                    reason = SkipReason::Damaged(damage);
                }
            }
        }
        remove_if_present(&staged).await?;
        if let Some(error) = local_error {
            return Err(ColdRestoreError::Shard(Error::Snapshot(error)));
        }
        // Loud: the restore goes on with an older generation, and the ops
        // between the two are lost unless the store's journal-less history
        // has them elsewhere.
        metrics::counter!("ringstore_cold_restore_snapshots_skipped_total").increment(1);
        tracing::error!(key = generation.key, %reason,
            "skipping a snapshot generation in object storage; trying the one before it");
        skipped.push(SkippedRemoteSnapshot {
            snapshot: generation.clone(),
            reason,
        });
    }
    Err(ColdRestoreError::RemoteSnapshotsDamaged { domain, skipped })
}

/// How [`fetch`] got the object.
enum Fetched {
    /// The store has no such object (any more).
    Missing,
    /// Through the cache (a hit or a download).
    Cached,
    /// Straight to the staging file (the cache cannot hold it), this many
    /// bytes.
    Direct(u64),
}

/// Puts the object at `key` (relative to the domain) at `staged`.
async fn fetch(tiered: &Tiered, key: &str, staged: &Path) -> Result<Fetched> {
    use ringstore_cache::Error as CacheError;
    match tiered.get_path(key).await {
        Ok(Some(cached)) => {
            link_or_copy(&DmaStorage::new(), &cached, staged)
                .await
                .map_err(|e| Error::io("link a downloaded snapshot", staged, e))?;
            Ok(Fetched::Cached)
        }
        Ok(None) => Ok(Fetched::Missing),
        Err(
            CacheError::Oversize { .. }
            | CacheError::ReservationTooLarge { .. }
            | CacheError::ReservationTimeout { .. }
            | CacheError::NoSpace { .. }
            | CacheError::TooManyWaiters { .. }
            // Invalidated under every download (writes or deletes of the
            // key racing them): the store's object as it is now, uncached.
            | CacheError::Invalidated { .. },
        ) => {
            let full = tiered
                .object_key(key)
                .map_err(|e| ObjectStoreError::new("name a snapshot object", e))?;
            match tiered.remote().get_to_file(&full, staged).await {
                Ok(bytes) => Ok(Fetched::Direct(bytes)),
                Err(RemoteError::NotFound { .. }) => Ok(Fetched::Missing),
                Err(e) => Err(ObjectStoreError::new("download a snapshot", e.into()).into()),
            }
        }
        Err(e) => Err(ObjectStoreError::new("download a snapshot", e).into()),
    }
}

/// A hard link when both are on one filesystem, else a copy.
async fn link_or_copy<S: Storage>(storage: &S, from: &Path, to: &Path) -> io::Result<()> {
    match storage.link(from, to).await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Err(e),
        Err(_) => copy_file(storage, from, to).await.map(drop),
    }
}

/// The epoch in a damaged snapshot's header, if the header itself verifies
/// (the verifier's header-block check, read with plain reads).
fn readable_epoch(path: &Path) -> Option<u64> {
    let report = inspect_snapshot(path, Check::Header, None, &mut |_| {}).ok()?;
    if !report.header_verified {
        return None;
    }
    report.header.map(|header| header.epoch)
}

async fn remove_if_present(path: &Path) -> Result<()> {
    match DmaStorage::new().remove(path).await {
        Err(e) if errno(&e) != Some(libc::ENOENT) => {
            Err(Error::io("remove a staged snapshot", path, e).into())
        }
        _ => Ok(()),
    }
}

/// Step 5: the staging directory, then the marker.
async fn finish(dir: &Path) -> Result<()> {
    let storage = DmaStorage::new();
    let finished = async {
        // What the shard's open created beside the marker (`journal/`,
        // `snapshots/`) is durable before the marker goes: without the
        // marker, a shard missing them would open as an empty one.
        storage.sync_dir(dir).await?;
        remove_tree(&storage, &dir.join(RESTORE_STAGING_DIR_NAME)).await?;
        storage.remove(&dir.join(RESTORE_MARKER_NAME)).await?;
        storage.sync_dir(dir).await
    };
    finished
        .await
        .map_err(|e| Error::io("finish the restore", dir, e).into())
}

/// After a failure: close the shard, then remove what the restore created
/// (under the directory lock), the marker last.
async fn abandon<M: StateMachine>(shard: Shard<M>, dir: &Path) {
    if let Err(e) = shard.close().await {
        tracing::warn!(error = %e, "closing the shard of a failed restore");
    }
    drop(shard);
    let lock = match crate::layout::lock::acquire_on_reactor(&DmaStorage::new(), dir).await {
        Ok(lock) => lock,
        Err(e) => {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot clean up after a failed restore: the marker stays, a restore starts over");
            return;
        }
    };
    let storage = DmaStorage::new();
    let removed = async {
        remove_shard_files(&storage, dir).await?;
        storage.remove(&dir.join(RESTORE_MARKER_NAME)).await?;
        storage.sync_dir(dir).await
    }
    .await;
    if let Err(e) = removed {
        tracing::warn!(error = %e, "cleaning up after a failed restore; the marker stays, a restore starts over");
    }
    drop(lock);
}

/// Step 2, run by the open (as the builder's directory preparation) with
/// the directory locked: refuses a shard,
/// clears an unfinished restore's leftovers, writes the marker and the
/// identity.
async fn prepare_dir<S: Storage>(
    storage: &S,
    dir: &Path,
    domain: Uuid,
    marked: bool,
) -> Result<()> {
    let prepare = |e| Error::io("prepare a restore", dir, e);
    if marked {
        tracing::info!(dir = %dir.display(), "an earlier restore did not finish; starting over");
        remove_shard_files(storage, dir).await.map_err(prepare)?;
    } else {
        let mut found = Vec::new();
        match storage.stat(&dir.join(IDENTITY_FILE_NAME)).await {
            Ok(_) => found.push(IDENTITY_FILE_NAME.to_string()),
            Err(e) if errno(&e) == Some(libc::ENOENT) => {}
            Err(e) => return Err(prepare(e).into()),
        }
        for sub in [JOURNAL_DIR_NAME, SNAPSHOT_DIR_NAME] {
            if has_entries(storage, &dir.join(sub)).map_err(prepare)? {
                found.push(format!("{sub}/"));
            }
        }
        if !found.is_empty() {
            return Err(ColdRestoreError::RestoreTargetHoldsShard {
                path: dir.to_path_buf(),
                found: found.join(", "),
            });
        }
    }
    write_marker(storage, dir, domain)
        .await
        .map_err(|e| Error::io("write the restore marker", dir, e))?;
    Ok(write_identity(storage, dir, &Identity::new(domain)).await?)
}

/// The restore marker, synced, its name synced: from here until
/// [`finish`] removes it, an open of the directory starts the restore over.
async fn write_marker<S: Storage>(storage: &S, dir: &Path, domain: Uuid) -> io::Result<()> {
    let path = dir.join(RESTORE_MARKER_NAME);
    match storage.remove(&path).await {
        Err(e) if errno(&e) != Some(libc::ENOENT) => return Err(e),
        _ => {}
    }
    let file = storage.create_buffered(&path).await?;
    let note =
        format!("ringstore cold restore of domain {domain}: unfinished while this file exists\n");
    let written = async {
        let len = note.len();
        if file.write_at(note.into_bytes(), 0).await? != len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write of the restore marker",
            ));
        }
        file.sync().await
    }
    .await;
    let _ = file.close().await;
    written?;
    storage.sync_dir(dir).await
}

/// Everything a shard keeps in its directory but the lock, the cache and
/// the marker.
async fn remove_shard_files<S: Storage>(storage: &S, dir: &Path) -> io::Result<()> {
    for name in [IDENTITY_FILE_NAME, IDENTITY_TEMP_NAME] {
        match storage.remove(&dir.join(name)).await {
            Err(e) if errno(&e) != Some(libc::ENOENT) => return Err(e),
            _ => {}
        }
    }
    for sub in [
        JOURNAL_DIR_NAME,
        SNAPSHOT_DIR_NAME,
        RESTORE_STAGING_DIR_NAME,
    ] {
        remove_tree(storage, &dir.join(sub)).await?;
    }
    storage.sync_dir(dir).await
}

fn has_entries<S: Storage>(storage: &S, dir: &Path) -> io::Result<bool> {
    match storage.list_dir(dir) {
        Ok(names) => Ok(!names.is_empty()),
        Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}
