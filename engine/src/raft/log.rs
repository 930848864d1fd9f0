//! `RaftLogStorage` over the journal (see the module docs of `raft`).

use super::error::RaftStoreError;
use super::reactor::ReactorThread;
use super::shard::{index_of, op_of, HardStateCell, Queue, RaftShard};
use super::tail_cache::TailCache;
use super::types::{LogId, RaftTypes, Vote};
use crate::StateMachine;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use ringstore_journal::LogItem;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

/// Largest encoded hard state (the journal's limit).
pub const HARD_STATE_ENCODED_BYTES_MAX: usize = ringstore_journal::format::HARD_STATE_BYTES_MAX;

/// What the journal's hard state holds for openraft.
#[derive(Clone, Default, Serialize, Deserialize)]
pub(super) struct HardState {
    pub(super) vote: Option<Vote>,
    pub(super) committed: Option<LogId>,
    pub(super) purged: Option<LogId>,
    /// Set while the node awaits repair after an open that cut its
    /// journal's tail (see "Uncertain tail" in the module docs): the
    /// highest term it knew of then. It must not vote or stand for election
    /// until it has committed an entry of a later term.
    pub(super) awaiting_repair: Option<u64>,
}

/// The first byte of a hard state awaiting repair, before the encoding of
/// all four fields: no `Option` tag (the first form starts with one), so a
/// build that knows only the first form refuses it rather than read it
/// without the mark.
const AWAITING_REPAIR_FORM: u8 = 2;

/// The hard state as every node wrote it before `awaiting_repair` existed,
/// and as it is still written while that is unset: a build without the
/// field reads it.
#[derive(Serialize, Deserialize)]
struct HardStateV1 {
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
}

impl HardState {
    pub(super) fn encode(&self) -> Result<Vec<u8>, bincode::error::EncodeError> {
        match self.awaiting_repair {
            None => encode(&HardStateV1 {
                vote: self.vote,
                committed: self.committed,
                purged: self.purged,
            }),
            Some(_) => {
                let mut bytes = vec![AWAITING_REPAIR_FORM];
                bytes.extend(encode(self)?);
                Ok(bytes)
            }
        }
    }

    /// Either form, told apart by the first byte, and only if it takes
    /// every byte.
    pub(super) fn decode(bytes: &[u8]) -> Result<HardState, bincode::error::DecodeError> {
        match bytes.split_first() {
            Some((&AWAITING_REPAIR_FORM, rest)) => decode_whole::<HardState>(rest),
            _ => decode_whole::<HardStateV1>(bytes).map(|v1| HardState {
                vote: v1.vote,
                committed: v1.committed,
                purged: v1.purged,
                awaiting_repair: None,
            }),
        }
    }
}

/// The purged id an encoded hard state holds (`None` if none, or if it
/// does not decode).
pub(super) fn purged_of(bytes: &[u8]) -> Option<LogId> {
    if bytes.is_empty() {
        return None;
    }
    HardState::decode(bytes).ok()?.purged
}

/// An encoded hard state without the repair mark (as it is, if it does
/// not decode).
pub(super) fn without_repair_mark(bytes: &[u8]) -> Vec<u8> {
    match HardState::decode(bytes) {
        Ok(mut state) if state.awaiting_repair.is_some() => {
            state.awaiting_repair = None;
            state.encode().unwrap_or_else(|_| bytes.to_vec())
        }
        _ => bytes.to_vec(),
    }
}

/// The term an encoded hard state says its node awaits repair below
/// (`None`: it does not, or the bytes do not decode).
pub(super) fn awaiting_repair_of(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    HardState::decode(bytes).ok()?.awaiting_repair
}

/// A hard-state record as it may be queued after op `last_queued_op`.
pub(super) struct Record {
    /// The encoded hard state to write.
    pub(super) bytes: Vec<u8>,
    /// Its committed id.
    pub(super) committed: Option<LogId>,
    /// Whether it holds the whole change (false: its committed id was held
    /// back, and the change waits for a later record).
    pub(super) whole: bool,
    /// Whether it ends the node's repair (see "Uncertain tail").
    pub(super) ends_repair: bool,
}

