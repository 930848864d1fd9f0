//! Checks made before any reactor starts, so a misconfigured host fails with
//! an error that says what to change instead of a reactor panic: CPUs,
//! locked memory, and the data directory's manifest (shard count).

use crate::error::{Error, Result};
use std::{
    io::Write,
    path::{Path, PathBuf},
};

/// glommio refuses to start a reactor below this RLIMIT_MEMLOCK (bytes).
pub const MEMLOCK_MIN_BYTES: u64 = 512 * 1024;

/// Name of the engine manifest in the data directory.
pub const MANIFEST_FILE_NAME: &str = "engine";
/// The manifest's first line.
const MANIFEST_MAGIC: &str = "ringstore engine 1";

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

/// Creates the data directory and checks or writes its manifest, which
/// records the shard count (routing depends on it).
pub fn check_manifest(data_dir: &Path, shards: usize) -> Result<()> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Error::io("create data directory", data_dir, e))?;
    match read_manifest(data_dir)? {
        Some(found) if found != shards => Err(Error::ShardCountMismatch {
            path: data_dir.join(MANIFEST_FILE_NAME),
            found,
            configured: shards,
        }),
        Some(_) => Ok(()),
        None => write_manifest(data_dir, shards),
    }
}

/// The shard count recorded in `data_dir`'s manifest (`None`: there is
/// none yet).
pub fn read_manifest(data_dir: &Path) -> Result<Option<usize>> {
    let path = data_dir.join(MANIFEST_FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_manifest(&text)
            .map(Some)
            .ok_or_else(|| Error::Manifest {
                path,
                reason: format!("expected \"{MANIFEST_MAGIC}\" then \"shards <count>\""),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", &path, e)),
    }
}

/// The shard count a manifest records.
pub fn parse_manifest(text: &str) -> Option<usize> {
    let mut lines = text.lines();
    if lines.next()? != MANIFEST_MAGIC {
        return None;
    }
    lines.next()?.strip_prefix("shards ")?.parse().ok()
}

fn write_manifest(data_dir: &Path, shards: usize) -> Result<()> {
    let path = data_dir.join(MANIFEST_FILE_NAME);
    let tmp: PathBuf = data_dir.join(format!("{MANIFEST_FILE_NAME}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        writeln!(file, "{MANIFEST_MAGIC}\nshards {shards}")?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|e| Error::io("write manifest", &path, e))
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
    fn manifest_round_trips_and_rejects_garbage() {
        assert_eq!(parse_manifest("ringstore engine 1\nshards 4\n"), Some(4));
        assert_eq!(parse_manifest("ringstore engine 2\nshards 4\n"), None);
        assert_eq!(parse_manifest("shards 4"), None);
        assert_eq!(parse_manifest(""), None);
    }
}
