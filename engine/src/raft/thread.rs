//! A journal owned by a glommio reactor thread of its own, driven from any
//! thread by sending it closures.

use ringstore_journal::storage::DmaStorage;
use ringstore_journal::{Journal, JournalBuilder};
use std::future::Future;
use std::pin::Pin;
use std::thread::JoinHandle;

/// A future run on the reactor.
pub type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// A closure run on the journal's reactor.
type Job = Box<dyn FnOnce(Journal<DmaStorage>) -> LocalBoxFuture<()> + Send>;

/// Jobs queued for the reactor at most (callers wait beyond that).
const JOBS_QUEUED_MAX: usize = 1024;

/// The reactor thread and the way into it. Dropping it closes the journal
/// and joins the thread.
pub struct JournalThread {
    jobs: async_channel::Sender<Job>,
    thread: Option<JoinHandle<()>>,
}

impl JournalThread {
    /// Opens the journal `builder` describes on a new reactor thread.
    pub fn open(
        builder: impl FnOnce() -> JournalBuilder<DmaStorage> + Send + 'static,
    ) -> ringstore_journal::Result<JournalThread> {
        let (jobs, queue) = async_channel::bounded::<Job>(JOBS_QUEUED_MAX);
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ringstore-raft-journal".into())
            .spawn(move || {
                let executor = glommio::LocalExecutorBuilder::default().make();
                let executor = match executor {
                    Ok(executor) => executor,
                    Err(e) => {
                        tracing::error!(error = %e, "starting the raft journal's reactor failed");
                        let _ = opened_tx.send(Err(ringstore_journal::Error::Closed));
                        return;
                    }
                };
                executor.run(async move {
                    let journal = match builder().open().await {
                        Ok(journal) => journal,
                        Err(e) => {
                            let _ = opened_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = opened_tx.send(Ok(()));
                    // One job at a time, in order: openraft requires its
                    // write requests applied in the order it made them. A
                    // job that waits for durability spawns that wait (see
                    // `RaftLog::append`), so appends still share a group
                    // commit.
                    while let Ok(job) = queue.recv().await {
                        job(journal.clone()).await;
                    }
                    if let Err(e) = journal.close().await {
                        tracing::error!(error = %e, "closing the raft journal failed");
                    }
                });
            })
            .map_err(|e| {
                tracing::error!(error = %e, "spawning the raft journal's thread failed");
                ringstore_journal::Error::Closed
            })?;
        match opened_rx.recv() {
            Ok(Ok(())) => Ok(JournalThread {
                jobs,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(ringstore_journal::Error::Closed)
            }
        }
    }

    /// Runs `job` on the reactor and returns its result.
    pub async fn call<T, F>(&self, job: F) -> ringstore_journal::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Journal<DmaStorage>) -> LocalBoxFuture<ringstore_journal::Result<T>>
            + Send
            + 'static,
    {
        let (tx, rx) = futures_channel::oneshot::channel();
        let job: Job = Box::new(move |journal| {
            Box::pin(async move {
                let _ = tx.send(job(journal).await);
            })
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| ringstore_journal::Error::Closed)?;
        rx.await.map_err(|_| ringstore_journal::Error::Closed)?
    }
}

impl Drop for JournalThread {
    fn drop(&mut self) {
        self.jobs.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
