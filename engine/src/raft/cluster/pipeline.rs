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
//!
//! **Commit notices ride with the next request.** That entry-less request
//! is held for up to [`COMMIT_NOTICE_HOLD`]: when openraft makes the next
//! request first (with one client, the next command's entries come about
//! 40 µs later), the notice is not sent at all, because the later request
//! carries the same or a newer commit index from the same leader after the
//! same log id, and the follower does everything for it the notice would
//! have done. The follower then writes those entries at once instead of
//! first answering the notice: one message and one answer fewer per
//! command each way, to a follower whose answer the commit came after (a
//! notice made while the request before it is still in flight goes out at
//! once: see below). Dropping a request is always safe in Raft (a network
//! may lose any message); what the hold costs is that a follower whose
//! leader goes quiet learns the last commit up to [`COMMIT_NOTICE_HOLD`]
//! later, plus the timer's rounding (tokio's timers tick in whole
//! milliseconds); the leader's own commit and its clients' answers do not
//! wait for it. A notice that carries the one held before it (commits with
//! no new entries) keeps that one's deadline. openraft consumes the replies
//! as acknowledgements up to a log id (`InflightAppendQueue::drain_acked`),
//! so the reply to the later request also acknowledges the notice it
//! replaced. A notice still held when the input ends goes out at once, and
//! one held when the stream is dropped (a new term, a conflict) is dropped
//! with it. The other entry-less requests openraft makes end their stream
//! in the same poll (a heartbeat, a probe), so they are not held.
//!
//! **No reply is credited with a later request's time.** openraft stamps
//! each request with the time it takes it from the stream and, on a reply
//! acknowledging up to log id `m`, drains every request whose last log id
//! is at most `m` and credits the follower with the latest stamp drained
//! (`InflightAppendQueue::drain_acked`). That stamp is what a ReadIndex
//! read and the leader lease trust: the follower was still this leader's
//! at or after it. Pipelined, an entry-less request (a commit notice) can
//! be taken while an earlier request with the same last log id is still
//! in flight; that earlier request's reply would drain the notice and
//! credit its later stamp, though the follower answered before the notice
//! was even made (sequentially this cannot happen: nothing is taken before
//! the reply). So a reply acknowledging up to `m` is passed on only when
//! no request taken after it that covers no more than `m` is still
//! unanswered; otherwise it waits for that request's reply (counted in
//! `ringstore_raft_acks_held_back_total`). A reply still waiting when the
//! stream ends is dropped, as a lost reply would be, and openraft resends
//! from what was acknowledged. So that the wait is short, such a notice is
//! not held: it goes out at once, behind the request on the same
//! connection, and the follower answers it without a write right after
//! that request's reply (held, or carried by the next request, it would
//! keep a reply waiting up to the hold, or for the next request's write,
//! and with it a commit the reply was needed for). A notice is held only
//! when no request in flight ends at or after its log id; then no reply
//! waits on it, nor on the request that carries it. This rests on what
//! openraft 0.10 makes within one stream: each request starts where the
//! one before it ended (its `prev_log_id` is that one's last log id), so a
//! notice is held only with nothing in flight.
//!
//! **A request with a gap is not sent.** openraft 0.10 builds a request
//! from whatever a log read returns and can retry one from before a purge;
//! a follower refuses an append that would leave a gap in its log and
//! stops. So a request whose entries do not follow its `prev_log_id` one
//! by one fails here as a network error instead (counted in
//! `ringstore_raft_gapped_requests_total` and logged), the stream ends, and
//! openraft starts replication to that follower over.

use openraft::entry::RaftEntry;
use openraft::error::RPCError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, StreamAppendResult};
use openraft::type_config::alias::{AsyncRuntimeOf, LogIdOf};
use openraft::{AsyncRuntime, LogIdOptionExt, RaftTypeConfig};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// AppendEntries requests in flight to one follower at most. Each carries
/// up to openraft's `max_payload_entries`; beyond a few, more in flight
/// only queue at the follower, which writes one request's entries at a
/// time.
pub const APPEND_PIPELINE_DEPTH: usize = 8;

