//! Everything the cache writes, as constants the code and `cache/FORMAT.md`
//! share (a test checks the document against them), plus the tracker file's
//! encoder and decoder.
//!
//! The tracker file is written whole to `tracker.tmp`, fdatasync'd, renamed
//! over `tracker` and the directory fsync'd, so a reader sees either the old
//! or the new file, never a torn one. The checksums are there for latent
//! corruption and foreign files; any problem makes the loader ignore the file
//! (with a warning) and rebuild access times from a directory walk — losing
//! access order is harmless, trusting a bad file is not.
//!
//! Entries are split into chunks (each with its own CRC) so the writer and
//! the reader never hold more than a bounded amount of unverified data per
//! step and a damaged chunk is reported by index.

use std::mem::{offset_of, size_of};
use std::rc::Rc;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::key::{Key, KEY_BYTES_MAX};
use crate::remote::FileDigest;
use crate::tracker::TrackedObject;

/// Version of the directory layout (`layout` file).
pub const LAYOUT_VERSION: u32 = 1;
/// File in the cache root naming the layout version.
pub const LAYOUT_FILE: &str = "layout";
/// Exact contents of [`LAYOUT_FILE`] for [`LAYOUT_VERSION`].
pub const LAYOUT_CONTENTS: &str = "ringstore-cache layout 1\n";
/// Directory under the cache root holding objects and staging files.
pub const OBJECTS_DIR: &str = "objects";
/// The persisted access tracker.
pub const TRACKER_FILE: &str = "tracker";
/// Where a new tracker is written before the rename.
pub const TRACKER_TMP_FILE: &str = "tracker.tmp";
/// File `flock`ed while a cache instance has the directory open.
pub const LOCK_FILE: &str = "lock";

/// Extended attribute of every object file the cache writes or adopts:
/// the object's checksum (see [`encode_object_checksum`]).
pub const OBJECT_CHECKSUM_ATTRIBUTE: &str = "user.ringstore.object";
/// Version of that attribute's value.
pub const OBJECT_CHECKSUM_VERSION: u32 = 1;
/// Bytes of that attribute's value.
pub const OBJECT_CHECKSUM_BYTES: usize = 16;

/// The value of [`OBJECT_CHECKSUM_ATTRIBUTE`]: [`OBJECT_CHECKSUM_VERSION`],
/// the CRC-32 (ISO-HDLC) of the object's bytes, and its size, all
/// little-endian.
pub fn encode_object_checksum(digest: FileDigest) -> [u8; OBJECT_CHECKSUM_BYTES] {
    let mut value = [0u8; OBJECT_CHECKSUM_BYTES];
    value[0..4].copy_from_slice(&OBJECT_CHECKSUM_VERSION.to_le_bytes());
    value[4..8].copy_from_slice(&digest.crc32.to_le_bytes());
    value[8..16].copy_from_slice(&digest.bytes.to_le_bytes());
    value
}

/// The checksum an [`OBJECT_CHECKSUM_ATTRIBUTE`] value records, or why it
/// records none this build reads.
pub fn decode_object_checksum(value: &[u8]) -> std::result::Result<FileDigest, String> {
    if value.len() != OBJECT_CHECKSUM_BYTES {
        return Err(format!(
            "{} bytes, not {OBJECT_CHECKSUM_BYTES}",
            value.len()
        ));
    }
    let word = |at: usize| u32::from_le_bytes(value[at..at + 4].try_into().expect("4 bytes"));
    let version = word(0);
    if version != OBJECT_CHECKSUM_VERSION {
        return Err(format!(
            "version {version}, this build reads version {OBJECT_CHECKSUM_VERSION}"
        ));
    }
    Ok(FileDigest {
        crc32: word(4),
        bytes: u64::from_le_bytes(value[8..16].try_into().expect("8 bytes")),
    })
}

/// First 8 bytes of a tracker file.
pub const TRACKER_MAGIC: [u8; 8] = *b"RSCTRACK";
/// Tracker file format version.
pub const TRACKER_VERSION: u32 = 1;
/// Default entries per tracker chunk.
pub const TRACKER_CHUNK_ENTRIES_DEFAULT: u32 = 4096;
/// Most entries per tracker chunk (bounds one chunk's body).
pub const TRACKER_CHUNK_ENTRIES_MAX: u32 = 65_536;

