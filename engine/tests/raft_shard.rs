//! A raft node's storage refusing what it must not serve: another
//! cluster's directory, snapshots that no longer reach the journal's
//! watermark, a damaged journal; and a clean restart keeping every
//! acknowledged command. Each test runs a one-node cluster in-process.
#![cfg(feature = "openraft")]

use openraft::error::RPCError;
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use ringstore::raft::cluster::{
    node_status, run_node, ClusterClient, ClusterCommand, ClusterMachine, ClusterReply,
    ClusterTypes, NodeError, NodeSettings, ReadQuery,
};
use ringstore::raft::{RaftStoreError, Response};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

/// Commands each test writes: several snapshots' worth.
const COMMANDS: u64 = 240;
/// Entries between snapshots.
const SNAPSHOT_EVERY: u64 = 50;
/// Bytes of a snapshot one message carries (a snapshot file is larger, so a
/// follower receives it in pieces).
const SNAPSHOT_PIECE_BYTES: usize = 64;

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address")
}

/// A one-node cluster in `dir`, running until the returned sender is
/// dropped or sent to.
struct Node {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), NodeError>>,
    addr: SocketAddr,
}

fn start(dir: &Path, cluster: Uuid) -> Node {
    let addr = free_addr();
    start_member(1, dir, cluster, BTreeMap::from([(1, addr)]), true)
}

fn start_member(
    id: u64,
    dir: &Path,
    cluster: Uuid,
    members: BTreeMap<u64, SocketAddr>,
    initialize: bool,
) -> Node {
    start_configured(id, dir, cluster, members, |s| s.initialize = initialize)
}

/// [`start_member`] with the test's settings changed by `configure`.
fn start_configured(
    id: u64,
    dir: &Path,
    cluster: Uuid,
    members: BTreeMap<u64, SocketAddr>,
    configure: impl FnOnce(&mut NodeSettings),
) -> Node {
    let addr = members[&id];
    let mut settings = NodeSettings::new(id, dir.to_path_buf(), cluster, members);
    settings.snapshot_every_entries = SNAPSHOT_EVERY;
    // A snapshot sent to a follower goes in many pieces.
    settings.snapshot_chunk_bytes = SNAPSHOT_PIECE_BYTES;
    // Its first start, as an operator gives `--new`.
    settings.new_node = !dir.join("identity").exists();
    configure(&mut settings);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_node(settings, async {
        let _ = stopped.await;
    }));
    Node {
        stop: Some(stop),
        task,
        addr,
    }
}

impl Node {
    async fn stop(mut self) -> Result<(), NodeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("the node task")
    }

    /// The node's error if it stopped by itself within a second.
    async fn refusal(self) -> NodeError {
        match tokio::time::timeout(Duration::from_secs(10), self.task).await {
            Ok(Ok(Err(e))) => e,
            other => panic!("expected the node to refuse to start, got {other:?}"),
        }
    }

    fn client(&self) -> ClusterClient {
        ClusterClient::new(BTreeMap::from([(1, self.addr)]), 7)
    }
}

async fn write_counter(node: &Node, commands: u64) {
    let mut client = node.client();
    for expected in 1..=commands {
        let reply = client
            .write(ClusterCommand::CounterAdd, Duration::from_secs(10))
            .await
            .expect("the write is answered");
        assert_eq!(reply, Response::Applied(ClusterReply::Counter(expected)));
    }
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")
}

fn files_in(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}

