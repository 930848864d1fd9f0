//! One cluster node: a raft shard, openraft over it, and a TCP server for
//! its peers and clients on loopback (or any address).

use super::machine::ClusterMachine;
use super::pipeline::{pipelined_append, AppendReply, AppendResults};
use super::reactor_net::{adopt_stream, read_frame_io, write_frame_io, ReactorLink};
use super::wire::{
    Connection, Envelope, Message, NodeId, NodeStatus, ReadQuery, Reply, SnapshotChunk,
    SNAPSHOT_CHUNK_BYTES,
};
use super::ClusterTypes;
use crate::raft::{Creation, LogId, RaftLog, RaftMachine, RaftStoreError, SnapshotFile, Vote};
use openraft::async_runtime::WatchReceiver;
use openraft::base::BoxFuture;
use openraft::error::{
    ClientWriteError, LinearizableReadError, NetworkError, RPCError, RaftError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft, ReadPolicy, SnapshotPolicy};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use uuid::Uuid;

/// Interval between two exports of the Raft metrics, in milliseconds.
const METRICS_EVERY_MS: u64 = 250;

/// Longest a stopping node waits for its shard to close the journal.
const SHARD_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// How often a node awaiting repair asks its shard whether the repair has
/// ended (it votes and stands for election again at most this long after).
const REPAIR_CHECK_EVERY: Duration = Duration::from_millis(100);

/// openraft's shortest election timeout, in heartbeat intervals.
const ELECTION_TIMEOUT_MIN_HEARTBEATS: u64 = 4;

/// How often a node awaiting repair asks the leader it follows to hand
/// the leadership to another voter (while that leader's term is not after
/// the one the repair waits for).
const HANDOFF_ASK_EVERY: Duration = Duration::from_secs(1);

/// Longest a node awaiting repair waits for the leader's answer to its
/// request for a handoff.
const HANDOFF_ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// Most entries a voter may lack of the leader's log and still be handed
/// the leadership. It must hold them all, flushed, within an election
/// timeout of the handoff (the leader stops taking commands then), or it
/// refuses and the leader, which stops its heartbeats for the handoff,
/// waits for that voter's own election.
const HANDOFF_LAG_ENTRIES_MAX: u64 = 1024;

/// The answer to a vote request while the node awaits repair.
const AWAITING_REPAIR_REFUSAL: &str =
    "refusing to vote: this node awaits repair after its journal's tail was cut";

/// Fewest entries between two snapshots a node accepts (fewer would build
/// a snapshot for nearly every entry).
pub const SNAPSHOT_EVERY_ENTRIES_MIN: u64 = 10;

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// This node.
    pub id: NodeId,
    /// Its raft shard's directory.
    pub dir: PathBuf,
    /// The cluster's id: a directory of another cluster is refused.
    pub cluster: Uuid,
    /// Every member (this node included) and its address.
    pub members: BTreeMap<NodeId, SocketAddr>,
    /// Whether this is the node's first start: its directory may hold no
    /// raft shard yet, and one is created. On every later start a
    /// directory without the node's shard is refused
    /// ([`crate::raft::RaftStoreError::NoShard`]) rather than started
    /// empty: an empty node has forgotten its vote and the entries it
    /// acknowledged, and its vote could elect a leader without an entry
    /// the cluster committed. Given again once the shard exists, it is
    /// refused too ([`crate::raft::RaftStoreError::AlreadyCreated`]).
    /// Starting a node that lost its directory as new under its old id is
    /// the operator's decision and carries that risk until the node has
    /// caught up with a leader.
    pub new_node: bool,
    /// Whether this node forms the cluster when it has never been part of
    /// one (give it to one node, the first start only needs it).
    pub initialize: bool,
    /// Build a snapshot (and purge the log) every this many entries.
    pub snapshot_every_entries: u64,
    /// Raft heartbeat, in milliseconds (elections time out after 4 to 8
    /// heartbeats).
    pub heartbeat_ms: u64,
    /// Bytes of a snapshot file one message to a follower carries, from 1
    /// to [`SNAPSHOT_CHUNK_BYTES`].
    pub snapshot_chunk_bytes: usize,
    /// An operator's decision: if the node awaits repair below this term
    /// (an open cut its journal's tail; the node's log and status name the
    /// term), it goes on without, voting and standing for election with
    /// what its log holds. For a cluster whose nodes all lost power at once
    /// and all await repair (none can then be elected): whatever the cut
    /// took is lost if it was acknowledged. Tied to the term so that a
    /// setting left in place does not waive a later cut unasked (one in
    /// the same term, before any election, it still waives).
    pub waive_repair_below_term: Option<u64>,
}

impl NodeSettings {
    /// Settings with the defaults for a loopback cluster.
    pub fn new(
        id: NodeId,
        dir: PathBuf,
        cluster: Uuid,
        members: BTreeMap<NodeId, SocketAddr>,
    ) -> NodeSettings {
        NodeSettings {
            id,
            dir,
            cluster,
            members,
            new_node: false,
            initialize: false,
            snapshot_every_entries: 5_000,
            heartbeat_ms: 100,
            snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES,
            waive_repair_below_term: None,
        }
    }
}

