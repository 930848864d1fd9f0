//! openraft's replication stream, pipelined: each AppendEntries request
//! goes out as soon as openraft makes it, without waiting for the replies
//! to the ones before it, and the replies come back in request order.
//!
//! openraft 0.10 replicates to a follower through
//! `RaftNetworkV2::stream_append`, whose default sends one request and
//! waits for its reply before the next. After each commit the leader sends
//! an entry-less request carrying the new commit index; sequentially, the
//! next client's entries then wait a whole round trip behind it, not only
//! its turn at the follower (at one client on this host, 169 µs against
//! 43 pipelined at the leader, about 35-50 µs net; `bench/PERFORMANCE.md`).
//! [`pipelined_append`] keeps up to [`APPEND_PIPELINE_DEPTH`] requests in
//! flight on one ordered connection: the follower answers a connection's
//! requests in order, so the replies need no sequence numbers.

use openraft::entry::RaftEntry;
use openraft::error::RPCError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, StreamAppendResult};
use openraft::type_config::alias::LogIdOf;
use openraft::RaftTypeConfig;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// AppendEntries requests in flight to one follower at most. Each carries
/// up to openraft's `max_payload_entries`; beyond a few, more in flight
/// only queue at the follower, which writes one request's entries at a
/// time.
pub const APPEND_PIPELINE_DEPTH: usize = 8;

/// A reply on its way: the follower's answer or why there is none.
pub type AppendReply<C> =
    Pin<Box<dyn Future<Output = Result<AppendEntriesResponse<C>, RPCError<C>>> + Send>>;

/// The reply stream openraft's `stream_append` returns.
pub type AppendResults<'s, C> =
    openraft::base::BoxStream<'s, Result<StreamAppendResult<C>, RPCError<C>>>;

/// A request sent and the range of log ids it covers.
struct InFlight<C: RaftTypeConfig> {
    prev: Option<LogIdOf<C>>,
    last: Option<LogIdOf<C>>,
    reply: AppendReply<C>,
}

/// The replies to `input`'s requests, in order; `send` puts a request on
/// the wire at once (it must not wait for earlier replies) and returns its
/// reply. The stream ends after the input does and every reply is in, or
/// at the first reply that stops replication (an error, a conflict, a
/// higher vote, or a partial success short of the request's end), as
/// openraft's sequential stream does; the requests still in flight are
/// then dropped and openraft starts a new stream from what was acknowledged.
pub fn pipelined_append<'s, C, S, F>(input: S, send: F) -> AppendResults<'s, C>
where
    C: RaftTypeConfig,
    S: futures_lite::Stream<Item = AppendEntriesRequest<C>> + Send + Unpin + 's,
    F: FnMut(AppendEntriesRequest<C>) -> AppendReply<C> + Send + Unpin + 's,
{
    Box::pin(Pipelined {
        input: Some(input),
        send,
        in_flight: VecDeque::with_capacity(APPEND_PIPELINE_DEPTH),
        ended: false,
    })
}

struct Pipelined<C: RaftTypeConfig, S, F> {
    /// `None` once openraft has no more requests for this stream.
    input: Option<S>,
    send: F,
    in_flight: VecDeque<InFlight<C>>,
    ended: bool,
}

// Nothing in it is pinned in place: the input is `Unpin` and each reply is
// boxed (the log ids it holds need not be `Unpin` for that).
impl<C: RaftTypeConfig, S: Unpin, F: Unpin> Unpin for Pipelined<C, S, F> {}

