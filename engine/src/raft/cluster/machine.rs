//! The cluster's replicated state machine: the reference broker metadata
//! and a counter (the workload whose history the fault test checks for
//! linearizability), in one log and one snapshot.

use crate::broker::{self, Metadata};
use crate::machine::{decode_records, FrozenSection, RecordsEncoder, RestoreError, SectionSet};
use crate::{OpId, StateMachine};
use serde::{Deserialize, Serialize};

/// The counter's snapshot section.
const COUNTER_SECTION: &str = "counter";
/// Its format version.
const COUNTER_VERSION: u32 = 1;

/// A command of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterCommand {
    /// A broker metadata command.
    Broker(broker::Command),
    /// Adds one to the counter; replies with the value after it.
    CounterAdd,
}

/// What a cluster command returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterReply {
    /// The broker machine's reply.
    Broker(broker::Reply),
    /// The counter after the add.
    Counter(u64),
}

/// The broker metadata and the counter.
#[derive(Default, Clone)]
pub struct ClusterMachine {
    /// The broker's metadata.
    pub metadata: Metadata,
    /// The counter.
    pub counter: u64,
}

impl StateMachine for ClusterMachine {
    type Command = ClusterCommand;
    type Reply = ClusterReply;
    type Rejection = broker::Rejection;

    fn apply(
        &mut self,
        at: OpId,
        command: ClusterCommand,
    ) -> Result<ClusterReply, broker::Rejection> {
        match command {
            ClusterCommand::Broker(command) => {
                self.metadata.apply(at, command).map(ClusterReply::Broker)
            }
            ClusterCommand::CounterAdd => {
                // Wrapping: a command must not panic, and 2^64 adds are not
                // a concern of this workload.
                self.counter = self.counter.wrapping_add(1);
                Ok(ClusterReply::Counter(self.counter))
            }
        }
    }

    fn freeze(&self) -> Vec<FrozenSection> {
        let mut sections = self.metadata.freeze();
        sections.push(FrozenSection {
            name: COUNTER_SECTION,
            version: COUNTER_VERSION,
            encoder: Box::new(RecordsEncoder::new(1, std::iter::once(self.counter))),
        });
        sections
    }

    fn restore(sections: &mut SectionSet) -> Result<Self, RestoreError> {
        let (_, bytes) = sections.take(COUNTER_SECTION, COUNTER_VERSION..=COUNTER_VERSION)?;
        let mut counter = 0;
        decode_records(&bytes, |value: u64| {
            counter = value;
            Ok(())
        })
        .map_err(|e| e.in_section(COUNTER_SECTION))?;
        Ok(ClusterMachine {
            metadata: Metadata::restore(sections)?,
            counter,
        })
    }
}

impl ClusterMachine {
    /// A digest of the whole state (every section's encoding), to compare
    /// replicas: equal states give equal digests.
    pub fn digest(&self) -> Result<u64, crate::machine::EncodeError> {
        let mut hasher = crc32fast::Hasher::new();
        let mut bytes = 0u64;
        for mut section in self.freeze() {
            hasher.update(section.name.as_bytes());
            let mut out = Vec::new();
            loop {
                out.clear();
                let progress = section.encoder.encode_some(&mut out, 1 << 20)?;
                hasher.update(&out);
                bytes += out.len() as u64;
                if progress == crate::machine::EncodeProgress::Done {
                    break;
                }
            }
        }
        Ok((u64::from(hasher.finalize()) << 32) | (bytes & 0xffff_ffff))
    }
}
