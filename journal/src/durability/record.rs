//! The durability record: what the last [`Durability::Auto`](crate::Durability::Auto) probe of a
//! journal's device measured, kept in the journal's directory
//! ([`DURABILITY_RECORD_FILE_NAME`]).
//!
//! A probe costs an open about 10 ms and a few syncs. Within a process the
//! figures are kept in memory; the record keeps them across processes, so
//! that a restarted broker reopens its journals without probing again, and
//! so that `ringstore wal inspect` can say what `Auto` chose.
//!
//! A record is taken only for the device, the preparation
//! ([`Preallocation`]) and the boot it was measured on. The boot
//! (`/proc/sys/kernel/random/boot_id`) stands for most of what can change
//! how a device syncs without changing its device number: a new kernel, a
//! firmware update, a disk replaced while the host was down. A change
//! that keeps both (a disk hot-swapped under the same number, its write
//! cache switched at run time) is not noticed until the next boot; the
//! figures choose how appends are made durable, never whether: both ways
//! make every acknowledged append durable. Where the boot cannot be read,
//! no record is read or written and every process probes.
//!
//! Within a process the first figures an open finds for a device (measured
//! or read from its record) are the ones every journal of that process on
//! that device takes, so the shards of an engine agree; a journal whose own
//! record applies keeps it, one that has none gets one.
//!
//! The record is advisory: a missing, damaged or foreign one only means
//! the next open probes again (and logs why when it does not verify), so
//! it is never damage, and a failed write of it fails nothing. It is
//! written to [`DURABILITY_RECORD_TEMP_NAME`], synced, then renamed over
//! the old one, so a crash leaves either record whole; the directory is
//! not synced (losing the rename costs one probe), and the next open's
//! recovery removes a temporary file a crash left, as it removes the other
//! leftovers. Format: `journal/FORMAT.md`, "Durability record".

use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::figures::DurabilityProbe;
use crate::config::Preallocation;
use crate::storage::{BufferedFile, Storage};

/// The record's file, in the journal directory.
pub const DURABILITY_RECORD_FILE_NAME: &str = "durability-choice";
/// A record being written; renamed to [`DURABILITY_RECORD_FILE_NAME`] once
/// synced.
pub const DURABILITY_RECORD_TEMP_NAME: &str = "durability-choice.tmp";
/// "RSDC" read as a little-endian u32.
pub const DURABILITY_RECORD_MAGIC: u32 = u32::from_le_bytes(*b"RSDC");
/// The record format version this build writes and reads.
pub const DURABILITY_RECORD_VERSION: u32 = 1;
/// Bytes of a record file: exactly one [`RecordLayout`].
pub const DURABILITY_RECORD_BYTES: usize = size_of::<RecordLayout>();
/// Where the host's boot id is read (a UUID, new at every boot).
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

const _: () = assert!(DURABILITY_RECORD_BYTES == 72);

/// The record file's bytes (the table in `journal/FORMAT.md`).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RecordLayout {
    /// CRC-32 of bytes `4..` (every field after this one).
    pub checksum: U32,
    /// [`DURABILITY_RECORD_MAGIC`].
    pub magic: U32,
    /// [`DURABILITY_RECORD_VERSION`].
    pub version: U32,
    /// 0: [`Preallocation::Fallocate`], 1: [`Preallocation::ZeroFill`].
    pub preallocation: U32,
    /// The device number of the journal's directory when measured.
    pub device: U64,
    /// The boot it was measured in.
    pub boot_id: [u8; 16],
    /// When it was measured: seconds since the Unix epoch.
    pub measured_at_unix_secs: U64,
    /// [`DurabilityProbe::rounds`].
    pub rounds: U32,
    /// Zero.
    pub reserved: U32,
    /// [`DurabilityProbe::sync_p50`] in nanoseconds.
    pub sync_p50_ns: U64,
    /// [`DurabilityProbe::write_through_p50`] in nanoseconds.
    pub write_through_p50_ns: U64,
}

