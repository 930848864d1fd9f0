//! Typed errors. Every I/O error names the operation and the path; every
//! refusal names the key and why. Nothing in this crate panics on bad input.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the cache can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The call (`"linkat"`, `"fdatasync"`, `"read"`, ...).
        op: &'static str,
        /// The path it was made on.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },

    /// The key was refused before any filesystem call was made (or, for
    /// [`KeyRejection::SymlinkInPath`], the kernel refused to resolve it).
    #[error("key {key:?} rejected: {reason}")]
    KeyRejected {
        /// The key as given.
        key: String,
        /// Why.
        reason: KeyRejection,
    },

    /// `Staging::commit` found an object already at the key. Commits never
    /// overwrite; use `Cache::put` to replace an object.
    #[error("key {key:?} already holds an object; commit does not overwrite")]
    Conflict {
        /// The key.
        key: String,
    },

    /// A fenced placement ([`crate::Fence`]) found its key invalidated since
    /// the fence was taken: the bytes may be of an object the store no
    /// longer holds, so nothing was placed.
    #[error(
        "key {key:?} was invalidated while its object was being fetched or written; not cached"
    )]
    Invalidated {
        /// The key.
        key: String,
    },

    /// A reservation could not be granted before its deadline.
    #[error("reservation of {bytes} bytes / {objects} objects not granted within {waited:?}")]
    ReservationTimeout {
        /// Bytes asked for.
        bytes: u64,
        /// Objects asked for.
        objects: u64,
        /// How long it waited.
        waited: Duration,
    },

    /// A reservation larger than the cache's limits: it could never be granted.
    #[error(
        "reservation of {bytes} bytes / {objects} objects exceeds the limits \
         ({bytes_limit} bytes / {objects_limit} objects)"
    )]
    ReservationTooLarge {
        /// Bytes asked for.
        bytes: u64,
        /// Objects asked for.
        objects: u64,
        /// The cache's byte limit.
        bytes_limit: u64,
        /// The cache's object limit.
        objects_limit: u64,
    },

    /// A cached object's bytes do not match the checksum recorded when it
    /// was written (damaged at rest): not served. Invalidate it (a
    /// [`crate::Tiered`] view does, and downloads it again).
    #[error(
        "{}: cached object {key:?} is damaged: {found_bytes} bytes with CRC-32 \
         {found_crc32:#010x}, written as {expected_bytes} bytes with CRC-32 \
         {expected_crc32:#010x}; not served",
        path.display()
    )]
    CorruptObject {
        /// The key.
        key: String,
        /// The object file.
        path: PathBuf,
        /// Its size when written.
        expected_bytes: u64,
        /// Its CRC-32 when written.
        expected_crc32: u32,
        /// The size read (a read stops one byte past `expected_bytes`, so
        /// a file that grew while it was read shows that many).
        found_bytes: u64,
        /// The CRC-32 of the bytes read.
        found_crc32: u32,
    },

    /// A cached object cannot be checked against its checksum: it has
    /// none this build reads (the file was put there behind the cache's
    /// back or by a build before object checksums, or its attribute is
    /// damaged), or its file's size disagrees with the size the checksum
    /// records or exceeds the cache's byte limit (a sparse or extended
    /// file, a damaged inode: refused from its size, before any of it is
    /// read). Not served, since nothing can tell its bytes are the ones
    /// written. Invalidate it (a [`crate::Tiered`] view does, and
    /// downloads it again).
    #[error("{}: cached object {key:?} cannot be checked against its checksum ({reason}); not served", path.display())]
    UnverifiableObject {
        /// The key.
        key: String,
        /// The object file.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },

    /// A download of `key` found a file at the key that is not the object
    /// the store holds (a stale copy an unlink failed to remove, or one put
    /// there behind the cache's back), and found one there again after it
    /// was removed and the object downloaded once more: neither its path
    /// nor its bytes are handed out.
    #[error(
        "{}: the file at key {key:?} is not the object the store holds and could not be \
         replaced; not served",
        path.display()
    )]
    StaleObjectFile {
        /// The key.
        key: String,
        /// The file at the key.
        path: PathBuf,
    },

    /// The file handed to an adopt lies in the cache's own object
    /// directory (an object, a staging file): adopting it would give the
    /// cache's own file a second key. Nothing is cached.
    #[error("{}: adopting it as {key:?}: the file is inside the cache's object directory; adopt takes files from outside it", path.display())]
    AdoptedFileInCache {
        /// The key.
        key: String,
        /// The file handed over.
        path: PathBuf,
    },

    /// A file being adopted is not the one it was adopted as (the
    /// caller's checksum for [`crate::Cache::adopt_checked`], else the one
    /// read as the adopt began): it changed or was damaged since. Either
    /// its size at open already differs (`found_crc32` is `None`: nothing
    /// of it was read), or its copy read other bytes or fewer of them.
    /// Nothing is cached; the staging copy is removed. Counted in
    /// [`crate::CacheStats::adopted_files_changed`].
    #[error(
        "{}: adopting it as {key:?}, found {}, not the {expected_bytes} bytes with CRC-32 \
         {expected_crc32:#010x} it was adopted as; not cached",
        path.display(),
        found_digest(*.found_bytes, *.found_crc32)
    )]
    AdoptedFileChanged {
        /// The key.
        key: String,
        /// The file being adopted.
        path: PathBuf,
        /// Its size when checked.
        expected_bytes: u64,
        /// Its CRC-32 when checked.
        expected_crc32: u32,
        /// Its size at open, or the bytes its copy read.
        found_bytes: u64,
        /// The CRC-32 of the bytes copied; `None` if it was refused by its
        /// size, unread.
        found_crc32: Option<u32>,
    },

    /// An object larger than the whole cache.
    #[error("object {key:?} of {bytes} bytes exceeds the cache limit of {bytes_limit} bytes")]
    Oversize {
        /// The key.
        key: String,
        /// The object's size (or its size so far, for a staging file).
        bytes: u64,
        /// The cache's byte limit.
        bytes_limit: u64,
    },

    /// The filesystem is full. The cache trimmed (`trimmed_bytes` were freed;
    /// 0 if a trim had just run and the next is throttled) and gave up this
    /// operation; retrying it may succeed.
    #[error(
        "no space left on device during {op} {}; trim freed {trimmed_bytes} bytes, retry may succeed",
        path.display()
    )]
    NoSpace {
        /// The call that hit ENOSPC.
        op: &'static str,
        /// The path it was made on.
        path: PathBuf,
        /// Bytes the ENOSPC-triggered trim freed.
        trimmed_bytes: u64,
        /// The original error.
        #[source]
        source: io::Error,
    },

    /// Too many tasks already wait for a reservation.
    #[error("{waiters_max} reservations already waiting")]
    TooManyWaiters {
        /// The limit ([`crate::RESERVATION_WAITERS_MAX`]).
        waiters_max: usize,
    },

    /// The builder was given a value outside its documented range.
    #[error("invalid cache config: {field}: {reason}")]
    Config {
        /// The setter.
        field: &'static str,
        /// What is wrong with the value.
        reason: String,
    },

    /// Another cache instance holds the directory.
    #[error("cache directory {} is locked by another instance", path.display())]
    Locked {
        /// The cache root.
        path: PathBuf,
    },

    /// The cache directory's filesystem has no user extended attributes,
    /// where every object keeps its checksum (`cache/FORMAT.md`).
    #[error(
        "cache directory {}: its filesystem has no user extended attributes, which hold every \
         object's checksum; put the cache on ext4, XFS or btrfs (or tmpfs from Linux 6.6)",
        path.display()
    )]
    NoExtendedAttributes {
        /// The cache directory.
        path: PathBuf,
    },

    /// The directory was written by an incompatible layout version.
    #[error("cache directory {} has layout {found:?}, this build reads version {expected}", path.display())]
    UnsupportedLayout {
        /// The layout file.
        path: PathBuf,
        /// Its contents.
        found: String,
        /// [`crate::format::LAYOUT_VERSION`].
        expected: u32,
    },

    /// The cache was shut down.
    #[error("cache is shut down")]
    Closed,

    /// `Reservation::merge` was given a reservation from another cache.
    #[error("reservation belongs to a different cache")]
    ForeignReservation,

    /// An object-store call failed (see [`crate::RemoteError`]).
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),

    /// The staging handle hit an earlier error and can only be closed.
    #[error("staging file {} failed earlier; close it", path.display())]
    StagingPoisoned {
        /// The staging file.
        path: PathBuf,
    },
}

