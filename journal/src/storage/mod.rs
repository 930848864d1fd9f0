//! Storage backends: the small set of file and directory calls the journal,
//! the snapshot store and the shard's directory make (and the cache is to
//! make), behind one trait so the same code runs on real files and on an
//! in-memory disk that can crash.
//!
//! * [`DmaStorage`] — glommio DMA files (O_DIRECT, io_uring). The real path.
//! * [`MemStorage`] — an in-memory disk that keeps what was written apart
//!   from what was made durable, so a simulated crash drops exactly what a
//!   power loss may drop, and that can inject failures (EIO, ENOSPC, a failed
//!   fsync).
//!
//! Contracts every backend keeps:
//! * `write_at` and `read_at` take block-aligned offsets and lengths
//!   ([`crate::format::BLOCK_BYTES`]).
//! * A write is durable only once a later `sync` of its file returned `Ok`.
//! * A create, rename, link, remove or directory creation or removal is
//!   durable only once a later `sync_dir` of its directory returned `Ok`.
//! * Two kinds of file: [`StorageFile`] (O_DIRECT on real disks: aligned
//!   buffers, offsets and lengths; logs and snapshots) and [`BufferedFile`]
//!   (the page cache: any offset and length; objects of any size that are
//!   read back often, small metadata files). Both obey the rules above.
//! * After a failed `write_at` or `sync` nothing about the file's contents is
//!   promised; the caller poisons itself.
//!
//! The traits use `async fn`: every backend runs on one glommio reactor
//! thread, so the futures need not be `Send`.

#[cfg(feature = "sim")]
pub mod contract;
mod dma;
mod mem;

pub use dma::{DmaFileHandle, DmaStorage, FileLock, PageCacheFile};
pub use mem::{
    FaultConfig, FaultCounts, MemBuf, MemBufferedFile, MemFile, MemLock, MemStorage,
    SIM_SECTOR_BYTES,
};

use std::{
    ffi::OsString,
    io,
    ops::Deref,
    path::{Path, PathBuf},
};

/// A writable, aligned buffer that a [`StorageFile`] can write.
pub trait IoBuf {
    /// The bytes.
    fn as_bytes(&self) -> &[u8];
    /// The bytes, mutable.
    fn as_bytes_mut(&mut self) -> &mut [u8];
    /// Shortens the buffer to `len` bytes (an aligned length).
    fn trim_to(&mut self, len: usize);
}

