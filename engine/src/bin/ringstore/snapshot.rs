//! `ringstore snapshot inspect|verify`: the identity and snapshot files of
//! each shard.
//!
//! Both run [`ringstore::snapshot::inspect::inspect_shard`], read-only,
//! which decides with the verifiers an open uses. `inspect` reads each
//! file's 4 KiB header block (header checksum, version, name, domain,
//! length, section table) and the identity; it exits 1 if it finds damage
//! in any of them or an open would refuse the identity. `verify` also reads
//! every body (each section's CRC, the whole-file CRC) and the journal's
//! watermark, and exits 1 exactly when opening the shard would refuse it
//! over its identity or snapshots: a missing identity beside data, a
//! damaged identity or one of another version, or no usable snapshot at or
//! above the journal's watermark. A damaged generation an open skips (an
//! older one covers the journal) is reported but passes, as `wal verify`
//! passes a torn tail; `--strict` fails on any damage found. A file whose
//! read fails twice counts as one an open skips (it reads twice too),
//! not as an I/O error of the tool, and a file listed but gone when
//! opened (a running shard pruned it) is left out, as an open would.

use crate::datadir::{shards, ShardArg, ShardDir};
use crate::output::{self, Out, Progress};
use crate::{CliError, Context, Outcome};
use ringstore::snapshot::inspect::{
    inspect_shard, list_snapshot_files, Check, IdentityReport, InspectError, ShardSnapshotsReport,
    SnapshotReport,
};
use serde_json::json;

/// `ringstore snapshot ...`.
#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Per snapshot file: watermark, epoch, domain, created time, section
    /// table (name, version, offset, length, CRC) and sizes. Reads header
    /// blocks only. Exit 1 on damage found in them or in the identity.
    Inspect(ShardArg),
    /// Verify the identity, and the header, every section's CRC and the
    /// whole-file CRC of every generation, against the journal's
    /// watermark. Exit 1 exactly when opening the shard would refuse it,
    /// naming file and byte offset.
    Verify(VerifyArgs),
}

/// `snapshot verify` flags.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    shard: ShardArg,
    /// Fail on any damage found, also in a generation an open skips.
    #[arg(long)]
    strict: bool,
}

/// Runs a `snapshot` command.
pub fn run(context: &Context, command: SnapshotCommand) -> Result<Outcome, CliError> {
    match command {
        SnapshotCommand::Inspect(shard) => snapshots(context, &shard, Check::Header, false),
        SnapshotCommand::Verify(args) => snapshots(context, &args.shard, Check::Full, args.strict),
    }
}

/// Whether the command fails on what it found in one shard.
fn failed(found: &ShardSnapshotsReport, check: Check, strict: bool) -> bool {
    match check {
        // The header checks cannot tell what an open decides about the
        // snapshots (it reads bodies and the journal): any damage counts.
        Check::Header => found.damage_found(),
        Check::Full if strict => found.damage_found(),
        Check::Full => found.open_refused(),
    }
}

fn inspect(
    context: &Context,
    shard: &ShardDir,
    check: Check,
) -> Result<ShardSnapshotsReport, CliError> {
    let with_label = |e: InspectError| CliError(format!("{}: {e}", shard.label));
    let total: u64 = if check == Check::Full {
        list_snapshot_files(&shard.snapshot_dir())
            .map_err(with_label)?
            .snapshots
            .iter()
            .filter_map(|(_, path)| std::fs::metadata(path).ok())
            .map(|m| m.len())
            .sum()
    } else {
        0
    };
    let mut bar = Progress::new(&shard.label, context.json);
    bar.set_length(total);
    let found = inspect_shard(&shard.path, check, &mut |done| bar.set_position(done));
    bar.finish();
    found.map_err(with_label)
}

fn snapshots(
    context: &Context,
    shard_arg: &ShardArg,
    check: Check,
    strict: bool,
) -> Result<Outcome, CliError> {
    let shards = shards(&context.data_dir, shard_arg.shard)?;
    let mut out = Out::new();
    let mut values = Vec::new();
    let mut failures = 0;
    for shard in &shards {
        let found = inspect(context, shard, check)?;
        let ok = !failed(&found, check, strict);
        if !ok {
            failures += 1;
        }
        if context.json {
            values.push(json!({
                "shard": shard.label,
                "index": shard.index,
                "ok": ok,
                "identity": serde_json::to_value(&found.identity)?,
                "newest_intact": found.loads,
                "journal_watermark": found.journal_watermark,
                "journal_intact": found.journal_intact,
                "open_refused": found.open_refused(),
                "refusal": found.refusal.as_ref().map(ToString::to_string),
                "snapshots": serde_json::to_value(&found.snapshots)?,
            }));
            continue;
        }
        match check {
            Check::Header => print_inspect(&mut out, shard, &found)?,
            Check::Full => print_verify(&mut out, shard, &found, ok)?,
        }
    }
    if context.json {
        out.json(&json!({
            "data_dir": context.data_dir,
            "ok": failures == 0,
            "full_check": check == Check::Full,
            "strict": strict,
            "shards": values,
        }))?;
    }
    out.flush()?;
    if failures > 0 && check == Check::Full {
        eprintln!(
            "snapshot verify: {failures} of {} shard(s) {}",
            shards.len(),
            if strict {
                "have damage (--strict)"
            } else {
                "would be refused by an open"
            }
        );
    }
    Ok(Outcome::from_damaged(failures > 0))
}

