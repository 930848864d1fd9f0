//! The `journal_files` input: its bounds, its hand-written byte layout, and
//! the damage a template may take.

use arbitrary::{Arbitrary, Unstructured};

/// Most segment files in one input.
pub const FILES_MAX: usize = 4;
/// Most files in a raw input: the segments, the superblock and
/// `superblock.tmp`.
pub const RAW_FILES_MAX: usize = FILES_MAX + 2;
/// Largest file in one input.
pub const FILE_BYTES_MAX: usize = 256 << 10;
/// Segment generations are `byte % GENERATIONS`: small, so neighbours are
/// likely. Generation 0 is not a valid segment name (the journal ignores
/// such a file as stray); a raw file named 0 is the superblock instead.
pub const GENERATIONS: u8 = 8;
/// Most mutations applied to a template.
pub const MUTATIONS_MAX: usize = 32;
/// Longest poke.
pub const POKE_BYTES_MAX: usize = 64;
/// Longest field rewrite ([`Mutation::SuperblockWrite`],
/// [`Mutation::SegmentHeaderWrite`]).
pub const FIELD_BYTES_MAX: usize = 8;

/// One fuzz input.
///
/// Its byte layout is hand-written (see [`Input::decode`]), not derived:
/// raw files of up to 256 KiB decode one byte per byte (a derived `Vec<u8>`
/// spends a continuation byte per element), and [`Input::encode`] can write
/// real journal files into the seed corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Open with `Recovery::Strict` instead of `TruncateTornTail`.
    pub strict: bool,
    /// After a successful open, append one entry before the second open.
    pub append_after_open: bool,
    /// Open as [`OTHER_OWNER`](super::OTHER_OWNER) (both opens).
    pub other_owner: bool,
    /// Where the files come from.
    pub source: Source,
}

/// Where an input's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// These files as they are (at most [`RAW_FILES_MAX`]).
    Raw(Vec<RawFile>),
    /// A valid journal written by the real append path, then damaged.
    Template {
        /// Which template (`% TEMPLATE_COUNT`).
        template: u8,
        /// Damage applied in order (at most [`MUTATIONS_MAX`]).
        mutations: Vec<Mutation>,
    },
}

/// Bit of [`RawFile::name`]: recompute the file's header checksums (a
/// segment's header, each superblock copy) after taking its bytes, so raw
/// header fields reach the checks behind the checksum.
pub const RAW_RESEAL: u8 = 0x80;
/// Bit of [`RawFile::name`]: with `name % GENERATIONS == 0`, the file is
/// `superblock.tmp` rather than `superblock`; for a segment, its bytes are
/// zero-extended to the length its header names (at most
/// [`FILE_BYTES_MAX`]), so a seed need not carry a segment's preallocated
/// zeros (a segment shorter than its header says is refused).
pub const RAW_EXTEND: u8 = 0x40;

/// One raw file.
#[derive(Clone, PartialEq, Eq)]
pub struct RawFile {
    /// Which file: `name % GENERATIONS` is the segment generation, or 0 for
    /// the superblock (`superblock.tmp` with [`RAW_EXTEND`]); [`RAW_RESEAL`]
    /// recomputes its checksums, [`RAW_EXTEND`] zero-extends a segment. A
    /// later file of the same name replaces an earlier one.
    pub name: u8,
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
            .field("name", &self.name)
            .field("len", &self.bytes.len())
            .field("head", &head)
            .finish()
    }
}

/// Damage to a template's files.
///
/// Segment mutations: `file` indexes the segment files present at that
/// point (`% count`, in generation order); offsets are reduced modulo the
/// file's length, so every value is valid. Superblock mutations act on the
/// `superblock` file (`copy % 2` picks a copy); those that need it do
/// nothing once it is gone.
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
    /// Flip one bit of a superblock copy.
    SuperblockFlipBit {
        /// Copy.
        copy: u8,
        /// Bit offset in the copy (`% (SUPERBLOCK_COPY_BYTES * 8)`).
        bit: u16,
    },
    /// Zero a superblock copy.
    SuperblockZeroCopy {
        /// Copy.
        copy: u8,
    },
    /// Cut the superblock file short.
    SuperblockTruncate {
        /// New length (`% (len + 1)`).
        len: u16,
    },
    /// Remove the superblock file.
    SuperblockRemove,
    /// Put in (part of) a superblock of template `template % TEMPLATE_COUNT`
    /// (another journal, or this one's), as it was at `version`
    /// (`% (older versions + 1)`; the last is its final state, the others
    /// are lost updates): `which % 5` — 0 the whole file; 1 copy 0 at copy
    /// 0's place, 2 copy 1 at copy 1's; 3 copy 0 at copy 1's place, 4 copy
    /// 1 at copy 0's (misdirected writes). A missing superblock file is
    /// created zeroed first.
    SuperblockFrom {
        /// Template.
        template: u8,
        /// Version.
        version: u8,
        /// What goes where.
        which: u8,
    },
    /// Put in segment file `file` (`% count`) of template
    /// `template % TEMPLATE_COUNT` as generation `generation % GENERATIONS`,
    /// replacing any file there (a segment of another journal, or a stale
    /// copy of this one's).
    SegmentFrom {
        /// Template.
        template: u8,
        /// Its segment file.
        file: u8,
        /// Generation here.
        generation: u8,
    },
    /// Overwrite `len % FIELD_BYTES_MAX + 1` bytes of a superblock copy
    /// from byte 4 on (`offset` reduced to fit) with `value`'s low bytes,
    /// then recompute the copy's checksum: any header or body field, valid
    /// or not, reaches the decoder and the plan.
    SuperblockWrite {
        /// Copy.
        copy: u8,
        /// Offset after the checksum field.
        offset: u16,
        /// Bytes written, minus one.
        len: u8,
        /// Little-endian source of the bytes.
        value: u64,
    },
    /// The same for a segment header (bytes 4..88, checksum recomputed).
    SegmentHeaderWrite {
        /// File.
        file: u8,
        /// Offset after the checksum field.
        offset: u8,
        /// Bytes written, minus one.
        len: u8,
        /// Little-endian source of the bytes.
        value: u64,
    },
}

