//! openraft's storage test suite (`openraft::testing::Suite::test_all`)
//! against `ringstore::raft`'s log and state machine on real O_DIRECT
//! files (journal and snapshot files), hosting a small engine machine.
#![cfg(feature = "openraft")]
// openraft's `StorageError` is large, and its traits return it.
#![allow(clippy::result_large_err)]

use openraft::testing::{StoreBuilder, Suite};
use openraft::{BasicNode, Entry, StorageError};
use ringstore::machine::{decode_records, FrozenSection, RecordsEncoder, RestoreError, SectionSet};
use ringstore::raft::{RaftLog, RaftMachine, Request, Response};
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
        Entry = Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

type Log = RaftLog<TypeConfig, Strings>;
type Machine = RaftMachine<TypeConfig, Strings>;

/// The cluster every case's node belongs to: the suite installs one
/// store's snapshot on another, which a node refuses across clusters.
const CLUSTER: uuid::Uuid = uuid::Uuid::from_u128(0x5eed_cafe_0000_4000_8000_0000_0000_0001);

/// A fresh shard under `target/` (O_DIRECT needs a real disk) for each
/// case; the directory lives as long as the case.
struct Builder;

impl StoreBuilder<TypeConfig, Log, Machine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, Log, Machine), StorageError<u64>> {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let stores = ringstore::raft::open::<TypeConfig, Strings>(
            dir.path().join("node"),
            CLUSTER,
            Box::new(|b| b.segment_bytes(4 << 20).slot_count(1 << 12)),
        )
        .expect("open the raft shard");
        Ok((dir, stores.log, stores.machine))
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
