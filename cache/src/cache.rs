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
use std::collections::HashMap;
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
use crate::metrics::{CacheStats, Metrics};
use crate::notify::{AsyncLock, KeyLocks, Notify};
use crate::reservation::{Ledger, Reservation};
use crate::staging::{FinishMode, Staging};
use crate::sys::{self, Uring};
use crate::tracker::Tracker;
use crate::trim::{self, Trigger, TrimKind, TrimReport};

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
    pub(crate) wakeup: Notify,
}

/// State shared by the cache, its staging files, reservations and tasks.
pub(crate) struct Shared {
    pub(crate) cfg: Config,
    pub(crate) bytes_limit: u64,
    pub(crate) root: PathBuf,
    pub(crate) objects_path: PathBuf,
    pub(crate) root_fd: Rc<OwnedFd>,
    pub(crate) objects_fd: OwnedFd,
    pub(crate) uring: Uring,
    pub(crate) ledger: Rc<Ledger>,
    pub(crate) tracker: RefCell<Tracker>,
    pub(crate) locks: Rc<KeyLocks>,
    pub(crate) metrics: Metrics,
    pub(crate) trim_lock: Rc<AsyncLock>,
    pub(crate) trim_last_end: Cell<Option<Instant>>,
    pub(crate) trim_signal: Rc<TrimSignal>,
    pub(crate) persist_lock: Rc<AsyncLock>,
    staging_seq: Cell<u64>,
    pending_unlinks: RefCell<Vec<String>>,
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
            objects_fd: prepared.objects_fd,
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
            pending_unlinks: RefCell::new(Vec::new()),
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

    /// Creates a staging file for `key` (`<key>.<seq>.part`, O_EXCL) holding
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
    /// bring a stale object back). Returns whether it was there.
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
            self.shared.sync_parent_dir(&key).await?;
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

