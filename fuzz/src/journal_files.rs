//! Target `journal_files`: arbitrary bytes as journal segment files.
//!
//! Up to [`FILES_MAX`] segment files are put into an in-memory disk
//! ([`MemStorage`], no faults) and the journal is opened on them. Recovery
//! must never panic: it returns a typed error, or it opens and then every op
//! above the watermark reads back present (its payload checksum verified by
//! the journal), missing, or as a typed error.
//!
//! Coverage-guided fuzzing does not get past a checksum by itself, so an
//! input either brings raw files ([`Source::Raw`]) or picks one of a few
//! valid journals written through the real append path ([`Source::Template`]:
//! appends, group commit, watermark advances, epochs and replica writes, a
//! crash that tore the tail, `NoSync`) and damages it with [`Mutation`]s that
//! model the fault model's media faults: flipped bits, zeroed or torn
//! sectors, truncated, lost or renamed files, misdirected sector copies, and
//! arbitrary pokes.
//!
//! What is checked, beyond "no panic":
//! * an undamaged template opens and holds every acknowledged op above the
//!   watermark with exactly its bytes;
//! * when the damage cannot forge a checksum (no pokes, at most
//!   [`FLIPS_UNFORGEABLE_MAX`] flipped bits: CRC-32 detects every error of
//!   up to three bits at these lengths), an entry served holds bytes that
//!   were submitted for that op, never anything else;
//! * on this fault-free disk an entry recovery verified also verifies when
//!   read, an entry served carries the op asked for, and ops at or below the
//!   watermark are refused as compacted;
//! * recovery is repeatable: after a successful open (and optionally one
//!   append) and a clean close, a second open succeeds and serves the same
//!   entries.

use arbitrary::{Arbitrary, Unstructured};
use ringstore_journal::storage::{FaultConfig, MemStorage, Storage};
use ringstore_journal::{
    segment_file_name, segment_generation, Durability, Error, Journal, JournalBuilder, LogItem,
    Recovery,
};
use std::cell::{OnceCell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::rc::Rc;

/// Most segment files in one input.
pub const FILES_MAX: usize = 4;
/// Largest segment file in one input.
pub const FILE_BYTES_MAX: usize = 256 << 10;
/// File generations are `byte % GENERATIONS`: small, so neighbours are
/// likely. Generation 0 is not a valid segment name (the journal ignores it).
pub const GENERATIONS: u8 = 8;
/// Most mutations applied to a template.
pub const MUTATIONS_MAX: usize = 32;
/// Longest poke.
pub const POKE_BYTES_MAX: usize = 64;
/// Most flipped bits for which an input still counts as unable to forge a
/// CRC-32 (its Hamming distance is 4 for messages this short).
pub const FLIPS_UNFORGEABLE_MAX: usize = 3;
/// Most ops read back per open.
pub const READS_MAX: u64 = 1024;
/// Sector size of the simulated disk (the unit of tearing).
pub const SECTOR_BYTES: usize = 512;

/// The journal directory on the in-memory disk.
pub const DIR: &str = "/fuzz/wal";
/// Journal shape: the same as the crash simulator's, so segments are small.
pub const SEGMENT_BYTES: u64 = 64 << 10;
/// Largest group-commit write.
pub const BATCH_BYTES_MAX: u64 = 16 << 10;
/// Largest payload.
pub const ENTRY_BYTES_MAX: u64 = 2 << 10;
/// Ring slots.
pub const SLOT_COUNT: u64 = 64;

/// Number of templates ([`Source::Template`] picks `template % TEMPLATE_COUNT`).
pub const TEMPLATE_COUNT: usize = 6;

/// One fuzz input.
///
/// Its byte layout is hand-written (see [`Input::decode`]), not derived:
/// raw files of up to 256 KiB decode one byte per byte (a derived `Vec<u8>`
/// spends a continuation byte per element), and [`Input::encode`] can write
/// real segment files into the seed corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Open with `Recovery::Strict` instead of `TruncateTornTail`.
    pub strict: bool,
    /// After a successful open, append one entry before the second open.
    pub append_after_open: bool,
    /// Where the files come from.
    pub source: Source,
}

