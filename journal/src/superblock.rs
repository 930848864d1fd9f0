//! Superblocks: a small record of what must exist, kept in two copies.
//!
//! A journal's segments cannot tell on their own that one of them is
//! missing, that the newest was deleted, or that a valid file from another
//! journal was dropped in. The superblock records it: which segment
//! generations must exist, where each closed segment's durable data ends,
//! which journal (and which shard of which domain) the files belong to.
//! The engine keeps one per data directory too (the shard count), written
//! by the same code.
//!
//! # Redundancy
//!
//! A superblock file holds [`SUPERBLOCK_COPIES`] copies of
//! [`SUPERBLOCK_COPY_BYTES`] each. An update writes copy 0, syncs it, then
//! writes copy 1 and syncs it, both with the same sequence number, one
//! higher than before. So at every instant at least one copy holds either
//! the new or the previous state in full:
//!
//! | crash during | copy 0 | copy 1 | read gives |
//! |---|---|---|---|
//! | copy 0's write | torn (or old) | old | old: the update never happened |
//! | between the two | new | old | new |
//! | copy 1's write | new | torn (or old) | new |
//!
//! The reader takes the valid copy with the highest sequence. A copy that
//! does not verify at rest (a flipped bit, a zeroed block, a misdirected
//! write) is reported; the other copy still holds the same state. Only when
//! neither copy verifies is the file damage ([`SuperblockFault`]).
//!
//! The order matters once the copies differ (after a crash between them,
//! or a copy damaged at rest): an update then writes the *other* copy
//! first — the one not holding the newest state — so the newest state
//! survives in full until a newer one does. Writing the newest copy first
//! would let a second crash tear it and bring back the state before it,
//! which recovery may already have acted on (segments it removed).
//! Recovery repairs differing copies this way before it removes anything.
//!
//! Updates are rare (a segment rollover or retirement, a clean close, a
//! salvage, an owner change), never per append.
//!
//! The decoding here is sans-IO: bytes in, verdict out, shared by the
//! journal's recovery and the read-only `inspect` scan.

use crate::format::{BLOCK_BYTES, HARD_STATE_BYTES_MAX};
use crate::storage::{IoBuf, Storage, StorageFile};
use std::io;
use std::path::Path;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// File name of a journal's superblock (in the journal directory).
pub const SUPERBLOCK_FILE_NAME: &str = "superblock";

/// Bytes of one copy: one block, so each copy is written atomically per
/// sector and never shares a sector with the other.
pub const SUPERBLOCK_COPY_BYTES: u64 = BLOCK_BYTES;

/// Sequences at or above this are refused: one update a microsecond would
/// take 290,000 years to reach it, and a forged sequence near `u64::MAX`
/// would overflow the updates after it.
pub const SUPERBLOCK_SEQUENCE_MAX: u64 = 1 << 63;

/// Copies per superblock file.
pub const SUPERBLOCK_COPIES: usize = 2;

/// Bytes of a superblock file.
pub const SUPERBLOCK_FILE_BYTES: u64 = SUPERBLOCK_COPY_BYTES * SUPERBLOCK_COPIES as u64;

/// "RSUP" read as a little-endian u32.
pub const SUPERBLOCK_MAGIC: u32 = u32::from_le_bytes(*b"RSUP");

/// The superblock format version this build writes and reads.
pub const SUPERBLOCK_VERSION: u32 = 1;

/// Bytes of the header at the start of every copy.
pub const SUPERBLOCK_HEADER_BYTES: usize = size_of::<SuperblockHeader>();

/// Largest body a copy holds.
pub const SUPERBLOCK_BODY_BYTES_MAX: usize =
    SUPERBLOCK_COPY_BYTES as usize - SUPERBLOCK_HEADER_BYTES;

const _: () = assert!(SUPERBLOCK_HEADER_BYTES == 32);

/// What a superblock describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SuperblockKind {
    /// A journal directory ([`JournalSuperblock`]).
    Journal = 1,
    /// An engine data directory (the engine's own body).
    DataDir = 2,
}