/// Why a node stopped or did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The node's storage did not open (its error names the file).
    #[error("node {id}: {source}")]
    Storage {
        /// The node.
        id: NodeId,
        /// Why.
        #[source]
        source: RaftStoreError,
    },
    /// This node is not in its own member list.
    #[error("node {id} is not among the members {members:?}")]
    NotAMember {
        /// The node.
        id: NodeId,
        /// The members given.
        members: Vec<NodeId>,
    },
    /// openraft refused the configuration or stopped.
    #[error("node {id}: raft: {message}")]
    Raft {
        /// The node.
        id: NodeId,
        /// openraft's error.
        message: String,
    },
    /// A setting is out of range.
    #[error("node {id}: {setting} = {value}: {rule}")]
    Setting {
        /// The node.
        id: NodeId,
        /// The setting's name.
        setting: &'static str,
        /// The value given.
        value: u64,
        /// What it must be.
        rule: &'static str,
    },
    /// The listening socket failed.
    #[error("node {id}: listening on {addr}: {source}")]
    Listen {
        /// The node.
        id: NodeId,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A running node's shared parts.
struct Shared {
    id: NodeId,
    raft: Raft<ClusterTypes, RaftMachine<ClusterTypes, ClusterMachine>>,
    machine: RaftMachine<ClusterTypes, ClusterMachine>,
    /// Nodes cut off from this one (test partitions), shared with the
    /// network's peer clients.
    blocked: Arc<Mutex<BTreeSet<NodeId>>>,
    /// The snapshot being received from a leader, if any.
    receiving: Mutex<Option<Receiving>>,
    /// Its shard's log (whether it awaits repair).
    log: RaftLog<ClusterTypes, ClusterMachine>,
    /// Set while the node awaits repair: it refuses vote requests, and
    /// openraft's elections are off.
    awaiting_repair: AtomicBool,
    /// The term it awaited repair below when it started, if it did.
    awaiting_repair_below: Option<u64>,
    /// A voter that has not answered this leader for longer is not handed
    /// the leadership (openraft's shortest election timeout).
    handoff_silence_max: Duration,
    /// Voters that asked this node for a handoff, and when last: they await
    /// repair, so another voter is handed the leadership if there is one.
    handoff_askers: Mutex<BTreeMap<NodeId, Instant>>,
}

/// A snapshot arriving in pieces.
struct Receiving {
    from: Option<NodeId>,
    vote: Vote,
    last_log_id: Option<LogId>,
    /// The attempt and the whole file's CRC-32 (`None` from a leader of an
    /// older build, which sends neither).
    checked: Option<(u64, u32)>,
    bytes: Vec<u8>,
}

/// Runs a node until `stop` resolves (or the process is killed), serving
/// on its member address.
pub async fn run_node(
    settings: NodeSettings,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let id = settings.id;
    let Some(&addr) = settings.members.get(&id) else {
        return Err(NodeError::NotAMember {
            id,
            members: settings.members.keys().copied().collect(),
        });
    };
    if settings.snapshot_every_entries < SNAPSHOT_EVERY_ENTRIES_MIN {
        return Err(NodeError::Setting {
            id,
            setting: "snapshot_every_entries",
            value: settings.snapshot_every_entries,
            rule: "at least SNAPSHOT_EVERY_ENTRIES_MIN (10)",
        });
    }
    if settings.snapshot_chunk_bytes == 0 || settings.snapshot_chunk_bytes > SNAPSHOT_CHUNK_BYTES {
        return Err(NodeError::Setting {
            id,
            setting: "snapshot_chunk_bytes",
            value: settings.snapshot_chunk_bytes as u64,
            rule: "from 1 to SNAPSHOT_CHUNK_BYTES (4 MiB)",
        });
    }
    if settings.heartbeat_ms == 0 {
        return Err(NodeError::Setting {
            id,
            setting: "heartbeat_ms",
            value: 0,
            rule: "at least 1",
        });
    }
    let raft_error = |e: &dyn std::fmt::Display| NodeError::Raft {
        id,
        message: e.to_string(),
    };
    let stores = crate::raft::open::<ClusterTypes, ClusterMachine>(
        &settings.dir,
        settings.cluster,
        id,
        if settings.new_node {
            Creation::New
        } else {
            Creation::Existing
        },
        Box::new(|b| b),
    )
    .map_err(|source| NodeError::Storage { id, source })?;
    // A journal whose tail an open cut: the node may have lost entries it
    // acknowledged, so it must not help elect a leader that lacks them,
    // nor lead itself, until it is repaired (see "Uncertain tail"). Its
    // elections are off from the start: one begun before they were turned
    // off would go on.
    let mut awaiting_repair = stores
        .log
        .awaiting_repair()
        .await
        .map_err(|source| NodeError::Storage { id, source })?;
    if let (None, Some(waived)) = (awaiting_repair, settings.waive_repair_below_term) {
        tracing::info!(
            node = id,
            waived,
            "nothing to waive: the node does not await repair"
        );
    }
    if let (Some(below_term), Some(waived)) = (awaiting_repair, settings.waive_repair_below_term) {
        if below_term == waived {
            stores
                .log
                .waive_repair()
                .await
                .map_err(|source| NodeError::Storage { id, source })?;
            awaiting_repair = None;
        } else {
            tracing::warn!(
                node = id,
                below_term,
                waived,
                "not waiving the repair: it awaits repair below another term than the one given"
            );
        }
    }
    if let Some(below_term) = awaiting_repair {
        tracing::warn!(
            node = id,
            below_term,
            "awaiting repair: refusing votes and elections until an entry of a term after {} \
             is committed here",
            below_term
        );
    }
    let config = openraft::Config {
        cluster_name: settings.cluster.to_string(),
        heartbeat_interval: settings.heartbeat_ms,
        election_timeout_min: settings.heartbeat_ms * ELECTION_TIMEOUT_MIN_HEARTBEATS,
        election_timeout_max: settings.heartbeat_ms * 8,
        install_snapshot_timeout: settings.heartbeat_ms * 20,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every_entries),
        max_in_snapshot_log_to_keep: settings.snapshot_every_entries / 5,
        // A restarted leader is elected again rather than resuming its old
        // term: its saved committed id may lag what it had committed (the
        // raft shard also opens its own committed vote uncommitted).
        enable_leader_restore: Some(false),
        // A follower's log goes back only when an open cut its journal's
        // tail (the journal loses acknowledged entries no other way); such
        // a node awaits repair, neither voting nor standing for election,
        // so the entries it lost are still on every quorum that can elect
        // a leader, and the leader sends them again. Without this the
        // leader's openraft panics when it meets the shorter log ("follower
        // log reversion is not allowed"): the cut-tail cluster test hit it.
        allow_log_reversion: Some(true),
        enable_elect: awaiting_repair.is_none(),
        ..Default::default()
    };
    let config = Arc::new(config.validate().map_err(|e| raft_error(&e))?);
    let blocked = Arc::new(Mutex::new(BTreeSet::new()));
    let network = Network {
        from: id,
        blocked: blocked.clone(),
        snapshot_chunk_bytes: settings.snapshot_chunk_bytes,
    };
    let machine = stores.machine.clone();
    let log = stores.log.clone();
    // On the shard's reactor, beside its journal (`ReactorRuntime`).
    let raft = stores
        .start_raft(id, config, network)
        .await
        .map_err(|source| NodeError::Storage { id, source })?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Listen { id, addr, source })?;
    if settings.initialize && !raft.is_initialized().await.map_err(|e| raft_error(&e))? {
        let members: BTreeMap<NodeId, BasicNode> = settings
            .members
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr.to_string())))
            .collect();
        if let Err(e) = raft.initialize(members).await {
            // Another member formed the cluster first: nothing to do.
            tracing::info!(node = id, error = %e, "not initializing the cluster");
        }
    }
    tracing::info!(node = id, %addr, dir = %settings.dir.display(), "node serving");
    let shared = Arc::new(Shared {
        id,
        raft: raft.clone(),
        machine,
        blocked,
        receiving: Mutex::new(None),
        log: log.clone(),
        awaiting_repair: AtomicBool::new(awaiting_repair.is_some()),
        awaiting_repair_below: awaiting_repair,
        handoff_silence_max: Duration::from_millis(
            settings.heartbeat_ms * ELECTION_TIMEOUT_MIN_HEARTBEATS,
        ),
        handoff_askers: Mutex::new(BTreeMap::new()),
    });
    let metrics = tokio::spawn(export_metrics(shared.clone()));
    let repair = awaiting_repair.map(|_| tokio::spawn(end_repair_when_done(shared.clone())));
    // Closed when the node stops: every connection ends (a peer still
    // connected learns it at once instead of talking to a stopped Raft).
    let (stopping, stopped) = async_channel::bounded::<()>(1);
    // tokio accepts (see `reactor_net::adopt_stream`); each connection is
    // then served on the shard's reactor, beside the Raft, on glommio's
    // sockets.
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let stream = match stream.into_std() {
                        Ok(stream) => stream,
                        Err(e) => {
                            tracing::warn!(node = id, error = %e, "dropping a connection");
                            continue;
                        }
                    };
                    let shared = shared.clone();
                    let stopped = stopped.clone();
                    let log = log.clone();
                    tokio::spawn(async move {
                        let served = log
                            .on_reactor(move || serve_on_reactor(shared, stream, stopped))
                            .await;
                        if let Err(e) = served {
                            tracing::debug!(node = id, error = %e, "a connection ended with the shard");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(node = id, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    };
    tokio::select! {
        () = accept => {}
        () = stop => {}
    }
    metrics.abort();
    let _ = metrics.await;
    if let Some(repair) = repair {
        repair.abort();
        let _ = repair.await;
    }
    drop(stopping);
    drop(listener);
    raft.shutdown().await.map_err(|e| raft_error(&e))?;
    // The shard closes its journal once the last handle is gone (openraft's
    // tasks and the connections let go of theirs as they end): wait for
    // it, so that the directory can be opened again once this returns.
    let closed = log.closed();
    drop((raft, shared, log));
    if tokio::time::timeout(SHARD_CLOSE_WAIT, closed)
        .await
        .is_err()
    {
        tracing::warn!(node = id, waited = ?SHARD_CLOSE_WAIT,
            "the raft shard had not closed when the node stopped");
    }
    Ok(())
}

/// Serves one accepted connection on the shard's reactor until it closes
/// or the node stops (`stopped` closes).
async fn serve_on_reactor(
    shared: Arc<Shared>,
    stream: std::net::TcpStream,
    stopped: async_channel::Receiver<()>,
) {
    let stream = match adopt_stream(stream) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(node = shared.id, error = %e, "dropping a connection");
            return;
        }
    };
    futures_lite::future::or(serve(shared, stream), async move {
        let _ = stopped.recv().await;
    })
    .await;
}

