//! The cache object: `get`/`put`/`contains`/`invalidate`, reservations,
//! stats and shutdown, and the state its parts share. Each part lives in a
//! module of its own:
//!
//! * `startup` — opening: the root, the lock, the layout, recovery.
//! * `namespace` — the names under `objects/` and their durability:
//!   parent directories, unlinks, directory fsyncs.
//! * `tracker_io` — persisting and loading the access tracker.
//! * `tasks` — the background trimmer and the tracker's persister.
//!
//! # Dropping without `shutdown`
//!
//! Dropping a [`Cache`] without [`Cache::shutdown`] is treated like a crash:
//! background tasks are cancelled, access times since the last persist are
//! lost, and the next open cleans up. Committed objects are not affected.

mod namespace;
mod startup;
mod tasks;
mod tracker_io;

pub(crate) use tasks::request_trim;
use tasks::{persister, trimmer};

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::Instant;

use ringstore_journal::storage::{errno, BufferedFile, EntryKind};

use crate::config::{percent_of, BytesLimit, CacheBuilder, Config};
use crate::disk::{CacheDisk, RootedDisk};
use crate::error::{Error, KeyRejection, Result};
use crate::fence::{Fence, FenceTable};
use crate::format::{
    self, decode_object_checksum, OBJECTS_DIR, OBJECT_CHECKSUM_ATTRIBUTE, TRACKER_FILE,
    TRACKER_TMP_FILE,
};
use crate::fs;
use crate::key::Key;
use crate::locks::{AsyncLock, KeyLocks};
use crate::metrics::{CacheStats, Metrics};
use crate::remote::FileDigest;
use crate::reservation::{Ledger, Reservation};
use crate::staging::{FinishMode, Staging};
use crate::sys;
use crate::tracker::Tracker;
use crate::trim::{self, Trigger, TrimKind, TrimReport};
use event_listener::Event;

/// Dead staging names (closed, dropped, or whose post-commit unlink failed)
/// remembered for a retry; beyond this they are left for the next startup.
pub const PENDING_UNLINKS_MAX: usize = 4096;

/// Most trimmed keys remembered for `take_trimmed_keys` (feature `sim`).
#[cfg(feature = "sim")]
pub const TRIMMED_LOG_MAX: usize = 1 << 16;

/// Largest tracker file the loader reads; a bigger one is ignored as corrupt.
pub const TRACKER_FILE_BYTES_MAX: u64 = 1 << 30;

/// Bytes per `write_at` of the tracker file.
const TRACKER_WRITE_BYTES: usize = 1 << 20;

/// Attempts to create a staging file (name collisions, a parent directory
/// removed by a concurrent trim) before giving up.
pub(crate) const STAGING_CREATE_ATTEMPTS_MAX: u32 = 8;

/// A background trim request and its wake-up, shared with the trimmer task.
#[derive(Default)]
pub(crate) struct TrimSignal {
    pub(crate) requested: Cell<bool>,
    pub(crate) wakeup: Event,
}

/// State shared by the cache, its staging files, reservations and tasks.
pub(crate) struct Shared<S: CacheDisk> {
    /// Every file and name the cache touches goes through it.
    pub(crate) disk: S,
    pub(crate) cfg: Config,
    pub(crate) bytes_limit: u64,
    pub(crate) root: PathBuf,
    pub(crate) objects_path: PathBuf,
    pub(crate) ledger: Rc<Ledger>,
    pub(crate) tracker: RefCell<Tracker>,
    pub(crate) locks: Rc<KeyLocks>,
    /// Invalidation generations of the keys a placement is fenced on.
    pub(crate) fences: Rc<FenceTable>,
    pub(crate) metrics: Metrics,
    pub(crate) trim_lock: Rc<AsyncLock>,
    pub(crate) trim_last_end: Cell<Option<Instant>>,
    pub(crate) trim_signal: Rc<TrimSignal>,
    pub(crate) persist_lock: Rc<AsyncLock>,
    staging_seq: Cell<u64>,
    /// Random per instance, part of every staging name, so a stale handle
    /// from an earlier instance can never name this instance's files.
    staging_instance: u32,
    pending_unlinks: RefCell<Vec<String>>,
    /// Directories whose entry in their parent this instance has made
    /// durable (see `sync_new_ancestors`). Anything else may not be: made
    /// by a task that was dropped before its fsync, or by an earlier
    /// instance that crashed (or whose fsync failed) before it, and kept
    /// by the startup walk because it holds an object. A level leaves when
    /// this instance creates or removes it.
    durable_dirs: RefCell<HashSet<String>>,
    /// Directories made or removed under `objects/` so far: a level is
    /// recorded durable only if none was while its fsync ran.
    dir_changes: Cell<u64>,
    pub(crate) closed: Cell<bool>,
    #[cfg(feature = "sim")]
    pub(crate) faults: Rc<crate::faults::Faults>,
    #[cfg(feature = "sim")]
    pub(crate) trimmed_log: RefCell<Vec<String>>,
}

