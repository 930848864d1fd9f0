//! Typed errors. Expected failures (I/O, damaged files, incompatible
//! snapshots, backpressure, bad configuration) are values of [`Error`]; a
//! broken internal invariant is a bug and panics.
//!
//! Errors name the file and, where there is one, the byte offset or the op.
//! They are `Clone` because one failure (a poisoned journal, a failed
//! checkpoint) is reported to every caller waiting on it.

use crate::format::{IDENTITY_HEADER_BYTES, SECTION_COUNT_MAX};
use crate::machine::{DecodeError, EncodeError, RestoreError};
use serde::Serialize;
use std::{io, path::PathBuf, sync::Arc, time::Duration};
use uuid::Uuid;

/// Result alias for engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The step of persisting a snapshot that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistStage {
    /// Creating the temporary file.
    Create,
    /// Writing the temporary file.
    Write,
    /// fdatasync of the temporary file.
    Sync,
    /// Renaming the temporary file to its final name.
    Rename,
    /// fsync of the snapshot directory, which makes the rename durable.
    DirSync,
}

impl PersistStage {
    /// Whether persisting again is safe. Up to and including the rename,
    /// the older snapshots are untouched and a retry writes a fresh
    /// temporary file. After a failed directory fsync the kernel may have
    /// dropped the directory's dirty state: whether the new snapshot
    /// survives a crash is unknown, and a later fsync that succeeds does not
    /// say otherwise. The shard must not advance its watermark on it; reopen.
    pub fn retry_is_safe(self) -> bool {
        !matches!(self, PersistStage::DirSync)
    }

    /// The step's name.
    pub fn name(self) -> &'static str {
        match self {
            PersistStage::Create => "create",
            PersistStage::Write => "write",
            PersistStage::Sync => "fdatasync",
            PersistStage::Rename => "rename",
            PersistStage::DirSync => "directory fsync",
        }
    }
}