/// How long an entry-less request (a commit notice) waits for a later
/// request to carry its commit index instead (see the module doc). Long
/// next to the gap to the next command's entries (about 40 µs with one
/// client), short next to the cluster's heartbeat interval (100 ms by
/// default), whose heartbeats carry the commit index too. The timer thread
/// then wakes about once per hold while notices are being held, at the
/// earliest deadline it saw before it slept, not once per notice.
pub const COMMIT_NOTICE_HOLD: Duration = Duration::from_millis(2);

/// A reply on its way: the follower's answer or why there is none.
pub type AppendReply<C> =
    Pin<Box<dyn Future<Output = Result<AppendEntriesResponse<C>, RPCError<C>>> + Send>>;

/// The reply stream openraft's `stream_append` returns.
pub type AppendResults<'s, C> =
    openraft::base::BoxStream<'s, Result<StreamAppendResult<C>, RPCError<C>>>;

/// A commit notice waiting for a later request to carry its commit.
struct Held<C: RaftTypeConfig> {
    request: AppendEntriesRequest<C>,
    /// Sent when this fires.
    until: Pin<Box<<AsyncRuntimeOf<C> as AsyncRuntime>::Sleep>>,
}

/// A request sent and the range of log ids it covers.
struct InFlight<C: RaftTypeConfig> {
    prev: Option<LogIdOf<C>>,
    last: Option<LogIdOf<C>>,
    /// The lowest last log id among the requests openraft made that this
    /// one answers for: its own, or a commit notice's it carries.
    floor: Option<LogIdOf<C>>,
    reply: AppendReply<C>,
}

/// A reply's result, waiting until no unanswered request could be
/// drained by it with a later stamp (see the module doc).
struct Answered<C: RaftTypeConfig> {
    matching: Option<LogIdOf<C>>,
    result: Result<StreamAppendResult<C>, RPCError<C>>,
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
    pipelined_append_holding(input, send, COMMIT_NOTICE_HOLD)
}

/// [`pipelined_append`] with commit notices held for `hold` (none with
/// `Duration::ZERO`).
fn pipelined_append_holding<'s, C, S, F>(input: S, send: F, hold: Duration) -> AppendResults<'s, C>
where
    C: RaftTypeConfig,
    S: futures_lite::Stream<Item = AppendEntriesRequest<C>> + Send + Unpin + 's,
    F: FnMut(AppendEntriesRequest<C>) -> AppendReply<C> + Send + Unpin + 's,
{
    Box::pin(Pipelined {
        input: Some(input),
        send,
        in_flight: VecDeque::with_capacity(APPEND_PIPELINE_DEPTH),
        answered: VecDeque::with_capacity(APPEND_PIPELINE_DEPTH),
        stopped: None,
        ended: false,
        hold,
        held: None,
    })
}

struct Pipelined<C: RaftTypeConfig, S, F> {
    /// `None` once openraft has no more requests for this stream.
    input: Option<S>,
    send: F,
    in_flight: VecDeque<InFlight<C>>,
    /// Successful replies not yet passed on, in request order.
    answered: VecDeque<Answered<C>>,
    /// The reply that ended the stream, passed on after `answered`.
    stopped: Option<Result<StreamAppendResult<C>, RPCError<C>>>,
    /// No more requests are sent or replies awaited.
    ended: bool,
    hold: Duration,
    held: Option<Held<C>>,
}

