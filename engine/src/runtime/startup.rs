//! Checks made before any reactor starts, so a misconfigured host fails with
//! an error that says what to change instead of a reactor panic: CPUs,
//! locked memory, and the data directory's superblock (shard count, and
//! which shards were created: a created shard whose directory is gone is
//! refused, not started empty).
//!
//! The superblock goes through the storage layer like every durable byte
//! ([`check_manifest_on`], [`read_manifest_on`]: the real disk or the
//! power-cut simulator); [`check_manifest`] and [`read_manifest`] run them
//! on the real disk for callers without a reactor, on a short-lived one.

use crate::error::{Error, Result};
use ringstore_journal::storage::{errno, DmaStorage, EntryKind, Storage};
use ringstore_journal::superblock::{self, SuperblockFault, SuperblockKind};
use std::path::{Path, PathBuf};
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// glommio refuses to start a reactor below this RLIMIT_MEMLOCK (bytes).
pub const MEMLOCK_MIN_BYTES: u64 = 512 * 1024;

/// Name of the data directory's superblock (the engine manifest: the shard
/// count), written in two checksummed copies like a journal's.
pub const MANIFEST_FILE_NAME: &str = "superblock";

/// The plain-text manifest of the first format, no longer read.
const LEGACY_MANIFEST_NAME: &str = "engine";

/// Most shards a data directory records.
pub const SHARDS_MAX: u32 = 4096;

/// I/O memory of the short-lived reactor [`check_manifest`] and
/// [`read_manifest`] run on: two superblock copies at a time.
const MANIFEST_IO_MEMORY_BYTES: usize = 256 << 10;

/// The body of a data directory's superblock (after it, with
/// [`DATA_DIR_FLAG_CREATED_RECORDED`], the created-shards bitmap).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DataDirBody {
    /// Shards in the data directory.
    pub shards: U32,
    /// [`DATA_DIR_FLAG_CREATED_RECORDED`] or zero (a superblock written
    /// before shards were recorded).
    pub flags: U32,
}

/// [`DataDirBody::flags`]: a bitmap of `ceil(shards / 8)` bytes follows the
/// body; bit `i % 8` of byte `i / 8` set means shard `i` was created (its
/// identity written) in this data directory.
pub const DATA_DIR_FLAG_CREATED_RECORDED: u32 = 1;

/// What a data directory's superblock records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The shard count.
    pub shards: usize,
    /// Whether each shard was created, by index; `None` for a superblock
    /// written before shards were recorded (the next start records them).
    pub created: Option<Vec<bool>>,
}

impl Manifest {
    /// Whether shard `index` is recorded as created.
    pub fn is_created(&self, index: usize) -> bool {
        self.created
            .as_ref()
            .is_some_and(|created| created.get(index).copied().unwrap_or(false))
    }

    fn encode(&self) -> Vec<u8> {
        let shards = self.shards as u32;
        let created = self.created.as_deref().unwrap_or(&[]);
        let mut body = DataDirBody {
            shards: shards.into(),
            flags: DATA_DIR_FLAG_CREATED_RECORDED.into(),
        }
        .as_bytes()
        .to_vec();
        let mut bitmap = vec![0u8; self.shards.div_ceil(8)];
        for (index, _) in created.iter().enumerate().filter(|(_, c)| **c) {
            bitmap[index / 8] |= 1 << (index % 8);
        }
        body.extend_from_slice(&bitmap);
        body
    }
}

/// The CPUs this process may run on (its affinity mask), ascending.
pub fn available_cpus() -> Vec<usize> {
    let mut cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|core| core.id)
        .collect();
    cpus.sort_unstable();
    cpus
}

