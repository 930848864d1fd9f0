//! The server side: one shard's listener and its connections, on the
//! shard's own glommio reactor.
//!
//! Each connection is a pair of tasks. The reader decodes frames and starts
//! each submit as its own task at once, so the commands of one connection
//! (and of every other connection on the shard) share group commits; it
//! queues a placeholder per request, in order, on a bounded local channel
//! ([`PIPELINE_DEPTH_MAX`]): when that is full the reader stops reading and
//! TCP pushes back on the client. The writer takes the placeholders in
//! order, waits for each reply, runs reads when their turn comes, and
//! gathers the replies that are ready into one socket write.
//!
//! Nothing a client sends can panic the shard: every length is checked
//! before it is allocated and every payload is decoded fallibly; a bad
//! frame ends that connection with a logged error and a
//! [`Response::ProtocolError`].

use super::{
    decode_payload, encode_frame, frame_len, shard_for_key, FrameError, Query, Request, Response,
    ShardReport, StreamInfo, TopicInfo, CONNECTIONS_MAX, FRAME_HEADER_BYTES, PIPELINE_DEPTH_MAX,
};
use futures_lite::{future, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use ringstore::broker::{Command, Metadata};
use ringstore::Shard;
use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

/// One shard of broker metadata.
pub type MetadataShard = Shard<Metadata>;

/// Replies gathered into one socket write, at most (one more reply may
/// top it up).
const WRITE_BATCH_BYTES_MAX: usize = 64 << 10;
/// Pause after a failed accept (out of file descriptors, say) before the
/// next one, so the loop does not spin.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Which shard a listener serves, out of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// This shard's index.
    pub shard: usize,
    /// The broker's shard count.
    pub shards: usize,
}

impl Route {
    /// The shard that owns `key`.
    fn owner_of(&self, key: &str) -> usize {
        shard_for_key(key.as_bytes(), self.shards)
    }
}

/// Serves `listener` for `shard` until `stop` resolves, one task per
/// connection. Connections still open then are dropped with the reactor;
/// the caller closes the shard afterwards (a submit that already has its
/// op is applied all the same).
pub async fn serve(
    shard: MetadataShard,
    listener: TcpListener,
    route: Route,
    stop: impl Future<Output = ()>,
) {
    let open = Rc::new(Cell::new(0usize));
    let accept = async {
        loop {
            let stream = match listener.accept().await {
                Ok(stream) => stream,
                Err(e) => {
                    eprintln!("broker: shard {}: accept failed: {e}", route.shard);
                    glommio::timer::sleep(ACCEPT_RETRY_PAUSE).await;
                    continue;
                }
            };
            let peer = stream
                .peer_addr()
                .map_or_else(|_| "an unknown peer".to_owned(), |a| a.to_string());
            if open.get() >= CONNECTIONS_MAX {
                eprintln!(
                    "broker: shard {}: refusing {peer}: {CONNECTIONS_MAX} connections open",
                    route.shard
                );
                continue;
            }
            let counted = Counted::enter(&open);
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let _counted = counted;
                if let Err(e) = serve_connection(shard, stream, route).await {
                    eprintln!(
                        "broker: shard {}: closed the connection from {peer}: {e}",
                        route.shard
                    );
                }
            })
            .detach();
        }
    };
    future::or(accept, stop).await;
}

/// Counts a connection while it is open.
struct Counted(Rc<Cell<usize>>);

impl Counted {
    fn enter(open: &Rc<Cell<usize>>) -> Counted {
        open.set(open.get() + 1);
        Counted(open.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// A request's place in its connection's reply order.
enum Pending {
    /// A submit, running.
    Submit(glommio::Task<Response>),
    /// A read, run when its turn comes (after every earlier reply).
    Read(Query),
    /// Answered already (a request for another shard).
    Ready(Response),
}

/// Serves one connection until the client closes it, breaks the protocol
/// or the socket fails. Replies to every request read before the end.
async fn serve_connection(
    shard: MetadataShard,
    stream: TcpStream,
    route: Route,
) -> Result<(), FrameError> {
    stream.set_nodelay(true).map_err(std::io::Error::from)?;
    let (mut reader, writer) = futures_lite::io::split(stream.buffered());
    let (queue, pending) = local_channel::new_bounded(PIPELINE_DEPTH_MAX);
    let replies = glommio::spawn_local(write_replies(shard.clone(), route, pending, writer));
    let read = read_requests(&shard, route, &mut reader, &queue).await;
    if let Err(e) = &read {
        if e.is_protocol() {
            // The client hears why before the connection closes.
            let message = e.to_string();
            let _ = queue
                .send(Pending::Ready(Response::ProtocolError { message }))
                .await;
        }
    }
    drop(queue);
    let written = replies.await;
    read.and(written)
}

/// Reads frames until the client is done, queueing each request in order.
async fn read_requests(
    shard: &MetadataShard,
    route: Route,
    reader: &mut (impl AsyncRead + Unpin),
    queue: &LocalSender<Pending>,
) -> Result<(), FrameError> {
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        if !read_header(reader, &mut header).await? {
            return Ok(()); // the client closed between frames
        }
        payload.resize(frame_len(header)?, 0);
        reader
            .read_exact(&mut payload)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
                _ => FrameError::Io(e),
            })?;
        let request: Request = decode_payload(&payload)?;
        if queue.send(dispatch(shard, route, request)).await.is_err() {
            return Ok(()); // the writer stopped; it reports why
        }
    }
}