/// Answers one connection's requests in turn.
async fn serve(shared: Arc<Shared>, mut stream: glommio::net::TcpStream) {
    loop {
        let envelope: Envelope = match read_frame_io(&mut stream).await {
            Ok(envelope) => envelope,
            Err(e) => {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    tracing::debug!(node = shared.id, error = %e, "dropping a connection");
                }
                return;
            }
        };
        let cut_off = envelope
            .from
            .is_some_and(|from| shared.blocked.lock().is_ok_and(|b| b.contains(&from)));
        let reply = if cut_off {
            Reply::Partitioned
        } else {
            handle(&shared, envelope.from, envelope.message).await
        };
        if write_frame_io(&mut stream, &reply).await.is_err() {
            return;
        }
    }
}

/// Lets the node vote and stand for election again once its shard no
/// longer awaits repair. Meanwhile it asks the leader it follows, while
/// that leader's term is not after the awaited one, to hand the leadership
/// to another voter: the repair ends only with an entry of a later term,
/// and a leader that keeps leading would never make one (and the cluster,
/// short of this node's vote, could not elect another if it failed).
async fn end_repair_when_done(shared: Arc<Shared>) {
    let mut asked_at: Option<Instant> = None;
    let mut to_leader = (None, Connection::default());
    loop {
        tokio::time::sleep(REPAIR_CHECK_EVERY).await;
        match shared.log.awaiting_repair().await {
            Ok(Some(below_term)) => {
                if asked_at.is_none_or(|at| at.elapsed() >= HANDOFF_ASK_EVERY)
                    && ask_for_handoff(&shared, below_term, &mut to_leader).await
                {
                    asked_at = Some(Instant::now());
                }
            }
            Ok(None) => {
                shared.awaiting_repair.store(false, Ordering::Release);
                shared.raft.runtime_config().elect(true);
                metrics::counter!("ringstore_cluster_repairs_ended_total").increment(1);
                tracing::info!(
                    node = shared.id,
                    "repaired: voting and standing for election again"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(node = shared.id, error = %e,
                    "the shard stopped while the node awaited repair");
                return;
            }
        }
    }
}

/// Asks the leader this node follows to hand its leadership to another
/// voter, if there is a leader to ask and its term is not after
/// `below_term`; false if nothing was sent. `to_leader` is the connection
/// to the node asked last (made anew for another).
async fn ask_for_handoff(
    shared: &Shared,
    below_term: u64,
    to_leader: &mut (Option<NodeId>, Connection),
) -> bool {
    let metrics = shared.raft.metrics().borrow_watched().clone();
    let Some(leader) = metrics.current_leader.filter(|&l| l != shared.id) else {
        return false;
    };
    if metrics.current_term > below_term || is_cut_off(&shared.blocked, leader) {
        return false;
    }
    let Some(node) = metrics.membership_config.membership().get_node(&leader) else {
        return false;
    };
    let request = Envelope {
        from: Some(shared.id),
        message: Message::HandOffLeadership { below_term },
    };
    metrics::counter!("ringstore_cluster_handoffs_asked_total").increment(1);
    if to_leader.0 != Some(leader) {
        *to_leader = (Some(leader), Connection::default());
    }
    match to_leader
        .1
        .request::<_, Reply>(node.addr.as_str(), &request, HANDOFF_ASK_TIMEOUT)
        .await
    {
        Ok(Reply::Done) => tracing::info!(
            node = shared.id,
            leader,
            below_term,
            "asked the leader to hand its leadership to another voter, to end the repair"
        ),
        Ok(reply) => tracing::info!(
            node = shared.id,
            leader,
            ?reply,
            "the leader did not hand its leadership off; asking again"
        ),
        Err(e) => {
            to_leader.1.reset();
            tracing::debug!(node = shared.id, leader, error = %e,
                "could not ask the leader for a handoff");
        }
    }
    true
}

/// Hands this leader's leadership to another voter, for `from`, which
/// awaits repair below `below_term` (see [`end_repair_when_done`]). The
/// voter chosen is one that answered within `handoff_silence_max` and, of
/// those, holds the most of the log; never `from`, which may not lead.
async fn hand_off_leadership(shared: &Shared, from: Option<NodeId>, below_term: u64) -> Reply {
    let metrics = shared.raft.metrics().borrow_watched().clone();
    if metrics.current_leader != Some(shared.id) {
        return Reply::NotLeader {
            leader: metrics.current_leader,
        };
    }
    let membership = metrics.membership_config.membership();
    let Some(from) = from.filter(|from| membership.voter_ids().any(|v| v == *from)) else {
        return Reply::Failed("only a voter awaiting repair asks for a handoff".into());
    };
    if metrics.current_term > below_term {
        // This leader's first commit already ends that repair.
        return Reply::Done;
    }
    // Voters that asked within a few of their asking intervals await repair
    // too: named only if no other voter can take the leadership (naming
    // one is safe, see the `TransferLeader` handler; never naming one would
    // leave two nodes awaiting repair beside a leader that never changes).
    let awaiting: BTreeSet<NodeId> = match shared.handoff_askers.lock() {
        Ok(mut askers) => {
            askers.insert(from, Instant::now());
            askers.retain(|_, asked| asked.elapsed() <= HANDOFF_ASK_EVERY * 3);
            askers.keys().copied().collect()
        }
        Err(_) => BTreeSet::from([from]),
    };
    let candidates = membership
        .voter_ids()
        .filter(|&id| id != shared.id && id != from)
        .map(|id| {
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|log_id| log_id.index);
            let silent_for = metrics
                .heartbeat
                .as_ref()
                .and_then(|h| h.get(&id).cloned().flatten())
                .map(|acked| openraft::Instant::elapsed(&*acked));
            Candidate {
                id,
                matched,
                silent_for,
                asked: awaiting.contains(&id),
            }
        });
    let Some(to) = handoff_target(
        candidates,
        metrics.last_log_index,
        shared.handoff_silence_max,
    ) else {
        return Reply::Failed(format!(
            "no voter other than {from} answered within {:?} holding all but at most {} \
             entries of the log, to take the leadership",
            shared.handoff_silence_max, HANDOFF_LAG_ENTRIES_MAX
        ));
    };
    match shared.raft.trigger().transfer_leader(to).await {
        Ok(()) => {
            metrics::counter!("ringstore_cluster_handoffs_total").increment(1);
            tracing::info!(
                node = shared.id,
                to,
                awaiting = from,
                below_term,
                "handing the leadership off: a node awaits repair below this term"
            );
            Reply::Done
        }
        Err(e) => Reply::Failed(e.to_string()),
    }
}

