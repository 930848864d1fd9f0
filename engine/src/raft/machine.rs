//! `RaftStateMachine` over an engine [`StateMachine`] and the engine's
//! snapshot files (see the module docs of `raft`).

use super::error::RaftStoreError;
use super::log::io_error;
use super::reactor::ReactorThread;
use super::shard::{op_of, remember, repeat, restore, RaftShard};
use super::types::{LogId, RaftTypes, Request, Response, SnapshotMeta, StoredMembership};
use crate::{OpId, StateMachine};
use futures_lite::StreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend};
use std::fmt::Debug;
use std::io::Cursor;
use std::sync::Arc;

/// The `Send + Sync` handle openraft holds as its state machine (and
/// snapshot builder): every call runs on the shard's reactor thread.
pub struct RaftMachine<C: RaftTypes, M: StateMachine> {
    thread: Arc<ReactorThread<RaftShard<C, M>>>,
}

impl<C: RaftTypes, M: StateMachine> Clone for RaftMachine<C, M> {
    fn clone(&self) -> Self {
        RaftMachine {
            thread: self.thread.clone(),
        }
    }
}

impl<C: RaftTypes, M: StateMachine> RaftMachine<C, M> {
    /// The shard's reactor thread.
    pub(super) fn thread(&self) -> &Arc<ReactorThread<RaftShard<C, M>>> {
        &self.thread
    }

    pub(super) fn new(thread: Arc<ReactorThread<RaftShard<C, M>>>) -> RaftMachine<C, M> {
        RaftMachine { thread }
    }

    /// Runs `read` against the applied state on the shard's reactor (a
    /// local read: call `Raft::ensure_linearizable` first for a
    /// linearizable one).
    pub async fn read<R, F>(&self, read: F) -> Result<R, RaftStoreError>
    where
        R: Send + 'static,
        F: FnOnce(&M) -> R + Send + 'static,
    {
        Ok(self
            .thread
            .call(move |shard| Box::pin(async move { read(&shard.applied.borrow().machine) }))
            .await?)
    }
}

impl<C: RaftTypes, M: StateMachine> RaftMachine<C, M> {
    /// Snapshots received from a leader and installed since the open.
    pub async fn snapshots_installed(&self) -> Result<u64, RaftStoreError> {
        Ok(self
            .thread
            .call(|shard| Box::pin(async move { shard.snapshots_installed.get() }))
            .await?)
    }

    /// Snapshots built again since the open because the current one was
    /// found damaged when it was to be sent to a follower.
    pub async fn snapshots_rebuilt(&self) -> Result<u64, RaftStoreError> {
        Ok(self
            .thread
            .call(|shard| Box::pin(async move { shard.snapshots_rebuilt.get() }))
            .await?)
    }
}

/// The snapshot a leader sends and a follower installs: the engine's
/// snapshot file, whole.
pub type SnapshotFile<C> =
    Snapshot<super::types::LeaderId, u64, <C as openraft::RaftTypeConfig>::Node, Cursor<Vec<u8>>>;

impl<C, M> RaftSnapshotBuilder<C> for RaftMachine<C, M>
where
    C: RaftTypes<R = Response<M::Reply>>,
    M: StateMachine,
    M::Reply: Clone + Send + Sync + Debug,
{
    type SnapshotData = Cursor<Vec<u8>>;

    /// Freezes the machine on the reactor (cheap), then persists it as a
    /// snapshot file on a task of its own while the shard goes on applying
    /// and appending; returns once the file is durable.
    // The reactor job returns the receiver of the persisting task's result
    // on purpose: awaiting it there would hold up the jobs behind it.
    #[allow(clippy::async_yields_async)]
    async fn build_snapshot(&mut self) -> Result<SnapshotFile<C>, std::io::Error> {
        let built = self
            .thread
            .call(|shard| {
                Box::pin(async move {
                    let (sections, meta) = shard.freeze();
                    let (done, persisted) = futures_channel::oneshot::channel();
                    glommio::spawn_local(async move {
                        let result = shard
                            .persist_frozen(sections, &meta)
                            .await
                            .map(|bytes| (meta, bytes));
                        let _ = done.send(result.map_err(RaftStoreError::from));
                    })
                    .detach();
                    persisted
                })
            })
            .await
            .map_err(io_error)?;
        let (meta, bytes) = built
            .await
            .map_err(|_| RaftStoreError::Closed(super::reactor::ReactorClosed))
            .and_then(|r| r)
            .map_err(io_error)?;
        Ok(Snapshot {
            meta,
            snapshot: Cursor::new(bytes),
        })
    }
}

