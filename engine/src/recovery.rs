//! Opening a shard: identity, newest valid snapshot, journal, replay.
//!
//! 0. **Restore marker.** A directory holding the marker of an unfinished
//!    cold restore ([`crate::layout::RESTORE_MARKER_NAME`]) is refused
//!    with [`Error::RestoreIncomplete`]: its contents are a restore's half
//!    work, not a shard. A builder given a step that prepares the
//!    directory (set by a cold restore, which starts over) runs it here
//!    instead, with the directory locked and before anything in it is
//!    read. Recovery does not know what the step is: the core does not
//!    name its extensions.
//! 1. **Identity.** Read the domain from `identity`; a new, empty shard
//!    directory gets a fresh random domain. A directory that holds data but
//!    no identity is refused: its domain is unknown. The rule, with every
//!    case, is [`crate::layout::identity::identity_verdict`]'s.
//! 2. **Snapshot.** Load the newest snapshot that verifies
//!    ([`crate::snapshot::verify`]), noting every newer one skipped and
//!    why. A snapshot that verifies but does not restore (unknown section
//!    or version) is an error, not a skip: it is not damage, and an older
//!    snapshot would silently be older state.
//! 3. **Journal.** Open it (its own recovery verifies the log's structure
//!    and tail and cuts only a provably torn tail; replay then reads, and so
//!    verifies, every entry above the snapshot). If its watermark is above the snapshot,
//!    the ops in between were compacted on the strength of a snapshot that
//!    is now unusable: [`Error::SnapshotBehindJournal`], naming every
//!    snapshot file tried and why it was skipped
//!    ([`crate::snapshot::verify::snapshot_covers_journal`]).
//!
//! Steps 1 to 3 decide with the same sans-IO functions as `ringstore
//! snapshot verify`, which therefore refuses a shard exactly when this
//! would (over its identity and snapshots), with the same message.
//! 4. **Replay** every op above the snapshot, in order, through the state
//!    machine. A missing op below the journal's last op is
//!    [`Error::ReplayGap`]: skipping it would apply later commands to the
//!    wrong state.
//! 4b. **Set aside** every snapshot passed over in step 2 whose op is above
//!    the state rebuilt (the journal ends below it: a `NoSync` journal
//!    after a power loss, a tail cut, a reset a crash interrupted): it is
//!    renamed with [`PASSED_OVER_SUFFIX`] (logged at error level, counted
//!    in `ringstore_snapshots_set_aside_total`). The shard goes on in the
//!    history rebuilt here and numbers new ops from the journal's end, at
//!    ops that snapshot also holds; a later open that could read it (the
//!    fault was transient) would otherwise load it and drop those new
//!    commands without a word. Done last, once nothing else of the open
//!    can fail: an open that fails leaves it for the retry to load.
//! 5. **Catch up.** If the journal holds nothing above the snapshot (after
//!    a reset), its watermark and epoch are raised to the snapshot's so new
//!    ops number above it.

use crate::config::{ShardBuilder, ShardConfig};
use crate::error::{Error, Result, SkippedSnapshot};
use crate::layout::identity::{
    data_files, identity_verdict, journal_listing, read_identity_bytes, record_journal_created,
    write_identity, Identity, IdentityVerdict, IDENTITY_FILE_NAME,
};
use crate::layout::lock::DirLock;

use crate::layout::{JOURNAL_DIR_NAME, SNAPSHOT_DIR_NAME};
use crate::machine::{decode, restore_state, OpId, StateMachine};
use crate::snapshot::verify::snapshot_covers_journal;
use crate::snapshot::{parse_snapshot_file_name, SnapshotMeta, SnapshotStore};
use ringstore_journal::storage::Storage;
use ringstore_journal::{Journal, JournalOwner, LogItem, RecoveryReport};
use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};
use uuid::Uuid;

