//! Adopting a finished file as a committed object, without copying it when
//! it is on the cache's filesystem.
//!
//! A shard that just wrote a large file (a snapshot, a retired segment) and
//! uploaded it wants later reads to hit locally. Copying it into a staging
//! file would write every byte twice; a hard link adds a name for the same
//! inode. [`crate::Cache::adopt`]:
//!
//! 1. opens the file (`O_NOFOLLOW`: never a symlink), checks it is a regular
//!    file, takes its size and `fdatasync`s it, all on glommio's blocking
//!    pool (no io_uring call does `fstat` + `fdatasync` + a plain open);
//! 2. reserves its size and one object (waiting up to `reservation_wait`);
//! 3. creates the key's parent directories, then links **the open fd** into
//!    place (`linkat("/proc/self/fd/N", .., AT_SYMLINK_FOLLOW)`), so the inode
//!    checked in step 1 is the one linked even if the name was swapped
//!    since; EEXIST is [`Error::Conflict`], like a staging commit;
//! 4. accounts the object (reservation -> used) and tracks it;
//! 5. fsyncs the key's directory and any new ancestor's parent.
//!
//! Steps 3 to 5 run in a detached task holding the key lock, as a staging
//! commit does, so a dropped caller cannot leave the accounting behind the
//! disk. When the link is impossible (EXDEV: another filesystem; EPERM:
//! `protected_hardlinks` refuses a file the process does not own; ENOENT
//! that persists: no `/proc`), the bytes are copied through a staging file
//! instead ([`Adopted::Copied`]).
//!
//! The object shares its inode with the caller's file: the caller must not
//! modify the file afterwards (renaming or unlinking its own name is fine).
//! The size accounted is the one seen in step 1; a file that grew since is
//! accounted right at the next startup walk.

use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use crate::cache::{Shared, STAGING_CREATE_ATTEMPTS_MAX};
use crate::error::{glommio_io, Error, Result};
use crate::key::Key;
use crate::reservation::Reservation;
use crate::staging::Staging;
use crate::sys;

/// Bytes per read when a file is copied in.
const COPY_STEP_BYTES: usize = 1 << 20;

/// How [`crate::Cache::adopt`] brought a file in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    /// Hard-linked: no bytes copied.
    Linked,
    /// Copied through a staging file (the file is on another filesystem,
    /// or the kernel refused the link).
    Copied,
}

/// Why the link path gave up without an error of its own.
enum LinkOutcome {
    Linked,
    NeedsCopy(std::io::Error),
}

pub(crate) async fn adopt(shared: &Rc<Shared>, key: &str, file: &Path) -> Result<Adopted> {
    shared.check_open()?;
    let key = Key::new(key)?;
    let path = file.to_path_buf();
    let (fd, bytes) = glommio::executor()
        .spawn_blocking(move || open_and_sync(&path))
        .await?;
    if bytes > shared.bytes_limit {
        return Err(Error::Oversize {
            key: key.to_string(),
            bytes,
            bytes_limit: shared.bytes_limit,
        });
    }
    let deadline = Instant::now() + shared.cfg.reservation_wait;
    let reservation = shared.reserve(bytes, 1, deadline).await?;
    let fd = Rc::new(fd);
    let task = glommio::spawn_local(link(
        Rc::clone(shared),
        key.clone(),
        Rc::clone(&fd),
        bytes,
        reservation,
    ));
    let outcome = match task.detach().await {
        Some(outcome) => outcome?,
        None => return Err(Error::Closed),
    };
    let adopted = match outcome {
        LinkOutcome::Linked => {
            shared.metrics.adopted_linked.inc();
            Adopted::Linked
        }
        LinkOutcome::NeedsCopy(why) => {
            tracing::debug!(key = key.as_str(), file = %file.display(), %why,
                "cannot hard-link the file into the cache; copying it");
            copy(shared, &key, fd, file, bytes).await?;
            shared.metrics.adopted_copied.inc();
            Adopted::Copied
        }
    };
    shared.maybe_request_trim();
    Ok(adopted)
}

