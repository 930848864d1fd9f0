//! Segment files: naming, creation, and the bookkeeping kept per segment.
//!
//! The log is a sequence of preallocated segment files named by a
//! generation number that only grows. A segment is created complete before
//! any entry is written to it: the file is created, its space reserved and
//! synced and the directory synced (*prepared*, which the journal does in the
//! background for the next segment, so a rollover does not wait for it),
//! then its header is written and synced (*activated*). So a last segment whose header does not verify
//! and that holds no valid first write is one whose creation a crash
//! interrupted (recovery removes it); any other bad header is damage.

use crate::config::{Durability, JournalConfig, Preallocation};
use crate::error::{Error, Result};
use crate::format::{
    SegmentHeader, BLOCK_BYTES, FORMAT_VERSION, SEGMENT_DATA_OFFSET, SEGMENT_FLAG_NO_SYNC,
    SEGMENT_FLAG_RECYCLED, SEGMENT_MAGIC,
};
use crate::pace::Pacing;
use crate::storage::{IoBuf, Storage, StorageFile};
use std::cell::Cell;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::rc::Rc;
use zerocopy::IntoBytes;

const SEGMENT_PREFIX: &str = "segment-";
const SEGMENT_SUFFIX: &str = ".wal";

/// Bytes written per call when zero-filling a segment.
pub const ZERO_FILL_WRITE_BYTES: u64 = 1 << 20;
/// Bytes written per call when zero-filling a spare while appends run and
/// the spare is not behind (see `Shared::prepare_spare`; [`Pacing`]): an
/// append's write queued behind one waits for at
/// most this much of the device's time, and its fdatasync flushes at most
/// this much of zeros from the device's cache. Back-to-back 1 MiB writes
/// took a single appender's p50 ack from 0.12 ms to 5.5 ms for the first
/// half second after an open (`bench/PERFORMANCE.md`).
pub const ZERO_FILL_BUSY_WRITE_BYTES: u64 = 64 << 10;
/// The share of the time a spare's zero-fill writes while it gives way
/// (`Pacing::new`'s `busy_percent`).
pub const ZERO_FILL_BUSY_PERCENT: u8 = 25;
const _: () = assert!(ZERO_FILL_WRITE_BYTES.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(ZERO_FILL_BUSY_WRITE_BYTES.is_multiple_of(BLOCK_BYTES));

/// File name of segment `generation`: fixed width, so names sort by
/// generation.
pub fn segment_file_name(generation: u64) -> String {
    format!("{SEGMENT_PREFIX}{generation:016x}{SEGMENT_SUFFIX}")
}

/// The generation in a segment file name, if it is one.
pub fn segment_generation(name: &OsStr) -> Option<u64> {
    let name = name.to_str()?;
    let hex = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    // Lower-case only, as written: another spelling of the same number is
    // a stray file, never opened under a guessed name.
    if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    // u64::MAX cannot be followed by another generation: not a name the
    // journal writes.
    u64::from_str_radix(hex, 16)
        .ok()
        .filter(|g| *g > 0 && *g < u64::MAX)
}

/// An open segment and what the journal knows about it.
#[derive(Debug)]
pub(crate) struct Segment<F> {
    pub generation: u64,
    pub path: PathBuf,
    pub file: Rc<F>,
    pub segment_bytes: u64,
    /// Next write offset (for older segments: end of valid data).
    pub write_pos: u64,
    /// Largest data op written to it; it may be retired once the watermark
    /// reaches this.
    pub max_op: u64,
    /// Largest watermark this segment records (header or records in it).
    pub watermark_seen: u64,
    /// Every byte before this is durable: the end of the writes that
    /// finished in order (stamped into the next write as `durable_before`).
    pub durable_end: u64,
    /// The journal's id: in the segment's header, and the seed of every
    /// entry header's checksum.
    pub journal_id: [u8; 16],
    /// Created by this open, so its file is open for writing the way the
    /// journal writes (O_DSYNC under [`Durability::WriteThrough`]): once
    /// retired, it may be recycled. A recovered segment's file is not.
    pub reusable: bool,
}

/// Where a new segment continues from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Predecessor {
    pub generation: u64,
    pub end: u64,
}

