//! The cluster's messages on the wire: one TCP connection carries
//! requests and their responses in turn, each a frame of a little-endian
//! `u32` length and that many bytes of bincode.

use super::machine::{ClusterCommand, ClusterReply};
use super::ClusterTypes;
use crate::raft::{Request, Response, SnapshotMeta, Vote};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// Largest frame either side reads, in bytes (a snapshot chunk and its
/// envelope fit with room to spare).
pub const FRAME_BYTES_MAX: usize = 16 << 20;

/// Bytes of a frame's length prefix (a little-endian `u32`).
pub const FRAME_PREFIX_BYTES: usize = 4;

/// Bytes of a snapshot file one message carries at most (a snapshot is
/// sent as a run of these, well inside a frame).
pub const SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;

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
    Vote(VoteRequest<ClusterTypes>),
    /// Raft: ask whether a vote would be granted (no state changes).
    PreVote(VoteRequest<ClusterTypes>),
    /// Raft: a piece of the leader's snapshot file; the receiver installs
    /// the snapshot when the last piece arrives.
    SnapshotChunk(SnapshotChunk),
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
    /// Raft: a leader hands its leadership to `to_node_id` (sent to every
    /// voter; the others only stop honouring the old leader's lease).
    TransferLeader(TransferLeaderRequest<ClusterTypes>),
    /// From a node awaiting repair below `below_term`, to the leader it
    /// follows: hand the leadership to another voter, so that a leader of a
    /// later term commits an entry and ends the repair (see the raft
    /// module's "Uncertain tail"). Added after the variants above, whose
    /// encodings it leaves as they were.
    HandOffLeadership {
        /// The term the sender awaits repair below.
        below_term: u64,
    },
    /// Raft: a piece of a snapshot file within one transfer attempt, with
    /// the whole file's checksum (what leaders of this build send; a
    /// `SnapshotChunk` from an older leader is still taken, unchecked).
    /// Answered like `SnapshotChunk`. Added last, leaving the encodings
    /// above as they were. A follower of an older build cannot decode it:
    /// in a rolling upgrade, upgrade the followers before the leader.
    SnapshotPiece {
        /// The piece.
        chunk: SnapshotChunk,
        /// The transfer attempt, random per attempt: a piece of an
        /// abandoned attempt is refused even at an offset that fits.
        transfer: u64,
        /// CRC-32 of the whole file, checked once the last piece is in and
        /// before openraft is given the file: a mixed or damaged file is
        /// refused (the leader sends it again) rather than failing the
        /// install, which stops the follower.
        file_crc32: u32,
    },
}

/// A piece of a snapshot file.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The sending leader's vote.
    pub vote: Vote,
    /// The snapshot's meta.
    pub meta: SnapshotMeta<ClusterTypes>,
    /// Where in the file the piece starts (0 starts a new transfer).
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// Whether it is the file's last piece.
    pub last: bool,
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
    AppendEntries(Result<AppendEntriesResponse<ClusterTypes>, String>),
    /// To `Vote` and `PreVote`.
    Vote(Result<VoteResponse<ClusterTypes>, String>),
    /// To `SnapshotChunk`: taken (`None`), or, for the last one, the
    /// receiver's answer once the snapshot is installed.
    SnapshotChunk(Result<Option<SnapshotResponse<ClusterTypes>>, String>),
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
    /// To `Partition`, and to `HandOffLeadership` once the leader has
    /// started the handoff (or has a term after `below_term` already).
    Done,
    /// To `TransferLeader`.
    TransferLeader(Result<TransferLeaderResponse<ClusterTypes>, String>),
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
    /// The last index it purged from its log (its log starts after it).
    pub purged_index: Option<u64>,
    /// The counter in its machine.
    pub counter: u64,
    /// Streams in its broker metadata.
    pub streams: u64,
    /// Digest of its whole machine state.
    pub digest: u64,
    /// Snapshots it received from a leader and installed since it started.
    pub snapshots_installed: u64,
    /// Snapshots it built again since it started because the current one
    /// was damaged when it was to send it.
    pub snapshots_rebuilt: u64,
    /// It awaits repair, below this term, after an open that cut its
    /// journal's tail: it neither votes nor stands for election (see the
    /// raft module's "Uncertain tail").
    pub awaiting_repair: Option<u64>,
}