impl<C, S, F> futures_lite::Stream for Pipelined<C, S, F>
where
    C: RaftTypeConfig,
    S: futures_lite::Stream<Item = AppendEntriesRequest<C>> + Unpin,
    F: FnMut(AppendEntriesRequest<C>) -> AppendReply<C> + Unpin,
{
    type Item = Result<StreamAppendResult<C>, RPCError<C>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        // Send what openraft has ready, up to the depth.
        while this.in_flight.len() < APPEND_PIPELINE_DEPTH {
            let Some(input) = this.input.as_mut() else {
                break;
            };
            match Pin::new(input).poll_next(cx) {
                Poll::Ready(Some(request)) => {
                    let prev = request.prev_log_id.clone();
                    let last = request
                        .entries
                        .last()
                        .map(|entry| entry.log_id())
                        .or_else(|| prev.clone());
                    let reply = (this.send)(request);
                    this.in_flight.push_back(InFlight { prev, last, reply });
                }
                Poll::Ready(None) => this.input = None,
                Poll::Pending => break,
            }
        }
        // The oldest reply first: replies are in request order.
        let Some(oldest) = this.in_flight.front_mut() else {
            return if this.input.is_none() {
                Poll::Ready(None)
            } else {
                // The input's waker is registered (it was just polled).
                Poll::Pending
            };
        };
        let replied = match oldest.reply.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(replied) => replied,
        };
        let InFlight { prev, last, .. } = this
            .in_flight
            .pop_front()
            .expect("the oldest request was just looked at");
        let item = match replied {
            Ok(response) => {
                let short = matches!(
                    &response,
                    AppendEntriesResponse::PartialSuccess(acked) if *acked != last
                );
                let result = response.into_stream_result(prev, last);
                if short || result.is_err() {
                    this.ended = true;
                }
                Ok(result)
            }
            Err(e) => {
                this.ended = true;
                Err(e)
            }
        };
        Poll::Ready(Some(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::cluster::ClusterTypes;
    use crate::raft::{LeaderId, LogId, Vote};
    use futures_lite::future::{block_on, poll_once};
    use futures_lite::StreamExt;
    use openraft::error::NetworkError;
    use openraft::raft::StreamAppendError;
    use std::sync::{Arc, Mutex};

    type Answer = futures_channel::oneshot::Sender<AppendEntriesResponse<ClusterTypes>>;

    fn log_id(index: u64) -> LogId {
        LogId::new(
            LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        )
    }

    /// An entry-less request after entry `index` (its reply acknowledges
    /// `log_id(index)`).
    fn request(index: u64) -> AppendEntriesRequest<ClusterTypes> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(index)),
            leader_commit: None,
            entries: Vec::new(),
        }
    }

    /// A transport that records what was sent and lets the test answer each
    /// request when it likes (`None` as the answer: a network error).
    #[allow(clippy::type_complexity)]
    fn transport() -> (
        Arc<Mutex<Vec<(u64, Option<Answer>)>>>,
        impl FnMut(AppendEntriesRequest<ClusterTypes>) -> AppendReply<ClusterTypes> + Send + Unpin,
    ) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let record = sent.clone();
        let send = move |request: AppendEntriesRequest<ClusterTypes>| -> AppendReply<ClusterTypes> {
            let (answer, answered) = futures_channel::oneshot::channel();
            let index = request.prev_log_id.map(|id| id.index).unwrap_or(0);
            record.lock().unwrap().push((index, Some(answer)));
            Box::pin(async move {
                answered.await.map_err(|_| {
                    RPCError::Network(NetworkError::new(&std::io::Error::other("dropped")))
                })
            })
        };
        (sent, send)
    }

    fn answer(
        sent: &Mutex<Vec<(u64, Option<Answer>)>>,
        at: usize,
        response: AppendEntriesResponse<ClusterTypes>,
    ) {
        let answer = sent.lock().unwrap()[at].1.take().expect("answered once");
        assert!(answer.send(response).is_ok(), "the reply is awaited");
    }

    fn indexes(sent: &Mutex<Vec<(u64, Option<Answer>)>>) -> Vec<u64> {
        sent.lock().unwrap().iter().map(|(i, _)| *i).collect()
    }

    type Sent = Arc<Mutex<Vec<(u64, Option<Answer>)>>>;
    type Input = futures_channel::mpsc::UnboundedSender<AppendEntriesRequest<ClusterTypes>>;

    /// A pipelined stream over [`transport`] with requests 1 to `requests`
    /// made by openraft so far.
    fn started(requests: u64) -> (Input, Sent, AppendResults<'static, ClusterTypes>) {
        let (input_tx, input) = futures_channel::mpsc::unbounded();
        let (sent, send) = transport();
        let replies = pipelined_append(input, send);
        for index in 1..=requests {
            input_tx.unbounded_send(request(index)).unwrap();
        }
        (input_tx, sent, replies)
    }

    #[test]
    fn requests_go_out_before_earlier_replies_and_replies_come_back_in_order() {
        block_on(async {
            let (input_tx, sent, mut replies) = started(3);
            assert!(poll_once(replies.next()).await.is_none(), "no reply yet");
            assert_eq!(indexes(&sent), [1, 2, 3], "all sent, none answered");
            // The third and second answered first: still yielded in order.
            answer(&sent, 2, AppendEntriesResponse::Success);
            answer(&sent, 1, AppendEntriesResponse::Success);
            assert!(
                poll_once(replies.next()).await.is_none(),
                "the first is still due"
            );
            answer(&sent, 0, AppendEntriesResponse::Success);
            for index in 1..=3 {
                let reply = replies.next().await.unwrap().unwrap();
                assert_eq!(reply.unwrap(), Some(log_id(index)));
            }
            // A request made after the replies goes out too; the stream
            // ends once the input has, with every reply in.
            input_tx.unbounded_send(request(4)).unwrap();
            drop(input_tx);
            assert!(poll_once(replies.next()).await.is_none());
            answer(&sent, 3, AppendEntriesResponse::Success);
            assert_eq!(
                replies.next().await.unwrap().unwrap().unwrap(),
                Some(log_id(4))
            );
            assert!(replies.next().await.is_none());
        });
    }

    #[test]
    fn no_more_than_the_depth_is_in_flight() {
        block_on(async {
            let (_input_tx, sent, mut replies) = started(APPEND_PIPELINE_DEPTH as u64 + 3);
            assert!(poll_once(replies.next()).await.is_none());
            assert_eq!(sent.lock().unwrap().len(), APPEND_PIPELINE_DEPTH);
            answer(&sent, 0, AppendEntriesResponse::Success);
            assert!(replies.next().await.unwrap().is_ok());
            assert!(poll_once(replies.next()).await.is_none());
            assert_eq!(sent.lock().unwrap().len(), APPEND_PIPELINE_DEPTH + 1);
        });
    }

    /// Each way a reply stops replication ends the stream at that reply,
    /// with requests still in flight and more waiting.
    #[test]
    fn a_reply_that_stops_replication_ends_the_stream() {
        let conflict = AppendEntriesResponse::Conflict;
        let higher = AppendEntriesResponse::HigherVote(Vote::new(2, 2));
        // Acknowledges less than the request carried.
        let short = AppendEntriesResponse::PartialSuccess(Some(log_id(0)));
        for (stop, what) in [
            (Some(conflict), "conflict"),
            (Some(higher), "higher vote"),
            (Some(short), "partial success"),
            (None, "network error"),
        ] {
            block_on(async {
                let (_input_tx, sent, mut replies) = started(3);
                assert!(poll_once(replies.next()).await.is_none());
                answer(&sent, 0, AppendEntriesResponse::Success);
                match &stop {
                    Some(response) => answer(&sent, 1, response.clone()),
                    // The transport drops the request: a network error.
                    None => drop(sent.lock().unwrap()[1].1.take()),
                }
                answer(&sent, 2, AppendEntriesResponse::Success);
                assert!(replies.next().await.unwrap().unwrap().is_ok(), "{what}");
                let stopped = replies.next().await.unwrap();
                match (&stop, stopped) {
                    (None, Err(RPCError::Network(_))) => {}
                    (Some(AppendEntriesResponse::Conflict), Ok(Err(e))) => {
                        assert!(matches!(e, StreamAppendError::Conflict(_)), "{what}")
                    }
                    (Some(AppendEntriesResponse::HigherVote(_)), Ok(Err(e))) => {
                        assert!(matches!(e, StreamAppendError::HigherVote(_)), "{what}")
                    }
                    (Some(AppendEntriesResponse::PartialSuccess(_)), Ok(Ok(acked))) => {
                        assert_eq!(acked, Some(log_id(0)), "{what}")
                    }
                    (_, other) => panic!("{what}: {other:?}"),
                }
                assert!(replies.next().await.is_none(), "{what}: ended");
            });
        }
    }
}
