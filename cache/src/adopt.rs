//! Adopting a finished file as a committed object, without copying it when
//! it is on the cache's filesystem.
//!
//! A shard that just wrote a large file (a snapshot, a retired segment) and
//! uploaded it wants later reads to hit locally. Copying it into a staging
//! file would write every byte twice; a hard link adds a name for the same
//! inode. [`crate::Cache::adopt`]:
//!
//! 0. refuses a file inside the cache's own object directory (by its
//!    path, with `..` resolved, or through a symlink): an object or a
//!    staging file given a second key would be counted twice and change
//!    under it ([`Error::AdoptedFileInCache`]);
//! 1. opens the file through the cache's disk (never through a symlink,
//!    only a regular file), takes its size and identity (device and inode)
//!    from the open file, records the object's checksum (size and CRC-32,
//!    read from the file unless the caller vouches for it) in the file's
//!    `user.ringstore.object` extended attribute and `fsync`s it (data and
//!    attribute durable; a file that cannot carry the attribute is
//!    copied instead);
//! 2. reserves its size and one object (waiting up to `reservation_wait`);
//! 3. creates the key's parent directories, then links **the open file**
//!    into place (`Storage::link_file`: on the real disk
//!    `linkat("/proc/self/fd/N", .., AT_SYMLINK_FOLLOW)`), so the inode
//!    opened and synced in step 1 is the one linked even if its name was
//!    swapped since; EEXIST is [`Error::Conflict`], like a staging commit;
//! 4. accounts the object (reservation -> used) and tracks it;
//! 5. fsyncs the key's directory and any new ancestor's parent.
//!
//! Steps 3 to 5 run in a detached task holding the key lock, as a staging
//! commit does, so a dropped caller cannot leave the accounting behind the
//! disk. When the link is impossible (EXDEV: another filesystem; EPERM:
//! `protected_hardlinks` refuses a file the process does not own; EMLINK;
//! ENOENT that persists), or the file cannot carry the attribute, the bytes
//! are copied from the open file through a staging file instead
//! ([`Adopted::Copied`]). The copy is checked against the checksum of step
//! 1 (the caller's, for [`crate::Cache::adopt_checked`]) before its commit:
//! a file that reads otherwise now (changed, shrunk, or a bit flipped,
//! since it was checked) is [`Error::AdoptedFileChanged`] and nothing is
//! cached, as is a file whose size at step 1 is not the caller's. Without
//! that check the commit would label whatever the second read returned with
//! a valid checksum of its own, and the cache would serve bytes the store
//! does not hold.
//!
//! The object shares its inode with the caller's file: the caller must not
//! modify the file afterwards (renaming or unlinking its own name is fine):
//! a read then finds other bytes than its checksum and refuses the object
//! ([`Error::CorruptObject`]).

use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use ringstore_journal::storage::{errno, parent_dir, BufferedFile, EntryKind};

use crate::cache::{Shared, STAGING_CREATE_ATTEMPTS_MAX};
use crate::disk::CacheDisk;
use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::format::encode_object_checksum;
use crate::key::Key;
use crate::remote::FileDigest;
use crate::reservation::Reservation;
use crate::staging::{check_fence_key, Staging};

/// Bytes per read when a file is copied in.
const COPY_STEP_BYTES: usize = 1 << 20;

/// How [`crate::Cache::adopt`] brought a file in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    /// Hard-linked: no bytes copied.
    Linked,
    /// Copied through a staging file (the file is on another filesystem,
    /// or the kernel refused the link or the checksum attribute).
    Copied,
}

/// Why the link path gave up without an error of its own.
enum LinkOutcome {
    Linked,
    NeedsCopy(std::io::Error),
}