impl std::fmt::Display for PersistStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a snapshot file was not loaded.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Reading the file failed.
    #[error("{op} failed on {path} at byte offset {offset}: {source}")]
    Io {
        /// The call.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The file fails verification (the first check that failed, in the
    /// order of [`crate::snapshot::verify`]): it names the file, the byte
    /// offset and what is wrong.
    #[error(transparent)]
    Damaged(#[from] SnapshotDamage),
    /// The file verifies but holds the state at another op than the one it
    /// was sent as.
    #[error("{path} holds the state at op {found}, not at op {expected} as it was sent")]
    WrongWatermark {
        /// The file.
        path: PathBuf,
        /// The op it was sent as.
        expected: u64,
        /// The op its header records.
        found: u64,
    },
}

impl SnapshotError {
    /// The file.
    pub fn path(&self) -> &std::path::Path {
        match self {
            SnapshotError::Io { path, .. } => path,
            SnapshotError::Damaged(damage) => &damage.path,
            SnapshotError::WrongWatermark { path, .. } => path,
        }
    }

    /// What verification found wrong, if that is why.
    pub fn damage(&self) -> Option<&SnapshotDamage> {
        match self {
            SnapshotError::Damaged(damage) => Some(damage),
            SnapshotError::Io { .. } | SnapshotError::WrongWatermark { .. } => None,
        }
    }
}

/// A snapshot generation that was passed over at load time, and why.
#[derive(Debug, Clone)]
pub struct SkippedSnapshot {
    /// The file.
    pub path: PathBuf,
    /// Why it was not used.
    pub reason: SnapshotError,
}

/// Everything the engine can report.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The journal failed (see its error for the file and offset).
    #[error(transparent)]
    Journal(#[from] ringstore_journal::Error),

    /// Persisting a snapshot failed at `stage`. Older snapshots are intact.
    #[error(
        "persisting snapshot {path} failed at the {stage} step: {source} ({})",
        if stage.retry_is_safe() {
            "older snapshots are intact; retrying is safe"
        } else {
            "whether the snapshot survives a crash is unknown; do not retry, reopen the shard"
        }
    )]
    Persist {
        /// The step that failed.
        stage: PersistStage,
        /// The file being written (the temporary name up to the rename).
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Arc<io::Error>,
    },

    /// A snapshot's state could not be encoded.
    #[error("encoding snapshot section {section:?} failed: {source}")]
    Encode {
        /// The section.
        section: String,
        /// bincode's error.
        #[source]
        source: Arc<EncodeError>,
    },

    /// A snapshot file is damaged or not usable (see [`SnapshotError`]).
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),

    /// A snapshot verified but its sections do not restore in this build
    /// (unknown section, unsupported section version, bad contents). This
    /// is not damage, so no older generation is tried in its place.
    #[error("{path}: {source}")]
    Restore {
        /// The snapshot file.
        path: PathBuf,
        /// What the state machine refused.
        #[source]
        source: Arc<RestoreError>,
    },

    /// The newest usable snapshot is older than the journal's watermark:
    /// the ops between them were compacted away on the strength of a
    /// snapshot that is now damaged, of another domain or missing, so the
    /// state cannot be rebuilt. The message names every snapshot file tried
    /// and why it was skipped (file, byte offset, reason).
    #[error(
        "no usable snapshot covers the journal's watermark: the journal in {} was compacted up \
         to op {journal_watermark}, {}",
        journal_dir.display(),
        describe_snapshots_tried(snapshot_dir, snapshot.as_deref(), *snapshot_op, skipped)
    )]
    SnapshotBehindJournal {
        /// The snapshot directory.
        snapshot_dir: PathBuf,
        /// The newest usable snapshot (`None`: none).
        snapshot: Option<PathBuf>,
        /// Its op (0: none).
        snapshot_op: u64,
        /// The journal directory.
        journal_dir: PathBuf,
        /// The journal's watermark.
        journal_watermark: u64,
        /// The newer snapshot files tried and skipped, newest first, with
        /// the reasons.
        skipped: Vec<SkippedSnapshot>,
    },

    /// Replay found an op missing above the snapshot.
    #[error(
        "journal has no op {op} above the snapshot at op {snapshot_op} although it holds ops up \
         to {last_op}: replay would skip it"
    )]
    ReplayGap {
        /// The missing op.
        op: u64,
        /// The snapshot replay started from.
        snapshot_op: u64,
        /// The last op the journal holds.
        last_op: u64,
    },

    /// A journal entry's payload is not a command of this state machine.
    #[error("op {op}: journal entry does not decode as a command: {source}")]
    CommandDecode {
        /// The op.
        op: u64,
        /// What failed.
        #[source]
        source: Arc<DecodeError>,
    },

    /// A command could not be encoded.
    #[error("command does not encode: {0}")]
    CommandEncode(Arc<EncodeError>),

    /// The ring stayed full for the whole bounded wait: checkpoints are not
    /// freeing slots fast enough (or are failing; see the shard's stats).
    #[error(
        "journal ring full for {waited:?} waiting for a checkpoint to free slots; raise \
         slot_count or lower the checkpoint thresholds"
    )]
    Backpressure {
        /// How long the submit waited.
        waited: Duration,
    },

    /// An earlier failure made the shard's state untrustworthy: every call
    /// fails until the shard is reopened (which recovers from disk).
    #[error("shard poisoned by an earlier failure, reopen it: {cause}")]
    Poisoned {
        /// The first failure.
        cause: Box<Error>,
    },

    /// The shard's identity file is damaged, of another format version, or
    /// missing where data exists (see [`crate::layout::identity::identity_verdict`]).
    #[error(transparent)]
    Identity(#[from] IdentityDamage),

    /// The shard's journal belongs to another shard or domain than the
    /// shard's identity (and place) say. Which of the two is foreign cannot
    /// be told, so both files are named; nothing was changed.
    #[error(
        "{identity} says this shard is {expected}, but its journal's superblock {superblock} \
         records {recorded}: one of them belongs to another shard or domain (a copied or \
         swapped directory?)"
    )]
    ForeignJournal {
        /// The shard's identity file.
        identity: PathBuf,
        /// The journal's superblock.
        superblock: PathBuf,
        /// The owner the shard expected (its domain and place).
        expected: ringstore_journal::JournalOwner,
        /// The owner the journal records.
        recorded: ringstore_journal::JournalOwner,
    },

    /// After a reset, the first op or its epoch was not above everything
    /// the shard had seen.
    #[error(
        "first op after reset is op {op} at epoch {epoch}; it must be op {expected_op} at epoch \
         {expected_epoch} or later"
    )]
    ResetCheck {
        /// The op that was assigned.
        op: u64,
        /// Its epoch.
        epoch: u64,
        /// The op expected.
        expected_op: u64,
        /// The smallest epoch allowed.
        expected_epoch: u64,
    },

    /// A directory or file call outside the journal and snapshot writes
    /// failed.
    #[error("{op} failed on {path}: {source}")]
    Io {
        /// The call.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },

    /// A setting is out of range; nothing was opened.
    #[error("invalid shard setting {setting} = {value}: {reason}")]
    InvalidConfig {
        /// The setting.
        setting: &'static str,
        /// The value given.
        value: String,
        /// The valid range.
        reason: String,
    },

    /// A reset is running; submit again once it finished.
    #[error("shard is being reset to a snapshot; retry once the reset finished")]
    Resetting,

    /// The shard is closed or closing.
    #[error("shard is closed")]
    Closed,

    /// A CPU asked for is not in this process's affinity mask.
    #[error(
        "CPU {cpu} is not available to this process (available: {available}); \
         choose CPUs from that list or run fewer shards"
    )]
    CpuUnavailable {
        /// The CPU asked for.
        cpu: usize,
        /// The CPUs the process may run on.
        available: String,
    },

    /// RLIMIT_MEMLOCK is too low for an io_uring reactor.
    #[error(
        "locked-memory limit (RLIMIT_MEMLOCK) is {limit_bytes} bytes, a reactor needs at least \
         {needed_bytes}: raise it with `ulimit -l {}` (KiB), LimitMEMLOCK= in a systemd unit, \
         or memlock in /etc/security/limits.conf",
        needed_bytes.div_ceil(1024)
    )]
    MemlockTooLow {
        /// The soft limit now.
        limit_bytes: u64,
        /// The least that works.
        needed_bytes: u64,
    },

    /// The data directory's manifest cannot be read.
    #[error(
        "{path}: not a ringstore engine manifest ({reason}); is this the right data directory?"
    )]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The data directory was created with another shard count.
    #[error(
        "{path}: the data directory holds {found} shards, the engine is configured for \
         {configured}; keys are routed by shard count, so start it with {found} shards"
    )]
    ShardCountMismatch {
        /// The manifest.
        path: PathBuf,
        /// The count recorded.
        found: usize,
        /// The count asked for.
        configured: usize,
    },

    /// A shard the data directory's superblock records as created has lost
    /// its directory or its identity file.
    #[error(
        "{path}: shard {shard} was created in this data directory (its superblock records \
         it), but its directory or its identity file is gone; starting it empty would lose \
         every command it acknowledged. Put the directory back, restore it from object \
         storage (`ringstore restore --shard {shard} --domain <its domain>`), or give its \
         data up with `EngineBuilder::abandon_missing_shard({shard})`"
    )]
    ShardMissing {
        /// The shard.
        shard: usize,
        /// Its directory.
        path: PathBuf,
    },

    /// An open told not to create a shard (`ShardBuilder::create_if_missing
    /// (false)`) found no shard in the directory: no directory, or one with
    /// no identity file and no data.
    #[error(
        "{path}: no shard here (no identity file and no data), and the open was told not to \
         create one (`create_if_missing(false)`); starting it empty would lose every command \
         the shard acknowledged. If its directory was lost, put it back or restore it from \
         object storage; if the shard is new, open it with `create_if_missing(true)`"
    )]
    NoShard {
        /// The shard directory.
        path: PathBuf,
    },

    /// A shard's reactor thread could not start or died.
    #[error(
        "shard {shard}: its reactor{} failed: {reason}",
        cpu.map_or(String::new(), |cpu| format!(" (CPU {cpu})"))
    )]
    ReactorStart {
        /// The shard's index.
        shard: usize,
        /// Its CPU, if it was pinned to one.
        cpu: Option<usize>,
        /// glommio's error.
        reason: String,
    },

    /// A shard failed to open at engine start.
    #[error("shard {shard} failed to open: {source}")]
    ShardStart {
        /// The shard's index.
        shard: usize,
        /// Why.
        #[source]
        source: Box<Error>,
    },

    /// An extension of the shard (object storage, cold restore, reset)
    /// failed where the core's API reports it: opening or closing a shard
    /// with object storage, a cold restore's preparation of the directory
    /// inside the open, the engine's `restore_shard`. The message is the
    /// extension's own (file, offset, key, what), and
    /// [`ExtensionError::downcast_ref`] gives its typed error
    /// (`object_store::ObjectStoreError`, `cold_restore::ColdRestoreError`,
    /// `reset::ResetError`).
    #[error(transparent)]
    Extension(ExtensionError),

    /// A cold restore into this shard directory started and did not finish
    /// (the process died, or the restore failed before it could clean up).
    #[error(
        "{path}: a cold restore into this shard directory did not finish; run the restore \
         again (it starts over) or remove the shard directory"
    )]
    RestoreIncomplete {
        /// The marker file.
        path: PathBuf,
    },

    /// Another process has the shard directory open.
    #[error(
        "{path} is locked by {}: a shard directory is opened by one process at a time; \
         stop that process or use another data directory",
        holder.map_or("another process".to_string(), |pid| format!("process {pid}"))
    )]
    DirLocked {
        /// The lock file.
        path: PathBuf,
        /// The pid the holder wrote into it, if readable.
        holder: Option<u32>,
    },
}