/// A probe as recorded: its figures, and what they apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurabilityRecord {
    /// The device number of the journal's directory.
    pub device: u64,
    /// How the probe's files were prepared (as the segments were).
    pub preallocation: Preallocation,
    /// The host's boot id at the time.
    pub boot_id: [u8; 16],
    /// When it was measured (whole seconds).
    pub measured_at: SystemTime,
    /// What it measured.
    pub probe: DurabilityProbe,
}

/// Why a record file was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordFault {
    /// The file is not [`DURABILITY_RECORD_BYTES`] long (a crash cannot
    /// leave it so: it is renamed into place once whole).
    Length(u64),
    /// Not a durability record.
    Magic(u32),
    /// The checksum does not match: damaged at rest.
    Checksum {
        /// As stored.
        stored: u32,
        /// Of the bytes read.
        computed: u32,
    },
    /// Written by another format version.
    UnsupportedVersion(u32),
    /// It verifies, but this field is out of range.
    Field(&'static str),
}

impl std::fmt::Display for RecordFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordFault::Length(len) => write!(
                f,
                "{len} bytes, a durability record is {DURABILITY_RECORD_BYTES}"
            ),
            RecordFault::Magic(magic) => {
                write!(f, "magic {magic:#010x} is not a durability record's")
            }
            RecordFault::Checksum { stored, computed } => write!(
                f,
                "checksum {stored:#010x} stored, {computed:#010x} computed"
            ),
            RecordFault::UnsupportedVersion(v) => write!(
                f,
                "format version {v}, this build reads version {DURABILITY_RECORD_VERSION}"
            ),
            RecordFault::Field(field) => write!(f, "{field} out of range"),
        }
    }
}

impl DurabilityRecord {
    /// The record of `probe`, measured now on `device` in boot `boot_id`.
    pub fn now(
        device: u64,
        preallocation: Preallocation,
        boot_id: [u8; 16],
        probe: DurabilityProbe,
    ) -> DurabilityRecord {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        DurabilityRecord {
            device,
            preallocation,
            boot_id,
            measured_at: UNIX_EPOCH + Duration::from_secs(secs),
            probe,
        }
    }

    /// Whether an open of a journal on `device`, prepared as
    /// `preallocation`, in boot `boot_id`, may take these figures.
    pub fn applies_to(&self, device: u64, preallocation: Preallocation, boot_id: [u8; 16]) -> bool {
        self.device == device && self.preallocation == preallocation && self.boot_id == boot_id
    }

    /// The file's bytes: exactly [`DURABILITY_RECORD_BYTES`].
    pub fn encode(&self) -> Vec<u8> {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let mut layout = RecordLayout {
            checksum: 0.into(),
            magic: DURABILITY_RECORD_MAGIC.into(),
            version: DURABILITY_RECORD_VERSION.into(),
            preallocation: match self.preallocation {
                Preallocation::Fallocate => 0,
                Preallocation::ZeroFill => 1,
            }
            .into(),
            device: self.device.into(),
            boot_id: self.boot_id,
            measured_at_unix_secs: self
                .measured_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .into(),
            rounds: self.probe.rounds.into(),
            reserved: 0.into(),
            sync_p50_ns: nanos(self.probe.sync_p50).into(),
            write_through_p50_ns: nanos(self.probe.write_through_p50).into(),
        };
        layout.checksum = crc32fast::hash(&layout.as_bytes()[4..]).into();
        layout.as_bytes().to_vec()
    }

