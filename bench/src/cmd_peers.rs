//! `ringstore-bench peers`: ringstore side by side with the WALs users would
//! pick instead and with the device limit, in one run on one directory.
//!
//! The run is made of rounds. In each round every workload runs once on
//! every system, one after another, in an order rotated from round to round
//! (so no system always follows the same neighbour), and the durable-write
//! probe runs before and after each workload's pass. Each (system, workload)
//! runs in a fresh child process (see `peers`), which is how peak RSS is
//! measured per run.
//!
//! A figure is the median over rounds; a ratio is the median over rounds of
//! the ratio *within* a round (this disk switches between a fast and a slow
//! mode for minutes at a time, so only figures taken seconds apart compare).
//! A workload is flagged unreliable when the probes around any of its passes
//! disagree (see `harness`).
//!
//! Rounds: the small-record workloads (1, 16, 64, 256 writers) form one
//! pass each; the bulk, recovery and read-back workloads form a chain on the
//! same data (recovery reopens what bulk wrote, read-back reads it).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::cmd_device::CommonArgs;
use crate::harness::{remove_path, Harness, ProbeBracket, PROBE_AGREEMENT_RATIO_MAX};
use crate::peers::record::{BULK_RECORD_BYTES, SMALL_RECORD_BYTES};
use crate::peers::{parse_child_output, PeerName, RunKind, RunResult};
use crate::plot::{throughput_svg, Series};
use crate::report::{fmt_num, fmt_ratio, round3, Table};

/// Seconds of appending per small-record run, full mode.
const SMALL_SECONDS_FULL: f64 = 3.0;
/// Seconds of appending per small-record run, quick mode.
const SMALL_SECONDS_QUICK: f64 = 1.0;
/// Rounds of the small-record workloads, full mode.
const SMALL_ROUNDS_FULL: usize = 3;
/// Rounds of the small-record workloads, quick mode.
const SMALL_ROUNDS_QUICK: usize = 2;
/// Bulk bytes per system, full mode (the `recovery_1g` data set).
const BULK_BYTES_FULL: u64 = 1 << 30;
/// Bulk bytes per system, quick mode.
const BULK_BYTES_QUICK: u64 = 256 << 20;
/// Rounds of the bulk / recovery / read-back chain, full mode.
const BULK_ROUNDS_FULL: usize = 3;
/// Rounds of the bulk / recovery / read-back chain, quick mode.
const BULK_ROUNDS_QUICK: usize = 1;
/// A child that has not finished after this long is killed and the run fails.
const CHILD_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the parent looks at a running child.
const CHILD_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Bytes of a failed child's stderr shown in the error.
const CHILD_STDERR_TAIL_BYTES: usize = 4096;

/// Target: ringstore's records/s over the best peer's at 256 writers.
const TARGET_C256_OVER_BEST_PEER_MIN: f64 = 10.0;
/// Target: ringstore's bulk MB/s over the device limit.
const TARGET_BULK_OVER_DEVICE_MIN: f64 = 0.85;
/// Target: ringstore's 1-writer p50 over the raw 4 KiB write+fdatasync p50.
const TARGET_SINGLE_P50_OVER_DEVICE_MAX: f64 = 1.10;

const MIB: u64 = 1 << 20;

const _: () = assert!(BULK_BYTES_FULL.is_multiple_of(256 << 10));
const _: () = assert!(BULK_BYTES_QUICK.is_multiple_of(256 << 10));

/// Arguments of `ringstore-bench peers`.
#[derive(Args, Debug, Clone)]
pub struct PeersArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Systems to run, comma-separated [default: every one built in].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub peers: Vec<PeerName>,
    /// Rounds of the small-record workloads [default: 3, or 2 with --quick].
    #[arg(long)]
    pub small_rounds: Option<usize>,
    /// Seconds of appending per small-record run [default: 3, or 1 with --quick].
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Rounds of the bulk / recovery / read-back chain [default: 3, or 1 with --quick].
    #[arg(long)]
    pub bulk_rounds: Option<usize>,
    /// MiB each system writes in the bulk workload [default: 1024, or 256 with --quick].
    #[arg(long)]
    pub bulk_mib: Option<u64>,
    /// Directory for the JSON results and the plot.
    #[arg(long, default_value = "target/bench-results")]
    pub out: PathBuf,
}