/// What an open found in the snapshot directory, for
/// [`Error::SnapshotBehindJournal`]: the snapshot it could use, and every
/// newer file it tried with the reason it was skipped.
fn describe_snapshots_tried(
    dir: &std::path::Path,
    usable: Option<&std::path::Path>,
    usable_op: u64,
    skipped: &[SkippedSnapshot],
) -> String {
    let reasons: Vec<String> = skipped.iter().map(|s| s.reason.to_string()).collect();
    let reasons = reasons.join("; ");
    match (usable, skipped.len()) {
        (Some(path), 0) => format!(
            "and the newest snapshot, {}, is at op {usable_op}",
            path.display()
        ),
        (Some(path), n) => format!(
            "and the newest usable snapshot is {} at op {usable_op}; {n} newer snapshot \
             file(s) skipped: {reasons}",
            path.display()
        ),
        (None, 0) => format!("and {} holds no snapshot file", dir.display()),
        (None, n) => format!(
            "and no snapshot in {} is usable; {n} snapshot file(s) skipped: {reasons}",
            dir.display()
        ),
    }
}

/// An extension's error inside the core's [`Error`]: which extension, and
/// its own error, whose message and source chain it shows unchanged.
#[derive(Debug, Clone)]
pub struct ExtensionError {
    extension: &'static str,
    error: Arc<dyn std::error::Error + Send + Sync>,
}

