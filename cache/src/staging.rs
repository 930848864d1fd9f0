//! Staging files: how an object gets into the cache.
//!
//! A staging file is `<key>.<instance>-<seq>.part` (`instance` random per
//! cache instance, so a stale handle from an earlier instance never names a
//! later one's file), created exclusively (`O_CREAT | O_EXCL`, resolved
//! beneath the root without following symlinks by the cache's disk) in the
//! *same directory* as its key, so one directory fsync makes both the link
//! and the unlink of a commit durable, and a trim's empty-directory removal
//! can never pull the directory out from under a live staging file.
//!
//! # Data path: buffered, not O_DIRECT
//!
//! Objects have arbitrary sizes, so O_DIRECT would need a padded tail write
//! and a truncate per object, and every `get` would bypass the page cache —
//! the wrong trade for a read cache whose hot objects should be served from
//! memory. (O_DIRECT on an empty file also trips a glommio 0.9 quirk that
//! disables polled reads for the device.) So the data goes through the
//! disk's buffered files (glommio's `BufferedFile` on the real disk), and
//! durability comes from an explicit `fsync` (data and the checksum
//! attribute) before the commit links the file into place.
//!
//! # Commit
//!
//! 1. flush, record the object's checksum (size and CRC-32 of every byte
//!    appended) in the file's `user.ringstore.object` extended attribute,
//!    `fsync` the staging file (its data and that attribute are durable);
//! 2. `linkat(staging, key)` — EEXIST is [`Error::Conflict`]: a commit never
//!    overwrites (`put` uses `renameat` instead, which replaces atomically);
//! 3. account the object (reservation -> used) and track it;
//! 4. `unlinkat(staging)` — if this fails the object is still committed and
//!    counted once (the two names share one inode); the dead name is retried
//!    later and removed at the next startup in any case;
//! 5. `fsync` the directory (covers 2 and 4), and the parent of any directory
//!    above the key this process created and has not made durable yet.
//!
//! Steps 2 to 5 go through the cache's disk, which resolves every name
//! beneath the root without following a symlink (`RootedDisk`), so no
//! symlink is followed out of the cache, and they run in a detached task that owns the
//! staging file and the key lock: a caller that drops the commit future
//! while the link is in flight cannot leave the accounting behind the disk.
//! Once the cache is closed (dropped), `close` and abandoned commits leave
//! the staging name alone: the next instance's startup removes it.
//!
//! A crash anywhere leaves either no object or the fully synced one at the
//! key — never an empty or partial file — plus possibly a `.part` name that
//! startup removes.
//!
//! # Reservations
//!
//! A staging file starts with a reservation of one object and one chunk
//! (`chunk_bytes`); appends reserve further whole chunks before writing past
//! what is held. Closing or dropping it releases everything; committing turns
//! the written bytes into usage and releases the rest.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use ringstore_journal::storage::{errno, parent_dir, BufferedFile};

use crate::cache::{Shared, STAGING_CREATE_ATTEMPTS_MAX};
use crate::disk::{CacheDisk, RootedDisk};
use crate::error::{Error, KeyRejection, Result};
use crate::fence::Fence;
use crate::format::encode_object_checksum;
use crate::key::Key;
use crate::remote::FileDigest;
use crate::reservation::Reservation;
use crate::trim::{self, Trigger};

/// Appends are gathered up to this many bytes before a write.
pub const WRITE_BUFFER_BYTES: usize = 256 << 10;

/// How a staging file becomes an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FinishMode {
    /// `linkat`: fails with `Conflict` if the key exists.
    Link,
    /// `renameat`: replaces the key atomically (`put`).
    Replace,
}

/// A growing object not yet in the cache. See the module docs.
pub struct Staging<S: CacheDisk = RootedDisk> {
    shared: Rc<Shared<S>>,
    key: Key,
    /// Relative to `objects/`.
    rel: String,
    file: Option<S::Buffered>,
    reservation: Reservation,
    /// Bytes already written to the file.
    written: u64,
    buf: Vec<u8>,
    /// CRC-32 of every byte appended, in order: the object's checksum.
    crc32: crc32fast::Hasher,
    poisoned: bool,
    finished: bool,
    /// Set by [`Staging::fence`]: the commit places nothing once the key
    /// was invalidated since it was taken.
    fence: Option<Fence>,
}

