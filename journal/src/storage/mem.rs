//! An in-memory disk for simulation and tests.
//!
//! Each file keeps its *live* bytes (what reads see now) apart from its
//! *durable* bytes (what the last successful `sync` made survive a crash),
//! and the directory keeps its live names apart from the names the last
//! `sync_dir` made durable. [`MemStorage::crash`] throws away everything that
//! was not made durable: unsynced writes, and creates and removes not
//! covered by a directory sync. Handles opened before a crash fail with EIO
//! afterwards, like file descriptors of a process that died.
//!
//! Failures can be injected: the next N file syncs, directory syncs, writes, allocates or removes
//! fail with a chosen errno, and a byte capacity makes writes past it fail
//! with ENOSPC.

use super::{IoBuf, Storage, StorageFile};
use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    io,
    path::{Path, PathBuf},
    rc::Rc,
};

#[derive(Debug, Default)]
struct MemFileData {
    live: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct Faults {
    /// Remaining syncs to fail, and with which errno.
    fail_syncs: Option<(u32, i32)>,
    /// Remaining writes to fail, and with which errno.
    fail_writes: Option<(u32, i32)>,
    /// Remaining directory syncs to fail, and with which errno.
    fail_dir_syncs: Option<(u32, i32)>,
    /// Remaining allocates (fallocate) to fail, and with which errno.
    fail_allocates: Option<(u32, i32)>,
    /// Remaining removes to fail, and with which errno.
    fail_removes: Option<(u32, i32)>,
    /// Total live bytes across files the disk can hold.
    capacity_bytes: Option<u64>,
}

#[derive(Debug, Default)]
struct MemFs {
    dirs: BTreeSet<PathBuf>,
    live: BTreeMap<PathBuf, Rc<RefCell<MemFileData>>>,
    durable: BTreeMap<PathBuf, Rc<RefCell<MemFileData>>>,
    /// Incremented by every crash; handles from an older generation are dead.
    crash_count: u64,
    faults: Faults,
}

impl MemFs {
    fn used_bytes(&self) -> u64 {
        self.live
            .values()
            .map(|f| f.borrow().live.len() as u64)
            .sum()
    }

    fn take_fault(slot: &mut Option<(u32, i32)>) -> Option<io::Error> {
        let (remaining, errno) = (*slot)?;
        *slot = if remaining > 1 {
            Some((remaining - 1, errno))
        } else {
            None
        };
        Some(io::Error::from_raw_os_error(errno))
    }
}

/// The in-memory disk. Clones share the same disk.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    fs: Rc<RefCell<MemFs>>,
}

impl MemStorage {
    /// An empty disk.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Simulates power loss: unsynced writes and undurable directory
    /// changes are dropped; open handles die.
    pub fn crash(&self) {
        let mut fs = self.fs.borrow_mut();
        fs.crash_count += 1;
        fs.live = fs.durable.clone();
        for file in fs.live.values() {
            let mut data = file.borrow_mut();
            data.live = data.durable.clone();
        }
    }

    /// The next `count` file syncs (fdatasync) fail with `errno`.
    pub fn fail_next_syncs(&self, count: u32, errno: i32) {
        self.fs.borrow_mut().faults.fail_syncs = Some((count, errno));
    }

    /// The next `count` directory syncs fail with `errno`.
    pub fn fail_next_dir_syncs(&self, count: u32, errno: i32) {
        self.fs.borrow_mut().faults.fail_dir_syncs = Some((count, errno));
    }

    /// The next `count` writes fail with `errno`.
    pub fn fail_next_writes(&self, count: u32, errno: i32) {
        self.fs.borrow_mut().faults.fail_writes = Some((count, errno));
    }

    /// The next `count` allocates (fallocate) fail with `errno`, e.g.
    /// `EOPNOTSUPP` as on filesystems without fallocate.
    pub fn fail_next_allocates(&self, count: u32, errno: i32) {
        self.fs.borrow_mut().faults.fail_allocates = Some((count, errno));
    }

    /// The next `count` removes fail with `errno`.
    pub fn fail_next_removes(&self, count: u32, errno: i32) {
        self.fs.borrow_mut().faults.fail_removes = Some((count, errno));
    }

