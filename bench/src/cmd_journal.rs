//! `ringstore-bench journal`: the journal's figures from issue 2, each next to
//! the device limit it is judged against, all in one run on one directory.
//!
//! Order of the run (every workload bracketed by durable-write probes):
//!
//! 1. probe
//! 2. bulk: raw sequential write, journal with 64 KiB entries from many
//!    tasks, raw sequential write again; the journal's MB/s over the mean of
//!    the two raw passes (same block size, queue depth = task count, same
//!    bytes, closing `fdatasync` timed). The journal is closed and kept.
//! 3. small: 256 B entries from 1, 16 and 256 tasks on one reactor, each for a
//!    fixed time, in a fresh journal each; entries/s and ack latency. The
//!    1-task p50 is divided by the mean p50 of the two probes around it (the
//!    raw 4 KiB write+fdatasync at queue depth 1).
//! 4. recovery: raw sequential read of the raw bulk file, then `open()` of
//!    the bulk journal with its pages dropped from the cache; payload MB/s
//!    recovered over the raw read MB/s.
//!
//! Nothing is timed that was not verified: the raw passes check stamps, the
//! journal workloads read back entries and check the journal's fsync count.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use clap::{Args, ValueEnum};
use glommio::LocalExecutorBuilder;
use ringstore_journal::{Durability, Journal, Preallocation};
use serde::Serialize;

use crate::cmd_device::{
    CommonArgs, SEQ_BYTES_FULL, SEQ_BYTES_QUICK, SEQ_READ_BLOCK_BYTES, SEQ_READ_QUEUE_DEPTH,
};
use crate::device::{self, fill_pattern, mb_per_s, SeqResult};
use crate::harness::{remove_path, Harness, ProbeBracket};
use crate::latency::{LatencyRecorder, LatencySummary};
use crate::report::{fmt_num, fmt_ratio, round3, Table};
use crate::sys;

/// Payload bytes of a bulk entry.
pub const BULK_ENTRY_BYTES: usize = 64 << 10;
/// Concurrent bulk appender tasks (and the raw writer's queue depth).
pub const BULK_TASKS: usize = 64;
/// Payload bytes of a small entry.
pub const SMALL_ENTRY_BYTES: usize = 256;
/// Appender task counts of the small-entry workloads.
pub const SMALL_TASK_COUNTS: [usize; 3] = [1, 16, 256];
/// How long each small-entry workload appends in full mode.
pub const SMALL_DURATION_FULL: Duration = Duration::from_secs(15);
/// How long each small-entry workload appends in quick mode.
pub const SMALL_DURATION_QUICK: Duration = Duration::from_secs(5);

/// Ring slots of every journal the bench opens.
const SLOT_COUNT: u64 = 1 << 20;
/// Segment file size of every journal the bench opens.
const SEGMENT_BYTES: u64 = 256 << 20;
/// Largest payload accepted by the bench's journals.
const ENTRY_BYTES_MAX: u64 = 1 << 20;
/// Largest group-commit write of the bench's journals.
const BATCH_BYTES_MAX: u64 = 4 << 20;
/// glommio's registered I/O memory per bench reactor.
const REACTOR_IO_MEMORY_BYTES: usize = 64 << 20;
const _: () = assert!(REACTOR_IO_MEMORY_BYTES as u64 >= 4 * BATCH_BYTES_MAX);
/// The watermark task (standing in for a checkpoint task) advances once this
/// many acknowledged ops sit above the watermark: half the ring.
const WATERMARK_LAG_OPS_MAX: u64 = SLOT_COUNT / 2;
/// ... and leaves this many acknowledged ops above it, so the newest entries
/// stay readable for verification.
const WATERMARK_TRAIL_OPS: u64 = SLOT_COUNT / 4;
/// How often the watermark task looks at the acknowledged ops.
const WATERMARK_INTERVAL: Duration = Duration::from_millis(10);
/// Journal passes in the bulk workload, each between two raw passes.
pub const BULK_ROUNDS: usize = 5;
/// Recovery passes (`open()` of the bulk journal), each between two raw reads.
pub const RECOVERY_ROUNDS: usize = 5;
/// Pause before an appender retries after the ring refused it as full.
const RING_FULL_BACKOFF: Duration = Duration::from_micros(100);
/// Acknowledged (op, stamp) pairs each task keeps for read-back, at most.
const SAMPLES_PER_TASK_MAX: usize = 64;

/// Target: bulk MB/s over raw sequential write MB/s.
const TARGET_BULK_RATIO_MIN: f64 = 0.85;
/// Target: 256 B entries/s with 256 appenders.
const TARGET_SMALL_EPS_256_MIN: f64 = 1_000_000.0;
/// Target: 1-appender p50 over the raw 4 KiB write+fdatasync p50.
const TARGET_SINGLE_P50_RATIO_MAX: f64 = 1.10;
/// Target: recovery MB/s over raw sequential read MB/s.
const TARGET_RECOVERY_RATIO_MIN: f64 = 0.80;

const KIB: usize = 1 << 10;
const MIB: u64 = 1 << 20;

const _: () = assert!(BULK_ENTRY_BYTES as u64 <= ENTRY_BYTES_MAX);
const _: () = assert!(SEQ_BYTES_QUICK.is_multiple_of(BULK_ENTRY_BYTES as u64));
const _: () = assert!(SEQ_BYTES_FULL.is_multiple_of(BULK_ENTRY_BYTES as u64));
const _: () = assert!(WATERMARK_TRAIL_OPS < WATERMARK_LAG_OPS_MAX);
const _: () = assert!(SMALL_ENTRY_BYTES >= 8, "payloads carry an 8-byte stamp");

