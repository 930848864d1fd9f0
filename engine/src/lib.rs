//! ringstore's engine: replicated-state-machine storage for one shard.
//!
//! A [`Shard`] turns the journal (`ringstore-journal`) into durable
//! state-machine storage on one glommio reactor: commands are appended with
//! group commit, applied in op order once durable, and the state is
//! checkpointed into snapshot files so the journal can be compacted.
//!
//! The core:
//!
//! * [`machine`] — the [`StateMachine`] contract: deterministic apply, a
//!   cheap point-in-time freeze, versioned snapshot sections.
//! * [`mux`] — several machines in one log and one atomic snapshot.
//! * [`broker`] — the reference machines: streams, topics, consumer groups
//!   and users of a broker's metadata, under one mux.
//! * [`format`](mod@format) — the on-disk layout of snapshot and identity files
//!   (`engine/FORMAT.md`).
//! * [`snapshot`] — snapshot files: persisted through a
//!   temporary file, fdatasync, rename and directory fsync, with the failed
//!   step named; generations kept and loaded newest-valid first.
//! * [`layout`] — the shard directory: its names, the lock, the [`identity`]
//!   (the domain a shard's data belongs to), the restore marker.
//! * [`recovery`] — opening a shard: identity, snapshot, journal, replay.
//! * [`shard`] — submits, reads, checkpoints and the compaction task; the
//!   lifecycle (one state: serving, checkpointing, resetting, closing,
//!   poisoned) and the hooks extensions plug into.
//! * [`config`] — the builder; its `open` recovers the shard and attaches
//!   the extensions it was given.
//!
//! The extensions, which use only the shard's API and hooks and have their
//! own errors ([`ResetError`], [`ObjectStoreError`], [`ColdRestoreError`];
//! inside [`Error`] as [`Error::Extension`]):
//!
//! * [`reset`] — resetting a shard to a snapshot with op numbers and epochs
//!   kept increasing.
//! * [`object_store`] — snapshots uploaded to object storage through a
//!   local cache, the two upload modes, retention.
//! * [`cold_restore`] — rebuilding a lost shard from object storage.
//!
//! Besides them:
//!
//! * `sim` (cargo feature `sim`) — the crash simulation of a shard on the
//!   fault-injecting disk.
//!
//! ```no_run
//! use ringstore::broker::{Command, Metadata, StreamCommand};
//! use ringstore::Shard;
//!
//! glommio::LocalExecutorBuilder::default()
//!     .spawn(|| async move {
//!         // Recovers whatever is there, and starts the compaction task.
//!         let shard = Shard::<Metadata>::builder("/var/lib/broker/shard-0").open().await?;
//!         let create = Command::Stream(StreamCommand::Create { name: "orders".into() });
//!         // Durable and applied once it resolves; a rejection is typed.
//!         let reply = shard.submit(create).await?.expect("a new stream");
//!         println!("{reply:?}; {} streams", shard.read(|m| m.streams().len()));
//!         shard.close().await
//!     })
//!     .expect("start reactor")
//!     .join()
//!     .expect("reactor")
//!     .expect("shard");
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(clippy::await_holding_refcell_ref)]
#![forbid(unsafe_code)]

pub mod broker;
pub mod cold_restore;
pub mod config;
pub mod error;
pub mod format;
/// The identity moved into [`layout`]; here too under its old path.
pub use layout::identity;
pub mod layout;
mod lifecycle;
pub mod machine;
pub mod metrics;
pub mod mux;
pub mod object_store;
mod open;
#[cfg(feature = "openraft")]
pub mod raft;
pub mod recovery;
pub mod reset;
pub mod runtime;
pub mod shard;
#[cfg(feature = "sim")]
pub mod sim;
pub mod snapshot;

pub use cold_restore::{ColdRestoreError, ColdRestoreReport};
pub use config::{CheckpointPolicy, ShardBuilder, ShardConfig};
pub use error::{Error, ExtensionError, PersistStage, Result, SkippedSnapshot, SnapshotError};
pub use layout::{is_locked, LOCK_FILE_NAME};
pub use machine::{OpId, StateMachine};
pub use metrics::LatencySummary;
pub use object_store::{ObjectStoreError, ObjectStoreSettings, UploadMode};
pub use recovery::ShardRecoveryReport;
pub use reset::{ResetError, ResetOutcome};
pub use runtime::{Client, Engine, EngineBuilder};
pub use shard::{CheckpointOutcome, Outcome, Shard, ShardStats, SNAPSHOT_SCRUB_DAMAGE_KEPT};

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
