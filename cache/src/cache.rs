//! The cache object: open (startup recovery), `get`/`put`/`contains`/
//! `invalidate`, reservations, stats, shutdown, and the two background tasks
//! (threshold trims and periodic tracker persistence).
//!
//! # Startup
//!
//! 1. Create the root if needed, take the instance `flock`, check the layout
//!    version.
//! 2. Load the tracker file; a missing, wrong-version or corrupt one is
//!    ignored with a warning (access times then come from the disk).
//! 3. Remove `tracker.tmp` (an interrupted persist) and walk `objects/`:
//!    remove every `*.part` (staging files cannot outlive their process),
//!    remove empty directories (never `objects/` or the root), and rebuild
//!    sizes and counts from what is on disk — the tracker only contributes
//!    access order.
//! 4. If the rebuilt usage is above the trim threshold, ask for a trim.
//!
//! # Dropping without `shutdown`
//!
//! Dropping a [`Cache`] without [`Cache::shutdown`] is treated like a crash:
//! background tasks are cancelled, access times since the last persist are
//! lost, and the next open cleans up. Committed objects are not affected.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::Instant;

use glommio::io::{BufferedFile, ReadResult};

use crate::config::{percent_of, BytesLimit, CacheBuilder, Config};
use crate::error::{glommio_io, Error, KeyRejection, Result};
use crate::format::{self, OBJECTS_DIR, TRACKER_FILE, TRACKER_TMP_FILE};
use crate::fs;
use crate::key::Key;
use crate::locks::{AsyncLock, KeyLocks};
use crate::metrics::{CacheStats, Metrics};
use crate::reservation::{Ledger, Reservation};
use crate::staging::{FinishMode, Staging};
use crate::sys::{self, Uring};
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

/// Bytes per `read_at` when an object turns out larger than tracked.
const READ_STEP_BYTES: usize = 1 << 20;

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
pub(crate) struct Shared {
    // Declared first so it drops first: dropping the ring waits for every op
    // still in flight, and those ops hold the directory fds they use (see
    // `sys`), so no fd below is closed while the kernel may still use it.
    pub(crate) uring: Uring,
    pub(crate) cfg: Config,
    pub(crate) bytes_limit: u64,
    pub(crate) root: PathBuf,
    pub(crate) objects_path: PathBuf,
    pub(crate) root_fd: Rc<OwnedFd>,
    pub(crate) objects_fd: Rc<OwnedFd>,
    pub(crate) ledger: Rc<Ledger>,
    pub(crate) tracker: RefCell<Tracker>,
    pub(crate) locks: Rc<KeyLocks>,
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
    /// Directories created by this process whose parent was not fsync'd yet
    /// (see `sync_new_ancestors`). Entries leave once synced.
    unsynced_dirs: RefCell<HashSet<String>>,
    pub(crate) closed: Cell<bool>,
    #[cfg(feature = "sim")]
    pub(crate) faults: Rc<crate::faults::Faults>,
    #[cfg(feature = "sim")]
    pub(crate) trimmed_log: RefCell<Vec<String>>,
}

/// A per-shard local-disk cache in front of object storage. `!Send`: create
/// and use it on one glommio executor. Share it between that executor's tasks
/// with an `Rc`.
pub struct Cache {
    shared: Rc<Shared>,
    tasks: Vec<glommio::Task<()>>,
    // Declared last: released after the tasks are cancelled.
    _lock_fd: OwnedFd,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("dir", &self.shared.root)
            .finish_non_exhaustive()
    }
}

/// A cached object's bytes (deref to `[u8]`).
pub struct Object(ObjectBytes);

enum ObjectBytes {
    Read(ReadResult),
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

