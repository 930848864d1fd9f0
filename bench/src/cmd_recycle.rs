//! `ringstore-bench recycle`: sustained appends into a journal whose
//! watermark keeps pace with them (a broker checkpointing often), once with
//! retired segments recycled (`JournalBuilder::recycle_segments`, the
//! default) and once with every segment a new file, in alternating order
//! over several rounds, each pass bracketed by the device's durable-write
//! probe. Segments are small ([`RECYCLE_SEGMENT_BYTES`]), so a pass rolls
//! over and retires many of them.
//!
//! What recycling saves shows in the ack latency: a new segment's blocks
//! are unwritten extents (`Preallocation::Fallocate`, the default), which
//! the first fdatasync over each block converts and journals, or are
//! zero-filled in the background (`Preallocation::ZeroFill`), which competes
//! with the appends for the device. Every pass reads back a sample of its
//! acknowledged appends.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;
use ringstore_journal::Journal;
use serde::Serialize;

use crate::cmd_device::CommonArgs;
use crate::cmd_journal::{
    append_retrying, on_reactor, payload_template, set_stamp, verify_samples, DurabilityArg,
    PreallocationArg,
};
use crate::harness::{Harness, ProbeBracket};
use crate::latency::{LatencyRecorder, LatencySummary};
use crate::report::{fmt_num, fmt_ratio, Table};

/// Segment size of the journal under test: a rollover every few hundred
/// milliseconds at the fast disk's rate.
pub const RECYCLE_SEGMENT_BYTES: u64 = 16 << 20;
/// Ring slots of the journal under test.
const SLOT_COUNT: u64 = 1 << 16;
/// The watermark task runs this often...
const WATERMARK_INTERVAL: Duration = Duration::from_millis(10);
/// ...and leaves this many acknowledged ops above the watermark.
const WATERMARK_TRAIL_OPS: u64 = 256;
/// Largest payload the journal accepts.
const ENTRY_BYTES_MAX: u64 = 1 << 20;
/// Largest group-commit write.
const BATCH_BYTES_MAX: u64 = 4 << 20;
/// Acknowledged appends each task keeps to read back.
const SAMPLES_PER_TASK: usize = 64;

/// Arguments of `ringstore-bench recycle`.
#[derive(Args, Debug, Clone)]
pub struct RecycleArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Seconds per pass [default: 5, or 3 with --quick].
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Rounds, each one pass with recycling and one without [default: 3,
    /// or 1 with --quick].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Concurrent appenders.
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    /// Payload bytes per append.
    #[arg(long, default_value_t = 4000)]
    pub entry_bytes: usize,
    /// How new segments get their space (the journal's default: fallocate).
    #[arg(long, value_enum, default_value_t = PreallocationArg::Fallocate)]
    pub preallocation: PreallocationArg,
    /// How appends are made durable.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Auto)]
    pub durability: DurabilityArg,
}

/// What one pass measured.
#[derive(Clone, Debug, Serialize)]
struct Measured {
    recycle: bool,
    appends: u64,
    appends_per_s: f64,
    latency: LatencySummary,
    segments_created: u64,
    segments_recycled: u64,
    durability: String,
}

/// One pass and the probes around it.
#[derive(Clone, Debug, Serialize)]
struct Pass {
    #[serde(flatten)]
    measured: Measured,
    probes: ProbeBracket,
}