pub(crate) async fn adopt<S: CacheDisk>(
    shared: &Rc<Shared<S>>,
    key: &str,
    file: &Path,
    digest: Option<FileDigest>,
    fence: Option<Fence>,
) -> Result<Adopted> {
    shared.check_open()?;
    let key = Key::new(key)?;
    if let Some(fence) = &fence {
        check_fence_key(fence, &key)?;
    }
    if inside(&shared.objects_path, file) {
        return Err(Error::AdoptedFileInCache {
            key: key.to_string(),
            path: file.to_path_buf(),
        });
    }
    let (src, meta) = open_regular(shared, file).await?;
    // Shared with the link task, which may outlive a dropped caller.
    let src = Rc::new(src);
    let adopted = adopt_open(shared, &key, file, &src, meta, digest, fence).await;
    if let Ok(src) = Rc::try_unwrap(src) {
        if let Err(error) = src.close().await {
            tracing::debug!(%error, file = %file.display(), "closing an adopted file");
        }
    }
    if let Err(Error::AdoptedFileChanged { .. }) = &adopted {
        shared.metrics.adopted_files_changed.inc();
    }
    let adopted = adopted?;
    match adopted {
        Adopted::Linked => shared.metrics.adopted_linked.inc(),
        Adopted::Copied => shared.metrics.adopted_copied.inc(),
    }
    shared.maybe_request_trim();
    Ok(adopted)
}

/// Whether `file` lies under `dir`: compared as absolute paths with `.`
/// and `..` resolved by name, and, where both resolve on the real
/// filesystem, through their symlinks too (a simulated disk's paths do not
/// resolve, and are compared by name only).
fn inside(dir: &Path, file: &Path) -> bool {
    let absolute = |path: &Path| match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => normalize(&cwd.join(path)),
        _ => normalize(path),
    };
    if absolute(file).starts_with(absolute(dir)) {
        return true;
    }
    let real_dir = std::fs::canonicalize(dir);
    let real_parent = file.parent().map(std::fs::canonicalize);
    match (real_dir, real_parent, file.file_name()) {
        (Ok(dir), Some(Ok(parent)), Some(name)) => parent.join(name).starts_with(dir),
        _ => false,
    }
}

/// `path` with `.` dropped and each `..` taking away the component before
/// it, by name only.
fn normalize(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Steps 2 to 5 for the file open as `src`, or the copy when the link is
/// impossible.
async fn adopt_open<S: CacheDisk>(
    shared: &Rc<Shared<S>>,
    key: &Key,
    file: &Path,
    src: &Rc<S::Buffered>,
    meta: ringstore_journal::storage::FileMeta,
    digest: Option<FileDigest>,
    fence: Option<Fence>,
) -> Result<Adopted> {
    let bytes = meta.len;
    if bytes > shared.bytes_limit {
        return Err(Error::Oversize {
            key: key.to_string(),
            bytes,
            bytes_limit: shared.bytes_limit,
        });
    }
    // The object's checksum on the file itself (the object is that
    // inode), durable with the file's data before the link.
    let digest = match digest {
        // The caller read other bytes than the file holds now: labelling
        // the file's own bytes would cache what the caller did not check.
        // Its size says so before any of it is read.
        Some(digest) if digest.bytes != bytes => {
            return Err(changed(key, file, digest, bytes, None));
        }
        Some(digest) => digest,
        None => read_digest(src.as_ref(), bytes, file).await?,
    };
    let checksum = encode_object_checksum(digest);
    match shared.disk.seal_object(src, &checksum).await {
        Ok(()) => {}
        // The file cannot carry the attribute (not the process's to
        // label, a filesystem without user attributes): a copy, whose
        // staging file gets its own.
        Err(e) if cannot_label(&e) => {
            tracing::debug!(key = key.as_str(), file = %file.display(), error = %e,
                "cannot record the checksum on the file; copying it");
            copy(shared, key, src, file, digest, fence).await?;
            return Ok(Adopted::Copied);
        }
        Err(e) => return Err(Error::io("set the checksum attribute and fsync", file, e)),
    }
    let deadline = Instant::now() + shared.cfg.reservation_wait;
    let reservation = shared.reserve(bytes, 1, deadline).await?;
    let task = glommio::spawn_local(link(
        Rc::clone(shared),
        key.clone(),
        Rc::clone(src),
        meta,
        reservation,
        fence.clone(),
    ));
    let outcome = match task.detach().await {
        Some(outcome) => outcome?,
        None => return Err(Error::Closed),
    };
    match outcome {
        LinkOutcome::Linked => Ok(Adopted::Linked),
        LinkOutcome::NeedsCopy(why) => {
            tracing::debug!(key = key.as_str(), file = %file.display(), %why,
                "cannot hard-link the file into the cache; copying it");
            copy(shared, key, src, file, digest, fence).await?;
            Ok(Adopted::Copied)
        }
    }
}

/// Whether recording the checksum attribute failed because this file
/// cannot carry one here (rather than an I/O error).
fn cannot_label(error: &std::io::Error) -> bool {
    matches!(
        errno(error),
        Some(libc::EPERM | libc::EACCES | libc::EOPNOTSUPP | libc::EROFS)
    )
}

/// [`Error::AdoptedFileChanged`]: the file adopted as `key` is not the
/// one of `expected`, as found (`found_bytes`, and the CRC-32 of what was
/// copied, if it was).
fn changed(
    key: &Key,
    file: &Path,
    expected: FileDigest,
    found_bytes: u64,
    found_crc32: Option<u32>,
) -> Error {
    Error::AdoptedFileChanged {
        key: key.to_string(),
        path: file.to_path_buf(),
        expected_bytes: expected.bytes,
        expected_crc32: expected.crc32,
        found_bytes,
        found_crc32,
    }
}

/// The size and CRC-32 of the open file's first `bytes` bytes.
async fn read_digest<F: BufferedFile>(src: &F, bytes: u64, file: &Path) -> Result<FileDigest> {
    let mut crc32 = crc32fast::Hasher::new();
    let mut steps = Steps::new(src, bytes);
    while let Some(read) = steps.next(file).await? {
        crc32.update(&read);
    }
    // No checksum to hold the file to yet: what it holds now is unknown.
    if steps.offset != bytes {
        return Err(Error::io(
            "read",
            file,
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "file shrank to {} of {bytes} bytes while being read",
                    steps.offset
                ),
            ),
        ));
    }
    Ok(FileDigest {
        bytes,
        crc32: crc32.finalize(),
    })
}

