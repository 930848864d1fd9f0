//! ringstore as openraft's storage: the Raft log, hard state, state
//! machine and snapshots of one shard (cargo feature `openraft`).
//!
//! **Version.** openraft 0.10.0-alpha.37, chosen over 0.9.25 (the stable
//! line) for one reason: 0.9's core awaits each append's flush callback
//! before it takes the next message (`append_to_log` in its
//! `raft_core.rs`), so a leader never had two appends in flight and every
//! client write cost the leader one write and one fdatasync, one after the
//! other, on any store (one run at 64 clients: the leader wrote 16,640
//! entries in 16,640 writes). 0.10 submits an append and goes on
//! (`run_append_entries`), tracks accepted, submitted and flushed log I/O
//! apart, and replicates through streams that keep requests in flight, so
//! a leader's appends share group commits too. The price is an alpha
//! whose API still moves between releases: the version is pinned exactly,
//! and openraft's own storage suite (`openraft::testing::log::Suite`) runs
//! against this adapter in CI. 0.10's `single-threaded` feature is not
//! used: it is global to a build (every `Raft` in it, the benchmark's
//! reference stores included, would need a local runtime); the Send-bound
//! [`ReactorRuntime`] below puts Raft on the shard's reactor without it.
//!
//! **Threads.** openraft wants `Send + Sync` stores; the journal, the
//! snapshot store and the machine are `!Send` and live on a glommio
//! reactor. [`open`] starts the shard's reactor thread ([`ReactorThread`]),
//! recovers everything there, and returns the two cheap handles openraft
//! holds, [`RaftLog`] and [`RaftMachine`]. Each storage call is a job sent
//! to the reactor, run in the order openraft made them ("all write-IO must
//! be serialized"); an append's durability is awaited on a task of its
//! own, so concurrent appends share the journal's group commit: N appends
//! in flight cost one fdatasync, and each `IOFlushed` callback fires when
//! its batch is durable. [`RaftStores::start_raft`] runs `Raft::new` on
//! that reactor: with [`ReactorRuntime`] as the configuration's runtime
//! (the cluster's [`cluster::ClusterTypes`]), openraft's core, replication
//! and state-machine tasks run there too, so a storage call is a hop
//! between tasks of one thread instead of a wake of another thread and
//! back; timers, channels and sockets stay tokio's, usable from any
//! thread. With openraft's tokio runtime the same handles work from tokio
//! (the storage suite runs so), each call crossing threads.
//!
//! **Types.** The adapter works with any configuration whose term, node
//! id, leader id, vote and entry are openraft's defaults ([`RaftTypes`]):
//! the node id goes into the journal's superblock. The journal's epoch is
//! not the term: every entry carries its term inside its encoding, and an
//! overwrite of a divergent suffix goes through `truncate_after` (recovery
//! applies truncations in log order), so the epoch is never needed to tell
//! two writes of one op apart.
//!
//! **Mapping.**
//! * Log index `i` is journal op `i + 1` (op 0 is not an op); an entry is
//!   the bincode encoding of openraft's `Entry`, written with
//!   `Journal::queue_write`.
//! * `truncate_after(id)` is `Journal::truncate_after(op(id))` (op 0, all
//!   of it, for none).
//! * Reads return one run of entries: the journal's durable ones, then the
//!   newest, appended and not durable yet, from a cache filled as they are
//!   appended (0.10's reader must not leave those out).
//! * The vote, the committed id and the last purged id are the journal's
//!   hard state (a record in the log, ordered with the appends; no extra
//!   fdatasync on the append path): the bincode (standard configuration)
//!   encoding of those three `Option`s, in that order. While a node awaits
//!   repair (see "Uncertain tail") it is the byte 2 (no `Option` tag, so a
//!   build from before refuses it rather than drop the mark), then the
//!   encoding of four, the fourth an `Option<u64>`: the term it awaits
//!   repair below. The committed id rides with the next
//!   write, so after a crash it may lag what the node had committed; a
//!   record never holds a committed id above the last op queued before it
//!   (openraft saves it once the entries are submitted, before they are
//!   written), so a reopened node's committed id is inside its log. A vote
//!   or a purge writes a record of its own and waits for it, even when an
//!   append queued just before took the change into its write.
//! * A reopened shard's own committed vote (it was the leader) is
//!   uncommitted (same term and candidate). openraft restarts a node whose
//!   vote is its own committed one as leader at once (in 0.10 unless
//!   `Config::enable_leader_restore` is `Some(false)`, which the cluster
//!   also sets), and a leader's
//!   read index is the larger of its term's first entry and its committed
//!   id: with a lagging committed id, a linearizable read could miss a
//!   write acknowledged before the crash. A restarted leader is elected
//!   again instead, and its new term's first entry is committed before it
//!   serves a read.
//! * `purge(id)` records the purged id in the hard state, then advances the
//!   journal's watermark to its op. openraft purges only what a snapshot
//!   holds, and the snapshot is durable before `build_snapshot` returns. An
//!   open that finds a purged id above the watermark (a crash between the
//!   two steps) finishes the purge, and the log's last id is never below
//!   the purged one.
//! * The state machine is an engine [`StateMachine`] hosted beside the
//!   journal. Commands are [`Request`]s numbered per client: a retried
//!   command is answered from the client's session, not applied twice.
//! * Snapshots are the engine's snapshot files: the machine's sections plus
//!   a `raft` section (last applied id, membership, sessions). Building one
//!   freezes the machine between two applies and writes the file on a task
//!   of its own, giving way to appends in flight. The file itself is what
//!   a leader sends a follower (the cluster sends it in pieces of
//!   [`cluster::wire::SNAPSHOT_CHUNK_BYTES`]), which verifies it
//!   (checksums, and that it is this cluster's) before installing it under
//!   its op's name. A follower that refuses one returns an error, which
//!   openraft treats as fatal for that node, so the leader verifies the
//!   file before it sends it: one damaged at rest is never sent, but built
//!   again from the leader's applied state (logged with file and offset,
//!   counted), and the damaged file is replaced or removed. One snapshot
//!   file is written at a time (a build, an install or such a rebuild):
//!   two writers of the same op would share its temporary name.
//! * Applying answers each waiting client through its responder once the
//!   whole batch is applied on the reactor (one hop per batch).
//!
//! **Opening** (see [`open`]): the directory's identity must name the
//! cluster's domain ([`RaftStoreError::ForeignData`] otherwise), the
//! journal's superblock must name it too and this node's id
//! ([`RaftStoreError::OtherNode`] otherwise: another node's log and vote
//! would let this one vote twice in a term), and the newest snapshot that
//! verifies must reach the journal's watermark (the engine's rule and
//! error, [`crate::Error::SnapshotBehindJournal`], which `ringstore
//! snapshot verify` reports for the same directory): such a node cannot
//! rebuild its state and must rejoin with an empty directory under a new
//! node id, catching up from the leader. A journal whose tail the open cut
//! leaves the node awaiting repair (below).
//!
//! **Uncertain tail.** When an open cuts the journal's tail
//! ([`ringstore_journal::RecoveryReport::tail_is_uncertain`]: the last
//! writes did not verify and nothing vouches for them), entries the node
//! acknowledged may be gone (damage after a write's fdatasync looks like a
//! torn write). A quorum that counted on them could then elect, with this
//! node's vote, a leader without them, and a committed entry would be lost.
//! So:
//! * Votes are never lost: `save_vote` also copies the hard state into the
//!   journal's superblock ([`ringstore_journal::Journal::copy_hard_state_to_superblock`]),
//!   where no cut reaches, and the open takes the newer of the two. A vote
//!   lost to a cut would let the node vote twice in a term.
//! * The open marks the node as awaiting repair below the highest term its
//!   hard state names ([`RaftLog::awaiting_repair`]), and lowers the
//!   committed id to the purged one: the cut may have taken a truncation
//!   record too and brought back, at the indexes of committed entries,
//!   entries of an older term it had discarded, which openraft, applying
//!   up to the committed id by index, would apply. The mark is in the hard
//!   state, written into the journal's superblock by the journal's open
//!   before it records the cut
//!   ([`ringstore_journal::JournalBuilder::hard_state_after_cut`]): a crash
//!   before that write leaves the cut to be found again, and none after it
//!   loses the mark. A later cut marks the node again.
//! * While it awaits repair the node must neither vote nor stand for
//!   election: a consensus layer refuses its vote requests and starts
//!   openraft with elections off (the cluster's nodes do). It still takes a
//!   leader's entries: a leader sends entries only after a prefix the
//!   follower holds, so it acknowledges nothing past a hole.
//! * The repair ends with the first hard-state record whose committed id is
//!   of a later term than the one awaited below, written after the entries
//!   it covers (queued at once, so an idle cluster ends it too). A leader
//!   of a later term was elected without this node's vote, by a quorum
//!   that holds every committed entry, so its log holds them; committing
//!   an entry of its term here means this log matches it up to there.
//!   Terms the node voted in are at most the one awaited below (votes are
//!   never lost), so from then on it votes only in later terms.
//! * A repair waits for a leader change: a term of the same leader does
//!   not suffice, since entries it committed past this node's committed id
//!   may be among those the cut took. While that leader keeps leading, the
//!   node follows but cannot vote, so in a cluster of three that leader's
//!   loss would leave no quorum that can elect. The cluster's nodes
//!   therefore ask for the change: a node awaiting repair asks the leader
//!   it follows, while that leader's term is not after the awaited one, to
//!   hand its leadership to another voter (`cluster::node`, openraft's
//!   `transfer_leader`, to a voter heard from within an election timeout
//!   and at most `HANDOFF_LAG_ENTRIES_MAX` entries behind, preferring one
//!   that did not ask for a handoff itself). That voter is elected by a
//!   quorum without the node's vote, and its term's first commit ends the
//!   repair. A voter awaiting repair may still be named (when no other can
//!   be, or before it has asked): openraft elects the named node only once
//!   it has flushed the leader's whole log (its elections being off does
//!   not stop that), so it holds every committed entry, and leading is
//!   safe for it. If the leader is lost
//!   before it hands off, or the voter it hands to is lost during the
//!   handoff (the leader stops taking commands and sending heartbeats from
//!   the handoff on, and openraft has no way back), no leader is elected
//!   until a node is back or an operator waives the repair.
//! * openraft's leader meets the follower's shorter log as a log reversion,
//!   which it refuses (panics) unless `Config::allow_log_reversion` is set.
//!   The cluster sets it: the only reversion the journal makes is this one,
//!   and the node that reverted does not vote. It also silences what
//!   openraft would say of a reversion ringstore cannot see (a directory
//!   restored from an old copy, a write wiped to zeros after its
//!   fdatasync; see the journal's "Uncertain tail").
//! * A cluster whose nodes all await repair (all lost power at once, under
//!   load) elects no leader: an operator decides to go on with what a node
//!   holds ([`RaftLog::waive_repair`], `ringstore cluster node
//!   --waive-repair <TERM>`, the term the node's log and status name, so a
//!   flag left in place waives no later cut), accepting the loss of what a
//!   cut took.
//!
//! **Metrics** (through the `metrics` facade; a cluster node exports them in
//! Prometheus text format): `ringstore_raft_open_refusals_total{kind}` (an
//! open refused, `kind` from [`RaftStoreError::kind`]),
//! `ringstore_raft_snapshots_skipped_total` (damaged snapshots passed over
//! at open), `ringstore_raft_uncertain_tail_opens_total` (opens that cut a
//! torn tail: the node awaits repair), `ringstore_raft_repairs_waived_total`
//! (repairs an operator waived), `ringstore_raft_purges_finished_at_open_total` (purges a
//! crash cut short between their two steps, finished by the open), `ringstore_raft_snapshot_install_refusals_total`
//! (snapshots from a leader refused), `ringstore_raft_snapshot_rebuilds_total`
//! (a leader's current snapshot found damaged when it was to be sent, and
//! built again), `ringstore_raft_log_gap_refusals_total`
//! (appends refused as [`RaftStoreError::LogGap`]),
//! `ringstore_raft_gapped_requests_total` (a leader's AppendEntries
//! requests with such a gap, not sent: [`cluster::pipeline`]) and
//! `ringstore_raft_reactor_task_panics_total{task}` (a task on the shard's
//! reactor panicked: caught there, typed as
//! [`RaftStoreError::TaskPanicked`] where a caller waits for it). Each also
//! logs the file or task and the reason.

