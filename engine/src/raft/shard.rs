//! One raft shard's durable state on its reactor: the journal (the Raft
//! log and hard state), the snapshot store, and the state machine with
//! what Raft needs beside it (last applied id, membership, client
//! sessions). [`open`] recovers all of it; `log` and `machine` are the
//! openraft faces of it.

use super::error::RaftStoreError;
use super::reactor::{LocalBoxFuture, ReactorState, ReactorThread};
use super::types::Response;
use super::types::{LogId, RaftTypes, SnapshotMeta, StoredMembership};
use crate::config::CHECKPOINT_BUSY_WRITE_PERCENT_DEFAULT;
use crate::layout::identity::{
    data_files, identity_verdict, journal_listing, read_identity_bytes, record_journal_created,
    write_identity, Identity, IdentityVerdict, IDENTITY_FILE_NAME,
};
use crate::layout::lock::DirLock;
use crate::layout::{JOURNAL_DIR_NAME, SNAPSHOT_DIR_NAME};
use crate::machine::{decode_records, restore_state, FrozenSection, RecordsEncoder, SectionSet};
use crate::snapshot::verify::snapshot_covers_journal;
use crate::snapshot::{LoadedSnapshot, Pacing, SnapshotStore};
use crate::StateMachine;
use ringstore_journal::storage::{DmaStorage, Storage};
use ringstore_journal::{Journal, JournalBuilder, JournalOwner};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The snapshot section holding what Raft keeps beside the machine.
pub const RAFT_SECTION: &str = "raft";

pub use crate::layout::RAFT_NODE_SHARDS;
/// Its format version.
const RAFT_SECTION_VERSION: u32 = 1;

/// Client sessions remembered at most. Beyond it the session used least
/// recently (by op) is forgotten, deterministically on every replica; a
/// forgotten client's retry of an old command is then applied again, so
/// clients must not outnumber it.
pub const SESSIONS_MAX: usize = 4096;

/// Snapshot generations kept (older ones are removed once the journal's
/// watermark has passed them).
const SNAPSHOTS_KEPT: usize = 2;

/// A client's last applied command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Session<R> {
    /// Its sequence number.
    pub seq: u64,
    /// The op it was applied at (orders eviction).
    pub op: u64,
    /// Its response, returned again to a retry.
    pub response: R,
}

/// The state machine and what Raft keeps with it.
pub(super) struct Applied<C: RaftTypes, M> {
    pub machine: M,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership<C>,
    pub sessions: BTreeMap<u64, Session<C::R>>,
}

/// The raft section's one record.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(super) struct RaftRecord<C: RaftTypes> {
    pub(super) last_applied: Option<LogId>,
    pub(super) membership: StoredMembership<C>,
    /// The snapshot's name as openraft 0.9 knew it (term, op, time; 0.10
    /// has no snapshot id); kept for the section's format, read by nobody.
    pub(super) snapshot_id: String,
    pub(super) sessions: Vec<(u64, Session<C::R>)>,
}

/// The newest snapshot: what openraft is told about it, and its file.
pub(super) struct CurrentSnapshot<C: RaftTypes> {
    pub meta: SnapshotMeta<C>,
    pub path: PathBuf,
}

/// Everything a raft shard owns, on its reactor.
pub struct RaftShard<C: RaftTypes, M> {
    pub(super) journal: Journal<DmaStorage>,
    pub(super) snapshots: SnapshotStore<DmaStorage>,
    pub(super) domain: Uuid,
    pub(super) applied: RefCell<Applied<C, M>>,
    pub(super) current: RefCell<Option<CurrentSnapshot<C>>>,
    /// Appends queued and not yet durable: a snapshot being written gives
    /// way while there are any.
    pub(super) appends_in_flight: Cell<usize>,
    /// Snapshots received from a leader and installed since the open.
    pub(super) snapshots_installed: Cell<u64>,
    /// Snapshots rebuilt since the open because the current one was found
    /// damaged when it was to be sent ([`RaftShard::current_snapshot_bytes`]).
    pub(super) snapshots_rebuilt: Cell<u64>,
    /// One snapshot file is written at a time: a build and an install (or
    /// a rebuild) of the same op would share its temporary name. Never
    /// closed, so acquiring it does not fail (the permit is held in the
    /// `Ok`).
    pub(super) snapshot_writer: glommio::sync::Semaphore,
    /// The newest hard state, queued or not, shared with the log's
    /// handles (the journal's own copy is the newest durable one).
    pub(super) hard_state: Arc<Mutex<HardStateCell>>,
    /// The committed id of the last hard-state record queued (see
    /// [`RaftShard::queue_hard_state`]).
    pub(super) committed_queued: Cell<Option<LogId>>,
    _lock: DirLock,
}