/// How a journal's segments get their disk space (mirrors the journal's enum).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PreallocationArg {
    /// fallocate only: unwritten extents, converted by the first fdatasync over them.
    Fallocate,
    /// fallocate, then zeros written and synced: later fdatasyncs commit no metadata.
    ZeroFill,
}

impl From<PreallocationArg> for Preallocation {
    fn from(value: PreallocationArg) -> Self {
        match value {
            PreallocationArg::Fallocate => Preallocation::Fallocate,
            PreallocationArg::ZeroFill => Preallocation::ZeroFill,
        }
    }
}

/// Arguments of `ringstore-bench journal`.
#[derive(Args, Debug, Clone)]
pub struct JournalArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Segment preallocation of the bulk journal. The default matches the raw
    /// writer it is compared with, which writes into a freshly fallocated file.
    #[arg(long, value_enum, default_value_t = PreallocationArg::Fallocate)]
    pub bulk_preallocation: PreallocationArg,
    /// Segment preallocation of the small-entry journals. The default matches
    /// the probe they are compared with, which overwrites written blocks.
    #[arg(long, value_enum, default_value_t = PreallocationArg::ZeroFill)]
    pub small_preallocation: PreallocationArg,
    /// How every journal of the run makes appends durable.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Auto)]
    pub durability: DurabilityArg,
    /// Largest write every journal of the run makes inline, with blocking
    /// system calls (`JournalBuilder::inline_write_bytes_max`; 0: every
    /// write through io_uring). Default: the journal's default.
    #[arg(long)]
    pub inline_write_bytes_max: Option<u64>,
}

/// How the journal makes appends durable (mirrors the journal's enum; the
/// bench only compares the durable modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DurabilityArg {
    /// A write, then fdatasync, per group commit.
    Sync,
    /// One O_DSYNC write per group commit.
    WriteThrough,
    /// Whichever of the two the journal's probe at open finds faster.
    Auto,
}

impl From<DurabilityArg> for Durability {
    fn from(value: DurabilityArg) -> Self {
        match value {
            DurabilityArg::Sync => Durability::Sync,
            DurabilityArg::WriteThrough => Durability::WriteThrough,
            DurabilityArg::Auto => Durability::Auto,
        }
    }
}

/// Settings of one journal the bench opens.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JournalShape {
    pub(crate) preallocation: PreallocationArg,
    pub(crate) durability: DurabilityArg,
    /// `None`: the journal's default.
    pub(crate) inline_write_bytes_max: Option<u64>,
}

/// Opens (recovering) the journal in `dir` with the bench's settings.
pub(crate) async fn open_journal(dir: &Path, shape: JournalShape) -> Result<Journal> {
    let mut builder = Journal::builder(dir)
        .slot_count(SLOT_COUNT)
        .segment_bytes(SEGMENT_BYTES)
        .entry_bytes_max(ENTRY_BYTES_MAX)
        .batch_bytes_max(BATCH_BYTES_MAX)
        .durability(shape.durability.into())
        .preallocation(shape.preallocation.into());
    if let Some(bytes) = shape.inline_write_bytes_max {
        builder = builder.inline_write_bytes_max(bytes);
    }
    builder
        .open()
        .await
        .with_context(|| format!("open journal in {}", dir.display()))
}

