//! Blocking filesystem work that has no io_uring opcode, run on glommio's
//! blocking thread pool (`executor().spawn_blocking`) so the reactor never
//! waits on it:
//!
//! - the directory walk (io_uring has no `getdents`; the walk `lstat`s each
//!   entry on the same pool thread rather than paying a ring round trip per
//!   file — 100,000 objects would be 100,000 round trips);
//! - preparing the cache root at open (create it, take the `flock`, check or
//!   write the layout file): a handful of one-time calls.

use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::format::{LAYOUT_CONTENTS, LAYOUT_FILE, LAYOUT_VERSION, LOCK_FILE, OBJECTS_DIR};
use crate::key::{is_staging_name, Key, KEY_DEPTH_MAX};
use crate::sys;

/// A regular file found by the walk whose name is a valid key.
#[derive(Debug, Clone)]
pub(crate) struct WalkFile {
    pub(crate) key: String,
    pub(crate) bytes: u64,
    /// max(atime, mtime), ms since the epoch.
    pub(crate) atime_ms: u64,
}

/// What a walk of `objects/` found.
#[derive(Debug, Default)]
pub(crate) struct Walk {
    pub(crate) files: Vec<WalkFile>,
    /// `*.part` files (relative paths).
    pub(crate) staging: Vec<String>,
    /// Every directory below `objects/` (not `objects/` itself), deepest first.
    pub(crate) dirs_deepest_first: Vec<String>,
    /// Entries the cache did not write and leaves alone: symlinks, sockets,
    /// names that are not valid keys, anything deeper than a key can be.
    pub(crate) foreign: Vec<String>,
}

/// Walks `objects` without following symlinks.
pub(crate) fn walk_blocking(objects: &Path) -> Result<Walk> {
    let mut walk = Walk::default();
    let mut dirs: Vec<(usize, String)> = Vec::new();
    // (relative dir, depth of its entries)
    let mut stack: Vec<(String, usize)> = vec![(String::new(), 1)];
    while let Some((rel_dir, depth)) = stack.pop() {
        let abs_dir = objects.join(&rel_dir);
        let entries = fs::read_dir(&abs_dir).map_err(|e| Error::io("readdir", &abs_dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("readdir", &abs_dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                walk.foreign
                    .push(format!("{rel_dir}/{}", name.to_string_lossy()));
                continue;
            };
            let rel = if rel_dir.is_empty() {
                name.to_owned()
            } else {
                format!("{rel_dir}/{name}")
            };
            // DirEntry::metadata does not follow symlinks (lstat).
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Removed between readdir and lstat: nothing to account for.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("lstat", objects.join(&rel), e)),
            };
            let kind = meta.file_type();
            if kind.is_dir() && depth < KEY_DEPTH_MAX {
                dirs.push((depth, rel.clone()));
                stack.push((rel, depth + 1));
            } else if kind.is_file() && is_staging_name(&rel) {
                walk.staging.push(rel);
            } else if kind.is_file() && Key::new(&rel).is_ok() {
                let atime = meta.accessed().ok().map_or(0, ms_since_epoch);
                let mtime = meta.modified().ok().map_or(0, ms_since_epoch);
                walk.files.push(WalkFile {
                    key: rel,
                    bytes: meta.len(),
                    atime_ms: atime.max(mtime),
                });
            } else {
                walk.foreign.push(rel);
            }
        }
    }
    dirs.sort_by_key(|&(depth, _)| std::cmp::Reverse(depth));
    walk.dirs_deepest_first = dirs.into_iter().map(|(_, rel)| rel).collect();
    Ok(walk)
}

fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Open descriptors of a prepared cache root.
pub(crate) struct Prepared {
    pub(crate) root_fd: OwnedFd,
    pub(crate) objects_fd: OwnedFd,
    pub(crate) lock_fd: OwnedFd,
}

/// Creates `dir` and `dir/objects` if needed, takes the instance lock and
/// checks (or, for a new directory, writes) the layout file.
pub(crate) fn prepare_root_blocking(dir: &Path) -> Result<Prepared> {
    // Durably in its parent too: a root a crash undid would take every
    // committed object with it.
    ringstore_journal::storage::create_dir_all_durably_blocking(dir)
        .map_err(|e| Error::io("mkdir", dir, e))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| Error::io("open", &lock_path, e))?;
    let lock_fd = OwnedFd::from(lock);
    let locked = sys::try_lock_exclusive(std::os::fd::AsFd::as_fd(&lock_fd))
        .map_err(|e| Error::io("flock", &lock_path, e))?;
    if !locked {
        return Err(Error::Locked {
            path: dir.to_path_buf(),
        });
    }
    let root_fd = open_dir(dir)?;
    let layout_path = dir.join(LAYOUT_FILE);
    match fs::read_to_string(&layout_path) {
        Ok(found) if found == LAYOUT_CONTENTS => {}
        Ok(found) => {
            return Err(Error::UnsupportedLayout {
                path: layout_path,
                found,
                expected: LAYOUT_VERSION,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_layout(dir, &layout_path)?;
        }
        Err(e) => return Err(Error::io("read", &layout_path, e)),
    }
    let objects = dir.join(OBJECTS_DIR);
    match fs::create_dir(&objects) {
        Ok(()) => sync_dir(dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("mkdir", &objects, e)),
    }
    let objects_meta =
        fs::symlink_metadata(&objects).map_err(|e| Error::io("lstat", &objects, e))?;
    if !objects_meta.is_dir() {
        // A symlinked objects/ could lead anywhere.
        return Err(Error::io(
            "open",
            &objects,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "objects/ is not a directory",
            ),
        ));
    }
    let objects_fd = open_dir(&objects)?;
    Ok(Prepared {
        root_fd,
        objects_fd,
        lock_fd,
    })
}

fn write_layout(dir: &Path, layout_path: &Path) -> Result<()> {
    let tmp: PathBuf = dir.join(format!("{LAYOUT_FILE}.tmp"));
    let mut file = fs::File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    file.write_all(LAYOUT_CONTENTS.as_bytes())
        .map_err(|e| Error::io("write", &tmp, e))?;
    file.sync_data()
        .map_err(|e| Error::io("fdatasync", &tmp, e))?;
    fs::rename(&tmp, layout_path).map_err(|e| Error::io("rename", layout_path, e))?;
    sync_dir(dir)
}

fn open_dir(dir: &Path) -> Result<OwnedFd> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| Error::io("open", dir, e))?;
    Ok(OwnedFd::from(file))
}

fn sync_dir(dir: &Path) -> Result<()> {
    let file = fs::File::open(dir).map_err(|e| Error::io("open", dir, e))?;
    file.sync_all().map_err(|e| Error::io("fsync", dir, e))
}
