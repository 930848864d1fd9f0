//! This RocksDB-backed storage implements the [`openraft::storage::RaftStateMachine`] trait.
//! The state machine stores all data directly in RocksDB,
//! providing full persistence. Entries are applied directly to disk, and snapshots
//! use RocksDB's snapshot mechanism for consistent point-in-time views.
//
// Copied from openraft (https://github.com/databendlabs/openraft, main at
// 5463678f, v0.10.0-alpha.34 and later, examples/sm-rocks/src/lib.rs (with examples/log-rocks as `log_store`)), MIT OR Apache-2.0, as a
// benchmark peer: openraft's own reference store for its 0.10 API,
// unchanged except for import paths.
#![allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    unused_qualifications,
    missing_docs,
    dead_code
)]

pub mod state_machine;

use std::io;
use std::path::Path;
use std::sync::Arc;

pub mod log_store;

use log_store::RocksLogStore;
use openraft::RaftTypeConfig;
use rocksdb::ColumnFamilyDescriptor;
use rocksdb::Options;
use rocksdb::DB;

pub use state_machine::RocksStateMachine;

pub type RocksNodeId = u64;

openraft::declare_raft_types!(
    /// Declare the type configuration.
    pub TypeConfig:
        D = crate::raft_peers::types_kv::Request,
        R = crate::raft_peers::types_kv::Response,
);

/// Create a pair of `RocksLogStore` and `RocksStateMachine` that are backed by a same rocks db
/// instance.
pub async fn new<C, P: AsRef<Path>>(
    db_path: P,
) -> Result<(RocksLogStore<C>, RocksStateMachine), io::Error>
where
    C: RaftTypeConfig,
{
    let mut db_opts = Options::default();
    db_opts.create_missing_column_families(true);
    db_opts.create_if_missing(true);

    let meta = ColumnFamilyDescriptor::new("meta", Options::default());
    let sm_meta = ColumnFamilyDescriptor::new("sm_meta", Options::default());
    let sm_data = ColumnFamilyDescriptor::new("sm_data", Options::default());
    let logs = ColumnFamilyDescriptor::new("logs", Options::default());

    let db_path = db_path.as_ref();
    let snapshot_dir = db_path.join("snapshots");

    let db = DB::open_cf_descriptors(&db_opts, db_path, vec![meta, sm_meta, sm_data, logs])
        .map_err(io::Error::other)?;

    let db = Arc::new(db);
    Ok((
        RocksLogStore::new(db.clone()),
        RocksStateMachine::new(db, snapshot_dir).await?,
    ))
}