/// One workload of the report.
#[derive(Clone, Copy, Debug)]
struct Workload {
    /// Name in the JSON line.
    name: &'static str,
    kind: RunKind,
    writers: usize,
    /// Unit of the headline figure.
    unit: &'static str,
    higher_is_better: bool,
}

impl Workload {
    fn small(name: &'static str, writers: usize, unit: &'static str, higher: bool) -> Self {
        Self {
            name,
            kind: RunKind::Small,
            writers,
            unit,
            higher_is_better: higher,
        }
    }

    /// The headline figure of `result`.
    fn headline(&self, result: &RunResult) -> f64 {
        match self.kind {
            RunKind::Small if self.writers == 1 => result
                .latency
                .as_ref()
                .map(|l| l.p50_us)
                .unwrap_or(f64::NAN),
            RunKind::Small => result.records_per_s,
            RunKind::Bulk | RunKind::Readback => result.mb_per_s,
            RunKind::Recovery => result.seconds,
        }
    }

    /// `a` over `b` oriented so that above 1 means `a` is better.
    fn advantage(&self, a: f64, b: f64) -> f64 {
        if self.higher_is_better {
            a / b
        } else {
            b / a
        }
    }

    fn describe(&self, bulk_bytes: u64) -> String {
        match self.kind {
            RunKind::Small if self.writers == 1 => format!(
                "{SMALL_RECORD_BYTES} B records, 1 writer, each durable before the next: p50 ack latency"
            ),
            RunKind::Small => format!(
                "{SMALL_RECORD_BYTES} B records, {} concurrent writers, each durable before its writer's next: records/s",
                self.writers
            ),
            RunKind::Bulk => format!(
                "{} KiB records, {} MiB, at least one sync per MiB: MB/s",
                BULK_RECORD_BYTES >> 10,
                bulk_bytes / MIB
            ),
            RunKind::Recovery => format!(
                "open after writing {} MiB (pages dropped): seconds",
                bulk_bytes / MIB
            ),
            RunKind::Readback => format!(
                "read back all {} MiB in order (pages dropped), every byte checked: MB/s",
                bulk_bytes / MIB
            ),
        }
    }
}

/// The workloads, in report order.
fn workloads() -> [Workload; 7] {
    [
        Workload::small("single_256", 1, "us", false),
        Workload::small("concurrent_256_c16", 16, "records/s", true),
        Workload::small("concurrent_256_c64", 64, "records/s", true),
        Workload::small("concurrent_256_c256", 256, "records/s", true),
        Workload {
            name: "bulk_64k",
            kind: RunKind::Bulk,
            writers: 1,
            unit: "MB/s",
            higher_is_better: true,
        },
        Workload {
            name: "recovery_1g",
            kind: RunKind::Recovery,
            writers: 1,
            unit: "s",
            higher_is_better: false,
        },
        Workload {
            name: "readback",
            kind: RunKind::Readback,
            writers: 1,
            unit: "MB/s",
            higher_is_better: true,
        },
    ]
}

/// One pass of one workload: every system once, between two probes.
#[derive(Clone, Debug, Serialize)]
struct Pass {
    round: usize,
    /// Systems in the order they ran.
    order: Vec<PeerName>,
    results: Vec<RunResult>,
    probes: ProbeBracket,
}

impl Pass {
    fn get(&self, peer: PeerName) -> Option<&RunResult> {
        self.results.iter().find(|r| r.peer == peer)
    }
}

