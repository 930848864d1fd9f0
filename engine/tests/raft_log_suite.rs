//! openraft's storage test suite (`openraft::testing::log::Suite::test_all`)
//! against `ringstore::raft`'s log and state machine on real O_DIRECT
//! files (journal and snapshot files), hosting a small engine machine.
#![cfg(feature = "openraft")]
// openraft's `StorageError` is large, and its traits return it.
#![allow(clippy::result_large_err)]

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{BasicNode, StorageError};
use ringstore::machine::{decode_records, FrozenSection, RecordsEncoder, RestoreError, SectionSet};
use ringstore::raft::{LeaderId, LogId, RaftLog, RaftMachine, Request, Response};
use ringstore::{OpId, StateMachine};
use std::io::Cursor;

/// A machine for the suite (which applies only blank and membership
/// entries): a list of the strings applied, as one snapshot section.
#[derive(Default)]
struct Strings(Vec<String>);

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl StateMachine for Strings {
    type Command = String;
    type Reply = usize;
    type Rejection = Never;

    fn apply(&mut self, _at: OpId, command: String) -> Result<usize, Never> {
        self.0.push(command);
        Ok(self.0.len())
    }

    fn freeze(&self) -> Vec<FrozenSection> {
        vec![FrozenSection {
            name: "strings",
            version: 1,
            encoder: Box::new(RecordsEncoder::new(
                self.0.len(),
                self.0.clone().into_iter(),
            )),
        }]
    }

    fn restore(sections: &mut SectionSet) -> Result<Self, RestoreError> {
        let (_, bytes) = sections.take("strings", 1..=1)?;
        let mut strings = Vec::new();
        decode_records(&bytes, |s: String| {
            strings.push(s);
            Ok(())
        })?;
        Ok(Strings(strings))
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Request<String>,
        R = Response<usize>,
        NodeId = u64,
        Node = BasicNode,
);

/// A log entry of the suite's configuration.
type Entry = openraft::Entry<LeaderId, ringstore::raft::Payload<TypeConfig>>;

/// The log id of `index` in `term`.
fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(LeaderId { term, node_id: 0 }, index)
}

type Log = RaftLog<TypeConfig, Strings>;
type Machine = RaftMachine<TypeConfig, Strings>;

/// The cluster every case's node belongs to: the suite installs one
/// store's snapshot on another, which a node refuses across clusters.
const CLUSTER: uuid::Uuid = uuid::Uuid::from_u128(0x5eed_cafe_0000_4000_8000_0000_0000_0001);

/// Opens node `node`'s shard in `dir` with small segments and ring (the
/// cases below that need no more).
fn open_node(
    dir: &std::path::Path,
    node: u64,
) -> Result<(Log, Machine), ringstore::raft::RaftStoreError> {
    ringstore::raft::open::<TypeConfig, Strings>(
        dir,
        CLUSTER,
        node,
        ringstore::raft::Creation::IfMissing,
        Box::new(|b| b.segment_bytes(4 << 20).slot_count(1 << 10)),
    )
    .map(|stores| (stores.log, stores.machine))
}

/// A fresh shard under `target/` (O_DIRECT needs a real disk) for each
/// case; the directory lives as long as the case.
struct Builder;

impl StoreBuilder<TypeConfig, Log, Machine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, Log, Machine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let stores = ringstore::raft::open::<TypeConfig, Strings>(
            dir.path().join("node"),
            CLUSTER,
            1,
            ringstore::raft::Creation::IfMissing,
            Box::new(|b| b.segment_bytes(4 << 20).slot_count(1 << 12)),
        )
        .expect("open the raft shard");
        Ok((dir, stores.log, stores.machine))
    }
}

#[test]
fn openraft_storage_suite_passes_on_the_journal() -> Result<(), StorageError<TypeConfig>> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    TypeConfig::run(Suite::test_all(Builder))
}

mod truncation {
    use super::*;
    use openraft::storage::{
        RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine,
    };
    use openraft::EntryPayload;