fn identity_text(identity: &IdentityReport) -> String {
    match identity {
        IdentityReport::Missing { path } => {
            format!(
                "none at {}, and no data beside it (a shard that was never opened; an open \
                 creates a domain)",
                path.display()
            )
        }
        IdentityReport::Valid {
            domain,
            created_unix_ms,
            ..
        } => format!(
            "domain {domain}, joined {}",
            output::unix_ms(*created_unix_ms)
        ),
        IdentityReport::Refused(damage) => format!("REFUSED: {damage}"),
    }
}

fn file_name(report: &SnapshotReport) -> String {
    report.path.file_name().map_or_else(
        || report.path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn print_header(
    out: &mut Out,
    shard: &ShardDir,
    found: &ShardSnapshotsReport,
) -> Result<(), CliError> {
    let snapshots = &found.snapshots;
    out.line(format_args!(
        "{} ({})",
        shard.label,
        snapshots.dir.display()
    ))?;
    out.line(format_args!(
        "  identity: {}",
        identity_text(&found.identity)
    ))?;
    if !snapshots.exists {
        out.line("  no snapshots directory (the shard never checkpointed)")?;
    } else if snapshots.snapshots.is_empty() {
        out.line("  no snapshot files")?;
    }
    for temp in &snapshots.temp_files {
        out.line(format_args!(
            "  note: {} is a snapshot being written or removed, or one a crash interrupted (the \
             next open removes it)",
            temp.display()
        ))?;
    }
    Ok(())
}

fn print_inspect(
    out: &mut Out,
    shard: &ShardDir,
    found: &ShardSnapshotsReport,
) -> Result<(), CliError> {
    print_header(out, shard, found)?;
    let snapshots = &found.snapshots.snapshots;
    if !snapshots.is_empty() {
        let mut table = output::table([
            "file",
            "watermark",
            "epoch",
            "domain",
            "created",
            "sections",
            "body bytes",
            "file bytes",
            "header",
        ]);
        for report in snapshots {
            let dash = || "-".to_string();
            let header = report.header.as_ref();
            table.add_row(vec![
                file_name(report),
                header.map_or_else(dash, |h| h.watermark.to_string()),
                header.map_or_else(dash, |h| h.epoch.to_string()),
                header.map_or_else(dash, |h| h.domain.to_string()),
                header.map_or_else(dash, |h| output::unix_ms(h.created_unix_ms)),
                header.map_or_else(dash, |h| h.section_count.to_string()),
                header.map_or_else(dash, |h| output::bytes(h.body_bytes)),
                output::bytes(report.file_bytes),
                if report.is_intact() { "ok" } else { "DAMAGED" }.into(),
            ]);
        }
        out.line(table)?;
    }
    for report in snapshots {
        if !report.sections.is_empty() {
            out.line(format_args!("  sections of {}:", file_name(report)))?;
            let mut table = output::table(["name", "version", "offset", "length", "crc32"]);
            for section in &report.sections {
                table.add_row(vec![
                    section.name.clone(),
                    section.version.to_string(),
                    section.offset.to_string(),
                    output::bytes(section.len),
                    format!("{:#010x}", section.checksum),
                ]);
            }
            out.line(table)?;
        }
        for damage in &report.damage {
            out.line(format_args!("  DAMAGE: {damage}"))?;
        }
    }
    out.line("")
}

fn print_verify(
    out: &mut Out,
    shard: &ShardDir,
    found: &ShardSnapshotsReport,
    ok: bool,
) -> Result<(), CliError> {
    print_header(out, shard, found)?;
    for report in &found.snapshots.snapshots {
        let what = report.header.as_ref().map_or_else(String::new, |h| {
            format!(
                " (watermark {}, epoch {}, {} section(s), {})",
                h.watermark,
                h.epoch,
                h.section_count,
                output::bytes(report.file_bytes)
            )
        });
        if report.is_intact() {
            out.line(format_args!("  ok       {}{what}", file_name(report)))?;
        } else {
            let skipped = found.skipped.iter().any(|s| s.path == report.path);
            out.line(format_args!(
                "  DAMAGED  {}{what}{}",
                file_name(report),
                if skipped { " (an open skips it)" } else { "" }
            ))?;
            for damage in &report.damage {
                out.line(format_args!("    DAMAGE: {damage}"))?;
            }
            if let Some(failure) = &report.read_failure {
                out.line(format_args!(
                    "    UNREADABLE: {} failed at byte offset {}: {} (twice)",
                    failure.op, failure.offset, failure.message
                ))?;
            }
        }
    }
    match found.loads {
        Some(op) => out.line(format_args!(
            "  newest intact snapshot: watermark {op} (what recovery loads)"
        ))?,
        None if !found.snapshots.snapshots.is_empty() => {
            out.line("  no intact snapshot in this directory")?
        }
        None => {}
    }
    if let Some(watermark) = found.journal_watermark {
        out.line(format_args!(
            "  journal watermark: {watermark} (ops at or below it were compacted away){}",
            if found.journal_intact == Some(false) {
                "; the journal has damage: see `ringstore wal verify`"
            } else {
                ""
            }
        ))?;
    }
    match &found.refusal {
        Some(refusal) => out.line(format_args!("  REFUSED by an open: {refusal}"))?,
        None if found.damage_found() => out.line(
            "  an open accepts the shard (it skips or never reads the damaged files); \
             --strict fails on them",
        )?,
        None => {}
    }
    out.line(format_args!(
        "{}: {}",
        shard.label,
        if ok { "ok" } else { "FAILED" }
    ))?;
    out.line("")
}