    pub(crate) async fn open(builder: CacheBuilder) -> Result<Cache> {
        builder.validate()?;
        let cfg = builder.cfg;
        let root = cfg.dir.clone();
        let objects_path = root.join(OBJECTS_DIR);
        let prepared = {
            let root = root.clone();
            glommio::executor()
                .spawn_blocking(move || fs::prepare_root_blocking(&root))
                .await?
        };
        let root_fd = Rc::new(prepared.root_fd);
        let bytes_limit = match cfg.bytes_limit {
            BytesLimit::Bytes(bytes) => bytes,
            BytesLimit::PercentOfFilesystem(percent) => {
                let space =
                    sys::fs_space(root_fd.as_fd()).map_err(|e| Error::io("fstatvfs", &root, e))?;
                let bytes = percent_of(space.total_bytes, percent);
                if bytes == 0 {
                    return Err(Error::Config {
                        field: "bytes_limit",
                        reason: format!(
                            "{percent}% of a {}-byte filesystem is 0",
                            space.total_bytes
                        ),
                    });
                }
                bytes
            }
        };
        let uring = Uring::new().map_err(|e| Error::io("io_uring_setup", &root, e))?;
        let ledger = Rc::new(Ledger::new(
            bytes_limit,
            cfg.objects_limit,
            cfg.min_free_bytes,
            Rc::clone(&root_fd),
        ));
        let shared = Rc::new(Shared {
            bytes_limit,
            root: root.clone(),
            objects_path,
            root_fd,
            objects_fd: Rc::new(prepared.objects_fd),
            uring,
            ledger,
            tracker: RefCell::new(Tracker::new()),
            locks: Rc::new(KeyLocks::default()),
            metrics: Metrics::default(),
            trim_lock: Rc::new(AsyncLock::default()),
            trim_last_end: Cell::new(None),
            trim_signal: Rc::new(TrimSignal::default()),
            persist_lock: Rc::new(AsyncLock::default()),
            staging_seq: Cell::new(0),
            staging_instance: sys::random_u64() as u32,
            pending_unlinks: RefCell::new(Vec::new()),
            unsynced_dirs: RefCell::new(HashSet::new()),
            closed: Cell::new(false),
            #[cfg(feature = "sim")]
            faults: builder.faults.unwrap_or_default(),
            #[cfg(feature = "sim")]
            trimmed_log: RefCell::new(Vec::new()),
            cfg,
        });
        shared.recover().await?;
        let tasks = vec![
            glommio::spawn_local(trimmer(
                Rc::downgrade(&shared),
                Rc::clone(&shared.trim_signal),
            )),
            glommio::spawn_local(persister(Rc::downgrade(&shared))),
        ];
        shared.maybe_request_trim();
        Ok(Cache {
            shared,
            tasks,
            _lock_fd: prepared.lock_fd,
        })
    }

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
    pub async fn create_staging(&self, key: &str) -> Result<Staging> {
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
        crate::adopt::adopt(&self.shared, key, file.as_ref()).await
    }

    /// Reads `key`, marking it accessed. `Ok(None)` if it is not cached.
    pub async fn get(&self, key: &str) -> Result<Option<Object>> {
        self.shared.check_open()?;
        let key = Key::new(key)?;
        self.shared.get(&key).await
    }

    /// True if `key` is cached. Does not count as an access.
    pub fn contains(&self, key: &str) -> Result<bool> {
        let key = Key::new(key)?;
        Ok(self.shared.tracker.borrow().contains(key.as_str()))
    }

    /// Removes `key` (durably: the directory is fsync'd, so a crash cannot
    /// bring a stale object back). Returns whether it was there. Only keys
    /// the cache tracks are unlinked; the directory holding `key` (or its
    /// nearest existing ancestor) is fsync'd in every case, so an earlier
    /// removal of `key` that was not yet durable (a trim's) is durable when
    /// this returns.
    pub async fn invalidate(&self, key: &str) -> Result<bool> {
        self.shared.check_open()?;
        let key = Key::new(key)?;
        let _guard = self.shared.locks.lock(key.as_str()).await;
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
        // Let a trim in flight (from another task) finish first.
        let trim_guard = self.shared.trim_lock.lock().await;
        self.shared.retry_pending_unlinks().await;
        let persisted = self.shared.persist_tracker().await;
        self.shared.closed.set(true);
        drop(trim_guard);
        persisted
    }
}