// openraft's `StorageError` is large, and its traits return it.
#![allow(clippy::result_large_err)]

pub mod cluster;
#[cfg(test)]
mod compat_tests;
mod error;
#[cfg(test)]
mod hard_state_tests;
pub mod linearizability;
mod log;
mod machine;
mod reactor;
mod runtime;
mod shard;
mod tail_cache;
mod types;

pub use error::RaftStoreError;
pub use log::{RaftLog, HARD_STATE_ENCODED_BYTES_MAX};
pub use machine::RaftMachine;
pub use machine::SnapshotFile;
pub use reactor::{ReactorClosed, ReactorThread};
pub use runtime::{ReactorJoinError, ReactorJoinHandle, ReactorRuntime};
pub use shard::{
    awaiting_repair_after_cut, Creation, JournalSetup, RaftShard, RAFT_NODE_SHARDS, RAFT_SECTION,
    SESSIONS_MAX,
};
pub use types::{
    LeaderId, LogId, Payload, RaftTypes, Request, Response, SnapshotMeta, StoredMembership, Vote,
};

use crate::StateMachine;
use std::path::PathBuf;
use std::sync::Arc;
use uuid::Uuid;

/// The two handles openraft takes (`Raft::new(.., log, machine)`).
pub struct RaftStores<C: RaftTypes, M: StateMachine> {
    /// The log and hard state.
    pub log: RaftLog<C, M>,
    /// The state machine and snapshots.
    pub machine: RaftMachine<C, M>,
}

