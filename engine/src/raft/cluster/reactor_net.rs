//! The cluster's TCP on a raft shard's reactor: glommio's own sockets, so
//! a message to or from a Raft hosted there ([`crate::raft::ReactorRuntime`])
//! wakes no other thread. With tokio's sockets each message woke a tokio
//! thread (its I/O driver) and that thread then woke the reactor.
//!
//! openraft's network handles must be `Send` and glommio's sockets are
//! not, so a [`ReactorLink`] is a `Send` handle to a connection owned by a
//! task on the reactor. It writes each request frame as soon as it takes
//! it, without waiting for the replies before it, and a reader task per
//! connection hands the reply frames back in request order (the peer
//! answers one connection's requests in turn): openraft's replication
//! stream is pipelined on it ([`super::pipeline`]).
//! [`read_frame_io`] and [`write_frame_io`] are [`super::wire`]'s frames
//! over glommio's streams, and [`adopt_stream`] moves an accepted
//! connection onto the reactor.

use super::wire::{decode_frame, encode_frame, frame_len, FRAME_PREFIX_BYTES};
use crate::raft::reactor::on_reactor_thread;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use serde::{de::DeserializeOwned, Serialize};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One request: its frame, its time limit (the connect included) and where
/// the reply frame's body goes.
struct Exchange {
    frame: Vec<u8>,
    /// When the reply is due: the request's time limit counts from when
    /// it was sent, time queued behind other requests included.
    due: Instant,
    answer: futures_channel::oneshot::Sender<io::Result<Vec<u8>>>,
}

/// A `Send` handle to one connection to `addr`, owned by a task on the
/// reactor the link was made on. Requests are written in the order they
/// were sent, each as soon as it is taken, without waiting for the replies
/// before it (pipelined: the peer answers one connection's requests in
/// order). The connection is made at the first request and kept while
/// every reply comes back in time; after a failed or timed-out exchange it
/// is dropped, and with it every reply still awaited on it (a late reply
/// must not answer another request). The task ends when the last handle
/// is dropped. The queue is unbounded: its callers bound what they have in
/// flight (openraft one request per peer, or [`super::pipeline`]'s depth).
#[derive(Clone)]
pub struct ReactorLink {
    /// The connection task's queue, or why there is none.
    exchanges: Result<async_channel::Sender<Exchange>, (io::ErrorKind, String)>,
}

/// The reply to a request sent with [`ReactorLink::send`]: a future of
/// the reply frame as an `R`.
pub struct PendingReply<R> {
    answered: Result<futures_channel::oneshot::Receiver<io::Result<Vec<u8>>>, Option<io::Error>>,
    reply: std::marker::PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> std::future::Future for PendingReply<R> {
    type Output = io::Result<R>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<R>> {
        let this = self.get_mut();
        let answered = match &mut this.answered {
            Ok(answered) => answered,
            Err(failed) => {
                let e = failed
                    .take()
                    .unwrap_or_else(|| io::Error::other("reply polled after it was ready"));
                return std::task::Poll::Ready(Err(e));
            }
        };
        match std::pin::Pin::new(answered).poll(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(Err(_)) => std::task::Poll::Ready(Err(link_stopped())),
            std::task::Poll::Ready(Ok(body)) => {
                std::task::Poll::Ready(body.and_then(|body| decode_frame(&body)))
            }
        }
    }
}

fn link_stopped() -> io::Error {
    io::Error::other("the link's reactor has stopped")
}

impl ReactorLink {
    /// A link to `addr` (a numeric `ip:port`: no name is looked up on the
    /// reactor) whose connection lives on the calling thread's reactor.
    /// Made off a raft shard's reactor thread, every request on it fails
    /// (`Unsupported`), saying so; with an address that does not parse,
    /// `InvalidInput`.
    pub fn to(addr: String) -> ReactorLink {
        let addr: SocketAddr = match addr.parse() {
            Ok(addr) => addr,
            Err(e) => {
                return ReactorLink {
                    exchanges: Err((
                        io::ErrorKind::InvalidInput,
                        format!("peer address {addr:?} is not a numeric ip:port: {e}"),
                    )),
                }
            }
        };
        if !on_reactor_thread() {
            return ReactorLink {
                exchanges: Err((
                    io::ErrorKind::Unsupported,
                    "a ReactorLink works only when made on a raft shard's reactor thread \
                     (start the Raft with RaftStores::start_raft)"
                        .into(),
                )),
            };
        }
        let (exchanges, queue) = async_channel::unbounded();
        // Detached: glommio cancels a task whose handle is dropped
        // (`glommio_quirks`, quirk 6); this one ends with the last handle.
        // A panic would take the whole reactor down: it is caught, and
        // the link's requests fail from then on.
        glommio::spawn_local(async move {
            let _ = crate::raft::reactor::catch_panic("peer_link", run_link(addr, queue)).await;
        })
        .detach();
        ReactorLink {
            exchanges: Ok(exchanges),
        }
    }