    /// Reads a record file's bytes. Never panics: any bytes give a record
    /// or a fault.
    pub fn decode(bytes: &[u8]) -> Result<DurabilityRecord, RecordFault> {
        let Ok(layout) = RecordLayout::read_from_bytes(bytes) else {
            return Err(RecordFault::Length(bytes.len() as u64));
        };
        if layout.magic.get() != DURABILITY_RECORD_MAGIC {
            return Err(RecordFault::Magic(layout.magic.get()));
        }
        let computed = crc32fast::hash(&bytes[4..]);
        if layout.checksum.get() != computed {
            return Err(RecordFault::Checksum {
                stored: layout.checksum.get(),
                computed,
            });
        }
        if layout.version.get() != DURABILITY_RECORD_VERSION {
            return Err(RecordFault::UnsupportedVersion(layout.version.get()));
        }
        let preallocation = match layout.preallocation.get() {
            0 => Preallocation::Fallocate,
            1 => Preallocation::ZeroFill,
            _ => return Err(RecordFault::Field("preallocation")),
        };
        if layout.reserved.get() != 0 {
            return Err(RecordFault::Field("reserved"));
        }
        // A probe runs at least one round and times something in each.
        if layout.rounds.get() == 0 {
            return Err(RecordFault::Field("rounds"));
        }
        if layout.sync_p50_ns.get() == 0 || layout.write_through_p50_ns.get() == 0 {
            return Err(RecordFault::Field("a median of 0 ns"));
        }
        // Past what the platform's clock holds (2^63 s and more overflow).
        let Some(measured_at) =
            UNIX_EPOCH.checked_add(Duration::from_secs(layout.measured_at_unix_secs.get()))
        else {
            return Err(RecordFault::Field("measured_at_unix_secs"));
        };
        Ok(DurabilityRecord {
            device: layout.device.get(),
            preallocation,
            boot_id: layout.boot_id,
            measured_at,
            probe: DurabilityProbe {
                rounds: layout.rounds.get(),
                sync_p50: Duration::from_nanos(layout.sync_p50_ns.get()),
                write_through_p50: Duration::from_nanos(layout.write_through_p50_ns.get()),
            },
        })
    }
}

/// This host's boot id, or `None` where it cannot be read (then no record
/// is read or written).
pub fn boot_id() -> Option<[u8; 16]> {
    let text = std::fs::read_to_string(BOOT_ID_PATH).ok()?;
    uuid::Uuid::parse_str(text.trim())
        .ok()
        .map(|id| *id.as_bytes())
}

