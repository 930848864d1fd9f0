//! The tokio counterpart of `ringstore::raft::cluster::reactor_net::ReactorLink`
//! for the nodes on openraft's reference stores: one connection per peer,
//! requests written back to back as they come (pipelined), replies read in
//! request order, so every store's replication is pipelined the same way
//! (`ringstore::raft::cluster::pipeline`).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ringstore::raft::cluster::wire::{decode_frame, encode_frame, frame_len, FRAME_PREFIX_BYTES};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// One request: its frame, when its reply is due and where it goes.
struct Exchange {
    frame: Vec<u8>,
    due: Instant,
    answer: oneshot::Sender<io::Result<Vec<u8>>>,
}

/// A handle to one connection to `addr`, owned by a tokio task. The
/// connection is made at the first request and given up at the first
/// failed or late reply, with every reply still awaited on it (a late
/// reply must not answer another request).
#[derive(Clone)]
pub struct TokioLink {
    exchanges: mpsc::UnboundedSender<Exchange>,
}

impl TokioLink {
    /// A link to `addr` whose connection task runs on the calling tokio
    /// runtime; it connects at the first request.
    pub fn to(addr: SocketAddr) -> TokioLink {
        let (exchanges, queue) = mpsc::unbounded_channel();
        tokio::spawn(run_link(addr, queue));
        TokioLink { exchanges }
    }

    /// Queues `request` at once; the reply, due within `timeout`.
    pub fn send<Q: Serialize, R: DeserializeOwned>(
        &self,
        request: &Q,
        timeout: Duration,
    ) -> impl std::future::Future<Output = io::Result<R>> + Send + 'static {
        let (answer, answered) = oneshot::channel();
        let queued = encode_frame(request).and_then(|frame| {
            let exchange = Exchange {
                frame,
                due: Instant::now() + timeout,
                answer,
            };
            self.exchanges
                .send(exchange)
                .map_err(|_| io::Error::other("the link's task has stopped"))
        });
        async move {
            queued?;
            let body = answered
                .await
                .map_err(|_| io::Error::other("the link's task has stopped"))??;
            decode_frame(&body)
        }
    }
}

async fn run_link(addr: SocketAddr, mut queue: mpsc::UnboundedReceiver<Exchange>) {
    // Each connection opens with the request that finds none.
    while let Some(first) = queue.recv().await {
        if first.answer.is_closed() {
            // Its caller gave up before it was sent.
            continue;
        }
        let connected = tokio::time::timeout_at(first.due, TcpStream::connect(addr)).await;
        let stream = match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                let _ = first.answer.send(Err(e));
                continue;
            }
            Err(_) => {
                let _ = first.answer.send(Err(timed_out()));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if serve_connection(stream, first, &mut queue).await == Ended::LinkDropped {
            return;
        }
    }
}

#[derive(PartialEq)]
enum Ended {
    LinkDropped,
    ConnectionFailed,
}

/// Writes each request as it is taken and answers the replies in order,
/// until the link is dropped or the connection fails (then every reply
/// awaited on it fails).
async fn serve_connection(
    stream: TcpStream,
    first: Exchange,
    queue: &mut mpsc::UnboundedReceiver<Exchange>,
) -> Ended {
    let (mut reader, mut writer) = stream.into_split();
    let mut awaited: VecDeque<(oneshot::Sender<io::Result<Vec<u8>>>, Instant)> = VecDeque::new();
    let mut received = Vec::new();
    let mut to_write = Some(first);
    let failure = 'serve: loop {
        if let Some(exchange) = to_write.take() {
            if !exchange.answer.is_closed() {
                // Nothing is read meanwhile: the write is bounded by the
                // earliest reply due too.
                let due = awaited
                    .front()
                    .map_or(exchange.due, |(_, due)| (*due).min(exchange.due));
                let written = tokio::time::timeout_at(due, writer.write_all(&exchange.frame)).await;
                match written {
                    Ok(Ok(())) => awaited.push_back((exchange.answer, exchange.due)),
                    Ok(Err(e)) => break (e, Some(exchange.answer)),
                    Err(_) => break (timed_out(), Some(exchange.answer)),
                }
            }
        }
        let due = awaited.front().map(|(_, due)| *due);
        tokio::select! {
            // A reply that is in is taken before its deadline is looked at.
            biased;
            // `read_buf` is cancel-safe: nothing read is lost when another
            // branch wins.
            read = reader.read_buf(&mut received) => match read {
                Ok(0) => break (io::Error::from(io::ErrorKind::UnexpectedEof), None),
                Ok(_) => {
                    while let Some(body) = take_frame(&mut received) {
                        let answer = awaited.pop_front().map(|(answer, _)| answer);
                        match (body, answer) {
                            (Ok(body), Some(answer)) => {
                                let _ = answer.send(Ok(body));
                            }
                            (Ok(_), None) => {
                                let e = io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    "a reply to no request",
                                );
                                break 'serve (e, None);
                            }
                            (Err(e), answer) => return fail_all(awaited, e, answer),
                        }
                    }
                }
                Err(e) => break (e, None),
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                break (timed_out(), None);
            }
            taken = queue.recv() => match taken {
                Some(exchange) => to_write = Some(exchange),
                None => return Ended::LinkDropped,
            },
        }
    };
    let (error, unwritten) = failure;
    fail_all(awaited, error, unwritten)
}