/// A per-shard local-disk cache in front of object storage. `!Send`: create
/// and use it on one glommio executor. Share it between that executor's tasks
/// with an `Rc`. Its disk is the real one ([`RootedDisk`]) unless the
/// builder was given another ([`CacheBuilder::disk`]: the simulated disk of
/// the model checker).
pub struct Cache<S: CacheDisk = RootedDisk> {
    shared: Rc<Shared<S>>,
    tasks: Vec<glommio::Task<()>>,
    // Declared last: released after the tasks are cancelled.
    _lock: S::Lock,
}

impl<S: CacheDisk> std::fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("dir", &self.shared.root)
            .finish_non_exhaustive()
    }
}

/// A cached object's bytes (deref to `[u8]`).
pub struct Object(ObjectBytes);

enum ObjectBytes {
    /// What one read returned, without a copy.
    Read(Box<dyn Deref<Target = [u8]>>),
    Owned(Vec<u8>),
}

impl Deref for Object {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            ObjectBytes::Read(read) => read,
            ObjectBytes::Owned(bytes) => bytes,
        }
    }
}

impl Object {
    /// Bytes that are not (or no longer) in the cache.
    pub(crate) fn from_vec(bytes: Vec<u8>) -> Object {
        Object(ObjectBytes::Owned(bytes))
    }
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Object").field("len", &self.len()).finish()
    }
}

impl Cache {
    /// Starts configuring a cache rooted at `dir` (created if missing).
    pub fn builder(dir: impl Into<PathBuf>) -> CacheBuilder {
        CacheBuilder::new(dir)
    }
}

impl<S: CacheDisk> Cache<S> {
    /// The cache root.
    pub fn dir(&self) -> &Path {
        &self.shared.root
    }

    /// Where objects live (`<root>/objects`); a key `k` is at
    /// `objects_dir().join(k)`.
    pub fn objects_dir(&self) -> &Path {
        &self.shared.objects_path
    }

    /// Reserves `bytes` and `objects`, waiting (without blocking the reactor)
    /// until they fit or `deadline` passes ([`Error::ReservationTimeout`]).
    /// A waiting reservation asks for a trim. Requests larger than the limits
    /// fail at once with [`Error::ReservationTooLarge`].
    pub async fn reserve(
        &self,
        bytes: u64,
        objects: u64,
        deadline: Instant,
    ) -> Result<Reservation> {
        self.shared.check_open()?;
        self.shared.reserve(bytes, objects, deadline).await
    }

    /// Creates a staging file for `key` (`<key>.<instance>-<seq>.part`,
    /// O_EXCL) holding
    /// a reservation of one object and one chunk. Append to it, then
    /// [`Staging::commit`] or [`Staging::close`].
    pub async fn create_staging(&self, key: &str) -> Result<Staging<S>> {
        self.shared.check_open()?;
        let key = Key::new(key)?;
        let deadline = Instant::now() + self.shared.cfg.reservation_wait;
        let chunk = self.shared.cfg.chunk_bytes.min(self.shared.bytes_limit);
        let reservation = self.shared.reserve(chunk, 1, deadline).await?;
        Staging::create(Rc::clone(&self.shared), key, reservation).await
    }

