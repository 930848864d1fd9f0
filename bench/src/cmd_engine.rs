//! `ringstore-bench engine`: the engine's figures (issue 4), each next to
//! the figure it is judged against, in one run on one directory.
//!
//! Order of the run (every workload bracketed by durable-write probes):
//!
//! 1. **device**: raw sequential write and read (the limits the snapshot
//!    figures are divided by).
//! 2. **submit**: 256 tasks submit broker `CommitOffset` commands to one
//!    shard (journal append, group commit, in-order apply) for a fixed time;
//!    commands/s and ack latency. Then the same number of tasks append
//!    payloads of the same size to a bare journal: the engine's figure over
//!    the journal's is what the state machine layer costs.
//! 3. **state**: a broker state of `--state-mib` (default 1 GiB encoded) is
//!    built through the shard, submitted in order with many in flight.
//! 4. **snapshot write**: one checkpoint of that state; file bytes over the
//!    time, against the raw sequential write.
//! 5. **snapshot load**: the shard reopened; the snapshot's read-and-verify
//!    time from the recovery report, against a raw sequential read of a
//!    file of the snapshot's size made right before it (the disk's read
//!    bandwidth moves by half between passes a second apart, so the read
//!    of step 1 minutes earlier is also shown, not divided by), and its
//!    restore (decode and validate every record) time.
//! 6. **checkpoint latency**: after an idle checkpoint (so the ring holds
//!    only the ops above the previous snapshot), 16 tasks submit small
//!    commands for a fixed time with no checkpoint, then again while a
//!    checkpoint of the whole state runs; the p99 and p999 ack latency
//!    during the checkpoint against those without (targets: p99 at most
//!    1.5x, p999 at most 5 ms).
//! 7. **recovery**: 1 million commands (`--recovery-ops`) submitted with
//!    checkpoints off, the shard closed and reopened; the open's time (journal
//!    scan and replay through the state machine).

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use clap::Args;
use ringstore::broker::{Command, GroupCommand, Metadata, StreamCommand, TopicCommand};
use ringstore::{CheckpointPolicy, Shard};
use ringstore_journal::Journal;
use serde::Serialize;

use crate::cmd_device::{
    CommonArgs, SEQ_READ_BLOCK_BYTES, SEQ_READ_QUEUE_DEPTH, SEQ_WRITE_BLOCK_BYTES,
    SEQ_WRITE_QUEUE_DEPTH,
};
use crate::cmd_journal::{on_reactor, PreallocationArg};
use crate::device::{self, mb_per_s, SeqResult};
use crate::harness::{Harness, ProbeBracket};
use crate::latency::{LatencyRecorder, LatencySummary};
use crate::report::{fmt_num, fmt_ratio, round3, Table};

/// Submitting tasks of the throughput workload.
pub const SUBMITTERS: usize = 256;
/// Submitting tasks of the checkpoint-latency workload.
pub const LATENCY_SUBMITTERS: usize = 16;
/// Commands in flight while the big state is built.
const BUILD_IN_FLIGHT: usize = 256;
/// How long each timed submit workload runs in full mode.
const DURATION_FULL: Duration = Duration::from_secs(10);
/// How long each timed submit workload runs in quick mode.
const DURATION_QUICK: Duration = Duration::from_secs(4);
/// Ring slots of the shards (the recovery workload holds all its ops above
/// the watermark).
const SLOT_COUNT: u64 = 1 << 21;
/// Segment size of the shards' journals.
const SEGMENT_BYTES: u64 = 256 << 20;
/// Group-commit write size of the shards' journals.
const BATCH_BYTES_MAX: u64 = 4 << 20;
/// Partitions of the topic the small commands commit offsets to.
pub(crate) const PARTITIONS: u32 = 64;

