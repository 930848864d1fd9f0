//! openraft's in-memory reference store: its generic v2 log store
//! (`examples/memstore`) and the key-value state machine of
//! `examples/raft-kv-memstore` (copied, see each file).

use std::io::Cursor;

pub mod log_store;
pub mod store;

/// A node's id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The memstore's types (as in the example).
    pub TypeConfig:
        D = store::Request,
        R = store::Response,
);
