//! [`Durability::Auto`]: which of write + fdatasync and an O_DSYNC write
//! this device makes durable faster, measured rather than assumed.
//!
//! On a device with a volatile write cache, `fdatasync` after a write ends
//! in a cache flush of the whole device. An O_DSYNC write onto blocks that
//! are already written (no extent to convert, so no metadata to commit) can
//! instead go down as one write with Forced Unit Access, where the device
//! supports it, and skip the separate flush; where it does not, the kernel
//! issues the same write and flush itself, one submission fewer. Which is
//! faster depends on the device, so [`resolve`] times both at open:
//!
//! * Two scratch files in the journal's directory
//!   ([`PROBE_SYNC_FILE_NAME`], [`PROBE_WRITE_THROUGH_FILE_NAME`], the
//!   second opened O_DSYNC), prepared the way the journal's segments are:
//!   written and synced for [`Preallocation::ZeroFill`] (appends overwrite
//!   written blocks), fallocated and synced for [`Preallocation::Fallocate`]
//!   (each append's sync also converts an extent, so every round writes a
//!   block not written before).
//! * Rounds of [`PROBE_RUN_WRITES`] 4 KiB writes + fdatasync on the first
//!   and as many 4 KiB O_DSYNC writes on the second, which run first
//!   alternating, at most [`PROBE_ROUNDS_MAX`] and, past
//!   [`PROBE_ROUNDS_MIN`], no longer than [`PROBE_TIME_MAX`] (the disk may
//!   be slow). A journal writes one way at a time, so each run's first
//!   write is not counted: it can pay for what the other kind left behind
//!   (an fdatasync right after an O_DSYNC write to another file commits
//!   that file's timestamp update too; measured here, that made write +
//!   fdatasync look 1.5x slower than it is).
//! * [`Durability::WriteThrough`] if its median is below
//!   [`WRITE_THROUGH_CHOSEN_BELOW_PERCENT`] of the other's, else
//!   [`Durability::Sync`]: a tie keeps the fdatasync path, which every
//!   device honours the same way.
//!
//! Both files are removed afterwards; a crash leaves them behind, and the
//! next open's recovery removes them as leftovers (reported in
//! `RecoveryReport::removed`, as `wal inspect` lists them). The
//! result is kept per device and preparation for the life of the process:
//! journals opening at once on one disk (the shards of an engine, each on
//! its own reactor) wait for the first one's probe rather than run theirs
//! beside it, which would skew all of them. It is also kept in the journal
//! directory for the rest of the boot ([`record`]): the next process's
//! open takes it from there instead of probing. A probe that fails (a full
//! disk, EIO) is logged and the journal takes `Sync`; the error itself
//! surfaces again if the disk is really failing, from the segment creation
//! that follows.
//!
//! Either durability makes an append durable before it resolves, and
//! recovery treats their segments alike; the segments do not record which
//! was used (a segment-header flag would make builds from before it
//! refuse, and salvage, a journal that only changed how it synced). The
//! choice is in [`crate::JournalStats::durability`] and in the log, one
//! line per open; the probe that `Auto` opens take is in the durability
//! record, which `ringstore wal inspect` shows.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{Durability, JournalConfig, Preallocation};
use crate::error::{Error, Result};
use crate::format::BLOCK_BYTES;
use crate::storage::{IoBuf, Storage, StorageFile};

mod figures;
pub mod record;
pub use figures::{DurabilityProbe, WRITE_THROUGH_CHOSEN_BELOW_PERCENT};
use record::{DurabilityRecord, DURABILITY_RECORD_FILE_NAME, DURABILITY_RECORD_TEMP_NAME};

