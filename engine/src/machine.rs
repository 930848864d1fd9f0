//! The state machine contract.
//!
//! A shard's journal is a sequence of commands; a [`StateMachine`] turns that
//! sequence into state. Three rules make the journal and the snapshots agree:
//!
//! * **Deterministic apply.** Applying the same commands in the same op order
//!   to the same starting state gives the same state and the same replies, on
//!   any machine, after any number of restarts. A command that fails
//!   validation is rejected *without changing state*, and it is rejected the
//!   same way when the journal is replayed.
//! * **Cheap freeze.** [`StateMachine::freeze`] takes a point-in-time image
//!   of the state in (close to) constant time, for example by cloning
//!   persistent maps that share structure ([`imbl`]). The image is encoded
//!   into a snapshot file in small steps while the shard keeps applying new
//!   commands, so a checkpoint never stops the shard for the time it takes to
//!   write the whole state.
//! * **Sections.** A snapshot is made of named sections, each with its own
//!   format version, so one machine's format can change without touching the
//!   others. [`SectionSet`] hands them back at restore time and refuses
//!   missing, unknown or unsupported ones with a [`RestoreError`].

use serde::{de::DeserializeOwned, Serialize};
use std::{collections::BTreeMap, ops::RangeInclusive};

/// Where a command sits in the log: its op number and the epoch (term) of
/// the entry that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId {
    /// The op number: ops are applied in increasing order, without gaps.
    pub op: u64,
    /// The epoch stamped on the journal entry.
    pub epoch: u64,
}

/// Longest section name, in bytes of UTF-8 (the snapshot format's field).
pub const SECTION_NAME_BYTES_MAX: usize = 40;

/// A replicated state machine hosted by a shard.
pub trait StateMachine: Default + 'static {
    /// A command as it is written to the journal (encoded with bincode).
    type Command: Serialize + DeserializeOwned + 'static;
    /// What a successful command returns to its submitter.
    type Reply: 'static;
    /// Why a command was refused (a validation error). Refusing never
    /// changes state.
    type Rejection: std::error::Error + 'static;

    /// Applies `command`, the op at `at`. Must be deterministic (see the
    /// module docs) and must not panic on any command value.
    fn apply(&mut self, at: OpId, command: Self::Command) -> Result<Self::Reply, Self::Rejection>;

    /// A point-in-time image of the state, one entry per section. Must be
    /// cheap: it runs on the shard's reactor between two applies.
    fn freeze(&self) -> Vec<FrozenSection>;

    /// Rebuilds the state from a snapshot's sections, taking each one it
    /// reads with [`SectionSet::take`]. The engine then refuses the snapshot
    /// if any section was left over ([`RestoreError::UnknownSection`]).
    fn restore(sections: &mut SectionSet) -> Result<Self, RestoreError>;
}

/// One section of a snapshot being written: its name, its format version
/// and the encoder that produces its bytes.
pub struct FrozenSection {
    /// The section's name (at most [`SECTION_NAME_BYTES_MAX`] bytes).
    pub name: &'static str,
    /// The format version of the bytes `encoder` writes.
    pub version: u32,
    /// Produces the section's bytes, a step at a time.
    pub encoder: Box<dyn SectionEncoder>,
}

impl std::fmt::Debug for FrozenSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenSection")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Whether a [`SectionEncoder`] has more to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeProgress {
    /// Call again.
    More,
    /// The section is complete.
    Done,
}

/// Encodes a frozen section incrementally, so the checkpoint can yield to
/// the reactor between steps.
pub trait SectionEncoder {
    /// Appends the next bytes of the section to `out`, stopping once `out`
    /// holds at least `bytes_goal` bytes or the section is complete.
    fn encode_some(
        &mut self,
        out: &mut Vec<u8>,
        bytes_goal: usize,
    ) -> Result<EncodeProgress, EncodeError>;
}

/// A value could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// bincode refused the value.
    #[error("encoding failed: {0}")]
    Bincode(#[from] bincode::error::EncodeError),
    /// A snapshot record is larger than any reader decodes.
    #[error("a {bytes}-byte snapshot record exceeds RECORD_BYTES_MAX ({max} bytes)")]
    RecordTooLarge {
        /// The record's encoded size.
        bytes: usize,
        /// [`RECORD_BYTES_MAX`].
        max: usize,
    },
}

