//! `ringstore-bench shards`: the multi-shard runtime (issue 5). Commands/s
//! with 1 shard and with 2, side by side in alternating rounds, each
//! workload bracketed by durable-write probes; then the recovery time of the
//! 2-shard engine.
//!
//! Every shard runs in an `Engine` (one pinned reactor per shard) and gets
//! the same load: `SUBMITTERS_PER_SHARD` tasks on its own reactor
//! (`Client::run_on`) submitting broker commit-offset commands for a fixed
//! time, the thread-per-core way.
//!
//! The client handle is measured the way a service in front of the engine
//! uses it: tokio tasks (as many as the reactor's submitters, on one tokio
//! worker thread) submitting through [`Client::submit`], one command each
//! at a time. Each round runs 1 shard on its reactor, 2 shards on their
//! reactors and 1 shard through the handle, in a rotating order; the
//! handle's target is at least 0.8x of the same shard's on-reactor rate in
//! the same round; a fourth workload per round sends the same number of
//! commands in flight as batches of [`BATCH_COMMANDS`]
//! ([`Client::submit_batch`]: one request and one reply per batch). With
//! one shard the tokio worker has the other core, as
//! a deployment gives its network runtime cores of its own. A last
//! workload drives 2 shards through the handle (512 tasks), where the tokio
//! worker and two reactors share the two cores.
//!
//! The scaling target is 2 shards at least 1.6x one shard. The machine has
//! two cores, so with two shards nothing else has a core of its own: the
//! probe thread and the progress bar share them.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use clap::Args;
use ringstore::broker::{Command, GroupCommand, Metadata, StreamCommand, TopicCommand};
use ringstore::runtime::{shard_for_key, Client, Engine};
use ringstore::Shard;
use serde::Serialize;

use crate::cmd_device::CommonArgs;
use crate::harness::{Harness, ProbeBracket};
use crate::latency::{LatencyRecorder, LatencySummary};
use crate::report::{fmt_num, fmt_ratio, round3, Table};

/// Submitting tasks per shard.
pub const SUBMITTERS_PER_SHARD: usize = 256;
/// Worker threads of the tokio runtime that submits through the handle.
const CLIENT_RUNTIME_THREADS: usize = 1;
/// Commands per [`Client::submit_batch`] in the batched handle workload...
const BATCH_COMMANDS: usize = 16;
/// ...from this many tokio tasks per shard: as many commands in flight as
/// [`SUBMITTERS_PER_SHARD`].
const BATCH_TASKS_PER_SHARD: usize = SUBMITTERS_PER_SHARD / BATCH_COMMANDS;
/// How long each workload runs in full mode.
const DURATION_FULL: Duration = Duration::from_secs(8);
/// How long each workload runs in quick mode.
const DURATION_QUICK: Duration = Duration::from_secs(3);
/// Rounds of (1 shard, 2 shards) in full mode; the order alternates.
const ROUNDS_FULL: usize = 3;
/// Rounds in quick mode.
const ROUNDS_QUICK: usize = 1;
/// Partitions of each shard's topic.
const PARTITIONS: u32 = 64;
/// Ring slots per shard, as in `ringstore-bench engine` (so the 1-shard
/// figure compares with that command's).
const SLOT_COUNT: u64 = 1 << 21;
/// Segment size of each shard's journal, as in `ringstore-bench engine`.
const SEGMENT_BYTES: u64 = 256 << 20;
/// Group-commit write size, as in `ringstore-bench engine`.
const BATCH_BYTES_MAX: u64 = 4 << 20;

/// Arguments of `ringstore-bench shards`.
#[derive(Args, Debug, Clone)]
pub struct ShardsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

