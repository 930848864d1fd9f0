//! Several machines in one log and one atomic snapshot.
//!
//! A broker's metadata is several state machines (streams, topics, consumer
//! groups, users) that share a shard's log: one op order across all of them,
//! and one snapshot that captures all of them at the same op. A *mux* is the
//! [`StateMachine`](crate::StateMachine) that hosts them: its command type
//! says which member a command is for, its `apply` dispatches (and checks
//! what crosses members, such as a topic's parent stream), and its snapshot
//! is one section per member.
//!
//! Each member implements [`Member`]: its own section name, the version it
//! writes and the versions it reads. [`freeze_member`] and
//! [`restore_member`] do the section bookkeeping, so a mux's `freeze` and
//! `restore` are one line per member; the engine then refuses a
//! snapshot with a section no member claimed. The reference mux is
//! [`crate::broker::Metadata`].

use crate::machine::{FrozenSection, RestoreError, SectionEncoder, SectionSet};
use std::ops::RangeInclusive;

/// A machine hosted by a mux, stored as one snapshot section.
pub trait Member: Sized {
    /// The section's name (unique within the mux).
    const SECTION: &'static str;
    /// The version this build writes.
    const VERSION: u32;
    /// The versions this build reads.
    const READABLE: RangeInclusive<u32>;

    /// A point-in-time image of this member's state (cheap, see
    /// [`StateMachine::freeze`](crate::StateMachine::freeze)).
    fn freeze(&self) -> Box<dyn SectionEncoder>;

    /// Rebuilds the member from its section's bytes, written with `version`.
    fn restore(version: u32, bytes: &[u8]) -> Result<Self, RestoreError>;
}

/// The member's section, frozen.
pub fn freeze_member<M: Member>(member: &M) -> FrozenSection {
    FrozenSection {
        name: M::SECTION,
        version: M::VERSION,
        encoder: member.freeze(),
    }
}

/// Takes the member's section out of `sections` and restores it.
pub fn restore_member<M: Member>(sections: &mut SectionSet) -> Result<M, RestoreError> {
    let (version, bytes) = sections.take(M::SECTION, M::READABLE)?;
    M::restore(version, &bytes).map_err(|e| e.in_section(M::SECTION))
}