/// Arguments of `ringstore-bench engine`.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Encoded size of the big state in MiB [default: 1024, or 128 with --quick].
    #[arg(long)]
    pub state_mib: Option<u64>,
    /// Ops above the watermark in the recovery workload [default: 1000000,
    /// or 200000 with --quick].
    #[arg(long)]
    pub recovery_ops: Option<u64>,
    /// The checkpoint's share of the time writing while submits wait, in
    /// percent, in the checkpoint-latency workload
    /// (`CheckpointPolicy::busy_write_percent`).
    #[arg(long, default_value_t = ringstore::config::CHECKPOINT_BUSY_WRITE_PERCENT_DEFAULT)]
    pub busy_write_percent: u8,
    /// Snapshot generations kept in the checkpoint-latency workload; with
    /// 2, the measured checkpoint prunes a snapshot of the whole state.
    #[arg(long, default_value_t = ringstore::config::SNAPSHOT_GENERATIONS_DEFAULT)]
    pub snapshot_generations: usize,
    /// Only the submit workload: the engine's and the bare journal's
    /// commands/s, `--rounds` times each, alternating (no device, state,
    /// snapshot, checkpoint or recovery phases).
    #[arg(long)]
    pub submit_only: bool,
    /// Only the snapshot load: the big state is built and checkpointed
    /// once, then the raw sequential read and the shard's reopen (the
    /// snapshot's read and verify, and its restore) alternate `--rounds`
    /// times (no submit, checkpoint-latency or recovery phases).
    #[arg(long, conflicts_with = "submit_only")]
    pub load_only: bool,
    /// Only the checkpoint-latency workload: the big state is built once,
    /// then the idle latency and the latency during a checkpoint are
    /// measured `--rounds` times (with `--snapshot-generations 2`, every
    /// measured checkpoint prunes a snapshot of the whole state).
    #[arg(long, conflicts_with_all = ["submit_only", "load_only"])]
    pub latency_only: bool,
    /// Rounds of `--submit-only`, `--load-only` or `--latency-only`.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Runs the shard's scrubbers (its snapshot and journal scrubbers,
    /// `ShardBuilder::scrub_rate`) at this many bytes per second in the
    /// checkpoint-latency workload [default: no scrubber].
    #[arg(long)]
    pub scrub_rate: Option<u64>,
}

#[derive(Serialize)]
struct SubmitFigures {
    submitters: usize,
    commands: u64,
    seconds: f64,
    commands_per_s: f64,
    latency: LatencySummary,
    probes: ProbeBracket,
}

#[derive(Serialize)]
struct EngineReport {
    command: &'static str,
    quick: bool,
    seq_write: SeqResult,
    seq_read: SeqResult,
    submit: SubmitFigures,
    journal_only: SubmitFigures,
    engine_over_journal: f64,
    state_bytes: u64,
    state_build_seconds: f64,
    snapshot_write_mb_per_s: f64,
    snapshot_write_ratio: f64,
    snapshot_write_probes: ProbeBracket,
    snapshot_load_mb_per_s: f64,
    /// The raw sequential read right before the load, of a file of the
    /// snapshot's size (the ratio's divisor).
    snapshot_load_seq_read: SeqResult,
    snapshot_load_ratio: f64,
    /// The load over step 1's raw read, for comparison.
    snapshot_load_ratio_first_read: f64,
    snapshot_load_probes: ProbeBracket,
    snapshot_restore_mb_per_s: f64,
    latency_without_checkpoint: SubmitFigures,
    latency_during_checkpoint: SubmitFigures,
    checkpoint_seconds: f64,
    busy_write_percent: u8,
    snapshot_generations: usize,
    p99_ratio_during_checkpoint: f64,
    recovery_ops: u64,
    recovery_seconds: f64,
    recovery_journal_seconds: f64,
    recovery_replay_seconds: f64,
    recovery_ops_per_s: f64,
    recovery_probes: ProbeBracket,
}

pub(crate) fn shard_builder(
    dir: &Path,
    policy: CheckpointPolicy,
) -> ringstore::ShardBuilder<Metadata> {
    shard_builder_with(dir, policy, PreallocationArg::Fallocate)
}

/// [`shard_builder`] with the journal's segments preallocated as given.
pub(crate) fn shard_builder_with(
    dir: &Path,
    policy: CheckpointPolicy,
    preallocation: PreallocationArg,
) -> ringstore::ShardBuilder<Metadata> {
    Shard::<Metadata>::builder(dir)
        .journal(move |j| {
            j.slot_count(SLOT_COUNT)
                .segment_bytes(SEGMENT_BYTES)
                .batch_bytes_max(BATCH_BYTES_MAX)
                .preallocation(preallocation.into())
        })
        .checkpoint_policy(policy)
}

/// The stream, topic and group the small commands write to.
pub(crate) fn setup_commands() -> [Command; 3] {
    [
        Command::Stream(StreamCommand::Create {
            name: "bench".into(),
        }),
        Command::Topic(TopicCommand::Create {
            stream: "bench".into(),
            name: "offsets".into(),
            partitions: PARTITIONS,
            config: Default::default(),
        }),
        Command::Group(GroupCommand::Create {
            stream: "bench".into(),
            topic: "offsets".into(),
            name: "readers".into(),
        }),
    ]
}

/// Creates the stream, topic and group the small commands write to.
pub(crate) async fn prepare_topic(shard: &Shard<Metadata>) -> Result<()> {
    for command in setup_commands() {
        shard
            .submit(command)
            .await?
            .map_err(|rejection| anyhow!("bench setup rejected: {rejection}"))?;
    }
    Ok(())
}