/// The header of each copy.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct SuperblockHeader {
    /// CRC-32 of bytes `4..SUPERBLOCK_COPY_BYTES` of the copy (header
    /// after this field, body, and the zero fill after it).
    pub checksum: U32,
    /// [`SUPERBLOCK_MAGIC`].
    pub magic: U32,
    /// [`SUPERBLOCK_VERSION`].
    pub version: U32,
    /// A [`SuperblockKind`] as `u32`.
    pub kind: U32,
    /// One higher with every update; both copies of an update carry it.
    pub sequence: U64,
    /// Which copy this is (its index in the file), so a copy written to the
    /// other's place is detected.
    pub copy: U32,
    /// Bytes of body following the header.
    pub body_len: U32,
}

/// Why one copy does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFault {
    /// Byte offset of the copy in the file.
    pub offset: u64,
    /// What failed.
    pub reason: String,
}

/// A superblock read from its copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The newest valid copy's sequence.
    pub sequence: u64,
    /// Its body.
    pub body: Vec<u8>,
    /// Copies that did not verify or hold an older sequence.
    pub stale_or_damaged: Vec<CopyFault>,
    /// The index of a copy holding the chosen state (an update writes the
    /// other one first).
    pub newest_copy: usize,
}

/// Why a superblock could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuperblockFault {
    /// No copy verifies.
    Damaged(Vec<CopyFault>),
    /// A copy verifies but was written by another superblock format version.
    UnsupportedVersion(u32),
    /// The copies verify but describe another kind of directory.
    WrongKind(u32),
}

impl std::fmt::Display for SuperblockFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SuperblockFault::Damaged(faults) => {
                write!(f, "no superblock copy verifies (")?;
                for (i, fault) in faults.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "; " };
                    write!(
                        f,
                        "{sep}copy at byte offset {}: {}",
                        fault.offset, fault.reason
                    )?;
                }
                write!(f, ")")
            }
            SuperblockFault::UnsupportedVersion(v) => write!(
                f,
                "superblock format version {v}, this build reads version {SUPERBLOCK_VERSION}"
            ),
            SuperblockFault::WrongKind(k) => write!(f, "superblock of another kind ({k})"),
        }
    }
}

/// Encodes copy `copy` of a superblock: exactly [`SUPERBLOCK_COPY_BYTES`].
///
/// # Panics
/// If `body` is longer than [`SUPERBLOCK_BODY_BYTES_MAX`] (the callers' bodies
/// are bounded by construction) or `copy` is out of range.
pub fn encode_copy(kind: SuperblockKind, sequence: u64, copy: usize, body: &[u8]) -> Vec<u8> {
    assert!(
        body.len() <= SUPERBLOCK_BODY_BYTES_MAX,
        "superblock body too long"
    );
    assert!(copy < SUPERBLOCK_COPIES);
    let mut bytes = vec![0u8; SUPERBLOCK_COPY_BYTES as usize];
    let header = SuperblockHeader {
        checksum: 0.into(),
        magic: SUPERBLOCK_MAGIC.into(),
        version: SUPERBLOCK_VERSION.into(),
        kind: (kind as u32).into(),
        sequence: sequence.into(),
        copy: (copy as u32).into(),
        body_len: (body.len() as u32).into(),
    };
    bytes[..SUPERBLOCK_HEADER_BYTES].copy_from_slice(header.as_bytes());
    bytes[SUPERBLOCK_HEADER_BYTES..SUPERBLOCK_HEADER_BYTES + body.len()].copy_from_slice(body);
    let checksum = crc32fast::hash(&bytes[4..]);
    bytes[..4].copy_from_slice(&checksum.to_le_bytes());
    bytes
}