/// Runs `make()`'s future to completion on a fresh glommio reactor (one
/// shard), from this thread, and returns its output.
pub(crate) fn on_reactor<T, F>(name: &str, make: impl FnOnce() -> F + Send + 'static) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + 'static,
{
    LocalExecutorBuilder::default()
        .name(name)
        // Room for every batch buffer the journal holds at once, (writes in
        // flight + 1) x batch_bytes_max, in glommio's registered pool;
        // otherwise batch buffers come from the heap, page faults and all.
        .io_memory(REACTOR_IO_MEMORY_BYTES)
        .spawn(make)
        .map_err(|error| anyhow!("start glommio executor {name}: {error}"))?
        .join()
        .map_err(|error| anyhow!("glommio executor {name}: {error}"))?
}

/// The payload every task sends: a per-task pattern whose first 8 bytes are
/// overwritten with a stamp unique to the append (`task << 32 | sequence`).
pub(crate) fn payload_template(task: usize, len_bytes: usize) -> Vec<u8> {
    let mut payload = vec![0u8; len_bytes];
    fill_pattern(&mut payload, task as u64 + 1);
    payload
}

pub(crate) fn set_stamp(payload: &mut [u8], stamp: u64) {
    payload[..8].copy_from_slice(&stamp.to_le_bytes());
}

/// Reads back each sampled op and checks it holds exactly the payload sent.
pub(crate) async fn verify_samples(
    journal: &Journal,
    samples: &[(usize, u64, u64)],
    len: usize,
) -> Result<()> {
    ensure!(!samples.is_empty(), "no acknowledged entry to verify");
    for &(task, op, stamp) in samples {
        let mut expected = payload_template(task, len);
        set_stamp(&mut expected, stamp);
        let entry = journal
            .read(op)
            .await
            .with_context(|| format!("read back op {op}"))?
            .ok_or_else(|| anyhow!("acknowledged op {op} is missing"))?;
        ensure!(
            entry.payload == expected,
            "op {op} reads back {} bytes that differ from the {} appended",
            entry.payload.len(),
            expected.len()
        );
    }
    Ok(())
}

/// What one appender task did.
#[derive(Default)]
struct TaskOutcome {
    appended: u64,
    ring_full_retries: u64,
    /// (task, op, stamp) of some acknowledged appends, for read-back.
    samples: Vec<(usize, u64, u64)>,
    /// (task, op, stamp) of the task's last acknowledged append.
    last: Option<(usize, u64, u64)>,
}

impl TaskOutcome {
    /// Notes an acknowledged append.
    fn acknowledged(&mut self, stride: &mut u64, sample: (usize, u64, u64)) {
        keep_sample(&mut self.samples, stride, self.appended, sample);
        self.last = Some(sample);
        self.appended += 1;
    }

    /// The kept samples plus the last append.
    fn into_samples(self) -> impl Iterator<Item = (usize, u64, u64)> {
        self.samples.into_iter().chain(self.last)
    }
}

/// Appends with retry while the ring is full (the watermark task frees it).
pub(crate) async fn append_retrying(
    journal: &Journal,
    payload: &[u8],
    retries: &mut u64,
) -> Result<u64> {
    loop {
        match journal.append(payload).await {
            Ok(op) => return Ok(op),
            Err(ringstore_journal::Error::RingFull { .. }) => {
                *retries += 1;
                glommio::timer::sleep(RING_FULL_BACKOFF).await;
            }
            Err(error) => return Err(error).context("append"),
        }
    }
}

/// Keeps `SAMPLES_PER_TASK_MAX` samples spread over a task's appends: every
/// `stride`-th one, doubling the stride (and halving the set) when full.
fn keep_sample(
    samples: &mut Vec<(usize, u64, u64)>,
    stride: &mut u64,
    index: u64,
    sample: (usize, u64, u64),
) {
    if !index.is_multiple_of(*stride) {
        return;
    }
    if samples.len() == SAMPLES_PER_TASK_MAX {
        let kept: Vec<_> = samples.iter().copied().step_by(2).collect();
        *samples = kept;
        *stride *= 2;
        if !index.is_multiple_of(*stride) {
            return;
        }
    }
    samples.push(sample);
}

// ---------------------------------------------------------------- bulk --

/// The journal half of the bulk workload.
#[derive(Clone, Debug, Serialize)]
struct BulkJournal {
    entries: u64,
    payload_bytes: u64,
    seconds: f64,
    mb_per_s: f64,
    fsyncs: u64,
    batches: u64,
    /// Bytes the journal wrote (headers and padding included).
    bytes_written: u64,
    /// Mean bytes per group-commit write.
    write_bytes_mean: f64,
    /// Bulk samples, kept to verify recovery later.
    #[serde(skip)]
    samples: Vec<(usize, u64, u64)>,
    last_op: u64,
}

/// Appends `total_bytes` of `BULK_ENTRY_BYTES` entries from `BULK_TASKS` tasks.
fn run_bulk_journal(dir: PathBuf, total_bytes: u64, shape: JournalShape) -> Result<BulkJournal> {
    on_reactor("rsb-bulk", move || async move {
        let journal = open_journal(&dir, shape).await?;
        let entries = total_bytes / BULK_ENTRY_BYTES as u64;
        let remaining = Rc::new(Cell::new(entries));
        let stats_before = journal.stats();
        let started = Instant::now();
        let tasks: Vec<_> = (0..BULK_TASKS)
            .map(|task| {
                let journal = journal.clone();
                let remaining = Rc::clone(&remaining);
                glommio::spawn_local(async move {
                    let mut payload = payload_template(task, BULK_ENTRY_BYTES);
                    let mut outcome = TaskOutcome::default();
                    let mut stride = 1;
                    while remaining.get() > 0 {
                        remaining.set(remaining.get() - 1);
                        let stamp = (task as u64) << 32 | outcome.appended;
                        set_stamp(&mut payload, stamp);
                        let op =
                            append_retrying(&journal, &payload, &mut outcome.ring_full_retries)
                                .await?;
                        outcome.acknowledged(&mut stride, (task, op, stamp));
                    }
                    anyhow::Ok(outcome)
                })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(tasks.len());
        for task in tasks {
            outcomes.push(task.await?);
        }
        let elapsed = started.elapsed();
        let stats = journal.stats();
        let appended: u64 = outcomes.iter().map(|o| o.appended).sum();
        ensure!(
            appended == entries,
            "appended {appended} of {entries} entries"
        );
        let fsyncs = stats.fsyncs - stats_before.fsyncs;
        let batches = stats.writes - stats_before.writes;
        let bytes_written = stats.bytes_written - stats_before.bytes_written;
        ensure!(
            fsyncs >= 1,
            "journal stats show no fdatasync for {entries} durable appends"
        );
        ensure!(
            bytes_written >= total_bytes,
            "journal stats show {bytes_written} bytes written for {total_bytes} bytes of payload"
        );
        let samples: Vec<_> = outcomes
            .into_iter()
            .flat_map(TaskOutcome::into_samples)
            .collect();
        verify_samples(&journal, &samples, BULK_ENTRY_BYTES).await?;
        let last_op = samples.iter().map(|s| s.1).max().unwrap_or(0);
        journal.close().await.context("close bulk journal")?;
        Ok(BulkJournal {
            entries,
            payload_bytes: total_bytes,
            seconds: elapsed.as_secs_f64(),
            mb_per_s: mb_per_s(total_bytes, elapsed),
            fsyncs,
            batches,
            bytes_written,
            write_bytes_mean: bytes_written as f64 / batches.max(1) as f64,
            samples,
            last_op,
        })
    })
}

// --------------------------------------------------------------- small --

/// One small-entry workload's result.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct SmallResult {
    pub(crate) tasks: usize,
    pub(crate) entries: u64,
    pub(crate) seconds: f64,
    pub(crate) entries_per_s: f64,
    pub(crate) latency: LatencySummary,
    pub(crate) fsyncs: u64,
    pub(crate) batches: u64,
    /// Of `batches`, those written inline with blocking calls.
    pub(crate) inline_writes: u64,
    /// Times inline writes paused after a slow one.
    pub(crate) inline_write_pauses: u64,
    pub(crate) entries_per_fsync: f64,
    pub(crate) ring_full_retries: u64,
    pub(crate) watermark_advances: u64,
    /// The durability in use (`Auto` resolved by the journal's probe).
    pub(crate) durability: String,
    /// The process's CPU time per entry while the appenders ran (every
    /// thread, io_uring's kernel workers included), µs.
    pub(crate) cpu_us_per_entry: f64,
    /// The process's context switches per entry while the appenders ran.
    pub(crate) context_switches_per_entry: f64,
}

/// `tasks` appenders send `SMALL_ENTRY_BYTES` entries for `duration`.
pub(crate) fn run_small(
    dir: PathBuf,
    tasks: usize,
    duration: Duration,
    shape: JournalShape,
) -> Result<SmallResult> {
    on_reactor("rsb-small", move || async move {
        let journal = open_journal(&dir, shape).await?;
        let choice = journal.durability_choice();
        let durability = format!("{:?}", choice.chosen);
        eprintln!(
            "  journal durability: {durability} (configured {:?}; probe {:?})",
            choice.configured, choice.probe
        );
        let recorder = Rc::new(RefCell::new(LatencyRecorder::new()));
        // Highest op each task has had acknowledged; every op at or below the
        // minimum over tasks is acknowledged (each task has one in flight).
        let acked: Rc<Vec<Cell<u64>>> = Rc::new((0..tasks).map(|_| Cell::new(0)).collect());
        let done = Rc::new(Cell::new(false));
        let stats_before = journal.stats();

        let watermark_task = {
            let journal = journal.clone();
            let acked = Rc::clone(&acked);
            let done = Rc::clone(&done);
            glommio::spawn_local(async move {
                let mut watermark = 0;
                let mut advances = 0u64;
                while !done.get() {
                    glommio::timer::sleep(WATERMARK_INTERVAL).await;
                    let floor = acked.iter().map(Cell::get).min().unwrap_or(0);
                    if floor > watermark + WATERMARK_LAG_OPS_MAX {
                        let target = floor - WATERMARK_TRAIL_OPS;
                        journal
                            .advance_watermark(target)
                            .await
                            .with_context(|| format!("advance watermark to {target}"))?;
                        watermark = target;
                        advances += 1;
                    }
                }
                anyhow::Ok((advances, watermark))
            })
        };

        let usage_before = crate::sys::cpu_and_switches()?;
        let started = Instant::now();
        let deadline = started + duration;
        let appenders: Vec<_> = (0..tasks)
            .map(|task| {
                let journal = journal.clone();
                let recorder = Rc::clone(&recorder);
                let acked = Rc::clone(&acked);
                glommio::spawn_local(async move {
                    let mut payload = payload_template(task, SMALL_ENTRY_BYTES);
                    let mut outcome = TaskOutcome::default();
                    let mut stride = 1;
                    loop {
                        let stamp = (task as u64) << 32 | outcome.appended;
                        set_stamp(&mut payload, stamp);
                        let append_started = Instant::now();
                        let op =
                            append_retrying(&journal, &payload, &mut outcome.ring_full_retries)
                                .await?;
                        let now = Instant::now();
                        recorder.borrow_mut().record(now - append_started);
                        acked[task].set(op);
                        outcome.acknowledged(&mut stride, (task, op, stamp));
                        if now >= deadline {
                            break;
                        }
                    }
                    anyhow::Ok(outcome)
                })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(appenders.len());
        for appender in appenders {
            outcomes.push(appender.await?);
        }
        let elapsed = started.elapsed();
        let usage_after = crate::sys::cpu_and_switches()?;
        done.set(true);
        let (watermark_advances, watermark) = watermark_task.await?;
        let stats = journal.stats();

        let entries: u64 = outcomes.iter().map(|o| o.appended).sum();
        let fsyncs = stats.fsyncs - stats_before.fsyncs;
        let batches = stats.writes - stats_before.writes;
        let inline_writes = stats.inline_writes - stats_before.inline_writes;
        let inline_write_pauses = stats.inline_write_pauses - stats_before.inline_write_pauses;
        ensure!(entries > 0, "no append completed");
        ensure!(
            fsyncs >= 1,
            "journal stats show no fdatasync for {entries} durable appends"
        );
        ensure!(
            fsyncs <= entries,
            "journal stats show {fsyncs} fdatasyncs for only {entries} appends"
        );
        let recorded = recorder.borrow().len();
        ensure!(
            recorded == entries,
            "{recorded} latencies for {entries} appends"
        );
        let ring_full_retries = outcomes.iter().map(|o| o.ring_full_retries).sum();
        // Ops at or below the watermark are compacted away; check the rest.
        // The watermark trails every task's last op, so those are all checked.
        let samples: Vec<_> = outcomes
            .into_iter()
            .flat_map(TaskOutcome::into_samples)
            .filter(|&(_, op, _)| op > watermark)
            .collect();
        verify_samples(&journal, &samples, SMALL_ENTRY_BYTES).await?;
        journal.close().await.context("close small-entry journal")?;
        let latency = recorder.borrow().summary();
        Ok(SmallResult {
            tasks,
            entries,
            seconds: elapsed.as_secs_f64(),
            entries_per_s: entries as f64 / elapsed.as_secs_f64(),
            latency,
            fsyncs,
            batches,
            inline_writes,
            inline_write_pauses,
            entries_per_fsync: entries as f64 / fsyncs as f64,
            ring_full_retries,
            watermark_advances,
            durability,
            cpu_us_per_entry: (usage_after.0 - usage_before.0).as_secs_f64() * 1e6 / entries as f64,
            context_switches_per_entry: (usage_after.1 - usage_before.1) as f64 / entries as f64,
        })
    })
}

// ------------------------------------------------------------ recovery --

/// The journal half of the recovery workload.
#[derive(Clone, Debug, Serialize)]
struct RecoveryJournal {
    payload_bytes: u64,
    /// Size of the journal's files (preallocated space included).
    on_disk_bytes: u64,
    /// Entries and entry bytes recovery reports having verified.
    entries_recovered: u64,
    entry_bytes_scanned: u64,
    segments_scanned: usize,
    seconds: f64,
    mb_per_s: f64,
}

/// Drops the page cache of every file in `dir`, so `open()` reads the disk.
pub(crate) fn drop_dir_from_cache(dir: &Path) -> Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("list {}", dir.display()))?
            .path();
        let file =
            std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("stat {}", path.display()))?;
        if !meta.is_file() {
            continue;
        }
        bytes += meta.len();
        sys::drop_cached_pages(&file)
            .with_context(|| format!("posix_fadvise(DONTNEED) {}", path.display()))?;
    }
    Ok(bytes)
}