pub(crate) fn commit_offset(task: usize, sequence: u64) -> Command {
    Command::Group(GroupCommand::CommitOffset {
        stream: "bench".into(),
        topic: "offsets".into(),
        group: "readers".into(),
        partition: (task as u32) % PARTITIONS,
        offset: sequence,
    })
}

/// `tasks` tasks submit commit-offset commands until `duration` passes.
pub(crate) async fn submit_for(
    shard: &Shard<Metadata>,
    tasks: usize,
    duration: Duration,
) -> Result<(u64, Duration, LatencyRecorder)> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let recorder = Rc::new(RefCell::new(LatencyRecorder::new()));
    let count = Rc::new(Cell::new(0u64));
    let mut handles = Vec::new();
    for task in 0..tasks {
        let shard = shard.clone();
        let recorder = recorder.clone();
        let count = count.clone();
        handles.push(glommio::spawn_local(async move {
            let mut sequence = 0;
            while Instant::now() < deadline {
                sequence += 1;
                let sent = Instant::now();
                shard
                    .submit(commit_offset(task, sequence))
                    .await?
                    .map_err(|rejection| anyhow!("commit offset rejected: {rejection}"))?;
                recorder.borrow_mut().record(sent.elapsed());
                count.set(count.get() + 1);
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for handle in handles {
        handle.await?;
    }
    let elapsed = started.elapsed();
    let recorder = Rc::try_unwrap(recorder)
        .map_err(|_| anyhow!("submit tasks still hold the recorder"))?
        .into_inner();
    Ok((count.get(), elapsed, recorder))
}

fn figures(
    tasks: usize,
    (commands, elapsed, recorder): (u64, Duration, LatencyRecorder),
    probes: ProbeBracket,
) -> SubmitFigures {
    SubmitFigures {
        submitters: tasks,
        commands,
        seconds: round3(elapsed.as_secs_f64()),
        commands_per_s: (commands as f64 / elapsed.as_secs_f64()).round(),
        latency: recorder.summary(),
        probes,
    }
}

/// The engine's throughput with `SUBMITTERS` tasks.
fn run_submit(dir: &Path, duration: Duration) -> Result<(u64, Duration, LatencyRecorder)> {
    let dir = dir.to_owned();
    on_reactor("rsb-engine-submit", move || async move {
        let shard = shard_builder(&dir, CheckpointPolicy::default())
            .open()
            .await?;
        prepare_topic(&shard).await?;
        let result = submit_for(&shard, SUBMITTERS, duration).await?;
        ensure!(
            shard.stats().commands_rejected == 0,
            "commands were rejected"
        );
        shard.close().await?;
        Ok(result)
    })
}

/// The bare journal with the same task count and payload size.
fn run_journal_only(dir: &Path, duration: Duration) -> Result<(u64, Duration, LatencyRecorder)> {
    let dir = dir.to_owned();
    let payload_bytes = ringstore::machine::encode(&commit_offset(1, 1 << 20))?.len();
    on_reactor("rsb-engine-journal", move || async move {
        let journal = Journal::builder(&dir)
            .slot_count(SLOT_COUNT)
            .segment_bytes(SEGMENT_BYTES)
            .batch_bytes_max(BATCH_BYTES_MAX)
            .open()
            .await?;
        let deadline = Instant::now() + duration;
        let started = Instant::now();
        let recorder = Rc::new(RefCell::new(LatencyRecorder::new()));
        let count = Rc::new(Cell::new(0u64));
        let watermark_floor = Rc::new(Cell::new(0u64));
        let mut handles = Vec::new();
        for _ in 0..SUBMITTERS {
            let journal = journal.clone();
            let recorder = recorder.clone();
            let count = count.clone();
            let watermark_floor = watermark_floor.clone();
            handles.push(glommio::spawn_local(async move {
                let payload = vec![7u8; payload_bytes];
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let op = journal.append(&payload).await?;
                    recorder.borrow_mut().record(sent.elapsed());
                    count.set(count.get() + 1);
                    // Stand in for checkpoints: keep half the ring free.
                    if op > watermark_floor.get() + SLOT_COUNT / 2 {
                        watermark_floor.set(op);
                        journal.advance_watermark(op - SLOT_COUNT / 4).await?;
                    }
                }
                Ok::<(), anyhow::Error>(())
            }));
        }
        for handle in handles {
            handle.await?;
        }
        let elapsed = started.elapsed();
        journal.close().await?;
        let recorder = Rc::try_unwrap(recorder)
            .map_err(|_| anyhow!("append tasks still hold the recorder"))?
            .into_inner();
        Ok((count.get(), elapsed, recorder))
    })
}

/// Builds the big state through a shard: commands submitted in order (each
/// task's append is queued when it is first polled, in spawn order), many
/// in flight. Returns the build time.
pub(crate) async fn build_state(shard: &Shard<Metadata>, state_bytes: u64) -> Result<Duration> {
    let started = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    for command in ringstore::broker::gen::bulk_commands(state_bytes) {
        if in_flight.len() >= BUILD_IN_FLIGHT {
            let oldest: glommio::Task<Result<()>> =
                in_flight.pop_front().expect("the queue is full");
            oldest.await?;
        }
        let shard = shard.clone();
        in_flight.push_back(glommio::spawn_local(async move {
            match shard.submit(command).await? {
                Ok(_) => Ok(()),
                Err(rejection) => Err(anyhow!("bulk command rejected: {rejection}")),
            }
        }));
    }
    for task in in_flight {
        task.await?;
    }
    Ok(started.elapsed())
}

struct BigState {
    build: Duration,
    snapshot_bytes: u64,
    checkpoint: Duration,
}

fn run_big_state_build_and_snapshot(dir: &Path, state_bytes: u64) -> Result<BigState> {
    let dir = dir.to_owned();
    on_reactor("rsb-engine-state", move || async move {
        let policy = CheckpointPolicy {
            automatic: false,
            ..CheckpointPolicy::default()
        };
        let shard = shard_builder(&dir, policy).open().await?;
        let build = build_state(&shard, state_bytes).await?;
        ensure!(
            shard.stats().commands_rejected == 0,
            "bulk commands were rejected"
        );
        let started = Instant::now();
        let outcome = shard.checkpoint().await?;
        let checkpoint = started.elapsed();
        let snapshot = outcome
            .snapshot
            .ok_or_else(|| anyhow!("the checkpoint wrote no snapshot"))?;
        shard.close().await?;
        Ok(BigState {
            build,
            snapshot_bytes: snapshot.file_bytes,
            checkpoint,
        })
    })
}

struct Reopened {
    snapshot_load: Duration,
    restore: Duration,
    snapshot_bytes: u64,
}

fn run_reopen(dir: &Path) -> Result<Reopened> {
    let dir = dir.to_owned();
    crate::cmd_journal::drop_dir_from_cache(&dir.join("snapshots"))?;
    on_reactor("rsb-engine-reopen", move || async move {
        let policy = CheckpointPolicy {
            automatic: false,
            ..CheckpointPolicy::default()
        };
        let shard = shard_builder(&dir, policy).open().await?;
        let report = shard.recovery_report().clone();
        let snapshot = report
            .snapshot
            .ok_or_else(|| anyhow!("reopen found no snapshot"))?;
        shard.close().await?;
        Ok(Reopened {
            snapshot_load: report.snapshot_time,
            restore: report.restore_time,
            snapshot_bytes: snapshot.file_bytes,
        })
    })
}

type LatencyRun = (u64, Duration, LatencyRecorder);

/// Small-command latency on the big state, first alone, then while a
/// checkpoint runs (started with the submitters, and the submitters run
/// until it ends).
fn run_checkpoint_latency(
    dir: &Path,
    duration: Duration,
    args: &EngineArgs,
    prepared: bool,
) -> Result<(LatencyRun, LatencyRun, Duration)> {
    let dir = dir.to_owned();
    let (busy_write_percent, generations) = (args.busy_write_percent, args.snapshot_generations);
    let scrub_rate = args.scrub_rate;
    on_reactor("rsb-engine-latency", move || async move {
        let policy = CheckpointPolicy {
            automatic: false,
            busy_write_percent,
            ..CheckpointPolicy::default()
        };
        let builder = || {
            let builder = shard_builder(&dir, policy.clone()).snapshot_generations(generations);
            match scrub_rate {
                Some(rate) => builder.scrub_rate(rate),
                None => builder,
            }
        };
        let shard = builder().open().await?;
        if !prepared {
            prepare_topic(&shard).await?;
        }
        // An idle checkpoint first, so that the ring holds what a shard
        // whose checkpoints keep up holds (the ops above the previous
        // snapshot), not every op since the state was built: a checkpoint
        // that gives way to submits runs longer, and a ring short of free
        // slots would make it hurry (`CheckpointPolicy::busy_write_percent`).
        // Then a close and reopen, which gives back the retired segments at
        // once instead of in the background during the timed phases.
        shard.checkpoint().await?;
        if prepared {
            // A round after the first: the ring also holds the previous
            // round's ops above its last snapshot, which one more
            // checkpoint lets go, so every round starts as the first.
            shard.checkpoint().await?;
        }
        shard.close().await?;
        let shard = builder().open().await?;
        let quiet = submit_for(&shard, LATENCY_SUBMITTERS, duration).await?;
        let checkpoint = {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let started = Instant::now();
                let outcome = shard.checkpoint().await;
                (outcome, started.elapsed())
            })
        };
        // Submit for as long as the checkpoint runs (at least `duration`
        // would dilute it with quiet time): in slices, until it is done.
        let done = Rc::new(Cell::new(false));
        let mut during = LatencyRecorder::new();
        let mut commands = 0;
        let started = Instant::now();
        let checkpoint = {
            let done = done.clone();
            glommio::spawn_local(async move {
                let result = checkpoint.await;
                done.set(true);
                result
            })
        };
        while !done.get() {
            let (count, _, recorder) =
                submit_for(&shard, LATENCY_SUBMITTERS, Duration::from_millis(100)).await?;
            commands += count;
            during.merge(&recorder);
        }
        let during_elapsed = started.elapsed();
        let (outcome, checkpoint_time) = checkpoint.await;
        ensure!(
            outcome?.snapshot.is_some(),
            "the checkpoint wrote no snapshot"
        );
        shard.close().await?;
        Ok((quiet, (commands, during_elapsed, during), checkpoint_time))
    })
}

struct Recovery {
    ops: u64,
    total: Duration,
    journal: Duration,
    replay: Duration,
}

fn run_recovery(dir: &Path, ops: u64) -> Result<Recovery> {
    let dir = dir.to_owned();
    let build_dir = dir.clone();
    on_reactor("rsb-engine-recovery-build", move || async move {
        let policy = CheckpointPolicy {
            automatic: false,
            ..CheckpointPolicy::default()
        };
        let shard = shard_builder(&build_dir, policy).open().await?;
        prepare_topic(&shard).await?;
        let per_task = ops.div_ceil(SUBMITTERS as u64);
        let mut handles = Vec::new();
        for task in 0..SUBMITTERS {
            let shard = shard.clone();
            handles.push(glommio::spawn_local(async move {
                for sequence in 0..per_task {
                    shard
                        .submit(commit_offset(task, sequence))
                        .await?
                        .map_err(|rejection| anyhow!("rejected: {rejection}"))?;
                }
                Ok::<(), anyhow::Error>(())
            }));
        }
        for handle in handles {
            handle.await?;
        }
        shard.close().await?;
        Ok(())
    })?;
    crate::cmd_journal::drop_dir_from_cache(&dir.join("journal"))?;
    on_reactor("rsb-engine-recovery", move || async move {
        let started = Instant::now();
        let shard = shard_builder(&dir, CheckpointPolicy::default())
            .open()
            .await?;
        let total = started.elapsed();
        let report = shard.recovery_report().clone();
        shard.close().await?;
        Ok(Recovery {
            ops: report.replayed_ops,
            total,
            journal: report.journal_time,
            replay: report.replay_time,
        })
    })
}

pub fn run(args: &EngineArgs) -> Result<()> {
    let quick = args.common.quick;
    let duration = if quick { DURATION_QUICK } else { DURATION_FULL };
    if args.submit_only {
        return run_submit_only(args, duration);
    }
    let state_bytes = args.state_mib.unwrap_or(if quick { 128 } else { 1024 }) << 20;
    if args.load_only {
        return run_load_only(args, state_bytes);
    }
    if args.latency_only {
        return run_latency_only(args, state_bytes, duration);
    }
    let recovery_ops = args
        .recovery_ops
        .unwrap_or(if quick { 200_000 } else { 1_000_000 });
    let mut harness = Harness::new(&args.common.dir, 15)?;

    // 1. Device limits.
    harness.step("device: sequential write");
    let raw = harness.path("engine-raw.dat");
    let seq_bytes = state_bytes.next_multiple_of(SEQ_WRITE_BLOCK_BYTES as u64);
    let seq_write = device::seq_write(
        &raw,
        seq_bytes,
        SEQ_WRITE_BLOCK_BYTES,
        SEQ_WRITE_QUEUE_DEPTH,
    )?;
    harness.step("device: sequential read");
    let seq_read = device::seq_read(&raw, seq_bytes, SEQ_READ_BLOCK_BYTES, SEQ_READ_QUEUE_DEPTH)?;
    crate::harness::remove_path(&raw)?;
    let _device_probes = harness.bracket()?;

    // 2. Throughput, engine then bare journal.
    let (submit, journal_only) = run_submit_pair(&mut harness, duration, "")?;

    // 3-4. The big state and its snapshot.
    harness.step(format!("state: building {} MiB", state_bytes >> 20));
    let state_dir = harness.path("engine-state");
    let big = run_big_state_build_and_snapshot(&state_dir, state_bytes)?;
    let snapshot_write_probes = harness.bracket()?;
    let snapshot_write_mb_per_s = mb_per_s(big.snapshot_bytes, big.checkpoint);

    // 5. Load, right after a raw read of the snapshot's size.
    harness.step("snapshot load: device: sequential read");
    let raw = harness.path("engine-raw.dat");
    let snapshot_load_seq_read = seq_read_of(&raw, big.snapshot_bytes)?;
    harness.step("snapshot load: reopen");
    let reopened = run_reopen(&state_dir)?;
    crate::harness::remove_path(&raw)?;
    let snapshot_load_probes = harness.bracket()?;
    let snapshot_load_mb_per_s = mb_per_s(reopened.snapshot_bytes, reopened.snapshot_load);
    let snapshot_restore_mb_per_s = mb_per_s(reopened.snapshot_bytes, reopened.restore);

    // 6. Latency during a checkpoint.
    harness.step("latency: without and during a checkpoint");
    let (quiet, during, checkpoint_time) =
        run_checkpoint_latency(&state_dir, duration, args, false)?;
    let latency_probes = harness.bracket()?;
    crate::harness::remove_path(&state_dir)?;
    let latency_without_checkpoint = figures(LATENCY_SUBMITTERS, quiet, latency_probes.clone());
    let latency_during_checkpoint = figures(LATENCY_SUBMITTERS, during, latency_probes);
    let p99_ratio = latency_during_checkpoint.latency.p99_us
        / latency_without_checkpoint
            .latency
            .p99_us
            .max(f64::MIN_POSITIVE);

    // 7. Recovery.
    harness.step(format!("recovery: {recovery_ops} ops above the watermark"));
    let recovery = run_recovery(&harness.path("engine-recovery"), recovery_ops)?;
    let recovery_probes = harness.bracket()?;
    harness.finish(args.common.keep)?;
    ensure!(
        recovery.ops >= recovery_ops,
        "recovery replayed {} ops, fewer than the {recovery_ops} submitted",
        recovery.ops
    );

    let report = EngineReport {
        command: "engine",
        quick,
        engine_over_journal: round3(submit.commands_per_s / journal_only.commands_per_s),
        seq_write,
        seq_read,
        submit,
        journal_only,
        state_bytes: big.snapshot_bytes,
        state_build_seconds: round3(big.build.as_secs_f64()),
        snapshot_write_ratio: 0.0,
        snapshot_write_mb_per_s: snapshot_write_mb_per_s.round(),
        snapshot_write_probes,
        snapshot_load_ratio: 0.0,
        snapshot_load_ratio_first_read: 0.0,
        snapshot_load_mb_per_s: snapshot_load_mb_per_s.round(),
        snapshot_load_seq_read,
        snapshot_load_probes,
        snapshot_restore_mb_per_s: snapshot_restore_mb_per_s.round(),
        latency_without_checkpoint,
        latency_during_checkpoint,
        checkpoint_seconds: round3(checkpoint_time.as_secs_f64()),
        busy_write_percent: args.busy_write_percent,
        snapshot_generations: args.snapshot_generations,
        p99_ratio_during_checkpoint: round3(p99_ratio),
        recovery_ops: recovery.ops,
        recovery_seconds: round3(recovery.total.as_secs_f64()),
        recovery_journal_seconds: round3(recovery.journal.as_secs_f64()),
        recovery_replay_seconds: round3(recovery.replay.as_secs_f64()),
        recovery_ops_per_s: (recovery.ops as f64 / recovery.total.as_secs_f64()).round(),
        recovery_probes,
    };
    let report = EngineReport {
        snapshot_write_ratio: round3(report.snapshot_write_mb_per_s / report.seq_write.mb_per_s),
        snapshot_load_ratio: round3(
            report.snapshot_load_mb_per_s / report.snapshot_load_seq_read.mb_per_s,
        ),
        snapshot_load_ratio_first_read: round3(
            report.snapshot_load_mb_per_s / report.seq_read.mb_per_s,
        ),
        ..report
    };
    print_table(&report);
    println!(
        "{}",
        serde_json::to_string(&report).context("encode the report")?
    );
    Ok(())
}

/// The submit workload on the engine, then on the bare journal, each
/// bracketed by probes; `label` prefixes the steps shown.
fn run_submit_pair(
    harness: &mut Harness,
    duration: Duration,
    label: &str,
) -> Result<(SubmitFigures, SubmitFigures)> {
    harness.step(format!(
        "{label}submit: {SUBMITTERS} tasks, broker commands"
    ));
    let submit = run_submit(&harness.path("engine-submit"), duration)?;
    let submit = figures(SUBMITTERS, submit, harness.bracket()?);
    harness.step(format!("{label}journal only: {SUBMITTERS} tasks"));
    let journal_only = run_journal_only(&harness.path("engine-journal"), duration)?;
    let journal_only = figures(SUBMITTERS, journal_only, harness.bracket()?);
    crate::harness::remove_path(&harness.path("engine-submit"))?;
    crate::harness::remove_path(&harness.path("engine-journal"))?;
    Ok((submit, journal_only))
}

/// `--submit-only`: the engine's and the bare journal's submit figures,
/// alternating, each round's ratio printed with its probes.
fn run_submit_only(args: &EngineArgs, duration: Duration) -> Result<()> {
    let rounds = args.rounds.max(1);
    // Each round: two steps, each followed by a probe bracket.
    let mut harness = Harness::new(&args.common.dir, 1 + 4 * u64::from(rounds))?;
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let (submit, journal_only) =
            run_submit_pair(&mut harness, duration, &format!("round {round}: "))?;
        let ratio = submit.commands_per_s / journal_only.commands_per_s;
        ratios.push(ratio);
        let [engine_probes, _, engine_reliable] = submit.probes.cells();
        let [journal_probes, _, journal_reliable] = journal_only.probes.cells();
        println!(
            "round {round}: engine {} commands/s (p50 {:.0} us; probes {engine_probes}, \
             reliable {engine_reliable}), bare journal {} appends/s (p50 {:.0} us; probes \
             {journal_probes}, reliable {journal_reliable}): {}",
            fmt_num(submit.commands_per_s),
            submit.latency.p50_us,
            fmt_num(journal_only.commands_per_s),
            journal_only.latency.p50_us,
            fmt_ratio(ratio),
        );
    }
    harness.finish(args.common.keep)?;
    println!(
        "engine over bare journal, median of {rounds} rounds: {}",
        fmt_ratio(median(&mut ratios))
    );
    Ok(())
}