/// Failure creating a segment: whether the journal must be poisoned.
pub(crate) struct CreateError {
    pub error: Error,
    pub poison: bool,
}

/// A segment file with its space reserved, synced and its directory entry
/// durable, but no header yet: a spare waiting to become the next segment.
/// A crash leaves it as a last segment without a valid header and without
/// data, which recovery removes.
pub(crate) struct PreparedFile<F> {
    pub generation: u64,
    pub path: PathBuf,
    pub file: F,
    /// A retired segment's file ([`recycle_segment_file`]): its space past
    /// the first write holds that segment's bytes.
    pub recycled: bool,
}

/// Bytes zeroed at the front of a retired segment's file before it is kept
/// for recycling ([`zero_for_recycling`]): the header block and the block
/// where the first write's first header goes. A kept file then holds no
/// header and no data to anything that reads the directory without a
/// superblock (salvage), and once renamed it is a spare to recovery.
pub(crate) const RECYCLE_ZEROED_BYTES: u64 = SEGMENT_DATA_OFFSET + BLOCK_BYTES;

/// Zeroes the first [`RECYCLE_ZEROED_BYTES`] of a retired segment's file,
/// syncs them and reads them back: the step before it is kept for
/// recycling. A write that reported success but left other bytes there (a
/// misdirected write) would leave a spare whose old header names another
/// generation, which an open after a crash refuses as data the superblock
/// does not record: it is an error, and the caller removes the file.
pub(crate) async fn zero_for_recycling<F: StorageFile>(
    file: &F,
    path: &std::path::Path,
) -> Result<()> {
    let mut buf = file.alloc_buf(RECYCLE_ZEROED_BYTES as usize);
    buf.as_bytes_mut().fill(0);
    file.write_at(buf, 0)
        .await
        .map_err(|e| Error::io("zero retired segment", path, Some(0), e))?;
    file.sync()
        .await
        .map_err(|e| Error::io("fdatasync", path, None, e))?;
    let read = file
        .read_at(0, RECYCLE_ZEROED_BYTES as usize)
        .await
        .map_err(|e| Error::io("read back zeroed segment", path, Some(0), e))?;
    match read.iter().position(|&byte| byte != 0) {
        None => Ok(()),
        Some(offset) => Err(Error::corruption(
            path,
            offset as u64,
            "the zeroed front of a retired segment reads back non-zero",
        )),
    }
}

/// How a zero-fill ([`Preallocation::ZeroFill`]) gives way to appends.
pub(crate) struct SparePacing<'a> {
    /// Small, paced writes while it says appends wait.
    pub pacing: Pacing<'a>,
    /// No writes at all while it holds.
    pub hold_off: &'a dyn Fn() -> bool,
    /// The bytes filled so far (the predicates may read it).
    pub filled: &'a Cell<u64>,
}

