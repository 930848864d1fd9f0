//! The replicated cluster under faults, with real processes: three
//! `ringstore cluster node` processes on loopback, a concurrent client
//! workload (counter adds and linearizable reads, broker stream creations),
//! and a nemesis that SIGKILLs the leader or a follower and restarts it, and
//! cuts a node off from the others and heals it. Afterwards every node must
//! have applied the same commands (same applied index, same state digest),
//! the counter history must be linearizable (every acknowledged add applied
//! exactly once, no stale read), and the stream count must lie between the
//! acknowledged and the attempted creations. Bounded in time: a workload of
//! `WORKLOAD_SECS` and a settle of at most `SETTLE_SECS`.
#![cfg(feature = "openraft")]

use ringstore::broker::gen::splitmix64;
use ringstore::raft::cluster::{
    node_status, run_workload, set_partition, ClusterClient, ClusterCommand, ClusterReply, NodeId,
    NodeStatus, ReadQuery, WorkloadSettings,
};
use ringstore::raft::linearizability::check_counter;
use ringstore::raft::Response;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the workload (and the nemesis) runs.
const WORKLOAD_SECS: u64 = 20;
/// Longest the nodes get to agree once the faults stop.
const SETTLE_SECS: u64 = 60;
/// Entries between snapshots: small, so snapshots, purges and snapshot
/// installs on a restarted follower happen during the run.
const SNAPSHOT_EVERY: u64 = 300;
/// Leaders killed and restarted at once in the restart test.
const LEADER_RESTARTS: u64 = 4;
/// Counter adds before each of those kills.
const ADDS_BEFORE_KILL: u64 = 20;

struct Cluster {
    cluster: uuid::Uuid,
    members: BTreeMap<NodeId, SocketAddr>,
    dirs: BTreeMap<NodeId, PathBuf>,
    children: BTreeMap<NodeId, Child>,
}

impl Cluster {
    fn start(root: &Path) -> Cluster {
        // Free ports: bound and released (a collision fails the start, not
        // silently the test).
        let members: BTreeMap<NodeId, SocketAddr> = (1..=3)
            .map(|id| {
                let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
                (id, listener.local_addr().expect("its address"))
            })
            .collect();
        let dirs = members
            .keys()
            .map(|&id| (id, root.join(format!("node-{id}"))))
            .collect();
        let mut cluster = Cluster {
            cluster: uuid::Uuid::new_v4(),
            members,
            dirs,
            children: BTreeMap::new(),
        };
        for id in 1..=3 {
            cluster.spawn(id, id == 1);
        }
        cluster
    }

