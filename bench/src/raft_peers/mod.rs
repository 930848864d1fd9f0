//! A 3-node openraft cluster in one process, its nodes talking over TCP on
//! loopback, on any of the stores compared by `ringstore-bench raft`: one
//! wire format, one configuration and one client loop for all of them. A
//! node runs on its [`Host`]: tokio for openraft's reference stores, the
//! shard's reactor for ringstore (where its Raft runs, so its sockets and
//! clients are there too).

// openraft's network traits return its large `RPCError`.
#![allow(clippy::result_large_err)]

pub mod mem;
#[cfg(feature = "rocksdb")]
pub mod rocks;
mod tokio_link;
pub mod types_kv;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use openraft::async_runtime::WatchReceiver;
use openraft::base::BoxFuture;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::{RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::{BasicNode, Raft, RaftTypeConfig, ReadPolicy, SnapshotPolicy};
use ringstore::raft::cluster::pipeline::{pipelined_append, AppendReply, AppendResults};
use ringstore::raft::cluster::reactor_net::{self, ReactorLink};
use ringstore::raft::cluster::wire::{read_frame, write_frame};
use ringstore::raft::cluster::{ClusterMachine, ClusterTypes};
use ringstore::raft::RaftLog;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::io::Cursor;
use std::pin::Pin;
use tokio::net::TcpListener;
use tokio_link::TokioLink;

use crate::latency::LatencyRecorder;

/// Nodes in a cluster.
pub const NODES: u64 = 3;
/// Raft heartbeat, in milliseconds (elections after 4 to 8 of them).
const HEARTBEAT_MS: u64 = 100;
/// Entries between snapshots (the same for every store).
const SNAPSHOT_EVERY: u64 = 20_000;
/// Longest the cluster gets to elect its first leader.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(20);

/// A Raft RPC on the wire. A snapshot goes whole, in one frame: the
/// benchmark's snapshots are small, and its followers never fall behind the
/// purged log.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
enum Rpc<C: RaftTypeConfig<NodeId = u64>> {
    Append(AppendEntriesRequest<C>),
    Vote(VoteRequest<C>),
    Snapshot {
        vote: VoteOf<C>,
        meta: SnapshotMetaOf<C>,
        data: Vec<u8>,
    },
}

/// Its answer (a remote error as text).
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
enum RpcReply<C: RaftTypeConfig<NodeId = u64>> {
    Append(Result<AppendEntriesResponse<C>, String>),
    Vote(Result<VoteResponse<C>, String>),
    Snapshot(Result<SnapshotResponse<C>, String>),
}

/// Where a node's Raft runs, and with it its clients' tasks, its peer
/// connections and its RPCs: so no store pays a thread crossing the others
/// do not.
#[derive(Clone)]
pub enum Host {
    /// On tokio (openraft's reference stores).
    Tokio,
    /// On the ringstore shard's reactor (`ReactorRuntime`): clients and
    /// connections run there, on glommio's sockets
    /// (`ringstore::raft::cluster::reactor_net`).
    Reactor(RaftLog<ClusterTypes, ClusterMachine>),
}

/// A client task given to [`Host::spawn`].
type BoxedTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Host {
    fn spawn(&self, task: BoxedTask) {
        match self {
            Host::Tokio => {
                tokio::spawn(task);
            }
            Host::Reactor(log) => {
                let log = log.clone();
                tokio::spawn(async move {
                    // An error: the reactor stopped, and the task with it.
                    let _ = log.on_reactor(move || task).await;
                });
            }
        }
    }

    fn network(&self, replication: Replication) -> Network {
        Network {
            on_reactor: matches!(self, Host::Reactor(_)),
            replication,
        }
    }
}

/// What every benchmarked store's state machine is to the cluster.
pub trait Machine<C: RaftTypeConfig>: RaftStateMachine<C, SnapshotData = Cursor<Vec<u8>>> {}

impl<C: RaftTypeConfig, SM> Machine<C> for SM where
    SM: RaftStateMachine<C, SnapshotData = Cursor<Vec<u8>>>
{
}

/// A running cluster; dropping it stops the servers (call `shutdown` for
/// the Rafts).
pub struct Cluster<C: RaftTypeConfig<NodeId = u64, Node = BasicNode>, SM: Machine<C>> {
    /// The nodes.
    pub rafts: BTreeMap<u64, Raft<C, SM>>,
    hosts: BTreeMap<u64, Host>,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl<C, SM> Cluster<C, SM>
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
    SM: Machine<C>,
{
    /// Starts one node per `(log, machine)` pair (`Raft::new` on the
    /// calling runtime), initializes the cluster on node 1 and waits for a
    /// leader.
    pub async fn start<LS>(
        stores: Vec<(LS, SM)>,
        replication: Replication,
    ) -> Result<Cluster<C, SM>>
    where
        LS: RaftLogStorage<C>,
    {
        let mut stores: Vec<Option<(LS, SM)>> = stores.into_iter().map(Some).collect();
        Self::start_with(
            stores.len() as u64,
            Host::Tokio,
            replication,
            |id, config, network| {
                let store = stores[id as usize - 1].take();
                async move {
                    let (log, machine) = store.ok_or_else(|| anyhow!("node {id} started twice"))?;
                    let raft = Raft::new(id, config, network, log, machine).await?;
                    Ok((raft, Host::Tokio))
                }
            },
        )
        .await
    }

    /// Starts `nodes` nodes, each made by `make(id, config, network)` with
    /// the host it runs on (`host` says what network they take: tokio's
    /// sockets or the reactor's), initializes the cluster on node 1 and
    /// waits for a leader.
    pub async fn start_with<F, Fut>(
        nodes: u64,
        host: Host,
        replication: Replication,
        mut make: F,
    ) -> Result<Cluster<C, SM>>
    where
        F: FnMut(u64, Arc<openraft::Config>, Network) -> Fut,
        Fut: std::future::Future<Output = Result<(Raft<C, SM>, Host)>>,
    {
        let config = openraft::Config {
            heartbeat_interval: HEARTBEAT_MS,
            election_timeout_min: HEARTBEAT_MS * 4,
            election_timeout_max: HEARTBEAT_MS * 8,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
            ..Default::default()
        };
        let config = Arc::new(config.validate()?);
        let mut listeners = Vec::new();
        let mut members = BTreeMap::new();
        for id in 1..=nodes {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            members.insert(id, BasicNode::new(listener.local_addr()?.to_string()));
            listeners.push(listener);
        }
        let mut rafts = BTreeMap::new();
        let mut hosts = BTreeMap::new();
        let mut servers = Vec::new();
        for (id, listener) in (1..).zip(listeners) {
            let (raft, host) = make(id, config.clone(), host.network(replication)).await?;
            servers.push(tokio::spawn(serve(raft.clone(), listener, host.clone())));
            rafts.insert(id, raft);
            hosts.insert(id, host);
        }
        rafts[&1].initialize(members).await?;
        // Every node names the same leader, and that leader confirms a
        // quorum still follows it (a ReadIndex round): a leader seen by
        // node 1 alone could be deposed by an election already under way,
        // and the workload's first command would fail (seen once with the
        // RocksDB store, `has to forward request to: None`).
        let started = Instant::now();
        loop {
            let views: Vec<Option<u64>> = rafts
                .values()
                .map(|raft| raft.metrics().borrow_watched().current_leader)
                .collect();
            let agreed = match views.first() {
                Some(Some(leader)) if views.iter().all(|view| *view == Some(*leader)) => {
                    rafts.get(leader)
                }
                _ => None,
            };
            if let Some(leader) = agreed {
                if leader
                    .ensure_linearizable(ReadPolicy::ReadIndex)
                    .await
                    .is_ok()
                {
                    break;
                }
            }
            if started.elapsed() > ELECTION_TIMEOUT {
                return Err(anyhow!(
                    "no leader every node follows within {ELECTION_TIMEOUT:?} (their views: {views:?})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Cluster {
            rafts,
            hosts,
            servers,
        })
    }

    /// The current leader.
    pub fn leader(&self) -> Result<Raft<C, SM>> {
        Ok(self.rafts[&self.leader_id()?].clone())
    }

    pub fn leader_id(&self) -> Result<u64> {
        self.rafts[&1]
            .metrics()
            .borrow_watched()
            .current_leader
            .ok_or_else(|| anyhow!("no leader"))
    }

    /// `clients` tasks each submit `command(client, seq)` to the leader, one
    /// at a time, until `duration` passes; they run on the leader's host.
    /// Returns the commands committed, the elapsed time and their commit
    /// latencies.
    pub async fn drive(
        &self,
        clients: u64,
        duration: Duration,
        command: impl Fn(u64, u64) -> C::D + Send + Sync + 'static,
    ) -> Result<(u64, Duration, LatencyRecorder)> {
        let leader_id = self.leader_id()?;
        let leader = self.rafts[&leader_id].clone();
        let host = self.hosts[&leader_id].clone();
        let command = Arc::new(command);
        let merged = Arc::new(Mutex::new(LatencyRecorder::new()));
        let started = Instant::now();
        let deadline = started + duration;
        let mut tasks = Vec::new();
        for client in 0..clients {
            let leader = leader.clone();
            let command = command.clone();
            let merged = merged.clone();
            let (done, finished) = tokio::sync::oneshot::channel();
            tasks.push(finished);
            let client_task = async move {
                let mut recorder = LatencyRecorder::new();
                let mut seq = 0;
                while Instant::now() < deadline {
                    seq += 1;
                    let sent = Instant::now();
                    leader
                        .client_write(command(client, seq))
                        .await
                        .map_err(|e| {
                            anyhow!(
                                "client {client}'s command {seq}, {:?} into the run, to \
                                 node {leader_id} (the leader at its start): {e}",
                                started.elapsed()
                            )
                        })?;
                    recorder.record(sent.elapsed());
                }
                merged
                    .lock()
                    .map_err(|_| anyhow!("a client panicked"))?
                    .merge(&recorder);
                Ok::<u64, anyhow::Error>(seq)
            };
            host.spawn(Box::pin(async move {
                let _ = done.send(client_task.await);
            }));
        }
        let mut count = 0;
        for task in tasks {
            count += task
                .await
                .map_err(|_| anyhow!("a client task was dropped"))??;
        }
        let elapsed = started.elapsed();
        let recorder = std::mem::take(&mut *merged.lock().map_err(|_| anyhow!("poisoned"))?);
        Ok((count, elapsed, recorder))
    }

    /// Stops every node.
    pub async fn shutdown(self) -> Result<()> {
        for server in &self.servers {
            server.abort();
        }
        for raft in self.rafts.values() {
            raft.shutdown()
                .await
                .map_err(|e| anyhow!("shutdown: {e}"))?;
        }
        Ok(())
    }
}

/// Accepts connections on tokio; each is answered on the node's host (on
/// the reactor with glommio's socket), and ends when its peer closes it.
async fn serve<C, SM>(raft: Raft<C, SM>, listener: TcpListener, host: Host)
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
    SM: Machine<C>,
{
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let raft = raft.clone();
        match &host {
            Host::Tokio => {
                tokio::spawn(async move {
                    let mut stream = stream;
                    while let Ok(rpc) = read_frame::<Rpc<C>>(&mut stream).await {
                        let reply = answer(&raft, rpc).await;
                        if write_frame(&mut stream, &reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
            Host::Reactor(log) => {
                let Ok(stream) = stream.into_std() else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let served = log.on_reactor(move || async move {
                        let Ok(mut stream) = reactor_net::adopt_stream(stream) else {
                            return;
                        };
                        while let Ok(rpc) = reactor_net::read_frame_io::<Rpc<C>>(&mut stream).await
                        {
                            let reply = answer(&raft, rpc).await;
                            if reactor_net::write_frame_io(&mut stream, &reply)
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    });
                    // An error: the reactor stopped, and the connection with it.
                    let _ = served.await;
                });
            }
        }
    }
}

/// A node's answer to one RPC.
async fn answer<C, SM>(raft: &Raft<C, SM>, rpc: Rpc<C>) -> RpcReply<C>
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
    SM: Machine<C>,
{
    match rpc {
        Rpc::Append(rpc) => {
            RpcReply::Append(raft.append_entries(rpc).await.map_err(|e| e.to_string()))
        }
        Rpc::Vote(rpc) => RpcReply::Vote(raft.vote(rpc).await.map_err(|e| e.to_string())),
        Rpc::Snapshot { vote, meta, data } => RpcReply::Snapshot(
            raft.install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: Cursor::new(data),
                },
            )
            .await
            .map_err(|e| e.to_string()),
        ),
    }
}

/// Makes a [`Peer`] per target: over tokio's sockets, or over glommio's
/// on the reactor openraft runs on (`ReactorLink`, made there).
#[derive(Clone, Copy)]
pub struct Network {
    on_reactor: bool,
    replication: Replication,
}

/// How a leader's AppendEntries requests go to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Replication {
    /// Each as soon as openraft makes it, up to
    /// `ringstore::raft::cluster::pipeline::APPEND_PIPELINE_DEPTH` in
    /// flight, an entry-less commit notice held up to
    /// `COMMIT_NOTICE_HOLD` for the next request to carry (what the
    /// cluster's nodes do).
    Pipelined,
    /// One at a time, each after the reply to the one before
    /// (openraft's `stream_append_sequential`).
    Sequential,
}

impl<C> RaftNetworkFactory<C> for Network
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
{
    type Network = Peer;

    async fn new_client(&mut self, _target: u64, node: &BasicNode) -> Peer {
        let transport = match node.addr.parse::<SocketAddr>() {
            Ok(addr) if self.on_reactor => Transport::Reactor(ReactorLink::to(addr.to_string())),
            Ok(addr) => Transport::Tokio(TokioLink::to(addr)),
            Err(_) => Transport::Unaddressed(node.addr.clone()),
        };
        Peer {
            transport,
            replication: self.replication,
        }
    }
}

/// RPCs to one node over one connection, pipelined.
pub struct Peer {
    transport: Transport,
    replication: Replication,
}

#[derive(Clone)]
enum Transport {
    Tokio(TokioLink),
    Reactor(ReactorLink),
    /// A node address that is not a numeric `ip:port`.
    Unaddressed(String),
}

/// A reply on its way.
type PendingRpc<C> = Pin<Box<dyn Future<Output = io::Result<RpcReply<C>>> + Send>>;

impl Peer {
    /// Sends `rpc` at once (without waiting for earlier replies); its reply.
    fn send<C>(&self, rpc: &Rpc<C>, timeout: Duration) -> PendingRpc<C>
    where
        C: RaftTypeConfig<NodeId = u64>,
    {
        match &self.transport {
            Transport::Tokio(link) => Box::pin(link.send(rpc, timeout)),
            Transport::Reactor(link) => Box::pin(link.send(rpc, timeout)),
            Transport::Unaddressed(addr) => {
                let e = io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("node address {addr:?} is not a numeric ip:port"),
                );
                Box::pin(std::future::ready(Err(e)))
            }
        }
    }

    async fn call<C>(&mut self, rpc: Rpc<C>, timeout: Duration) -> io::Result<RpcReply<C>>
    where
        C: RaftTypeConfig<NodeId = u64>,
    {
        self.send(&rpc, timeout).await
    }
}

type RpcResult<T, C> = Result<T, RPCError<C>>;

fn network_error<C: RaftTypeConfig>(e: impl std::fmt::Display) -> RPCError<C> {
    RPCError::Network(NetworkError::new(&io::Error::other(e.to_string())))
}

fn unreachable_error<C: RaftTypeConfig>(e: io::Error) -> RPCError<C> {
    RPCError::Unreachable(Unreachable::new(&e))
}

fn failed<T, C: RaftTypeConfig>(e: impl std::fmt::Display) -> RpcResult<T, C> {
    Err(network_error(e))
}

fn unreachable<T, C: RaftTypeConfig>(e: io::Error) -> RpcResult<T, C> {
    Err(unreachable_error(e))
}

fn append_response<C: RaftTypeConfig<NodeId = u64>>(
    replied: io::Result<RpcReply<C>>,
) -> RpcResult<AppendEntriesResponse<C>, C> {
    match replied {
        Ok(RpcReply::Append(Ok(response))) => Ok(response),
        Ok(RpcReply::Append(Err(e))) => failed(e),
        Ok(_) => failed("unexpected reply"),
        Err(e) => unreachable(e),
    }
}

impl<C> RaftNetworkV2<C> for Peer
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
{
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<C>, C> {
        append_response(self.call(Rpc::<C>::Append(rpc), option.hard_ttl()).await)
    }

    /// Replication as the network's [`Replication`] says.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, RpcResult<AppendResults<'s, C>, C>>
    where
        S: futures::Stream<Item = AppendEntriesRequest<C>> + Send + Unpin + 'static,
    {
        if self.replication == Replication::Sequential {
            return openraft::network::stream_append_sequential(self, input, option);
        }
        let timeout = option.hard_ttl();
        let peer = Peer {
            transport: self.transport.clone(),
            replication: self.replication,
        };
        let send = move |rpc| -> AppendReply<C> {
            let reply = peer.send(&Rpc::<C>::Append(rpc), timeout);
            Box::pin(async move { append_response(reply.await) })
        };
        Box::pin(async move { Ok(pipelined_append(input, send)) })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<C>, C> {
        match self.call(Rpc::<C>::Vote(rpc), option.hard_ttl()).await {
            Ok(RpcReply::Vote(Ok(response))) => Ok(response),
            Ok(RpcReply::Vote(Err(e))) => failed(e),
            Ok(_) => failed("unexpected reply"),
            Err(e) => unreachable(e),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Cursor<Vec<u8>>>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let rpc = Rpc::<C>::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.into_inner(),
        };
        let sent = tokio::select! {
            sent = self.call(rpc, option.hard_ttl()) => sent,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        match sent {
            Ok(RpcReply::Snapshot(Ok(response))) => Ok(response),
            Ok(RpcReply::Snapshot(Err(e))) => Err(network_error(e).into()),
            Ok(_) => Err(network_error("unexpected reply").into()),
            Err(e) => Err(unreachable_error(e).into()),
        }
    }
}
