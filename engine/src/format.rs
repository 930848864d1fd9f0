//! The snapshot file format and the domain identity file, and the
//! snapshot files' names.
//!
//! A leaf: the verifiers (`snapshot::verify`, `layout::identity`) and the
//! errors that describe damage (`error`) all read it and it reads none of
//! them. Also at its old path, `snapshot::format`.
//!
//! `engine/FORMAT.md` is the specification; offsets here derive from
//! `size_of` and `tests/format_doc.rs` checks that the document agrees.
//!
//! A snapshot file is a 4 KiB header block (the header, then the section
//! table), then the sections' bytes back to back, then zeros up to the next
//! 4 KiB boundary. The header is written last, after every section, so a
//! file whose header verifies had all of its sections written first; the
//! checksums catch what a torn or damaged write left behind anyway.

use crate::machine::SECTION_NAME_BYTES_MAX;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Files are written in whole blocks of this size (O_DIRECT).
pub const BLOCK_BYTES: u64 = ringstore_journal::format::BLOCK_BYTES;

/// The header block: the header and the section table.
pub const HEADER_BLOCK_BYTES: u64 = BLOCK_BYTES;

/// Sections start here.
pub const BODY_OFFSET: u64 = HEADER_BLOCK_BYTES;

/// "RSNP" read as a little-endian u32.
pub const SNAPSHOT_MAGIC: u32 = u32::from_le_bytes(*b"RSNP");

/// "RDOM" read as a little-endian u32.
pub const IDENTITY_MAGIC: u32 = u32::from_le_bytes(*b"RDOM");

/// The snapshot format version this build writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// The identity format version this build writes and reads.
pub const IDENTITY_FORMAT_VERSION: u32 = 1;

/// [`IdentityHeader::flags`] bit: the shard's journal exists (set once
/// its first open created it). An open that then finds no journal refuses
/// rather than starting an empty one over acknowledged ops.
pub const IDENTITY_FLAG_JOURNAL_CREATED: u32 = 1;

/// Bytes of [`SnapshotHeader`].
pub const SNAPSHOT_HEADER_BYTES: usize = size_of::<SnapshotHeader>();

/// Bytes of one [`SectionEntry`].
pub const SECTION_ENTRY_BYTES: usize = size_of::<SectionEntry>();

/// Bytes of [`IdentityHeader`].
pub const IDENTITY_HEADER_BYTES: usize = size_of::<IdentityHeader>();

/// Most sections one snapshot holds: as many entries as fit in the header
/// block after the header.
pub const SECTION_COUNT_MAX: usize =
    (HEADER_BLOCK_BYTES as usize - SNAPSHOT_HEADER_BYTES) / SECTION_ENTRY_BYTES;

const _: () = assert!(SNAPSHOT_HEADER_BYTES == 72);
const _: () = assert!(SECTION_ENTRY_BYTES == 64);
const _: () = assert!(IDENTITY_HEADER_BYTES == 40);
const _: () = assert!(SECTION_COUNT_MAX == 62);
const _: () = assert!(SECTION_NAME_BYTES_MAX == 40);
const _: () = assert!(IDENTITY_HEADER_BYTES as u64 <= BLOCK_BYTES);

/// The header at offset 0 of a snapshot file.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct SnapshotHeader {
    /// CRC-32 of header block bytes `4..4096` (the rest of the header, the
    /// section table and the zeros after it).
    pub header_checksum: U32,
    /// [`SNAPSHOT_MAGIC`].
    pub magic: U32,
    /// [`SNAPSHOT_FORMAT_VERSION`].
    pub version: U32,
    /// Entries in the section table.
    pub section_count: U32,
    /// The state is that after applying every op up to and including this.
    pub watermark: U64,
    /// The largest epoch the shard had seen when the snapshot was taken.
    pub epoch: U64,
    /// The domain the shard's data belongs to (a UUID's 16 bytes).
    pub domain: [u8; 16],
    /// When the snapshot was written, milliseconds since the Unix epoch
    /// (informational).
    pub created_unix_ms: U64,
    /// Bytes of all sections together; the body ends at
    /// `BODY_OFFSET + body_bytes`.
    pub body_bytes: U64,
    /// CRC-32 of the whole file up to the end of the body, with both
    /// checksum fields read as zeros.
    pub file_checksum: U32,
    /// Zero.
    pub reserved: U32,
}

/// One entry of the section table, after the header.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct SectionEntry {
    /// The section's name in UTF-8, padded with zeros.
    pub name: [u8; SECTION_NAME_BYTES_MAX],
    /// The section's own format version.
    pub version: U32,
    /// CRC-32 of the section's bytes.
    pub checksum: U32,
    /// Byte offset of the section in the file.
    pub offset: U64,
    /// Length of the section in bytes.
    pub len: U64,
}

impl SectionEntry {
    /// The name, if it is valid UTF-8 padded with zeros.
    pub fn name(&self) -> Option<&str> {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        if self.name[end..].iter().any(|&b| b != 0) || end == 0 {
            return None;
        }
        std::str::from_utf8(&self.name[..end]).ok()
    }
}

/// The domain identity file: which domain a shard's data belongs to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct IdentityHeader {
    /// CRC-32 of bytes `4..40`.
    pub checksum: U32,
    /// [`IDENTITY_MAGIC`].
    pub magic: U32,
    /// [`IDENTITY_FORMAT_VERSION`].
    pub version: U32,
    /// [`IDENTITY_FLAG_JOURNAL_CREATED`], or zero. A build that predates
    /// the flag reads this field as reserved and ignores it.
    pub flags: U32,
    /// The domain UUID's 16 bytes.
    pub domain: [u8; 16],
    /// When the shard joined this domain, milliseconds since the Unix epoch.
    pub created_unix_ms: U64,
}

impl IdentityHeader {
    /// The checksum the header should carry.
    pub fn compute_checksum(&self) -> u32 {
        crc32fast::hash(&self.as_bytes()[4..])
    }
}

/// CRC-32 of a header block with its checksum fields read as zero, as a
/// hasher that the body's hasher can be combined into.
pub fn header_block_hasher(block: &[u8]) -> crc32fast::Hasher {
    let mut zeroed = block.to_vec();
    zeroed[..4].fill(0);
    let file_checksum_at = std::mem::offset_of!(SnapshotHeader, file_checksum);
    zeroed[file_checksum_at..file_checksum_at + 4].fill(0);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&zeroed);
    hasher
}

/// Milliseconds since the Unix epoch, for informational timestamps.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Prefix of snapshot file names.
pub(crate) const FILE_PREFIX: &str = "snapshot-";
/// Suffix of snapshot file names.
pub(crate) const FILE_SUFFIX: &str = ".snap";
/// Suffix of a snapshot being written, or of an old one being removed.
pub(crate) const TEMP_SUFFIX: &str = ".snap.tmp";

/// The file name of the snapshot at `watermark`.
pub fn snapshot_file_name(watermark: u64) -> String {
    format!("{FILE_PREFIX}{watermark:020}{FILE_SUFFIX}")
}

/// The watermark in a snapshot file name, if it is one.
pub fn parse_snapshot_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}
