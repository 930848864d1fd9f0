//! Work in progress: ringstore's journal as openraft's log storage.
//!
//! **Version.** openraft 0.9.25 (the stable line) with `storage-v2`, which
//! opens `RaftLogStorage` to other crates. 0.10 can run Raft on the shard's
//! own reactor (`single-threaded` and a custom runtime), but it is an alpha
//! whose storage API still changes between releases; 0.9's storage test
//! suite is synchronous (it builds its own tokio runtime per case), and its
//! `LogFlushed` callback is `Send`, so the shard can complete it right after
//! the fdatasync.
//!
//! **Threads.** openraft 0.9 runs on tokio and wants `Send + Sync` stores;
//! the journal is `!Send` and lives on a glommio reactor. [`JournalThread`]
//! owns the journal on a reactor thread of its own and runs closures sent to
//! it over a channel; [`RaftLog`] is the cheap, `Send + Sync` handle openraft
//! holds. Each storage call is one hop; concurrent appends share the
//! journal's group commit.
//!
//! **Mapping.** Log index `i` is journal op `i + 1` (op 0 is not an op).
//! `append` is `Journal::write` of every entry (serialized with bincode),
//! then the callback once all are durable; `truncate(log_id)` is
//! `truncate_after(log_id.index)`; `purge(log_id)` records the purged id in
//! the hard state, then advances the watermark to its op. The vote, the
//! committed id and the last purged id are the journal's hard state.
//!
//! Not done yet: the state machine (`RaftStateMachine` over the engine's
//! `StateMachine` and snapshot files), openraft's test suite, the cluster.

// openraft's `StorageError` is large, and its traits return it.
#![allow(clippy::result_large_err)]

mod log;
mod thread;

pub use log::{RaftLog, HARD_STATE_ENCODED_BYTES_MAX};
pub use thread::JournalThread;
