//! What a client submits through Raft and what it gets back.

use openraft::RaftTypeConfig;
use serde::{Deserialize, Serialize};

/// A client's command, numbered so that a retry is applied once.
///
/// A client picks a random `client` id and numbers its commands from 1 up,
/// one at a time. After a timeout or a leader change it resubmits the same
/// `seq`: the state machine remembers each client's last `seq` and its
/// response, and answers a repeat from there instead of applying it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request<Command> {
    /// The submitting client.
    pub client: u64,
    /// Its sequence number, increasing by one per command.
    pub seq: u64,
    /// The engine command.
    pub command: Command,
}

/// How openraft logs a request: who sent it, not the command.
impl<Command> std::fmt::Display for Request<Command> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request {} of client {}", self.seq, self.client)
    }
}

/// What applying one log entry returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response<Reply> {
    /// The command was applied: the machine's reply.
    Applied(Reply),
    /// The machine refused the command (no state changed): why.
    Rejected(String),
    /// `seq` is older than the client's last applied command, whose
    /// response is gone: the client retried something it had already seen
    /// answered.
    Stale {
        /// The client's last applied sequence number.
        last_seq: u64,
    },
    /// A blank or membership entry: no client command.
    Internal,
}

/// openraft's leader id as ringstore stores it: a term and a node id, one
/// leader per term (`leader_id_adv`, openraft's default).
pub type LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, u64>;

/// A log entry's payload, over the configuration's commands and nodes.
pub type Payload<C> =
    openraft::EntryPayload<<C as RaftTypeConfig>::D, u64, <C as RaftTypeConfig>::Node>;

/// What the adapter needs of an openraft type configuration: openraft's
/// default term, node id, leader id, vote and entry types (a `u64` term,
/// which becomes the journal's epoch, and a `u64` node id, which the
/// journal's superblock records). Every configuration declared with
/// `openraft::declare_raft_types!` and these left at their defaults has it.
pub trait RaftTypes:
    RaftTypeConfig<
    NodeId = u64,
    Term = u64,
    LeaderId = LeaderId,
    Vote = openraft::impls::Vote<LeaderId>,
    Payload = Payload<Self>,
    Entry = openraft::Entry<LeaderId, Payload<Self>>,
>
{
}

impl<C> RaftTypes for C where
    C: RaftTypeConfig<
        NodeId = u64,
        Term = u64,
        LeaderId = LeaderId,
        Vote = openraft::impls::Vote<LeaderId>,
        Payload = Payload<C>,
        Entry = openraft::Entry<LeaderId, Payload<C>>,
    >
{
}

/// openraft's log id, vote, membership and snapshot meta over [`LeaderId`].
pub type LogId = openraft::LogId<LeaderId>;
/// A vote.
pub type Vote = openraft::impls::Vote<LeaderId>;
/// The membership a log id holds.
pub type StoredMembership<C> =
    openraft::StoredMembership<LeaderId, u64, <C as RaftTypeConfig>::Node>;
/// A snapshot's meta.
pub type SnapshotMeta<C> =
    openraft::storage::SnapshotMeta<LeaderId, u64, <C as RaftTypeConfig>::Node>;