/// Decodes one copy read from byte offset `copy * SUPERBLOCK_COPY_BYTES`.
fn decode_copy(bytes: &[u8], copy: usize) -> Result<(SuperblockHeader, &[u8]), CopyFault> {
    let offset = copy as u64 * SUPERBLOCK_COPY_BYTES;
    let fault = |reason: String| CopyFault { offset, reason };
    if (bytes.len() as u64) < SUPERBLOCK_COPY_BYTES {
        return Err(fault(format!(
            "the file ends {} bytes into this copy",
            bytes.len()
        )));
    }
    let bytes = &bytes[..SUPERBLOCK_COPY_BYTES as usize];
    if bytes.iter().all(|b| *b == 0) {
        return Err(fault("zeroed (never written, or wiped)".into()));
    }
    let Ok((header, _)) = SuperblockHeader::read_from_prefix(bytes) else {
        return Err(fault("too short for a header".into()));
    };
    if header.magic.get() != SUPERBLOCK_MAGIC {
        return Err(fault("bad magic".into()));
    }
    if header.checksum.get() != crc32fast::hash(&bytes[4..]) {
        return Err(fault("checksum mismatch".into()));
    }
    // The sequence only grows by one per update: the last value could not
    // be followed (only a forged copy holds it).
    if header.sequence.get() == u64::MAX {
        return Err(fault("sequence out of range".into()));
    }
    if header.copy.get() as usize != copy {
        return Err(fault(format!(
            "holds copy {} (a misdirected write)",
            header.copy.get()
        )));
    }
    let body_len = header.body_len.get() as usize;
    if body_len > SUPERBLOCK_BODY_BYTES_MAX {
        return Err(fault(format!("body length {body_len} out of range")));
    }
    Ok((
        header,
        &bytes[SUPERBLOCK_HEADER_BYTES..SUPERBLOCK_HEADER_BYTES + body_len],
    ))
}

/// Most reads of a superblock file a reader makes while a copy is found
/// wanting and each read differs from the one before (transient faults);
/// see [`settle_reads`].
pub const SUPERBLOCK_READS_MAX: usize = 3;

/// Reads a superblock file again, through `read`, while a copy does not
/// verify or holds an older state and the read differs from the one
/// before it, at most [`SUPERBLOCK_READS_MAX`] reads: a copy found wanting
/// is rewritten from the other at once (recovery), or reported (verify),
/// so a transient read fault in the newer copy must not make the older
/// state the chosen one. A read in which both copies verify and agree is
/// taken at once; otherwise the read whose chosen copy has the highest
/// sequence (a flipped bit cannot make a copy verify with a higher one)
/// and, of those, the fewest copies found wanting (the later on a tie).
/// Returns it and how many reads differed from the one before. One rule
/// for the open and for `verify`, so they agree.
pub async fn settle_reads<E, F: std::future::Future<Output = Result<Vec<u8>, E>>>(
    kind: SuperblockKind,
    mut read: impl FnMut() -> F,
) -> Result<(Vec<u8>, u64), E> {
    // (sequence, copies not wanting): higher is better; `None` for a read
    // in which no copy verifies.
    let rank = |bytes: &[u8]| {
        decode(bytes, kind).ok().map(|chosen| {
            let wanting = chosen.stale_or_damaged.len();
            (chosen.sequence, SUPERBLOCK_COPIES.saturating_sub(wanting))
        })
    };
    let settled =
        |rank: Option<(u64, usize)>| rank.is_some_and(|(_, sound)| sound == SUPERBLOCK_COPIES);
    let mut bytes = read().await?;
    let mut best = (rank(&bytes), bytes.clone());
    let mut transient = 0;
    for _ in 1..SUPERBLOCK_READS_MAX {
        if settled(best.0) {
            break;
        }
        let again = read().await?;
        if again == bytes {
            break;
        }
        transient += 1;
        if rank(&again) >= best.0 {
            best = (rank(&again), again.clone());
        }
        bytes = again;
    }
    Ok((best.1, transient))
}

/// Chooses the superblock from a file's bytes (both copies, or fewer bytes
/// if the file is short): the valid copy with the highest sequence.
pub fn decode(file: &[u8], kind: SuperblockKind) -> Result<Chosen, SuperblockFault> {
    let mut valid = Vec::new();
    let mut faults = Vec::new();
    for copy in 0..SUPERBLOCK_COPIES {
        let start = (copy as u64 * SUPERBLOCK_COPY_BYTES).min(file.len() as u64) as usize;
        match decode_copy(&file[start..], copy) {
            Ok((header, body)) => valid.push((header, body, copy)),
            Err(fault) => faults.push(fault),
        }
    }
    if let Some((header, _, _)) = valid
        .iter()
        .find(|(h, _, _)| h.version.get() != SUPERBLOCK_VERSION)
    {
        return Err(SuperblockFault::UnsupportedVersion(header.version.get()));
    }
    if let Some((header, _, _)) = valid.iter().find(|(h, _, _)| h.kind.get() != kind as u32) {
        return Err(SuperblockFault::WrongKind(header.kind.get()));
    }
    let Some((newest, body, newest_copy)) = valid.iter().max_by_key(|(h, _, _)| h.sequence.get())
    else {
        return Err(SuperblockFault::Damaged(faults));
    };
    for (header, _, copy) in &valid {
        if header.sequence.get() < newest.sequence.get() {
            faults.push(CopyFault {
                offset: *copy as u64 * SUPERBLOCK_COPY_BYTES,
                reason: format!(
                    "holds sequence {}, the other copy {}",
                    header.sequence.get(),
                    newest.sequence.get()
                ),
            });
        }
    }
    Ok(Chosen {
        sequence: newest.sequence.get(),
        body: body.to_vec(),
        stale_or_damaged: faults,
        newest_copy: *newest_copy,
    })
}

