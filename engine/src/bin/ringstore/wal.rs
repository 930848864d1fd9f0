//! `ringstore wal inspect|verify|dump|salvage`: the write-ahead log of each
//! shard.
//!
//! `inspect`, `verify` and `dump` run
//! [`ringstore_journal::inspect::scan_journal`], which drives the journal's
//! one verifier read-only, as reopening the journal does, and reaches the
//! same verdict; they differ in what they print. Damage — anything that
//! makes a reopen refuse, ops missing above the watermark, or a payload a
//! reopen does not read but a read of its entry would refuse (the output
//! then says the reopen opens: `journal/FORMAT.md`, "Recovery") — makes
//! the exit code 1. A tail that does not verify and that nothing proves durable
//! (which a reopen cuts and reports, with the ops that may have been
//! acknowledged in it) is reported but is not damage, unless `wal verify
//! --strict` (what `Recovery::Strict` does).
//!
//! `salvage` is the one that writes: for a shard whose journal refuses to
//! open, [`ringstore_journal::salvage`] cuts it at the first damage and
//! moves what it no longer reads into `<shard>/quarantine/`, holding the
//! shard's lock while it runs.

use crate::datadir::{shards, ShardArg, ShardDir};
use crate::output::{self, Out, Progress};
use crate::{CliError, Context, Outcome};
use ringstore::broker::Command;
use ringstore::layout::identity::IdentityFault;
use ringstore::layout::RAFT_NODE_SHARDS;
use ringstore_journal::durability::{self, record::DurabilityRecord};
use ringstore_journal::format::EntryKind;
use ringstore_journal::inspect::{
    scan_journal_as, Damage, EntryInfo, InspectError, JournalReport, ScanObserver, SegmentEnd,
    SegmentReport, SuperblockReport, Tail, Verdict, MISSING_RANGES_MAX,
};
use ringstore_journal::salvage::{salvage_as, SalvageError, SalvageReport};
use ringstore_journal::{Durability, JournalOwner};
use serde_json::{json, Value};
use std::ops::ControlFlow;
use std::path::Path;

/// Bytes of a payload shown as hex when it does not decode as a command.
const HEX_PREFIX_BYTES: usize = 24;

/// `ringstore wal ...`.
#[derive(Debug, clap::Subcommand)]
pub enum WalCommand {
    /// Per shard: segment files (generation, size, header fields), op
    /// range, watermark, epoch, entry count, bytes, and how the log ends.
    Inspect(ShardArg),
    /// Read and verify every entry (header and payload checksums, op
    /// continuity above the watermark). Exit 1 naming file and byte offset
    /// on damage.
    Verify(VerifyArgs),
    /// One line per entry: op, epoch, kind, payload length, checksum, and
    /// the decoded broker command (or a hex prefix).
    Dump(DumpArgs),
    /// For a shard whose journal refuses to open: cut the journal at its
    /// first damage, keep what verifies before it, move every later segment
    /// and stray file into <shard>/quarantine/<time>-journal/ (never
    /// deleted), rewrite the superblock, and report the ops lost. Without
    /// --yes it prints what it would do. Refuses (exit 2) a healthy or a
    /// locked shard.
    Salvage(SalvageArgs),
}

/// `wal salvage` flags.
#[derive(Debug, clap::Args)]
pub struct SalvageArgs {
    /// The shard to salvage (the NNN of shard-NNN).
    #[arg(long, value_name = "N")]
    shard: usize,
    /// Carry it out (without: print what it would do, change nothing, exit 2).
    #[arg(long)]
    yes: bool,
    /// The journal is an engine shard's, not a raft node's: needed when its
    /// superblock records no owner (no copy verifies, or there is none) and
    /// the shard's place in an engine data directory cannot be read (the
    /// data directory's superblock and the shard's identity), so salvage
    /// cannot tell.
    #[arg(long)]
    engine_shard: bool,
}

/// Where `wal salvage` quarantines, inside the shard directory.
pub const QUARANTINE_DIR_NAME: &str = "quarantine";

/// `wal verify` flags.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    shard: ShardArg,
    /// Treat a torn tail as a failure too (what `Recovery::Strict` does).
    #[arg(long)]
    strict: bool,
}

/// `wal dump` flags.
#[derive(Debug, clap::Args)]
pub struct DumpArgs {
    #[command(flatten)]
    shard: ShardArg,
    /// Only entries with op >= OP.
    #[arg(long, value_name = "OP")]
    from: Option<u64>,
    /// Only entries with op <= OP.
    #[arg(long, value_name = "OP")]
    to: Option<u64>,
    /// At most N entries (per shard).
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Also show the structure: padding entries and each write's index.
    #[arg(long)]
    padding: bool,
}

/// Runs a `wal` command.
pub fn run(context: &Context, command: WalCommand) -> Result<Outcome, CliError> {
    match command {
        WalCommand::Inspect(shard) => inspect(context, &shard),
        WalCommand::Verify(args) => verify(context, &args),
        WalCommand::Dump(args) => dump(context, &args),
        WalCommand::Salvage(args) => salvage(context, &args),
    }
}

/// Drives a progress bar from the scan.
struct ScanProgress(Progress);

impl ScanObserver for ScanProgress {
    fn begin(&mut self, file_bytes: u64) {
        self.0.set_length(file_bytes);
    }
    fn progress(&mut self, bytes_done: u64) {
        self.0.set_position(bytes_done);
    }
}