impl<S: CacheDisk> std::fmt::Debug for Staging<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging")
            .field("key", &self.key)
            .field("rel", &self.rel)
            .field("len", &self.len())
            .field("reserved_bytes", &self.reservation.bytes())
            .finish()
    }
}

impl<S: CacheDisk> Staging<S> {
    pub(crate) async fn create(
        shared: Rc<Shared<S>>,
        key: Key,
        reservation: Reservation,
    ) -> Result<Staging<S>> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let rel = shared.next_staging_name(&key);
            let opened = shared.disk.create_buffered(&shared.object_path(&rel)).await;
            let error = match opened {
                Ok(file) => {
                    return Ok(Staging {
                        file: Some(file),
                        shared,
                        key,
                        rel,
                        reservation,
                        written: 0,
                        buf: Vec::new(),
                        crc32: crc32fast::Hasher::new(),
                        poisoned: false,
                        finished: false,
                        fence: None,
                    })
                }
                Err(error) => error,
            };
            let path = shared.object_path(&rel);
            if attempts >= STAGING_CREATE_ATTEMPTS_MAX {
                return Err(Error::io("openat2", path, error));
            }
            match errno(&error) {
                // A leftover with this sequence number: take the next one.
                Some(libc::EEXIST) => {}
                // Parent missing (new key, or removed by a concurrent trim's
                // empty-directory sweep): create it and retry.
                Some(libc::ENOENT) if key.parent().is_some() => {
                    shared.ensure_parent_dirs(&key).await?;
                }
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                    return Err(nospace(&shared, "openat2", path, error, 0).await)
                }
                _ => return Err(shared.open_error(&key, &path, error)),
            }
        }
    }

    /// The key this file will be committed to.
    pub fn key(&self) -> &str {
        self.key.as_str()
    }

    /// The staging file's path.
    pub fn path(&self) -> PathBuf {
        self.shared.object_path(&self.rel)
    }

    /// Bytes appended so far.
    pub fn len(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    /// True if nothing was appended yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The size and CRC-32 of every byte appended so far: the checksum a
    /// commit records.
    pub(crate) fn digest(&self) -> FileDigest {
        FileDigest {
            bytes: self.len(),
            crc32: self.crc32.clone().finalize(),
        }
    }

    /// Bytes currently reserved for this file.
    pub fn reserved_bytes(&self) -> u64 {
        self.reservation.bytes()
    }

    /// Adds a reservation made with [`crate::Cache::reserve`] (for instance
    /// the full size of a download, so appends never wait).
    pub fn attach(&mut self, reservation: Reservation) -> Result<()> {
        if !reservation.same_ledger(&self.shared.ledger) {
            return Err(Error::ForeignReservation);
        }
        self.reservation.merge(reservation)
    }

    /// Appends `data`, first reserving more space in whole chunks if the
    /// file would outgrow its reservation (waiting up to `reservation_wait`).
    /// Data is copied into a buffer and written in pieces of up to
    /// [`WRITE_BUFFER_BYTES`] (glommio takes ownership of each write's
    /// buffer while the kernel holds it). After any error, only
    /// [`Staging::close`] is useful.
    pub async fn append(&mut self, data: &[u8]) -> Result<()> {
        self.check_usable()?;
        let total = self.len().saturating_add(data.len() as u64);
        if total > self.shared.bytes_limit {
            return Err(Error::Oversize {
                key: self.key.to_string(),
                bytes: total,
                bytes_limit: self.shared.bytes_limit,
            });
        }
        if total > self.reservation.bytes() {
            let missing = total - self.reservation.bytes();
            let chunk = self.shared.cfg.chunk_bytes;
            let room = self.shared.bytes_limit - self.reservation.bytes();
            let ask = missing.div_ceil(chunk).saturating_mul(chunk).min(room);
            let deadline = Instant::now() + self.shared.cfg.reservation_wait;
            let more = self.shared.reserve(ask, 0, deadline).await?;
            self.reservation.merge(more)?;
        }
        self.buf.extend_from_slice(data);
        self.crc32.update(data);
        if self.buf.len() >= WRITE_BUFFER_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    fn check_usable(&self) -> Result<()> {
        self.shared.check_open()?;
        if self.poisoned || self.finished {
            return Err(Error::StagingPoisoned { path: self.path() });
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.buf);
        let result = self.write_all(pending).await;
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// Writes `pending` in pieces of at most [`WRITE_BUFFER_BYTES`],
    /// continuing after short writes (Linux caps one write at
    /// `MAX_RW_COUNT`, 0x7ffff000 bytes, and a write may be cut short for
    /// other reasons too). Only a real ENOSPC/EDQUOT is reported as
    /// [`Error::NoSpace`]; a write of 0 bytes is an I/O error. Any error
    /// poisons the staging file (the caller marks it).
    async fn write_all(&mut self, pending: Vec<u8>) -> Result<()> {
        let path = self.path();
        let mut done = 0usize;
        // Bounded: every iteration writes at least one byte or returns.
        while done < pending.len() {
            let Some(file) = self.file.as_ref() else {
                return Err(Error::StagingPoisoned { path });
            };
            let end = done.saturating_add(WRITE_BUFFER_BYTES).min(pending.len());
            let mut piece = pending[done..end].to_vec();
            if self.shared.inject_short_write() {
                piece.truncate(piece.len().div_ceil(2));
            }
            let asked = piece.len();
            let written = if self.shared.inject_enospc_write() {
                Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
            } else {
                file.write_at(piece, self.written).await
            };
            match written {
                Ok(0) => {
                    let zero = std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        format!("wrote 0 of {asked} bytes"),
                    );
                    return Err(Error::io("write", path, zero));
                }
                Ok(n) => {
                    debug_assert!(n <= asked);
                    self.written += n as u64;
                    done += n;
                }
                Err(e) if Error::is_nospace(&e) => {
                    let needed = (pending.len() - done) as u64;
                    return Err(nospace(&self.shared, "write", path, e, needed).await);
                }
                Err(e) => return Err(Error::io("write", path, e)),
            }
        }
        Ok(())
    }

    /// Fences the commit on `fence` (over this staging file's key, taken
    /// before the store object these bytes stand for was read or written):
    /// the commit then places nothing, and returns [`Error::Invalidated`],
    /// if the key was invalidated since (see [`Fence`]). A fence over
    /// another key is refused ([`Error::Config`]).
    pub fn fence(&mut self, fence: Fence) -> Result<()> {
        check_fence_key(&fence, &self.key)?;
        self.fence = Some(fence);
        Ok(())
    }

    /// Commits the file to its key (see the module docs). On
    /// [`Error::Conflict`] (the key exists) the staging file is removed and
    /// its reservation released. An `Io` error from the final directory fsync
    /// means the object *is* in the cache but may not survive power loss.
    pub async fn commit(self) -> Result<()> {
        self.finish(FinishMode::Link).await
    }

    pub(crate) async fn finish(mut self, mode: FinishMode) -> Result<()> {
        if let Err(error) = self.check_usable() {
            self.abandon().await;
            return Err(error);
        }
        if let Err(error) = self.seal().await {
            self.abandon().await;
            return Err(error);
        }
        // From here on the kernel changes the namespace (link or rename) and
        // the accounting must follow it. Run that in a detached task that
        // owns the staging file and takes the key lock itself: if the caller
        // drops this future while the link or rename is in flight, the task
        // still records the object (and releases the key lock only after),
        // so disk and accounting never diverge.
        let shared = Rc::clone(&self.shared);
        let result = match glommio::spawn_local(self.place(mode)).detach().await {
            Some(result) => result,
            // The executor is shutting down: the cache goes with it.
            None => return Err(Error::Closed),
        };
        // Asked here, not in the task, so the caller sees its commit before
        // a background trim can run (a caller that dropped the commit leaves
        // the request to the next reservation or commit).
        shared.maybe_request_trim();
        result
    }

    /// The rest of [`Staging::finish`]: link or rename into place, account,
    /// unlink the staging name, fsync. Runs as its own task.
    async fn place(mut self, mode: FinishMode) -> Result<()> {
        let shared = Rc::clone(&self.shared);
        let _guard = shared.locks.lock(self.key.as_str()).await;
        if let Err(error) = shared.check_open() {
            drop(_guard);
            self.abandon().await;
            return Err(error);
        }
        // Under the key lock, as `invalidate` bumps the generation: an
        // invalidation either finds this object placed or is seen here.
        if self.fence.as_ref().is_some_and(|fence| !fence.holds()) {
            drop(_guard);
            shared.metrics.fenced_placements_refused.inc();
            let key = self.key.to_string();
            self.abandon().await;
            return Err(Error::Invalidated { key });
        }
        let key = self.key.as_str();
        let key_path = shared.object_path(key);
        // The staging file and the key share a directory: one fsync of it
        // makes the link (or rename) and the staging unlink durable.
        let staging_path = shared.object_path(&self.rel);
        let dir = parent_dir(&key_path).to_path_buf();
        let placed = match mode {
            FinishMode::Link => shared.disk.link(&staging_path, &key_path).await,
            FinishMode::Replace => shared.disk.rename(&staging_path, &key_path).await,
        };
        if shared.inject_pause_after_place() {
            // Fault hook: a scheduling point between the namespace op and
            // its accounting (where a dropped caller used to lose it).
            futures_lite::future::yield_now().await;
        }
        if let Err(e) = placed {
            let error = match (mode, errno(&e)) {
                (FinishMode::Link, Some(libc::EEXIST)) => {
                    shared.metrics.commit_conflicts.inc();
                    Error::Conflict {
                        key: key.to_owned(),
                    }
                }
                (_, Some(libc::EISDIR)) | (FinishMode::Replace, Some(libc::ENOTEMPTY)) => {
                    Error::rejected(key, KeyRejection::IsDirectory)
                }
                (_, Some(libc::ELOOP) | Some(libc::EXDEV)) => {
                    Error::rejected(key, KeyRejection::SymlinkInPath)
                }
                (_, Some(libc::ENOTDIR)) => Error::rejected(key, KeyRejection::ParentIsObject),
                (FinishMode::Link, _) => Error::io("linkat", key_path, e),
                (FinishMode::Replace, _) => Error::io("renameat", key_path, e),
            };
            drop(_guard);
            self.abandon().await;
            return Err(error);
        }
        // The object is in place: account for it before anything else can
        // fail, so the accounting matches the disk whatever happens next.
        let bytes = self.written;
        let replaced = shared.tracker.borrow_mut().insert_now(key, bytes);
        self.reservation.commit(bytes, 1);
        if let Some(old_bytes) = replaced {
            shared.ledger.sub_used(old_bytes, 1);
        }
        self.finished = true;
        match mode {
            FinishMode::Link => {
                shared.metrics.commits.inc();
                let unlinked = if shared.inject_staging_unlink_failure() {
                    Err(std::io::Error::from_raw_os_error(libc::EIO))
                } else {
                    shared.disk.remove(&staging_path).await
                };
                if let Err(error) = unlinked {
                    shared.metrics.staging_unlink_failures.inc();
                    tracing::warn!(rel = self.rel, %error,
                        "unlink of a committed staging name failed; object committed, name retried later");
                    shared.defer_unlink(self.rel.clone());
                }
            }
            FinishMode::Replace => shared.metrics.puts.inc(),
        }
        let synced = match shared.fsync_dir(&dir).await {
            Ok(()) => shared.sync_new_ancestors(&self.key).await,
            Err(e) => Err(Error::io(
                "fsync",
                shared.object_path(self.key.parent().unwrap_or("")),
                e,
            )),
        };
        drop(_guard);
        synced
    }

    /// Flushes, records the object's checksum on the file, fsyncs and
    /// closes it.
    async fn seal(&mut self) -> Result<()> {
        self.flush().await?;
        let path = self.path();
        let Some(file) = self.file.take() else {
            return Err(Error::StagingPoisoned { path });
        };
        // Flushed: the digest's size is what the file holds.
        debug_assert!(self.buf.is_empty());
        let checksum = encode_object_checksum(self.digest());
        if let Err(e) = self.shared.disk.seal_object(&file, &checksum).await {
            self.poisoned = true;
            if Error::is_nospace(&e) {
                return Err(nospace(&self.shared, "fsync", path, e, 0).await);
            }
            return Err(Error::io("set the checksum attribute and fsync", path, e));
        }
        file.close().await.map_err(|e| Error::io("close", path, e))
    }

    /// Abandons the file: closes it, unlinks the staging name and releases
    /// the reservation. Nothing of it becomes visible in the cache.
    pub async fn close(mut self) -> Result<()> {
        self.finished = true;
        self.shared.metrics.staging_abandoned.inc();
        drop(self.file.take());
        if self.shared.closed.get() {
            // The cache is gone (possibly reopened by a new instance, which
            // removed this name at startup): touch nothing on disk.
            return Ok(());
        }
        let result = self.shared.unlink_rel(&self.rel, false).await;
        match result {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
            Err(e) => {
                self.shared.defer_unlink(self.rel.clone());
                Err(Error::io("unlinkat", self.path(), e))
            }
        }
        // The reservation is released when `self` drops here.
    }

    /// `close` for internal error paths: errors are logged, not returned.
    async fn abandon(mut self) {
        self.finished = true;
        self.shared.metrics.staging_abandoned.inc();
        drop(self.file.take());
        if self.shared.closed.get() {
            // As in `close`: startup of the next instance cleans up.
            return;
        }
        match self.shared.unlink_rel(&self.rel, false).await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::ENOENT) => {}
            Err(error) => {
                tracing::warn!(rel = self.rel, %error, "unlink of an abandoned staging file failed");
                self.shared.defer_unlink(self.rel.clone());
            }
        }
    }
}