/// Reads the superblock file at `path`: `Ok(None)` if it does not exist,
/// otherwise its bytes (possibly fewer than [`SUPERBLOCK_FILE_BYTES`]).
pub async fn read_file<S: Storage>(storage: &S, path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match storage.open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let read = file.read_at(0, SUPERBLOCK_FILE_BYTES as usize).await;
    let _ = file.close().await;
    Ok(Some(read?.to_vec()))
}

/// The step of a superblock write that failed.
#[derive(Debug)]
pub struct WriteFailure {
    /// What failed, e.g. `"write superblock copy"`.
    pub op: &'static str,
    /// Byte offset of a failed write.
    pub offset: Option<u64>,
    /// The error.
    pub source: io::Error,
}

/// Writes every copy of a superblock, syncing after each, into the file at
/// `path` (created first when `create`; its directory entry is then made
/// durable too): every copy but `keep_last` first, then `keep_last` — pass
/// the copy holding the newest state on disk (see the module docs). A
/// failure leaves at least one copy with the previous or the new state; the
/// caller must not go on as if the update happened.
pub async fn write_file<S: Storage>(
    storage: &S,
    path: &Path,
    create: bool,
    kind: SuperblockKind,
    sequence: u64,
    body: &[u8],
    keep_last: usize,
) -> Result<(), WriteFailure> {
    let fail = |op, offset| move |source| WriteFailure { op, offset, source };
    let file = if create {
        storage
            .create(path, false)
            .await
            .map_err(fail("create superblock", None))?
    } else {
        storage
            .open(path)
            .await
            .map_err(fail("open superblock", None))?
    };
    let written = async {
        for copy in copy_order(keep_last) {
            let offset = copy as u64 * SUPERBLOCK_COPY_BYTES;
            let mut buf = file.alloc_buf(SUPERBLOCK_COPY_BYTES as usize);
            buf.as_bytes_mut()
                .copy_from_slice(&encode_copy(kind, sequence, copy, body));
            file.write_at(buf, offset)
                .await
                .map_err(fail("write superblock copy", Some(offset)))?;
            file.sync()
                .await
                .map_err(fail("fdatasync superblock", None))?;
        }
        Ok(())
    };
    let result = written.await;
    let _ = file.close().await;
    result?;
    if create {
        let dir = path.parent().unwrap_or(Path::new("."));
        storage
            .sync_dir(dir)
            .await
            .map_err(fail("fsync directory", None))?;
    }
    Ok(())
}

/// The order copies are written in: every copy but `keep_last`, then it.
fn copy_order(keep_last: usize) -> impl Iterator<Item = usize> {
    (0..SUPERBLOCK_COPIES)
        .filter(move |c| *c != keep_last)
        .chain(std::iter::once(keep_last % SUPERBLOCK_COPIES))
}

/// [`write_file`] with blocking `std::fs` calls, for tools and startup code
/// that run outside a reactor: the same copies in the same order (copy 1
/// last, or `keep_last` with [`write_file_blocking_keeping`]), each followed
/// by fdatasync; with `create`, the file is created (it must not exist) and
/// its directory fsync'd.
pub fn write_file_blocking(
    path: &Path,
    create: bool,
    kind: SuperblockKind,
    sequence: u64,
    body: &[u8],
) -> Result<(), WriteFailure> {
    write_file_blocking_keeping(path, create, kind, sequence, body, SUPERBLOCK_COPIES - 1)
}