    /// Entries written: with `SEGMENT_BYTES` segments and `PAYLOAD_BYTES`
    /// payloads they span several segments.
    const ENTRIES: u64 = 48;
    /// Small segments, so the log spans several.
    const SEGMENT_BYTES: u64 = 4 << 20;
    /// Each entry's payload, in bytes.
    const PAYLOAD_BYTES: usize = 192 << 10;
    /// Entries purged (the journal's watermark) before truncating.
    const PURGED: u64 = 8;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Request {
                client: term,
                seq: index,
                command: format!("{term}:{index}:").repeat(PAYLOAD_BYTES / 8),
            }),
        }
    }

    fn open(dir: &std::path::Path) -> (Log, Machine) {
        let stores = ringstore::raft::open::<TypeConfig, Strings>(
            dir,
            CLUSTER,
            1,
            ringstore::raft::Creation::IfMissing,
            Box::new(|b| b.segment_bytes(SEGMENT_BYTES).slot_count(1 << 10)),
        )
        .expect("open the raft shard");
        (stores.log, stores.machine)
    }

    async fn terms(log: &mut Log) -> Vec<(u64, u64)> {
        log.try_get_log_entries(0..)
            .await
            .expect("read the log")
            .iter()
            .map(|e| (e.log_id.index, e.log_id.leader_id.term))
            .collect()
    }

    /// At every index above the purged ones: truncate there, reopen, check
    /// that nothing at or above it is served, write those indexes again in
    /// a later term, reopen, check the new entries. Below the purged index
    /// a truncation is refused.
    #[test]
    fn truncation_at_every_position_across_segments_and_above_the_watermark() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
            let dir = root.path().join("node");
            let (mut log, mut machine) = open(&dir);
            log.blocking_append((0..ENTRIES).map(|i| entry(1, i)))
                .await
                .expect("append");
            // A snapshot holds what is purged (open refuses a gap).
            machine
                .apply(futures_lite::stream::iter(
                    (0..PURGED).map(|i| Ok((entry(1, i), None))),
                ))
                .await
                .expect("apply");
            machine
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .expect("snapshot");
            log.purge(log_id(1, PURGED - 1)).await.expect("purge");
            let segments = std::fs::read_dir(dir.join("journal"))
                .expect("list")
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".wal"))
                })
                .count();
            assert!(
                segments >= 3,
                "the log should span segments, has {segments}"
            );
            // Below (or at) the purged entries: refused, nothing changes.
            let refused = log.truncate_after(Some(log_id(1, PURGED - 3))).await;
            assert!(
                refused.is_err(),
                "a truncation below the purged log was accepted"
            );
            let mut term = 1;
            for at in (PURGED..ENTRIES).rev() {
                log.truncate_after(Some(log_id(term, at - 1)))
                    .await
                    .unwrap_or_else(|e| panic!("truncate at {at}: {e}"));
                drop((log, machine));
                let (mut reopened, reopened_machine) = open(&dir);
                let kept = terms(&mut reopened).await;
                assert_eq!(
                    kept.last().map(|(index, _)| *index),
                    Some(at - 1).filter(|&i| i >= PURGED),
                    "after truncating at {at}"
                );
                let state = reopened.get_log_state().await.expect("log state");
                assert_eq!(state.last_log_id.map(|id| id.index), Some(at - 1));
                term += 1;
                reopened
                    .blocking_append((at..ENTRIES).map(|i| entry(term, i)))
                    .await
                    .expect("append again");
                drop((reopened, reopened_machine));
                let (mut again, again_machine) = open(&dir);
                let read = again
                    .try_get_log_entries(at..ENTRIES)
                    .await
                    .expect("read back");
                assert_eq!(read.len() as u64, ENTRIES - at);
                for e in &read {
                    assert_eq!(e.log_id.leader_id.term, term, "index {}", e.log_id.index);
                    assert_eq!(e, &entry(term, e.log_id.index));
                }
                (log, machine) = (again, again_machine);
            }
        });
    }
}