/// A directory of files: create, open, list, remove, and make those durable.
#[expect(
    async_fn_in_trait,
    reason = "backends run on one reactor thread; futures need not be Send"
)]
pub trait Storage: Clone + 'static {
    /// The file handle type.
    type File: StorageFile;
    /// The buffered (page cache) file handle type.
    type Buffered: BufferedFile;
    /// An exclusive lock, held until dropped (see [`Storage::try_lock`]).
    type Lock: std::fmt::Debug + 'static;

    /// Creates one directory (its parent must exist); `AlreadyExists` if
    /// `path` exists. Durable after `sync_dir` of its parent. See
    /// [`prepare_dir`] for a whole path made durable.
    async fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Checks that the existing `dir` can hold journal files (for real
    /// disks: O_DIRECT support).
    async fn check_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates a new file for reading and writing; fails if it exists. With
    /// `write_through` every write is durable when it completes (O_DSYNC), as
    /// if followed by an fdatasync.
    async fn create(&self, path: &Path, write_through: bool) -> io::Result<Self::File>;
    /// Opens an existing regular file (or a symlink to one) for reading
    /// and writing. Anything else at `path` (a FIFO, a device, a
    /// directory) is refused with `InvalidInput` (or the open's own
    /// error), never read as a file.
    async fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Opens an existing file for reading and writing as
    /// [`Storage::create`] makes one (with `write_through`, O_DSYNC): a
    /// file renamed while open is opened again under its new name, since a
    /// handle may keep naming the path it was opened by (glommio's does,
    /// for the file's length and for buffered reads).
    async fn open_for_writes(&self, path: &Path, write_through: bool) -> io::Result<Self::File>;
    /// Removes a file. Durable after `sync_dir`.
    async fn remove(&self, path: &Path) -> io::Result<()>;
    /// Atomically renames `from` to `to` in the same directory, replacing
    /// `to` if it exists: a crash leaves one name or the other, never a
    /// partial file. Durable after `sync_dir`.
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes creates and removes in `dir` durable.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries in `dir`.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// The entries of `dir` with what each is ([`Storage::stat`]'s answer,
    /// per entry: one removed since the listing is `NotFound`). A backend
    /// overrides it where one pass is much cheaper than a `stat` per name
    /// (the cache's disk: one directory descriptor, off the reactor).
    async fn list_dir_meta(&self, dir: &Path) -> io::Result<Vec<(OsString, io::Result<FileMeta>)>> {
        let mut entries = Vec::new();
        for name in self.list_dir(dir)? {
            let meta = self.stat(&dir.join(&name)).await;
            entries.push((name, meta));
        }
        Ok(entries)
    }
    /// Creates a new buffered file (fails with `AlreadyExists` if `path`
    /// exists: exclusive, so two writers never share one name). Durable
    /// after `sync_dir` of its directory; its bytes after its `sync`.
    async fn create_buffered(&self, path: &Path) -> io::Result<Self::Buffered>;
    /// Opens an existing regular file for buffered reads (read-only: a
    /// file another owner made read-only opens too). Anything else at
    /// `path` (a directory, a FIFO, a device) is refused with
    /// `InvalidInput`, without blocking on it.
    async fn open_buffered(&self, path: &Path) -> io::Result<Self::Buffered>;
    /// Gives the file at `from` a second name `to` (a hard link), never
    /// replacing: `AlreadyExists` if `to` exists. The new name is durable
    /// after `sync_dir` of `to`'s directory; `from` is unchanged.
    async fn link(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Gives the open `file` the name `to` (a hard link of the file that
    /// is open, whatever happened to the name it was opened by), never
    /// replacing: `AlreadyExists` if `to` exists; `CrossesDevices` (EXDEV)
    /// across filesystems. Durable after `sync_dir` of `to`'s directory.
    async fn link_file(&self, file: &Self::Buffered, to: &Path) -> io::Result<()>;
    /// What `path` is, not following a final symbolic link; `NotFound` if
    /// nothing is there.
    async fn stat(&self, path: &Path) -> io::Result<FileMeta>;
    /// Removes an empty directory (`DirectoryNotEmpty` otherwise). Durable
    /// after `sync_dir` of its parent.
    async fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Size and free space of the filesystem holding `dir`.
    fn fs_space(&self, dir: &Path) -> io::Result<FsSpace>;
    /// Takes an exclusive lock on the file `path` (created if missing, not
    /// synced: the lock, not the file, is what matters), or `None` if
    /// another holder has it. Released when the lock is dropped, and by a
    /// crash of the process holding it. The holder writes `note` into the
    /// file, best effort: a hint that names it to the next one refused
    /// (read it with `open_buffered`).
    async fn try_lock(&self, path: &Path, note: &[u8]) -> io::Result<Option<Self::Lock>>;
    /// The device whose speed timing I/O in `dir` measures (an id to key
    /// measurements by), or `None` when the clock says nothing about a
    /// device: a simulated disk, whose runs must not depend on timing.
    /// [`crate::Durability::Auto`] probes only where this is `Some`.
    fn latency_device(&self, dir: &Path) -> io::Result<Option<u64>> {
        let _ = dir;
        Ok(None)
    }
}

/// One open file.
#[expect(
    async_fn_in_trait,
    reason = "backends run on one reactor thread; futures need not be Send"
)]
pub trait StorageFile: 'static {
    /// Buffer type for writes.
    type Buf: IoBuf;
    /// Buffer type returned by reads.
    type ReadBuf: Deref<Target = [u8]>;

    /// Allocates an aligned write buffer of `len` bytes. Its contents are
    /// unspecified: the caller fills every byte it writes.
    fn alloc_buf(&self, len: usize) -> Self::Buf;
    /// Writes all of `buf` at `pos`. Takes the buffer by value: the kernel
    /// owns it while the write is in flight.
    async fn write_at(&self, buf: Self::Buf, pos: u64) -> io::Result<()>;
    /// Reads up to `len` bytes at `pos`; shorter only at end of file.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Self::ReadBuf>;
    /// fdatasync: makes completed writes durable.
    async fn sync(&self) -> io::Result<()>;
    /// Whether [`StorageFile::write_blocking`] and
    /// [`StorageFile::sync_blocking`] are blocking system calls on the
    /// calling thread (default: no; they are then `write_at` and `sync`).
    fn has_blocking_calls(&self) -> bool {
        false
    }
    /// [`StorageFile::write_at`] as one blocking system call on the calling
    /// thread, where the backend has one ([`StorageFile::has_blocking_calls`]):
    /// no hand-off through the reactor's ring, and the reactor runs nothing
    /// else until it returns.
    async fn write_blocking(&self, buf: Self::Buf, pos: u64) -> io::Result<()> {
        self.write_at(buf, pos).await
    }
    /// [`StorageFile::sync`] as a blocking system call, as
    /// [`StorageFile::write_blocking`] is.
    async fn sync_blocking(&self) -> io::Result<()> {
        self.sync().await
    }
    /// Reserves `len` bytes of disk space for the file (fallocate). May fail
    /// with `EOPNOTSUPP`; the caller then writes zeros instead.
    async fn allocate(&self, len: u64) -> io::Result<()>;
    /// Sets the file's length to `len` (ftruncate): a shrink frees the
    /// blocks past it. Like a write, durable after [`StorageFile::sync`];
    /// a crash before may leave either length.
    async fn truncate(&self, len: u64) -> io::Result<()>;
    /// Current length in bytes.
    async fn file_len(&self) -> io::Result<u64>;
    /// Closes the handle.
    async fn close(self) -> io::Result<()>;
}