/// The raw sequential read of a file of `bytes` (rounded up to whole
/// reads, which are whole writes too) at `raw`, written first. The caller
/// removes the file after the load it is compared with: removing 1 GiB
/// right before it stalls the disk on a filesystem with online discard.
fn seq_read_of(raw: &Path, bytes: u64) -> Result<SeqResult> {
    const _: () = assert!(SEQ_READ_BLOCK_BYTES.is_multiple_of(SEQ_WRITE_BLOCK_BYTES));
    let seq_bytes = bytes.next_multiple_of(SEQ_READ_BLOCK_BYTES as u64);
    device::seq_write(raw, seq_bytes, SEQ_WRITE_BLOCK_BYTES, SEQ_WRITE_QUEUE_DEPTH)?;
    device::seq_read(raw, seq_bytes, SEQ_READ_BLOCK_BYTES, SEQ_READ_QUEUE_DEPTH)
}

/// `--load-only`: the snapshot load against the raw sequential read of a
/// file of the same size, alternated, each round bracketed by probes.
fn run_load_only(args: &EngineArgs, state_bytes: u64) -> Result<()> {
    let rounds = args.rounds.max(1);
    // The build, then per round the raw write and read and the reopen.
    let mut harness = Harness::new(&args.common.dir, 2 + 3 * u64::from(rounds))?;
    harness.step(format!("state: building {} MiB", state_bytes >> 20));
    let state_dir = harness.path("engine-state");
    let big = run_big_state_build_and_snapshot(&state_dir, state_bytes)?;
    harness.bracket()?;
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        harness.step(format!("round {round}: device: sequential read"));
        let raw = harness.path("engine-raw.dat");
        let seq_read = seq_read_of(&raw, big.snapshot_bytes)?;
        harness.step(format!("round {round}: snapshot load: reopen"));
        let reopened = run_reopen(&state_dir)?;
        crate::harness::remove_path(&raw)?;
        let probes = harness.bracket()?;
        let load_mb_per_s = mb_per_s(reopened.snapshot_bytes, reopened.snapshot_load);
        let restore_mb_per_s = mb_per_s(reopened.snapshot_bytes, reopened.restore);
        let ratio = load_mb_per_s / seq_read.mb_per_s;
        ratios.push(ratio);
        let [probe_cells, _, reliable] = probes.cells();
        println!(
            "round {round}: snapshot load {} MB/s, raw read {} MB/s: {}; restore {} MB/s \
             (probes {probe_cells}, reliable {reliable})",
            fmt_num(load_mb_per_s.round()),
            fmt_num(seq_read.mb_per_s.round()),
            fmt_ratio(ratio),
            fmt_num(restore_mb_per_s.round()),
        );
    }
    harness.finish(args.common.keep)?;
    println!(
        "snapshot load over raw read, median of {rounds} rounds: {}",
        fmt_ratio(median(&mut ratios))
    );
    Ok(())
}

