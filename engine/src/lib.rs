//! ringstore's engine: replicated-state-machine storage for one shard.
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(clippy::await_holding_refcell_ref)]
#![forbid(unsafe_code)]

pub mod broker;
pub mod config;
pub mod error;
pub mod identity;
pub mod machine;
pub mod mux;
pub mod recovery;
pub mod reset;
pub mod shard;
pub mod sim;
pub mod snapshot;

pub use config::{CheckpointPolicy, ShardBuilder, ShardConfig};
pub use error::{Error, PersistStage, Result, SkippedSnapshot, SnapshotError};
pub use machine::{OpId, StateMachine};
pub use recovery::ShardRecoveryReport;
pub use reset::ResetOutcome;
pub use shard::{CheckpointOutcome, Outcome, Shard, ShardStats};
