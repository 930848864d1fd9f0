//! `ringstore snapshot inspect|verify`: the snapshot files of each shard.
//!
//! Both run [`ringstore::snapshot::inspect`], read-only. `inspect` reads
//! each file's 4 KiB header block (header checksum, version, name, domain,
//! length, section table); `verify` also reads every body and checks each
//! section's CRC and the whole-file CRC. Damage in any generation, or a
//! damaged identity file, makes the exit code 1.

use crate::datadir::{shards, ShardArg, ShardDir};
use crate::output::{self, Out, Progress};
use crate::{CliError, Context, Outcome};
use ringstore::snapshot::inspect::{
    inspect_snapshot_dir, list_snapshot_files, read_identity_file, Check, IdentityReport,
    SnapshotDirReport, SnapshotReport,
};
use serde_json::json;

/// `ringstore snapshot ...`.
#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Per snapshot file: watermark, epoch, domain, created time, section
    /// table (name, version, offset, length, CRC) and sizes. Reads header
    /// blocks only.
    Inspect(ShardArg),
    /// Verify the header, every section's CRC and the whole-file CRC of
    /// every generation. Exit 1 naming file and byte offset on damage.
    Verify(ShardArg),
}

/// Runs a `snapshot` command.
pub fn run(context: &Context, command: SnapshotCommand) -> Result<Outcome, CliError> {
    match command {
        SnapshotCommand::Inspect(shard) => snapshots(context, &shard, Check::Header),
        SnapshotCommand::Verify(shard) => snapshots(context, &shard, Check::Full),
    }
}

/// One shard's identity and snapshots.
struct ShardSnapshots {
    identity: IdentityReport,
    snapshots: SnapshotDirReport,
}

impl ShardSnapshots {
    fn is_intact(&self) -> bool {
        !matches!(self.identity, IdentityReport::Damaged { .. })
            && self
                .snapshots
                .snapshots
                .iter()
                .all(SnapshotReport::is_intact)
    }
}

fn inspect_shard(
    context: &Context,
    shard: &ShardDir,
    check: Check,
) -> Result<ShardSnapshots, CliError> {
    let with_label =
        |e: ringstore::snapshot::inspect::InspectError| CliError(format!("{}: {e}", shard.label));
    let identity = read_identity_file(&shard.path).map_err(with_label)?;
    let dir = shard.snapshot_dir();
    let total: u64 = if check == Check::Full {
        list_snapshot_files(&dir)
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
    let snapshots = inspect_snapshot_dir(&dir, check, identity.domain(), &mut |done| {
        bar.set_position(done)
    });
    bar.finish();
    Ok(ShardSnapshots {
        identity,
        snapshots: snapshots.map_err(with_label)?,
    })
}

fn snapshots(context: &Context, shard_arg: &ShardArg, check: Check) -> Result<Outcome, CliError> {
    let shards = shards(&context.data_dir, shard_arg.shard)?;
    let mut out = Out::new();
    let mut values = Vec::new();
    let mut failed = 0;
    for shard in &shards {
        let found = inspect_shard(context, shard, check)?;
        let ok = found.is_intact();
        if !ok {
            failed += 1;
        }
        if context.json {
            values.push(json!({
                "shard": shard.label,
                "index": shard.index,
                "ok": ok,
                "identity": serde_json::to_value(&found.identity)?,
                "newest_intact": found.snapshots.newest_intact(),
                "snapshots": serde_json::to_value(&found.snapshots)?,
            }));
            continue;
        }
        match check {
            Check::Header => print_inspect(&mut out, shard, &found)?,
            Check::Full => print_verify(&mut out, shard, &found)?,
        }
    }
    if context.json {
        out.json(&json!({
            "data_dir": context.data_dir,
            "ok": failed == 0,
            "full_check": check == Check::Full,
            "shards": values,
        }))?;
    }
    out.flush()?;
    if failed > 0 && check == Check::Full {
        eprintln!(
            "snapshot verify: damage found in {failed} of {} shard(s)",
            shards.len()
        );
    }
    Ok(Outcome::from_damaged(failed > 0))
}

fn identity_text(identity: &IdentityReport) -> String {
    match identity {
        IdentityReport::Missing { path } => {
            format!(
                "none at {} (a shard that was never opened?)",
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
        IdentityReport::Damaged {
            path,
            offset,
            reason,
        } => format!(
            "DAMAGE: {} at byte offset {offset}: {reason}",
            path.display()
        ),
    }
}

fn file_name(report: &SnapshotReport) -> String {
    report.path.file_name().map_or_else(
        || report.path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn print_header(out: &mut Out, shard: &ShardDir, found: &ShardSnapshots) -> Result<(), CliError> {
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
            "  note: {} is a snapshot being written, or one a crash interrupted (the next open \
             removes it)",
            temp.display()
        ))?;
    }
    Ok(())
}

fn print_inspect(out: &mut Out, shard: &ShardDir, found: &ShardSnapshots) -> Result<(), CliError> {
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

fn print_verify(out: &mut Out, shard: &ShardDir, found: &ShardSnapshots) -> Result<(), CliError> {
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
            out.line(format_args!("  DAMAGED  {}{what}", file_name(report)))?;
            for damage in &report.damage {
                out.line(format_args!("    DAMAGE: {damage}"))?;
            }
        }
    }
    match found.snapshots.newest_intact() {
        Some(op) => out.line(format_args!(
            "  newest intact snapshot: watermark {op} (what recovery loads)"
        ))?,
        None if !found.snapshots.snapshots.is_empty() => {
            out.line("  no intact snapshot in this directory")?
        }
        None => {}
    }
    out.line(format_args!(
        "{}: {}",
        shard.label,
        if found.is_intact() { "ok" } else { "FAILED" }
    ))?;
    out.line("")
}