/// One timed workload.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    pub shards: usize,
    /// Where the submitting tasks run: `reactor` (on the shard's own
    /// reactor), `client` (tokio tasks through the client handle, one
    /// command at a time) or `client batches` (tokio tasks through
    /// [`Client::submit_batch`], [`BATCH_COMMANDS`] at a time).
    pub via: &'static str,
    pub round: usize,
    pub commands: u64,
    pub seconds: f64,
    pub commands_per_s: f64,
    pub latency: LatencySummary,
    /// Journal entries per group-commit write, over every shard.
    pub entries_per_write: f64,
    pub probes: ProbeBracket,
}

#[derive(Debug, Serialize)]
struct Report {
    workloads: Vec<Workload>,
    scaling_best: f64,
    scaling_median: f64,
    /// 1 shard through the client handle ÷ 1 shard on its reactor, per
    /// round: median.
    client_ratio_median: f64,
    /// The same for the handle's batches.
    client_batches_ratio_median: f64,
    via_client: Workload,
    recovery_seconds: f64,
    recovery_replayed_ops: u64,
    recovery_probes: ProbeBracket,
}

/// The stream each shard's load writes to: the first `bench-<n>` it owns.
fn stream_for(shard: usize, shards: usize) -> String {
    (0..)
        .map(|n| format!("bench-{n}"))
        .find(|name| shard_for_key(name.as_bytes(), shards) == shard)
        .unwrap_or_default()
}

fn setup(stream: &str) -> [Command; 3] {
    [
        Command::Stream(StreamCommand::Create {
            name: stream.into(),
        }),
        Command::Topic(TopicCommand::Create {
            stream: stream.into(),
            name: "offsets".into(),
            partitions: PARTITIONS,
            config: Default::default(),
        }),
        Command::Group(GroupCommand::Create {
            stream: stream.into(),
            topic: "offsets".into(),
            name: "readers".into(),
        }),
    ]
}

fn commit(stream: &str, task: usize, sequence: u64) -> Command {
    Command::Group(GroupCommand::CommitOffset {
        stream: stream.into(),
        topic: "offsets".into(),
        group: "readers".into(),
        partition: task as u32 % PARTITIONS,
        offset: sequence,
    })
}

fn start(dir: &Path, shards: usize) -> Result<Engine<Metadata>> {
    Ok(Engine::<Metadata>::builder()
        .data_dir(dir)
        .shards(shards)
        .configure_shards(|_, shard| {
            shard.journal(|j| {
                j.slot_count(SLOT_COUNT)
                    .segment_bytes(SEGMENT_BYTES)
                    .batch_bytes_max(BATCH_BYTES_MAX)
            })
        })
        .start()?)
}

fn prepare(client: &Client<Metadata>) -> Result<()> {
    for shard in 0..client.shards() {
        let stream = stream_for(shard, client.shards());
        for command in setup(&stream) {
            futures_lite::future::block_on(client.submit(&stream, command))?
                .map_err(|rejection| anyhow!("setup rejected: {rejection}"))?;
        }
    }
    Ok(())
}

