//! The cluster's messages on the wire: one TCP connection carries
//! requests and their responses in turn, each a frame of a little-endian
//! `u32` length and that many bytes of bincode.

use super::machine::{ClusterCommand, ClusterReply};
use super::ClusterTypes;
use crate::raft::{Request, Response};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// Largest frame either side reads, in bytes (a snapshot chunk and its
/// envelope fit with room to spare).
pub const FRAME_BYTES_MAX: usize = 16 << 20;

/// A node's id.
pub type NodeId = u64;

/// A message to a node, and who sends it (`None`: a client).
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending node, for partitions.
    pub from: Option<NodeId>,
    /// The message.
    pub message: Message,
}

/// What a node is asked.
#[derive(Debug, Serialize, Deserialize)]
pub enum Message {
    /// Raft: replicate entries.
    AppendEntries(AppendEntriesRequest<ClusterTypes>),
    /// Raft: request a vote.
    Vote(VoteRequest<NodeId>),
    /// Raft: a snapshot chunk.
    InstallSnapshot(InstallSnapshotRequest<ClusterTypes>),
    /// A client's command (to the leader).
    Write(Request<ClusterCommand>),
    /// A client's linearizable read (to the leader).
    Read(ReadQuery),
    /// This node's own view, read locally (any node, not linearizable).
    Status,
    /// Test control: drop every message to and from these nodes.
    Partition {
        /// Nodes cut off from this one (empty: heal).
        blocked: Vec<NodeId>,
    },
}

/// What a read asks for.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum ReadQuery {
    /// The counter.
    Counter,
    /// How many streams the broker metadata holds.
    StreamCount,
}

/// A node's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// To `AppendEntries`.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, String>),
    /// To `Vote`.
    Vote(Result<VoteResponse<NodeId>, String>),
    /// To `InstallSnapshot`.
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, String>),
    /// To `Write`: applied (or refused by the machine).
    Written(Response<ClusterReply>),
    /// To `Read`.
    Read(u64),
    /// Not the leader: try `leader` (if known).
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// The request failed on this node (the message says why).
    Failed(String),
    /// The sender is cut off from this node (a test partition).
    Partitioned,
    /// To `Status`.
    Status(NodeStatus),
    /// To `Partition`.
    Done,
}

/// A node's local view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub id: NodeId,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Its current term.
    pub term: u64,
    /// Its last log index.
    pub last_log_index: Option<u64>,
    /// Its last applied index.
    pub applied_index: Option<u64>,
    /// The counter in its machine.
    pub counter: u64,
    /// Streams in its broker metadata.
    pub streams: u64,
    /// Digest of its whole machine state.
    pub digest: u64,
    /// Snapshots it received from a leader and installed since it started.
    pub snapshots_installed: u64,
}

/// One request at a time to one address, over a connection made when
/// first needed and dropped after any failure: a request that timed out
/// may still have its answer on the way, which must not be taken for the
/// next request's.
#[derive(Debug, Default)]
pub struct Connection {
    stream: Option<TcpStream>,
}

impl Connection {
    /// Sends `request` as one frame and reads one frame back, connecting
    /// to `addr` first if there is no connection; `timeout` bounds the
    /// whole exchange, the connect included.
    pub async fn request<Q: Serialize, R: DeserializeOwned>(
        &mut self,
        addr: impl ToSocketAddrs,
        request: &Q,
        timeout: Duration,
    ) -> io::Result<R> {
        let exchanged = tokio::time::timeout(timeout, async {
            let stream = match &mut self.stream {
                Some(stream) => stream,
                empty => {
                    let stream = TcpStream::connect(addr).await?;
                    let _ = stream.set_nodelay(true);
                    empty.insert(stream)
                }
            };
            write_frame(stream, request).await?;
            read_frame::<R>(stream).await
        })
        .await;
        match exchanged {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}"),
                ))
            }
        }
    }

    /// Drops the connection (the next request connects anew).
    pub fn reset(&mut self) {
        self.stream = None;
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ FRAME_BYTES_MAX }>()
}

/// Writes `value` as one frame.
pub async fn write_frame<T: Serialize>(
    stream: &mut (impl AsyncWriteExt + Unpin),
    value: &T,
) -> io::Result<()> {
    let bytes = bincode::serde::encode_to_vec(value, config()).map_err(io::Error::other)?;
    if bytes.len() > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a {}-byte frame exceeds FRAME_BYTES_MAX ({FRAME_BYTES_MAX})",
                bytes.len()
            ),
        ));
    }
    let len = u32::try_from(bytes.len()).map_err(io::Error::other)?;
    let mut framed = Vec::with_capacity(4 + bytes.len());
    framed.extend_from_slice(&len.to_le_bytes());
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await?;
    stream.flush().await
}

/// Reads one frame as a `T`. A frame longer than [`FRAME_BYTES_MAX`] or
/// bytes that do not decode are `InvalidData`.
pub async fn read_frame<T: DeserializeOwned>(
    stream: &mut (impl AsyncReadExt + Unpin),
) -> io::Result<T> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes exceeds FRAME_BYTES_MAX ({FRAME_BYTES_MAX})"),
        ));
    }
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).await?;
    let (value, used) = bincode::serde::decode_from_slice(&bytes, config())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if used != len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} bytes after the message in its frame", len - used),
        ));
    }
    Ok(value)
}