/// Flips one bit at `offset` of `path`.
fn flip(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[offset] ^= 0x10;
    std::fs::write(path, bytes).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_every_acknowledged_command() {
    let dir = temp_dir();
    let cluster = Uuid::new_v4();
    let node = start(dir.path(), cluster);
    write_counter(&node, COMMANDS).await;
    node.stop().await.expect("a clean stop");
    let node = start(dir.path(), cluster);
    let value = node
        .client()
        .read(ReadQuery::Counter, Duration::from_secs(10))
        .await
        .expect("a read");
    assert_eq!(value, COMMANDS);
    // Snapshots were taken and the log purged behind them.
    assert!(!files_in(&dir.path().join("snapshots"), ".snap").is_empty());
    node.stop().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_directory_is_refused() {
    let dir = temp_dir();
    let node = start(dir.path(), Uuid::new_v4());
    write_counter(&node, 10).await;
    node.stop().await.expect("a clean stop");
    let other = Uuid::new_v4();
    match start(dir.path(), other).refusal().await {
        NodeError::Storage {
            source: RaftStoreError::ForeignData { path, expected, .. },
            ..
        } => {
            assert_eq!(expected, other);
            assert!(path.ends_with("identity"), "{}", path.display());
        }
        e => panic!("expected ForeignData, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_directory_is_refused_not_started_empty() {
    let dir = temp_dir();
    let node_dir = dir.path().join("node-1");
    let cluster = Uuid::new_v4();
    let addr = free_addr();
    let members = BTreeMap::from([(1, addr)]);
    // Not its first start, and no directory: refused, nothing created.
    let refused = start_configured(1, &node_dir, cluster, members.clone(), |s| {
        s.initialize = true;
        s.new_node = false;
    });
    match refused.refusal().await {
        NodeError::Storage {
            source: RaftStoreError::NoShard { path },
            ..
        } => assert_eq!(path, node_dir),
        e => panic!("expected NoShard, got {e}"),
    }
    assert!(!node_dir.exists(), "a refused open creates nothing");

    let node = start_member(1, &node_dir, cluster, members.clone(), true);
    write_counter(&node, 10).await;
    node.stop().await.expect("a clean stop");
    // Its first-start setting left in place: refused, the shard untouched.
    let again = start_configured(1, &node_dir, cluster, members.clone(), |s| {
        s.initialize = true;
        s.new_node = true;
    });
    match again.refusal().await {
        NodeError::Storage {
            source: RaftStoreError::AlreadyCreated { path },
            ..
        } => assert!(path.ends_with("identity"), "{}", path.display()),
        e => panic!("expected AlreadyCreated, got {e}"),
    }
    // Its directory emptied (a wiped host): refused, not an empty voter.
    std::fs::remove_dir_all(&node_dir).unwrap();
    std::fs::create_dir(&node_dir).unwrap();
    let wiped = start_configured(1, &node_dir, cluster, members.clone(), |s| {
        s.initialize = true;
        s.new_node = false;
    });
    match wiped.refusal().await {
        NodeError::Storage {
            source: RaftStoreError::NoShard { path },
            ..
        } => assert_eq!(path, node_dir),
        e => panic!("expected NoShard, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_that_no_longer_reach_the_purged_log_are_refused() {
    let dir = temp_dir();
    let cluster = Uuid::new_v4();
    let node = start(dir.path(), cluster);
    write_counter(&node, COMMANDS).await;
    node.stop().await.expect("a clean stop");
    let snapshots = files_in(&dir.path().join("snapshots"), ".snap");
    assert!(!snapshots.is_empty());
    for snapshot in &snapshots {
        // In the body, past the header block.
        flip(snapshot, 4096 + 3);
    }
    match start(dir.path(), cluster).refusal().await {
        NodeError::Storage {
            source:
                RaftStoreError::Engine(ringstore::Error::SnapshotBehindJournal {
                    journal_watermark,
                    skipped,
                    ..
                }),
            ..
        } => {
            assert!(journal_watermark > 0);
            assert_eq!(skipped.len(), snapshots.len());
        }
        e => panic!("expected SnapshotBehindJournal, got {e}"),
    }
    // The offline check reaches the same verdict.
    let verify = ringstore_cli(dir.path(), &["snapshot", "verify"]);
    assert!(!verify.status.success(), "{verify:?}");
    let said = String::from_utf8_lossy(&verify.stdout).to_string()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(
        said.contains("no usable snapshot covers the journal's watermark"),
        "{said}"
    );
}

/// Runs the `ringstore` CLI on the node directory `dir`.
fn ringstore_cli(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ringstore"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("the ringstore CLI runs")
}

/// Damages a byte of the last entry the journal of the node in `dir`
/// wrote, which is above the watermark (damage to purged entries is no
/// loss) and, after a clean stop, covered by the end it recorded (not a
/// torn tail to cut): the node refuses to open. Returns the segment.
fn damage_last_entry(dir: &Path) -> PathBuf {
    let journal = dir.join("journal");
    let (segment, used) = files_in(&journal, ".wal")
        .into_iter()
        .filter_map(|p| {
            let bytes = std::fs::read(&p).expect("read");
            bytes.iter().rposition(|&b| b != 0).map(|used| (p, used))
        })
        .next_back()
        .expect("a segment with data");
    flip(&segment, used - 16);
    segment
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_is_refused_naming_the_file() {
    let dir = temp_dir();
    let cluster = Uuid::new_v4();
    let node = start(dir.path(), cluster);
    write_counter(&node, COMMANDS).await;
    node.stop().await.expect("a clean stop");
    let segment = damage_last_entry(dir.path());
    let refusal = start(dir.path(), cluster).refusal().await;
    let message = refusal.to_string();
    assert!(
        matches!(
            refusal,
            NodeError::Storage {
                source: RaftStoreError::Journal(_),
                ..
            }
        ),
        "{message}"
    );
    assert!(
        message.contains(&segment.display().to_string()),
        "{message}"
    );
    // The offline check reaches the same verdict, naming the same file.
    let verify = ringstore_cli(dir.path(), &["wal", "verify"]);
    assert!(!verify.status.success(), "{verify:?}");
    let said = String::from_utf8_lossy(&verify.stdout).to_string()
        + &String::from_utf8_lossy(&verify.stderr);
    let segment_name = segment.file_name().unwrap().to_string_lossy().to_string();
    assert!(said.contains(&segment_name), "{said}");
}

/// `ringstore wal salvage` of a raft node's journal cuts entries the node
/// acknowledged, as a cut tail does: the salvage marks the node awaiting
/// repair (the journal's salvage runs the hook the node's open gives it),
/// so the node, alone here, is never elected; `--waive-repair` with
/// another term leaves the mark, with the term it names lifts it, and the
/// node leads again with what the salvage kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_salvaged_journal_leaves_the_node_awaiting_repair_until_waived() {
    let dir = temp_dir();
    let cluster = Uuid::new_v4();
    let members = BTreeMap::from([(1, free_addr())]);
    let start_waiving = |waive: Option<u64>| {
        start_configured(1, dir.path(), cluster, members.clone(), |s| {
            s.initialize = true;
            s.waive_repair_below_term = waive;
        })
    };
    let node = start_waiving(None);
    write_counter(&node, COMMANDS).await;
    node.stop().await.expect("a clean stop");
    damage_last_entry(dir.path());
    let salvaged = ringstore_cli(dir.path(), &["wal", "salvage", "--shard", "0", "--yes"]);
    let said = String::from_utf8_lossy(&salvaged.stdout).to_string()
        + &String::from_utf8_lossy(&salvaged.stderr);
    assert!(salvaged.status.success(), "{said}");
    assert!(
        said.contains("hard state: marked awaiting repair"),
        "{said}"
    );
    let awaiting = |node: &Node| {
        let addr = node.addr;
        async move {
            // Until the node serves, then its status once it has had time
            // to elect itself (a node not awaiting repair is elected in
            // well under a second).
            let started = std::time::Instant::now();
            loop {
                if node_status(addr).await.is_ok() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let status = node_status(addr).await.expect("the node's status");
                    return (status.awaiting_repair, status.leader);
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the node never served"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let node = start_waiving(None);
    let (below_term, leader) = awaiting(&node).await;
    let below_term = below_term.expect("the salvaged node awaits repair");
    assert_eq!(leader, None, "a node awaiting repair was elected");
    node.stop().await.expect("a clean stop");
    let node = start_waiving(Some(below_term + 1));
    let (still, leader) = awaiting(&node).await;
    assert_eq!(
        still,
        Some(below_term),
        "a waiver of another term lifted the mark"
    );
    assert_eq!(leader, None);
    node.stop().await.expect("a clean stop");
    let node = start_waiving(Some(below_term));
    let (lifted, mut leader) = awaiting(&node).await;
    assert_eq!(lifted, None, "the waiver of its term did not lift the mark");
    // Elected in well under a second on an idle machine; a loaded one (an
    // election timeout of up to 800 ms, a vote's fdatasync in a slow
    // spell) may take longer: wait for it.
    let started = std::time::Instant::now();
    while leader.is_none() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        leader = node_status(node.addr)
            .await
            .expect("the node's status")
            .leader;
    }
    assert_eq!(leader, Some(1), "the waived node was not elected");
    let counter = node
        .client()
        .read(ReadQuery::Counter, Duration::from_secs(10))
        .await
        .expect("a read");
    // What the salvage kept (the damaged bytes may be a hard-state record
    // after the last add, so all of them can be kept).
    assert!(
        counter > 0 && counter <= COMMANDS,
        "the salvage kept {counter} of {COMMANDS} adds"
    );
    node.stop().await.expect("a clean stop");
}

/// With no copy of the journal's superblock verifying, salvage cannot tell
/// a raft node's journal from an engine shard's; a raft node's vote was in
/// that superblock, so it refuses and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salvage_refuses_a_journal_whose_owner_it_cannot_tell() {
    let dir = temp_dir();
    let node = start(dir.path(), Uuid::new_v4());
    write_counter(&node, 20).await;
    node.stop().await.expect("a clean stop");
    let superblock = dir.path().join("journal").join("superblock");
    flip(&superblock, 40);
    flip(&superblock, 4096 + 40);
    let before = std::fs::read(&superblock).expect("read");
    let salvaged = ringstore_cli(dir.path(), &["wal", "salvage", "--shard", "0", "--yes"]);
    let said = String::from_utf8_lossy(&salvaged.stdout).to_string()
        + &String::from_utf8_lossy(&salvaged.stderr);
    assert!(!salvaged.status.success(), "{said}");
    assert!(said.contains("cannot tell a raft node's journal"), "{said}");
    assert_eq!(std::fs::read(&superblock).expect("read"), before);
    assert!(!dir.path().join("quarantine").exists());
    // The operator's word that it is an engine shard's lets it go on.
    let args = ["wal", "salvage", "--shard", "0", "--engine-shard", "--yes"];
    let salvaged = ringstore_cli(dir.path(), &args);
    let said = String::from_utf8_lossy(&salvaged.stdout).to_string()
        + &String::from_utf8_lossy(&salvaged.stderr);
    assert!(salvaged.status.success(), "{said}");
    assert!(dir.path().join("quarantine").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_purged_log_installs_the_leaders_snapshot() {
    follower_catches_up_from_a_snapshot(false).await;
}

/// The leader's snapshot file is damaged at rest before it is sent: the
/// leader does not send it (every follower would refuse it, and the one
/// behind would never catch up), builds a new one from its state, which
/// replaces the damaged file, and the follower installs that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_rebuilds_a_damaged_snapshot_rather_than_send_it() {
    follower_catches_up_from_a_snapshot(true).await;
}

/// A follower stops, the others go on until the leader's log starts past
/// everything it holds, and it comes back: only a snapshot brings it up to
/// date. With `damage_leaders_snapshot`, a byte of the leader's newest
/// snapshot file is flipped before the follower comes back.
async fn follower_catches_up_from_a_snapshot(damage_leaders_snapshot: bool) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let root = temp_dir();
    let cluster = Uuid::new_v4();
    let members: BTreeMap<u64, SocketAddr> = (1..=3).map(|id| (id, free_addr())).collect();
    let dir = |id: u64| root.path().join(format!("node-{id}"));
    let mut nodes: BTreeMap<u64, Node> = (1..=3)
        .map(|id| {
            (
                id,
                start_member(id, &dir(id), cluster, members.clone(), id == 1),
            )
        })
        .collect();
    let mut client = ClusterClient::new(members.clone(), 9);
    client
        .write(ClusterCommand::CounterAdd, Duration::from_secs(20))
        .await
        .expect("a first write");
    // A follower stops (whichever of nodes 2 and 3 does not lead); the
    // others go on, snapshot, and purge their logs past everything it
    // holds. A node that just started may not answer yet: ask again.
    let started = std::time::Instant::now();
    let leader = loop {
        match node_status(members[&1]).await {
            Ok(status) if status.leader.is_some() => break status.leader,
            _ => {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "no leader known"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let leader = leader.expect("a leader");
    let follower = if leader == 3 { 2 } else { 3 };
    // What the follower holds when it stops.
    let held = loop {
        match node_status(members[&follower]).await {
            Ok(status) if status.applied_index.is_some() => break status.last_log_index,
            _ => {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "node {follower} never applied the first write"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    nodes
        .remove(&follower)
        .expect("running")
        .stop()
        .await
        .expect("a clean stop");
    for _ in 1..COMMANDS {
        client
            .write(ClusterCommand::CounterAdd, Duration::from_secs(20))
            .await
            .expect("a write");
    }
    // The leader purges only once no replication task reads the entries
    // (openraft postpones it while a request to the stopped follower is in
    // flight, and retries at each failed one): the follower comes back
    // only when the leader's log starts past everything it holds, so
    // nothing but a snapshot can bring it up to date.
    let started = std::time::Instant::now();
    loop {
        let purged = match node_status(members[&leader]).await {
            Ok(status) => status.purged_index,
            Err(_) => None,
        };
        if purged > held {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the leader never purged its log: {purged:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader_snapshots = dir(leader).join("snapshots");
    if damage_leaders_snapshot {
        let newest = files_in(&leader_snapshots, ".snap")
            .into_iter()
            .max()
            .expect("the leader has a snapshot");
        // A byte of the first section.
        flip(&newest, 4096 + 10);
    }
    nodes.insert(
        follower,
        start_member(follower, &dir(follower), cluster, members.clone(), false),
    );
    let started = std::time::Instant::now();
    loop {
        let leading = node_status(members[&leader]).await.ok();
        let behind = node_status(members[&follower]).await.ok();
        if let (Some(leading), Some(behind)) = (leading, behind) {
            if behind.applied_index >= Some(COMMANDS) && behind.counter == COMMANDS {
                assert!(
                    behind.snapshots_installed >= 1,
                    "node {follower} caught up without a snapshot: {behind:?} (leader {leading:?})"
                );
                if damage_leaders_snapshot {
                    assert!(
                        leading.snapshots_rebuilt >= 1,
                        "the leader rebuilt no snapshot: {leading:?}"
                    );
                    // The damaged file was replaced.
                    let found = ringstore::snapshot::inspect::inspect_snapshot_dir(
                        &leader_snapshots,
                        ringstore::snapshot::Check::Full,
                        None,
                        &mut |_| {},
                    )
                    .expect("inspect the leader's snapshots");
                    assert!(found.snapshots.iter().all(|s| s.is_intact()), "{found:#?}");
                } else {
                    assert_eq!(leading.snapshots_rebuilt, 0);
                }
                let largest = std::fs::read_dir(dir(follower).join("snapshots"))
                    .expect("list the snapshots")
                    .filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .max()
                    .unwrap_or(0);
                assert!(
                    largest > 4 * SNAPSHOT_PIECE_BYTES as u64,
                    "the snapshot ({largest} bytes) fit in a few pieces"
                );
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node {follower} did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (_, node) in nodes {
        node.stop().await.expect("a clean stop");
    }
}

/// The names of the threads a Raft's network was called from.
#[derive(Clone, Default)]
struct ThreadsSeen(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl ThreadsSeen {
    fn record(&self) {
        let name = std::thread::current().name().unwrap_or("").to_string();
        self.0.lock().expect("not poisoned").push(name);
    }

    fn names(&self) -> Vec<String> {
        self.0.lock().expect("not poisoned").clone()
    }
}

/// A network whose every peer is unreachable, noting where it was called.
struct RecordingNetwork(ThreadsSeen);

struct RecordingPeer(ThreadsSeen);

fn unreachable() -> RPCError<ClusterTypes> {
    RPCError::Unreachable(openraft::error::Unreachable::new(&std::io::Error::other(
        "no such peer",
    )))
}

impl openraft::network::RaftNetworkFactory<ClusterTypes> for RecordingNetwork {
    type Network = RecordingPeer;

    async fn new_client(&mut self, _target: u64, _node: &openraft::BasicNode) -> RecordingPeer {
        self.0.record();
        RecordingPeer(self.0.clone())
    }
}

impl openraft::network::RaftNetworkV2<ClusterTypes> for RecordingPeer {
    type SnapshotData = std::io::Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<ClusterTypes>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<ClusterTypes>, RPCError<ClusterTypes>> {
        self.0.record();
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<ClusterTypes>,
        _option: RPCOption,
    ) -> Result<VoteResponse<ClusterTypes>, RPCError<ClusterTypes>> {
        self.0.record();
        Err(unreachable())
    }

    async fn full_snapshot(
        &mut self,
        _vote: ringstore::raft::Vote,
        _snapshot: ringstore::raft::SnapshotFile<ClusterTypes>,
        _cancel: impl std::future::Future<Output = openraft::error::ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<ClusterTypes>, openraft::error::StreamingError<ClusterTypes>> {
        self.0.record();
        Err(unreachable().into())
    }
}

/// The cluster's Raft runs on its shard's reactor thread (`start_raft` with
/// `ReactorRuntime`), not on tokio's: openraft's core calls its network
/// (an election towards an unreachable second member) from there. A Raft
/// started there stops (its tick task, waiting on a timer when the
/// reactor ends, is reported as cancelled rather than awaited forever),
/// the shard closes once openraft's tasks let go of it, and the directory
/// opens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_runs_on_the_shards_reactor() {
    let dir = temp_dir();
    let domain = Uuid::new_v4();
    let stores = ringstore::raft::open::<ClusterTypes, ClusterMachine>(
        dir.path().join("node-1"),
        domain,
        1,
        ringstore::raft::Creation::IfMissing,
        Box::new(|b| b),
    )
    .expect("the shard opens");
    let config = openraft::Config {
        heartbeat_interval: 20,
        election_timeout_min: 50,
        election_timeout_max: 100,
        ..Default::default()
    };
    let config = std::sync::Arc::new(config.validate().expect("a valid configuration"));
    let seen = ThreadsSeen::default();
    let closed = stores.log.closed();
    let raft = stores
        .start_raft(1, config, RecordingNetwork(seen.clone()))
        .await
        .expect("openraft starts");
    let members = BTreeMap::from([
        (1, openraft::BasicNode::default()),
        (2, openraft::BasicNode::default()),
    ]);
    raft.initialize(members).await.expect("initialized");
    for _ in 0..500 {
        if seen.names().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::timeout(Duration::from_secs(10), raft.shutdown())
        .await
        .expect("shutdown returns")
        .expect("a clean shutdown");
    drop(raft);
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the shard closes once openraft has let go of it");
    let reopened = ringstore::raft::open::<ClusterTypes, ClusterMachine>(
        dir.path().join("node-1"),
        domain,
        1,
        ringstore::raft::Creation::IfMissing,
        Box::new(|b| b),
    )
    .expect("the directory opens again");
    let closed = reopened.log.closed();
    drop(reopened);
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the reopened shard closes");
    let names = seen.names();
    assert!(names.len() >= 2, "the network was hardly called: {names:?}");
    assert!(
        names.iter().all(|n| n == "ringstore-raft-node-1"),
        "openraft ran off the shard's reactor: {names:?}"
    );
}

/// A task run on the shard's reactor that panics is reported as a typed
/// error, and the reactor (with the journal on it) goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_panics_on_the_reactor_leaves_the_shard_serving() {
    let dir = temp_dir();
    let stores = ringstore::raft::open::<ClusterTypes, ClusterMachine>(
        dir.path().join("node-1"),
        Uuid::new_v4(),
        1,
        ringstore::raft::Creation::IfMissing,
        Box::new(|b| b),
    )
    .expect("the shard opens");
    let panicked = stores
        .log
        .on_reactor(|| async {
            if std::hint::black_box(true) {
                panic!("planted");
            }
        })
        .await;
    match panicked {
        Err(RaftStoreError::TaskPanicked { message }) => assert!(message.contains("planted")),
        other => panic!("expected TaskPanicked, got {other:?}"),
    }
    let answer = stores.log.on_reactor(|| async { 42 }).await;
    assert_eq!(answer.expect("the reactor still runs tasks"), 42);
    stores
        .log
        .journal_stats()
        .await
        .expect("the journal still answers");
}