/// The record in `dir`: `None` if there is none, else what it holds or
/// why it was not taken.
pub async fn read<S: Storage>(
    storage: &S,
    dir: &Path,
) -> io::Result<Option<Result<DurabilityRecord, RecordFault>>> {
    let path = dir.join(DURABILITY_RECORD_FILE_NAME);
    let file = match storage.open_buffered(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let read = async {
        let len = file.file_len().await?;
        if len != DURABILITY_RECORD_BYTES as u64 {
            return Ok(Err(RecordFault::Length(len)));
        }
        let bytes = file.read_at(0, DURABILITY_RECORD_BYTES).await?;
        Ok(DurabilityRecord::decode(&bytes))
    }
    .await;
    let _ = file.close().await;
    read.map(Some)
}

/// Writes `record` into `dir`: to the temporary name, synced, then renamed
/// over any older record.
pub async fn write<S: Storage>(
    storage: &S,
    dir: &Path,
    record: &DurabilityRecord,
) -> io::Result<()> {
    let temp = dir.join(DURABILITY_RECORD_TEMP_NAME);
    match storage.remove(&temp).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let file = storage.create_buffered(&temp).await?;
    let written = async {
        let bytes = record.encode();
        let len = bytes.len();
        let wrote = file.write_at(bytes, 0).await?;
        if wrote != len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("wrote {wrote} of {len} bytes"),
            ));
        }
        file.sync().await
    }
    .await;
    let closed = file.close().await;
    let renamed = match written.and(closed) {
        Ok(()) => {
            storage
                .rename(&temp, &dir.join(DURABILITY_RECORD_FILE_NAME))
                .await
        }
        Err(e) => Err(e),
    };
    if renamed.is_err() {
        let _ = storage.remove(&temp).await;
    }
    renamed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DurabilityRecord {
        DurabilityRecord {
            device: 0x0803,
            preallocation: Preallocation::ZeroFill,
            boot_id: *b"0123456789abcdef",
            measured_at: UNIX_EPOCH + Duration::from_secs(1_796_000_000),
            probe: DurabilityProbe {
                rounds: 4,
                sync_p50: Duration::from_nanos(131_207),
                write_through_p50: Duration::from_nanos(88_415),
            },
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let record = sample();
        let bytes = record.encode();
        assert_eq!(bytes.len(), DURABILITY_RECORD_BYTES);
        assert_eq!(DurabilityRecord::decode(&bytes), Ok(record));
        let fallocated = DurabilityRecord {
            preallocation: Preallocation::Fallocate,
            ..record
        };
        assert_eq!(
            DurabilityRecord::decode(&fallocated.encode()),
            Ok(fallocated)
        );
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let bytes = sample().encode();
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let fault = DurabilityRecord::decode(&flipped).expect_err("a flipped bit");
            assert!(
                matches!(fault, RecordFault::Checksum { .. } | RecordFault::Magic(_)),
                "bit {bit}: {fault}"
            );
        }
    }

    #[test]
    fn short_long_foreign_and_newer_records_are_refused() {
        let bytes = sample().encode();
        // Every length but the record's, cut from it or padded after it.
        let mut padded = bytes.clone();
        padded.resize(4 * DURABILITY_RECORD_BYTES, 0);
        for len in (0..padded.len()).filter(|&len| len != DURABILITY_RECORD_BYTES) {
            assert_eq!(
                DurabilityRecord::decode(&padded[..len]),
                Err(RecordFault::Length(len as u64))
            );
        }
        assert!(matches!(
            DurabilityRecord::decode(&[0u8; DURABILITY_RECORD_BYTES]),
            Err(RecordFault::Magic(0))
        ));
        // Fields out of range under a checksum that verifies.
        let resealed = |at: usize, value: &[u8]| {
            let mut changed = bytes.clone();
            changed[at..at + value.len()].copy_from_slice(value);
            let checksum = crc32fast::hash(&changed[4..]);
            changed[..4].copy_from_slice(&checksum.to_le_bytes());
            DurabilityRecord::decode(&changed)
        };
        assert_eq!(
            resealed(8, &2u32.to_le_bytes()),
            Err(RecordFault::UnsupportedVersion(2))
        );
        assert_eq!(
            resealed(12, &7u32.to_le_bytes()),
            Err(RecordFault::Field("preallocation"))
        );
        assert_eq!(
            resealed(52, &1u32.to_le_bytes()),
            Err(RecordFault::Field("reserved"))
        );
        assert_eq!(
            resealed(48, &0u32.to_le_bytes()),
            Err(RecordFault::Field("rounds"))
        );
        assert_eq!(
            resealed(56, &0u64.to_le_bytes()),
            Err(RecordFault::Field("a median of 0 ns"))
        );
        // A time the clock cannot hold is refused, not a panic; the
        // largest medians are durations like any other.
        assert_eq!(
            resealed(40, &u64::MAX.to_le_bytes()),
            Err(RecordFault::Field("measured_at_unix_secs"))
        );
        assert!(resealed(56, &u64::MAX.to_le_bytes()).is_ok());
        assert!(resealed(16, &u64::MAX.to_le_bytes()).is_ok());
    }

    #[test]
    fn a_record_applies_to_its_device_preparation_and_boot_only() {
        let record = sample();
        let (device, preallocation, boot) = (record.device, record.preallocation, record.boot_id);
        assert!(record.applies_to(device, preallocation, boot));
        assert!(!record.applies_to(device + 1, preallocation, boot));
        assert!(!record.applies_to(device, Preallocation::Fallocate, boot));
        assert!(!record.applies_to(device, preallocation, *b"fedcba9876543210"));
    }

    #[test]
    fn this_hosts_boot_id_reads() {
        // Linux with /proc mounted, as every host this runs on.
        let id = boot_id().expect("a boot id");
        assert_ne!(id, [0; 16]);
        assert_eq!(boot_id(), Some(id));
    }
}