pub fn run(args: &RecycleArgs) -> Result<()> {
    let quick = args.common.quick;
    let seconds = args.seconds.unwrap_or(if quick { 3.0 } else { 5.0 });
    let rounds = args.rounds.unwrap_or(if quick { 1 } else { 3 });
    ensure!(
        seconds > 0.0 && rounds > 0,
        "--seconds and --rounds must be positive"
    );
    ensure!(args.writers > 0, "--writers must be positive");
    ensure!(
        (8..=ENTRY_BYTES_MAX as usize).contains(&args.entry_bytes),
        "--entry-bytes must be in 8..={ENTRY_BYTES_MAX}"
    );
    let mut harness = Harness::new(&args.common.dir, 1 + 3 * 2 * rounds as u64)?;
    let mut passes = Vec::new();
    for round in 0..rounds {
        // Alternating order: the second pass of a round runs on a disk the
        // first one has just written to.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for recycle in order {
            let name = format!("recycle-{round}-{}", if recycle { "on" } else { "off" });
            let dir = harness.path(&name);
            harness.step(format!("{name}: appending for {seconds} s"));
            let setup = Setup {
                dir: dir.clone(),
                recycle,
                writers: args.writers,
                entry_bytes: args.entry_bytes,
                duration: Duration::from_secs_f64(seconds),
                preallocation: args.preallocation,
                durability: args.durability,
            };
            let measured = run_pass(setup)?;
            crate::harness::remove_path(&dir)?;
            let probes = harness.bracket()?;
            passes.push(Pass { measured, probes });
        }
    }
    harness.finish(args.common.keep)?;
    print_report(args, seconds, &passes);
    Ok(())
}

struct Setup {
    dir: PathBuf,
    recycle: bool,
    writers: usize,
    entry_bytes: usize,
    duration: Duration,
    preallocation: PreallocationArg,
    durability: DurabilityArg,
}

fn run_pass(setup: Setup) -> Result<Measured> {
    on_reactor("rsb-recycle", move || async move {
        let journal = Journal::builder(&setup.dir)
            .slot_count(SLOT_COUNT)
            .segment_bytes(RECYCLE_SEGMENT_BYTES)
            .entry_bytes_max(ENTRY_BYTES_MAX)
            .batch_bytes_max(BATCH_BYTES_MAX)
            .durability(setup.durability.into())
            .preallocation(setup.preallocation.into())
            .recycle_segments(setup.recycle)
            .open()
            .await
            .with_context(|| format!("open journal in {}", setup.dir.display()))?;
        let durability = format!("{:?}", journal.durability_choice().chosen);
        let recorder = Rc::new(RefCell::new(LatencyRecorder::new()));
        let acked: Rc<Vec<Cell<u64>>> = Rc::new((0..setup.writers).map(|_| Cell::new(0)).collect());
        let done = Rc::new(Cell::new(false));
        let watermark_task = {
            let (journal, acked, done) = (journal.clone(), acked.clone(), done.clone());
            glommio::spawn_local(async move {
                let mut watermark = 0;
                while !done.get() {
                    glommio::timer::sleep(WATERMARK_INTERVAL).await;
                    // Every op at or below the lowest task's last ack is acked.
                    let floor = acked.iter().map(Cell::get).min().unwrap_or(0);
                    let target = floor.saturating_sub(WATERMARK_TRAIL_OPS);
                    if target > watermark {
                        journal
                            .advance_watermark(target)
                            .await
                            .with_context(|| format!("advance watermark to {target}"))?;
                        watermark = target;
                    }
                }
                anyhow::Ok(watermark)
            })
        };
        let started = Instant::now();
        let deadline = started + setup.duration;
        let tasks: Vec<_> = (0..setup.writers)
            .map(|task| {
                let (journal, recorder, acked) = (journal.clone(), recorder.clone(), acked.clone());
                glommio::spawn_local(async move {
                    let mut payload = payload_template(task, setup.entry_bytes);
                    let mut appended = 0u64;
                    let mut retries = 0;
                    // The last SAMPLES_PER_TASK acks: above the final watermark.
                    let mut samples = std::collections::VecDeque::new();
                    loop {
                        let stamp = (task as u64) << 32 | appended;
                        set_stamp(&mut payload, stamp);
                        let append_started = Instant::now();
                        let op = append_retrying(&journal, &payload, &mut retries).await?;
                        let now = Instant::now();
                        recorder.borrow_mut().record(now - append_started);
                        acked[task].set(op);
                        appended += 1;
                        if samples.len() == SAMPLES_PER_TASK {
                            samples.pop_front();
                        }
                        samples.push_back((task, op, stamp));
                        if now >= deadline {
                            break;
                        }
                    }
                    anyhow::Ok((appended, samples))
                })
            })
            .collect();
        let mut appends = 0;
        let mut samples = Vec::new();
        for task in tasks {
            let (appended, kept) = task.await?;
            appends += appended;
            samples.extend(kept);
        }
        let elapsed = started.elapsed();
        done.set(true);
        let watermark = watermark_task.await?;
        let stats = journal.stats();
        samples.retain(|&(_, op, _)| op > watermark);
        verify_samples(&journal, &samples, setup.entry_bytes).await?;
        journal.close().await.context("close journal")?;
        ensure!(
            stats.segments_retired > 0,
            "no segment was retired: the pass measured nothing"
        );
        ensure!(
            setup.recycle == (stats.segments_recycled > 0),
            "recycle {}: {} segments recycled ({stats:?})",
            setup.recycle,
            stats.segments_recycled
        );
        let latency = recorder.borrow().summary();
        Ok(Measured {
            recycle: setup.recycle,
            appends,
            appends_per_s: appends as f64 / elapsed.as_secs_f64(),
            latency,
            segments_created: stats.segments_created,
            segments_recycled: stats.segments_recycled,
            durability,
        })
    })
}