    /// Sends `request` as one frame and returns the reply frame as an `R`,
    /// all within `timeout`.
    pub async fn request<Q: Serialize, R: DeserializeOwned>(
        &self,
        request: &Q,
        timeout: Duration,
    ) -> io::Result<R> {
        self.send(request, timeout).await
    }

    /// Queues `request` at once and returns its reply, due within
    /// `timeout`: requests sent one after another go out back to back, each
    /// without waiting for the replies before it.
    pub fn send<Q: Serialize, R: DeserializeOwned>(
        &self,
        request: &Q,
        timeout: Duration,
    ) -> PendingReply<R> {
        let queued = self.queue(request, timeout);
        PendingReply {
            answered: queued.map_err(Some),
            reply: std::marker::PhantomData,
        }
    }

    fn queue<Q: Serialize>(
        &self,
        request: &Q,
        timeout: Duration,
    ) -> io::Result<futures_channel::oneshot::Receiver<io::Result<Vec<u8>>>> {
        let exchanges = match &self.exchanges {
            Ok(exchanges) => exchanges,
            Err((kind, why)) => return Err(io::Error::new(*kind, why.clone())),
        };
        let (answer, answered) = futures_channel::oneshot::channel();
        let exchange = Exchange {
            frame: encode_frame(request)?,
            due: Instant::now() + timeout,
            answer,
        };
        exchanges.try_send(exchange).map_err(|_| link_stopped())?;
        Ok(answered)
    }
}

/// A reply awaited on a connection: where it goes and when it is due.
struct Awaited {
    answer: futures_channel::oneshot::Sender<io::Result<Vec<u8>>>,
    due: Instant,
}

/// The link's current connection: its write half and the queue of the
/// replies its reader task awaits, in the order their requests went out.
struct Connection {
    writer: futures_lite::io::WriteHalf<glommio::net::TcpStream>,
    awaited: async_channel::Sender<Awaited>,
    /// Closed when the reader task ends: it gave the connection up (a
    /// reply failed or came late) or it panicked. The connection is then
    /// dropped at once, so the socket closes and the peer stops serving it.
    reader_gone: async_channel::Receiver<()>,
}

impl Connection {
    /// Splits `stream` and starts the task that reads its replies.
    fn start(stream: glommio::net::TcpStream) -> Connection {
        let (reader, writer) = futures_lite::io::split(stream);
        let (awaited, queue) = async_channel::unbounded();
        let (reader_alive, reader_gone) = async_channel::bounded::<()>(1);
        // Detached (quirk 6); it ends when the connection is given up and
        // every reply it awaits is answered or failed.
        glommio::spawn_local(async move {
            // Dropped with the task however it ends, a panic included.
            let _alive = reader_alive;
            let read = read_replies(reader, queue);
            let _ = crate::raft::reactor::catch_panic("peer_link_replies", read).await;
        })
        .detach();
        Connection {
            writer,
            awaited,
            reader_gone,
        }
    }
}

/// What the link's task does next.
enum Next {
    Send(Exchange),
    /// The connection's reader gave it up.
    Reconnect,
    /// The last handle is gone.
    Stop,
}

async fn run_link(addr: SocketAddr, queue: async_channel::Receiver<Exchange>) {
    let mut connection: Option<Connection> = None;
    loop {
        let taken = async { queue.recv().await.map_or(Next::Stop, Next::Send) };
        let next = match &connection {
            // A request waiting goes first; the connection's end is seen
            // when there is none.
            Some(current) => {
                futures_lite::future::or(taken, async {
                    let _ = current.reader_gone.recv().await;
                    Next::Reconnect
                })
                .await
            }
            None => taken.await,
        };
        let exchange = match next {
            Next::Send(exchange) => exchange,
            Next::Reconnect => {
                connection = None;
                continue;
            }
            Next::Stop => return,
        };
        if exchange.answer.is_canceled() {
            // Its caller gave up before it was sent.
            continue;
        }
        let left = || exchange.due.saturating_duration_since(Instant::now());
        let mut current = match connection.take() {
            Some(current) if !current.reader_gone.is_closed() => current,
            // None yet, or given up by its reader: a new one.
            _ => match within(left(), connect(addr)).await {
                Ok(stream) => Connection::start(stream),
                Err(e) => {
                    let _ = exchange.answer.send(Err(e));
                    continue;
                }
            },
        };
        let written = within(left(), async {
            current.writer.write_all(&exchange.frame).await?;
            current.writer.flush().await
        })
        .await;
        if let Err(e) = written {
            // A frame may be half written: the connection goes, and its
            // reader answers what it still awaits or fails it.
            let _ = exchange.answer.send(Err(e));
            continue;
        }
        let awaited = Awaited {
            answer: exchange.answer,
            due: exchange.due,
        };
        if let Err(refused) = current.awaited.try_send(awaited) {
            // The reader gave the connection up meanwhile.
            let _ = refused.into_inner().answer.send(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection failed on an earlier request",
            )));
            continue;
        }
        connection = Some(current);
    }
}