/// The scratch file timed with write + fdatasync.
pub const PROBE_SYNC_FILE_NAME: &str = "durability-probe-sync";
/// The scratch file timed with O_DSYNC writes.
pub const PROBE_WRITE_THROUGH_FILE_NAME: &str = "durability-probe-write-through";
/// Most rounds of a probe (each: a run of writes of either kind).
pub const PROBE_ROUNDS_MAX: usize = 6;
/// Rounds a probe always runs, however slow the disk.
pub const PROBE_ROUNDS_MIN: usize = 2;
/// Writes in one run of one kind; the first is not counted.
pub const PROBE_RUN_WRITES: usize = 4;
/// Blocks of each probe file: every write of a probe goes to its own.
const PROBE_FILE_BLOCKS: usize = PROBE_ROUNDS_MAX * PROBE_RUN_WRITES;
/// Past [`PROBE_ROUNDS_MIN`] rounds, a probe stops once it has run this
/// long: an open on a disk in a slow spell is not held up for long.
pub const PROBE_TIME_MAX: Duration = Duration::from_millis(40);

/// How the journal came to its durability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The durability was configured, or the backend cannot time I/O.
    NotRun,
    /// Measured by this open.
    Measured(DurabilityProbe),
    /// Measured by an earlier open in this process, on the same device and
    /// preparation.
    Cached(DurabilityProbe),
    /// Measured by an earlier process in this boot, on the same device and
    /// preparation, and read from the journal's durability record.
    Recorded(DurabilityProbe),
    /// The probe failed (this error); `Sync` was taken.
    Failed(String),
}

/// The durability an open settled on, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurabilityChoice {
    /// As configured.
    pub configured: Durability,
    /// In use: never [`Durability::Auto`].
    pub chosen: Durability,
    /// What the probe did.
    pub probe: ProbeOutcome,
}

/// How long an open waits for another open's probe of the same device
/// before it probes itself (a probe takes about [`PROBE_TIME_MAX`] and a
/// few syncs to prepare its files).
pub const PROBE_WAIT_MAX: Duration = Duration::from_millis(500);
/// Pause between looks at another open's probe.
const PROBE_WAIT_PAUSE: Duration = Duration::from_millis(1);

/// A device and preparation, as probes are kept.
type ProbeKey = (u64, Preallocation);

/// A probe of one key: running in some open, or done.
#[derive(Clone, Copy)]
enum Probed {
    Running,
    Done(DurabilityProbe),
}

/// Probe results per (device, preparation), for the life of the process.
static PROBED: Mutex<Option<HashMap<ProbeKey, Probed>>> = Mutex::new(None);

/// What an open found for its key.
enum Claim {
    /// Measured already.
    Done(DurabilityProbe),
    /// This open probes (the key now says so).
    Mine,
    /// Another open is probing.
    Running,
}

fn claim(key: ProbeKey) -> Claim {
    let Ok(mut probed) = PROBED.lock() else {
        return Claim::Mine;
    };
    let probed = probed.get_or_insert_with(HashMap::new);
    match probed.get(&key) {
        Some(Probed::Done(found)) => Claim::Done(*found),
        Some(Probed::Running) => Claim::Running,
        None => {
            probed.insert(key, Probed::Running);
            Claim::Mine
        }
    }
}

/// Records this open's probe of `key` (or, on `None`, that it ended
/// without a result, so that a later open tries again). Also on drop: an
/// open abandoned mid-probe must not leave the key running for ever.
struct ProbeClaim {
    key: ProbeKey,
    result: Option<DurabilityProbe>,
}

impl Drop for ProbeClaim {
    fn drop(&mut self) {
        if let Ok(mut probed) = PROBED.lock() {
            let probed = probed.get_or_insert_with(HashMap::new);
            match self.result {
                Some(found) => probed.insert(self.key, Probed::Done(found)),
                None => probed.remove(&self.key),
            };
        }
    }
}

