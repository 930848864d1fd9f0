//! The multi-shard runtime: one glommio reactor per shard, each pinned to
//! its own CPU and owning its shard's directory, journal, state machine and
//! compaction task, behind a [`Client`] that any thread can use.
//!
//! This is a convenience. A broker that runs its own glommio reactors embeds
//! [`Shard`] directly instead (`Shard::builder(dir).open().await` on each of
//! them) and gets the same guarantees without these threads.
//!
//! # Layout
//!
//! ```text
//! <data-dir>/engine        "ringstore engine 1\nshards <n>\n": routing depends on n
//! <data-dir>/lock          flock held by the running engine
//! <data-dir>/shard-000/    shard 0's directory (engine/FORMAT.md)
//! <data-dir>/shard-001/    ...
//! ```
//!
//! # Lifecycle
//!
//! [`EngineBuilder::start`] checks the host (CPUs, locked memory, the
//! manifest), starts the reactors and waits until every shard has recovered;
//! if one fails, the others are shut down and the first failure returned,
//! naming the shard. [`Engine::shutdown`] stops accepting (a request queued
//! after the shutdown fails with [`Error::Closed`] and is not applied),
//! serves what was queued before it, waits for in-flight commands, takes a
//! final checkpoint if asked, closes each shard (the journal's final sync)
//! and joins the reactors. Dropping an [`Engine`] does the same without the
//! final checkpoint. A crash at any point loses nothing acknowledged:
//! acknowledgement means durable.
//!
//! # Object storage
//!
//! [`EngineBuilder::object_store`] gives every shard the same
//! [`ObjectStoreSettings`]: one [`Remote`](crate::object_store::Remote)
//! (one I/O thread for the process), each shard uploading its snapshots
//! under its own domain through its own cache (`shard-NNN/cache` unless the
//! settings name another relative directory). A shard whose disk was lost
//! is rebuilt with [`EngineBuilder::restore_shard`] (the engine not
//! running) before the engine is started again.

mod client;
pub mod startup;

pub use client::{shard_for_key, Client, EngineMachine};

use crate::cold_restore::ColdRestoreReport;
use crate::config::ShardBuilder;
use crate::error::{Error, Result};
use crate::layout::lock::DirLock;
use crate::object_store::ObjectStoreSettings;
use crate::shard::{CheckpointOutcome, Shard, ShardStats};
use client::Request;
use event_listener::Event;
use futures_channel::oneshot;
use std::{
    cell::Cell,
    path::{Path, PathBuf},
    rc::Rc,
    sync::Arc,
    time::Duration,
};

/// Most shards one engine runs.
pub const SHARDS_MAX: usize = 1024;
/// Default capacity of each shard's request queue (requests); a full queue
/// makes submitters wait.
pub const QUEUE_CAPACITY_DEFAULT: usize = 16 * 1024;
/// Default memory each reactor registers with io_uring for I/O buffers.
pub const IO_MEMORY_BYTES_DEFAULT: usize = 10 << 20;

type Configure<M> = Arc<dyn Fn(usize, ShardBuilder<M>) -> ShardBuilder<M> + Send + Sync>;

/// Builds an [`Engine`]. See [`Engine::builder`].
#[must_use = "a builder does nothing until start() is called"]
pub struct EngineBuilder<M: EngineMachine> {
    data_dir: PathBuf,
    shards: usize,
    cpus: Option<Vec<usize>>,
    pin: bool,
    queue_capacity: usize,
    io_memory_bytes: usize,
    configure: Configure<M>,
    object_store: Option<ObjectStoreSettings>,
    abandoned: Vec<usize>,
}

/// Longest [`EngineBuilder::restore_shard`] waits for the restored shard's
/// reset snapshot to reach object storage before it closes the shard.
pub const RESTORE_UPLOAD_WAIT_MAX: Duration = Duration::from_secs(60);

/// What [`EngineBuilder::restore_shard`] did.
#[derive(Debug, Clone)]
pub struct ShardRestore {
    /// The shard's index.
    pub shard: usize,
    /// Its directory.
    pub dir: PathBuf,
    /// The restore (see [`crate::cold_restore`]).
    pub report: ColdRestoreReport,
    /// Whether the reset snapshot reached object storage before the shard
    /// was closed (if not, the shard uploads it when the engine starts).
    pub reset_snapshot_uploaded: bool,
}

