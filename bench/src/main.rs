//! `ringstore-bench`: ringstore's journal measured against the device it runs on.
//!
//! Every journal figure is printed as a ratio to a device limit measured in
//! the same run, on the same directory, minutes apart at most: this machine's
//! disk changes speed by 40x for minutes at a time, so a ratio to a limit
//! measured at another time would be noise. See `harness` for how each
//! workload is bracketed by probes and flagged when they disagree.
//!
//! Commands:
//! - `device`: the raw O_DIRECT io_uring limits alone.
//! - `journal`: the journal workloads of issue 2, each next to its device limit.
//!
//! stdout carries only the table and, as its last line, one JSON object;
//! progress goes to stderr.

#![deny(unsafe_code)]
#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cmd_device;
mod cmd_journal;
mod device;
mod harness;
mod latency;
mod report;
#[allow(unsafe_code)] // The one module with `unsafe`: io_uring submission and libc calls.
mod sys;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// ringstore's benchmarks: the journal against the device limit.
#[derive(Parser, Debug)]
#[command(name = "ringstore-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Raw O_DIRECT io_uring limits of the disk: sequential write and read
    /// bandwidth and the durable 4 KiB write latency.
    Device(cmd_device::DeviceArgs),
    /// The journal workloads of issue 2 (bulk, small entries at 1/16/256
    /// appenders, recovery), each as a ratio to the device limit beside it.
    Journal(cmd_journal::JournalArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Device(args) => cmd_device::run(args),
        Command::Journal(args) => cmd_journal::run(args),
    }
}
