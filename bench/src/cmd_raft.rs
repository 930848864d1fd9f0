//! `ringstore-bench raft`: a replicated cluster's figures (issue 14), in
//! one run on one directory: the same 3-node openraft cluster (one process,
//! TCP on loopback, the same configuration, wire format and client loop) on
//! ringstore's raft shards, on openraft's in-memory reference store, and on
//! its RocksDB-backed reference store (with the `rocksdb` feature); and the
//! single-node engine (one shard, no replication) as the latency floor.
//! Each store's nodes run where its Raft runs: the reference stores' on
//! tokio, ringstore's on their shard's reactor (`ReactorRuntime`, peer
//! connections on glommio's sockets, clients as tasks there), as the
//! engine's clients run on its shard.
//!
//! Replication is pipelined by default (`--replication`; the leader sends
//! each AppendEntries request without waiting for the replies before it,
//! as the cluster's nodes do); `--replication sequential` sends one at a
//! time, openraft's default. Every store gets the same.
//!
//! Each store runs `--clients` levels (default 1 and 64): each client
//! submits a small broker-sized command to the leader and waits for its
//! commit before the next. Every workload is bracketed by durable-write
//! probes. Targets: ringstore's commands/s at least 2x the RocksDB store's
//! at the same level; its p50 commit latency at 1 client at most 2x the
//! single-node engine's p50 ack latency.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use ringstore::raft::cluster::{ClusterCommand, ClusterMachine, ClusterTypes};
use ringstore::raft::Request;
use ringstore::CheckpointPolicy;
use serde::Serialize;

use crate::cmd_device::CommonArgs;
use crate::cmd_engine::{
    commit_offset, prepare_topic, setup_commands, shard_builder_with, submit_for, PARTITIONS,
};
use crate::cmd_journal::{on_reactor, PreallocationArg};
use crate::harness::{Harness, ProbeBracket};
use crate::latency::{LatencyRecorder, LatencySummary};
use crate::quorum_floor::{quorum_floor, Blocks, QuorumFloor};
use crate::raft_peers::{self, Cluster, Host, Replication, NODES};
use crate::report::{fmt_num, fmt_ratio, round3, Table};

/// How long each workload runs in full mode.
const DURATION_FULL: Duration = Duration::from_secs(10);
/// How long each workload runs in quick mode.
const DURATION_QUICK: Duration = Duration::from_secs(3);
/// Rounds of the disk's floor of a commit ([`disk_floor`]).
const DISK_FLOOR_ROUNDS_MAX: usize = 5_000;
const _: () = assert!(DISK_FLOOR_ROUNDS_MAX <= crate::quorum_floor::QUORUM_ROUNDS_MAX);
/// Longest the disk's floor of a commit is measured, each time.
const DISK_FLOOR_DURATION_MAX: Duration = Duration::from_secs(2);
/// Bytes of the value the reference stores' `Set` carries: about the size
/// of ringstore's encoded commit-offset command.
const VALUE_BYTES: usize = 48;

/// Arguments of `ringstore-bench raft`.
#[derive(Args, Debug, Clone)]
pub struct RaftArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Concurrent clients, one level per value.
    #[arg(long, value_delimiter = ',', default_values_t = [1u64, 64])]
    pub clients: Vec<u64>,
    /// How leaders send AppendEntries requests, for every store alike.
    #[arg(long, value_enum, default_value_t = Replication::Pipelined)]
    pub replication: Replication,
    /// How the journals of ringstore's nodes and of the single-node engine
    /// get their segments' space: `fallocate` (the default, as a fresh
    /// journal starts) or `zero-fill` (written blocks, as in a journal
    /// whose segments are recycled).
    #[arg(long, value_enum, default_value_t = PreallocationArg::Fallocate)]
    pub preallocation: PreallocationArg,
    /// After each ringstore workload, print where each node's entries
    /// spent their time: openraft's own log-stage latencies (proposed,
    /// received, submitted to the log, persisted, committed, applied) over
    /// the newest entries each node saw, as many as openraft's
    /// `log_stage_capacity` keeps (1,024 by default; `n` in the output).
    #[arg(long)]
    pub stages: bool,
    /// The largest write ringstore's nodes make inline
    /// (`JournalBuilder::inline_write_bytes_max`); by default the nodes'
    /// own setting (off).
    #[arg(long)]
    pub inline_write_bytes_max: Option<u64>,
}

