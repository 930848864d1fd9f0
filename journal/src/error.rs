//! Typed errors. Expected failures (I/O errors, checksum mismatches, full
//! disks, bad configuration, ring pressure) are values of [`Error`]; a broken
//! internal invariant is a bug and panics.
//!
//! Every error that comes from the disk names the file and, where it has one,
//! the byte offset. Errors are `Clone` because one failed group-commit write
//! is reported to every appender in the batch.

use std::{io, path::PathBuf, sync::Arc};

/// Result alias for journal operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the journal can report.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A builder setting is out of range; nothing was opened.
    #[error("invalid journal setting {setting} = {value}: {reason}")]
    InvalidConfig {
        /// The builder method's name.
        setting: &'static str,
        /// The value given.
        value: u64,
        /// The valid range or relation that was violated.
        reason: String,
    },

    /// The directory is on a filesystem without O_DIRECT (e.g. tmpfs).
    #[error(
        "{path}: this filesystem does not support O_DIRECT (tmpfs?); put the journal on a disk \
         filesystem such as ext4 or xfs, or opt into buffered I/O with \
         JournalBuilder::allow_buffered_io(true)"
    )]
    DirectIoUnsupported {
        /// The journal directory.
        path: PathBuf,
    },

    /// An I/O call failed.
    #[error("{op} failed on {path}{}: {source}", offset_suffix(*offset))]
    Io {
        /// The system call or step, e.g. `"fdatasync"`.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Byte offset of the failed read or write, if any.
        offset: Option<u64>,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },

    /// The disk is full. Nothing acknowledged was lost; the operation that
    /// needed the space failed and may be retried once space is freed
    /// (e.g. after advancing the watermark retires segments).
    #[error(
        "no space left on device: {op} on {path}{}; free space (advance the watermark) and retry",
        offset_suffix(*offset)
    )]
    NoSpace {
        /// The step that needed space.
        op: &'static str,
        /// The file that was being grown or created.
        path: PathBuf,
        /// Where in the file, for a write.
        offset: Option<u64>,
    },

    /// An earlier write or fsync failed. The page cache and the file's state
    /// can no longer be trusted, so every call fails until the journal is
    /// reopened, which recovers from what is durable.
    #[error("journal poisoned by an earlier failure, reopen it: {cause}")]
    Poisoned {
        /// The failure that poisoned the journal.
        cause: Box<Error>,
    },

    /// Bytes on disk fail verification where valid data must be.
    #[error("corruption in {path} at byte offset {offset}: {reason}")]
    Corruption {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damaged structure.
        offset: u64,
        /// What failed to verify.
        reason: String,
    },

    /// A file was written by a format version this build does not read.
    #[error("{path}: unsupported format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found on disk.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },

    /// The journal belongs to another owner (another domain, or another
    /// shard's place): its superblock records `recorded`, the caller
    /// expected `expected`. Nothing was read or changed.
    #[error(
        "{path}: the journal belongs to {recorded}, not to {expected} (a journal directory of \
         another shard or domain?)"
    )]
    WrongOwner {
        /// The journal's superblock.
        path: PathBuf,
        /// The owner it records.
        recorded: crate::superblock::JournalOwner,
        /// The owner the caller expected.
        expected: crate::superblock::JournalOwner,
    },

    /// The payload is larger than the configured `entry_bytes_max`.
    #[error("payload of {len} bytes exceeds entry_bytes_max = {max}")]
    EntryTooLarge {
        /// Payload length given.
        len: usize,
        /// Configured maximum.
        max: usize,
    },

    /// Op numbers start at 1 and must stay below `u64::MAX`.
    #[error("op {op} is not a valid op number (valid: 1..u64::MAX)")]
    InvalidOp {
        /// The op given.
        op: u64,
    },

    /// The ring slot for `op` still holds a live op above the watermark.
    /// Nothing was written. Take a snapshot and advance the watermark, then
    /// retry.
    #[error(
        "ring full: slot {slot} for op {op} still holds op {occupant}, above the watermark \
         {watermark}; advance the watermark first"
    )]
    RingFull {
        /// The op that was refused.
        op: u64,
        /// Its slot, `op % slot_count`.
        slot: u64,
        /// The live op occupying the slot.
        occupant: u64,
        /// The current watermark.
        watermark: u64,
    },

    /// The op is at or below the watermark: it was compacted into a snapshot
    /// (for reads) or may no longer be written.
    #[error("op {op} is at or below the watermark {watermark}")]
    BelowWatermark {
        /// The op given.
        op: u64,
        /// The current watermark.
        watermark: u64,
    },

    /// A replica write names an op that is already present (or in flight).
    /// Rewriting an op needs a strictly greater epoch.
    #[error("op {op} already exists with epoch {existing_epoch}; a rewrite needs an epoch above it (given {epoch})")]
    OpExists {
        /// The op given.
        op: u64,
        /// The epoch given.
        epoch: u64,
        /// The epoch of the entry already there.
        existing_epoch: u64,
    },

    /// The watermark only moves forward.
    #[error("watermark {requested} is below the current watermark {current}")]
    WatermarkRegression {
        /// The value given.
        requested: u64,
        /// The current watermark.
        current: u64,
    },

    /// The epoch only moves forward.
    #[error("epoch {requested} is below the current epoch {current}")]
    EpochRegression {
        /// The value given.
        requested: u64,
        /// The current epoch.
        current: u64,
    },

    /// The journal was closed.
    #[error("journal is closed")]
    Closed,
}

fn offset_suffix(offset: Option<u64>) -> String {
    offset
        .map(|o| format!(" at byte offset {o}"))
        .unwrap_or_default()
}

impl Error {
    /// Wraps an I/O error with its context. ENOSPC becomes [`Error::NoSpace`].
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        offset: Option<u64>,
        source: io::Error,
    ) -> Error {
        let path = path.into();
        if crate::storage::is_errno(&source, libc::ENOSPC) {
            return Error::NoSpace { op, path, offset };
        }
        Error::Io {
            op,
            path,
            offset,
            source: Arc::new(source),
        }
    }

    pub(crate) fn corruption(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Error {
        Error::Corruption {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// True when the error poisoned (or came from a poisoned) journal.
    pub fn is_poisoned(&self) -> bool {
        matches!(self, Error::Poisoned { .. })
    }
}
