//! The `ringstore` command-line tool.
//!
//! Every command works on a data directory (`--data-dir`, default
//! `./ringstore-data`): `<data-dir>/shard-000/`, `shard-001/`, ... each a
//! shard directory as `engine/FORMAT.md` lays it out. A single shard
//! directory (one holding `identity` or `journal/`) works as well.
//!
//! The inspection commands (`wal inspect|verify|dump`, `snapshot ...`) are
//! strictly read-only: plain `std::fs` reads, no locks, no O_DIRECT, so they
//! work on any filesystem and next to a running engine. Their logic lives in
//! the libraries (`ringstore_journal::inspect`,
//! `ringstore::snapshot::inspect`); this binary only formats. `wal salvage`
//! writes (`ringstore_journal::salvage`), under the shard's lock.
//!
//! Exit codes: 0 success; 1 damage found (see each command); 2 usage or
//! I/O error (bad flags, missing data dir, unreadable file, bad config).
//!
//! The engine's log goes to stderr, warnings and errors unless `RUST_LOG`
//! says otherwise (see `logging`); stdout carries only the command's output.
//!
//! Adding a command: a variant of [`Command`] whose payload is the
//! command family's own clap `Subcommand` or `Args`, a module with a
//! `run(&Context, ...) -> Result<Outcome, CliError>`, and one arm in
//! [`run`].

#![deny(missing_docs)]
#![deny(clippy::unwrap_used)]
#![forbid(unsafe_code)]

#[cfg(feature = "openraft")]
mod cluster;
mod config;
mod datadir;
mod demo;
mod logging;
mod output;
mod restore;
mod snapshot;
mod stress;
mod wal;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// ringstore: a thread-per-core storage engine. Run the demo, stress it and
/// check it, inspect and verify data directories.
#[derive(Debug, Parser)]
#[command(name = "ringstore", version)]
struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes (before or after the subcommand).
#[derive(Debug, clap::Args)]
struct GlobalArgs {
    /// The engine's data directory (holds shard-000/, shard-001/, ...), or
    /// one shard directory. Default: `data_dir` from --config, else
    /// ./ringstore-data.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Machine-readable output: one JSON document on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// A TOML config file: data_dir, [engine] shards, [checkpoint] ops_max
    /// and bytes_max, [demo] commands and clients, [object_store]. Unknown
    /// keys are refused.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// The main job on embedded defaults: start shards with the reference
    /// broker-metadata machine, run a mixed workload, checkpoint, shut down,
    /// restart, check the recovered state, print throughput, latency and
    /// recovery time.
    Demo(demo::DemoArgs),
    /// Write commands across shards until stopped (or --duration), appending
    /// each acknowledged command's id to --ack-log.
    Stress(stress::StressArgs),
    /// Reopen the data dir and confirm every id in --ack-log is present with
    /// the right content; exit 1 naming the first missing id otherwise.
    Check(stress::CheckArgs),
    /// The write-ahead log of each shard: inspect, verify, dump; salvage a
    /// journal that refuses to open.
    #[command(subcommand)]
    Wal(wal::WalCommand),
    /// The snapshot files of each shard.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Rebuild a lost shard (shard-NNN of the data dir) from the newest
    /// intact snapshot of its domain in object storage ([object_store] of
    /// --config; default: <data-dir>/object-store), with op numbers and
    /// epochs continuing above everything seen before.
    Restore(restore::RestoreArgs),
    /// The replicated broker-metadata cluster (openraft over ringstore):
    /// run a node, or a whole cluster on loopback with a workload.
    #[cfg(feature = "openraft")]
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

/// What every command gets.
#[derive(Debug)]
pub struct Context {
    /// The data directory, absolute.
    pub data_dir: PathBuf,
    /// `--json`.
    pub json: bool,
    /// The validated config (defaults if no --config).
    pub config: config::Config,
}

/// How a command ended when it could run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing wrong.
    Ok,
    /// It ran and found damage (exit code 1).
    Damaged,
}

impl Outcome {
    /// `Damaged` if `damaged`.
    pub fn from_damaged(damaged: bool) -> Outcome {
        if damaged {
            Outcome::Damaged
        } else {
            Outcome::Ok
        }
    }
}

/// A command could not run: bad usage, a missing directory, an I/O error
/// (exit code 2). The message names the file.
#[derive(Debug)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for CliError {
    fn from(e: E) -> CliError {
        CliError(e.to_string())
    }
}

/// Exit code when damage was found.
const EXIT_DAMAGED: u8 = 1;
/// Exit code for usage and I/O errors (also clap's for bad flags).
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    // Before the engine starts any thread, so that its warnings (a torn
    // tail cut, a full disk, a skipped snapshot) reach stderr.
    logging::init_logging();
    let cli = Cli::parse();
    match run(cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Damaged) => ExitCode::from(EXIT_DAMAGED),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(cli: Cli) -> Result<Outcome, CliError> {
    let config = match &cli.global.config {
        Some(path) => config::Config::load(path)?,
        None => config::Config::default(),
    };
    let data_dir = cli
        .global
        .data_dir
        .clone()
        .or_else(|| config.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(config::DATA_DIR_DEFAULT));
    let data_dir = std::path::absolute(&data_dir)
        .map_err(|e| CliError(format!("data dir {}: {e}", data_dir.display())))?;
    eprintln!("data dir: {}", data_dir.display());
    let context = Context {
        data_dir,
        json: cli.global.json,
        config,
    };
    match cli.command {
        Command::Demo(args) => demo::run(&context, args),
        Command::Stress(args) => stress::run_stress(&context, args),
        Command::Check(args) => stress::run_check(&context, args),
        Command::Wal(command) => wal::run(&context, command),
        Command::Snapshot(command) => snapshot::run(&context, command),
        Command::Restore(args) => restore::run(&context, args),
        #[cfg(feature = "openraft")]
        Command::Cluster(command) => cluster::run(&context, command),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