impl ExtensionError {
    /// Which extension failed: `"object storage"`, `"cold restore"` or
    /// `"reset"`.
    pub fn extension(&self) -> &'static str {
        self.extension
    }

    /// The extension's typed error, if it is a `T`.
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        self.error.downcast_ref::<T>()
    }
}

impl std::fmt::Display for ExtensionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for ExtensionError {
    // The extension's error stands in for this one: its cause is the next
    // in the chain, as if the core had reported it itself.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

impl Error {
    /// Wraps an extension's error (see [`Error::Extension`]).
    pub(crate) fn extension(
        extension: &'static str,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Extension(ExtensionError {
            extension,
            error: Arc::new(error),
        })
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// True if this error poisoned the shard (or reports that it is).
    pub fn is_poisoned(&self) -> bool {
        matches!(self, Error::Poisoned { .. })
            || matches!(self, Error::Journal(e) if e.is_poisoned())
    }
}

/// Data files an [`IdentityFault::MissingWithData`] message names before
/// it says how many more there are.
const FOUND_NAMED_MAX: usize = 3;

/// Why an open refuses a shard directory over its identity. The
/// [`IdentityDamage`] that carries it names the file and, where there is
/// one, the byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityFault {
    /// Shorter than the header (zero-length included).
    #[error(
        "identity file is damaged ({len} bytes, the header needs {IDENTITY_HEADER_BYTES}: \
         truncated)"
    )]
    Truncated {
        /// The bytes there are.
        len: u64,
    },
    /// Not an identity file's magic number.
    #[error("identity file is damaged (magic {found:#010x} is not an identity's)")]
    BadMagic {
        /// What is there.
        found: u32,
    },
    /// The header fails its checksum.
    #[error(
        "identity file is damaged (checksum mismatch: recorded {recorded:#010x}, computed \
         {computed:#010x})"
    )]
    Checksum {
        /// The checksum recorded.
        recorded: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// A format version this build does not read (the checksum verifies).
    #[error("identity format version {version}, this build reads version {supported}")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// No identity file, but the directory holds snapshots or a journal.
    #[error(
        "missing, but the shard directory holds a journal or snapshots ({}): the domain they \
         belong to is unknown",
        describe_found(found)
    )]
    MissingWithData {
        /// The snapshot files and journal entries found.
        found: Vec<PathBuf>,
    },
    /// The identity records that the shard's journal was created, and the
    /// journal directory holds neither its superblock nor a segment.
    #[error(
        "records that the shard's journal exists, but {} holds no journal (no superblock, \
         no segment): the acknowledged ops it held above the newest snapshot are gone",
        journal.display()
    )]
    JournalMissing {
        /// The journal directory.
        journal: PathBuf,
    },
}

