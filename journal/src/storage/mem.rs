//! An in-memory disk for simulation, fuzzing and tests, with a seeded,
//! deterministic fault model.
//!
//! # What it keeps apart
//!
//! Each file has *live* bytes (what reads see now) and *durable* bytes (what
//! survives a crash), plus the list of writes and size changes made since
//! its last successful `sync`. The directory namespace likewise has live
//! names, durable names, and the creates and removes made since the last
//! `sync_dir`. [`MemStorage::crash`] turns the durable state into the live
//! state, deciding the fate of everything unsynced; handles opened before
//! the crash fail with EIO afterwards, like descriptors of a dead process.
//!
//! # The fault model ([`FaultConfig`])
//!
//! This is the model of `DESIGN.md` ("Fault model"), made executable:
//!
//! * **Crash.** Each write not covered by a completed fdatasync of its file
//!   is dropped entirely (`crash_drop_rate`), torn — an independent random
//!   subset of its 512-byte sectors persists (`crash_tear_rate`) — or kept.
//!   Survivors are applied in a shuffled order, so a later write can persist
//!   while an earlier one is lost (out of order). Size changes (fallocate)
//!   not synced may be lost too.
//! * **Directory operations.** Creates, renames, links and removes (of
//!   files and of directories) not covered by an fsync of their directory
//!   each survive a crash or are undone, independently (with `dir_undo`;
//!   without it, all are undone). A directory made by
//!   [`Storage::create_dir`] is an entry of its parent like a file: undone
//!   unless its parent was synced after it, and with it everything beneath
//!   it, synced or not. Directories the disk never made exist from the
//!   start (the roots tests and simulations start from), except beneath one
//!   it made: there, as on a real disk, each level must be made.
//! * **Reads.** A read returns one flipped bit (`read_flip_rate`) or fails
//!   with EIO (`read_eio_rate`). Flips are transient: a second read may be
//!   clean.
//! * **Damage at rest.** Tests and the simulation flip a bit of a file in
//!   place ([`MemStorage::flip_bit`]; every later read sees it) or make a
//!   sector unreadable ([`MemStorage::set_unreadable`]; every read that
//!   touches it fails with EIO until [`MemStorage::clear_unreadable`]), as
//!   a disk's media errors do.
//! * **Writes.** A write lands 1–8 sectors away from where it was aimed and
//!   reports success (`write_misdirect_rate`), or fails with EIO
//!   (`write_eio_rate`).
//! * **Syncs.** A file or directory sync fails with EIO (`sync_eio_rate`); the
//!   writes it would have covered stay unsynced.
//! * **Full disk.** Growing the disk's live bytes past `capacity_bytes` fails
//!   with ENOSPC.
//! * **fallocate unsupported.** `allocate` fails with EOPNOTSUPP
//!   (`fallocate_unsupported`).
//! * **Locks.** [`Storage::try_lock`] locks live in the process: a crash
//!   releases every one, as the kernel releases a dead process's flocks.
//! * **Power cut.** [`MemStorage::cut_power_after_ops`] makes the N-th
//!   operation from now and every later one fail with EIO, as if the machine
//!   died mid-flight; [`MemStorage::crash`] then resolves what survived.
//! * **Interleaving.** Before an operation the calling task yields to the
//!   reactor with probability `yield_rate`, so concurrent tasks interleave
//!   differently per seed.
//!
//! Every decision comes from one PCG generator seeded by a `u64`, so a seed
//! replays exactly (given the same sequence of calls). [`FaultCounts`] says
//! how often each fault fired. Tests can also inject one-off failures
//! (`fail_next_*`) and damage files directly.

use super::{BufferedFile, EntryKind, FileMeta, FsSpace, IoBuf, Storage, StorageFile};
use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg64Mcg;
use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    io,
    path::{Path, PathBuf},
    rc::Rc,
};

/// True when `RINGSTORE_SIM_TRACE_IO` is set: every operation is printed to
/// stderr, for replaying a failing seed by eye.
fn trace_io() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("RINGSTORE_SIM_TRACE_IO").is_some())
}

/// Sector size of the simulated disk: the unit of atomicity and of tearing.
pub const SIM_SECTOR_BYTES: u64 = 512;

/// Furthest a misdirected write lands from its target, in sectors.
const MISDIRECT_SECTORS_MAX: u64 = 8;

/// Probabilities of each fault. All zero ([`FaultConfig::none`]) means a
/// perfect disk whose crashes drop every unsynced write.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// At a crash, chance that an unsynced write is lost entirely.
    pub crash_drop_rate: f64,
    /// At a crash, chance that an unsynced write is torn at sector granularity.
    pub crash_tear_rate: f64,
    /// At a crash, each directory operation not yet covered by a directory
    /// fsync survives with probability 1/2, independently (otherwise all of
    /// them are undone).
    pub dir_undo: bool,
    /// Chance a read returns one flipped bit.
    pub read_flip_rate: f64,
    /// Chance a read fails with EIO.
    pub read_eio_rate: f64,
    /// Chance a write lands at the wrong offset (reporting success).
    pub write_misdirect_rate: f64,
    /// Chance a write fails with EIO.
    pub write_eio_rate: f64,
    /// Chance a file or directory sync fails with EIO.
    pub sync_eio_rate: f64,
    /// Live bytes the disk holds before ENOSPC.
    pub capacity_bytes: Option<u64>,
    /// fallocate fails with EOPNOTSUPP.
    pub fallocate_unsupported: bool,
    /// Chance an operation first yields to other tasks.
    pub yield_rate: f64,
}

impl FaultConfig {
    /// No faults; a crash drops every unsynced write and directory change.
    pub fn none() -> FaultConfig {
        FaultConfig {
            crash_drop_rate: 1.0,
            crash_tear_rate: 0.0,
            dir_undo: false,
            read_flip_rate: 0.0,
            read_eio_rate: 0.0,
            write_misdirect_rate: 0.0,
            write_eio_rate: 0.0,
            sync_eio_rate: 0.0,
            capacity_bytes: None,
            fallocate_unsupported: false,
            yield_rate: 0.0,
        }
    }

    /// Faults after which nothing acknowledged may be lost: crashes that
    /// drop, tear and reorder unsynced writes and undo directory changes,
    /// failed writes and syncs, a full disk.
    pub fn benign() -> FaultConfig {
        FaultConfig {
            crash_drop_rate: 0.35,
            crash_tear_rate: 0.35,
            dir_undo: true,
            write_eio_rate: 0.002,
            sync_eio_rate: 0.002,
            yield_rate: 0.3,
            ..FaultConfig::none()
        }
    }

