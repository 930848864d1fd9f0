//! `ringstore demo`: the main job on the embedded defaults.
//!
//! Starts the shards with the reference broker-metadata state machine,
//! runs a mixed workload on every shard at once, checkpoints, runs more,
//! shuts down, restarts and recovers, and checks that every shard's
//! recovered state equals the state it had before the shutdown. Prints
//! throughput, ack latency percentiles and recovery time.
//!
//! The load is generated on each shard's own reactor (through
//! [`Client::run_on`]), the way a thread-per-core broker submits: every
//! command is a local call, so the figures measure the engine, not a
//! cross-thread hop per command.
//!
//! The mix per shard: streams, topics and groups it owns are created
//! first; then 80 % consumer-offset commits, 10 % topic config updates,
//! 5 % group joins and leaves and 5 % commands from the random generator
//! (many of which the state machine rejects: duplicates, missing parents,
//! bad names).

use crate::output::{self, Out};
use crate::stress::start_engine;
use crate::{CliError, Context, Outcome};
use hdrhistogram::Histogram;
use ringstore::broker::{gen, Command, GroupCommand, Metadata, StreamCommand, TopicCommand};
use ringstore::runtime::{shard_for_key, Client};
use ringstore::Shard;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Streams each shard creates for the mix.
const STREAMS_PER_SHARD: usize = 8;
/// Topics per stream.
const TOPICS_PER_STREAM: usize = 4;
/// Partitions per topic.
const PARTITIONS: u32 = 64;
/// Share of the commands run after the checkpoint (so recovery replays).
const AFTER_CHECKPOINT_PERCENT: u64 = 25;
/// Largest latency the histograms tell apart (µs).
const LATENCY_MAX_US: u64 = 60_000_000;

/// `ringstore demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Shards (default: what the data dir holds, else the config's count:
    /// one per CPU).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Commands in all (default: the config's `demo.commands`).
    #[arg(long)]
    pub commands: Option<u64>,
    /// Concurrent submitters per shard (default: the config's
    /// `demo.clients`).
    #[arg(long)]
    pub clients: Option<usize>,
    /// Delete the data directory first (only if it is an engine's).
    #[arg(long)]
    pub fresh: bool,
}

/// What one shard's load returned.
struct Load {
    commands: u64,
    rejected: u64,
    latency: Histogram<u64>,
}

/// One phase's totals over all shards.
struct Phase {
    commands: u64,
    rejected: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).unwrap_or_else(|_| unreachable!())
}

fn names(shard: usize, shards: usize) -> Vec<String> {
    // Stream names this shard owns: try candidates until enough route here.
    (0..)
        .map(|i| format!("demo-{i}"))
        .filter(|name| shard_for_key(name.as_bytes(), shards) == shard)
        .take(STREAMS_PER_SHARD)
        .collect()
}

/// The commands that create a shard's streams, topics and groups.
fn setup_commands(streams: &[String]) -> Vec<Command> {
    let mut commands = Vec::new();
    for stream in streams {
        commands.push(Command::Stream(StreamCommand::Create {
            name: stream.clone(),
        }));
        for topic in 0..TOPICS_PER_STREAM {
            commands.push(Command::Topic(TopicCommand::Create {
                stream: stream.clone(),
                name: format!("t{topic}"),
                partitions: PARTITIONS,
                config: vec![("retention.ms".into(), "604800000".into())],
            }));
            commands.push(Command::Group(GroupCommand::Create {
                stream: stream.clone(),
                topic: format!("t{topic}"),
                name: "consumers".into(),
            }));
        }
    }
    commands
}

