//! The client handle: `Send + Sync + Clone`, usable from any thread or
//! async runtime, routing each call to the shard that owns its key.
//!
//! Every shard has its own request queue; a client holds one sender per
//! shard and nothing else, so two submits to different shards share no lock.
//! Replies come back on a oneshot channel that any executor can await
//! (tokio, glommio, `futures::executor`, or [`Client::submit_blocking`] on a
//! plain thread).

use crate::error::{Error, Result};
use crate::machine::StateMachine;
use crate::shard::{CheckpointOutcome, Outcome, Shard, ShardStats};
use futures_channel::oneshot;
use std::sync::Arc;

/// A state machine the multi-shard runtime can host: its commands, replies
/// and rejections cross threads between clients and shard reactors.
pub trait EngineMachine: StateMachine<Command: Send, Reply: Send, Rejection: Send + Sync> {}

impl<M> EngineMachine for M where M: StateMachine<Command: Send, Reply: Send, Rejection: Send + Sync>
{}

/// A read of a shard's state, run on that shard's reactor.
pub(crate) type ReadFn<M> = Box<dyn FnOnce(&Shard<M>) + Send>;
/// A task started on a shard's reactor.
pub(crate) type TaskFn<M> =
    Box<dyn FnOnce(Shard<M>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send>;

/// What a client asks of one shard.
pub(crate) enum Request<M: EngineMachine> {
    Submit {
        command: M::Command,
        reply: oneshot::Sender<Result<Outcome<M>>>,
    },
    /// Several commands in one request, answered in one reply.
    SubmitBatch {
        commands: Vec<M::Command>,
        reply: oneshot::Sender<Vec<Result<Outcome<M>>>>,
    },
    Read(ReadFn<M>),
    Run(TaskFn<M>),
    Checkpoint(oneshot::Sender<Result<CheckpointOutcome>>),
    Stats(oneshot::Sender<ShardStats>),
    /// Everything queued before it is served first.
    Shutdown {
        final_checkpoint: bool,
        reply: oneshot::Sender<crate::runtime::ShardShutdown>,
    },
}

/// A handle on a running [`Engine`](crate::runtime::Engine)'s shards. Cheap
/// to clone; `Send + Sync`.
///
/// Keys are routed with [`shard_for_key`]: the same key always reaches the
/// same shard for a given shard count (the data directory records that
/// count and refuses another).
pub struct Client<M: EngineMachine> {
    queues: Arc<[async_channel::Sender<Request<M>>]>,
}

impl<M: EngineMachine> Clone for Client<M> {
    fn clone(&self) -> Self {
        Client {
            queues: self.queues.clone(),
        }
    }
}

impl<M: EngineMachine> std::fmt::Debug for Client<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("shards", &self.queues.len())
            .finish()
    }
}

/// The shard that owns `key` among `shards`: FNV-1a (64 bit) of the key's
/// bytes modulo the shard count. Fixed across versions and processes, since
/// a key's state lives on the shard it was routed to.
pub fn shard_for_key(key: &[u8], shards: usize) -> usize {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = key.iter().fold(FNV_OFFSET, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    });
    (hash % shards.max(1) as u64) as usize
}

impl<M: EngineMachine> Client<M> {
    pub(crate) fn new(queues: Vec<async_channel::Sender<Request<M>>>) -> Client<M> {
        Client {
            queues: queues.into(),
        }
    }

    /// The number of shards.
    pub fn shards(&self) -> usize {
        self.queues.len()
    }

    /// The shard that owns `key`.
    pub fn shard_for(&self, key: impl AsRef<[u8]>) -> usize {
        shard_for_key(key.as_ref(), self.queues.len())
    }

    /// Submits `command` to the shard that owns `key`. Resolves once the
    /// command is durable and applied there, with the state machine's reply
    /// or rejection (see [`Shard::submit`] for the errors).
    pub async fn submit(&self, key: impl AsRef<[u8]>, command: M::Command) -> Result<Outcome<M>> {
        self.submit_to(self.shard_for(key), command).await
    }

    /// Submits `command` to shard `shard` (`0..shards()`).
    pub async fn submit_to(&self, shard: usize, command: M::Command) -> Result<Outcome<M>> {
        let (reply, outcome) = oneshot::channel();
        self.send(shard, Request::Submit { command, reply }).await?;
        // A dropped reply: the shard stopped before answering (shutdown
        // raced this submit, or the shard failed). Not acknowledged.
        outcome.await.map_err(|_| Error::Closed)?
    }