    /// Everything in [`FaultConfig::benign`] plus faults that can destroy
    /// acknowledged data (flipped bits on read, EIO on read, misdirected
    /// writes): the journal must detect them, never serve wrong bytes.
    pub fn destructive() -> FaultConfig {
        FaultConfig {
            read_flip_rate: 0.002,
            read_eio_rate: 0.002,
            write_misdirect_rate: 0.002,
            ..FaultConfig::benign()
        }
    }
}

/// How often each fault fired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Crashes simulated.
    pub crashes: u64,
    /// Power cuts that failed operations in flight.
    pub power_cuts: u64,
    /// Unsynced writes lost entirely at a crash.
    pub writes_dropped: u64,
    /// Unsynced writes torn at sector granularity at a crash.
    pub writes_torn: u64,
    /// Unsynced writes that persisted whole at a crash.
    pub writes_kept: u64,
    /// Crashes where a later unsynced write persisted (wholly or partly)
    /// although an earlier one of the same file did not (out of order).
    pub crashes_out_of_order: u64,
    /// Directory operations undone by a crash.
    pub dir_ops_undone: u64,
    /// Reads that returned a flipped bit.
    pub read_flips: u64,
    /// Reads that failed with EIO.
    pub read_eios: u64,
    /// Writes that landed at the wrong offset.
    pub writes_misdirected: u64,
    /// Writes that failed with EIO.
    pub write_eios: u64,
    /// Syncs that failed with EIO.
    pub sync_eios: u64,
    /// Operations that failed with ENOSPC.
    pub enospc: u64,
    /// fallocate calls refused with EOPNOTSUPP.
    pub fallocate_refused: u64,
}

impl FaultCounts {
    /// Adds another run's counts.
    pub fn add(&mut self, other: &FaultCounts) {
        self.crashes += other.crashes;
        self.power_cuts += other.power_cuts;
        self.writes_dropped += other.writes_dropped;
        self.writes_torn += other.writes_torn;
        self.writes_kept += other.writes_kept;
        self.crashes_out_of_order += other.crashes_out_of_order;
        self.dir_ops_undone += other.dir_ops_undone;
        self.read_flips += other.read_flips;
        self.read_eios += other.read_eios;
        self.writes_misdirected += other.writes_misdirected;
        self.write_eios += other.write_eios;
        self.sync_eios += other.sync_eios;
        self.enospc += other.enospc;
        self.fallocate_refused += other.fallocate_refused;
    }

    /// `(name, count)` per fault kind, for reports.
    pub fn kinds(&self) -> [(&'static str, u64); 14] {
        [
            ("crash", self.crashes),
            ("power cut mid-operation", self.power_cuts),
            ("unsynced write dropped", self.writes_dropped),
            ("unsynced write torn", self.writes_torn),
            ("unsynced write kept", self.writes_kept),
            ("persisted out of order", self.crashes_out_of_order),
            ("directory op undone", self.dir_ops_undone),
            ("read bit flip", self.read_flips),
            ("read EIO", self.read_eios),
            ("misdirected write", self.writes_misdirected),
            ("write EIO", self.write_eios),
            ("sync EIO", self.sync_eios),
            ("ENOSPC", self.enospc),
            ("fallocate EOPNOTSUPP", self.fallocate_refused),
        ]
    }
}

#[derive(Debug, Clone)]
enum FileOp {
    Write {
        pos: u64,
        data: Vec<u8>,
    },
    Resize {
        len: usize,
    },
    /// ftruncate: the file becomes exactly `len` bytes.
    Truncate {
        len: usize,
    },
}

#[derive(Debug, Default)]
struct FileData {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Writes and size changes since the last successful sync, in order.
    unsynced: Vec<FileOp>,
    /// Sectors ([`SIM_SECTOR_BYTES`]) every read touching fails with EIO
    /// ([`MemStorage::set_unreadable`]).
    unreadable: BTreeSet<u64>,
    /// Extended attributes as the process sees them
    /// ([`MemBufferedFile::set_attribute`]).
    attributes: BTreeMap<String, Vec<u8>>,
    /// Those a crash keeps: the attributes at the file's last
    /// [`MemBufferedFile::sync_all`] (an `fsync`; `fdatasync` leaves them).
    durable_attributes: BTreeMap<String, Vec<u8>>,
}

fn apply(target: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Write { pos, data } => {
            let start = *pos as usize;
            if target.len() < start + data.len() {
                target.resize(start + data.len(), 0);
            }
            target[start..start + data.len()].copy_from_slice(data);
        }
        FileOp::Resize { len } => {
            if target.len() < *len {
                target.resize(*len, 0);
            }
        }
        FileOp::Truncate { len } => target.resize(*len, 0),
    }
}

type FileRef = Rc<RefCell<FileData>>;

#[derive(Debug, Clone)]
enum DirOp {
    Create(PathBuf, FileRef),
    /// A second name for an existing file (a hard link).
    Link(PathBuf, FileRef),
    MakeDir(PathBuf),
    RemoveDir(PathBuf),
    Remove(PathBuf),
    /// `from` renamed to `to` (replacing it): atomic, so a crash keeps both
    /// halves or neither.
    Rename {
        from: PathBuf,
        to: PathBuf,
        file: FileRef,
    },
}

impl DirOp {
    fn path(&self) -> &Path {
        match self {
            DirOp::Create(path, _)
            | DirOp::Link(path, _)
            | DirOp::Remove(path)
            | DirOp::MakeDir(path)
            | DirOp::RemoveDir(path) => path,
            DirOp::Rename { to, .. } => to,
        }
    }
}

/// A namespace: file names and the directories made on the disk.
#[derive(Debug, Clone, Default)]
struct Names {
    files: BTreeMap<PathBuf, FileRef>,
    dirs: BTreeSet<PathBuf>,
}

fn apply_dir_op(names: &mut Names, op: DirOp) {
    let Names { files: names, dirs } = names;
    match op {
        DirOp::MakeDir(path) => {
            dirs.insert(path);
        }
        DirOp::RemoveDir(path) => {
            // Gone with it: what a crash could still hold beneath it (an
            // unlink inside it not yet durable) is unreachable, and a
            // directory made again at the path is another, empty one.
            names.retain(|entry, _| !entry.starts_with(&path));
            dirs.retain(|entry| !entry.starts_with(&path));
        }
        DirOp::Create(path, file) | DirOp::Link(path, file) => {
            names.insert(path, file);
        }
        DirOp::Remove(path) => {
            names.remove(&path);
        }
        DirOp::Rename { from, to, file } => {
            names.remove(&from);
            names.insert(to, file);
        }
    }
}

