//! State owned by a glommio reactor thread of its own (the shard's core),
//! driven from any thread by sending it closures.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::thread::JoinHandle;

/// A future run on the reactor.
pub type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// A closure run on the reactor, given the state it owns.
type Job<T> = Box<dyn FnOnce(Rc<T>) -> LocalBoxFuture<()> + Send>;

/// Jobs queued for the reactor at most (callers wait beyond that).
const JOBS_QUEUED_MAX: usize = 1024;

thread_local! {
    /// Whether this thread runs a raft shard's glommio executor (or one of
    /// `ReactorRuntime::block_on`'s): `ReactorRuntime::spawn` spawns there.
    static ON_REACTOR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread runs a reactor [`ReactorRuntime`] spawns on.
///
/// [`ReactorRuntime`]: super::ReactorRuntime
pub(super) fn on_reactor_thread() -> bool {
    ON_REACTOR.with(|on| on.get())
}

/// The tasks [`ReactorRuntime`] spawned on this thread that have not
/// finished: each one's "alive" sender, dropped when the task finishes or,
/// for a task still waiting when the executor ends (glommio neither runs
/// nor drops it then), when the [`ReactorMark`] goes, so its handle
/// resolves as cancelled instead of never.
///
/// [`ReactorRuntime`]: super::ReactorRuntime
#[derive(Default)]
struct LiveTasks {
    next: u64,
    alive: std::collections::HashMap<u64, futures_channel::oneshot::Sender<()>>,
}

thread_local! {
    static LIVE_TASKS: std::cell::RefCell<LiveTasks> = std::cell::RefCell::default();
}

/// Registers a task about to be spawned on this reactor: its id and the
/// receiver that resolves (as cancelled) when it finishes or is abandoned.
pub(super) fn track_task() -> (u64, futures_channel::oneshot::Receiver<()>) {
    let (alive, watched) = futures_channel::oneshot::channel();
    LIVE_TASKS.with(|live| {
        let mut live = live.borrow_mut();
        live.next += 1;
        let id = live.next;
        live.alive.insert(id, alive);
        (id, watched)
    })
}

/// The task `id` has finished.
pub(super) fn untrack_task(id: u64) {
    LIVE_TASKS.with(|live| live.borrow_mut().alive.remove(&id));
}

/// Marks the calling thread as one running a glommio executor for as long
/// as the returned guard lives; dropping it abandons the tasks that never
/// finished (see [`LiveTasks`]).
pub(super) struct ReactorMark(());

impl ReactorMark {
    pub(super) fn set() -> ReactorMark {
        ON_REACTOR.with(|on| on.set(true));
        ReactorMark(())
    }
}

impl Drop for ReactorMark {
    fn drop(&mut self) {
        ON_REACTOR.with(|on| on.set(false));
        let abandoned = LIVE_TASKS.with(|live| std::mem::take(&mut live.borrow_mut().alive));
        drop(abandoned);
    }
}

/// `future`'s output, or the message of its panic. glommio does not catch
/// a panic in a task: it would unwind the whole reactor thread, journal and
/// all. Every task ringstore spawns on a raft shard's reactor runs inside
/// this; a panic is logged with `what` and counted in
/// `ringstore_raft_reactor_task_panics_total`.
pub(super) async fn catch_panic<T>(
    what: &'static str,
    future: impl Future<Output = T>,
) -> Result<T, String> {
    use futures_lite::FutureExt;
    std::panic::AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|panic| {
            let message = if let Some(s) = panic.downcast_ref::<&str>() {
                (*s).to_string()
            } else if let Some(s) = panic.downcast_ref::<String>() {
                s.clone()
            } else {
                "(not a string)".to_string()
            };
            metrics::counter!("ringstore_raft_reactor_task_panics_total", "task" => what)
                .increment(1);
            tracing::error!(task = what, panic = %message, "a task on a raft shard's reactor panicked");
            message
        })
}

