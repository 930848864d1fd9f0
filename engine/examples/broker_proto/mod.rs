//! The broker example's wire protocol, shared by `broker` (the server),
//! `broker_load` (the load client) and `tests/broker_example.rs`.
//!
//! # Frames
//!
//! Every message, either way, is one frame:
//!
//! ```text
//! offset 0             4
//!        +-------------+------------------------------------------+
//!        | length: u32 | payload: `length` bytes                  |
//!        | little end. | one bincode value (engine settings)      |
//!        +-------------+------------------------------------------+
//! ```
//!
//! The payload is a [`Request`] (client to server) or a [`Response`]
//! (server to client), encoded with bincode 2's serde support and the
//! engine's settings ([`ringstore::machine::encode`]: little-endian,
//! variable-length integers); it must decode as exactly one value. A length
//! above [`FRAME_BYTES_MAX`], a payload that does not decode or a
//! connection that ends inside a frame is a protocol error: the server
//! answers the requests before it, sends one [`Response::ProtocolError`]
//! saying why and closes the connection. Other connections are untouched.
//!
//! # Pipelining and order
//!
//! A client may send requests without waiting for replies; replies come
//! back in request order. The server runs up to [`PIPELINE_DEPTH_MAX`]
//! requests of one connection at once (more wait in the socket), so
//! pipelined submits share group commits. A read runs once every earlier
//! request of its connection has its reply, so it sees that connection's
//! own earlier writes.
//!
//! # Routing
//!
//! Each shard listens on its own port, `base_port + shard`. A request's key
//! is its stream's name (a user's name for user commands); it must go to
//! shard [`shard_for_key`]`(key, shards)`, or it is refused with
//! [`Response::WrongShard`] and nothing is done.

// Each of the three crates that include this module uses a different part
// of it (the load client never starts a server; the server never dials).
#![allow(dead_code)]

pub mod server;

use ringstore::broker::{Command, Rejection, Reply, StreamCommand, TopicCommand, UserCommand};
use ringstore::machine::{decode, encode, DecodeError, EncodeError, RECORD_BYTES_MAX};
pub use ringstore::runtime::shard_for_key;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Bytes of a frame's length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;
/// Largest payload either side accepts, in bytes. Above any valid command
/// (the journal's default entry limit is 1 MiB) and reply.
pub const FRAME_BYTES_MAX: usize = 2 << 20;
/// Requests of one connection the server runs at once.
pub const PIPELINE_DEPTH_MAX: usize = 128;
/// Connections one shard serves at once; more are closed at accept.
pub const CONNECTIONS_MAX: usize = 256;
/// The default port of shard 0.
pub const BASE_PORT_DEFAULT: u16 = 7470;

const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);
// A frame the server accepts is a value the engine's decoder accepts.
const _: () = assert!(FRAME_BYTES_MAX <= RECORD_BYTES_MAX);

/// What a client asks of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Runs a command through the shard: replied to once it is durable and
    /// applied ([`Response::Applied`]) or refused ([`Response::Rejected`]).
    Submit(Command),
    /// Reads the shard's state.
    Read(Query),
}

/// A read of a shard's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// A stream. Replies [`Response::Stream`].
    DescribeStream {
        /// The stream.
        stream: String,
    },
    /// A topic. Replies [`Response::Topic`].
    DescribeTopic {
        /// The topic's stream.
        stream: String,
        /// The topic.
        topic: String,
    },
    /// A group's committed offset in one partition. Replies
    /// [`Response::Offset`].
    CommittedOffset {
        /// The topic's stream.
        stream: String,
        /// The topic.
        topic: String,
        /// The group.
        group: String,
        /// The partition.
        partition: u32,
    },
    /// The shard's counters; any shard answers for itself. Replies
    /// [`Response::Stats`].
    Stats,
}

impl Request {
    /// The key that routes the request (`None`: any shard serves it).
    pub fn key(&self) -> Option<&str> {
        match self {
            Request::Submit(command) => Some(command_key(command)),
            Request::Read(
                Query::DescribeStream { stream }
                | Query::DescribeTopic { stream, .. }
                | Query::CommittedOffset { stream, .. },
            ) => Some(stream),
            Request::Read(Query::Stats) => None,
        }
    }
}