async fn connect(addr: SocketAddr) -> io::Result<glommio::net::TcpStream> {
    let stream = glommio::net::TcpStream::connect(addr)
        .await
        .map_err(io::Error::from)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Reads a connection's replies in order, each within its time limit.
/// The first that fails or is late gives the connection up: every reply
/// awaited after it fails too.
async fn read_replies(
    mut reader: futures_lite::io::ReadHalf<glommio::net::TcpStream>,
    queue: async_channel::Receiver<Awaited>,
) {
    while let Ok(awaited) = queue.recv().await {
        let left = awaited.due.saturating_duration_since(Instant::now());
        match within(left, read_body(&mut reader)).await {
            Ok(body) => {
                // The caller may have given up meanwhile.
                let _ = awaited.answer.send(Ok(body));
            }
            Err(e) => {
                queue.close();
                let _ = awaited.answer.send(Err(e));
                while let Ok(later) = queue.try_recv() {
                    let _ = later.answer.send(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the connection failed on an earlier request",
                    )));
                }
                return;
            }
        }
    }
}

/// `work`'s result, or `TimedOut` once `timeout` passes (a glommio timer:
/// it wakes no other thread).
async fn within<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    futures_lite::future::or(work, async {
        glommio::timer::sleep(timeout).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        ))
    })
    .await
}

async fn read_body(stream: &mut (impl futures_lite::AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    stream.read_exact(&mut prefix).await?;
    let mut body = vec![0u8; frame_len(prefix)?];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// Reads one frame as a `T` from a glommio stream (see
/// [`super::wire::read_frame`]).
pub async fn read_frame_io<T: DeserializeOwned>(
    stream: &mut (impl futures_lite::AsyncRead + Unpin),
) -> io::Result<T> {
    decode_frame(&read_body(stream).await?)
}

/// Writes `value` as one frame to a glommio stream.
pub async fn write_frame_io<T: Serialize>(
    stream: &mut (impl futures_lite::AsyncWrite + Unpin),
    value: &T,
) -> io::Result<()> {
    stream.write_all(&encode_frame(value)?).await?;
    stream.flush().await
}

/// `stream` (accepted by a tokio or std listener) as a glommio stream of
/// the calling thread's reactor; `Unsupported` off a raft shard's reactor
/// thread. Nodes listen with tokio, not with glommio's listener: glommio's
/// `bind` sets `SO_REUSEPORT`, with which a second node given the same
/// address would share the port instead of being refused, and sockets it
/// accepted linger in `TIME_WAIT` without `SO_REUSEADDR`, so a restarted
/// node could not bind its address again at once. Accepting is rare; the
/// connection's every message is then read and written on the reactor.
pub fn adopt_stream(stream: std::net::TcpStream) -> io::Result<glommio::net::TcpStream> {
    if !on_reactor_thread() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a connection is adopted on a raft shard's reactor thread",
        ));
    }
    Ok(glommio::net::TcpStream::from(socket2::Socket::from(stream)))
}