/// Settles `config.durability`, probing if it is [`Durability::Auto`],
/// and says how. (The open's recovery has removed a crashed probe's files
/// already, as leftovers.)
pub async fn resolve<S: Storage>(
    storage: &S,
    config: &mut JournalConfig,
) -> Result<DurabilityChoice> {
    let configured = config.durability;
    if configured != Durability::Auto {
        return Ok(DurabilityChoice {
            configured,
            chosen: configured,
            probe: ProbeOutcome::NotRun,
        });
    }
    let device = storage
        .latency_device(&config.dir)
        .map_err(|e| Error::io("stat directory", &config.dir, None, e))?;
    let probe = match device {
        None => ProbeOutcome::NotRun,
        Some(device) => probe_once(storage, config, (device, config.preallocation)).await,
    };
    let chosen = match &probe {
        ProbeOutcome::Measured(p) | ProbeOutcome::Cached(p) | ProbeOutcome::Recorded(p) => {
            p.chosen()
        }
        ProbeOutcome::NotRun | ProbeOutcome::Failed(_) => Durability::Sync,
    };
    match &probe {
        ProbeOutcome::Measured(p) | ProbeOutcome::Cached(p) | ProbeOutcome::Recorded(p) => {
            tracing::info!(
                dir = %config.dir.display(),
                chosen = ?chosen,
                source = match probe {
                    ProbeOutcome::Cached(_) => "this process",
                    ProbeOutcome::Recorded(_) => "the durability record",
                    _ => "measured",
                },
                rounds = p.rounds,
                sync_p50_us = p.sync_p50.as_micros() as u64,
                write_through_p50_us = p.write_through_p50.as_micros() as u64,
                "journal durability chosen"
            )
        }
        ProbeOutcome::NotRun | ProbeOutcome::Failed(_) => tracing::info!(
            dir = %config.dir.display(),
            chosen = ?chosen,
            "journal durability chosen without a probe"
        ),
    }
    config.durability = chosen;
    Ok(DurabilityChoice {
        configured,
        chosen,
        probe,
    })
}

/// The probe of `key`: kept from an earlier open, awaited from one running
/// now, read from the journal's durability record, or run here.
async fn probe_once<S: Storage>(
    storage: &S,
    config: &JournalConfig,
    key: ProbeKey,
) -> ProbeOutcome {
    let boot = record::boot_id();
    let waiting_since = Instant::now();
    // Where this open's result goes: the key it claimed, or nowhere when
    // another open's probe is stuck or very slow (that one keeps its own).
    let mut claimed = loop {
        match claim(key) {
            Claim::Done(found) => {
                // So that this journal's next process finds it too,
                // whichever of a process's journals opens first.
                if let Some(boot) = boot {
                    if recorded(storage, &config.dir, key, boot).await.is_none() {
                        keep_record(storage, &config.dir, key, boot, found).await;
                    }
                }
                return ProbeOutcome::Cached(found);
            }
            Claim::Mine => break Some(ProbeClaim { key, result: None }),
            Claim::Running if waiting_since.elapsed() < PROBE_WAIT_MAX => {
                glommio::timer::sleep(PROBE_WAIT_PAUSE).await;
            }
            Claim::Running => break None,
        }
    };
    if let Some(boot) = boot {
        if let Some(found) = recorded(storage, &config.dir, key, boot).await {
            if let Some(claimed) = &mut claimed {
                claimed.result = Some(found);
            }
            return ProbeOutcome::Recorded(found);
        }
    }
    match probe(storage, &config.dir, config.preallocation).await {
        Ok(measured) => {
            if let Some(mut claimed) = claimed.take() {
                // Published now (on drop): opens waiting for it need not
                // wait for the record's sync too.
                claimed.result = Some(measured);
            }
            if let Some(boot) = boot {
                keep_record(storage, &config.dir, key, boot, measured).await;
            }
            ProbeOutcome::Measured(measured)
        }
        Err(error) => {
            tracing::warn!(dir = %config.dir.display(), %error, "the durability probe failed; using write + fdatasync");
            ProbeOutcome::Failed(error.to_string())
        }
    }
}

/// The probe `dir`'s durability record holds for `key` in boot `boot`, if
/// any; a record that does not verify is logged (and replaced once this
/// open has probed).
async fn recorded<S: Storage>(
    storage: &S,
    dir: &Path,
    key: ProbeKey,
    boot: [u8; 16],
) -> Option<DurabilityProbe> {
    let path = dir.join(DURABILITY_RECORD_FILE_NAME);
    match record::read(storage, dir).await {
        Ok(Some(Ok(found))) if found.applies_to(key.0, key.1, boot) => Some(found.probe),
        // Another device, preparation or boot: measured again.
        Ok(Some(Ok(_))) | Ok(None) => None,
        Ok(Some(Err(fault))) => {
            tracing::warn!(path = %path.display(), %fault, "the durability record does not verify; it is not taken and is replaced");
            None
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the durability record; it is not taken and is replaced");
            None
        }
    }
}