/// Per-system summary of one workload over its rounds.
#[derive(Clone, Debug, Serialize)]
struct SystemSummary {
    peer: PeerName,
    /// Median over rounds of the headline figure.
    value: f64,
    /// Median over rounds of the within-round ratio to the device limit
    /// (value / device; for seconds, device / value would read as "share of
    /// the device", so this is the plain value / device quotient).
    over_device: Option<f64>,
    /// Median over rounds of the within-round advantage over the best peer
    /// of that round (above 1: better than every peer).
    over_best_peer: Option<f64>,
    records_per_s: f64,
    mb_per_s: f64,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    p999_us: Option<f64>,
    bytes_on_disk: u64,
    peak_rss_bytes: u64,
    syncs: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
struct WorkloadReport {
    name: &'static str,
    kind: RunKind,
    writers: usize,
    description: String,
    unit: &'static str,
    higher_is_better: bool,
    /// Every pass's probes agreed.
    reliable: bool,
    systems: Vec<SystemSummary>,
    /// The peer with the best median headline figure.
    best_peer: Option<PeerName>,
    passes: Vec<Pass>,
}

impl WorkloadReport {
    fn system(&self, peer: PeerName) -> Option<&SystemSummary> {
        self.systems.iter().find(|s| s.peer == peer)
    }
}

#[derive(Serialize)]
struct Target {
    name: &'static str,
    workload: &'static str,
    want: String,
    measured: f64,
    met: bool,
}

#[derive(Serialize)]
struct FullReport {
    command: &'static str,
    quick: bool,
    dir: String,
    small_seconds: f64,
    small_rounds: usize,
    bulk_bytes: u64,
    bulk_rounds: usize,
    wall_seconds: f64,
    /// `/proc/loadavg` at the start and at the end: the machine's CPU load
    /// from others (ringstore's reactor is CPU-bound at high concurrency).
    loadavg_start: String,
    loadavg_end: String,
    systems: Vec<PeerName>,
    workloads: Vec<WorkloadReport>,
    targets: Vec<Target>,
}

/// Launches child runs of this binary.
struct Launcher {
    exe: PathBuf,
    stderr_path: PathBuf,
}

impl Launcher {
    fn run(
        &self,
        peer: PeerName,
        kind: RunKind,
        dir: &Path,
        extra: &[(&str, String)],
    ) -> Result<RunResult> {
        let stderr = std::fs::File::create(&self.stderr_path)
            .with_context(|| format!("create {}", self.stderr_path.display()))?;
        let mut command = Command::new(&self.exe);
        command
            .arg("peer-run")
            .arg("--peer")
            .arg(peer.label())
            .arg("--kind")
            .arg(kind_arg(kind))
            .arg("--dir")
            .arg(dir);
        for (flag, value) in extra {
            command.arg(flag).arg(value);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("start {}", self.exe.display()))?;
        let mut stdout = child.stdout.take().context("child stdout")?;
        // The child prints one JSON line; read it on a thread so a chatty
        // child can never block on a full pipe while we wait for it.
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            stdout.read_to_string(&mut text).map(|_| text)
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().context("wait for child")? {
                break status;
            }
            if started.elapsed() > CHILD_TIMEOUT {
                // Our own child, by its handle.
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} {:?} did not finish within {:?}",
                    peer.label(),
                    kind,
                    CHILD_TIMEOUT
                );
            }
            std::thread::sleep(CHILD_POLL_INTERVAL);
        };
        let stdout = reader
            .join()
            .map_err(|_| anyhow!("stdout reader panicked"))?
            .context("read child stdout")?;
        if !status.success() {
            let mut tail = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
            if tail.len() > CHILD_STDERR_TAIL_BYTES {
                let cut = tail.len() - CHILD_STDERR_TAIL_BYTES;
                let cut = (cut..tail.len())
                    .find(|&i| tail.is_char_boundary(i))
                    .unwrap_or(cut);
                tail = tail.split_off(cut);
            }
            bail!(
                "{} {:?} failed ({status}):\n{}",
                peer.label(),
                kind,
                tail.trim_end()
            );
        }
        let mut result = parse_child_output(&stdout)?;
        result.child_wall_seconds = started.elapsed().as_secs_f64();
        Ok(result)
    }
}

fn kind_arg(kind: RunKind) -> &'static str {
    match kind {
        RunKind::Small => "small",
        RunKind::Bulk => "bulk",
        RunKind::Recovery => "recovery",
        RunKind::Readback => "readback",
    }
}

/// `systems` rotated left by `round` places.
fn rotated(systems: &[PeerName], round: usize) -> Vec<PeerName> {
    let mut order = systems.to_vec();
    if !order.is_empty() {
        let by = round % order.len();
        order.rotate_left(by);
    }
    order
}

/// Median (mean of the middle two for an even count); NaN when empty.
fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    crate::cmd_journal::median(values.into_iter().filter(|v| !v.is_nan()))
}