/// Whether [`RaftShard::queue_hard_state`] queues a record when the hard
/// state has not changed since the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Queue {
    /// Only a change not queued yet.
    Changed,
    /// A record in any case: its durability then vouches for every hard
    /// state change made before it (a vote or a purge waits for it).
    Always,
}

impl<C: RaftTypes, M: 'static> ReactorState for RaftShard<C, M> {
    fn close(self: Rc<Self>) -> LocalBoxFuture<()> {
        Box::pin(async move {
            if let Err(e) = self.queue_hard_state(Queue::Changed).await {
                tracing::warn!(error = %e, "writing the last hard state at close failed");
            }
            if let Err(e) = self.journal.close().await {
                tracing::error!(error = %e, "closing a raft shard's journal failed");
            }
        })
    }
}

/// The newest hard state (encoded) and whether it changed since it was
/// last queued: a change a crash may lose (the committed index) waits for
/// the next write.
#[derive(Debug, Default)]
pub struct HardStateCell {
    /// The encoded hard state.
    pub bytes: Vec<u8>,
    /// Changed since last queued.
    pub unqueued: bool,
}

/// Journal settings of a raft shard.
pub type JournalSetup =
    Box<dyn FnOnce(JournalBuilder<DmaStorage>) -> JournalBuilder<DmaStorage> + Send>;

/// Log index `index` is journal op `index + 1` (op 0 is not an op).
pub(super) fn op_of(index: u64) -> u64 {
    index + 1
}

/// The log index of journal op `op` (at least 1), as [`op_of`] inverts.
pub(super) fn index_of(op: u64) -> u64 {
    op - 1
}

/// What [`super::open`] does about whether the directory already holds a raft
/// shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// Creates one if the directory holds none (no directory, or one with
    /// no identity and no data): a store made for a test or a benchmark.
    IfMissing,
    /// Refuses a directory that holds none ([`RaftStoreError::NoShard`],
    /// creating nothing): every start of a node but its first. A node that
    /// lost its directory and came back empty would have forgotten its
    /// vote and the entries it acknowledged, and its vote could then elect
    /// a leader without an entry the cluster committed.
    Existing,
    /// A node's first start: creates the shard, and refuses a directory
    /// whose shard already has a journal ([`RaftStoreError::AlreadyCreated`]),
    /// so that a first-start setting left in place cannot later create an
    /// empty node in a lost directory's place.
    New,
}

/// Opens the raft shard in `dir` for cluster `domain` on a reactor thread
/// of its own, creating it as `creation` says.
pub(super) fn open<C, M>(
    dir: PathBuf,
    domain: Uuid,
    node: u64,
    creation: Creation,
    journal_setup: JournalSetup,
    hard_state: Arc<Mutex<HardStateCell>>,
) -> Result<ReactorThread<RaftShard<C, M>>, RaftStoreError>
where
    C: RaftTypes,
    M: StateMachine,
{
    let name = format!(
        "ringstore-raft-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    ReactorThread::open(&name, move || {
        Box::pin(async move {
            let recovered = recover::<C, M>(
                dir.clone(),
                domain,
                node,
                creation,
                journal_setup,
                hard_state,
            )
            .await;
            if let Err(e) = &recovered {
                metrics::counter!("ringstore_raft_open_refusals_total", "kind" => e.kind())
                    .increment(1);
                tracing::error!(dir = %dir.display(), kind = e.kind(), error = %e,
                    "the raft shard refused to open");
            }
            recovered
        })
    })
}