/// A voter the leadership could be handed to.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: NodeId,
    /// The last log index it holds, as the leader knows.
    matched: Option<u64>,
    /// Since it last answered the leader (`None`: never).
    silent_for: Option<Duration>,
    /// It asked for a handoff itself (it awaits repair).
    asked: bool,
}

/// Of `candidates`, the voter that answered within `silence_max`, lacks at
/// most `HANDOFF_LAG_ENTRIES_MAX` entries of a log ending at `last_index`,
/// did not ask for a handoff itself if any such voter did not, and holds
/// the most of the log (the lower id on a tie).
fn handoff_target(
    candidates: impl IntoIterator<Item = Candidate>,
    last_index: Option<u64>,
    silence_max: Duration,
) -> Option<NodeId> {
    let lag = |matched: Option<u64>| match (last_index, matched) {
        (None, _) => 0,
        (Some(last), None) => last.saturating_add(1),
        (Some(last), Some(matched)) => last.saturating_sub(matched),
    };
    candidates
        .into_iter()
        .filter(|c| {
            c.silent_for.is_some_and(|s| s <= silence_max)
                && lag(c.matched) <= HANDOFF_LAG_ENTRIES_MAX
        })
        .max_by_key(|c| (!c.asked, c.matched, std::cmp::Reverse(c.id)))
        .map(|c| c.id)
}