/// Summarises one workload's passes.
fn summarise(
    workload: Workload,
    bulk_bytes: u64,
    systems: &[PeerName],
    passes: Vec<Pass>,
) -> WorkloadReport {
    let mut summaries = Vec::new();
    for &peer in systems {
        let results: Vec<&RunResult> = passes.iter().filter_map(|p| p.get(peer)).collect();
        if results.is_empty() {
            continue;
        }
        let mut over_device = Vec::new();
        let mut over_best = Vec::new();
        for pass in &passes {
            let Some(mine) = pass.get(peer) else { continue };
            let value = workload.headline(mine);
            if let Some(device) = pass.get(PeerName::Device) {
                if peer != PeerName::Device {
                    over_device.push(value / workload.headline(device));
                }
            }
            let best = pass
                .results
                .iter()
                .filter(|r| r.peer.is_peer())
                .map(|r| workload.headline(r))
                .filter(|v| !v.is_nan())
                .reduce(|a, b| {
                    if workload.advantage(a, b) >= 1.0 {
                        a
                    } else {
                        b
                    }
                });
            if let Some(best) = best {
                over_best.push(workload.advantage(value, best));
            }
        }
        let latency = |pick: fn(&crate::latency::LatencySummary) -> f64| {
            let values: Vec<f64> = results
                .iter()
                .filter_map(|r| r.latency.as_ref().map(pick))
                .collect();
            (!values.is_empty()).then(|| median(values))
        };
        let syncs: Vec<f64> = results
            .iter()
            .filter_map(|r| r.syncs.map(|s| s as f64))
            .collect();
        summaries.push(SystemSummary {
            peer,
            value: median(results.iter().map(|r| workload.headline(r))),
            over_device: (!over_device.is_empty()).then(|| median(over_device)),
            over_best_peer: (!over_best.is_empty()).then(|| median(over_best)),
            records_per_s: median(results.iter().map(|r| r.records_per_s)),
            mb_per_s: median(results.iter().map(|r| r.mb_per_s)),
            p50_us: latency(|l| l.p50_us),
            p99_us: latency(|l| l.p99_us),
            p999_us: latency(|l| l.p999_us),
            bytes_on_disk: median(results.iter().map(|r| r.bytes_on_disk as f64)) as u64,
            peak_rss_bytes: median(results.iter().map(|r| r.peak_rss_bytes as f64)) as u64,
            syncs: (!syncs.is_empty()).then(|| median(syncs) as u64),
        });
    }
    let best_peer = summaries
        .iter()
        .filter(|s| s.peer.is_peer() && !s.value.is_nan())
        .reduce(|a, b| {
            if workload.advantage(a.value, b.value) >= 1.0 {
                a
            } else {
                b
            }
        })
        .map(|s| s.peer);
    WorkloadReport {
        name: workload.name,
        kind: workload.kind,
        writers: workload.writers,
        description: workload.describe(bulk_bytes),
        unit: workload.unit,
        higher_is_better: workload.higher_is_better,
        reliable: passes.iter().all(|p| p.probes.reliable),
        systems: summaries,
        best_peer,
        passes,
    }
}