/// Where an input's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// These files as they are (at most [`FILES_MAX`]).
    Raw(Vec<RawFile>),
    /// A valid journal written by the real append path, then damaged.
    Template {
        /// Which template (`% TEMPLATE_COUNT`).
        template: u8,
        /// Damage applied in order (at most [`MUTATIONS_MAX`]).
        mutations: Vec<Mutation>,
    },
}

/// One raw segment file.
#[derive(Clone, PartialEq, Eq)]
pub struct RawFile {
    /// Generation (`% GENERATIONS`); a later file of the same generation
    /// replaces an earlier one.
    pub generation: u8,
    /// Contents (at most [`FILE_BYTES_MAX`]).
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for RawFile {
    /// Short: cargo-fuzz prints a failing input's `Debug`, and a derived one
    /// spends a line per byte.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head: String = self
            .bytes
            .iter()
            .take(32)
            .map(|b| format!("{b:02x}"))
            .collect();
        f.debug_struct("RawFile")
            .field("generation", &self.generation)
            .field("len", &self.bytes.len())
            .field("head", &head)
            .finish()
    }
}

/// Damage to a template's files. `file` indexes the files present at that
/// point (`% count`, in generation order); offsets are reduced modulo the
/// file's length, so every value is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// Flip one bit (latent corruption).
    FlipBit {
        /// File.
        file: u8,
        /// Bit offset.
        bit: u32,
    },
    /// Zero `count + 1` sectors (a torn or lost write).
    ZeroSectors {
        /// File.
        file: u8,
        /// First sector.
        sector: u16,
        /// Sectors after the first.
        count: u8,
    },
    /// Cut the file short (a size change never made durable).
    Truncate {
        /// File.
        file: u8,
        /// New length (`% (len + 1)`).
        len: u32,
    },
    /// Copy `count + 1` sectors, possibly into another file (a misdirected
    /// write, or stale bytes).
    CopySectors {
        /// Source file.
        from_file: u8,
        /// First source sector.
        from_sector: u16,
        /// Target file.
        to_file: u8,
        /// First target sector.
        to_sector: u16,
        /// Sectors after the first.
        count: u8,
    },
    /// Remove the file (a create undone by a crash).
    Remove {
        /// File.
        file: u8,
    },
    /// Give the file another generation (`% GENERATIONS`), replacing any
    /// file there.
    Rename {
        /// File.
        file: u8,
        /// New generation.
        generation: u8,
    },
    /// Overwrite bytes (can forge anything, checksums included).
    Poke {
        /// File.
        file: u8,
        /// Byte offset.
        offset: u32,
        /// The bytes (at most [`POKE_BYTES_MAX`]).
        bytes: Vec<u8>,
    },
}

const MUTATION_KINDS: u8 = 7;

/// A total decoder over a byte string: reading past the end yields zeros.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    fn take(&mut self, len: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(len.min(self.data.len()));
        self.data = tail;
        head
    }
    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        let mut bytes = [0; 2];
        let taken = self.take(2);
        bytes[..taken.len()].copy_from_slice(taken);
        u16::from_le_bytes(bytes)
    }
    fn u32(&mut self) -> u32 {
        let mut bytes = [0; 4];
        let taken = self.take(4);
        bytes[..taken.len()].copy_from_slice(taken);
        u32::from_le_bytes(bytes)
    }
}

const FLAG_STRICT: u8 = 1;
const FLAG_APPEND: u8 = 2;
const FLAG_TEMPLATE: u8 = 4;

