//! Typed errors of the object-storage layer. Each names the operation and
//! the object key (or the local path, or the setting), and the ones a caller
//! can act on say what to change.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Result alias for [`crate::Remote`] calls.
pub type RemoteResult<T> = std::result::Result<T, RemoteError>;

/// Everything a [`crate::Remote`] call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// A [`crate::RemoteBuilder`] setting is outside its documented range,
    /// or the store could not be built from it.
    #[error("invalid remote config: {setting}: {reason}")]
    Config {
        /// The setting (the builder method or the [`crate::S3Config`] field).
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The object key was refused before any request was made. Object keys
    /// follow the cache's key rules (see [`crate::Key`]).
    #[error("{op} {key:?}: key rejected: {reason}")]
    KeyRejected {
        /// The operation.
        op: &'static str,
        /// The key as given.
        key: String,
        /// Why.
        reason: String,
    },

    /// A write found an object already at the key. Writes never overwrite:
    /// delete the object first, or write under a new key. `after_retry` is
    /// true when an earlier attempt of this same call failed in a way that
    /// leaves its outcome unknown (a lost response): the object found may be
    /// this call's own, so compare it before treating this as a conflict.
    #[error(
        "{op} {key:?}: an object already exists at this key and writes never overwrite{}",
        if *after_retry { " (an earlier attempt of this call may have stored it)" } else { "" }
    )]
    AlreadyExists {
        /// The operation.
        op: &'static str,
        /// The key.
        key: String,
        /// The refusal came on a retry (see above).
        after_retry: bool,
    },

    /// No object at the key.
    #[error("{op} {key:?}: no such object")]
    NotFound {
        /// The operation.
        op: &'static str,
        /// The key.
        key: String,
    },

    /// The call did not finish before its deadline; whatever was in flight
    /// was cancelled. A write may or may not have landed (a put is atomic:
    /// either the whole object is there or none of it). Raise
    /// `RemoteBuilder::op_timeout` (or lower `rate_floor_bytes_per_sec` for
    /// big transfers) if the store is merely slow.
    #[error("{op} {key:?}: no answer within its deadline of {allowed:?} (raise op_timeout if the store is slow, or check the endpoint)")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The key (or prefix, for a list).
        key: String,
        /// How long the call was allowed to take.
        allowed: Duration,
    },

    /// Every attempt failed with a transient error (network, a 5xx, the
    /// server down). Retrying later may succeed.
    #[error("{op} {key:?}: store unavailable after {attempts} attempts: {source}")]
    Unavailable {
        /// The operation.
        op: &'static str,
        /// The key (or prefix, for a list).
        key: String,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        source: object_store::Error,
    },

    /// The store refused the request for good (permissions, credentials, an
    /// unsupported operation, a bad bucket): retrying will not help.
    #[error("{op} {key:?}: refused by the store: {source}")]
    Store {
        /// The operation.
        op: &'static str,
        /// The key (or prefix, for a list).
        key: String,
        /// What the store said.
        #[source]
        source: object_store::Error,
    },

    /// A local file could not be read or written.
    #[error("{op} {}: {source}", path.display())]
    LocalIo {
        /// The call (`"open"`, `"read"`, `"write"`, ...).
        op: &'static str,
        /// The local path.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },

    /// A download ended before the object's announced size (the stream was
    /// cut by the deadline, a shutdown or the server).
    #[error("get {key:?}: download ended after {received_bytes} of {expected_bytes} bytes")]
    Truncated {
        /// The key.
        key: String,
        /// Bytes received.
        received_bytes: u64,
        /// The object's size.
        expected_bytes: u64,
    },

    /// An object is larger than the caller allowed (`get_bytes`).
    #[error("get {key:?}: object of {bytes} bytes is above the limit of {bytes_max} bytes")]
    TooLarge {
        /// The key.
        key: String,
        /// The object's size.
        bytes: u64,
        /// The caller's limit.
        bytes_max: u64,
    },

    /// A file uploaded with [`crate::Remote::put_file_checked`] read back
    /// other bytes than the digest its caller took of it (damaged on its
    /// disk, or changed, since the caller read it): the upload was not
    /// completed, so the store holds nothing at the key from this call.
    /// Read and check the file again before another upload.
    #[error(
        "{op} {key:?}: {} read as {read_bytes} bytes{}, not the {expected_bytes} bytes with \
         CRC-32 {expected_crc32:#010x} it was checked as; nothing was stored",
        path.display(),
        read_crc32.map(|crc| format!(" with CRC-32 {crc:#010x}")).unwrap_or_default()
    )]
    SourceChanged {
        /// The operation.
        op: &'static str,
        /// The key.
        key: String,
        /// The local file.
        path: PathBuf,
        /// The file's size when it was checked.
        expected_bytes: u64,
        /// Its CRC-32 then.
        expected_crc32: u32,
        /// The file's size when the upload read it.
        read_bytes: u64,
        /// The CRC-32 of the bytes the upload read (`None`: the size
        /// differed, so they were not read).
        read_crc32: Option<u32>,
    },

    /// A list returned more entries than [`crate::LIST_ENTRIES_MAX`]: list a
    /// narrower prefix.
    #[error("list {prefix:?}: more than {entries_max} entries; list a narrower prefix")]
    ListTooLong {
        /// The prefix.
        prefix: String,
        /// The limit.
        entries_max: usize,
    },

    /// The request queue of the I/O thread is full
    /// ([`crate::REQUESTS_QUEUED_MAX`]); the call was not started.
    #[error("{queued_max} object-store requests already queued; try again later")]
    Overloaded {
        /// The limit.
        queued_max: usize,
    },

    /// The I/O thread was shut down (or died); the call was not completed.
    #[error("the object-store I/O thread is shut down")]
    Shutdown,
}

impl RemoteError {
    /// True for failures that retrying the same call later may cure
    /// (timeouts, an unavailable store, a full queue).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RemoteError::Timeout { .. }
                | RemoteError::Unavailable { .. }
                | RemoteError::Overloaded { .. }
                | RemoteError::Truncated { .. }
        )
    }

    pub(crate) fn local_io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        RemoteError::LocalIo {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(setting: &'static str, reason: impl Into<String>) -> Self {
        RemoteError::Config {
            setting,
            reason: reason.into(),
        }
    }
}