impl<M: EngineMachine> EngineBuilder<M> {
    /// The data directory (created if missing). Default: `ringstore-data`
    /// in the current directory.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }

    /// The number of shards (default: one per CPU this process may use).
    /// Fixed for the life of a data directory: a different count is refused
    /// at start.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// The CPU of each shard's reactor (default: shard `i` on the `i`-th CPU
    /// of the affinity mask).
    pub fn cpus(mut self, cpus: Vec<usize>) -> Self {
        self.cpus = Some(cpus);
        self
    }

    /// Whether reactors are pinned to their CPUs (default true). Unpinned
    /// reactors suit shared test machines.
    pub fn pin(mut self, pin: bool) -> Self {
        self.pin = pin;
        self
    }

    /// Starts shard `index` empty even though the data directory records it
    /// as created and its directory (or its identity file) is gone: its
    /// data, and every command it acknowledged, are given up. Without this
    /// such a start is refused ([`Error::ShardMissing`]); restoring the
    /// shard from object storage ([`EngineBuilder::restore_shard`]) is the
    /// way to keep its data. Logged at error level and counted in
    /// `ringstore_shards_abandoned_total`. A shard that is present is not
    /// touched.
    pub fn abandon_missing_shard(mut self, index: usize) -> Self {
        self.abandoned.push(index);
        self
    }

    /// Capacity of each shard's request queue (default
    /// [`QUEUE_CAPACITY_DEFAULT`]).
    pub fn queue_capacity(mut self, requests: usize) -> Self {
        self.queue_capacity = requests;
        self
    }

    /// Memory each reactor registers with io_uring (default
    /// [`IO_MEMORY_BYTES_DEFAULT`]).
    pub fn io_memory(mut self, bytes: usize) -> Self {
        self.io_memory_bytes = bytes;
        self
    }

    /// Adjusts each shard's settings (journal, checkpoint policy, ...): called
    /// with the shard's index and its builder, on the shard's reactor.
    pub fn configure_shards(
        mut self,
        configure: impl Fn(usize, ShardBuilder<M>) -> ShardBuilder<M> + Send + Sync + 'static,
    ) -> Self {
        self.configure = Arc::new(configure);
        self
    }

    /// Snapshots of every shard to object storage (see the [module
    /// docs](self) and [`crate::object_store`]). Default: none.
    pub fn object_store(mut self, settings: ObjectStoreSettings) -> Self {
        self.object_store = Some(settings);
        self
    }

    /// Rebuilds shard `shard` of the data directory from object storage
    /// ([`crate::cold_restore`]) while the engine is not running: locks the
    /// data directory, checks the manifest's shard count (writing the
    /// manifest if the directory is new), restores on a reactor of its own
    /// with this builder's shard settings, waits up to
    /// [`RESTORE_UPLOAD_WAIT_MAX`] for the reset snapshot to be uploaded,
    /// and closes the shard. Start the engine afterwards. Blocks the
    /// calling thread.
    pub fn restore_shard(self, shard: usize, domain: uuid::Uuid) -> Result<ShardRestore> {
        if !(1..=SHARDS_MAX).contains(&self.shards) {
            return Err(Error::InvalidConfig {
                setting: "shards",
                value: self.shards.to_string(),
                reason: format!("1 to {SHARDS_MAX}"),
            });
        }
        if shard >= self.shards {
            return Err(Error::InvalidConfig {
                setting: "shard",
                value: shard.to_string(),
                reason: format!(
                    "0 to {} (the engine has {} shards)",
                    self.shards - 1,
                    self.shards
                ),
            });
        }
        let Some(settings) = self.object_store.clone() else {
            return Err(Error::InvalidConfig {
                setting: "object_store",
                value: "none".into(),
                reason: "restoring a shard needs EngineBuilder::object_store".into(),
            });
        };
        startup::check_memlock(startup::memlock_limit()?, 1, self.io_memory_bytes)?;
        ringstore_journal::storage::create_dir_all_durably_blocking(&self.data_dir)
            .map_err(|e| Error::io("create data directory", &self.data_dir, e))?;
        let _lock = crate::layout::lock::acquire_blocking(&self.data_dir)?;
        startup::check_manifest(&self.data_dir, self.shards)?;
        let dir = startup::shard_dir(&self.data_dir, shard);
        let configure = self.configure.clone();
        let shard_dir = dir.clone();
        let shards = self.shards;
        let restored = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name(&format!("ringstore-restore-{shard}"))
            .io_memory(self.io_memory_bytes)
            .spawn(move || async move {
                let builder = Shard::<M>::builder(shard_dir)
                    .metrics_label(shard.to_string())
                    .placement(shard as u32, shards as u32)
                    .object_store(settings);
                let (opened, report) =
                    crate::cold_restore::restore(configure(shard, builder), domain).await?;
                let uploaded = opened.wait_for_upload(RESTORE_UPLOAD_WAIT_MAX).await;
                opened.close().await?;
                Ok::<_, Error>((report, uploaded))
            })
            .map_err(|e| Error::ReactorStart {
                shard,
                cpu: None,
                reason: e.to_string(),
            })?
            .join()
            .map_err(|e| Error::ReactorStart {
                shard,
                cpu: None,
                reason: e.to_string(),
            })?;
        let (report, reset_snapshot_uploaded) = restored?;
        startup::record_created_shards(&self.data_dir)?;
        Ok(ShardRestore {
            shard,
            dir,
            report,
            reset_snapshot_uploaded,
        })
    }