/// `SUBMITTERS_PER_SHARD` tasks on one shard's reactor until `deadline`.
async fn local_load(
    shard: Shard<Metadata>,
    stream: String,
    deadline: Instant,
) -> Result<(u64, LatencyRecorder), String> {
    let recorder = Rc::new(RefCell::new(LatencyRecorder::new()));
    let count = Rc::new(Cell::new(0u64));
    let tasks: Vec<_> = (0..SUBMITTERS_PER_SHARD)
        .map(|task| {
            let (shard, stream) = (shard.clone(), stream.clone());
            let (recorder, count) = (recorder.clone(), count.clone());
            glommio::spawn_local(async move {
                let mut sequence = 0;
                while Instant::now() < deadline {
                    sequence += 1;
                    let sent = Instant::now();
                    match shard.submit(commit(&stream, task, sequence)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(rejection)) => return Err(rejection.to_string()),
                        Err(e) => return Err(e.to_string()),
                    }
                    recorder.borrow_mut().record(sent.elapsed());
                    count.set(count.get() + 1);
                }
                Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    let recorder = Rc::try_unwrap(recorder)
        .map_err(|_| "tasks still hold the recorder".to_string())?
        .into_inner();
    Ok((count.get(), recorder))
}

/// Every shard runs the local load at once; totals.
fn run_local(
    client: &Client<Metadata>,
    duration: Duration,
) -> Result<(u64, Duration, LatencyRecorder)> {
    let shards = client.shards();
    let started = Instant::now();
    let deadline = started + duration;
    let runs: Vec<_> = (0..shards)
        .map(|shard| {
            let client = client.clone();
            let stream = stream_for(shard, shards);
            std::thread::spawn(move || {
                futures_lite::future::block_on(
                    client.run_on(shard, move |s| local_load(s, stream, deadline)),
                )
            })
        })
        .collect();
    let mut total = 0;
    let mut recorder = LatencyRecorder::new();
    for run in runs {
        let (count, part) = run
            .join()
            .map_err(|_| anyhow!("load thread panicked"))??
            .map_err(|e| anyhow!("load failed: {e}"))?;
        total += count;
        recorder.merge(&part);
    }
    Ok((total, started.elapsed(), recorder))
}

/// `tasks` tokio tasks on a runtime of `CLIENT_RUNTIME_THREADS` threads,
/// each made by `task(index, deadline)` and counting the commands it had
/// acknowledged before `deadline`: their total, the time, their latencies.
fn drive_tokio_tasks<F, Fut>(
    tasks: usize,
    duration: Duration,
    task: F,
) -> Result<(u64, Duration, LatencyRecorder)>
where
    F: Fn(usize, Instant) -> Fut,
    Fut: std::future::Future<Output = Result<(u64, LatencyRecorder)>> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENT_RUNTIME_THREADS)
        .enable_time()
        .build()?;
    let started = Instant::now();
    let deadline = started + duration;
    let results = runtime.block_on(async {
        let running: Vec<_> = (0..tasks)
            .map(|index| tokio::spawn(task(index, deadline)))
            .collect();
        let mut results = Vec::new();
        for task in running {
            results.push(task.await);
        }
        results
    });
    let elapsed = started.elapsed();
    let mut total = 0;
    let mut recorder = LatencyRecorder::new();
    for result in results {
        let (count, part) = result??;
        total += count;
        recorder.merge(&part);
    }
    Ok((total, elapsed, recorder))
}

/// `SUBMITTERS_PER_SHARD` tasks per shard on a tokio runtime of
/// `CLIENT_RUNTIME_THREADS` threads submit through the handle until the
/// time is up: the shape of a tokio service in front of the engine.
fn run_via_client(
    client: &Client<Metadata>,
    duration: Duration,
) -> Result<(u64, Duration, LatencyRecorder)> {
    let shards = client.shards();
    drive_tokio_tasks(SUBMITTERS_PER_SHARD * shards, duration, |task, deadline| {
        let client = client.clone();
        let stream = stream_for(task % shards, shards);
        async move {
            let mut recorder = LatencyRecorder::new();
            let mut count = 0u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                client
                    .submit(&stream, commit(&stream, task, count))
                    .await?
                    .map_err(|rejection| anyhow!("rejected: {rejection}"))?;
                recorder.record(sent.elapsed());
                count += 1;
            }
            Ok((count, recorder))
        }
    })
}