async fn recover<C, M>(
    dir: PathBuf,
    domain: Uuid,
    node: u64,
    creation: Creation,
    journal_setup: JournalSetup,
    hard_state: Arc<Mutex<HardStateCell>>,
) -> Result<RaftShard<C, M>, RaftStoreError>
where
    C: RaftTypes,
    M: StateMachine,
{
    let storage = DmaStorage::new();
    // A directory that is gone is refused before anything would create it.
    if creation == Creation::Existing {
        match storage.list_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RaftStoreError::NoShard { path: dir });
            }
            Err(e) => return Err(crate::Error::io("list raft shard directory", &dir, e).into()),
            Ok(_) => {}
        }
    }
    ringstore_journal::storage::prepare_dir(&storage, &dir)
        .await
        .map_err(|e| crate::Error::io("prepare raft shard directory", &dir, e))?;
    let lock = crate::layout::lock::acquire_on_reactor(&storage, &dir).await?;
    let journal_dir = dir.join(JOURNAL_DIR_NAME);
    let snapshots = SnapshotStore::open(storage.clone(), dir.join(SNAPSHOT_DIR_NAME)).await?;

    // 1. Identity: the cluster's domain, written when the directory is new.
    let identity_path = dir.join(IDENTITY_FILE_NAME);
    let identity_bytes = read_identity_bytes(&storage, &dir).await?;
    let snapshot_names = storage
        .list_dir(snapshots.dir())
        .map_err(|e| crate::Error::io("list snapshot directory", snapshots.dir(), e))?;
    let journal_names = journal_listing(storage.list_dir(&journal_dir))
        .map_err(|e| crate::Error::io("list journal directory", &journal_dir, e))?;
    let data = data_files(&dir, &snapshot_names, &journal_names);
    let identity = match identity_verdict(&identity_path, identity_bytes.as_deref(), &data)
        .map_err(crate::Error::from)?
    {
        IdentityVerdict::Found(identity) if identity.domain != domain => {
            return Err(RaftStoreError::ForeignData {
                path: identity_path,
                expected: domain,
                found: identity.domain,
            });
        }
        IdentityVerdict::Found(identity)
            if creation == Creation::New && identity.journal_created =>
        {
            return Err(RaftStoreError::AlreadyCreated {
                path: identity_path,
            });
        }
        IdentityVerdict::Found(identity) => identity,
        IdentityVerdict::Create if creation == Creation::Existing => {
            return Err(RaftStoreError::NoShard { path: dir });
        }
        IdentityVerdict::Create => {
            let identity = Identity::new(domain);
            write_identity(&storage, &dir, &identity).await?;
            metrics::counter!("ringstore_raft_shards_created_total").increment(1);
            tracing::info!(dir = %dir.display(), node, "created a new, empty raft shard");
            identity
        }
    };

    // 2. The newest snapshot that verifies.
    let (loaded, skipped) = snapshots.load_newest(domain).await?;
    for passed in &skipped {
        metrics::counter!("ringstore_raft_snapshots_skipped_total").increment(1);
        tracing::warn!(snapshot = ?passed, "a damaged snapshot was passed over at open");
    }
    let (applied, current) = match loaded {
        Some(loaded) => {
            let (applied, current) = restore::<C, M>(loaded)?;
            (applied, Some(current))
        }
        None => (
            Applied {
                machine: M::default(),
                last_applied: None,
                membership: StoredMembership::<C>::default(),
                sessions: BTreeMap::new(),
            },
            None,
        ),
    };

    // 3. The journal, which must belong to the same cluster and to this
    // node: another node's log and vote would let this one vote twice in a
    // term.
    let owner = JournalOwner {
        domain: *domain.as_bytes(),
        shard: u32::try_from(node).map_err(|_| RaftStoreError::NodeId { node })?,
        shards: RAFT_NODE_SHARDS,
    };
    // No inline writes (`JournalBuilder::inline_write_bytes_max`): the
    // node's connections share this reactor, and a write blocking it held
    // their requests and replies back (1-client commit p50 514 and 524 µs
    // with them, 378 and 404 without, in alternated quick runs of
    // `ringstore-bench raft` on an experiment build that did not yet let
    // the runnable tasks go first; with that, 410 and 344 against 407 and
    // 479: no gain). `journal_setup` may turn them back on.
    let builder = Journal::builder(&journal_dir)
        .storage(storage.clone())
        .inline_write_bytes_max(0);
    let journal = journal_setup(builder)
        .owner(owner)
        .hard_state_after_cut(awaiting_repair_after_cut)
        .open()
        .await
        .map_err(|e| match e {
            ringstore_journal::Error::WrongOwner {
                path,
                recorded,
                expected,
            } if recorded.domain == expected.domain && recorded.shards == RAFT_NODE_SHARDS => {
                RaftStoreError::OtherNode {
                    path,
                    node,
                    recorded: u64::from(recorded.shard),
                }
            }
            ringstore_journal::Error::WrongOwner {
                path,
                recorded,
                expected,
            } => RaftStoreError::Engine(crate::Error::ForeignJournal {
                identity: identity_path.clone(),
                superblock: path,
                expected,
                recorded,
            }),
            other => other.into(),
        })?;
    // The journal exists now: from here on an open that finds none refuses
    // (a node without its log and vote must not rejoin as if new).
    if let Err(e) = record_journal_created(&storage, &dir, &identity).await {
        let _ = journal.close().await;
        return Err(e.into());
    }
    if journal.recovery_report().tail_is_uncertain() {
        report_awaiting_repair(&journal, &journal_dir);
    }
    // 4. No gap between the snapshot and the journal: the rule of an
    // engine shard's open and of `ringstore snapshot verify`. Checked
    // against the purged id too: a purge is two steps, the purged id (in
    // the hard state) and then the watermark, and a crash between them
    // leaves a purged id above the watermark, maybe above the last entry
    // (a purge after a snapshot install), which openraft would take for an
    // inverted log. The open finishes such a purge below, only once the
    // snapshot is known to cover it: the entries it removes are not
    // removed for a snapshot that cannot stand in for them.
    let purged_op = super::log::purged_of(&journal.hard_state())
        .map(|id| op_of(id.index))
        .filter(|op| *op > journal.watermark());
    let snapshot_op = applied
        .last_applied
        .as_ref()
        .map_or(0, |id| op_of(id.index));
    let covered = snapshot_covers_journal(
        snapshots.dir(),
        current.as_ref().map(|c| (snapshot_op, c.path.as_path())),
        &skipped,
        &journal_dir,
        purged_op.unwrap_or(0).max(journal.watermark()),
    );
    if let Err(refusal) = covered {
        let _ = journal.close().await;
        return Err(refusal.into());
    }
    if let Some(purged_op) = purged_op {
        tracing::warn!(
            dir = %journal_dir.display(),
            purged_op,
            watermark = journal.watermark(),
            "finishing a purge a crash interrupted: advancing the journal's watermark to the \
             purged id"
        );
        metrics::counter!("ringstore_raft_purges_finished_at_open_total").increment(1);
        if let Err(e) = journal.advance_watermark(purged_op).await {
            let _ = journal.close().await;
            return Err(e.into());
        }
    }
    Ok(RaftShard {
        committed_queued: Cell::new(
            super::log::record_after(&journal.hard_state(), u64::MAX, None).committed,
        ),
        hard_state: {
            if let Ok(mut cell) = hard_state.lock() {
                cell.bytes = journal.hard_state();
            }
            hard_state
        },
        journal,
        snapshots,
        domain,
        applied: RefCell::new(applied),
        current: RefCell::new(current),
        appends_in_flight: Cell::new(0),
        snapshots_installed: Cell::new(0),
        snapshots_rebuilt: Cell::new(0),
        snapshot_writer: glommio::sync::Semaphore::new(1),
        _lock: lock,
    })
}