impl<C, M> RaftStateMachine<C> for RaftMachine<C, M>
where
    C: RaftTypes<D = Request<M::Command>, R = Response<M::Reply>>,
    M: StateMachine,
    M::Command: Send + Sync + Debug,
    M::Reply: Clone + Send + Sync + Debug,
{
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = RaftMachine<C, M>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<C>), std::io::Error> {
        self.thread
            .call(|shard| {
                Box::pin(async move {
                    let applied = shard.applied.borrow();
                    (applied.last_applied, applied.membership.clone())
                })
            })
            .await
            .map_err(io_error)
    }

    /// Applies the entries on the shard's reactor, all in one hop, then
    /// answers each waiting client.
    async fn apply<S>(&mut self, mut stream: S) -> Result<(), std::io::Error>
    where
        S: futures_lite::Stream<Item = Result<EntryResponder<C>, std::io::Error>>
            + Unpin
            + OptionalSend,
    {
        let mut entries = Vec::new();
        let mut responders = Vec::new();
        while let Some(item) = stream.next().await {
            let (entry, responder) = item?;
            entries.push(entry);
            responders.push(responder);
        }
        let responses = self
            .thread
            .call(move |shard| {
                Box::pin(async move {
                    let mut applied = shard.applied.borrow_mut();
                    let applied = &mut *applied;
                    let mut responses = Vec::with_capacity(entries.len());
                    for entry in entries {
                        let at = OpId {
                            op: op_of(entry.log_id.index),
                            epoch: entry.log_id.leader_id.term,
                        };
                        applied.last_applied = Some(entry.log_id);
                        let response = match entry.payload {
                            EntryPayload::Blank => Response::Internal,
                            EntryPayload::Membership(membership) => {
                                applied.membership =
                                    StoredMembership::<C>::new(Some(entry.log_id), membership);
                                Response::Internal
                            }
                            EntryPayload::Normal(request) => {
                                let session = applied.sessions.get(&request.client);
                                match repeat(session, request.seq) {
                                    Some(response) => response,
                                    None => {
                                        let response =
                                            match applied.machine.apply(at, request.command) {
                                                Ok(reply) => Response::Applied(reply),
                                                Err(rejection) => {
                                                    Response::Rejected(rejection.to_string())
                                                }
                                            };
                                        remember(
                                            &mut applied.sessions,
                                            request.client,
                                            request.seq,
                                            at.op,
                                            response.clone(),
                                        );
                                        response
                                    }
                                }
                            }
                        };
                        responses.push(response);
                    }
                    responses
                })
            })
            .await
            .map_err(io_error)?;
        for (responder, response) in responders.into_iter().zip(responses) {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// Verifies the received file (whole, and of this cluster) and restores
    /// the state it holds, and only then installs it as the snapshot at its
    /// op and replaces the state with it: a file this node cannot restore
    /// (a raft record or a section another build wrote) is refused before
    /// it takes a snapshot's name, where every later open would refuse it.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<C>,
        snapshot: Cursor<Vec<u8>>,
    ) -> Result<(), std::io::Error> {
        let bytes = snapshot.into_inner();
        let op = meta.last_log_id.as_ref().map_or(0, |id| op_of(id.index));
        let installed = self
            .thread
            .call_detached(move |shard| {
                Box::pin(async move {
                    let refused = |error: &dyn std::fmt::Display| {
                        metrics::counter!("ringstore_raft_snapshot_install_refusals_total")
                            .increment(1);
                        tracing::error!(op, error = %error,
                            "refusing a snapshot received from the leader");
                    };
                    let _writing = shard.snapshot_writer.acquire_permit(1).await;
                    let (staged, loaded) = match shard
                        .snapshots
                        .stage_bytes(&bytes, op, shard.domain)
                        .await?
                    {
                        Ok(staged) => staged,
                        Err(source) => {
                            refused(&source);
                            return Err(RaftStoreError::ReceivedSnapshot { op, source });
                        }
                    };
                    let (applied, current) = match restore::<C, M>(loaded) {
                        Ok(restored) => restored,
                        Err(error) => {
                            refused(&error);
                            shard.snapshots.discard_staged(staged).await;
                            return Err(error);
                        }
                    };
                    shard.snapshots.publish_staged(staged).await?;
                    *shard.applied.borrow_mut() = applied;
                    *shard.current.borrow_mut() = Some(current);
                    shard
                        .snapshots_installed
                        .set(shard.snapshots_installed.get() + 1);
                    tracing::info!(op, "installed a snapshot received from the leader");
                    Ok(())
                })
            })
            .await;
        installed
            .map_err(RaftStoreError::from)
            .and_then(|r| r)
            .map_err(io_error)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotFile<C>>, std::io::Error> {
        let current = self
            .thread
            .call_detached(|shard| Box::pin(async move { shard.current_snapshot_bytes().await }))
            .await;
        let current = current
            .map_err(RaftStoreError::from)
            .and_then(|r: Result<_, crate::Error>| r.map_err(RaftStoreError::from))
            .map_err(io_error)?;
        Ok(current.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Cursor::new(bytes),
        }))
    }
}