#[derive(Debug, Default)]
struct Oneshots {
    fail_syncs: Option<(u32, i32)>,
    fail_dir_syncs: Option<(u32, i32)>,
    fail_writes: Option<(u32, i32)>,
    fail_allocates: Option<(u32, i32)>,
    fail_removes: Option<(u32, i32)>,
    fail_renames: Option<(u32, i32)>,
    fail_creates: Option<(u32, i32)>,
    fail_links: Option<(u32, i32)>,
    fail_attribute_sets: Option<(u32, i32)>,
    /// The read of this file that covers this offset, after this many
    /// more such reads, returns this bit flipped there (once).
    flip_read: Option<(PathBuf, u64, u8, u32)>,
    /// The next write of this many bytes at this offset lands this many
    /// bytes later and reports success (once).
    misdirect_write: Option<(u64, usize, u64)>,
}

fn take_oneshot(slot: &mut Option<(u32, i32)>) -> Option<io::Error> {
    let (remaining, errno) = (*slot)?;
    *slot = if remaining > 1 {
        Some((remaining - 1, errno))
    } else {
        None
    };
    Some(io::Error::from_raw_os_error(errno))
}

#[derive(Debug)]
struct MemFs {
    live: Names,
    durable: Names,
    /// Every directory [`Storage::create_dir`] ever made: one of them that
    /// is not live is gone (a crash undid it), and so is all beneath it.
    dirs_made: BTreeSet<PathBuf>,
    /// Directory operations since the last `sync_dir` of their directory.
    unsynced_dir_ops: Vec<DirOp>,
    /// Incremented by every crash; handles from an older generation are dead.
    crash_count: u64,
    /// Operations left before the power is cut; `Some(0)`: cut.
    ops_until_power_cut: Option<u64>,
    rng: Pcg64Mcg,
    faults: FaultConfig,
    counts: FaultCounts,
    oneshots: Oneshots,
    /// What [`Storage::latency_device`] answers (see
    /// [`MemStorage::set_latency_device`]).
    latency_device: Option<u64>,
    /// How long a blocking write sleeps first (see
    /// [`MemStorage::set_blocking_write_delay`]).
    blocking_write_delay: std::time::Duration,
    /// Bytes returned by file reads so far ([`MemStorage::bytes_read`]).
    bytes_read: u64,
    /// File writes so far by size ([`MemStorage::write_sizes`]).
    write_sizes: BTreeMap<usize, u64>,
    /// Paths locked by [`Storage::try_lock`] in this incarnation.
    locks: BTreeSet<PathBuf>,
}