/// One command of the mix.
fn mixed_command(
    rng: &mut impl FnMut() -> u64,
    streams: &[String],
    shards: usize,
    shard: usize,
) -> Command {
    let stream = streams[(rng() % streams.len() as u64) as usize].clone();
    let topic = format!("t{}", rng() % TOPICS_PER_STREAM as u64);
    match rng() % 100 {
        0..=79 => Command::Group(GroupCommand::CommitOffset {
            stream,
            topic,
            group: "consumers".into(),
            partition: (rng() % u64::from(PARTITIONS)) as u32,
            offset: rng() % 1_000_000_000,
        }),
        80..=89 => Command::Topic(TopicCommand::UpdateConfig {
            stream,
            name: topic,
            set: vec![(format!("k{}", rng() % 8), format!("v{}", rng() % 1000))],
            remove: Vec::new(),
        }),
        90..=94 => {
            let member = format!("m{}", rng() % 8);
            let group = "consumers".to_string();
            if rng().is_multiple_of(2) {
                Command::Group(GroupCommand::Join {
                    stream,
                    topic,
                    group,
                    member,
                })
            } else {
                Command::Group(GroupCommand::Leave {
                    stream,
                    topic,
                    group,
                    member,
                })
            }
        }
        _ => loop {
            // A random command this shard owns (others would belong elsewhere).
            let command = gen::random_command(rng);
            if shard_for_key(command.routing_key().as_bytes(), shards) == shard {
                break command;
            }
        },
    }
}