async fn handle(shared: &Shared, from: Option<NodeId>, message: Message) -> Reply {
    metrics::counter!("ringstore_cluster_requests_total", "kind" => kind(&message)).increment(1);
    match message {
        Message::Vote(_) | Message::PreVote(_)
            if shared.awaiting_repair.load(Ordering::Acquire) =>
        {
            metrics::counter!("ringstore_cluster_votes_refused_awaiting_repair_total").increment(1);
            Reply::Failed(AWAITING_REPAIR_REFUSAL.into())
        }
        Message::AppendEntries(rpc) => Reply::AppendEntries(
            shared
                .raft
                .append_entries(rpc)
                .await
                .map_err(|e| e.to_string()),
        ),
        Message::Vote(rpc) => Reply::Vote(shared.raft.vote(rpc).await.map_err(|e| e.to_string())),
        Message::PreVote(rpc) => {
            Reply::Vote(shared.raft.pre_vote(rpc).await.map_err(|e| e.to_string()))
        }
        Message::SnapshotChunk(chunk) => {
            Reply::SnapshotChunk(receive_snapshot_chunk(shared, from, chunk, None).await)
        }
        Message::SnapshotPiece {
            chunk,
            transfer,
            file_crc32,
        } => Reply::SnapshotChunk(
            receive_snapshot_chunk(shared, from, chunk, Some((transfer, file_crc32))).await,
        ),
        Message::Write(request) => match shared.raft.client_write(request).await {
            Ok(written) => Reply::Written(written.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) => Reply::NotLeader {
                leader: to.leader_id,
            },
            // The entry was appended, then replaced by another leader's log:
            // it may still commit, so the outcome is unknown (the client
            // retries under the same sequence number).
            Err(e) => Reply::Failed(e.to_string()),
        },
        Message::Read(query) => {
            match shared.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                Ok(_) => match shared
                    .machine
                    .read(move |m| match query {
                        ReadQuery::Counter => m.counter,
                        ReadQuery::StreamCount => m.metadata.streams().len() as u64,
                    })
                    .await
                {
                    Ok(value) => Reply::Read(value),
                    Err(e) => Reply::Failed(e.to_string()),
                },
                Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(to))) => {
                    Reply::NotLeader {
                        leader: to.leader_id,
                    }
                }
                Err(e) => Reply::Failed(e.to_string()),
            }
        }
        Message::Status => status(shared).await,
        // openraft elects the node a transfer names even while its own
        // elections are off. For a node awaiting repair that is safe (the
        // transfer waits until it has flushed the leader's whole log, so it
        // holds every committed entry) and refusing would leave the leader,
        // which stops its heartbeats for the transfer, with no successor.
        Message::TransferLeader(request) => Reply::TransferLeader(
            shared
                .raft
                .handle_transfer_leader(request)
                .await
                .map_err(|e| e.to_string()),
        ),
        Message::HandOffLeadership { below_term } => {
            hand_off_leadership(shared, from, below_term).await
        }
        Message::Partition { blocked } => {
            if let Ok(mut set) = shared.blocked.lock() {
                *set = blocked.into_iter().collect();
            }
            tracing::info!(node = shared.id, "partition changed");
            Reply::Done
        }
    }
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::AppendEntries(_) => "append_entries",
        Message::Vote(_) => "vote",
        Message::PreVote(_) => "pre_vote",
        Message::SnapshotChunk(_) => "snapshot_chunk",
        Message::SnapshotPiece { .. } => "snapshot_piece",
        Message::Write(_) => "write",
        Message::Read(_) => "read",
        Message::Status => "status",
        Message::Partition { .. } => "partition",
        Message::TransferLeader(_) => "transfer_leader",
        Message::HandOffLeadership { .. } => "hand_off_leadership",
    }
}

/// Adds one piece to the transfer under way in `receiving`; returns the
/// whole file after its last piece. A piece at offset 0 starts a new
/// transfer (a late first piece of an abandoned attempt does too: the live
/// attempt's next piece is then refused and the leader starts it over,
/// since random attempt ids do not tell older from newer). A piece that
/// does not continue the transfer under way (another
/// sender, vote, snapshot, attempt or file checksum, or another offset) is
/// refused; if it came from the same sender, what was gathered is
/// discarded too (the leader starts again from offset 0). A whole file
/// whose CRC-32 is not the one its pieces carried is refused the same way,
/// counted in `ringstore_raft_snapshot_transfers_refused_total`, before
/// openraft sees it: installing it would fail its verification, which
/// openraft takes as a storage failure and stops the node. At most one
/// snapshot is held in memory.
fn gather_piece(
    receiving: &mut Option<Receiving>,
    from: Option<NodeId>,
    chunk: &SnapshotChunk,
    checked: Option<(u64, u32)>,
) -> Result<Option<Vec<u8>>, String> {
    if chunk.offset == 0 {
        *receiving = Some(Receiving {
            from,
            vote: chunk.vote,
            last_log_id: chunk.meta.last_log_id,
            checked,
            bytes: Vec::new(),
        });
    }
    let Some(current) = receiving.as_mut().filter(|r| {
        r.from == from
            && r.vote == chunk.vote
            && r.last_log_id == chunk.meta.last_log_id
            && r.checked == checked
            && r.bytes.len() as u64 == chunk.offset
    }) else {
        // The sender's own transfer went wrong: it starts again from 0.
        // Another sender's stray piece, or a late one of an attempt the
        // sender abandoned, leaves the transfer under way.
        if receiving
            .as_ref()
            .is_some_and(|r| r.from == from && same_attempt(r.checked, checked))
        {
            *receiving = None;
        }
        return Err(format!(
            "snapshot piece at offset {} does not continue a transfer from {from:?}",
            chunk.offset
        ));
    };
    current.bytes.extend_from_slice(&chunk.data);
    if !chunk.last {
        return Ok(None);
    }
    let Some(whole) = receiving.take() else {
        return Ok(None);
    };
    if let Some((transfer, expected)) = whole.checked {
        let found = crc32fast::hash(&whole.bytes);
        if found != expected {
            metrics::counter!("ringstore_raft_snapshot_transfers_refused_total").increment(1);
            tracing::warn!(
                ?from,
                transfer,
                bytes = whole.bytes.len(),
                expected,
                found,
                "refusing a received snapshot whose pieces do not make the file sent"
            );
            return Err(format!(
                "snapshot of {} bytes from {from:?} has CRC-32 {found:#010x}, not the \
                 {expected:#010x} sent: refused, send it again",
                whole.bytes.len()
            ));
        }
    }
    Ok(Some(whole.bytes))
}