/// Runs every workload on every system and prints the table, then the JSON line.
pub fn run(args: &PeersArgs) -> Result<()> {
    let wall = Instant::now();
    let loadavg_start = loadavg();
    let quick = args.common.quick;
    let small_seconds = args.seconds.unwrap_or(if quick {
        SMALL_SECONDS_QUICK
    } else {
        SMALL_SECONDS_FULL
    });
    let small_rounds = args.small_rounds.unwrap_or(if quick {
        SMALL_ROUNDS_QUICK
    } else {
        SMALL_ROUNDS_FULL
    });
    let bulk_rounds = args.bulk_rounds.unwrap_or(if quick {
        BULK_ROUNDS_QUICK
    } else {
        BULK_ROUNDS_FULL
    });
    let bulk_bytes = args.bulk_mib.map(|mib| mib * MIB).unwrap_or(if quick {
        BULK_BYTES_QUICK
    } else {
        BULK_BYTES_FULL
    });
    anyhow::ensure!(
        bulk_bytes > 0 && bulk_bytes.is_multiple_of(256 << 10),
        "bulk size must be a positive multiple of 256 KiB"
    );
    anyhow::ensure!(small_rounds >= 1 && bulk_rounds >= 1, "at least one round");
    let systems: Vec<PeerName> = if args.peers.is_empty() {
        [
            PeerName::Device,
            PeerName::Ringstore,
            PeerName::Okaywal,
            PeerName::Fjall,
            PeerName::Rocksdb,
            PeerName::RaftEngine,
            PeerName::FileSync,
            PeerName::FileGroup,
        ]
        .into_iter()
        .filter(|p| p.available())
        .collect()
    } else {
        for peer in &args.peers {
            anyhow::ensure!(
                peer.available(),
                "{} is not built in: build with --features rocksdb",
                peer.label()
            );
        }
        args.peers.clone()
    };
    let bulk_systems: Vec<PeerName> = systems.iter().copied().filter(|p| p.runs_bulk()).collect();

    let small_workloads: Vec<Workload> = workloads()
        .into_iter()
        .filter(|w| w.kind == RunKind::Small)
        .collect();
    let step_count = 1
        + (small_rounds * small_workloads.len() * (systems.len() + 1)) as u64
        + (bulk_rounds * 3 * (bulk_systems.len() + 1)) as u64;
    let mut harness = Harness::new(&args.common.dir, step_count)?;
    let launcher = Launcher {
        exe: std::env::current_exe().context("find this executable")?,
        stderr_path: harness.path("child-stderr.log"),
    };
    let seconds_arg = format!("{small_seconds}");
    let mut passes: BTreeMap<&'static str, Vec<Pass>> = BTreeMap::new();

    // Small records: each round runs every writer count on every system.
    for round in 1..=small_rounds {
        for workload in &small_workloads {
            let order = rotated(&systems, round - 1);
            let mut results = Vec::with_capacity(order.len());
            for &peer in &order {
                harness.step(format!(
                    "round {round}/{small_rounds} {}: {}",
                    workload.name,
                    peer.label()
                ));
                let dir = harness.path(&format!("{}-{}", peer.label(), workload.name));
                remove_path(&dir)?;
                let result = launcher.run(
                    peer,
                    RunKind::Small,
                    &dir,
                    &[
                        ("--writers", workload.writers.to_string()),
                        ("--seconds", seconds_arg.clone()),
                    ],
                )?;
                remove_path(&dir)?;
                results.push(result);
            }
            let probes = harness.bracket()?;
            passes.entry(workload.name).or_default().push(Pass {
                round,
                order,
                results,
                probes,
            });
        }
    }

    // Bulk, then recovery and read-back of what bulk wrote.
    for round in 1..=bulk_rounds {
        let order = rotated(&bulk_systems, round - 1);
        let dirs: BTreeMap<PeerName, PathBuf> = order
            .iter()
            .map(|&p| (p, harness.path(&format!("{}-bulk", p.label()))))
            .collect();
        let mut records: BTreeMap<PeerName, u64> = BTreeMap::new();
        for workload in workloads().into_iter().filter(|w| w.kind != RunKind::Small) {
            let mut results = Vec::with_capacity(order.len());
            for &peer in &order {
                harness.step(format!(
                    "round {round}/{bulk_rounds} {}: {}",
                    workload.name,
                    peer.label()
                ));
                let dir = &dirs[&peer];
                let extra = match workload.kind {
                    RunKind::Bulk => {
                        remove_path(dir)?;
                        vec![("--bytes", bulk_bytes.to_string())]
                    }
                    _ => vec![(
                        "--records",
                        records
                            .get(&peer)
                            .copied()
                            .ok_or_else(|| anyhow!("{} wrote no bulk data", peer.label()))?
                            .to_string(),
                    )],
                };
                let result = launcher.run(peer, workload.kind, dir, &extra)?;
                if workload.kind == RunKind::Bulk {
                    records.insert(peer, result.records);
                }
                results.push(result);
            }
            let probes = harness.bracket()?;
            passes.entry(workload.name).or_default().push(Pass {
                round,
                order: order.clone(),
                results,
                probes,
            });
        }
        for dir in dirs.values() {
            remove_path(dir)?;
        }
    }
    let dir = harness.dir().display().to_string();
    harness.finish(args.common.keep)?;

    let reports: Vec<WorkloadReport> = workloads()
        .into_iter()
        .map(|w| {
            let list = passes.remove(w.name).unwrap_or_default();
            let systems = if w.kind == RunKind::Small {
                &systems
            } else {
                &bulk_systems
            };
            summarise(w, bulk_bytes, systems, list)
        })
        .collect();
    let targets = evaluate_targets(&reports);
    let report = FullReport {
        command: "peers",
        quick,
        dir,
        small_seconds,
        small_rounds,
        bulk_bytes,
        bulk_rounds,
        wall_seconds: wall.elapsed().as_secs_f64(),
        loadavg_start,
        loadavg_end: loadavg(),
        systems: systems.clone(),
        workloads: reports,
        targets,
    };

    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let json_path = args.out.join("peers.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("write {}", json_path.display()))?;
    let plot_path = args.out.join("throughput.svg");
    draw_plot(&report, &plot_path)?;

    print!("{}", render(&report));
    println!("results: {}", json_path.display());
    println!("plot:    {}", plot_path.display());
    println!("{}", serde_json::to_string(&summary_line(&report))?);
    Ok(())
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn evaluate_targets(reports: &[WorkloadReport]) -> Vec<Target> {
    let mut targets = Vec::new();
    for report in reports {
        if let Some(ringstore) = report.system(PeerName::Ringstore) {
            if let Some(advantage) = ringstore.over_best_peer {
                targets.push(Target {
                    name: "ahead of every peer",
                    workload: report.name,
                    want: "> 1.00x the best peer".to_owned(),
                    measured: round3(advantage),
                    met: advantage > 1.0,
                });
            }
        }
    }
    let find = |name: &str| reports.iter().find(|r| r.name == name);
    let ringstore = |name: &str| find(name).and_then(|r| r.system(PeerName::Ringstore));
    if let Some(c256) = ringstore("concurrent_256_c256").and_then(|s| s.over_best_peer) {
        targets.push(Target {
            name: "10x the best peer at 256 writers",
            workload: "concurrent_256_c256",
            want: format!(">= {TARGET_C256_OVER_BEST_PEER_MIN:.1}x"),
            measured: round3(c256),
            met: c256 >= TARGET_C256_OVER_BEST_PEER_MIN,
        });
    }
    if let Some(bulk) = ringstore("bulk_64k").and_then(|s| s.over_device) {
        targets.push(Target {
            name: "bulk near the device limit",
            workload: "bulk_64k",
            want: format!(">= {TARGET_BULK_OVER_DEVICE_MIN:.2}x device"),
            measured: round3(bulk),
            met: bulk >= TARGET_BULK_OVER_DEVICE_MIN,
        });
    }
    if let Some(single) = ringstore("single_256").and_then(|s| s.over_device) {
        targets.push(Target {
            name: "1-writer p50 near raw write+fdatasync",
            workload: "single_256",
            want: format!("<= {TARGET_SINGLE_P50_OVER_DEVICE_MAX:.2}x device"),
            measured: round3(single),
            met: single <= TARGET_SINGLE_P50_OVER_DEVICE_MAX,
        });
    }
    targets
}

/// The last line: `{"workloads": {NAME: {...}}}`.
fn summary_line(report: &FullReport) -> serde_json::Value {
    let mut workloads = serde_json::Map::new();
    for w in &report.workloads {
        let value = |peer: PeerName| {
            w.system(peer)
                .map(|s| serde_json::json!(round3(s.value)))
                .unwrap_or(serde_json::Value::Null)
        };
        let best = w.best_peer;
        workloads.insert(
            w.name.to_owned(),
            serde_json::json!({
                "unit": w.unit,
                "higher_is_better": w.higher_is_better,
                "ringstore": value(PeerName::Ringstore),
                "best_peer": best.map(value).unwrap_or(serde_json::Value::Null),
                "best_peer_name": best.map(PeerName::label),
                "device_limit": value(PeerName::Device),
            }),
        );
    }
    serde_json::json!({ "workloads": workloads })
}

fn draw_plot(report: &FullReport, path: &Path) -> Result<()> {
    let mut series = Vec::new();
    for &peer in &report.systems {
        let points: Vec<(f64, f64)> = report
            .workloads
            .iter()
            .filter(|w| w.kind == RunKind::Small)
            .filter_map(|w| Some((w.writers as f64, w.system(peer)?.records_per_s)))
            .collect();
        if points.is_empty() {
            continue;
        }
        series.push(Series {
            name: if peer == PeerName::Device {
                "device limit (N records per O_DIRECT write+fdatasync)".to_owned()
            } else {
                peer.label().to_owned()
            },
            points,
            reference: peer == PeerName::Device,
        });
    }
    let title = format!(
        "Durable {SMALL_RECORD_BYTES} B records/s against writers (median of {} rounds, {} s each{})",
        report.small_rounds,
        report.small_seconds,
        if report.quick { ", quick mode" } else { "" }
    );
    throughput_svg(path, &title, &series)
}

fn opt(value: Option<f64>, format: fn(f64) -> String) -> String {
    value
        .filter(|v| !v.is_nan())
        .map(format)
        .unwrap_or_else(|| "-".to_owned())
}

fn fmt_mib(bytes: u64) -> String {
    fmt_num(bytes as f64 / MIB as f64)
}

fn render(report: &FullReport) -> String {
    let mut out = format!(
        "ringstore-bench peers ({} mode, dir: {}; small records: {} rounds x {} s; bulk chain: {} \
         rounds x {} MiB; {:.0} s in all; load average {} at start, {} at end on {} CPUs)\n",
        if report.quick { "quick" } else { "full" },
        report.dir,
        report.small_rounds,
        report.small_seconds,
        report.bulk_rounds,
        report.bulk_bytes / MIB,
        report.wall_seconds,
        report.loadavg_start,
        report.loadavg_end,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    out.push_str(
        "Figures are medians over rounds; 'x device' and 'x best peer' are medians of the \
         ratios within each round\n('x best peer' above 1.00x: better than every peer that \
         round; 'x device' is value / device limit).\n",
    );
    for w in &report.workloads {
        out.push_str(&format!(
            "\n{} — {} ({}, {}); reliable: {}\n",
            w.name,
            w.description,
            w.unit,
            if w.higher_is_better {
                "higher is better"
            } else {
                "lower is better"
            },
            if w.reliable { "yes" } else { "NO" },
        ));
        for pass in &w.passes {
            let [probes, mode, reliable] = pass.probes.cells();
            out.push_str(&format!(
                "  round {}: probe p50/mean us {probes} ({mode}), reliable: {reliable}\n",
                pass.round
            ));
        }
        let mut table = Table::new([
            "system",
            w.unit,
            "x device",
            "x best peer",
            "records/s",
            "MB/s",
            "p50 us",
            "p99 us",
            "p999 us",
            "on disk MiB",
            "peak RSS MiB",
            "syncs",
        ]);
        let mut systems = w.systems.clone();
        systems.sort_by(|a, b| {
            let rank = |p: PeerName| match p {
                PeerName::Device => 0,
                PeerName::Ringstore => 1,
                _ => 2,
            };
            rank(a.peer).cmp(&rank(b.peer)).then_with(|| {
                let (x, y) = if w.higher_is_better {
                    (b.value, a.value)
                } else {
                    (a.value, b.value)
                };
                x.total_cmp(&y)
            })
        });
        for s in &systems {
            let name = if Some(s.peer) == w.best_peer {
                format!("{} (best peer)", s.peer.label())
            } else {
                s.peer.label().to_owned()
            };
            table.row([
                name,
                fmt_num(s.value),
                opt(s.over_device, fmt_ratio),
                opt(s.over_best_peer, fmt_ratio),
                fmt_num(s.records_per_s),
                fmt_num(s.mb_per_s),
                opt(s.p50_us, fmt_num),
                opt(s.p99_us, fmt_num),
                opt(s.p999_us, fmt_num),
                fmt_mib(s.bytes_on_disk),
                fmt_mib(s.peak_rss_bytes),
                s.syncs
                    .map(|v| fmt_num(v as f64))
                    .unwrap_or_else(|| "-".to_owned()),
            ]);
        }
        out.push_str(&table.render());
    }
    out.push_str("\nTargets\n");
    let mut table = Table::new(["target", "workload", "want", "measured", "met"]);
    for t in &report.targets {
        table.row([
            t.name.to_owned(),
            t.workload.to_owned(),
            t.want.clone(),
            fmt_ratio(t.measured),
            if t.met { "yes" } else { "NO" }.to_owned(),
        ]);
    }
    out.push_str(&table.render());
    out.push_str(&format!(
        "all workloads reliable (probes before and after every pass saw one disk mode, p50s \
         and means within {PROBE_AGREEMENT_RATIO_MAX}x): {}\n",
        if report.workloads.iter().all(|w| w.reliable) {
            "yes"
        } else {
            "NO"
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_moves_every_system() {
        let systems = [PeerName::Device, PeerName::Ringstore, PeerName::Fjall];
        assert_eq!(rotated(&systems, 0), systems.to_vec());
        assert_eq!(
            rotated(&systems, 1),
            vec![PeerName::Ringstore, PeerName::Fjall, PeerName::Device]
        );
        assert_eq!(rotated(&systems, 3), systems.to_vec());
    }

    #[test]
    fn advantage_is_oriented() {
        let [latency, throughput, ..] = workloads();
        assert!(latency.advantage(100.0, 200.0) > 1.0);
        assert!(throughput.advantage(200.0, 100.0) > 1.0);
    }
}