/// A buffered file: reads and writes of any offset and length through the
/// page cache (on real disks), with the same durability rules as
/// [`StorageFile`].
#[expect(
    async_fn_in_trait,
    reason = "backends run on one reactor thread; futures need not be Send"
)]
pub trait BufferedFile: std::fmt::Debug + 'static {
    /// Buffer type returned by reads.
    type ReadBuf: Deref<Target = [u8]> + 'static;

    /// Writes `data` at `pos` and returns how many bytes it wrote: fewer
    /// than asked only when the write stopped partway (as pwrite(2) may),
    /// and then writing the rest again says why (ENOSPC, EIO). Takes the
    /// bytes by value: the kernel owns them while the write is in flight.
    async fn write_at(&self, data: Vec<u8>, pos: u64) -> io::Result<usize>;
    /// Reads up to `len` bytes at `pos`; shorter only at end of file.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Self::ReadBuf>;
    /// fdatasync: makes completed writes durable.
    async fn sync(&self) -> io::Result<()>;
    /// Current length in bytes.
    async fn file_len(&self) -> io::Result<u64>;
    /// What the open file is (its kind, length and identity: the same as
    /// [`Storage::stat`] of any of its names gives).
    async fn meta(&self) -> io::Result<FileMeta>;
    /// Closes the handle.
    async fn close(self) -> io::Result<()>;
}

/// What [`Storage::fs_space`] tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    /// Bytes the filesystem holds in all.
    pub total_bytes: u64,
    /// Bytes free to an unprivileged writer (`f_bavail`).
    pub avail_bytes: u64,
}

/// What a path names, as [`Storage::stat`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// Anything else: a symbolic link, a device, a socket, a pipe.
    Other,
}

/// What [`Storage::stat`] tells about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    /// What the path names.
    pub kind: EntryKind,
    /// Bytes (a regular file's length; otherwise what the filesystem says).
    pub len: u64,
    /// The same for every name of one file (hard links), different for two
    /// files that exist at once (on real disks: device and inode).
    pub id: (u64, u64),
    /// Names the file has (hard links; 1 for a directory in the simulated
    /// disk, what the filesystem says on real ones).
    pub links: u64,
    /// The later of its last access and last change, in milliseconds since
    /// the Unix epoch (0 where the disk keeps no times: the simulated one).
    pub accessed_ms: u64,
}