/// Step 1 (blocking pool): open without following a symlink, check, size,
/// fdatasync.
fn open_and_sync(path: &PathBuf) -> Result<(OwnedFd, u64)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    let meta = file.metadata().map_err(|e| Error::io("fstat", path, e))?;
    if !meta.is_file() {
        return Err(Error::io(
            "open",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    file.sync_data()
        .map_err(|e| Error::io("fdatasync", path, e))?;
    let fd = OwnedFd::from(file);
    sys::clear_nonblock(std::os::fd::AsFd::as_fd(&fd)).map_err(|e| Error::io("fcntl", path, e))?;
    Ok((fd, meta.len()))
}

/// Steps 3 to 5, as a detached task holding the key lock.
async fn link(
    shared: Rc<Shared>,
    key: Key,
    src: Rc<OwnedFd>,
    bytes: u64,
    mut reservation: Reservation,
) -> Result<LinkOutcome> {
    let _guard = shared.locks.lock(key.as_str()).await;
    shared.check_open()?;
    let key_path = shared.object_path(key.as_str());
    let mut attempts = 0;
    // Bounded by STAGING_CREATE_ATTEMPTS_MAX.
    let dir = loop {
        attempts += 1;
        if key.parent().is_some() {
            shared.ensure_parent_dirs(&key).await?;
        }
        let (dir, leaf) = match shared.parent_dir(key.as_str(), true).await {
            Ok(found) => found,
            Err(e)
                if e.raw_os_error() == Some(libc::ENOENT)
                    && attempts < STAGING_CREATE_ATTEMPTS_MAX =>
            {
                continue
            }
            Err(e) => return Err(shared.open_error(&key, &key_path, e)),
        };
        match shared.uring.link_fd(&src, &dir, leaf).await {
            Ok(()) => break dir,
            Err(e) => match e.raw_os_error() {
                Some(libc::EEXIST) => {
                    shared.metrics.commit_conflicts.inc();
                    return Err(Error::Conflict {
                        key: key.to_string(),
                    });
                }
                Some(libc::EXDEV) | Some(libc::EPERM) | Some(libc::EMLINK) => {
                    return Ok(LinkOutcome::NeedsCopy(e))
                }
                // The directory was swept by a trim (or /proc is missing):
                // try again, then fall back to a copy.
                Some(libc::ENOENT) if attempts < STAGING_CREATE_ATTEMPTS_MAX => {}
                Some(libc::ENOENT) => return Ok(LinkOutcome::NeedsCopy(e)),
                _ => return Err(Error::io("linkat", key_path, e)),
            },
        }
    };
    // The object is in place: account for it before anything else can fail.
    let replaced = shared.tracker.borrow_mut().insert_now(key.as_str(), bytes);
    reservation.commit(bytes, 1);
    if let Some(old_bytes) = replaced {
        // Cannot happen (linkat does not replace), but keep the books right.
        shared.ledger.sub_used(old_bytes, 1);
    }
    match shared.fsync_dir(&dir).await {
        Ok(()) => shared.sync_new_ancestors(&key).await?,
        Err(e) => {
            let parent = shared.object_path(key.parent().unwrap_or(""));
            return Err(Error::io("fsync", parent, e));
        }
    }
    Ok(LinkOutcome::Linked)
}

/// The fallback: the file's bytes through a staging file and a commit.
async fn copy(
    shared: &Rc<Shared>,
    key: &Key,
    src: Rc<OwnedFd>,
    file: &Path,
    bytes: u64,
) -> Result<()> {
    let src = Rc::try_unwrap(src).map_err(|_| {
        Error::io(
            "read",
            file,
            std::io::Error::other("file still held by the metadata ring"),
        )
    })?;
    let deadline = Instant::now() + shared.cfg.reservation_wait;
    let chunk = shared.cfg.chunk_bytes.min(shared.bytes_limit);
    let first = shared.reserve(chunk, 1, deadline).await?;
    let mut staging = Staging::create(Rc::clone(shared), key.clone(), first).await?;
    let copied = async {
        // The whole size up front, so appends never wait.
        let rest = bytes.saturating_sub(staging.reserved_bytes());
        if rest > 0 {
            let more = shared.reserve(rest, 0, deadline).await?;
            staging.attach(more)?;
        }
        let reader = sys::buffered_file_from_fd(src);
        let mut offset = 0u64;
        // Bounded by the file's size: every read returns at least one byte
        // or ends the loop.
        while offset < bytes {
            let want = usize::try_from(bytes - offset)
                .unwrap_or(COPY_STEP_BYTES)
                .min(COPY_STEP_BYTES);
            let read = reader
                .read_at(offset, want)
                .await
                .map_err(|e| Error::io("read", file, glommio_io(e)))?;
            if read.is_empty() {
                return Err(Error::io(
                    "read",
                    file,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("file shrank to {offset} of {bytes} bytes while being copied"),
                    ),
                ));
            }
            staging.append(&read).await?;
            offset += read.len() as u64;
        }
        Ok(())
    }
    .await;
    if let Err(error) = copied {
        if let Err(close_error) = staging.close().await {
            tracing::warn!(%close_error, "closing a failed copy's staging file");
        }
        return Err(error);
    }
    staging.commit().await
}