/// The bincode settings of every engine encoding: little-endian, variable
/// length integers, and a decode limit so hostile bytes cannot make a
/// decoder allocate more than a snapshot section can hold.
pub(crate) fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ RECORD_BYTES_MAX }>()
}

/// Largest single record (or command) the engine decodes, in bytes.
pub const RECORD_BYTES_MAX: usize = 64 << 20;

/// Encodes `value` with the engine's bincode settings.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    Ok(bincode::serde::encode_to_vec(value, bincode_config())?)
}

/// [`encode`] into `out`, replacing what it held: a buffer kept between
/// calls is not allocated again (bincode's own vector grows from empty,
/// three or four allocations for a small command).
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.clear();
    bincode::serde::encode_into_std_write(value, out, bincode_config())?;
    Ok(())
}

/// Decodes a whole `bytes` as one `T`; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode_config())?;
    if used != bytes.len() {
        return Err(DecodeError::TrailingBytes {
            extra: bytes.len() - used,
        });
    }
    Ok(value)
}

/// Bytes that do not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// bincode refused the bytes.
    #[error("{0}")]
    Bincode(#[from] bincode::error::DecodeError),
    /// The value ended before the bytes did.
    #[error("{extra} bytes left over after the value")]
    TrailingBytes {
        /// Bytes after the value.
        extra: usize,
    },
    /// A record stream is shorter than its 8-byte count prefix.
    #[error("{len} bytes, shorter than the 8-byte record count")]
    TooShort {
        /// Bytes present.
        len: usize,
    },
    /// A record stream's count does not match its records.
    #[error("section says {expected} records, found {found}")]
    RecordCount {
        /// The count in the section's prefix.
        expected: u64,
        /// Records actually present.
        found: u64,
    },
}

/// The encoding most sections use: a little-endian `u64` record count, then
/// that many bincode records. Built from an owned iterator over a frozen
/// image (an `imbl` map clone's `into_iter()`, for example).
pub struct RecordsEncoder<I> {
    count: u64,
    written: u64,
    count_written: bool,
    records: I,
}

impl<I, T> RecordsEncoder<I>
where
    I: Iterator<Item = T>,
    T: Serialize,
{
    /// An encoder of the `count` records that `records` yields.
    pub fn new(count: usize, records: I) -> RecordsEncoder<I> {
        RecordsEncoder {
            count: count as u64,
            written: 0,
            count_written: false,
            records,
        }
    }
}

impl<I, T> SectionEncoder for RecordsEncoder<I>
where
    I: Iterator<Item = T>,
    T: Serialize,
{
    /// Writes the count prefix once, then at least one record per call
    /// (so every call makes progress, however full `out` already is).
    fn encode_some(
        &mut self,
        out: &mut Vec<u8>,
        bytes_goal: usize,
    ) -> Result<EncodeProgress, EncodeError> {
        if !self.count_written {
            out.extend_from_slice(&self.count.to_le_bytes());
            self.count_written = true;
        }
        loop {
            let Some(record) = self.records.next() else {
                assert_eq!(
                    self.written, self.count,
                    "a frozen image yielded a different number of records than it said"
                );
                return Ok(EncodeProgress::Done);
            };
            let before = out.len();
            bincode::serde::encode_into_std_write(&record, out, bincode_config())?;
            // bincode checks its limit only when decoding: refuse here what
            // no reader would take back.
            let bytes = out.len() - before;
            if bytes > RECORD_BYTES_MAX {
                return Err(EncodeError::RecordTooLarge {
                    bytes,
                    max: RECORD_BYTES_MAX,
                });
            }
            self.written += 1;
            if out.len() >= bytes_goal {
                return Ok(EncodeProgress::More);
            }
        }
    }
}

/// Decodes a section written by [`RecordsEncoder`], calling `each` per
/// record.
pub fn decode_records<T: DeserializeOwned>(
    bytes: &[u8],
    mut each: impl FnMut(T) -> Result<(), RestoreError>,
) -> Result<(), RestoreError> {
    let count_bytes: [u8; 8] =
        bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or(RestoreError::Decode {
                section: String::new(),
                source: DecodeError::RecordCount {
                    expected: 0,
                    found: 0,
                },
            })?;
    let expected = u64::from_le_bytes(count_bytes);
    let mut rest = &bytes[8..];
    let mut found = 0u64;
    while !rest.is_empty() {
        let (record, used): (T, usize) = bincode::serde::decode_from_slice(rest, bincode_config())
            .map_err(|e| RestoreError::Decode {
                section: String::new(),
                source: e.into(),
            })?;
        rest = &rest[used..];
        found += 1;
        if found > expected {
            break;
        }
        each(record)?;
    }
    if found != expected {
        return Err(RestoreError::Decode {
            section: String::new(),
            source: DecodeError::RecordCount { expected, found },
        });
    }
    Ok(())
}

