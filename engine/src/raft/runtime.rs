//! [`ReactorRuntime`]: openraft's async runtime for a Raft that runs on its
//! shard's glommio reactor, beside the journal it writes.
//!
//! With openraft on tokio and the journal on the shard's reactor, every
//! storage call crossed threads twice (there and back) and each crossing
//! woke a parked thread: in one traced 1-client commit about a third of
//! the time went to such hand-offs (`bench/PERFORMANCE.md`, "raft: where a
//! commit's time goes"). With this runtime openraft's own tasks (its core, the
//! replication streams, the state-machine worker) are spawned on the
//! reactor that owns the journal, so a storage call is a hop between tasks
//! of one thread.
//!
//! Everything else is tokio's, as in openraft's `TokioRuntime`: its
//! channels, mutex and instant are plain `Send` types that work from any
//! thread, so a client on a tokio thread submits to a Raft on a reactor as
//! before; timers use the tokio runtime the reactor thread entered when it
//! started ([`super::ReactorThread::open`] enters the runtime it was opened
//! from). That keeps openraft's `Send` bounds (no `single-threaded`
//! feature, which is global to a build and would force every `Raft` in it
//! onto a local runtime). The cluster's peer connections run on the same
//! reactor on glommio's sockets ([`super::cluster::reactor_net`]).
//!
//! glommio cancels a task whose handle is dropped (`glommio_quirks`, quirk
//! 6, with the other quirks this leans on); openraft drops some handles at
//! once and expects the task to go on, as tokio's do, so every task is
//! detached and its output comes back through a channel.
//!
//! A task spawned off a reactor thread (a `Raft::new` called from a tokio
//! task) runs on tokio instead: openraft works so, only without the
//! saving, but the cluster's network does not (its links are made on the
//! reactor openraft runs on): start a Raft with
//! [`super::RaftStores::start_raft`], which also refuses a shard opened
//! outside a tokio runtime (openraft's timers on the reactor are tokio's).

use super::reactor;
use openraft_rt::{AsyncRuntime, OptionalSend};
use openraft_rt_tokio::TokioRuntime;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// openraft's runtime for a Raft hosted on its shard's glommio reactor (see
/// the module docs). Name it as the `AsyncRuntime` of a type configuration:
/// `openraft::declare_raft_types!(T: ..., AsyncRuntime = ReactorRuntime)`.
pub struct ReactorRuntime {
    /// For openraft's runtime tests (`new`, `block_on`): a tokio runtime
    /// the executor thread enters.
    tokio: tokio::runtime::Runtime,
}

impl std::fmt::Debug for ReactorRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorRuntime").finish()
    }
}

/// Why a task spawned on [`ReactorRuntime`] gave no output.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReactorJoinError {
    /// The task panicked (the message, if it was a string).
    #[error("the task panicked: {0}")]
    Panicked(String),
    /// The task will never finish: it was dropped, or its executor ended
    /// while it was still waiting.
    #[error("the task will never finish (dropped, or its executor ended)")]
    Cancelled,
}

/// The handle of a task spawned on [`ReactorRuntime`]: its output once it
/// finishes. Dropping it leaves the task running.
pub struct ReactorJoinHandle<T> {
    output: futures_channel::oneshot::Receiver<Result<T, ReactorJoinError>>,
    /// On a reactor: resolves (cancelled) when the task finished or its
    /// executor ended with the task still waiting, which glommio neither
    /// runs nor drops again.
    alive: Option<futures_channel::oneshot::Receiver<()>>,
}

impl<T> Future for ReactorJoinHandle<T> {
    type Output = Result<T, ReactorJoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.output).poll(cx) {
            Poll::Ready(Ok(output)) => return Poll::Ready(output),
            Poll::Ready(Err(_)) => return Poll::Ready(Err(ReactorJoinError::Cancelled)),
            Poll::Pending => {}
        }
        if let Some(alive) = &mut self.alive {
            if Pin::new(alive).poll(cx).is_ready() {
                // A finished task sent its output before letting go of
                // this; look once more.
                return match self.output.try_recv() {
                    Ok(Some(output)) => Poll::Ready(output),
                    _ => Poll::Ready(Err(ReactorJoinError::Cancelled)),
                };
            }
        }
        Poll::Pending
    }
}