/// What opening a shard found and did.
#[derive(Debug, Clone)]
pub struct ShardRecoveryReport {
    /// The shard's domain.
    pub domain: Uuid,
    /// True if the directory was new and this open created the domain.
    pub domain_created: bool,
    /// The snapshot the state was restored from (`None`: empty state).
    pub snapshot: Option<SnapshotMeta>,
    /// Newer snapshot files that did not verify, with the reasons.
    pub skipped_snapshots: Vec<SkippedSnapshot>,
    /// Ops replayed from the journal.
    pub replayed_ops: u64,
    /// Bytes of commands replayed.
    pub replayed_bytes: u64,
    /// The journal's own recovery report.
    pub journal: RecoveryReport,
    /// Time to read and verify the snapshot file.
    pub snapshot_time: Duration,
    /// Time to restore the state machines from its sections.
    pub restore_time: Duration,
    /// Time to open the journal (its scan).
    pub journal_time: Duration,
    /// Time to replay.
    pub replay_time: Duration,
}

/// The newest snapshot a shard relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnapshotPoint {
    pub watermark: u64,
    pub epoch: u64,
    /// `command_bytes_total` when it was frozen.
    pub command_bytes_total: u64,
}

/// What recovery rebuilt, for the shard (`Shard::start`) to start from.
pub(crate) struct Recovered<M: StateMachine, S: Storage> {
    pub config: ShardConfig,
    pub storage: S,
    pub domain: Uuid,
    pub journal: Journal<S>,
    pub snapshots: SnapshotStore<S>,
    pub machine: M,
    pub applied: OpId,
    pub snapshot: Option<SnapshotPoint>,
    pub previous_snapshot: Option<u64>,
    pub report: ShardRecoveryReport,
    pub lock: Option<DirLock<S::Lock>>,
    pub metrics_label: String,
}