/// One ringstore node's journal during a workload: how many entries
/// openraft appended, how many writes (each one fdatasync) they took and
/// how many of those were made inline (`--inline-write-bytes-max`).
#[derive(Debug, Serialize)]
struct NodeJournal {
    node: u64,
    entries: u64,
    writes: u64,
    inline_writes: u64,
    batch_entries_max: u64,
}

/// One ringstore node's log-stage latencies (`--stages`): openraft's
/// `LogStageHistograms`, as it prints them.
#[derive(Debug, Serialize)]
struct NodeStages {
    node: u64,
    leader: bool,
    stages: String,
}

/// One store at one client level.
#[derive(Debug, Serialize)]
struct RaftFigures {
    store: &'static str,
    clients: u64,
    /// ringstore only: each node's journal during the workload.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    journals: Vec<NodeJournal>,
    /// ringstore with `--stages` only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stages: Vec<NodeStages>,
    commands: u64,
    seconds: f64,
    commands_per_s: f64,
    latency: LatencySummary,
    probes: ProbeBracket,
}

#[derive(Debug, Serialize)]
struct RaftReport {
    command: &'static str,
    quick: bool,
    nodes: u64,
    replication: Replication,
    preallocation: PreallocationArg,
    /// The disk's share of a commit, before and after the workloads.
    disk_floor: [QuorumFloor; 2],
    runs: Vec<RaftFigures>,
}