impl From<&std::fs::Metadata> for FileMeta {
    /// What `lstat` or `fstat` said.
    fn from(meta: &std::fs::Metadata) -> FileMeta {
        use std::os::unix::fs::MetadataExt as _;
        let file_type = meta.file_type();
        let kind = if file_type.is_file() {
            EntryKind::File
        } else if file_type.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::Other
        };
        let ms = |time: io::Result<std::time::SystemTime>| {
            time.ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        FileMeta {
            kind,
            len: meta.len(),
            id: (meta.dev(), meta.ino()),
            links: meta.nlink(),
            accessed_ms: ms(meta.accessed()).max(ms(meta.modified())),
        }
    }
}

/// Most directories [`create_dir_all_durably`] creates for one path: a
/// bound on a hostile or looping path, far above any real depth.
pub const DIR_DEPTH_MAX: usize = 64;

/// Creates `dir` (and the parents it lacks) durably, then checks that it
/// can hold journal files ([`Storage::check_dir`]).
pub async fn prepare_dir<S: Storage>(storage: &S, dir: &Path) -> io::Result<()> {
    create_dir_all_durably(storage, dir).await?;
    storage.check_dir(dir).await
}

/// Creates `dir` and every parent it lacks, one level at a time, and makes
/// each level's entry durable in its parent (outermost first), so that
/// nothing written beneath `dir` later can be lost with a directory entry a
/// crash undid. Every level it reaches is synced, found ones too: another
/// creator (or a process that crashed right after creating it) may not
/// have synced it yet. `.` components are ignored (`a/b/.` is `a/b`).
pub async fn create_dir_all_durably<S: Storage>(storage: &S, dir: &Path) -> io::Result<()> {
    let dir: PathBuf = dir.components().collect();
    let mut walk = DirWalk::new(&dir);
    while let Some(level) = walk.next_level()? {
        let made = storage.create_dir(level).await;
        walk.record(made)?;
    }
    for level in walk.reached {
        storage.sync_dir(parent_dir(level)).await?;
    }
    Ok(())
}

/// [`create_dir_all_durably`] with blocking `std::fs` calls, for what runs
/// before a reactor or on a blocking thread (a data directory, a cache
/// root, an object-store root): the same levels, the same syncs.
pub fn create_dir_all_durably_blocking(dir: &Path) -> io::Result<()> {
    let dir: PathBuf = dir.components().collect();
    let mut walk = DirWalk::new(&dir);
    while let Some(level) = walk.next_level()? {
        walk.record(std::fs::create_dir(level))?;
    }
    for level in walk.reached {
        std::fs::File::open(parent_dir(level))?.sync_all()?;
    }
    Ok(())
}

/// The walk of [`create_dir_all_durably`], apart from its I/O: which level
/// to create next, and what each `mkdir`'s result means.
struct DirWalk<'a> {
    dir: &'a Path,
    /// Levels still to create, innermost first.
    pending: Vec<&'a Path>,
    /// Levels that exist now, in the order they came to (outermost first).
    reached: Vec<&'a Path>,
    attempts: usize,
}

impl<'a> DirWalk<'a> {
    fn new(dir: &'a Path) -> DirWalk<'a> {
        DirWalk {
            dir,
            pending: vec![dir],
            reached: Vec::new(),
            attempts: 0,
        }
    }

    /// The level to create next; `None` once `dir` exists.
    fn next_level(&mut self) -> io::Result<Option<&'a Path>> {
        self.attempts += 1;
        if self.attempts > 2 * DIR_DEPTH_MAX {
            return Err(self.too_deep());
        }
        Ok(self.pending.last().copied())
    }

    /// Records what creating the level [`DirWalk::next_level`] gave
    /// returned: created or found, it is reached; missing its parent, the
    /// parent goes first.
    fn record(&mut self, made: io::Result<()>) -> io::Result<()> {
        let level = self.pending.last().copied().expect("a level was pending");
        match made {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return match level.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => {
                        if self.pending.len() >= DIR_DEPTH_MAX {
                            return Err(self.too_deep());
                        }
                        self.pending.push(parent);
                        Ok(())
                    }
                    _ => Err(e),
                };
            }
            Err(e) => return Err(e),
        }
        self.reached.push(level);
        self.pending.pop();
        Ok(())
    }

    fn too_deep(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: more than {DIR_DEPTH_MAX} directory levels to create",
                self.dir.display()
            ),
        )
    }
}