impl Input {
    /// Decodes any byte string (never fails). Layout, little-endian:
    ///
    /// * byte 0: flags — bit 0 `strict`, bit 1 `append_after_open`, bit 2
    ///   template (else raw);
    /// * raw: up to [`FILES_MAX`] times while bytes remain: generation `u8`,
    ///   length `u32`, then that many bytes (fewer if the input ends; at most
    ///   [`FILE_BYTES_MAX`]);
    /// * template: template `u8`, then up to [`MUTATIONS_MAX`] mutations while
    ///   bytes remain: a kind byte (`% 7`, in [`Mutation`]'s order) and its
    ///   fields in declaration order (`Poke`: file `u8`, offset `u32`, length
    ///   `u8` `% (POKE_BYTES_MAX + 1)`, bytes).
    pub fn decode(data: &[u8]) -> Input {
        let mut r = Reader { data };
        let flags = r.u8();
        let source = if flags & FLAG_TEMPLATE == 0 {
            let mut files = Vec::new();
            while !r.is_empty() && files.len() < FILES_MAX {
                let generation = r.u8();
                let len = (r.u32() as usize).min(FILE_BYTES_MAX);
                files.push(RawFile {
                    generation,
                    bytes: r.take(len).to_vec(),
                });
            }
            Source::Raw(files)
        } else {
            let template = r.u8();
            let mut mutations = Vec::new();
            while !r.is_empty() && mutations.len() < MUTATIONS_MAX {
                let mutation = match r.u8() % MUTATION_KINDS {
                    0 => Mutation::FlipBit {
                        file: r.u8(),
                        bit: r.u32(),
                    },
                    1 => Mutation::ZeroSectors {
                        file: r.u8(),
                        sector: r.u16(),
                        count: r.u8(),
                    },
                    2 => Mutation::Truncate {
                        file: r.u8(),
                        len: r.u32(),
                    },
                    3 => Mutation::CopySectors {
                        from_file: r.u8(),
                        from_sector: r.u16(),
                        to_file: r.u8(),
                        to_sector: r.u16(),
                        count: r.u8(),
                    },
                    4 => Mutation::Remove { file: r.u8() },
                    5 => Mutation::Rename {
                        file: r.u8(),
                        generation: r.u8(),
                    },
                    _ => {
                        let file = r.u8();
                        let offset = r.u32();
                        let len = usize::from(r.u8()) % (POKE_BYTES_MAX + 1);
                        Mutation::Poke {
                            file,
                            offset,
                            bytes: r.take(len).to_vec(),
                        }
                    }
                };
                mutations.push(mutation);
            }
            Source::Template {
                template,
                mutations,
            }
        };
        Input {
            strict: flags & FLAG_STRICT != 0,
            append_after_open: flags & FLAG_APPEND != 0,
            source,
        }
    }

    /// The bytes [`Input::decode`] turns back into this input (for inputs
    /// within the bounds).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut flags = 0;
        if self.strict {
            flags |= FLAG_STRICT;
        }
        if self.append_after_open {
            flags |= FLAG_APPEND;
        }
        if matches!(self.source, Source::Template { .. }) {
            flags |= FLAG_TEMPLATE;
        }
        out.push(flags);
        match &self.source {
            Source::Raw(files) => {
                for file in files {
                    out.push(file.generation);
                    out.extend_from_slice(&(file.bytes.len() as u32).to_le_bytes());
                    out.extend_from_slice(&file.bytes);
                }
            }
            Source::Template {
                template,
                mutations,
            } => {
                out.push(*template);
                for mutation in mutations {
                    match mutation {
                        Mutation::FlipBit { file, bit } => {
                            out.extend([0, *file]);
                            out.extend(bit.to_le_bytes());
                        }
                        Mutation::ZeroSectors {
                            file,
                            sector,
                            count,
                        } => {
                            out.extend([1, *file]);
                            out.extend(sector.to_le_bytes());
                            out.push(*count);
                        }
                        Mutation::Truncate { file, len } => {
                            out.extend([2, *file]);
                            out.extend(len.to_le_bytes());
                        }
                        Mutation::CopySectors {
                            from_file,
                            from_sector,
                            to_file,
                            to_sector,
                            count,
                        } => {
                            out.extend([3, *from_file]);
                            out.extend(from_sector.to_le_bytes());
                            out.push(*to_file);
                            out.extend(to_sector.to_le_bytes());
                            out.push(*count);
                        }
                        Mutation::Remove { file } => out.extend([4, *file]),
                        Mutation::Rename { file, generation } => {
                            out.extend([5, *file, *generation])
                        }
                        Mutation::Poke {
                            file,
                            offset,
                            bytes,
                        } => {
                            out.extend([6, *file]);
                            out.extend(offset.to_le_bytes());
                            out.push(bytes.len() as u8);
                            out.extend_from_slice(bytes);
                        }
                    }
                }
            }
        }
        out
    }
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Input> {
        let len = u.len();
        Ok(Input::decode(u.bytes(len)?))
    }

    fn arbitrary_take_rest(u: Unstructured<'a>) -> arbitrary::Result<Input> {
        Ok(Input::decode(u.take_rest()))
    }
}