/// Who a shard's journal must belong to, as the engine opens it: the
/// domain of the shard's identity and — for `shard-NNN` of a data directory,
/// which the runtime opens with its place — its index among the shards the
/// data directory's superblock records.
struct Expected {
    /// `None`: nothing to check (no identity that verifies; an open
    /// refuses over the identity first, which `snapshot verify` reports).
    owner: Option<JournalOwner>,
    /// The data directory's superblock does not verify: the engine refuses
    /// the whole data directory (the owner then names the domain only).
    data_dir_refusal: Option<String>,
    /// The identity records a journal that is not there: the open refuses
    /// (its message), and there is no journal to scan.
    journal_refusal: Option<String>,
    /// An identity that verifies and does not record a journal, and no
    /// journal directory: a first open cut short before it created the
    /// journal. The next open creates it (as `snapshot verify` counts it:
    /// watermark 0), so there is nothing to scan and nothing refused.
    journal_not_created: bool,
}

/// What the engine's start would refuse in the data directory (its
/// superblock, a recorded shard gone): damage. Anything else (the host's
/// locked-memory limit, a reactor that does not start, a permission) is
/// the tool's own failure, not the directory's, and ends the run (exit 2).
fn data_dir_verdict(result: ringstore::Result<()>) -> Result<Option<String>, CliError> {
    match result {
        Ok(()) => Ok(None),
        Err(
            e @ (ringstore::Error::Manifest { .. }
            | ringstore::Error::ShardCountMismatch { .. }
            | ringstore::Error::ShardMissing { .. }),
        ) => Ok(Some(e.to_string())),
        Err(e) => Err(CliError(format!(
            "reading the data directory's superblock: {e}"
        ))),
    }
}

fn expected(context: &Context, shard: &ShardDir) -> Result<Expected, CliError> {
    let mut data_dir_refusal = None;
    let shards = if shard.path == context.data_dir {
        // A shard directory given on its own: opened without a place.
        None
    } else {
        match ringstore::runtime::startup::read_manifest(&context.data_dir) {
            Ok(shards) => {
                // A shard the superblock records but whose directory is
                // gone: the engine refuses to start (`Error::ShardMissing`).
                data_dir_refusal = data_dir_verdict(
                    ringstore::runtime::startup::check_created_shards(&context.data_dir, &[]),
                )?;
                shards
            }
            Err(e) => {
                data_dir_refusal = data_dir_verdict(Err(e))?;
                None
            }
        }
    };
    // An unfinished cold restore's marker: the open refuses the directory
    // (`Error::RestoreIncomplete`), as `snapshot verify` says too.
    let marker = shard.path.join(ringstore::layout::RESTORE_MARKER_NAME);
    if data_dir_refusal.is_none() && std::fs::symlink_metadata(&marker).is_ok() {
        data_dir_refusal = Some(ringstore::Error::RestoreIncomplete { path: marker }.to_string());
    }
    let identity = ringstore::snapshot::inspect::read_identity_file(&shard.path).ok();
    let domain = identity.as_ref().and_then(|identity| identity.domain());
    let journal_refusal = identity
        .as_ref()
        .and_then(|identity| identity.refusal())
        .filter(|damage| matches!(damage.fault, IdentityFault::JournalMissing { .. }))
        .map(|damage| damage.to_string());
    let journal_not_created = identity
        .as_ref()
        .is_some_and(|identity| identity.domain().is_some() && identity.refusal().is_none())
        && !shard.journal_dir().exists();
    let owner = domain.map(|domain| JournalOwner {
        domain: *domain.as_bytes(),
        shard: shards.map_or(0, |_| shard.index as u32),
        shards: shards.map_or(0, |n| n as u32),
    });
    Ok(Expected {
        owner,
        data_dir_refusal,
        journal_refusal,
        journal_not_created,
    })
}

fn scan(
    shard: &ShardDir,
    owner: Option<JournalOwner>,
    observer: &mut dyn ScanObserver,
) -> Result<JournalReport, CliError> {
    let dir = shard.journal_dir();
    scan_journal_as(&dir, owner, observer).map_err(|e| match e {
        InspectError::NotFound { .. } => CliError(format!(
            "{}: no journal directory at {} (not a shard directory?)",
            shard.label,
            dir.display()
        )),
        other => CliError(format!("{}: {other}", shard.label)),
    })
}

fn scan_with_progress(
    context: &Context,
    shard: &ShardDir,
    owner: Option<JournalOwner>,
) -> Result<JournalReport, CliError> {
    let mut progress = ScanProgress(Progress::new(&shard.label, context.json));
    let report = scan(shard, owner, &mut progress);
    progress.0.finish();
    report
}

fn inspect(context: &Context, shard_arg: &ShardArg) -> Result<Outcome, CliError> {
    let shards = shards(&context.data_dir, shard_arg.shard)?;
    let mut out = Out::new();
    let mut reports = Vec::new();
    let mut damaged = false;
    for shard in &shards {
        let expected = expected(context, shard)?;
        if let Some(refusal) = &expected.journal_refusal {
            damaged = true;
            if context.json {
                reports.push(json!({ "shard": shard.label, "journal_refusal": refusal }));
            } else {
                out.line(format_args!("{}\n  DAMAGE: {refusal}", shard.label))?;
            }
            continue;
        }
        let report = scan_with_progress(context, shard, expected.owner)?;
        damaged |= !report.is_intact() || expected.data_dir_refusal.is_some();
        if context.json {
            let mut value = shard_json(shard, &report);
            // The shard's verdict counts the data directory's refusal too,
            // as the top level's does.
            value["ok"] = json!(report.is_intact() && expected.data_dir_refusal.is_none());
            value["data_dir_refusal"] = json!(expected.data_dir_refusal);
            reports.push(value);
        } else {
            print_inspect(&mut out, shard, &report)?;
            if let Some(refusal) = &expected.data_dir_refusal {
                out.line(format_args!("  DAMAGE: {refusal}"))?;
            }
        }
    }
    if context.json {
        out.json(&json!({
            "data_dir": context.data_dir,
            "ok": !damaged,
            "shards": reports,
        }))?;
    }
    out.flush()?;
    Ok(Outcome::from_damaged(damaged))
}