fn figures(
    store: &'static str,
    clients: u64,
    (commands, elapsed, recorder): (u64, Duration, LatencyRecorder),
    probes: ProbeBracket,
) -> RaftFigures {
    RaftFigures {
        store,
        clients,
        journals: Vec::new(),
        stages: Vec::new(),
        commands,
        seconds: round3(elapsed.as_secs_f64()),
        commands_per_s: (commands as f64 / elapsed.as_secs_f64()).round(),
        latency: recorder.summary(),
        probes,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// ringstore's raft shards, one per node, in `dir/node-N`.
type Driven = (u64, Duration, LatencyRecorder);

fn run_ringstore(
    dir: &Path,
    clients: u64,
    duration: Duration,
    replication: Replication,
    preallocation: PreallocationArg,
    stages: bool,
    inline_write_bytes_max: Option<u64>,
) -> Result<(Driven, Vec<NodeJournal>, Vec<NodeStages>)> {
    runtime()?.block_on(async {
        let domain = uuid::Uuid::new_v4();
        let mut stores = Vec::new();
        let mut logs = Vec::new();
        for id in 1..=NODES {
            let opened = ringstore::raft::open::<ClusterTypes, ClusterMachine>(
                dir.join(format!("node-{id}")),
                domain,
                id,
                ringstore::raft::Creation::IfMissing,
                Box::new(move |b| {
                    let b = b.preallocation(preallocation.into());
                    match inline_write_bytes_max {
                        Some(bytes) => b.inline_write_bytes_max(bytes),
                        None => b,
                    }
                }),
            )?;
            logs.push(opened.log.clone());
            stores.push(Some(opened));
        }
        // Each node's Raft on its shard's reactor (`ReactorRuntime`), as
        // the cluster's nodes run it, with its connections (on glommio's
        // sockets) and clients there too.
        let reactor = Host::Reactor(logs[0].clone());
        let cluster = Cluster::<ClusterTypes, _>::start_with(
            NODES,
            reactor,
            replication,
            |id, config, network| {
                let opened = stores[id as usize - 1].take();
                async move {
                    let opened = opened.ok_or_else(|| anyhow!("node {id} started twice"))?;
                    let host = Host::Reactor(opened.log.clone());
                    let raft = opened.start_raft(id, config, network).await?;
                    Ok((raft, host))
                }
            },
        )
        .await?;
        // The stream, topic and group the commands commit offsets to.
        let leader = cluster.leader()?;
        for (seq, command) in setup_commands().into_iter().enumerate() {
            let written = leader
                .client_write(Request {
                    client: u64::MAX,
                    seq: seq as u64 + 1,
                    command: ClusterCommand::Broker(command),
                })
                .await;
            if let Err(e) = written {
                // No node outlives the run.
                cluster.shutdown().await?;
                return Err(anyhow!("setup: {e}"));
            }
        }
        let mut before = Vec::new();
        for log in &logs {
            match log.journal_stats().await {
                Ok(stats) => before.push(stats),
                Err(e) => {
                    // No node outlives the run.
                    cluster.shutdown().await?;
                    return Err(e.into());
                }
            }
        }
        let result = cluster
            .drive(clients, duration, |client, seq| Request {
                client,
                seq,
                command: ClusterCommand::Broker(commit_offset(client as usize, seq)),
            })
            .await;
        let stages = if stages {
            stage_latencies(&cluster).await
        } else {
            Ok(Vec::new())
        };
        let mut journals = Vec::new();
        let mut stats_error = None;
        for ((node, log), before) in (1..).zip(&logs).zip(before) {
            let after = match log.journal_stats().await {
                Ok(after) => after,
                Err(e) => {
                    stats_error = Some(e);
                    break;
                }
            };
            journals.push(NodeJournal {
                node,
                entries: after.appends - before.appends,
                writes: after.writes - before.writes,
                inline_writes: after.inline_writes - before.inline_writes,
                batch_entries_max: after.batch_entries_max,
            });
        }
        drop(logs);
        // Shut down before reporting any error, so no node outlives the run.
        cluster.shutdown().await?;
        if let Some(e) = stats_error {
            return Err(e.into());
        }
        Ok((result?, journals, stages?))
    })
}

/// Each node's log-stage latencies, from openraft's runtime statistics.
async fn stage_latencies<SM: raft_peers::Machine<ClusterTypes>>(
    cluster: &Cluster<ClusterTypes, SM>,
) -> Result<Vec<NodeStages>> {
    let leader = cluster.leader_id()?;
    let mut nodes = Vec::new();
    for (&node, raft) in &cluster.rafts {
        let mut stats = raft
            .runtime_stats()
            .await
            .map_err(|e| anyhow!("node {node}'s runtime statistics: {e}"))?;
        stats.build_log_stage_histograms();
        nodes.push(NodeStages {
            node,
            leader: node == leader,
            stages: stats.log_stage_histograms.to_string(),
        });
    }
    Ok(nodes)
}

fn value(seq: u64) -> String {
    format!("{seq:0width$}", width = VALUE_BYTES)
}

/// openraft's in-memory reference store.
fn run_memstore(clients: u64, duration: Duration, replication: Replication) -> Result<Driven> {
    use raft_peers::mem::{log_store::LogStore, store::StateMachineStore};
    use raft_peers::types_kv::Request as Set;
    runtime()?.block_on(async {
        let stores = (0..NODES)
            .map(|_| (LogStore::default(), StateMachineStore::default()))
            .collect();
        let cluster = Cluster::<raft_peers::mem::TypeConfig, _>::start(stores, replication).await?;
        let result = cluster
            .drive(clients, duration, |client, seq| Set::Set {
                key: format!("partition-{}", client % PARTITIONS as u64),
                value: value(seq),
            })
            .await;
        cluster.shutdown().await?;
        result
    })
}

/// openraft's RocksDB-backed reference store (`log-rocks` and `sm-rocks`), one
/// database per node in `dir/node-N`.
#[cfg(feature = "rocksdb")]
fn run_rocksstore(
    dir: &Path,
    clients: u64,
    duration: Duration,
    replication: Replication,
) -> Result<Driven> {
    use raft_peers::rocks;
    use raft_peers::types_kv::Request as Set;
    runtime()?.block_on(async {
        let mut stores = Vec::new();
        for id in 1..=NODES {
            stores.push(rocks::new(dir.join(format!("node-{id}"))).await?);
        }
        let cluster = Cluster::<rocks::TypeConfig, _>::start(stores, replication).await?;
        let result = cluster
            .drive(clients, duration, |client, seq| Set::Set {
                key: format!("partition-{}", client % PARTITIONS as u64),
                value: value(seq),
            })
            .await;
        cluster.shutdown().await?;
        result
    })
}

/// The single-node engine: one shard of broker metadata, no replication.
fn run_engine(
    dir: &Path,
    clients: u64,
    duration: Duration,
    preallocation: PreallocationArg,
) -> Result<Driven> {
    let dir = dir.to_owned();
    on_reactor("rsb-raft-engine", move || async move {
        let shard = shard_builder_with(&dir, CheckpointPolicy::default(), preallocation)
            .open()
            .await?;
        prepare_topic(&shard).await?;
        let result = submit_for(&shard, clients as usize, duration).await?;
        shard.close().await?;
        Ok(result)
    })
}

/// Runs the comparison and prints the table and the JSON line.
pub fn run(args: &RaftArgs) -> Result<()> {
    let quick = args.common.quick;
    let duration = if quick { DURATION_QUICK } else { DURATION_FULL };
    let stores = if cfg!(feature = "rocksdb") { 4 } else { 3 };
    let mut harness = Harness::new(&args.common.dir, 3 + 2 * stores * args.clients.len() as u64)?;
    harness.step("the disk's floor of a commit, before the workloads");
    let floor_before = disk_floor(&harness, args.preallocation)?;
    let mut runs = Vec::new();
    for &clients in &args.clients {
        harness.step(format!("engine (1 node): {clients} clients"));
        let dir = harness.path("raft-engine");
        let result = run_engine(&dir, clients, duration, args.preallocation)
            .with_context(|| format!("the engine at {clients} clients"))?;
        runs.push(figures(
            "engine, 1 node",
            clients,
            result,
            harness.bracket()?,
        ));
        crate::harness::remove_path(&dir)?;

        harness.step(format!("ringstore: {clients} clients"));
        let dir = harness.path("raft-ringstore");
        let (result, journals, stages) = run_ringstore(
            &dir,
            clients,
            duration,
            args.replication,
            args.preallocation,
            args.stages,
            args.inline_write_bytes_max,
        )
        .with_context(|| format!("ringstore at {clients} clients"))?;
        let mut ringstore = figures("ringstore", clients, result, harness.bracket()?);
        ringstore.journals = journals;
        ringstore.stages = stages;
        runs.push(ringstore);
        crate::harness::remove_path(&dir)?;

        #[cfg(feature = "rocksdb")]
        {
            harness.step(format!("rocksstore: {clients} clients"));
            let dir = harness.path("raft-rocksstore");
            let result = run_rocksstore(&dir, clients, duration, args.replication)
                .with_context(|| format!("openraft's rocksstore at {clients} clients"))?;
            runs.push(figures(
                "openraft rocksstore",
                clients,
                result,
                harness.bracket()?,
            ));
            crate::harness::remove_path(&dir)?;
        }

        harness.step(format!("memstore: {clients} clients"));
        let result = run_memstore(clients, duration, args.replication)
            .with_context(|| format!("openraft's memstore at {clients} clients"))?;
        runs.push(figures(
            "openraft memstore",
            clients,
            result,
            harness.bracket()?,
        ));
    }
    harness.step("the disk's floor of a commit, after the workloads");
    let floor_after = disk_floor(&harness, args.preallocation)?;
    harness.finish(args.common.keep)?;
    let report = RaftReport {
        command: "raft",
        quick,
        nodes: NODES,
        replication: args.replication,
        preallocation: args.preallocation,
        disk_floor: [floor_before, floor_after],
        runs,
    };
    print_table(&report);
    println!(
        "{}",
        serde_json::to_string(&report).context("encode the report")?
    );
    Ok(())
}

/// What the one disk makes of a commit: [`NODES`] journals each making one
/// entry durable at once, in the blocks the nodes' journals write
/// (`--preallocation`), against one such write alone. Every node of the
/// cluster shares this machine's disk, so a commit's majority of writes
/// queue behind each other there; on a host per node they would not.
fn disk_floor(harness: &Harness, preallocation: PreallocationArg) -> Result<QuorumFloor> {
    let blocks = match preallocation {
        PreallocationArg::Fallocate => Blocks::Fresh,
        PreallocationArg::ZeroFill => Blocks::Written,
    };
    quorum_floor(
        harness.dir(),
        NODES as usize,
        blocks,
        DISK_FLOOR_ROUNDS_MAX,
        DISK_FLOOR_DURATION_MAX,
    )
}

fn print_table(report: &RaftReport) {
    let find = |store: &str, clients: u64| {
        report
            .runs
            .iter()
            .find(|r| r.store == store && r.clients == clients)
    };
    let mut table = Table::new([
        "store",
        "clients",
        "commands/s",
        "p50 us",
        "p99 us",
        "x rocksstore /s",
        "p50 x engine",
        "probe p50/mean us before -> after",
        "reliable",
    ]);
    for run in &report.runs {
        let rocks = find("openraft rocksstore", run.clients)
            .map(|r| fmt_ratio(run.commands_per_s / r.commands_per_s.max(f64::MIN_POSITIVE)))
            .unwrap_or_else(|| "-".into());
        let engine = find("engine, 1 node", run.clients)
            .map(|e| fmt_ratio(run.latency.p50_us / e.latency.p50_us.max(f64::MIN_POSITIVE)))
            .unwrap_or_else(|| "-".into());
        let [probes, _, reliable] = run.probes.cells();
        table.row([
            run.store.to_string(),
            run.clients.to_string(),
            fmt_num(run.commands_per_s),
            fmt_num(run.latency.p50_us),
            fmt_num(run.latency.p99_us),
            rocks,
            engine,
            probes,
            reliable,
        ]);
    }
    println!(
        "replication: {:?}; journal preallocation: {:?}",
        report.replication, report.preallocation
    );
    println!("{}", table.render());
    for (when, floor) in ["before", "after"].iter().zip(&report.disk_floor) {
        let kth: Vec<String> = floor
            .kth
            .iter()
            .map(|k| format!("{} us", fmt_num(k.p50_us)))
            .collect();
        println!(
            "disk floor of a commit {when} the workloads ({:?} blocks): one 4 KiB write + \
             fdatasync alone p50 {} us; {} at once, the k-th done (k = 1..{}) at p50 {}; \
             the majority's over one alone: {}",
            floor.blocks,
            fmt_num(floor.alone.p50_us),
            floor.files,
            floor.files,
            kth.join(", "),
            fmt_ratio(floor.majority_over_alone()),
        );
    }
    // How many entries each node's writes carried: whether the leader's
    // appends shared group commits (openraft 0.9's core waited for each
    // append to be durable before it took the next client write, so its
    // leader wrote one entry per write).
    for run in report.runs.iter().filter(|r| !r.journals.is_empty()) {
        let nodes: Vec<String> = run
            .journals
            .iter()
            .map(|j| {
                format!(
                    "node {}: {} entries in {} writes, {} inline (largest write since open {} records)",
                    j.node, j.entries, j.writes, j.inline_writes, j.batch_entries_max
                )
            })
            .collect();
        println!(
            "ringstore journals at {} clients: {}",
            run.clients,
            nodes.join("; ")
        );
    }
    for run in report.runs.iter().filter(|r| !r.stages.is_empty()) {
        println!(
            "ringstore log stages at {} clients (openraft's runtime statistics, \
             the newest entries each node saw, n of them; a follower's start at received):",
            run.clients
        );
        for node in &run.stages {
            let role = if node.leader { "leader" } else { "follower" };
            println!("node {} ({role}):\n{}", node.node, node.stages.trim_end());
        }
    }
}