    /// Stores `data` at `key`, replacing any object there (atomically: a
    /// reader sees the old or the new object, never a mix). Stages, fsyncs,
    /// renames into place and fsyncs the directory.
    pub async fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.shared.check_open()?;
        let key = Key::new(key)?;
        let bytes = data.len() as u64;
        if bytes > self.shared.bytes_limit {
            return Err(Error::Oversize {
                key: key.to_string(),
                bytes,
                bytes_limit: self.shared.bytes_limit,
            });
        }
        let deadline = Instant::now() + self.shared.cfg.reservation_wait;
        let reservation = self.shared.reserve(bytes, 1, deadline).await?;
        let mut staging = Staging::create(Rc::clone(&self.shared), key, reservation).await?;
        if let Err(error) = staging.append(data).await {
            if let Err(close_error) = staging.close().await {
                tracing::warn!(%close_error, "closing a failed put's staging file");
            }
            return Err(error);
        }
        staging.finish(FinishMode::Replace).await
    }

    /// Adds the finished file at `file` as the object `key` without copying
    /// it when it is on the cache's filesystem (a hard link of the open file;
    /// a copy through a staging file otherwise), accounting its bytes.
    /// Refuses an existing key with [`Error::Conflict`], like a commit. The
    /// caller must not modify the file afterwards (the object shares its
    /// inode). See [`crate::adopt`] for the protocol.
    pub async fn adopt(&self, key: &str, file: impl AsRef<Path>) -> Result<crate::Adopted> {
        crate::adopt::adopt(&self.shared, key, file.as_ref(), None, None).await
    }

    /// [`Cache::adopt`] of a file whose size and CRC-32 the caller took as
    /// it read the whole file (an upload's check), recorded as the
    /// object's checksum without reading the file again. A file of another
    /// size than `digest` is refused unread ([`Error::AdoptedFileChanged`]):
    /// it is not the file the caller checked. When the file is copied in
    /// instead of linked, the copy is checked against `digest` and other
    /// bytes (or fewer) are [`Error::AdoptedFileChanged`] too, with nothing
    /// cached (a linked file that differs fails its check when read:
    /// [`Error::CorruptObject`]).
    pub async fn adopt_checked(
        &self,
        key: &str,
        file: impl AsRef<Path>,
        digest: FileDigest,
    ) -> Result<crate::Adopted> {
        crate::adopt::adopt(&self.shared, key, file.as_ref(), Some(digest), None).await
    }

    /// [`Cache::adopt`] (or, with `digest`, [`Cache::adopt_checked`])
    /// fenced on `fence`, taken over `key` before the file was uploaded:
    /// nothing is placed, and [`Error::Invalidated`] returned, if `key`
    /// was invalidated since (see [`Fence`]). A fence over another key is
    /// [`Error::Config`].
    pub async fn adopt_fenced(
        &self,
        key: &str,
        file: impl AsRef<Path>,
        digest: Option<FileDigest>,
        fence: Fence,
    ) -> Result<crate::Adopted> {
        crate::adopt::adopt(&self.shared, key, file.as_ref(), digest, Some(fence)).await
    }

    /// Reads `key`, marking it accessed. `Ok(None)` if it is not cached.
    /// The object is checked against its checksum: [`Error::CorruptObject`]
    /// if its bytes differ, [`Error::UnverifiableObject`] if it has no
    /// checksum or its file's size disagrees with the recorded one or
    /// exceeds the byte limit (refused before any read: the buffer a read
    /// asks for is sized by the checked size).
    pub async fn get(&self, key: &str) -> Result<Option<Object>> {
        self.shared.check_open()?;
        let key = Key::new(key)?;
        self.shared.get(&key).await
    }

    /// Reads the cached object at `key` whole, in steps (none of it kept),
    /// and checks it against its checksum, as `get` does: `Ok(false)` if it
    /// is not cached, [`Error::CorruptObject`] or
    /// [`Error::UnverifiableObject`] if it fails (a file of another size
    /// than its checksum records, or above the byte limit, before any
    /// read). Does not count as an access. For callers that then read the
    /// file in place.
    pub async fn check(&self, key: &str) -> Result<bool> {
        Ok(self.checked_digest(key).await?.is_some())
    }

    /// [`Cache::check`], returning the checksum the object's file records
    /// (which its bytes were just found to match): `None` if not cached.
    pub(crate) async fn checked_digest(&self, key: &str) -> Result<Option<FileDigest>> {
        self.shared.check_open()?;
        let key = Key::new(key)?;
        self.shared.check_cached(&key).await
    }

    /// A fence over `key` (see [`Fence`]): taken before reading or writing
    /// the store object whose bytes are to be placed at `key`, and given to
    /// the placement ([`Staging::fence`], [`Cache::adopt_fenced`]), which
    /// then refuses with [`Error::Invalidated`] if `key` was invalidated
    /// since.
    pub fn fence(&self, key: &str) -> Result<Fence> {
        let key = Key::new(key)?;
        Ok(self.shared.fences.fence(key.as_str()))
    }

    /// True if `key` is cached. Does not count as an access.
    pub fn contains(&self, key: &str) -> Result<bool> {
        let key = Key::new(key)?;
        Ok(self.shared.tracker.borrow().contains(key.as_str()))
    }

    /// Removes `key` (durably: the directory is fsync'd, so a crash cannot
    /// bring a stale object back). Returns whether it was there. A regular
    /// file at `key` that the cache does not track (left by an unlink that
    /// failed) is removed too; nothing else is (a directory, a symlink).
    /// The directory holding `key` (or its nearest existing ancestor) is
    /// fsync'd in every case, so an earlier removal of `key` that was not
    /// yet durable (a trim's) is durable when this returns.
    pub async fn invalidate(&self, key: &str) -> Result<bool> {
        self.shared.check_open()?;
        let key = Key::new(key)?;
        let _guard = self.shared.locks.lock(key.as_str()).await;
        // First: a fenced placement waiting for this lock must not place
        // the object this call removes, even if the removal fails.
        self.shared.fences.invalidated(key.as_str());
        let removed = self
            .shared
            .remove_object(key.as_str(), "invalidate")
            .await?;
        if removed {
            self.shared.metrics.invalidations.inc();
        }
        self.shared.sync_nearest_dir(key.parent()).await?;
        if removed {
            self.shared.remove_empty_parents(key.as_str()).await;
        }
        Ok(removed)
    }

    /// Trims now, down to the low watermark minus outstanding reservations
    /// (waiting out the throttle interval if a trim just ran).
    /// [`TrimKind::Exhaustive`] first walks the directory and reconciles the
    /// tracker with it.
    pub async fn trim(&self, kind: TrimKind) -> Result<TrimReport> {
        self.shared.check_open()?;
        let report = trim::run(&self.shared, kind, Trigger::Manual, true).await?;
        report.ok_or(Error::Closed)
    }

    /// Writes the access tracker now (temp file, fdatasync, rename, directory
    /// fsync).
    ///
    /// Cancel safety: a future dropped while it runs may leave its rename
    /// in the kernel, and a persist started at once after it may then fail
    /// (the periodic persist tries again) or leave a torn tracker, which
    /// the next open ignores. No object is affected: the tracker holds only
    /// access order.
    pub async fn persist_tracker(&self) -> Result<()> {
        self.shared.check_open()?;
        self.shared.persist_tracker().await
    }

    /// A snapshot of sizes, limits and counters.
    pub fn stats(&self) -> CacheStats {
        self.shared.stats()
    }

    /// Cached keys, least recently accessed first (what a trim removes first).
    pub fn keys_oldest_first(&self) -> Vec<String> {
        self.shared
            .tracker
            .borrow()
            .iter_oldest_first()
            .map(|o| o.key.to_string())
            .collect()
    }

    /// Whether work on `key` is still under way: its lock is held (a
    /// commit dropped mid-way finishes in a task that holds it) or
    /// namespace ops are still in the kernel (feature `sim`: a test that
    /// dropped an operation waits for this before it looks at the disk).
    #[cfg(feature = "sim")]
    pub fn is_busy(&self, key: &str) -> bool {
        self.shared.locks.is_locked(key) || self.shared.disk.ops_in_flight() > 0
    }

    /// Keys removed by trims since the last call (feature `sim`: the model
    /// checker needs to tell trims from losses).
    #[cfg(feature = "sim")]
    pub fn take_trimmed_keys(&self) -> Vec<String> {
        std::mem::take(&mut *self.shared.trimmed_log.borrow_mut())
    }

    /// Stops background work, removes dead staging names, persists the
    /// tracker. Dropping the cache instead is treated like a crash.
    pub async fn shutdown(mut self) -> Result<()> {
        for task in self.tasks.drain(..) {
            task.cancel().await;
        }
        // A task cancelled in the middle of a metadata call leaves the call
        // in the kernel: the persister's rename of `tracker.tmp`, landing
        // after the persist below created a fresh one, would move that away
        // and fail its rename with ENOENT. Let every such call finish first
        // (a short wait, bounded by the ring's size).
        self.shared.disk.wait_for_in_flight();
        // Let a trim in flight (from another task) finish first.
        let trim_guard = self.shared.trim_lock.lock().await;
        self.shared.retry_pending_unlinks().await;
        let persisted = self.shared.persist_tracker().await;
        self.shared.closed.set(true);
        drop(trim_guard);
        persisted
    }
}

