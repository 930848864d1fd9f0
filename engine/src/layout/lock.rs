//! The shard directory's lock file: one process at a time opens a shard.
//!
//! Two processes appending to one journal would interleave entries and each
//! trust its own ring index; the second open must fail before it reads
//! anything. [`DirLock`] holds `flock(LOCK_EX)` on `<dir>/lock` for as long
//! as the shard is open. The kernel drops the lock when the process dies
//! (kill -9 included), so a crash never leaves a stale lock behind; the pid
//! written into the file is only there to name the holder in the error.

use crate::error::{Error, Result};
use std::{
    fs::{File, OpenOptions, TryLockError},
    io::{Read, Seek, SeekFrom, Write},
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

/// An exclusive lock on a directory, released on drop.
#[derive(Debug)]
pub(crate) struct DirLock {
    // Held for its lock; closing the file releases it.
    _file: File,
}

impl DirLock {
    /// Locks `dir` (which must exist), or fails with [`Error::DirLocked`]
    /// naming the process that holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open lock file", &path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::DirLocked {
                    holder: read_holder(&mut file),
                    path,
                })
            }
            Err(TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
        }
        // Best effort: the pid is a hint for the error above, not a claim.
        let pid = std::process::id();
        let _ = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{pid}"));
        Ok(DirLock { _file: file })
    }
}

/// [`DirLock::acquire`], retried for up to [`LOCK_WAIT_MAX`] on a reactor.
pub(crate) async fn acquire_on_reactor(dir: &Path) -> Result<DirLock> {
    let started = std::time::Instant::now();
    loop {
        match DirLock::acquire(dir) {
            Err(Error::DirLocked { .. }) if started.elapsed() < LOCK_WAIT_MAX => {
                glommio::timer::sleep(LOCK_RETRY_PAUSE).await;
            }
            result => return result,
        }
    }
}

/// [`DirLock::acquire`], retried for up to [`LOCK_WAIT_MAX`] on a plain
/// thread.
pub(crate) fn acquire_blocking(dir: &Path) -> Result<DirLock> {
    let started = std::time::Instant::now();
    loop {
        match DirLock::acquire(dir) {
            Err(Error::DirLocked { .. }) if started.elapsed() < LOCK_WAIT_MAX => {
                std::thread::sleep(LOCK_RETRY_PAUSE);
            }
            result => return result,
        }
    }
}

fn read_holder(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Whether some process holds the lock on shard directory `dir` (a missing
/// lock file means no). For tools that must not run beside an open shard.
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
