//! [`RootedDisk`]: the journal crate's [`Storage`] on the real disk, every
//! path resolved beneath one root directory without following a symbolic
//! link, the namespace calls submitted through the cache's own io_uring
//! ([`crate::sys`]).
//!
//! Why not [`DmaStorage`](ringstore_journal::storage::DmaStorage): a cache
//! directory holds names an attacker may influence (object keys), and a
//! symlink planted in it must never lead a write, link or unlink outside
//! it. Here each call opens the directory holding its path with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`) relative to the root's
//! descriptor and acts on the last name relative to that directory, so no
//! component is resolved twice. And glommio 0.9 has no `linkat`, `mkdirat`
//! or `statx`: those go through the cache's ring, which completes them off
//! the reactor thread.
//!
//! Paths are absolute. Beneath the root the disk was opened on (`root/a/b`)
//! they are resolved as above, and must be UTF-8 (keys are). A path
//! outside the root can only be read ([`Storage::open_buffered`],
//! [`Storage::stat`]) or linked from (the first path of [`Storage::link`]:
//! a file adopted into the cache): it is resolved by its absolute name,
//! not following a final symlink. Anything else outside the root is
//! refused (`InvalidInput`): the disk changes nothing but what lies
//! beneath its root. The contract is the trait's; the tests run the same
//! check as the journal crate runs on its two backends
//! (`ringstore_journal::storage::contract`).
//!
//! O_DIRECT files ([`Storage::create`], [`Storage::open`]): glommio opens
//! those only by path, so the path is checked beneath the root (its
//! directory opened as above) and then opened by its absolute name with
//! `O_NOFOLLOW`: a directory swapped for a symlink between the check and
//! the open is not caught. The cache uses buffered files only.

use crate::format::OBJECT_CHECKSUM_ATTRIBUTE;
use crate::sys::{self, Uring};
use ringstore_journal::storage::{
    BufferedFile as _, DmaFileHandle, DmaStorage, EntryKind, FileLock, FileMeta, FsSpace,
    MemStorage, PageCacheFile, Storage,
};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Mode of directories the disk creates.
const DIR_MODE: u32 = 0o755;
/// Mode of files the disk creates.
const FILE_MODE: u32 = 0o644;

/// [`Storage`] beneath one root directory (see the module docs). Cheap to
/// clone; `!Send`: use it on the glommio executor that opened it.
#[derive(Clone)]
pub struct RootedDisk {
    inner: Rc<Inner>,
}

struct Inner {
    // Declared first so it drops first: dropping the ring waits for its ops,
    // which hold the descriptors they use.
    uring: Uring,
    root: PathBuf,
    root_fd: Rc<OwnedFd>,
    /// For the O_DIRECT files, which glommio opens by path.
    dma: DmaStorage,
}

impl std::fmt::Debug for RootedDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootedDisk")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

/// Where a path is: the directory holding it, opened beneath the root, and
/// its last name in that directory. The root itself has no name here.
enum Place<'a> {
    Root,
    In(Rc<OwnedFd>, &'a str),
}

impl RootedDisk {
    /// A disk rooted at the existing directory `root` (which may itself be
    /// reached through symlinks: only what lies beneath it is checked).
    /// Call on a glommio executor thread: it starts the ring's reaper task.
    pub fn open(root: &Path) -> io::Result<RootedDisk> {
        let root_file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(root)?;
        Ok(RootedDisk {
            inner: Rc::new(Inner {
                uring: Uring::new()?,
                root: root.to_path_buf(),
                root_fd: Rc::new(OwnedFd::from(root_file)),
                dma: DmaStorage::new(),
            }),
        })
    }

