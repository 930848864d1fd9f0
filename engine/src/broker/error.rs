//! Why a broker command is refused.
//!
//! Every rejection names what was refused and which object, so a client can
//! act on it without parsing prose. Nested objects are named by their path,
//! the names from the outermost parent down joined with `/` (no name may
//! contain `/`, so a path is unambiguous): a group is `stream/topic/group`.

use super::command::{Permission, Resource};
use std::fmt;

/// The kind of object a rejection is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A stream.
    Stream,
    /// A topic in a stream.
    Topic,
    /// A consumer group on a topic.
    Group,
    /// A member of a consumer group.
    Member,
    /// A user.
    User,
    /// A key of a topic's configuration.
    ConfigKey,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Stream => "stream",
            Kind::Topic => "topic",
            Kind::Group => "consumer group",
            Kind::Member => "group member",
            Kind::User => "user",
            Kind::ConfigKey => "config key",
        })
    }
}

/// A bounded quantity (see the `*_MAX` constants in [`crate::broker`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Streams per shard ([`super::STREAMS_MAX`]).
    Streams,
    /// Topics per shard ([`super::TOPICS_MAX`]).
    Topics,
    /// Partitions per topic ([`super::PARTITIONS_MAX`]).
    Partitions,
    /// Configuration entries per topic ([`super::CONFIG_ENTRIES_MAX`]).
    ConfigEntries,
    /// Consumer groups per shard ([`super::GROUPS_MAX`]).
    Groups,
    /// Members per consumer group ([`super::GROUP_MEMBERS_MAX`]).
    GroupMembers,
    /// A group's generation counter (`u64::MAX`).
    Generation,
    /// Users per shard ([`super::USERS_MAX`]).
    Users,
    /// Permissions per user ([`super::PERMISSIONS_MAX`]).
    Permissions,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::Streams => "streams",
            Limit::Topics => "topics",
            Limit::Partitions => "partitions per topic",
            Limit::ConfigEntries => "config entries per topic",
            Limit::Groups => "consumer groups",
            Limit::GroupMembers => "members per group",
            Limit::Generation => "group generation",
            Limit::Users => "users",
            Limit::Permissions => "permissions per user",
        })
    }
}

/// What is wrong with a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("empty")]
    Empty,
    /// The name is longer than [`super::NAME_BYTES_MAX`].
    #[error("{bytes} bytes long, at most {max} allowed")]
    TooLong {
        /// The name's length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The name holds a character outside `[A-Za-z0-9._-]`.
    #[error("holds {character:?}; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed")]
    BadCharacter {
        /// The first offending character.
        character: char,
    },
}

/// What is wrong with a permission list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermissionError {
    /// `Admin` is a cluster-wide action; granting it on a stream or topic
    /// means nothing and is refused rather than silently widened.
    #[error("admin can only be granted on the cluster, not on {resource}")]
    AdminNotOnCluster {
        /// The resource it was granted on.
        resource: Resource,
    },
    /// The same permission appears twice.
    #[error("{permission} is listed twice")]
    Duplicate {
        /// The repeated permission.
        permission: Permission,
    },
    /// A resource names a stream or topic with a malformed name.
    #[error("resource names {kind} {name:?}, which is {reason}")]
    BadResourceName {
        /// Whether the name is a stream's or a topic's.
        kind: Kind,
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: NameError,
    },
}

/// What is wrong with a password hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordHashError {
    /// Longer than [`super::PASSWORD_HASH_BYTES_MAX`].
    #[error("{bytes} bytes long, at most {max} allowed")]
    TooLong {
        /// The hash's length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Not of the PHC form `$algorithm$...`; plaintext is refused this way.
    #[error("not a PHC string ($algorithm$...)")]
    NotPhc,
    /// A character PHC strings never hold.
    #[error("holds {character:?}, which PHC strings never hold")]
    BadCharacter {
        /// The first offending character.
        character: char,
    },
}

/// What is wrong with a configuration value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigValueError {
    /// Longer than [`super::CONFIG_VALUE_BYTES_MAX`].
    #[error("{bytes} bytes long, at most {max} allowed")]
    TooLong {
        /// The value's length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Holds a control character (values are printable text).
    #[error("holds control character {character:?}")]
    ControlCharacter {
        /// The first offending character.
        character: char,
    },
}

/// Why a broker command was refused. A refused command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The object already exists.
    #[error("{kind} {name:?} already exists")]
    Duplicate {
        /// What kind of object.
        kind: Kind,
        /// Its path.
        name: String,
    },
    /// The object does not exist.
    #[error("{kind} {name:?} does not exist")]
    NotFound {
        /// What kind of object.
        kind: Kind,
        /// Its path.
        name: String,
    },
    /// The object's parent (a topic's stream, a group's topic) does not
    /// exist.
    #[error("{kind} {name:?} cannot exist without {parent:?}, which does not exist")]
    MissingParent {
        /// What kind of object was to be created.
        kind: Kind,
        /// Its path.
        name: String,
        /// The missing parent's path.
        parent: String,
    },
    /// Deleting the object would orphan its children (a stream's topics, a
    /// topic's groups); they must be deleted first.
    #[error("{kind} {name:?} still has {count} {children} object(s)")]
    HasChildren {
        /// What kind of object was to be deleted.
        kind: Kind,
        /// Its path.
        name: String,
        /// The kind of its children.
        children: Kind,
        /// How many it has.
        count: u64,
    },
    /// A name is malformed.
    #[error("{kind} name {name:?} is invalid: {reason}")]
    InvalidName {
        /// Whose name.
        kind: Kind,
        /// The name as given, cut to [`super::NAME_BYTES_MAX`] bytes so a
        /// hostile name cannot inflate the reply.
        name: String,
        /// What is wrong with it.
        reason: NameError,
    },
    /// A permission list is malformed.
    #[error("invalid permission: {reason}")]
    InvalidPermission {
        /// What is wrong with it.
        reason: PermissionError,
    },
    /// A password hash is malformed.
    #[error("password hash for user {user:?} is invalid: {reason}")]
    InvalidPasswordHash {
        /// The user.
        user: String,
        /// What is wrong with it.
        reason: PasswordHashError,
    },
    /// A configuration value is malformed.
    #[error("config value for {key:?} is invalid: {reason}")]
    InvalidConfigValue {
        /// The entry's path (`stream/topic/key`).
        key: String,
        /// What is wrong with it.
        reason: ConfigValueError,
    },
    /// A topic is created with, or grown by, zero partitions.
    #[error("topic {topic:?}: {partitions} is not a partition count (at least 1)")]
    InvalidPartitionCount {
        /// The topic's path.
        topic: String,
        /// The count given.
        partitions: u32,
    },
    /// An offset names a partition the topic does not have.
    #[error("partition {partition} of topic {topic:?} does not exist (it has {partitions})")]
    PartitionOutOfRange {
        /// The topic's path.
        topic: String,
        /// The partition named.
        partition: u32,
        /// The topic's partition count.
        partitions: u32,
    },
    /// The command would exceed a limit.
    #[error("more than {max} {what}")]
    LimitExceeded {
        /// Which limit.
        what: Limit,
        /// Its value.
        max: u64,
    },
}
