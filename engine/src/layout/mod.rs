//! The shard directory: every name in it, the lock, the identity and the
//! markers, in one place.
//!
//! ```text
//! <shard dir>/
//!   lock          flock'd while a process has the shard open     (lock)
//!   identity      the domain, and whether the journal exists      (identity)
//!   identity.tmp  an identity being replaced
//!   journal/      the journal's superblock and segments           (ringstore-journal)
//!   snapshots/    snapshot-<op>.snap generations                  (snapshot)
//!   restoring     marker: a cold restore has not finished
//!   restore/      a cold restore's downloaded snapshot
//!   cache/        object storage's local cache (default; object_store)
//!   quarantine/   what `ringstore wal salvage` moved aside; never read
//! ```
//!
//! Who writes what: the core (recovery, the shard) owns `lock`,
//! `identity`, `journal/` and `snapshots/`; the cold-restore extension
//! owns `restoring` and `restore/`; the object-store extension its cache.
//! The names live here, not in their owners, because readers are
//! everywhere: an open refuses a directory holding the restore marker
//! without knowing anything about cold restore, and `ringstore wal
//! salvage` and `snapshot verify` name these files too. `engine/FORMAT.md`
//! lists the same names.

pub mod identity;
pub(crate) mod lock;

use crate::error::{Error, Result};
use ringstore_journal::storage::Storage;
use std::path::Path;

pub use identity::IDENTITY_FILE_NAME;
pub use lock::{is_locked, LOCK_FILE_NAME};

/// Name of the journal's directory inside the shard directory.
pub const JOURNAL_DIR_NAME: &str = "journal";
/// Name of the snapshots' directory inside the shard directory.
pub const SNAPSHOT_DIR_NAME: &str = "snapshots";
/// The identity being replaced: written, synced, then renamed over
/// [`IDENTITY_FILE_NAME`].
pub const IDENTITY_TEMP_NAME: &str = "identity.tmp";
/// The marker a cold restore keeps in the shard directory until it has
/// finished. While it exists a plain open refuses the directory
/// ([`Error::RestoreIncomplete`]).
pub const RESTORE_MARKER_NAME: &str = "restoring";
/// Where a cold restore puts the snapshot it downloads, inside the shard
/// directory (same filesystem as the snapshots).
pub const RESTORE_STAGING_DIR_NAME: &str = "restore";

/// The place a raft node's journal records in its superblock's owner: its
/// node id as the shard, among this many "shards" (a value no engine data
/// directory has). A journal of another node of the same cluster is then
/// refused (`raft::RaftStoreError::OtherNode`); one written before node
/// ids were recorded (no place) takes this node's at its next open. Here,
/// not in `raft`, so that tools built without it still tell a raft node's
/// journal apart (`ringstore wal salvage` refuses to cut one unmarked).
pub const RAFT_NODE_SHARDS: u32 = u32::MAX;

/// Whether the shard directory `dir` holds the restore marker (listed
/// through `storage`, like everything else an open reads).
pub(crate) fn restore_marker_present<S: Storage>(storage: &S, dir: &Path) -> Result<bool> {
    Ok(storage
        .list_dir(dir)
        .map_err(|e| Error::io("list shard directory", dir, e))?
        .iter()
        .any(|name| name.as_os_str() == RESTORE_MARKER_NAME))
}
