//! The disk's floor of a replicated commit when every node shares one
//! disk, as the `raft` benchmark's 3-node cluster does on one host: what
//! the disk alone makes of `files` journals each writing one durable 4 KiB
//! entry at the same moment, against one such write alone.
//!
//! Rounds alternate between one write + `fdatasync` into a file of its own
//! and `files` such pairs, one per file, submitted together (one
//! `io_uring_enter`; every `fdatasync` runs on an io_uring worker, so the
//! kernel runs them at once). The time to the k-th completion of the
//! `files` pairs, for k a majority, is the disk's share of a commit that
//! needs a majority of writes durable, with no message and no storage
//! code. Each file is written in order, one block a round, as a journal
//! appends; the last block written to each is read back and compared with
//! what was written, so no figure can come from a no-op.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde::Serialize;

use crate::device::{
    check_stamps, create_direct, fill_pattern, seq_write, stamp, PROBE_BLOCK_BYTES,
    PROBE_FILL_BLOCK_BYTES, PROBE_FILL_QUEUE_DEPTH,
};
use crate::latency::{LatencyRecorder, LatencySummary};
use crate::sys::{self, aligned_zeroed, Uring};

/// Most rounds one measurement may take: each file is `rounds` blocks
/// (4 KiB each), so this bounds the files at 64 MiB.
pub const QUORUM_ROUNDS_MAX: usize = 16_384;

/// Whether the writes land on blocks already written (as in a journal
/// whose segments are recycled or zero-filled) or on fresh fallocated
/// blocks (as in a journal's new segment), whose first `fdatasync` also
/// commits the extent conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Blocks {
    /// Overwrites of written blocks.
    Written,
    /// First writes into fallocated space.
    Fresh,
}

/// One measurement ([`quorum_floor`]).
#[derive(Clone, Debug, Serialize)]
pub struct QuorumFloor {
    pub files: usize,
    pub blocks: Blocks,
    /// One write + `fdatasync`, nothing else in flight.
    pub alone: LatencySummary,
    /// `kth[k - 1]`: from the submission of all `files` pairs until the
    /// k-th `fdatasync` completed.
    pub kth: Vec<LatencySummary>,
}

impl QuorumFloor {
    /// The majority's p50 over one write's alone: what the disk alone
    /// makes of a commit that needs a majority of `files` writes durable.
    pub fn majority_over_alone(&self) -> f64 {
        self.majority().p50_us / self.alone.p50_us.max(f64::MIN_POSITIVE)
    }

    /// The latency of the majority's write: the k-th of `files` done, for
    /// k = files / 2 + 1.
    pub fn majority(&self) -> &LatencySummary {
        &self.kth[self.files / 2]
    }
}

/// Measures [`QuorumFloor`] for `files` journals on the disk under `dir`:
/// up to `rounds_max` rounds (at most [`QUORUM_ROUNDS_MAX`]) or until
/// `duration_max` has passed. The files are created in `dir` and removed
/// after, also when the measurement fails.
pub fn quorum_floor(
    dir: &Path,
    files: usize,
    blocks: Blocks,
    rounds_max: usize,
    duration_max: Duration,
) -> Result<QuorumFloor> {
    ensure!(files >= 1, "a quorum floor needs at least one file");
    ensure!(
        (1..=QUORUM_ROUNDS_MAX).contains(&rounds_max),
        "rounds must be within 1..={QUORUM_ROUNDS_MAX}, not {rounds_max}"
    );
    // File `files` takes the writes alone.
    let paths: Vec<PathBuf> = (0..=files)
        .map(|index| dir.join(format!("quorum-floor-{index}")))
        .collect();
    let measured = prepare(&paths, blocks, rounds_max)
        .and_then(|opened| measure(&paths, &opened, rounds_max, duration_max));
    let mut removed = Ok(());
    for path in &paths {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                removed = Err(e).with_context(|| format!("remove {}", path.display()));
            }
            _ => {}
        }
    }
    let (alone, kth) = measured?;
    removed?;
    Ok(QuorumFloor {
        files,
        blocks,
        alone,
        kth,
    })
}