/// Tracker file header, at offset 0. Little-endian, no padding.
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct TrackerHeader {
    /// [`TRACKER_MAGIC`].
    pub magic: [u8; 8],
    /// [`TRACKER_VERSION`].
    pub version: U32,
    /// `size_of::<TrackerHeader>()`.
    pub header_bytes: U32,
    /// Entries in the whole file.
    pub entry_count: U64,
    /// Chunks following the header.
    pub chunk_count: U32,
    /// CRC-32 (ISO-HDLC, as crc32fast) of the header bytes before this field.
    pub header_crc32: U32,
}

/// Header of each chunk. Little-endian, no padding.
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ChunkHeader {
    /// 0, 1, 2, ... in file order.
    pub chunk_index: U32,
    /// Entries in this chunk (1..=[`TRACKER_CHUNK_ENTRIES_MAX`]).
    pub entry_count: U32,
    /// Bytes of entries following this header.
    pub body_bytes: U32,
    /// CRC-32 of those bytes.
    pub body_crc32: U32,
}

/// Fixed part of each entry; `key_len` bytes of UTF-8 key follow.
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EntryHeader {
    /// Last access, ms since the Unix epoch.
    pub atime_ms: U64,
    /// Object size in bytes.
    pub bytes: U64,
    /// Key length in bytes (1..=[`KEY_BYTES_MAX`]).
    pub key_len: U16,
}

/// `size_of::<TrackerHeader>()`.
pub const TRACKER_HEADER_BYTES: usize = size_of::<TrackerHeader>();
/// `size_of::<ChunkHeader>()`.
pub const CHUNK_HEADER_BYTES: usize = size_of::<ChunkHeader>();
/// `size_of::<EntryHeader>()`.
pub const ENTRY_FIXED_BYTES: usize = size_of::<EntryHeader>();
/// Most bytes one chunk body may have.
pub const CHUNK_BODY_BYTES_MAX: usize =
    TRACKER_CHUNK_ENTRIES_MAX as usize * (ENTRY_FIXED_BYTES + KEY_BYTES_MAX);

/// Field offsets, for the document check.
pub const TRACKER_HEADER_OFFSETS: [(&str, usize, usize); 6] = [
    ("magic", offset_of!(TrackerHeader, magic), 8),
    ("version", offset_of!(TrackerHeader, version), 4),
    ("header_bytes", offset_of!(TrackerHeader, header_bytes), 4),
    ("entry_count", offset_of!(TrackerHeader, entry_count), 8),
    ("chunk_count", offset_of!(TrackerHeader, chunk_count), 4),
    ("header_crc32", offset_of!(TrackerHeader, header_crc32), 4),
];
/// Chunk header field offsets, for the document check.
pub const CHUNK_HEADER_OFFSETS: [(&str, usize, usize); 4] = [
    ("chunk_index", offset_of!(ChunkHeader, chunk_index), 4),
    ("entry_count", offset_of!(ChunkHeader, entry_count), 4),
    ("body_bytes", offset_of!(ChunkHeader, body_bytes), 4),
    ("body_crc32", offset_of!(ChunkHeader, body_crc32), 4),
];
/// Entry field offsets, for the document check.
pub const ENTRY_OFFSETS: [(&str, usize, usize); 3] = [
    ("atime_ms", offset_of!(EntryHeader, atime_ms), 8),
    ("bytes", offset_of!(EntryHeader, bytes), 8),
    ("key_len", offset_of!(EntryHeader, key_len), 2),
];

const _: () = assert!(TRACKER_HEADER_BYTES == 32);
const _: () = assert!(CHUNK_HEADER_BYTES == 16);
const _: () = assert!(ENTRY_FIXED_BYTES == 18);
const _: () = assert!(KEY_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(CHUNK_BODY_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(TRACKER_CHUNK_ENTRIES_DEFAULT <= TRACKER_CHUNK_ENTRIES_MAX);

/// One entry read back from a tracker file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoadedEntry {
    pub(crate) key: String,
    pub(crate) bytes: u64,
    pub(crate) atime_ms: u64,
}

/// Why a tracker file was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TrackerDecodeError {
    #[error("shorter than its header ({0} bytes)")]
    TooShort(usize),
    #[error("bad magic")]
    BadMagic,
    #[error("version {found}, this build reads {TRACKER_VERSION}")]
    WrongVersion { found: u32 },
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("header size {0} is not {TRACKER_HEADER_BYTES}")]
    HeaderSize(u32),
    #[error("chunk {index} truncated")]
    ChunkTruncated { index: u32 },
    #[error("chunk {index} out of order (found {found})")]
    ChunkOrder { index: u32, found: u32 },
    #[error("chunk {index} has an impossible size")]
    ChunkSize { index: u32 },
    #[error("chunk {index} checksum mismatch")]
    ChunkChecksum { index: u32 },
    #[error("chunk {index} has a malformed entry")]
    BadEntry { index: u32 },
    #[error("duplicate key {0:?}")]
    DuplicateKey(String),
    #[error("entry count {found} does not match header {expected}")]
    CountMismatch { expected: u64, found: u64 },
    #[error("{0} bytes after the last chunk")]
    TrailingBytes(usize),
}