/// What was submitted while a template was written.
#[derive(Debug, Default, Clone)]
pub struct Model {
    /// Every payload submitted for an op, acknowledged or not.
    pub submitted: BTreeMap<u64, Vec<Vec<u8>>>,
    /// Payloads of appends that failed: their op is unknown and they may be
    /// on disk.
    pub unknown: HashSet<Vec<u8>>,
    /// The newest acknowledged payload of each op.
    pub acked: BTreeMap<u64, Vec<u8>>,
    /// Highest watermark advance acknowledged.
    pub watermark_acked: u64,
    /// Highest watermark advance submitted.
    pub watermark_submitted: u64,
}

/// A valid journal's files and what was written into them.
#[derive(Debug, Clone)]
pub struct Template {
    /// For messages.
    pub name: &'static str,
    /// `(generation, bytes)`, in generation order.
    pub files: Vec<(u64, Vec<u8>)>,
    /// What was submitted.
    pub model: Model,
    /// Written up to a crash that may have torn its tail (`Recovery::Strict`
    /// may refuse it).
    pub torn: bool,
}

thread_local! {
    static TEMPLATES: OnceCell<Rc<Vec<Template>>> = const { OnceCell::new() };
}

/// The templates, written on this thread's executor on first use.
pub fn templates() -> Rc<Vec<Template>> {
    TEMPLATES.with(|cell| {
        cell.get_or_init(|| Rc::new(crate::block_on(build_templates())))
            .clone()
    })
}

fn builder(storage: MemStorage) -> JournalBuilder<MemStorage> {
    Journal::builder(DIR)
        .segment_bytes(SEGMENT_BYTES)
        .batch_bytes_max(BATCH_BYTES_MAX)
        .entry_bytes_max(ENTRY_BYTES_MAX)
        .slot_count(SLOT_COUNT)
        .storage(storage)
}

/// Writes a template through the real journal and records what it submits.
struct Writer {
    journal: Journal<MemStorage>,
    model: Rc<RefCell<Model>>,
    counter: u64,
}

impl Writer {
    async fn open(storage: &MemStorage, durability: Durability) -> Writer {
        let journal = builder(storage.clone())
            .durability(durability)
            .open()
            .await
            .unwrap_or_else(|e| panic!("template: open on a perfect disk failed: {e}"));
        Writer {
            journal,
            model: Rc::default(),
            counter: 0,
        }
    }

    /// A payload unique within the template: a counter, then a pattern.
    fn payload(&mut self, len: usize) -> Vec<u8> {
        self.counter += 1;
        let len = len.clamp(8, ENTRY_BYTES_MAX as usize);
        let mut payload: Vec<u8> = (0..len)
            .map(|i| (self.counter as usize).wrapping_mul(131).wrapping_add(i) as u8)
            .collect();
        payload[..8].copy_from_slice(&self.counter.to_le_bytes());
        payload
    }

    /// Spawns `lens.len()` concurrent appends (they share group-commit
    /// writes) and waits for them. Returns how many failed.
    async fn appends(&mut self, lens: impl IntoIterator<Item = usize>) -> usize {
        let mut tasks = Vec::new();
        for len in lens {
            let payload = self.payload(len);
            let journal = self.journal.clone();
            let model = self.model.clone();
            tasks.push(
                glommio::spawn_local(async move {
                    match journal.append(&payload).await {
                        Ok(op) => {
                            let mut model = model.borrow_mut();
                            model.submitted.entry(op).or_default().push(payload.clone());
                            model.acked.insert(op, payload);
                            0
                        }
                        Err(_) => {
                            model.borrow_mut().unknown.insert(payload);
                            1
                        }
                    }
                })
                .detach(),
            );
        }
        let mut failed = 0;
        for task in tasks {
            failed += task.await.unwrap_or(1);
        }
        failed
    }