/// The record of `bytes` (an encoded hard state) queued after op
/// `last_queued_op`: a committed id above that op is replaced by
/// `committed_queued` (the last one queued, if still within), unless the
/// purged id is at or above it (a purge after a snapshot install: the
/// snapshot covers it). A record whose committed id (as written) is of a
/// term after the one the node awaits repair below ends the repair. A hard
/// state that does not decode (the cell holds only what `encode` made) is
/// written as it is.
pub(super) fn record_after(
    bytes: &[u8],
    last_queued_op: u64,
    committed_queued: Option<LogId>,
) -> Record {
    let as_is = |committed| Record {
        bytes: bytes.to_vec(),
        committed,
        whole: true,
        ends_repair: false,
    };
    if bytes.is_empty() {
        return as_is(None);
    }
    let Ok(mut state) = HardState::decode(bytes) else {
        return as_is(committed_queued);
    };
    let within = |id: &LogId| op_of(id.index) <= last_queued_op;
    let purged = |id: &LogId| state.purged.as_ref().is_some_and(|p| id.index <= p.index);
    let original = state.committed;
    let whole = match state.committed {
        Some(id) if !within(&id) && !purged(&id) => {
            state.committed = committed_queued.filter(within);
            false
        }
        _ => true,
    };
    // A repair ends with the first record whose committed id (as written)
    // is of a later term: the entries it covers are queued before it, and
    // a node holding a later term's committed entry holds every entry
    // committed before that term began (see "Uncertain tail").
    let repaired = matches!(
        (state.awaiting_repair, state.committed),
        (Some(term), Some(id)) if id.leader_id.term > term
    );
    if repaired {
        state.awaiting_repair = None;
    }
    if whole && !repaired {
        return as_is(state.committed);
    }
    match state.encode() {
        Ok(bytes) => Record {
            bytes,
            committed: state.committed,
            whole,
            ends_repair: repaired,
        },
        Err(_) => as_is(original),
    }
}

/// The `Send + Sync` handle openraft holds as its log. Journal work runs
/// on the shard's reactor thread, in the order openraft asked for it; what
/// openraft asks most often is answered here without the hop: the hard
/// state (a copy shared with the reactor) and reads of the newest entries
/// (a cache filled as they are appended).
pub struct RaftLog<C: RaftTypes, M: StateMachine> {
    thread: Arc<ReactorThread<RaftShard<C, M>>>,
    hard_state: Arc<Mutex<HardStateCell>>,
    tail: Arc<Mutex<TailCache>>,
}

impl<C: RaftTypes, M: StateMachine> Clone for RaftLog<C, M> {
    fn clone(&self) -> Self {
        RaftLog {
            thread: self.thread.clone(),
            hard_state: self.hard_state.clone(),
            tail: self.tail.clone(),
        }
    }
}

/// A poisoned lock: a thread panicked while holding it.
#[derive(Debug, thiserror::Error)]
#[error("a raft shard's {0} lock is poisoned (a thread panicked holding it)")]
struct Poisoned(&'static str);

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map(|(v, _)| v)
}

/// [`decode`], refusing bytes left over.
fn decode_whole<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())?;
    if read != bytes.len() {
        return Err(bincode::error::DecodeError::OtherString(format!(
            "{} byte(s) left over after {read}",
            bytes.len() - read
        )));
    }
    Ok(value)
}

/// An error as openraft's storage traits return it.
pub(super) fn io_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> std::io::Error {
    std::io::Error::other(e)
}

/// A journal call's result, flattened.
fn flat<T>(
    result: Result<ringstore_journal::Result<T>, super::reactor::ReactorClosed>,
) -> Result<T, RaftStoreError> {
    Ok(result??)
}

