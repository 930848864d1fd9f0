//! `ringstore-bench one-appender`: every way the journal can make a single
//! appender's entry durable, in one run, each pass bracketed by the
//! device's durable-write probe (a 4 KiB O_DIRECT write linked to an
//! fdatasync in one io_uring submission, which is also what "linking write
//! and fsync" would cost at best):
//!
//! - **inline**: the group-commit write made with blocking system calls on
//!   the reactor thread (`JournalBuilder::inline_write_bytes_max`, the
//!   default for small writes), as an O_DSYNC write or as a write then
//!   `fdatasync`;
//! - **io_uring**: the same two through glommio's ring (inline writes off),
//!   where the `fdatasync` runs on a kernel worker thread and each
//!   completion comes back a reactor wake-up later;
//! - **default**: the journal's defaults (`Durability::Auto` picks one of
//!   the two durable writes by its probe at open; inline writes on).
//!
//! Rounds rotate the order. Besides the latency, each pass reports the
//! process's CPU time and context switches per append while the appender
//! ran (`getrusage`, every thread), the breakdown that tells the paths
//! apart: a blocking write sleeps in the
//! kernel once per append; through io_uring the reactor parks and is
//! woken per completion, and a worker thread runs the flush.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Result};
use clap::Args;
use serde::Serialize;

use crate::cmd_device::CommonArgs;
use crate::cmd_journal::{run_small, DurabilityArg, JournalShape, PreallocationArg, SmallResult};
use crate::harness::{remove_path, Harness, ProbeBracket};
use crate::report::{fmt_num, fmt_ratio, Table};

/// Seconds per pass in full mode.
const SECONDS_FULL: f64 = 5.0;
/// Seconds per pass in quick mode.
const SECONDS_QUICK: f64 = 2.0;
/// Rounds in full mode.
const ROUNDS_FULL: usize = 3;
/// Rounds in quick mode.
const ROUNDS_QUICK: usize = 1;

/// Arguments of `ringstore-bench one-appender`.
#[derive(Args, Debug, Clone)]
pub struct OneAppenderArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Seconds per pass [default: 5, or 2 with --quick].
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Rounds, each one pass of every path [default: 3, or 1 with --quick].
    #[arg(long)]
    pub rounds: Option<usize>,
}

/// One way of making the appender's entry durable.
#[derive(Clone, Copy, Debug, Serialize)]
struct WritePath {
    name: &'static str,
    durability: DurabilityArg,
    /// `None`: the journal's default (inline writes on).
    inline_write_bytes_max: Option<u64>,
}

/// Every path, in the first round's order.
const PATHS: [WritePath; 5] = [
    WritePath {
        name: "inline, O_DSYNC write",
        durability: DurabilityArg::WriteThrough,
        inline_write_bytes_max: None,
    },
    WritePath {
        name: "inline, write + fdatasync",
        durability: DurabilityArg::Sync,
        inline_write_bytes_max: None,
    },
    WritePath {
        name: "io_uring, O_DSYNC write",
        durability: DurabilityArg::WriteThrough,
        inline_write_bytes_max: Some(0),
    },
    WritePath {
        name: "io_uring, write + fdatasync",
        durability: DurabilityArg::Sync,
        inline_write_bytes_max: Some(0),
    },
    WritePath {
        name: "default (Auto, inline on)",
        durability: DurabilityArg::Auto,
        inline_write_bytes_max: None,
    },
];

/// What one pass measured.
#[derive(Debug, Serialize)]
struct Pass {
    round: usize,
    path: WritePath,
    result: SmallResult,
    probes: ProbeBracket,
}

impl Pass {
    fn ratio(&self) -> f64 {
        self.result.latency.p50_us / self.probes.p50_us()
    }
}

/// Runs `ringstore-bench one-appender`.
pub fn run(args: &OneAppenderArgs) -> Result<()> {
    let quick = args.common.quick;
    let seconds = args
        .seconds
        .unwrap_or(if quick { SECONDS_QUICK } else { SECONDS_FULL });
    ensure!(
        seconds.is_finite() && seconds > 0.0,
        "--seconds must be positive"
    );
    let rounds = args
        .rounds
        .unwrap_or(if quick { ROUNDS_QUICK } else { ROUNDS_FULL });
    ensure!(rounds > 0, "--rounds must be at least 1");
    let duration = Duration::from_secs_f64(seconds);
    let mut harness = Harness::new(&args.common.dir, 1 + 2 * (rounds * PATHS.len()) as u64)?;
    let dir: PathBuf = harness.path("one-appender");
    let mut passes = Vec::new();
    for round in 0..rounds {
        for i in 0..PATHS.len() {
            let path = PATHS[(i + round) % PATHS.len()];
            harness.step(format!("round {round}: {}", path.name));
            remove_path(&dir)?;
            let shape = JournalShape {
                // Written blocks, as the probe overwrites (and as recycled
                // segments are).
                preallocation: PreallocationArg::ZeroFill,
                durability: path.durability,
                inline_write_bytes_max: path.inline_write_bytes_max,
            };
            let result = run_small(dir.clone(), 1, duration, shape)?;
            let probes = harness.bracket()?;
            passes.push(Pass {
                round,
                path,
                result,
                probes,
            });
        }
    }
    remove_path(&dir)?;
    harness.finish(args.common.keep)?;
    print_report(seconds, &passes);
    Ok(())
}

fn print_report(seconds: f64, passes: &[Pass]) {
    println!("one appender, 256 B entries, {seconds} s per pass, zero-filled segments");
    let mut headings = vec![
        "round",
        "path",
        "durability",
        "p50 us",
        "p99 us",
        "p50 x probe",
        "inline writes",
        "CPU us/append",
        "switches/append",
    ];
    headings.extend(ProbeBracket::CELL_HEADINGS);
    let mut table = Table::new(headings);
    for pass in passes {
        let batches = pass.result.batches.max(1) as f64;
        let mut row = vec![
            pass.round.to_string(),
            pass.path.name.to_string(),
            pass.result.durability.clone(),
            fmt_num(pass.result.latency.p50_us),
            fmt_num(pass.result.latency.p99_us),
            fmt_ratio(pass.ratio()),
            format!("{:.0}%", 100.0 * pass.result.inline_writes as f64 / batches),
            format!("{:.1}", pass.result.cpu_us_per_entry),
            format!("{:.2}", pass.result.context_switches_per_entry),
        ];
        row.extend(pass.probes.cells());
        table.row(row);
    }
    print!("{}", table.render());
    // The median ratio of each path over the rounds; the fastest first.
    let mut medians: Vec<(&str, f64)> = PATHS
        .iter()
        .map(|path| {
            let ratios = passes
                .iter()
                .filter(|p| p.path.name == path.name)
                .map(Pass::ratio);
            (path.name, crate::cmd_journal::median(ratios))
        })
        .collect();
    medians.sort_by(|a, b| a.1.total_cmp(&b.1));
    let ranking: Vec<String> = medians
        .iter()
        .map(|(name, ratio)| format!("{name} {}", fmt_ratio(*ratio)))
        .collect();
    println!(
        "median p50 / device probe p50, fastest first: {}",
        ranking.join("; ")
    );
    println!("{}", serde_json::json!({ "one_appender": passes }));
}
