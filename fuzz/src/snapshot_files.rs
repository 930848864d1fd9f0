//! Target `snapshot_files`: arbitrary bytes as a snapshot file.
//!
//! One snapshot file is put into an in-memory disk and loaded
//! (`SnapshotStore::load_newest`), then restored as the reference broker
//! metadata machine (`ringstore::broker::Metadata`). Nothing may panic:
//! every input gives a typed error or a valid state.
//!
//! Checksums stop a coverage-guided fuzzer at the first CRC, so an input
//! either brings raw bytes ([`Source::Raw`]), arbitrary sections that are
//! written into a correctly checksummed file ([`Source::Sections`]), or one
//! of a few valid snapshots of real broker states ([`Source::Template`]);
//! then [`Mutation`]s damage it, and with `reseal` every checksum is
//! recomputed afterwards, so the damage reaches the section decoders.
//!
//! What is checked, beyond "no panic":
//! * an undamaged template loads and restores to exactly its state;
//! * a damaged, unresealed file whose damage is one flipped bit is refused
//!   (a CRC-32 always detects a single-bit error);
//! * a state that restores passes the broker's own invariant check, and
//!   survives a second round trip (freeze, persist, load, restore) equal.

use arbitrary::Arbitrary;
use ringstore::broker::{gen, Metadata};
use ringstore::machine::{
    restore_state, EncodeError, EncodeProgress, FrozenSection, SectionEncoder,
};
use ringstore::snapshot::format::{
    header_block_hasher, SectionEntry, SnapshotHeader, BODY_OFFSET, HEADER_BLOCK_BYTES,
    SECTION_ENTRY_BYTES, SNAPSHOT_HEADER_BYTES,
};
use ringstore::snapshot::{snapshot_file_name, SnapshotStore};
use ringstore::StateMachine;
use ringstore_journal::storage::MemStorage;
use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use uuid::Uuid;
use zerocopy::{FromBytes, IntoBytes};

/// Largest raw file.
pub const FILE_BYTES_MAX: usize = 256 << 10;
/// Most sections in [`Source::Sections`].
pub const SECTIONS_MAX: usize = 8;
/// Largest section in [`Source::Sections`].
pub const SECTION_BYTES_MAX: usize = 16 << 10;
/// Most mutations.
pub const MUTATIONS_MAX: usize = 16;
/// Longest poke.
pub const POKE_BYTES_MAX: usize = 64;
/// Number of templates.
pub const TEMPLATE_COUNT: usize = 4;
/// The snapshot directory on the in-memory disk.
pub const DIR: &str = "/fuzz/snapshots";
/// The domain every generated snapshot belongs to.
pub const DOMAIN: Uuid = Uuid::from_u128(0x5eed_5eed_5eed_5eed_5eed_5eed_5eed_5eed);

/// Section names an arbitrary section may take: the broker's four and two
/// unknown ones.
pub const SECTION_NAMES: [&str; 6] = [
    "broker.streams",
    "broker.topics",
    "broker.groups",
    "broker.users",
    "broker.unknown",
    "x",
];

/// Where the file comes from.
#[derive(Debug, Clone, Arbitrary)]
pub enum Source {
    /// These bytes, as they are.
    Raw(Vec<u8>),
    /// Sections `(name index, version, bytes)` written into a well-formed
    /// file with correct checksums.
    Sections(Vec<(u8, u32, Vec<u8>)>),
    /// One of [`TEMPLATE_COUNT`] valid snapshots of broker states.
    Template(u8),
}

/// Damage applied to the file.
#[derive(Debug, Clone, Arbitrary)]
pub enum Mutation {
    /// Flips one bit.
    Flip {
        /// Byte offset (modulo the file length).
        offset: u32,
        /// Bit (modulo 8).
        bit: u8,
    },
    /// Overwrites bytes.
    Poke {
        /// Byte offset (modulo the file length).
        offset: u32,
        /// The bytes (at most [`POKE_BYTES_MAX`]).
        bytes: Vec<u8>,
    },
    /// Cuts the file.
    Truncate {
        /// New length (modulo the file length + 1).
        len: u32,
    },
    /// Sets a header field: the watermark, the section count or the body
    /// length.
    Field {
        /// Which field (modulo 3).
        which: u8,
        /// Its new value.
        value: u64,
    },
}

/// One fuzz input.
#[derive(Debug, Clone, Arbitrary)]
pub struct Input {
    /// The file.
    pub source: Source,
    /// Damage.
    pub mutations: Vec<Mutation>,
    /// Recompute every checksum after the damage.
    pub reseal: bool,
}

