//! The real backend: glommio DMA files (O_DIRECT, io_uring).
//!
//! # The polled-I/O probe pitfall
//!
//! glommio 0.9 decides, once per executor thread and block device, whether
//! the device supports polled I/O, by reading the first `DmaFile` opened on
//! it. If that file is empty the read "succeeds" without reaching the device,
//! polling is wrongly cached as supported, and every later DMA read on the
//! device fails with `EOPNOTSUPP` (glommio issues #605 and #670). Two guards:
//!
//! 1. [`DmaStorage::check_dir`] opens a non-empty probe file first, so when
//!    the journal is the first user on its thread the probe answers right.
//! 2. If something else on the thread already opened an empty file, reads
//!    still fail with `EOPNOTSUPP`; [`DmaFileHandle`] then reads through a
//!    buffered handle on the same file from then on. Buffered reads see what
//!    O_DIRECT writes wrote (the kernel invalidates cached pages on direct
//!    writes). Writes are unaffected: they take the same path either way.

use super::{is_errno, BufferedFile, FileMeta, FsSpace, IoBuf, Storage, StorageFile};
use glommio::io::{
    BufferedFile as GlommioBufferedFile, DmaBuffer, DmaFile, OpenOptions, ReadResult,
};
use std::{
    cell::{Cell, RefCell},
    collections::HashSet,
    ffi::OsString,
    fs::TryLockError,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    rc::Rc,
};

/// Name of the short-lived probe file written by `check_dir`.
const PROBE_FILE_NAME: &str = ".ringstore-iopoll-probe";

/// Size of the probe file: one block, so the probe read reaches the device.
const PROBE_FILE_BYTES: usize = 4096;

/// `f_type` of tmpfs (linux/magic.h).
const TMPFS_MAGIC: i64 = 0x0102_1994;

thread_local! {
    /// Devices whose polled-I/O support this thread has already probed.
    static PROBED_DEVICES: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// Files on a real filesystem through glommio's O_DIRECT `DmaFile`.
#[derive(Debug, Clone, Default)]
pub struct DmaStorage {
    allow_buffered_io: bool,
}

impl DmaStorage {
    /// [`Storage::try_lock`] for a thread without a reactor (it makes two
    /// short syscalls, open and flock, that never wait on the device).
    pub fn try_lock_blocking(path: &Path, note: &[u8]) -> io::Result<Option<FileLock>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let Some(lock) = FileLock::try_new(file)? else {
            return Ok(None);
        };
        lock.write_note(note);
        Ok(Some(lock))
    }

    /// A backend that refuses filesystems without O_DIRECT.
    pub fn new() -> DmaStorage {
        DmaStorage::default()
    }

    /// A backend that accepts tmpfs, where glommio falls back to buffered
    /// I/O. fdatasync still runs, so durability is whatever the filesystem
    /// gives (for tmpfs: nothing survives a reboot).
    pub fn allowing_buffered_io() -> DmaStorage {
        DmaStorage {
            allow_buffered_io: true,
        }
    }
}

fn unsupported_direct_io(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{}: filesystem does not support O_DIRECT", path.display()),
    )
}

impl Storage for DmaStorage {
    type File = DmaFileHandle;
    type Buffered = PageCacheFile;
    type Lock = FileLock;

    async fn create_dir(&self, path: &Path) -> io::Result<()> {
        // A one-time call per directory; io_uring's mkdirat is not worth a
        // ring of its own here.
        std::fs::create_dir(path)
    }