impl<C, M> RaftLog<C, M>
where
    C: RaftTypes,
    M: StateMachine,
{
    /// The log of the shard on `thread`, whose node is `me`.
    pub(super) fn new(
        thread: Arc<ReactorThread<RaftShard<C, M>>>,
        hard_state: Arc<Mutex<HardStateCell>>,
        me: u64,
    ) -> RaftLog<C, M> {
        let log = RaftLog {
            thread,
            hard_state,
            tail: Arc::new(Mutex::new(TailCache::default())),
        };
        log.open_with_own_vote_uncommitted(me);
        log
    }

    /// Makes the vote this shard opened with an uncommitted one if it is
    /// this node's own committed vote (it was the leader): the same term
    /// and candidate, not yet a leader's.
    ///
    /// openraft brings a node whose saved vote is its own committed one
    /// straight back as leader, with no election (`Engine::startup`; 0.10
    /// does so unless `Config::enable_leader_restore` is `Some(false)`,
    /// which a user of this log may not set). Its
    /// read index (`Raft::ensure_linearizable`: the larger of its term's
    /// first entry and its committed id) then rests on the committed id it
    /// saved, which may lag what it had committed and answered before the
    /// crash (`save_committed` rides with the next write), so a
    /// linearizable read could miss an acknowledged write: the cluster
    /// fault test saw a restarted leader read 725 after an add had
    /// returned 726. With the vote uncommitted, a restarted leader wins a
    /// new term, and commits that term's first entry, before it serves
    /// again. The committed flag orders a vote only against one of the
    /// same term and candidate, so which requests the node grants is
    /// unchanged; a follower's committed vote is kept as it is (openraft
    /// then honours the leader's lease after a restart).
    fn open_with_own_vote_uncommitted(&self, me: u64) {
        let Ok(mut cell) = self.hard_state.lock() else {
            return;
        };
        if cell.bytes.is_empty() {
            return;
        }
        // A hard state that does not decode is reported by the first
        // `read_vote`.
        let Ok(mut state) = HardState::decode(&cell.bytes) else {
            return;
        };
        match &mut state.vote {
            Some(vote) if vote.committed && vote.leader_id.node_id == me => vote.committed = false,
            _ => return,
        }
        if let Ok(bytes) = state.encode() {
            cell.bytes = bytes;
        }
    }

    /// Runs `task` on the shard's reactor thread, as a task of its own, and
    /// returns its output: work that talks to a Raft hosted there
    /// ([`super::RaftStores::start_raft`]) without crossing threads, such
    /// as a client's requests or a peer connection. The future may be
    /// `!Send`; it is made on the reactor.
    pub async fn on_reactor<R, F, Fut>(&self, task: F) -> Result<R, RaftStoreError>
    where
        R: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = R> + 'static,
    {
        self.thread
            .spawn(task)
            .await?
            .map_err(|message| RaftStoreError::TaskPanicked { message })
    }

    /// Resolves once the shard's reactor thread has closed the journal and
    /// stopped, which it does when the last handle (this log's, its
    /// machine's, a Raft's) is gone: wait for it before opening the
    /// directory again.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.thread.exited()
    }

    /// The shard's journal counters (appends, writes, fdatasyncs, entries
    /// per write): how well appends share group commits.
    pub async fn journal_stats(&self) -> Result<ringstore_journal::JournalStats, RaftStoreError> {
        Ok(self
            .thread
            .call(|shard| Box::pin(async move { shard.journal.stats() }))
            .await?)
    }

    /// `Some(term)` while this node awaits repair after an open that cut
    /// its journal's tail (see "Uncertain tail" in the module docs): until
    /// a record of a committed id of a term after `term` is durable. A
    /// consensus layer must not let the node vote or stand for election
    /// meanwhile (the cluster's nodes refuse vote requests and turn
    /// openraft's elections off).
    pub async fn awaiting_repair(&self) -> Result<Option<u64>, RaftStoreError> {
        Ok(self
            .thread
            .call(|shard| Box::pin(async move { awaiting_repair_of(&shard.journal.hard_state()) }))
            .await?)
    }

    /// Ends a repair without waiting for it: an operator's decision (see
    /// `cluster::NodeSettings::waive_repair`), durable when this returns,
    /// logged and counted (`ringstore_raft_repairs_waived_total`). Entries
    /// the cut took are lost if the node had acknowledged them.
    pub async fn waive_repair(&self) -> Result<(), RaftStoreError> {
        let mut state = self.hard_state().map_err(|e| RaftStoreError::HardState {
            reason: e.to_string(),
        })?;
        let Some(below_term) = state.awaiting_repair.take() else {
            return Ok(());
        };
        self.set_hard_state(state, Persist::Durable)
            .await
            .map_err(|e| RaftStoreError::HardState {
                reason: e.to_string(),
            })?;
        metrics::counter!("ringstore_raft_repairs_waived_total").increment(1);
        tracing::warn!(
            below_term,
            "repair waived by the operator: voting and standing for election with what this \
             node's log holds; entries its journal's cut took are lost if they were acknowledged"
        );
        Ok(())
    }

    fn tail(&self) -> Result<std::sync::MutexGuard<'_, TailCache>, std::io::Error> {
        self.tail
            .lock()
            .map_err(|_| io_error(Poisoned("tail cache")))
    }

    fn hard_state(&self) -> Result<HardState, std::io::Error> {
        let bytes = match self.hard_state.lock() {
            Ok(cell) => cell.bytes.clone(),
            Err(_) => return Err(io_error(Poisoned("hard state"))),
        };
        if bytes.is_empty() {
            return Ok(HardState::default());
        }
        HardState::decode(&bytes).map_err(io_error)
    }

    /// Makes `state` the hard state. `Durable`: queued behind every entry
    /// queued so far, and on disk when this returns. `NextWrite`: queued
    /// with the next write (an append, a vote, a purge, the close), so it
    /// costs neither a write nor a trip to the reactor; a crash before then
    /// loses it.
    async fn set_hard_state(&self, state: HardState, when: Persist) -> Result<(), std::io::Error> {
        let bytes = state.encode().map_err(io_error)?;
        match self.hard_state.lock() {
            Ok(mut cell) => {
                cell.bytes = bytes;
                cell.unqueued = true;
            }
            Err(_) => return Err(io_error(Poisoned("hard state"))),
        }
        if when == Persist::NextWrite {
            return Ok(());
        }
        let set = self
            .thread
            .call(move |shard| {
                Box::pin(async move {
                    if when == Persist::Queued {
                        shard.queue_hard_state(Queue::Changed).await?;
                        return Ok(());
                    }
                    // A record now even if a job before this one queued
                    // the change (an append's takes what changed): once
                    // it is durable, so is every earlier one.
                    if let Some(queued) = shard.queue_hard_state(Queue::Always).await? {
                        queued.durable().await?;
                    }
                    if when == Persist::DurableInSuperblock {
                        shard.journal.copy_hard_state_to_superblock().await?;
                    }
                    Ok(())
                })
            })
            .await;
        flat(set).map_err(io_error)
    }
}