    /// A replica write of `op`; must succeed.
    async fn write(&mut self, op: u64, len: usize) {
        let payload = self.payload(len);
        self.model
            .borrow_mut()
            .submitted
            .entry(op)
            .or_default()
            .push(payload.clone());
        self.journal
            .write(op, &payload)
            .await
            .unwrap_or_else(|e| panic!("template: write of op {op} failed: {e}"));
        self.model.borrow_mut().acked.insert(op, payload);
    }

    async fn advance_watermark(&mut self, watermark: u64) {
        self.model.borrow_mut().watermark_submitted = watermark;
        self.journal
            .advance_watermark(watermark)
            .await
            .unwrap_or_else(|e| panic!("template: advance to {watermark} failed: {e}"));
        self.model.borrow_mut().watermark_acked = watermark;
    }

    async fn close(self) -> Model {
        self.journal
            .close()
            .await
            .unwrap_or_else(|e| panic!("template: close failed: {e}"));
        let model = self.model.borrow().clone();
        model
    }
}

fn files_of(storage: &MemStorage) -> Vec<(u64, Vec<u8>)> {
    let dir = Path::new(DIR);
    let mut files: Vec<(u64, Vec<u8>)> = storage
        .list_dir(dir)
        .expect("list the in-memory directory")
        .iter()
        .filter_map(|name| {
            let generation = segment_generation(name)?;
            Some((generation, storage.file_bytes(&dir.join(name))?))
        })
        .collect();
    files.sort_by_key(|(generation, _)| *generation);
    assert!(
        files.len() <= FILES_MAX,
        "a template holds {} files, more than FILES_MAX",
        files.len()
    );
    files
}

