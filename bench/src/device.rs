//! The device's own limits: what a raw O_DIRECT io_uring loop gets from the
//! disk, measured on the same directory as the journal so every journal
//! figure has a denominator taken minutes (not days) away.
//!
//! Three measurements:
//!
//! - [`seq_write`]: sequential writes of one block size at one queue depth
//!   into a freshly preallocated file, with the closing `fdatasync` inside the
//!   timed span (a write that is not durable is not a write for a WAL).
//! - [`seq_read`]: sequential reads over a file [`seq_write`] produced.
//! - [`Prober::probe`]: the device's best durable small write — one 4 KiB
//!   write linked to an `fdatasync`, queue depth 1, overwriting blocks that
//!   are already written (so the filesystem has no extent to convert and no
//!   metadata to journal). It is bounded to about a second so the harness can
//!   run it before and after every workload: this machine's disk switches
//!   between a fast mode (~0.1 ms) and a slow one (~4 ms) for minutes at a
//!   time, and a ratio is only meaningful when both probes agree.
//!
//! Every byte written is stamped per 4 KiB sector with a magic and its file
//! offset; reads check the stamps and writes are read back by sampling, so no
//! figure can come from a no-op.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

use crate::latency::{LatencyRecorder, LatencySummary};
use crate::sys::{self, aligned_zeroed, Direction, Uring};

/// Granularity of the stamps written into every block (one page).
pub const STAMP_SECTOR_BYTES: usize = 4096;
/// Magic at the start of every stamped sector ("RSBENCH1", little-endian).
const STAMP_MAGIC: u64 = u64::from_le_bytes(*b"RSBENCH1");
/// Bytes of each stamp: magic then file offset, both `u64` little-endian.
const STAMP_BYTES: usize = 16;
/// Sectors read back after a sequential write to prove it landed.
const VERIFY_SAMPLE_SECTORS: u64 = 64;

/// Block size of the durable small-write probe.
pub const PROBE_BLOCK_BYTES: usize = 4096;
/// Size of the probe's already-written region; probe writes cycle through it.
const PROBE_REGION_BYTES: u64 = 8 << 20;
/// Upper bound on probe iterations (about 0.5 s in the disk's fast mode).
pub const PROBE_ITERATIONS_MAX: usize = 5_000;
/// Upper bound on one probe's duration (about 250 iterations in the slow mode).
pub const PROBE_DURATION_MAX: Duration = Duration::from_secs(1);
/// Block size used to fill the probe region once, at setup.
pub(crate) const PROBE_FILL_BLOCK_BYTES: usize = 1 << 20;
/// Queue depth used to fill the probe region once, at setup.
pub(crate) const PROBE_FILL_QUEUE_DEPTH: usize = 4;
/// Probe latencies above this belong to the disk's slow mode (~4 ms); the
/// fast mode's stay well below it (~0.1 ms, p99 under 1 ms).
pub const SLOW_MODE_LATENCY_MIN: Duration = Duration::from_millis(2);

/// `statfs` magic of tmpfs: memory, not a disk, so no device limit to measure.
const TMPFS_MAGIC: i64 = 0x0102_1994;

const _: () = assert!(PROBE_REGION_BYTES.is_multiple_of(PROBE_FILL_BLOCK_BYTES as u64));
const _: () = assert!(PROBE_BLOCK_BYTES.is_multiple_of(STAMP_SECTOR_BYTES));
const _: () = assert!(STAMP_BYTES <= STAMP_SECTOR_BYTES);

/// One sequential pass: how many bytes moved, how, and how fast.
#[derive(Clone, Debug, Serialize)]
pub struct SeqResult {
    /// Bytes moved (all durable, for writes).
    pub bytes: u64,
    /// Bytes per I/O operation.
    pub block_bytes: usize,
    /// Operations kept in flight.
    pub queue_depth: usize,
    /// Wall time of the pass, including the final `fdatasync` for writes.
    pub seconds: f64,
    /// `bytes / seconds` in MB/s (10^6 bytes per second).
    pub mb_per_s: f64,
}

impl SeqResult {
    fn new(bytes: u64, block_bytes: usize, queue_depth: usize, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64();
        Self {
            bytes,
            block_bytes,
            queue_depth,
            seconds,
            mb_per_s: mb_per_s(bytes, elapsed),
        }
    }
}