impl<C, M> RaftStores<C, M>
where
    C: RaftTypes<D = Request<M::Command>, R = Response<M::Reply>>,
    M: StateMachine,
    M::Command: Send + Sync + std::fmt::Debug,
    M::Reply: Clone + Send + Sync + std::fmt::Debug,
{
    /// Starts node `id`'s openraft over these stores on the shard's own
    /// reactor thread (`Raft::new` runs there as a task of its own). With
    /// [`ReactorRuntime`] as the configuration's runtime, openraft's tasks
    /// run on that reactor, beside the journal, and a storage call is a hop
    /// between tasks of one thread; with another runtime they run on it.
    /// The returned handle works from any thread.
    pub async fn start_raft<N>(
        self,
        id: u64,
        config: Arc<openraft::Config>,
        network: N,
    ) -> Result<openraft::Raft<C, RaftMachine<C, M>>, RaftStoreError>
    where
        N: openraft::network::RaftNetworkFactory<C> + Send + 'static,
        N::Network: openraft::network::NetSnapshot<C, SnapshotData = std::io::Cursor<Vec<u8>>>,
    {
        let RaftStores { log, machine } = self;
        let thread = machine.thread().clone();
        if !thread.in_tokio() {
            return Err(RaftStoreError::Start {
                message: "the shard was opened outside a tokio runtime; openraft's timers on \
                          its reactor are tokio's: open it inside one"
                    .into(),
            });
        }
        let started = thread
            .spawn(move || openraft::Raft::new(id, config, network, log, machine))
            .await?
            .map_err(|message| RaftStoreError::TaskPanicked { message })?;
        started.map_err(|e| RaftStoreError::Start {
            message: e.to_string(),
        })
    }
}