    /// The root every path must lie beneath.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn is_beneath_root(&self, path: &Path) -> bool {
        path.starts_with(&self.inner.root)
    }

    /// `path` relative to the root (`""` for the root itself).
    fn relative<'a>(&self, path: &'a Path) -> io::Result<&'a str> {
        let rel = path.strip_prefix(&self.inner.root).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: not beneath the disk's root {}",
                    path.display(),
                    self.inner.root.display()
                ),
            )
        })?;
        rel.to_str().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not UTF-8", path.display()),
            )
        })
    }

    /// The directory holding `path` (opened `O_PATH`) and its last name
    /// (see [`Place`]).
    async fn place<'a>(&self, path: &'a Path) -> io::Result<Place<'a>> {
        let rel = self.relative(path)?;
        if rel.is_empty() {
            return Ok(Place::Root);
        }
        match rel.rsplit_once('/') {
            None => Ok(Place::In(Rc::clone(&self.inner.root_fd), rel)),
            Some((parent, leaf)) => {
                let dir = self.open_dir(parent, libc::O_PATH).await?;
                Ok(Place::In(dir, leaf))
            }
        }
    }

    /// Like [`Self::place`], for calls that act on a name: the root has none.
    async fn named<'a>(&self, path: &'a Path) -> io::Result<(Rc<OwnedFd>, &'a str)> {
        match self.place(path).await? {
            Place::In(dir, leaf) => Ok((dir, leaf)),
            Place::Root => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: the disk's root itself", path.display()),
            )),
        }
    }

    /// Opens the directory `rel` (relative to the root) beneath the root.
    async fn open_dir(&self, rel: &str, mode: i32) -> io::Result<Rc<OwnedFd>> {
        if rel.is_empty() {
            return Ok(Rc::clone(&self.inner.root_fd));
        }
        let fd = self
            .inner
            .uring
            .open_beneath(&self.inner.root_fd, rel, mode | libc::O_DIRECTORY, 0)
            .await?;
        Ok(Rc::new(fd))
    }

    /// Opens the file at `path` beneath the root with `flags`.
    async fn open_file(&self, path: &Path, flags: i32) -> io::Result<OwnedFd> {
        let (dir, leaf) = self.named(path).await?;
        // openat2 takes a mode only with O_CREAT (EINVAL otherwise).
        let mode = if flags & libc::O_CREAT != 0 {
            FILE_MODE
        } else {
            0
        };
        self.inner.uring.open_beneath(&dir, leaf, flags, mode).await
    }

    /// `path` checked beneath the root for an O_DIRECT open by name.
    async fn checked_for_dma<'a>(&self, path: &'a Path) -> io::Result<&'a Path> {
        // The directory opens beneath the root, or the path is refused.
        self.named(path).await?;
        Ok(path)
    }
}

impl Storage for RootedDisk {
    type File = DmaFileHandle;
    type Buffered = PageCacheFile;
    type Lock = FileLock;

    async fn create_dir(&self, path: &Path) -> io::Result<()> {
        let (dir, leaf) = self.named(path).await?;
        self.inner.uring.mkdir(&dir, leaf, DIR_MODE).await
    }

    async fn check_dir(&self, dir: &Path) -> io::Result<()> {
        let rel = self.relative(dir)?;
        self.open_dir(rel, libc::O_PATH).await.map(drop)
    }

    async fn create(&self, path: &Path, write_through: bool) -> io::Result<DmaFileHandle> {
        let path = self.checked_for_dma(path).await?;
        self.inner.dma.create(path, write_through).await
    }

    async fn open(&self, path: &Path) -> io::Result<DmaFileHandle> {
        let path = self.checked_for_dma(path).await?;
        self.inner.dma.open(path).await
    }

