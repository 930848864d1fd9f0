//! The shard directory's lock file: one process at a time opens a shard.
//!
//! Two processes appending to one journal would interleave entries and each
//! trust its own ring index; the second open must fail before it reads
//! anything. [`DirLock`] holds the storage layer's exclusive lock
//! ([`Storage::try_lock`]: `flock(LOCK_EX)` on the real disk) on
//! `<dir>/lock` for as long as the shard is open. The kernel drops the lock
//! when the process dies (kill -9 included), and the simulated disk at a
//! crash, so a crash never leaves a stale lock behind; the pid written into
//! the file is only there to name the holder in the error.

use crate::error::{Error, Result};
use ringstore_journal::storage::{BufferedFile as _, DmaStorage, FileLock, Storage};
use std::{
    fs::{File, TryLockError},
    path::{Path, PathBuf},
};

/// Name of the lock file inside a shard directory.
pub const LOCK_FILE_NAME: &str = "lock";

/// How long an open retries a held lock before it reports
/// [`Error::DirLocked`]. A process that forks (to spawn a child) while
/// another thread closes the shard leaves the lock held by the child's copy
/// of the descriptor until the child execs (descriptors are close-on-exec):
/// a reopen right then must not fail.
pub(crate) const LOCK_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(1);
/// Pause between attempts within [`LOCK_WAIT_MAX`].
pub(crate) const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Most bytes of the holder's note read for an error.
const HOLDER_NOTE_BYTES_MAX: usize = 64;

/// An exclusive lock on a directory, released on drop: the storage layer's
/// lock (`L`), the real disk's by default.
#[derive(Debug)]
pub(crate) struct DirLock<L = FileLock> {
    // Held for its lock; dropping it releases it.
    _lock: L,
}

/// This process's note in a lock it holds: its pid.
fn holder_note() -> Vec<u8> {
    format!("{}\n", std::process::id()).into_bytes()
}

/// The pid a lock file's note names, if it names one.
fn parse_holder(note: &[u8]) -> Option<u32> {
    std::str::from_utf8(note).ok()?.trim().parse().ok()
}

/// Locks `dir` (which must exist) through `storage`, retried for up to
/// [`LOCK_WAIT_MAX`], or fails with [`Error::DirLocked`] naming the process
/// that holds it.
pub(crate) async fn acquire_on_reactor<S: Storage>(
    storage: &S,
    dir: &Path,
) -> Result<DirLock<S::Lock>> {
    let path = dir.join(LOCK_FILE_NAME);
    let started = std::time::Instant::now();
    loop {
        match storage.try_lock(&path, &holder_note()).await {
            Ok(Some(lock)) => return Ok(DirLock { _lock: lock }),
            Ok(None) if started.elapsed() < LOCK_WAIT_MAX => {
                glommio::timer::sleep(LOCK_RETRY_PAUSE).await;
            }
            Ok(None) => {
                return Err(Error::DirLocked {
                    holder: read_holder(storage, &path).await,
                    path,
                })
            }
            Err(e) => return Err(Error::io("lock", &path, e)),
        }
    }
}

async fn read_holder<S: Storage>(storage: &S, path: &Path) -> Option<u32> {
    let file = storage.open_buffered(path).await.ok()?;
    let note = file.read_at(0, HOLDER_NOTE_BYTES_MAX).await.ok();
    let _ = file.close().await;
    parse_holder(&note?)
}

/// [`acquire_on_reactor`] on the real disk for a thread without a reactor
/// (the runtime's data directory, locked before its reactors start).
pub(crate) fn acquire_blocking(dir: &Path) -> Result<DirLock> {
    let path = dir.join(LOCK_FILE_NAME);
    let started = std::time::Instant::now();
    loop {
        match DmaStorage::try_lock_blocking(&path, &holder_note()) {
            Ok(Some(lock)) => return Ok(DirLock { _lock: lock }),
            Ok(None) if started.elapsed() < LOCK_WAIT_MAX => {
                std::thread::sleep(LOCK_RETRY_PAUSE);
            }
            Ok(None) => {
                let note = std::fs::read(&path).unwrap_or_default();
                return Err(Error::DirLocked {
                    holder: parse_holder(&note),
                    path,
                });
            }
            Err(e) => return Err(Error::io("lock", &path, e)),
        }
    }
}

/// Whether some process holds the lock on shard directory `dir` (a missing
/// lock file means no). For tools that must not run beside an open shard:
/// a shared `flock` probe that changes nothing (not even the note), so it
/// reads the real disk directly rather than through the storage layer.
pub fn is_locked(dir: &Path) -> Result<bool> {
    let path: PathBuf = dir.join(LOCK_FILE_NAME);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("open lock file", &path, e)),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(false),
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
    }
}
