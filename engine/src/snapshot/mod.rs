//! Snapshots: one file per snapshot, several generations kept.
//!
//! [`format`](mod@format) holds the on-disk structures (specified in `engine/FORMAT.md`);
//! [`verify`] is the one verifier of a snapshot file's bytes (sans-IO),
//! which both drivers call: [`store`] persists frozen state crash-safely and
//! loads the newest generation that verifies (over the storage trait, for
//! recovery, reset and cold restore), and [`inspect`] reads the same files
//! with plain reads for `ringstore snapshot inspect|verify` and the check
//! before an upload.

/// The format moved up to [`crate::format`](mod@crate::format) (it is the identity file's
/// too); here under its old path.
pub use crate::format;
pub mod inspect;
pub(crate) mod scrub;
pub mod store;
pub mod verify;

pub(crate) use scrub::scrub_snapshot;
pub use store::{
    parse_snapshot_file_name, snapshot_file_name, LoadedSnapshot, Pacing, SnapshotMeta,
    SnapshotStore, StagedSnapshot,
};
pub use verify::{Check, SnapshotDamage, SnapshotFault, SnapshotReport, SnapshotVerifier};
