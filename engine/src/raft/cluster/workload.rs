//! A client workload against the cluster that records its history: counter
//! adds and linearizable reads (checked by
//! [`crate::raft::linearizability`]) and broker stream creations.

use super::client::ClusterClient;
use super::machine::{ClusterCommand, ClusterReply};
use super::wire::{NodeId, ReadQuery};
use crate::broker::{self, StreamCommand};
use crate::raft::linearizability::{CounterOp, Operation, Outcome};
use crate::raft::Response;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What the workload does.
#[derive(Debug, Clone)]
pub struct WorkloadSettings {
    /// Concurrent clients, each one command at a time.
    pub clients: usize,
    /// How long it runs.
    pub duration: Duration,
    /// Of every 100 operations, how many are counter reads.
    pub reads_per_100: u64,
    /// Of every 100 operations, how many create a broker stream.
    pub streams_per_100: u64,
    /// How long one command is retried before its outcome is unknown.
    pub deadline: Duration,
    /// Seeds the clients' choices.
    pub seed: u64,
}

impl Default for WorkloadSettings {
    fn default() -> Self {
        WorkloadSettings {
            clients: 8,
            duration: Duration::from_secs(5),
            reads_per_100: 20,
            streams_per_100: 10,
            deadline: Duration::from_secs(5),
            seed: 1,
        }
    }
}

/// What the workload saw.
#[derive(Debug, Default)]
pub struct WorkloadOutcome {
    /// Every counter operation, with its interval and outcome.
    pub history: Vec<Operation>,
    /// Latency of every answered write, in microseconds.
    pub write_latencies_us: Vec<u64>,
    /// Streams whose creation was answered `Created`.
    pub streams_created: u64,
    /// Stream creations with an unknown outcome.
    pub streams_unknown: u64,
    /// Answers the machine refused (none expected).
    pub rejected: Vec<String>,
}

/// Runs the workload against the cluster of `nodes`; client ids start at
/// `first_client` (unique per cluster: they key the sessions).
pub async fn run_workload(
    nodes: BTreeMap<NodeId, SocketAddr>,
    settings: WorkloadSettings,
    first_client: u64,
) -> WorkloadOutcome {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..settings.clients as u64 {
        let nodes = nodes.clone();
        let settings = settings.clone();
        tasks.push(tokio::spawn(async move {
            let client_id = first_client + c;
            let mut client = ClusterClient::new(nodes, client_id);
            let mut rng = broker::gen::splitmix64(settings.seed ^ client_id.wrapping_mul(0x9e37));
            let mut outcome = WorkloadOutcome::default();
            let mut streams = 0u64;
            while started.elapsed() < settings.duration {
                let roll = rng() % 100;
                let invoked = started.elapsed();
                if roll < settings.streams_per_100 {
                    streams += 1;
                    let command =
                        ClusterCommand::Broker(broker::Command::Stream(StreamCommand::Create {
                            name: format!("stream-{client_id}-{streams}"),
                        }));
                    match client.write(command, settings.deadline).await {
                        Ok(Response::Applied(ClusterReply::Broker(_))) => {
                            outcome.streams_created += 1;
                            outcome
                                .write_latencies_us
                                .push((started.elapsed() - invoked).as_micros() as u64);
                        }
                        Ok(other) => outcome.rejected.push(format!("{other:?}")),
                        Err(_) => outcome.streams_unknown += 1,
                    }
                    continue;
                }
                let (op, result) = if roll < settings.streams_per_100 + settings.reads_per_100 {
                    let read = client.read(ReadQuery::Counter, settings.deadline).await;
                    (
                        CounterOp::Read,
                        read.map(Outcome::Ok).unwrap_or(Outcome::Unknown),
                    )
                } else {
                    let written = client
                        .write(ClusterCommand::CounterAdd, settings.deadline)
                        .await;
                    let result = match written {
                        Ok(Response::Applied(ClusterReply::Counter(value))) => {
                            outcome
                                .write_latencies_us
                                .push((started.elapsed() - invoked).as_micros() as u64);
                            Outcome::Ok(value)
                        }
                        Ok(other) => {
                            // A refusal or a stale answer: recorded, and the
                            // add's effect is unknown to the checker.
                            outcome.rejected.push(format!("{other:?}"));
                            Outcome::Unknown
                        }
                        Err(_) => Outcome::Unknown,
                    };
                    (CounterOp::Add, result)
                };
                outcome.history.push(Operation {
                    client: client_id,
                    op,
                    invoked_ns: invoked.as_nanos() as u64,
                    completed_ns: started.elapsed().as_nanos() as u64,
                    outcome: result,
                });
            }
            outcome
        }));
    }
    let mut all = WorkloadOutcome::default();
    for task in tasks {
        if let Ok(outcome) = task.await {
            all.history.extend(outcome.history);
            all.write_latencies_us.extend(outcome.write_latencies_us);
            all.streams_created += outcome.streams_created;
            all.streams_unknown += outcome.streams_unknown;
            all.rejected.extend(outcome.rejected);
        }
    }
    all
}