/// Creates the files, each with room for `rounds` blocks: written and
/// synced ([`Blocks::Written`]) or fallocated and synced ([`Blocks::Fresh`]).
fn prepare(paths: &[PathBuf], blocks: Blocks, rounds: usize) -> Result<Vec<File>> {
    let file_bytes = ((rounds * PROBE_BLOCK_BYTES).div_ceil(PROBE_FILL_BLOCK_BYTES)
        * PROBE_FILL_BLOCK_BYTES) as u64;
    let mut opened = Vec::with_capacity(paths.len());
    for path in paths {
        let file = match blocks {
            Blocks::Written => {
                seq_write(
                    path,
                    file_bytes,
                    PROBE_FILL_BLOCK_BYTES,
                    PROBE_FILL_QUEUE_DEPTH,
                )?;
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)
                    .with_context(|| format!("open {} with O_DIRECT", path.display()))?
            }
            Blocks::Fresh => {
                let file = create_direct(path)?;
                sys::fallocate(&file, file_bytes).with_context(|| {
                    format!("fallocate {file_bytes} bytes for {}", path.display())
                })?;
                Uring::new(1, PROBE_BLOCK_BYTES)
                    .context("set up io_uring")?
                    .fdatasync(&file)
                    .with_context(|| format!("fdatasync {}", path.display()))?;
                file
            }
        };
        opened.push(file);
    }
    Ok(opened)
}

/// The rounds on prepared files (the last one takes the writes alone):
/// the latencies of the writes alone and of each k-th of those together.
fn measure(
    paths: &[PathBuf],
    opened: &[File],
    rounds_max: usize,
    duration_max: Duration,
) -> Result<(LatencySummary, Vec<LatencySummary>)> {
    let (together, alone_file) = opened.split_at(opened.len() - 1);
    let files = together.len();
    let mut ring = Uring::new(2 * files, PROBE_BLOCK_BYTES).context("set up io_uring")?;
    let mut alone = LatencyRecorder::new();
    let mut kth: Vec<LatencyRecorder> = (0..files).map(|_| LatencyRecorder::new()).collect();
    let mut last_offset = 0;
    let started = Instant::now();
    for round in 0..rounds_max {
        let offset = (round * PROBE_BLOCK_BYTES) as u64;
        stamp(ring.buffer_mut(0), offset);
        let took = ring
            .write_then_fdatasync_each(&[(&alone_file[0], offset)])
            .with_context(|| format!("write at {offset} in {}", paths[files].display()))?;
        alone.record(took[0]);
        for index in 0..files {
            // A pattern per file, so a write that landed in another file
            // fails the read-back below.
            fill_pattern(ring.buffer_mut(index), index as u64 + 1);
            stamp(ring.buffer_mut(index), offset);
        }
        let writes: Vec<(&File, u64)> = together.iter().map(|file| (file, offset)).collect();
        let mut took = ring
            .write_then_fdatasync_each(&writes)
            .with_context(|| format!("{files} writes at {offset}, one per file"))?;
        took.sort();
        for (recorder, took) in kth.iter_mut().zip(took) {
            recorder.record(took);
        }
        last_offset = offset;
        if started.elapsed() >= duration_max {
            break;
        }
    }
    let mut check = aligned_zeroed(PROBE_BLOCK_BYTES);
    for (index, (file, path)) in together.iter().zip(paths).enumerate() {
        file.read_exact_at(check.as_mut_slice(), last_offset)
            .with_context(|| format!("read back the last block of {}", path.display()))?;
        check_stamps(check.as_slice(), last_offset)
            .map_err(|message| anyhow::anyhow!("{}: {message}", path.display()))?;
        ensure!(
            check.as_slice() == ring.buffer_mut(index),
            "{}: the last block read back is not the one written there",
            path.display()
        );
    }
    Ok((
        alone.summary(),
        kth.iter().map(LatencyRecorder::summary).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floor writes every file, times each k-th completion in order,
    /// reads the last blocks back, refuses more rounds than its files hold,
    /// and leaves no file behind.
    #[test]
    fn quorum_floor_times_every_kth_write_and_cleans_up() -> Result<()> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-test-quorum");
        std::fs::create_dir_all(&dir)?;
        for blocks in [Blocks::Written, Blocks::Fresh] {
            let floor = quorum_floor(&dir, 3, blocks, 10, Duration::from_secs(5))?;
            assert_eq!(floor.alone.samples, 10);
            assert_eq!(floor.kth.len(), 3);
            assert!(floor.kth.iter().all(|k| k.samples == 10));
            assert!(floor.kth[0].p50_us <= floor.kth[1].p50_us);
            assert!(floor.kth[1].p50_us <= floor.kth[2].p50_us);
            assert_eq!(floor.majority().p50_us, floor.kth[1].p50_us);
            assert!(floor.majority_over_alone() > 0.0);
            assert_eq!(std::fs::read_dir(&dir)?.count(), 0, "{blocks:?}");
        }
        let too_many = quorum_floor(
            &dir,
            3,
            Blocks::Fresh,
            QUORUM_ROUNDS_MAX + 1,
            Duration::from_secs(1),
        );
        assert!(too_many.is_err());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
