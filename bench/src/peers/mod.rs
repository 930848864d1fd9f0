//! The systems ringstore is measured against, and the child process that runs
//! one workload on one of them.
//!
//! Every (peer, workload) pair runs in a fresh child process of this binary
//! (`ringstore-bench peer-run`, hidden), which prints one [`RunResult`] as
//! JSON. A fresh process per run is what makes the peak-RSS figure honest:
//! `getrusage(RUSAGE_SELF).ru_maxrss` of a process that ran nothing else,
//! with no allocator high-water mark or background thread left behind by the
//! peer before it. It also keeps one peer's background work (LSM flushes and
//! compactions, checkpoint threads) from running into the next peer's timing.
//!
//! The thread-based peers implement [`Peer`] and share one driver per
//! workload ([`run_small`], [`run_bulk`], [`run_recovery`], [`run_readback`]),
//! so they are timed and verified the same way. ringstore (glommio tasks on
//! one reactor) and the device limit (raw io_uring) have their own drivers.

mod device_limit;
mod files;
mod fjall_peer;
mod okaywal_peer;
mod raft_engine_peer;
pub mod record;
mod ringstore_peer;
#[cfg(feature = "rocksdb")]
mod rocksdb_peer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::device::mb_per_s;
use crate::latency::{LatencyRecorder, LatencySummary};
use crate::sys;
use record::{
    payload, restamp, RecordChecker, BULK_BATCH_RECORDS, BULK_RECORD_BYTES, SMALL_RECORD_BYTES,
};

/// Every system the side-by-side run measures.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PeerName {
    /// ringstore's journal: glommio tasks on one reactor, `Durability::Auto`.
    Ringstore,
    /// okaywal: one entry per record (per MiB in bulk), `commit()` fsyncs.
    Okaywal,
    /// fjall: one keyspace; `PersistMode::SyncData` after each write or batch.
    Fjall,
    /// RocksDB through the `rocksdb` crate: `WriteOptions::set_sync(true)`.
    Rocksdb,
    /// raft-engine: one raft group per writer, `write(batch, sync = true)`.
    RaftEngine,
    /// A plain `std::fs::File` opened for append, `sync_data` per record.
    FileSync,
    /// A plain file with a hand-rolled group commit (leader writes and syncs
    /// everything queued, followers wait).
    FileGroup,
    /// The device limit: raw O_DIRECT io_uring writes and reads, no peer.
    Device,
}

impl PeerName {
    /// The name printed in tables and JSON.
    pub fn label(self) -> &'static str {
        match self {
            PeerName::Ringstore => "ringstore",
            PeerName::Okaywal => "okaywal",
            PeerName::Fjall => "fjall",
            PeerName::Rocksdb => "rocksdb",
            PeerName::RaftEngine => "raft-engine",
            PeerName::FileSync => "file-sync",
            PeerName::FileGroup => "file-group",
            PeerName::Device => "device",
        }
    }

    /// Whether this build can run the peer (RocksDB is a cargo feature).
    pub fn available(self) -> bool {
        self != PeerName::Rocksdb || cfg!(feature = "rocksdb")
    }

    /// Whether this is one of the systems ringstore is compared with (not
    /// ringstore itself, not the device limit).
    pub fn is_peer(self) -> bool {
        !matches!(self, PeerName::Ringstore | PeerName::Device)
    }

    /// Whether the peer runs the bulk / recovery / read-back chain. The
    /// group-commit file is the sync-per-record file when there is one writer
    /// that syncs once per MiB, so it only runs the concurrent workloads.
    pub fn runs_bulk(self) -> bool {
        self != PeerName::FileGroup
    }
}

/// What one child run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunKind {
    /// 256 B records, each durable before its writer sends the next, from
    /// `--writers` writers for `--seconds`.
    Small,
    /// `--bytes` of 64 KiB records, at least one durability point per MiB.
    Bulk,
    /// Open of the log `bulk` left (`--records` records), pages dropped first.
    Recovery,
    /// Every record of that log read back in order and checked.
    Readback,
}