/// [`BATCH_TASKS_PER_SHARD`] tasks per shard on the same tokio runtime
/// shape submit [`BATCH_COMMANDS`] commands at a time through
/// [`Client::submit_batch`] until the time is up; each command's latency is
/// its batch's.
fn run_via_client_batches(
    client: &Client<Metadata>,
    duration: Duration,
) -> Result<(u64, Duration, LatencyRecorder)> {
    let shards = client.shards();
    drive_tokio_tasks(
        BATCH_TASKS_PER_SHARD * shards,
        duration,
        |task, deadline| {
            let client = client.clone();
            let stream = stream_for(task % shards, shards);
            async move {
                let shard = client.shard_for(&stream);
                let mut recorder = LatencyRecorder::new();
                let mut count = 0u64;
                while Instant::now() < deadline {
                    let commands = (0..BATCH_COMMANDS as u64)
                        .map(|i| commit(&stream, task, count + i))
                        .collect();
                    let sent = Instant::now();
                    let outcomes = client.submit_batch(shard, commands).await?;
                    let took = sent.elapsed();
                    for outcome in outcomes {
                        outcome?.map_err(|rejection| anyhow!("rejected: {rejection}"))?;
                        recorder.record(took);
                        count += 1;
                    }
                }
                Ok((count, recorder))
            }
        },
    )
}

/// Journal entries per group-commit write over every shard of `client`.
fn entries_per_write(client: &Client<Metadata>) -> Result<f64> {
    let stats = futures_lite::future::block_on(client.stats())?;
    let entries: u64 = stats.iter().map(|s| s.journal.entries_written).sum();
    let writes: u64 = stats.iter().map(|s| s.journal.writes).sum();
    Ok(round3(entries as f64 / writes.max(1) as f64))
}

fn workload(
    shards: usize,
    via: &'static str,
    round: usize,
    (commands, elapsed, recorder): (u64, Duration, LatencyRecorder),
    entries_per_write: f64,
    probes: ProbeBracket,
) -> Workload {
    Workload {
        shards,
        via,
        round,
        commands,
        seconds: round3(elapsed.as_secs_f64()),
        commands_per_s: (commands as f64 / elapsed.as_secs_f64()).round(),
        latency: recorder.summary(),
        entries_per_write,
        probes,
    }
}