/// Writes `probe` as `dir`'s durability record. A failure is logged and
/// costs the next process a probe, nothing else.
async fn keep_record<S: Storage>(
    storage: &S,
    dir: &Path,
    key: ProbeKey,
    boot: [u8; 16],
    probe: DurabilityProbe,
) {
    let kept = DurabilityRecord::now(key.0, key.1, boot, probe);
    if let Err(error) = record::write(storage, dir, &kept).await {
        tracing::warn!(dir = %dir.display(), %error, "cannot write the durability record; the next process probes again");
    }
}

/// Times write + fdatasync against O_DSYNC writes in `dir` (see the module
/// docs). Not cached: every call measures.
pub async fn probe<S: Storage>(
    storage: &S,
    dir: &Path,
    preallocation: Preallocation,
) -> Result<DurabilityProbe> {
    remove_probe_files(storage, dir).await?;
    let measured = measure(storage, dir, preallocation).await;
    let removed = remove_probe_files(storage, dir).await;
    let measured = measured?;
    removed?;
    Ok(measured)
}

async fn measure<S: Storage>(
    storage: &S,
    dir: &Path,
    preallocation: Preallocation,
) -> Result<DurabilityProbe> {
    let sync_path = dir.join(PROBE_SYNC_FILE_NAME);
    let through_path = dir.join(PROBE_WRITE_THROUGH_FILE_NAME);
    let sync_file = prepare(storage, &sync_path, false, preallocation).await?;
    let through_file = match prepare(storage, &through_path, true, preallocation).await {
        Ok(file) => file,
        Err(e) => {
            let _ = sync_file.close().await;
            return Err(e);
        }
    };
    let timed = time_rounds(&sync_file, &sync_path, &through_file, &through_path).await;
    let _ = sync_file.close().await;
    let _ = through_file.close().await;
    let (mut sync, mut through) = timed?;
    Ok(DurabilityProbe {
        rounds: (sync.len() / (PROBE_RUN_WRITES - 1)) as u32,
        sync_p50: median(&mut sync),
        write_through_p50: median(&mut through),
    })
}

/// Creates a probe file of [`PROBE_FILE_BLOCKS`] blocks, prepared as the
/// segments are, and synced.
async fn prepare<S: Storage>(
    storage: &S,
    path: &Path,
    write_through: bool,
    preallocation: Preallocation,
) -> Result<S::File> {
    let file = storage
        .create(path, write_through)
        .await
        .map_err(|e| Error::io("create durability probe", path, None, e))?;
    let bytes = PROBE_FILE_BLOCKS as u64 * BLOCK_BYTES;
    let prepared = async {
        let allocated = file.allocate(bytes).await;
        let write_zeros = match allocated {
            Ok(()) => preallocation == Preallocation::ZeroFill,
            Err(e) if crate::storage::is_errno(&e, libc::EOPNOTSUPP) => true,
            Err(e) => return Err(Error::io("fallocate", path, None, e)),
        };
        if write_zeros {
            let mut buf = file.alloc_buf(bytes as usize);
            buf.as_bytes_mut().fill(0);
            file.write_at(buf, 0)
                .await
                .map_err(|e| Error::io("write durability probe", path, Some(0), e))?;
        }
        file.sync()
            .await
            .map_err(|e| Error::io("fdatasync", path, None, e))
    };
    match prepared.await {
        Ok(()) => Ok(file),
        Err(e) => {
            let _ = file.close().await;
            Err(e)
        }
    }
}