/// Bytes per read and write of [`copy_file`].
const COPY_STEP_BYTES: usize = 1 << 20;

/// Removes `path` and, if it is a directory, everything beneath it, deepest
/// first (not following symlinks: a symlink is removed, not its target).
/// Nothing is synced: durable after `sync_dir` of each directory changed
/// (the caller's parent of `path` is enough once `path` is gone). A path
/// already gone is fine.
pub async fn remove_tree<S: Storage>(storage: &S, path: &Path) -> io::Result<()> {
    let meta = match storage.stat(path).await {
        Ok(meta) => meta,
        Err(e) if errno(&e) == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.kind != EntryKind::Dir {
        return storage.remove(path).await;
    }
    // An explicit stack, deepest last: a hostile depth cannot overflow ours.
    let mut pending = vec![(path.to_path_buf(), false)];
    while let Some((dir, listed)) = pending.pop() {
        if listed {
            match storage.remove_dir(&dir).await {
                Err(e) if errno(&e) != Some(libc::ENOENT) => return Err(e),
                _ => continue,
            }
        }
        pending.push((dir.clone(), true));
        for (name, meta) in storage.list_dir_meta(&dir).await? {
            let entry = dir.join(name);
            match meta {
                Ok(meta) if meta.kind == EntryKind::Dir => pending.push((entry, false)),
                Ok(_) => match storage.remove(&entry).await {
                    Err(e) if errno(&e) != Some(libc::ENOENT) => return Err(e),
                    _ => {}
                },
                Err(e) if errno(&e) == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Copies the file at `from` to a new file at `to` (which must not exist)
/// through buffered files and syncs the copy's bytes (its name is durable
/// after `sync_dir` of its directory). Returns the bytes copied.
pub async fn copy_file<S: Storage>(storage: &S, from: &Path, to: &Path) -> io::Result<u64> {
    let source = storage.open_buffered(from).await?;
    let copied = async {
        let target = storage.create_buffered(to).await?;
        let written = async {
            let mut offset = 0u64;
            // Bounded by the source's size: every read returns bytes or ends.
            loop {
                let read = source.read_at(offset, COPY_STEP_BYTES).await?;
                if read.is_empty() {
                    break;
                }
                let mut piece = read.to_vec();
                let mut at = offset;
                while !piece.is_empty() {
                    let n = target.write_at(piece.clone(), at).await?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            format!("{}: wrote 0 bytes", to.display()),
                        ));
                    }
                    piece.drain(..n.min(piece.len()));
                    at += n as u64;
                }
                offset = at;
            }
            target.sync().await?;
            Ok(offset)
        }
        .await;
        let _ = target.close().await;
        written
    }
    .await;
    let _ = source.close().await;
    copied
}

/// Pause between two steps of [`shrink_in_steps`]: the other writers'
/// syncs go between them.
pub const SHRINK_STEP_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Shrinks `file` (of `len` bytes) by `step_bytes` at a time, each step
/// synced and followed by [`SHRINK_STEP_PAUSE`], while `keep_going()` holds;
/// returns the length reached (0: nothing left to free). For a file about
/// to be removed: removing a large file at once on a filesystem with
/// online discard frees every block of it inside one journal commit, and
/// every fdatasync on that filesystem waits for the discard (140-220 ms
/// per GiB on this project's test host), where a few MiB per commit go
/// unnoticed. The caller removes the file after; a crash in between
/// leaves a shorter file to remove, so only a file no reader will open
/// again belongs here.
pub async fn shrink_in_steps<F: StorageFile>(
    file: &F,
    len: u64,
    step_bytes: u64,
    mut keep_going: impl FnMut() -> bool,
) -> io::Result<u64> {
    let step = step_bytes.max(1);
    let mut len = len;
    while len > 0 && keep_going() {
        len = len.saturating_sub(step);
        file.truncate(len).await?;
        file.sync().await?;
        glommio::timer::sleep(SHRINK_STEP_PAUSE).await;
    }
    Ok(len)
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// The OS error number of `err`: its raw code, or for an error made from
/// an [`io::ErrorKind`] alone (the simulated disk's, glommio's converted
/// ones) the number of that kind. Callers that act on particular codes
/// (ENOENT, EEXIST, ENOTDIR...) match this, so one match serves every
/// backend.
pub fn errno(err: &io::Error) -> Option<i32> {
    if let Some(raw) = err.raw_os_error() {
        return Some(raw);
    }
    Some(match err.kind() {
        io::ErrorKind::NotFound => libc::ENOENT,
        io::ErrorKind::AlreadyExists => libc::EEXIST,
        io::ErrorKind::NotADirectory => libc::ENOTDIR,
        io::ErrorKind::IsADirectory => libc::EISDIR,
        io::ErrorKind::DirectoryNotEmpty => libc::ENOTEMPTY,
        // EACCES or EPERM: which, the kind does not say (glommio's
        // conversions keep only the kind; `os_error` keeps the code).
        io::ErrorKind::PermissionDenied => libc::EACCES,
        io::ErrorKind::QuotaExceeded => libc::EDQUOT,
        io::ErrorKind::StorageFull => libc::ENOSPC,
        io::ErrorKind::CrossesDevices => libc::EXDEV,
        io::ErrorKind::Unsupported => libc::EOPNOTSUPP,
        io::ErrorKind::InvalidInput => libc::EINVAL,
        _ => return None,
    })
}

/// True if `err` is the OS error `errno`. glommio wraps OS errors in its own
/// type and converting back to `io::Error` keeps only the kind, so a kindless
/// match on the kind is accepted too.
pub(crate) fn is_errno(err: &io::Error, errno: i32) -> bool {
    if let Some(raw) = err.raw_os_error() {
        return raw == errno;
    }
    let kind = match errno {
        libc::ENOSPC => io::ErrorKind::StorageFull,
        libc::EOPNOTSUPP => io::ErrorKind::Unsupported,
        libc::EINVAL => io::ErrorKind::InvalidInput,
        _ => return false,
    };
    err.kind() == kind
}

/// A block that fails every read (a latent media error), found by
/// [`read_locating_unreadable`]; it travels inside the `io::Error` that
/// function returns (`io::Error::get_ref`, then `downcast_ref`).
#[derive(Debug)]
pub struct UnreadableBlock {
    /// File offset of the block ([`crate::format::BLOCK_BYTES`] aligned).
    pub offset: u64,
    /// The error its read alone returned.
    pub source: io::Error,
}

impl std::fmt::Display for UnreadableBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unreadable at byte offset {}: {}",
            self.offset, self.source
        )
    }
}