/// Times `open()` of the bulk journal, then checks what it recovered.
fn run_recovery(dir: PathBuf, bulk: &BulkJournal, shape: JournalShape) -> Result<RecoveryJournal> {
    let on_disk_bytes = drop_dir_from_cache(&dir)?;
    let samples = bulk.samples.clone();
    let last_op = bulk.last_op;
    let payload_bytes = bulk.payload_bytes;
    let entries = bulk.entries;
    on_reactor("rsb-recovery", move || async move {
        let started = Instant::now();
        let journal = open_journal(&dir, shape).await?;
        let elapsed = started.elapsed();
        ensure!(
            last_op == entries,
            "bulk ops are 1..={entries}, last sampled {last_op}"
        );
        let report = journal.recovery_report().clone();
        ensure!(
            report.entries == entries,
            "recovery verified {} entries, {entries} were appended",
            report.entries
        );
        ensure!(
            journal.next_op() == entries + 1,
            "recovered journal would append op {}, not {}",
            journal.next_op(),
            entries + 1
        );
        verify_samples(&journal, &samples, BULK_ENTRY_BYTES).await?;
        ensure!(
            journal
                .read(last_op + 1)
                .await
                .context("read past the end")?
                .is_none(),
            "recovered an op past the last one appended"
        );
        journal.close().await.context("close recovered journal")?;
        Ok(RecoveryJournal {
            payload_bytes,
            on_disk_bytes,
            entries_recovered: report.entries,
            entry_bytes_scanned: report.bytes,
            segments_scanned: report.segments,
            seconds: elapsed.as_secs_f64(),
            mb_per_s: mb_per_s(payload_bytes, elapsed),
        })
    })
}