/// Encodes `objects` (least recently accessed first) as a tracker file.
pub(crate) fn encode_tracker(
    objects: impl ExactSizeIterator<Item = TrackedObject>,
    chunk_entries: u32,
) -> Vec<u8> {
    let chunk_entries = chunk_entries.clamp(1, TRACKER_CHUNK_ENTRIES_MAX) as usize;
    let count = objects.len();
    let chunk_count = count.div_ceil(chunk_entries);
    let mut out = vec![0u8; TRACKER_HEADER_BYTES];
    let mut body = Vec::new();
    let mut objects = objects.peekable();
    let mut chunk_index: u32 = 0;
    while objects.peek().is_some() {
        body.clear();
        let mut in_chunk: u32 = 0;
        for object in objects.by_ref().take(chunk_entries) {
            let key = object.key.as_bytes();
            let entry = EntryHeader {
                atime_ms: U64::new(object.atime_ms),
                bytes: U64::new(object.bytes),
                // Keys are validated to be at most KEY_BYTES_MAX < u16::MAX.
                key_len: U16::new(u16::try_from(key.len()).unwrap_or(u16::MAX)),
            };
            body.extend_from_slice(entry.as_bytes());
            body.extend_from_slice(key);
            in_chunk += 1;
        }
        let header = ChunkHeader {
            chunk_index: U32::new(chunk_index),
            entry_count: U32::new(in_chunk),
            body_bytes: U32::new(u32::try_from(body.len()).unwrap_or(u32::MAX)),
            body_crc32: U32::new(crc32fast::hash(&body)),
        };
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&body);
        chunk_index += 1;
    }
    let mut header = TrackerHeader {
        magic: TRACKER_MAGIC,
        version: U32::new(TRACKER_VERSION),
        header_bytes: U32::new(TRACKER_HEADER_BYTES as u32),
        entry_count: U64::new(count as u64),
        chunk_count: U32::new(u32::try_from(chunk_count).unwrap_or(u32::MAX)),
        header_crc32: U32::new(0),
    };
    let crc = crc32fast::hash(&header.as_bytes()[..offset_of!(TrackerHeader, header_crc32)]);
    header.header_crc32 = U32::new(crc);
    out[..TRACKER_HEADER_BYTES].copy_from_slice(header.as_bytes());
    out
}

