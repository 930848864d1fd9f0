//! `ringstore wal inspect|verify|dump`: the write-ahead log of each shard.
//!
//! All three run [`ringstore_journal::inspect::scan_journal`], which reads
//! and verifies every entry (header and payload checksums, identity,
//! placement) read-only and applies recovery's decision table; they differ
//! in what they print. Damage — bytes that fail verification where valid
//! data must be, or ops missing above the watermark — makes the exit code 1.
//! A torn tail (unacknowledged bytes of an unfinished write after the last
//! valid entry, which recovery cuts) is reported but is not damage, unless
//! `wal verify --strict`.

use crate::datadir::{shards, ShardArg, ShardDir};
use crate::output::{self, Out, Progress};
use crate::{CliError, Context, Outcome};
use ringstore::broker::Command;
use ringstore_journal::format::EntryKind;
use ringstore_journal::inspect::{
    scan_journal, Damage, EntryInfo, InspectError, JournalReport, ScanObserver, SegmentEnd,
    SegmentReport, Tail, MISSING_RANGES_MAX,
};
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
}

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
    /// Also show padding entries.
    #[arg(long)]
    padding: bool,
}

/// Runs a `wal` command.
pub fn run(context: &Context, command: WalCommand) -> Result<Outcome, CliError> {
    match command {
        WalCommand::Inspect(shard) => inspect(context, &shard),
        WalCommand::Verify(args) => verify(context, &args),
        WalCommand::Dump(args) => dump(context, &args),
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

fn scan(shard: &ShardDir, observer: &mut dyn ScanObserver) -> Result<JournalReport, CliError> {
    let dir = shard.journal_dir();
    scan_journal(&dir, observer).map_err(|e| match e {
        InspectError::NotFound { .. } => CliError(format!(
            "{}: no journal directory at {} (not a shard directory?)",
            shard.label,
            dir.display()
        )),
        other => CliError(format!("{}: {other}", shard.label)),
    })
}

fn scan_with_progress(context: &Context, shard: &ShardDir) -> Result<JournalReport, CliError> {
    let mut progress = ScanProgress(Progress::new(&shard.label, context.json));
    let report = scan(shard, &mut progress);
    progress.0.finish();
    report
}

fn inspect(context: &Context, shard_arg: &ShardArg) -> Result<Outcome, CliError> {
    let shards = shards(&context.data_dir, shard_arg.shard)?;
    let mut out = Out::new();
    let mut reports = Vec::new();
    let mut damaged = false;
    for shard in &shards {
        let report = scan_with_progress(context, shard)?;
        damaged |= !report.is_intact();
        if context.json {
            reports.push(shard_json(shard, &report));
        } else {
            print_inspect(&mut out, shard, &report)?;
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
    print_problems(out, report)?;
    out.line("")
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
        header.map_or_else(dash, |h| if h.no_sync { "no-sync" } else { "sync" }.into()),
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
        SegmentEnd::Sealed { offset } => format!("ends at {offset} (as its successor records)"),
        SegmentEnd::Torn { offset, reason } => format!("TORN TAIL at {offset}: {reason}"),
        SegmentEnd::Damaged { offset } => format!("DAMAGED at {offset}"),
        SegmentEnd::Incomplete => "spare / incomplete (no header, no data)".into(),
        SegmentEnd::Unscanned => "not scanned".into(),
        SegmentEnd::Stopped { offset } => format!("stopped at {offset}"),
    }
}

fn tail_text(tail: &Tail) -> String {
    match tail {
        Tail::Empty => "empty journal (no segments)".into(),
        Tail::Clean { path, offset } => format!("clean, log ends at {}:{offset}", file_name(path)),
        Tail::Torn {
            path,
            offset,
            reason,
        } => format!(
            "torn tail at {} byte offset {offset} ({reason}): unacknowledged bytes of an \
             unfinished write; recovery cuts the log there",
            path.display()
        ),
        Tail::Unknown => "undecided (the last segment is damaged or was not scanned)".into(),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn print_problems(out: &mut Out, report: &JournalReport) -> Result<(), CliError> {
    for damage in &report.damage {
        out.line(format_args!("  DAMAGE: {damage}"))?;
    }
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
                "  note: ops {range} (above the watermark {}, below the first op present) are                  not in the journal: retired segments whose watermark record the torn tail took                  along; replay needs a snapshot at or above op {last}",
                report.watermark
            ))?;
        } else {
            out.line(format_args!(
                "  DAMAGE: ops {range} missing above the watermark {} in {}, before the first op                  present (replay cannot pass them)",
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
        let report = scan_with_progress(context, shard)?;
        let torn = matches!(report.tail, Tail::Torn { .. });
        let ok = report.is_intact() && !(args.strict && torn);
        if !ok {
            failed += 1;
        }
        if context.json {
            let mut value = shard_json(shard, &report);
            value["ok"] = json!(ok);
            reports.push(value);
            continue;
        }
        if ok {
            out.line(format_args!("{}: ok: {}", shard.label, summary(&report)))?;
            out.line(format_args!("  tail: {}", tail_text(&report.tail)))?;
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
            print_problems(&mut out, &report)?;
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
            EntryKind::Padding => self.args.padding && self.last_in_range,
            EntryKind::Data | EntryKind::Watermark => {
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
                (EntryKind::Padding, _) => String::new(),
            };
            let op = match entry.kind {
                EntryKind::Padding => "-".to_string(),
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
        let report = scan(shard, &mut dumper);
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
        } => json!({"state": "torn", "path": path, "offset": offset, "reason": reason}),
        Tail::Unknown => json!({"state": "unknown"}),
    }
}

fn end_json(end: &SegmentEnd) -> Value {
    match end {
        SegmentEnd::Clean { offset } => json!({"state": "clean", "offset": offset}),
        SegmentEnd::Sealed { offset } => json!({"state": "sealed", "offset": offset}),
        SegmentEnd::Torn { offset, reason } => {
            json!({"state": "torn", "offset": offset, "reason": reason})
        }
        SegmentEnd::Damaged { offset } => json!({"state": "damaged", "offset": offset}),
        SegmentEnd::Incomplete => json!({"state": "incomplete"}),
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
            "writes_in_flight": h.writes_in_flight,
        })
    });
    json!({
        "path": segment.path,
        "generation": segment.generation,
        "file_bytes": segment.file_bytes,
        "header": header,
        "data_entries": segment.data_entries,
        "data_bytes": segment.data_bytes,
        "watermark_records": segment.watermark_records,
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
        "damage": damage_json(&report.damage),
        "segments": report.segments.iter().map(segment_json).collect::<Vec<_>>(),
    })
}