    /// Writes that would grow the disk's live bytes past `bytes` fail with
    /// ENOSPC. `None` removes the limit.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.fs.borrow_mut().faults.capacity_bytes = bytes;
    }

    /// Live bytes of one file, for tests that corrupt or inspect files.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        self.fs
            .borrow()
            .live
            .get(path)
            .map(|f| f.borrow().live.clone())
    }

    /// Replaces a file's live and durable bytes, for tests that damage files.
    pub fn set_file_bytes(&self, path: &Path, bytes: Vec<u8>) {
        let fs = self.fs.borrow();
        if let Some(file) = fs.live.get(path) {
            let mut data = file.borrow_mut();
            data.live = bytes.clone();
            data.durable = bytes;
        }
    }

    fn handle(&self, path: &Path, data: Rc<RefCell<MemFileData>>) -> MemFile {
        MemFile {
            storage: self.clone(),
            path: path.to_path_buf(),
            data,
            crash_count: self.fs.borrow().crash_count,
        }
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl Storage for MemStorage {
    type File = MemFile;

    async fn prepare_dir(&self, dir: &Path) -> io::Result<()> {
        self.fs.borrow_mut().dirs.insert(dir.to_path_buf());
        Ok(())
    }

    async fn create(&self, path: &Path) -> io::Result<MemFile> {
        let data = {
            let mut fs = self.fs.borrow_mut();
            if fs.live.contains_key(path) {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            let data = Rc::new(RefCell::new(MemFileData::default()));
            fs.live.insert(path.to_path_buf(), data.clone());
            data
        };
        Ok(self.handle(path, data))
    }

    async fn open(&self, path: &Path) -> io::Result<MemFile> {
        let data = self
            .fs
            .borrow()
            .live
            .get(path)
            .cloned()
            .ok_or_else(|| not_found(path))?;
        Ok(self.handle(path, data))
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        if let Some(err) = MemFs::take_fault(&mut self.fs.borrow_mut().faults.fail_removes) {
            return Err(err);
        }
        self.fs
            .borrow_mut()
            .live
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        if let Some(err) = MemFs::take_fault(&mut fs.faults.fail_dir_syncs) {
            return Err(err);
        }
        let in_dir = |path: &Path| path.parent() == Some(dir);
        let live: Vec<_> = fs
            .live
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, f)| (p.clone(), f.clone()))
            .collect();
        fs.durable.retain(|path, _| !in_dir(path));
        fs.durable.extend(live);
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let fs = self.fs.borrow();
        Ok(fs
            .live
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name().map(|n| n.to_os_string()))
            .collect())
    }
}

/// A write buffer of the in-memory backend.
#[derive(Debug, Clone)]
pub struct MemBuf(Vec<u8>);

impl IoBuf for MemBuf {
    fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
    fn trim_to(&mut self, len: usize) {
        self.0.truncate(len);
    }
}

/// An open file of the in-memory backend.
#[derive(Debug)]
pub struct MemFile {
    storage: MemStorage,
    path: PathBuf,
    data: Rc<RefCell<MemFileData>>,
    crash_count: u64,
}

impl MemFile {
    fn check_alive(&self) -> io::Result<()> {
        if self.storage.fs.borrow().crash_count != self.crash_count {
            return Err(io::Error::other(format!(
                "{}: handle from before a simulated crash",
                self.path.display()
            )));
        }
        Ok(())
    }

    fn grow_to(&self, len: u64) -> io::Result<()> {
        let fs = self.storage.fs.borrow();
        let current = self.data.borrow().live.len() as u64;
        if len <= current {
            return Ok(());
        }
        if let Some(capacity) = fs.faults.capacity_bytes {
            if fs.used_bytes() + (len - current) > capacity {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        self.data.borrow_mut().live.resize(len, 0);
        Ok(())
    }
}

impl StorageFile for MemFile {
    type Buf = MemBuf;
    type ReadBuf = Vec<u8>;

    fn alloc_buf(&self, len: usize) -> MemBuf {
        MemBuf(vec![0; len])
    }

    async fn write_at(&self, buf: MemBuf, pos: u64) -> io::Result<()> {
        self.check_alive()?;
        if let Some(err) = MemFs::take_fault(&mut self.storage.fs.borrow_mut().faults.fail_writes) {
            return Err(err);
        }
        let end = pos + buf.0.len() as u64;
        self.grow_to(end)?;
        let start = pos as usize;
        self.data.borrow_mut().live[start..start + buf.0.len()].copy_from_slice(&buf.0);
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        self.check_alive()?;
        let data = self.data.borrow();
        let start = (pos as usize).min(data.live.len());
        let end = start.saturating_add(len).min(data.live.len());
        Ok(data.live[start..end].to_vec())
    }

    async fn sync(&self) -> io::Result<()> {
        self.check_alive()?;
        if let Some(err) = MemFs::take_fault(&mut self.storage.fs.borrow_mut().faults.fail_syncs) {
            return Err(err);
        }
        let mut data = self.data.borrow_mut();
        data.durable = data.live.clone();
        Ok(())
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        self.check_alive()?;
        if let Some(err) =
            MemFs::take_fault(&mut self.storage.fs.borrow_mut().faults.fail_allocates)
        {
            return Err(err);
        }
        self.grow_to(len)
    }

    async fn file_len(&self) -> io::Result<u64> {
        self.check_alive()?;
        Ok(self.data.borrow().live.len() as u64)
    }

    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}
