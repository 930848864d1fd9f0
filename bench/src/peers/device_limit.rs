//! The device limit in each workload, as a child run like any peer's.
//!
//! - Small records, `n` writers: the ideal group commit. All `n` records
//!   fit one O_DIRECT write of `align_up(n * 256, 4 KiB)` bytes linked to an
//!   fdatasync, at queue depth 1, overwriting already-written blocks (see
//!   `device::Prober`); records/s = `n` x durable writes/s. No system whose
//!   `n` writers each wait for their own record can commit more per sync.
//! - Bulk: raw sequential O_DIRECT write, 64 KiB blocks, 64 in flight, into
//!   a freshly fallocated file, closing fdatasync timed.
//! - Recovery and read-back: raw sequential O_DIRECT read of that file,
//!   256 KiB blocks, 16 in flight; recovery's figure is its time.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::record::{BULK_RECORD_BYTES, SMALL_RECORD_BYTES};
use super::{bulk_records, PeerRunArgs, RunKind, RunResult};
use crate::cmd_device::{SEQ_READ_BLOCK_BYTES, SEQ_READ_QUEUE_DEPTH};
use crate::device::{self, Prober, STAMP_SECTOR_BYTES};

/// Block size of the raw bulk writer (the record size).
const WRITE_BLOCK_BYTES: usize = BULK_RECORD_BYTES;
/// Writes in flight of the raw bulk writer.
const WRITE_QUEUE_DEPTH: usize = 64;
/// File the raw bulk writer creates and the raw reader reads.
const SEQ_FILE_NAME: &str = "seq.dat";
/// Region the small-record durable writes cycle through.
const SYNC_FILE_NAME: &str = "sync.dat";

/// Bytes of one durable write carrying `writers` small records.
pub fn group_write_bytes(writers: usize) -> usize {
    (writers * SMALL_RECORD_BYTES).div_ceil(STAMP_SECTOR_BYTES) * STAMP_SECTOR_BYTES
}

/// Runs the device's side of one workload.
pub fn run(args: &PeerRunArgs, duration: Duration) -> Result<RunResult> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let seq_path = args.dir.join(SEQ_FILE_NAME);
    match args.kind {
        RunKind::Small => {
            ensure!(args.writers >= 1, "at least one writer");
            let block_bytes = group_write_bytes(args.writers);
            let mut prober = Prober::with_block_bytes(&args.dir.join(SYNC_FILE_NAME), block_bytes)?;
            let probe = prober.probe(usize::MAX, duration)?;
            let writes = probe.latency.samples;
            let seconds = writes as f64 / probe.ops_per_s;
            let records = writes * args.writers as u64;
            Ok(RunResult::new(
                super::PeerName::Device,
                RunKind::Small,
                args.writers,
                records,
                records * SMALL_RECORD_BYTES as u64,
                Duration::from_secs_f64(seconds),
                Some(probe.latency),
            ))
        }
        RunKind::Bulk => {
            let records = bulk_records(args.bytes)?;
            let written =
                device::seq_write(&seq_path, args.bytes, WRITE_BLOCK_BYTES, WRITE_QUEUE_DEPTH)?;
            Ok(RunResult::new(
                super::PeerName::Device,
                RunKind::Bulk,
                1,
                records,
                written.bytes,
                Duration::from_secs_f64(written.seconds),
                None,
            ))
        }
        RunKind::Recovery | RunKind::Readback => {
            ensure!(args.records > 0, "needs the record count of the bulk run");
            let bytes = args.records * BULK_RECORD_BYTES as u64;
            let read =
                device::seq_read(&seq_path, bytes, SEQ_READ_BLOCK_BYTES, SEQ_READ_QUEUE_DEPTH)?;
            Ok(RunResult::new(
                super::PeerName::Device,
                args.kind,
                1,
                args.records,
                read.bytes,
                Duration::from_secs_f64(read.seconds),
                None,
            ))
        }
    }
}