impl<S: CacheDisk> Drop for Staging<S> {
    fn drop(&mut self) {
        if !self.finished {
            // Dropped without close/commit: the reservation goes back when its
            // field drops; the name is unlinked later (or at startup).
            self.shared.metrics.staging_abandoned.inc();
            self.shared.defer_unlink(std::mem::take(&mut self.rel));
        }
    }
}

/// ENOSPC: trims (unless one just ran; then a background trim is requested)
/// and returns the typed error.
async fn nospace<S: CacheDisk>(
    shared: &Rc<Shared<S>>,
    op: &'static str,
    path: PathBuf,
    source: std::io::Error,
    needed_bytes: u64,
) -> Error {
    let trimmed_bytes = match trim::run(
        shared,
        trim::TrimKind::Exhaustive,
        Trigger::NoSpace { needed_bytes },
        false,
    )
    .await
    {
        Ok(Some(report)) => report.bytes_removed,
        Ok(None) => 0,
        Err(error) => {
            tracing::warn!(%error, "trim after ENOSPC failed");
            0
        }
    };
    Error::NoSpace {
        op,
        path,
        trimmed_bytes,
        source,
    }
}

/// A fence must be over the key of the placement it is given to.
pub(crate) fn check_fence_key(fence: &Fence, key: &Key) -> Result<()> {
    if fence.key() == key.as_str() {
        return Ok(());
    }
    Err(Error::Config {
        field: "fence",
        reason: format!(
            "a fence over key {:?} given to a placement at {:?}",
            fence.key(),
            key.as_str()
        ),
    })
}
