//! Snapshots in object storage: the upload after each checkpoint, its
//! retries, the two upload modes, and retention of old generations.
//!
//! A shard given [`ObjectStoreSettings`]
//! ([`ShardBuilder::object_store`](crate::ShardBuilder::object_store)) opens
//! a local [`Cache`] (default `<shard dir>/cache`) and a [`Tiered`] view of
//! the store under its domain. Every snapshot file it writes becomes the
//! object `<domain>/snapshots/snapshot-<20 digits>.snap`, byte for byte the
//! local file (layout in `engine/FORMAT.md`), and
//! [`cold_restore`](crate::cold_restore) rebuilds a lost shard from those.
//! The [`Remote`] is shared by the shards of a process (one I/O thread);
//! the cache and the upload task are per shard. The store is
//! `object_store`'s local filesystem by default ([`Remote::local`]), any
//! S3-compatible endpoint by config ([`Remote::s3`]), and Google Cloud
//! Storage or Azure Blob Storage through [`Backend::Custom`] with
//! `ringstore-cache`'s `gcp` or `azure` feature.
//!
//! # The upload task
//!
//! The upload is an extension of the shard ([`crate::shard`],
//! "Extensions"): the builder's open attaches it, the shard tells it when a
//! snapshot was persisted, and it holds the watermark back through the
//! hook trait's watermark limit; it reaches the shard only through its
//! methods. Its failures at open and close are [`ObjectStoreError`]s.
//!
//! One task per shard, apart from the compaction task, so local progress
//! never waits on a request. Whenever the newest local snapshot is newer
//! than the newest uploaded one it uploads that file
//! ([`Tiered::put_file_checked`]: upload, then a hard link into the cache,
//! no copy). Only the newest is
//! ever uploaded: one superseded before its turn (or pruned locally first,
//! or while it is checked or sent) is skipped, since the newer snapshot
//! covers its ops; a slow store costs staleness, never a queue.
//!
//! Before an upload the file is read back through the shard's storage and
//! every checksum verified (the store's copy is what the watermark and a
//! cold restore rely on); one that no longer verifies is logged, counted as
//! a failure and not uploaded, and the next checkpoint's snapshot takes its
//! place. That read also takes the size and CRC-32 of the whole file, and
//! the upload sends exactly those bytes: every attempt's own read of the
//! file is compared with them before the object is completed, and a file
//! that reads otherwise (damaged or changed since the check) is not stored
//! (`RemoteError::SourceChanged`, logged and counted as a failure; the
//! next attempt checks the file again), unless its name is gone: then a
//! prune took it while it was read, and it is skipped as superseded. A
//! prune removes the file an upload reads whole rather than in steps
//! (`ShardHooks::snapshot_in_use`): the cache may link it by the
//! descriptor the upload opened.
//!
//! Every request carries the [`Remote`]'s deadline. A failed attempt is
//! counted (`snapshot_upload_failures` in [`ShardStats`], the
//! `ringstore_snapshot_upload_failures_total` counter) and retried after a
//! jittered backoff ([`Backoff`]) from [`UPLOAD_BACKOFF_MIN_DEFAULT`] doubling to
//! [`UPLOAD_BACKOFF_MAX_DEFAULT`] (settable), for as long as the shard is
//! open. [`Shard::close`](crate::Shard::close) abandons a request in
//! flight (a put is atomic: the key then holds the whole object or none of
//! it); the next open uploads the newest snapshot again.
//!
//! Writes never overwrite: the store refuses a key that holds an object.
//! When an upload finds its key taken it compares sizes, then reads the
//! object's 4 KiB header block (a download abandoned once it has them):
//! an object of the local file's size whose
//! header verifies as this domain's snapshot at this op is this very
//! upload (an attempt whose answer was lost, or an upload before a restart
//! that the shard could not record) and counts as uploaded. Anything else
//! is a conflict: logged, counted as a failure, and not retried until a
//! newer snapshot supersedes it. The body is not downloaded: within a
//! domain only its shard writes snapshot keys and each op's snapshot holds
//! one state (a cold restore, and a [`Shard::reset_to`] of a shard with an
//! object store, number a ring past every key the domain has there), so a
//! same-size snapshot of the same op with other state needs two processes
//! claiming one domain. Size alone counted as uploaded before; an object of
//! that size with other bytes (another file, or one changed in the store)
//! then let the watermark pass the op in `BeforeCompaction` mode
//! (`engine/tests/object_store.rs`
//! `an_object_of_the_snapshots_size_that_is_not_it_is_not_counted_as_uploaded`).
//!
//! # Upload modes
//!
//! | [`UploadMode`] | the journal's watermark | a lost local disk loses | the store down |
//! |---|---|---|---|
//! | [`BeforeCompaction`](UploadMode::BeforeCompaction) (default) | moves only up to the newest *uploaded* snapshot | nothing the journal compacted: every op at or below the watermark is in an uploaded snapshot; the ops above it are in the local journal only (the broker's replication is what covers those) | uploads retry; the ring fills up to the last uploaded snapshot, then submits wait `ring_full_wait_max` and fail with [`Error::Backpressure`] until the store is back |
//! | [`Background`](UploadMode::Background) | moves as without an object store | also the ops between the newest uploaded snapshot and the watermark | nothing changes locally; uploads lag and catch up |
//!
//! While uploads fail in `BeforeCompaction` mode the compaction task still
//! checkpoints on its op and byte thresholds (short replays), but takes no
//! extra snapshots for ring pressure: one would free nothing until it is
//! uploaded. The local snapshots above the watermark are all kept (recovery
//! may need them), at most about `slot_count / ops_max` of them.
//!
//! # Retention
//!
//! After each upload the task lists `<domain>/snapshots/` and deletes all
//! but the newest [`ObjectStoreSettings::remote_generations`] objects
//! (never the one just uploaded). A failure is counted
//! (`remote_retention_failures`) and the rest is left for the next upload.
//! A cold restore falls back to older generations when the newest is
//! damaged, so keep more than one.
//!
//! [`ShardStats`]: crate::ShardStats