// ------------------------------------------------------------- the run --

/// One journal pass between two raw passes.
#[derive(Clone, Debug, Serialize)]
struct Round {
    raw_before_mb_per_s: f64,
    journal_mb_per_s: f64,
    raw_after_mb_per_s: f64,
    /// The journal's MB/s over the mean of the raw passes on either side.
    ratio: f64,
}

/// Pairs journal pass `i` with raw passes `i` and `i + 1` (taken right before
/// and right after it), so each ratio uses the device limit of its moment.
fn interleaved_rounds(raw: &[SeqResult], journal_mb_per_s: &[f64]) -> Vec<Round> {
    assert_eq!(
        raw.len(),
        journal_mb_per_s.len() + 1,
        "one raw pass around each journal pass"
    );
    journal_mb_per_s
        .iter()
        .zip(raw.windows(2))
        .map(|(&journal, pair)| {
            let limit = (pair[0].mb_per_s + pair[1].mb_per_s) / 2.0;
            Round {
                raw_before_mb_per_s: pair[0].mb_per_s,
                journal_mb_per_s: journal,
                raw_after_mb_per_s: pair[1].mb_per_s,
                ratio: journal / limit,
            }
        })
        .collect()
}

/// Median (mean of the middle two for an even count); NaN when empty.
pub(crate) fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

#[derive(Serialize)]
struct BulkReport {
    /// Median over rounds of the journal's MB/s.
    journal_mb_per_s: f64,
    /// Median over rounds of the raw writer's MB/s.
    raw_mb_per_s: f64,
    /// Median over rounds of each round's ratio.
    ratio: f64,
    rounds: Vec<Round>,
    /// The last round's journal (it is the one recovery opens).
    journal: BulkJournal,
    raw_writes: Vec<SeqResult>,
    preallocation: PreallocationArg,
    probes: ProbeBracket,
}

#[derive(Serialize)]
struct SmallReport {
    #[serde(flatten)]
    result: SmallResult,
    preallocation: PreallocationArg,
    probes: ProbeBracket,
}

#[derive(Serialize)]
struct RecoveryReport {
    /// Median over rounds of the journal's recovery MB/s.
    journal_mb_per_s: f64,
    /// Median over rounds of the raw reader's MB/s.
    raw_mb_per_s: f64,
    /// Median over rounds of each round's ratio.
    ratio: f64,
    rounds: Vec<Round>,
    journal: Vec<RecoveryJournal>,
    raw_reads: Vec<SeqResult>,
    probes: ProbeBracket,
}

