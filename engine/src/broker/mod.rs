//! The broker's metadata: streams, topics, consumer groups and users.
//!
//! Each is its own state machine ([`Streams`], [`Topics`], [`Groups`],
//! [`Users`]), stored as its own snapshot section with its own format
//! version, so one can change format without touching the others. [`Metadata`]
//! is the mux that hosts them in one log: it dispatches each [`Command`] to
//! its member and runs the checks that cross members (a topic's stream must
//! exist, a stream with topics cannot be deleted, an offset's partition must
//! be below its topic's partition count). Members check only what they hold.
//!
//! Every check runs before any change, so a refused command leaves the state
//! exactly as it was, and it is refused the same way on replay: apply reads
//! no clock and no randomness, and ids are the ops that created the objects.
//!
//! State lives in [`imbl::OrdMap`]s, persistent maps that share structure:
//! freezing a member clones its map in O(1) and the checkpoint encodes the
//! clone record by record while the shard keeps applying. Values hold nested
//! `OrdMap`s (a topic's config, a group's offsets), so cloning one is O(1)
//! too. Restore re-runs the command checks on every record, then the mux's
//! cross-member checks, so a snapshot can only yield a state that commands
//! could have built; hostile bytes give a [`RestoreError`], never a panic.

mod codec;
mod command;
mod error;
pub mod gen;
mod groups;
mod key_parts;
mod streams;
mod topics;
mod users;
mod validate;

pub use command::{
    Action, Command, GroupCommand, Permission, Reply, Resource, StreamCommand, TopicCommand,
    UserCommand,
};
pub use error::{
    ConfigValueError, Kind, Limit, NameError, PasswordHashError, PermissionError, Rejection,
};
pub use groups::{Group, GroupKey, Groups};
pub use streams::{Stream, Streams};
pub use topics::{Topic, TopicKey, Topics};
pub use users::{User, Users};

use crate::machine::{FrozenSection, RestoreError, SectionSet, RECORD_BYTES_MAX};
use crate::mux::{freeze_member, restore_member, Member};
use crate::{OpId, StateMachine};
use validate::path;

/// Longest name (stream, topic, group, member, user, config key), in bytes.
pub const NAME_BYTES_MAX: usize = 255;
/// Most streams a shard holds.
pub const STREAMS_MAX: usize = 1 << 16;
/// Most topics a shard holds, over all streams.
pub const TOPICS_MAX: usize = 1 << 20;
/// Most partitions a topic has.
pub const PARTITIONS_MAX: u32 = 1 << 16;
/// Most configuration entries a topic has.
pub const CONFIG_ENTRIES_MAX: usize = 256;
/// Longest configuration value, in bytes.
pub const CONFIG_VALUE_BYTES_MAX: usize = 4096;
/// Most consumer groups a shard holds, over all topics.
pub const GROUPS_MAX: usize = 1 << 20;
/// Most members a consumer group has.
pub const GROUP_MEMBERS_MAX: usize = 1024;
/// Most users a shard holds.
pub const USERS_MAX: usize = 1 << 16;
/// Most permissions a user has.
pub const PERMISSIONS_MAX: usize = 64;
/// Longest password hash, in bytes (argon2id PHC strings are ~100).
pub const PASSWORD_HASH_BYTES_MAX: usize = 512;
/// Longest algorithm identifier in a PHC string, in bytes (the PHC spec's
/// limit).
pub const PASSWORD_ALGORITHM_BYTES_MAX: usize = 32;

/// Bytes bincode spends at most on a length prefix or an integer.
const VARINT_BYTES_MAX: usize = 9;
const STRING_BYTES_MAX: usize = VARINT_BYTES_MAX + NAME_BYTES_MAX;

/// The largest topic record a valid state holds, in bytes.
const TOPIC_RECORD_BYTES_MAX: usize = 2 * STRING_BYTES_MAX
    + 3 * VARINT_BYTES_MAX
    + VARINT_BYTES_MAX
    + CONFIG_ENTRIES_MAX * (STRING_BYTES_MAX + VARINT_BYTES_MAX + CONFIG_VALUE_BYTES_MAX);
