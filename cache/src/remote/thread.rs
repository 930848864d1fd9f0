//! The I/O thread: one `std::thread` named [`THREAD_NAME`] that owns a
//! current-thread tokio runtime (what `object_store` needs) and runs every
//! call of every clone of a [`crate::Remote`].
//!
//! A call crosses into it as a boxed job on a bounded queue
//! ([`crate::REQUESTS_QUEUED_MAX`], `try_send`: the caller never waits to
//! enqueue) and comes back through a `futures-channel` oneshot, which any
//! executor can await: a glommio reactor parks the task and is woken from
//! this thread, nothing blocks.
//!
//! [`run_call`] wraps every job: it takes one of `in_flight_max` permits,
//! races the work against the call's [`Deadline`] (which the work may
//! extend once it knows how many bytes it moves) and against the caller
//! dropping its future (the work is then dropped too, cancelling the
//! requests in flight), counts the outcome and replies. So every call ends
//! by its deadline whatever the store does, and a reactor never depends on
//! a hung request.
//!
//! Shutdown stops taking calls, drops the queued ones (their callers get
//! [`RemoteError::Shutdown`]), lets the running ones finish (each is bounded
//! by its deadline), then shuts the runtime down, waiting at most
//! [`BLOCKING_DRAIN_WAIT`] for blocking filesystem calls of the local store.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use object_store::ObjectStore;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;

use super::config::{Settings, REQUESTS_QUEUED_MAX};
use super::error::{RemoteError, RemoteResult};
use super::stats::Counters;

/// Name of the I/O thread.
pub const THREAD_NAME: &str = "ringstore-objstore";

/// Name of the runtime's blocking-pool threads (the local store's file
/// calls run there).
const BLOCKING_THREAD_NAME: &str = "ringstore-objstore-blocking";

/// Blocking-pool threads at most.
const BLOCKING_THREADS_MAX: usize = 8;

/// How long shutdown waits for blocking calls still running (a local-store
/// file call whose call was cancelled keeps running: threads cannot be
/// interrupted).
pub const BLOCKING_DRAIN_WAIT: Duration = Duration::from_secs(5);

/// What the jobs share: the store, the settings, the counters.
pub(crate) struct Ctx {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) settings: Settings,
    pub(crate) counters: Arc<Counters>,
    permits: Semaphore,
}

impl Ctx {
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        settings: Settings,
        counters: Arc<Counters>,
    ) -> Ctx {
        let permits = Semaphore::new(settings.in_flight_max);
        Ctx {
            store,
            settings,
            counters,
            permits,
        }
    }
}