impl<C: RaftTypeConfig, S, F> Pipelined<C, S, F>
where
    F: FnMut(AppendEntriesRequest<C>) -> AppendReply<C>,
{
    /// Puts `request` on the wire, unless its entries do not follow its
    /// `prev_log_id` one by one: then it fails as a network error would,
    /// nothing more is taken or sent on this stream (its error ends it),
    /// and openraft starts over from what was acknowledged.
    fn send_now(&mut self, request: AppendEntriesRequest<C>) {
        let prev = request.prev_log_id.clone();
        let last = request
            .entries
            .last()
            .map(|entry| entry.log_id())
            .or_else(|| prev.clone());
        let floor = last.clone();
        let reply = match first_gap(&request) {
            None => (self.send)(request),
            Some((index, expected)) => {
                self.input = None;
                self.held = None;
                refuse_gap::<C>(index, expected)
            }
        };
        self.in_flight.push_back(InFlight {
            prev,
            last,
            floor,
            reply,
        });
    }

    /// Takes `request` from openraft: a commit notice is held (unless a
    /// request in flight ends at or after its log id), anything else goes
    /// out, after the notice held before it unless this request carries
    /// that notice's commit. A notice that carries the one held before it
    /// takes its place but keeps its deadline, so a run of commits with no
    /// new entries still reaches the follower within the hold of the first.
    fn take(&mut self, request: AppendEntriesRequest<C>) {
        let mut deadline = None;
        let mut carried = None;
        if let Some(held) = self.held.take() {
            if carries(&request, &held.request) {
                deadline = Some(held.until);
                carried = Some(held.request.prev_log_id);
            } else {
                self.send_now(held.request);
            }
        }
        // A notice behind a request in flight that ends at or after its
        // log id goes out at once: held (or carried by a later request),
        // it would keep that request's reply waiting (see the module doc);
        // sent, it follows on the same connection and the follower answers
        // it without a write, right after that reply.
        let behind_in_flight = self
            .in_flight
            .iter()
            .any(|sent| sent.last >= request.prev_log_id);
        if request.entries.is_empty() && !self.hold.is_zero() && !behind_in_flight {
            // A notice carrying a held one covers the same log ids (the
            // same prev_log_id, no entries): its own floor is theirs.
            let until = deadline.unwrap_or_else(|| Box::pin(AsyncRuntimeOf::<C>::sleep(self.hold)));
            self.held = Some(Held { request, until });
        } else {
            self.send_now(request);
            if let Some(notice_last) = carried {
                let sent = self.in_flight.back_mut().expect("just sent");
                sent.floor = notice_last.min(sent.floor.take());
            }
        }
    }

    /// Whether a request taken after the replies already in, and not yet
    /// answered, covers no more than `matching`: a reply acknowledging
    /// `matching` would then be credited with that request's later stamp.
    /// Every unanswered request was taken after every answered one
    /// (replies come in request order; a held notice is the newest).
    fn unanswered_within(&self, matching: &Option<LogIdOf<C>>) -> bool {
        let held = self
            .held
            .as_ref()
            .is_some_and(|held| held.request.prev_log_id <= *matching);
        held || self.in_flight.iter().any(|sent| sent.floor <= *matching)
    }

    /// Ends the stream with `failure`: the replies still waiting wait for
    /// the failed request or one after it, which will not be answered now,
    /// so they are dropped, as lost replies would be.
    fn fail(&mut self, failure: Result<StreamAppendResult<C>, RPCError<C>>) {
        self.answered.clear();
        self.ended = true;
        self.stopped = Some(failure);
    }

    /// Sends what openraft has ready, up to the depth, and a held notice
    /// whose time is up.
    fn send_ready(&mut self, cx: &mut Context<'_>)
    where
        S: futures_lite::Stream<Item = AppendEntriesRequest<C>> + Unpin,
    {
        // A held notice takes a place: it may still go out.
        while self.in_flight.len() + usize::from(self.held.is_some()) < APPEND_PIPELINE_DEPTH {
            let Some(input) = self.input.as_mut() else {
                break;
            };
            match Pin::new(input).poll_next(cx) {
                Poll::Ready(Some(request)) => self.take(request),
                Poll::Ready(None) => {
                    self.input = None;
                    if let Some(held) = self.held.take() {
                        self.send_now(held.request);
                    }
                }
                Poll::Pending => break,
            }
        }
        // A notice nothing came to carry goes out when its time is up (it
        // holds a place in the pipeline meanwhile, so there is room).
        if let Some(held) = self.held.as_mut() {
            if held.until.as_mut().poll(cx).is_ready() {
                let held = self.held.take().expect("the held notice was just polled");
                self.send_now(held.request);
            }
        }
    }
}

/// Where `request`'s entries break their run, if they do: the index found
/// and the one expected there (the one after `prev_log_id`, then each after
/// the entry before it).
fn first_gap<C: RaftTypeConfig>(request: &AppendEntriesRequest<C>) -> Option<(u64, u64)> {
    let mut expected = request.prev_log_id.next_index();
    for entry in &request.entries {
        let index = entry.log_id().index();
        if index != expected {
            return Some((index, expected));
        }
        expected = index + 1;
    }
    None
}

/// A request that would leave a gap in the follower's log is never sent:
/// the follower would refuse it (`RaftStoreError::LogGap`) and stop. openraft
/// 0.10 builds a request from whatever a log read returns, and can retry
/// one from before a purge (see the raft module's refusals). Counted,
/// logged, and failed as a network error, so replication starts over.
fn refuse_gap<C: RaftTypeConfig>(index: u64, expected: u64) -> AppendReply<C> {
    metrics::counter!("ringstore_raft_gapped_requests_total").increment(1);
    tracing::error!(
        index,
        expected,
        "not sending an AppendEntries request whose entries leave a gap"
    );
    let error = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("AppendEntries request has entry {index} where {expected} belongs: not sent"),
    );
    let error = RPCError::Network(openraft::error::NetworkError::new(&error));
    Box::pin(async move { Err(error) })
}