fn run_latency_only(args: &EngineArgs, state_bytes: u64, duration: Duration) -> Result<()> {
    let rounds = args.rounds.max(1);
    let mut harness = Harness::new(&args.common.dir, 1 + u64::from(rounds))?;
    harness.step(format!("state: building {} MiB", state_bytes >> 20));
    let state_dir = harness.path("engine-state");
    run_big_state_build_and_snapshot(&state_dir, state_bytes)?;
    harness.bracket()?;
    for round in 1..=rounds {
        harness.step(format!(
            "round {round}: latency without and during a checkpoint"
        ));
        let (quiet, during, checkpoint_time) =
            run_checkpoint_latency(&state_dir, duration, args, round > 1)?;
        let probes = harness.bracket()?;
        let [probe_cells, _, reliable] = probes.cells();
        let (quiet, during) = (quiet.2.summary(), during.2.summary());
        println!(
            "round {round}: during a {:.1} s checkpoint p99 {} us ({} of idle {} us), \
             p999 {} us (idle {} us), max {} us (idle {} us); \
             probes {probe_cells}, reliable {reliable}",
            checkpoint_time.as_secs_f64(),
            fmt_num(during.p99_us.round()),
            fmt_ratio(during.p99_us / quiet.p99_us.max(f64::MIN_POSITIVE)),
            fmt_num(quiet.p99_us.round()),
            fmt_num(during.p999_us.round()),
            fmt_num(quiet.p999_us.round()),
            fmt_num(during.max_us.round()),
            fmt_num(quiet.max_us.round()),
        );
    }
    crate::harness::remove_path(&state_dir)?;
    harness.finish(args.common.keep)
}