/// Fills `header`; `false` if the stream ended before its first byte.
async fn read_header(
    reader: &mut (impl AsyncRead + Unpin),
    header: &mut [u8; FRAME_HEADER_BYTES],
) -> Result<bool, FrameError> {
    let mut filled = 0;
    while filled < header.len() {
        match reader.read(&mut header[filled..]).await? {
            0 if filled == 0 => return Ok(false),
            0 => return Err(FrameError::Truncated),
            read => filled += read,
        }
    }
    Ok(true)
}

/// Starts a request: refuses another shard's key, spawns a submit, defers
/// a read to its turn.
fn dispatch(shard: &MetadataShard, route: Route, request: Request) -> Pending {
    if let Some(key) = request.key() {
        let owner = route.owner_of(key);
        if owner != route.shard {
            return Pending::Ready(Response::WrongShard {
                key: key.to_owned(),
                owner,
                shard: route.shard,
                shards: route.shards,
            });
        }
    }
    match request {
        Request::Submit(command) => {
            let shard = shard.clone();
            Pending::Submit(glommio::spawn_local(async move {
                submit(&shard, command).await
            }))
        }
        Request::Read(query) => Pending::Read(query),
    }
}

async fn submit(shard: &MetadataShard, command: Command) -> Response {
    match shard.submit(command).await {
        Ok(Ok(reply)) => Response::Applied(reply),
        Ok(Err(rejection)) => Response::Rejected {
            code: (&rejection).into(),
            message: rejection.to_string(),
        },
        Err(error) => Response::Failed {
            message: error.to_string(),
        },
    }
}

fn read(shard: &MetadataShard, route: Route, query: &Query) -> Response {
    match query {
        Query::DescribeStream { stream } => Response::Stream(shard.read(|m| {
            m.stream(stream).map(|s| StreamInfo {
                id: s.id,
                topics: m.topics().count_in_stream(stream),
            })
        })),
        Query::DescribeTopic { stream, topic } => Response::Topic(shard.read(|m| {
            m.topic(stream, topic).map(|t| TopicInfo {
                id: t.id,
                partitions: t.partitions,
                config: t
                    .config
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
        })),
        Query::CommittedOffset {
            stream,
            topic,
            group,
            partition,
        } => Response::Offset(shard.read(|m| {
            m.group(stream, topic, group)
                .and_then(|g| g.offsets.get(partition).copied())
        })),
        Query::Stats => {
            let stats = shard.stats();
            let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            Response::Stats(ShardReport {
                shard: route.shard,
                shards: route.shards,
                commands_applied: stats.commands_applied,
                commands_rejected: stats.commands_rejected,
                journal_writes: stats.journal.writes,
                journal_fsyncs: stats.journal.fsyncs,
                journal_entries: stats.journal.entries_written,
                batch_entries_max: stats.journal.batch_entries_max,
                checkpoints: stats.checkpoints,
                ring_full_waits: stats.ring_full_waits,
                ack_p50_us: micros(stats.ack_latency.p50),
                ack_p99_us: micros(stats.ack_latency.p99),
            })
        }
    }
}

/// The reply to `pending` if it is there now; else the submit still
/// running.
async fn answer_now(
    shard: &MetadataShard,
    route: Route,
    pending: Pending,
) -> Result<Response, glommio::Task<Response>> {
    match pending {
        Pending::Submit(mut task) => match future::poll_once(&mut task).await {
            Some(response) => Ok(response),
            None => Err(task),
        },
        Pending::Read(query) => Ok(read(shard, route, &query)),
        Pending::Ready(response) => Ok(response),
    }
}

/// Writes the replies in request order until the reader is done and every
/// queued request is answered, then shuts down the sending side.
async fn write_replies(
    shard: MetadataShard,
    route: Route,
    pending: LocalReceiver<Pending>,
    mut writer: impl AsyncWrite + Unpin,
) -> Result<(), FrameError> {
    let mut out = Vec::with_capacity(WRITE_BATCH_BYTES_MAX);
    let mut waiting: Option<Pending> = None;
    loop {
        let next = match waiting.take() {
            Some(next) => next,
            None => match pending.recv().await {
                Some(next) => next,
                None => break,
            },
        };
        let response = match answer_now(&shard, route, next).await {
            Ok(response) => response,
            Err(running) => running.await,
        };
        push_reply(&response, &mut out);
        // Replies already there go out in the same write.
        while out.len() < WRITE_BATCH_BYTES_MAX {
            let Some(Some(next)) = future::poll_once(pending.recv()).await else {
                break;
            };
            match answer_now(&shard, route, next).await {
                Ok(response) => push_reply(&response, &mut out),
                Err(running) => {
                    waiting = Some(Pending::Submit(running));
                    break;
                }
            }
        }
        writer.write_all(&out).await?;
        out.clear();
    }
    writer.flush().await?;
    writer.close().await?;
    Ok(())
}

/// Appends `response` as a frame; one too large to send is replaced by a
/// [`Response::Failed`] saying so.
fn push_reply(response: &Response, out: &mut Vec<u8>) {
    if let Err(e) = encode_frame(response, out) {
        let failed = Response::Failed {
            message: format!("the reply cannot be sent: {e}"),
        };
        encode_frame(&failed, out).expect("a short failure reply always encodes");
    }
}