/// [`write_file_blocking`], writing `keep_last` (the copy holding the
/// newest state on disk) last.
pub fn write_file_blocking_keeping(
    path: &Path,
    create: bool,
    kind: SuperblockKind,
    sequence: u64,
    body: &[u8],
    keep_last: usize,
) -> Result<(), WriteFailure> {
    use std::os::unix::fs::FileExt;
    let fail = |op, offset| move |source| WriteFailure { op, offset, source };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(create)
        .open(path)
        .map_err(fail(
            if create {
                "create superblock"
            } else {
                "open superblock"
            },
            None,
        ))?;
    for copy in copy_order(keep_last) {
        let offset = copy as u64 * SUPERBLOCK_COPY_BYTES;
        file.write_all_at(&encode_copy(kind, sequence, copy, body), offset)
            .map_err(fail("write superblock copy", Some(offset)))?;
        file.sync_data()
            .map_err(fail("fdatasync superblock", None))?;
    }
    if create {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(fail("fsync directory", None))?;
    }
    Ok(())
}

/// Bytes of the fixed part of a journal superblock's body.
pub const JOURNAL_BODY_BYTES: usize = size_of::<JournalBody>();

/// Closed-segment ends a journal superblock records (the newest ones; older
/// segments' ends are vouched for by their successors' headers).
pub const SEGMENT_ENDS_MAX: usize =
    (SUPERBLOCK_BODY_BYTES_MAX - JOURNAL_BODY_BYTES - HARD_STATE_RECORD_BYTES_MAX)
        / size_of::<SegmentEnd>();

/// Most bytes of hard state a journal superblock holds: its sequence (8
/// bytes) and the hard state itself.
pub const HARD_STATE_RECORD_BYTES_MAX: usize = 8 + HARD_STATE_BYTES_MAX;

const _: () = assert!(SEGMENT_ENDS_MAX >= 64);

/// The fixed part of a journal superblock's body.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct JournalBody {
    /// Random id of the journal; every segment header carries it.
    pub journal_id: [u8; 16],
    /// The owner's domain (all zero: no owner recorded).
    pub domain: [u8; 16],
    /// The owner's shard index.
    pub shard: U32,
    /// The owner's shard count (0: its place among shards is not recorded).
    pub shards: U32,
    /// Oldest segment generation that must exist (0 with `last` 0: none yet).
    pub first_generation: U64,
    /// Newest segment generation that must exist.
    pub last_generation: U64,
    /// The durable watermark when this superblock was written (a floor).
    pub watermark: U64,
    /// Number of [`SegmentEnd`]s following.
    pub ends_count: U32,
    /// Bytes of hard state following this fixed part, before the ends: 0
    /// (none recorded), or its sequence (u64) and the hard state (at most
    /// [`HARD_STATE_RECORD_BYTES_MAX`] in all).
    pub hard_state_len: U32,
}

/// Where one segment's durable data ends.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct SegmentEnd {
    /// The segment.
    pub generation: U64,
    /// Every byte before this offset is durable data; nothing at or after it
    /// belongs to the log.
    pub end: U64,
}

/// Who a journal belongs to: recorded in its superblock and checked at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JournalOwner {
    /// The domain (a UUID's bytes; never all zero).
    pub domain: [u8; 16],
    /// The shard's index.
    pub shard: u32,
    /// How many shards the data dir has (0: not known, e.g. a shard opened
    /// on its own; then only the domain is checked).
    pub shards: u32,
}

impl JournalOwner {
    /// True if `self` and `other` can be the same owner: the same domain and,
    /// where both know it, the same place among the same number of shards.
    pub fn agrees_with(&self, other: &JournalOwner) -> bool {
        self.domain == other.domain
            && (self.shards == 0
                || other.shards == 0
                || (self.shard, self.shards) == (other.shard, other.shards))
    }

    /// `self`, with the placement of `other` where `self` does not know it.
    pub fn completed_by(self, other: &JournalOwner) -> JournalOwner {
        if self.shards == 0 {
            JournalOwner {
                shard: other.shard,
                shards: other.shards,
                ..self
            }
        } else {
            self
        }
    }
}

impl std::fmt::Display for JournalOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.domain;
        write!(f, "domain ")?;
        for (i, b) in d.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                write!(f, "-")?;
            }
            write!(f, "{b:02x}")?;
        }
        if self.shards != 0 {
            write!(f, ", shard {} of {}", self.shard, self.shards)?;
        }
        Ok(())
    }
}

