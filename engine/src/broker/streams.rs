//! Streams: the top of the broker's namespace. A stream holds topics; it
//! carries no settings of its own, only its identity.

use super::codec::{self, freeze_map, restore_map};
use super::command::{Reply, StreamCommand};
use super::error::{Kind, Limit, Rejection};
use super::{validate, STREAMS_MAX};
use crate::machine::{RestoreError, SectionEncoder};
use crate::mux::Member;
use crate::OpId;
use imbl::OrdMap;
use serde::{Deserialize, Serialize};
use std::ops::RangeInclusive;

/// A stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    /// The op that created it.
    pub id: u64,
    /// The epoch of that op.
    pub epoch: u64,
}

/// Every stream, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Streams {
    map: OrdMap<String, Stream>,
}

impl Streams {
    /// The stream called `name`.
    pub fn get(&self, name: &str) -> Option<&Stream> {
        self.map.get(name)
    }

    /// How many streams there are.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if there are no streams.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every stream, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Stream)> {
        self.map.iter()
    }

    /// Applies `command`, checking only what this member knows; the mux
    /// checks that a deleted stream has no topics.
    pub fn apply(&mut self, at: OpId, command: StreamCommand) -> Result<Reply, Rejection> {
        command.check_names()?;
        match command {
            StreamCommand::Create { name } => {
                if self.map.contains_key(&name) {
                    return Err(Rejection::Duplicate {
                        kind: Kind::Stream,
                        name,
                    });
                }
                if self.map.len() >= STREAMS_MAX {
                    return Err(Rejection::LimitExceeded {
                        what: Limit::Streams,
                        max: STREAMS_MAX as u64,
                    });
                }
                self.map.insert(
                    name,
                    Stream {
                        id: at.op,
                        epoch: at.epoch,
                    },
                );
                Ok(Reply::Created { id: at.op })
            }
            StreamCommand::Delete { name } => match self.map.remove(&name) {
                Some(_) => Ok(Reply::Deleted),
                None => Err(Rejection::NotFound {
                    kind: Kind::Stream,
                    name,
                }),
            },
        }
    }

    /// Checks every stream as restore does.
    pub(crate) fn check(&self) -> Result<(), RestoreError> {
        codec::check_map::<Self, _, _>(&self.map, STREAMS_MAX, |n, s| check_record(n, s))
    }
}

fn check_record(name: &str, _stream: &Stream) -> Result<(), String> {
    validate::name(Kind::Stream, name).map_err(|e| e.to_string())
}

/// Section format, version 1: [`crate::machine::RecordsEncoder`] records of
/// `(name: String, Stream)`, in name order.
impl Member for Streams {
    const SECTION: &'static str = "broker.streams";
    const VERSION: u32 = 1;
    const READABLE: RangeInclusive<u32> = 1..=1;

    fn freeze(&self) -> Box<dyn SectionEncoder> {
        freeze_map(&self.map)
    }

    fn restore(version: u32, bytes: &[u8]) -> Result<Self, RestoreError> {
        codec::check_version::<Self>(version)?;
        let map = restore_map(bytes, STREAMS_MAX, |n: &String, s: &Stream| {
            check_record(n, s)
        })?;
        Ok(Streams { map })
    }
}