#[derive(Serialize)]
struct Targets {
    bulk_ratio_min: f64,
    small_eps_256_min: f64,
    single_p50_ratio_max: f64,
    recovery_ratio_min: f64,
    bulk_met: bool,
    small_eps_256_met: bool,
    single_p50_met: bool,
    recovery_met: bool,
}

#[derive(Serialize)]
struct JournalReport {
    command: &'static str,
    quick: bool,
    dir: String,
    bulk_ratio: f64,
    small_eps_256: f64,
    single_p50_ratio: f64,
    recovery_ratio: f64,
    /// Memory of the ring index per slot (target: at most 32).
    index_bytes_per_slot: usize,
    /// How appends were made durable in this run.
    durability: DurabilityArg,
    bulk_mb_s: f64,
    raw_write_mb_s: f64,
    single_p50_us: f64,
    raw_sync_p50_us: f64,
    recovery_mb_s: f64,
    raw_read_mb_s: f64,
    reliable: bool,
    targets: Targets,
    bulk: BulkReport,
    small: Vec<SmallReport>,
    recovery: RecoveryReport,
}

/// Runs every journal workload and prints the table, then the JSON line.
pub fn run(args: &JournalArgs) -> Result<()> {
    let quick = args.common.quick;
    let total_bytes = if quick {
        SEQ_BYTES_QUICK
    } else {
        SEQ_BYTES_FULL
    };
    let small_duration = if quick {
        SMALL_DURATION_QUICK
    } else {
        SMALL_DURATION_FULL
    };
    let bulk_shape = JournalShape {
        preallocation: args.bulk_preallocation,
        durability: args.durability,
        inline_write_bytes_max: args.inline_write_bytes_max,
    };
    let small_shape = JournalShape {
        preallocation: args.small_preallocation,
        durability: args.durability,
        inline_write_bytes_max: args.inline_write_bytes_max,
    };

    // Steps: set-up probe; bulk raw, journal, raw, probe; per small workload
    // run + probe; recovery raw read, open, probe.
    let step_count = 1
        + (2 + 2 * BULK_ROUNDS as u64)
        + 2 * SMALL_TASK_COUNTS.len() as u64
        + (2 + 2 * RECOVERY_ROUNDS as u64);
    let mut harness = Harness::new(&args.common.dir, step_count)?;

    // Bulk: raw, then `BULK_ROUNDS` x (journal, raw). The last journal is
    // kept for recovery, the last raw file for the raw reads.
    let raw_path = harness.path("raw-seq.dat");
    let bulk_dir = harness.path("journal-bulk");
    let raw_write = || device::seq_write(&raw_path, total_bytes, BULK_ENTRY_BYTES, BULK_TASKS);
    harness.step("bulk: raw sequential write");
    let mut raw_writes = vec![raw_write()?];
    let mut bulk_journals = Vec::with_capacity(BULK_ROUNDS);
    for round in 1..=BULK_ROUNDS {
        remove_path(&bulk_dir)?;
        harness.step(format!(
            "bulk {round}/{BULK_ROUNDS}: journal, {BULK_TASKS} tasks x {} KiB",
            BULK_ENTRY_BYTES / KIB
        ));
        bulk_journals.push(run_bulk_journal(bulk_dir.clone(), total_bytes, bulk_shape)?);
        harness.step(format!("bulk {round}/{BULK_ROUNDS}: raw sequential write"));
        raw_writes.push(raw_write()?);
    }
    let bulk_probes = harness.bracket()?;
    let bulk_rounds = interleaved_rounds(
        &raw_writes,
        &bulk_journals.iter().map(|j| j.mb_per_s).collect::<Vec<_>>(),
    );
    let bulk = BulkReport {
        journal_mb_per_s: median(bulk_rounds.iter().map(|r| r.journal_mb_per_s)),
        raw_mb_per_s: median(raw_writes.iter().map(|r| r.mb_per_s)),
        ratio: median(bulk_rounds.iter().map(|r| r.ratio)),
        rounds: bulk_rounds,
        journal: bulk_journals
            .pop()
            .ok_or_else(|| anyhow!("no bulk round ran"))?,
        raw_writes,
        preallocation: args.bulk_preallocation,
        probes: bulk_probes,
    };

    // Small entries.
    let mut small = Vec::with_capacity(SMALL_TASK_COUNTS.len());
    for tasks in SMALL_TASK_COUNTS {
        let dir = harness.path(&format!("journal-small-c{tasks}"));
        remove_path(&dir)?;
        harness.step(format!("small: {tasks} task(s) x {SMALL_ENTRY_BYTES} B"));
        let result = run_small(dir.clone(), tasks, small_duration, small_shape)?;
        remove_path(&dir)?;
        let bracket = harness.bracket()?;
        small.push(SmallReport {
            result,
            preallocation: args.small_preallocation,
            probes: bracket,
        });
    }

    // Recovery: raw read, then `RECOVERY_ROUNDS` x (open, raw read), all of
    // the same bytes: the last bulk journal and the last raw file.
    let raw_read = || {
        device::seq_read(
            &raw_path,
            total_bytes,
            SEQ_READ_BLOCK_BYTES,
            SEQ_READ_QUEUE_DEPTH,
        )
    };
    harness.step("recovery: raw sequential read");
    let mut raw_reads = vec![raw_read()?];
    let mut recoveries = Vec::with_capacity(RECOVERY_ROUNDS);
    for round in 1..=RECOVERY_ROUNDS {
        harness.step(format!("recovery {round}/{RECOVERY_ROUNDS}: journal open"));
        recoveries.push(run_recovery(bulk_dir.clone(), &bulk.journal, bulk_shape)?);
        harness.step(format!(
            "recovery {round}/{RECOVERY_ROUNDS}: raw sequential read"
        ));
        raw_reads.push(raw_read()?);
    }
    let recovery_probes = harness.bracket()?;
    let dir = harness.dir().display().to_string();
    harness.finish(args.common.keep)?;
    let recovery_rounds = interleaved_rounds(
        &raw_reads,
        &recoveries.iter().map(|r| r.mb_per_s).collect::<Vec<_>>(),
    );
    let recovery = RecoveryReport {
        journal_mb_per_s: median(recovery_rounds.iter().map(|r| r.journal_mb_per_s)),
        raw_mb_per_s: median(raw_reads.iter().map(|r| r.mb_per_s)),
        ratio: median(recovery_rounds.iter().map(|r| r.ratio)),
        rounds: recovery_rounds,
        journal: recoveries,
        raw_reads,
        probes: recovery_probes,
    };

    let find_small = |tasks: usize| -> Result<&SmallReport> {
        small
            .iter()
            .find(|s| s.result.tasks == tasks)
            .ok_or_else(|| anyhow!("no small workload with {tasks} tasks"))
    };
    let single = find_small(1)?;
    let wide = find_small(256)?;
    let raw_sync_p50_us = single.probes.p50_us();
    let single_p50_us = single.result.latency.p50_us;
    let single_p50_ratio = single_p50_us / raw_sync_p50_us;
    let small_eps_256 = wide.result.entries_per_s;
    let targets = Targets {
        bulk_ratio_min: TARGET_BULK_RATIO_MIN,
        small_eps_256_min: TARGET_SMALL_EPS_256_MIN,
        single_p50_ratio_max: TARGET_SINGLE_P50_RATIO_MAX,
        recovery_ratio_min: TARGET_RECOVERY_RATIO_MIN,
        bulk_met: bulk.ratio >= TARGET_BULK_RATIO_MIN,
        small_eps_256_met: small_eps_256 >= TARGET_SMALL_EPS_256_MIN,
        single_p50_met: single_p50_ratio <= TARGET_SINGLE_P50_RATIO_MAX,
        recovery_met: recovery.ratio >= TARGET_RECOVERY_RATIO_MIN,
    };
    let reliable =
        bulk.probes.reliable && small.iter().all(|s| s.probes.reliable) && recovery.probes.reliable;

    let report = JournalReport {
        command: "journal",
        quick,
        dir,
        bulk_ratio: round3(bulk.ratio),
        small_eps_256: small_eps_256.round(),
        single_p50_ratio: round3(single_p50_ratio),
        recovery_ratio: round3(recovery.ratio),
        index_bytes_per_slot: ringstore_journal::SLOT_BYTES,
        durability: args.durability,
        bulk_mb_s: round3(bulk.journal_mb_per_s),
        raw_write_mb_s: round3(bulk.raw_mb_per_s),
        single_p50_us: round3(single_p50_us),
        raw_sync_p50_us: round3(raw_sync_p50_us),
        recovery_mb_s: round3(recovery.journal_mb_per_s),
        raw_read_mb_s: round3(recovery.raw_mb_per_s),
        reliable,
        targets,
        bulk,
        small,
        recovery,
    };
    print!("{}", render_table(&report, total_bytes));
    println!("{}", serde_json::to_string(&report)?);
    if report.small.iter().any(|s| s.result.ring_full_retries > 0) {
        // Not an error: the ring refused appends until the watermark task freed slots.
        eprintln!("note: some appends waited for ring slots (see ring_full_retries in the JSON)");
    }
    Ok(())
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "NO" }.to_owned()
}