/// Whether two pieces' attempts may be the same one (pieces from a leader
/// of an older build carry none and are taken to be).
fn same_attempt(a: Option<(u64, u32)>, b: Option<(u64, u32)>) -> bool {
    match (a, b) {
        (Some((a, _)), Some((b, _))) => a == b,
        _ => true,
    }
}

/// Takes one piece of a leader's snapshot; after the last, installs the
/// snapshot and answers with this node's vote (see [`gather_piece`]).
async fn receive_snapshot_chunk(
    shared: &Shared,
    from: Option<NodeId>,
    chunk: SnapshotChunk,
    checked: Option<(u64, u32)>,
) -> Result<Option<SnapshotResponse<ClusterTypes>>, String> {
    let complete = {
        let mut receiving = shared
            .receiving
            .lock()
            .map_err(|_| "the snapshot receiver's lock is poisoned".to_string())?;
        gather_piece(&mut receiving, from, &chunk, checked)?
    };
    let Some(bytes) = complete else {
        return Ok(None);
    };
    let snapshot = SnapshotFile::<ClusterTypes> {
        meta: chunk.meta,
        snapshot: Cursor::new(bytes),
    };
    shared
        .raft
        .install_full_snapshot(chunk.vote, snapshot)
        .await
        .map(Some)
        .map_err(|e| e.to_string())
}

async fn status(shared: &Shared) -> Reply {
    let metrics = shared.raft.metrics().borrow_watched().clone();
    let state = shared
        .machine
        .read(|m| (m.counter, m.metadata.streams().len() as u64, m.digest()))
        .await;
    let installed = shared.machine.snapshots_installed().await.unwrap_or(0);
    let rebuilt = shared.machine.snapshots_rebuilt().await.unwrap_or(0);
    match state {
        Ok((counter, streams, Ok(digest))) => Reply::Status(NodeStatus {
            id: shared.id,
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            applied_index: metrics.last_applied.map(|id| id.index),
            purged_index: metrics.purged.map(|id| id.index),
            counter,
            streams,
            digest,
            snapshots_installed: installed,
            snapshots_rebuilt: rebuilt,
            awaiting_repair: shared
                .awaiting_repair_below
                .filter(|_| shared.awaiting_repair.load(Ordering::Acquire)),
        }),
        Ok((_, _, Err(e))) => Reply::Failed(e.to_string()),
        Err(e) => Reply::Failed(e.to_string()),
    }
}

/// openraft's view of the node as Prometheus gauges.
async fn export_metrics(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(Duration::from_millis(METRICS_EVERY_MS));
    loop {
        every.tick().await;
        let m = shared.raft.metrics().borrow_watched().clone();
        metrics::gauge!("ringstore_raft_term").set(m.current_term as f64);
        metrics::gauge!("ringstore_raft_is_leader").set(if m.current_leader == Some(shared.id) {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("ringstore_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
        metrics::gauge!("ringstore_raft_applied_index")
            .set(m.last_applied.map_or(0, |id| id.index) as f64);
        metrics::gauge!("ringstore_raft_snapshot_index")
            .set(m.snapshot.map_or(0, |id| id.index) as f64);
        metrics::gauge!("ringstore_raft_purged_index")
            .set(m.purged.map_or(0, |id| id.index) as f64);
    }
}

/// Makes a peer client per target.
struct Network {
    from: NodeId,
    blocked: Arc<Mutex<BTreeSet<NodeId>>>,
    snapshot_chunk_bytes: usize,
}

impl RaftNetworkFactory<ClusterTypes> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            from: self.from,
            target,
            blocked: self.blocked.clone(),
            // openraft makes its peers on the reactor it runs on.
            link: ReactorLink::to(node.addr.clone()),
            snapshot_chunk_bytes: self.snapshot_chunk_bytes,
        }
    }
}

/// RPCs to one peer, over one connection on the reactor made when first
/// needed.
pub(super) struct Peer {
    from: NodeId,
    target: NodeId,
    blocked: Arc<Mutex<BTreeSet<NodeId>>>,
    link: ReactorLink,
    /// Bytes of a snapshot one message carries.
    snapshot_chunk_bytes: usize,
}

type RpcResult<T> = Result<T, RPCError<ClusterTypes>>;

impl Peer {
    async fn call(&mut self, message: Message, timeout: Duration) -> Result<Reply, io::Error> {
        if is_cut_off(&self.blocked, self.target) {
            return Err(dropped_by_partition(self.target, timeout).await);
        }
        let envelope = Envelope {
            from: Some(self.from),
            message,
        };
        let reply: Reply = self.link.request(&envelope, timeout).await?;
        not_partitioned(reply, self.target)
    }

    /// Sends an AppendEntries request at once, without waiting for the
    /// replies before it ([`pipelined_append`]'s `send`), honouring the
    /// test partitions as [`Peer::call`] does.
    fn append_sender(
        &self,
        timeout: Duration,
    ) -> impl FnMut(AppendEntriesRequest<ClusterTypes>) -> AppendReply<ClusterTypes> + Send + Unpin
    {
        let (link, blocked) = (self.link.clone(), self.blocked.clone());
        let (from, target) = (self.from, self.target);
        move |rpc| {
            if is_cut_off(&blocked, target) {
                return Box::pin(async move {
                    Err(unreachable(dropped_by_partition(target, timeout).await))
                });
            }
            let envelope = Envelope {
                from: Some(from),
                message: Message::AppendEntries(rpc),
            };
            let reply = link.send::<_, Reply>(&envelope, timeout);
            Box::pin(async move {
                append_response(reply.await.and_then(|r| not_partitioned(r, target)))
            })
        }
    }
}

fn is_cut_off(blocked: &Mutex<BTreeSet<NodeId>>, target: NodeId) -> bool {
    blocked.lock().is_ok_and(|b| b.contains(&target))
}

