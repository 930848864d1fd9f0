//! The on-disk format: segment headers and entry headers.
//!
//! `journal/FORMAT.md` is the specification; the constants and offsets here
//! derive from `size_of` and a test checks that the document agrees.
//!
//! Both headers are fixed-size little-endian structs read and written with
//! `zerocopy`, so there is no hand-written byte shuffling to get wrong. Each
//! header carries its own CRC-32 (IEEE polynomial, computed with crc32fast)
//! over every byte after the checksum field; an entry header additionally
//! carries the checksum of its payload.
//!
//! An entry header's checksum is seeded with the journal's id (a random
//! 128-bit value in its superblock and every segment header): bytes that
//! look like an entry header inside a payload — which a client chooses —
//! cannot pass as one, so they can neither be served nor turn recovery's
//! search past damage into false evidence.
//!
//! Identity: an entry header names the segment generation and the byte
//! offset it was written at. A recycled or preallocated region holds either
//! zeros or entries of an older generation, and a misdirected write lands at
//! an offset that differs from the one it names, so neither can pass as a
//! live entry even though its checksums verify.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Every write starts and ends on this boundary. 4 KiB covers devices with
/// 512-byte and 4 KiB logical sectors, so one format fits both.
pub const BLOCK_BYTES: u64 = 4096;

/// Entries start on multiples of this within a write.
pub const ENTRY_ALIGN_BYTES: u64 = 8;

/// Entries start after the first block of a segment, which holds its header.
pub const SEGMENT_DATA_OFFSET: u64 = BLOCK_BYTES;

/// "RSEG" read as a little-endian u32.
pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"RSEG");

/// "RENT" read as a little-endian u32.
pub const ENTRY_MAGIC: u32 = u32::from_le_bytes(*b"RENT");

/// The format version this build writes and reads. See FORMAT.md's history.
pub const FORMAT_VERSION: u32 = 3;

/// Bytes of the segment header at offset 0 of every segment file.
pub const SEGMENT_HEADER_BYTES: usize = size_of::<SegmentHeader>();

/// Bytes of the header in front of every entry.
pub const ENTRY_HEADER_BYTES: usize = size_of::<EntryHeader>();

const _: () = assert!(SEGMENT_HEADER_BYTES == 88);
const _: () = assert!(ENTRY_HEADER_BYTES == 56);
const _: () = assert!((ENTRY_HEADER_BYTES as u64).is_multiple_of(ENTRY_ALIGN_BYTES));
const _: () = assert!(BLOCK_BYTES.is_multiple_of(512));
const _: () = assert!(SEGMENT_HEADER_BYTES as u64 <= SEGMENT_DATA_OFFSET);

/// The header at offset 0 of every segment file.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct SegmentHeader {
    /// CRC-32 of bytes `4..88`.
    pub checksum: U32,
    /// [`SEGMENT_MAGIC`].
    pub magic: U32,
    /// [`FORMAT_VERSION`].
    pub version: U32,
    /// Always [`SEGMENT_DATA_OFFSET`]; recorded so a reader need not assume it.
    pub data_offset: U32,
    /// Generation of this segment; equals the number in its file name.
    pub generation: U64,
    /// Size of this segment file in bytes.
    pub segment_bytes: U64,
    /// Largest write the journal issues; bounds how far recovery looks for
    /// valid data past a damaged entry.
    pub batch_bytes_max: U64,
    /// Generation of the segment written before this one (0: none).
    pub prev_generation: U64,
    /// End of valid data in the previous segment: everything before it was
    /// durable when this segment was created, everything after it is ignored.
    pub prev_end: U64,
    /// The journal's watermark when this segment was created.
    pub watermark: U64,
    /// Bit set of `SEGMENT_FLAG_*`.
    pub flags: U32,
    /// Most writes this segment had in flight at once; bounds how far
    /// recovery looks past damage for a write that vouches for it.
    pub writes_in_flight: U32,
    /// The journal this segment belongs to (recorded in its superblock), so
    /// a valid segment of another journal is never read as this one's.
    pub journal_id: [u8; 16],
}

/// Segment `flags` bit: writes to this segment were acknowledged without
/// fdatasync (`Durability::NoSync`), so more than one write at its tail may
/// be torn or lost.
pub const SEGMENT_FLAG_NO_SYNC: u32 = 1;