/// One row of the journal table: a figure, optionally with its device limit,
/// ratio and target, and (on a workload's first row) its probe bracket.
struct Row {
    workload: String,
    figure: &'static str,
    value: f64,
    limit: Option<(f64, String)>,
    ratio: Option<f64>,
    target: Option<(String, bool)>,
    probes: Option<[String; 3]>,
}

impl Row {
    fn new(workload: &str, figure: &'static str, value: f64) -> Self {
        Self {
            workload: workload.to_owned(),
            figure,
            value,
            limit: None,
            ratio: None,
            target: None,
            probes: None,
        }
    }

    fn cells(self) -> [String; 10] {
        let dash = || "-".to_owned();
        let [probes, mode, reliable] = self.probes.unwrap_or_else(|| [dash(), dash(), dash()]);
        let (target, met) = match self.target {
            Some((target, met)) => (target, yes_no(met)),
            None => (dash(), dash()),
        };
        [
            self.workload,
            self.figure.to_owned(),
            fmt_num(self.value),
            self.limit
                .map(|(value, what)| format!("{} ({what})", fmt_num(value)))
                .unwrap_or_else(dash),
            self.ratio.map(fmt_ratio).unwrap_or_else(dash),
            target,
            met,
            probes,
            mode,
            reliable,
        ]
    }
}