/// The largest group record a valid state holds, in bytes.
const GROUP_RECORD_BYTES_MAX: usize = 3 * STRING_BYTES_MAX
    + 3 * VARINT_BYTES_MAX
    + VARINT_BYTES_MAX
    + GROUP_MEMBERS_MAX * (STRING_BYTES_MAX + VARINT_BYTES_MAX)
    + VARINT_BYTES_MAX
    + PARTITIONS_MAX as usize * (2 * VARINT_BYTES_MAX);
/// The largest user record a valid state holds, in bytes.
const USER_RECORD_BYTES_MAX: usize = STRING_BYTES_MAX
    + 2 * VARINT_BYTES_MAX
    + VARINT_BYTES_MAX
    + PASSWORD_HASH_BYTES_MAX
    + VARINT_BYTES_MAX
    + PERMISSIONS_MAX * (2 * VARINT_BYTES_MAX + 2 * STRING_BYTES_MAX);

// Every record a valid state holds must decode under the engine's record
// limit, or a snapshot of a legal state could not be restored.
const _: () = assert!(TOPIC_RECORD_BYTES_MAX < RECORD_BYTES_MAX);
const _: () = assert!(GROUP_RECORD_BYTES_MAX < RECORD_BYTES_MAX);
const _: () = assert!(USER_RECORD_BYTES_MAX < RECORD_BYTES_MAX);
// An algorithm name fits in a hash.
const _: () = assert!(PASSWORD_ALGORITHM_BYTES_MAX + 3 <= PASSWORD_HASH_BYTES_MAX);

/// The broker's metadata: the mux over its four members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    streams: Streams,
    topics: Topics,
    groups: Groups,
    users: Users,
}

impl Metadata {
    /// The streams.
    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    /// The topics.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The consumer groups.
    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    /// The users.
    pub fn users(&self) -> &Users {
        &self.users
    }

    /// The stream called `name`.
    pub fn stream(&self, name: &str) -> Option<&Stream> {
        self.streams.get(name)
    }

    /// The topic `stream/name`.
    pub fn topic(&self, stream: &str, name: &str) -> Option<&Topic> {
        self.topics.get(stream, name)
    }

    /// The consumer group `stream/topic/name`.
    pub fn group(&self, stream: &str, topic: &str, name: &str) -> Option<&Group> {
        self.groups.get(stream, topic, name)
    }

    /// The user called `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Runs every check restore runs, member by member and across members.
    /// A state built by commands always passes; an error is a bug, reported
    /// as [`RestoreError::Inconsistent`] naming the section at fault.
    pub fn check(&self) -> Result<(), RestoreError> {
        self.streams.check()?;
        self.topics.check()?;
        self.groups.check()?;
        self.users.check()?;
        self.check_links()
    }