use crate::error::{Error, Result};
use crate::machine::{OpId, StateMachine};
use crate::shard::{Shard, ShardHooks, WeakShard};
use crate::snapshot::scrub::verify_snapshot_file;
use crate::snapshot::{parse_snapshot_file_name, snapshot_file_name, SnapshotMeta};
use event_listener::Event;
use ringstore_cache::{remote::Backoff, Cache, RemoteError, Tiered};
use ringstore_journal::storage::Storage;
use std::{
    any::Any,
    cell::{Cell, RefCell},
    future::Future,
    path::Path,
    pin::Pin,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};
use uuid::Uuid;

/// The object store handle and its settings, from `ringstore-cache`.
pub use ringstore_cache::{Backend, Remote, RemoteBuilder, S3Config};

/// The settings live with the builder's (`crate::config`); here under
/// their public path.
pub use crate::config::object_store::{
    ObjectStoreSettings, UploadMode, CACHE_BYTES_LIMIT_DEFAULT, CACHE_DIR_DEFAULT,
    REMOTE_GENERATIONS_DEFAULT, REMOTE_GENERATIONS_MAX, UPLOAD_BACKOFF_MAX_DEFAULT,
    UPLOAD_BACKOFF_MIN_DEFAULT, UPLOAD_BACKOFF_RANGE,
};

/// The key prefix (under the domain) of snapshot objects.
pub const SNAPSHOT_KEY_PREFIX: &str = "snapshots";

/// The object key of the snapshot at `op`, relative to the domain:
/// `snapshots/snapshot-<20 digits>.snap`.
pub fn snapshot_key(op: u64) -> String {
    format!("{SNAPSHOT_KEY_PREFIX}/{}", snapshot_file_name(op))
}

/// The op of a snapshot key relative to the domain, if it is one.
pub fn parse_snapshot_key(key: &str) -> Option<u64> {
    let name = key.strip_prefix(SNAPSHOT_KEY_PREFIX)?.strip_prefix('/')?;
    parse_snapshot_file_name(name)
}

/// Prefix of a domain's numbering claims: `numbering/<op>-<epoch>`.
pub const NUMBERING_KEY_PREFIX: &str = "numbering";

/// The key of the claim a reset writes before it numbers a shard above
/// `floor`, relative to the domain: `numbering/<op>-<epoch>`, both 20
/// digits. An empty object: its name is the claim.
pub fn numbering_key(floor: OpId) -> String {
    format!(
        "{NUMBERING_KEY_PREFIX}/{:020}-{:020}",
        floor.op, floor.epoch
    )
}

/// The floor a numbering claim's key (relative to the domain) names, if it
/// is one.
pub fn parse_numbering_key(key: &str) -> Option<OpId> {
    let name = key.strip_prefix(NUMBERING_KEY_PREFIX)?.strip_prefix('/')?;
    let (op, epoch) = name.split_once('-')?;
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(op) || !digits(epoch) {
        return None;
    }
    Some(OpId {
        op: op.parse().ok()?,
        epoch: epoch.parse().ok()?,
    })
}

