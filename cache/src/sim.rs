//! The cache model checker (feature `sim`): runs a sequence of bounded
//! operations against a [`Cache`], crashes it and reopens it, and checks
//! after every operation against a plain `BTreeMap` model. It runs on
//! either disk:
//!
//! - **the real one** ([`run_ops`]): a temporary directory on the real
//!   filesystem; a crash drops the cache without `shutdown` (staging files
//!   and reservations still open), and the filesystem keeps everything;
//! - **the simulated one** ([`run_power_loss`]): `MemStorage` under the
//!   fault model of `DESIGN.md`; a crash is a power loss (unsynced writes
//!   dropped, torn or reordered, unsynced creates, links, renames and
//!   unlinks undone, each on its own), and an `Op::Crash` arms a power cut
//!   a few storage calls ahead, so it lands inside whatever the cache does
//!   next: a commit's link, a put's rename, a directory fsync, a trim's
//!   unlink, the tracker's persist. One `Op::Crash` in three is instead a
//!   process crash with the power on (dropped and reopened, nothing
//!   lost), so what a life left unsynced meets a later loss. An operation
//!   the cut made fail may or may not have happened; the model keeps both
//!   outcomes as candidates for the check after the reopen, and so does a
//!   trimmed object (a trim's unlink is not synced: the object may come
//!   back) until an acknowledged put, commit or invalidation of its key,
//!   whose directory fsync makes the removal durable.
//!
//! What it checks:
//!
//! - accounting is exact: the cache's bytes and objects equal the model's,
//!   and its reserved bytes/objects equal what the live staging files and
//!   held reservations hold (so nothing is ever negative or leaked);
//! - `used + reserved` never exceeds the limits;
//! - the cache's keys are exactly the model's: nothing committed is lost
//!   except by a trim (trims report the keys they remove), nothing appears
//!   that was not committed; `get` returns exactly the committed bytes;
//! - commits never overwrite (a conflict only when the key exists);
//! - after a crash and reopen, no `.part` file is left and every committed
//!   object is intact: after a power loss, every key holds its last
//!   acknowledged bytes or one of its candidates, never anything else, and
//!   nothing acknowledged is missing unless a trim or a cut operation may
//!   have removed it.
//!
//! The cargo-fuzz target `cache_ops` runs each input through both
//! ([`run_ops`], then [`run_power_loss`]; `Op: Arbitrary`);
//! `cache/tests/sim_model.rs` drives [`run_ops`] from proptest, and
//! `cache/tests/power_loss.rs` runs seeded power-loss sequences and prints
//! their totals (sequences, power losses, faults per kind, violations).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;

/// Re-exported so a fuzz target can build [`Op`]s from raw bytes without
/// naming the same `arbitrary` version itself.
pub use arbitrary;

use ringstore_journal::storage::{FaultConfig, FaultCounts, MemStorage};

use crate::disk::{CacheDisk, RootedDisk};
use crate::faults::Faults;
use crate::{Cache, CacheBuilder, Error, Reservation, Staging, TrimKind};

/// Keys the operations pick from (by index modulo the count).
pub const SIM_KEYS: [&str; 8] = ["a", "b", "d1/c", "d1/d", "d1/d2/e", "d2/f", "g", "d2/h"];
/// Staging-file slots an operation sequence can hold open at once.
pub const SIM_STAGING_SLOTS: usize = 3;
/// Reservations a sequence can hold at once.
pub const SIM_HELD_RESERVATIONS_MAX: usize = 3;
/// Largest object or append the simulation writes.
pub const SIM_OBJECT_BYTES_MAX: usize = 24 << 10;
/// Largest staging file the simulation grows.
pub const SIM_STAGING_BYTES_MAX: usize = 48 << 10;
/// Byte limit of the simulated cache.
pub const SIM_BYTES_LIMIT: u64 = 128 << 10;
/// Object limit of the simulated cache.
pub const SIM_OBJECTS_LIMIT: u64 = 6;
/// Operations run per sequence; the rest are ignored.
pub const SIM_OPS_MAX: usize = 512;