/// Runs `commands` of the mix on `shard` with `clients` concurrent
/// submitters; counts into `done`.
async fn shard_load(
    shard: Shard<Metadata>,
    index: usize,
    shards: usize,
    commands: u64,
    clients: usize,
    seed: u64,
    done: Arc<AtomicU64>,
) -> Result<Load, String> {
    let streams = names(index, shards);
    let next = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let shard = shard.clone();
            let streams = streams.clone();
            let next = next.clone();
            let done = done.clone();
            glommio::spawn_local(async move {
                let mut rng = gen::splitmix64(seed ^ (client as u64).wrapping_mul(0x9e37_79b9));
                let mut load = Load {
                    commands: 0,
                    rejected: 0,
                    latency: histogram(),
                };
                loop {
                    let n = next.get();
                    if n >= commands {
                        return Ok::<Load, String>(load);
                    }
                    next.set(n + 1);
                    let command = mixed_command(&mut rng, &streams, shards, index);
                    let started = Instant::now();
                    let outcome = shard.submit(command).await.map_err(|e| e.to_string())?;
                    let micros = started.elapsed().as_micros() as u64;
                    load.latency
                        .saturating_record(micros.clamp(1, LATENCY_MAX_US));
                    load.commands += 1;
                    load.rejected += u64::from(outcome.is_err());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut total = Load {
        commands: 0,
        rejected: 0,
        latency: histogram(),
    };
    for task in tasks {
        let load: Load = task.await?;
        total.commands += load.commands;
        total.rejected += load.rejected;
        total
            .latency
            .add(&load.latency)
            .map_err(|e| format!("merging latencies: {e}"))?;
    }
    Ok(total)
}

/// Runs `commands` over every shard at once, with a progress bar.
fn run_phase(
    client: &Client<Metadata>,
    commands: u64,
    clients: usize,
    seed: u64,
    json: bool,
    label: &str,
) -> Result<Phase, CliError> {
    let shards = client.shards();
    let counters: Vec<Arc<AtomicU64>> = (0..shards).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let progress = output::counter_bar(commands, label, json);
    let started = Instant::now();
    let runs: Vec<_> = (0..shards)
        .map(|index| {
            let client = client.clone();
            let done = counters[index].clone();
            // Shard i gets its share; the first shards take the remainder.
            let share =
                commands / shards as u64 + u64::from((index as u64) < commands % shards as u64);
            std::thread::spawn(move || {
                futures_lite::future::block_on(client.run_on(index, move |shard| {
                    shard_load(
                        shard,
                        index,
                        shards,
                        share,
                        clients,
                        seed ^ index as u64,
                        done,
                    )
                }))
            })
        })
        .collect();
    while !runs.iter().all(|r| r.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        progress.set_position(counters.iter().map(|c| c.load(Ordering::Relaxed)).sum());
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    let mut phase = Phase {
        commands: 0,
        rejected: 0,
        elapsed,
        latency: histogram(),
    };
    for run in runs {
        let load = run
            .join()
            .map_err(|_| CliError("a load thread panicked".into()))??
            .map_err(|e| CliError(format!("the load failed: {e}")))?;
        phase.commands += load.commands;
        phase.rejected += load.rejected;
        phase
            .latency
            .add(&load.latency)
            .map_err(|e| CliError(format!("merging latencies: {e}")))?;
    }
    Ok(phase)
}

/// Runs `ringstore demo`.
pub fn run(context: &Context, args: DemoArgs) -> Result<Outcome, CliError> {
    let commands = args.commands.unwrap_or(context.config.demo.commands);
    let clients = args.clients.unwrap_or(context.config.demo.clients);
    if commands == 0 || clients == 0 {
        return Err(CliError(
            "--commands and --clients must be at least 1".into(),
        ));
    }
    if args.fresh {
        remove_engine_dir(&context.data_dir)?;
    }
    let status = |text: String| {
        if !context.json {
            eprintln!("{text}");
        }
    };

    let started = Instant::now();
    let engine = start_engine(context, args.shards)?;
    let client = engine.client();
    let shards = engine.shards();
    status(format!(
        "started {shards} shards in {:.2} s",
        started.elapsed().as_secs_f64()
    ));

    // Setup: each shard creates what its share of the mix uses.
    for shard in 0..shards {
        for command in setup_commands(&names(shard, shards)) {
            let key = command.routing_key().to_string();
            futures_lite::future::block_on(client.submit(&key, command))?
                .map(|_| ())
                .or_else(|rejection| match rejection {
                    // A rerun on the same data dir finds them there.
                    ringstore::broker::Rejection::Duplicate { .. } => Ok(()),
                    other => Err(CliError(format!("setup refused: {other}"))),
                })?;
        }
    }

    let seed = ringstore::snapshot::format::unix_ms_now();
    let before = commands - commands * AFTER_CHECKPOINT_PERCENT / 100;
    let load = run_phase(&client, before, clients, seed, context.json, "commands")?;
    status(format!(
        "{} commands in {:.2} s, checkpointing",
        load.commands,
        load.elapsed.as_secs_f64()
    ));
    let checkpoint_started = Instant::now();
    for shard in 0..shards {
        futures_lite::future::block_on(client.checkpoint(shard))?;
    }
    let checkpoint_time = checkpoint_started.elapsed();
    let after = run_phase(
        &client,
        commands - before,
        clients,
        !seed,
        context.json,
        "after checkpoint",
    )?;

    // The state each shard must come back with.
    let mut expected = Vec::with_capacity(shards);
    for shard in 0..shards {
        expected.push(futures_lite::future::block_on(
            client.read_shard(shard, |m: &Metadata| m.clone()),
        )?);
    }
    let stats = futures_lite::future::block_on(client.stats())?;
    let shutdown_started = Instant::now();
    engine.shutdown(false)?;
    let shutdown_time = shutdown_started.elapsed();

    status("restarting".into());
    let recovery_started = Instant::now();
    let engine = start_engine(context, Some(shards))?;
    let recovery_time = recovery_started.elapsed();
    let client = engine.client();
    let mut replayed = 0;
    let mut all_equal = true;
    for (shard, expected) in expected.into_iter().enumerate() {
        let (equal, checked, ops) =
            futures_lite::future::block_on(client.run_on(shard, |s| async move {
                let report = s.recovery_report().replayed_ops;
                s.read(|m| (*m == expected, m.check().map_err(|e| e.to_string()), report))
            }))?;
        checked.map_err(|e| {
            CliError(format!(
                "shard {shard}: recovered state is inconsistent: {e}"
            ))
        })?;
        replayed += ops;
        all_equal &= equal;
        if !equal {
            eprintln!("shard {shard}: the recovered state differs from the state before shutdown");
        }
    }
    engine.shutdown(true)?;

    let mut total = load.latency;
    total
        .add(&after.latency)
        .map_err(|e| CliError(format!("merging latencies: {e}")))?;
    let count = load.commands + after.commands;
    let elapsed = load.elapsed + after.elapsed;
    let per_second = count as f64 / elapsed.as_secs_f64();
    let us = |q: f64| total.value_at_quantile(q);
    let fsyncs: u64 = stats.iter().map(|s| s.journal.fsyncs).sum();
    let mut out = Out::new();
    if context.json {
        out.json(&serde_json::json!({
            "shards": shards,
            "clients_per_shard": clients,
            "commands": count,
            "rejected": load.rejected + after.rejected,
            "seconds": elapsed.as_secs_f64(),
            "commands_per_second": per_second,
            "latency_us": { "p50": us(0.5), "p99": us(0.99), "p999": us(0.999), "max": total.max() },
            "fsyncs": fsyncs,
            "checkpoint_seconds": checkpoint_time.as_secs_f64(),
            "shutdown_seconds": shutdown_time.as_secs_f64(),
            "recovery_seconds": recovery_time.as_secs_f64(),
            "replayed_ops": replayed,
            "recovered_state_equal": all_equal,
        }))?;
    } else {
        let mut table = output::table(["", "value"]);
        table.add_row(vec!["shards".to_string(), shards.to_string()]);
        table.add_row(vec![
            "submitters per shard".to_string(),
            clients.to_string(),
        ]);
        table.add_row(vec![
            "commands (rejected)".to_string(),
            format!("{count} ({})", load.rejected + after.rejected),
        ]);
        table.add_row(vec!["commands/s".to_string(), format!("{per_second:.0}")]);
        table.add_row(vec![
            "ack latency p50 / p99 / p99.9".to_string(),
            format!("{} / {} / {} µs", us(0.5), us(0.99), us(0.999)),
        ]);
        table.add_row(vec![
            "commands per fsync".to_string(),
            format!("{:.1}", count as f64 / fsyncs.max(1) as f64),
        ]);
        table.add_row(vec![
            "checkpoint (all shards)".to_string(),
            format!("{:.3} s", checkpoint_time.as_secs_f64()),
        ]);
        table.add_row(vec![
            "recovery (start to ready)".to_string(),
            format!(
                "{:.3} s, {replayed} ops replayed",
                recovery_time.as_secs_f64()
            ),
        ]);
        table.add_row(vec![
            "recovered state".to_string(),
            if all_equal {
                "equal to the state before shutdown"
            } else {
                "DIFFERS"
            }
            .to_string(),
        ]);
        out.line(table)?;
    }
    out.flush()?;
    if all_equal {
        Ok(Outcome::Ok)
    } else {
        Ok(Outcome::Damaged)
    }
}

/// Removes an engine data directory: one whose data-dir superblock
/// decodes, no shard of which is open, and which holds nothing an operator
/// keeps (the local object store's snapshots, salvage's quarantine).
/// Refuses anything else, saying why.
fn remove_engine_dir(dir: &std::path::Path) -> Result<(), CliError> {
    if !dir.exists() {
        return Ok(());
    }
    let empty = std::fs::read_dir(dir)
        .map_err(|e| CliError(format!("{}: {e}", dir.display())))?
        .next()
        .is_none();
    if empty {
        return Ok(());
    }
    let refuse = |why: String| {
        Err(CliError(format!(
            "--fresh: not deleting {}: {why}",
            dir.display()
        )))
    };
    // A journal directory has a `superblock` too: only a data directory's
    // decodes as one.
    let shards = match ringstore::runtime::startup::read_manifest(dir) {
        Ok(Some(shards)) => shards,
        Ok(None) => {
            return refuse("it is not an engine data directory (no data-dir superblock)".into())
        }
        Err(e) => return refuse(format!("it is not an engine data directory ({e})")),
    };
    if ringstore::is_locked(dir)? {
        return refuse("a running engine holds it; stop it first".into());
    }
    for shard in 0..shards {
        let shard_dir = ringstore::runtime::startup::shard_dir(dir, shard);
        if ringstore::is_locked(&shard_dir)? {
            return refuse(format!("{} is open; stop it first", shard_dir.display()));
        }
        let quarantine = shard_dir.join(crate::wal::QUARANTINE_DIR_NAME);
        if quarantine.exists() {
            return refuse(format!(
                "{} holds what `wal salvage` set aside; move or delete it yourself",
                quarantine.display()
            ));
        }
    }
    let store = dir.join(crate::config::LOCAL_ROOT_DEFAULT);
    if std::fs::read_dir(&store).is_ok_and(|mut entries| entries.next().is_some()) {
        return refuse(format!(
            "{} holds the local object store's snapshots (the shards' backups); move or \
             delete it yourself",
            store.display()
        ));
    }
    std::fs::remove_dir_all(dir).map_err(|e| CliError(format!("removing {}: {e}", dir.display())))
}