mod received_snapshots {
    use super::*;
    use openraft::storage::RaftStateMachine;
    use ringstore::raft::{SnapshotMeta, StoredMembership};
    use ringstore::snapshot::SnapshotStore;
    use ringstore_journal::storage::DmaStorage;

    /// A snapshot file at op `op` that verifies (checksums, this cluster)
    /// and whose raft section has a version this build does not read, as a
    /// leader running another build could send.
    fn snapshot_of_another_build(op: u64) -> Vec<u8> {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
                let store = SnapshotStore::open(DmaStorage::new(), dir.path().join("snapshots"))
                    .await
                    .expect("a snapshot store");
                let raft = FrozenSection {
                    name: ringstore::raft::RAFT_SECTION,
                    version: 99,
                    encoder: Box::new(RecordsEncoder::new(1, vec![String::new()].into_iter())),
                };
                let mut sections = Strings(vec!["applied".into()]).freeze();
                sections.push(raft);
                let meta = store
                    .persist(sections, op, 1, CLUSTER)
                    .await
                    .expect("persist");
                std::fs::read(&meta.path).expect("read the snapshot")
            })
            .expect("an executor")
            .join()
            .expect("the executor's result")
    }

    fn snapshot_files(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_dir(dir.join("snapshots"))
            .expect("list snapshots")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    /// Before the fix the file was installed first and restored second: the
    /// install failed, and every later open refused the node over the file
    /// it had kept.
    #[test]
    fn a_received_snapshot_this_build_cannot_restore_is_refused_before_it_is_installed() {
        let bytes = snapshot_of_another_build(10);
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
            let dir = root.path().join("node");
            let open = || {
                ringstore::raft::open::<TypeConfig, Strings>(
                    &dir,
                    CLUSTER,
                    1,
                    ringstore::raft::Creation::IfMissing,
                    Box::new(|b| b.segment_bytes(4 << 20).slot_count(1 << 10)),
                )
            };
            let stores = open().expect("open the raft shard");
            let mut machine = stores.machine;
            let meta = SnapshotMeta::<TypeConfig> {
                last_log_id: Some(log_id(1, 9)),
                last_membership: StoredMembership::<TypeConfig>::default(),
            };
            let refused = machine.install_snapshot(&meta, Cursor::new(bytes)).await;
            let message = refused
                .expect_err("installed a snapshot it cannot restore")
                .to_string();
            assert!(message.contains("raft"), "{message}");
            assert_eq!(snapshot_files(&dir), Vec::<String>::new());
            drop((stores.log, machine));
            let reopened = open().expect("the node reopens");
            drop(reopened);
        });
    }
}

mod node_identity {
    use super::open_node as open;
    use ringstore::raft::RaftStoreError;

    /// A node given another node's directory (a swapped disk, a wrong
    /// backup) would serve that node's log and vote: refused, naming both.
    /// (A journal that holds nothing, not even a vote, is taken by whoever
    /// opens it: there is nothing to mix up.)
    #[test]
    fn another_nodes_directory_of_the_same_cluster_is_refused() {
        let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let dir = root.path().join("node-1");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let (mut log, machine) = open(&dir, 1).expect("node 1 creates its directory");
            // A journal that holds nothing takes any owner: node 1 votes.
            openraft::storage::RaftLogStorage::save_vote(
                &mut log,
                &ringstore::raft::Vote::new(3, 1),
            )
            .await
            .expect("save the vote");
            drop((log, machine));
        });
        match open(&dir, 2) {
            Err(
                error @ RaftStoreError::OtherNode {
                    node: 2,
                    recorded: 1,
                    ..
                },
            ) => {
                assert_eq!(error.kind(), "other_node");
                let message = error.to_string();
                assert!(message.contains("journal/superblock"), "{message}");
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("node 2 opened node 1's journal"),
        }
        drop(open(&dir, 1).expect("node 1 reopens its own directory"));
        match open(&root.path().join("node-big"), 1 << 40) {
            Err(RaftStoreError::NodeId { node }) => assert_eq!(node, 1 << 40),
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("a node id the journal cannot record was accepted"),
        }
    }
}