#[cfg(test)]
mod tests {
    use super::super::wire::{read_frame, write_frame};
    use super::*;
    use crate::raft::ReactorRuntime;
    use openraft_rt::AsyncRuntime;

    /// A link to a new [`echo_server_counting`].
    async fn echo_link(batch: usize) -> ReactorLink {
        ReactorLink::to(echo_server_counting(batch).await.0.to_string())
    }

    /// An echo server that answers numbers `batch` at a time (once it has
    /// read that many), the number 1 late (200 ms): tokio accepts, the
    /// reactor serves. Also how many connections it has seen closed.
    async fn echo_server_counting(
        batch: usize,
    ) -> (std::net::SocketAddr, std::rc::Rc<std::cell::Cell<usize>>) {
        let closed = std::rc::Rc::new(std::cell::Cell::new(0));
        let counted = closed.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, adopt) = async_channel::unbounded();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = accepted.send(stream.into_std().unwrap()).await;
            }
        });
        glommio::spawn_local(async move {
            while let Ok(stream) = adopt.recv().await {
                let mut stream = adopt_stream(stream).unwrap();
                let counted = counted.clone();
                glommio::spawn_local(async move {
                    loop {
                        let mut read = Vec::new();
                        while read.len() < batch {
                            match read_frame_io::<u64>(&mut stream).await {
                                Ok(n) => read.push(n),
                                Err(_) => {
                                    counted.set(counted.get() + 1);
                                    return;
                                }
                            }
                        }
                        for n in read {
                            if n == 1 {
                                glommio::timer::sleep(Duration::from_millis(200)).await;
                            }
                            if write_frame_io(&mut stream, &n).await.is_err() {
                                return;
                            }
                        }
                    }
                })
                .detach();
            }
        })
        .detach();
        (addr, closed)
    }

    #[test]
    fn requests_go_out_without_waiting_for_the_replies_before_them() {
        let mut rt = ReactorRuntime::new(1);
        rt.block_on(async {
            // It answers only once it has all three.
            let link = echo_link(3).await;
            let replies: Vec<PendingReply<u64>> = (2..=4)
                .map(|n| link.send(&(n as u64), Duration::from_secs(5)))
                .collect();
            for (n, reply) in (2..=4).zip(replies) {
                assert_eq!(reply.await.unwrap(), n);
            }
        });
    }

    #[test]
    fn a_late_reply_fails_the_replies_awaited_behind_it_and_the_link_reconnects() {
        let mut rt = ReactorRuntime::new(1);
        rt.block_on(async {
            let link = echo_link(1).await;
            let late = link.send::<u64, u64>(&1, Duration::from_millis(50));
            let behind = link.send::<u64, u64>(&2, Duration::from_secs(5));
            assert_eq!(late.await.unwrap_err().kind(), io::ErrorKind::TimedOut);
            // Its own answer would come, after the late one's: not taken.
            assert_eq!(
                behind.await.unwrap_err().kind(),
                io::ErrorKind::ConnectionAborted
            );
            let answer: u64 = link.request(&3u64, Duration::from_secs(5)).await.unwrap();
            assert_eq!(answer, 3, "on a new connection");
        });
    }

    #[test]
    fn a_connection_given_up_is_closed_without_waiting_for_the_next_request() {
        let mut rt = ReactorRuntime::new(1);
        rt.block_on(async {
            let (addr, closed) = echo_server_counting(1).await;
            let link = ReactorLink::to(addr.to_string());
            let late = link.send::<u64, u64>(&1, Duration::from_millis(50));
            assert_eq!(late.await.unwrap_err().kind(), io::ErrorKind::TimedOut);
            // The server answers at 200 ms, then finds the connection
            // gone: looked for every 10 ms, for up to a second.
            for _ in 0..100 {
                if closed.get() == 1 {
                    return;
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            panic!("the server still serves the connection given up");
        });
    }

    #[test]
    fn a_reply_claiming_too_long_a_frame_fails_its_request_and_the_link_reconnects() {
        let mut rt = ReactorRuntime::new(1);
        rt.block_on(async {
            // The first connection answers with a length past
            // FRAME_BYTES_MAX; later ones echo.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut first = true;
                while let Ok((mut stream, _)) = listener.accept().await {
                    let hostile = std::mem::take(&mut first);
                    tokio::spawn(async move {
                        while let Ok(n) = read_frame::<u64>(&mut stream).await {
                            if hostile {
                                let _ = stream.write_all(&u32::MAX.to_le_bytes()).await;
                            } else if write_frame(&mut stream, &n).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
            let link = ReactorLink::to(addr.to_string());
            let refused = link.request::<u64, u64>(&7, Duration::from_secs(5)).await;
            let error = refused.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
            assert!(error.to_string().contains("FRAME_BYTES_MAX"), "{error}");
            let answer: u64 = link.request(&8u64, Duration::from_secs(5)).await.unwrap();
            assert_eq!(answer, 8, "on a new connection");
        });
    }

    #[test]
    fn a_timed_out_or_abandoned_request_never_answers_the_next_one() {
        let mut rt = ReactorRuntime::new(1);
        rt.block_on(async {
            let link = echo_link(1).await;
            // Our own time limit runs out.
            let timed_out = link
                .request::<u64, u64>(&1, Duration::from_millis(50))
                .await;
            assert_eq!(timed_out.unwrap_err().kind(), io::ErrorKind::TimedOut);
            let answer: u64 = link.request(&2u64, Duration::from_secs(5)).await.unwrap();
            assert_eq!(answer, 2, "the late answer to the timed-out request");
            // The caller gives up first (openraft times its RPCs itself).
            let abandoned = futures_lite::future::or(
                async { Some(link.request::<u64, u64>(&1, Duration::from_secs(5)).await) },
                async {
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                    None
                },
            )
            .await;
            assert!(abandoned.is_none());
            let answer: u64 = link.request(&3u64, Duration::from_secs(5)).await.unwrap();
            assert_eq!(answer, 3);
        });
    }

    #[test]
    fn a_link_or_connection_made_off_a_reactor_says_so() {
        let link = ReactorLink::to("127.0.0.1:1".into());
        let failed =
            futures_lite::future::block_on(link.request::<u64, u64>(&1, Duration::from_secs(1)));
        let error = failed.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::Unsupported);
        assert!(error.to_string().contains("reactor"), "{error}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(
            adopt_stream(stream).unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
    }

    #[test]
    fn a_peer_address_that_is_not_numeric_is_refused_without_a_lookup() {
        let mut rt = ReactorRuntime::new(1);
        rt.block_on(async {
            let link = ReactorLink::to("localhost:7101".into());
            let failed = link.request::<u64, u64>(&1, Duration::from_secs(1)).await;
            let error = failed.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
            assert!(error.to_string().contains("localhost:7101"), "{error}");
        });
    }

    #[test]
    fn a_peer_that_is_not_there_fails_the_request() {
        let mut rt = ReactorRuntime::new(1);
        rt.block_on(async {
            // A port nobody listens on (bound, then closed).
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let link = ReactorLink::to(addr.to_string());
            let failed = link.request::<u64, u64>(&1, Duration::from_secs(5)).await;
            assert!(failed.is_err());
        });
    }
}