/// The largest op and the largest epoch the numbering claims of `domain`
/// in the store name (`OpId { 0, 0 }` if it has none).
pub(crate) async fn numbering_claimed(remote: &Remote, domain: Uuid) -> Result<OpId> {
    let prefix = format!("{domain}/{NUMBERING_KEY_PREFIX}");
    let listed = remote
        .list(&prefix)
        .await
        .map_err(|e| ObjectStoreError::new("list the domain's numbering claims", e.into()))?;
    let domain_prefix = format!("{domain}/");
    Ok(listed
        .iter()
        .filter_map(|info| parse_numbering_key(info.key.strip_prefix(&domain_prefix)?))
        .fold(OpId { op: 0, epoch: 0 }, |seen, claim| OpId {
            op: seen.op.max(claim.op),
            epoch: seen.epoch.max(claim.epoch),
        }))
}

/// An object-storage or local-cache call failed. The source names the
/// store's operation and key and says whether retrying may help
/// (`ringstore_cache::RemoteError::is_transient`). Where a shard's open or
/// close fails on it, it reaches the caller inside [`Error::Extension`]
/// with the same message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("object storage: {op} failed: {source}")]
pub struct ObjectStoreError {
    /// What the engine was doing.
    pub op: &'static str,
    /// The cache's or the store's error.
    #[source]
    pub source: Arc<ringstore_cache::Error>,
}

impl ObjectStoreError {
    pub(crate) fn new(op: &'static str, source: ringstore_cache::Error) -> ObjectStoreError {
        ObjectStoreError {
            op,
            source: Arc::new(source),
        }
    }
}

impl From<ObjectStoreError> for Error {
    fn from(error: ObjectStoreError) -> Error {
        Error::extension("object storage", error)
    }
}

/// A shard's object-storage state: its cache, its view of the store, and
/// what the upload task knows.
pub(crate) struct ShardObjects {
    settings: ObjectStoreSettings,
    cache: RefCell<Option<Rc<Cache>>>,
    tiered: RefCell<Option<Rc<Tiered>>>,
    /// Newest snapshot op known to be in the store (0: none known).
    uploaded: Cell<u64>,
    /// The snapshot an upload is reading (and the cache may link by its
    /// descriptor): a prune removes it whole.
    uploading: Cell<Option<u64>>,
    /// A snapshot op not to retry (its key holds another object, or its
    /// file is gone): the next snapshot is uploaded instead.
    not_retried: Cell<u64>,
    /// The snapshot waiting for upload, and since when.
    pending_since: Cell<Option<(u64, Instant)>>,
    /// Notified when a snapshot was written, and at close.
    wanted: Event,
    /// Notified at close: abandon the request in flight.
    closing: Event,
    /// Notified after each upload.
    upload_done: Event,
    task: RefCell<Option<glommio::Task<()>>>,
}

impl ShardObjects {
    /// Opens the shard's cache and its view of the store under `domain`.
    pub(crate) async fn open(
        settings: ObjectStoreSettings,
        shard_dir: &Path,
        domain: Uuid,
    ) -> Result<ShardObjects, ObjectStoreError> {
        let cache = Cache::builder(settings.cache_dir_for(shard_dir))
            .bytes_limit(settings.cache_bytes_limit)
            .open()
            .await
            .map_err(|e| ObjectStoreError::new("open the shard's cache", e))?;
        let cache = Rc::new(cache);
        let tiered = Tiered::new(
            Rc::clone(&cache),
            settings.remote.clone(),
            &domain.to_string(),
        )
        .map_err(|e| ObjectStoreError::new("open the object store view", e))?;
        Ok(ShardObjects {
            settings,
            cache: RefCell::new(Some(cache)),
            tiered: RefCell::new(Some(Rc::new(tiered))),
            uploaded: Cell::new(0),
            uploading: Cell::new(None),
            not_retried: Cell::new(0),
            pending_since: Cell::new(None),
            wanted: Event::new(),
            closing: Event::new(),
            upload_done: Event::new(),
            task: RefCell::new(None),
        })
    }

    /// The shard's view of the store (`None` once closed).
    pub(crate) fn tiered(&self) -> Option<Rc<Tiered>> {
        self.tiered.borrow().clone()
    }

    /// The newest uploaded snapshot's op, if the watermark must wait for
    /// uploads ([`UploadMode::BeforeCompaction`]).
    pub(crate) fn gate(&self) -> Option<u64> {
        (self.settings.mode == UploadMode::BeforeCompaction).then(|| self.uploaded.get())
    }

