//! A client of the cluster: submits to the leader, follows redirects, and
//! retries a command under the same sequence number until it is answered
//! or its deadline passes (then its outcome is unknown).

use super::machine::{ClusterCommand, ClusterReply};
use super::wire::{
    read_frame, write_frame, Connection, Envelope, Message, NodeId, NodeStatus, ReadQuery, Reply,
};
use crate::raft::{Request, Response};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Longest one request to one node waits, in milliseconds.
const REQUEST_TIMEOUT_MS: u64 = 1_000;
/// Pause before trying the next node when none is known to lead, in
/// milliseconds.
const NO_LEADER_PAUSE_MS: u64 = 25;

/// Why a client call has no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No node answered before the deadline. A write's outcome is unknown:
    /// it may still be applied (once).
    #[error("no answer within {waited:?} (last problem: {last})")]
    Timeout {
        /// How long the call tried.
        waited: Duration,
        /// The last thing that went wrong.
        last: String,
    },
    /// The client was given no members to ask.
    #[error("the client knows no member of the cluster")]
    NoMembers,
}

/// A cluster client (one command at a time).
pub struct ClusterClient {
    nodes: BTreeMap<NodeId, SocketAddr>,
    leader: Option<NodeId>,
    next_guess: usize,
    client: u64,
    seq: u64,
    /// The node the connection is to, and the connection.
    connection: (Option<NodeId>, Connection),
}

impl ClusterClient {
    /// A client of the cluster whose members are `nodes`, identified as
    /// `client`, which no other client, and no later run of this one, may
    /// use: the cluster answers a command from the session of its client
    /// id and sequence number, so a reused id gets another client's answers
    /// and its commands are not applied. [`ClusterClient::random_id`] draws
    /// one.
    pub fn new(nodes: BTreeMap<NodeId, SocketAddr>, client: u64) -> ClusterClient {
        ClusterClient {
            nodes,
            leader: None,
            next_guess: 0,
            client,
            seq: 0,
            connection: (None, Connection::default()),
        }
    }

    /// A client id no other client is expected to hold (64 random bits:
    /// the two halves of a v4 UUID, whose fixed version and variant bits
    /// lie in different places, combined).
    pub fn random_id() -> u64 {
        let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
        high ^ low
    }

    /// Submits `command`; the reply once it is applied. Retries reuse the
    /// command's sequence number, so it is applied at most once.
    pub async fn write(
        &mut self,
        command: ClusterCommand,
        deadline: Duration,
    ) -> Result<Response<ClusterReply>, ClientError> {
        self.seq += 1;
        let request = Request {
            client: self.client,
            seq: self.seq,
            command,
        };
        self.ask(
            deadline,
            |_| Message::Write(request.clone()),
            |reply| match reply {
                Reply::Written(response) => Some(response),
                _ => None,
            },
        )
        .await
    }

    /// A linearizable read.
    pub async fn read(&mut self, query: ReadQuery, deadline: Duration) -> Result<u64, ClientError> {
        self.ask(
            deadline,
            |_| Message::Read(query),
            |reply| match reply {
                Reply::Read(value) => Some(value),
                _ => None,
            },
        )
        .await
    }

    async fn ask<T>(
        &mut self,
        deadline: Duration,
        message: impl Fn(NodeId) -> Message,
        answer: impl Fn(Reply) -> Option<T>,
    ) -> Result<T, ClientError> {
        let started = Instant::now();
        let mut last = String::from("no node tried");
        while started.elapsed() < deadline {
            let Some(node) = self.target() else {
                return Err(ClientError::NoMembers);
            };
            match self.exchange(node, message(node)).await {
                Ok(Reply::NotLeader {
                    leader: Some(leader),
                }) if leader != node => {
                    self.leader = Some(leader);
                    last = format!("node {node} redirected to node {leader}");
                }
                Ok(Reply::NotLeader { .. }) => {
                    self.leader = None;
                    last = format!("node {node} knows no leader");
                    tokio::time::sleep(Duration::from_millis(NO_LEADER_PAUSE_MS)).await;
                }
                Ok(Reply::Failed(message)) => {
                    self.leader = None;
                    last = format!("node {node}: {message}");
                    tokio::time::sleep(Duration::from_millis(NO_LEADER_PAUSE_MS)).await;
                }
                Ok(reply) => match answer(reply) {
                    Some(value) => {
                        self.leader = Some(node);
                        return Ok(value);
                    }
                    None => {
                        // Not a spin against one node: pause, then try the
                        // members in turn.
                        self.leader = None;
                        last = format!("node {node} answered something else");
                        tokio::time::sleep(Duration::from_millis(NO_LEADER_PAUSE_MS)).await;
                    }
                },
                Err(e) => {
                    self.connection.1.reset();
                    self.leader = None;
                    last = format!("node {node}: {e}");
                    tokio::time::sleep(Duration::from_millis(NO_LEADER_PAUSE_MS)).await;
                }
            }
        }
        Err(ClientError::Timeout {
            waited: started.elapsed(),
            last,
        })
    }

    /// The leader if known, else the members in turn; `None` without
    /// members.
    fn target(&mut self) -> Option<NodeId> {
        if let Some(leader) = self.leader {
            return Some(leader);
        }
        let node = *self
            .nodes
            .keys()
            .nth(self.next_guess % self.nodes.len().max(1))?;
        self.next_guess += 1;
        Some(node)
    }

    async fn exchange(&mut self, node: NodeId, message: Message) -> io::Result<Reply> {
        let addr = self
            .nodes
            .get(&node)
            .copied()
            .ok_or_else(|| io::Error::other(format!("node {node} is not a known member")))?;
        if self.connection.0 != Some(node) {
            self.connection = (Some(node), Connection::default());
        }
        let envelope = Envelope {
            from: None,
            message,
        };
        self.connection
            .1
            .request(addr, &envelope, Duration::from_millis(REQUEST_TIMEOUT_MS))
            .await
    }
}

/// One request to the node at `addr` on a connection of its own.
async fn ask_node(addr: SocketAddr, message: Message) -> io::Result<Reply> {
    tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), async {
        let mut stream = TcpStream::connect(addr).await?;
        write_frame(
            &mut stream,
            &Envelope {
                from: None,
                message,
            },
        )
        .await?;
        read_frame::<Reply>(&mut stream).await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))?
}

/// The local view of the node at `addr`.
pub async fn node_status(addr: SocketAddr) -> io::Result<NodeStatus> {
    match ask_node(addr, Message::Status).await? {
        Reply::Status(status) => Ok(status),
        other => Err(io::Error::other(format!("unexpected reply {other:?}"))),
    }
}

/// Cuts the node at `addr` off from `blocked` (empty: heals it).
pub async fn set_partition(addr: SocketAddr, blocked: Vec<NodeId>) -> io::Result<()> {
    match ask_node(addr, Message::Partition { blocked }).await? {
        Reply::Done => Ok(()),
        other => Err(io::Error::other(format!("unexpected reply {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_without_members_says_so() {
        let mut client = ClusterClient::new(BTreeMap::new(), 1);
        let read = client
            .read(ReadQuery::Counter, Duration::from_millis(50))
            .await;
        assert!(matches!(read, Err(ClientError::NoMembers)), "{read:?}");
    }
}