impl<S: CacheDisk> Drop for Cache<S> {
    /// A crash at this instant: background tasks are cancelled where they
    /// stand, metadata calls already handed to the kernel are waited for (so
    /// none lands after the next instance opened the directory), and the
    /// directory lock is released. Operations other tasks still have in
    /// flight fail with [`Error::Closed`] at their next step.
    fn drop(&mut self) {
        self.shared.closed.set(true);
        self.tasks.clear();
        self.shared.disk.wait_for_in_flight();
    }
}

impl<S: CacheDisk> Shared<S> {
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.get() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Fault hook: should this object-data write fail with ENOSPC?
    pub(crate) fn inject_enospc_write(&self) -> bool {
        #[cfg(feature = "sim")]
        {
            self.faults.take_enospc_write()
        }
        #[cfg(not(feature = "sim"))]
        {
            false
        }
    }

    /// Fault hook: should this read return short (as the kernel does past
    /// `MAX_RW_COUNT`)?
    pub(crate) fn inject_short_read(&self) -> bool {
        #[cfg(feature = "sim")]
        {
            self.faults.take_short_read()
        }
        #[cfg(not(feature = "sim"))]
        {
            false
        }
    }

    /// Fault hook: should this object-data write be short?
    pub(crate) fn inject_short_write(&self) -> bool {
        #[cfg(feature = "sim")]
        {
            self.faults.take_short_write()
        }
        #[cfg(not(feature = "sim"))]
        {
            false
        }
    }

