//! Why a raft shard does not open or a storage call fails.

use super::reactor::ReactorClosed;
use std::path::PathBuf;
use uuid::Uuid;

/// A raft shard's error. Each names the file it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftStoreError {
    /// The journal failed (its error names the file and offset).
    #[error(transparent)]
    Journal(#[from] ringstore_journal::Error),

    /// The engine's snapshot store, identity or lock failed.
    #[error(transparent)]
    Engine(#[from] crate::Error),

    /// The directory belongs to another cluster: its identity names
    /// another domain. Nothing was changed.
    #[error(
        "{path} belongs to cluster {found}, not to cluster {expected}: \
         refusing another cluster's data (give this node its own directory)"
    )]
    ForeignData {
        /// The identity file.
        path: PathBuf,
        /// The cluster this node was started for.
        expected: Uuid,
        /// The cluster the directory holds data of.
        found: Uuid,
    },

    /// The journal belongs to another node of the same cluster (its
    /// superblock records that node's id): its log and vote are not this
    /// node's. Nothing was changed.
    #[error(
        "{path}: the journal is node {recorded}'s, not node {node}'s: refusing another node's \
         log and vote (give each node its own directory)"
    )]
    OtherNode {
        /// The journal's superblock.
        path: PathBuf,
        /// This node.
        node: u64,
        /// The node the journal records.
        recorded: u64,
    },

    /// The open was told the node has been started before
    /// ([`super::Creation::Existing`]) but the directory holds no raft
    /// shard. Nothing was created.
    #[error(
        "{path}: no raft shard here (no directory, or no identity and no data), but the node \
         has been started before: a node that lost its directory must not rejoin empty (its \
         vote and the entries it acknowledged are gone, and its vote could elect a leader \
         without an entry the cluster committed). Put the directory back, or, if the node is \
         new, start it as new (`--new`) this once"
    )]
    NoShard {
        /// The directory.
        path: PathBuf,
    },

    /// The open was told this is the node's first start
    /// ([`super::Creation::New`]) but the directory's shard already has a
    /// journal. Nothing was changed.
    #[error(
        "{path}: this node's raft shard already exists, but the open was told the node is new \
         (`--new`): give that only on the node's first start, so that a lost directory is \
         refused later rather than replaced by an empty node"
    )]
    AlreadyCreated {
        /// The identity file.
        path: PathBuf,
    },

    /// The node id does not fit the journal's record of its owner.
    #[error("node id {node} is above {max}, the largest a raft shard's journal records", max = u32::MAX)]
    NodeId {
        /// The node id given.
        node: u64,
    },

    /// A snapshot's raft section is missing or does not decode.
    #[error("{path}: the snapshot's raft section does not restore: {reason}")]
    RaftSection {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A snapshot sent by the leader was refused (damaged, or of another
    /// cluster).
    #[error("refusing the snapshot received for op {op}: {source}")]
    ReceivedSnapshot {
        /// The op the snapshot would have installed.
        op: u64,
        /// Why.
        #[source]
        source: crate::SnapshotError,
    },

    /// An append would leave a gap in the log: its first entry is past the
    /// entry after the log's last (or after its purged prefix). openraft
    /// appends contiguously; a request built from a read that skipped a
    /// purged prefix would not be, and a log with a hole could win an
    /// election with entries it does not hold. The append fails (openraft
    /// stops the node) rather than write around the hole.
    #[error("refusing to append log index {index}: the log's next index is {next}, so entries {next}..{index} would be missing")]
    LogGap {
        /// The first index of the append.
        index: u64,
        /// The index the log expects next.
        next: u64,
    },

    /// The raft hard state could not be read, encoded or written.
    #[error("the raft hard state: {reason}")]
    HardState {
        /// bincode's error.
        reason: String,
    },

    /// openraft did not start over the shard (`Raft::new` failed).
    #[error("starting openraft over the raft shard failed: {message}")]
    Start {
        /// openraft's error.
        message: String,
    },

    /// A task run on the shard's reactor panicked (caught there, so the
    /// reactor goes on).
    #[error("a task on the raft shard's reactor panicked: {message}")]
    TaskPanicked {
        /// The panic's message.
        message: String,
    },

    /// The shard's reactor thread has stopped.
    #[error(transparent)]
    Closed(#[from] ReactorClosed),
}

impl RaftStoreError {
    /// A short, stable name of the kind of error, for metric labels and
    /// logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RaftStoreError::Journal(_) => "journal",
            RaftStoreError::Engine(crate::Error::SnapshotBehindJournal { .. }) => {
                "snapshot_behind_journal"
            }
            RaftStoreError::Engine(crate::Error::ForeignJournal { .. }) => "foreign_journal",
            RaftStoreError::Engine(_) => "engine",
            RaftStoreError::ForeignData { .. } => "foreign_data",
            RaftStoreError::OtherNode { .. } => "other_node",
            RaftStoreError::NoShard { .. } => "no_shard",
            RaftStoreError::AlreadyCreated { .. } => "already_created",
            RaftStoreError::NodeId { .. } => "node_id",
            RaftStoreError::RaftSection { .. } => "raft_section",
            RaftStoreError::ReceivedSnapshot { .. } => "received_snapshot",
            RaftStoreError::LogGap { .. } => "log_gap",
            RaftStoreError::HardState { .. } => "hard_state",
            RaftStoreError::Start { .. } => "start",
            RaftStoreError::TaskPanicked { .. } => "task_panicked",
            RaftStoreError::Closed(_) => "closed",
        }
    }
}