    async fn check_dir(&self, dir: &Path) -> io::Result<()> {
        let fs = rustix::fs::statfs(dir)?;
        #[allow(
            clippy::unnecessary_cast,
            reason = "f_type's width differs between targets"
        )]
        let is_tmpfs = fs.f_type as i64 == TMPFS_MAGIC;
        if is_tmpfs && !self.allow_buffered_io {
            return Err(unsupported_direct_io(dir));
        }
        let device = std::fs::metadata(dir)?.dev();
        if PROBED_DEVICES.with(|probed| probed.borrow().contains(&device)) {
            return Ok(());
        }
        // A non-empty file, so glommio's polled-I/O probe reads real blocks.
        let probe_path = dir.join(PROBE_FILE_NAME);
        std::fs::write(&probe_path, [0u8; PROBE_FILE_BYTES])?;
        let opened = DmaFile::open(&probe_path).await.map_err(io::Error::from);
        let _ = std::fs::remove_file(&probe_path);
        let probe = match opened {
            Ok(file) => file,
            Err(err) if is_errno(&err, libc::EINVAL) => return Err(unsupported_direct_io(dir)),
            Err(err) => return Err(err),
        };
        let _ = probe.close().await;
        PROBED_DEVICES.with(|probed| probed.borrow_mut().insert(device));
        Ok(())
    }

    fn latency_device(&self, dir: &Path) -> io::Result<Option<u64>> {
        Ok(Some(std::fs::metadata(dir)?.dev()))
    }

    async fn create(&self, path: &Path, write_through: bool) -> io::Result<DmaFileHandle> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(if write_through { libc::O_DSYNC } else { 0 })
            .dma_open(path)
            .await
            .map_err(|err| map_open_error(err.into(), path))?;
        Ok(DmaFileHandle::new(file, path, write_through))
    }

    async fn open(&self, path: &Path) -> io::Result<DmaFileHandle> {
        self.open_for_writes(path, false).await
    }

    async fn open_for_writes(&self, path: &Path, write_through: bool) -> io::Result<DmaFileHandle> {
        // A FIFO or a device at a segment's (or snapshot's) name is no such
        // file: refused before it is opened (opening a device can have
        // effects; a FIFO opens read-write without blocking and would read
        // as an empty file, which recovery takes for a crash's leftover),
        // as the read-only tools refuse it. A symlink is followed, as the
        // read-only tools follow it, so both reach one verdict on what it
        // names. A missing file, or one that cannot be looked at, is left
        // to the open to report.
        if let Ok(meta) = std::fs::metadata(path) {
            if !meta.file_type().is_file() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: not a regular file", path.display()),
                ));
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(if write_through { libc::O_DSYNC } else { 0 })
            .dma_open(path)
            .await
            .map_err(|err| map_open_error(err.into(), path))?;
        Ok(DmaFileHandle::new(file, path, write_through))
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        glommio::io::remove(path).await.map_err(io::Error::from)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        glommio::io::rename(from, to).await.map_err(io::Error::from)
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // A full fsync(2), not glommio's `Directory::sync` (an fdatasync:
        // `glommio_quirks`, quirk 11), which is enough for ext4 and XFS but
        // not promised by POSIX for a directory's entries. On glommio's
        // blocking thread: directory syncs are rare (a segment created or
        // retired, a snapshot or identity renamed into place).
        let dir = dir.to_path_buf();
        glommio::executor()
            .spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
            .await
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect()
    }

    async fn create_buffered(&self, path: &Path) -> io::Result<PageCacheFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .buffered_open(path)
            .await
            .map_err(os_error)?;
        Ok(PageCacheFile { file })
    }

    async fn open_buffered(&self, path: &Path) -> io::Result<PageCacheFile> {
        // Opened first without blocking (O_NONBLOCK: a FIFO at `path`
        // cannot hold the open) and without following a symlink, checked on
        // the descriptor, then opened for glommio through the descriptor's
        // /proc name: the same inode, a regular file, so that open cannot
        // block either.
        use std::os::unix::fs::OpenOptionsExt as _;
        let checked = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        if !checked.metadata()?.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a regular file", path.display()),
            ));
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&checked);
        let file = OpenOptions::new()
            .read(true)
            .buffered_open(format!("/proc/self/fd/{fd}"))
            .await
            .map_err(os_error)?;
        drop(checked);
        Ok(PageCacheFile { file })
    }

    fn fs_space(&self, dir: &Path) -> io::Result<FsSpace> {
        let st = rustix::fs::statvfs(dir)?;
        Ok(FsSpace {
            total_bytes: st.f_blocks.saturating_mul(st.f_frsize),
            avail_bytes: st.f_bavail.saturating_mul(st.f_frsize),
        })
    }

    // The namespace calls below are single metadata syscalls made on the
    // reactor thread, like `create_dir` and `list_dir`: each is one inode
    // update in the kernel, not a wait for the device (the directory's
    // `sync_dir` is the wait, and it goes through io_uring).
    async fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }

    async fn link_file(&self, file: &PageCacheFile, to: &Path) -> io::Result<()> {
        // The unprivileged way to link an open file (AT_EMPTY_PATH needs
        // CAP_DAC_READ_SEARCH): its /proc name, followed. The file is
        // borrowed for the whole call, so its descriptor cannot be reused.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file.file);
        rustix::fs::linkat(
            rustix::fs::CWD,
            format!("/proc/self/fd/{fd}"),
            rustix::fs::CWD,
            to,
            rustix::fs::AtFlags::SYMLINK_FOLLOW,
        )?;
        Ok(())
    }

    async fn stat(&self, path: &Path) -> io::Result<FileMeta> {
        Ok(FileMeta::from(&std::fs::symlink_metadata(path)?))
    }

    async fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    async fn try_lock(&self, path: &Path, note: &[u8]) -> io::Result<Option<FileLock>> {
        DmaStorage::try_lock_blocking(path, note)
    }
}