impl std::error::Error for UnreadableBlock {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl UnreadableBlock {
    /// The block `error` names, if [`read_locating_unreadable`] made it.
    pub fn in_error(error: &io::Error) -> Option<&UnreadableBlock> {
        error.get_ref()?.downcast_ref::<UnreadableBlock>()
    }
}

/// Reads `len` bytes at `pos` of `file`. If that fails, reads the range
/// again a block at a time (while `go_on()` holds), so that the error
/// names the first block that fails alone: an `io::Error` carrying an
/// [`UnreadableBlock`]. If every block reads alone (a transient failure),
/// or `go_on()` turns false, the first error comes back as it was. For the
/// scrubbers, whose job is to say where damage is.
pub async fn read_locating_unreadable<F: StorageFile>(
    file: &F,
    pos: u64,
    len: usize,
    go_on: &dyn Fn() -> bool,
) -> io::Result<F::ReadBuf> {
    let error = match file.read_at(pos, len).await {
        Ok(bytes) => return Ok(bytes),
        Err(error) => error,
    };
    let block_bytes = crate::format::BLOCK_BYTES;
    let end = pos.saturating_add(len as u64);
    let mut block = crate::format::align_down(pos, block_bytes);
    while block < end && go_on() {
        if let Err(source) = file.read_at(block, block_bytes as usize).await {
            return Err(io::Error::new(
                source.kind(),
                UnreadableBlock {
                    offset: block,
                    source,
                },
            ));
        }
        block += block_bytes;
    }
    Err(error)
}
