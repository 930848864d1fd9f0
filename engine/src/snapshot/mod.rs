//! Snapshots: one file per snapshot, several generations kept.
//!
//! [`format`] holds the on-disk structures (specified in `engine/FORMAT.md`);
//! [`store`] persists frozen state crash-safely and loads the newest
//! generation that verifies.

pub mod format;
pub mod inspect;
pub mod store;

pub use store::{
    parse_snapshot_file_name, snapshot_file_name, LoadedSnapshot, SnapshotMeta, SnapshotStore,
};