/// Runs the rounds: every write to a block of its own, so a fallocated
/// file's every write converts an extent, as an append's does.
async fn time_rounds<F: StorageFile>(
    sync_file: &F,
    sync_path: &Path,
    through_file: &F,
    through_path: &Path,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let counted = PROBE_ROUNDS_MAX * (PROBE_RUN_WRITES - 1);
    let mut sync = Vec::with_capacity(counted);
    let mut through = Vec::with_capacity(counted);
    let started = Instant::now();
    for round in 0..PROBE_ROUNDS_MAX {
        if round >= PROBE_ROUNDS_MIN && started.elapsed() > PROBE_TIME_MAX {
            break;
        }
        // Alternate which runs first, so a change of the disk's pace in
        // the middle of a round falls on both alike.
        for sync_turn in [round % 2 == 0, round % 2 != 0] {
            for write in 0..PROBE_RUN_WRITES {
                let pos = (round * PROBE_RUN_WRITES + write) as u64 * BLOCK_BYTES;
                let took = if sync_turn {
                    timed_write(sync_file, sync_path, pos, true).await?
                } else {
                    timed_write(through_file, through_path, pos, false).await?
                };
                if write > 0 {
                    if sync_turn { &mut sync } else { &mut through }.push(took);
                }
            }
        }
    }
    Ok((sync, through))
}

/// One 4 KiB write at `pos`, followed by an fdatasync if `then_sync`.
async fn timed_write<F: StorageFile>(
    file: &F,
    path: &Path,
    pos: u64,
    then_sync: bool,
) -> Result<Duration> {
    let mut buf = file.alloc_buf(BLOCK_BYTES as usize);
    // Not zeros: a device must not be able to skip the write.
    buf.as_bytes_mut().fill(0xa5);
    let started = Instant::now();
    file.write_at(buf, pos)
        .await
        .map_err(|e| Error::io("write durability probe", path, Some(pos), e))?;
    if then_sync {
        file.sync()
            .await
            .map_err(|e| Error::io("fdatasync", path, None, e))?;
    }
    Ok(started.elapsed())
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// Files a crash in the middle of a probe, or of writing its record,
/// leaves behind; the next open's recovery removes them (they are
/// leftovers: `verify::crash_leftovers`).
pub const PROBE_LEFTOVER_NAMES: [&str; 3] = [
    PROBE_SYNC_FILE_NAME,
    PROBE_WRITE_THROUGH_FILE_NAME,
    DURABILITY_RECORD_TEMP_NAME,
];

/// Removes the probe's files and a record's temporary file if present
/// (what a crash mid-probe leaves).
pub(crate) async fn remove_probe_files<S: Storage>(storage: &S, dir: &Path) -> Result<()> {
    let mut removed = false;
    for name in PROBE_LEFTOVER_NAMES {
        let path = dir.join(name);
        match storage.remove(&path).await {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove durability probe", &path, None, e)),
        }
    }
    if removed {
        storage
            .sync_dir(dir)
            .await
            .map_err(|e| Error::io("fsync directory", dir, None, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_of(sync_us: u64, write_through_us: u64) -> DurabilityProbe {
        DurabilityProbe {
            rounds: 8,
            sync_p50: Duration::from_micros(sync_us),
            write_through_p50: Duration::from_micros(write_through_us),
        }
    }

    #[test]
    fn write_through_only_when_clearly_faster() {
        assert_eq!(probe_of(130, 60).chosen(), Durability::WriteThrough);
        assert_eq!(probe_of(100, 89).chosen(), Durability::WriteThrough);
        // Within the margin, or slower: the fdatasync path.
        assert_eq!(probe_of(100, 90).chosen(), Durability::Sync);
        assert_eq!(probe_of(100, 95).chosen(), Durability::Sync);
        assert_eq!(probe_of(100, 180).chosen(), Durability::Sync);
        // Nothing measured (a zero median) never picks write-through.
        assert_eq!(probe_of(0, 0).chosen(), Durability::Sync);
    }

    #[test]
    fn the_median_of_an_odd_and_an_even_count() {
        let us = Duration::from_micros;
        assert_eq!(median(&mut [us(5), us(1), us(3)]), us(3));
        assert_eq!(median(&mut [us(4), us(1), us(3), us(2)]), us(3));
        assert_eq!(median(&mut []), Duration::ZERO);
    }
}