/// Arguments of the hidden `ringstore-bench peer-run` (one child run).
#[derive(Args, Debug, Clone)]
pub struct PeerRunArgs {
    /// The system to run.
    #[arg(long, value_enum)]
    pub peer: PeerName,
    /// The workload.
    #[arg(long, value_enum)]
    pub kind: RunKind,
    /// Directory of the peer's data (created by `small` and `bulk`).
    #[arg(long)]
    pub dir: PathBuf,
    /// Concurrent writers (`small`).
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    /// Seconds of appending (`small`).
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Payload bytes to write (`bulk`).
    #[arg(long, default_value_t = 256 << 20)]
    pub bytes: u64,
    /// Records the bulk run wrote (`recovery`, `readback`).
    #[arg(long, default_value_t = 0)]
    pub records: u64,
}

/// What one child run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// The system.
    pub peer: PeerName,
    /// The workload.
    pub kind: RunKind,
    /// Concurrent writers (1 for everything but `small`).
    pub writers: usize,
    /// Records written, recovered or read back (all verified).
    pub records: u64,
    /// Payload bytes of those records.
    pub payload_bytes: u64,
    /// Wall time of the timed part.
    pub seconds: f64,
    /// `records / seconds`.
    pub records_per_s: f64,
    /// `payload_bytes / seconds`, in 10^6 bytes per second.
    pub mb_per_s: f64,
    /// Ack latency per record (writes), or the gap between consecutive records
    /// (read-back); none for recovery.
    pub latency: Option<LatencySummary>,
    /// Allocated bytes (`st_blocks * 512`) of every file in the peer's
    /// directory after the run.
    pub bytes_on_disk: u64,
    /// Peak resident set size of the child process that ran this workload.
    pub peak_rss_bytes: u64,
    /// fdatasyncs issued, where the system reports them.
    pub syncs: Option<u64>,
    /// Wall time of the whole child process (set up, run, verify), as the
    /// parent saw it.
    #[serde(default)]
    pub child_wall_seconds: f64,
}

impl RunResult {
    /// A result whose rates derive from `records`, `payload_bytes` and `elapsed`.
    fn new(
        peer: PeerName,
        kind: RunKind,
        writers: usize,
        records: u64,
        payload_bytes: u64,
        elapsed: Duration,
        latency: Option<LatencySummary>,
    ) -> Self {
        let seconds = elapsed.as_secs_f64();
        Self {
            peer,
            kind,
            writers,
            records,
            payload_bytes,
            seconds,
            records_per_s: records as f64 / seconds.max(f64::MIN_POSITIVE),
            mb_per_s: mb_per_s(payload_bytes, elapsed),
            latency,
            bytes_on_disk: 0,
            peak_rss_bytes: 0,
            syncs: None,
            child_wall_seconds: 0.0,
        }
    }
}

/// A [`RecordChecker`] shared with a peer's own threads (okaywal hands
/// records to its checkpointer on a background thread).
pub type SharedChecker = Arc<Mutex<RecordChecker>>;

/// Checks one record with a shared checker.
pub fn check_shared(checker: &SharedChecker, record: &[u8]) -> Result<()> {
    checker
        .lock()
        .map_err(|_| anyhow!("record checker poisoned"))?
        .check(record)
}

/// Which data set a log is created for: the peers are configured as their
/// docs recommend for durability; where a setting must differ for the bulk
/// chain (okaywal must keep every record readable), the peer says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataSet {
    /// The small-record workloads.
    Small,
    /// The bulk workload, whose log recovery and read-back reopen.
    Bulk,
}

/// A thread-safe log the generic drivers can time.
pub trait Peer {
    /// The open log.
    type Log: Sync;

    /// Creates an empty log in `dir`. `checker` sees any record the peer
    /// hands back while writing (okaywal's checkpoints).
    fn create(dir: &Path, data: DataSet, checker: &SharedChecker) -> Result<Self::Log>;

    /// Appends one record; returns once it is durable.
    fn append(log: &Self::Log, writer: usize, seq: u64, payload: &[u8]) -> Result<()>;

    /// Appends `payloads` (records `first_seq..` of `writer`) with one
    /// durability point; returns once all are durable.
    fn append_batch(
        log: &Self::Log,
        writer: usize,
        first_seq: u64,
        payloads: &[Vec<u8>],
    ) -> Result<()>;

    /// Closes the log cleanly.
    fn close(log: Self::Log) -> Result<()>;

    /// Opens the log as after a restart: what `recovery_1g` times.
    fn recover(dir: &Path) -> Result<Self::Log>;

    /// After [`Peer::recover`]: fails unless the log knows all `records`
    /// records of writer 0 (checks the last one's bytes, or the count).
    fn check_recovered(log: &Self::Log, records: u64) -> Result<()>;