/// The CPU of each shard: `requested` if given (each must be available),
/// else shard `i` on the `i`-th available CPU (wrapping around when there
/// are more shards than CPUs).
pub fn place_shards(shards: usize, requested: Option<&[usize]>) -> Result<Vec<usize>> {
    let available = available_cpus();
    if available.is_empty() {
        return Err(Error::CpuUnavailable {
            cpu: 0,
            available: "none (the affinity mask could not be read)".into(),
        });
    }
    match requested {
        Some(cpus) => {
            if cpus.len() != shards {
                return Err(Error::InvalidConfig {
                    setting: "cpus",
                    value: format!("{cpus:?}"),
                    reason: format!("one CPU per shard ({shards})"),
                });
            }
            for &cpu in cpus {
                if !available.contains(&cpu) {
                    return Err(Error::CpuUnavailable {
                        cpu,
                        available: describe_cpus(&available),
                    });
                }
            }
            Ok(cpus.to_vec())
        }
        None => Ok((0..shards)
            .map(|i| available[i % available.len()])
            .collect()),
    }
}

fn describe_cpus(cpus: &[usize]) -> String {
    let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
    list.join(",")
}

/// RLIMIT_MEMLOCK's soft limit in bytes (`None`: unlimited), read from
/// `/proc/self/limits`.
pub fn memlock_limit() -> Result<Option<u64>> {
    let path = Path::new("/proc/self/limits");
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    let line = text
        .lines()
        .find(|line| line.starts_with("Max locked memory"))
        .ok_or_else(|| Error::io("parse", path, std::io::ErrorKind::InvalidData.into()))?;
    let soft = line
        .trim_start_matches("Max locked memory")
        .split_whitespace()
        .next()
        .unwrap_or("");
    if soft == "unlimited" {
        return Ok(None);
    }
    soft.parse()
        .map(Some)
        .map_err(|_| Error::io("parse", path, std::io::ErrorKind::InvalidData.into()))
}