/// `bytes` over `elapsed` in MB/s (10^6 bytes per second).
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// Fails unless `dir` is on a real filesystem: the device limit of tmpfs is
/// memory bandwidth, which would make every ratio meaningless.
pub fn ensure_real_disk(dir: &Path) -> Result<()> {
    let magic = sys::filesystem_magic(dir).with_context(|| format!("statfs {}", dir.display()))?;
    if magic == TMPFS_MAGIC {
        bail!(
            "{} is on tmpfs (memory, not a disk); pass --dir on the real disk",
            dir.display()
        );
    }
    Ok(())
}

/// Opens (creating or truncating) `path` for O_DIRECT reads and writes.
pub fn create_direct(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("open {} with O_DIRECT", path.display()))
}

/// Opens an existing `path` for O_DIRECT reads.
fn open_direct_read(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("open {} with O_DIRECT for reading", path.display()))
}

/// Writes the stamp for every sector of `buffer`, which lands at `file_offset`.
pub(crate) fn stamp(buffer: &mut [u8], file_offset: u64) {
    for (index, sector) in buffer.chunks_exact_mut(STAMP_SECTOR_BYTES).enumerate() {
        let offset = file_offset + (index * STAMP_SECTOR_BYTES) as u64;
        sector[..8].copy_from_slice(&STAMP_MAGIC.to_le_bytes());
        sector[8..STAMP_BYTES].copy_from_slice(&offset.to_le_bytes());
    }
}

/// Checks the stamp of every sector of `buffer`, read from `file_offset`.
pub(crate) fn check_stamps(buffer: &[u8], file_offset: u64) -> Result<(), String> {
    for (index, sector) in buffer.chunks_exact(STAMP_SECTOR_BYTES).enumerate() {
        let offset = file_offset + (index * STAMP_SECTOR_BYTES) as u64;
        let magic = u64::from_le_bytes(sector[..8].try_into().expect("8-byte slice"));
        let stamped = u64::from_le_bytes(sector[8..STAMP_BYTES].try_into().expect("8-byte slice"));
        if magic != STAMP_MAGIC || stamped != offset {
            return Err(format!(
                "sector at offset {offset} holds stamp (magic {magic:#x}, offset {stamped}), \
                 not what was written"
            ));
        }
    }
    Ok(())
}

/// Fills `buffer` with a non-zero, non-repeating-per-sector pattern, so a
/// filesystem or device cannot shortcut zero pages.
pub fn fill_pattern(buffer: &mut [u8], seed: u64) {
    let mut state = seed | 1;
    for chunk in buffer.chunks_exact_mut(8) {
        // xorshift64: cheap, deterministic, never zero.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes());
    }
}

/// Reads back `VERIFY_SAMPLE_SECTORS` sectors spread over `len_bytes` of
/// `file` and checks their stamps (plain O_DIRECT `pread`, not timed).
fn verify_sample(file: &File, path: &Path, len_bytes: u64) -> Result<()> {
    let sector_count = len_bytes / STAMP_SECTOR_BYTES as u64;
    ensure!(sector_count > 0, "nothing to verify in {}", path.display());
    let mut buffer = aligned_zeroed(STAMP_SECTOR_BYTES);
    let step = (sector_count / VERIFY_SAMPLE_SECTORS).max(1);
    // Spread over the file, and always the very last sector: the one most
    // likely to be missing if the pass stopped early.
    let samples = (0..VERIFY_SAMPLE_SECTORS)
        .map(|index| (index * step).min(sector_count - 1))
        .chain(std::iter::once(sector_count - 1));
    for sector in samples {
        let offset = sector * STAMP_SECTOR_BYTES as u64;
        file.read_exact_at(buffer.as_mut_slice(), offset)
            .with_context(|| format!("read back {} at offset {offset}", path.display()))?;
        check_stamps(buffer.as_slice(), offset)
            .map_err(|message| anyhow::anyhow!("{}: {message}", path.display()))?;
    }
    Ok(())
}