impl Drop for Cache {
    /// A crash at this instant: background tasks are cancelled where they
    /// stand, metadata calls already handed to the kernel are waited for (so
    /// none lands after the next instance opened the directory), and the
    /// directory lock is released. Operations other tasks still have in
    /// flight fail with [`Error::Closed`] at their next step.
    fn drop(&mut self) {
        self.shared.closed.set(true);
        self.tasks.clear();
        self.shared.uring.wait_for_in_flight();
    }
}

impl Shared {
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
    pub(crate) async fn fsync_dir(&self, dir: &Rc<OwnedFd>) -> std::io::Result<()> {
        self.metrics.dir_syncs.inc();
        if self.inject_dir_sync_failure() {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        self.uring.fsync(dir).await
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

    /// Opens the directory holding `rel` (relative to `objects/`) without
    /// following any symlink and without leaving `objects/` (`openat2` with
    /// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), and returns it with `rel`'s
    /// last segment. Every namespace op on a key runs on that segment
    /// relative to this fd, so no intermediate component is ever resolved
    /// again after the check. `readable` opens it `O_RDONLY` (so it can be
    /// fsync'd), otherwise `O_PATH`.
    pub(crate) async fn parent_dir<'a>(
        &self,
        rel: &'a str,
        readable: bool,
    ) -> std::io::Result<(Rc<OwnedFd>, &'a str)> {
        match rel.rsplit_once('/') {
            None => Ok((Rc::clone(&self.objects_fd), rel)),
            Some((parent, leaf)) => {
                let mode = if readable {
                    libc::O_RDONLY
                } else {
                    libc::O_PATH
                };
                let fd = self
                    .uring
                    .open_beneath(&self.objects_fd, parent, mode | libc::O_DIRECTORY, 0)
                    .await?;
                Ok((Rc::new(fd), leaf))
            }
        }
    }

    /// `unlinkat` of `rel` (relative to `objects/`) through [`Self::parent_dir`].
    pub(crate) async fn unlink_rel(&self, rel: &str, is_dir: bool) -> std::io::Result<()> {
        let (dir, leaf) = self.parent_dir(rel, false).await?;
        self.uring.unlink(&dir, leaf, is_dir).await
    }

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
        let Some(bytes_hint) = self.tracker.borrow().bytes_of(key.as_str()) else {
            self.metrics.misses.inc();
            return Ok(None);
        };
        let path = self.object_path(key.as_str());
        // O_NONBLOCK: a FIFO (or device) planted at a key must not block the
        // open in the kernel (and with it the ring's teardown); it is then
        // refused as not a regular file.
        let fd = match self
            .uring
            .open_beneath(
                &self.objects_fd,
                key.as_str(),
                libc::O_RDONLY | libc::O_NONBLOCK,
                0,
            )
            .await
        {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // Removed behind our back (or by a trim that raced us).
                self.forget_if_missing(key).await?;
                self.metrics.misses.inc();
                return Ok(None);
            }
            Err(e) => return Err(self.open_error(key, &path, e)),
        };
        match sys::is_regular_file(fd.as_fd()) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::io(
                    "open",
                    &path,
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "not a regular file"),
                ))
            }
            Err(e) => return Err(Error::io("fstat", &path, e)),
        }
        sys::clear_nonblock(fd.as_fd()).map_err(|e| Error::io("fcntl", &path, e))?;
        let file = sys::buffered_file_from_fd(fd);
        let object = read_to_end(&file, bytes_hint, &path, self).await?;
        drop(file);
        self.tracker.borrow_mut().touch(key.as_str());
        self.metrics.hits.inc();
        Ok(Some(object))
    }

    /// After an ENOENT on a tracked key: drop it from the tracker if it is
    /// really gone (under the key lock, so a concurrent put is not undone).
    async fn forget_if_missing(&self, key: &Key) -> Result<()> {
        let _guard = self.locks.lock(key.as_str()).await;
        if !self.tracker.borrow().contains(key.as_str()) {
            return Ok(());
        }
        let stat = match self.parent_dir(key.as_str(), false).await {
            Ok((dir, leaf)) => self.uring.stat_nofollow(&dir, leaf).await,
            Err(e) => Err(e),
        };
        // Gone, or replaced by something that is not an object (a directory,
        // a symlink): either way the key no longer holds a cached object.
        let gone = match &stat {
            Ok(info) => info.is_dir || info.is_symlink,
            Err(e) => e.raw_os_error() == Some(libc::ENOENT),
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

    /// Maps an `openat2` failure on `key` to a typed error.
    pub(crate) fn open_error(&self, key: &Key, path: &Path, e: std::io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::EXDEV) => {
                Error::rejected(key.as_str(), KeyRejection::SymlinkInPath)
            }
            Some(libc::ENOTDIR) => Error::rejected(key.as_str(), KeyRejection::ParentIsObject),
            Some(libc::EISDIR) => Error::rejected(key.as_str(), KeyRejection::IsDirectory),
            _ => Error::io("openat2", path, e),
        }
    }

    /// Unlinks `key` and drops it from the accounting, if the cache tracks
    /// it (an untracked name is never unlinked: it is not a cache object).
    /// Caller holds the key lock. Returns whether anything was removed.
    pub(crate) async fn remove_object(&self, key: &str, why: &'static str) -> Result<bool> {
        if !self.tracker.borrow().contains(key) {
            return Ok(false);
        }
        let tracked = self.tracker.borrow_mut().remove(key);
        if let Some(bytes) = tracked {
            self.ledger.sub_used(bytes, 1);
        }
        match self.unlink_rel(key, false).await {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(tracked.is_some()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EXDEV)) => {
                Err(Error::rejected(key, KeyRejection::SymlinkInPath))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                Err(Error::rejected(key, KeyRejection::ParentIsObject))
            }
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
                Err(Error::rejected(key, KeyRejection::IsDirectory))
            }
            Err(e) => {
                tracing::warn!(key, why, error = %e, "unlink failed; file left untracked");
                Err(Error::io("unlinkat", self.object_path(key), e))
            }
        }
    }

    async fn sync_objects_dir(&self) -> Result<()> {
        self.fsync_dir(&self.objects_fd)
            .await
            .map_err(|e| Error::io("fsync", &self.objects_path, e))
    }

    async fn sync_dir_rel(&self, rel: &str) -> Result<()> {
        let path = self.object_path(rel);
        let fd = self
            .uring
            .open_beneath(&self.objects_fd, rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .await
            .map_err(|e| Error::io("openat2", &path, e))?;
        self.fsync_dir(&Rc::new(fd))
            .await
            .map_err(|e| Error::io("fsync", &path, e))
    }

    /// fsyncs `dir` (relative to `objects/`; `None` is `objects/` itself),
    /// or, if it is gone (or is not a real directory inside the cache), its
    /// nearest existing ancestor: whatever removed it is then durable.
    pub(crate) async fn sync_nearest_dir(&self, dir: Option<&str>) -> Result<()> {
        let mut dir = dir;
        while let Some(rel) = dir {
            match self.sync_dir_rel(rel).await {
                Err(Error::Io { source, .. })
                    if matches!(
                        source.raw_os_error(),
                        Some(libc::ENOENT)
                            | Some(libc::ENOTDIR)
                            | Some(libc::ELOOP)
                            | Some(libc::EXDEV)
                    ) =>
                {
                    dir = rel.rsplit_once('/').map(|(parent, _)| parent);
                }
                other => return other,
            }
        }
        self.sync_objects_dir().await
    }

    /// Creates the directories above `key`, one level at a time, checking
    /// that each existing level is a real directory (never a symlink) before
    /// creating anything inside it. New directories are made durable by an
    /// fsync of their parent. A level removed under us (a trim sweeping empty
    /// directories) restarts the chain, at most
    /// [`STAGING_CREATE_ATTEMPTS_MAX`] times.
    pub(crate) async fn ensure_parent_dirs(&self, key: &Key) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_parent_dirs(key).await {
                Err(Error::Io { source, .. })
                    if source.raw_os_error() == Some(libc::ENOENT)
                        && attempt < STAGING_CREATE_ATTEMPTS_MAX => {}
                other => return other,
            }
        }
    }

    async fn try_parent_dirs(&self, key: &Key) -> Result<()> {
        // Walk down holding each level's fd: every level is opened relative
        // to the one above with RESOLVE_NO_SYMLINKS, so a symlink swapped in
        // after a check can never be followed.
        let mut current = Rc::clone(&self.objects_fd);
        for level in key.ancestors() {
            let path = self.object_path(level);
            let segment = level.rsplit_once('/').map_or(level, |(_, s)| s);
            let mut made = false;
            let opened = loop {
                let open = self
                    .uring
                    .open_beneath(&current, segment, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    .await;
                match open {
                    Ok(fd) => break fd,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !made => {
                        made = true;
                        match self.uring.mkdir(&current, segment, 0o755).await {
                            // EEXIST: created concurrently, by a task that may
                            // not have fsync'd its parent yet; ours does.
                            Ok(()) => {}
                            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                            // ENOENT: this level's parent was just removed;
                            // the caller retries.
                            Err(e) => return Err(Error::io("mkdirat", path, e)),
                        }
                        self.unsynced_dirs.borrow_mut().insert(level.to_owned());
                    }
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EXDEV)) => {
                        return Err(Error::rejected(key.as_str(), KeyRejection::SymlinkInPath))
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                        return Err(Error::rejected(key.as_str(), KeyRejection::ParentIsObject))
                    }
                    Err(e) => return Err(Error::io("openat2", path, e)),
                }
            };
            current = Rc::new(opened);
        }
        self.sync_new_ancestors(key).await
    }

    /// fsyncs the parent of every directory above `key` that this process
    /// created (or found just created) and has not yet made durable, so a
    /// commit under it never returns before the directory chain survives a
    /// crash, whichever task created the directory.
    pub(crate) async fn sync_new_ancestors(&self, key: &Key) -> Result<()> {
        for level in key.ancestors() {
            if !self.unsynced_dirs.borrow().contains(level) {
                continue;
            }
            match level.rsplit_once('/') {
                None => self.sync_objects_dir().await?,
                Some((parent, _)) => self.sync_dir_rel(parent).await?,
            }
            self.unsynced_dirs.borrow_mut().remove(level);
        }
        Ok(())
    }

    /// Removes now-empty directories above `key`, deepest first, stopping at
    /// the first that is not empty. Never removes `objects/` or the root.
    pub(crate) async fn remove_empty_parents(&self, key: &str) {
        let mut rel = key;
        while let Some((parent, _)) = rel.rsplit_once('/') {
            match self.unlink_rel(parent, true).await {
                Ok(()) => self.metrics.empty_dirs_removed.inc(),
                Err(_) => return,
            }
            rel = parent;
        }
    }

    /// Remembers a dead staging name for a later unlink.
    pub(crate) fn defer_unlink(&self, rel: String) {
        let mut pending = self.pending_unlinks.borrow_mut();
        if pending.len() < PENDING_UNLINKS_MAX {
            pending.push(rel);
        } else {
            tracing::warn!(
                rel,
                "too many dead staging names; leaving it for startup cleanup"
            );
        }
    }

    /// Unlinks dead staging names remembered by `defer_unlink`.
    pub(crate) async fn retry_pending_unlinks(&self) {
        let pending = std::mem::take(&mut *self.pending_unlinks.borrow_mut());
        for rel in pending {
            match self.unlink_rel(&rel, false).await {
                Ok(()) => self.metrics.orphans_removed.inc(),
                // Gone, or its directory is no longer a real one inside the
                // cache: nothing of ours to remove.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT)
                            | Some(libc::ENOTDIR)
                            | Some(libc::ELOOP)
                            | Some(libc::EXDEV)
                    ) => {}
                Err(error) => {
                    tracing::warn!(rel, %error, "retrying a staging unlink failed");
                    self.defer_unlink(rel);
                }
            }
        }
    }

    /// Persists the tracker: encode, write `tracker.tmp`, fdatasync, rename
    /// over `tracker`, fsync the root.
    pub(crate) async fn persist_tracker(&self) -> Result<()> {
        let _guard = self.persist_lock.lock().await;
        let encoded = {
            let mut tracker = self.tracker.borrow_mut();
            let count = tracker.len() as usize;
            let encoded = format::encode_tracker(
                ExactLen::new(tracker.iter_oldest_first(), count),
                self.cfg.tracker_chunk_entries,
            );
            tracker.mark_clean();
            encoded
        };
        let result = self.write_tracker(&encoded).await;
        match &result {
            Ok(()) => self.metrics.tracker_persists.inc(),
            // Try again at the next period.
            Err(_) => self.tracker.borrow_mut().mark_dirty(),
        }
        result
    }

    async fn write_tracker(&self, encoded: &[u8]) -> Result<()> {
        let tmp_path = self.root.join(TRACKER_TMP_FILE);
        let fd = self
            .uring
            .open_beneath(
                &self.root_fd,
                TRACKER_TMP_FILE,
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                0o644,
            )
            .await
            .map_err(|e| Error::io("openat2", &tmp_path, e))?;
        let file = sys::buffered_file_from_fd(fd);
        let mut offset = 0usize;
        while offset < encoded.len() {
            let end = (offset + TRACKER_WRITE_BYTES).min(encoded.len());
            let written = file
                .write_at(encoded[offset..end].to_vec(), offset as u64)
                .await
                .map_err(|e| Error::io("write", &tmp_path, glommio_io(e)))?;
            if written == 0 {
                return Err(Error::io(
                    "write",
                    &tmp_path,
                    std::io::Error::new(std::io::ErrorKind::WriteZero, "wrote 0 bytes"),
                ));
            }
            offset += written;
        }
        file.fdatasync()
            .await
            .map_err(|e| Error::io("fdatasync", &tmp_path, glommio_io(e)))?;
        drop(file);
        self.uring
            .rename(&self.root_fd, TRACKER_TMP_FILE, TRACKER_FILE)
            .await
            .map_err(|e| Error::io("renameat", self.root.join(TRACKER_FILE), e))?;
        self.uring
            .fsync(&self.root_fd)
            .await
            .map_err(|e| Error::io("fsync", &self.root, e))
    }

    /// Startup: load the tracker, clean up, rebuild accounting from disk.
    async fn recover(self: &Rc<Self>) -> Result<()> {
        let loaded = self.load_tracker().await;
        match self
            .uring
            .unlink(&self.root_fd, TRACKER_TMP_FILE, false)
            .await
        {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(Error::io("unlinkat", self.root.join(TRACKER_TMP_FILE), e)),
        }
        let walk = self.walk().await?;
        for rel in &walk.staging {
            match self.unlink_rel(rel, false).await {
                Ok(()) => self.metrics.orphans_removed.inc(),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(Error::io("unlinkat", self.object_path(rel), e)),
            }
        }
        self.remove_empty_dirs(&walk.dirs_deepest_first).await;
        if !walk.foreign.is_empty() {
            tracing::warn!(
                count = walk.foreign.len(),
                first = walk.foreign.first().map(String::as_str),
                "entries in the cache directory that are not cache objects were left alone"
            );
        }
        // Access order: the tracker's where it knows the key, the disk's
        // otherwise; ties keep the tracker file's order.
        let order: HashMap<&str, (u64, usize)> = loaded
            .iter()
            .enumerate()
            .map(|(i, e)| (e.key.as_str(), (e.atime_ms, i)))
            .collect();
        let mut files: Vec<(u64, usize, &fs::WalkFile)> = walk
            .files
            .iter()
            .map(|f| match order.get(f.key.as_str()) {
                Some(&(atime, index)) => (atime, index, f),
                None => (f.atime_ms, usize::MAX, f),
            })
            .collect();
        files.sort_by_key(|&(atime, index, _)| (atime, index));
        let mut total = 0u64;
        {
            let mut tracker = self.tracker.borrow_mut();
            for (atime, _, file) in &files {
                tracker.insert_at(&file.key, file.bytes, *atime);
                total = total.saturating_add(file.bytes);
            }
        }
        self.ledger.add_used(total, files.len() as u64);
        tracing::info!(
            objects = files.len(),
            bytes = total,
            orphans = walk.staging.len(),
            "cache recovered"
        );
        Ok(())
    }

    /// Removes the given directories if empty (deepest first).
    pub(crate) async fn remove_empty_dirs(&self, dirs_deepest_first: &[String]) {
        for rel in dirs_deepest_first {
            // ENOTEMPTY (or already gone): leave it.
            if self.unlink_rel(rel, true).await.is_ok() {
                self.metrics.empty_dirs_removed.inc();
            }
        }
    }

    /// Walks `objects/` on glommio's blocking pool.
    pub(crate) async fn walk(&self) -> Result<fs::Walk> {
        let objects = self.objects_path.clone();
        glommio::executor()
            .spawn_blocking(move || fs::walk_blocking(&objects))
            .await
    }

    async fn load_tracker(&self) -> Vec<format::LoadedEntry> {
        let path = self.root.join(TRACKER_FILE);
        match self.read_tracker_file(&path).await {
            Ok(None) => Vec::new(),
            Ok(Some(bytes)) => match format::decode_tracker(&bytes) {
                Ok(entries) => entries,
                Err(reason) => {
                    tracing::warn!(path = %path.display(), %reason,
                        "ignoring the tracker file; access times rebuilt from a directory walk");
                    self.metrics.tracker_load_failures.inc();
                    Vec::new()
                }
            },
            Err(error) => {
                tracing::warn!(path = %path.display(), %error,
                    "cannot read the tracker file; access times rebuilt from a directory walk");
                self.metrics.tracker_load_failures.inc();
                Vec::new()
            }
        }
    }

    async fn read_tracker_file(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
        let fd = match self
            .uring
            .open_beneath(&self.root_fd, TRACKER_FILE, libc::O_RDONLY, 0)
            .await
        {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let fd = Rc::new(fd);
        let size = self.uring.stat_fd(&fd).await?.bytes;
        let fd = Rc::try_unwrap(fd)
            .map_err(|_| std::io::Error::other("tracker fd still held by the metadata ring"))?;
        let file = sys::buffered_file_from_fd(fd);
        if size > TRACKER_FILE_BYTES_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is {size} bytes, above TRACKER_FILE_BYTES_MAX",
                    path.display()
                ),
            ));
        }
        let object = read_to_end(&file, size, path, self)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Some(object.to_vec()))
    }
}