    async fn open_for_writes(&self, path: &Path, write_through: bool) -> io::Result<DmaFileHandle> {
        let path = self.checked_for_dma(path).await?;
        self.inner.dma.open_for_writes(path, write_through).await
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        let (dir, leaf) = self.named(path).await?;
        self.inner.uring.unlink(&dir, leaf, false).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if from.parent() != to.parent() {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        let (dir, from_leaf) = self.named(from).await?;
        let to_leaf = self.relative(to)?.rsplit('/').next().unwrap_or_default();
        self.inner.uring.rename(&dir, from_leaf, to_leaf).await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let rel = self.relative(dir)?;
        let fd = self.open_dir(rel, libc::O_RDONLY).await?;
        self.inner.uring.fsync(&fd).await
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let rel = self.relative(dir)?;
        let fd = sys::open_beneath_blocking(&self.inner.root_fd, rel)?;
        // The open descriptor, named through /proc: nothing is resolved
        // again by name.
        std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect()
    }

    async fn list_dir_meta(&self, dir: &Path) -> io::Result<Vec<(OsString, io::Result<FileMeta>)>> {
        let entries = self.list_entries(dir, false).await?;
        Ok(entries
            .into_iter()
            .map(|(name, meta, _)| (name, meta))
            .collect())
    }

    fn latency_device(&self, dir: &Path) -> io::Result<Option<u64>> {
        self.inner.dma.latency_device(dir)
    }

    fn fs_space(&self, dir: &Path) -> io::Result<FsSpace> {
        let rel = self.relative(dir)?;
        // The root's own descriptor for the root (what the cache's free-space
        // floor asks about at every reservation): no open per call.
        let space = if rel.is_empty() {
            sys::fs_space(std::os::fd::AsFd::as_fd(&*self.inner.root_fd))?
        } else {
            let fd = sys::open_beneath_blocking(&self.inner.root_fd, rel)?;
            sys::fs_space(std::os::fd::AsFd::as_fd(&fd))?
        };
        Ok(FsSpace {
            total_bytes: space.total_bytes,
            avail_bytes: space.avail_bytes,
        })
    }

    async fn create_buffered(&self, path: &Path) -> io::Result<PageCacheFile> {
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR;
        let fd = self.open_file(path, flags).await?;
        Ok(PageCacheFile::new(sys::buffered_file_from_fd(fd)))
    }

    async fn open_buffered(&self, path: &Path) -> io::Result<PageCacheFile> {
        if !self.is_beneath_root(path) {
            return self.inner.dma.open_buffered(path).await;
        }
        // O_NONBLOCK: a FIFO planted at `path` cannot block the open; it is
        // cleared before any read (io_uring would answer EAGAIN).
        let fd = self
            .open_file(path, libc::O_RDONLY | libc::O_NONBLOCK)
            .await?;
        if !sys::is_regular_file(std::os::fd::AsFd::as_fd(&fd))? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a regular file", path.display()),
            ));
        }
        sys::clear_nonblock(std::os::fd::AsFd::as_fd(&fd))?;
        Ok(PageCacheFile::new(sys::buffered_file_from_fd(fd)))
    }

    async fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (to_dir, to_leaf) = self.named(to).await?;
        let (from_dir, from_leaf) = if self.is_beneath_root(from) {
            self.named(from).await?
        } else {
            // Adopting a file from outside: its directory by name.
            let dir = from.parent().unwrap_or(Path::new("/"));
            let leaf = from
                .file_name()
                .and_then(|leaf| leaf.to_str())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{}: no UTF-8 file name", from.display()),
                    )
                })?;
            let dir_file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(dir)?;
            (Rc::new(OwnedFd::from(dir_file)), leaf)
        };
        self.inner
            .uring
            .link(&from_dir, from_leaf, &to_dir, to_leaf)
            .await
    }

    async fn link_file(&self, file: &PageCacheFile, to: &Path) -> io::Result<()> {
        let (to_dir, to_leaf) = self.named(to).await?;
        // A duplicate of the file's descriptor goes with the op: if this
        // future is dropped while the link is in the kernel, the file may
        // be closed and its number reused, and /proc/self/fd/N must still
        // name this file when the kernel resolves it.
        let src = Rc::new(sys::dup_fd(std::os::fd::AsRawFd::as_raw_fd(file))?);
        self.inner.uring.link_fd(&src, &to_dir, to_leaf).await
    }

    async fn stat(&self, path: &Path) -> io::Result<FileMeta> {
        if !self.is_beneath_root(path) {
            return self.inner.dma.stat(path).await;
        }
        let info = match self.place(path).await? {
            Place::Root => self.inner.uring.stat_fd(&self.inner.root_fd).await?,
            Place::In(dir, leaf) => self.inner.uring.stat_nofollow(&dir, leaf).await?,
        };
        let kind = if info.is_file {
            EntryKind::File
        } else if info.is_dir {
            EntryKind::Dir
        } else {
            EntryKind::Other
        };
        Ok(FileMeta {
            kind,
            len: info.bytes,
            id: (info.dev, info.ino),
            links: info.links,
            accessed_ms: info.accessed_ms,
        })
    }

    async fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let (dir, leaf) = self.named(path).await?;
        self.inner.uring.unlink(&dir, leaf, true).await
    }

    async fn try_lock(&self, path: &Path, note: &[u8]) -> io::Result<Option<FileLock>> {
        let fd = self.open_file(path, libc::O_CREAT | libc::O_RDWR).await?;
        let Some(lock) = FileLock::try_new(std::fs::File::from(fd))? else {
            return Ok(None);
        };
        lock.write_note(note);
        Ok(Some(lock))
    }
}