    /// Fault hook: should this directory fsync fail?
    pub(crate) fn inject_dir_sync_failure(&self) -> bool {
        #[cfg(feature = "sim")]
        {
            self.faults.take_dir_sync_failure()
        }
        #[cfg(not(feature = "sim"))]
        {
            false
        }
    }

    /// fsyncs a directory under `objects/` (counted; fault hook).
    pub(crate) async fn fsync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.metrics.dir_syncs.inc();
        if self.inject_dir_sync_failure() {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        self.disk.sync_dir(dir).await
    }

    /// Fault hook: should a commit yield between its link/rename and the
    /// accounting that follows it?
    pub(crate) fn inject_pause_after_place(&self) -> bool {
        #[cfg(feature = "sim")]
        {
            self.faults.take_pause_after_place()
        }
        #[cfg(not(feature = "sim"))]
        {
            false
        }
    }

    /// Fault hook: should this post-commit staging unlink fail?
    pub(crate) fn inject_staging_unlink_failure(&self) -> bool {
        #[cfg(feature = "sim")]
        {
            self.faults.take_staging_unlink()
        }
        #[cfg(not(feature = "sim"))]
        {
            false
        }
    }

    /// Fault hook: should this unlink of a file the startup walk refused
    /// fail?
    pub(crate) fn inject_refused_unlink_failure(&self) -> bool {
        #[cfg(feature = "sim")]
        {
            self.faults.take_refused_unlink()
        }
        #[cfg(not(feature = "sim"))]
        {
            false
        }
    }

    /// Records a trimmed key for the model checker (feature `sim`; bounded
    /// by `TRIMMED_LOG_MAX`, far above what a sequence of `SIM_OPS_MAX`
    /// operations can trim).
    pub(crate) fn log_trimmed(&self, key: &str) {
        #[cfg(feature = "sim")]
        {
            let mut log = self.trimmed_log.borrow_mut();
            if log.len() < TRIMMED_LOG_MAX {
                log.push(key.to_owned());
            }
        }
        #[cfg(not(feature = "sim"))]
        let _ = key;
    }

    pub(crate) fn object_path(&self, rel: &str) -> PathBuf {
        self.objects_path.join(rel)
    }