/// One request at a time to one address, over a connection made when
/// first needed and kept only after a whole exchange: a request that
/// failed, timed out or was abandoned may still have its answer on the
/// way, which must not be taken for the next request's.
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
        // The stream is out of `self` during the exchange and goes back only
        // after a whole exchange: a caller that gives up midway (drops this
        // future, e.g. on a timeout of its own) leaves no connection whose
        // next read would be this request's late answer.
        let taken = self.stream.take();
        let exchanged = tokio::time::timeout(timeout, async move {
            let mut stream = match taken {
                Some(stream) => stream,
                None => {
                    let stream = TcpStream::connect(addr).await?;
                    let _ = stream.set_nodelay(true);
                    stream
                }
            };
            write_frame(&mut stream, request).await?;
            let reply = read_frame::<R>(&mut stream).await?;
            Ok::<_, io::Error>((stream, reply))
        })
        .await;
        match exchanged {
            Ok(Ok((stream, reply))) => {
                self.stream = Some(stream);
                Ok(reply)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            )),
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

/// `value` as one frame: its length and its bytes.
pub fn encode_frame<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
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
    let mut framed = Vec::with_capacity(FRAME_PREFIX_BYTES + bytes.len());
    framed.extend_from_slice(&len.to_le_bytes());
    framed.extend_from_slice(&bytes);
    Ok(framed)
}

/// The length a frame's first four bytes give; `InvalidData` beyond
/// [`FRAME_BYTES_MAX`].
pub fn frame_len(prefix: [u8; FRAME_PREFIX_BYTES]) -> io::Result<usize> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes exceeds FRAME_BYTES_MAX ({FRAME_BYTES_MAX})"),
        ));
    }
    Ok(len)
}

/// A frame's body (the bytes after its length) as a `T`: `InvalidData` if
/// it does not decode or has bytes left over.
pub fn decode_frame<T: DeserializeOwned>(body: &[u8]) -> io::Result<T> {
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if used != body.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} bytes after the message in its frame", body.len() - used),
        ));
    }
    Ok(value)
}

/// Writes `value` as one frame.
pub async fn write_frame<T: Serialize>(
    stream: &mut (impl AsyncWriteExt + Unpin),
    value: &T,
) -> io::Result<()> {
    stream.write_all(&encode_frame(value)?).await?;
    stream.flush().await
}

/// Reads one frame as a `T`. A frame longer than [`FRAME_BYTES_MAX`] or
/// bytes that do not decode are `InvalidData`.
pub async fn read_frame<T: DeserializeOwned>(
    stream: &mut (impl AsyncReadExt + Unpin),
) -> io::Result<T> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    stream.read_exact(&mut prefix).await?;
    let mut body = vec![0u8; frame_len(prefix)?];
    stream.read_exact(&mut body).await?;
    decode_frame(&body)
}

#[cfg(test)]
mod connection_tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that echoes each number it is sent, the first one late.
    async fn echo_server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    while let Ok(n) = read_frame::<u64>(&mut stream).await {
                        if n == 1 {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        if write_frame(&mut stream, &n).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_abandoned_request_never_answers_the_next_one() {
        let addr = echo_server().await;
        let mut connection = Connection::default();
        // The caller gives up first (openraft times its RPCs itself).
        let abandoned = tokio::time::timeout(
            Duration::from_millis(50),
            connection.request::<u64, u64>(addr, &1, Duration::from_secs(5)),
        )
        .await;
        assert!(abandoned.is_err());
        let answer: u64 = connection
            .request(addr, &2u64, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer, 2, "the late answer to the abandoned request");
        // Our own timeout: the same.
        let timed_out = connection
            .request::<u64, u64>(addr, &1, Duration::from_millis(50))
            .await;
        assert!(timed_out.is_err());
        let answer: u64 = connection
            .request(addr, &3u64, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer, 3);
    }
}