/// What a cache needs of its disk beyond [`Storage`]: the disk for its
/// root, and a way to let metadata calls already handed to the kernel
/// finish (a cache dropped like a crash must not change its directory
/// after the next instance opened it, nor a task `shutdown` cancelled in
/// the middle of the shutdown's own tracker persist).
#[expect(
    async_fn_in_trait,
    reason = "disks run on one reactor thread; futures need not be Send"
)]
pub trait CacheDisk: Storage {
    /// The disk a cache rooted at `root` uses, `given` by the builder or
    /// made here, with `root` (and the directories above it it lacks)
    /// created durably.
    async fn for_root(given: Option<Self>, root: &Path) -> io::Result<Self>;
    /// Metadata calls handed to the kernel and not finished yet.
    fn ops_in_flight(&self) -> usize;
    /// Blocks until no metadata call is in flight (bounded by the ring's
    /// size: each is one short call).
    fn wait_for_in_flight(&self);
    /// Records `checksum` as `file`'s object checksum (the
    /// [`OBJECT_CHECKSUM_ATTRIBUTE`] extended attribute) and makes the
    /// file's data and that attribute durable (`fsync`, not `fdatasync`:
    /// an attribute is metadata no data read needs).
    async fn seal_object(&self, file: &Self::Buffered, checksum: &[u8]) -> io::Result<()>;
    /// `file`'s object checksum attribute, `None` if it has none.
    async fn object_checksum(&self, file: &Self::Buffered) -> io::Result<Option<Vec<u8>>>;
    /// `dir`'s entries as [`Storage::list_dir_meta`] gives them, each
    /// regular file's with its object checksum attribute: `None` if it has
    /// none or it could not be read (the startup walk then knows the file's
    /// size only). Here one open per file; the real disk reads the
    /// attributes in the listing's own pass.
    async fn list_dir_checksums(&self, dir: &Path) -> io::Result<Vec<ListedEntry>> {
        let entries = self.list_dir_meta(dir).await?;
        let mut listed = Vec::with_capacity(entries.len());
        for (name, meta) in entries {
            let checksum = match &meta {
                Ok(meta) if meta.kind == EntryKind::File => {
                    let path = dir.join(&name);
                    let read = async {
                        let file = self.open_buffered(&path).await?;
                        let checksum = self.object_checksum(&file).await;
                        let _ = file.close().await;
                        checksum
                    }
                    .await;
                    read.unwrap_or_else(|error| {
                        tracing::debug!(%error, path = %path.display(), "reading a checksum attribute");
                        None
                    })
                }
                _ => None,
            };
            listed.push((name, meta, checksum));
        }
        Ok(listed)
    }
}

/// One entry of [`CacheDisk::list_dir_checksums`]: its name, what an
/// `lstat` of it says, and a regular file's object checksum attribute.
pub type ListedEntry = (OsString, io::Result<FileMeta>, Option<Vec<u8>>);