    /// Newest snapshot op known to be in the store.
    pub(crate) fn uploaded(&self) -> u64 {
        self.uploaded.get()
    }

    /// Waits for the upload task to stop, then shuts the cache down
    /// (persisting its access tracker).
    async fn close(&self) -> Result<(), ObjectStoreError> {
        let task = self.task.borrow_mut().take();
        if let Some(task) = task {
            task.await;
        }
        self.tiered.borrow_mut().take();
        let cache = self.cache.borrow_mut().take();
        match cache.map(Rc::try_unwrap) {
            Some(Ok(cache)) => cache
                .shutdown()
                .await
                .map_err(|e| ObjectStoreError::new("shut the shard's cache down", e)),
            // Still borrowed by a caller of `tiered()`: dropped with it,
            // which the cache treats like a crash (it recovers at open).
            Some(Err(_)) | None => Ok(()),
        }
    }

    /// Resolves after the next upload (or at close).
    pub(crate) fn upload_done(&self) -> event_listener::EventListener {
        self.upload_done.listen()
    }
}

/// How the upload extension hooks into the shard: it uploads each
/// persisted snapshot, and in [`UploadMode::BeforeCompaction`] limits the
/// watermark to the newest uploaded one.
impl<M: StateMachine, S: Storage> ShardHooks<M, S> for ShardObjects {
    fn opened(&self, shard: &Shard<M, S>) {
        *self.task.borrow_mut() = Some(glommio::spawn_local(run_uploads(shard.downgrade())));
    }

    /// A snapshot was written: upload it.
    fn snapshot_persisted(&self, snapshot: &SnapshotMeta) {
        // Written again at an op whose upload was refused (its file no
        // longer verified, and the shard replaced it): upload it now.
        if self.not_retried.get() == snapshot.watermark {
            self.not_retried.set(0);
        }
        self.pending_since
            .set(Some((snapshot.watermark, Instant::now())));
        self.wanted.notify(usize::MAX);
    }

    fn watermark_limit(&self) -> Option<u64> {
        self.gate()
    }

    fn snapshot_in_use(&self) -> Option<u64> {
        self.uploading.get()
    }

    /// The shard joined another domain (a reset): its keys go under that
    /// one from now on, and nothing of it is known to be uploaded.
    fn domain_changed(&self, domain: Uuid) -> Result<()> {
        let Some(cache) = self.cache.borrow().clone() else {
            return Err(Error::Closed);
        };
        let tiered = Tiered::new(cache, self.settings.remote.clone(), &domain.to_string())
            .map_err(|e| ObjectStoreError::new("open the object store view", e))?;
        *self.tiered.borrow_mut() = Some(Rc::new(tiered));
        self.uploaded.set(0);
        self.not_retried.set(0);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("uploaded snapshot {}", self.uploaded.get())
    }