impl<'a> SparePacing<'a> {
    /// Never gives way (a segment created in the foreground).
    pub(crate) fn full_speed(filled: &'a Cell<u64>) -> SparePacing<'a> {
        SparePacing {
            pacing: Pacing::FULL_SPEED,
            hold_off: &|| false,
            filled,
        }
    }
}

/// Waited between two looks at [`SparePacing::hold_off`].
const ZERO_FILL_HOLD_OFF_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Creates the file of segment `generation` and makes it and its space
/// durable, zero-filling it as `pacing` lets it. On failure the file is
/// removed again; the journal stays usable unless even that removal failed.
pub(crate) async fn prepare_segment_file<S: Storage>(
    storage: &S,
    config: &JournalConfig,
    generation: u64,
    pacing: SparePacing<'_>,
) -> Result<PreparedFile<S::File>, CreateError> {
    let path = config.dir.join(segment_file_name(generation));
    let usable = |error: Error| CreateError {
        error,
        poison: false,
    };
    let file = storage
        .create(&path, config.durability == Durability::WriteThrough)
        .await
        .map_err(|e| usable(Error::io("create segment", &path, None, e)))?;
    let prepared = async {
        reserve_space(&file, config, &path, pacing).await?;
        file.sync()
            .await
            .map_err(|e| Error::io("fdatasync", &path, None, e))?;
        storage
            .sync_dir(&config.dir)
            .await
            .map_err(|e| Error::io("fsync directory", &config.dir, None, e))
    };
    if let Err(error) = prepared.await {
        let _ = file.close().await;
        // Durably gone: a crash must not bring the file back behind a later
        // removal of the segment before it.
        let removed = match storage.remove(&path).await {
            Ok(()) => storage.sync_dir(&config.dir).await,
            Err(e) => Err(e),
        };
        if let Err(e) = removed {
            return Err(CreateError {
                error: Error::io("remove half-created segment", &path, None, e),
                poison: true,
            });
        }
        return Err(usable(error));
    }
    Ok(PreparedFile {
        generation,
        path,
        file,
        recycled: false,
    })
}

/// Makes a retired segment's file, kept for recycling (its front zeroed by
/// [`zero_for_recycling`]), the spare for `generation`: renames it, syncs
/// the directory and opens it again under the new name. The kept file lies
/// below the superblock's first generation, so a crash before the rename
/// is durable leaves a file recovery removes as retired, and one after it
/// a spare (no header, no first write), which recovery removes too. On failure the file is
/// removed; as with [`prepare_segment_file`], the journal stays usable
/// unless a removal after the rename failed.
pub(crate) async fn recycle_segment_file<S: Storage>(
    storage: &S,
    config: &JournalConfig,
    retired: (PathBuf, S::File),
    generation: u64,
) -> Result<PreparedFile<S::File>, CreateError> {
    let (old_path, file) = retired;
    let path = config.dir.join(segment_file_name(generation));
    let usable = |error: Error| CreateError {
        error,
        poison: false,
    };
    let renamed = storage
        .rename(&old_path, &path)
        .await
        .map_err(|e| Error::io("rename recycled segment", &old_path, None, e));
    if let Err(error) = renamed {
        // Not renamed: a retired file, which the next open removes if
        // this removal does not.
        let _ = file.close().await;
        let _ = storage.remove(&old_path).await;
        return Err(usable(error));
    }
    // Opened again under its new name: the old handle may still name the
    // old path (see `Storage::open_for_writes`).
    let write_through = config.durability == Durability::WriteThrough;
    let renamed = async {
        storage
            .sync_dir(&config.dir)
            .await
            .map_err(|e| Error::io("fsync directory", &config.dir, None, e))?;
        storage
            .open_for_writes(&path, write_through)
            .await
            .map_err(|e| Error::io("open recycled segment", &path, None, e))
    };
    let reopened = renamed.await;
    let _ = file.close().await;
    let file = match reopened {
        Ok(file) => file,
        Err(error) => {
            // A spare without a header (the front is zeroed), which
            // recovery would remove; removed now, durably, or the journal
            // is poisoned (the name cannot be used again).
            let removed = match storage.remove(&path).await {
                Ok(()) => storage.sync_dir(&config.dir).await,
                Err(e) => Err(e),
            };
            return Err(match removed {
                Ok(()) => usable(error),
                Err(e) => CreateError {
                    error: Error::io("remove half-recycled segment", &path, None, e),
                    poison: true,
                },
            });
        }
    };
    Ok(PreparedFile {
        generation,
        path,
        file,
        recycled: true,
    })
}

/// Writes and syncs the header that makes a prepared file the next segment.
/// A failure here poisons: the file's state is unknown.
pub(crate) async fn activate_segment<F: StorageFile>(
    prepared: PreparedFile<F>,
    config: &JournalConfig,
    journal_id: [u8; 16],
    predecessor: Option<Predecessor>,
    watermark: u64,
) -> Result<Segment<F>, CreateError> {
    let PreparedFile {
        generation,
        path,
        file,
        recycled,
    } = prepared;
    let fatal = |error: Error| CreateError {
        error,
        poison: true,
    };
    let header = SegmentHeader {
        checksum: 0.into(),
        magic: SEGMENT_MAGIC.into(),
        version: FORMAT_VERSION.into(),
        data_offset: (SEGMENT_DATA_OFFSET as u32).into(),
        generation: generation.into(),
        segment_bytes: config.segment_bytes.into(),
        batch_bytes_max: config.batch_bytes_max.into(),
        prev_generation: predecessor.map_or(0, |p| p.generation).into(),
        prev_end: predecessor.map_or(0, |p| p.end).into(),
        watermark: watermark.into(),
        flags: (if config.durability == Durability::NoSync {
            SEGMENT_FLAG_NO_SYNC
        } else {
            0
        } | if recycled { SEGMENT_FLAG_RECYCLED } else { 0 })
        .into(),
        writes_in_flight: config.writes_in_flight.into(),
        journal_id,
    }
    .seal();
    let mut block = file.alloc_buf(BLOCK_BYTES as usize);
    block.as_bytes_mut().fill(0);
    block.as_bytes_mut()[..size_of::<SegmentHeader>()].copy_from_slice(header.as_bytes());
    file.write_at(block, 0)
        .await
        .map_err(|e| fatal(Error::io("write segment header", &path, Some(0), e)))?;
    file.sync()
        .await
        .map_err(|e| fatal(Error::io("fdatasync", &path, None, e)))?;
    Ok(Segment {
        generation,
        path,
        file: Rc::new(file),
        segment_bytes: config.segment_bytes,
        write_pos: SEGMENT_DATA_OFFSET,
        max_op: 0,
        watermark_seen: watermark,
        durable_end: SEGMENT_DATA_OFFSET,
        journal_id,
        reusable: true,
    })
}

/// Creates segment `generation` in one go: prepare, then activate.
pub(crate) async fn create_segment<S: Storage>(
    storage: &S,
    config: &JournalConfig,
    journal_id: [u8; 16],
    generation: u64,
    predecessor: Option<Predecessor>,
    watermark: u64,
) -> Result<Segment<S::File>, CreateError> {
    let filled = Cell::new(0);
    let prepared = prepare_segment_file(
        storage,
        config,
        generation,
        SparePacing::full_speed(&filled),
    )
    .await?;
    activate_segment(prepared, config, journal_id, predecessor, watermark).await
}

async fn reserve_space<F: StorageFile>(
    file: &F,
    config: &JournalConfig,
    path: &std::path::Path,
    spare: SparePacing<'_>,
) -> Result<()> {
    let SparePacing {
        pacing,
        hold_off,
        filled,
    } = spare;
    let zero_fill = match file.allocate(config.segment_bytes).await {
        Ok(()) => config.preallocation == Preallocation::ZeroFill,
        // No fallocate here (some filesystems): write zeros instead.
        Err(e) if crate::storage::is_errno(&e, libc::EOPNOTSUPP) => true,
        Err(e) => return Err(Error::io("fallocate", path, None, e)),
    };
    if zero_fill {
        let mut pos = 0;
        while pos < config.segment_bytes {
            while hold_off() {
                glommio::timer::sleep(ZERO_FILL_HOLD_OFF_PAUSE).await;
            }
            let busy = pacing.is_busy();
            let step = if busy {
                ZERO_FILL_BUSY_WRITE_BYTES
            } else {
                ZERO_FILL_WRITE_BYTES
            };
            let len = step.min(config.segment_bytes - pos);
            let mut buf = file.alloc_buf(len as usize);
            buf.as_bytes_mut().fill(0);
            let started = std::time::Instant::now();
            file.write_at(buf, pos)
                .await
                .map_err(|e| Error::io("zero-fill segment", path, Some(pos), e))?;
            pos += len;
            filled.set(pos);
            if busy {
                glommio::timer::sleep(pacing.pause_after(started.elapsed())).await;
            } else {
                // Lets the appenders run before the next look at `pacing`
                // (a write that completes at once would not).
                crate::glommio_quirks::reactor_turn().await;
            }
        }
        file.sync()
            .await
            .map_err(|e| Error::io("fdatasync", path, None, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        for generation in [1, 2, 255, u64::MAX - 1] {
            let name = segment_file_name(generation);
            assert_eq!(segment_generation(OsStr::new(&name)), Some(generation));
        }
        // The last generation could not be followed: never a segment name.
        assert_eq!(
            segment_generation(OsStr::new(&segment_file_name(u64::MAX))),
            None
        );
        assert!(segment_file_name(9) < segment_file_name(10));
        for other in [
            "segment-0.wal",
            "segment-0000000000000000.wal",
            "x.wal",
            "segment-000000000000000g.wal",
            "segment-000000000000000A.wal",
            "segment-+00000000000000a.wal",
        ] {
            assert_eq!(segment_generation(OsStr::new(other)), None, "{other}");
        }
    }
}
