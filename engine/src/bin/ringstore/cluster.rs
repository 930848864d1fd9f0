//! `ringstore cluster`: the replicated broker-metadata cluster
//! (`ringstore::raft::cluster`) — one node as a process (`node`), or a
//! whole cluster on loopback with a client workload (`run`).

use crate::{CliError, Context, Outcome};
use clap::{Args, Subcommand};
use ringstore::raft::cluster::{
    node_status, run_node, run_workload, NodeId, NodeSettings, NodeStatus, WorkloadSettings,
    SNAPSHOT_EVERY_ENTRIES_MIN,
};
use ringstore::raft::linearizability::check_counter;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command as Process};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Node N of `run` serves its metrics on the base port + this + N.
const METRICS_PORT_OFFSET: u64 = 100;

/// Longest `run` waits for the cluster to elect a leader and agree.
const SETTLE_TIMEOUT_SECS: u64 = 30;

/// The cluster commands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Run one node in this process until stopped (Ctrl-C / SIGTERM). Its
    /// raft shard lives in --data-dir.
    Node(NodeArgs),
    /// Start a cluster of node processes on loopback (data in
    /// <data-dir>/node-N), run a client workload against it, check that
    /// the nodes agree and the counter history is linearizable, print the
    /// figures, stop the nodes.
    Run(RunArgs),
}

/// `cluster node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// This node's id.
    #[arg(long)]
    pub id: NodeId,
    /// The cluster's id (a UUID): a data dir of another cluster is refused.
    #[arg(long)]
    pub cluster: Uuid,
    /// A member as ID=ADDR (this node included); repeat per member.
    #[arg(long = "member", value_name = "ID=ADDR", value_parser = parse_member, required = true)]
    pub members: Vec<(NodeId, SocketAddr)>,
    /// This node's first start: create its raft shard in --data-dir. Every
    /// later start refuses a directory without it rather than start empty
    /// (an empty node has forgotten its vote and what it acknowledged), and
    /// refuses --new once the shard exists.
    #[arg(long)]
    pub new: bool,
    /// Form the cluster if this node has never been part of one.
    #[arg(long)]
    pub init: bool,
    /// If this node awaits repair below this term (its journal's tail was
    /// cut; its log and its status reply name the term), go on without: for
    /// a cluster whose nodes all lost power at once and all await repair.
    /// What the cut took is lost if it was acknowledged.
    #[arg(long, value_name = "TERM")]
    pub waive_repair: Option<u64>,
    /// Serve Prometheus metrics (text format) on this address.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Snapshot (and purge the log) every this many entries.
    #[arg(long, default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(SNAPSHOT_EVERY_ENTRIES_MIN..))]
    pub snapshot_every: u64,
}

/// `cluster run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// First port: node N listens on PORT + N, its metrics on PORT + 100 + N.
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// How long the workload runs, in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

fn parse_member(text: &str) -> Result<(NodeId, SocketAddr), String> {
    let (id, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected ID=ADDR, e.g. 1=127.0.0.1:7101"))?;
    let id = id.parse().map_err(|e| format!("node id {id:?}: {e}"))?;
    let addr = addr.parse().map_err(|e| format!("address {addr:?}: {e}"))?;
    Ok((id, addr))
}

/// Runs a cluster command.
pub fn run(context: &Context, command: ClusterCommand) -> Result<Outcome, CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match command {
        ClusterCommand::Node(args) => runtime.block_on(node(context, args)),
        ClusterCommand::Run(args) => runtime.block_on(run_cluster(context, args)),
    }
}

async fn node(context: &Context, args: NodeArgs) -> Result<Outcome, CliError> {
    if let Some(addr) = args.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| CliError(format!("metrics endpoint {addr}: {e}")))?;
    }
    let mut settings = NodeSettings::new(
        args.id,
        context.data_dir.clone(),
        args.cluster,
        args.members.into_iter().collect(),
    );
    settings.new_node = args.new;
    settings.initialize = args.init;
    settings.waive_repair_below_term = args.waive_repair;
    settings.snapshot_every_entries = args.snapshot_every;
    let stop = async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match terminate.as_mut() {
                    Some(signal) => { signal.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    };
    run_node(settings, stop).await?;
    Ok(Outcome::Ok)
}