/// An open file's first `bytes` bytes, read in order, at most
/// [`COPY_STEP_BYTES`] a read; fewer if the file is shorter now (`offset`
/// then says how many were read).
struct Steps<'a, F> {
    src: &'a F,
    bytes: u64,
    offset: u64,
}

impl<'a, F: BufferedFile> Steps<'a, F> {
    fn new(src: &'a F, bytes: u64) -> Steps<'a, F> {
        Steps {
            src,
            bytes,
            offset: 0,
        }
    }

    /// The next read, `None` after the last or at the file's end. Bounded
    /// by the size: every read but the last returns at least one byte.
    async fn next(&mut self, file: &Path) -> Result<Option<F::ReadBuf>> {
        if self.offset >= self.bytes {
            return Ok(None);
        }
        let want = usize::try_from(self.bytes - self.offset)
            .unwrap_or(COPY_STEP_BYTES)
            .min(COPY_STEP_BYTES);
        let read = self
            .src
            .read_at(self.offset, want)
            .await
            .map_err(|e| Error::io("read", file, e))?;
        if read.is_empty() {
            return Ok(None);
        }
        self.offset += read.len() as u64;
        Ok(Some(read))
    }
}

/// Step 1: open (a regular file, no symlink), size and identity.
async fn open_regular<S: CacheDisk>(
    shared: &Shared<S>,
    path: &Path,
) -> Result<(S::Buffered, ringstore_journal::storage::FileMeta)> {
    let file = shared
        .disk
        .open_buffered(path)
        .await
        .map_err(|e| Error::io("open", path, e))?;
    let synced = async {
        let meta = file.meta().await.map_err(|e| Error::io("fstat", path, e))?;
        if meta.kind != EntryKind::File {
            return Err(Error::io(
                "open",
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        Ok(meta)
    }
    .await;
    match synced {
        Ok(meta) => Ok((file, meta)),
        Err(error) => {
            let _ = file.close().await;
            Err(error)
        }
    }
}

/// Steps 3 to 5, as a detached task holding the key lock.
async fn link<S: CacheDisk>(
    shared: Rc<Shared<S>>,
    key: Key,
    src: Rc<S::Buffered>,
    meta: ringstore_journal::storage::FileMeta,
    mut reservation: Reservation,
    fence: Option<Fence>,
) -> Result<LinkOutcome> {
    let bytes = meta.len;
    let _guard = shared.locks.lock(key.as_str()).await;
    shared.check_open()?;
    // Under the key lock, as `invalidate` bumps the generation.
    if fence.as_ref().is_some_and(|fence| !fence.holds()) {
        shared.metrics.fenced_placements_refused.inc();
        return Err(Error::Invalidated {
            key: key.to_string(),
        });
    }
    let key_path = shared.object_path(key.as_str());
    let mut attempts = 0;
    // Bounded by STAGING_CREATE_ATTEMPTS_MAX.
    loop {
        attempts += 1;
        if key.parent().is_some() {
            shared.ensure_parent_dirs(&key).await?;
        }
        let linked = shared.disk.link_file(&src, &key_path).await;
        match linked.as_ref().map_err(errno) {
            Ok(()) => break,
            Err(Some(libc::EEXIST)) => {
                shared.metrics.commit_conflicts.inc();
                return Err(Error::Conflict {
                    key: key.to_string(),
                });
            }
            Err(Some(libc::EXDEV) | Some(libc::EPERM) | Some(libc::EMLINK)) => {
                return Ok(LinkOutcome::NeedsCopy(linked.expect_err("an error")))
            }
            // The directory was swept by a trim: try again, then fall back
            // to a copy.
            Err(Some(libc::ENOENT)) if attempts < STAGING_CREATE_ATTEMPTS_MAX => {}
            Err(Some(libc::ENOENT)) => {
                return Ok(LinkOutcome::NeedsCopy(linked.expect_err("an error")))
            }
            Err(Some(libc::ELOOP)) => {
                return Err(Error::rejected(
                    key.as_str(),
                    crate::KeyRejection::SymlinkInPath,
                ))
            }
            Err(_) => return Err(Error::io("linkat", key_path, linked.expect_err("an error"))),
        }
    }
    let dir = parent_dir(&key_path).to_path_buf();
    // The object is in place: account for it before anything else can fail.
    let replaced = shared.tracker.borrow_mut().insert_now(key.as_str(), bytes);
    reservation.commit(bytes, 1);
    if let Some(old_bytes) = replaced {
        // Cannot happen (a link does not replace), but keep the books right.
        shared.ledger.sub_used(old_bytes, 1);
    }
    match shared.fsync_dir(&dir).await {
        Ok(()) => shared.sync_new_ancestors(&key).await?,
        Err(e) => return Err(Error::io("fsync", dir, e)),
    }
    Ok(LinkOutcome::Linked)
}

/// The fallback: the open file's bytes through a staging file and a
/// commit, only if they are the bytes of `expected` (the checksum step 1
/// recorded or was given): the commit labels what was copied, so a file
/// changed since its check would otherwise be cached as valid.
async fn copy<S: CacheDisk>(
    shared: &Rc<Shared<S>>,
    key: &Key,
    reader: &S::Buffered,
    file: &Path,
    expected: FileDigest,
    fence: Option<Fence>,
) -> Result<()> {
    let bytes = expected.bytes;
    let deadline = Instant::now() + shared.cfg.reservation_wait;
    let chunk = shared.cfg.chunk_bytes.min(shared.bytes_limit);
    let first = shared.reserve(chunk, 1, deadline).await?;
    let mut staging = Staging::create(Rc::clone(shared), key.clone(), first).await?;
    let copied = async {
        if let Some(fence) = fence {
            staging.fence(fence)?;
        }
        // The whole size up front, so appends never wait.
        let rest = bytes.saturating_sub(staging.reserved_bytes());
        if rest > 0 {
            let more = shared.reserve(rest, 0, deadline).await?;
            staging.attach(more)?;
        }
        let mut steps = Steps::new(reader, bytes);
        while let Some(read) = steps.next(file).await? {
            staging.append(&read).await?;
        }
        // Shrunk, or other bytes: either way not the file checked.
        let found = staging.digest();
        if found != expected {
            return Err(changed(key, file, expected, found.bytes, Some(found.crc32)));
        }
        Ok(())
    }
    .await;
    // A failed or mismatched copy: its staging file is removed, nothing
    // is cached.
    if let Err(error) = copied {
        if let Err(close_error) = staging.close().await {
            tracing::warn!(%close_error, "closing a failed copy's staging file");
        }
        return Err(error);
    }
    staging.commit().await
}