/// One bounded operation. Numbers are reduced modulo their bounds, so every
/// value is valid.
#[derive(Debug, Clone, PartialEq, Eq, Arbitrary)]
pub enum Op {
    /// `put` of `len` bytes derived from `fill`.
    Put {
        /// Key index.
        key: u8,
        /// Length (mod [`SIM_OBJECT_BYTES_MAX`] + 1).
        len: u16,
        /// Content seed.
        fill: u8,
    },
    /// `get`.
    Get {
        /// Key index.
        key: u8,
    },
    /// `contains`.
    Contains {
        /// Key index.
        key: u8,
    },
    /// `invalidate`.
    Invalidate {
        /// Key index.
        key: u8,
    },
    /// `create_staging` into a slot (if free).
    Stage {
        /// Slot.
        slot: u8,
        /// Key index.
        key: u8,
    },
    /// `append` to a slot's staging file.
    Append {
        /// Slot.
        slot: u8,
        /// Length.
        len: u16,
        /// Content seed.
        fill: u8,
    },
    /// `commit` a slot's staging file.
    Commit {
        /// Slot.
        slot: u8,
    },
    /// `commit` with the post-link unlink of the staging name failing.
    CommitUnlinkFails {
        /// Slot.
        slot: u8,
    },
    /// `close` (abandon) a slot's staging file.
    Close {
        /// Slot.
        slot: u8,
    },
    /// Drop a slot's staging file without closing it.
    DropStaging {
        /// Slot.
        slot: u8,
    },
    /// `reserve` and hold the reservation (short deadline).
    Reserve {
        /// Bytes (mod half the limit).
        bytes: u16,
        /// Objects (mod 3).
        objects: u8,
    },
    /// Drop every held reservation.
    Release,
    /// A manual trim.
    Trim {
        /// Exhaustive instead of fast.
        exhaustive: bool,
    },
    /// Persist the tracker now.
    Persist,
    /// A `put` whose data write fails with ENOSPC.
    PutNoSpace {
        /// Key index.
        key: u8,
        /// Length.
        len: u16,
    },
    /// Drop the cache without shutdown and reopen it.
    Crash,
}

/// A whole fuzz input: what a cargo-fuzz target takes (`fuzz_target!(|input:
/// SimInput| { ringstore_cache::sim::run_input(&input).unwrap(); })`).
///
/// Its `Arbitrary` impl is dense: one byte of crash point, then operations
/// until the input runs out (no per-element continuation flags), so random
/// or mutated bytes always decode to long sequences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimInput {
    /// Crash (drop without shutdown, reopen) after this many operations.
    pub crash_after_ops: u8,
    /// The operations (at most [`SIM_OPS_MAX`] are decoded).
    pub ops: Vec<Op>,
}

impl<'a> Arbitrary<'a> for SimInput {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<SimInput> {
        let crash_after_ops = u8::arbitrary(u)?;
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < SIM_OPS_MAX {
            ops.push(Op::arbitrary(u)?);
        }
        Ok(SimInput {
            crash_after_ops,
            ops,
        })
    }
}

/// [`run_ops`] for a [`SimInput`].
pub fn run_input(input: &SimInput) -> Result<SimReport, SimFailure> {
    run_ops(&input.ops, usize::from(input.crash_after_ops))
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimReport {
    /// Operations run.
    pub ops_run: usize,
    /// Crashes (including the `crash_after_ops` one).
    pub crashes: usize,
    /// Successful puts.
    pub puts: usize,
    /// Successful commits.
    pub commits: usize,
    /// Commit conflicts.
    pub conflicts: usize,
    /// Keys removed by trims.
    pub trimmed: usize,
    /// Reservation timeouts.
    pub timeouts: usize,
    /// ENOSPC errors returned.
    pub nospace: usize,
    /// Power losses (simulated disk only).
    pub power_losses: usize,
    /// Operations a power cut made fail, whose outcome stayed open until
    /// the check after the reopen.
    pub cut_ops: usize,
    /// Keys a power loss took back to an earlier state the model allowed
    /// (a trimmed object back, a cut operation undone).
    pub rolled_back: usize,
    /// The simulated disk's fault counts (zero on the real disk).
    pub faults: FaultCounts,
}

impl SimReport {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &SimReport) {
        self.ops_run += other.ops_run;
        self.crashes += other.crashes;
        self.puts += other.puts;
        self.commits += other.commits;
        self.conflicts += other.conflicts;
        self.trimmed += other.trimmed;
        self.timeouts += other.timeouts;
        self.nospace += other.nospace;
        self.power_losses += other.power_losses;
        self.cut_ops += other.cut_ops;
        self.rolled_back += other.rolled_back;
        self.faults.add(&other.faults);
    }
}

/// A violated invariant.
#[derive(Debug, Clone, thiserror::Error)]
#[error("after op #{op_index} ({op:?}): {message}")]
pub struct SimFailure {
    /// Index of the operation (`usize::MAX` for checks after the last one).
    pub op_index: usize,
    /// The operation.
    pub op: Option<Op>,
    /// What went wrong.
    pub message: String,
}

