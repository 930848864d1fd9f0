//! The cluster's messages on the wire: one TCP connection carries
//! requests and their responses in turn, each a frame of a little-endian
//! `u32` length and that many bytes of bincode.

use super::machine::{ClusterCommand, ClusterReply};
use super::ClusterTypes;
use crate::raft::{Request, Response, SnapshotMeta, Vote};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// Largest frame either side reads, in bytes (a snapshot chunk and its
/// envelope fit with room to spare).
pub const FRAME_BYTES_MAX: usize = 16 << 20;

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
    /// Raft: the connection carries a stream of AppendEntries requests
    /// from here on, answered in order without waiting for each other
    /// ([`append_stream`]).
    AppendStream,
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

/// A follower's answer to one request of an append stream: openraft's
/// result, or its fatal error as text.
pub type StreamReply<C> = Result<openraft::raft::StreamAppendResult<C>, String>;

/// What the sender of an append stream writes after its hello: each
/// request, then `None` (the stream's end: the connection goes back to
/// single requests and can carry the next stream).
type StreamRequest<C> = Option<AppendEntriesRequest<C>>;

/// What the receiver of an append stream writes: each request's answer in
/// order, then `End` once the sender's `None` came and every request was
/// answered.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
enum StreamAnswer<C: openraft::RaftTypeConfig> {
    Answer(StreamReply<C>),
    End,
}

/// One item of an append stream on the sending side.
pub type StreamOutcome<C> = Result<openraft::raft::StreamAppendResult<C>, io::Error>;

/// Idle connections to one peer that append streams reuse (openraft opens
/// a stream per replication session and per heartbeat).
pub type StreamConnections = Arc<std::sync::Mutex<Vec<TcpStream>>>;

/// Idle connections kept per peer at most.
const STREAM_CONNECTIONS_KEPT: usize = 4;

/// Sends openraft's AppendEntries requests to `addr` without waiting for
/// each answer: on an idle connection from `idle` (or a new one), `hello`
/// (what tells the receiver that a stream follows) goes first, then each
/// request as it comes, while the answers are read back in order. A
/// follower then has the next requests in hand while it flushes the last,
/// so its appends share group commits (openraft's default waits for each
/// answer). When the requests end and all are answered, the connection
/// goes back to `idle`.
///
/// The returned stream ends at the first error: an answer missing for
/// `timeout` while requests are unanswered, a connection that fails, or
/// `stop()` turning true before a request is sent (a test partition).
pub fn append_stream<C, H, S>(
    addr: String,
    idle: StreamConnections,
    hello: H,
    requests: S,
    timeout: Duration,
    stop: impl Fn() -> bool + Send + 'static,
) -> impl futures_lite::Stream<Item = StreamOutcome<C>> + Send + 'static
where
    C: openraft::RaftTypeConfig,
    H: Serialize + Send + Sync + 'static,
    S: futures_lite::Stream<Item = AppendEntriesRequest<C>> + Send + Unpin + 'static,
{
    let pooled = idle.lock().ok().and_then(|mut idle| idle.pop());
    let start = async move {
        let mut stream = match pooled {
            Some(stream) => stream,
            None => {
                let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
                let _ = stream.set_nodelay(true);
                stream
            }
        };
        write_frame(&mut stream, &hello).await?;
        Ok::<_, io::Error>(stream.into_split())
    };
    let state = StreamState::Start(Box::pin(start), requests, stop, idle);
    let unanswered = Arc::new(AtomicUsize::new(0));
    futures_lite::stream::unfold(state, move |state| {
        let unanswered = unanswered.clone();
        async move {
            let (reader, writer_back, idle) = match state {
                StreamState::Done => return None,
                StreamState::Reading(reader, writer_back, idle) => (reader, writer_back, idle),
                StreamState::Start(start, mut requests, stop, idle) => {
                    let (reader, mut writer) = match start.await {
                        Ok(halves) => halves,
                        Err(e) => return Some((Err(e), StreamState::Done)),
                    };
                    let (give_back, writer_back) = futures_channel::oneshot::channel();
                    let sent = unanswered.clone();
                    // The writer: each request, then the end (counted as
                    // one more answer: the receiver's `End`), then its half
                    // goes back for reuse. A failed write or a cut-off
                    // peer drops it, and the reader sees the connection
                    // close.
                    tokio::spawn(async move {
                        use futures_lite::StreamExt;
                        while let Some(request) = requests.next().await {
                            if stop() {
                                return;
                            }
                            sent.fetch_add(1, Ordering::SeqCst);
                            let frame: StreamRequest<C> = Some(request);
                            if write_frame(&mut writer, &frame).await.is_err() {
                                return;
                            }
                        }
                        sent.fetch_add(1, Ordering::SeqCst);
                        if write_frame(&mut writer, &None::<AppendEntriesRequest<C>>)
                            .await
                            .is_ok()
                        {
                            let _ = give_back.send(writer);
                        }
                    });
                    (reader, writer_back, idle)
                }
            };
            next_answer(reader, writer_back, idle, timeout, &unanswered).await
        }
    })
}