/// Reads a whole file whose size is probably `hint`, until a read returns
/// 0 bytes. A short read is *not* EOF: Linux caps one read at `MAX_RW_COUNT`
/// (0x7ffff000 bytes), so a larger object comes back in pieces. The common
/// case (the file is `hint` bytes) is one read of `hint + 1` bytes, returned
/// without a copy, plus one empty read confirming EOF.
pub(crate) async fn read_to_end(
    file: &BufferedFile,
    hint: u64,
    path: &Path,
    shared: &Shared,
) -> Result<Object> {
    let ask = usize::try_from(hint)
        .unwrap_or(usize::MAX - 1)
        .saturating_add(1);
    let first = read_some(file, 0, ask, path, shared).await?;
    let mut bytes: Option<Vec<u8>> = None;
    let mut offset = first.len() as u64;
    if first.is_empty() {
        return Ok(Object(ObjectBytes::Read(first)));
    }
    // Bounded by the file's size: every iteration but the last reads at
    // least one byte.
    loop {
        let step = if offset < hint.saturating_add(1) {
            usize::try_from(hint.saturating_add(1) - offset).unwrap_or(READ_STEP_BYTES)
        } else {
            READ_STEP_BYTES
        };
        let next = read_some(file, offset, step, path, shared).await?;
        if next.is_empty() {
            return Ok(Object(match bytes {
                None => ObjectBytes::Read(first),
                Some(bytes) => ObjectBytes::Owned(bytes),
            }));
        }
        let owned = bytes.get_or_insert_with(|| first.to_vec());
        owned.extend_from_slice(&next);
        offset += next.len() as u64;
    }
}

