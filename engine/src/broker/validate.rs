//! Validation shared by commands and restore: a snapshot must hold only
//! what commands could have produced, so both run the same checks.

use super::command::{
    Action, Command, GroupCommand, Permission, Resource, StreamCommand, TopicCommand, UserCommand,
};
use super::error::{
    ConfigValueError, Kind, Limit, NameError, PasswordHashError, PermissionError, Rejection,
};
use super::{
    CONFIG_VALUE_BYTES_MAX, NAME_BYTES_MAX, PASSWORD_ALGORITHM_BYTES_MAX, PASSWORD_HASH_BYTES_MAX,
    PERMISSIONS_MAX,
};
use std::collections::BTreeSet;

/// Joins names into a path (`stream/topic/group`).
pub(crate) fn path(names: &[&str]) -> String {
    names.join("/")
}

/// What is wrong with `name`, if anything.
pub(crate) fn name_error(name: &str) -> Option<NameError> {
    if name.is_empty() {
        return Some(NameError::Empty);
    }
    if name.len() > NAME_BYTES_MAX {
        return Some(NameError::TooLong {
            bytes: name.len(),
            max: NAME_BYTES_MAX,
        });
    }
    // Bytes first: every command's names pass through here on apply, and
    // most are plain ASCII (a multi-byte character fails the byte test and
    // is then named as a character).
    if name.bytes().all(name_byte_allowed) {
        return None;
    }
    name.chars()
        .find(|c| !(c.is_ascii() && name_byte_allowed(*c as u8)))
        .map(|character| NameError::BadCharacter { character })
}

/// `[A-Za-z0-9._-]`.
fn name_byte_allowed(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-')
}

/// Checks a name: 1 to [`NAME_BYTES_MAX`] bytes of `[A-Za-z0-9._-]`.
pub(crate) fn name(kind: Kind, name: &str) -> Result<(), Rejection> {
    match name_error(name) {
        None => Ok(()),
        Some(reason) => Err(Rejection::InvalidName {
            kind,
            // Bounded so a hostile name cannot blow up the reply.
            name: truncated(name),
            reason,
        }),
    }
}

/// `name`, cut to at most [`NAME_BYTES_MAX`] bytes on a char boundary.
fn truncated(name: &str) -> String {
    let mut end = name.len().min(NAME_BYTES_MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// Checks one configuration entry of topic `topic_path`.
pub(crate) fn config_entry(topic_path: &str, key: &str, value: &str) -> Result<(), Rejection> {
    name(Kind::ConfigKey, key)?;
    let reason = if value.len() > CONFIG_VALUE_BYTES_MAX {
        Some(ConfigValueError::TooLong {
            bytes: value.len(),
            max: CONFIG_VALUE_BYTES_MAX,
        })
    } else {
        value
            .chars()
            .find(|c| c.is_control())
            .map(|character| ConfigValueError::ControlCharacter { character })
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Rejection::InvalidConfigValue {
            key: path(&[topic_path, key]),
            reason,
        }),
    }
}

/// Checks a password hash: a PHC string, `$algorithm$rest`, where the
/// algorithm is 1 to [`PASSWORD_ALGORITHM_BYTES_MAX`] bytes of
/// `[a-z0-9-]` and the rest is non-empty PHC text (`[A-Za-z0-9/+.=,$-]`).
/// The hash is stored opaque; this only keeps plaintext out.
pub(crate) fn password_hash(user: &str, hash: &str) -> Result<(), Rejection> {
    let reason = password_hash_error(hash);
    match reason {
        None => Ok(()),
        Some(reason) => Err(Rejection::InvalidPasswordHash {
            user: user.to_owned(),
            reason,
        }),
    }
}

fn password_hash_error(hash: &str) -> Option<PasswordHashError> {
    if hash.len() > PASSWORD_HASH_BYTES_MAX {
        return Some(PasswordHashError::TooLong {
            bytes: hash.len(),
            max: PASSWORD_HASH_BYTES_MAX,
        });
    }
    let Some(body) = hash.strip_prefix('$') else {
        return Some(PasswordHashError::NotPhc);
    };
    let Some((algorithm, rest)) = body.split_once('$') else {
        return Some(PasswordHashError::NotPhc);
    };
    if algorithm.is_empty() || algorithm.len() > PASSWORD_ALGORITHM_BYTES_MAX || rest.is_empty() {
        return Some(PasswordHashError::NotPhc);
    }
    if let Some(character) = algorithm
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Some(PasswordHashError::BadCharacter { character });
    }
    rest.chars()
        .find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '/' | '+' | '.' | '=' | ',' | '$' | '-'))
        })
        .map(|character| PasswordHashError::BadCharacter { character })
}