    /// Checks the host, starts one reactor per shard and waits until every
    /// shard has recovered. Blocks the calling thread (from inside an async
    /// runtime, call it on a blocking thread).
    pub fn start(self) -> Result<Engine<M>> {
        if !(1..=SHARDS_MAX).contains(&self.shards) {
            return Err(Error::InvalidConfig {
                setting: "shards",
                value: self.shards.to_string(),
                reason: format!("1 to {SHARDS_MAX}"),
            });
        }
        if self.queue_capacity == 0 {
            return Err(Error::InvalidConfig {
                setting: "queue_capacity",
                value: "0".into(),
                reason: "at least 1".into(),
            });
        }
        let cpus = startup::place_shards(self.shards, self.cpus.as_deref())?;
        startup::check_memlock(startup::memlock_limit()?, self.shards, self.io_memory_bytes)?;
        ringstore_journal::storage::create_dir_all_durably_blocking(&self.data_dir)
            .map_err(|e| Error::io("create data directory", &self.data_dir, e))?;
        let lock = crate::layout::lock::acquire_blocking(&self.data_dir)?;
        startup::check_manifest(&self.data_dir, self.shards)?;
        startup::check_created_shards(&self.data_dir, &self.abandoned)?;

        let mut queues = Vec::with_capacity(self.shards);
        let mut reactors = Vec::with_capacity(self.shards);
        let mut ready = Vec::with_capacity(self.shards);
        for (index, &cpu) in cpus.iter().enumerate() {
            let (queue, requests) = async_channel::bounded(self.queue_capacity);
            let (ready_tx, ready_rx) = oneshot::channel();
            let spawned = spawn_reactor(
                index,
                cpu,
                &self,
                startup::shard_dir(&self.data_dir, index),
                requests,
                ready_tx,
            );
            match spawned {
                Ok(handle) => {
                    queues.push(queue);
                    reactors.push(Some(handle));
                    ready.push(ready_rx);
                }
                Err(e) => {
                    let engine = Engine::assemble(queues, reactors, lock, self.data_dir);
                    drop(engine); // stops the reactors started so far
                    return Err(e);
                }
            }
        }
        let mut engine = Engine::assemble(queues, reactors, lock, self.data_dir);
        let mut failure = None;
        for (index, ready) in ready.into_iter().enumerate() {
            let opened = futures_lite::future::block_on(ready);
            let error = match opened {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => {
                    // The reactor is exiting. Join it now, so that its
                    // request queue is closed before `stop` below sends the
                    // shutdown: a request queued in the window before the
                    // receiver is dropped would never be answered (queued
                    // requests outlive their receiver), and `stop` would
                    // wait for that answer forever.
                    engine.join_reactor(index);
                    e
                }
                // The reactor died before it could answer: its thread's
                // result says why.
                Err(_) => Error::ReactorStart {
                    shard: index,
                    cpu: Some(cpus[index]),
                    reason: engine.join_reactor(index),
                },
            };
            failure.get_or_insert(Error::ShardStart {
                shard: index,
                source: Box::new(error),
            });
        }
        // Every shard's identity is durable now: a start that finds one of
        // them gone refuses rather than begin it empty.
        if failure.is_none() {
            if let Err(e) = startup::record_created_shards(&engine.data_dir) {
                failure = Some(e);
            }
        }
        match failure {
            None => Ok(engine),
            Some(error) => {
                let _ = engine.stop(false);
                Err(error)
            }
        }
    }
}