pub fn run(args: &ShardsArgs) -> Result<()> {
    let quick = args.common.quick;
    let duration = if quick { DURATION_QUICK } else { DURATION_FULL };
    let rounds = if quick { ROUNDS_QUICK } else { ROUNDS_FULL };
    let mut harness = Harness::new(&args.common.dir, 1 + rounds as u64 * 8 + 4)?;
    let mut workloads = Vec::new();
    for round in 0..rounds {
        // Rotate the order so a slow spell does not always hit one side.
        let mut order = [
            (1, "reactor"),
            (2, "reactor"),
            (1, "client"),
            (1, "client batches"),
        ];
        let kinds = order.len();
        order.rotate_left(round % kinds);
        for (shards, via) in order {
            harness.step(format!("round {round}: {shards} shard(s), {via}"));
            let dir = harness.path(&format!("shards-{shards}"));
            crate::harness::remove_path(&dir)?;
            let engine = start(&dir, shards)?;
            let client = engine.client();
            prepare(&client)?;
            let figures = match via {
                "client" => run_via_client(&client, duration)?,
                "client batches" => run_via_client_batches(&client, duration)?,
                _ => run_local(&client, duration)?,
            };
            let batches = entries_per_write(&client)?;
            engine.shutdown(false)?;
            let probes = harness.bracket()?;
            workloads.push(workload(shards, via, round, figures, batches, probes));
            crate::harness::remove_path(&dir)?;
        }
    }

    harness.step("2 shards through the client handle");
    let dir = harness.path("shards-client");
    crate::harness::remove_path(&dir)?;
    let engine = start(&dir, 2)?;
    let client = engine.client();
    prepare(&client)?;
    let figures = run_via_client(&client, duration)?;
    let batches = entries_per_write(&client)?;
    let via_client = workload(2, "client", 0, figures, batches, harness.bracket()?);

    harness.step("recovery: 2 shards restart");
    // No final checkpoint: the restart replays everything since the last
    // automatic one.
    engine.shutdown(false)?;
    let started = Instant::now();
    let engine = start(&dir, 2)?;
    let recovery = started.elapsed();
    let client = engine.client();
    let mut replayed = 0;
    for shard in 0..2 {
        replayed += futures_lite::future::block_on(
            client.run_on(shard, |s| async move { s.recovery_report().replayed_ops }),
        )?;
    }
    engine.shutdown(false)?;
    let recovery_probes = harness.bracket()?;
    crate::harness::remove_path(&dir)?;

    let rate = |round, shards, via| {
        workloads
            .iter()
            .find(|w| w.round == round && w.shards == shards && w.via == via)
            .map(|w| w.commands_per_s)
    };
    let mut ratios: Vec<f64> = (0..rounds)
        .filter_map(|round| Some(rate(round, 2, "reactor")? / rate(round, 1, "reactor")?))
        .collect();
    ratios.sort_by(f64::total_cmp);
    let mut client_ratios: Vec<f64> = (0..rounds)
        .filter_map(|round| Some(rate(round, 1, "client")? / rate(round, 1, "reactor")?))
        .collect();
    client_ratios.sort_by(f64::total_cmp);
    let mut batch_ratios: Vec<f64> = (0..rounds)
        .filter_map(|round| Some(rate(round, 1, "client batches")? / rate(round, 1, "reactor")?))
        .collect();
    batch_ratios.sort_by(f64::total_cmp);
    let report = Report {
        scaling_best: ratios.last().copied().unwrap_or(0.0),
        scaling_median: ratios.get(ratios.len() / 2).copied().unwrap_or(0.0),
        client_ratio_median: client_ratios
            .get(client_ratios.len() / 2)
            .copied()
            .unwrap_or(0.0),
        client_batches_ratio_median: batch_ratios
            .get(batch_ratios.len() / 2)
            .copied()
            .unwrap_or(0.0),
        workloads,
        via_client,
        recovery_seconds: round3(recovery.as_secs_f64()),
        recovery_replayed_ops: replayed,
        recovery_probes,
    };
    print_table(&report);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn print_table(report: &Report) {
    let mut headings = vec![
        "workload",
        "commands/s",
        "p50 us",
        "p99 us",
        "p999 us",
        "entries/write",
    ];
    headings.extend(ProbeBracket::CELL_HEADINGS);
    let mut table = Table::new(headings);
    let mut row = |name: String, w: &Workload| {
        let mut cells = vec![
            name,
            fmt_num(w.commands_per_s),
            fmt_num(w.latency.p50_us),
            fmt_num(w.latency.p99_us),
            fmt_num(w.latency.p999_us),
            fmt_num(w.entries_per_write),
        ];
        cells.extend(w.probes.cells());
        table.row(cells);
    };
    let name = |w: &Workload| match w.via {
        "client batches" => format!(
            "{} shard(s), {} tokio tasks through the client handle, \
             {BATCH_COMMANDS} commands a batch",
            w.shards,
            BATCH_TASKS_PER_SHARD * w.shards
        ),
        "client" => format!(
            "{} shard(s), {} tokio tasks through the client handle",
            w.shards,
            SUBMITTERS_PER_SHARD * w.shards
        ),
        _ => format!(
            "{} shard(s), {SUBMITTERS_PER_SHARD} tasks each, on the reactor",
            w.shards
        ),
    };
    for w in &report.workloads {
        row(format!("round {}: {}", w.round, name(w)), w);
    }
    row(name(&report.via_client), &report.via_client);
    println!("{}", table.render());
    println!(
        "2 shards / 1 shard: best round {}, median {} (target >= 1.6x)",
        fmt_ratio(report.scaling_best),
        fmt_ratio(report.scaling_median)
    );
    println!(
        "1 shard through the client handle / on its reactor: median {} (target >= 0.8x); \
         in batches of {BATCH_COMMANDS}: median {}",
        fmt_ratio(report.client_ratio_median),
        fmt_ratio(report.client_batches_ratio_median)
    );
    println!(
        "recovery of 2 shards: {} s, {} ops replayed; probes {}",
        report.recovery_seconds,
        report.recovery_replayed_ops,
        report.recovery_probes.cells().join(", ")
    );
}