fn describe_found(found: &[PathBuf]) -> String {
    let mut named: Vec<String> = found
        .iter()
        .take(FOUND_NAMED_MAX)
        .map(|p| p.display().to_string())
        .collect();
    if found.len() > FOUND_NAMED_MAX {
        named.push(format!("and {} more", found.len() - FOUND_NAMED_MAX));
    }
    named.join(", ")
}

/// The identity verdict that refuses an open: the file, the byte offset
/// where there is one, what is wrong, and what an operator can do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}{}: {fault}. {}",
    path.display(),
    offset.map_or_else(String::new, |o| format!(" at byte offset {o}")),
    self.advice()
)]
pub struct IdentityDamage {
    /// The identity file.
    pub path: PathBuf,
    /// Byte offset of the bad field (`None` for a missing file).
    pub offset: Option<u64>,
    /// What is wrong.
    pub fault: IdentityFault,
}

impl IdentityDamage {
    /// What an operator can do about it.
    pub fn advice(&self) -> &'static str {
        match self.fault {
            IdentityFault::UnsupportedVersion { .. } => {
                "It was written by another build of ringstore; open the shard with a build that \
                 reads that version"
            }
            IdentityFault::MissingWithData { .. } => {
                "Restore the identity file, or move the directory aside and restore the shard \
                 from object storage"
            }
            IdentityFault::JournalMissing { .. } => {
                "Restore the journal directory from a backup; or move the shard dir aside and \
                 restore the shard from object storage (which holds only what was uploaded), \
                 or for a raft node rejoin the cluster with an empty directory under a new \
                 node id"
            }
            _ => {
                "It names the domain this shard's data belongs to. Restore it from a backup, or \
                 move the shard dir aside and restore the shard from object storage"
            }
        }
    }
}

impl Serialize for IdentityDamage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("IdentityDamage", 4)?;
        s.serialize_field("path", &self.path)?;
        s.serialize_field("offset", &self.offset)?;
        s.serialize_field("reason", &self.fault.to_string())?;
        s.serialize_field("message", &self.to_string())?;
        s.end()
    }
}