/// A call on its way to the I/O thread.
pub(crate) type Job = Box<dyn FnOnce(Arc<Ctx>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// When a call must be done. Starts when the caller makes the call (time in
/// the queue counts); the work extends it once it knows the bytes it moves.
#[derive(Clone, Debug)]
pub(crate) struct Deadline {
    start: Instant,
    allowed: Arc<Mutex<Duration>>,
}

impl Deadline {
    pub(crate) fn new(allowed: Duration) -> Deadline {
        Deadline {
            start: Instant::now(),
            allowed: Arc::new(Mutex::new(allowed)),
        }
    }

    /// The time allowed so far.
    pub(crate) fn allowed(&self) -> Duration {
        // A poisoned lock still holds a valid duration.
        *self.allowed.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn at(&self) -> Instant {
        self.start + self.allowed()
    }

    /// Allows `allowed` in total, if that is more than so far.
    pub(crate) fn extend_to(&self, allowed: Duration) {
        let mut current = self.allowed.lock().unwrap_or_else(|e| e.into_inner());
        if allowed > *current {
            *current = allowed;
        }
    }
}

/// Runs one call's work under its deadline (see the module docs) and
/// replies.
pub(crate) async fn run_call<T, Fut>(
    ctx: Arc<Ctx>,
    op: &'static str,
    key: String,
    deadline: Deadline,
    work: Fut,
    mut reply: oneshot::Sender<RemoteResult<T>>,
) where
    Fut: Future<Output = RemoteResult<T>>,
{
    let work = async {
        // The semaphore is never closed, so acquire cannot fail; if it ever
        // did, running without a permit is the lesser harm.
        let _permit = ctx.permits.acquire().await.ok();
        work.await
    };
    tokio::pin!(work);
    let result = loop {
        let at = deadline.at();
        tokio::select! {
            result = &mut work => break result,
            () = tokio::time::sleep_until(at.into()) => {
                if deadline.at() <= at {
                    break Err(RemoteError::Timeout { op, key, allowed: deadline.allowed() });
                }
                // Extended meanwhile: keep going.
            }
            () = reply.cancellation() => {
                // The caller dropped its future: dropping the work cancels
                // its requests. Not counted as finished.
                return;
            }
        }
    };
    ctx.counters.finished(op, &result);
    // An Err means the caller left just now: nothing to tell it.
    let _ = reply.send(result);
}

/// The running I/O thread.
pub(crate) struct IoThread {
    queue: mpsc::Sender<Job>,
    stop: Arc<Notify>,
    exited: Mutex<Option<oneshot::Receiver<()>>>,
    handle: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl IoThread {
    /// Builds the runtime and starts the thread.
    pub(crate) fn start(ctx: Arc<Ctx>) -> RemoteResult<IoThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(BLOCKING_THREAD_NAME)
            .max_blocking_threads(BLOCKING_THREADS_MAX)
            .build()
            .map_err(|source| RemoteError::local_io("start tokio runtime", THREAD_NAME, source))?;
        let (queue, receiver) = mpsc::channel(REQUESTS_QUEUED_MAX);
        let stop = Arc::new(Notify::new());
        let (exited_tx, exited_rx) = oneshot::channel();
        let thread_stop = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || {
                serve(&runtime, receiver, &thread_stop, &ctx);
                runtime.shutdown_timeout(BLOCKING_DRAIN_WAIT);
                // Err: nobody waits for the exit.
                let _ = exited_tx.send(());
            })
            .map_err(|source| RemoteError::local_io("spawn thread", THREAD_NAME, source))?;
        Ok(IoThread {
            queue,
            stop,
            exited: Mutex::new(Some(exited_rx)),
            handle: Mutex::new(Some(handle)),
        })
    }

    /// Hands a call to the thread without waiting.
    pub(crate) fn submit(&self, job: Job) -> RemoteResult<()> {
        self.queue.try_send(job).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => RemoteError::Overloaded {
                queued_max: REQUESTS_QUEUED_MAX,
            },
            mpsc::error::TrySendError::Closed(_) => RemoteError::Shutdown,
        })
    }

    /// Stops the thread (see the module docs) and joins it. The first call
    /// waits; later ones return at once.
    pub(crate) async fn shutdown(&self) -> RemoteResult<()> {
        self.stop.notify_one();
        let exited = self.exited.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(exited) = exited else {
            return Ok(());
        };
        // Canceled: the thread died without saying so; join tells how.
        let _ = exited.await;
        let handle = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            // The thread has sent its last message: this join only waits
            // for it to return from its closure.
            if handle.join().is_err() {
                tracing::error!("the object-store I/O thread panicked");
            }
        }
        Ok(())
    }
}

impl Drop for IoThread {
    /// The last handle is gone: tell the thread to stop (the closed queue
    /// would too); it finishes the calls in flight and exits on its own.
    /// Not joined here: dropping must not block a reactor.
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

/// The thread's body: take jobs until stopped, then drain.
fn serve(
    runtime: &tokio::runtime::Runtime,
    mut receiver: mpsc::Receiver<Job>,
    stop: &Notify,
    ctx: &Arc<Ctx>,
) {
    runtime.block_on(async {
        let mut running = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                () = stop.notified() => break,
                job = receiver.recv() => match job {
                    Some(job) => {
                        running.spawn(job(Arc::clone(ctx)));
                    }
                    None => break,
                },
                Some(joined) = running.join_next(), if !running.is_empty() => {
                    if let Err(error) = joined {
                        tracing::error!(%error, "an object-store call panicked");
                    }
                }
            }
        }
        receiver.close();
        // Queued, never started: dropping them tells their callers.
        while receiver.try_recv().is_ok() {}
        while let Some(joined) = running.join_next().await {
            if let Err(error) = joined {
                tracing::error!(%error, "an object-store call panicked");
            }
        }
    });
}