/// A journal's superblock, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalSuperblock {
    /// The journal's id; every segment header carries it.
    pub journal_id: [u8; 16],
    /// The owner, if one was recorded.
    pub owner: Option<JournalOwner>,
    /// Oldest generation that must exist (with `last_generation`, 0 for a
    /// journal that has no segment yet).
    pub first_generation: u64,
    /// Newest generation that must exist.
    pub last_generation: u64,
    /// The durable watermark when it was written.
    pub watermark: u64,
    /// Where segments' durable data ends: every closed segment (up to
    /// [`SEGMENT_ENDS_MAX`], newest kept) and the last one after a clean
    /// close or a salvage. Sorted by generation.
    pub ends: Vec<(u64, u64)>,
    /// The newest durable hard state when it was written (empty: none), so
    /// that retiring the segment holding its record does not lose it.
    pub hard_state: Vec<u8>,
    /// Its sequence number (0: none recorded): the newer of this and the
    /// last hard-state record in the log holds.
    pub hard_state_sequence: u64,
}

impl JournalSuperblock {
    /// The superblock of a new journal: no segment, watermark or hard state
    /// recorded yet.
    pub fn new(journal_id: [u8; 16], owner: Option<JournalOwner>) -> JournalSuperblock {
        JournalSuperblock {
            journal_id,
            owner,
            first_generation: 0,
            last_generation: 0,
            watermark: 0,
            ends: Vec::new(),
            hard_state: Vec::new(),
            hard_state_sequence: 0,
        }
    }

    /// Encodes the body. Keeps only the newest [`SEGMENT_ENDS_MAX`] ends.
    pub fn encode(&self) -> Vec<u8> {
        let ends = &self.ends[self.ends.len().saturating_sub(SEGMENT_ENDS_MAX)..];
        let owner = self.owner.unwrap_or_default();
        let body = JournalBody {
            journal_id: self.journal_id,
            domain: owner.domain,
            shard: owner.shard.into(),
            shards: owner.shards.into(),
            first_generation: self.first_generation.into(),
            last_generation: self.last_generation.into(),
            watermark: self.watermark.into(),
            ends_count: (ends.len() as u32).into(),
            hard_state_len: if self.hard_state_sequence == 0 {
                0.into()
            } else {
                ((8 + self.hard_state.len()) as u32).into()
            },
        };
        assert!(
            self.hard_state.len() <= HARD_STATE_BYTES_MAX,
            "hard state is checked against its limit when it is set"
        );
        let mut bytes = body.as_bytes().to_vec();
        if self.hard_state_sequence != 0 {
            bytes.extend_from_slice(&self.hard_state_sequence.to_le_bytes());
            bytes.extend_from_slice(&self.hard_state);
        }
        for &(generation, end) in ends {
            let end = SegmentEnd {
                generation: generation.into(),
                end: end.into(),
            };
            bytes.extend_from_slice(end.as_bytes());
        }
        bytes
    }

    /// Decodes and checks a body: `Err` names what is out of range.
    pub fn decode(body: &[u8]) -> Result<JournalSuperblock, String> {
        let Ok((fixed, rest)) = JournalBody::read_from_prefix(body) else {
            return Err(format!("journal superblock body of {} bytes", body.len()));
        };
        let count = fixed.ends_count.get() as usize;
        let hard_state_len = fixed.hard_state_len.get() as usize;
        if hard_state_len > HARD_STATE_RECORD_BYTES_MAX
            || hard_state_len > rest.len()
            || (1..8).contains(&hard_state_len)
        {
            return Err(format!(
                "journal superblock holds {hard_state_len} bytes of hard state"
            ));
        }
        let (hard_state, rest) = rest.split_at(hard_state_len);
        let (hard_state_sequence, hard_state) = match hard_state.split_first_chunk::<8>() {
            Some((sequence, state)) => (u64::from_le_bytes(*sequence), state),
            None => (0, hard_state),
        };
        if hard_state_len > 0 && (hard_state_sequence == 0 || hard_state_sequence == u64::MAX) {
            return Err(format!(
                "journal superblock records hard state sequence {hard_state_sequence}"
            ));
        }
        if count > SEGMENT_ENDS_MAX || rest.len() != count * size_of::<SegmentEnd>() {
            return Err(format!("journal superblock lists {count} segment ends"));
        }
        let first = fixed.first_generation.get();
        let last = fixed.last_generation.get();
        if (first == 0) != (last == 0) || first > last || last == u64::MAX {
            return Err(format!(
                "journal superblock names generations {first}..={last}"
            ));
        }
        let mut ends = Vec::with_capacity(count);
        for chunk in rest.chunks_exact(size_of::<SegmentEnd>()) {
            let Ok(end) = SegmentEnd::read_from_bytes(chunk) else {
                return Err("journal superblock segment end unreadable".into());
            };
            let (generation, offset) = (end.generation.get(), end.end.get());
            if ends.last().is_some_and(|&(g, _)| g >= generation) || generation > last {
                return Err(format!(
                    "journal superblock records the end of generation {generation} out of order"
                ));
            }
            ends.push((generation, offset));
        }
        if fixed.watermark.get() == u64::MAX {
            return Err("journal superblock records watermark u64::MAX".into());
        }
        let owner = (fixed.domain != [0; 16]).then(|| JournalOwner {
            domain: fixed.domain,
            shard: fixed.shard.get(),
            shards: fixed.shards.get(),
        });
        if owner.is_some_and(|o| o.shards != 0 && o.shard >= o.shards) {
            return Err(format!(
                "journal superblock names shard {} of {}",
                fixed.shard.get(),
                fixed.shards.get()
            ));
        }
        Ok(JournalSuperblock {
            journal_id: fixed.journal_id,
            owner,
            first_generation: first,
            last_generation: last,
            watermark: fixed.watermark.get(),
            ends,
            hard_state: hard_state.to_vec(),
            hard_state_sequence,
        })
    }