/// A section encoder that writes fixed bytes.
struct RawSection(Option<Vec<u8>>);

impl SectionEncoder for RawSection {
    fn encode_some(
        &mut self,
        out: &mut Vec<u8>,
        _bytes_goal: usize,
    ) -> Result<EncodeProgress, EncodeError> {
        if let Some(bytes) = self.0.take() {
            out.extend_from_slice(&bytes);
        }
        Ok(EncodeProgress::Done)
    }
}

/// Writes `sections` as the snapshot at `watermark` and returns its bytes.
async fn write_file(sections: Vec<FrozenSection>, watermark: u64) -> Option<Vec<u8>> {
    let storage = MemStorage::new();
    let store = SnapshotStore::open(storage.clone(), DIR).await.ok()?;
    let meta = store.persist(sections, watermark, 7, DOMAIN).await.ok()?;
    storage.file_bytes(&meta.path)
}

/// A broker state built from `commands` pseudo-random commands.
fn template_state(index: usize) -> Metadata {
    let commands = [0u64, 40, 400, 2000][index % TEMPLATE_COUNT];
    let mut rng = gen::splitmix64(index as u64 + 1);
    let mut machine = Metadata::default();
    for op in 1..=commands {
        let command = gen::random_command(&mut rng);
        let _ = machine.apply(ringstore::OpId { op, epoch: 1 }, command);
    }
    machine
}

thread_local! {
    /// The templates' states and files, made once per thread.
    static TEMPLATES: OnceCell<Vec<(Metadata, Vec<u8>)>> = const { OnceCell::new() };
}