    pub(crate) fn next_staging_seq(&self) -> u64 {
        let seq = self.staging_seq.get();
        self.staging_seq.set(seq.wrapping_add(1));
        seq
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
            let tracker = self.tracker.borrow();
            assert_eq!(
                tracker.bytes(),
                s.used_bytes,
                "tracker and ledger disagree on bytes"
            );
            assert_eq!(
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
        let fd = match self
            .uring
            .open_beneath(self.objects_fd.as_fd(), key.as_str(), libc::O_RDONLY, 0)
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
        let file = sys::buffered_file_from_fd(fd);
        let object = read_to_end(&file, bytes_hint, &path).await?;
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
        match self
            .uring
            .stat_nofollow(self.objects_fd.as_fd(), key.as_str())
            .await
        {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
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

    /// Unlinks `key` and drops it from the accounting. Caller holds the key
    /// lock. Returns whether anything was removed.
    pub(crate) async fn remove_object(&self, key: &str, why: &'static str) -> Result<bool> {
        let tracked = self.tracker.borrow_mut().remove(key);
        if let Some(bytes) = tracked {
            self.ledger.sub_used(bytes, 1);
        }
        match self.uring.unlink(self.objects_fd.as_fd(), key, false).await {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(tracked.is_some()),
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
                Err(Error::rejected(key, KeyRejection::IsDirectory))
            }
            Err(e) => {
                tracing::warn!(key, why, error = %e, "unlink failed; file left untracked");
                Err(Error::io("unlinkat", self.object_path(key), e))
            }
        }
    }

    /// fsyncs the directory holding `key`, making a link, rename or unlink
    /// there durable.
    pub(crate) async fn sync_parent_dir(&self, key: &Key) -> Result<()> {
        match key.parent() {
            None => self
                .uring
                .fsync(self.objects_fd.as_fd())
                .await
                .map_err(|e| Error::io("fsync", &self.objects_path, e)),
            Some(parent) => self.sync_dir_rel(parent).await,
        }
    }

    async fn sync_dir_rel(&self, rel: &str) -> Result<()> {
        let path = self.object_path(rel);
        let fd = self
            .uring
            .open_beneath(
                self.objects_fd.as_fd(),
                rel,
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )
            .await
            .map_err(|e| Error::io("openat2", &path, e))?;
        self.uring
            .fsync(fd.as_fd())
            .await
            .map_err(|e| Error::io("fsync", &path, e))
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
        let mut parent_of_level: Option<&str> = None;
        for level in key.ancestors() {
            let path = self.object_path(level);
            let stat = self
                .uring
                .stat_nofollow(self.objects_fd.as_fd(), level)
                .await;
            match stat {
                Ok(info) if info.is_dir => {}
                Ok(info) if info.is_symlink => {
                    return Err(Error::rejected(key.as_str(), KeyRejection::SymlinkInPath))
                }
                Ok(_) => return Err(Error::rejected(key.as_str(), KeyRejection::ParentIsObject)),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    match self
                        .uring
                        .mkdir(self.objects_fd.as_fd(), level, 0o755)
                        .await
                    {
                        Ok(()) => match parent_of_level {
                            None => self
                                .uring
                                .fsync(self.objects_fd.as_fd())
                                .await
                                .map_err(|e| Error::io("fsync", &self.objects_path, e))?,
                            Some(parent) => self.sync_dir_rel(parent).await?,
                        },
                        // Created concurrently: fine.
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        // ENOENT: a parent was just removed; the caller retries.
                        Err(e) => return Err(Error::io("mkdirat", path, e)),
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                    return Err(Error::rejected(key.as_str(), KeyRejection::ParentIsObject))
                }
                Err(e) => return Err(Error::io("statx", path, e)),
            }
            parent_of_level = Some(level);
        }
        Ok(())
    }

    /// Removes now-empty directories above `key`, deepest first, stopping at
    /// the first that is not empty. Never removes `objects/` or the root.
    pub(crate) async fn remove_empty_parents(&self, key: &str) {
        let mut rel = key;
        while let Some((parent, _)) = rel.rsplit_once('/') {
            match self
                .uring
                .unlink(self.objects_fd.as_fd(), parent, true)
                .await
            {
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
            match self
                .uring
                .unlink(self.objects_fd.as_fd(), &rel, false)
                .await
            {
                Ok(()) => self.metrics.orphans_removed.inc(),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
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
                self.root_fd.as_fd(),
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
            .rename(self.root_fd.as_fd(), TRACKER_TMP_FILE, TRACKER_FILE)
            .await
            .map_err(|e| Error::io("renameat", self.root.join(TRACKER_FILE), e))?;
        self.uring
            .fsync(self.root_fd.as_fd())
            .await
            .map_err(|e| Error::io("fsync", &self.root, e))
    }

    /// Startup: load the tracker, clean up, rebuild accounting from disk.
    async fn recover(self: &Rc<Self>) -> Result<()> {
        let loaded = self.load_tracker().await;
        match self
            .uring
            .unlink(self.root_fd.as_fd(), TRACKER_TMP_FILE, false)
            .await
        {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(Error::io("unlinkat", self.root.join(TRACKER_TMP_FILE), e)),
        }
        let walk = self.walk().await?;
        for rel in &walk.staging {
            match self.uring.unlink(self.objects_fd.as_fd(), rel, false).await {
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
            if self
                .uring
                .unlink(self.objects_fd.as_fd(), rel, true)
                .await
                .is_ok()
            {
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
            .open_beneath(self.root_fd.as_fd(), TRACKER_FILE, libc::O_RDONLY, 0)
            .await
        {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = self.uring.stat_fd(fd.as_fd()).await?.bytes;
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
        let object = read_to_end(&file, size, path)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Some(object.to_vec()))
    }
}

/// Reads a whole file whose size is probably `hint`: one `read_at` of
/// `hint + 1` bytes returns short exactly when the file has at most `hint`
/// bytes (regular files only return short reads at EOF), so the common case
/// is a single read with no copy.
pub(crate) async fn read_to_end(file: &BufferedFile, hint: u64, path: &Path) -> Result<Object> {
    let ask = usize::try_from(hint)
        .unwrap_or(usize::MAX - 1)
        .saturating_add(1);
    let first = file
        .read_at(0, ask)
        .await
        .map_err(|e| Error::io("read", path, glommio_io(e)))?;
    if first.len() < ask {
        return Ok(Object(ObjectBytes::Read(first)));
    }
    // Larger than tracked (replaced concurrently, or changed outside the
    // cache): read on to EOF.
    let mut bytes = first.to_vec();
    loop {
        let next = file
            .read_at(bytes.len() as u64, READ_STEP_BYTES)
            .await
            .map_err(|e| Error::io("read", path, glommio_io(e)))?;
        if next.is_empty() {
            return Ok(Object(ObjectBytes::Owned(bytes)));
        }
        bytes.extend_from_slice(&next);
    }
}

/// Asks the background trimmer for a trim.
pub(crate) fn request_trim(signal: &TrimSignal) {
    signal.requested.set(true);
    signal.wakeup.notify_all();
}

/// Background trims: waits for a request (threshold passed, a reservation
/// waiting, ENOSPC while throttled), then runs a fast trim, after the
/// throttle interval if one just ran.
async fn trimmer(shared: Weak<Shared>, signal: Rc<TrimSignal>) {
    loop {
        let listen = signal.wakeup.listen();
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
