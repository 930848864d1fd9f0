//! `ringstore-bench`: ringstore's journal measured against the device it runs
//! on and against the WALs users would pick instead.
//!
//! Every journal figure is printed as a ratio to a device limit measured in
//! the same run, on the same directory, minutes apart at most: this machine's
//! disk changes speed by 40x for minutes at a time, so a ratio to a limit
//! measured at another time would be noise. See `harness` for how each
//! workload is bracketed by probes and flagged when they disagree.
//!
//! Commands:
//! - `peers`: the side-by-side run (issue 8): ringstore, okaywal, fjall,
//!   RocksDB (cargo feature `rocksdb`), raft-engine, two plain-file logs and
//!   the device limit, the same workloads in interleaved rounds.
//! - `device`: the raw O_DIRECT io_uring limits alone.
//! - `journal`: the journal workloads of issue 2, each next to its device limit.
//! - `engine`: the engine's figures of issue 4 (a shard of broker metadata).
//!
//! stdout carries only the table and, as its last line, one JSON object;
//! progress goes to stderr.

#![deny(unsafe_code)]
#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cmd_device;
mod cmd_engine;
mod cmd_journal;
mod cmd_one_appender;
mod cmd_peers;
#[cfg(feature = "raft")]
mod cmd_raft;
mod cmd_recycle;
mod cmd_remote;
mod cmd_shards;
mod device;
mod harness;
mod latency;
mod peers;
mod plot;
#[cfg(feature = "raft")]
mod quorum_floor;
#[cfg(feature = "raft")]
mod raft_peers;
mod report;
#[allow(unsafe_code)] // The one module with `unsafe`: io_uring submission and libc calls.
mod sys;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// ringstore's benchmarks: the journal against the device limit and its peers.
#[derive(Parser, Debug)]
#[command(name = "ringstore-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// ringstore side by side with okaywal, fjall, RocksDB, raft-engine, plain
    /// files and the device limit: every workload, interleaved rounds, probes
    /// around every pass; a table, JSON results, a plot, and a JSON summary
    /// as the last line.
    Peers(cmd_peers::PeersArgs),
    /// Raw O_DIRECT io_uring limits of the disk: sequential write and read
    /// bandwidth and the durable 4 KiB write latency.
    Device(cmd_device::DeviceArgs),
    /// The journal workloads of issue 2 (bulk, small entries at 1/16/256
    /// appenders, recovery), each as a ratio to the device limit beside it.
    Journal(cmd_journal::JournalArgs),
    /// The engine's figures (issue 4): commands/s through a shard of broker
    /// metadata against the bare journal, snapshot write and load against
    /// the raw bandwidth, p99 ack latency during a checkpoint of a 1 GiB
    /// state, and the recovery time of 1 million ops.
    Engine(cmd_engine::EngineArgs),
    /// The multi-shard runtime (issue 5): commands/s with 1 and 2 shards in
    /// alternating rounds, through the client handle, and the restart time.
    Shards(cmd_shards::ShardsArgs),
    /// Snapshots in object storage (issue 7): upload and cold-restore MB/s
    /// of a 1 GiB state against an s3s-fs server on loopback and against
    /// LocalFileSystem, next to the disk's raw bandwidth.
    Remote(cmd_remote::RemoteArgs),
    /// A replicated cluster (issue 14): 3 openraft nodes on loopback on
    /// ringstore's raft shards, on openraft's in-memory and RocksDB-backed
    /// reference stores, and the single-node engine: commands/s and commit
    /// latency at each client level (needs the `raft` feature).
    #[cfg(feature = "raft")]
    Raft(cmd_raft::RaftArgs),
    /// One appender's durable write on every path the journal has (inline
    /// or through io_uring, O_DSYNC write or write + fdatasync, and the
    /// defaults), in rotating rounds, each next to the device probe, with
    /// CPU time and context switches per append (issue 16).
    OneAppender(cmd_one_appender::OneAppenderArgs),
    /// Retired segments recycled against new files (issue 16): sustained
    /// appends with a watermark keeping pace, alternating rounds, ack
    /// latency next to the device probe.
    Recycle(cmd_recycle::RecycleArgs),
    /// One workload on one system, in a child process of `peers` (prints one
    /// JSON result).
    #[command(hide = true)]
    PeerRun(peers::PeerRunArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Device(args) => cmd_device::run(args),
        Command::Journal(args) => cmd_journal::run(args),
        Command::Engine(args) => cmd_engine::run(args),
        Command::Shards(args) => cmd_shards::run(args),
        Command::Remote(args) => cmd_remote::run(args),
        #[cfg(feature = "raft")]
        Command::Raft(args) => cmd_raft::run(args),
        Command::Peers(args) => cmd_peers::run(args),
        Command::Recycle(args) => cmd_recycle::run(args),
        Command::OneAppender(args) => cmd_one_appender::run(args),
        Command::PeerRun(args) => peers::run_child(args),
    }
}