/// Segment `flags` bit: the file held an older segment of this journal
/// before (a retired segment recycled, so its blocks are written ones).
/// Past the last write lie that segment's bytes, not zeros: recovery takes
/// the log to end cleanly there unless a header of this generation lies
/// within reach (see `verify::EvidenceSearch`).
pub const SEGMENT_FLAG_RECYCLED: u32 = 2;

/// Every `SEGMENT_FLAG_*` bit this build knows.
pub const SEGMENT_FLAGS_KNOWN: u32 = SEGMENT_FLAG_NO_SYNC | SEGMENT_FLAG_RECYCLED;

/// What an entry header describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EntryKind {
    /// A log entry carrying a payload.
    Data = 1,
    /// A durable record of the watermark (the `op` field); no payload.
    Watermark = 2,
    /// Filler up to the next block boundary; its payload is ignored.
    Padding = 3,
    /// Discards every data entry above the `op` field that was written
    /// before it (a consensus log's divergent suffix); no payload.
    Truncate = 4,
    /// The replica's hard state (its vote and commit point, opaque to the
    /// journal) as the payload; the `op` field is zero. The last one in log
    /// order holds.
    HardState = 5,
    /// The last entry of every write before its padding: one
    /// [`IndexRecord`] per entry of the write before it, so recovery learns
    /// a write's entries from its first header and its index without
    /// reading their payloads. `op` is the number of records.
    WriteIndex = 6,
}

impl EntryKind {
    /// Decodes the kind byte.
    pub fn from_u8(value: u8) -> Option<EntryKind> {
        match value {
            1 => Some(EntryKind::Data),
            2 => Some(EntryKind::Watermark),
            3 => Some(EntryKind::Padding),
            4 => Some(EntryKind::Truncate),
            5 => Some(EntryKind::HardState),
            6 => Some(EntryKind::WriteIndex),
            _ => None,
        }
    }

    /// True if the entry's payload is verified on every full scan: data,
    /// hard state and a write's index, not padding.
    pub fn carries_payload(self) -> bool {
        matches!(
            self,
            EntryKind::Data | EntryKind::HardState | EntryKind::WriteIndex
        )
    }
}

/// Largest hard-state payload in bytes (it is also kept in the superblock,
/// which must hold it beside the segment ends).
pub const HARD_STATE_BYTES_MAX: usize = 128;

/// `flags` bit: this entry is the first of a write (a group-commit batch),
/// and so starts on a block boundary.
pub const FLAG_FIRST_IN_WRITE: u8 = 1;

/// The header in front of every entry.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct EntryHeader {
    /// CRC-32 of bytes `4..56` of this header.
    pub checksum: U32,
    /// [`ENTRY_MAGIC`].
    pub magic: U32,
    /// Op number (for [`EntryKind::Watermark`]: the watermark).
    pub op: U64,
    /// Epoch (term/view) the entry was written in.
    pub epoch: U64,
    /// Generation of the segment this entry was written to.
    pub generation: U64,
    /// Byte offset of this header within its segment file.
    pub offset: U32,
    /// Payload length in bytes (not counting alignment padding).
    pub payload_len: U32,
    /// CRC-32 of the payload bytes.
    pub payload_checksum: U32,
    /// On the first entry of a write: every byte of this segment before this
    /// offset was durable when the write was issued, so damage there was
    /// acknowledged data, never a torn write. Zero on other entries.
    pub durable_before: U32,
    /// An [`EntryKind`] as `u8`.
    pub kind: u8,
    /// Bit set of `FLAG_*`.
    pub flags: u8,
    /// On the first entry of a write: the offset of the write's
    /// [`EntryKind::WriteIndex`] entry. Zero on other entries.
    pub index_at: U32,
    /// Zero.
    pub reserved: [u8; 2],
}

/// One entry of a write as its [`EntryKind::WriteIndex`] entry lists it:
/// the fields of the entry's header that are not implied by its position
/// (entries follow each other from the write's start, each
/// [`entry_footprint`] bytes long).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct IndexRecord {
    /// The entry's `op`.
    pub op: U64,
    /// The entry's `epoch`.
    pub epoch: U64,
    /// The entry's `payload_len`.
    pub payload_len: U32,
    /// The entry's `payload_checksum`.
    pub payload_checksum: U32,
    /// The entry's `kind`.
    pub kind: u8,
    /// Zero.
    pub reserved: [u8; 7],
}