/// Checks a permission list: at most [`PERMISSIONS_MAX`] entries, no
/// duplicates, well-formed resource names, `Admin` only on the cluster.
pub(crate) fn permissions(permissions: &[Permission]) -> Result<(), Rejection> {
    if permissions.len() > PERMISSIONS_MAX {
        return Err(Rejection::LimitExceeded {
            what: Limit::Permissions,
            max: PERMISSIONS_MAX as u64,
        });
    }
    let mut seen = BTreeSet::new();
    for permission in permissions {
        let bad_name = |kind: Kind, name: &str| {
            name_error(name).map(|reason| PermissionError::BadResourceName {
                kind,
                name: truncated(name),
                reason,
            })
        };
        let resource_error = match &permission.resource {
            Resource::Cluster => None,
            Resource::Stream { stream } => bad_name(Kind::Stream, stream),
            Resource::Topic { stream, topic } => {
                bad_name(Kind::Stream, stream).or_else(|| bad_name(Kind::Topic, topic))
            }
        };
        if let Some(reason) = resource_error {
            return Err(Rejection::InvalidPermission { reason });
        }
        if permission.action == Action::Admin && permission.resource != Resource::Cluster {
            return Err(Rejection::InvalidPermission {
                reason: PermissionError::AdminNotOnCluster {
                    resource: permission.resource.clone(),
                },
            });
        }
        if !seen.insert(permission) {
            return Err(Rejection::InvalidPermission {
                reason: PermissionError::Duplicate {
                    permission: permission.clone(),
                },
            });
        }
    }
    Ok(())
}

// The commands' name checks live here, beside the rules they apply, so that
// the command types do not depend on validation (which depends on them).

impl Command {
    /// Checks every name the command carries, outermost first. The mux runs
    /// this before its cross-member checks, so a malformed name is reported
    /// as such rather than as a missing parent.
    pub fn check_names(&self) -> Result<(), Rejection> {
        match self {
            Command::Stream(c) => c.check_names(),
            Command::Topic(c) => c.check_names(),
            Command::Group(c) => c.check_names(),
            Command::User(c) => c.check_names(),
        }
    }
}

impl StreamCommand {
    /// Checks the stream's name.
    pub fn check_names(&self) -> Result<(), Rejection> {
        match self {
            StreamCommand::Create { name } | StreamCommand::Delete { name } => {
                self::name(Kind::Stream, name)
            }
        }
    }
}

impl TopicCommand {
    /// Checks the stream's and the topic's names (config keys are checked
    /// with the rest of the configuration).
    pub fn check_names(&self) -> Result<(), Rejection> {
        let (TopicCommand::Create { stream, name, .. }
        | TopicCommand::Delete { stream, name }
        | TopicCommand::UpdateConfig { stream, name, .. }
        | TopicCommand::AddPartitions { stream, name, .. }) = self;
        self::name(Kind::Stream, stream)?;
        self::name(Kind::Topic, name)
    }
}

impl GroupCommand {
    /// Checks the stream's, topic's, group's and member's names.
    pub fn check_names(&self) -> Result<(), Rejection> {
        let (stream, topic, group) = self.group();
        self::name(Kind::Stream, stream)?;
        self::name(Kind::Topic, topic)?;
        self::name(Kind::Group, group)?;
        match self {
            GroupCommand::Join { member, .. } | GroupCommand::Leave { member, .. } => {
                self::name(Kind::Member, member)
            }
            _ => Ok(()),
        }
    }

    /// The `(stream, topic, group)` the command is about.
    pub fn group(&self) -> (&str, &str, &str) {
        match self {
            GroupCommand::Create {
                stream,
                topic,
                name,
            }
            | GroupCommand::Delete {
                stream,
                topic,
                name,
            }
            | GroupCommand::Join {
                stream,
                topic,
                group: name,
                ..
            }
            | GroupCommand::Leave {
                stream,
                topic,
                group: name,
                ..
            }
            | GroupCommand::CommitOffset {
                stream,
                topic,
                group: name,
                ..
            } => (stream, topic, name),
        }
    }
}

impl UserCommand {
    /// Checks the user's name.
    pub fn check_names(&self) -> Result<(), Rejection> {
        let (UserCommand::Create { name, .. }
        | UserCommand::Delete { name }
        | UserCommand::SetPermissions { name, .. }
        | UserCommand::SetPasswordHash { name, .. }) = self;
        self::name(Kind::User, name)
    }
}