fn render_table(report: &JournalReport, total_bytes: u64) -> String {
    let mut table = Table::new([
        "workload",
        "figure",
        "journal",
        "device limit",
        "ratio",
        "target",
        "met",
        ProbeBracket::CELL_HEADINGS[0],
        ProbeBracket::CELL_HEADINGS[1],
        ProbeBracket::CELL_HEADINGS[2],
    ]);
    let targets = &report.targets;

    let bulk = &report.bulk;
    let workload = format!("bulk {} KiB x {BULK_TASKS} tasks", BULK_ENTRY_BYTES / KIB);
    table.row(
        Row {
            limit: Some((
                bulk.raw_mb_per_s,
                format!("raw write {} KiB QD{BULK_TASKS}", BULK_ENTRY_BYTES / KIB),
            )),
            ratio: Some(bulk.ratio),
            target: Some((format!(">= {TARGET_BULK_RATIO_MIN:.2}x"), targets.bulk_met)),
            probes: Some(bulk.probes.cells()),
            ..Row::new(&workload, "MB/s (median)", bulk.journal_mb_per_s)
        }
        .cells(),
    );
    table.row(
        Row::new(
            &workload,
            "KiB per write",
            bulk.journal.write_bytes_mean / KIB as f64,
        )
        .cells(),
    );

    for small in &report.small {
        let result = &small.result;
        let workload = format!("small {SMALL_ENTRY_BYTES} B x {} task(s)", result.tasks);
        let mut eps = Row {
            probes: Some(small.probes.cells()),
            ..Row::new(&workload, "entries/s", result.entries_per_s)
        };
        if result.tasks == 256 {
            eps.target = Some((
                format!(">= {}", fmt_num(TARGET_SMALL_EPS_256_MIN)),
                targets.small_eps_256_met,
            ));
        }
        table.row(eps.cells());
        let mut p50 = Row::new(&workload, "p50 ack us", result.latency.p50_us);
        if result.tasks == 1 {
            p50.limit = Some((
                small.probes.p50_us(),
                "raw 4 KiB write+fdatasync, probes' mean p50".to_owned(),
            ));
            p50.ratio = Some(report.single_p50_ratio);
            p50.target = Some((
                format!("<= {TARGET_SINGLE_P50_RATIO_MAX:.2}x"),
                targets.single_p50_met,
            ));
        }
        table.row(p50.cells());
        table.row(Row::new(&workload, "p99 ack us", result.latency.p99_us).cells());
        table.row(Row::new(&workload, "entries/fsync", result.entries_per_fsync).cells());
        let inline_share = result.inline_writes as f64 / result.batches.max(1) as f64;
        table.row(Row::new(&workload, "inline writes share", inline_share).cells());
        table.row(
            Row::new(
                &workload,
                "inline write pauses",
                result.inline_write_pauses as f64,
            )
            .cells(),
        );
    }

    let recovery = &report.recovery;
    let workload = format!("recovery open() of {} MiB", total_bytes / MIB);
    table.row(
        Row {
            limit: Some((
                recovery.raw_mb_per_s,
                format!(
                    "raw read {} KiB QD{SEQ_READ_QUEUE_DEPTH}",
                    SEQ_READ_BLOCK_BYTES / KIB
                ),
            )),
            ratio: Some(recovery.ratio),
            target: Some((
                format!(">= {TARGET_RECOVERY_RATIO_MIN:.2}x"),
                targets.recovery_met,
            )),
            probes: Some(recovery.probes.cells()),
            ..Row::new(&workload, "MB/s (median)", recovery.journal_mb_per_s)
        }
        .cells(),
    );

    let mut out = format!(
        "ringstore-bench journal ({} mode, dir: {}; bulk and recovery: {} MiB, median of {} \
         rounds each between raw passes; small entries: {} s per run)\n\n",
        if report.quick { "quick" } else { "full" },
        report.dir,
        total_bytes / MIB,
        BULK_ROUNDS.min(RECOVERY_ROUNDS),
        report
            .small
            .first()
            .map(|s| s.result.seconds.round())
            .unwrap_or(0.0),
    );
    out.push_str(&table.render());
    out.push_str(&format!(
        "\nall workloads reliable (probes before and after each saw one disk mode, \
         p50s and means within {}x): {}\n",
        crate::harness::PROBE_AGREEMENT_RATIO_MAX,
        yes_no(report.reliable)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The journal workloads end to end at toy sizes, on the real disk under
    /// `target/`: catches API drift and broken verification before a long run.
    #[test]
    fn workloads_run_and_verify_at_toy_sizes() -> Result<()> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-test-journal");
        remove_path(&root)?;
        std::fs::create_dir_all(&root)?;
        let shape = JournalShape {
            preallocation: PreallocationArg::Fallocate,
            durability: DurabilityArg::Sync,
            inline_write_bytes_max: None,
        };
        let bulk = run_bulk_journal(root.join("bulk"), 8 << 20, shape)?;
        assert_eq!(bulk.entries, (8 << 20) / BULK_ENTRY_BYTES as u64);
        assert!(bulk.fsyncs >= 1);
        let recovered = run_recovery(root.join("bulk"), &bulk, shape)?;
        assert_eq!(recovered.payload_bytes, 8 << 20);
        let small = run_small(root.join("small"), 4, Duration::from_millis(200), shape)?;
        assert!(small.entries >= 4);
        assert_eq!(small.latency.samples, small.entries);
        remove_path(&root)?;
        Ok(())
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median([]).is_nan());
    }

    #[test]
    fn samples_stay_bounded_and_spread() {
        let mut samples = Vec::new();
        let mut stride = 1;
        for index in 0..100_000u64 {
            keep_sample(&mut samples, &mut stride, index, (0, index, index));
        }
        assert!(samples.len() <= SAMPLES_PER_TASK_MAX);
        assert!(samples.len() >= SAMPLES_PER_TASK_MAX / 2);
        assert_eq!(samples[0].1, 0);
        assert!(samples.last().map(|s| s.1).unwrap_or(0) > 50_000);
    }
}
