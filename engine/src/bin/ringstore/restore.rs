//! `ringstore restore`: rebuild a lost shard from object storage.
//!
//! Rebuilds `<data-dir>/shard-NNN` from the newest intact snapshot of the
//! domain in the `[object_store]` of `--config` (the defaults without one:
//! the local directory `<data-dir>/object-store`), through
//! `EngineBuilder::restore_shard` and so `ringstore::cold_restore`: the
//! shard directory must hold no shard (move a damaged one aside first), a
//! damaged newest object is skipped in favour of the previous generation,
//! and the restored shard's op numbers continue above every snapshot and
//! every numbering claim of an earlier reset or restore in the store plus
//! one journal ring (above every op the lost shard acknowledged in the
//! default `before-compaction` upload mode), its epochs above every epoch
//! the snapshots and claims show. The restore writes its own claim
//! (`<domain>/numbering/<op>-<epoch>`, `engine/FORMAT.md`), so the store
//! must take writes. The shard is opened, checked and closed again; start the
//! engine afterwards. The data directory's manifest is written if the
//! directory is new (shard count: `--shards`, else the config's), checked
//! otherwise.
//!
//! Prints what it restored (generation, op and epoch before and after,
//! skipped objects with the reason, bytes, time) as a table, or one JSON
//! document with `--json`. A failure (no snapshot of the domain, every
//! generation damaged, the store unreachable or refusing the claim's
//! write, the directory in use) exits with code 2 and the reason.

use crate::output::{self, Out};
use crate::{CliError, Context, Outcome};
use ringstore::broker::Metadata;
use ringstore::runtime::{Engine, ShardRestore};
use uuid::Uuid;

/// `ringstore restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The domain of the shard to rebuild: the UUID its objects are stored
    /// under (`ringstore snapshot inspect` shows a shard's domain).
    #[arg(long, value_name = "UUID")]
    pub domain: Uuid,
    /// The shard to rebuild (the NNN of shard-NNN). Required: a domain
    /// restored into another shard's place would hold keys that route
    /// elsewhere, and its own keys would read as missing.
    #[arg(long, value_name = "N")]
    pub shard: usize,
    /// The engine's shard count. Default: what the data dir's superblock
    /// records; required for a data dir that records none (a lost disk):
    /// keys route by the count, so a guess would put the shard's keys where
    /// no request looks for them.
    #[arg(long)]
    pub shards: Option<usize>,
}

/// Runs `ringstore restore`.
pub fn run(context: &Context, args: RestoreArgs) -> Result<Outcome, CliError> {
    let section = context.config.object_store.clone().unwrap_or_default();
    let settings = section.settings(&context.data_dir)?;
    let store = settings.remote().describe().to_string();
    let recorded = ringstore::runtime::startup::read_manifest(&context.data_dir)?;
    let Some(shards) = args.shards.or(recorded) else {
        return Err(CliError(format!(
            "{} records no shard count (a new or lost data directory): give --shards N, the \
             count of the engine shard {} belonged to (keys route by it)",
            context.data_dir.display(),
            args.shard
        )));
    };
    let checkpoint = context.config.checkpoint.clone();
    let restored = Engine::<Metadata>::builder()
        .data_dir(&context.data_dir)
        .shards(shards)
        .pin(false)
        .configure_shards(move |_, shard| {
            shard.checkpoint_policy(ringstore::CheckpointPolicy {
                ops_max: checkpoint.ops_max,
                bytes_max: checkpoint.bytes_max,
                ..Default::default()
            })
        })
        .object_store(settings)
        .restore_shard(args.shard, args.domain)
        .map_err(|e| {
            CliError(format!(
                "restoring shard {} of {} from {store}: {e}",
                args.shard,
                context.data_dir.display()
            ))
        })?;
    print(context, &restored)?;
    // Restored, but from less than the newest state the store should have
    // held (damaged generations passed over, a reset never uploaded): exit
    // 1, as the tools do when they find damage, so a script can tell.
    let report = &restored.report;
    if report.skipped.is_empty() && report.unuploaded_reset.is_none() {
        Ok(Outcome::Ok)
    } else {
        Ok(Outcome::Damaged)
    }
}

fn print(context: &Context, restored: &ShardRestore) -> Result<(), CliError> {
    let report = &restored.report;
    let source = &report.reset.source;
    let floor = report.reset.floor;
    let mut out = Out::new();
    if context.json {
        let skipped: Vec<serde_json::Value> = report
            .skipped
            .iter()
            .map(|s| {
                serde_json::json!({
                    "key": s.snapshot.key,
                    "op": s.snapshot.op,
                    "bytes": s.snapshot.bytes,
                    "reason": s.reason.to_string(),
                })
            })
            .collect();
        out.json(&serde_json::json!({
            "shard": restored.shard,
            "dir": restored.dir,
            "domain": report.domain.to_string(),
            "store": report.store,
            "generations_listed": report.listed.len(),
            "restored": {
                "key": report.restored.key,
                "op": source.watermark,
                "epoch": source.epoch,
                "bytes": report.restored.bytes,
            },
            "floor": { "op": floor.op, "epoch": floor.epoch },
            "next_op": floor.op + 1,
            "skipped": skipped,
            "downloaded_bytes": report.downloaded_bytes,
            "unuploaded_reset_op": report.unuploaded_reset.map(|claim| claim.op),
            "reset_snapshot_uploaded": restored.reset_snapshot_uploaded,
            "seconds": report.elapsed.as_secs_f64(),
        }))?;
        return out.flush();
    }
    let mut table = output::table(["", "value"]);
    let mut row = |name: &str, value: String| {
        table.add_row(vec![name.to_string(), value]);
    };
    row(
        "shard",
        format!("{} ({})", restored.shard, restored.dir.display()),
    );
    row("domain", report.domain.to_string());
    row("object store", report.store.clone());
    row("generations listed", report.listed.len().to_string());
    row(
        "restored",
        format!(
            "{} ({})",
            report.restored.key,
            output::bytes(report.restored.bytes)
        ),
    );
    row(
        "op before -> after",
        format!(
            "{} -> {} (next op {})",
            source.watermark,
            floor.op,
            floor.op + 1
        ),
    );
    row(
        "epoch before -> after",
        format!("{} -> {}", source.epoch, floor.epoch),
    );
    if report.skipped.is_empty() {
        row("skipped", "none".into());
    }
    for skipped in &report.skipped {
        row(
            "skipped",
            format!("{}: {}", skipped.snapshot.key, skipped.reason),
        );
    }
    if let Some(claim) = report.unuploaded_reset {
        row(
            "NOT RESTORED",
            format!(
                "a reset at op {} whose snapshot never reached the store: its state, and \
                 every op acknowledged after it, are not in what was restored",
                claim.op
            ),
        );
    }
    row("downloaded", output::bytes(report.downloaded_bytes));
    row(
        "reset snapshot uploaded",
        if restored.reset_snapshot_uploaded {
            "yes".into()
        } else {
            "not yet (the shard uploads it when the engine starts)".into()
        },
    );
    row("time", format!("{:.3} s", report.elapsed.as_secs_f64()));
    out.line(table)?;
    out.flush()
}