fn print_report(args: &RecycleArgs, seconds: f64, passes: &[Pass]) {
    println!(
        "recycle: {} writer(s), {} B payloads, {} s per pass, {} MiB segments, preallocation {:?}, durability {:?}",
        args.writers,
        args.entry_bytes,
        seconds,
        RECYCLE_SEGMENT_BYTES >> 20,
        args.preallocation,
        args.durability
    );
    let mut headings = vec![
        "pass",
        "recycle",
        "durability",
        "appends/s",
        "p50 us",
        "p99 us",
        "p999 us",
        "segments (recycled)",
    ];
    headings.extend(ProbeBracket::CELL_HEADINGS);
    let mut table = Table::new(headings);
    for (i, pass) in passes.iter().enumerate() {
        let mut row = vec![
            (i / 2).to_string(),
            if pass.measured.recycle { "on" } else { "off" }.to_string(),
            pass.measured.durability.clone(),
            fmt_num(pass.measured.appends_per_s),
            fmt_num(pass.measured.latency.p50_us),
            fmt_num(pass.measured.latency.p99_us),
            fmt_num(pass.measured.latency.p999_us),
            format!(
                "{} ({})",
                pass.measured.segments_created, pass.measured.segments_recycled
            ),
        ];
        row.extend(pass.probes.cells());
        table.row(row);
    }
    print!("{}", table.render());
    // Per round: recycled over new, and the recycled p50 over the probe's.
    for (round, pair) in passes.chunks(2).enumerate() {
        let (on, off) = if pair[0].measured.recycle {
            (&pair[0], &pair[1])
        } else {
            (&pair[1], &pair[0])
        };
        println!(
            "round {round}: recycled / new: appends/s {}, p50 {}, p99 {}, p999 {}; p50 / device probe p50: recycled {}, new {}",
            fmt_ratio(on.measured.appends_per_s / off.measured.appends_per_s),
            fmt_ratio(on.measured.latency.p50_us / off.measured.latency.p50_us),
            fmt_ratio(on.measured.latency.p99_us / off.measured.latency.p99_us),
            fmt_ratio(on.measured.latency.p999_us / off.measured.latency.p999_us),
            fmt_ratio(on.measured.latency.p50_us / on.probes.p50_us()),
            fmt_ratio(off.measured.latency.p50_us / off.probes.p50_us()),
        );
    }
    println!("{}", serde_json::json!({ "recycle": passes }));
}