    fn spawn(&mut self, id: NodeId, init: bool) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringstore"));
        command
            .arg("--data-dir")
            .arg(&self.dirs[&id])
            .args(["cluster", "node", "--id", &id.to_string()])
            .args(["--cluster", &self.cluster.to_string()])
            .args(["--snapshot-every", &SNAPSHOT_EVERY.to_string()])
            .stdout(Stdio::null());
        // RAFT_CLUSTER_NODE_LOG=<filter> shows the nodes' logs (prefixed by
        // nothing: each line names its node).
        match std::env::var("RAFT_CLUSTER_NODE_LOG") {
            Ok(filter) => command.env("RUST_LOG", filter).stderr(Stdio::inherit()),
            Err(_) => command.env("RUST_LOG", "error").stderr(Stdio::null()),
        };
        for (member, addr) in &self.members {
            command.arg("--member").arg(format!("{member}={addr}"));
        }
        // Its first start, as an operator gives `--new`.
        if !self.dirs[&id].join("identity").exists() {
            command.arg("--new");
        }
        if init {
            command.arg("--init");
        }
        let child = command.spawn().expect("start a node");
        self.children.insert(id, child);
    }

    /// SIGKILL: no clean close, unsynced page cache aside.
    fn kill(&mut self, id: NodeId) {
        if let Some(mut child) = self.children.remove(&id) {
            child.kill().expect("SIGKILL a node");
            let _ = child.wait();
        }
    }

    async fn wait_for_leader(&self) -> NodeId {
        let started = Instant::now();
        loop {
            if let Some(leader) = self.leader().await {
                return leader;
            }
            assert!(
                started.elapsed() < Duration::from_secs(SETTLE_SECS),
                "no leader elected"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn leader(&self) -> Option<NodeId> {
        for addr in self.members.values() {
            if let Ok(status) = node_status(*addr).await {
                if status.leader == Some(status.id) {
                    return Some(status.id);
                }
            }
        }
        None
    }

    async fn heal(&self) {
        for addr in self.members.values() {
            let _ = set_partition(*addr, Vec::new()).await;
        }
    }

    async fn statuses(&self) -> Vec<NodeStatus> {
        let mut statuses = Vec::new();
        for addr in self.members.values() {
            if let Ok(status) = node_status(*addr).await {
                statuses.push(status);
            }
        }
        statuses
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut child) in std::mem::take(&mut self.children) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Debug, Default)]
struct Faults {
    leader_kills: u32,
    follower_kills: u32,
    partitions: u32,
}

async fn nemesis(cluster: &mut Cluster, seed: u64, until: Instant) -> Faults {
    let mut rng = splitmix64(seed);
    let mut faults = Faults::default();
    // The first fault is a kill and the second a partition, so every run
    // has both (a coin per fault left one kind out of one run in a loop of
    // 8, failing the check below with nothing else wrong);
    // the rest are drawn.
    let mut round = 0u64;
    while Instant::now() + Duration::from_millis(2_500) < until {
        tokio::time::sleep(Duration::from_millis(700 + rng() % 800)).await;
        let leader = cluster.leader().await;
        let ids: Vec<NodeId> = cluster.members.keys().copied().collect();
        let victim = match (rng() % 3, leader) {
            (0 | 1, Some(leader)) => leader,
            _ => ids[(rng() % ids.len() as u64) as usize],
        };
        let kill = match round {
            0 => true,
            1 => false,
            _ => rng().is_multiple_of(2),
        };
        round += 1;
        if kill {
            if Some(victim) == leader {
                faults.leader_kills += 1;
            } else {
                faults.follower_kills += 1;
            }
            cluster.kill(victim);
            tokio::time::sleep(Duration::from_millis(300 + rng() % 1_200)).await;
            cluster.spawn(victim, false);
        } else {
            faults.partitions += 1;
            let others: Vec<NodeId> = ids.iter().copied().filter(|&id| id != victim).collect();
            let _ = set_partition(cluster.members[&victim], others.clone()).await;
            for other in &others {
                let _ = set_partition(cluster.members[other], vec![victim]).await;
            }
            tokio::time::sleep(Duration::from_millis(500 + rng() % 1_500)).await;
            cluster.heal().await;
        }
    }
    faults
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kills_restarts_and_partitions_lose_nothing_acknowledged() {
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let mut cluster = Cluster::start(root.path());
    cluster.wait_for_leader().await;
    // The fault schedule and the workload are drawn from the seed; timing
    // is real, so a seed replays the schedule, not the interleaving.
    let seed = match std::env::var("RINGSTORE_RAFT_SEED") {
        Ok(seed) => seed.parse().expect("RINGSTORE_RAFT_SEED: a u64"),
        Err(_) => 0x5eed ^ std::process::id() as u64,
    };
    eprintln!(
        "raft cluster fault test: seed {seed} (RINGSTORE_RAFT_SEED={seed} replays its schedule)"
    );
    let until = Instant::now() + Duration::from_secs(WORKLOAD_SECS);
    let workload = tokio::spawn(run_workload(
        cluster.members.clone(),
        WorkloadSettings {
            clients: 6,
            duration: Duration::from_secs(WORKLOAD_SECS),
            deadline: Duration::from_secs(3),
            seed,
            ..Default::default()
        },
        1,
    ));
    let faults = nemesis(&mut cluster, seed, until).await;
    let outcome = workload.await.expect("the workload ran");

    // Faults over: heal, make sure every node runs, and wait for agreement.
    cluster.heal().await;
    for id in 1..=3 {
        if !cluster.children.contains_key(&id) {
            cluster.spawn(id, false);
        }
    }
    let settle = Instant::now();
    let statuses = loop {
        let statuses = cluster.statuses().await;
        let agree = statuses.len() == 3
            && statuses.iter().all(|s| s.applied_index.is_some())
            && statuses
                .windows(2)
                .all(|w| (w[0].applied_index, w[0].digest) == (w[1].applied_index, w[1].digest));
        if agree {
            break statuses;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(SETTLE_SECS),
            "the nodes did not agree within {SETTLE_SECS} s: {statuses:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let final_value = statuses[0].counter;
    let summary = check_counter(&outcome.history, Some(final_value))
        .unwrap_or_else(|v| panic!("the counter history is not linearizable: {v}"));
    assert!(
        outcome.rejected.is_empty(),
        "refused: {:?}",
        outcome.rejected
    );
    let streams = statuses[0].streams;
    assert!(
        streams >= outcome.streams_created
            && streams <= outcome.streams_created + outcome.streams_unknown,
        "{streams} streams, {} acknowledged, {} unknown",
        outcome.streams_created,
        outcome.streams_unknown
    );
    assert!(faults.leader_kills + faults.follower_kills > 0 && faults.partitions > 0);
    assert!(summary.adds_acknowledged > 0 && summary.reads_checked > 0);
    println!(
        "raft cluster faults: {} leader kills, {} follower kills, {} partitions in {WORKLOAD_SECS} s; \
         {} adds acknowledged, {} of {} unknown applied, {} reads checked, {} streams \
         ({} acknowledged, {} unknown); every node at applied index {:?}, digest {:016x}; \
         agreed {:.1} s after the faults stopped; 0 violations",
        faults.leader_kills,
        faults.follower_kills,
        faults.partitions,
        summary.adds_acknowledged,
        summary.adds_unknown_applied,
        summary.adds_unknown,
        summary.reads_checked,
        streams,
        outcome.streams_created,
        outcome.streams_unknown,
        statuses[0].applied_index,
        statuses[0].digest,
        settle.elapsed().as_secs_f64(),
    );
}

/// A leader SIGKILLed and restarted at once, before its followers time
/// out: openraft alone brings it straight back as leader of its old
/// term, whose read index then rests on the committed id it saved, which
/// may lag the adds it acknowledged (the fault test above once read 725
/// after an add had returned 726). Each round: adds, kill and restart the
/// leader, then a linearizable read must see the last add, and the
/// restarted node must never report itself leader of its old term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_at_once_serves_no_stale_read() {
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let mut cluster = Cluster::start(root.path());
    let deadline = Duration::from_secs(10);
    let mut client = ClusterClient::new(cluster.members.clone(), 1);
    let mut resumed = Vec::new();
    for round in 0..LEADER_RESTARTS {
        let leader = cluster.wait_for_leader().await;
        let mut last = 0;
        for _ in 0..ADDS_BEFORE_KILL {
            match client.write(ClusterCommand::CounterAdd, deadline).await {
                Ok(Response::Applied(ClusterReply::Counter(value))) => last = value,
                other => panic!("round {round}: an add failed: {other:?}"),
            }
        }
        let term = node_status(cluster.members[&leader])
            .await
            .map(|s| s.term)
            .unwrap_or_else(|e| panic!("round {round}: the leader's status: {e}"));
        cluster.kill(leader);
        cluster.spawn(leader, false);
        let read = client
            .read(ReadQuery::Counter, deadline)
            .await
            .unwrap_or_else(|e| panic!("round {round}: the read failed: {e}"));
        // The restarted node, until some node leads again.
        let started = Instant::now();
        loop {
            if let Ok(status) = node_status(cluster.members[&leader]).await {
                if status.leader == Some(leader) && status.term <= term {
                    resumed.push((round, status.term));
                }
                if status.leader.is_some() {
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(SETTLE_SECS),
                "round {round}: the restarted node never saw a leader"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            read >= last,
            "round {round}: a linearizable read after node {leader} (leader of term {term}) \
             was killed and restarted returned {read}, but an add had returned {last}"
        );
    }
    assert!(
        resumed.is_empty(),
        "restarted leaders reported themselves leader of their old term (round, term): {resumed:?}"
    );
}

/// How long a cluster whose leader is down and whose other follower
/// awaits repair is watched for a leader it must not elect.
const NO_LEADER_WATCH: Duration = Duration::from_secs(3);

/// Damages the first entry header of the last write of the journal in
/// `journal_dir`: nothing after it vouches for it, so a reopen cuts it, as
/// it cuts a write torn by a crash (or damaged after its fdatasync, which
/// looks the same).
fn damage_last_write(journal_dir: &Path) {
    let (path, offset) = ringstore_journal::inspect::last_write(journal_dir)
        .expect("scan the journal")
        .expect("the journal has a write");
    let mut bytes = std::fs::read(&path).expect("read the segment");
    bytes[offset as usize + 40] ^= 0xff;
    std::fs::write(&path, bytes).expect("write the segment");
}

/// Waits until node `id` reports `awaiting_repair` as `want`.
async fn wait_for_repair_state(cluster: &Cluster, id: NodeId, want: bool) {
    let started = Instant::now();
    loop {
        if let Ok(status) = node_status(cluster.members[&id]).await {
            if status.awaiting_repair.is_some() == want {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(SETTLE_SECS),
            "node {id} never reported awaiting repair = {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A follower whose journal's tail its reopen cut may have lost entries
/// it acknowledged: it must neither vote nor stand for election until an
/// entry of a later term is committed on it (the raft module's "Uncertain
/// tail"). First the follower is SIGKILLed, its journal's last write
/// damaged, and it is restarted beside the live leader: it asks that leader
/// to hand its leadership off, the third node is elected in a later term,
/// and that term's first commit repairs the follower, with no other node
/// stopped. Then the same again, but with the leader killed before the
/// follower restarts: the two nodes up could elect a leader only with the
/// follower's vote, and none is elected. With that leader back a leader is
/// elected, the follower is repaired, and every acknowledged add is on
/// every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_cut_tail_neither_votes_nor_leads_until_repaired() {
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let mut cluster = Cluster::start(root.path());
    let deadline = Duration::from_secs(10);
    let mut client = ClusterClient::new(cluster.members.clone(), 1);
    let leader = cluster.wait_for_leader().await;
    let mut last = 0;
    let add = async |client: &mut ClusterClient| match client
        .write(ClusterCommand::CounterAdd, deadline)
        .await
    {
        Ok(Response::Applied(ClusterReply::Counter(value))) => value,
        other => panic!("an add failed: {other:?}"),
    };
    for _ in 0..ADDS_BEFORE_KILL {
        last = add(&mut client).await;
    }
    // Every node holds the adds, so the follower's journal has writes.
    wait_for_counters(&cluster, last).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let other = (1..=3)
        .find(|id| *id != leader && *id != follower)
        .expect("a third node");
    let term_before = node_status(cluster.members[&leader])
        .await
        .expect("the leader's status")
        .term;

    // Beside a live leader: the handoff ends the repair.
    cluster.kill(follower);
    damage_last_write(&cluster.dirs[&follower].join("journal"));
    cluster.spawn(follower, false);
    let started = Instant::now();
    while cluster.leader().await != Some(other) {
        assert!(
            started.elapsed() < Duration::from_secs(SETTLE_SECS),
            "node {leader} kept the leadership while node {follower} awaited repair"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_repair_state(&cluster, follower, false).await;
    let repaired = node_status(cluster.members[&follower])
        .await
        .expect("the follower's status");
    assert!(
        repaired.term > term_before,
        "repaired in term {}, not after term {term_before}",
        repaired.term
    );
    for _ in 0..ADDS_BEFORE_KILL {
        last = add(&mut client).await;
    }
    wait_for_counters(&cluster, last).await;

    // With the leader down: no election without the follower's vote.
    let leader = other;
    cluster.kill(follower);
    damage_last_write(&cluster.dirs[&follower].join("journal"));
    cluster.kill(leader);
    cluster.spawn(follower, false);
    wait_for_repair_state(&cluster, follower, true).await;
    let started = Instant::now();
    while started.elapsed() < NO_LEADER_WATCH {
        assert_eq!(
            cluster.leader().await,
            None,
            "a leader was elected while node {leader} was down and node {follower} awaited repair"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.spawn(leader, false);
    cluster.wait_for_leader().await;
    wait_for_repair_state(&cluster, follower, false).await;
    let read = client
        .read(ReadQuery::Counter, deadline)
        .await
        .expect("a read after the repair");
    assert_eq!(read, last, "acknowledged adds are missing");
    wait_for_counters(&cluster, last).await;
}

/// Waits until every node has applied the adds up to `value`.
async fn wait_for_counters(cluster: &Cluster, value: u64) {
    let started = Instant::now();
    loop {
        let counters: Vec<u64> = cluster.statuses().await.iter().map(|s| s.counter).collect();
        if counters == [value; 3] {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(SETTLE_SECS),
            "the nodes' counters never reached {value}: {counters:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