async fn build_templates() -> Vec<Template> {
    let mut templates = Vec::with_capacity(TEMPLATE_COUNT);

    // 0: a fresh journal: one segment, no entries.
    let storage = MemStorage::new();
    let writer = Writer::open(&storage, Durability::Sync).await;
    templates.push(Template {
        name: "empty",
        model: writer.close().await,
        files: files_of(&storage),
        torn: false,
    });

    // 1: sequential appends of assorted sizes, one entry per write.
    let storage = MemStorage::new();
    let mut writer = Writer::open(&storage, Durability::Sync).await;
    for i in 0..12 {
        assert_eq!(writer.appends([(i * 173) % 1900 + 8]).await, 0);
    }
    templates.push(Template {
        name: "appends",
        model: writer.close().await,
        files: files_of(&storage),
        torn: false,
    });

    // 2: concurrent appends sharing writes (first-in-write flags, padding),
    // rolling into a second segment.
    let storage = MemStorage::new();
    let mut writer = Writer::open(&storage, Durability::Sync).await;
    assert_eq!(
        writer.appends((0..24).map(|i| 600 + (i * 97) % 1400)).await,
        0
    );
    assert_eq!(
        writer.appends((0..24).map(|i| 900 + (i * 61) % 1100)).await,
        0
    );
    templates.push(Template {
        name: "group-commit",
        model: writer.close().await,
        files: files_of(&storage),
        torn: false,
    });

    // 3: watermark advances that retire a segment, a rewrite in a later
    // epoch, out-of-order replica writes with a gap filled later.
    let storage = MemStorage::new();
    let mut writer = Writer::open(&storage, Durability::Sync).await;
    for i in 0..30 {
        assert_eq!(writer.appends([(i * 67) % 1900 + 8]).await, 0);
    }
    writer.advance_watermark(20).await;
    let epoch = writer.journal.epoch();
    writer
        .journal
        .set_epoch(epoch + 1)
        .expect("template: set_epoch");
    writer.write(25, 300).await;
    writer.write(26, 1200).await;
    let next = writer.journal.next_op();
    writer.write(next + 2, 500).await;
    writer.write(next, 700).await;
    writer.write(next + 1, 900).await;
    assert_eq!(
        writer.appends((0..24).map(|i| 1500 + (i * 23) % 500)).await,
        0
    );
    let newest = writer.journal.next_op() - 1;
    writer.advance_watermark(newest - 20).await;
    templates.push(Template {
        name: "watermark-epoch-replica",
        model: writer.close().await,
        files: files_of(&storage),
        torn: false,
    });

    // 4: power cut while a group-commit write was unsynced, then a crash
    // that tears unsynced writes at sector granularity.
    let storage = MemStorage::with_faults(
        0x70_72_6e,
        FaultConfig {
            crash_drop_rate: 0.0,
            crash_tear_rate: 1.0,
            ..FaultConfig::none()
        },
    );
    let mut writer = Writer::open(&storage, Durability::Sync).await;
    for i in 0..10 {
        assert_eq!(writer.appends([(i * 311) % 1900 + 8]).await, 0);
    }
    // The write lands, its fdatasync is cut.
    storage.cut_power_after_ops(2);
    writer.appends((0..6).map(|i| 1000 + i * 150)).await;
    let model = writer.model.borrow().clone();
    drop(writer);
    storage.crash();
    templates.push(Template {
        name: "torn-tail",
        model,
        files: files_of(&storage),
        torn: true,
    });

    // 5: NoSync durability (the segment header says so; recovery may cut
    // any number of torn writes at its end).
    let storage = MemStorage::new();
    let mut writer = Writer::open(&storage, Durability::NoSync).await;
    assert_eq!(writer.appends((0..8).map(|i| 100 + i * 211)).await, 0);
    assert_eq!(writer.appends((0..8).map(|i| 50 + i * 97)).await, 0);
    templates.push(Template {
        name: "no-sync",
        model: writer.close().await,
        files: files_of(&storage),
        torn: false,
    });

    assert_eq!(templates.len(), TEMPLATE_COUNT);
    templates
}

/// Applies `mutation` to `files` (kept in generation order).
fn apply(files: &mut Vec<(u64, Vec<u8>)>, mutation: &Mutation) {
    if files.is_empty() {
        return;
    }
    let count = files.len();
    let pick = |file: u8| usize::from(file) % count;
    match mutation {
        Mutation::FlipBit { file, bit } => {
            let bytes = &mut files[pick(*file)].1;
            if !bytes.is_empty() {
                let bit = *bit as usize % (bytes.len() * 8);
                bytes[bit / 8] ^= 1 << (bit % 8);
            }
        }
        Mutation::ZeroSectors {
            file,
            sector,
            count,
        } => {
            let bytes = &mut files[pick(*file)].1;
            let sectors = bytes.len().div_ceil(SECTOR_BYTES);
            if sectors > 0 {
                let start = usize::from(*sector) % sectors * SECTOR_BYTES;
                let end = (start + (usize::from(*count) + 1) * SECTOR_BYTES).min(bytes.len());
                bytes[start..end].fill(0);
            }
        }
        Mutation::Truncate { file, len } => {
            let bytes = &mut files[pick(*file)].1;
            let len = *len as usize % (bytes.len() + 1);
            bytes.truncate(len);
        }
        Mutation::CopySectors {
            from_file,
            from_sector,
            to_file,
            to_sector,
            count,
        } => {
            let from = files[pick(*from_file)].1.clone();
            let to = &mut files[pick(*to_file)].1;
            let (from_sectors, to_sectors) = (
                from.len().div_ceil(SECTOR_BYTES),
                to.len().div_ceil(SECTOR_BYTES),
            );
            if from_sectors > 0 && to_sectors > 0 {
                let src = usize::from(*from_sector) % from_sectors * SECTOR_BYTES;
                let dst = usize::from(*to_sector) % to_sectors * SECTOR_BYTES;
                let len = ((usize::from(*count) + 1) * SECTOR_BYTES)
                    .min(from.len() - src)
                    .min(to.len() - dst);
                to[dst..dst + len].copy_from_slice(&from[src..src + len]);
            }
        }
        Mutation::Remove { file } => {
            files.remove(pick(*file));
        }
        Mutation::Rename { file, generation } => {
            let (_, bytes) = files.remove(pick(*file));
            let generation = u64::from(*generation % GENERATIONS);
            files.retain(|(g, _)| *g != generation);
            files.push((generation, bytes));
            files.sort_by_key(|(g, _)| *g);
        }
        Mutation::Poke {
            file,
            offset,
            bytes: poke,
        } => {
            let bytes = &mut files[pick(*file)].1;
            if !bytes.is_empty() {
                let start = *offset as usize % bytes.len();
                let len = poke.len().min(bytes.len() - start);
                bytes[start..start + len].copy_from_slice(&poke[..len]);
            }
        }
    }
}