/// Bytes of one [`IndexRecord`].
pub const INDEX_RECORD_BYTES: usize = size_of::<IndexRecord>();
const _: () = assert!(INDEX_RECORD_BYTES == 32);

impl IndexRecord {
    /// The record of the entry with this header.
    pub fn of(header: &EntryHeader) -> IndexRecord {
        IndexRecord {
            op: header.op,
            epoch: header.epoch,
            payload_len: header.payload_len,
            payload_checksum: header.payload_checksum,
            kind: header.kind,
            reserved: [0; 7],
        }
    }
}

/// Bytes a write's index entry occupies when it lists `entries` entries.
pub fn index_footprint(entries: usize) -> u64 {
    entry_footprint(entries * INDEX_RECORD_BYTES)
}

/// Where a write whose entries (its index included) end at `entries_end`
/// ends: that offset if it is on a block boundary, else the next boundary
/// at which a padding entry header still fits, so that a reader always
/// knows where a write ended.
pub fn write_end(entries_end: u64) -> u64 {
    if entries_end.is_multiple_of(BLOCK_BYTES) {
        entries_end
    } else {
        align_up(entries_end + ENTRY_HEADER_BYTES as u64, BLOCK_BYTES)
    }
}

impl SegmentHeader {
    /// Computes the checksum over everything after the checksum field.
    pub fn compute_checksum(&self) -> u32 {
        crc32fast::hash(&self.as_bytes()[4..])
    }

    /// Sets `checksum` from the other fields.
    pub fn seal(mut self) -> SegmentHeader {
        self.checksum = self.compute_checksum().into();
        self
    }
}

impl EntryHeader {
    /// Computes the checksum: CRC-32 of the journal's id followed by
    /// everything after the checksum field.
    pub fn compute_checksum(&self, journal_id: &[u8; 16]) -> u32 {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(journal_id);
        hasher.update(&self.as_bytes()[4..]);
        hasher.finalize()
    }

    /// Sets `checksum` from the other fields and the journal's id.
    pub fn seal(mut self, journal_id: &[u8; 16]) -> EntryHeader {
        self.checksum = self.compute_checksum(journal_id).into();
        self
    }

    /// Bytes from this header's start to where the next entry may start.
    pub fn footprint(&self) -> u64 {
        entry_footprint(self.payload_len.get() as usize)
    }

    /// The decoded kind, if valid.
    pub fn entry_kind(&self) -> Option<EntryKind> {
        EntryKind::from_u8(self.kind)
    }
}

/// Bytes an entry with this payload occupies: header, payload, alignment.
pub fn entry_footprint(payload_len: usize) -> u64 {
    align_up(
        ENTRY_HEADER_BYTES as u64 + payload_len as u64,
        ENTRY_ALIGN_BYTES,
    )
}

/// Rounds `value` up to a multiple of `align` (a power of two).
pub fn align_up(value: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    (value + align - 1) & !(align - 1)
}

/// Rounds `value` down to a multiple of `align` (a power of two).
pub fn align_down(value: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    value & !(align - 1)
}

/// Why an entry header at some offset is not a live entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderFault {
    /// All header bytes are zero: never written.
    Zeroed,
    /// The header checksum or magic does not match: torn or flipped bits.
    Checksum,
    /// Verifies, but belongs to another generation: stale bytes of a
    /// recycled segment.
    StaleGeneration,
    /// Verifies, but names another offset: a misdirected write.
    Misplaced,
    /// Verifies, but a field is out of range (kind, flags, length).
    Invalid,
}

impl HeaderFault {
    /// A short description for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            HeaderFault::Zeroed => "entry header is zeroed (never written)",
            HeaderFault::Checksum => "entry header checksum mismatch",
            HeaderFault::StaleGeneration => {
                "entry header from another segment generation (stale bytes)"
            }
            HeaderFault::Misplaced => "entry header names another offset (misdirected write)",
            HeaderFault::Invalid => "entry header field out of range",
        }
    }
}