    /// Opens the log and hands every record, in order, to `checker`. Returns
    /// the time the reading took (the open is excluded where the peer can
    /// read without reopening; okaywal can only read during recovery) and
    /// the gaps between consecutive records.
    fn read_back(dir: &Path, checker: &SharedChecker) -> Result<(Duration, LatencyRecorder)>;
}

/// Runs one child workload and prints its [`RunResult`] as the last line.
pub fn run_child(args: &PeerRunArgs) -> Result<()> {
    let mut result = run_one(args)?;
    result.peak_rss_bytes = sys::peak_rss_bytes().context("getrusage")?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// Runs one workload on one system in this process.
pub fn run_one(args: &PeerRunArgs) -> Result<RunResult> {
    ensure!(
        args.peer.available(),
        "{} is not built in (cargo feature `rocksdb`)",
        args.peer.label()
    );
    let duration = Duration::from_secs_f64(args.seconds);
    let mut result = match args.peer {
        PeerName::Ringstore => ringstore_peer::run(args, duration)?,
        PeerName::Device => device_limit::run(args, duration)?,
        PeerName::Okaywal => run_generic::<okaywal_peer::Okaywal>(args, duration)?,
        PeerName::Fjall => run_generic::<fjall_peer::Fjall>(args, duration)?,
        PeerName::RaftEngine => run_generic::<raft_engine_peer::RaftEngine>(args, duration)?,
        PeerName::FileSync => run_generic::<files::FileSync>(args, duration)?,
        PeerName::FileGroup => run_generic::<files::FileGroup>(args, duration)?,
        #[cfg(feature = "rocksdb")]
        PeerName::Rocksdb => run_generic::<rocksdb_peer::Rocksdb>(args, duration)?,
        #[cfg(not(feature = "rocksdb"))]
        PeerName::Rocksdb => bail!("rocksdb is not built in"),
    };
    result.peer = args.peer;
    result.bytes_on_disk = bytes_on_disk(&args.dir)?;
    Ok(result)
}

fn run_generic<P: Peer>(args: &PeerRunArgs, duration: Duration) -> Result<RunResult> {
    match args.kind {
        RunKind::Small => run_small::<P>(&args.dir, args.writers, duration),
        RunKind::Bulk => run_bulk::<P>(&args.dir, args.bytes),
        RunKind::Recovery => run_recovery::<P>(&args.dir, args.records),
        RunKind::Readback => run_readback::<P>(&args.dir, args.records),
    }
}

/// What one writer thread did.
struct WriterOutcome {
    acknowledged: u64,
    latency: LatencyRecorder,
    finished: Instant,
}

/// `writers` threads each append [`SMALL_RECORD_BYTES`] records, one
/// durable append at a time, until `duration` has passed; then the log is
/// closed, reopened and every acknowledged record read back and checked.
pub fn run_small<P: Peer>(dir: &Path, writers: usize, duration: Duration) -> Result<RunResult> {
    ensure!(writers >= 1, "at least one writer");
    let checker: SharedChecker =
        Arc::new(Mutex::new(RecordChecker::new(writers, SMALL_RECORD_BYTES)));
    let log = P::create(dir, DataSet::Small, &checker)?;
    let start = Barrier::new(writers + 1);
    let (started, outcomes) = std::thread::scope(|scope| -> Result<_> {
        let handles: Vec<_> = (0..writers)
            .map(|writer| {
                let log = &log;
                let start = &start;
                std::thread::Builder::new()
                    .name(format!("rsb-w{writer}"))
                    .stack_size(256 << 10)
                    .spawn_scoped(scope, move || -> Result<WriterOutcome> {
                        let mut record = payload(writer, SMALL_RECORD_BYTES);
                        let mut latency = LatencyRecorder::new();
                        start.wait();
                        let deadline = Instant::now() + duration;
                        let mut seq = 0u64;
                        loop {
                            restamp(&mut record, writer, seq);
                            let sent = Instant::now();
                            P::append(log, writer, seq, &record)
                                .with_context(|| format!("writer {writer}, record {seq}"))?;
                            let now = Instant::now();
                            latency.record(now - sent);
                            seq += 1;
                            if now >= deadline {
                                return Ok(WriterOutcome {
                                    acknowledged: seq,
                                    latency,
                                    finished: now,
                                });
                            }
                        }
                    })
                    .context("spawn writer thread")
            })
            .collect::<Result<_>>()?;
        start.wait();
        let started = Instant::now();
        let mut outcomes = Vec::with_capacity(writers);
        for handle in handles {
            outcomes.push(
                handle
                    .join()
                    .map_err(|_| anyhow!("writer thread panicked"))??,
            );
        }
        Ok((started, outcomes))
    })?;
    let finished = outcomes.iter().map(|o| o.finished).max().unwrap_or(started);
    let mut latency = LatencyRecorder::new();
    for outcome in &outcomes {
        latency.merge(&outcome.latency);
    }
    let acknowledged: Vec<u64> = outcomes.iter().map(|o| o.acknowledged).collect();
    let records: u64 = acknowledged.iter().sum();
    P::close(log)?;
    // Verify: every acknowledged record, read back after a clean reopen.
    P::read_back(dir, &checker)?;
    checker
        .lock()
        .map_err(|_| anyhow!("record checker poisoned"))?
        .finish(&acknowledged)?;
    Ok(RunResult::new(
        PeerName::Device, // set by the caller
        RunKind::Small,
        writers,
        records,
        records * SMALL_RECORD_BYTES as u64,
        finished - started,
        Some(latency.summary()),
    ))
}

/// One writer appends `total_bytes` of [`BULK_RECORD_BYTES`] records,
/// [`BULK_BATCH_RECORDS`] (1 MiB) per durability point. Each record's ack
/// latency is its batch's: from handing the batch over until it is durable.
pub fn run_bulk<P: Peer>(dir: &Path, total_bytes: u64) -> Result<RunResult> {
    let records = bulk_records(total_bytes)?;
    let checker: SharedChecker = Arc::new(Mutex::new(RecordChecker::new(1, BULK_RECORD_BYTES)));
    let log = P::create(dir, DataSet::Bulk, &checker)?;
    let mut batch: Vec<Vec<u8>> = (0..BULK_BATCH_RECORDS)
        .map(|_| payload(0, BULK_RECORD_BYTES))
        .collect();
    let mut latency = LatencyRecorder::new();
    let started = Instant::now();
    let mut seq = 0u64;
    while seq < records {
        let count = (records - seq).min(BULK_BATCH_RECORDS as u64) as usize;
        for (index, record) in batch[..count].iter_mut().enumerate() {
            restamp(record, 0, seq + index as u64);
        }
        let sent = Instant::now();
        P::append_batch(&log, 0, seq, &batch[..count])
            .with_context(|| format!("bulk batch at record {seq}"))?;
        let ack = sent.elapsed();
        for _ in 0..count {
            latency.record(ack);
        }
        seq += count as u64;
    }
    let elapsed = started.elapsed();
    P::close(log)?;
    Ok(RunResult::new(
        PeerName::Device,
        RunKind::Bulk,
        1,
        records,
        total_bytes,
        elapsed,
        Some(latency.summary()),
    ))
}

/// Records of a bulk run of `total_bytes`.
pub fn bulk_records(total_bytes: u64) -> Result<u64> {
    ensure!(
        total_bytes > 0 && total_bytes.is_multiple_of(BULK_RECORD_BYTES as u64),
        "bulk size {total_bytes} is not a positive multiple of {BULK_RECORD_BYTES}"
    );
    Ok(total_bytes / BULK_RECORD_BYTES as u64)
}

/// Times [`Peer::recover`] of the bulk log with its pages dropped from the
/// cache, then checks it knows every record.
pub fn run_recovery<P: Peer>(dir: &Path, records: u64) -> Result<RunResult> {
    ensure!(
        records > 0,
        "recovery needs the record count of the bulk run"
    );
    drop_tree_from_cache(dir)?;
    let started = Instant::now();
    let log = P::recover(dir)?;
    let elapsed = started.elapsed();
    P::check_recovered(&log, records)?;
    P::close(log)?;
    Ok(RunResult::new(
        PeerName::Device,
        RunKind::Recovery,
        1,
        records,
        records * BULK_RECORD_BYTES as u64,
        elapsed,
        None,
    ))
}

/// Reads back every record of the bulk log, in order, with its pages dropped
/// from the cache first, checking each.
pub fn run_readback<P: Peer>(dir: &Path, records: u64) -> Result<RunResult> {
    ensure!(
        records > 0,
        "read-back needs the record count of the bulk run"
    );
    drop_tree_from_cache(dir)?;
    let checker: SharedChecker = Arc::new(Mutex::new(RecordChecker::new(1, BULK_RECORD_BYTES)));
    let (elapsed, gaps) = P::read_back(dir, &checker)?;
    checker
        .lock()
        .map_err(|_| anyhow!("record checker poisoned"))?
        .finish(&[records])?;
    Ok(RunResult::new(
        PeerName::Device,
        RunKind::Readback,
        1,
        records,
        records * BULK_RECORD_BYTES as u64,
        elapsed,
        Some(gaps.summary()),
    ))
}

/// Records the gap since the previous record of a read-back.
pub struct GapClock {
    last: Instant,
    gaps: LatencyRecorder,
}

impl GapClock {
    /// Starts timing now.
    pub fn start() -> Self {
        Self {
            last: Instant::now(),
            gaps: LatencyRecorder::new(),
        }
    }

    /// Notes that a record arrived.
    pub fn tick(&mut self) {
        let now = Instant::now();
        self.gaps.record(now - self.last);
        self.last = now;
    }

    /// The gaps recorded.
    pub fn into_gaps(self) -> LatencyRecorder {
        self.gaps
    }
}

/// Allocated bytes of every file under `dir` (`st_blocks * 512`): what the
/// run costs on disk, preallocated space included.
pub fn bytes_on_disk(dir: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error).with_context(|| format!("stat {}", path.display())),
        };
        if meta.is_dir() {
            for entry in
                std::fs::read_dir(&path).with_context(|| format!("list {}", path.display()))?
            {
                pending.push(
                    entry
                        .with_context(|| format!("list {}", path.display()))?
                        .path(),
                );
            }
        } else {
            total += meta.blocks() * 512;
        }
    }
    Ok(total)
}