/// What the reactor's state does when the thread stops.
pub trait ReactorState: 'static {
    /// Closes what the state holds (files, the journal).
    fn close(self: Rc<Self>) -> LocalBoxFuture<()>;
}

/// The reactor thread and the way into it. Dropping it closes the state
/// and joins the thread.
pub struct ReactorThread<T: ReactorState> {
    jobs: async_channel::Sender<Job<T>>,
    thread: Option<JoinHandle<()>>,
    /// Turns `true` when the thread has closed its state and stopped.
    exited: tokio::sync::watch::Receiver<bool>,
    /// Whether the thread entered a tokio runtime (timers need one).
    in_tokio: bool,
}

impl<T: ReactorState> ReactorThread<T> {
    /// Builds the state with `open` on a new reactor thread named `name`.
    /// The thread enters the tokio runtime `open` is called from, if any,
    /// so tasks on the reactor can use its timers and sockets (an openraft
    /// hosted there with [`super::ReactorRuntime`] does).
    pub fn open<E>(
        name: &str,
        open: impl FnOnce() -> LocalBoxFuture<Result<T, E>> + Send + 'static,
    ) -> Result<ReactorThread<T>, E>
    where
        E: From<ReactorClosed> + Send + 'static,
    {
        let (jobs, queue) = async_channel::bounded::<Job<T>>(JOBS_QUEUED_MAX);
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let tokio = tokio::runtime::Handle::try_current().ok();
        let in_tokio = tokio.is_some();
        let (exited_tx, exited) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _entered = tokio.as_ref().map(|t| t.enter());
                let mark = ReactorMark::set();
                run_reactor(open, queue, opened_tx);
                // Tasks still waiting now will never run: their handles
                // resolve as cancelled.
                drop(mark);
                let _ = exited_tx.send(true);
            })
            .map_err(|e| {
                tracing::error!(error = %e, "spawning a raft shard's thread failed");
                E::from(ReactorClosed)
            })?;
        match opened_rx.recv() {
            Ok(Ok(())) => Ok(ReactorThread {
                jobs,
                thread: Some(thread),
                exited,
                in_tokio,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(ReactorClosed.into())
            }
        }
    }

    /// Resolves once the thread has closed its state and stopped (at once
    /// if it has). The thread stops when the last handle is dropped.
    pub fn exited(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut exited = self.exited.clone();
        async move {
            // An error: the thread is gone, which is what is awaited.
            let _ = exited.wait_for(|exited| *exited).await;
        }
    }

    /// Whether the thread entered a tokio runtime (it does when opened
    /// inside one): openraft's timers on the reactor need it.
    pub fn in_tokio(&self) -> bool {
        self.in_tokio
    }

    /// Runs `job` on the reactor, after every job sent before it, and
    /// returns its result; `Err(Closed)` if the reactor has stopped.
    pub async fn call<R, F>(&self, job: F) -> Result<R, ReactorClosed>
    where
        R: Send + 'static,
        F: FnOnce(Rc<T>) -> LocalBoxFuture<R> + Send + 'static,
    {
        let (tx, rx) = futures_channel::oneshot::channel();
        let job: Job<T> = Box::new(move |state| {
            Box::pin(async move {
                let _ = tx.send(job(state).await);
            })
        });
        self.jobs.send(job).await.map_err(|_| ReactorClosed)?;
        rx.await.map_err(|_| ReactorClosed)
    }

    /// [`ReactorThread::call`] for a job that may wait long (a snapshot
    /// written, or a permit another task holds): it starts in the queue's
    /// order, then runs as a task of its own, so the jobs behind it (the
    /// log's appends among them) are not held up meanwhile.
    // The job returns the task's receiver on purpose: awaiting it in the
    // job would hold up the queue.
    #[allow(clippy::async_yields_async)]
    pub async fn call_detached<R, F>(&self, job: F) -> Result<R, ReactorClosed>
    where
        R: Send + 'static,
        F: FnOnce(Rc<T>) -> LocalBoxFuture<R> + Send + 'static,
    {
        let done = self
            .call(move |state| {
                Box::pin(async move {
                    let (tx, rx) = futures_channel::oneshot::channel();
                    // Detached: glommio cancels a task whose handle is
                    // dropped.
                    glommio::spawn_local(async move {
                        let _ = tx.send(job(state).await);
                    })
                    .detach();
                    rx
                })
            })
            .await?;
        done.await.map_err(|_| ReactorClosed)
    }
}

