//! A replicated broker-metadata cluster on `ringstore::raft`: each node is
//! one process (or task) with one raft shard, openraft over it, and a TCP
//! server for its peers and clients.
//!
//! * [`machine`]: what is replicated — the reference broker metadata
//!   ([`crate::broker::Metadata`]) and a counter, in one log and one
//!   snapshot.
//! * [`node`]: a node ([`run_node`]); its network to its peers, with test
//!   partitions (a node drops every message to and from the nodes it is
//!   told are cut off).
//! * [`client`]: a client that finds the leader, follows redirects and
//!   retries a command under its sequence number, so a retry is applied
//!   once; reads are linearizable (`Raft::ensure_linearizable`).
//! * [`wire`]: the frames on the wire.
//! * [`pipeline`]: openraft's replication stream with its requests
//!   pipelined on one connection, a commit notice carried by the next
//!   request.
//! * [`reactor_net`]: the nodes' TCP on their shard's reactor (glommio's
//!   sockets, next to the Raft hosted there).
//!
//! **What is guaranteed.** A command the client got an answer for is
//! committed: held durably (fdatasync'd) by a majority and applied by the
//! leader, and it survives any minority of nodes being lost or killed. A
//! command whose call timed out has an unknown outcome: it may be applied
//! later, once. **What is not:** between a leader's own fdatasync and a
//! majority's, an entry exists on a minority only and is not yet
//! acknowledged; if those nodes are lost for good it is gone, and no client
//! was told otherwise. A node that loses its disk entirely must rejoin with
//! a new node id (its vote is gone with it).

pub mod client;
pub mod machine;
pub mod node;
pub mod pipeline;
pub mod reactor_net;
pub mod wire;
pub mod workload;

pub use client::{node_status, set_partition, ClientError, ClusterClient};
pub use machine::{ClusterCommand, ClusterMachine, ClusterReply};
pub use node::{run_node, NodeError, NodeSettings, SNAPSHOT_EVERY_ENTRIES_MIN};
pub use wire::{NodeId, NodeStatus, ReadQuery};
pub use workload::{run_workload, WorkloadOutcome, WorkloadSettings};

use crate::raft::{Request, Response};
use openraft::BasicNode;

openraft::declare_raft_types!(
    /// The cluster's openraft types.
    pub ClusterTypes:
        D = Request<ClusterCommand>,
        R = Response<ClusterReply>,
        NodeId = u64,
        Node = BasicNode,
        AsyncRuntime = crate::raft::ReactorRuntime,
);
