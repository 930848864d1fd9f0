//! What a client submits through Raft and what it gets back.

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