    /// Tells the upload task to stop (the shard is closing).
    fn begin_close(&self) {
        self.closing.notify(usize::MAX);
        self.wanted.notify(usize::MAX);
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = Result<()>> + '_>> {
        Box::pin(async move { ShardObjects::close(self).await.map_err(Error::from) })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// How one upload attempt ended.
enum Upload {
    /// In the store now, with the bytes this attempt sent.
    Uploaded(u64),
    /// The file is gone (pruned): a newer snapshot covers it.
    Superseded,
    /// The key holds another object, or the local file no longer verifies;
    /// not retried (a newer snapshot supersedes it).
    Conflict,
    /// The attempt failed; retry after a backoff.
    Failed,
    /// The shard is closing.
    Closing,
}

impl<M: StateMachine, S: Storage> Shard<M, S> {
    /// The op a reset into `domain` must number above besides what the
    /// shard itself has seen: with an object store, one ring above the
    /// largest snapshot key `domain` has there (damaged objects included),
    /// as a cold restore numbers; 0 without one. A shard that resets to an
    /// older generation of a domain, or joins one from a snapshot file,
    /// would otherwise upload its snapshots under keys the domain's history
    /// holds already: a same-size object there counts as this upload (see
    /// the module docs), and retention, which keeps the highest ops, would
    /// keep the old history's, which a cold restore would then bring back.
    ///
    /// The numbering claims of earlier resets count as keys here (see
    /// [`Shard::claim_numbering`]); their largest epoch is the floor's
    /// epoch.
    pub(crate) async fn remote_numbering_floor(&self, domain: Uuid) -> Result<OpId> {
        let Some(objects) = self.hook::<ShardObjects>() else {
            return Ok(OpId { op: 0, epoch: 0 });
        };
        let tiered = objects.tiered().ok_or(Error::Closed)?;
        let prefix = format!("{domain}/{SNAPSHOT_KEY_PREFIX}");
        let listed = tiered
            .remote()
            .list(&prefix)
            .await
            .map_err(|e| ObjectStoreError::new("list the domain's snapshots", e.into()))?;
        let domain_prefix = format!("{domain}/");
        let claimed = numbering_claimed(tiered.remote(), domain).await?;
        let newest = listed
            .iter()
            .filter_map(|info| parse_snapshot_key(info.key.strip_prefix(&domain_prefix)?))
            .chain((claimed.op > 0).then_some(claimed.op))
            .max();
        let ring = self.journal().config().slot_count;
        Ok(OpId {
            op: newest.map_or(0, |op| op.saturating_add(ring)),
            epoch: claimed.epoch,
        })
    }

    /// Before a reset numbers the shard above `floor` in `domain`, records
    /// that numbering in the store (an empty object at
    /// `<domain>/`[`numbering_key`]), where a later reset or cold restore
    /// of the domain finds it and numbers a ring above it.
    ///
    /// Why: the numbering of a cold restore (and of a reset with an object
    /// store) is a ring above the domain's newest key, because in
    /// `BeforeCompaction` mode the watermark never passes the newest
    /// uploaded snapshot. A reset moves the watermark to its floor before
    /// its snapshot is uploaded, so until then the shard acknowledges ops
    /// a ring above a floor no key in the store shows. Without the claim,
    /// a shard whose disk is lost before that upload would be restored
    /// again at the same floor and epoch, and give its acknowledged op
    /// numbers to other commands. No-op without an object store.
    ///
    /// The claim is written once: an object already at its key is another
    /// reset or restore of the domain that listed the same keys at the same
    /// time, and refuses this one (two shards numbering alike is what the
    /// claim is there to prevent). Only when the store's answer to an
    /// earlier attempt of this very put was lost is the object found this
    /// reset's own. With a store that has no conditional put
    /// (`CreateCheck::HeadFirst`), two claims racing between the check and
    /// the put are not told apart. A store that refuses writes fails the
    /// reset with nothing done.
    pub(crate) async fn claim_numbering(&self, domain: Uuid, floor: OpId) -> Result<()> {
        let Some(objects) = self.hook::<ShardObjects>() else {
            return Ok(());
        };
        let tiered = objects.tiered().ok_or(Error::Closed)?;
        let key = format!("{domain}/{}", numbering_key(floor));
        match tiered.remote().put(&key, Vec::new()).await {
            Ok(()) => Ok(()),
            Err(RemoteError::AlreadyExists {
                after_retry: true, ..
            }) => Ok(()),
            Err(e) => Err(ObjectStoreError::new("claim the reset's numbering", e.into()).into()),
        }
    }

    /// Waits until the newest local snapshot is in object storage, at most
    /// `wait_max`. Returns whether it is (true at once without an object
    /// store or without a snapshot).
    pub async fn wait_for_upload(&self, wait_max: Duration) -> bool {
        let started = Instant::now();
        loop {
            let Some(objects) = self.hook::<ShardObjects>() else {
                return true;
            };
            let listener = objects.upload_done();
            let newest = self.snapshot_watermark();
            if newest == 0 || objects.uploaded() >= newest {
                return true;
            }
            let left = wait_max.saturating_sub(started.elapsed());
            if left.is_zero() || self.is_poisoned_or_closing() {
                return false;
            }
            futures_lite::future::or(listener, async {
                glommio::timer::sleep(left).await;
            })
            .await;
        }
    }

    /// The op of the newest snapshot known to be in object storage (0:
    /// none, or no object store).
    pub fn uploaded_snapshot(&self) -> u64 {
        self.hook::<ShardObjects>()
            .map_or(0, ShardObjects::uploaded)
    }

    /// Uploads the snapshot at `op` (see the module docs).
    async fn upload_snapshot(&self, objects: &ShardObjects, op: u64) -> Upload {
        let Some(tiered) = objects.tiered() else {
            return Upload::Closing;
        };
        let path = self.snapshots().dir().join(snapshot_file_name(op));
        let key = snapshot_key(op);
        let local_bytes = match self.snapshots().storage().stat(&path).await {
            Ok(meta) => meta.len,
            Err(e) if ringstore_journal::storage::errno(&e) == Some(libc::ENOENT) => {
                return Upload::Superseded
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot stat the snapshot to upload");
                return Upload::Failed;
            }
        };
        // What the store gets is what recovery and a cold restore will rely
        // on (in BeforeCompaction mode the watermark moves past it): read the
        // whole file back through the storage layer and check every checksum
        // first, with the verifier recovery and cold restore load it with
        // (`snapshot::verify`), so a file that passes here loads there.
        let domain = self.domain();
        let storage = self.snapshots().storage();
        let checked = verify_snapshot_file(storage, &path, Some(domain)).await;
        let digest = match checked {
            Ok(Ok(digest)) => digest,
            Ok(Err(damage)) => {
                tracing::error!(
                    path = %path.display(),
                    %damage,
                    "the snapshot to upload no longer verifies; not uploading it"
                );
                self.upload_refused();
                self.snapshot_found_damaged(op);
                return Upload::Conflict;
            }
            Err(e) if ringstore_journal::storage::errno(&e) == Some(libc::ENOENT) => {
                return Upload::Superseded
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the snapshot to upload");
                return Upload::Failed;
            }
        };
        let closing = objects.closing.listen();
        if self.is_poisoned_or_closing() {
            return Upload::Closing;
        }
        // Exactly the bytes checked above go up, or none: a file that
        // reads back otherwise (damaged or changed since) is not stored.
        let put = async { Some(tiered.put_file_checked(&key, &path, digest).await) };
        let abandoned = async {
            closing.await;
            None
        };
        let Some(result) = futures_lite::future::or(put, abandoned).await else {
            return Upload::Closing;
        };
        // A failure with the file gone is a prune's doing (the snapshot was
        // superseded), found through the storage layer: only ENOENT says
        // gone, another stat error leaves the upload's own error standing.
        let gone = match &result {
            Ok(()) | Err(ringstore_cache::Error::Remote(RemoteError::AlreadyExists { .. })) => {
                false
            }
            Err(_) => matches!(
                storage.stat(&path).await,
                Err(e) if ringstore_journal::storage::errno(&e) == Some(libc::ENOENT)
            ),
        };
        match result {
            Ok(()) => Upload::Uploaded(local_bytes),
            Err(ringstore_cache::Error::Remote(RemoteError::AlreadyExists {
                after_retry, ..
            })) => {
                self.existing_object(objects, &tiered, op, local_bytes, after_retry)
                    .await
            }
            Err(_) if gone => Upload::Superseded,
            Err(ringstore_cache::Error::Remote(error @ RemoteError::SourceChanged { .. })) => {
                // The next attempt checks the file again: a file damaged
                // on the disk is then refused as any damaged one is.
                tracing::error!(key, %error, "the snapshot read back other bytes than were checked; not stored, checking it again after a backoff");
                Upload::Failed
            }
            Err(error) => {
                tracing::warn!(key, %error, "snapshot upload failed; retrying after a backoff");
                Upload::Failed
            }
        }
    }

    /// The snapshot's key holds an object already: the same upload (an
    /// earlier attempt whose answer was lost, or the same snapshot written
    /// again) or a conflict. Same size is not enough (in `BeforeCompaction`
    /// mode the watermark then moves past the op on its strength): the
    /// object's header block must verify as this domain's snapshot at this
    /// op, with its size ([`Shard::existing_snapshot`]: a download
    /// abandoned after its first 4 KiB). Its body is not checked: a
    /// snapshot of one domain at one op holds one state.
    async fn existing_object(
        &self,
        objects: &ShardObjects,
        tiered: &Tiered,
        op: u64,
        local_bytes: u64,
        after_retry: bool,
    ) -> Upload {
        let key = snapshot_key(op);
        let full = match tiered.object_key(&key) {
            Ok(full) => full,
            Err(error) => {
                tracing::error!(key, %error, "snapshot key refused");
                return Upload::Conflict;
            }
        };
        let closing = objects.closing.listen();
        let examined = async { Some(self.existing_snapshot(tiered, &full, op).await) };
        let abandoned = async {
            closing.await;
            None
        };
        match futures_lite::future::or(examined, abandoned).await {
            None => Upload::Closing,
            Some(Err(error)) => {
                tracing::warn!(key = full, %error, "checking an existing snapshot object failed");
                Upload::Failed
            }
            Some(Ok((object_bytes, _))) if object_bytes != local_bytes => {
                tracing::error!(
                    key = full,
                    object_bytes,
                    local_bytes,
                    "another object holds this snapshot's key (two shards claiming one \
                     domain?); not uploading this snapshot"
                );
                Upload::Conflict
            }
            Some(Ok((_, None))) => {
                tracing::info!(
                    key = full,
                    after_retry,
                    "snapshot already in object storage (its size, and a header of this \
                     domain at this op); counted as uploaded"
                );
                Upload::Uploaded(if after_retry { local_bytes } else { 0 })
            }
            Some(Ok((_, Some(damage)))) => {
                tracing::error!(
                    key = full,
                    %damage,
                    "an object of the snapshot's size holds its key, but its header is not \
                     this domain's snapshot at this op; not counted as uploaded"
                );
                Upload::Conflict
            }
        }
    }

    /// The object at `full`: its size, and the first damage the header
    /// checks find in it as this domain's snapshot at `op` (`None`: it
    /// passes). One download, abandoned after its first
    /// [`HEADER_BLOCK_BYTES`](crate::format::HEADER_BLOCK_BYTES).
    async fn existing_snapshot(
        &self,
        tiered: &Tiered,
        full: &str,
        op: u64,
    ) -> std::result::Result<(u64, Option<crate::snapshot::SnapshotDamage>), RemoteError> {
        let header_bytes = crate::format::HEADER_BLOCK_BYTES as usize;
        let mut reader = tiered.remote().get_stream(full).await?;
        let bytes = reader.len();
        let mut head = Vec::with_capacity(header_bytes);
        while head.len() < header_bytes {
            match reader.next_chunk().await? {
                Some(chunk) => head.extend_from_slice(&chunk),
                None => break,
            }
        }
        drop(reader);
        head.truncate(header_bytes);
        let name = snapshot_file_name(op);
        let mut verifier = crate::snapshot::SnapshotVerifier::new(
            Path::new(&name),
            bytes,
            Some(self.domain()),
            crate::snapshot::Check::Header,
        );
        verifier.header_block(&head);
        Ok((bytes, verifier.finish().damage.into_iter().next()))
    }

    /// After the snapshot at `op` was uploaded: record it, let the
    /// watermark follow, apply retention.
    async fn record_upload(&self, objects: &ShardObjects, op: u64, bytes: u64) {
        let lag = match objects.pending_since.get() {
            Some((pending, since)) if pending <= op => {
                objects.pending_since.set(None);
                since.elapsed()
            }
            _ => Duration::ZERO,
        };
        objects.uploaded.set(objects.uploaded.get().max(op));
        self.update_stats(|stats| {
            stats.snapshot_uploads += 1;
            stats.snapshot_upload_bytes += bytes;
            stats.snapshot_upload_lag = lag;
            stats.snapshot_uploaded_op = objects.uploaded.get();
        });
        self.metrics()
            .record_upload(bytes, lag, objects.uploaded.get());
        objects.upload_done.notify(usize::MAX);
        if objects.gate().is_some() {
            self.advance_after_upload().await;
        }
        self.apply_retention(objects, op).await;
    }

    /// Moves the watermark up to the snapshot just uploaded, as far as the
    /// checkpoint policy lets it (`BeforeCompaction` mode).
    async fn advance_after_upload(&self) {
        if self.is_poisoned_or_closing() {
            return;
        }
        let _held = self.hold_snapshots().await;
        // A close begun while this waited may have handed the directory on.
        if self.is_poisoned_or_closing() {
            return;
        }
        if let Err(error) = self.advance_watermark_and_prune().await {
            tracing::warn!(%error, "advancing the watermark after an upload failed");
        }
    }

    /// Deletes the generations beyond the configured count from the store.
    async fn apply_retention(&self, objects: &ShardObjects, just_uploaded: u64) {
        let Some(tiered) = objects.tiered() else {
            return;
        };
        let keep = objects.settings.remote_generations;
        let closing = objects.closing.listen();
        let listed = async { Some(tiered.list(SNAPSHOT_KEY_PREFIX).await) };
        let abandoned = async {
            closing.await;
            None
        };
        let listed = match futures_lite::future::or(listed, abandoned).await {
            None => return,
            Some(Ok(listed)) => listed,
            Some(Err(error)) => {
                tracing::warn!(%error, "listing snapshots for retention failed; retrying after the next upload");
                self.retention_failed();
                return;
            }
        };
        let mut generations: Vec<(u64, String)> = listed
            .into_iter()
            .filter_map(|info| parse_snapshot_key(&info.key).map(|op| (op, info.key)))
            .collect();
        generations.sort_unstable_by_key(|g| std::cmp::Reverse(g.0));
        let mut deleted = 0;
        for (op, key) in generations.into_iter().skip(keep) {
            if op == just_uploaded || self.is_poisoned_or_closing() {
                continue;
            }
            match tiered.delete(&key).await {
                Ok(()) => deleted += 1,
                Err(error) => {
                    tracing::warn!(key, %error, "deleting an old snapshot from object storage failed; retrying after the next upload");
                    self.retention_failed();
                    break;
                }
            }
        }
        if deleted > 0 {
            self.update_stats(|stats| stats.remote_snapshots_deleted += deleted);
            self.metrics().record_remote_deleted(deleted);
        }
    }

    fn retention_failed(&self) {
        self.update_stats(|stats| stats.remote_retention_failures += 1);
        self.metrics().record_retention_failure();
    }

    /// The local snapshot no longer verified: not uploaded, not retried.
    fn upload_refused(&self) {
        self.update_stats(|stats| stats.snapshot_uploads_refused += 1);
        self.metrics().record_upload_refused();
    }

    fn upload_failed(&self) {
        self.update_stats(|stats| stats.snapshot_upload_failures += 1);
        self.metrics().record_upload_failure();
    }
}

/// Marks the snapshot an upload reads ([`ShardObjects::uploading`]) for as
/// long as it lives, the upload's future dropped midway included.
struct Uploading<'a>(&'a Cell<Option<u64>>);

impl<'a> Uploading<'a> {
    fn begin(uploading: &'a Cell<Option<u64>>, op: u64) -> Self {
        uploading.set(Some(op));
        Uploading(uploading)
    }
}

impl Drop for Uploading<'_> {
    fn drop(&mut self) {
        self.0.set(None);
    }
}