impl MemFs {
    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0
            && ((self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < probability
    }

    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.rng.next_u64() % bound
        }
    }

    fn used_bytes(&self) -> u64 {
        self.live
            .files
            .values()
            .map(|f| f.borrow().live.len() as u64)
            .sum()
    }

    /// Counts an operation towards a scheduled power cut; errors once cut.
    fn tick(&mut self) -> io::Result<()> {
        match self.ops_until_power_cut {
            Some(0) => Err(io::Error::from_raw_os_error(libc::EIO)),
            Some(1) => {
                self.ops_until_power_cut = Some(0);
                self.counts.power_cuts += 1;
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
            Some(n) => {
                self.ops_until_power_cut = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn eio(&mut self, rate: f64) -> Option<io::Error> {
        self.chance(rate)
            .then(|| io::Error::from_raw_os_error(libc::EIO))
    }

    fn check_growth(&mut self, file: &FileRef, len: u64) -> io::Result<()> {
        let current = file.borrow().live.len() as u64;
        if let Some(capacity) = self.faults.capacity_bytes {
            if len > current && self.used_bytes() + (len - current) > capacity {
                self.counts.enospc += 1;
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        Ok(())
    }

    /// Whether `dir` is a directory now: one this disk made and a crash did
    /// not undo, or a root (never made, and nothing above it made).
    fn is_dir(&self, dir: &Path) -> bool {
        self.live.dirs.contains(dir) || dir.ancestors().all(|level| !self.dirs_made.contains(level))
    }

    /// Whether `path` names a directory that exists, for calls that ask
    /// (stat, an open): one made and not undone, or a root with something
    /// beneath it. (An unused root is a directory to create things in, but
    /// not one to report: any path beneath no made directory would be.)
    fn dir_exists(&self, path: &Path) -> bool {
        self.live.dirs.contains(path)
            || (self.is_dir(path)
                && self
                    .live
                    .files
                    .keys()
                    .chain(self.live.dirs.iter())
                    .any(|p| p != path && p.starts_with(path)))
    }

    /// Names `file` has in the live tree (its hard links).
    fn names_of(&self, file: &FileRef) -> u64 {
        let names = self.live.files.values();
        names.filter(|named| Rc::ptr_eq(named, file)).count() as u64
    }

    /// ENOENT if a directory above `path` is not there, ENOTDIR if a file
    /// stands in its place.
    fn check_parents(&self, path: &Path) -> io::Result<()> {
        if let Some(file) = path
            .ancestors()
            .skip(1)
            .find(|a| self.live.files.contains_key(*a))
        {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{}: not a directory", file.display()),
            ));
        }
        match path.ancestors().skip(1).find(|a| !self.is_dir(a)) {
            Some(gone) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such directory", gone.display()),
            )),
            None => Ok(()),
        }
    }

    fn crash(&mut self) {
        self.counts.crashes += 1;
        self.crash_count += 1;
        self.ops_until_power_cut = None;
        self.locks.clear();
        // Directory operations: each survives or is undone on its own (a
        // later one may persist while an earlier one does not), applied in
        // order.
        let ops = std::mem::take(&mut self.unsynced_dir_ops);
        for op in &ops {
            let survives = self.faults.dir_undo && self.chance(0.5);
            if !survives {
                self.counts.dir_ops_undone += 1;
                continue;
            }
            apply_dir_op(&mut self.durable, op.clone());
        }
        // A directory whose entry did not survive takes what is beneath it.
        let made = &self.dirs_made;
        let durable_dirs = self.durable.dirs.clone();
        let gone = |path: &Path| {
            path.ancestors()
                .skip(1)
                .any(|a| made.contains(a) && !durable_dirs.contains(a))
        };
        self.durable.files.retain(|path, _| !gone(path));
        self.durable.dirs.retain(|path| !gone(path));
        // File contents: every file that may be reached again.
        let mut files: Vec<FileRef> = self.durable.files.values().cloned().collect();
        for op in &ops {
            if let DirOp::Create(_, file) | DirOp::Link(_, file) | DirOp::Rename { file, .. } = op {
                files.push(file.clone());
            }
        }
        for file in files {
            let unsynced = std::mem::take(&mut file.borrow_mut().unsynced);
            let mut survivors = Vec::new();
            let mut lost_earlier = false;
            let mut out_of_order = false;
            for op in unsynced {
                let fate = self.below(1_000_000) as f64 / 1_000_000.0;
                match op {
                    FileOp::Resize { .. } | FileOp::Truncate { .. }
                        if fate < self.faults.crash_drop_rate =>
                    {
                        lost_earlier = true
                    }
                    FileOp::Resize { .. } | FileOp::Truncate { .. } => survivors.push(op),
                    FileOp::Write { .. } if fate < self.faults.crash_drop_rate => {
                        self.counts.writes_dropped += 1;
                        lost_earlier = true;
                    }
                    FileOp::Write { pos, data }
                        if fate < self.faults.crash_drop_rate + self.faults.crash_tear_rate =>
                    {
                        self.counts.writes_torn += 1;
                        out_of_order |= lost_earlier;
                        lost_earlier = true;
                        // Sectors of the disk, not of the write: an
                        // unaligned (buffered) write's first and last
                        // pieces are parts of sectors.
                        let mut offset = 0usize;
                        while offset < data.len() {
                            let sector_pos = pos + offset as u64;
                            let to_boundary = SIM_SECTOR_BYTES - sector_pos % SIM_SECTOR_BYTES;
                            let end = (offset + to_boundary as usize).min(data.len());
                            if self.chance(0.5) {
                                survivors.push(FileOp::Write {
                                    pos: sector_pos,
                                    data: data[offset..end].to_vec(),
                                });
                            }
                            offset = end;
                        }
                    }
                    op => {
                        self.counts.writes_kept += 1;
                        out_of_order |= lost_earlier;
                        survivors.push(op);
                    }
                }
            }
            self.counts.crashes_out_of_order += u64::from(out_of_order);
            // Persist in a shuffled order, unless a size was cut: blocks
            // a truncation freed do not come back with an earlier write.
            let truncated = survivors
                .iter()
                .any(|op| matches!(op, FileOp::Truncate { .. }));
            if !truncated {
                for i in (1..survivors.len()).rev() {
                    let j = self.below(i as u64 + 1) as usize;
                    survivors.swap(i, j);
                }
            }
            let mut data = file.borrow_mut();
            for op in &survivors {
                apply(&mut data.durable, op);
            }
            data.live = data.durable.clone();
            data.attributes = data.durable_attributes.clone();
        }
        self.live = self.durable.clone();
    }
}

/// The in-memory disk. Clones share the same disk. A clone made before a
/// crash belongs to the dead process: its calls fail with EIO afterwards
/// (only the clone that called [`MemStorage::crash`] lives on), so tasks of a
/// crashed journal that are still scheduled cannot touch the restarted one's
/// files.
#[derive(Debug)]
pub struct MemStorage {
    fs: Rc<RefCell<MemFs>>,
    incarnation: std::cell::Cell<u64>,
}

impl Clone for MemStorage {
    fn clone(&self) -> Self {
        MemStorage {
            fs: self.fs.clone(),
            incarnation: std::cell::Cell::new(self.incarnation.get()),
        }
    }
}

impl Default for MemStorage {
    fn default() -> Self {
        MemStorage::new()
    }
}

impl MemStorage {
    /// A perfect disk (no faults but crashes, which drop everything
    /// unsynced).
    pub fn new() -> MemStorage {
        MemStorage::with_faults(0, FaultConfig::none())
    }

    /// A disk whose faults are drawn from `faults` by a generator seeded
    /// with `seed`.
    pub fn with_faults(seed: u64, faults: FaultConfig) -> MemStorage {
        MemStorage {
            incarnation: std::cell::Cell::new(0),
            fs: Rc::new(RefCell::new(MemFs {
                live: Names::default(),
                durable: Names::default(),
                dirs_made: BTreeSet::new(),
                unsynced_dir_ops: Vec::new(),
                crash_count: 0,
                ops_until_power_cut: None,
                rng: Pcg64Mcg::seed_from_u64(seed),
                faults,
                counts: FaultCounts::default(),
                oneshots: Oneshots::default(),
                latency_device: None,
                blocking_write_delay: std::time::Duration::ZERO,
                bytes_read: 0,
                write_sizes: BTreeMap::new(),
                locks: BTreeSet::new(),
            })),
        }
    }

    /// Makes [`Storage::latency_device`] answer `device`, so that
    /// [`crate::Durability::Auto`] runs its probe here (default `None`: a
    /// simulated disk's timings say nothing, and the choice would make a
    /// seeded run depend on the clock). For tests of the probe's own
    /// failure and crash paths; each should use a device id of its own, as
    /// probe results are kept per device for the life of the process.
    pub fn set_latency_device(&self, device: Option<u64>) {
        self.fs.borrow_mut().latency_device = device;
    }

    /// Makes every [`StorageFile::write_blocking`] first block the calling
    /// thread for `delay` (default none): a disk in a slow spell, for tests
    /// of what the journal does when its inline writes are slow.
    pub fn set_blocking_write_delay(&self, delay: std::time::Duration) {
        self.fs.borrow_mut().blocking_write_delay = delay;
    }

    /// Simulates power loss and restart: decides what of the unsynced state
    /// survived (see the module docs); open handles die.
    pub fn crash(&self) {
        let mut fs = self.fs.borrow_mut();
        fs.crash();
        self.incarnation.set(fs.crash_count);
    }

    /// Cuts the power at the `ops`-th storage operation from now (1: the
    /// next one): it and every later one fail with EIO until [`crash`].
    ///
    /// [`crash`]: MemStorage::crash
    pub fn cut_power_after_ops(&self, ops: u64) {
        self.fs.borrow_mut().ops_until_power_cut = Some(ops.max(1));
    }

    /// True once a scheduled power cut happened (and before `crash`).
    pub fn power_is_cut(&self) -> bool {
        self.fs.borrow().ops_until_power_cut == Some(0)
    }

    /// Replaces the fault rates (the generator keeps its state).
    pub fn set_faults(&self, faults: FaultConfig) {
        self.fs.borrow_mut().faults = faults;
    }

    /// How often each fault fired so far.
    pub fn fault_counts(&self) -> FaultCounts {
        self.fs.borrow().counts
    }

    /// Bytes file reads have returned so far: what a test pins about how
    /// much an operation reads (recovery reads indexes, not payloads).
    pub fn bytes_read(&self) -> u64 {
        self.fs.borrow().bytes_read
    }

    /// How many file writes of each size were issued so far (failed ones
    /// included): what a test pins about how an operation writes.
    pub fn write_sizes(&self) -> BTreeMap<usize, u64> {
        self.fs.borrow().write_sizes.clone()
    }

    /// The next `count` file syncs (fdatasync) fail with `errno`.
    pub fn fail_next_syncs(&self, count: u32, errno: i32) {
        self.fs.borrow_mut().oneshots.fail_syncs = Some((count, errno));
    }

    /// The next `count` directory syncs fail with `errno`.
    pub fn fail_next_dir_syncs(&self, count: u32, errno: i32) {
        self.fs.borrow_mut().oneshots.fail_dir_syncs = Some((count, errno));
    }

    /// The next `count` writes fail with `errno`.
    pub fn fail_next_writes(&self, count: u32, errno: i32) {
        self.fs.borrow_mut().oneshots.fail_writes = Some((count, errno));
    }

    /// The next `count` allocates (fallocate) fail with `errno`, e.g.
    /// `EOPNOTSUPP` as on filesystems without fallocate.
    pub fn fail_next_allocates(&self, count: u32, errno: i32) {
        self.fs.borrow_mut().oneshots.fail_allocates = Some((count, errno));
    }

    /// The next `count` removes fail with `errno`.
    pub fn fail_next_removes(&self, count: u32, errno: i32) {
        self.fs.borrow_mut().oneshots.fail_removes = Some((count, errno));
    }

    /// The next `count` renames fail with `errno`.
    pub fn fail_next_renames(&self, count: u32, errno: i32) {
        self.fs.borrow_mut().oneshots.fail_renames = Some((count, errno));
    }

    /// The next `count` creates fail with `errno`.
    pub fn fail_next_creates(&self, count: u32, errno: i32) {
        self.fs.borrow_mut().oneshots.fail_creates = Some((count, errno));
    }

    /// The next `count` links fail with `errno`.
    pub fn fail_next_links(&self, count: u32, errno: i32) {
        self.fs.borrow_mut().oneshots.fail_links = Some((count, errno));
    }

    /// Fails the next `count` extended-attribute sets
    /// ([`MemBufferedFile::set_attribute`]) with `errno` (EPERM: not the
    /// process's file to label; EOPNOTSUPP: a filesystem without them).
    pub fn fail_next_attribute_sets(&self, count: u32, errno: i32) {
        self.fs.borrow_mut().oneshots.fail_attribute_sets = Some((count, errno));
    }

    /// The next read of `path` that covers byte `offset` returns bit `bit`
    /// of that byte flipped, once: a transient read fault at a place a
    /// test chooses (the file's bytes are left as they are).
    pub fn flip_next_read(&self, path: &Path, offset: u64, bit: u8) {
        self.flip_nth_read(path, offset, bit, 1);
    }

    /// Like [`MemStorage::flip_next_read`], for the `nth` (from 1) read of
    /// `path` from now that covers byte `offset`: a transient fault that
    /// spares the reads before it.
    pub fn flip_nth_read(&self, path: &Path, offset: u64, bit: u8, nth: u32) {
        self.fs.borrow_mut().oneshots.flip_read =
            Some((path.to_path_buf(), offset, bit, nth.max(1) - 1));
    }

    /// The next write of `len` bytes at byte `pos` (of any file) lands
    /// `shift` bytes later and reports success, once: a misdirected write
    /// at a place a test chooses.
    pub fn misdirect_next_write(&self, pos: u64, len: usize, shift: u64) {
        self.fs.borrow_mut().oneshots.misdirect_write = Some((pos, len, shift));
    }

    /// Paths of every directory the disk made that exists now.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.fs.borrow().live.dirs.iter().cloned().collect()
    }

    /// Writes that would grow the disk's live bytes past `bytes` fail with
    /// ENOSPC. `None` removes the limit.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.fs.borrow_mut().faults.capacity_bytes = bytes;
    }

    /// Paths of every file that exists now, for tests that inspect the disk.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.fs.borrow().live.files.keys().cloned().collect()
    }

    /// Live bytes of one file, for tests that inspect files.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        self.fs
            .borrow()
            .live
            .files
            .get(path)
            .map(|f| f.borrow().live.clone())
    }

    /// Creates (or replaces) a file holding `bytes`, durable at once, for
    /// tests and fuzz targets that bring their own files.
    pub fn insert_file(&self, path: &Path, bytes: Vec<u8>) {
        let file = FileRef::default();
        {
            let mut data = file.borrow_mut();
            data.live = bytes.clone();
            data.durable = bytes;
        }
        let mut fs = self.fs.borrow_mut();
        fs.live.files.insert(path.to_path_buf(), file.clone());
        fs.durable.files.insert(path.to_path_buf(), file);
    }

    /// Replaces a file's live and durable bytes, for tests that damage files.
    pub fn set_file_bytes(&self, path: &Path, bytes: Vec<u8>) {
        let fs = self.fs.borrow();
        if let Some(file) = fs.live.files.get(path) {
            let mut data = file.borrow_mut();
            data.live = bytes.clone();
            data.durable = bytes;
            data.unsynced.clear();
        }
    }

    /// Flips bit `bit` (0 the lowest) of byte `offset` of a file, live and
    /// durable alike: damage at rest, which every later read sees. Returns
    /// whether the file holds that byte.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> bool {
        let fs = self.fs.borrow();
        let Some(file) = fs.live.files.get(path) else {
            return false;
        };
        let mut data = file.borrow_mut();
        let at = offset as usize;
        if at >= data.live.len() {
            return false;
        }
        data.live[at] ^= 1 << (bit % 8);
        if let Some(byte) = data.durable.get_mut(at) {
            *byte ^= 1 << (bit % 8);
        }
        true
    }

    /// Makes the sector holding byte `offset` of a file unreadable: every
    /// read that touches it fails with EIO (a latent media error) until
    /// [`MemStorage::clear_unreadable`]. Returns whether the file exists.
    pub fn set_unreadable(&self, path: &Path, offset: u64) -> bool {
        let fs = self.fs.borrow();
        let Some(file) = fs.live.files.get(path) else {
            return false;
        };
        file.borrow_mut()
            .unreadable
            .insert(offset / SIM_SECTOR_BYTES);
        true
    }

    /// Sets (`Some`) or removes (`None`) an extended attribute of a file,
    /// live and durable alike, for tests that damage or strip files.
    /// Returns whether the file exists.
    pub fn set_file_attribute(&self, path: &Path, name: &str, value: Option<Vec<u8>>) -> bool {
        let fs = self.fs.borrow();
        let Some(file) = fs.live.files.get(path) else {
            return false;
        };
        let mut data = file.borrow_mut();
        match value {
            Some(value) => {
                data.attributes.insert(name.to_owned(), value.clone());
                data.durable_attributes.insert(name.to_owned(), value);
            }
            None => {
                data.attributes.remove(name);
                data.durable_attributes.remove(name);
            }
        }
        true
    }

    /// Makes every sector of a file readable again.
    pub fn clear_unreadable(&self, path: &Path) {
        if let Some(file) = self.fs.borrow().live.files.get(path) {
            file.borrow_mut().unreadable.clear();
        }
    }

    fn handle(&self, path: &Path, data: FileRef) -> MemFile {
        MemFile {
            storage: self.clone(),
            path: path.to_path_buf(),
            data,
            crash_count: self.fs.borrow().crash_count,
            write_through: false,
        }
    }

    /// Yields to other tasks with the configured probability, then counts
    /// the operation towards a power cut.
    async fn begin(&self) -> io::Result<()> {
        let yield_first = {
            let mut fs = self.fs.borrow_mut();
            let rate = fs.faults.yield_rate;
            fs.chance(rate)
        };
        if yield_first {
            futures_lite::future::yield_now().await;
        }
        if self.incarnation.get() != self.fs.borrow().crash_count {
            return Err(io::Error::other("storage handle of a process that crashed"));
        }
        self.fs.borrow_mut().tick()
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
    type Buffered = MemBufferedFile;
    type Lock = MemLock;

    async fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.begin().await?;
        let mut fs = self.fs.borrow_mut();
        fs.check_parents(path)?;
        // A root (see `is_dir`) is made like any other directory: from then
        // on the disk tracks it.
        if fs.live.dirs.contains(path) || fs.live.files.contains_key(path) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        if trace_io() {
            eprintln!("    create_dir {}", path.display());
        }
        fs.live.dirs.insert(path.to_path_buf());
        fs.dirs_made.insert(path.to_path_buf());
        fs.unsynced_dir_ops.push(DirOp::MakeDir(path.to_path_buf()));
        Ok(())
    }

    async fn check_dir(&self, dir: &Path) -> io::Result<()> {
        self.fs.borrow().check_parents(&dir.join("_"))
    }

    async fn create(&self, path: &Path, write_through: bool) -> io::Result<MemFile> {
        self.begin().await?;
        let data = {
            let mut fs = self.fs.borrow_mut();
            if let Some(err) = take_oneshot(&mut fs.oneshots.fail_creates) {
                return Err(err);
            }
            fs.check_parents(path)?;
            if fs.live.files.contains_key(path) || fs.live.dirs.contains(path) {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            let data = FileRef::default();
            fs.live.files.insert(path.to_path_buf(), data.clone());
            if trace_io() {
                eprintln!("    create {}", path.display());
            }
            fs.unsynced_dir_ops
                .push(DirOp::Create(path.to_path_buf(), data.clone()));
            data
        };
        let mut handle = self.handle(path, data);
        handle.write_through = write_through;
        Ok(handle)
    }

    async fn open(&self, path: &Path) -> io::Result<MemFile> {
        self.open_for_writes(path, false).await
    }

    async fn open_for_writes(&self, path: &Path, write_through: bool) -> io::Result<MemFile> {
        self.begin().await?;
        let data = self
            .fs
            .borrow()
            .live
            .files
            .get(path)
            .cloned()
            .ok_or_else(|| not_found(path))?;
        let mut handle = self.handle(path, data);
        handle.write_through = write_through;
        Ok(handle)
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        self.begin().await?;
        let mut fs = self.fs.borrow_mut();
        if let Some(err) = take_oneshot(&mut fs.oneshots.fail_removes) {
            return Err(err);
        }
        fs.live.files.remove(path).ok_or_else(|| not_found(path))?;
        if trace_io() {
            eprintln!("    remove {}", path.display());
        }
        fs.unsynced_dir_ops.push(DirOp::Remove(path.to_path_buf()));
        Ok(())
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.begin().await?;
        let mut fs = self.fs.borrow_mut();
        if let Some(err) = take_oneshot(&mut fs.oneshots.fail_renames) {
            return Err(err);
        }
        if from.parent() != to.parent() {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        let file = fs.live.files.remove(from).ok_or_else(|| not_found(from))?;
        fs.live.files.insert(to.to_path_buf(), file.clone());
        if trace_io() {
            eprintln!("    rename {} -> {}", from.display(), to.display());
        }
        fs.unsynced_dir_ops.push(DirOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            file,
        });
        Ok(())
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.begin().await?;
        let mut fs = self.fs.borrow_mut();
        if let Some(err) = take_oneshot(&mut fs.oneshots.fail_dir_syncs) {
            return Err(err);
        }
        let rate = fs.faults.sync_eio_rate;
        if let Some(err) = fs.eio(rate) {
            fs.counts.sync_eios += 1;
            return Err(err);
        }
        fs.check_parents(&dir.join("_"))?;
        if trace_io() {
            eprintln!("    sync_dir {}", dir.display());
        }
        let ops = std::mem::take(&mut fs.unsynced_dir_ops);
        let (mine, others): (Vec<DirOp>, Vec<DirOp>) = ops
            .into_iter()
            .partition(|op| op.path().parent() == Some(dir));
        fs.unsynced_dir_ops = others;
        for op in mine {
            apply_dir_op(&mut fs.durable, op);
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let fs = self.fs.borrow();
        fs.check_parents(&dir.join("_"))?;
        let files = fs.live.files.keys();
        Ok(files
            .chain(fs.live.dirs.iter())
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name().map(|n| n.to_os_string()))
            .collect())
    }

    fn latency_device(&self, _dir: &Path) -> io::Result<Option<u64>> {
        Ok(self.fs.borrow().latency_device)
    }

    async fn create_buffered(&self, path: &Path) -> io::Result<MemBufferedFile> {
        Ok(MemBufferedFile {
            file: self.create(path, false).await?,
            writable: true,
        })
    }

    async fn open_buffered(&self, path: &Path) -> io::Result<MemBufferedFile> {
        let is_dir = {
            let fs = self.fs.borrow();
            !fs.live.files.contains_key(path)
                && fs.dir_exists(path)
                && fs.check_parents(path).is_ok()
        };
        if is_dir {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a regular file", path.display()),
            ));
        }
        Ok(MemBufferedFile {
            file: self.open(path).await?,
            writable: false,
        })
    }

    fn fs_space(&self, _dir: &Path) -> io::Result<FsSpace> {
        let fs = self.fs.borrow();
        // A disk without a capacity is as large as the address space; half
        // of it keeps sums of sizes from overflowing.
        let total = fs.faults.capacity_bytes.unwrap_or(u64::MAX / 2);
        Ok(FsSpace {
            total_bytes: total,
            avail_bytes: total.saturating_sub(fs.used_bytes()),
        })
    }

    async fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.begin().await?;
        let mut fs = self.fs.borrow_mut();
        if let Some(err) = take_oneshot(&mut fs.oneshots.fail_links) {
            return Err(err);
        }
        let file = fs
            .live
            .files
            .get(from)
            .cloned()
            .ok_or_else(|| not_found(from))?;
        fs.check_parents(to)?;
        if fs.live.files.contains_key(to) || fs.live.dirs.contains(to) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        if trace_io() {
            eprintln!("    link {} -> {}", from.display(), to.display());
        }
        fs.live.files.insert(to.to_path_buf(), file.clone());
        fs.unsynced_dir_ops
            .push(DirOp::Link(to.to_path_buf(), file));
        Ok(())
    }

    async fn link_file(&self, file: &MemBufferedFile, to: &Path) -> io::Result<()> {
        file.file.begin().await?;
        let mut fs = self.fs.borrow_mut();
        if let Some(err) = take_oneshot(&mut fs.oneshots.fail_links) {
            return Err(err);
        }
        fs.check_parents(to)?;
        if fs.live.files.contains_key(to) || fs.live.dirs.contains(to) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        // linkat(2) refuses a file whose last name is gone: a removed file
        // lives on only in its open descriptors.
        if fs.names_of(&file.file.data) == 0 {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        if trace_io() {
            eprintln!("    link {} -> {}", file.file.path.display(), to.display());
        }
        let data = file.file.data.clone();
        fs.live.files.insert(to.to_path_buf(), data.clone());
        fs.unsynced_dir_ops
            .push(DirOp::Link(to.to_path_buf(), data));
        Ok(())
    }

    async fn stat(&self, path: &Path) -> io::Result<FileMeta> {
        self.begin().await?;
        let fs = self.fs.borrow();
        fs.check_parents(path)?;
        if let Some(file) = fs.live.files.get(path) {
            return Ok(FileMeta {
                kind: EntryKind::File,
                len: file.borrow().live.len() as u64,
                id: mem_file_id(file),
                links: fs.names_of(file),
                accessed_ms: 0,
            });
        }
        if fs.dir_exists(path) {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            path.hash(&mut hasher);
            return Ok(FileMeta {
                kind: EntryKind::Dir,
                len: 0,
                // Directories have no file to point at: their path names
                // them (a rename of a directory is not modelled).
                id: (1, hasher.finish()),
                links: 1,
                accessed_ms: 0,
            });
        }
        Err(not_found(path))
    }

    async fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.begin().await?;
        let mut fs = self.fs.borrow_mut();
        if let Some(err) = take_oneshot(&mut fs.oneshots.fail_removes) {
            return Err(err);
        }
        if fs.live.files.contains_key(path) {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        fs.check_parents(path)?;
        if !fs.dir_exists(path) && !fs.dirs_made.contains(path) {
            return Err(not_found(path));
        }
        if !fs.is_dir(path) {
            return Err(not_found(path));
        }
        // Anything beneath, not only direct entries: beneath a root the
        // levels between need not have been made.
        let has_entries = fs
            .live
            .files
            .keys()
            .chain(fs.live.dirs.iter())
            .any(|entry| entry != path && entry.starts_with(path));
        if has_entries {
            return Err(io::Error::from_raw_os_error(libc::ENOTEMPTY));
        }
        if !fs.dirs_made.contains(path) {
            // A root (see `is_dir`): from now on the disk tracks it, as a
            // directory there from the start, durable.
            fs.dirs_made.insert(path.to_path_buf());
            fs.durable.dirs.insert(path.to_path_buf());
        }
        if trace_io() {
            eprintln!("    remove_dir {}", path.display());
        }
        fs.live.dirs.remove(path);
        fs.unsynced_dir_ops
            .push(DirOp::RemoveDir(path.to_path_buf()));
        Ok(())
    }

    async fn try_lock(&self, path: &Path, note: &[u8]) -> io::Result<Option<MemLock>> {
        let exists = self.fs.borrow().live.files.contains_key(path);
        if exists {
            self.begin().await?;
        } else {
            match self.create(path, false).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let mut fs = self.fs.borrow_mut();
        if !fs.locks.insert(path.to_path_buf()) {
            return Ok(None);
        }
        // The note, as an unsynced write (a crash may lose it: a hint).
        if let Some(file) = fs.live.files.get(path) {
            let mut data = file.borrow_mut();
            let op = FileOp::Write {
                pos: 0,
                data: note.to_vec(),
            };
            data.live.clear();
            apply(&mut data.live, &op);
            data.unsynced.push(op);
        }
        Ok(Some(MemLock {
            fs: Rc::downgrade(&self.fs),
            path: path.to_path_buf(),
            crash_count: fs.crash_count,
        }))
    }
}

/// A lock of the in-memory backend, released when dropped or by a crash.
#[derive(Debug)]
pub struct MemLock {
    fs: std::rc::Weak<RefCell<MemFs>>,
    path: PathBuf,
    crash_count: u64,
}

impl Drop for MemLock {
    fn drop(&mut self) {
        if let Some(fs) = self.fs.upgrade() {
            let mut fs = fs.borrow_mut();
            // After a crash it was released already, and may be held again.
            if fs.crash_count == self.crash_count {
                fs.locks.remove(&self.path);
            }
        }
    }
}

/// A buffered file of the in-memory backend: a [`MemFile`] written at any
/// offset and length, under the same fault model.
#[derive(Debug)]
pub struct MemBufferedFile {
    file: MemFile,
    /// False when opened by `open_buffered` (read-only).
    writable: bool,
}

impl MemBufferedFile {
    /// Sets the file's extended attribute `name` to `value`, as
    /// `fsetxattr(2)`: seen at once; a crash keeps it once the file is
    /// [`MemBufferedFile::sync_all`]ed, not after a plain `sync`.
    pub async fn set_attribute(&self, name: &str, value: &[u8]) -> io::Result<()> {
        self.file.begin().await?;
        if let Some(err) = take_oneshot(
            &mut self
                .file
                .storage
                .fs
                .borrow_mut()
                .oneshots
                .fail_attribute_sets,
        ) {
            return Err(err);
        }
        self.file
            .data
            .borrow_mut()
            .attributes
            .insert(name.to_owned(), value.to_vec());
        Ok(())
    }

    /// `fsync(2)`: the file's data, as [`BufferedFile::sync`]
    /// (`fdatasync`), and its extended attributes, which `sync` does not
    /// make durable (no data read needs them).
    pub async fn sync_all(&self) -> io::Result<()> {
        StorageFile::sync(&self.file).await?;
        let mut data = self.file.data.borrow_mut();
        data.durable_attributes = data.attributes.clone();
        Ok(())
    }

    /// The file's extended attribute `name`, `None` if it has none (as
    /// `fgetxattr(2)`'s ENODATA).
    pub async fn attribute(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        self.file.begin().await?;
        Ok(self.file.data.borrow().attributes.get(name).cloned())
    }
}

impl BufferedFile for MemBufferedFile {
    type ReadBuf = Vec<u8>;

    async fn write_at(&self, data: Vec<u8>, pos: u64) -> io::Result<usize> {
        if !self.writable {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        let len = data.len();
        StorageFile::write_at(&self.file, MemBuf(data), pos).await?;
        Ok(len)
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        StorageFile::read_at(&self.file, pos, len).await
    }

    async fn sync(&self) -> io::Result<()> {
        StorageFile::sync(&self.file).await
    }

    async fn file_len(&self) -> io::Result<u64> {
        StorageFile::file_len(&self.file).await
    }

    async fn meta(&self) -> io::Result<FileMeta> {
        self.file.begin().await?;
        Ok(FileMeta {
            kind: EntryKind::File,
            len: self.file.data.borrow().live.len() as u64,
            id: mem_file_id(&self.file.data),
            links: self.file.storage.fs.borrow().names_of(&self.file.data),
            accessed_ms: 0,
        })
    }

    async fn close(self) -> io::Result<()> {
        StorageFile::close(self.file).await
    }
}

/// A simulated file's identity: its address, the same for all its names,
/// unique while it exists.
fn mem_file_id(file: &FileRef) -> (u64, u64) {
    (0, Rc::as_ptr(file) as usize as u64)
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
    data: FileRef,
    crash_count: u64,
    /// Writes are durable on completion (O_DSYNC).
    write_through: bool,
}

impl MemFile {
    async fn begin(&self) -> io::Result<()> {
        self.storage.begin().await?;
        if self.storage.fs.borrow().crash_count != self.crash_count {
            return Err(io::Error::other(format!(
                "{}: handle from before a simulated crash",
                self.path.display()
            )));
        }
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
        self.begin().await?;
        let mut fs = self.storage.fs.borrow_mut();
        *fs.write_sizes.entry(buf.0.len()).or_default() += 1;
        if let Some(err) = take_oneshot(&mut fs.oneshots.fail_writes) {
            return Err(err);
        }
        let rate = fs.faults.write_eio_rate;
        if let Some(err) = fs.eio(rate) {
            fs.counts.write_eios += 1;
            return Err(err);
        }
        let mut pos = pos;
        if fs
            .oneshots
            .misdirect_write
            .is_some_and(|(at, len, _)| at == pos && len == buf.0.len())
        {
            let (_, _, shift) = fs.oneshots.misdirect_write.take().expect("checked");
            fs.counts.writes_misdirected += 1;
            pos += shift;
        }
        let misdirect = fs.faults.write_misdirect_rate;
        if fs.chance(misdirect) {
            fs.counts.writes_misdirected += 1;
            let shift = (1 + fs.below(MISDIRECT_SECTORS_MAX)) * SIM_SECTOR_BYTES;
            pos = if fs.chance(0.5) || pos < shift {
                pos + shift
            } else {
                pos - shift
            };
        }
        fs.check_growth(&self.data, pos + buf.0.len() as u64)?;
        if trace_io() {
            eprintln!(
                "    write {} at {pos} len {}",
                self.path.display(),
                buf.0.len()
            );
        }
        let op = FileOp::Write { pos, data: buf.0 };
        let mut data = self.data.borrow_mut();
        apply(&mut data.live, &op);
        if self.write_through {
            // Durable on completion, and so is everything before it, as an
            // O_DSYNC write's implied flush makes it.
            let unsynced = std::mem::take(&mut data.unsynced);
            for earlier in unsynced.iter().chain(std::iter::once(&op)) {
                apply(&mut data.durable, earlier);
            }
        } else {
            data.unsynced.push(op);
        }
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        self.begin().await?;
        let mut fs = self.storage.fs.borrow_mut();
        let rate = fs.faults.read_eio_rate;
        if let Some(err) = fs.eio(rate) {
            fs.counts.read_eios += 1;
            return Err(err);
        }
        let mut bytes = {
            let data = self.data.borrow();
            let start = (pos as usize).min(data.live.len());
            let end = start.saturating_add(len).min(data.live.len());
            let first = start as u64 / SIM_SECTOR_BYTES;
            let last = (end as u64).div_ceil(SIM_SECTOR_BYTES);
            if end > start && data.unreadable.range(first..last).next().is_some() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            data.live[start..end].to_vec()
        };
        fs.bytes_read += bytes.len() as u64;
        if let Some((path, offset, bit, spared)) = fs.oneshots.flip_read.take() {
            let covers = path == self.path && offset >= pos && offset < pos + bytes.len() as u64;
            if covers && spared == 0 {
                fs.counts.read_flips += 1;
                bytes[(offset - pos) as usize] ^= 1 << (bit % 8);
            } else {
                let spared = if covers { spared - 1 } else { spared };
                fs.oneshots.flip_read = Some((path, offset, bit, spared));
            }
        }
        let flip = fs.faults.read_flip_rate;
        if !bytes.is_empty() && fs.chance(flip) {
            fs.counts.read_flips += 1;
            let bit = fs.below(bytes.len() as u64 * 8);
            bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
        }
        Ok(bytes)
    }

    /// In memory every call completes on the calling thread; saying so
    /// lets the simulation drive the journal's blocking-write path
    /// ([`crate::JournalBuilder::inline_write_bytes_max`]) too.
    fn has_blocking_calls(&self) -> bool {
        true
    }

    async fn write_blocking(&self, buf: MemBuf, pos: u64) -> io::Result<()> {
        let delay = self.storage.fs.borrow().blocking_write_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        self.write_at(buf, pos).await
    }

    async fn sync(&self) -> io::Result<()> {
        self.begin().await?;
        let mut fs = self.storage.fs.borrow_mut();
        if let Some(err) = take_oneshot(&mut fs.oneshots.fail_syncs) {
            return Err(err);
        }
        let rate = fs.faults.sync_eio_rate;
        if let Some(err) = fs.eio(rate) {
            fs.counts.sync_eios += 1;
            return Err(err);
        }
        if trace_io() {
            eprintln!("    sync {}", self.path.display());
        }
        let mut data = self.data.borrow_mut();
        let unsynced = std::mem::take(&mut data.unsynced);
        for op in &unsynced {
            apply(&mut data.durable, op);
        }
        Ok(())
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        self.begin().await?;
        let mut fs = self.storage.fs.borrow_mut();
        if let Some(err) = take_oneshot(&mut fs.oneshots.fail_allocates) {
            return Err(err);
        }
        if fs.faults.fallocate_unsupported {
            fs.counts.fallocate_refused += 1;
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        fs.check_growth(&self.data, len)?;
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        let op = FileOp::Resize { len };
        let mut data = self.data.borrow_mut();
        apply(&mut data.live, &op);
        data.unsynced.push(op);
        Ok(())
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.begin().await?;
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        if len > self.data.borrow().live.len() {
            let mut fs = self.storage.fs.borrow_mut();
            fs.check_growth(&self.data, len as u64)?;
        }
        let op = FileOp::Truncate { len };
        let mut data = self.data.borrow_mut();
        apply(&mut data.live, &op);
        data.unsynced.push(op);
        Ok(())
    }

    async fn file_len(&self) -> io::Result<u64> {
        self.begin().await?;
        Ok(self.data.borrow().live.len() as u64)
    }

    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}