/// The median of `values` (sorted in place); 0 for none.
fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

fn print_table(report: &EngineReport) {
    let mut table = Table::new([
        "figure",
        "engine",
        "against",
        "ratio",
        "probes p50/mean us",
        "reliable",
    ]);
    let probe_cells = |probes: &ProbeBracket| {
        let [figures, _, reliable] = probes.cells();
        (figures, reliable)
    };
    let (p, r) = probe_cells(&report.submit.probes);
    table.row([
        format!("commands/s, {} submitters", report.submit.submitters),
        fmt_num(report.submit.commands_per_s),
        format!(
            "bare journal {}",
            fmt_num(report.journal_only.commands_per_s)
        ),
        fmt_ratio(report.engine_over_journal),
        p,
        r,
    ]);
    let (p, r) = probe_cells(&report.snapshot_write_probes);
    table.row([
        format!(
            "snapshot write MB/s ({} MB)",
            report.state_bytes / 1_000_000
        ),
        fmt_num(report.snapshot_write_mb_per_s),
        format!("raw write {}", fmt_num(report.seq_write.mb_per_s)),
        fmt_ratio(report.snapshot_write_ratio),
        p,
        r,
    ]);
    let (p, r) = probe_cells(&report.snapshot_load_probes);
    table.row([
        "snapshot load MB/s (read, verify)".to_owned(),
        fmt_num(report.snapshot_load_mb_per_s),
        format!(
            "raw read {} just before ({} in step 1: {})",
            fmt_num(report.snapshot_load_seq_read.mb_per_s),
            fmt_num(report.seq_read.mb_per_s),
            fmt_ratio(report.snapshot_load_ratio_first_read)
        ),
        fmt_ratio(report.snapshot_load_ratio),
        p,
        r.clone(),
    ]);
    table.row([
        "snapshot restore MB/s (decode, validate)".to_owned(),
        fmt_num(report.snapshot_restore_mb_per_s),
        "(CPU)".to_owned(),
        String::new(),
        String::new(),
        String::new(),
    ]);
    let (p, r) = probe_cells(&report.latency_during_checkpoint.probes);
    let (during, without) = (
        &report.latency_during_checkpoint.latency,
        &report.latency_without_checkpoint.latency,
    );
    let latency_rows = [
        (
            format!(
                "p99 ack us during a {:.1} s checkpoint",
                report.checkpoint_seconds
            ),
            during.p99_us,
            without.p99_us,
        ),
        (
            format!(
                "p999 ack us during it ({}% busy writes)",
                report.busy_write_percent
            ),
            during.p999_us,
            without.p999_us,
        ),
    ];
    for (figure, during, without) in latency_rows {
        table.row([
            figure,
            fmt_num(during),
            format!("without {}", fmt_num(without)),
            fmt_ratio(during / without.max(f64::MIN_POSITIVE)),
            p.clone(),
            r.clone(),
        ]);
    }
    let (p, r) = probe_cells(&report.recovery_probes);
    table.row([
        format!("recovery of {} ops, s", report.recovery_ops),
        format!("{:.2}", report.recovery_seconds),
        format!(
            "journal {:.2} s + replay {:.2} s",
            report.recovery_journal_seconds, report.recovery_replay_seconds
        ),
        fmt_num(report.recovery_ops_per_s) + " ops/s",
        p,
        r,
    ]);
    println!("{}", table.render());
}