/// The journal op of the purged log id an encoded raft hard state records
/// (`None`: none, or bytes that do not decode). A raft shard's open checks
/// its snapshots against it as well as against the journal's watermark (a
/// purge a crash cut short between its two steps), and so does `ringstore
/// snapshot verify`.
pub fn purged_op_of(hard_state: &[u8]) -> Option<u64> {
    log::purged_of(hard_state).map(|id| shard::op_of(id.index))
}

/// Opens the raft shard in `dir`, which belongs to node `node` of the
/// cluster `domain`, on a reactor thread of its own (a directory of
/// another cluster or another node is refused), creating it as `creation`
/// says. `journal_setup` adjusts the journal's settings (segment size,
/// slots). The thread stops when the last handle is dropped.
pub fn open<C, M>(
    dir: impl Into<PathBuf>,
    domain: Uuid,
    node: u64,
    creation: Creation,
    journal_setup: JournalSetup,
) -> Result<RaftStores<C, M>, RaftStoreError>
where
    C: RaftTypes,
    M: StateMachine,
{
    let hard_state = Arc::new(std::sync::Mutex::new(shard::HardStateCell::default()));
    let thread = Arc::new(shard::open::<C, M>(
        dir.into(),
        domain,
        node,
        creation,
        journal_setup,
        hard_state.clone(),
    )?);
    Ok(RaftStores {
        log: RaftLog::new(thread.clone(), hard_state, node),
        machine: RaftMachine::new(thread),
    })
}
