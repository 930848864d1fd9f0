//! openraft's in-memory reference stores: its example log store
//! (`examples/log-mem`) and state machine (`examples/sm-mem`), copied (see
//! each file).

pub mod log_store;
pub mod store;

openraft::declare_raft_types!(
    /// The memory store's types (as in openraft's `raft-kv-memstore`
    /// example, with the default node type).
    pub TypeConfig:
        D = crate::raft_peers::types_kv::Request,
        R = crate::raft_peers::types_kv::Response,
);