/// The node processes of `cluster run`; dropping it stops them.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        // SIGTERM, so each node closes its journal cleanly (through the
        // `kill` tool: this crate has no unsafe code to call kill(2)).
        for child in &mut self.0 {
            let _ = Process::new("kill").arg(child.id().to_string()).status();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

async fn run_cluster(context: &Context, args: RunArgs) -> Result<Outcome, CliError> {
    if args.nodes == 0 || args.clients == 0 {
        return Err(CliError("--nodes and --clients must be at least 1".into()));
    }
    // Node N listens on base + N and serves metrics on base + 100 + N.
    let last_port = u64::from(args.base_port) + METRICS_PORT_OFFSET + args.nodes;
    if last_port > u64::from(u16::MAX) {
        return Err(CliError(format!(
            "--base-port {} with {} nodes needs ports up to {last_port}, above {}",
            args.base_port,
            args.nodes,
            u16::MAX
        )));
    }
    let exe = std::env::current_exe()?;
    let cluster = Uuid::new_v4();
    let members: BTreeMap<NodeId, SocketAddr> = (1..=args.nodes)
        .map(|id| {
            // In range: checked above.
            let port = args.base_port + id as u16;
            (id, SocketAddr::from(([127, 0, 0, 1], port)))
        })
        .collect();
    let mut children = Nodes(Vec::new());
    for &id in members.keys() {
        let dir: PathBuf = context.data_dir.join(format!("node-{id}"));
        let mut command = Process::new(&exe);
        command
            .arg("--data-dir")
            .arg(&dir)
            .args(["cluster", "node", "--id", &id.to_string()])
            .args(["--cluster", &cluster.to_string()])
            .args([
                "--metrics",
                &format!(
                    "127.0.0.1:{}",
                    u64::from(args.base_port) + METRICS_PORT_OFFSET + id
                ),
            ]);
        for (member, addr) in &members {
            command.arg("--member").arg(format!("{member}={addr}"));
        }
        // Each run forms a new cluster (a new id): every node starts new.
        command.arg("--new");
        if id == 1 {
            command.arg("--init");
        }
        children.0.push(command.spawn()?);
    }
    eprintln!(
        "cluster {cluster}: {} nodes on {:?}; metrics on 127.0.0.1:{}+N",
        args.nodes,
        members.values().collect::<Vec<_>>(),
        args.base_port as u64 + 100
    );
    let leader = wait_for_leader(&members).await?;
    eprintln!(
        "node {leader} leads; running {} clients for {} s",
        args.clients, args.seconds
    );
    let started = Instant::now();
    let outcome = run_workload(
        members.clone(),
        WorkloadSettings {
            clients: args.clients,
            duration: Duration::from_secs(args.seconds),
            ..Default::default()
        },
        1,
    )
    .await;
    let elapsed = started.elapsed();
    let statuses = wait_for_agreement(&members).await?;
    let final_value = statuses[0].counter;
    let summary = check_counter(&outcome.history, Some(final_value))
        .map_err(|v| CliError(format!("the counter history is not linearizable: {v}")))?;
    let mut latencies = outcome.write_latencies_us.clone();
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .copied()
    };
    let commands = outcome.write_latencies_us.len() as f64;
    println!(
        "{} nodes, {} clients, {:.1} s: {:.0} acknowledged writes/s; write latency p50 {} us, p99 {} us",
        args.nodes,
        args.clients,
        elapsed.as_secs_f64(),
        commands / elapsed.as_secs_f64(),
        pick(0.5).unwrap_or(0),
        pick(0.99).unwrap_or(0),
    );
    println!(
        "every node applied index {:?}, counter {final_value}, {} streams, state digest {:016x}; \
         history linearizable ({} adds acknowledged, {} reads checked)",
        statuses[0].applied_index,
        statuses[0].streams,
        statuses[0].digest,
        summary.adds_acknowledged,
        summary.reads_checked
    );
    if !outcome.rejected.is_empty() {
        return Err(CliError(format!(
            "{} commands were refused, e.g. {}",
            outcome.rejected.len(),
            outcome.rejected[0]
        )));
    }
    Ok(Outcome::Ok)
}

/// Waits until a node reports itself leader; returns it.
pub async fn wait_for_leader(members: &BTreeMap<NodeId, SocketAddr>) -> Result<NodeId, CliError> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(SETTLE_TIMEOUT_SECS) {
        for addr in members.values() {
            if let Ok(status) = node_status(*addr).await {
                if status.leader == Some(status.id) {
                    return Ok(status.id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(CliError(format!(
        "no leader within {SETTLE_TIMEOUT_SECS} s"
    )))
}

/// Waits until every node has applied the same index and reports the
/// same state; returns their statuses.
async fn wait_for_agreement(
    members: &BTreeMap<NodeId, SocketAddr>,
) -> Result<Vec<NodeStatus>, CliError> {
    let started = Instant::now();
    let mut last = Vec::new();
    while started.elapsed() < Duration::from_secs(SETTLE_TIMEOUT_SECS) {
        let mut statuses = Vec::new();
        for addr in members.values() {
            if let Ok(status) = node_status(*addr).await {
                statuses.push(status);
            }
        }
        let agree = statuses.len() == members.len()
            && statuses.windows(2).all(|w| {
                (w[0].applied_index, w[0].digest, w[0].counter)
                    == (w[1].applied_index, w[1].digest, w[1].counter)
            });
        if agree {
            return Ok(statuses);
        }
        last = statuses;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(CliError(format!(
        "the nodes did not agree within {SETTLE_TIMEOUT_SECS} s: {last:?}"
    )))
}