/// Raw sequential write: creates `path`, preallocates `total_bytes` with
/// `fallocate`, writes it in `block_bytes` blocks with `queue_depth` in flight,
/// then `fdatasync`s. The timed span starts at the first submission and ends
/// when the `fdatasync` completes. The file is kept (for [`seq_read`]) and a
/// sample of it is read back before returning.
pub fn seq_write(
    path: &Path,
    total_bytes: u64,
    block_bytes: usize,
    queue_depth: usize,
) -> Result<SeqResult> {
    ensure!(
        block_bytes.is_multiple_of(STAMP_SECTOR_BYTES),
        "block size {block_bytes} is not a multiple of {STAMP_SECTOR_BYTES}"
    );
    ensure!(
        total_bytes.is_multiple_of(block_bytes as u64),
        "total {total_bytes} is not a multiple of the block size {block_bytes}"
    );
    let file = create_direct(path)?;
    sys::fallocate(&file, total_bytes)
        .with_context(|| format!("fallocate {total_bytes} bytes for {}", path.display()))?;
    let mut ring = Uring::new(queue_depth, block_bytes).context("set up io_uring")?;
    for index in 0..queue_depth {
        fill_pattern(ring.buffer_mut(index), index as u64 + 1);
    }
    let started = Instant::now();
    ring.sequential(&file, Direction::Write, total_bytes, stamp, |_, _| Ok(()))
        .with_context(|| format!("sequential write to {}", path.display()))?;
    ring.fdatasync(&file)
        .with_context(|| format!("fdatasync {}", path.display()))?;
    let elapsed = started.elapsed();
    verify_sample(&file, path, total_bytes)?;
    Ok(SeqResult::new(
        total_bytes,
        block_bytes,
        queue_depth,
        elapsed,
    ))
}

/// Raw sequential read of the first `total_bytes` of `path` (written by
/// [`seq_write`]) in `block_bytes` blocks with `queue_depth` in flight. Every
/// sector's stamp is checked as it arrives. The file's cached pages are dropped
/// first, though O_DIRECT bypasses the page cache anyway.
pub fn seq_read(
    path: &Path,
    total_bytes: u64,
    block_bytes: usize,
    queue_depth: usize,
) -> Result<SeqResult> {
    let file = open_direct_read(path)?;
    let len = file
        .metadata()
        .with_context(|| format!("stat {}", path.display()))?
        .len();
    ensure!(
        len >= total_bytes,
        "{} holds {len} bytes, fewer than the {total_bytes} to read",
        path.display()
    );
    sys::drop_cached_pages(&file)
        .with_context(|| format!("posix_fadvise(DONTNEED) {}", path.display()))?;
    let mut ring = Uring::new(queue_depth, block_bytes).context("set up io_uring")?;
    let started = Instant::now();
    ring.sequential(&file, Direction::Read, total_bytes, |_, _| {}, check_stamps)
        .with_context(|| format!("sequential read of {}", path.display()))?;
    let elapsed = started.elapsed();
    Ok(SeqResult::new(
        total_bytes,
        block_bytes,
        queue_depth,
        elapsed,
    ))
}

/// One run of the durable small-write probe.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeResult {
    /// Latency of one 4 KiB write + `fdatasync`, queue depth 1.
    pub latency: LatencySummary,
    /// Durable writes per second over the probe.
    pub ops_per_s: f64,
    /// Which of the disk's modes the probe saw: `"slow"` when the p50 is in
    /// the slow mode, `"mixed"` when only the p99 is, else `"fast"`.
    pub mode: &'static str,
}

/// The device's best-case durable small write, kept ready to run between
/// workloads: one preallocated, fully written file and one ring.
pub struct Prober {
    path: PathBuf,
    file: File,
    ring: Uring,
    block_bytes: usize,
    next_block: u64,
}

impl Prober {
    /// Creates the probe file at `path`: preallocates it, writes every block
    /// once and syncs, so later probe writes overwrite initialised blocks.
    pub fn new(path: &Path) -> Result<Self> {
        Self::with_block_bytes(path, PROBE_BLOCK_BYTES)
    }

    /// Like [`Prober::new`], but each durable write is `block_bytes` long (a
    /// multiple of 4 KiB that divides the probe region): the device limit of
    /// a group commit that puts that many bytes in one write + fdatasync.
    pub fn with_block_bytes(path: &Path, block_bytes: usize) -> Result<Self> {
        ensure!(
            block_bytes.is_multiple_of(STAMP_SECTOR_BYTES)
                && PROBE_REGION_BYTES.is_multiple_of(block_bytes as u64),
            "durable write of {block_bytes} bytes does not tile the {PROBE_REGION_BYTES}-byte region"
        );
        let fill = seq_write(
            path,
            PROBE_REGION_BYTES,
            PROBE_FILL_BLOCK_BYTES,
            PROBE_FILL_QUEUE_DEPTH,
        )?;
        ensure!(
            fill.bytes == PROBE_REGION_BYTES,
            "probe region not fully written"
        );
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .with_context(|| format!("open {} with O_DIRECT", path.display()))?;
        let mut ring = Uring::new(1, block_bytes).context("set up io_uring")?;
        fill_pattern(ring.buffer_mut(0), 0x5eed);
        Ok(Self {
            path: path.to_owned(),
            file,
            ring,
            block_bytes,
            next_block: 0,
        })
    }