fn spawn_reactor<M: EngineMachine>(
    index: usize,
    cpu: usize,
    builder: &EngineBuilder<M>,
    dir: PathBuf,
    requests: async_channel::Receiver<Request<M>>,
    ready: oneshot::Sender<Result<()>>,
) -> Result<glommio::ExecutorJoinHandle<()>> {
    let placement = if builder.pin {
        glommio::Placement::Fixed(cpu)
    } else {
        glommio::Placement::Unbound
    };
    let configure = builder.configure.clone();
    let object_store = builder.object_store.clone();
    let shards = builder.shards;
    let requests = QueueGuard(requests);
    glommio::LocalExecutorBuilder::new(placement)
        .name(&format!("ringstore-shard-{index}"))
        .io_memory(builder.io_memory_bytes)
        .spawn(move || async move {
            let mut shard_builder = Shard::<M>::builder(dir)
                .metrics_label(index.to_string())
                .placement(index as u32, shards as u32);
            if let Some(settings) = object_store {
                shard_builder = shard_builder.object_store(settings);
            }
            let opened = configure(index, shard_builder).open().await;
            match opened {
                Ok(shard) => {
                    let _ = ready.send(Ok(()));
                    serve(shard, &requests.0).await;
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        })
        .map_err(|e| Error::ReactorStart {
            shard: index,
            cpu: Some(cpu),
            reason: e.to_string(),
        })
}

/// Owns a shard's request queue on its reactor. However the reactor ends —
/// a normal shutdown, a shard that failed to open, a reactor that could not
/// start, a panic — dropping this closes the queue and drops what is still
/// in it, so every client waiting on a reply gets [`Error::Closed`] instead
/// of waiting forever (queued requests outlive their receiver otherwise).
struct QueueGuard<M: EngineMachine>(async_channel::Receiver<Request<M>>);

impl<M: EngineMachine> Drop for QueueGuard<M> {
    fn drop(&mut self) {
        self.0.close();
        while let Ok(request) = self.0.try_recv() {
            drop(request);
        }
    }
}

/// What shutting down one shard did.
#[derive(Debug, Clone)]
pub struct ShardShutdown {
    /// The final checkpoint, if one was asked for (and how it went).
    pub final_checkpoint: Option<std::result::Result<CheckpointOutcome, Error>>,
    /// Whether the shard closed cleanly (journal synced and closed).
    pub closed: std::result::Result<(), Error>,
    /// The shard's counters at the end.
    pub stats: ShardStats,
}

/// What [`Engine::shutdown`] did, per shard.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    /// One entry per shard, in shard order.
    pub shards: Vec<ShardShutdown>,
}

/// A running set of shards. See the [module docs](self).
///
/// ```no_run
/// use ringstore::broker::{Command, Metadata, StreamCommand};
/// use ringstore::runtime::Engine;
///
/// let engine = Engine::<Metadata>::builder().shards(2).data_dir("/var/lib/broker").start()?;
/// let client = engine.client(); // Send + Sync + Clone
/// let create = Command::Stream(StreamCommand::Create { name: "orders".into() });
/// let reply = client.submit_blocking("orders", create)?;
/// println!("{reply:?}");
/// engine.shutdown(true)?;
/// # Ok::<(), ringstore::Error>(())
/// ```
pub struct Engine<M: EngineMachine> {
    client: Client<M>,
    reactors: Vec<Option<glommio::ExecutorJoinHandle<()>>>,
    data_dir: PathBuf,
    stopped: bool,
    // Held until the reactors are joined.
    _lock: DirLock,
}

impl<M: EngineMachine> Engine<M> {
    /// A builder with the defaults: one shard per CPU, `./ringstore-data`.
    pub fn builder() -> EngineBuilder<M> {
        EngineBuilder {
            data_dir: PathBuf::from("ringstore-data"),
            shards: startup::available_cpus().len().max(1),
            cpus: None,
            pin: true,
            queue_capacity: QUEUE_CAPACITY_DEFAULT,
            io_memory_bytes: IO_MEMORY_BYTES_DEFAULT,
            configure: Arc::new(|_, builder| builder),
            object_store: None,
            abandoned: Vec::new(),
        }
    }

    fn assemble(
        queues: Vec<async_channel::Sender<Request<M>>>,
        reactors: Vec<Option<glommio::ExecutorJoinHandle<()>>>,
        lock: DirLock,
        data_dir: PathBuf,
    ) -> Engine<M> {
        Engine {
            client: Client::new(queues),
            reactors,
            data_dir,
            stopped: false,
            _lock: lock,
        }
    }

    /// A client handle (`Send + Sync + Clone`).
    pub fn client(&self) -> Client<M> {
        self.client.clone()
    }

    /// The number of shards.
    pub fn shards(&self) -> usize {
        self.client.shards()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the engine gracefully (see the [module docs](self)): serves
    /// what was queued, drains in-flight commands, optionally takes a final
    /// checkpoint on every shard, closes the shards and joins the reactors.
    /// Blocks the calling thread. Every shard is stopped either way; the
    /// result is the first shard's close or final-checkpoint error, if any
    /// (the error names the shard's directory or step).
    pub fn shutdown(mut self, final_checkpoint: bool) -> Result<ShutdownReport> {
        let report = self.stop(final_checkpoint)?;
        for shard in &report.shards {
            if let Err(e) = &shard.closed {
                return Err(e.clone());
            }
            if let Some(Err(e)) = &shard.final_checkpoint {
                return Err(e.clone());
            }
        }
        Ok(report)
    }

    fn stop(&mut self, final_checkpoint: bool) -> Result<ShutdownReport> {
        if self.stopped {
            return Err(Error::Closed);
        }
        self.stopped = true;
        let mut replies = Vec::new();
        for queue in self.client.queues() {
            let (reply, shutdown) = oneshot::channel();
            let request = Request::Shutdown {
                final_checkpoint,
                reply,
            };
            // A reactor that already stopped has dropped its queue.
            let sent = futures_lite::future::block_on(queue.send(request)).is_ok();
            replies.push(sent.then_some(shutdown));
        }
        let mut shards = Vec::with_capacity(replies.len());
        for (index, reply) in replies.into_iter().enumerate() {
            let outcome = match reply {
                Some(reply) => futures_lite::future::block_on(reply).ok(),
                None => None,
            };
            let joined = self.join_reactor(index);
            shards.push(outcome.unwrap_or_else(|| ShardShutdown {
                final_checkpoint: None,
                closed: Err(Error::ReactorStart {
                    shard: index,
                    cpu: None,
                    reason: format!("the shard's reactor had stopped: {joined}"),
                }),
                stats: ShardStats::default(),
            }));
        }
        Ok(ShutdownReport { shards })
    }

    /// Joins reactor `index`; describes how it ended.
    fn join_reactor(&mut self, index: usize) -> String {
        match self.reactors.get_mut(index).and_then(Option::take) {
            Some(handle) => match handle.join() {
                Ok(()) => "it exited".into(),
                Err(e) => e.to_string(),
            },
            None => "it was joined before".into(),
        }
    }
}

impl<M: EngineMachine> Drop for Engine<M> {
    fn drop(&mut self) {
        if !self.stopped {
            if let Err(e) = self.stop(false) {
                tracing::error!(error = %e, "stopping the engine on drop failed");
            }
        }
    }
}

/// Most submits served by one task (see `serve`): a batch taken from the
/// queue at once.
const SUBMIT_BATCH_MAX: usize = 1024;

/// How long the drain at shutdown waits between checks of the in-flight
/// count (a safety net: the count's event normally wakes it).
const DRAIN_RECHECK: Duration = Duration::from_millis(10);

/// Serves one shard's queue until a shutdown request (or until every
/// client and the engine are gone).
async fn serve<M: EngineMachine>(shard: Shard<M>, requests: &async_channel::Receiver<Request<M>>) {
    let in_flight = Rc::new(InFlight::default());
    let mut shutdown = None;
    // A request taken from the queue while gathering a batch of submits,
    // served next.
    let mut next = None;
    loop {
        let request = match next.take() {
            Some(request) => request,
            None => match requests.recv().await {
                Ok(request) => request,
                Err(_) => break,
            },
        };
        match request {
            Request::Submit { command, reply } => {
                // Every submit already queued joins this one: one task
                // queues them all in order and waits for their group
                // commits, and sends each reply as its command is applied
                // (in a burst, as a batch is acknowledged at once), instead
                // of a task, a waker and a wake of the client's thread per
                // command.
                let mut batch = vec![(command, reply)];
                while batch.len() < SUBMIT_BATCH_MAX {
                    match requests.try_recv() {
                        Ok(Request::Submit { command, reply }) => batch.push((command, reply)),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let shard = shard.clone();
                let counted = InFlight::enter(&in_flight);
                glommio::spawn_local(async move {
                    let (commands, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    let mut replies = replies.into_iter();
                    shard
                        .submit_each(commands, |outcome| {
                            if let Some(reply) = replies.next() {
                                let _ = reply.send(outcome);
                            }
                        })
                        .await;
                    drop(counted);
                })
                .detach();
            }
            Request::SubmitBatch { commands, reply } => {
                let shard = shard.clone();
                let counted = InFlight::enter(&in_flight);
                glommio::spawn_local(async move {
                    let _ = reply.send(shard.submit_many(commands).await);
                    drop(counted);
                })
                .detach();
            }
            Request::Read(read) => read(&shard),
            Request::Run(task) => {
                let counted = InFlight::enter(&in_flight);
                let task = task(shard.clone());
                glommio::spawn_local(async move {
                    task.await;
                    drop(counted);
                })
                .detach();
            }
            Request::Checkpoint(reply) => {
                let shard = shard.clone();
                let counted = InFlight::enter(&in_flight);
                glommio::spawn_local(async move {
                    let _ = reply.send(shard.checkpoint().await);
                    drop(counted);
                })
                .detach();
            }
            Request::Stats(reply) => {
                let _ = reply.send(shard.stats());
            }
            Request::Shutdown {
                final_checkpoint,
                reply,
            } => {
                shutdown = Some((final_checkpoint, reply));
                break;
            }
        }
    }
    // Stop accepting: later sends fail with `Closed`, and requests queued
    // behind the shutdown are dropped unanswered (never applied), which
    // their clients see as `Closed`.
    requests.close();
    while let Ok(request) = requests.try_recv() {
        drop(request);
    }
    in_flight.drained().await;
    let final_checkpoint = match &shutdown {
        Some((true, _)) => Some(shard.checkpoint().await),
        _ => None,
    };
    let closed = shard.close().await;
    if let Err(e) = &closed {
        tracing::error!(error = %e, dir = %shard.dir().display(), "closing the shard failed");
    }
    if let Some((_, reply)) = shutdown {
        let _ = reply.send(ShardShutdown {
            final_checkpoint,
            closed,
            stats: shard.stats(),
        });
    }
}

/// Requests a shard has started and not yet answered.
#[derive(Default)]
struct InFlight {
    count: Cell<u64>,
    idle: Event,
}

struct InFlightGuard(Rc<InFlight>);

impl InFlight {
    fn enter(this: &Rc<InFlight>) -> InFlightGuard {
        this.count.set(this.count.get() + 1);
        InFlightGuard(this.clone())
    }

    async fn drained(&self) {
        while self.count.get() > 0 {
            let listener = self.idle.listen();
            if self.count.get() == 0 {
                break;
            }
            futures_lite::future::or(listener, glommio::timer::sleep(DRAIN_RECHECK)).await;
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let count = self.0.count.get() - 1;
        self.0.count.set(count);
        if count == 0 {
            self.0.idle.notify(usize::MAX);
        }
    }
}
