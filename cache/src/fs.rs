//! The cache root's layout on its disk: preparing it at open (the instance
//! lock, the layout file, `objects/`) and walking `objects/` (startup and
//! exhaustive trims). Everything goes through the cache's disk, so the same
//! code runs on the real disk and on the simulated one that can crash.

use ringstore_journal::storage::{errno, BufferedFile, EntryKind};
use std::path::{Path, PathBuf};

use crate::disk::CacheDisk;
use crate::error::{Error, Result};
use crate::format::{
    decode_object_checksum, LAYOUT_CONTENTS, LAYOUT_FILE, LAYOUT_VERSION, LOCK_FILE, OBJECTS_DIR,
    OBJECT_CHECKSUM_ATTRIBUTE,
};
use crate::key::{is_staging_name, Key, KEY_DEPTH_MAX};

/// A regular file found by the walk whose name is a valid key.
#[derive(Debug, Clone)]
pub(crate) struct WalkFile {
    pub(crate) key: String,
    pub(crate) bytes: u64,
    /// max(atime, mtime), ms since the epoch.
    pub(crate) atime_ms: u64,
    /// The size its checksum attribute records, if the walk read it
    /// (startup) and it holds one this build reads.
    pub(crate) recorded_bytes: Option<u64>,
}

/// Why an object file's size on disk bars it from being accounted or
/// read. The size is all it takes: nothing of the file is read or
/// allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SizeRefusal {
    /// Not the size its checksum records: changed or damaged since it was
    /// written, never to be served.
    NotAsRecorded { bytes: u64, recorded: u64 },
    /// Above the cache's byte limit, which no object the cache takes is: a
    /// sparse file, a damaged inode, or an object from before the limit
    /// was lowered.
    AboveLimit { bytes: u64, bytes_limit: u64 },
    /// It would take the cache's total past `u64::MAX` (startup).
    TotalPastMax { bytes: u64 },
}

impl std::fmt::Display for SizeRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            SizeRefusal::NotAsRecorded { bytes, recorded } => write!(
                f,
                "the file is {bytes} bytes, but its {OBJECT_CHECKSUM_ATTRIBUTE} attribute \
                 records {recorded}"
            ),
            SizeRefusal::AboveLimit { bytes, bytes_limit } => write!(
                f,
                "the file is {bytes} bytes, above the cache's byte limit of {bytes_limit}"
            ),
            SizeRefusal::TotalPastMax { bytes } => write!(
                f,
                "the file is {bytes} bytes, which would take the cache's total past u64::MAX"
            ),
        }
    }
}