/// What the checks may assume about an input's files.
struct Expect<'a> {
    name: &'a str,
    /// The template's record, when served bytes can be checked against it.
    model: Option<&'a Model>,
    /// Undamaged: must open and hold every acknowledged op.
    intact: bool,
}

/// Runs one input; panics on a finding.
pub fn run(input: &Input) {
    let templates = match input.source {
        Source::Template { .. } => Some(templates()),
        Source::Raw(_) => None,
    };
    let (files, expect) = match &input.source {
        Source::Raw(raw) => {
            let mut files: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            for file in raw.iter().take(FILES_MAX) {
                let mut bytes = file.bytes.clone();
                bytes.truncate(FILE_BYTES_MAX);
                files.insert(u64::from(file.generation % GENERATIONS), bytes);
            }
            let expect = Expect {
                name: "raw",
                model: None,
                intact: false,
            };
            (files.into_iter().collect::<Vec<_>>(), expect)
        }
        Source::Template {
            template,
            mutations,
        } => {
            let templates = templates.as_ref().expect("templates were built");
            let template = &templates[usize::from(*template) % TEMPLATE_COUNT];
            let mutations = &mutations[..mutations.len().min(MUTATIONS_MAX)];
            let mut files = template.files.clone();
            for mutation in mutations {
                apply(&mut files, mutation);
            }
            let flips = mutations
                .iter()
                .filter(|m| matches!(m, Mutation::FlipBit { .. }))
                .count();
            let forgeable = flips > FLIPS_UNFORGEABLE_MAX
                || mutations
                    .iter()
                    .any(|m| matches!(m, Mutation::Poke { bytes, .. } if !bytes.is_empty()));
            let expect = Expect {
                name: template.name,
                model: (!forgeable).then_some(&template.model),
                intact: files == template.files && !(input.strict && template.torn),
            };
            (files, expect)
        }
    };
    crate::block_on(check(input, &files, &expect));
}