    /// The recorded end of segment `generation`, if any.
    pub fn end_of(&self, generation: u64) -> Option<u64> {
        self.ends
            .iter()
            .find(|(g, _)| *g == generation)
            .map(|(_, end)| *end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The superblock file after a crash between an update's two copies:
    /// copy 0 at `sequence` holding `newer`, copy 1 one below holding
    /// `older`.
    fn between_copies(sequence: u64) -> Vec<u8> {
        let kind = SuperblockKind::Journal;
        let mut file = encode_copy(kind, sequence, 0, b"newer");
        file.extend(encode_copy(kind, sequence - 1, 1, b"older"));
        file
    }

    fn flipped(mut bytes: Vec<u8>, at: usize) -> Vec<u8> {
        bytes[at] ^= 0x04;
        bytes
    }

    /// Runs `settle_reads` over `reads`, returning the bytes it keeps, the
    /// transient count and how many reads it made.
    fn settle(reads: Vec<Vec<u8>>) -> (Vec<u8>, u64, usize) {
        let mut reads = reads.into_iter();
        let mut made = 0;
        let (bytes, transient) =
            futures_lite::future::block_on(settle_reads(SuperblockKind::Journal, || {
                made += 1;
                std::future::ready(Ok::<_, ()>(reads.next().expect("a read too many")))
            }))
            .unwrap();
        (bytes, transient, made)
    }

    #[test]
    fn a_superblock_read_is_repeated_while_a_copy_is_wanting_and_the_best_read_kept() {
        let file = between_copies(9);
        let body = |bytes: &[u8]| decode(bytes, SuperblockKind::Journal).unwrap().body;
        // The newer copy flipped on the first read, clean on the second; the
        // third matches the second (copy 1 is older on disk): stop there.
        let (kept, transient, made) =
            settle(vec![flipped(file.clone(), 100), file.clone(), file.clone()]);
        assert_eq!((body(&kept), transient, made), (b"newer".to_vec(), 1, 3));
        // Clean first, then two different flips of the newer copy: the
        // first read is kept.
        let (kept, transient, made) = settle(vec![
            file.clone(),
            flipped(file.clone(), 100),
            flipped(file.clone(), 200),
        ]);
        assert_eq!((body(&kept), transient, made), (b"newer".to_vec(), 2, 3));
        // Both copies sound and equal: one read.
        let mut sound = encode_copy(SuperblockKind::Journal, 9, 0, b"newer");
        sound.extend(encode_copy(SuperblockKind::Journal, 9, 1, b"newer"));
        assert_eq!(settle(vec![sound.clone()]), (sound.clone(), 0, 1));
        // Both sound, copy 1 flipped on the first read: the clean second
        // read is taken (same sequence, no copy wanting), and no more.
        let copy1 = SUPERBLOCK_COPY_BYTES as usize + 100;
        let (kept, transient, made) = settle(vec![flipped(sound.clone(), copy1), sound.clone()]);
        assert_eq!((kept, transient, made), (sound, 1, 2));
        // Damage at rest reads the same twice: two reads, then the copy
        // found damaged is left to the caller.
        let damaged = flipped(file, 100);
        let (kept, transient, made) = settle(vec![damaged.clone(), damaged.clone()]);
        assert_eq!((kept, transient, made), (damaged.clone(), 0, 2));
        assert_eq!(body(&damaged), b"older");
    }

    #[test]
    fn a_hard_state_longer_than_its_limit_does_not_decode() {
        let mut body = sample().encode();
        let at = std::mem::offset_of!(JournalBody, hard_state_len);
        let too_long = (HARD_STATE_RECORD_BYTES_MAX as u32 + 1).to_le_bytes();
        body[at..at + 4].copy_from_slice(&too_long);
        body.resize(body.len() + HARD_STATE_BYTES_MAX, 0);
        let err = JournalSuperblock::decode(&body).unwrap_err();
        assert!(err.contains("hard state"), "{err}");
    }

    fn sample() -> JournalSuperblock {
        JournalSuperblock {
            journal_id: [7; 16],
            owner: Some(JournalOwner {
                domain: [9; 16],
                shard: 1,
                shards: 3,
            }),
            first_generation: 4,
            last_generation: 6,
            watermark: 100,
            ends: vec![(4, 8192), (5, 1 << 20)],
            hard_state: b"term 3, vote 2".to_vec(),
            hard_state_sequence: 5,
        }
    }

    fn file(sequences: [u64; 2], body: &[u8]) -> Vec<u8> {
        let mut bytes = encode_copy(SuperblockKind::Journal, sequences[0], 0, body);
        bytes.extend(encode_copy(SuperblockKind::Journal, sequences[1], 1, body));
        bytes
    }

    #[test]
    fn body_round_trips() {
        let sb = sample();
        assert_eq!(JournalSuperblock::decode(&sb.encode()), Ok(sb));
    }

    #[test]
    fn newest_valid_copy_wins_and_damage_is_reported() {
        let body = sample().encode();
        let both = file([3, 3], &body);
        let chosen = decode(&both, SuperblockKind::Journal).expect("valid");
        assert_eq!((chosen.sequence, chosen.stale_or_damaged.len()), (3, 0));
        // A crash between the copies: copy 0 new, copy 1 old.
        let chosen = decode(&file([4, 3], &body), SuperblockKind::Journal).expect("valid");
        assert_eq!((chosen.sequence, chosen.stale_or_damaged.len()), (4, 1));
        // Every single bit flip in either copy leaves the other.
        for bit in (0..both.len() * 8).step_by(97) {
            let mut flipped = both.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let chosen = decode(&flipped, SuperblockKind::Journal).expect("other copy");
            assert_eq!(chosen.body, body);
            assert_eq!(chosen.stale_or_damaged.len(), 1, "bit {bit}");
        }
        // A copy written at the other's place.
        let mut swapped = both[..SUPERBLOCK_COPY_BYTES as usize].repeat(2);
        let chosen = decode(&swapped, SuperblockKind::Journal).expect("copy 0");
        assert!(chosen.stale_or_damaged[0].reason.contains("misdirected"));
        swapped.truncate(100);
        assert!(matches!(
            decode(&swapped, SuperblockKind::Journal),
            Err(SuperblockFault::Damaged(f)) if f.len() == 2
        ));
        assert!(matches!(
            decode(&both, SuperblockKind::DataDir),
            Err(SuperblockFault::WrongKind(1))
        ));
    }

    #[test]
    fn out_of_range_bodies_are_refused() {
        let mut sb = sample();
        sb.first_generation = 7;
        assert!(JournalSuperblock::decode(&sb.encode()).is_err());
        let mut sb = sample();
        sb.ends = vec![(5, 1), (4, 1)];
        assert!(JournalSuperblock::decode(&sb.encode()).is_err());
        let mut sb = sample();
        sb.owner = Some(JournalOwner {
            domain: [1; 16],
            shard: 3,
            shards: 3,
        });
        assert!(JournalSuperblock::decode(&sb.encode()).is_err());
        assert!(JournalSuperblock::decode(&[0; 10]).is_err());
    }
}