/// One `read_at` (shortened by the `sim` fault hook when it is armed).
async fn read_some(
    file: &BufferedFile,
    offset: u64,
    len: usize,
    path: &Path,
    shared: &Shared,
) -> Result<ReadResult> {
    let len = if shared.inject_short_read() {
        len.div_ceil(2).max(1)
    } else {
        len
    };
    file.read_at(offset, len)
        .await
        .map_err(|e| Error::io("read", path, glommio_io(e)))
}

/// Asks the background trimmer for a trim.
pub(crate) fn request_trim(signal: &TrimSignal) {
    signal.requested.set(true);
    signal.wakeup.notify(usize::MAX);
}

/// Background trims: waits for a request (threshold passed, a reservation
/// waiting, ENOSPC while throttled), then runs a fast trim, after the
/// throttle interval if one just ran.
async fn trimmer(shared: Weak<Shared>, signal: Rc<TrimSignal>) {
    loop {
        event_listener::listener!(signal.wakeup => listen);
        if !signal.requested.get() {
            listen.await;
            continue;
        }
        signal.requested.set(false);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closed.get() {
            return;
        }
        match trim::run(&shared, TrimKind::Fast, Trigger::Background, true).await {
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "background trim failed"),
        }
    }
}

/// Periodic persistence of the tracker (when it changed) and retries of
/// dead staging unlinks.
async fn persister(shared: Weak<Shared>) {
    let Some(interval) = shared.upgrade().map(|s| s.cfg.tracker_persist_interval) else {
        return;
    };
    loop {
        glommio::timer::sleep(interval).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closed.get() {
            return;
        }
        shared.retry_pending_unlinks().await;
        if shared.tracker.borrow().is_dirty() {
            if let Err(error) = shared.persist_tracker().await {
                tracing::warn!(%error, "persisting the access tracker failed");
            }
        }
    }
}

/// An iterator with a known length (the tracker's list walk).
struct ExactLen<I> {
    inner: I,
    remaining: usize,
}

impl<I> ExactLen<I> {
    fn new(inner: I, len: usize) -> ExactLen<I> {
        ExactLen {
            inner,
            remaining: len,
        }
    }
}

impl<I: Iterator> Iterator for ExactLen<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let item = self.inner.next()?;
        self.remaining = self.remaining.saturating_sub(1);
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<I: Iterator> ExactSizeIterator for ExactLen<I> {}

impl CacheBuilder {
    /// Validates the settings, prepares the directory (see the module docs
    /// for the startup steps) and opens the cache. Must run on a glommio
    /// executor.
    pub async fn open(self) -> Result<Cache> {
        Cache::open(self).await
    }
}