mod restart {
    use super::*;
    use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
    use ringstore::raft::Vote;

    fn open(dir: &std::path::Path) -> Log {
        open_node(dir, 1).expect("open the raft shard").0
    }

    /// openraft brings a node whose saved vote is its own committed one
    /// straight back as leader (unless `Config::enable_leader_restore` is
    /// off), and its read index then rests on the committed id it saved,
    /// which may lag: a reopened shard's own
    /// committed vote is uncommitted (same term, same candidate), so a
    /// restarted leader is elected again before it serves. Within one open,
    /// a vote reads back as saved.
    #[test]
    fn a_reopened_shard_holds_its_vote_uncommitted() {
        let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let dir = root.path().join("node");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let mut log = open(&dir);
            // The entries the committed id below covers (a record never
            // holds a committed id above the log it follows).
            log.blocking_append((0..=41).map(|index| Entry {
                log_id: log_id(7, index),
                payload: openraft::EntryPayload::Blank,
            }))
            .await
            .expect("append");
            let committed = Vote::new_committed(7, 1);
            log.save_vote(&committed).await.expect("save the vote");
            let at = LogId::new(
                LeaderId {
                    term: 7,
                    node_id: 1,
                },
                41,
            );
            log.save_committed(Some(at)).await.expect("save committed");
            assert_eq!(log.read_vote().await.expect("read"), Some(committed));
            drop(log);

            let mut reopened = open(&dir);
            let vote = reopened.read_vote().await.expect("read the vote");
            assert_eq!(vote, Some(Vote::new(7, 1)), "the vote after a reopen");
            assert!(vote.is_some_and(|v| !v.is_committed()));
            // The rest of the hard state is as saved (the committed id,
            // which waits for the next write, went out with the close).
            assert_eq!(
                reopened.read_committed().await.expect("read committed"),
                Some(at)
            );
            // Another leader's votes are kept as they are: uncommitted, and
            // committed (a follower honours its leader's lease after a
            // restart).
            for vote in [Vote::new(8, 2), Vote::new_committed(9, 2)] {
                reopened.save_vote(&vote).await.expect("save a vote");
                drop(reopened);
                reopened = open(&dir);
                assert_eq!(
                    reopened.read_vote().await.expect("read the vote"),
                    Some(vote)
                );
            }
        });
    }
}