fn print_inspect(out: &mut Out, shard: &ShardDir, report: &JournalReport) -> Result<(), CliError> {
    out.line(format_args!("{} ({})", shard.label, report.dir.display()))?;
    out.line(format_args!("  {}", summary(report)))?;
    out.line(format_args!("  tail: {}", tail_text(&report.tail)))?;
    out.line(format_args!("  reopen: {}", report.describe_verdict()))?;
    match &report.superblock {
        Some(sb) => out.line(format_args!("  superblock: {}", superblock_text(sb)))?,
        None => out.line("  superblock: none readable")?,
    }
    out.line(format_args!(
        "  durability: {}",
        durability_text(&report.dir, report.durability_record.as_ref())
    ))?;
    if report.segments.is_empty() {
        out.line("  no segment files")?;
    } else {
        let mut table = output::table([
            "generation",
            "file bytes",
            "segment bytes",
            "batch max",
            "in flight",
            "durability",
            "prev gen@end",
            "header watermark",
            "ops",
            "entries",
            "data bytes",
            "writes",
            "max epoch",
            "end",
        ]);
        for segment in &report.segments {
            table.add_row(segment_row(segment));
        }
        out.line(table)?;
    }
    print_problems(out, shard, report)?;
    out.line("")
}

/// Whether an `Auto` open of the journal in `dir` (prepared as the record
/// says) would take `record`: of this boot and of the directory's device.
fn record_applies(dir: &Path, record: &DurabilityRecord) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let device = std::fs::metadata(dir).map(|m| m.dev()).ok();
    Some(record.boot_id) == durability::record::boot_id() && device == Some(record.device)
}

/// What `Durability::Auto` opens of this journal take, from its durability
/// record.
fn durability_text(dir: &Path, record: Option<&Result<DurabilityRecord, String>>) -> String {
    match record {
        None => "no probe recorded (the durability was configured, no Auto open has probed \
                 this device in this boot, the boot id cannot be read, or the record's write \
                 failed: logged)"
            .into(),
        Some(Err(reason)) => format!(
            "the durability record does not verify ({reason}); the next Auto open does not take \
             it and replaces it"
        ),
        Some(Ok(record)) => {
            let boot = if record_applies(dir, record) {
                "this boot and device: Auto opens with this preallocation take it"
            } else {
                "another boot or device: the next Auto open probes again"
            };
            format!(
                "Auto chose {} (probe of {}: write + fdatasync p50 {} µs, O_DSYNC write p50 {} µs, \
                 {} rounds, {:?} preallocation, device {:#x}; {boot})",
                durability_name(record.probe.chosen()),
                output::unix_ms(unix_ms_of(record.measured_at)),
                record.probe.sync_p50.as_micros(),
                record.probe.write_through_p50.as_micros(),
                record.probe.rounds,
                record.preallocation,
                record.device,
            )
        }
    }
}

fn durability_name(durability: Durability) -> &'static str {
    match durability {
        Durability::Sync => "write + fdatasync (sync)",
        Durability::WriteThrough => "O_DSYNC writes (write-through)",
        Durability::Auto => "auto",
        Durability::NoSync => "no-sync",
    }
}