pub(crate) async fn recover<M: StateMachine, S: Storage>(
    mut builder: ShardBuilder<M, S>,
) -> Result<Recovered<M, S>> {
    let dir = builder.dir.clone();
    let storage = builder.storage.clone();
    let metrics_label = builder.metrics_label.clone().unwrap_or_else(|| {
        dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    });
    // A directory that is gone is refused before anything would create it.
    if !builder.create_if_missing {
        match storage.list_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoShard { path: dir });
            }
            Err(e) => return Err(Error::io("list shard directory", &dir, e)),
            Ok(_) => {}
        }
    }
    ringstore_journal::storage::prepare_dir(&storage, &dir)
        .await
        .map_err(|e| Error::io("prepare shard directory", &dir, e))?;
    // Before anything is read: another process may be appending.
    let lock = if builder.lock_dir {
        Some(crate::layout::lock::acquire_on_reactor(&storage, &dir).await?)
    } else {
        None
    };
    let journal_dir = dir.join(JOURNAL_DIR_NAME);

    // 0. An unfinished cold restore, or the builder's own preparation of
    // the directory (a cold restore's: it clears the leftovers itself).
    let marked = crate::layout::restore_marker_present(&storage, &dir)?;
    match builder.prepare_dir.take() {
        Some(prepare) => prepare(storage.clone(), dir.clone(), marked).await?,
        None if marked => {
            return Err(Error::RestoreIncomplete {
                path: dir.join(crate::layout::RESTORE_MARKER_NAME),
            })
        }
        None => {}
    }

    let snapshots = SnapshotStore::open(storage.clone(), dir.join(SNAPSHOT_DIR_NAME)).await?;

    // 1. Identity (the rule is `identity_verdict`'s, shared with `snapshot
    // verify`).
    let identity_path = dir.join(IDENTITY_FILE_NAME);
    let identity_bytes = read_identity_bytes(&storage, &dir).await?;
    let snapshot_names = storage
        .list_dir(snapshots.dir())
        .map_err(|e| Error::io("list snapshot directory", snapshots.dir(), e))?;
    let journal_names = journal_listing(storage.list_dir(&journal_dir))
        .map_err(|e| Error::io("list journal directory", &journal_dir, e))?;
    let data = data_files(&dir, &snapshot_names, &journal_names);
    let (identity, domain_created) =
        match identity_verdict(&identity_path, identity_bytes.as_deref(), &data)? {
            IdentityVerdict::Found(identity) => (identity, false),
            IdentityVerdict::Create if !builder.create_if_missing => {
                return Err(Error::NoShard { path: dir });
            }
            IdentityVerdict::Create => {
                let identity = Identity::new(Uuid::new_v4());
                write_identity(&storage, &dir, &identity).await?;
                metrics::counter!("ringstore_shards_created_total").increment(1);
                tracing::info!(
                    dir = %dir.display(),
                    domain = %identity.domain,
                    "created a new, empty shard: the directory held none"
                );
                (identity, true)
            }
        };
    let domain = identity.domain;

    // 2. Snapshot.
    let started = Instant::now();
    let (loaded, skipped) = snapshots.load_newest(domain).await?;
    let snapshot_time = started.elapsed();
    let started = Instant::now();
    let (machine, snapshot_meta) = match loaded {
        Some(loaded) => {
            let machine = restore_state::<M>(loaded.sections).map_err(|e| Error::Restore {
                path: loaded.meta.path.clone(),
                source: Arc::new(e),
            })?;
            (machine, Some(loaded.meta))
        }
        None => (M::default(), None),
    };
    let restore_time = started.elapsed();
    let snapshot_op = snapshot_meta.as_ref().map_or(0, |m| m.watermark);
    let snapshot_epoch = snapshot_meta.as_ref().map_or(0, |m| m.epoch);
    let previous_snapshot = snapshots
        .generations()?
        .into_iter()
        .map(|(op, _)| op)
        .filter(|&op| op < snapshot_op)
        .max();

    // 3. Journal.
    let started = Instant::now();
    let journal_setup = std::mem::replace(&mut builder.journal_setup, Box::new(|b| b));
    // The journal's superblock records whose it is: a journal directory of
    // another domain, or of another shard's place, is refused.
    let (shard, shards) = builder.placement.unwrap_or((0, 0));
    let owner = JournalOwner {
        domain: *domain.as_bytes(),
        shard,
        shards,
    };
    let mut journal_builder =
        journal_setup(Journal::builder(&journal_dir).storage(storage.clone())).owner(owner);
    if let Some(rate) = builder.scrub_bytes_per_second {
        journal_builder = journal_builder.scrub_rate(rate.get());
    }
    let journal = journal_builder.open().await.map_err(|e| match e {
        ringstore_journal::Error::WrongOwner {
            path,
            recorded,
            expected,
        } => Error::ForeignJournal {
            identity: identity_path.clone(),
            superblock: path,
            expected,
            recorded,
        },
        other => other.into(),
    })?;
    // The journal exists now: from here on an open that finds none refuses.
    if let Err(e) = record_journal_created(&storage, &dir, &identity).await {
        let _ = journal.close().await;
        return Err(e);
    }
    let journal_time = started.elapsed();
    let config = match builder.validate(journal.config().slot_count) {
        Ok(config) => config,
        Err(e) => {
            let _ = journal.close().await;
            return Err(e);
        }
    };
    let covered = snapshot_covers_journal(
        snapshots.dir(),
        snapshot_meta
            .as_ref()
            .map(|m| (m.watermark, m.path.as_path())),
        &skipped,
        &journal_dir,
        journal.watermark(),
    );
    if let Err(e) = covered {
        let _ = journal.close().await;
        return Err(e);
    }

    // 4. Replay.
    let started = Instant::now();
    let mut machine = machine;
    let mut applied = OpId {
        op: snapshot_op,
        epoch: snapshot_epoch,
    };
    let mut replayed_ops = 0;
    let mut replayed_bytes = 0;
    let last_op = journal.next_op().saturating_sub(1);
    if last_op > snapshot_op {
        let replayed = replay(&journal, &mut machine, snapshot_op, last_op).await;
        match replayed {
            Ok((to, ops, bytes)) => {
                applied = to;
                replayed_ops = ops;
                replayed_bytes = bytes;
            }
            Err(e) => {
                let _ = journal.close().await;
                return Err(e);
            }
        }
    }
    let replay_time = started.elapsed();

    // 5. Catch up after a reset.
    let caught_up = async {
        if journal.next_op() <= snapshot_op {
            journal.advance_watermark(snapshot_op).await?;
        }
        if journal.epoch() < snapshot_epoch {
            journal.set_epoch(snapshot_epoch)?;
        }
        Ok::<(), Error>(())
    }
    .await;
    // 4b, done last: only an open that goes on sets a snapshot aside (a
    // retry after a failure here may still read and load it).
    let opened = match caught_up {
        Ok(()) => set_aside_passed_over(&storage, snapshots.dir(), &skipped, applied.op).await,
        Err(e) => Err(e),
    };
    if let Err(e) = opened {
        let _ = journal.close().await;
        return Err(e);
    }

    let report = ShardRecoveryReport {
        domain,
        domain_created,
        snapshot: snapshot_meta.clone(),
        skipped_snapshots: skipped,
        replayed_ops,
        replayed_bytes,
        journal: journal.recovery_report().clone(),
        snapshot_time,
        restore_time,
        journal_time,
        replay_time,
    };
    tracing::info!(
        dir = %dir.display(),
        %domain,
        snapshot_op,
        replayed_ops,
        skipped = report.skipped_snapshots.len(),
        "shard recovered"
    );
    Ok(Recovered {
        config,
        storage,
        domain,
        journal,
        snapshots,
        machine,
        applied,
        snapshot: snapshot_meta.map(|m| SnapshotPoint {
            watermark: m.watermark,
            epoch: m.epoch,
            command_bytes_total: 0,
        }),
        previous_snapshot,
        report,
        lock,
        metrics_label,
    })
}

