//! The broker's commands, as they are written to the journal, and replies.
//!
//! A command carries names, never ids: ids are assigned when the command is
//! applied (an object's id is the op that created it), so a command means the
//! same thing whenever it is replayed.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A command for one member of [`super::Metadata`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// For [`super::Streams`].
    Stream(StreamCommand),
    /// For [`super::Topics`].
    Topic(TopicCommand),
    /// For [`super::Groups`].
    Group(GroupCommand),
    /// For [`super::Users`].
    User(UserCommand),
}

impl Command {
    /// The name that decides which shard owns the command when metadata is
    /// sharded: the stream for stream, topic and group commands (so a topic
    /// lands with its stream), the user name for user commands.
    pub fn routing_key(&self) -> &str {
        match self {
            Command::Stream(StreamCommand::Create { name } | StreamCommand::Delete { name }) => {
                name
            }
            Command::Topic(
                TopicCommand::Create { stream, .. }
                | TopicCommand::Delete { stream, .. }
                | TopicCommand::UpdateConfig { stream, .. }
                | TopicCommand::AddPartitions { stream, .. },
            ) => stream,
            Command::Group(
                GroupCommand::Create { stream, .. }
                | GroupCommand::Delete { stream, .. }
                | GroupCommand::Join { stream, .. }
                | GroupCommand::Leave { stream, .. }
                | GroupCommand::CommitOffset { stream, .. },
            ) => stream,
            Command::User(
                UserCommand::Create { name, .. }
                | UserCommand::Delete { name }
                | UserCommand::SetPermissions { name, .. }
                | UserCommand::SetPasswordHash { name, .. },
            ) => name,
        }
    }
}

/// Stream commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamCommand {
    /// Creates a stream. Replies [`Reply::Created`].
    Create {
        /// The new stream's name.
        name: String,
    },
    /// Deletes a stream that has no topics. Replies [`Reply::Deleted`].
    Delete {
        /// The stream's name.
        name: String,
    },
}

/// Topic commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopicCommand {
    /// Creates a topic in an existing stream. Replies [`Reply::Created`].
    Create {
        /// The parent stream.
        stream: String,
        /// The new topic's name.
        name: String,
        /// How many partitions, at least 1.
        partitions: u32,
        /// Initial configuration; keys are names, each at most once.
        config: Vec<(String, String)>,
    },
    /// Deletes a topic that has no consumer groups. Replies
    /// [`Reply::Deleted`].
    Delete {
        /// The parent stream.
        stream: String,
        /// The topic's name.
        name: String,
    },
    /// Sets and removes configuration entries, all or none. A key may appear
    /// once across `set` and `remove`; removing an absent key is refused.
    /// Replies [`Reply::Updated`].
    UpdateConfig {
        /// The parent stream.
        stream: String,
        /// The topic's name.
        name: String,
        /// Entries to insert or overwrite.
        set: Vec<(String, String)>,
        /// Keys to remove.
        remove: Vec<String>,
    },
    /// Adds partitions to a topic (partitions are never removed, so
    /// committed offsets stay in range). Replies
    /// [`Reply::PartitionsAdded`].
    AddPartitions {
        /// The parent stream.
        stream: String,
        /// The topic's name.
        name: String,
        /// How many partitions to add, at least 1.
        count: u32,
    },
}

/// Consumer group commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupCommand {
    /// Creates a group on an existing topic. Replies [`Reply::Created`].
    Create {
        /// The topic's stream.
        stream: String,
        /// The topic.
        topic: String,
        /// The new group's name.
        name: String,
    },
    /// Deletes a group, its members and its offsets. Replies
    /// [`Reply::Deleted`].
    Delete {
        /// The topic's stream.
        stream: String,
        /// The topic.
        topic: String,
        /// The group's name.
        name: String,
    },
    /// Adds a member and starts a new generation. Replies
    /// [`Reply::Joined`].
    Join {
        /// The topic's stream.
        stream: String,
        /// The topic.
        topic: String,
        /// The group.
        group: String,
        /// The joining member's name.
        member: String,
    },
    /// Removes a member and starts a new generation. Replies
    /// [`Reply::Left`].
    Leave {
        /// The topic's stream.
        stream: String,
        /// The topic.
        topic: String,
        /// The group.
        group: String,
        /// The leaving member's name.
        member: String,
    },
    /// Records the group's position in one partition. Replies
    /// [`Reply::OffsetCommitted`].
    CommitOffset {
        /// The topic's stream.
        stream: String,
        /// The topic.
        topic: String,
        /// The group.
        group: String,
        /// The partition, below the topic's partition count.
        partition: u32,
        /// The offset (any value: a group may rewind).
        offset: u64,
    },
}

/// User commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserCommand {
    /// Creates a user. Replies [`Reply::Created`].
    Create {
        /// The new user's name.
        name: String,
        /// The password's hash, a PHC string (`$argon2id$...`). The
        /// engine never sees or stores a plaintext password.
        password_hash: String,
        /// What the user may do.
        permissions: Vec<Permission>,
    },
    /// Deletes a user. Replies [`Reply::Deleted`].
    Delete {
        /// The user's name.
        name: String,
    },
    /// Replaces a user's permissions. Replies [`Reply::Updated`].
    SetPermissions {
        /// The user's name.
        name: String,
        /// The new permissions.
        permissions: Vec<Permission>,
    },
    /// Replaces a user's password hash. Replies [`Reply::Updated`].
    SetPasswordHash {
        /// The user's name.
        name: String,
        /// The new hash, a PHC string.
        password_hash: String,
    },
}

/// What an accepted command returns. Serializable, so a broker can send it
/// to its clients as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// An object was created; `id` is the op that created it.
    Created {
        /// The new object's id.
        id: u64,
    },
    /// An object was deleted.
    Deleted,
    /// An object was changed in place.
    Updated,
    /// A topic grew.
    PartitionsAdded {
        /// The topic's partition count now.
        partitions: u32,
    },
    /// A member joined a group.
    Joined {
        /// The group's new generation.
        generation: u64,
    },
    /// A member left a group.
    Left {
        /// The group's new generation.
        generation: u64,
    },
    /// An offset was recorded.
    OffsetCommitted,
}

/// What a permission allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Read messages.
    Read,
    /// Write messages.
    Write,
    /// Create, delete and configure objects under the resource.
    Manage,
    /// Everything, including users; cluster-wide only.
    Admin,
}

/// What a permission applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Resource {
    /// Every stream and topic, and the cluster itself.
    Cluster,
    /// One stream and its topics.
    Stream {
        /// The stream's name.
        stream: String,
    },
    /// One topic.
    Topic {
        /// The topic's stream.
        stream: String,
        /// The topic's name.
        topic: String,
    },
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Cluster => f.write_str("the cluster"),
            Resource::Stream { stream } => write!(f, "stream {stream:?}"),
            Resource::Topic { stream, topic } => write!(f, "topic \"{stream}/{topic}\""),
        }
    }
}

/// One grant: an action on a resource. Permissions name objects, they do
/// not hold them: a grant on a stream survives the stream's deletion (and
/// applies again if it is re-created), as ACLs do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Permission {
    /// What is allowed.
    pub action: Action,
    /// Where.
    pub resource: Resource,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} on {}", self.action, self.resource)
    }
}