/// The upload task (see the module docs): runs until the shard closes, is
/// poisoned or goes away.
async fn run_uploads<M: StateMachine, S: Storage>(weak: WeakShard<M, S>) {
    // Built at the first failure: the settings live on the shard.
    let mut backoff: Option<Backoff> = None;
    loop {
        let (shard, due, wanted) = {
            let Some(shard) = weak.upgrade() else {
                return;
            };
            let Some(objects) = shard.hook::<ShardObjects>() else {
                return;
            };
            let wanted = objects.wanted.listen();
            if shard.is_poisoned_or_closing() {
                return;
            }
            let newest = shard.snapshot_watermark();
            let due = newest > objects.uploaded.get() && newest != objects.not_retried.get();
            if due
                && objects
                    .pending_since
                    .get()
                    .is_none_or(|(op, _)| op != newest)
            {
                // Written before this open, or by a reset: the lag runs from
                // now.
                objects.pending_since.set(Some((newest, Instant::now())));
            }
            (shard, due.then_some(newest), wanted)
        };
        let Some(op) = due else {
            drop(shard);
            wanted.await;
            continue;
        };
        let Some(objects) = shard.hook::<ShardObjects>() else {
            return;
        };
        let (first, cap) = (
            objects.settings.upload_backoff_min,
            objects.settings.upload_backoff_max,
        );
        let uploaded = {
            let _reading = Uploading::begin(&objects.uploading, op);
            shard.upload_snapshot(objects, op).await
        };
        match uploaded {
            Upload::Uploaded(bytes) => {
                if let Some(backoff) = &mut backoff {
                    backoff.reset();
                }
                shard.record_upload(objects, op, bytes).await;
            }
            Upload::Superseded => {
                shard.update_stats(|stats| stats.snapshot_uploads_skipped += 1);
                // The newest snapshot changed under us: look again (the
                // loop waits on `wanted` if nothing newer is there).
                let newest = shard.snapshot_watermark();
                if newest == op {
                    // Gone, yet still the newest: nothing to upload until
                    // the next checkpoint.
                    objects.not_retried.set(op);
                }
            }
            Upload::Conflict => {
                shard.upload_failed();
                objects.not_retried.set(op);
            }
            Upload::Closing => return,
            Upload::Failed => {
                shard.upload_failed();
                let pause = backoff
                    .get_or_insert_with(|| Backoff::new(first, cap))
                    .next_pause();
                let closing = objects.closing.listen();
                // A close that began before the listener existed would not
                // wake it: look once more.
                if shard.is_poisoned_or_closing() {
                    return;
                }
                drop(shard);
                futures_lite::future::or(
                    async {
                        glommio::timer::sleep(pause).await;
                    },
                    closing,
                )
                .await;
            }
        }
    }
}