/// A request to a node this one is cut off from (a test partition) fails
/// as on a network that drops the packets: only when its time limit has
/// passed, so openraft sees what a real partition shows it.
async fn dropped_by_partition(target: NodeId, timeout: Duration) -> io::Error {
    tokio::time::sleep(timeout).await;
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!("node {target} is cut off (test partition)"),
    )
}

/// `reply`, unless the peer answered that it cut this node off.
fn not_partitioned(reply: Reply, target: NodeId) -> Result<Reply, io::Error> {
    if matches!(reply, Reply::Partitioned) {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("node {target} cut this node off (test partition)"),
        ));
    }
    Ok(reply)
}

fn append_response(
    replied: Result<Reply, io::Error>,
) -> RpcResult<AppendEntriesResponse<ClusterTypes>> {
    match replied {
        Ok(Reply::AppendEntries(Ok(response))) => Ok(response),
        Ok(Reply::AppendEntries(Err(message))) | Ok(Reply::Failed(message)) => {
            Err(remote_failed(message))
        }
        Ok(other) => Err(unexpected(&other)),
        Err(e) => Err(unreachable(e)),
    }
}

fn unreachable(e: io::Error) -> RPCError<ClusterTypes> {
    RPCError::Unreachable(Unreachable::new(&e))
}

fn remote_failed(message: String) -> RPCError<ClusterTypes> {
    RPCError::Network(NetworkError::new(&io::Error::other(message)))
}

fn unexpected(reply: &Reply) -> RPCError<ClusterTypes> {
    RPCError::Network(NetworkError::new(&io::Error::other(format!(
        "unexpected reply {reply:?}"
    ))))
}

impl RaftNetworkV2<ClusterTypes> for Peer {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<ClusterTypes>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<ClusterTypes>> {
        append_response(
            self.call(Message::AppendEntries(rpc), option.hard_ttl())
                .await,
        )
    }