/// Why an object file of `bytes` bytes on disk may be neither accounted
/// nor read, if it may not: a size other than the one its checksum
/// records (`recorded_bytes`), or above the cache's byte limit.
pub(crate) fn size_refusal(
    bytes: u64,
    recorded_bytes: Option<u64>,
    bytes_limit: u64,
) -> Option<SizeRefusal> {
    match recorded_bytes {
        Some(recorded) if recorded != bytes => Some(SizeRefusal::NotAsRecorded { bytes, recorded }),
        _ if bytes > bytes_limit => Some(SizeRefusal::AboveLimit { bytes, bytes_limit }),
        _ => None,
    }
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

/// Walks `objects` without following symlinks; `with_checksums` (startup)
/// reads each object file's checksum attribute too, for the size it
/// records.
pub(crate) async fn walk<S: CacheDisk>(
    disk: &S,
    objects: &Path,
    with_checksums: bool,
) -> Result<Walk> {
    let mut walk = Walk::default();
    let mut dirs: Vec<(usize, String)> = Vec::new();
    // (relative dir, depth of its entries)
    let mut stack: Vec<(String, usize)> = vec![(String::new(), 1)];
    while let Some((rel_dir, depth)) = stack.pop() {
        let abs_dir = objects.join(&rel_dir);
        let entries = if with_checksums {
            disk.list_dir_checksums(&abs_dir).await
        } else {
            disk.list_dir_meta(&abs_dir).await.map(|entries| {
                entries
                    .into_iter()
                    .map(|(name, meta)| (name, meta, None))
                    .collect()
            })
        }
        .map_err(|e| Error::io("readdir", &abs_dir, e))?;
        for (name, meta, checksum) in entries {
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
            let meta = match meta {
                Ok(meta) => meta,
                // Removed between the listing and the stat: nothing to
                // account for.
                Err(e) if errno(&e) == Some(libc::ENOENT) => continue,
                Err(e) => return Err(Error::io("lstat", objects.join(&rel), e)),
            };
            if meta.kind == EntryKind::Dir && depth < KEY_DEPTH_MAX {
                dirs.push((depth, rel.clone()));
                stack.push((rel, depth + 1));
            } else if meta.kind == EntryKind::File && is_staging_name(&rel) {
                walk.staging.push(rel);
            } else if meta.kind == EntryKind::File && Key::new(&rel).is_ok() {
                walk.files.push(WalkFile {
                    key: rel,
                    bytes: meta.len,
                    atime_ms: meta.accessed_ms,
                    recorded_bytes: checksum
                        .as_deref()
                        .and_then(|value| decode_object_checksum(value).ok())
                        .map(|digest| digest.bytes),
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

/// Takes the instance lock on `dir` (which exists), checks (or, for a new
/// directory, writes) the layout file and creates `objects/`, each durably.
/// Returns the lock, held for the life of the cache.
pub(crate) async fn prepare_root<S: CacheDisk>(disk: &S, dir: &Path) -> Result<S::Lock> {
    let lock_path = dir.join(LOCK_FILE);
    let lock = disk
        .try_lock(&lock_path, format!("{}\n", std::process::id()).as_bytes())
        .await
        .map_err(|e| Error::io("flock", &lock_path, e))?
        .ok_or_else(|| Error::Locked {
            path: dir.to_path_buf(),
        })?;
    let layout_path = dir.join(LAYOUT_FILE);
    match read_small_file(disk, &layout_path).await {
        Ok(found) if found == LAYOUT_CONTENTS.as_bytes() => {}
        Ok(found) => {
            return Err(Error::UnsupportedLayout {
                path: layout_path,
                found: String::from_utf8_lossy(&found).into_owned(),
                expected: LAYOUT_VERSION,
            })
        }
        Err(e) if errno(&e) == Some(libc::ENOENT) => write_layout(disk, dir, &layout_path).await?,
        Err(e) => return Err(Error::io("read", &layout_path, e)),
    }
    let objects = dir.join(OBJECTS_DIR);
    match disk.create_dir(&objects).await {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(libc::EEXIST) => {}
        Err(e) => return Err(Error::io("mkdir", &objects, e)),
    }
    // Synced whether this instance made `objects/` or found it: an earlier
    // one may have made it and died (or failed) before its fsync, and every
    // object below goes with its entry. One fsync per open.
    disk.sync_dir(dir)
        .await
        .map_err(|e| Error::io("fsync", dir, e))?;
    let objects_meta = disk
        .stat(&objects)
        .await
        .map_err(|e| Error::io("lstat", &objects, e))?;
    if objects_meta.kind != EntryKind::Dir {
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
    Ok(lock)
}

/// Largest layout file read: the layout line is a few dozen bytes.
const LAYOUT_FILE_BYTES_MAX: usize = 4096;

async fn read_small_file<S: CacheDisk>(disk: &S, path: &Path) -> std::io::Result<Vec<u8>> {
    let file = disk.open_buffered(path).await?;
    let read = file
        .read_at(0, LAYOUT_FILE_BYTES_MAX)
        .await
        .map(|b| b.to_vec());
    let _ = file.close().await;
    read
}

async fn write_layout<S: CacheDisk>(disk: &S, dir: &Path, layout_path: &Path) -> Result<()> {
    let tmp: PathBuf = dir.join(format!("{LAYOUT_FILE}.tmp"));
    match disk.remove(&tmp).await {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(libc::ENOENT) => {}
        Err(e) => return Err(Error::io("unlink", &tmp, e)),
    }
    let file = disk
        .create_buffered(&tmp)
        .await
        .map_err(|e| Error::io("create", &tmp, e))?;
    let bytes = LAYOUT_CONTENTS.as_bytes();
    let written = file
        .write_at(bytes.to_vec(), 0)
        .await
        .map_err(|e| Error::io("write", &tmp, e))?;
    if written != bytes.len() {
        return Err(Error::io(
            "write",
            &tmp,
            std::io::Error::new(std::io::ErrorKind::WriteZero, "short write of the layout"),
        ));
    }
    file.sync()
        .await
        .map_err(|e| Error::io("fdatasync", &tmp, e))?;
    let _ = file.close().await;
    disk.rename(&tmp, layout_path)
        .await
        .map_err(|e| Error::io("rename", layout_path, e))?;
    disk.sync_dir(dir)
        .await
        .map_err(|e| Error::io("fsync", dir, e))
}