/// What is wrong with a snapshot file. The [`SnapshotDamage`] that carries
/// it names the file and the byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotFault {
    /// The file is shorter than the header block, or than its header says.
    #[error("file is {len} bytes, {what} needs {needed} (truncated)")]
    Truncated {
        /// Its length.
        len: u64,
        /// The length it should have at least.
        needed: u64,
        /// What needs it: the header block, or the header.
        what: &'static str,
    },
    /// The file ended while its body was read (it shrank after its length
    /// was checked).
    #[error("file ends inside section {section:?} (truncated)")]
    EndsInBody {
        /// The section being read.
        section: String,
    },
    /// Not a snapshot's magic number.
    #[error("magic {found:#010x} is not a snapshot's")]
    BadMagic {
        /// What is there.
        found: u32,
    },
    /// The header block (header and section table) fails its checksum.
    #[error(
        "header block checksum mismatch (header or section table damaged; recorded \
         {recorded:#010x}, computed {computed:#010x})"
    )]
    HeaderChecksum {
        /// The checksum in the header.
        recorded: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// A format version this build does not read.
    #[error("snapshot format version {version}, this build reads version {supported}")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The header's watermark is not the op in the file name.
    #[error("the header says op {header_op}, the file name does not match")]
    NameMismatch {
        /// The op in the header.
        header_op: u64,
    },
    /// The snapshot belongs to another domain.
    #[error("belongs to domain {found}, the shard's identity names {expected}")]
    WrongDomain {
        /// The shard's domain.
        expected: Uuid,
        /// The snapshot's domain.
        found: Uuid,
    },
    /// `body_bytes` is too large to be a length.
    #[error("body length {body_bytes} overflows")]
    BodyLengthOverflow {
        /// The length recorded.
        body_bytes: u64,
    },
    /// More sections than fit in the header block.
    #[error("{count} sections, at most {SECTION_COUNT_MAX}")]
    TooManySections {
        /// The count recorded.
        count: u32,
    },
    /// A section name that is empty, not UTF-8 or not zero-padded.
    #[error("section {index} has a bad name")]
    BadSectionName {
        /// The entry's index in the table.
        index: usize,
    },
    /// Two entries with one name.
    #[error("section {name:?} appears twice")]
    DuplicateSection {
        /// The name.
        name: String,
    },
    /// An entry that does not start where the previous one ends.
    #[error(
        "section {name:?} starts at {offset}, expected {}",
        expected.map_or_else(|| "(overflow)".to_string(), |o| o.to_string())
    )]
    SectionOffset {
        /// The section.
        name: String,
        /// Its offset as recorded.
        offset: u64,
        /// Where it should start (`None`: the previous lengths overflow).
        expected: Option<u64>,
    },
    /// The sections do not end where the body does.
    #[error("sections do not fill the body exactly")]
    SectionsDoNotFillBody,
    /// A section's bytes fail their checksum.
    #[error(
        "section {section:?} fails its checksum (recorded {recorded:#010x}, computed \
         {computed:#010x})"
    )]
    SectionChecksum {
        /// The section.
        section: String,
        /// The checksum in the table.
        recorded: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// The whole-file checksum does not match.
    #[error("whole-file checksum mismatch (recorded {recorded:#010x}, computed {computed:#010x})")]
    FileChecksum {
        /// The checksum in the header.
        recorded: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
}

/// Something in a snapshot file that fails verification: the file, the
/// byte offset of the damaged field or section, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} at byte offset {offset}: {fault}", path.display())]
pub struct SnapshotDamage {
    /// The file.
    pub path: PathBuf,
    /// Byte offset of the damaged field or section (for a truncation: where
    /// the file ends).
    pub offset: u64,
    /// What is wrong.
    pub fault: SnapshotFault,
}

impl SnapshotDamage {
    /// What is wrong, without the file and offset.
    pub fn reason(&self) -> String {
        self.fault.to_string()
    }
}

impl Serialize for SnapshotDamage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("SnapshotDamage", 3)?;
        s.serialize_field("path", &self.path)?;
        s.serialize_field("offset", &self.offset)?;
        s.serialize_field("reason", &self.reason())?;
        s.end()
    }
}
