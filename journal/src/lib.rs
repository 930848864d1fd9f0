//! ringstore's write-ahead log.
//!
//! One [`Journal`] per shard, on that shard's glommio reactor. Entries go to
//! preallocated segment files through O_DIRECT; concurrent appends share one
//! write and one fdatasync, or one O_DSYNC write where the device makes that
//! faster ([`Durability::Auto`]) (group commit, with the next batch written
//! while the previous one syncs), and an append resolves only once its entry is
//! durable. An in-memory ring index maps `op % slot_count` to where each op
//! above the snapshot watermark lives. Recovery reads each write's index
//! (and every byte of the tail nothing vouches for yet), distinguishes a
//! torn tail from damage in the middle of the log (see [`recovery`] for the
//! decision table), and leaves a vouched-for payload to be verified when
//! it is read.
//!
//! [`storage`] holds the backends: real O_DIRECT files, and an in-memory
//! disk with a seeded fault model that `sim` (cargo feature `sim`) uses to
//! crash the journal at random points and check it against a model.
//!
//! The on-disk format is specified in `journal/FORMAT.md`.

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![forbid(unsafe_code)]

pub mod config;
pub mod durability;
pub mod error;
pub mod format;
pub mod glommio_quirks;
mod index;
pub mod inspect;
mod journal;
pub mod pace;
pub mod recovery;
pub mod salvage;
mod segment;
#[cfg(feature = "sim")]
pub mod sim;
pub mod storage;
pub mod superblock;
pub mod verify;

pub use config::{
    Durability, HardStateAfterCut, JournalBuilder, JournalConfig, Preallocation, Recovery,
};
pub use durability::{DurabilityChoice, DurabilityProbe, ProbeOutcome};
pub use error::{Error, Result};
pub use index::SLOT_BYTES;
pub use journal::{
    Entries, Entry, Journal, JournalStats, LogItem, QueuedAppend, QueuedHardState, ScrubPass,
    BATCH_SIZE_BUCKETS, ENTRIES_READ_AHEAD_BYTES, INLINE_STREAK_MAX, INLINE_WRITES_PAUSED_FOR,
    INLINE_WRITE_AVERAGE_WEIGHT, INLINE_WRITE_SLOW, RECLAIM_STEP_BYTES_DEFAULT,
    RECYCLED_SEGMENTS_KEPT, SCRUB_DAMAGE_KEPT,
};
pub use recovery::{describe_cut_ops, RecoveryReport, TailState, UnrecordedEnd};
pub use segment::{
    segment_file_name, segment_generation, ZERO_FILL_BUSY_PERCENT, ZERO_FILL_BUSY_WRITE_BYTES,
    ZERO_FILL_WRITE_BYTES,
};
pub use superblock::JournalOwner;