/// The key of a command: its stream's name, or its user's name (users
/// belong to no stream; in this example each lives on the shard its name
/// routes to).
pub fn command_key(command: &Command) -> &str {
    match command {
        Command::Stream(StreamCommand::Create { name } | StreamCommand::Delete { name }) => name,
        Command::Topic(
            TopicCommand::Create { stream, .. }
            | TopicCommand::Delete { stream, .. }
            | TopicCommand::UpdateConfig { stream, .. }
            | TopicCommand::AddPartitions { stream, .. },
        ) => stream,
        Command::Group(command) => command.group().0,
        Command::User(
            UserCommand::Create { name, .. }
            | UserCommand::Delete { name }
            | UserCommand::SetPermissions { name, .. }
            | UserCommand::SetPasswordHash { name, .. },
        ) => name,
    }
}

/// The server's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The command is durable and applied.
    Applied(Reply),
    /// The state machine refused the command; nothing changed.
    Rejected {
        /// What kind of refusal.
        code: RejectionCode,
        /// The rejection, in words (names the object).
        message: String,
    },
    /// The request's key belongs to another shard; nothing was done.
    WrongShard {
        /// The key.
        key: String,
        /// The shard that owns it.
        owner: usize,
        /// The shard that was asked.
        shard: usize,
        /// How many shards there are.
        shards: usize,
    },
    /// [`Query::DescribeStream`]: the stream, if it exists.
    Stream(Option<StreamInfo>),
    /// [`Query::DescribeTopic`]: the topic, if it exists.
    Topic(Option<TopicInfo>),
    /// [`Query::CommittedOffset`]: the offset, if the group exists and
    /// has committed one for the partition.
    Offset(Option<u64>),
    /// [`Query::Stats`].
    Stats(ShardReport),
    /// The engine could not take the command (backpressure, shard closing
    /// or failed). Not applied, except after a journal failure, where the
    /// command's fate is known only once the shard is reopened.
    Failed {
        /// The engine's error.
        message: String,
    },
    /// The request broke the protocol; the server closes the connection
    /// after this reply.
    ProtocolError {
        /// What was wrong.
        message: String,
    },
}

/// The kind of a [`Rejection`], for clients that act on it (the message
/// carries the details).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectionCode {
    /// The object already exists.
    Duplicate,
    /// The object does not exist.
    NotFound,
    /// The object's parent does not exist.
    MissingParent,
    /// The object still has children.
    HasChildren,
    /// A name, permission, password hash, config value or partition count
    /// is malformed.
    Invalid,
    /// The partition is beyond the topic's partitions.
    PartitionOutOfRange,
    /// A limit would be exceeded.
    LimitExceeded,
}

impl From<&Rejection> for RejectionCode {
    // Exhaustive on purpose: a new rejection must be given a code.
    fn from(rejection: &Rejection) -> RejectionCode {
        match rejection {
            Rejection::Duplicate { .. } => RejectionCode::Duplicate,
            Rejection::NotFound { .. } => RejectionCode::NotFound,
            Rejection::MissingParent { .. } => RejectionCode::MissingParent,
            Rejection::HasChildren { .. } => RejectionCode::HasChildren,
            Rejection::InvalidName { .. }
            | Rejection::InvalidPermission { .. }
            | Rejection::InvalidPasswordHash { .. }
            | Rejection::InvalidConfigValue { .. }
            | Rejection::InvalidPartitionCount { .. } => RejectionCode::Invalid,
            Rejection::PartitionOutOfRange { .. } => RejectionCode::PartitionOutOfRange,
            Rejection::LimitExceeded { .. } => RejectionCode::LimitExceeded,
        }
    }
}

/// A stream, as [`Query::DescribeStream`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// The op that created it.
    pub id: u64,
    /// How many topics it has.
    pub topics: u64,
}

/// A topic, as [`Query::DescribeTopic`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// The op that created it.
    pub id: u64,
    /// Its partition count.
    pub partitions: u32,
    /// Its configuration, in key order.
    pub config: Vec<(String, String)>,
}