const MUTATION_KINDS: u8 = 15;

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
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut bytes = [0; N];
        let taken = self.take(N);
        bytes[..taken.len()].copy_from_slice(taken);
        bytes
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

const FLAG_STRICT: u8 = 1;
const FLAG_APPEND: u8 = 2;
const FLAG_TEMPLATE: u8 = 4;
const FLAG_OTHER_OWNER: u8 = 8;

impl Input {
    /// Decodes any byte string (never fails). Layout, little-endian:
    ///
    /// * byte 0: flags — bit 0 `strict`, bit 1 `append_after_open`, bit 2
    ///   template (else raw), bit 3 `other_owner`;
    /// * raw: up to [`RAW_FILES_MAX`] times while bytes remain: name `u8`
    ///   (see [`RawFile::name`]), length `u32`, then that many bytes (fewer if
    ///   the input ends; at most [`FILE_BYTES_MAX`]);
    /// * template: template `u8`, then up to [`MUTATIONS_MAX`] mutations while
    ///   bytes remain: a kind byte (`% 15`, in [`Mutation`]'s order) and its
    ///   fields in declaration order (`Poke`: file `u8`, offset `u32`, length
    ///   `u8` `% (POKE_BYTES_MAX + 1)`, bytes).
    pub fn decode(data: &[u8]) -> Input {
        let mut r = Reader { data };
        let flags = r.u8();
        let source = if flags & FLAG_TEMPLATE == 0 {
            let mut files = Vec::new();
            while !r.is_empty() && files.len() < RAW_FILES_MAX {
                let name = r.u8();
                let len = (r.u32() as usize).min(FILE_BYTES_MAX);
                files.push(RawFile {
                    name,
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
                    6 => {
                        let file = r.u8();
                        let offset = r.u32();
                        let len = usize::from(r.u8()) % (POKE_BYTES_MAX + 1);
                        Mutation::Poke {
                            file,
                            offset,
                            bytes: r.take(len).to_vec(),
                        }
                    }
                    7 => Mutation::SuperblockFlipBit {
                        copy: r.u8(),
                        bit: r.u16(),
                    },
                    8 => Mutation::SuperblockZeroCopy { copy: r.u8() },
                    9 => Mutation::SuperblockTruncate { len: r.u16() },
                    10 => Mutation::SuperblockRemove,
                    11 => Mutation::SuperblockFrom {
                        template: r.u8(),
                        version: r.u8(),
                        which: r.u8(),
                    },
                    12 => Mutation::SegmentFrom {
                        template: r.u8(),
                        file: r.u8(),
                        generation: r.u8(),
                    },
                    13 => Mutation::SuperblockWrite {
                        copy: r.u8(),
                        offset: r.u16(),
                        len: r.u8(),
                        value: r.u64(),
                    },
                    _ => Mutation::SegmentHeaderWrite {
                        file: r.u8(),
                        offset: r.u8(),
                        len: r.u8(),
                        value: r.u64(),
                    },
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
            other_owner: flags & FLAG_OTHER_OWNER != 0,
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
        if self.other_owner {
            flags |= FLAG_OTHER_OWNER;
        }
        out.push(flags);
        match &self.source {
            Source::Raw(files) => {
                for file in files {
                    out.push(file.name);
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
                    encode_mutation(mutation, &mut out);
                }
            }
        }
        out
    }
}

fn encode_mutation(mutation: &Mutation, out: &mut Vec<u8>) {
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
        Mutation::Rename { file, generation } => out.extend([5, *file, *generation]),
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
        Mutation::SuperblockFlipBit { copy, bit } => {
            out.extend([7, *copy]);
            out.extend(bit.to_le_bytes());
        }
        Mutation::SuperblockZeroCopy { copy } => out.extend([8, *copy]),
        Mutation::SuperblockTruncate { len } => {
            out.push(9);
            out.extend(len.to_le_bytes());
        }
        Mutation::SuperblockRemove => out.push(10),
        Mutation::SuperblockFrom {
            template,
            version,
            which,
        } => out.extend([11, *template, *version, *which]),
        Mutation::SegmentFrom {
            template,
            file,
            generation,
        } => out.extend([12, *template, *file, *generation]),
        Mutation::SuperblockWrite {
            copy,
            offset,
            len,
            value,
        } => {
            out.extend([13, *copy]);
            out.extend(offset.to_le_bytes());
            out.push(*len);
            out.extend(value.to_le_bytes());
        }
        Mutation::SegmentHeaderWrite {
            file,
            offset,
            len,
            value,
        } => {
            out.extend([14, *file, *offset, *len]);
            out.extend(value.to_le_bytes());
        }
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