async fn check(input: &Input, files: &[(u64, Vec<u8>)], expect: &Expect<'_>) {
    let storage = MemStorage::new();
    let dir = Path::new(DIR);
    for (generation, bytes) in files {
        storage.insert_file(&dir.join(segment_file_name(*generation)), bytes.clone());
    }
    let recovery = if input.strict {
        Recovery::Strict
    } else {
        Recovery::TruncateTornTail
    };
    let name = expect.name;
    let journal = match builder(storage.clone()).recovery(recovery).open().await {
        Ok(journal) => journal,
        Err(error) => {
            assert!(
                !expect.intact,
                "the undamaged template {name} failed to open: {error}"
            );
            return;
        }
    };
    let watermark = journal.watermark();
    let first = read_all(&journal, expect, None).await;
    if let Some(model) = expect.model {
        assert!(
            watermark <= model.watermark_submitted,
            "{name}: watermark {watermark} above any submitted ({})",
            model.watermark_submitted
        );
        if expect.intact {
            assert!(
                watermark >= model.watermark_acked,
                "{name}: watermark {watermark} below the acknowledged {}",
                model.watermark_acked
            );
            for (op, payload) in model.acked.range(watermark + 1..) {
                assert!(
                    first.get(op) == Some(payload),
                    "{name}: acknowledged op {op} ({} bytes) not served intact after recovery \
                     (got {:?} bytes)",
                    payload.len(),
                    first.get(op).map(Vec::len)
                );
            }
        }
    }

    let mut appended = None;
    if input.append_after_open {
        let payload = b"appended after recovery by the fuzz target".to_vec();
        if let Ok(op) = journal.append(&payload).await {
            match journal.read(op).await {
                Ok(Some(entry)) => assert_eq!(
                    entry.payload, payload,
                    "{name}: op {op} appended after recovery reads back different bytes"
                ),
                other => panic!("{name}: op {op} appended after recovery reads back {other:?}"),
            }
            appended = Some((op, payload));
        }
    }
    let next_op = journal.next_op();
    if journal.close().await.is_err() {
        return;
    }
    drop(journal);

    // A second recovery of what the first left must reach the same state.
    let journal = builder(storage.clone())
        .recovery(recovery)
        .open()
        .await
        .unwrap_or_else(|e| {
            panic!("{name}: the first recovery succeeded, a second one on its result failed: {e}")
        });
    assert!(
        journal.watermark() == watermark,
        "{name}: the watermark changed from {watermark} to {} across a clean reopen",
        journal.watermark()
    );
    assert!(
        journal.next_op() >= next_op,
        "{name}: next_op went back from {next_op} to {} across a clean reopen",
        journal.next_op()
    );
    let second = read_all(&journal, expect, appended.as_ref()).await;
    for (op, payload) in &first {
        assert!(
            second.get(op) == Some(payload),
            "{name}: op {op} served after the first recovery is {} after the second",
            if second.contains_key(op) {
                "different"
            } else {
                "gone"
            }
        );
    }
    if let Some((op, payload)) = appended {
        assert!(
            second.get(&op) == Some(&payload),
            "{name}: op {op} appended and acknowledged after the first recovery is lost"
        );
    }
    let _ = journal.close().await;
}

/// Reads every op above the watermark (at most [`READS_MAX`]) through
/// `entries` and checks each item; `appended` is an entry this target
/// appended itself. Returns the present ones.
async fn read_all(
    journal: &Journal<MemStorage>,
    expect: &Expect<'_>,
    appended: Option<&(u64, Vec<u8>)>,
) -> BTreeMap<u64, Vec<u8>> {
    let name = expect.name;
    let watermark = journal.watermark();
    if watermark > 0 {
        let result = journal.read(watermark).await;
        assert!(
            matches!(result, Err(Error::BelowWatermark { .. })),
            "{name}: reading op {watermark} at the watermark gave {result:?}"
        );
    }
    let mut present = BTreeMap::new();
    let last = journal.next_op().saturating_sub(1);
    let end = last.min(watermark.saturating_add(READS_MAX));
    let mut op = watermark + 1;
    if op <= end {
        let mut entries = journal.entries(op..=end);
        while let Some(item) = entries.next().await {
            match item {
                Ok(LogItem::Present(entry)) => {
                    assert_eq!(
                        entry.op, op,
                        "{name}: entries yielded op {} for op {op}",
                        entry.op
                    );
                    if let Some(model) = expect.model {
                        let submitted = model
                            .submitted
                            .get(&op)
                            .is_some_and(|s| s.contains(&entry.payload));
                        let ours = appended == Some(&(op, entry.payload.clone()));
                        assert!(
                            submitted || ours || model.unknown.contains(&entry.payload),
                            "{name}: op {op} served {} bytes nobody submitted for it",
                            entry.payload.len()
                        );
                    }
                    present.insert(op, entry.payload);
                }
                Ok(LogItem::Missing(missing)) => {
                    assert_eq!(
                        missing, op,
                        "{name}: entries yielded Missing({missing}) for op {op}"
                    );
                }
                // A fault-free disk: recovery verified this entry, so its
                // bytes must verify again.
                Err(error) => panic!(
                    "{name}: op {op} is indexed after recovery but reading it failed: {error}"
                ),
            }
            op += 1;
        }
    }
    present
}