impl<T: ReactorState> ReactorThread<T> {
    /// Runs `task` on the reactor as a task of its own, beside the jobs
    /// rather than in their queue (it may queue jobs and wait for them),
    /// and returns its output, or `Err(message)` if it panicked (glommio
    /// would let a panic take the whole reactor down: it is caught and
    /// logged); `Err(Closed)` if the reactor stopped first.
    pub async fn spawn<R, F, Fut>(&self, task: F) -> Result<Result<R, String>, ReactorClosed>
    where
        R: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.post(move |_| {
            Box::pin(async move {
                // Detached: glommio cancels a task whose handle is dropped.
                glommio::spawn_local(async move {
                    let output = catch_panic("on_reactor", async move { task().await }).await;
                    let _ = tx.send(output);
                })
                .detach();
            })
        })
        .await?;
        rx.await.map_err(|_| ReactorClosed)
    }

    /// Queues `job` to run on the reactor after every job sent before it,
    /// without waiting for it to run.
    pub async fn post<F>(&self, job: F) -> Result<(), ReactorClosed>
    where
        F: FnOnce(Rc<T>) -> LocalBoxFuture<()> + Send + 'static,
    {
        self.jobs
            .send(Box::new(job))
            .await
            .map_err(|_| ReactorClosed)
    }
}

/// The reactor thread's life: builds the state with `open`, reports it on
/// `opened`, runs the jobs in order until the last handle is gone, closes
/// the state.
fn run_reactor<T: ReactorState, E>(
    open: impl FnOnce() -> LocalBoxFuture<Result<T, E>>,
    queue: async_channel::Receiver<Job<T>>,
    opened_tx: std::sync::mpsc::Sender<Result<(), E>>,
) where
    E: From<ReactorClosed>,
{
    let executor = glommio::LocalExecutorBuilder::default().make();
    let executor = match executor {
        Ok(executor) => executor,
        Err(e) => {
            tracing::error!(error = %e, "starting a raft shard's reactor failed");
            let _ = opened_tx.send(Err(ReactorClosed.into()));
            return;
        }
    };
    executor.run(async move {
        let state = match open().await {
            Ok(state) => Rc::new(state),
            Err(e) => {
                let _ = opened_tx.send(Err(e));
                return;
            }
        };
        let _ = opened_tx.send(Ok(()));
        // One job at a time, in order: openraft requires its
        // write requests applied in the order it made them. A
        // job that waits for durability spawns that wait (see
        // `RaftLog::append`), so the jobs behind it are not held
        // up and appends queued meanwhile share a group commit.
        while let Ok(job) = queue.recv().await {
            job(state.clone()).await;
            // With more jobs waiting the task stays runnable, and
            // glommio hands the I/O the jobs queued (journal
            // writes, fdatasyncs) to the kernel only when no task
            // is (`glommio_quirks`, quirk 1): let the reactor
            // turn first.
            if !queue.is_empty() {
                ringstore_journal::glommio_quirks::reactor_turn().await;
            }
        }
        state.close().await;
    });
}

/// The reactor thread has stopped (closed, or its state failed to open).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the raft shard's reactor thread has stopped")]
pub struct ReactorClosed;

impl<T: ReactorState> Drop for ReactorThread<T> {
    fn drop(&mut self) {
        self.jobs.close();
        if let Some(thread) = self.thread.take() {
            // The last handle may go with a task on the reactor itself (a
            // Raft hosted there that stopped): its thread ends on its own
            // once the queue is drained.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}