impl AsyncRuntime for ReactorRuntime {
    type JoinError = ReactorJoinError;
    type JoinHandle<T: OptionalSend + 'static> = ReactorJoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = <TokioRuntime as AsyncRuntime>::ThreadLocalRng;

    /// On the reactor of the calling thread, if it is one; on tokio
    /// otherwise.
    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        let (tx, output) = futures_channel::oneshot::channel();
        let tracked = reactor::on_reactor_thread().then(reactor::track_task);
        let id = tracked.as_ref().map(|(id, _)| *id);
        let task = async move {
            let result = reactor::catch_panic("openraft", future)
                .await
                .map_err(ReactorJoinError::Panicked);
            // The handle may be gone: nobody waits for the output.
            let _ = tx.send(result);
            if let Some(id) = id {
                reactor::untrack_task(id);
            }
        };
        if tracked.is_some() {
            // Detached: glommio would cancel it when its handle drops.
            glommio::spawn_local(task).detach();
        } else {
            drop(tokio::spawn(task));
        }
        ReactorJoinHandle {
            output,
            alive: tracked.map(|(_, alive)| alive),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        matches!(join_error, ReactorJoinError::Panicked(_))
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        TokioRuntime::thread_rng()
    }

    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    /// A runtime for openraft's runtime tests: `block_on` runs the future
    /// on a glommio executor of its own, in a thread that entered a tokio
    /// runtime of `threads` workers.
    fn new(threads: usize) -> Self {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()
            // openraft's signature has no room for an error; only its tests
            // call this.
            .expect("starting a tokio runtime for ReactorRuntime");
        ReactorRuntime { tokio }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        let _entered = self.tokio.enter();
        let executor = glommio::LocalExecutorBuilder::default()
            .make()
            // As in `new`: only openraft's runtime tests call this.
            .expect("starting a glommio executor for ReactorRuntime");
        let _mark = reactor::ReactorMark::set();
        executor.run(future)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// openraft's own conformance suite for async runtimes: spawning and
    /// joining, sleeps, timeouts, select, and its channels and mutex.
    #[test]
    fn openraft_runtime_suite_passes() {
        openraft_rt::testing::Suite::<ReactorRuntime>::test_all();
    }

    #[test]
    fn a_task_spawned_on_a_reactor_runs_there_and_a_dropped_handle_does_not_cancel_it() {
        let mut rt = ReactorRuntime::new(1);
        rt.block_on(async {
            let reactor_thread = std::thread::current().id();
            let (tx, rx) = futures_channel::oneshot::channel();
            drop(ReactorRuntime::spawn(async move {
                ReactorRuntime::sleep(Duration::from_millis(5)).await;
                let _ = tx.send(std::thread::current().id());
            }));
            assert_eq!(rx.await.unwrap(), reactor_thread);
        });
    }

    #[test]
    fn a_task_still_waiting_when_its_executor_ends_is_reported_cancelled() {
        let mut rt = ReactorRuntime::new(1);
        // The executor ends with the task waiting on a timer an hour away
        // (on purpose: it must still be waiting then; nothing waits for
        // the timer itself): glommio never runs nor drops the task again.
        let mut handle = None;
        rt.block_on(async {
            handle = Some(ReactorRuntime::spawn(async {
                ReactorRuntime::sleep(Duration::from_secs(3600)).await;
            }));
        });
        let handle = handle.expect("spawned");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(futures_lite::future::block_on(handle));
        });
        let joined = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the handle resolves instead of waiting forever");
        assert!(
            matches!(joined, Err(ReactorJoinError::Cancelled)),
            "{joined:?}"
        );
    }

    #[test]
    fn a_panic_is_reported_as_one() {
        let mut rt = ReactorRuntime::new(1);
        let joined = rt.block_on(async {
            ReactorRuntime::spawn(async {
                if std::hint::black_box(true) {
                    panic!("planted");
                }
            })
            .await
        });
        let error = joined.unwrap_err();
        assert!(ReactorRuntime::is_panic(&error), "{error}");
        assert!(error.to_string().contains("planted"), "{error}");
    }
}