/// What an adopt found, for [`Error::AdoptedFileChanged`].
fn found_digest(bytes: u64, crc32: Option<u32>) -> String {
    match crc32 {
        Some(crc32) => format!("{bytes} bytes with CRC-32 {crc32:#010x}"),
        None => format!("a file of {bytes} bytes (not read)"),
    }
}

/// Why a key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyRejection {
    /// The empty string.
    Empty,
    /// Longer than [`crate::KEY_BYTES_MAX`].
    TooLong,
    /// Starts with `/`.
    Absolute,
    /// Has a `..` segment (this is also how `../cachedir_other` sibling
    /// escapes are caught).
    ParentSegment,
    /// Has a `.` segment.
    CurrentSegment,
    /// Has an empty segment (`a//b`, trailing `/`).
    EmptySegment,
    /// A segment longer than [`crate::KEY_SEGMENT_BYTES_MAX`].
    SegmentTooLong,
    /// More than [`crate::KEY_DEPTH_MAX`] segments.
    TooDeep,
    /// Contains NUL or another control character.
    ControlCharacter,
    /// Ends in `.part`, the staging suffix.
    StagingSuffix,
    /// Joined to the cache root, it would not stay under it.
    EscapesRoot,
    /// A component on disk is a symlink (the cache never follows them).
    SymlinkInPath,
    /// A parent segment names an existing object, not a directory.
    ParentIsObject,
    /// The key names an existing directory.
    IsDirectory,
}

impl fmt::Display for KeyRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            KeyRejection::Empty => "empty key",
            KeyRejection::TooLong => "longer than KEY_BYTES_MAX",
            KeyRejection::Absolute => "absolute path",
            KeyRejection::ParentSegment => "contains a `..` segment",
            KeyRejection::CurrentSegment => "contains a `.` segment",
            KeyRejection::EmptySegment => "contains an empty segment",
            KeyRejection::SegmentTooLong => "a segment is longer than KEY_SEGMENT_BYTES_MAX",
            KeyRejection::TooDeep => "more than KEY_DEPTH_MAX segments",
            KeyRejection::ControlCharacter => "contains a control character",
            KeyRejection::StagingSuffix => "ends in `.part`, reserved for staging files",
            KeyRejection::EscapesRoot => "resolves outside the cache directory",
            KeyRejection::SymlinkInPath => "a path component is a symlink",
            KeyRejection::ParentIsObject => "a parent segment is an object, not a directory",
            KeyRejection::IsDirectory => "names a directory",
        };
        f.write_str(text)
    }
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn rejected(key: &str, reason: KeyRejection) -> Error {
        Error::KeyRejected {
            key: key.to_owned(),
            reason,
        }
    }

    /// True for ENOSPC / EDQUOT from the filesystem.
    pub(crate) fn is_nospace(source: &io::Error) -> bool {
        matches!(
            ringstore_journal::storage::errno(source),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        )
    }
}