/// The write half of an append stream's connection, returned by its
/// writer once the stream's end is written.
type WriterBack = futures_channel::oneshot::Receiver<tokio::net::tcp::OwnedWriteHalf>;

/// Connecting and saying hello.
type StreamStart = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = io::Result<(
                    tokio::net::tcp::OwnedReadHalf,
                    tokio::net::tcp::OwnedWriteHalf,
                )>,
            > + Send,
    >,
>;

/// Where an append stream is.
enum StreamState<S, F> {
    /// Not connected: the connect and hello, the requests, the cut-off
    /// test, the idle connections.
    Start(StreamStart, S, F, StreamConnections),
    /// Reading answers.
    Reading(tokio::net::tcp::OwnedReadHalf, WriterBack, StreamConnections),
    /// Ended.
    Done,
}

/// Reads an append stream's next answer (`None` at its end, once the
/// connection is back with the idle ones).
async fn next_answer<C: openraft::RaftTypeConfig, S, F>(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    writer_back: WriterBack,
    idle: StreamConnections,
    timeout: Duration,
    unanswered: &AtomicUsize,
) -> Option<(StreamOutcome<C>, StreamState<S, F>)> {
    let failed = |e: io::Error| Some((Err(e), StreamState::Done));
    loop {
        // An answer can only be under way while a request (or the end) is
        // unanswered, so a timeout with none leaves no frame half read.
        let answer =
            match tokio::time::timeout(timeout, read_frame::<StreamAnswer<C>>(&mut reader)).await {
                Ok(answer) => answer,
                Err(_) if unanswered.load(Ordering::SeqCst) == 0 => continue,
                Err(_) => {
                    return failed(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {timeout:?}"),
                    ))
                }
            };
        return match answer {
            Ok(StreamAnswer::Answer(Ok(result))) => {
                unanswered.fetch_sub(1, Ordering::SeqCst);
                let next = if result.is_ok() {
                    StreamState::Reading(reader, writer_back, idle)
                } else {
                    // openraft stops at an error; the receiver closes.
                    StreamState::Done
                };
                Some((Ok(result), next))
            }
            Ok(StreamAnswer::Answer(Err(fatal))) => failed(io::Error::other(fatal)),
            Ok(StreamAnswer::End) => {
                if let Ok(writer) = writer_back.await {
                    if let Ok(stream) = reader.reunite(writer) {
                        if let Ok(mut idle) = idle.lock() {
                            if idle.len() < STREAM_CONNECTIONS_KEPT {
                                idle.push(stream);
                            }
                        }
                    }
                }
                None
            }
            Err(e) => failed(e),
        };
    }
}

/// Serves an append stream on a connection whose hello was read: feeds the
/// requests, as they arrive, to `raft` (openraft's `Raft::stream_append`,
/// which hands them to its core without waiting for the last to flush)
/// and writes the answers back in order. Returns the connection when the
/// stream ended cleanly (it then carries single requests again), `None`
/// when it failed, ended at an error, or `stop()` turned true (a test
/// partition).
pub async fn serve_append_stream<C, SM>(
    raft: &openraft::Raft<C, SM>,
    stream: TcpStream,
    stop: impl Fn() -> bool + Send + 'static,
) -> Option<TcpStream>
where
    C: openraft::RaftTypeConfig,
    SM: openraft::storage::RaftStateMachine<C>,
{
    use futures_lite::StreamExt;
    let (reader, mut writer) = stream.into_split();
    let (give_back, reader_back) = futures_channel::oneshot::channel();
    let requests = futures_lite::stream::unfold(
        Some((reader, give_back)),
        move |state| {
            let stopped = stop();
            async move {
                let (mut reader, give_back) = state?;
                if stopped {
                    return None;
                }
                match read_frame::<StreamRequest<C>>(&mut reader).await.ok()? {
                    Some(request) => Some((request, Some((reader, give_back)))),
                    None => {
                        let _ = give_back.send(reader);
                        None
                    }
                }
            }
        },
    );
    let mut answers = std::pin::pin!(raft.stream_append(requests));
    while let Some(answer) = answers.next().await {
        let reply: StreamReply<C> = answer.map_err(|fatal| fatal.to_string());
        let go_on = matches!(reply, Ok(Ok(_)));
        if write_frame(&mut writer, &StreamAnswer::Answer(reply))
            .await
            .is_err()
            || !go_on
        {
            return None;
        }
    }
    // Every answer is out; the sender's end was read if the reader is back.
    let reader = reader_back.await.ok()?;
    write_frame(&mut writer, &StreamAnswer::<C>::End).await.ok()?;
    reader.reunite(writer).ok()
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