/// A shard's counters since it was opened, as [`Query::Stats`] reports
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardReport {
    /// The shard that answered.
    pub shard: usize,
    /// How many shards the broker runs.
    pub shards: usize,
    /// Commands applied (replies and rejections).
    pub commands_applied: u64,
    /// Commands the state machine refused.
    pub commands_rejected: u64,
    /// Group-commit writes to the journal.
    pub journal_writes: u64,
    /// fdatasyncs of the journal.
    pub journal_fsyncs: u64,
    /// Entries made durable (commands and the journal's own records).
    pub journal_entries: u64,
    /// Most entries in one write.
    pub batch_entries_max: u64,
    /// Checkpoints that wrote a snapshot.
    pub checkpoints: u64,
    /// Times a submit found the journal's ring full and waited for a
    /// checkpoint.
    pub ring_full_waits: u64,
    /// Median submit-to-acknowledgement latency inside the shard, in µs.
    pub ack_p50_us: u64,
    /// 99th percentile of the same, in µs.
    pub ack_p99_us: u64,
}

/// A frame that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is above [`FRAME_BYTES_MAX`].
    #[error("a {bytes}-byte frame exceeds FRAME_BYTES_MAX ({FRAME_BYTES_MAX} bytes)")]
    TooLarge {
        /// The length announced (or, when encoding, produced).
        bytes: u64,
    },
    /// The payload is not one value of the expected type.
    #[error("the frame's payload does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// The value does not encode.
    #[error("the value does not encode: {0}")]
    Encode(#[from] EncodeError),
    /// The connection ended inside a frame.
    #[error("the connection ended inside a frame")]
    Truncated,
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// Whether the peer broke the protocol (as opposed to the socket
    /// failing under it).
    pub fn is_protocol(&self) -> bool {
        matches!(
            self,
            FrameError::TooLarge { .. } | FrameError::Decode(_) | FrameError::Truncated
        )
    }
}

/// Appends `value` to `out` as one frame.
pub fn encode_frame<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let payload = encode(value)?;
    let bytes = u32::try_from(payload.len())
        .ok()
        .filter(|&bytes| bytes as usize <= FRAME_BYTES_MAX)
        .ok_or(FrameError::TooLarge {
            bytes: payload.len() as u64,
        })?;
    out.extend_from_slice(&bytes.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// The payload length a frame header announces, checked against
/// [`FRAME_BYTES_MAX`] before anything is allocated for it.
pub fn frame_len(header: [u8; FRAME_HEADER_BYTES]) -> Result<usize, FrameError> {
    let bytes = u32::from_le_bytes(header);
    if bytes as usize > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            bytes: u64::from(bytes),
        });
    }
    Ok(bytes as usize)
}

/// Decodes a frame's payload as exactly one `T`.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    Ok(decode(payload)?)
}

/// Writes `value` as one frame to a blocking writer.
pub fn write_frame<T: Serialize>(writer: &mut impl Write, value: &T) -> Result<(), FrameError> {
    let mut frame = Vec::new();
    encode_frame(value, &mut frame)?;
    writer.write_all(&frame)?;
    Ok(())
}

/// Reads one frame from a blocking reader; `None` if the stream ended
/// cleanly before it.
pub fn read_frame<T: DeserializeOwned>(reader: &mut impl Read) -> Result<Option<T>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut filled = 0;
    while filled < header.len() {
        match reader.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(read) => filled += read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut payload = vec![0u8; frame_len(header)?];
    reader
        .read_exact(&mut payload)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(e),
        })?;
    decode_payload(&payload).map(Some)
}

/// The address of shard `shard`'s listener; `None` if the port would
/// overflow.
pub fn shard_addr(host: &str, base_port: u16, shard: usize) -> Option<SocketAddr> {
    let port = u16::try_from(shard)
        .ok()
        .and_then(|shard| base_port.checked_add(shard))?;
    (host, port).to_socket_addrs().ok()?.next()
}

/// A blocking, one-request-at-a-time connection to one shard (for setup
/// and tests; see `broker_load` for a pipelined client).
pub struct BlockingClient {
    stream: TcpStream,
}

impl BlockingClient {
    /// Connects to `addr`; a reply slower than `timeout` is an error.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<BlockingClient> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(BlockingClient { stream })
    }

    /// Sends `request` and waits for its reply.
    pub fn call(&mut self, request: &Request) -> Result<Response, FrameError> {
        write_frame(&mut self.stream, request)?;
        read_frame(&mut self.stream)?.ok_or(FrameError::Truncated)
    }

    /// The socket, for tests that write raw bytes.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}