fn templates() -> Vec<(Metadata, Vec<u8>)> {
    TEMPLATES.with(|cell| {
        cell.get_or_init(|| {
            (0..TEMPLATE_COUNT)
                .map(|i| {
                    let machine = template_state(i);
                    let sections = machine.freeze();
                    let bytes = crate::block_on(write_file(sections, 100 + i as u64))
                        .expect("a template snapshot writes");
                    (machine, bytes)
                })
                .collect()
        })
        .clone()
    })
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    match mutation {
        Mutation::Flip { offset, bit } => {
            if !bytes.is_empty() {
                let at = *offset as usize % bytes.len();
                bytes[at] ^= 1 << (bit % 8);
            }
        }
        Mutation::Poke {
            offset,
            bytes: poke,
        } => {
            if !bytes.is_empty() {
                let at = *offset as usize % bytes.len();
                for (i, b) in poke.iter().take(POKE_BYTES_MAX).enumerate() {
                    if let Some(slot) = bytes.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
        }
        Mutation::Truncate { len } => {
            let len = *len as usize % (bytes.len() + 1);
            bytes.truncate(len);
        }
        Mutation::Field { which, value } => {
            if let Ok((mut header, _)) = SnapshotHeader::read_from_prefix(bytes) {
                match which % 3 {
                    0 => header.watermark = (*value).into(),
                    1 => header.section_count = (*value as u32).into(),
                    _ => header.body_bytes = (*value).into(),
                }
                bytes[..SNAPSHOT_HEADER_BYTES].copy_from_slice(header.as_bytes());
            }
        }
    }
}

/// Recomputes every checksum the header and table allow.
fn reseal(bytes: &mut [u8]) {
    let block_bytes = HEADER_BLOCK_BYTES as usize;
    if bytes.len() < block_bytes {
        return;
    }
    let Ok((mut header, _)) = SnapshotHeader::read_from_prefix(bytes) else {
        return;
    };
    let count = (header.section_count.get() as usize)
        .min((block_bytes - SNAPSHOT_HEADER_BYTES) / SECTION_ENTRY_BYTES);
    let mut body_hasher = crc32fast::Hasher::new();
    for i in 0..count {
        let at = SNAPSHOT_HEADER_BYTES + i * SECTION_ENTRY_BYTES;
        let Ok((mut entry, _)) = SectionEntry::read_from_prefix(&bytes[at..]) else {
            return;
        };
        let start = entry.offset.get() as usize;
        let end = start.saturating_add(entry.len.get() as usize);
        if let Some(section) = bytes.get(start..end) {
            entry.checksum = crc32fast::hash(section).into();
            body_hasher.update(section);
        }
        bytes[at..at + SECTION_ENTRY_BYTES].copy_from_slice(entry.as_bytes());
    }
    let body_end = (BODY_OFFSET as usize).saturating_add(header.body_bytes.get() as usize);
    if let Some(body) = bytes.get(BODY_OFFSET as usize..body_end) {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(body);
        body_hasher = hasher;
    }
    let mut file_hasher = header_block_hasher(&bytes[..block_bytes]);
    file_hasher.combine(&body_hasher);
    header.file_checksum = file_hasher.finalize().into();
    bytes[..SNAPSHOT_HEADER_BYTES].copy_from_slice(header.as_bytes());
    header.header_checksum = crc32fast::hash(&bytes[4..block_bytes]).into();
    bytes[..SNAPSHOT_HEADER_BYTES].copy_from_slice(header.as_bytes());
}

/// The file name the loader expects for `bytes` (from its header, if any).
fn file_path(bytes: &[u8]) -> PathBuf {
    let watermark = SnapshotHeader::read_from_prefix(bytes)
        .map(|(h, _)| h.watermark.get())
        .unwrap_or(1);
    Path::new(DIR).join(snapshot_file_name(watermark))
}

/// Runs one input; panics on a finding.
pub fn run(input: &Input) {
    let mutations: Vec<Mutation> = input
        .mutations
        .iter()
        .take(MUTATIONS_MAX)
        .cloned()
        .collect();
    let (mut bytes, expected) = match &input.source {
        Source::Raw(raw) => (raw.iter().take(FILE_BYTES_MAX).copied().collect(), None),
        Source::Sections(sections) => {
            let frozen: Vec<FrozenSection> = sections
                .iter()
                .take(SECTIONS_MAX)
                .map(|(name, version, bytes)| FrozenSection {
                    name: SECTION_NAMES[*name as usize % SECTION_NAMES.len()],
                    version: *version,
                    encoder: Box::new(RawSection(Some(
                        bytes.iter().take(SECTION_BYTES_MAX).copied().collect(),
                    ))),
                })
                .collect();
            match crate::block_on(write_file(frozen, 1)) {
                Some(bytes) => (bytes, None),
                // Sections the writer refuses (a name used twice is allowed
                // by the writer; too many sections is not).
                None => return,
            }
        }
        Source::Template(index) => {
            let (machine, bytes) = templates()[*index as usize % TEMPLATE_COUNT].clone();
            (bytes, Some(machine))
        }
    };
    let pristine = bytes.clone();
    for mutation in &mutations {
        mutate(&mut bytes, mutation);
    }
    if input.reseal {
        reseal(&mut bytes);
    }
    let damaged = bytes != pristine;
    // Bytes every checksum covers: the header block and the body (not the
    // zeros after it).
    let covered_bytes = SnapshotHeader::read_from_prefix(&pristine)
        .map(|(h, _)| (BODY_OFFSET as usize).saturating_add(h.body_bytes.get() as usize))
        .unwrap_or(0);
    let single_flip = !input.reseal
        && mutations.len() == 1
        && matches!(mutations[0], Mutation::Flip { offset, .. }
            if !pristine.is_empty() && (offset as usize % pristine.len()) < covered_bytes)
        && damaged;
    let path = file_path(&bytes);
    crate::block_on(async move {
        let storage = MemStorage::new();
        storage.insert_file(&path, bytes);
        let store = SnapshotStore::open(storage.clone(), DIR)
            .await
            .expect("open the snapshot directory");
        let (loaded, skipped) = store.load_newest(DOMAIN).await.expect("list");
        let Some(loaded) = loaded else {
            assert_eq!(skipped.len(), 1, "one file, skipped with a reason");
            return;
        };
        assert!(!single_flip, "a single flipped bit was not detected");
        let watermark = loaded.meta.watermark;
        let restored = match restore_state::<Metadata>(loaded.sections) {
            Ok(machine) => machine,
            Err(_) => {
                assert!(
                    damaged || expected.is_none(),
                    "an undamaged template does not restore"
                );
                return;
            }
        };
        if let (Some(expected), false) = (&expected, damaged) {
            assert_eq!(
                &restored, expected,
                "an undamaged template restores to its state"
            );
        }
        if let Err(reason) = restored.check() {
            panic!("a restored state breaks an invariant: {reason}");
        }
        // A second round trip gives the same state.
        // Another name than the file under test.
        let rewrite_at = if watermark == 1 { 2 } else { 1 };
        let rewritten = write_file(restored.freeze(), rewrite_at)
            .await
            .expect("a restored state persists");
        let path = Path::new(DIR).join(snapshot_file_name(rewrite_at));
        storage.insert_file(&path, rewritten);
        let again = store
            .load(&path, Some(DOMAIN))
            .await
            .expect("a rewritten snapshot loads");
        let again = restore_state::<Metadata>(again.sections).expect("and restores");
        assert_eq!(again, restored, "round trip");
    });
}