/// Applies ops `from + 1 ..= to` in order. Returns the last op applied and
/// how many ops and bytes were replayed.
async fn replay<M: StateMachine, S: Storage>(
    journal: &Journal<S>,
    machine: &mut M,
    from: u64,
    to: u64,
) -> Result<(OpId, u64, u64)> {
    let mut entries = journal.entries(from + 1..=to);
    let mut applied = OpId { op: from, epoch: 0 };
    let mut ops = 0;
    let mut bytes = 0;
    while let Some(item) = entries.next().await {
        match item? {
            LogItem::Present(entry) => {
                let command = decode(&entry.payload).map_err(|e| Error::CommandDecode {
                    op: entry.op,
                    source: Arc::new(e),
                })?;
                applied = OpId {
                    op: entry.op,
                    epoch: entry.epoch,
                };
                // Rejections are part of the history: replay them too.
                let _ = machine.apply(applied, command);
                ops += 1;
                bytes += entry.payload.len() as u64;
            }
            LogItem::Missing(op) => {
                return Err(Error::ReplayGap {
                    op,
                    snapshot_op: from,
                    last_op: to,
                });
            }
        }
    }
    Ok((applied, ops, bytes))
}

/// Suffix of a snapshot set aside because an open passed over it above the
/// state it rebuilt (step 4b of the module docs). No open loads it again;
/// it stays for an operator to inspect.
pub const PASSED_OVER_SUFFIX: &str = ".passed-over";

/// Step 4b: renames every snapshot in `skipped` above `applied` with
/// [`PASSED_OVER_SUFFIX`], then makes the renames durable.
async fn set_aside_passed_over<S: Storage>(
    storage: &S,
    dir: &Path,
    skipped: &[SkippedSnapshot],
    applied: u64,
) -> Result<()> {
    let mut renamed = false;
    for passed in skipped {
        let Some(name) = passed.path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(op) = parse_snapshot_file_name(name) else {
            continue;
        };
        if op <= applied {
            // The journal reaches past it: a later open that loads it
            // replays the same history.
            continue;
        }
        let aside = passed
            .path
            .with_file_name(format!("{name}{PASSED_OVER_SUFFIX}"));
        storage
            .rename(&passed.path, &aside)
            .await
            .map_err(|e| Error::io("set aside a snapshot passed over", &passed.path, e))?;
        renamed = true;
        metrics::counter!("ringstore_snapshots_set_aside_total").increment(1);
        tracing::error!(
            snapshot = %passed.path.display(),
            set_aside_as = %aside.display(),
            reason = %passed.reason,
            applied,
            "a snapshot passed over holds ops {}..={op} that this open could not rebuild (the \
             journal ends at {applied}); the shard goes on from op {applied} and the snapshot \
             is set aside so that no later open brings its history back",
            applied + 1
        );
    }
    if renamed {
        storage
            .sync_dir(dir)
            .await
            .map_err(|e| Error::io("fsync snapshot directory", dir, e))?;
    }
    Ok(())
}