/// The hard state an open that cut the journal's tail keeps
/// (`JournalBuilder::hard_state_after_cut`: durable before the cut is
/// recorded, so no crash loses both): the node awaits repair below the
/// highest term its hard state names (see "Uncertain tail" in the module
/// docs), and the committed id goes down to the purged one (openraft
/// raises it to the last applied id at startup, and the leader sends the
/// rest again): a cut can take a truncation record too and bring back the
/// entries it had discarded, of an older term, at the indexes of committed
/// ones, and openraft re-applies up to the committed id by index alone
/// (the superblock's copy of the hard state, a vote's, outlives the cut).
/// A
/// later cut that takes the log's record of the mark is found and marked
/// the same way, below the same term or a later one (the vote, in the
/// superblock, is never lost). A hard state that does not decode is kept
/// as it is (reading the vote reports it). `ringstore wal salvage` gives
/// it to the journal's salvage too, which runs it when it cuts damage out
/// of a raft node's log.
pub fn awaiting_repair_after_cut(bytes: &[u8], _last_op: u64) -> Vec<u8> {
    let mut state = if bytes.is_empty() {
        super::log::HardState::default()
    } else {
        match super::log::HardState::decode(bytes) {
            Ok(state) => state,
            Err(_) => return bytes.to_vec(),
        }
    };
    let known_term = [
        state.vote.map(|v| v.leader_id.term),
        state.committed.map(|id| id.leader_id.term),
        state.purged.map(|id| id.leader_id.term),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(0);
    state.awaiting_repair = Some(state.awaiting_repair.unwrap_or(0).max(known_term));
    // Not decided by the log's last op (the hook's second argument): the
    // log the cut left may hold the committed index under another term.
    if let Some(committed) = state.committed {
        let covered = state.purged.is_some_and(|p| p.index >= committed.index);
        if !covered {
            state.committed = state.purged;
        }
    }
    state.encode().unwrap_or_else(|_| bytes.to_vec())
}

/// Logs and counts an open that cut the journal's tail: the node awaits
/// repair (its hard state says below which term).
fn report_awaiting_repair(journal: &Journal<DmaStorage>, journal_dir: &Path) {
    metrics::counter!("ringstore_raft_uncertain_tail_opens_total").increment(1);
    let below_term = super::log::awaiting_repair_of(&journal.hard_state());
    tracing::warn!(
        dir = %journal_dir.display(),
        tail = %journal.recovery_report().tail.describe(),
        below_term,
        "the journal's tail was cut: entries this node acknowledged may be gone, so it awaits \
         repair: no vote and no election until it has committed an entry of a later term"
    );
}

/// The machine and raft record of a verified snapshot.
pub(super) fn restore<C, M>(
    loaded: LoadedSnapshot,
) -> Result<(Applied<C, M>, CurrentSnapshot<C>), RaftStoreError>
where
    C: RaftTypes,
    M: StateMachine,
{
    let path = loaded.meta.path.clone();
    let mut sections = loaded.sections;
    let record = take_raft_record::<C>(&mut sections, &path)?;
    let machine = restore_state::<M>(sections).map_err(|e| crate::Error::Restore {
        path: path.clone(),
        source: std::sync::Arc::new(e),
    })?;
    let applied = Applied {
        machine,
        last_applied: record.last_applied,
        membership: record.membership.clone(),
        sessions: record.sessions.into_iter().collect(),
    };
    let current = CurrentSnapshot {
        meta: SnapshotMeta::<C> {
            last_log_id: record.last_applied,
            last_membership: record.membership,
        },
        path,
    };
    Ok((applied, current))
}

fn take_raft_record<C: RaftTypes>(
    sections: &mut SectionSet,
    path: &Path,
) -> Result<RaftRecord<C>, RaftStoreError> {
    let invalid = |reason: String| RaftStoreError::RaftSection {
        path: path.to_path_buf(),
        reason,
    };
    let (_, bytes) = sections
        .take(RAFT_SECTION, RAFT_SECTION_VERSION..=RAFT_SECTION_VERSION)
        .map_err(|e| invalid(e.to_string()))?;
    let mut record = None;
    decode_records(&bytes, |r: RaftRecord<C>| {
        record = Some(r);
        Ok(())
    })
    .map_err(|e| invalid(e.to_string()))?;
    record.ok_or_else(|| invalid("the section holds no record".into()))
}

impl<C, M> RaftShard<C, M>
where
    C: RaftTypes,
    C::R: Clone,
    M: StateMachine,
{
    /// A point-in-time image of the machine and its raft record, and the
    /// meta openraft is told. Cheap: runs between two applies.
    pub(super) fn freeze(&self) -> (Vec<FrozenSection>, SnapshotMeta<C>) {
        let applied = self.applied.borrow();
        let snapshot_id = format!(
            "{}-{}-{}",
            applied
                .last_applied
                .as_ref()
                .map_or(0, |id| id.leader_id.term),
            applied
                .last_applied
                .as_ref()
                .map_or(0, |id| op_of(id.index)),
            crate::format::unix_ms_now()
        );
        let record = RaftRecord::<C> {
            last_applied: applied.last_applied,
            membership: applied.membership.clone(),
            snapshot_id,
            sessions: applied
                .sessions
                .iter()
                .map(|(client, session)| (*client, session.clone()))
                .collect(),
        };
        let mut sections = applied.machine.freeze();
        sections.push(FrozenSection {
            name: RAFT_SECTION,
            version: RAFT_SECTION_VERSION,
            encoder: Box::new(RecordsEncoder::new(1, std::iter::once(record))),
        });
        let meta = SnapshotMeta::<C> {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
        };
        (sections, meta)
    }

    /// Persists a frozen state (paced: appends in flight go first) as the
    /// snapshot at its op, makes it the current one unless a newer one was
    /// installed meanwhile (openraft builds on a task of its own, so an
    /// install can finish first), prunes the generations the journal no
    /// longer needs, and returns the file's bytes.
    pub(super) async fn persist_frozen(
        &self,
        sections: Vec<FrozenSection>,
        meta: &SnapshotMeta<C>,
    ) -> Result<Vec<u8>, crate::Error> {
        let op = meta.last_log_id.as_ref().map_or(0, |id| op_of(id.index));
        let term = meta.last_log_id.as_ref().map_or(0, |id| id.leader_id.term);
        let busy = || self.appends_in_flight.get() > 0;
        let persisted = {
            let _writing = self.snapshot_writer.acquire_permit(1).await;
            self.snapshots
                .persist_paced(
                    sections,
                    op,
                    term,
                    self.domain,
                    Pacing::new(&busy, CHECKPOINT_BUSY_WRITE_PERCENT_DEFAULT),
                )
                .await?
        };
        let bytes = self.snapshots.read_file(&persisted.path).await?;
        {
            let mut current = self.current.borrow_mut();
            let newer = current
                .as_ref()
                .is_none_or(|c| c.meta.last_log_id.as_ref().map_or(0, |id| op_of(id.index)) < op);
            if newer {
                *current = Some(CurrentSnapshot {
                    meta: meta.clone(),
                    path: persisted.path,
                });
            }
        }
        self.prune_snapshots().await;
        Ok(bytes)
    }

    /// The current snapshot and its file's bytes, verified, for a leader
    /// to send (`None` before the first). A file that fails verification
    /// or cannot be read (twice each: a transient read error is not
    /// damage) is never sent, where every follower would refuse it (an
    /// install error stops a follower) and the one behind would never
    /// catch up: it is logged at error level with file and offset, and a
    /// new snapshot is built from the applied state in memory and sent
    /// instead, once its own bytes verify (counted in
    /// `ringstore_raft_snapshot_rebuilds_total`). It replaces the damaged
    /// file under the same name if nothing was applied since, or as a
    /// newer generation, after which the damaged file is removed (the new
    /// one covers everything it did).
    pub(super) async fn current_snapshot_bytes(
        &self,
    ) -> Result<Option<(SnapshotMeta<C>, Vec<u8>)>, crate::Error> {
        let Some((meta, path)) = self
            .current
            .borrow()
            .as_ref()
            .map(|c| (c.meta.clone(), c.path.clone()))
        else {
            return Ok(None);
        };
        let mut refusal = None;
        for _ in 0..2 {
            match self.verified_bytes(&path).await {
                Ok(bytes) => return Ok(Some((meta, bytes))),
                Err(error) => refusal = Some(error),
            }
        }
        let refusal = refusal.expect("set by a failed read or verification");
        tracing::error!(
            path = %path.display(),
            error = %refusal,
            "the current snapshot cannot be read or is damaged, and is not sent: building a \
             new one from the applied state"
        );
        let (sections, rebuilt) = self.freeze();
        let bytes = self.persist_frozen(sections, &rebuilt).await?;
        let rebuilt_path = self
            .current
            .borrow()
            .as_ref()
            .map(|c| c.path.clone())
            .unwrap_or_else(|| path.clone());
        let report = crate::snapshot::verify::verify_snapshot_bytes(
            &rebuilt_path,
            &bytes,
            Some(self.domain),
            crate::snapshot::Check::Full,
        );
        if let Some(refusal) = report.refusal() {
            return Err(refusal.into());
        }
        metrics::counter!("ringstore_raft_snapshot_rebuilds_total").increment(1);
        self.snapshots_rebuilt.set(self.snapshots_rebuilt.get() + 1);
        // Not already pruned with the other old generations.
        let listed = match self.snapshots.generations() {
            Ok(generations) => generations.iter().any(|(_, p)| *p == path),
            Err(error) => {
                tracing::warn!(%error, "listing the snapshots after a rebuild failed");
                false
            }
        };
        if rebuilt_path != path && listed {
            if let Err(e) = self.snapshots.remove_generation(&path).await {
                tracing::warn!(path = %path.display(), error = %e,
                    "removing a damaged snapshot after rebuilding it failed");
            }
        }
        Ok(Some((rebuilt, bytes)))
    }

    /// The snapshot file at `path`, read whole and verified against this
    /// shard's domain; its first damage, or the read's error.
    async fn verified_bytes(&self, path: &Path) -> Result<Vec<u8>, crate::Error> {
        let bytes = self.snapshots.read_file(path).await?;
        let report = crate::snapshot::verify::verify_snapshot_bytes(
            path,
            &bytes,
            Some(self.domain),
            crate::snapshot::Check::Full,
        );
        match report.refusal() {
            None => Ok(bytes),
            Some(refusal) => Err(refusal.into()),
        }
    }
}

impl<C: RaftTypes, M> RaftShard<C, M> {
    /// Queues the hard state if it changed without being queued, or always
    /// with `Queue::Always`; returns the handle of its write, if one was
    /// queued.
    ///
    /// The record never holds a committed id above the last op queued
    /// before it: openraft saves the committed id as soon as the entries
    /// are submitted, and a job queued before theirs may be the one to
    /// write it. A record written ahead of those entries would survive a
    /// crash that lost them, and a reopened node would find its committed
    /// id above its log. Such a record keeps the committed id last queued
    /// instead and leaves the change unqueued, for a write after the
    /// entries (see [`super::log::record_after`]).
    pub(super) async fn queue_hard_state(
        &self,
        queue: Queue,
    ) -> ringstore_journal::Result<Option<ringstore_journal::QueuedHardState>> {
        let last_queued_op = self.journal.next_op() - 1;
        let record = match self.hard_state.lock() {
            Ok(mut cell) if cell.unqueued || queue == Queue::Always => {
                let record = super::log::record_after(
                    &cell.bytes,
                    last_queued_op,
                    self.committed_queued.get(),
                );
                cell.unqueued = !record.whole;
                if record.ends_repair {
                    // Later records follow this one in the log: none needs
                    // the mark again.
                    cell.bytes = super::log::without_repair_mark(&cell.bytes);
                }
                record
            }
            _ => return Ok(None),
        };
        let queued = self.journal.queue_hard_state(&record.bytes).await?;
        self.committed_queued.set(record.committed);
        Ok(Some(queued))
    }

    /// Removes snapshots the journal no longer needs.
    pub(super) async fn prune_snapshots(&self) {
        if let Err(e) = self
            .snapshots
            .prune(SNAPSHOTS_KEPT, self.journal.watermark())
            .await
        {
            tracing::warn!(error = %e, "removing old snapshots failed");
        }
    }
}

/// Records `response` as `client`'s last, forgetting the least recently
/// used session beyond [`SESSIONS_MAX`].
pub(super) fn remember<R>(
    sessions: &mut BTreeMap<u64, Session<R>>,
    client: u64,
    seq: u64,
    op: u64,
    response: R,
) {
    sessions.insert(client, Session { seq, op, response });
    if sessions.len() > SESSIONS_MAX {
        if let Some((oldest, last_op)) = sessions
            .iter()
            .min_by_key(|(_, s)| s.op)
            .map(|(client, s)| (*client, s.op))
        {
            sessions.remove(&oldest);
            // A retry from that client is applied again from now on: said
            // and counted, on every replica alike.
            metrics::counter!("ringstore_raft_sessions_evicted_total").increment(1);
            tracing::warn!(
                client = oldest,
                last_op,
                sessions_max = SESSIONS_MAX,
                "forgot the least recently used client session; a retry from that client \
                 would be applied again"
            );
        }
    }
}

/// What a repeat of `seq` by a client with `session` gets, if it is one.
pub(super) fn repeat<Reply: Clone>(
    session: Option<&Session<Response<Reply>>>,
    seq: u64,
) -> Option<Response<Reply>> {
    let session = session?;
    if seq == session.seq {
        Some(session.response.clone())
    } else if seq < session.seq {
        Some(Response::Stale {
            last_seq: session.seq,
        })
    } else {
        None
    }
}