mod reads {
    use super::*;
    use openraft::storage::{RaftLogReader, RaftLogStorageExt};
    use openraft::EntryPayload;

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: log_id(1, index),
            payload: EntryPayload::Blank,
        }
    }

    /// openraft replicates and applies what a read returns as one run of
    /// indexes: a read over a hole (an index never written, which openraft
    /// itself does not make) returns the run before it, never the entries
    /// on both sides as if they were adjacent. (Before this, it returned
    /// 0, 1, 2, 4, 5.)
    #[test]
    fn a_read_ends_at_the_first_index_not_held() {
        let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let dir = root.path().join("node");
        runtime.block_on(async {
            // An append that leaves a gap is refused (see below); a
            // never-written log may start anywhere, and an append below the
            // log's end is taken, so this is the one way left to make the
            // hole. Reopened, so that the reads come from the journal (the
            // tail cache holds the newest run only).
            let (mut log, machine) = open_node(&dir, 1).expect("open the raft shard");
            log.blocking_append([4, 5].map(blank))
                .await
                .expect("append");
            log.blocking_append((0..3).map(blank))
                .await
                .expect("append");
            drop((log, machine));
            let (mut log, _machine) = open_node(&dir, 1).expect("reopen the raft shard");
            let indexes = |entries: Vec<Entry>| -> Vec<u64> {
                entries.iter().map(|e| e.log_id.index).collect()
            };
            let read = log.try_get_log_entries(0..6).await.expect("read");
            assert_eq!(indexes(read), vec![0, 1, 2]);
            // A read that starts in the hole begins after it (as one that
            // starts below a log's first index does).
            let read = log.try_get_log_entries(3..6).await.expect("read");
            assert_eq!(indexes(read), vec![4, 5]);
            let read = log.try_get_log_entries(4..).await.expect("read");
            assert_eq!(indexes(read), vec![4, 5]);
        });
    }

    /// An append whose first entry is past the log's next index is refused
    /// and writes nothing: the log would have a hole, and a node whose log
    /// ends past a hole can win an election with entries it does not hold
    /// (openraft builds a request from whatever a read returns, and a read
    /// that starts below the log's first index begins at it). So is one
    /// with a gap inside it. The log goes on from where it was.
    #[test]
    fn an_append_that_would_leave_a_gap_is_refused() {
        let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let (mut log, _machine) =
                open_node(&root.path().join("node"), 1).expect("open the raft shard");
            log.blocking_append((0..3).map(blank))
                .await
                .expect("append");
            // One index skipped is a gap too.
            let refused = log.blocking_append([4, 5].map(blank)).await;
            let message = format!("{:?}", refused.expect_err("a gap is refused"));
            assert!(
                message.contains("log index 4") && message.contains("next index is 3"),
                "{message}"
            );
            let indexes = |entries: Vec<Entry>| -> Vec<u64> {
                entries.iter().map(|e| e.log_id.index).collect()
            };
            let read = log.try_get_log_entries(0..).await.expect("read");
            assert_eq!(indexes(read), vec![0, 1, 2], "nothing written");
            // Nor served from the cache the append filled before it was
            // refused.
            let read = log.try_get_log_entries(4..6).await.expect("read");
            assert_eq!(indexes(read), Vec::<u64>::new(), "nothing cached");
            log.blocking_append((3..5).map(blank))
                .await
                .expect("the next index is taken");
            let read = log.try_get_log_entries(0..).await.expect("read");
            assert_eq!(indexes(read), vec![0, 1, 2, 3, 4]);
            // A gap inside one append: 5 and 6 are next, then 8.
            let refused = log.blocking_append([5, 6, 8].map(blank)).await;
            let message = format!("{:?}", refused.expect_err("a gap is refused"));
            assert!(
                message.contains("log index 8") && message.contains("next index is 7"),
                "{message}"
            );
            let read = log.try_get_log_entries(0..10).await.expect("read");
            assert_eq!(
                indexes(read),
                vec![0, 1, 2, 3, 4],
                "none of it written or cached"
            );
            log.blocking_append((5..8).map(blank))
                .await
                .expect("the next indexes are taken");
        });
    }

    /// openraft 0.10's reader must not leave out an entry that was
    /// appended and is not durable yet: a read right after an append whose
    /// flush nobody awaited returns the durable entries from the journal
    /// (the shard was reopened, so its cache starts at the new ones) and
    /// the rest from the cache, as one run.
    #[test]
    fn a_read_right_after_an_append_returns_what_is_not_durable_yet() {
        let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let dir = root.path().join("node");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let (mut log, machine) = open_node(&dir, 1).expect("open the raft shard");
            log.blocking_append((0..10).map(blank))
                .await
                .expect("append");
            drop((log, machine));
            let (mut log, _machine) = open_node(&dir, 1).expect("reopen the raft shard");
            for round in 0..20u64 {
                let first = 10 + round * 10;
                openraft::storage::RaftLogStorage::append(
                    &mut log,
                    (first..first + 10).map(blank),
                    openraft::storage::IOFlushed::noop(),
                )
                .await
                .expect("append");
                let read = log.try_get_log_entries(0..).await.expect("read");
                let indexes: Vec<u64> = read.iter().map(|e| e.log_id.index).collect();
                assert_eq!(
                    indexes,
                    (0..first + 10).collect::<Vec<_>>(),
                    "round {round}"
                );
            }
        });
    }
}