impl CacheDisk for RootedDisk {
    async fn for_root(given: Option<Self>, root: &Path) -> io::Result<Self> {
        if let Some(disk) = given {
            if disk.root() == root {
                return Ok(disk);
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a disk rooted at {} given for a cache at {}",
                    disk.root().display(),
                    root.display()
                ),
            ));
        }
        let made = root.to_path_buf();
        glommio::executor()
            .spawn_blocking(move || {
                ringstore_journal::storage::create_dir_all_durably_blocking(&made)
            })
            .await?;
        RootedDisk::open(root)
    }

    fn ops_in_flight(&self) -> usize {
        self.inner.uring.ops_in_flight()
    }

    fn wait_for_in_flight(&self) {
        self.inner.uring.wait_for_in_flight();
    }

    async fn seal_object(&self, file: &PageCacheFile, checksum: &[u8]) -> io::Result<()> {
        // Set before the fsync, which makes both durable.
        sys::set_xattr(file.as_raw_fd(), OBJECT_CHECKSUM_ATTRIBUTE, checksum)?;
        let fd = Rc::new(sys::dup_fd(file.as_raw_fd())?);
        self.inner.uring.fsync(&fd).await
    }

    async fn object_checksum(&self, file: &PageCacheFile) -> io::Result<Option<Vec<u8>>> {
        sys::get_xattr(file.as_raw_fd(), OBJECT_CHECKSUM_ATTRIBUTE)
    }

    async fn list_dir_checksums(&self, dir: &Path) -> io::Result<Vec<ListedEntry>> {
        self.list_entries(dir, true).await
    }
}

impl RootedDisk {
    /// `dir`'s entries, each with an lstat of it and, `with_checksums`, a
    /// regular file's object checksum attribute (`None` otherwise, or if it
    /// could not be read). One pass on glommio's blocking pool: readdir, then
    /// per entry an lstat (fstatat, AT_SYMLINK_NOFOLLOW) and the attribute's
    /// `lgetxattr`, relative to the directory's descriptor. A ring round trip
    /// per name (an open and a close per file for the attribute) would take
    /// three times as long for 100,000 objects, and the reactor must not wait
    /// on a walk (an exhaustive trim walks while the shard serves).
    async fn list_entries(&self, dir: &Path, with_checksums: bool) -> io::Result<Vec<ListedEntry>> {
        let rel = self.relative(dir)?;
        let fd = sys::open_beneath_blocking(&self.inner.root_fd, rel)?;
        glommio::executor()
            .spawn_blocking(move || -> io::Result<Vec<ListedEntry>> {
                // The open descriptor, named through /proc: nothing is
                // resolved again by name.
                let listing = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
                let mut entries = Vec::new();
                for entry in listing {
                    let entry = entry?;
                    let name = entry.file_name();
                    let meta = entry.metadata().map(|meta| FileMeta::from(&meta));
                    let checksum = match &meta {
                        Ok(meta) if with_checksums && meta.kind == EntryKind::File => {
                            let fd = std::os::fd::AsFd::as_fd(&fd);
                            sys::get_xattr_in(fd, &name, OBJECT_CHECKSUM_ATTRIBUTE).unwrap_or_else(
                                |error| {
                                    tracing::debug!(%error, ?name, "reading a checksum attribute");
                                    None
                                },
                            )
                        }
                        _ => None,
                    };
                    entries.push((name, meta, checksum));
                }
                Ok(entries)
            })
            .await
    }
}

/// The simulated disk, for the cache's model checker and tests: every call
/// completes before it returns, so nothing is ever in flight.
impl CacheDisk for MemStorage {
    async fn for_root(given: Option<Self>, root: &Path) -> io::Result<Self> {
        let disk = given.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a cache on the simulated disk needs the disk (CacheBuilder::disk)",
            )
        })?;
        ringstore_journal::storage::create_dir_all_durably(&disk, root).await?;
        Ok(disk)
    }

    fn ops_in_flight(&self) -> usize {
        0
    }

    fn wait_for_in_flight(&self) {}

    async fn seal_object(
        &self,
        file: &ringstore_journal::storage::MemBufferedFile,
        checksum: &[u8],
    ) -> io::Result<()> {
        file.set_attribute(OBJECT_CHECKSUM_ATTRIBUTE, checksum)
            .await?;
        file.sync_all().await
    }

    async fn object_checksum(
        &self,
        file: &ringstore_journal::storage::MemBufferedFile,
    ) -> io::Result<Option<Vec<u8>>> {
        file.attribute(OBJECT_CHECKSUM_ATTRIBUTE).await
    }
}