#[cfg(test)]
impl<C, M> RaftLog<C, M>
where
    C: RaftTypes,
    M: StateMachine,
{
    /// The shard's reactor thread.
    pub(super) fn thread(&self) -> &ReactorThread<RaftShard<C, M>> {
        &self.thread
    }

    /// A purge's first step alone (the purged id, durable), as a crash
    /// right after it leaves the shard.
    pub(super) async fn set_purged_only(&self, log_id: LogId) -> Result<(), std::io::Error> {
        let mut state = self.hard_state()?;
        state.purged = Some(log_id);
        self.set_hard_state(state, Persist::Durable).await
    }
}

/// When a hard state change must reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Persist {
    /// Before the call returns, and copied into the journal's superblock,
    /// where no cut of the log's tail reaches it (a vote).
    DurableInSuperblock,
    /// Before the call returns (a purged id).
    Durable,
    /// Queued now, in a write of its own if no other comes (a committed id
    /// that ends a repair); not waited for.
    Queued,
    /// With the next write (the committed id: see `save_committed`).
    NextWrite,
}

impl<C, M> RaftLogReader<C> for RaftLog<C, M>
where
    C: RaftTypes,
    M: StateMachine,
{
    /// One run of entries from the range: the journal's durable ones, then
    /// the tail cache's, which holds what was appended and is not durable
    /// yet (openraft reads what it just appended to replicate it, and
    /// 0.10's reader must not leave such an entry out).
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, std::io::Error> {
        let first = match range.start_bound() {
            Bound::Included(i) => op_of(*i),
            Bound::Excluded(i) => op_of(*i) + 1,
            Bound::Unbounded => 1,
        };
        let last = match range.end_bound() {
            Bound::Included(i) => Some(op_of(*i)),
            Bound::Excluded(0) => return Ok(Vec::new()),
            Bound::Excluded(i) => Some(op_of(*i) - 1),
            Bound::Unbounded => None,
        };
        if let Some(cached) = self.tail()?.get_range(first, last) {
            return cached.iter().map(|p| decode(p).map_err(io_error)).collect();
        }
        let tail = self.tail.clone();
        let payloads = self
            .thread
            .call(move |shard| {
                Box::pin(async move {
                    let journal = &shard.journal;
                    let first = first.max(journal.watermark() + 1);
                    let durable_last = last.unwrap_or(u64::MAX).min(journal.next_op() - 1);
                    let mut payloads = Vec::new();
                    // What is returned is one run of ops: the journal's
                    // durable ones, then, from the first op the journal does
                    // not hold yet, the tail cache's run (appended, not
                    // durable yet; the journal publishes its writes in
                    // order, so those are the newest). A read that starts
                    // below the log's first op begins at it (the storage
                    // suite reads a log that starts above 0 so), and a read
                    // stops at a hole, never skipping one: openraft would
                    // replicate or apply around it. The leading skip
                    // passes over ops neither durable nor cached (never
                    // appended); it assumes the log has no hole of its own,
                    // as openraft keeps it (contiguous appends, a suffix
                    // truncated, a prefix purged).
                    let cached = |op: u64| tail.lock().is_ok_and(|t| t.contains(op));
                    let mut next = first;
                    if first <= durable_last {
                        let mut items = journal.entries(first..=durable_last);
                        while let Some(item) = items.next().await {
                            match item? {
                                LogItem::Present(entry) => {
                                    next = entry.op + 1;
                                    payloads.push(entry.payload);
                                }
                                LogItem::Missing(op) if payloads.is_empty() && !cached(op) => {
                                    next = op + 1
                                }
                                LogItem::Missing(op) => {
                                    next = op;
                                    break;
                                }
                            }
                        }
                    }
                    let from_cache = tail.lock().ok().map(|t| t.get_from(next, last));
                    Ok((payloads, from_cache))
                })
            })
            .await;
        let (mut payloads, from_cache) = flat(payloads).map_err(io_error)?;
        payloads.extend(from_cache.ok_or_else(|| io_error(Poisoned("tail cache")))?);
        payloads
            .iter()
            .map(|p| decode(p).map_err(io_error))
            .collect()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        Ok(self.hard_state()?.vote)
    }
}