/// glommio's error as the OS error it carries (with its code, which
/// glommio's own conversion drops: ENOSPC and EDQUOT must stay apart).
fn os_error(error: glommio::GlommioError<()>) -> io::Error {
    match error {
        glommio::GlommioError::IoError(source) => source,
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => io::Error::from(other),
    }
}

/// `flock(LOCK_EX)` on an open file, released when dropped (the kernel
/// releases it when the process dies too, so a crash leaves no stale lock).
#[derive(Debug)]
pub struct FileLock {
    // Held for its lock; closing the file releases it.
    _file: std::fs::File,
}

impl FileLock {
    /// Locks the open `file`, or `None` if another open file (of this
    /// process or another) holds the lock.
    pub fn try_new(file: std::fs::File) -> io::Result<Option<FileLock>> {
        match file.try_lock() {
            Ok(()) => Ok(Some(FileLock { _file: file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    /// Replaces the file's contents with `note`, best effort (see
    /// [`Storage::try_lock`]).
    pub fn write_note(&self, note: &[u8]) {
        use std::os::unix::fs::FileExt as _;
        let _ = self
            ._file
            .set_len(0)
            .and_then(|()| self._file.write_all_at(note, 0));
    }
}

/// A glommio buffered file (the page cache, io_uring).
#[derive(Debug)]
pub struct PageCacheFile {
    file: GlommioBufferedFile,
}

impl std::os::fd::AsRawFd for PageCacheFile {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

impl PageCacheFile {
    /// Wraps a glommio buffered file opened elsewhere (by another backend's
    /// own open, e.g. one resolved beneath a directory descriptor).
    pub fn new(file: GlommioBufferedFile) -> PageCacheFile {
        PageCacheFile { file }
    }
}

impl BufferedFile for PageCacheFile {
    type ReadBuf = ReadResult;

    async fn write_at(&self, data: Vec<u8>, pos: u64) -> io::Result<usize> {
        self.file.write_at(data, pos).await.map_err(os_error)
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<ReadResult> {
        self.file.read_at(pos, len).await.map_err(os_error)
    }

    async fn sync(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(os_error)
    }

    async fn file_len(&self) -> io::Result<u64> {
        // fstat through the descriptor's /proc name: glommio's `file_size`
        // needs the path a file was opened by, which a file opened relative
        // to a directory descriptor does not have.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.file);
        Ok(std::fs::metadata(format!("/proc/self/fd/{fd}"))?.len())
    }

    async fn meta(&self) -> io::Result<FileMeta> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.file);
        Ok(FileMeta::from(&std::fs::metadata(format!(
            "/proc/self/fd/{fd}"
        ))?))
    }

    async fn close(self) -> io::Result<()> {
        self.file.close().await.map_err(os_error)
    }
}

fn map_open_error(err: io::Error, path: &Path) -> io::Error {
    if is_errno(&err, libc::EINVAL) {
        unsupported_direct_io(path)
    } else {
        err
    }
}

/// An open DMA file, with the buffered read fallback described in the
/// module docs.
#[derive(Debug)]
pub struct DmaFileHandle {
    file: DmaFile,
    path: PathBuf,
    /// Opened with O_DSYNC.
    write_through: bool,
    dma_reads_fail: Cell<bool>,
    buffered: RefCell<Option<Rc<GlommioBufferedFile>>>,
    /// The same file for blocking calls, opened on first use.
    blocking: RefCell<BlockingHandle>,
}

/// A second handle on a [`DmaFileHandle`]'s file, for blocking calls.
#[derive(Debug)]
enum BlockingHandle {
    NotOpened,
    Open(std::fs::File),
    /// The open failed (logged once); blocking calls go through the ring.
    Unavailable,
}

impl DmaFileHandle {
    fn new(file: DmaFile, path: &Path, write_through: bool) -> DmaFileHandle {
        DmaFileHandle {
            file,
            path: path.to_path_buf(),
            write_through,
            dma_reads_fail: Cell::new(false),
            buffered: RefCell::new(None),
            blocking: RefCell::new(BlockingHandle::NotOpened),
        }
    }

    /// Runs `call` on the blocking handle, opening it first if need be;
    /// `None` if it cannot be opened. It is opened through
    /// `/proc/self/fd`, so it is this file even if its name has changed
    /// since, with O_DIRECT (and O_DSYNC, as the file was opened).
    fn with_blocking<T>(&self, call: impl FnOnce(&std::fs::File) -> T) -> Option<T> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let mut handle = self.blocking.borrow_mut();
        if matches!(*handle, BlockingHandle::NotOpened) {
            let path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
            let open = |direct: bool| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(
                        libc::O_CLOEXEC
                            | if direct { libc::O_DIRECT } else { 0 }
                            | if self.write_through { libc::O_DSYNC } else { 0 },
                    )
                    .open(&path)
            };
            // A filesystem without O_DIRECT (allowed with
            // `allow_buffered_io`) refuses it with EINVAL; glommio's own
            // handle falls back to the page cache there, and so does this.
            let opened = match open(true) {
                Err(e) if is_errno(&e, libc::EINVAL) => open(false),
                opened => opened,
            };
            *handle = match opened {
                Ok(file) => BlockingHandle::Open(file),
                Err(error) => {
                    tracing::warn!(
                        path = %self.path.display(),
                        %error,
                        "cannot open a second handle for blocking writes; \
                         writing through io_uring instead"
                    );
                    BlockingHandle::Unavailable
                }
            };
        }
        match &*handle {
            BlockingHandle::Open(file) => Some(call(file)),
            _ => None,
        }
    }

    async fn buffered_reader(&self) -> io::Result<Rc<GlommioBufferedFile>> {
        if let Some(file) = self.buffered.borrow().as_ref() {
            return Ok(file.clone());
        }
        let file = Rc::new(GlommioBufferedFile::open(&self.path).await?);
        *self.buffered.borrow_mut() = Some(file.clone());
        Ok(file)
    }
}

impl IoBuf for DmaBuffer {
    fn as_bytes(&self) -> &[u8] {
        DmaBuffer::as_bytes(self)
    }
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        DmaBuffer::as_bytes_mut(self)
    }
    fn trim_to(&mut self, len: usize) {
        self.trim_to_size(len);
    }
}

impl StorageFile for DmaFileHandle {
    type Buf = DmaBuffer;
    type ReadBuf = ReadResult;

    fn alloc_buf(&self, len: usize) -> DmaBuffer {
        self.file.alloc_dma_buffer(len)
    }

    async fn write_at(&self, buf: DmaBuffer, pos: u64) -> io::Result<()> {
        let len = buf.len();
        check_full_write(self.file.write_at(buf, pos).await?, len)
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<ReadResult> {
        if !self.dma_reads_fail.get() {
            match self.file.read_at_aligned(pos, len).await {
                Ok(read) => return Ok(read),
                Err(err) => {
                    let err = io::Error::from(err);
                    if !is_errno(&err, libc::EOPNOTSUPP) {
                        return Err(err);
                    }
                    tracing::warn!(
                        path = %self.path.display(),
                        "O_DIRECT reads fail with EOPNOTSUPP (glommio cached wrong polled-I/O \
                         support for this device); reading through the page cache instead"
                    );
                    self.dma_reads_fail.set(true);
                }
            }
        }
        let reader = self.buffered_reader().await?;
        Ok(reader.read_at(pos, len).await?)
    }

    async fn sync(&self) -> io::Result<()> {
        Ok(self.file.fdatasync().await?)
    }

    /// Until the second handle fails to open: then the writes are the
    /// ring's, and the journal should not count or time them as inline.
    fn has_blocking_calls(&self) -> bool {
        !matches!(*self.blocking.borrow(), BlockingHandle::Unavailable)
    }

    async fn write_blocking(&self, buf: DmaBuffer, pos: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let written = self.with_blocking(|file| loop {
            match file.write_at(buf.as_bytes(), pos) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                written => return written,
            }
        });
        match written {
            Some(written) => check_full_write(written?, buf.len()),
            None => self.write_at(buf, pos).await,
        }
    }

    async fn sync_blocking(&self) -> io::Result<()> {
        let synced = self.with_blocking(|file| loop {
            match file.sync_data() {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                synced => return synced,
            }
        });
        match synced {
            Some(synced) => synced,
            None => self.sync().await,
        }
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        Ok(self.file.pre_allocate(len, false).await?)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        Ok(self.file.truncate(len).await?)
    }

    async fn file_len(&self) -> io::Result<u64> {
        Ok(self.file.file_size().await?)
    }

    async fn close(self) -> io::Result<()> {
        let buffered = self.buffered.borrow_mut().take();
        if let Some(buffered) = buffered {
            if let Ok(file) = Rc::try_unwrap(buffered) {
                let _ = file.close().await;
            }
        }
        Ok(self.file.close().await?)
    }
}

/// A short O_DIRECT write is an error: the rest cannot simply follow at an
/// unaligned offset.
fn check_full_write(written: usize, len: usize) -> io::Result<()> {
    if written != len {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write: {written} of {len} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// The open flags of one of this process's descriptors, from
    /// `/proc/self/fdinfo` (octal).
    fn open_flags(fd: i32) -> i32 {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
        let flags = info
            .lines()
            .find_map(|line| line.strip_prefix("flags:"))
            .expect("fdinfo has flags");
        i32::from_str_radix(flags.trim(), 8).unwrap()
    }

    /// The blocking handle must make writes as durable as the ring's
    /// handle does: O_DSYNC exactly when the file was opened
    /// write-through (the in-memory disk cannot check this), and O_DIRECT
    /// on a disk that takes it. What it writes is what the file holds.
    #[test]
    fn the_blocking_handle_has_the_files_durability_flags() {
        // Under target/ (a real disk: tmpfs takes no O_DIRECT).
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp");
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::tempdir_in(&base).unwrap();
        let root = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let storage = DmaStorage::new();
                storage.check_dir(&root).await.unwrap();
                for write_through in [false, true] {
                    let path = root.join(format!("file-{write_through}"));
                    let file = storage.create(&path, write_through).await.unwrap();
                    assert!(file.has_blocking_calls());
                    let mut buf = file.alloc_buf(4096);
                    buf.as_bytes_mut().fill(7);
                    file.write_blocking(buf, 4096).await.unwrap();
                    file.sync_blocking().await.unwrap();
                    let flags = file
                        .with_blocking(|handle| open_flags(handle.as_raw_fd()))
                        .expect("the handle opened");
                    assert_eq!(flags & libc::O_DSYNC != 0, write_through, "{flags:o}");
                    assert!(flags & libc::O_DIRECT != 0, "{flags:o}");
                    assert!(file.has_blocking_calls());
                    file.close().await.unwrap();
                    let bytes = std::fs::read(&path).unwrap();
                    assert_eq!(bytes.len(), 8192);
                    assert!(bytes[4096..].iter().all(|&b| b == 7));
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