/// Decodes and checks an entry header read at `offset` of segment
/// `generation` of the journal `journal_id`, whose file is `segment_bytes`
/// long.
pub fn check_entry_header(
    bytes: &[u8],
    journal_id: &[u8; 16],
    generation: u64,
    offset: u64,
    segment_bytes: u64,
    payload_bytes_max: u64,
) -> Result<EntryHeader, HeaderFault> {
    let Ok((header, _)) = EntryHeader::read_from_prefix(bytes) else {
        return Err(HeaderFault::Invalid);
    };
    if bytes[..ENTRY_HEADER_BYTES].iter().all(|b| *b == 0) {
        return Err(HeaderFault::Zeroed);
    }
    if header.magic.get() != ENTRY_MAGIC
        || header.checksum.get() != header.compute_checksum(journal_id)
    {
        return Err(HeaderFault::Checksum);
    }
    if header.generation.get() != generation {
        return Err(HeaderFault::StaleGeneration);
    }
    if u64::from(header.offset.get()) != offset {
        return Err(HeaderFault::Misplaced);
    }
    let Some(kind) = header.entry_kind() else {
        return Err(HeaderFault::Invalid);
    };
    let len = u64::from(header.payload_len.get());
    let len_ok = match kind {
        EntryKind::Data => len <= payload_bytes_max,
        EntryKind::Watermark | EntryKind::Truncate => len == 0,
        EntryKind::Padding => len < BLOCK_BYTES,
        EntryKind::HardState => len <= HARD_STATE_BYTES_MAX as u64,
        EntryKind::WriteIndex => {
            len > 0 && len.is_multiple_of(INDEX_RECORD_BYTES as u64) && header.epoch.get() == 0
        }
    };
    let first = header.flags & FLAG_FIRST_IN_WRITE != 0;
    let durable_before = u64::from(header.durable_before.get());
    let index_at = u64::from(header.index_at.get());
    let (durable_before_ok, index_at_ok) = if first {
        (
            durable_before <= offset,
            kind != EntryKind::WriteIndex
                && index_at >= offset + header.footprint()
                && index_at.is_multiple_of(ENTRY_ALIGN_BYTES)
                && index_at + ENTRY_HEADER_BYTES as u64 <= segment_bytes,
        )
    } else {
        (durable_before == 0, index_at == 0)
    };
    if !len_ok
        || header.flags & !FLAG_FIRST_IN_WRITE != 0
        || header.reserved != [0; 2]
        || !durable_before_ok
        || !index_at_ok
        || (first && !offset.is_multiple_of(BLOCK_BYTES))
        || offset + header.footprint() > segment_bytes
    {
        return Err(HeaderFault::Invalid);
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 16] = [7; 16];

    #[test]
    fn header_round_trip_and_checksum_detects_flips() {
        let header = EntryHeader {
            checksum: 0.into(),
            magic: ENTRY_MAGIC.into(),
            op: 7.into(),
            epoch: 2.into(),
            generation: 3.into(),
            offset: 4096.into(),
            payload_len: 5.into(),
            payload_checksum: crc32fast::hash(b"hello").into(),
            durable_before: 4096.into(),
            kind: EntryKind::Data as u8,
            flags: FLAG_FIRST_IN_WRITE,
            index_at: 8192.into(),
            reserved: [0; 2],
        }
        .seal(&KEY);
        let bytes = header.as_bytes().to_vec();
        assert_eq!(
            check_entry_header(&bytes, &KEY, 3, 4096, 1 << 20, 100),
            Ok(header)
        );
        // Another journal's key: the same bytes are not its entry.
        assert_eq!(
            check_entry_header(&bytes, &[1; 16], 3, 4096, 1 << 20, 100),
            Err(HeaderFault::Checksum)
        );
        for bit in 0..ENTRY_HEADER_BYTES * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                check_entry_header(&flipped, &KEY, 3, 4096, 1 << 20, 100).is_err(),
                "bit {bit}"
            );
        }
        assert_eq!(
            check_entry_header(&bytes, &KEY, 4, 4096, 1 << 20, 100),
            Err(HeaderFault::StaleGeneration)
        );
        assert_eq!(
            check_entry_header(&bytes, &KEY, 3, 8192, 1 << 20, 100),
            Err(HeaderFault::Misplaced)
        );
        assert_eq!(
            check_entry_header(&[0; ENTRY_HEADER_BYTES], &KEY, 3, 8192, 1 << 20, 100),
            Err(HeaderFault::Zeroed)
        );
    }
}