impl<C, M> RaftLogStorage<C> for RaftLog<C, M>
where
    C: RaftTypes,
    M: StateMachine,
{
    type LogReader = RaftLog<C, M>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, std::io::Error> {
        let purged = self.hard_state()?.purged;
        let last_op: u64 = self
            .thread
            .call(|shard| Box::pin(async move { shard.journal.next_op() - 1 }))
            .await
            .map_err(io_error)?;
        let last = if last_op == 0 {
            Vec::new()
        } else {
            // Its log index is `last_op - 1`.
            self.try_get_log_entries(last_op - 1..=last_op - 1).await?
        };
        // Never below the purged id (the open finishes an interrupted
        // purge, so the journal holds no entry at or below it).
        let last_log_id = match last.last() {
            Some(entry) if purged.is_none_or(|p| entry.log_id.index > p.index) => {
                Some(entry.log_id)
            }
            _ => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        let mut state = self.hard_state()?;
        state.vote = Some(*vote);
        // A vote must be on disk before it is sent, and in the superblock:
        // a cut of the log's tail must not take it (the node could then
        // vote twice in a term).
        self.set_hard_state(state, Persist::DurableInSuperblock)
            .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        let mut state = self.hard_state()?;
        state.committed = committed;
        // Losing it in a crash is harmless, so it rides with the next write
        // instead of costing one: a restarted node learns the commit point
        // from the leader again, and a restarted leader does not lead
        // again before a new term's first entry is committed (see
        // `open_with_own_vote_uncommitted`). Unless it ends a repair: the
        // node votes again only once a record of it is durable, and an
        // idle cluster may make no other write for a long time.
        let ends_repair = matches!(
            (state.awaiting_repair, committed),
            (Some(term), Some(id)) if id.leader_id.term > term
        );
        let when = if ends_repair {
            Persist::Queued
        } else {
            Persist::NextWrite
        };
        self.set_hard_state(state, when).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        Ok(self.hard_state()?.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes = encode(&entry).map_err(io_error)?;
            encoded.push((op_of(entry.log_id.index), bytes));
        }
        // openraft hands over consecutive entries; a gap inside one append
        // is refused before the cache or the journal sees any of it.
        if let Some(pair) = encoded.windows(2).find(|pair| pair[1].0 != pair[0].0 + 1) {
            return Err(io_error(gap_refused(pair[1].0, pair[0].0 + 1)));
        }
        // Readable as soon as this returns (openraft reads what it just
        // appended to replicate it): the cache has it at once, and the
        // journal's read path queues behind the job below.
        let generation = {
            let mut tail = self.tail()?;
            for (op, bytes) in &encoded {
                tail.insert(*op, bytes);
            }
            tail.generation()
        };
        let last_op = encoded.last().map(|(op, _)| *op);
        let tail = self.tail.clone();
        // Queued without waiting for the reactor to take it: jobs run in the
        // order sent, and an error reaches openraft through the callback.
        let posted = self
            .thread
            .post(move |shard| {
                Box::pin(async move {
                    let queued = queue_entries(&shard, &encoded).await;
                    let queued = match queued {
                        Ok(queued) => queued,
                        Err(e) => {
                            if let RaftStoreError::LogGap { index, .. } = e {
                                // Nothing was queued: a read must not find
                                // the refused entries in the cache either.
                                if let Ok(mut tail) = tail.lock() {
                                    tail.truncate_after(op_of(index) - 1);
                                }
                            }
                            callback.io_completed(Err(io_error(e)));
                            return;
                        }
                    };
                    let count = queued.len();
                    shard
                        .appends_in_flight
                        .set(shard.appends_in_flight.get() + count);
                    // Durability is awaited on a task of its own, so the
                    // next job can queue its entries into the same group
                    // commit meanwhile.
                    glommio::spawn_local(async move {
                        let mut result = Ok(());
                        for q in queued {
                            if let Err(e) = q.durable().await {
                                result = Err(io_error(e));
                                break;
                            }
                        }
                        shard
                            .appends_in_flight
                            .set(shard.appends_in_flight.get() - count);
                        // The cache may now drop these (and older) entries.
                        if let (Ok(()), Some(op)) = (&result, last_op) {
                            if let Ok(mut tail) = tail.lock() {
                                tail.mark_durable(op, generation);
                            }
                        }
                        callback.io_completed(result);
                    })
                    .detach();
                })
            })
            .await;
        posted.map_err(io_error)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), std::io::Error> {
        // Keep `last_log_id` and every index below it.
        let keep = last_log_id.map_or(0, |id| op_of(id.index));
        self.tail()?.truncate_after(keep);
        let truncated = self
            .thread
            .call(move |shard| Box::pin(async move { shard.journal.truncate_after(keep).await }))
            .await;
        flat(truncated).map_err(io_error)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        let mut state = self.hard_state()?;
        if state
            .purged
            .as_ref()
            .is_some_and(|p| p.index >= log_id.index)
        {
            return Ok(());
        }
        let op = op_of(log_id.index);
        state.purged = Some(log_id);
        self.set_hard_state(state, Persist::Durable).await?;
        self.tail()?.forget_through(op);
        let advanced = self
            .thread
            .call(move |shard| {
                Box::pin(async move {
                    if op > shard.journal.watermark() {
                        shard.journal.advance_watermark(op).await?;
                        shard.prune_snapshots().await;
                    }
                    Ok(())
                })
            })
            .await;
        flat(advanced).map_err(io_error)
    }
}

/// Counts, logs and returns the refusal of an append whose entry at `op`
/// would follow a gap: the log expects `next` there.
fn gap_refused(op: u64, next: u64) -> RaftStoreError {
    metrics::counter!("ringstore_raft_log_gap_refusals_total").increment(1);
    tracing::error!(
        index = index_of(op),
        next = index_of(next),
        "refusing an append that would leave a gap in the raft log"
    );
    RaftStoreError::LogGap {
        index: index_of(op),
        next: index_of(next),
    }
}

/// Queues `entries` (op, bytes) in the journal, then the hard state if it
/// changed since the last record (a change made after the entries were
/// submitted is never written ahead of them); ops at or below the
/// watermark are skipped (a snapshot holds them, and they are never read
/// again).
async fn queue_entries<C: RaftTypes, M>(
    shard: &RaftShard<C, M>,
    entries: &[(u64, Vec<u8>)],
) -> Result<Vec<ringstore_journal::QueuedAppend>, RaftStoreError> {
    // Before anything is queued: a refused append writes nothing.
    if let Some((first, _)) = entries
        .iter()
        .find(|(op, _)| *op > shard.journal.watermark())
    {
        // The journal's next op counts queued writes and the purged prefix.
        // A log never written nor purged may start anywhere (openraft's
        // storage suite starts one above index 0).
        let next = shard.journal.next_op();
        let fresh = next == 1 && shard.journal.watermark() == 0;
        if *first > next && !fresh {
            return Err(gap_refused(*first, next));
        }
    }
    let mut queued = Vec::with_capacity(entries.len());
    for (op, bytes) in entries {
        if *op <= shard.journal.watermark() {
            continue;
        }
        queued.push(shard.journal.queue_write(*op, bytes).await?);
    }
    // After the entries: the committed id openraft saved when it
    // submitted them may cover them (see `RaftShard::queue_hard_state`).
    shard.queue_hard_state(Queue::Changed).await?;
    Ok(queued)
}