fn fail_all(
    awaited: VecDeque<(oneshot::Sender<io::Result<Vec<u8>>>, Instant)>,
    error: io::Error,
    unwritten: Option<oneshot::Sender<io::Result<Vec<u8>>>>,
) -> Ended {
    let mut first = Some(error);
    for answer in awaited
        .into_iter()
        .map(|(answer, _)| answer)
        .chain(unwritten)
    {
        let e = first.take().unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection failed on an earlier request",
            )
        });
        let _ = answer.send(Err(e));
    }
    Ended::ConnectionFailed
}

/// The body of the first whole frame in `received`, taken out of it.
fn take_frame(received: &mut Vec<u8>) -> Option<io::Result<Vec<u8>>> {
    let prefix: [u8; FRAME_PREFIX_BYTES] = received.get(..FRAME_PREFIX_BYTES)?.try_into().ok()?;
    let len = match frame_len(prefix) {
        Ok(len) => len,
        Err(e) => return Some(Err(e)),
    };
    if received.len() < FRAME_PREFIX_BYTES + len {
        return None;
    }
    let body = received[FRAME_PREFIX_BYTES..FRAME_PREFIX_BYTES + len].to_vec();
    received.drain(..FRAME_PREFIX_BYTES + len);
    Some(Ok(body))
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "no answer in time")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringstore::raft::cluster::wire::{read_frame, write_frame};

    /// An echo server that answers numbers `batch` at a time (once it has
    /// read that many), the number 1 late.
    async fn echo_server(batch: usize) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    loop {
                        let mut read = Vec::new();
                        while read.len() < batch {
                            match read_frame::<u64>(&mut stream).await {
                                Ok(n) => read.push(n),
                                Err(_) => return,
                            }
                        }
                        for n in read {
                            if n == 1 {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            if write_frame(&mut stream, &n).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn requests_go_out_without_waiting_for_the_replies_before_them() {
        // It answers only once it has all three.
        let link = TokioLink::to(echo_server(3).await);
        let replies: Vec<_> = (2..=4u64)
            .map(|n| link.send::<u64, u64>(&n, Duration::from_secs(5)))
            .collect();
        for (n, reply) in (2..=4).zip(replies) {
            assert_eq!(reply.await.unwrap(), n);
        }
    }

    #[tokio::test]
    async fn a_late_reply_fails_the_replies_awaited_behind_it_and_the_link_reconnects() {
        let link = TokioLink::to(echo_server(1).await);
        let late = link.send::<u64, u64>(&1, Duration::from_millis(50));
        let behind = link.send::<u64, u64>(&2, Duration::from_secs(5));
        assert_eq!(late.await.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            behind.await.unwrap_err().kind(),
            io::ErrorKind::ConnectionAborted
        );
        let answer = link.send::<u64, u64>(&3, Duration::from_secs(5)).await;
        assert_eq!(answer.unwrap(), 3, "on a new connection");
    }
}