    /// Replication, pipelined ([`super::pipeline`]).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, RpcResult<AppendResults<'s, ClusterTypes>>>
    where
        S: futures_lite::Stream<Item = AppendEntriesRequest<ClusterTypes>> + Send + Unpin + 'static,
    {
        let send = self.append_sender(option.hard_ttl());
        Box::pin(async move { Ok(pipelined_append(input, send)) })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<ClusterTypes>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<ClusterTypes>> {
        self.ask_vote(Message::Vote(rpc), option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<ClusterTypes>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<ClusterTypes>> {
        self.ask_vote(Message::PreVote(rpc), option).await
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest<ClusterTypes>,
        option: RPCOption,
    ) -> RpcResult<TransferLeaderResponse<ClusterTypes>> {
        self.ask_transfer(request, option).await
    }

    /// Sends the snapshot file in pieces of `snapshot_chunk_bytes`, each
    /// within the RPC's time limit, until the last is answered with the
    /// follower's vote, or until openraft cancels the transfer.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotFile<ClusterTypes>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<ClusterTypes>, StreamingError<ClusterTypes>> {
        let bytes = snapshot.snapshot.into_inner();
        let transfer = Uuid::new_v4().as_u64_pair().0;
        let file_crc32 = crc32fast::hash(&bytes);
        let send = async {
            let mut offset = 0;
            loop {
                let end = (offset + self.snapshot_chunk_bytes).min(bytes.len());
                let last = end == bytes.len();
                let chunk = SnapshotChunk {
                    vote,
                    meta: snapshot.meta.clone(),
                    offset: offset as u64,
                    data: bytes[offset..end].to_vec(),
                    last,
                };
                let piece = Message::SnapshotPiece {
                    chunk,
                    transfer,
                    file_crc32,
                };
                match self.call(piece, option.hard_ttl()).await {
                    Ok(Reply::SnapshotChunk(Ok(Some(response)))) if last => return Ok(response),
                    Ok(Reply::SnapshotChunk(Ok(None))) if !last => offset = end,
                    Ok(Reply::SnapshotChunk(Err(message))) | Ok(Reply::Failed(message)) => {
                        return Err(remote_failed(message).into())
                    }
                    Ok(other) => return Err(unexpected(&other).into()),
                    Err(e) => return Err(unreachable(e).into()),
                }
            }
        };
        tokio::select! {
            sent = send => sent,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }
}

impl Peer {
    async fn ask_transfer(
        &mut self,
        request: TransferLeaderRequest<ClusterTypes>,
        option: RPCOption,
    ) -> RpcResult<TransferLeaderResponse<ClusterTypes>> {
        match self
            .call(Message::TransferLeader(request), option.hard_ttl())
            .await
        {
            Ok(Reply::TransferLeader(Ok(response))) => Ok(response),
            Ok(Reply::TransferLeader(Err(message))) | Ok(Reply::Failed(message)) => {
                Err(remote_failed(message))
            }
            Ok(other) => Err(unexpected(&other)),
            Err(e) => Err(unreachable(e)),
        }
    }

    async fn ask_vote(
        &mut self,
        message: Message,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<ClusterTypes>> {
        match self.call(message, option.hard_ttl()).await {
            Ok(Reply::Vote(Ok(response))) => Ok(response),
            Ok(Reply::Vote(Err(message))) | Ok(Reply::Failed(message)) => {
                Err(remote_failed(message))
            }
            Ok(other) => Err(unexpected(&other)),
            Err(e) => Err(unreachable(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces of `file` as a leader of term 1 sends them, in pieces of
    /// `size`, in attempt `transfer` (`None`: a leader of an older build).
    fn pieces(
        file: &[u8],
        size: usize,
        checked: Option<(u64, u32)>,
    ) -> Vec<(SnapshotChunk, Option<(u64, u32)>)> {
        let meta = openraft::SnapshotMeta {
            last_log_id: Some(LogId::new(
                crate::raft::LeaderId {
                    term: 1,
                    node_id: 1,
                },
                7,
            )),
            last_membership: Default::default(),
        };
        let mut offset = 0;
        let mut out = Vec::new();
        loop {
            let end = (offset + size).min(file.len());
            let chunk = SnapshotChunk {
                vote: Vote::new_committed(1, 1),
                meta: meta.clone(),
                offset: offset as u64,
                data: file[offset..end].to_vec(),
                last: end == file.len(),
            };
            out.push((chunk, checked));
            if end == file.len() {
                return out;
            }
            offset = end;
        }
    }

    fn gather_all(
        receiving: &mut Option<Receiving>,
        pieces: &[(SnapshotChunk, Option<(u64, u32)>)],
    ) -> Result<Option<Vec<u8>>, String> {
        let mut whole = None;
        for (chunk, checked) in pieces {
            whole = gather_piece(receiving, Some(1), chunk, *checked)?;
        }
        Ok(whole)
    }

    /// A late piece of an attempt the leader abandoned, arriving at an
    /// offset that fits the attempt under way, used to be appended to it:
    /// a file of two attempts, which fails the install's verification and
    /// stops the follower. It is refused now, and the attempt under way
    /// goes on; a file whose pieces do not make the one the leader sent is
    /// refused before openraft sees it.
    #[test]
    fn a_snapshot_transfer_takes_no_piece_of_another_attempt() {
        let old_file = vec![1u8; 100];
        let new_file = vec![2u8; 100];
        let old = pieces(&old_file, 40, Some((11, crc32fast::hash(&old_file))));
        let new = pieces(&new_file, 40, Some((12, crc32fast::hash(&new_file))));
        let mut receiving = None;
        // The new attempt's first piece, then the old one's second (at
        // offset 40, which fits), then the rest of the new one.
        assert_eq!(
            gather_piece(&mut receiving, Some(1), &new[0].0, new[0].1),
            Ok(None)
        );
        let late = gather_piece(&mut receiving, Some(1), &old[1].0, old[1].1);
        assert!(late.is_err(), "{late:?}");
        assert_eq!(
            gather_all(&mut receiving, &new[1..]),
            Ok(Some(new_file.clone()))
        );

        // The same file from a leader of an older build (no attempt, no
        // checksum) is still taken.
        let unchecked = pieces(&new_file, 40, None);
        assert_eq!(
            gather_all(&mut receiving, &unchecked),
            Ok(Some(new_file.clone()))
        );

        // Pieces that do not make the file the leader sent.
        let mut damaged = pieces(&new_file, 40, Some((13, crc32fast::hash(&new_file))));
        damaged[1].0.data[3] ^= 1;
        let refused = gather_all(&mut receiving, &damaged);
        assert!(
            matches!(&refused, Err(message) if message.contains("CRC-32")),
            "{refused:?}"
        );
        assert!(receiving.is_none(), "nothing kept of a refused file");
    }

    fn settings(dir: &std::path::Path) -> NodeSettings {
        let members = BTreeMap::from([(1, SocketAddr::from(([127, 0, 0, 1], 0)))]);
        NodeSettings::new(1, dir.join("node-1"), Uuid::new_v4(), members)
    }

    #[test]
    fn the_handoff_goes_to_the_voter_that_answered_and_holds_the_most_log() {
        let silence_max = Duration::from_millis(200);
        let heard = Some(Duration::from_millis(10));
        let silent = Some(Duration::from_millis(201));
        let last = Some(100);
        let voter = |id, matched, silent_for| Candidate {
            id,
            matched,
            silent_for,
            asked: false,
        };
        let asker = |id, matched, silent_for| Candidate {
            asked: true,
            ..voter(id, matched, silent_for)
        };
        // The longest log among those heard from; a tie goes to the lower id.
        let heard_three = [
            voter(2, Some(97), heard),
            voter(3, Some(99), heard),
            voter(4, Some(99), heard),
        ];
        assert_eq!(handoff_target(heard_three, last, silence_max), Some(3));
        // A voter not heard from lately, or never, is passed over, however
        // much it holds.
        let some_silent = [
            voter(2, Some(97), heard),
            voter(3, Some(100), silent),
            voter(4, Some(100), None),
        ];
        assert_eq!(handoff_target(some_silent, last, silence_max), Some(2));
        assert_eq!(
            handoff_target([voter(3, Some(99), silent)], last, silence_max),
            None
        );
        assert_eq!(handoff_target([], last, silence_max), None);
        // One that asked for a handoff itself (it awaits repair) goes only
        // if no other can: never naming it would leave it and the asker
        // awaiting repair beside a leader that never changes.
        let one_asked = [asker(2, Some(100), heard), voter(3, Some(90), heard)];
        assert_eq!(handoff_target(one_asked, last, silence_max), Some(3));
        let only_askers = [asker(2, Some(100), heard), voter(3, Some(90), silent)];
        assert_eq!(handoff_target(only_askers, last, silence_max), Some(2));
        // One too far behind (or holding nothing of a long log) is passed
        // over: it could not flush the rest within an election timeout.
        let far = 5_000;
        let behind = far - HANDOFF_LAG_ENTRIES_MAX - 1;
        let too_far = [voter(2, Some(behind), heard), voter(3, None, heard)];
        assert_eq!(handoff_target(too_far, Some(far), silence_max), None);
        let near = [voter(2, Some(behind + 1), heard)];
        assert_eq!(handoff_target(near, Some(far), silence_max), Some(2));
        // An empty log: any voter heard from holds all of it.
        assert_eq!(
            handoff_target([voter(2, None, heard)], None, silence_max),
            Some(2)
        );
    }

    #[tokio::test]
    async fn settings_out_of_range_are_refused_before_anything_opens() {
        let dir = tempfile::tempdir().unwrap();
        type Breaking = fn(&mut NodeSettings);
        let cases: [(&str, Breaking); 4] = [
            ("snapshot_every_entries", |s| s.snapshot_every_entries = 0),
            ("heartbeat_ms", |s| s.heartbeat_ms = 0),
            ("snapshot_chunk_bytes", |s| s.snapshot_chunk_bytes = 0),
            ("snapshot_chunk_bytes", |s| {
                s.snapshot_chunk_bytes = SNAPSHOT_CHUNK_BYTES + 1
            }),
        ];
        for (name, break_it) in cases {
            let mut bad = settings(dir.path());
            break_it(&mut bad);
            match run_node(bad, async {}).await {
                Err(NodeError::Setting { setting, .. }) => assert_eq!(setting, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(!dir.path().join("node-1").exists());
    }
}