/// Syncs and drops from the page cache every file under `dir`, so the next
/// open reads the disk (a restart after a power cycle, not a warm reopen).
pub fn drop_tree_from_cache(dir: &Path) -> Result<()> {
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let meta =
            std::fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
        if meta.is_dir() {
            for entry in
                std::fs::read_dir(&path).with_context(|| format!("list {}", path.display()))?
            {
                pending.push(
                    entry
                        .with_context(|| format!("list {}", path.display()))?
                        .path(),
                );
            }
        } else if meta.is_file() {
            let file =
                std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
            // Dirty pages are not dropped; write them out first.
            file.sync_all()
                .with_context(|| format!("fsync {}", path.display()))?;
            sys::drop_cached_pages(&file)
                .with_context(|| format!("posix_fadvise(DONTNEED) {}", path.display()))?;
        }
    }
    Ok(())
}

/// Parses a child's stdout: its last line is the [`RunResult`].
pub fn parse_child_output(stdout: &str) -> Result<RunResult> {
    let Some(line) = stdout.lines().rev().find(|l| !l.trim().is_empty()) else {
        bail!("child printed nothing");
    };
    serde_json::from_str(line).with_context(|| format!("parse child result {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every system through every workload at toy sizes, on the real disk
    /// under `target/`: catches API drift in a peer and broken verification
    /// before a long run.
    #[test]
    fn every_system_runs_every_workload_at_toy_sizes() -> Result<()> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-test-peers");
        crate::harness::remove_path(&root)?;
        let systems = [
            PeerName::Device,
            PeerName::Ringstore,
            PeerName::Okaywal,
            PeerName::Fjall,
            PeerName::Rocksdb,
            PeerName::RaftEngine,
            PeerName::FileSync,
            PeerName::FileGroup,
        ];
        for peer in systems.into_iter().filter(|p| p.available()) {
            let args = |kind, dir: &str, records| PeerRunArgs {
                peer,
                kind,
                dir: root.join(format!("{}-{dir}", peer.label())),
                writers: 4,
                seconds: 0.2,
                bytes: 4 << 20,
                records,
            };
            let small = run_one(&args(RunKind::Small, "small", 0))?;
            assert!(small.records >= 4, "{peer:?}: {small:?}");
            if !peer.runs_bulk() {
                continue;
            }
            let bulk = run_one(&args(RunKind::Bulk, "bulk", 0))?;
            assert_eq!(bulk.records, (4 << 20) / BULK_RECORD_BYTES as u64);
            for kind in [RunKind::Recovery, RunKind::Readback] {
                let result = run_one(&args(kind, "bulk", bulk.records))?;
                assert_eq!(result.records, bulk.records, "{peer:?} {kind:?}");
            }
        }
        crate::harness::remove_path(&root)?;
        Ok(())
    }
}
