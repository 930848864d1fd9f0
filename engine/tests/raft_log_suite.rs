//! openraft's storage test suite (`openraft::testing::Suite::test_all`)
//! against `ringstore::raft::RaftLog` on real O_DIRECT files. The state
//! machine here is a small in-memory one (the suite needs one); the engine's
//! own state machine adapter is not written yet.
#![cfg(feature = "openraft")]
// openraft's `StorageError` is large, and its traits return it.
#![allow(clippy::result_large_err)]

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership,
};
use ringstore::raft::{JournalThread, RaftLog};
use ringstore_journal::Journal;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

openraft::declare_raft_types!(
    pub TypeConfig:
        D = String,
        R = String,
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// Applied state: the last applied id, membership, and the applied data.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Applied {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    data: Vec<String>,
}

/// The last snapshot built or installed: its meta and bytes.
type StoredSnapshot = Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>;

#[derive(Clone, Default)]
struct MemMachine {
    applied: Arc<Mutex<Applied>>,
    snapshot: Arc<Mutex<StoredSnapshot>>,
}

impl RaftSnapshotBuilder<TypeConfig> for MemMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let applied = self.applied.lock().unwrap().clone();
        let data = serde_json::to_vec(&applied).unwrap();
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id: format!("{:?}", applied.last_applied),
        };
        *self.snapshot.lock().unwrap() = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MemMachine {
    type SnapshotBuilder = MemMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let applied = self.applied.lock().unwrap();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<String>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut applied = self.applied.lock().unwrap();
        let mut responses = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(data) => applied.data.push(data),
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), m)
                }
            }
            responses.push(String::new());
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let applied: Applied = serde_json::from_slice(&data).unwrap();
        *self.applied.lock().unwrap() = applied;
        *self.snapshot.lock().unwrap() = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        Ok(self
            .snapshot
            .lock()
            .unwrap()
            .clone()
            .map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
    }
}

/// A fresh journal under `target/` (O_DIRECT needs a real disk) for each
/// case; the directory lives as long as the case.
struct Builder;

impl StoreBuilder<TypeConfig, RaftLog<TypeConfig>, MemMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, RaftLog<TypeConfig>, MemMachine), StorageError<u64>> {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let wal = dir.path().join("wal");
        let thread = JournalThread::open(move || {
            Journal::builder(wal)
                .segment_bytes(4 << 20)
                .slot_count(1 << 12)
        })
        .expect("open the journal");
        Ok((dir, RaftLog::new(thread), MemMachine::default()))
    }
}

#[test]
fn openraft_storage_suite_passes_on_the_journal() -> Result<(), StorageError<u64>> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    Suite::test_all(Builder)
}