    /// The cross-member invariants: every topic's stream exists, every
    /// group's topic exists, every committed partition is below its topic's
    /// partition count.
    fn check_links(&self) -> Result<(), RestoreError> {
        let inconsistent = |section: &str, reason: String| RestoreError::Inconsistent {
            section: section.to_owned(),
            reason,
        };
        for (key, _) in self.topics.iter() {
            if self.streams.get(&key.stream).is_none() {
                return Err(inconsistent(
                    Topics::SECTION,
                    format!("topic {:?} has no stream", key.path()),
                ));
            }
        }
        for (key, group) in self.groups.iter() {
            let Some(topic) = self.topics.get(&key.stream, &key.topic) else {
                return Err(inconsistent(
                    Groups::SECTION,
                    format!("group {:?} has no topic", key.path()),
                ));
            };
            if let Some((partition, _)) = group.offsets.get_max() {
                if *partition >= topic.partitions {
                    return Err(inconsistent(
                        Groups::SECTION,
                        format!(
                            "group {:?} has an offset for partition {partition}; its topic has {}",
                            key.path(),
                            topic.partitions
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A deterministic command list that builds a state of about
    /// `target_bytes` when snapshotted (for benchmarks). See
    /// [`gen::bulk_commands`], which yields the same commands lazily.
    pub fn bulk_state(target_bytes: u64) -> Vec<Command> {
        gen::bulk_commands(target_bytes).collect()
    }
}

impl StateMachine for Metadata {
    type Command = Command;
    type Reply = Reply;
    type Rejection = Rejection;

    /// Order of checks, the same on every replay: names, then what crosses
    /// members (here), then what the member holds.
    fn apply(&mut self, at: OpId, command: Command) -> Result<Reply, Rejection> {
        command.check_names()?;
        match command {
            Command::Stream(command) => {
                if let StreamCommand::Delete { name } = &command {
                    let count = self.topics.count_in_stream(name);
                    if count > 0 {
                        return Err(Rejection::HasChildren {
                            kind: Kind::Stream,
                            name: name.clone(),
                            children: Kind::Topic,
                            count,
                        });
                    }
                }
                self.streams.apply(at, command)
            }
            Command::Topic(command) => {
                match &command {
                    TopicCommand::Create { stream, name, .. } => {
                        if self.streams.get(stream).is_none() {
                            return Err(Rejection::MissingParent {
                                kind: Kind::Topic,
                                name: path(&[stream, name]),
                                parent: stream.clone(),
                            });
                        }
                    }
                    TopicCommand::Delete { stream, name } => {
                        let count = self.groups.count_in_topic(stream, name);
                        if count > 0 {
                            return Err(Rejection::HasChildren {
                                kind: Kind::Topic,
                                name: path(&[stream, name]),
                                children: Kind::Group,
                                count,
                            });
                        }
                    }
                    TopicCommand::UpdateConfig { .. } | TopicCommand::AddPartitions { .. } => {}
                }
                self.topics.apply(at, command)
            }
            Command::Group(command) => {
                match &command {
                    GroupCommand::Create {
                        stream,
                        topic,
                        name,
                    } => {
                        if self.topics.get(stream, topic).is_none() {
                            return Err(Rejection::MissingParent {
                                kind: Kind::Group,
                                name: path(&[stream, topic, name]),
                                parent: path(&[stream, topic]),
                            });
                        }
                    }
                    GroupCommand::CommitOffset {
                        stream,
                        topic,
                        group,
                        partition,
                        ..
                    } => {
                        // A missing group is the member's to report; a
                        // group's topic always exists.
                        let exists = self.groups.get(stream, topic, group).is_some();
                        if let (true, Some(parent)) = (exists, self.topics.get(stream, topic)) {
                            if *partition >= parent.partitions {
                                return Err(Rejection::PartitionOutOfRange {
                                    topic: path(&[stream, topic]),
                                    partition: *partition,
                                    partitions: parent.partitions,
                                });
                            }
                        }
                    }
                    GroupCommand::Delete { .. }
                    | GroupCommand::Join { .. }
                    | GroupCommand::Leave { .. } => {}
                }
                self.groups.apply(at, command)
            }
            Command::User(command) => self.users.apply(at, command),
        }
    }

    fn freeze(&self) -> Vec<FrozenSection> {
        vec![
            freeze_member(&self.streams),
            freeze_member(&self.topics),
            freeze_member(&self.groups),
            freeze_member(&self.users),
        ]
    }

    /// Restores every member, then checks the cross-member invariants.
    /// Takes only its own sections; the caller refuses leftovers with
    /// [`SectionSet::finish`]. An empty set is refused like any snapshot
    /// missing a section: a shard without a snapshot starts from
    /// [`Metadata::default`] and never calls this, so an empty set here is a
    /// damaged or foreign snapshot, not an empty broker.
    fn restore(sections: &mut SectionSet) -> Result<Self, RestoreError> {
        let metadata = Metadata {
            streams: restore_member(sections)?,
            topics: restore_member(sections)?,
            groups: restore_member(sections)?,
            users: restore_member(sections)?,
        };
        metadata.check_links()?;
        Ok(metadata)
    }
}