    /// Runs up to `iterations_max` durable writes of one block, stopping early once
    /// `duration_max` has passed, and summarises their latency. The last block
    /// written is read back and checked before returning.
    pub fn probe(&mut self, iterations_max: usize, duration_max: Duration) -> Result<ProbeResult> {
        ensure!(iterations_max > 0, "a probe needs at least one iteration");
        let region_blocks = PROBE_REGION_BYTES / self.block_bytes as u64;
        let mut recorder = LatencyRecorder::new();
        let started = Instant::now();
        let mut last_offset = 0;
        for _ in 0..iterations_max {
            let offset = self.next_block * self.block_bytes as u64;
            self.next_block = (self.next_block + 1) % region_blocks;
            stamp(self.ring.buffer_mut(0), offset);
            let op_started = Instant::now();
            self.ring
                .write_then_fdatasync(&self.file, offset)
                .with_context(|| format!("probe write at {offset} in {}", self.path.display()))?;
            recorder.record(op_started.elapsed());
            last_offset = offset;
            if started.elapsed() >= duration_max {
                break;
            }
        }
        let elapsed = started.elapsed();
        let mut check = aligned_zeroed(self.block_bytes);
        self.file
            .read_exact_at(check.as_mut_slice(), last_offset)
            .with_context(|| format!("read back probe block in {}", self.path.display()))?;
        check_stamps(check.as_slice(), last_offset)
            .map_err(|message| anyhow::anyhow!("{}: {message}", self.path.display()))?;
        let latency = recorder.summary();
        let ops_per_s = latency.samples as f64 / elapsed.as_secs_f64();
        let slow_us = SLOW_MODE_LATENCY_MIN.as_secs_f64() * 1e6;
        let mode = if latency.p50_us > slow_us {
            "slow"
        } else if latency.p99_us > slow_us {
            "mixed"
        } else {
            "fast"
        };
        Ok(ProbeResult {
            latency,
            ops_per_s,
            mode,
        })
    }

    /// The default probe: bounded by [`PROBE_ITERATIONS_MAX`] and [`PROBE_DURATION_MAX`].
    pub fn probe_default(&mut self) -> Result<ProbeResult> {
        self.probe(PROBE_ITERATIONS_MAX, PROBE_DURATION_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_catch_misplaced_sectors() {
        let mut buffer = vec![0u8; 4 * STAMP_SECTOR_BYTES];
        stamp(&mut buffer, 1 << 20);
        assert!(check_stamps(&buffer, 1 << 20).is_ok());
        assert!(check_stamps(&buffer, 0).is_err());
        buffer[STAMP_SECTOR_BYTES + 9] ^= 1;
        assert!(check_stamps(&buffer, 1 << 20).is_err());
    }

    #[test]
    fn zeroed_sectors_fail_the_check() {
        let buffer = vec![0u8; STAMP_SECTOR_BYTES];
        assert!(check_stamps(&buffer, 0).is_err());
    }

    /// Runs the raw writer, reader and probe on the real disk under `target/`
    /// (tmpfs would not accept the check in `ensure_real_disk`).
    #[test]
    fn raw_write_read_and_probe_on_disk() -> Result<()> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-test-device");
        std::fs::create_dir_all(&dir)?;
        ensure_real_disk(&dir)?;
        let path = dir.join("seq.dat");
        let written = seq_write(&path, 4 << 20, 64 << 10, 8)?;
        assert_eq!(written.bytes, 4 << 20);
        let read = seq_read(&path, 4 << 20, 1 << 20, 2)?;
        assert_eq!(read.bytes, 4 << 20);
        let mut prober = Prober::new(&dir.join("probe.dat"))?;
        let probe = prober.probe(20, Duration::from_secs(5))?;
        assert_eq!(probe.latency.samples, 20);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