/// Whether `later` does for the follower all that `notice` would: the same
/// leader's vote, the same log id before it, and a commit index no older.
fn carries<C: RaftTypeConfig>(
    later: &AppendEntriesRequest<C>,
    notice: &AppendEntriesRequest<C>,
) -> bool {
    later.vote == notice.vote
        && later.prev_log_id == notice.prev_log_id
        && later.leader_commit >= notice.leader_commit
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
        loop {
            // The oldest reply in, unless a request still unanswered would
            // be credited with it.
            if let Some(oldest) = this.answered.front() {
                if !this.unanswered_within(&oldest.matching) {
                    let oldest = this.answered.pop_front().expect("just looked at");
                    return Poll::Ready(Some(oldest.result));
                }
                if this.ended {
                    // Nothing more is answered: what waits is dropped, as a
                    // lost reply would be (each later one waits on the same
                    // request, its acknowledgement being no lower).
                    this.answered.clear();
                }
            }
            if this.ended {
                return Poll::Ready(this.stopped.take());
            }
            this.send_ready(cx);
            // The oldest reply first: replies are in request order.
            let Some(oldest) = this.in_flight.front_mut() else {
                if this.input.is_none() && this.held.is_none() {
                    this.ended = true;
                    continue;
                }
                // The input's waker is registered (it was just polled), and
                // a held notice's timer.
                return Poll::Pending;
            };
            let replied = match oldest.reply.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(replied) => replied,
            };
            let InFlight { prev, last, .. } = this
                .in_flight
                .pop_front()
                .expect("the oldest request was just looked at");
            match replied {
                Ok(response) => {
                    let short = matches!(
                        &response,
                        AppendEntriesResponse::PartialSuccess(acked) if *acked != last
                    );
                    match response.into_stream_result(prev, last) {
                        Ok(matching) => {
                            if this.unanswered_within(&matching) {
                                metrics::counter!("ringstore_raft_acks_held_back_total")
                                    .increment(1);
                            }
                            this.answered.push_back(Answered {
                                matching: matching.clone(),
                                result: Ok(Ok(matching)),
                            });
                        }
                        Err(refused) => {
                            this.fail(Ok(Err(refused)));
                        }
                    }
                    // A partial success ends the stream, as openraft's own.
                    this.ended |= short;
                }
                Err(e) => this.fail(Err(e)),
            }
        }
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

    /// A request carrying entry `index` (its reply acknowledges
    /// `log_id(index)`), sent by the leader of term 1 after committing
    /// entry `index - 1`.
    fn request(index: u64) -> AppendEntriesRequest<ClusterTypes> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(index - 1)),
            leader_commit: Some(log_id(index - 1)),
            entries: vec![RaftEntry::new_blank(log_id(index))],
        }
    }

    /// The entry-less request that tells the follower entry `index` is
    /// committed (its reply acknowledges `log_id(index)`).
    fn notice(index: u64) -> AppendEntriesRequest<ClusterTypes> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(index)),
            leader_commit: Some(log_id(index)),
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
            // The last log id it covers.
            let index = match request.entries.last() {
                Some(entry) => entry.log_id.index,
                None => request.prev_log_id.map(|id| id.index).unwrap_or(0),
            };
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
        started_holding(requests, COMMIT_NOTICE_HOLD)
    }

    /// [`started`], commit notices held for `hold`.
    fn started_holding(
        requests: u64,
        hold: Duration,
    ) -> (Input, Sent, AppendResults<'static, ClusterTypes>) {
        let (input_tx, input) = futures_channel::mpsc::unbounded();
        let (sent, send) = transport();
        let replies = pipelined_append_holding(input, send, hold);
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

    /// A request whose entries do not follow its `prev_log_id` one by one
    /// is never sent (the follower would refuse it and stop): it fails as a
    /// network error after the replies before it, which ends the stream,
    /// and nothing after it is sent.
    #[test]
    fn a_request_with_a_gap_is_not_sent_and_fails_the_stream() {
        let after_prev = |mut r: AppendEntriesRequest<ClusterTypes>| {
            // Entry 5 after log id 2 (a read that began past a purge).
            r.prev_log_id = Some(log_id(2));
            r
        };
        let inside = |mut r: AppendEntriesRequest<ClusterTypes>| {
            // Entries 3 and 5 after log id 2.
            r.prev_log_id = Some(log_id(2));
            r.entries = vec![
                RaftEntry::new_blank(log_id(3)),
                RaftEntry::new_blank(log_id(5)),
            ];
            r
        };
        for (gapped, what, found) in [
            (
                after_prev(request(5)),
                "after prev_log_id",
                "entry 5 where 3 belongs",
            ),
            (
                inside(request(5)),
                "inside the entries",
                "entry 5 where 4 belongs",
            ),
        ] {
            block_on(async {
                let (input_tx, sent, mut replies) = started(2);
                input_tx.unbounded_send(gapped).unwrap();
                input_tx.unbounded_send(request(6)).unwrap();
                assert!(poll_once(replies.next()).await.is_none());
                assert_eq!(indexes(&sent), [1, 2], "{what}: neither it nor 6 sent");
                answer(&sent, 0, AppendEntriesResponse::Success);
                answer(&sent, 1, AppendEntriesResponse::Success);
                for index in 1..=2 {
                    let reply = replies.next().await.unwrap().unwrap();
                    assert_eq!(reply.unwrap(), Some(log_id(index)), "{what}");
                }
                let failed = replies.next().await.unwrap();
                assert!(
                    matches!(&failed, Err(RPCError::Network(e)) if e.to_string().contains(found)),
                    "{what}: {failed:?}"
                );
                assert!(replies.next().await.is_none(), "{what}: the stream ends");
            });
        }
        // No gap: consecutive entries after their prev_log_id, and a first
        // request (no prev_log_id) starting at index 0.
        let mut first = request(1);
        first.prev_log_id = None;
        first.entries = vec![RaftEntry::new_blank(log_id(0))];
        assert_eq!(first_gap(&first), None);
        let mut two = request(3);
        two.entries.push(RaftEntry::new_blank(log_id(4)));
        assert_eq!(first_gap(&two), None);
        let mut index_0_missing = request(1);
        index_0_missing.prev_log_id = None;
        assert_eq!(first_gap(&index_0_missing), Some((1, 0)));
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

    /// Runs `test` where a held notice can start its timer: tokio's, as on
    /// a reactor (`ReactorRuntime`).
    fn on_tokio<T>(test: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(test)
    }

    /// A commit notice followed by the next command's entries is not sent:
    /// that request carries its commit, and its reply acknowledges both.
    #[test]
    fn a_commit_notice_rides_with_the_next_request() {
        on_tokio(async {
            let (input_tx, sent, mut replies) = started(0);
            input_tx.unbounded_send(notice(3)).unwrap();
            assert!(poll_once(replies.next()).await.is_none());
            assert_eq!(indexes(&sent), Vec::<u64>::new(), "the notice is held");
            // Carries it: after entry 3, with entry 3 committed.
            input_tx.unbounded_send(request(4)).unwrap();
            assert!(poll_once(replies.next()).await.is_none());
            assert_eq!(indexes(&sent), [4], "only the request that carries it");
            answer(&sent, 0, AppendEntriesResponse::Success);
            let reply = replies.next().await.unwrap().unwrap();
            assert_eq!(reply.unwrap(), Some(log_id(4)));
            drop(input_tx);
            assert!(replies.next().await.is_none());
        });
    }

    /// A request that does not carry the held notice's commit (another
    /// leader's, or after another log id) goes out after the notice.
    #[test]
    fn a_notice_the_next_request_does_not_carry_goes_out_first() {
        let mut other_leader = request(4);
        other_leader.vote = Vote::new_committed(2, 2);
        other_leader.leader_commit = Some(log_id(3));
        // After entry 4: the follower would not learn of entry 3's commit
        // from the same log id.
        let mut further = request(5);
        further.leader_commit = Some(log_id(3));
        // An older commit than the notice's.
        let mut older = request(4);
        older.leader_commit = Some(log_id(2));
        for (later, what) in [
            (other_leader, "another leader"),
            (further, "another log id"),
            (older, "an older commit"),
        ] {
            on_tokio(async {
                let (input_tx, sent, mut replies) = started(0);
                input_tx.unbounded_send(notice(3)).unwrap();
                let last = later.entries.last().map(|e| e.log_id.index).unwrap();
                input_tx.unbounded_send(later).unwrap();
                assert!(poll_once(replies.next()).await.is_none());
                assert_eq!(indexes(&sent), [3, last], "{what}");
            });
        }
    }

    /// A notice held when openraft ends the stream goes out at once.
    #[test]
    fn a_notice_held_when_the_input_ends_goes_out_at_once() {
        on_tokio(async {
            let (input_tx, sent, mut replies) = started(0);
            input_tx.unbounded_send(notice(3)).unwrap();
            drop(input_tx);
            assert!(poll_once(replies.next()).await.is_none());
            assert_eq!(indexes(&sent), [3]);
            answer(&sent, 0, AppendEntriesResponse::Success);
            let reply = replies.next().await.unwrap().unwrap();
            assert_eq!(reply.unwrap(), Some(log_id(3)));
            assert!(replies.next().await.is_none());
        });
    }

    /// Runs `test` on a tokio clock that stands still while a task can
    /// run and then jumps to the next timer, so holds are timed exactly.
    fn on_paused_tokio<T>(test: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(test)
    }

    /// The first reply of `replies`, read by a task of its own: only the
    /// stream's own wake-ups poll it again, so a stream that did not arm
    /// its hold's timer would never send a held notice.
    fn first_reply(
        mut replies: AppendResults<'static, ClusterTypes>,
    ) -> tokio::task::JoinHandle<Option<LogId>> {
        tokio::spawn(async move {
            let reply = replies.next().await.expect("a reply");
            reply.expect("no network error").expect("a success")
        })
    }

    /// Waits until something was sent, at most `limit` of (paused) time.
    async fn until_sent(sent: &Sent, limit: Duration) {
        let waited = tokio::time::Instant::now();
        while indexes(sent).is_empty() {
            assert!(waited.elapsed() < limit, "nothing sent");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A notice nothing comes to carry goes out when its hold is up; with
    /// no hold it goes out at once.
    #[test]
    fn a_notice_nothing_carries_goes_out_when_its_hold_is_up() {
        on_paused_tokio(async {
            let hold = Duration::from_millis(20);
            let (input_tx, sent, replies) = started_holding(0, hold);
            let held_from = tokio::time::Instant::now();
            input_tx.unbounded_send(notice(3)).unwrap();
            let reply = first_reply(replies);
            until_sent(&sent, Duration::from_secs(1)).await;
            let waited = held_from.elapsed();
            assert!(waited >= hold, "sent after {waited:?}, before its hold");
            assert!(waited < hold * 2, "sent after {waited:?}");
            assert_eq!(indexes(&sent), [3]);
            answer(&sent, 0, AppendEntriesResponse::Success);
            assert_eq!(reply.await.unwrap(), Some(log_id(3)));

            let (input_tx, sent, mut replies) = started_holding(0, Duration::ZERO);
            input_tx.unbounded_send(notice(3)).unwrap();
            assert!(poll_once(replies.next()).await.is_none());
            assert_eq!(indexes(&sent), [3], "no hold: at once");
        });
    }

    /// Commits with no new entries: each notice carries the one before it
    /// and takes its place, and the last goes out when the first one's
    /// hold is up, not a hold after the last.
    #[test]
    fn a_notice_carrying_the_held_one_keeps_its_deadline() {
        on_paused_tokio(async {
            let hold = Duration::from_millis(100);
            let (input_tx, sent, replies) = started_holding(0, hold);
            let held_from = tokio::time::Instant::now();
            let mut older = notice(3);
            older.leader_commit = Some(log_id(2));
            input_tx.unbounded_send(older).unwrap();
            let reply = first_reply(replies);
            tokio::time::sleep(Duration::from_millis(60)).await;
            assert_eq!(indexes(&sent), Vec::<u64>::new(), "held");
            input_tx.unbounded_send(notice(3)).unwrap();
            until_sent(&sent, Duration::from_secs(1)).await;
            let waited = held_from.elapsed();
            assert!(
                waited < Duration::from_millis(120),
                "sent after {waited:?}: the first notice's hold was restarted"
            );
            assert_eq!(indexes(&sent), [3], "one notice, not two");
            answer(&sent, 0, AppendEntriesResponse::Success);
            assert_eq!(reply.await.unwrap(), Some(log_id(3)));
        });
    }

    /// openraft credits a reply acknowledging up to `m` with the time it
    /// took the newest request covering no more than `m`. A commit notice
    /// taken while a request ending at its log id is in flight covers the
    /// same log id, so that request's reply waits until the notice is
    /// answered: passed on at once, it would credit the follower with the
    /// notice's later time, which a ReadIndex read trusts. Such a notice is
    /// not held but goes out at once, so the wait is one notice's answer,
    /// and a reply for an earlier entry does not wait at all.
    #[test]
    fn a_reply_waits_while_a_notice_it_would_be_credited_with_is_unanswered() {
        on_tokio(async {
            let (input_tx, sent, mut replies) = started(2);
            assert!(poll_once(replies.next()).await.is_none());
            // Entry 1 is committed (another follower answered) while this
            // follower's requests for entries 1 and 2 are in flight: the
            // notice, after entry 2, goes out at once behind them.
            let mut after_2 = notice(2);
            after_2.leader_commit = Some(log_id(1));
            input_tx.unbounded_send(after_2).unwrap();
            assert!(poll_once(replies.next()).await.is_none());
            assert_eq!(indexes(&sent), [1, 2, 2], "not held");
            // Entry 1's reply: nothing after it covers no more than 1.
            answer(&sent, 0, AppendEntriesResponse::Success);
            let reply = replies.next().await.unwrap().unwrap();
            assert_eq!(reply.unwrap(), Some(log_id(1)));
            // Entry 2's reply waits for the notice's.
            answer(&sent, 1, AppendEntriesResponse::Success);
            assert!(
                poll_once(replies.next()).await.is_none(),
                "passed on before the notice taken after it was answered"
            );
            answer(&sent, 2, AppendEntriesResponse::Success);
            for _ in 0..2 {
                let reply = replies.next().await.unwrap().unwrap();
                assert_eq!(reply.unwrap(), Some(log_id(2)));
            }
            // With nothing in flight a notice is held, and the request
            // that carries it keeps no reply waiting.
            input_tx.unbounded_send(notice(2)).unwrap();
            assert!(poll_once(replies.next()).await.is_none());
            assert_eq!(indexes(&sent), [1, 2, 2], "held");
            input_tx.unbounded_send(request(3)).unwrap();
            assert!(poll_once(replies.next()).await.is_none());
            assert_eq!(indexes(&sent), [1, 2, 2, 3], "carried by 3");
            answer(&sent, 3, AppendEntriesResponse::Success);
            let reply = replies.next().await.unwrap().unwrap();
            assert_eq!(reply.unwrap(), Some(log_id(3)));
        });
    }

    /// A reply waiting for a notice that is never answered (the notice,
    /// sent at once behind it, fails) is dropped, as a lost reply: the
    /// stream ends with the failure alone, and openraft resends from what
    /// was acknowledged.
    #[test]
    fn a_reply_still_waiting_when_the_stream_fails_is_dropped() {
        for (failure, what) in [
            (None, "network error"),
            (Some(AppendEntriesResponse::Conflict), "conflict"),
        ] {
            on_tokio(async {
                let (input_tx, sent, mut replies) = started(1);
                assert!(poll_once(replies.next()).await.is_none());
                input_tx.unbounded_send(notice(1)).unwrap();
                input_tx.unbounded_send(request(2)).unwrap();
                assert!(poll_once(replies.next()).await.is_none());
                answer(&sent, 0, AppendEntriesResponse::Success);
                assert!(poll_once(replies.next()).await.is_none(), "{what}");
                match failure.clone() {
                    Some(response) => answer(&sent, 1, response),
                    None => drop(sent.lock().unwrap()[1].1.take()),
                }
                let first = replies.next().await.unwrap();
                match (&failure, first) {
                    (None, Err(RPCError::Network(_))) => {}
                    (Some(_), Ok(Err(StreamAppendError::Conflict(_)))) => {}
                    (_, other) => panic!("{what}: {other:?}"),
                }
                assert!(replies.next().await.is_none(), "{what}: ended");
            });
        }
    }

    /// A held notice holds a place in the pipeline: with the rest taken,
    /// the request that would carry it waits for a reply, then goes out
    /// alone.
    #[test]
    fn a_held_notice_takes_a_place_in_the_pipeline() {
        let depth = APPEND_PIPELINE_DEPTH as u64;
        on_tokio(async {
            // A notice past every request in flight (one behind them
            // would go out at once), held in the last place: a synthetic
            // stream (openraft starts each request where the last ended,
            // so it holds a notice only with nothing in flight), for the
            // place accounting alone.
            let (input_tx, sent, mut replies) = started(depth - 1);
            input_tx.unbounded_send(notice(depth)).unwrap();
            input_tx.unbounded_send(request(depth + 1)).unwrap();
            assert!(poll_once(replies.next()).await.is_none());
            assert_eq!(
                indexes(&sent),
                (1..depth).collect::<Vec<_>>(),
                "the next request waits for a place"
            );
            answer(&sent, 0, AppendEntriesResponse::Success);
            assert!(replies.next().await.unwrap().is_ok());
            assert!(poll_once(replies.next()).await.is_none());
            assert_eq!(
                indexes(&sent),
                (1..depth).chain([depth + 1]).collect::<Vec<_>>(),
                "then it goes out, carrying the notice"
            );
        });
    }
}