    /// Submits `commands` to shard `shard` as one request: they cross to the
    /// shard's thread with one send (one wake at most), are queued there in
    /// order, sharing group commits as [`Shard::submit_many`] does, and
    /// their outcomes come back in one reply, in the same order, once the
    /// last is applied: one wake of the caller for the batch instead of one
    /// per command. Each command stands alone: a rejection or an error of
    /// one (as [`Shard::submit`] returns them) leaves the others as they
    /// are. The batch as a whole fails with `InvalidConfig` for a shard
    /// that does not exist, and with `Closed` when the shard stopped before
    /// answering: then none of them is acknowledged, though some may have
    /// been applied. An empty batch sends nothing.
    pub async fn submit_batch(
        &self,
        shard: usize,
        commands: Vec<M::Command>,
    ) -> Result<Vec<Result<Outcome<M>>>> {
        self.queue(shard)?;
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, outcomes) = oneshot::channel();
        self.send(shard, Request::SubmitBatch { commands, reply })
            .await?;
        outcomes.await.map_err(|_| Error::Closed)
    }

    /// [`Client::submit`] for a thread that is not inside an async runtime:
    /// blocks the calling thread until the command is acknowledged.
    pub fn submit_blocking(
        &self,
        key: impl AsRef<[u8]>,
        command: M::Command,
    ) -> Result<Outcome<M>> {
        futures_lite::future::block_on(self.submit(key, command))
    }

    /// Runs `read` against the state of the shard that owns `key`, with every
    /// command acknowledged there so far applied.
    pub async fn read<T: Send + 'static>(
        &self,
        key: impl AsRef<[u8]>,
        read: impl FnOnce(&M) -> T + Send + 'static,
    ) -> Result<T> {
        self.read_shard(self.shard_for(key), read).await
    }

    /// [`Client::read`] on shard `shard`.
    pub async fn read_shard<T: Send + 'static>(
        &self,
        shard: usize,
        read: impl FnOnce(&M) -> T + Send + 'static,
    ) -> Result<T> {
        let (reply, value) = oneshot::channel();
        let run: ReadFn<M> = Box::new(move |shard: &Shard<M>| {
            let _ = reply.send(shard.read(read));
        });
        self.send(shard, Request::Read(run)).await?;
        value.await.map_err(|_| Error::Closed)
    }

    /// Runs `task` on shard `shard`'s reactor with the [`Shard`] itself, and
    /// resolves with its result: for work that belongs next to the shard
    /// (a load generator, a connection handler) and would otherwise cross
    /// threads once per command. The future `task` returns need not be
    /// `Send`; shutdown waits for it.
    pub async fn run_on<T, F, Fut>(&self, shard: usize, task: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Shard<M>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + 'static,
    {
        let (reply, value) = oneshot::channel();
        let run: TaskFn<M> = Box::new(move |shard: Shard<M>| {
            Box::pin(async move {
                let _ = reply.send(task(shard).await);
            })
        });
        self.send(shard, Request::Run(run)).await?;
        value.await.map_err(|_| Error::Closed)
    }

    /// Takes a checkpoint of shard `shard` now (see [`Shard::checkpoint`]).
    pub async fn checkpoint(&self, shard: usize) -> Result<CheckpointOutcome> {
        let (reply, outcome) = oneshot::channel();
        self.send(shard, Request::Checkpoint(reply)).await?;
        outcome.await.map_err(|_| Error::Closed)?
    }

    /// Every shard's counters and ack latency percentiles, in shard order.
    pub async fn stats(&self) -> Result<Vec<ShardStats>> {
        let mut all = Vec::with_capacity(self.queues.len());
        for shard in 0..self.queues.len() {
            let (reply, stats) = oneshot::channel();
            self.send(shard, Request::Stats(reply)).await?;
            all.push(stats.await.map_err(|_| Error::Closed)?);
        }
        Ok(all)
    }

    pub(crate) async fn send(&self, shard: usize, request: Request<M>) -> Result<()> {
        // Waits while the shard's queue is full: backpressure, not an error.
        self.queue(shard)?
            .send(request)
            .await
            .map_err(|_| Error::Closed)
    }

    /// Shard `shard`'s queue, or `InvalidConfig` if there is no such shard.
    fn queue(&self, shard: usize) -> Result<&async_channel::Sender<Request<M>>> {
        self.queues.get(shard).ok_or_else(|| Error::InvalidConfig {
            setting: "shard",
            value: shard.to_string(),
            reason: format!(
                "0 to {} (the engine's shard count - 1)",
                self.queues.len() - 1
            ),
        })
    }

    /// Every shard's queue, in shard order.
    pub(crate) fn queues(&self) -> &[async_channel::Sender<Request<M>>] {
        &self.queues
    }
}
