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

/// Marks the calling thread as one running a glommio executor for as long
/// as the returned guard lives.
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
    }
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
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _entered = tokio.as_ref().map(|t| t.enter());
                let _mark = ReactorMark::set();
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
            })
            .map_err(|e| {
                tracing::error!(error = %e, "spawning a raft shard's thread failed");
                E::from(ReactorClosed)
            })?;
        match opened_rx.recv() {
            Ok(Ok(())) => Ok(ReactorThread {
                jobs,
                thread: Some(thread),
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
}

impl<T: ReactorState> ReactorThread<T> {
    /// Runs `task` on the reactor as a task of its own, beside the jobs
    /// rather than in their queue (it may queue jobs and wait for them),
    /// and returns its output; `Err(Closed)` if the reactor stopped first.
    pub async fn spawn<R, F, Fut>(&self, task: F) -> Result<R, ReactorClosed>
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
                    let _ = tx.send(task().await);
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