fn unix_ms_of(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn durability_json(dir: &Path, record: Option<&Result<DurabilityRecord, String>>) -> Value {
    match record {
        None => Value::Null,
        Some(Err(reason)) => json!({ "valid": false, "reason": reason }),
        Some(Ok(record)) => json!({
            "valid": true,
            "chosen": durability_name(record.probe.chosen()),
            "sync_p50_us": record.probe.sync_p50.as_micros() as u64,
            "write_through_p50_us": record.probe.write_through_p50.as_micros() as u64,
            "rounds": record.probe.rounds,
            "preallocation": format!("{:?}", record.preallocation),
            "device": record.device,
            "measured_at_unix_ms": unix_ms_of(record.measured_at),
            "this_boot": Some(record.boot_id) == durability::record::boot_id(),
            "applies": record_applies(dir, record),
        }),
    }
}

fn segment_row(segment: &SegmentReport) -> Vec<String> {
    let dash = || "-".to_string();
    let header = segment.header.as_ref();
    vec![
        segment.generation.to_string(),
        output::bytes(segment.file_bytes),
        header.map_or_else(dash, |h| output::bytes(h.segment_bytes)),
        header.map_or_else(dash, |h| output::bytes(h.batch_bytes_max)),
        header.map_or_else(dash, |h| h.writes_in_flight.to_string()),
        header.map_or_else(dash, |h| {
            let sync = if h.no_sync { "no-sync" } else { "sync" };
            if h.recycled {
                format!("{sync}, recycled")
            } else {
                sync.into()
            }
        }),
        header.map_or_else(dash, |h| {
            if h.prev_generation == 0 {
                "-".into()
            } else {
                format!("{}@{}", h.prev_generation, h.prev_end)
            }
        }),
        header.map_or_else(dash, |h| h.watermark.to_string()),
        output::op_range(segment.op_min, segment.op_max),
        segment.data_entries.to_string(),
        output::bytes(segment.data_bytes),
        segment.writes.to_string(),
        segment.epoch_max.map_or_else(dash, |e| e.to_string()),
        end_text(&segment.end),
    ]
}

fn superblock_text(sb: &SuperblockReport) -> String {
    let generations = if sb.first_generation == 0 {
        "no segments".to_string()
    } else {
        format!(
            "generations {}..={}",
            sb.first_generation, sb.last_generation
        )
    };
    let owner = sb
        .owner
        .map_or_else(|| "no owner".to_string(), |o| o.to_string());
    let mut text = format!(
        "sequence {}, {generations}, watermark {}, {owner}, {} segment end(s) recorded{}",
        sb.sequence,
        sb.watermark,
        sb.ends.len(),
        sb.ends
            .last()
            .filter(|(g, _)| *g == sb.last_generation)
            .map_or_else(String::new, |(g, end)| format!(
                " (the last, {g}, ends at {end})"
            )),
    );
    for copy in &sb.damaged_copies {
        text.push_str(&format!(
            "; copy at byte offset {} damaged or stale ({}), rewritten at the next open",
            copy.offset, copy.reason
        ));
    }
    text
}

fn summary(report: &JournalReport) -> String {
    format!(
        "{} segment file(s), {} entries ({}), ops {}, watermark {}, epoch {}",
        report.segments.len(),
        report.data_entries,
        output::bytes(report.data_bytes),
        output::op_range(report.op_min, report.op_max),
        report.watermark,
        report.epoch_max,
    )
}

fn end_text(end: &SegmentEnd) -> String {
    match end {
        SegmentEnd::Clean { offset } => format!("clean at {offset}"),
        SegmentEnd::Sealed { offset } => format!("ends at {offset} (as recorded)"),
        SegmentEnd::Torn {
            offset,
            reason,
            ops,
            entries,
        } => format!(
            "TORN TAIL at {offset}: {reason}; {}",
            ringstore_journal::describe_cut_ops(*ops, *entries)
        ),
        SegmentEnd::Damaged { offset } => format!("DAMAGED at {offset}"),
        SegmentEnd::Leftover { reason } => format!("leftover, removed at the next open: {reason}"),
        SegmentEnd::Unscanned => "not part of the log (not scanned)".into(),
        SegmentEnd::Stopped { offset } => format!("stopped at {offset}"),
    }
}

fn tail_text(tail: &Tail) -> String {
    match tail {
        Tail::Empty => "empty journal (no segments)".into(),
        Tail::Clean { path, offset } => format!("clean, log ends at {}:{offset}", file_name(path)),
        Tail::Torn { .. } => format!(
            "torn tail: {}; nothing proves these bytes durable, so reopening cuts the log there \
             and reports it (--strict, like Recovery::Strict, refuses)",
            tail.describe()
        ),
        Tail::Unknown => tail.describe(),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// What the next open repairs or removes, and what it ignores: printed
/// whether or not the journal passes, so a verify that passes still names
/// every damaged superblock copy and every file a crash left behind.
fn print_repairs(out: &mut Out, report: &JournalReport) -> Result<(), CliError> {
    if let Some(superblock) = &report.superblock {
        for copy in &superblock.damaged_copies {
            out.line(format_args!(
                "  superblock copy: {} at byte offset {}: {}; the next open rewrites it",
                superblock.path.display(),
                copy.offset,
                copy.reason
            ))?;
        }
    }
    for leftover in &report.leftovers {
        out.line(format_args!(
            "  leftover: {} ({}): the next open removes it",
            leftover.path.display(),
            leftover.reason
        ))?;
    }
    for stray in &report.stray {
        out.line(format_args!(
            "  stray: {}: not a journal file, ignored",
            stray.display()
        ))?;
    }
    Ok(())
}

fn print_problems(out: &mut Out, shard: &ShardDir, report: &JournalReport) -> Result<(), CliError> {
    for damage in &report.damage {
        out.line(format_args!("  DAMAGE: {damage}"))?;
    }
    if report.verdict == Verdict::Refuses {
        out.line(format_args!(
            "  reopening refuses this journal; `ringstore wal salvage --shard {}` cuts it at the \
             first damage (see README, \"After damage\")",
            shard.index
        ))?;
    } else if !report.damage_found_on_read.is_empty() {
        out.line(format_args!(
            "  reopening opens this journal (it reads each write's first header and index, not \
             every payload), but reading the entries at the damaged place(s) fails; \
             `ringstore wal salvage --shard {}` cuts it at the first damage",
            shard.index
        ))?;
    }
    print_repairs(out, report)?;
    if report.missing_op_count > 0 {
        let ranges: Vec<String> = report
            .missing_ops
            .iter()
            .map(|&(a, b)| output::op_range(Some(a), Some(b)))
            .collect();
        // The report lists at most MISSING_RANGES_MAX ranges.
        let more = if ranges.len() >= MISSING_RANGES_MAX {
            ", ..."
        } else {
            ""
        };
        out.line(format_args!(
            "  DAMAGE: {} op(s) missing above the watermark {} in {}: {}{more} (replay cannot pass them)",
            report.missing_op_count,
            report.watermark,
            report.dir.display(),
            ranges.join(", "),
        ))?;
    }
    if let Some((first, last)) = report.leading_gap {
        let range = output::op_range(Some(first), Some(last));
        if matches!(report.tail, Tail::Torn { .. }) {
            out.line(format_args!(
                "  note: ops {range} (above the watermark {}, below the first op present) are not in the journal: retired segments whose watermark record the torn tail took along; replay needs a snapshot at or above op {last}",
                report.watermark
            ))?;
        } else {
            out.line(format_args!(
                "  DAMAGE: ops {range} missing above the watermark {} in {}, before the first op present (replay cannot pass them)",
                report.watermark,
                report.dir.display()
            ))?;
        }
    }
    if report.transient_read_faults > 0 {
        out.line(format_args!(
            "  note: {} entries failed verification once and verified when read again (flaky reads?)",
            report.transient_read_faults
        ))?;
    }
    Ok(())
}

fn verify(context: &Context, args: &VerifyArgs) -> Result<Outcome, CliError> {
    let shards = shards(&context.data_dir, args.shard.shard)?;
    let mut out = Out::new();
    let mut reports = Vec::new();
    let mut failed = 0;
    for shard in &shards {
        let expected = expected(context, shard)?;
        if let Some(refusal) = &expected.journal_refusal {
            failed += 1;
            if context.json {
                reports.push(json!({
                    "shard": shard.label,
                    "ok": false,
                    "journal_refusal": refusal,
                }));
            } else {
                out.line(format_args!("{}: FAILED: {refusal}", shard.label))?;
            }
            continue;
        }
        if expected.journal_not_created {
            let ok = expected.data_dir_refusal.is_none();
            failed += usize::from(!ok);
            if context.json {
                reports.push(json!({
                    "shard": shard.label,
                    "ok": ok,
                    "journal": null,
                    "journal_not_created": true,
                    "data_dir_refusal": expected.data_dir_refusal,
                }));
            } else {
                let verdict = if ok { "ok" } else { "FAILED" };
                out.line(format_args!(
                    "{}: {verdict}: no journal yet (a first open stopped before it created \
                     one; the next open creates it)",
                    shard.label
                ))?;
                if let Some(refusal) = &expected.data_dir_refusal {
                    out.line(format_args!(
                        "  DAMAGE: {refusal} (the engine refuses the data directory)"
                    ))?;
                }
            }
            continue;
        }
        let report = scan_with_progress(context, shard, expected.owner)?;
        let torn = matches!(report.tail, Tail::Torn { .. });
        let ok =
            report.is_intact() && !(args.strict && torn) && expected.data_dir_refusal.is_none();
        if !ok {
            failed += 1;
        }
        if context.json {
            let mut value = shard_json(shard, &report);
            value["ok"] = json!(ok);
            value["data_dir_refusal"] = json!(expected.data_dir_refusal);
            reports.push(value);
            continue;
        }
        if ok {
            out.line(format_args!("{}: ok: {}", shard.label, summary(&report)))?;
            out.line(format_args!("  tail: {}", tail_text(&report.tail)))?;
            print_repairs(&mut out, &report)?;
        } else {
            out.line(format_args!(
                "{}: FAILED: {}",
                shard.label,
                summary(&report)
            ))?;
            out.line(format_args!("  tail: {}", tail_text(&report.tail)))?;
            if args.strict && torn {
                out.line("  DAMAGE: torn tail (--strict)")?;
            }
            if let Some(refusal) = &expected.data_dir_refusal {
                out.line(format_args!(
                    "  DAMAGE: {refusal} (the engine refuses the data directory)"
                ))?;
            }
            print_problems(&mut out, shard, &report)?;
        }
    }
    if context.json {
        out.json(&json!({
            "data_dir": context.data_dir,
            "ok": failed == 0,
            "shards": reports,
        }))?;
    }
    out.flush()?;
    if failed > 0 {
        eprintln!(
            "wal verify: damage found in {failed} of {} shard(s)",
            shards.len()
        );
    }
    Ok(Outcome::from_damaged(failed > 0))
}

/// Prints entries as the scan hands them out.
struct Dumper<'a> {
    out: &'a mut Out,
    args: &'a DumpArgs,
    json: bool,
    printed: u64,
    /// Whether the last data or watermark entry was in the op range: a
    /// padding entry (op 0) is shown with the entry it follows.
    last_in_range: bool,
    bar: Progress,
    error: Option<CliError>,
}

impl Dumper<'_> {
    fn wanted(&mut self, entry: &EntryInfo) -> bool {
        match entry.kind {
            // Structure, not log: shown with --padding.
            EntryKind::Padding | EntryKind::WriteIndex => self.args.padding && self.last_in_range,
            // Not an op: shown wherever the range is.
            EntryKind::HardState => true,
            EntryKind::Data | EntryKind::Watermark | EntryKind::Truncate => {
                self.last_in_range = self.args.from.is_none_or(|from| entry.op >= from)
                    && self.args.to.is_none_or(|to| entry.op <= to);
                self.last_in_range
            }
        }
    }

    fn write(&mut self, entry: &EntryInfo, payload: &[u8]) -> Result<(), CliError> {
        let decoded = (entry.kind == EntryKind::Data)
            .then(|| ringstore::machine::decode::<Command>(payload).ok())
            .flatten();
        if self.json {
            let mut value = entry_json(entry);
            if entry.kind == EntryKind::Data {
                match &decoded {
                    Some(command) => value["command"] = serde_json::to_value(command)?,
                    None => {
                        value["payload_hex"] = json!(output::hex_prefix(payload, HEX_PREFIX_BYTES))
                    }
                }
            }
            let separator = if self.printed == 0 { "\n" } else { ",\n" };
            self.out.raw(separator)?;
            self.out.raw(&serde_json::to_string(&value)?)
        } else {
            let what = match (entry.kind, &decoded) {
                (EntryKind::Data, Some(command)) => format!("{command:?}"),
                (EntryKind::Data, None) => {
                    format!(
                        "(not a broker command) {}",
                        output::hex_prefix(payload, HEX_PREFIX_BYTES)
                    )
                }
                (EntryKind::Watermark, _) => format!("watermark {}", entry.op),
                (EntryKind::Truncate, _) => format!("discard every op above {}", entry.op),
                (EntryKind::HardState, _) => format!(
                    "hard state {}",
                    output::hex_prefix(payload, HEX_PREFIX_BYTES)
                ),
                (EntryKind::WriteIndex, _) => format!("index of the write's {} entries", entry.op),
                (EntryKind::Padding, _) => String::new(),
            };
            let op = match entry.kind {
                EntryKind::Padding | EntryKind::HardState | EntryKind::WriteIndex => {
                    "-".to_string()
                }
                _ => entry.op.to_string(),
            };
            let line = format!(
                "op {op:>8}  epoch {:>4}  {:<9}  len {:>7}  crc {:#010x}  at {}:{:<9}  {what}",
                entry.epoch,
                kind_name(entry.kind),
                entry.payload_len,
                entry.payload_checksum,
                entry.generation,
                entry.offset,
            );
            self.out.line(line.trim_end())
        }
    }
}

impl ScanObserver for Dumper<'_> {
    fn begin(&mut self, file_bytes: u64) {
        self.bar.set_length(file_bytes);
    }
    fn progress(&mut self, bytes_done: u64) {
        self.bar.set_position(bytes_done);
    }
    fn entry(&mut self, entry: &EntryInfo, payload: &[u8]) -> ControlFlow<()> {
        if !self.wanted(entry) {
            return ControlFlow::Continue(());
        }
        if let Err(e) = self.write(entry, payload) {
            self.error = Some(e);
            return ControlFlow::Break(());
        }
        self.printed += 1;
        if self.out.closed || self.args.limit.is_some_and(|limit| self.printed >= limit) {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

fn dump(context: &Context, args: &DumpArgs) -> Result<Outcome, CliError> {
    if let (Some(from), Some(to)) = (args.from, args.to) {
        if from > to {
            return Err(CliError(format!("--from {from} is above --to {to}")));
        }
    }
    let shards = shards(&context.data_dir, args.shard.shard)?;
    let mut out = Out::new();
    let mut damaged = false;
    if context.json {
        out.raw(&format!(
            "{{\"data_dir\": {},\n\"shards\": [",
            serde_json::to_string(&context.data_dir)?
        ))?;
    }
    for (i, shard) in shards.iter().enumerate() {
        if context.json {
            out.raw(&format!(
                "{}{{\"shard\": {}, \"path\": {}, \"entries\": [",
                if i == 0 { "\n" } else { ",\n" },
                serde_json::to_string(&shard.label)?,
                serde_json::to_string(&shard.journal_dir())?
            ))?;
        } else {
            out.line(format_args!(
                "# {} ({})",
                shard.label,
                shard.journal_dir().display()
            ))?;
        }
        let mut dumper = Dumper {
            out: &mut out,
            args,
            json: context.json,
            printed: 0,
            last_in_range: args.from.is_none(),
            bar: Progress::new(&shard.label, context.json),
            error: None,
        };
        let report = scan(shard, expected(context, shard)?.owner, &mut dumper);
        dumper.bar.finish();
        if let Some(e) = dumper.error.take() {
            return Err(e);
        }
        let report = report?;
        damaged |= !report.is_intact();
        if context.json {
            out.raw(&format!(
                "\n], \"complete\": {}, \"tail\": {}, \"damage\": {}, \"missing_op_count\": {}}}",
                report.complete,
                serde_json::to_string(&tail_json(&report.tail))?,
                serde_json::to_string(&damage_json(&report.damage))?,
                report.missing_op_count,
            ))?;
        } else {
            if let Tail::Torn { .. } = report.tail {
                eprintln!("{}: tail: {}", shard.label, tail_text(&report.tail));
            }
            for damage in &report.damage {
                eprintln!("{}: DAMAGE: {damage}", shard.label);
            }
            if !report.is_intact() && (report.missing_op_count > 0 || report.leading_gap.is_some())
            {
                eprintln!(
                    "{}: DAMAGE: op(s) missing above the watermark {} (see wal verify)",
                    shard.label, report.watermark
                );
            }
        }
        if out.closed {
            break;
        }
    }
    if context.json {
        out.raw(&format!("\n], \"ok\": {}}}\n", !damaged))?;
    }
    out.flush()?;
    Ok(Outcome::from_damaged(damaged))
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Data => "data",
        EntryKind::Watermark => "watermark",
        EntryKind::Padding => "padding",
        EntryKind::Truncate => "truncate",
        EntryKind::HardState => "hardstate",
        EntryKind::WriteIndex => "index",
    }
}

fn entry_json(entry: &EntryInfo) -> Value {
    json!({
        "op": entry.op,
        "epoch": entry.epoch,
        "kind": kind_name(entry.kind),
        "payload_len": entry.payload_len,
        "payload_checksum": entry.payload_checksum,
        "generation": entry.generation,
        "offset": entry.offset,
        "first_in_write": entry.first_in_write,
    })
}

fn damage_json(damage: &[Damage]) -> Value {
    damage
        .iter()
        .map(|d| json!({"path": d.path, "offset": d.offset, "reason": d.reason}))
        .collect()
}

fn tail_json(tail: &Tail) -> Value {
    match tail {
        Tail::Empty => json!({"state": "empty"}),
        Tail::Clean { path, offset } => json!({"state": "clean", "path": path, "offset": offset}),
        Tail::Torn {
            path,
            offset,
            reason,
            ops,
            entries,
        } => json!({
            "state": "torn",
            "path": path,
            "offset": offset,
            "reason": reason,
            "ops": ops,
            "entries": entries,
            "describe": tail.describe(),
        }),
        Tail::Unknown => json!({"state": "unknown"}),
    }
}

fn end_json(end: &SegmentEnd) -> Value {
    match end {
        SegmentEnd::Clean { offset } => json!({"state": "clean", "offset": offset}),
        SegmentEnd::Sealed { offset } => json!({"state": "sealed", "offset": offset}),
        SegmentEnd::Torn {
            offset,
            reason,
            ops,
            entries,
        } => {
            json!({"state": "torn", "offset": offset, "reason": reason, "ops": ops, "entries": entries})
        }
        SegmentEnd::Damaged { offset } => json!({"state": "damaged", "offset": offset}),
        SegmentEnd::Leftover { reason } => json!({"state": "leftover", "reason": reason}),
        SegmentEnd::Unscanned => json!({"state": "unscanned"}),
        SegmentEnd::Stopped { offset } => json!({"state": "stopped", "offset": offset}),
    }
}

fn segment_json(segment: &SegmentReport) -> Value {
    let header = segment.header.as_ref().map(|h| {
        json!({
            "version": h.version,
            "data_offset": h.data_offset,
            "generation": h.generation,
            "segment_bytes": h.segment_bytes,
            "batch_bytes_max": h.batch_bytes_max,
            "prev_generation": h.prev_generation,
            "prev_end": h.prev_end,
            "watermark": h.watermark,
            "no_sync": h.no_sync,
            "recycled": h.recycled,
            "writes_in_flight": h.writes_in_flight,
            "journal_id": uuid::Uuid::from_bytes(h.journal_id).to_string(),
        })
    });
    json!({
        "path": segment.path,
        "generation": segment.generation,
        "file_bytes": segment.file_bytes,
        "header": header,
        "in_log": segment.in_log,
        "sealed_end": segment.sealed_end,
        "data_entries": segment.data_entries,
        "data_bytes": segment.data_bytes,
        "watermark_records": segment.watermark_records,
        "truncate_records": segment.truncate_records,
        "hard_state_records": segment.hard_state_records,
        "padding_entries": segment.padding_entries,
        "writes": segment.writes,
        "op_min": segment.op_min,
        "op_max": segment.op_max,
        "epoch_max": segment.epoch_max,
        "watermark": segment.watermark,
        "end": end_json(&segment.end),
    })
}

fn shard_json(shard: &ShardDir, report: &JournalReport) -> Value {
    json!({
        "shard": shard.label,
        "index": shard.index,
        "path": report.dir,
        "ok": report.is_intact(),
        "watermark": report.watermark,
        "epoch_max": report.epoch_max,
        "op_min": report.op_min,
        "op_max": report.op_max,
        "data_entries": report.data_entries,
        "data_bytes": report.data_bytes,
        "duplicate_ops": report.duplicate_ops,
        "missing_ops": report.missing_ops,
        "missing_op_count": report.missing_op_count,
        "leading_gap": report.leading_gap,
        "transient_read_faults": report.transient_read_faults,
        "file_bytes": report.file_bytes,
        "tail": tail_json(&report.tail),
        "verdict": verdict_name(report.verdict),
        "reopen": report.describe_verdict(),
        "refusal": report.refusal.as_ref().map(|r| r.to_string()),
        "planned": report.planned,
        "superblock": report.superblock.as_ref().map(superblock_json),
        "damage": damage_json(&report.damage),
        "damage_found_on_read": damage_json(&report.damage_found_on_read),
        "leftovers": report
            .leftovers
            .iter()
            .map(|l| json!({"path": l.path, "reason": l.reason}))
            .collect::<Vec<_>>(),
        "stray": report.stray,
        "durability_record": durability_json(&report.dir, report.durability_record.as_ref()),
        "segments": report.segments.iter().map(segment_json).collect::<Vec<_>>(),
    })
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Opens => "opens",
        Verdict::Cuts => "cuts",
        Verdict::Refuses => "refuses",
    }
}

fn superblock_json(sb: &SuperblockReport) -> Value {
    json!({
        "path": sb.path,
        "sequence": sb.sequence,
        "journal_id": uuid::Uuid::from_bytes(sb.journal_id).to_string(),
        "owner": sb.owner.map(|o| o.to_string()),
        "first_generation": sb.first_generation,
        "last_generation": sb.last_generation,
        "watermark": sb.watermark,
        "ends": sb.ends,
        "damaged_copies": sb
            .damaged_copies
            .iter()
            .map(|c| json!({"offset": c.offset, "reason": c.reason}))
            .collect::<Vec<_>>(),
    })
}

/// The shard's lock, held while `wal salvage` runs: the same `flock` on
/// `<shard>/lock` the engine holds while a shard is open
/// (`ringstore::LOCK_FILE_NAME`), so a salvage never runs beside an open
/// shard and an engine starting meanwhile fails with `DirLocked`.
struct ShardLock {
    // Held for its lock; closing the file releases it.
    _file: std::fs::File,
}

fn lock_shard(shard: &ShardDir) -> Result<ShardLock, CliError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let path = shard.path.join(ringstore::LOCK_FILE_NAME);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| CliError(format!("{}: opening {}: {e}", shard.label, path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = text
                .trim()
                .parse::<u32>()
                .map_or_else(|_| String::new(), |pid| format!(" by process {pid}"));
            return Err(CliError(format!(
                "{}: the shard is in use ({} is locked{holder}: a running engine?); stop it \
                 before salvaging; nothing was changed",
                shard.label,
                path.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(CliError(format!(
                "{}: locking {}: {e}",
                shard.label,
                path.display()
            )))
        }
    }
    // Best effort, as the engine does: the pid names the holder in errors.
    let _ = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{}", std::process::id()));
    Ok(ShardLock { _file: file })
}

fn salvage(context: &Context, args: &SalvageArgs) -> Result<Outcome, CliError> {
    let shards = shards(&context.data_dir, Some(args.shard))?;
    let shard = &shards[0];
    let marker = shard.path.join(ringstore::layout::RESTORE_MARKER_NAME);
    if marker.exists() {
        return Err(CliError(format!(
            "{}: {} marks an unfinished cold restore: the directory holds a restore's half \
             work, not a journal to salvage; run `ringstore restore` again",
            shard.label,
            marker.display()
        )));
    }
    let _lock = lock_shard(shard)?;
    let journal_dir = shard.journal_dir();
    let quarantine = shard.path.join(QUARANTINE_DIR_NAME);
    let mut out = Out::new();
    let owner = expected(context, shard)?.owner;
    let after_cut = hook_after_cut(shard, &journal_dir, owner, args.engine_shard)?;
    match salvage_as(&journal_dir, owner, after_cut, &quarantine, args.yes) {
        Ok(report) => {
            print_salvage(context, &mut out, shard, &report, true)?;
            out.flush()?;
            Ok(Outcome::Ok)
        }
        Err(SalvageError::NotConfirmed(plan)) => {
            print_salvage(context, &mut out, shard, &plan, false)?;
            out.flush()?;
            Err(CliError(format!(
                "{}: nothing was changed; pass --yes to salvage the journal as shown",
                shard.label
            )))
        }
        Err(SalvageError::Inspect(InspectError::NotFound { .. })) => Err(CliError(format!(
            "{}: no journal directory at {} (not a shard directory?)",
            shard.label,
            journal_dir.display()
        ))),
        Err(e) => Err(CliError(format!("{}: {e}", shard.label))),
    }
}

/// The hook the journal's owner gives its open for a cut tail, which a
/// salvage that cuts damage out of the log must run too: a raft node's
/// journal (its superblock records a raft node's place) marks the node
/// awaiting repair, so that it does not vote on a log the salvage cut
/// (the raft module's "Uncertain tail"). An engine shard's has none.
/// When the journal's superblock records no owner (no copy verifies, or
/// there is none) the owner is unknown: a shard whose place in an engine
/// data directory can be read (`expected`: the data directory's
/// superblock and the shard's identity) or that the operator names with
/// `--engine-shard` is an engine shard's; anything else is refused, since
/// a raft node's vote was in that superblock and no salvage brings it
/// back.
fn hook_after_cut(
    shard: &ShardDir,
    journal_dir: &Path,
    expected: Option<JournalOwner>,
    engine_shard: bool,
) -> Result<Option<ringstore_journal::HardStateAfterCut>, CliError> {
    let recorded = ringstore_journal::inspect::recorded_owner(journal_dir)
        .map_err(|e| CliError(format!("{}: {e}", shard.label)))?;
    let in_engine_data_dir = expected.is_some_and(|o| o.shards != 0);
    match recorded {
        Some(owner) if owner.shards == RAFT_NODE_SHARDS => {}
        Some(_) => return Ok(None),
        None if in_engine_data_dir || engine_shard => return Ok(None),
        None => {
            return Err(CliError(format!(
                "{}: the journal's superblock records no owner (no copy verifies, or there is \
                 none) and the shard's place in an engine data directory cannot be read, so \
                 salvage cannot tell a raft node's journal from an engine shard's. A raft node's \
                 vote was in that superblock and no salvage brings it back: such a node must \
                 rejoin its cluster with an empty directory under a new node id. If this is an \
                 engine shard's journal, pass --engine-shard (nothing was changed)",
                shard.label
            )))
        }
    }
    #[cfg(feature = "openraft")]
    return Ok(Some(ringstore::raft::awaiting_repair_after_cut));
    #[cfg(not(feature = "openraft"))]
    Err(CliError(format!(
        "{}: the journal is a raft node's; salvage it with a build that has the `openraft` \
         feature, which marks the node as awaiting repair (nothing was changed)",
        shard.label
    )))
}

fn print_salvage(
    context: &Context,
    out: &mut Out,
    shard: &ShardDir,
    report: &SalvageReport,
    carried_out: bool,
) -> Result<(), CliError> {
    if context.json {
        let salvage: Value = serde_json::from_str(&report.json())?;
        return out.json(&json!({
            "data_dir": context.data_dir,
            "shard": shard.label,
            "index": shard.index,
            "carried_out": carried_out,
            "ok": carried_out,
            "salvage": salvage,
        }));
    }
    let (verb, note, moves) = if carried_out {
        ("salvaged", "", "moved")
    } else {
        (
            "would salvage",
            " (nothing changed yet; --yes carries it out)",
            "to move",
        )
    };
    out.line(format_args!(
        "{}: {verb} the journal in {}{note}",
        shard.label,
        report.dir.display()
    ))?;
    out.line(format_args!("  reopening refused: {}", report.refusal))?;
    match &report.cut {
        Some(cut) => out.line(format_args!(
            "  cut: {} at byte offset {}: {}",
            cut.path.display(),
            cut.offset,
            cut.reason
        ))?,
        None => out.line("  cut: no segment is kept; the journal starts empty")?,
    }
    if let (Some(first), Some(last)) = (report.kept.first(), report.kept.last()) {
        out.line(format_args!(
            "  keeps: segments {}..={} ({} file(s))",
            first.generation,
            last.generation,
            report.kept.len()
        ))?;
    }
    let sb = &report.superblock;
    out.line(format_args!(
        "  superblock: sequence {}{}",
        sb.sequence,
        if sb.fresh {
            " (written anew: no copy of the old one verified)"
        } else {
            ""
        }
    ))?;
    if sb.hard_state_marked {
        out.line(
            "  hard state: marked awaiting repair (a raft node's log was cut: it will not vote \
             until a later term's entry is committed on it, or `--waive-repair <TERM>`)",
        )?;
    }
    out.line(format_args!(
        "  ops lost (above the watermark {}): {}",
        sb.superblock.watermark,
        report.lost_description()
    ))?;
    if report.covered.entries > 0 {
        out.line(format_args!(
            "  at or below the watermark (in a snapshot): {}",
            report.covered.describe()
        ))?;
    }
    if report.moved.is_empty() && report.copied.is_empty() {
        out.line(format_args!("  files {moves}: none"))?;
    } else {
        let mut table = output::table(["file", "into the quarantine folder", "why"]);
        for f in &report.moved {
            table.add_row(vec![
                file_name(&f.from),
                moves.to_string(),
                f.reason.clone(),
            ]);
        }
        for f in &report.copied {
            table.add_row(vec![
                file_name(&f.from),
                "copied (stays)".to_string(),
                f.reason.clone(),
            ]);
        }
        out.line(table)?;
    }
    out.line(format_args!(
        "  quarantine folder: {}",
        report.quarantine.display()
    ))?;
    if carried_out {
        out.line(format_args!(
            "  report: {} and {}",
            report
                .quarantine
                .join(ringstore_journal::salvage::REPORT_TEXT_NAME)
                .display(),
            report
                .quarantine
                .join(ringstore_journal::salvage::REPORT_JSON_NAME)
                .display()
        ))?;
        out.line(format_args!(
            "  next: `ringstore wal verify --shard {}`, then start the engine; the lost ops come \
             back only from a replica or object storage (`ringstore restore`; README, \"After \
             damage\")",
            shard.index
        ))?;
    }
    Ok(())
}