/// A snapshot's sections, handed to [`StateMachine::restore`].
///
/// [`restore_state`] restores a machine and checks that it took every
/// section.
#[derive(Debug, Default)]
pub struct SectionSet {
    sections: BTreeMap<String, (u32, Vec<u8>)>,
}

impl SectionSet {
    /// An empty set (the state of a shard that has no snapshot yet).
    pub fn new() -> SectionSet {
        SectionSet::default()
    }

    /// Adds a section; a repeated name is an error.
    pub fn insert(
        &mut self,
        name: String,
        version: u32,
        bytes: Vec<u8>,
    ) -> Result<(), RestoreError> {
        if self.sections.contains_key(&name) {
            return Err(RestoreError::DuplicateSection { name });
        }
        self.sections.insert(name, (version, bytes));
        Ok(())
    }

    /// True if the set holds no sections.
    pub fn is_empty(&self) -> bool {
        self.sections.is_empty()
    }

    /// Takes section `name`, whose version must be in `readable`. Returns
    /// its version and bytes.
    pub fn take(
        &mut self,
        name: &str,
        readable: RangeInclusive<u32>,
    ) -> Result<(u32, Vec<u8>), RestoreError> {
        let (version, bytes) =
            self.sections
                .remove(name)
                .ok_or_else(|| RestoreError::MissingSection {
                    name: name.to_owned(),
                })?;
        if !readable.contains(&version) {
            return Err(RestoreError::UnsupportedVersion {
                name: name.to_owned(),
                version,
                readable,
            });
        }
        Ok((version, bytes))
    }

    /// Checks that every section was taken: a section nobody took was
    /// written by a machine this build does not have.
    pub fn finish(self) -> Result<(), RestoreError> {
        match self.sections.into_iter().next() {
            Some((name, (version, _))) => Err(RestoreError::UnknownSection { name, version }),
            None => Ok(()),
        }
    }
}

/// A snapshot's sections do not make a state this build can restore.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A section no machine of this build reads.
    #[error(
        "snapshot section {name:?} (version {version}) belongs to no state machine of this build"
    )]
    UnknownSection {
        /// The section's name.
        name: String,
        /// Its version.
        version: u32,
    },
    /// A machine's section is absent.
    #[error("snapshot has no section {name:?}")]
    MissingSection {
        /// The section's name.
        name: String,
    },
    /// A section's version is one this build cannot read.
    #[error(
        "snapshot section {name:?} has version {version}; this build reads versions {readable:?}"
    )]
    UnsupportedVersion {
        /// The section's name.
        name: String,
        /// The version found.
        version: u32,
        /// The versions this build reads.
        readable: RangeInclusive<u32>,
    },
    /// Two sections share a name.
    #[error("snapshot has section {name:?} twice")]
    DuplicateSection {
        /// The repeated name.
        name: String,
    },
    /// A section's bytes do not decode.
    #[error("snapshot section {section:?} does not decode: {source}")]
    Decode {
        /// The section's name.
        section: String,
        /// What failed.
        #[source]
        source: DecodeError,
    },
    /// The bytes decode but break an invariant of the state.
    #[error("snapshot section {section:?} is inconsistent: {reason}")]
    Inconsistent {
        /// The section's name.
        section: String,
        /// What is wrong.
        reason: String,
    },
}

impl RestoreError {
    /// Names the section a decode error came from.
    pub fn in_section(self, name: &str) -> RestoreError {
        match self {
            RestoreError::Decode { section, source } if section.is_empty() => {
                RestoreError::Decode {
                    section: name.to_owned(),
                    source,
                }
            }
            RestoreError::Inconsistent { section, reason } if section.is_empty() => {
                RestoreError::Inconsistent {
                    section: name.to_owned(),
                    reason,
                }
            }
            other => other,
        }
    }
}

/// Restores `M` from `sections` and refuses leftovers: a section no part of
/// `M` took belongs to a machine this build does not have.
pub fn restore_state<M: StateMachine>(mut sections: SectionSet) -> Result<M, RestoreError> {
    let machine = M::restore(&mut sections)?;
    sections.finish()?;
    Ok(machine)
}