/// Runs `ops` in a fresh temporary directory under `$RINGSTORE_SIM_DIR` or
/// `/var/tmp` (a real disk, not tmpfs), crashing after `crash_after_ops`
/// operations. Spawns its own glommio executor thread.
pub fn run_ops(ops: &[Op], crash_after_ops: usize) -> Result<SimReport, SimFailure> {
    let base = std::env::var_os("RINGSTORE_SIM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    run_ops_in(&base, ops, crash_after_ops)
}

/// [`run_ops`] with an explicit parent directory for the temporary cache.
pub fn run_ops_in(
    base: &Path,
    ops: &[Op],
    crash_after_ops: usize,
) -> Result<SimReport, SimFailure> {
    let setup = |message: String| SimFailure {
        op_index: 0,
        op: None,
        message,
    };
    let dir = tempfile::Builder::new()
        .prefix("ringstore-cache-sim-")
        .tempdir_in(base)
        .map_err(|e| setup(format!("tempdir in {}: {e}", base.display())))?;
    let ops: Vec<Op> = ops.iter().take(SIM_OPS_MAX).cloned().collect();
    let cache_dir = dir.path().join("cache");
    let handle = glommio::LocalExecutorBuilder::default()
        .name("cache-sim")
        .spawn(move || async move {
            std::fs::create_dir_all(&cache_dir)
                .map_err(|e| setup(format!("mkdir {}: {e}", cache_dir.display())))?;
            let disk = RootedDisk::open(&cache_dir)
                .map_err(|e| setup(format!("disk at {}: {e}", cache_dir.display())))?;
            World::run(disk, cache_dir, &ops, crash_after_ops, 0).await
        })
        .map_err(|e| setup(format!("executor: {e}")))?;
    handle
        .join()
        .map_err(|e| setup(format!("executor join: {e}")))?
}

/// The faults of the power-loss runs: crashes that drop (35%), tear (35%)
/// and reorder unsynced writes and undo unsynced namespace changes, and
/// operations that yield at random so tasks interleave differently per
/// seed. No random EIO: the cache fails an operation on EIO like on a cut
/// (tested apart), and damage at rest is found by the object checksums'
/// own tests (`tests/object_checksums.rs`).
pub fn power_loss_faults() -> FaultConfig {
    FaultConfig {
        crash_drop_rate: 0.35,
        crash_tear_rate: 0.35,
        dir_undo: true,
        yield_rate: 0.3,
        ..FaultConfig::none()
    }
}

/// Runs `ops` against a cache on the simulated disk (see the module docs):
/// a power loss before the op at `crash_after_ops` (at the end if past it),
/// and at each `Op::Crash` a power cut armed 1 to
/// [`POWER_CUT_AHEAD_MAX`] storage calls ahead. `seed` draws the disk's
/// faults and the cut points. Spawns its own glommio executor thread.
pub fn run_power_loss(
    ops: &[Op],
    crash_after_ops: usize,
    seed: u64,
) -> Result<SimReport, SimFailure> {
    let setup = |message: String| SimFailure {
        op_index: 0,
        op: None,
        message,
    };
    let ops: Vec<Op> = ops.iter().take(SIM_OPS_MAX).cloned().collect();
    let handle = glommio::LocalExecutorBuilder::default()
        .name("cache-power-sim")
        .spawn(move || async move {
            let disk = MemStorage::with_faults(seed, power_loss_faults());
            World::run(
                disk,
                PathBuf::from("/sim/cache"),
                &ops,
                crash_after_ops,
                seed,
            )
            .await
        })
        .map_err(|e| setup(format!("executor: {e}")))?;
    handle
        .join()
        .map_err(|e| setup(format!("executor join: {e}")))?
}

/// Most storage calls ahead an `Op::Crash` arms its power cut.
pub const POWER_CUT_AHEAD_MAX: u64 = 24;

/// The disk a checker run is on: what a crash does to it, and how the
/// checks look at it.
pub trait SimDisk: CacheDisk {
    /// True if a crash loses power (and so unsynced state), not only the
    /// process.
    const LOSES_POWER: bool;
    /// After the cache was dropped: the crash's effect on the disk.
    fn lose_power(&self);
    /// Arms a power cut at the `ops`-th storage call from now.
    fn arm_power_cut(&self, ops: u64);
    /// True once an armed cut happened (calls fail with EIO until
    /// [`SimDisk::lose_power`]).
    fn power_is_cut(&self) -> bool;
    /// A `.part` file anywhere beneath `dir`, if any.
    fn find_part(&self, dir: &Path) -> Option<PathBuf>;
    /// True if a file exists at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// The bytes of the file at `path` now (`None`: no file there), read
    /// without awaiting.
    fn read_now(&self, path: &Path) -> Option<Vec<u8>>;
    /// The disk's fault counts so far.
    fn fault_counts(&self) -> FaultCounts;
}

impl SimDisk for RootedDisk {
    const LOSES_POWER: bool = false;
    fn lose_power(&self) {}
    fn arm_power_cut(&self, _ops: u64) {}
    fn power_is_cut(&self) -> bool {
        false
    }
    fn find_part(&self, dir: &Path) -> Option<PathBuf> {
        find_part(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn read_now(&self, path: &Path) -> Option<Vec<u8>> {
        std::fs::read(path).ok()
    }
    fn fault_counts(&self) -> FaultCounts {
        FaultCounts::default()
    }
}

impl SimDisk for MemStorage {
    const LOSES_POWER: bool = true;
    fn lose_power(&self) {
        self.crash();
    }
    fn arm_power_cut(&self, ops: u64) {
        self.cut_power_after_ops(ops);
    }
    fn power_is_cut(&self) -> bool {
        MemStorage::power_is_cut(self)
    }
    fn find_part(&self, dir: &Path) -> Option<PathBuf> {
        self.paths().into_iter().find(|path| {
            path.starts_with(dir)
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(crate::STAGING_SUFFIX))
        })
    }
    fn exists(&self, path: &Path) -> bool {
        self.paths().iter().any(|p| p == path)
    }
    fn read_now(&self, path: &Path) -> Option<Vec<u8>> {
        self.file_bytes(path)
    }
    fn fault_counts(&self) -> FaultCounts {
        MemStorage::fault_counts(self)
    }
}

/// What a power cut inside an operation may leave at its key.
struct CutOutcomes {
    key: String,
    /// The key's acknowledged bytes before the op.
    before: Option<Vec<u8>>,
    /// Its bytes had the op completed.
    after: Option<Vec<u8>>,
    /// A commit: it never replaces an object (a conflict instead).
    never_replaces: bool,
}

struct Slot<S: CacheDisk> {
    staging: Staging<S>,
    data: Vec<u8>,
}

struct World<S: SimDisk> {
    disk: S,
    dir: PathBuf,
    faults: Rc<Faults>,
    cache: Option<Cache<S>>,
    slots: Vec<Option<Slot<S>>>,
    held: Vec<Reservation>,
    model: BTreeMap<String, Vec<u8>>,
    /// What a power loss may leave at a key besides the model's bytes
    /// (`None`: nothing): a trimmed object's bytes, both outcomes of an
    /// operation a cut made fail. Cleared by the check after the reopen.
    candidates: BTreeMap<String, Vec<Option<Vec<u8>>>>,
    /// Keys trims removed, not yet applied to the model.
    pending_trims: Vec<String>,
    /// Draws the power-cut points (a xorshift of the seed).
    rng: u64,
    /// A power cut is armed and has not happened yet.
    cut_armed: bool,
    report: SimReport,
}

fn key_of(index: u8) -> &'static str {
    SIM_KEYS[usize::from(index) % SIM_KEYS.len()]
}

fn data_of(len: usize, fill: u8) -> Vec<u8> {
    (0..len)
        .map(|i| fill.wrapping_add((i as u8).wrapping_mul(31)))
        .collect()
}

impl<S: SimDisk> World<S> {
    async fn run(
        disk: S,
        dir: PathBuf,
        ops: &[Op],
        crash_after_ops: usize,
        seed: u64,
    ) -> Result<SimReport, SimFailure> {
        let faults = Rc::new(Faults::new());
        let mut world = World {
            disk,
            cache: None,
            faults,
            slots: (0..SIM_STAGING_SLOTS).map(|_| None).collect(),
            held: Vec::new(),
            model: BTreeMap::new(),
            candidates: BTreeMap::new(),
            pending_trims: Vec::new(),
            rng: seed | 1,
            cut_armed: false,
            report: SimReport::default(),
            dir,
        };
        world.open(0).await?;
        for (index, op) in ops.iter().enumerate() {
            if index == crash_after_ops {
                world.crash(index).await?;
            }
            world.step(index, op).await?;
            world.report.ops_run += 1;
        }
        // On the simulated disk always: a cut armed but not reached yet is
        // replaced by this power loss.
        if crash_after_ops >= ops.len() || S::LOSES_POWER {
            world.crash(ops.len()).await?;
        }
        // A clean shutdown must also come back intact (tracker persisted).
        world.release_all();
        world.apply_trims(usize::MAX)?;
        if let Some(cache) = world.cache.take() {
            cache
                .shutdown()
                .await
                .map_err(|e| fail(usize::MAX, None, format!("shutdown: {e}")))?;
        }
        world.open(usize::MAX).await?;
        if S::LOSES_POWER {
            // A trim's unlinks that a cancelled trimmer never issued leave
            // their objects in place: still only the candidates' bytes.
            world.verify_with_candidates(usize::MAX, false).await?;
        } else {
            world.verify_full(usize::MAX).await?;
        }
        world.release_all();
        if let Some(cache) = world.cache.take() {
            cache
                .shutdown()
                .await
                .map_err(|e| fail(usize::MAX, None, format!("final shutdown: {e}")))?;
        }
        world.report.faults = world.disk.fault_counts();
        Ok(world.report)
    }

    /// Runs one operation and checks after it; when a power cut fell in
    /// it, takes its key's possible outcomes as candidates and crashes.
    async fn step(&mut self, index: usize, op: &Op) -> Result<(), SimFailure> {
        let outcomes = self.outcomes_if_cut(op);
        let applied = self.apply(index, op).await;
        if !self.disk.power_is_cut() {
            applied?;
            return self.after_op(index, Some(op));
        }
        if applied.is_err() {
            self.report.cut_ops += 1;
            if let Some(cut) = outcomes {
                // A trim during the op (a put's reservation asks for one)
                // may have removed the key's object, its unlink surviving
                // while the op's own change does not; and then a commit
                // finds the key free.
                let trimmed = self.peek_trimmed(index, &cut.key)?;
                let mut possible = vec![cut.before.clone()];
                if trimmed {
                    possible.push(None);
                }
                if !cut.never_replaces || cut.before.is_none() || trimmed {
                    possible.push(cut.after);
                }
                self.candidates.entry(cut.key).or_default().extend(possible);
            }
        }
        self.crash(index).await
    }

    /// After an acknowledged put, commit or invalidation of `key`: its
    /// directory fsync made every earlier removal of the key durable too,
    /// so no earlier bytes can come back.
    fn acknowledged(&mut self, key: &str) {
        self.candidates.remove(key);
    }

    /// What `op` may leave at its key if a power cut makes it fail midway:
    /// the key's bytes before it, and after it.
    fn outcomes_if_cut(&self, op: &Op) -> Option<CutOutcomes> {
        let (key, after, never_replaces) = match *op {
            Op::Put { key, len, fill } => {
                let data = data_of(usize::from(len) % (SIM_OBJECT_BYTES_MAX + 1), fill);
                (key_of(key).to_owned(), Some(data), false)
            }
            Op::Invalidate { key } => (key_of(key).to_owned(), None, false),
            Op::Commit { slot } | Op::CommitUnlinkFails { slot } => {
                let entry = self.slots[usize::from(slot) % SIM_STAGING_SLOTS].as_ref()?;
                (
                    entry.staging.key().to_owned(),
                    Some(entry.data.clone()),
                    true,
                )
            }
            _ => return None,
        };
        let before = self.model.get(&key).cloned();
        Some(CutOutcomes {
            key,
            before,
            after,
            never_replaces,
        })
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    async fn open(&mut self, index: usize) -> Result<(), SimFailure> {
        let cache = CacheBuilder::new(&self.dir)
            .disk(self.disk.clone())
            .bytes_limit(SIM_BYTES_LIMIT)
            .objects_limit(SIM_OBJECTS_LIMIT)
            .chunk_bytes(8 << 10)
            .low_watermark_percent(60)
            .trim_threshold_percent(85)
            .trim_interval_min(Duration::from_millis(1))
            .reservation_wait(Duration::from_millis(25))
            .tracker_persist_interval(Duration::from_millis(15))
            .tracker_chunk_entries(2)
            .faults(Rc::clone(&self.faults))
            .open()
            .await
            .map_err(|e| fail(index, None, format!("open: {e}")))?;
        self.cache = Some(cache);
        Ok(())
    }

    fn cache(&self, index: usize) -> Result<&Cache<S>, SimFailure> {
        self.cache
            .as_ref()
            .ok_or_else(|| fail(index, None, "no open cache".into()))
    }

    fn release_all(&mut self) {
        for slot in &mut self.slots {
            *slot = None;
        }
        self.held.clear();
    }

    async fn crash(&mut self, index: usize) -> Result<(), SimFailure> {
        self.release_all();
        self.apply_trims(index)?;
        // No shutdown: background tasks die, nothing is persisted.
        drop(self.cache.take());
        self.report.crashes += 1;
        if S::LOSES_POWER {
            self.disk.lose_power();
            self.cut_armed = false;
            self.report.power_losses += 1;
            self.open(index).await?;
            return self.verify_with_candidates(index, true).await;
        }
        self.open(index).await?;
        self.verify_full(index).await
    }

    /// The process died, the power did not: drop the cache and reopen it;
    /// what it left unsynced stays so (a later loss decides it).
    async fn process_crash(&mut self, index: usize) -> Result<(), SimFailure> {
        self.release_all();
        self.apply_trims(index)?;
        drop(self.cache.take());
        self.report.crashes += 1;
        self.open(index).await?;
        self.verify_with_candidates(index, false).await
    }

    /// After a crash and reopen on the simulated disk: each key holds its
    /// acknowledged bytes or one of its candidates (and the model takes
    /// what it holds), `get` returns what the disk holds, no `.part` file
    /// is left, and the accounting matches. After a power loss the
    /// candidates are spent; after a process crash they stay (what they
    /// stand for is still unsynced).
    async fn verify_with_candidates(
        &mut self,
        index: usize,
        power_lost: bool,
    ) -> Result<(), SimFailure> {
        let objects_dir = self.cache(index)?.objects_dir().to_path_buf();
        if let Some(part) = self.disk.find_part(&objects_dir) {
            return Err(fail(
                index,
                None,
                format!("{} survived a crash and restart", part.display()),
            ));
        }
        // What the disk holds, read before anything awaits: the reopened
        // cache's trimmer (over its threshold) has not run yet, so nothing
        // the check should see is removed first.
        let on_disk: Vec<Option<Vec<u8>>> = SIM_KEYS
            .iter()
            .map(|key| self.disk.read_now(&objects_dir.join(key)))
            .collect();
        let candidates = if power_lost {
            std::mem::take(&mut self.candidates)
        } else {
            self.candidates.clone()
        };
        for (key, got) in SIM_KEYS.iter().copied().zip(on_disk) {
            let acknowledged = self.model.get(key).cloned();
            let others = candidates.get(key).map(Vec::as_slice).unwrap_or(&[]);
            if got != acknowledged && !others.contains(&got) {
                let what = match (&got, &acknowledged) {
                    (None, Some(_)) => "an acknowledged object is lost".to_owned(),
                    (Some(bytes), None) => format!(
                        "{} bytes appeared that were never acknowledged",
                        bytes.len()
                    ),
                    (Some(bytes), Some(expected)) => format!(
                        "{} bytes differ from the acknowledged {} (or a candidate)",
                        bytes.len(),
                        expected.len()
                    ),
                    (None, None) => unreachable!("equal"),
                };
                return Err(fail(index, None, format!("{key} after a crash: {what}")));
            }
            if got != acknowledged {
                self.report.rolled_back += 1;
            }
            let read = self
                .cache(index)?
                .get(key)
                .await
                .map_err(|e| fail(index, None, format!("get {key} after a crash: {e}")))?
                .map(|object| object.to_vec());
            let trimmed = self.peek_trimmed(index, key)?;
            if read.is_none() && trimmed && got.is_some() {
                // The reopened cache's trimmer removed it (its unlink not
                // synced: it may come back at the next loss).
                self.candidates.entry(key.to_owned()).or_default().push(got);
                self.model.remove(key);
                continue;
            }
            if read != got {
                return Err(fail(
                    index,
                    None,
                    format!(
                        "{key} after a crash: get returned {:?} bytes, the disk holds {:?}",
                        read.map(|r| r.len()),
                        got.as_ref().map(Vec::len)
                    ),
                ));
            }
            match got {
                Some(bytes) => self.model.insert(key.to_owned(), bytes),
                None => self.model.remove(key),
            };
        }
        self.after_op(index, None)
    }

    async fn apply(&mut self, index: usize, op: &Op) -> Result<(), SimFailure> {
        let bad = |message: String| fail(index, Some(op.clone()), message);
        match *op {
            Op::Put { key, len, fill } => {
                let key = key_of(key);
                let data = data_of(usize::from(len) % (SIM_OBJECT_BYTES_MAX + 1), fill);
                match self.cache(index)?.put(key, &data).await {
                    Ok(()) => {
                        self.model.insert(key.to_owned(), data);
                        self.acknowledged(key);
                        self.report.puts += 1;
                    }
                    Err(Error::ReservationTimeout { .. }) => self.report.timeouts += 1,
                    Err(e) => return Err(bad(format!("put: {e}"))),
                }
            }
            Op::Get { key } => {
                let key = key_of(key);
                let got = self
                    .cache(index)?
                    .get(key)
                    .await
                    .map_err(|e| bad(format!("get: {e}")))?;
                let trimmed = self.peek_trimmed(index, key)?;
                match (got, self.model.get(key)) {
                    (Some(object), Some(expected)) => {
                        if &object[..] != expected.as_slice() {
                            return Err(bad(format!(
                                "get returned {} bytes that differ from the committed {}",
                                object.len(),
                                expected.len()
                            )));
                        }
                    }
                    (Some(object), None) => {
                        return Err(bad(format!(
                            "get found {} bytes never committed",
                            object.len()
                        )))
                    }
                    (None, Some(_)) if !trimmed => {
                        return Err(bad("committed object lost (not trimmed)".into()))
                    }
                    (None, _) => {}
                }
            }
            Op::Contains { key } => {
                let key = key_of(key);
                let found = self
                    .cache(index)?
                    .contains(key)
                    .map_err(|e| bad(format!("contains: {e}")))?;
                if found != self.model.contains_key(key) {
                    return Err(bad(format!("contains = {found}, model disagrees")));
                }
            }
            Op::Invalidate { key } => {
                let key = key_of(key);
                let removed = self
                    .cache(index)?
                    .invalidate(key)
                    .await
                    .map_err(|e| bad(format!("invalidate: {e}")))?;
                let trimmed = self.peek_trimmed(index, key)?;
                let expected = self.model.remove(key).is_some();
                self.acknowledged(key);
                // A trim may have removed it first; then invalidate finds
                // nothing.
                let trimmed_first = trimmed && !removed;
                if removed != expected && !trimmed_first {
                    return Err(bad(format!(
                        "invalidate = {removed}, model had it: {expected}"
                    )));
                }
            }
            Op::Stage { slot, key } => {
                let slot = usize::from(slot) % SIM_STAGING_SLOTS;
                if self.slots[slot].is_some() {
                    return Ok(());
                }
                match self.cache(index)?.create_staging(key_of(key)).await {
                    Ok(staging) => {
                        self.slots[slot] = Some(Slot {
                            staging,
                            data: Vec::new(),
                        })
                    }
                    Err(Error::ReservationTimeout { .. }) => self.report.timeouts += 1,
                    Err(e) => return Err(bad(format!("create_staging: {e}"))),
                }
            }
            Op::Append { slot, len, fill } => {
                let slot = usize::from(slot) % SIM_STAGING_SLOTS;
                let Some(entry) = self.slots[slot].as_mut() else {
                    return Ok(());
                };
                let room = SIM_STAGING_BYTES_MAX - entry.data.len();
                let len = (usize::from(len) % (SIM_OBJECT_BYTES_MAX + 1)).min(room);
                let data = data_of(len, fill);
                match entry.staging.append(&data).await {
                    Ok(()) => entry.data.extend_from_slice(&data),
                    Err(Error::ReservationTimeout { .. }) => self.report.timeouts += 1,
                    Err(e) => return Err(bad(format!("append: {e}"))),
                }
            }
            Op::Commit { slot } | Op::CommitUnlinkFails { slot } => {
                let slot = usize::from(slot) % SIM_STAGING_SLOTS;
                let Some(entry) = self.slots[slot].take() else {
                    return Ok(());
                };
                let unlink_fails = matches!(op, Op::CommitUnlinkFails { .. });
                if unlink_fails {
                    self.faults.fail_next_staging_unlinks(1);
                }
                let key = entry.staging.key().to_owned();
                let staging_path = entry.staging.path();
                let existed = self.model.contains_key(&key);
                let failures_before = self.cache(index)?.stats().staging_unlink_failures;
                let result = entry.staging.commit().await;
                self.faults.fail_next_staging_unlinks(0);
                let trimmed = self.peek_trimmed(index, &key)?;
                match result {
                    Ok(()) => {
                        if existed && !trimmed {
                            return Err(bad(format!("commit overwrote existing key {key}")));
                        }
                        // The dead name may already be gone: the periodic
                        // maintenance retries it.
                        let failures = self.cache(index)?.stats().staging_unlink_failures;
                        if unlink_fails && failures != failures_before + 1 {
                            return Err(bad("injected unlink failure was not counted".into()));
                        }
                        self.acknowledged(&key);
                        self.model.insert(key, entry.data);
                        self.report.commits += 1;
                    }
                    Err(Error::Conflict { .. }) => {
                        if !existed {
                            return Err(bad(format!(
                                "conflict on {key}, which was never committed"
                            )));
                        }
                        if self.disk.exists(&staging_path) {
                            return Err(bad("conflicting commit left its staging file".into()));
                        }
                        self.report.conflicts += 1;
                    }
                    Err(e) => return Err(bad(format!("commit: {e}"))),
                }
            }
            Op::Close { slot } => {
                let slot = usize::from(slot) % SIM_STAGING_SLOTS;
                if let Some(entry) = self.slots[slot].take() {
                    let path = entry.staging.path();
                    entry
                        .staging
                        .close()
                        .await
                        .map_err(|e| bad(format!("close: {e}")))?;
                    if self.disk.exists(&path) {
                        return Err(bad("closed staging file still on disk".into()));
                    }
                }
            }
            Op::DropStaging { slot } => {
                let slot = usize::from(slot) % SIM_STAGING_SLOTS;
                self.slots[slot] = None;
            }
            Op::Reserve { bytes, objects } => {
                if self.held.len() >= SIM_HELD_RESERVATIONS_MAX {
                    return Ok(());
                }
                let bytes = u64::from(bytes) % (SIM_BYTES_LIMIT / 2);
                let objects = u64::from(objects) % 3;
                let deadline = Instant::now() + Duration::from_millis(10);
                match self.cache(index)?.reserve(bytes, objects, deadline).await {
                    Ok(reservation) => self.held.push(reservation),
                    Err(Error::ReservationTimeout { .. }) => self.report.timeouts += 1,
                    Err(e) => return Err(bad(format!("reserve: {e}"))),
                }
            }
            Op::Release => self.held.clear(),
            Op::Trim { exhaustive } => {
                let kind = if exhaustive {
                    TrimKind::Exhaustive
                } else {
                    TrimKind::Fast
                };
                let report = self
                    .cache(index)?
                    .trim(kind)
                    .await
                    .map_err(|e| bad(format!("trim: {e}")))?;
                if let Some(walk) = &report.walk {
                    if walk.untracked_added + walk.missing_dropped + walk.resized > 0 {
                        return Err(bad(format!("walk found the tracker out of date: {walk:?}")));
                    }
                }
            }
            Op::Persist => self
                .cache(index)?
                .persist_tracker()
                .await
                .map_err(|e| bad(format!("persist: {e}")))?,
            Op::PutNoSpace { key, len } => {
                let key = key_of(key);
                let data = data_of((usize::from(len) % SIM_OBJECT_BYTES_MAX).max(1), 7);
                self.faults.fail_next_writes_with_enospc(1);
                let result = self.cache(index)?.put(key, &data).await;
                self.faults.fail_next_writes_with_enospc(0);
                match result {
                    Err(Error::NoSpace { .. }) => self.report.nospace += 1,
                    Err(Error::ReservationTimeout { .. }) => self.report.timeouts += 1,
                    Ok(()) => return Err(bad("put succeeded through an injected ENOSPC".into())),
                    Err(e) => return Err(bad(format!("put under ENOSPC: {e}"))),
                }
            }
            // One in three: the process dies and the power stays on, so
            // what it left unsynced meets a later loss in the next life.
            // (Not while a cut is armed: it would fall in the reopen.)
            Op::Crash
                if S::LOSES_POWER && !self.cut_armed && self.next_random().is_multiple_of(3) =>
            {
                self.process_crash(index).await?;
            }
            Op::Crash if S::LOSES_POWER => {
                let ahead = 1 + self.next_random() % POWER_CUT_AHEAD_MAX;
                self.disk.arm_power_cut(ahead);
                self.cut_armed = true;
            }
            Op::Crash => self.crash(index).await?,
        }
        Ok(())
    }

    /// True if `key` was trimmed since the model was last updated.
    fn peek_trimmed(&mut self, index: usize, key: &str) -> Result<bool, SimFailure> {
        let trimmed = self.cache(index)?.take_trimmed_keys();
        self.pending_trims.extend(trimmed);
        Ok(self.pending_trims.iter().any(|k| k == key))
    }

    /// Applies the keys trims removed: a trimmed key the cache no longer has
    /// leaves the model; one it has again was re-written after the trim.
    fn apply_trims(&mut self, index: usize) -> Result<(), SimFailure> {
        let Some(cache) = self.cache.as_ref() else {
            return Err(fail(index, None, "no open cache".into()));
        };
        let mut trimmed = std::mem::take(&mut self.pending_trims);
        trimmed.extend(cache.take_trimmed_keys());
        for key in trimmed {
            self.report.trimmed += 1;
            if !cache.contains(&key).unwrap_or(false) {
                let bytes = self.model.remove(&key);
                // A trim's unlink is not synced: a power loss may undo it.
                if S::LOSES_POWER && bytes.is_some() {
                    self.candidates.entry(key).or_default().push(bytes);
                }
            }
        }
        Ok(())
    }

    fn after_op(&mut self, index: usize, op: Option<&Op>) -> Result<(), SimFailure> {
        self.apply_trims(index)?;
        self.check_accounting(index, op)
    }

    fn check_accounting(&self, index: usize, op: Option<&Op>) -> Result<(), SimFailure> {
        let bad = |message: String| fail(index, op.cloned(), message);
        let cache = self.cache(index)?;
        let stats = cache.stats();
        let model_bytes: u64 = self.model.values().map(|v| v.len() as u64).sum();
        if stats.bytes != model_bytes || stats.objects != self.model.len() as u64 {
            return Err(bad(format!(
                "cache holds {} bytes / {} objects, model {} / {}",
                stats.bytes,
                stats.objects,
                model_bytes,
                self.model.len()
            )));
        }
        if stats.bytes + stats.reserved_bytes > stats.bytes_limit {
            return Err(bad(format!(
                "used {} + reserved {} bytes above the limit {}",
                stats.bytes, stats.reserved_bytes, stats.bytes_limit
            )));
        }
        if stats.objects + stats.reserved_objects > stats.objects_limit {
            return Err(bad(format!(
                "used {} + reserved {} objects above the limit {}",
                stats.objects, stats.reserved_objects, stats.objects_limit
            )));
        }
        let live_slots = self.slots.iter().flatten();
        let expect_bytes: u64 = self.held.iter().map(Reservation::bytes).sum::<u64>()
            + live_slots
                .clone()
                .map(|s| s.staging.reserved_bytes())
                .sum::<u64>();
        let expect_objects: u64 =
            self.held.iter().map(Reservation::objects).sum::<u64>() + live_slots.count() as u64;
        if stats.reserved_bytes != expect_bytes || stats.reserved_objects != expect_objects {
            return Err(bad(format!(
                "reserved {} bytes / {} objects, holders have {} / {}",
                stats.reserved_bytes, stats.reserved_objects, expect_bytes, expect_objects
            )));
        }
        let keys: Vec<String> = {
            let mut keys = cache.keys_oldest_first();
            keys.sort();
            keys
        };
        let model_keys: Vec<String> = self.model.keys().cloned().collect();
        if keys != model_keys {
            return Err(bad(format!("cache keys {keys:?}, model {model_keys:?}")));
        }
        Ok(())
    }

    /// After a (re)open: no staging file left, keys and bytes match, every
    /// object reads back exactly.
    async fn verify_full(&mut self, index: usize) -> Result<(), SimFailure> {
        let objects_dir = self.cache(index)?.objects_dir().to_path_buf();
        if let Some(part) = self.disk.find_part(&objects_dir) {
            return Err(fail(
                index,
                None,
                format!("{} survived a restart", part.display()),
            ));
        }
        self.after_op(index, None)?;
        let keys: Vec<String> = self.model.keys().cloned().collect();
        for key in keys {
            let got = self
                .cache(index)?
                .get(&key)
                .await
                .map_err(|e| fail(index, None, format!("get {key} after reopen: {e}")))?;
            let trimmed = self.peek_trimmed(index, &key)?;
            match (got, self.model.get(&key)) {
                (Some(object), Some(expected)) if &object[..] == expected.as_slice() => {}
                (None, _) if trimmed => {}
                (got, _) => {
                    return Err(fail(
                        index,
                        None,
                        format!(
                            "{key} after reopen: got {:?} bytes, committed {:?}",
                            got.map(|o| o.len()),
                            self.model.get(&key).map(Vec::len)
                        ),
                    ))
                }
            }
        }
        self.after_op(index, None)
    }
}

fn find_part(dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let path = entry.path();
        let kind = entry.file_type().ok()?;
        if kind.is_dir() {
            if let Some(found) = find_part(&path) {
                return Some(found);
            }
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(crate::STAGING_SUFFIX))
        {
            return Some(path);
        }
    }
    None
}

fn fail(op_index: usize, op: Option<Op>, message: String) -> SimFailure {
    SimFailure {
        op_index,
        op,
        message,
    }
}