/// Decodes a whole tracker file, checking everything; entries come back in
/// file order (least recently accessed first).
pub(crate) fn decode_tracker(file: &[u8]) -> Result<Vec<LoadedEntry>, TrackerDecodeError> {
    let Ok((header, mut rest)) = TrackerHeader::ref_from_prefix(file) else {
        return Err(TrackerDecodeError::TooShort(file.len()));
    };
    if header.magic != TRACKER_MAGIC {
        return Err(TrackerDecodeError::BadMagic);
    }
    let crc = crc32fast::hash(&file[..offset_of!(TrackerHeader, header_crc32)]);
    if crc != header.header_crc32.get() {
        return Err(TrackerDecodeError::HeaderChecksum);
    }
    if header.version.get() != TRACKER_VERSION {
        return Err(TrackerDecodeError::WrongVersion {
            found: header.version.get(),
        });
    }
    if header.header_bytes.get() as usize != TRACKER_HEADER_BYTES {
        return Err(TrackerDecodeError::HeaderSize(header.header_bytes.get()));
    }
    let expected = header.entry_count.get();
    let mut entries = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for index in 0..header.chunk_count.get() {
        let Ok((chunk, after)) = ChunkHeader::ref_from_prefix(rest) else {
            return Err(TrackerDecodeError::ChunkTruncated { index });
        };
        if chunk.chunk_index.get() != index {
            return Err(TrackerDecodeError::ChunkOrder {
                index,
                found: chunk.chunk_index.get(),
            });
        }
        let body_bytes = chunk.body_bytes.get() as usize;
        let in_chunk = chunk.entry_count.get();
        if body_bytes > CHUNK_BODY_BYTES_MAX
            || in_chunk == 0
            || in_chunk > TRACKER_CHUNK_ENTRIES_MAX
        {
            return Err(TrackerDecodeError::ChunkSize { index });
        }
        if after.len() < body_bytes {
            return Err(TrackerDecodeError::ChunkTruncated { index });
        }
        let (mut body, after_body) = after.split_at(body_bytes);
        if crc32fast::hash(body) != chunk.body_crc32.get() {
            return Err(TrackerDecodeError::ChunkChecksum { index });
        }
        for _ in 0..in_chunk {
            let Ok((entry, after_entry)) = EntryHeader::ref_from_prefix(body) else {
                return Err(TrackerDecodeError::BadEntry { index });
            };
            let key_len = entry.key_len.get() as usize;
            if key_len == 0 || key_len > KEY_BYTES_MAX || after_entry.len() < key_len {
                return Err(TrackerDecodeError::BadEntry { index });
            }
            let (key, after_key) = after_entry.split_at(key_len);
            let Ok(key) = std::str::from_utf8(key) else {
                return Err(TrackerDecodeError::BadEntry { index });
            };
            if Key::new(key).is_err() {
                return Err(TrackerDecodeError::BadEntry { index });
            }
            if !seen.insert(Rc::<str>::from(key)) {
                return Err(TrackerDecodeError::DuplicateKey(key.to_owned()));
            }
            entries.push(LoadedEntry {
                key: key.to_owned(),
                bytes: entry.bytes.get(),
                atime_ms: entry.atime_ms.get(),
            });
            body = after_key;
        }
        if !body.is_empty() {
            return Err(TrackerDecodeError::BadEntry { index });
        }
        rest = after_body;
    }
    if entries.len() as u64 != expected {
        return Err(TrackerDecodeError::CountMismatch {
            expected,
            found: entries.len() as u64,
        });
    }
    if !rest.is_empty() {
        return Err(TrackerDecodeError::TrailingBytes(rest.len()));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(n: usize) -> Vec<TrackedObject> {
        (0..n)
            .map(|i| TrackedObject {
                key: Rc::from(format!("dir{}/key{i}", i % 7).as_str()),
                bytes: i as u64 * 3,
                atime_ms: 1_700_000_000_000 + i as u64,
            })
            .collect()
    }

    fn loaded(objects: &[TrackedObject]) -> Vec<LoadedEntry> {
        objects
            .iter()
            .map(|o| LoadedEntry {
                key: o.key.to_string(),
                bytes: o.bytes,
                atime_ms: o.atime_ms,
            })
            .collect()
    }

    #[test]
    fn round_trips_across_the_default_chunk_boundary() {
        for n in [0, 1, 4095, 4096, 4097, 8193] {
            let objs = objects(n);
            let file = encode_tracker(objs.clone().into_iter(), TRACKER_CHUNK_ENTRIES_DEFAULT);
            assert_eq!(decode_tracker(&file).unwrap(), loaded(&objs), "n = {n}");
        }
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let objs = objects(9);
        let file = encode_tracker(objs.into_iter(), 4);
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x40;
            assert!(decode_tracker(&bad).is_err(), "flip at {i} not detected");
        }
    }

    #[test]
    fn truncation_and_trailing_bytes_are_detected() {
        let file = encode_tracker(objects(9).into_iter(), 4);
        for len in 0..file.len() {
            assert!(decode_tracker(&file[..len]).is_err(), "truncated to {len}");
        }
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(
            decode_tracker(&longer),
            Err(TrackerDecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn wrong_version_is_reported_as_such() {
        let mut file = encode_tracker(objects(3).into_iter(), 4);
        let version_at = offset_of!(TrackerHeader, version);
        file[version_at..version_at + 4].copy_from_slice(&99u32.to_le_bytes());
        let crc_at = offset_of!(TrackerHeader, header_crc32);
        let crc = crc32fast::hash(&file[..crc_at]);
        file[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_tracker(&file),
            Err(TrackerDecodeError::WrongVersion { found: 99 })
        );
    }
}