/// Whether the process may lock memory beyond RLIMIT_MEMLOCK
/// (CAP_IPC_LOCK in its effective set).
fn has_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let caps = status.lines().find(|l| l.starts_with("CapEff:"))?;
            u64::from_str_radix(caps.trim_start_matches("CapEff:").trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Fails when a reactor cannot start under the locked-memory limit; warns
/// when the shards' I/O buffers (`io_memory_bytes` each) cannot be
/// registered with io_uring (they then come from the plain allocator: slower,
/// not wrong).
pub fn check_memlock(limit: Option<u64>, shards: usize, io_memory_bytes: usize) -> Result<()> {
    let Some(limit) = limit else {
        return Ok(());
    };
    if limit < MEMLOCK_MIN_BYTES {
        return Err(Error::MemlockTooLow {
            limit_bytes: limit,
            needed_bytes: MEMLOCK_MIN_BYTES,
        });
    }
    // Each reactor registers its buffers with three rings.
    let wanted = (shards * io_memory_bytes * 3) as u64;
    if limit < wanted && !has_ipc_lock() {
        tracing::warn!(
            limit_bytes = limit,
            wanted_bytes = wanted,
            "RLIMIT_MEMLOCK is below what the shards' io_uring buffers need; they fall back \
             to unregistered memory. Raise it (ulimit -l, LimitMEMLOCK=) for full speed"
        );
    }
    Ok(())
}

/// Creates the data directory and checks or writes its superblock, which
/// records the shard count (routing depends on it). A damaged or stale copy
/// is rewritten from the good one (the stale copy first), counted in
/// `ringstore_data_dir_superblock_repairs_total`, so one more fault cannot
/// take both. On the real disk, for callers without a reactor: see
/// [`check_manifest_on`].
pub fn check_manifest(data_dir: &Path, shards: usize) -> Result<()> {
    let data_dir = data_dir.to_path_buf();
    on_short_reactor(move || async move {
        check_manifest_on(&DmaStorage::new(), &data_dir, shards).await
    })
}

/// [`check_manifest`] through `storage`, on the calling reactor.
pub async fn check_manifest_on<S: Storage>(
    storage: &S,
    data_dir: &Path,
    shards: usize,
) -> Result<()> {
    ringstore_journal::storage::create_dir_all_durably(storage, data_dir)
        .await
        .map_err(|e| Error::io("create data directory", data_dir, e))?;
    match read_manifest_chosen(storage, data_dir).await? {
        Some((found, _)) if found.shards != shards => Err(Error::ShardCountMismatch {
            path: data_dir.join(MANIFEST_FILE_NAME),
            found: found.shards,
            configured: shards,
        }),
        Some((_, chosen)) if !chosen.stale_or_damaged.is_empty() => {
            let path = data_dir.join(MANIFEST_FILE_NAME);
            superblock::write_file(
                storage,
                &path,
                false,
                SuperblockKind::DataDir,
                chosen.sequence,
                &chosen.body,
                chosen.newest_copy,
            )
            .await
            .map_err(|f| Error::io(f.op, &path, f.source))?;
            metrics::counter!("ringstore_data_dir_superblock_repairs_total").increment(1);
            tracing::warn!(path = %path.display(), "data directory superblock copy rewritten from the good one");
            Ok(())
        }
        Some(_) => Ok(()),
        None => write_manifest(storage, data_dir, shards).await,
    }
}

/// The shard count recorded in `data_dir`'s superblock (`None`: a new data
/// directory, holding no shard yet).
///
/// The superblock is two checksummed copies (see
/// `ringstore_journal::superblock`): one damaged copy is reported in the log
/// and the other used; when neither verifies, or the superblock is missing
/// while shard directories exist, this is [`Error::Manifest`] naming the
/// file and offset, never a guess at the count. On the real disk, for
/// callers without a reactor: see [`read_manifest_on`].
pub fn read_manifest(data_dir: &Path) -> Result<Option<usize>> {
    let data_dir = data_dir.to_path_buf();
    on_short_reactor(move || async move { read_manifest_on(&DmaStorage::new(), &data_dir).await })
}

/// [`read_manifest`] through `storage`, on the calling reactor.
pub async fn read_manifest_on<S: Storage>(storage: &S, data_dir: &Path) -> Result<Option<usize>> {
    Ok(read_manifest_record_on(storage, data_dir)
        .await?
        .map(|manifest| manifest.shards))
}

/// Everything `data_dir`'s superblock records (`None`: a new data
/// directory), through `storage`, on the calling reactor.
pub async fn read_manifest_record_on<S: Storage>(
    storage: &S,
    data_dir: &Path,
) -> Result<Option<Manifest>> {
    Ok(read_manifest_chosen(storage, data_dir)
        .await?
        .map(|(manifest, _)| manifest))
}

/// Refuses to start when a shard the superblock records as created has lost
/// its directory or its identity file: an open would make it a new, empty
/// shard, and every command it acknowledged would be gone without a word
/// ([`Error::ShardMissing`]). Shards in `abandoned` are let through (their
/// data given up on purpose), logged at error level and counted in
/// `ringstore_shards_abandoned_total`. [`crate::runtime::Engine`] calls it;
/// an embedder that opens its own shards under a data directory calls it
/// before they open (after [`check_manifest`]) and
/// [`record_created_shards`] once they have opened, before they take
/// commands (as `engine/examples/broker.rs` does). On the real disk, for
/// callers without a reactor: see [`check_created_shards_on`].
pub fn check_created_shards(data_dir: &Path, abandoned: &[usize]) -> Result<()> {
    let data_dir = data_dir.to_path_buf();
    let abandoned = abandoned.to_vec();
    on_short_reactor(move || async move {
        check_created_shards_on(&DmaStorage::new(), &data_dir, &abandoned).await
    })
}

/// [`check_created_shards`] through `storage`, on the calling reactor.
pub async fn check_created_shards_on<S: Storage>(
    storage: &S,
    data_dir: &Path,
    abandoned: &[usize],
) -> Result<()> {
    let Some(manifest) = read_manifest_record_on(storage, data_dir).await? else {
        return Ok(());
    };
    for shard in (0..manifest.shards).filter(|&i| manifest.is_created(i)) {
        if has_identity(storage, data_dir, shard).await? {
            continue;
        }
        let path = shard_dir(data_dir, shard);
        if !abandoned.contains(&shard) {
            return Err(Error::ShardMissing { shard, path });
        }
        metrics::counter!("ringstore_shards_abandoned_total").increment(1);
        tracing::error!(
            shard,
            path = %path.display(),
            "shard recorded as created has no identity: starting it empty, as asked; \
             the commands it acknowledged are given up"
        );
    }
    Ok(())
}

/// Records in the superblock every shard of `data_dir` that now has an
/// identity file (a shard's first open or a restore writes it), so that a
/// later start refuses if its directory goes ([`check_created_shards`]).
/// Call it once the shards have opened and before they take commands: a
/// shard that acknowledged a command before it was recorded could later
/// lose its directory unrefused. Writes nothing when nothing is new. On the real disk, for callers
/// without a reactor: see [`record_created_shards_on`].
pub fn record_created_shards(data_dir: &Path) -> Result<()> {
    let data_dir = data_dir.to_path_buf();
    on_short_reactor(move || async move {
        record_created_shards_on(&DmaStorage::new(), &data_dir).await
    })
}

/// [`record_created_shards`] through `storage`, on the calling reactor.
pub async fn record_created_shards_on<S: Storage>(storage: &S, data_dir: &Path) -> Result<()> {
    let path = data_dir.join(MANIFEST_FILE_NAME);
    let Some((manifest, chosen)) = read_manifest_chosen(storage, data_dir).await? else {
        return Err(Error::Manifest {
            path,
            reason: "missing: the shards cannot be recorded".into(),
        });
    };
    let mut created = manifest
        .created
        .clone()
        .unwrap_or_else(|| vec![false; manifest.shards]);
    for (shard, created) in created.iter_mut().enumerate() {
        *created = *created || has_identity(storage, data_dir, shard).await?;
    }
    if manifest.created.as_ref() == Some(&created) {
        return Ok(());
    }
    let recorded = Manifest {
        created: Some(created),
        ..manifest
    };
    superblock::write_file(
        storage,
        &path,
        false,
        SuperblockKind::DataDir,
        chosen.sequence + 1,
        &recorded.encode(),
        chosen.newest_copy,
    )
    .await
    .map_err(|f| Error::io(f.op, &path, f.source))
}

/// Whether shard `index`'s directory holds its identity file.
async fn has_identity<S: Storage>(storage: &S, data_dir: &Path, index: usize) -> Result<bool> {
    let path = shard_dir(data_dir, index).join(crate::layout::identity::IDENTITY_FILE_NAME);
    match storage.stat(&path).await {
        Ok(_) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(Error::io("stat", &path, e)),
    }
}

/// Runs `task` on a reactor of its own and waits for it: the manifest's
/// calls for threads that have none (the engine's start, the tools).
fn on_short_reactor<T, F, Fut>(task: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>> + 'static,
{
    // glommio cannot start any reactor below its locked-memory floor: say
    // what to change, as an engine's start would.
    check_memlock(memlock_limit()?, 1, MANIFEST_IO_MEMORY_BYTES)?;
    let failed = |e: String| Error::ReactorStart {
        shard: 0,
        cpu: None,
        reason: format!("the reactor that reads the data directory's superblock: {e}"),
    };
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("ringstore-manifest")
        .io_memory(MANIFEST_IO_MEMORY_BYTES)
        .spawn(task)
        .map_err(|e| failed(e.to_string()))?
        .join()
        .map_err(|e| failed(e.to_string()))?
}

/// [`read_manifest`], with the copy it chose (and the copies it did not).
async fn read_manifest_chosen<S: Storage>(
    storage: &S,
    data_dir: &Path,
) -> Result<Option<(Manifest, superblock::Chosen)>> {
    let path = data_dir.join(MANIFEST_FILE_NAME);
    // Read again while two reads disagree, as the journal's superblock is:
    // a transient fault must neither refuse the directory nor make an
    // update take the good copy for the damaged one.
    let read = superblock::settle_reads(SuperblockKind::DataDir, || async {
        superblock::read_file(storage, &path)
            .await?
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    })
    .await;
    let bytes = match read {
        Ok((bytes, _)) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let has_legacy = match storage.list_dir(data_dir) {
                Ok(names) => names.iter().any(|name| name == LEGACY_MANIFEST_NAME),
                Err(e) if errno(&e) == Some(libc::ENOENT) => false,
                Err(e) => return Err(Error::io("list data directory", data_dir, e)),
            };
            return match existing_shard_dirs(storage, data_dir).await? {
                found if found.is_empty() && !has_legacy => Ok(None),
                found => Err(Error::Manifest {
                    path,
                    reason: format!(
                        "the data directory's superblock is missing, but it holds {} (shard directories: {}); the shard count cannot be known without it",
                        if has_legacy {
                            "an `engine` manifest of an older ringstore format"
                        } else {
                            "shards"
                        },
                        found.len()
                    ),
                }),
            };
        }
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    let chosen = superblock::decode(&bytes, SuperblockKind::DataDir).map_err(|fault| {
        let offset = match &fault {
            SuperblockFault::Damaged(faults) => faults.first().map_or(0, |f| f.offset),
            _ => 0,
        };
        Error::Manifest {
            path: path.clone(),
            reason: format!("at byte offset {offset}: {fault}"),
        }
    })?;
    for fault in &chosen.stale_or_damaged {
        tracing::warn!(
            path = %path.display(),
            offset = fault.offset,
            reason = %fault.reason,
            "data directory superblock copy damaged; the other copy is used"
        );
    }
    let manifest = decode_manifest(&path, &chosen.body)?;
    Ok(Some((manifest, chosen)))
}

/// A data directory superblock's body: the shard count and, when recorded,
/// which shards were created.
fn decode_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest> {
    let at = superblock::SUPERBLOCK_HEADER_BYTES;
    let refused = |reason: String| Error::Manifest {
        path: path.to_path_buf(),
        reason: format!("at byte offset {at}: {reason}"),
    };
    let (body, rest) = DataDirBody::read_from_prefix(bytes).map_err(|_| {
        refused(format!(
            "a body of {} bytes, expected at least {}",
            bytes.len(),
            size_of::<DataDirBody>()
        ))
    })?;
    let shards = body.shards.get();
    if shards == 0 || shards > SHARDS_MAX {
        return Err(refused(format!("records {shards} shards")));
    }
    let shards = shards as usize;
    let created = match body.flags.get() {
        0 if rest.is_empty() => None,
        DATA_DIR_FLAG_CREATED_RECORDED if rest.len() == shards.div_ceil(8) => Some(
            (0..shards)
                .map(|i| rest[i / 8] & (1 << (i % 8)) != 0)
                .collect(),
        ),
        flags => {
            return Err(refused(format!(
                "flags {flags:#x} with {} bytes after the shard count of {shards}",
                rest.len()
            )))
        }
    };
    Ok(Manifest { shards, created })
}

/// Shard directories (`shard-NNN`) in `data_dir`.
async fn existing_shard_dirs<S: Storage>(storage: &S, data_dir: &Path) -> Result<Vec<PathBuf>> {
    let names = match storage.list_dir(data_dir) {
        Ok(names) => names,
        Err(e) if errno(&e) == Some(libc::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list data directory", data_dir, e)),
    };
    let mut found = Vec::new();
    for name in names {
        if !name.to_string_lossy().starts_with("shard-") {
            continue;
        }
        let path = data_dir.join(&name);
        match storage.stat(&path).await {
            Ok(meta) if meta.kind == EntryKind::Dir => found.push(path),
            Ok(_) => {}
            Err(e) if errno(&e) == Some(libc::ENOENT) => {}
            Err(e) => return Err(Error::io("stat", &path, e)),
        }
    }
    Ok(found)
}

/// Writes a new data directory's superblock: in full under a temporary
/// name, then renamed into place and the directory fsync'd.
async fn write_manifest<S: Storage>(storage: &S, data_dir: &Path, shards: usize) -> Result<()> {
    let path = data_dir.join(MANIFEST_FILE_NAME);
    let tmp: PathBuf = data_dir.join(format!("{MANIFEST_FILE_NAME}.tmp"));
    let count = u32::try_from(shards)
        .ok()
        .filter(|n| (1..=SHARDS_MAX).contains(n))
        .ok_or_else(|| Error::Manifest {
            path: path.clone(),
            reason: format!("{shards} shards is out of range (1..={SHARDS_MAX})"),
        })?;
    let body = Manifest {
        shards: count as usize,
        created: Some(vec![false; count as usize]),
    }
    .encode();
    match storage.remove(&tmp).await {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(libc::ENOENT) => {}
        Err(e) => return Err(Error::io("remove", &tmp, e)),
    }
    superblock::write_file(
        storage,
        &tmp,
        true,
        SuperblockKind::DataDir,
        1,
        &body,
        superblock::SUPERBLOCK_COPIES - 1,
    )
    .await
    .map_err(|f| Error::io(f.op, &tmp, f.source))?;
    storage
        .rename(&tmp, &path)
        .await
        .map_err(|e| Error::io("write superblock", &path, e))?;
    storage
        .sync_dir(data_dir)
        .await
        .map_err(|e| Error::io("write superblock", &path, e))
}

/// The directory of shard `index` inside the data directory.
pub fn shard_dir(data_dir: &Path, index: usize) -> PathBuf {
    data_dir.join(format!("shard-{index:03}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_below_glommio_minimum_is_refused() {
        let err = check_memlock(Some(64 * 1024), 2, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("ulimit -l"), "{err}");
        check_memlock(Some(MEMLOCK_MIN_BYTES), 2, 1 << 20).unwrap();
        check_memlock(None, 2, 1 << 20).unwrap();
    }

    #[test]
    fn a_cpu_outside_the_affinity_mask_is_refused() {
        let err = place_shards(1, Some(&[100_000])).unwrap_err();
        assert!(
            matches!(err, Error::CpuUnavailable { cpu: 100_000, .. }),
            "{err}"
        );
        let placed = place_shards(3, None).unwrap();
        assert_eq!(placed.len(), 3);
    }

    #[test]
    fn manifest_round_trips_and_damage_is_named() {
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).unwrap();
        let data = dir.path().join("data");
        assert_eq!(read_manifest(&data).unwrap(), None);
        check_manifest(&data, 3).unwrap();
        assert_eq!(read_manifest(&data).unwrap(), Some(3));
        assert!(matches!(
            check_manifest(&data, 2),
            Err(Error::ShardCountMismatch {
                found: 3,
                configured: 2,
                ..
            })
        ));
        let path = data.join(MANIFEST_FILE_NAME);
        let clean = std::fs::read(&path).unwrap();
        // Any one bit flip: the other copy still says 3. Reading changes
        // nothing (`wal verify` reads it); the open's check rewrites the
        // damaged copy from the good one.
        for bit in (0..clean.len() * 8).step_by(61) {
            let mut flipped = clean.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&path, &flipped).unwrap();
            assert_eq!(read_manifest(&data).unwrap(), Some(3), "bit {bit}");
            assert_eq!(std::fs::read(&path).unwrap(), flipped, "bit {bit}");
            check_manifest(&data, 3).unwrap();
            let repaired = std::fs::read(&path).unwrap();
            let chosen = superblock::decode(&repaired, SuperblockKind::DataDir).unwrap();
            assert!(
                chosen.stale_or_damaged.is_empty(),
                "bit {bit}: not repaired"
            );
            assert_eq!(read_manifest(&data).unwrap(), Some(3), "bit {bit}");
        }
        // Both copies damaged: an error naming the file and offset.
        let mut both = clean.clone();
        both[40] ^= 1;
        both[4096 + 40] ^= 1;
        std::fs::write(&path, &both).unwrap();
        match read_manifest(&data) {
            Err(Error::Manifest { path: p, reason }) => {
                assert_eq!(p, path);
                assert!(reason.contains("byte offset 0"), "{reason}");
            }
            other => panic!("expected a manifest error, got {other:?}"),
        }
        // Missing while shard directories exist: refused, not a new count.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir_all(shard_dir(&data, 0)).unwrap();
        assert!(matches!(read_manifest(&data), Err(Error::Manifest { .. })));
        assert!(check_manifest(&data, 4).is_err());
    }
}