    /// The next staging name for `key`: `<key>.<instance>-<seq>.part`.
    pub(crate) fn next_staging_name(&self, key: &Key) -> String {
        let seq = self.staging_seq.get();
        self.staging_seq.set(seq.wrapping_add(1));
        key.staging_name(self.staging_instance, seq)
    }
}

impl<S: CacheDisk> Shared<S> {
    pub(crate) async fn reserve(
        self: &Rc<Self>,
        bytes: u64,
        objects: u64,
        deadline: Instant,
    ) -> Result<Reservation> {
        let signal = Rc::clone(&self.trim_signal);
        self.ledger
            .reserve(bytes, objects, deadline, &self.metrics, move || {
                request_trim(&signal)
            })
            .await
    }

    /// Asks the background trimmer for a trim if `used + reserved` is above
    /// the threshold.
    pub(crate) fn maybe_request_trim(&self) {
        let s = self.ledger.state();
        let threshold = self.cfg.trim_threshold_percent;
        let over_bytes =
            s.used_bytes.saturating_add(s.reserved_bytes) > percent_of(self.bytes_limit, threshold);
        let over_objects = s.used_objects.saturating_add(s.reserved_objects)
            > percent_of(self.cfg.objects_limit, threshold);
        if over_bytes || over_objects {
            request_trim(&self.trim_signal);
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let s = self.ledger.state();
        {
            // A disagreement is a bug, but `stats()` is what monitoring
            // calls: report it loudly instead of taking the shard down.
            let tracker = self.tracker.borrow();
            if tracker.bytes() != s.used_bytes || tracker.len() != s.used_objects {
                tracing::warn!(
                    tracker_bytes = tracker.bytes(),
                    ledger_bytes = s.used_bytes,
                    tracker_objects = tracker.len(),
                    ledger_objects = s.used_objects,
                    "tracker and ledger disagree"
                );
            }
            debug_assert_eq!(
                tracker.bytes(),
                s.used_bytes,
                "tracker and ledger disagree on bytes"
            );
            debug_assert_eq!(
                tracker.len(),
                s.used_objects,
                "tracker and ledger disagree on objects"
            );
        }
        let mut stats = CacheStats {
            bytes: s.used_bytes,
            objects: s.used_objects,
            reserved_bytes: s.reserved_bytes,
            reserved_objects: s.reserved_objects,
            bytes_limit: self.bytes_limit,
            objects_limit: self.cfg.objects_limit,
            bytes_high_watermark: s.peak_bytes,
            objects_high_watermark: s.peak_objects,
            ..CacheStats::default()
        };
        self.metrics.fill(&mut stats);
        stats
    }

    async fn get(self: &Rc<Self>, key: &Key) -> Result<Option<Object>> {
        if !self.tracker.borrow().contains(key.as_str()) {
            self.metrics.misses.inc();
            return Ok(None);
        }
        let Some((file, path)) = self.open_object(key).await? else {
            self.metrics.misses.inc();
            return Ok(None);
        };
        let read = async {
            let expected = self.recorded_checksum(key, &file, &path).await?;
            let object = read_to_end(&file, expected.bytes, &path, self).await?;
            Ok::<_, Error>((expected, object))
        }
        .await;
        if let Err(error) = file.close().await {
            tracing::debug!(%error, path = %path.display(), "closing a read object");
        }
        let (expected, object) = read?;
        self.check_read(key, &path, FileDigest::of(&object), expected)?;
        self.tracker.borrow_mut().touch(key.as_str());
        self.metrics.hits.inc();
        Ok(Some(object))
    }

    /// Reads the object at `key` in steps of [`CHECK_STEP_BYTES`] and checks
    /// it against its checksum, keeping none of it and counting no access:
    /// the checksum it matched, `Ok(None)` if it is not cached.
    async fn check_cached(self: &Rc<Self>, key: &Key) -> Result<Option<FileDigest>> {
        if !self.tracker.borrow().contains(key.as_str()) {
            return Ok(None);
        }
        let Some((file, path)) = self.open_object(key).await? else {
            return Ok(None);
        };
        let read = async {
            let expected = self.recorded_checksum(key, &file, &path).await?;
            let mut crc32 = crc32fast::Hasher::new();
            let mut bytes = 0u64;
            // Bounded by the recorded size: every read but the last returns
            // at least one byte, and one byte past that size is enough to
            // tell the file is longer.
            while bytes <= expected.bytes {
                let step = usize::try_from(expected.bytes - bytes)
                    .map_or(CHECK_STEP_BYTES, |left| left.saturating_add(1))
                    .min(CHECK_STEP_BYTES);
                let piece = file
                    .read_at(bytes, step)
                    .await
                    .map_err(|e| Error::io("read", &path, e))?;
                if piece.is_empty() {
                    break;
                }
                crc32.update(&piece);
                bytes += piece.len() as u64;
            }
            let found = FileDigest {
                bytes,
                crc32: crc32.finalize(),
            };
            Ok::<_, Error>((expected, found))
        }
        .await;
        if let Err(error) = file.close().await {
            tracing::debug!(%error, path = %path.display(), "closing a checked object");
        }
        let (expected, found) = read?;
        self.check_read(key, &path, found, expected)?;
        Ok(Some(expected))
    }

    /// Opens the object file of a tracked `key`: `None` if it is gone
    /// (removed behind the cache's back, or by a trim that raced the read;
    /// then forgotten). The disk refuses anything but a regular file at the
    /// key (a FIFO planted there cannot block the open).
    async fn open_object(&self, key: &Key) -> Result<Option<(S::Buffered, PathBuf)>> {
        let path = self.object_path(key.as_str());
        match self.disk.open_buffered(&path).await {
            Ok(file) => Ok(Some((file, path))),
            Err(e) if errno(&e) == Some(libc::ENOENT) => {
                self.forget_if_missing(key).await?;
                Ok(None)
            }
            Err(e) => Err(self.open_error(key, &path, e)),
        }
    }

    /// The checksum recorded for the object at `key`, open as `file`, once
    /// the file's size is the recorded one and within the byte limit: a
    /// read of it then asks for at most that size plus one byte. Refused
    /// before any byte is read or any buffer sized ([`Error::UnverifiableObject`],
    /// counted and logged as a failed check): a file with no checksum this
    /// build reads, and one whose size disagrees (a sparse or extended
    /// file, a damaged inode; see [`fs::size_refusal`]), whatever the
    /// tracker says its size is.
    async fn recorded_checksum(
        &self,
        key: &Key,
        file: &S::Buffered,
        path: &Path,
    ) -> Result<FileDigest> {
        let checksum = self
            .disk
            .object_checksum(file)
            .await
            .map_err(|e| Error::io("fgetxattr", path, e))?;
        let unverifiable = |reason: String| Error::UnverifiableObject {
            key: key.to_string(),
            path: path.to_path_buf(),
            reason,
        };
        let expected = match checksum.as_deref().map(decode_object_checksum) {
            Some(Ok(expected)) => expected,
            Some(Err(reason)) => {
                return Err(self.refused(unverifiable(format!(
                    "its {OBJECT_CHECKSUM_ATTRIBUTE} attribute holds {reason}"
                ))))
            }
            None => {
                return Err(self.refused(unverifiable(format!(
                    "no {OBJECT_CHECKSUM_ATTRIBUTE} attribute"
                ))))
            }
        };
        let bytes = file
            .file_len()
            .await
            .map_err(|e| Error::io("fstat", path, e))?;
        match fs::size_refusal(bytes, Some(expected.bytes), self.bytes_limit) {
            Some(refusal) => Err(self.refused(unverifiable(refusal.to_string()))),
            None => Ok(expected),
        }
    }

    /// What was read at `key` (`found`) against the checksum its file
    /// records: a mismatch is an error (counted and logged), never served.
    fn check_read(
        &self,
        key: &Key,
        path: &Path,
        found: FileDigest,
        expected: FileDigest,
    ) -> Result<()> {
        if found == expected {
            return Ok(());
        }
        Err(self.refused(Error::CorruptObject {
            key: key.to_string(),
            path: path.to_path_buf(),
            expected_bytes: expected.bytes,
            expected_crc32: expected.crc32,
            found_bytes: found.bytes,
            found_crc32: found.crc32,
        }))
    }

    /// Counts and logs an object that failed its check; returns `error`.
    fn refused(&self, error: Error) -> Error {
        self.metrics.damaged_objects.inc();
        tracing::error!(%error, "a cached object failed its check; not served");
        error
    }

    /// After an ENOENT on a tracked key: drop it from the tracker if it is
    /// really gone (under the key lock, so a concurrent put is not undone).
    async fn forget_if_missing(&self, key: &Key) -> Result<()> {
        let _guard = self.locks.lock(key.as_str()).await;
        if !self.tracker.borrow().contains(key.as_str()) {
            return Ok(());
        }
        let stat = self.disk.stat(&self.object_path(key.as_str())).await;
        // Gone, or replaced by something that is not an object (a directory,
        // a symlink): either way the key no longer holds a cached object.
        let gone = match &stat {
            Ok(meta) => meta.kind != EntryKind::File,
            Err(e) => errno(e) == Some(libc::ENOENT),
        };
        match stat {
            _ if gone => {
                if let Some(bytes) = self.tracker.borrow_mut().remove(key.as_str()) {
                    self.ledger.sub_used(bytes, 1);
                }
                tracing::warn!(key = key.as_str(), "cached object vanished from disk");
                Ok(())
            }
            Err(e) => Err(Error::io("statx", self.object_path(key.as_str()), e)),
            Ok(_) => Ok(()),
        }
    }

    /// Maps the failure of an open beneath `objects/` on `key` to a typed
    /// error.
    pub(crate) fn open_error(&self, key: &Key, path: &Path, e: std::io::Error) -> Error {
        match errno(&e) {
            Some(libc::ELOOP) | Some(libc::EXDEV) => {
                Error::rejected(key.as_str(), KeyRejection::SymlinkInPath)
            }
            Some(libc::ENOTDIR) => Error::rejected(key.as_str(), KeyRejection::ParentIsObject),
            Some(libc::EISDIR) => Error::rejected(key.as_str(), KeyRejection::IsDirectory),
            _ => Error::io("open", path, e),
        }
    }
}

/// Bytes per read when [`Cache::check`] reads an object.
pub const CHECK_STEP_BYTES: usize = 1 << 20;

/// Reads a whole file whose size is known to be `bytes` (checked against
/// its recorded checksum or a size bound first: this sizes the buffers),
/// until a read returns 0 bytes or one byte past `bytes` is read (a file
/// that grew since is then longer than `bytes`, which the caller's check
/// sees: no more of it is read). A short read is *not* EOF: Linux caps one
/// read at `MAX_RW_COUNT` (0x7ffff000 bytes), so a larger object comes back
/// in pieces. The common case (the file is `bytes` bytes) is one read of
/// `bytes + 1` bytes, returned without a copy, plus one empty read
/// confirming EOF.
pub(crate) async fn read_to_end<S: CacheDisk>(
    file: &S::Buffered,
    bytes: u64,
    path: &Path,
    shared: &Shared<S>,
) -> Result<Object> {
    let bytes_max = bytes.saturating_add(1);
    // What is left to ask for at `offset`: at most one byte past `bytes`.
    let ask = |offset: u64| usize::try_from(bytes_max - offset).unwrap_or(usize::MAX);
    let first = read_some::<S>(file, 0, ask(0), path, shared).await?;
    let mut owned: Option<Vec<u8>> = None;
    let mut offset = first.len() as u64;
    // Bounded by `bytes_max`: every read but the last returns at least one
    // byte.
    while offset < bytes_max && offset > 0 {
        let next = read_some::<S>(file, offset, ask(offset), path, shared).await?;
        if next.is_empty() {
            break;
        }
        owned
            .get_or_insert_with(|| first.to_vec())
            .extend_from_slice(&next);
        offset += next.len() as u64;
    }
    Ok(Object(match owned {
        None => ObjectBytes::Read(Box::new(first)),
        Some(owned) => ObjectBytes::Owned(owned),
    }))
}

/// One `read_at` (shortened by the `sim` fault hook when it is armed).
async fn read_some<S: CacheDisk>(
    file: &S::Buffered,
    offset: u64,
    len: usize,
    path: &Path,
    shared: &Shared<S>,
) -> Result<<S::Buffered as BufferedFile>::ReadBuf> {
    let len = if shared.inject_short_read() {
        len.div_ceil(2).max(1)
    } else {
        len
    };
    file.read_at(offset, len)
        .await
        .map_err(|e| Error::io("read", path, e))
}
