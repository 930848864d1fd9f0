//! `ringstore-bench device`: the device limits on their own, each bracketed
//! by durable-write probes. Useful to see which mode the disk is in and what
//! the journal figures will be divided by.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::device::{self, ProbeResult, SeqResult, PROBE_BLOCK_BYTES};
use crate::harness::{Harness, ProbeBracket};
use crate::report::{fmt_num, Table};

/// Bytes per raw sequential write; matches the journal's bulk entry size.
pub const SEQ_WRITE_BLOCK_BYTES: usize = 64 << 10;
/// Raw sequential writes in flight; matches the journal's bulk appender count.
pub const SEQ_WRITE_QUEUE_DEPTH: usize = 64;
/// Bytes per raw sequential read: with [`SEQ_READ_QUEUE_DEPTH`], 4 MiB in
/// flight, where this disk reads fastest (64 KiB x 64 to 4 MiB x 8 measured).
pub const SEQ_READ_BLOCK_BYTES: usize = 256 << 10;
/// Raw sequential reads in flight.
pub const SEQ_READ_QUEUE_DEPTH: usize = 16;
/// Bytes moved by each sequential pass in full mode.
pub const SEQ_BYTES_FULL: u64 = 1 << 30;
/// Bytes moved by each sequential pass in quick mode.
pub const SEQ_BYTES_QUICK: u64 = 256 << 20;

const MIB: u64 = 1 << 20;
const KIB: usize = 1 << 10;

/// Arguments shared by every command.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Directory for the benchmark's files; must be on the disk under test (not tmpfs).
    #[arg(long, default_value = "bench-data")]
    pub dir: PathBuf,
    /// Smaller sizes and shorter runs (about a minute in all).
    #[arg(long)]
    pub quick: bool,
    /// Keep the files the run wrote (they are removed by default).
    #[arg(long)]
    pub keep: bool,
}

/// Arguments of `ringstore-bench device`.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// MiB moved by each sequential pass [default: 1024, or 256 with --quick].
    #[arg(long)]
    pub total_mib: Option<u64>,
    /// KiB per sequential write.
    #[arg(long, default_value_t = SEQ_WRITE_BLOCK_BYTES / KIB)]
    pub write_block_kib: usize,
    /// Sequential writes in flight.
    #[arg(long, default_value_t = SEQ_WRITE_QUEUE_DEPTH)]
    pub write_queue_depth: usize,
    /// KiB per sequential read.
    #[arg(long, default_value_t = SEQ_READ_BLOCK_BYTES / KIB)]
    pub read_block_kib: usize,
    /// Sequential reads in flight.
    #[arg(long, default_value_t = SEQ_READ_QUEUE_DEPTH)]
    pub read_queue_depth: usize,
}

#[derive(Serialize)]
struct DeviceReport {
    command: &'static str,
    dir: String,
    quick: bool,
    seq_write: SeqResult,
    seq_write_probes: ProbeBracket,
    seq_read: SeqResult,
    seq_read_probes: ProbeBracket,
    /// The probe taken at start: the durable 4 KiB write+fdatasync figure.
    sync_write: ProbeResult,
}

/// Runs the device limits and prints a table, then the JSON line.
pub fn run(args: &DeviceArgs) -> Result<()> {
    let quick = args.common.quick;
    let total_bytes = args.total_mib.map(|mib| mib * MIB).unwrap_or(if quick {
        SEQ_BYTES_QUICK
    } else {
        SEQ_BYTES_FULL
    });
    let write_block_bytes = args.write_block_kib * KIB;
    let read_block_bytes = args.read_block_kib * KIB;
    anyhow::ensure!(
        (1..=crate::sys::QUEUE_DEPTH_MAX).contains(&args.write_queue_depth)
            && (1..=crate::sys::QUEUE_DEPTH_MAX).contains(&args.read_queue_depth),
        "queue depths must be within 1..={}",
        crate::sys::QUEUE_DEPTH_MAX
    );

    // Steps: set-up probe, write, probe, read, probe.
    let mut harness = Harness::new(&args.common.dir, 5)?;
    let sync_write = harness.last_probe().clone();
    let seq_path = harness.path("device-seq.dat");

    harness.step("raw sequential write");
    let seq_write = device::seq_write(
        &seq_path,
        total_bytes,
        write_block_bytes,
        args.write_queue_depth,
    )?;
    let seq_write_probes = harness.bracket()?;

    harness.step("raw sequential read");
    let seq_read = device::seq_read(
        &seq_path,
        total_bytes,
        read_block_bytes,
        args.read_queue_depth,
    )?;
    let seq_read_probes = harness.bracket()?;
    let dir = harness.dir().display().to_string();
    harness.finish(args.common.keep)?;

    let mut table = Table::new([
        "device limit",
        "value",
        "unit",
        ProbeBracket::CELL_HEADINGS[0],
        ProbeBracket::CELL_HEADINGS[1],
        ProbeBracket::CELL_HEADINGS[2],
    ]);
    let [probes, mode, reliable] = seq_write_probes.cells();
    table.row([
        format!(
            "seq write {} KiB x QD{} (+fdatasync)",
            seq_write.block_bytes / KIB,
            seq_write.queue_depth
        ),
        fmt_num(seq_write.mb_per_s),
        "MB/s".to_owned(),
        probes,
        mode,
        reliable,
    ]);
    let [probes, mode, reliable] = seq_read_probes.cells();
    table.row([
        format!(
            "seq read {} KiB x QD{}",
            seq_read.block_bytes / KIB,
            seq_read.queue_depth
        ),
        fmt_num(seq_read.mb_per_s),
        "MB/s".to_owned(),
        probes,
        mode,
        reliable,
    ]);
    let sync_row = |label: &str, value: f64, unit: &str| {
        [
            format!(
                "{} KiB write+fdatasync QD1 {label}",
                PROBE_BLOCK_BYTES / KIB
            ),
            fmt_num(value),
            unit.to_owned(),
            "-".to_owned(),
            sync_write.mode.to_owned(),
            "-".to_owned(),
        ]
    };
    table.row(sync_row("p50", sync_write.latency.p50_us, "us"));
    table.row(sync_row("p99", sync_write.latency.p99_us, "us"));
    table.row(sync_row("p999", sync_write.latency.p999_us, "us"));
    table.row(sync_row("rate", sync_write.ops_per_s, "ops/s"));

    println!(
        "ringstore-bench device (dir: {dir}, {} MiB per pass)",
        total_bytes / MIB
    );
    println!();
    print!("{}", table.render());
    let report = DeviceReport {
        command: "device",
        dir,
        quick,
        seq_write,
        seq_write_probes,
        seq_read,
        seq_read_probes,
        sync_write,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
