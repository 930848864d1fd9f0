//! Users: who may connect, the hash their password must match and what they
//! may do. Only hashes are stored (PHC strings made by the broker's front
//! end); a plaintext password never reaches the journal.

use super::codec::{self, freeze_map, restore_map};
use super::command::{Permission, Reply, UserCommand};
use super::error::{Kind, Limit, Rejection};
use super::{validate, USERS_MAX};
use crate::machine::{RestoreError, SectionEncoder};
use crate::mux::Member;
use crate::OpId;
use imbl::OrdMap;
use serde::{Deserialize, Serialize};
use std::ops::RangeInclusive;

/// A user.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The op that created it.
    pub id: u64,
    /// The epoch of that op.
    pub epoch: u64,
    /// The password's hash, a PHC string.
    pub password_hash: String,
    /// What the user may do (at most [`super::PERMISSIONS_MAX`], no
    /// duplicates).
    pub permissions: Vec<Permission>,
}

// By hand, so a hash never lands in a log line.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("epoch", &self.epoch)
            .field("password_hash", &"<redacted>")
            .field("permissions", &self.permissions)
            .finish()
    }
}

/// Every user, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    map: OrdMap<String, User>,
}

impl Users {
    /// The user called `name`.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.map.get(name)
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if there are no users.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every user, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &User)> {
        self.map.iter()
    }

    /// Applies `command` (users cross no other member).
    pub fn apply(&mut self, at: OpId, command: UserCommand) -> Result<Reply, Rejection> {
        command.check_names()?;
        match command {
            UserCommand::Create {
                name,
                password_hash,
                permissions,
            } => {
                if self.map.contains_key(&name) {
                    return Err(Rejection::Duplicate {
                        kind: Kind::User,
                        name,
                    });
                }
                if self.map.len() >= USERS_MAX {
                    return Err(Rejection::LimitExceeded {
                        what: Limit::Users,
                        max: USERS_MAX as u64,
                    });
                }
                validate::password_hash(&name, &password_hash)?;
                validate::permissions(&permissions)?;
                self.map.insert(
                    name,
                    User {
                        id: at.op,
                        epoch: at.epoch,
                        password_hash,
                        permissions,
                    },
                );
                Ok(Reply::Created { id: at.op })
            }
            UserCommand::Delete { name } => match self.map.remove(&name) {
                Some(_) => Ok(Reply::Deleted),
                None => Err(not_found(name)),
            },
            UserCommand::SetPermissions { name, permissions } => {
                if !self.map.contains_key(&name) {
                    return Err(not_found(name));
                }
                validate::permissions(&permissions)?;
                let user = self
                    .map
                    .get_mut(&name)
                    .ok_or_else(|| not_found(name.clone()))?;
                user.permissions = permissions;
                Ok(Reply::Updated)
            }
            UserCommand::SetPasswordHash {
                name,
                password_hash,
            } => {
                if !self.map.contains_key(&name) {
                    return Err(not_found(name));
                }
                validate::password_hash(&name, &password_hash)?;
                let user = self
                    .map
                    .get_mut(&name)
                    .ok_or_else(|| not_found(name.clone()))?;
                user.password_hash = password_hash;
                Ok(Reply::Updated)
            }
        }
    }

    /// Checks every user as restore does.
    pub(crate) fn check(&self) -> Result<(), RestoreError> {
        codec::check_map::<Self, _, _>(&self.map, USERS_MAX, |n, u| check_record(n, u))
    }
}

fn not_found(name: String) -> Rejection {
    Rejection::NotFound {
        kind: Kind::User,
        name,
    }
}

fn check_record(name: &str, user: &User) -> Result<(), String> {
    let checks = || -> Result<(), Rejection> {
        validate::name(Kind::User, name)?;
        validate::password_hash(name, &user.password_hash)?;
        validate::permissions(&user.permissions)
    };
    checks().map_err(|e| format!("user {name:?}: {e}"))
}

/// Section format, version 1: [`crate::machine::RecordsEncoder`] records of
/// `(name: String, User)` in name order.
impl Member for Users {
    const SECTION: &'static str = "broker.users";
    const VERSION: u32 = 1;
    const READABLE: RangeInclusive<u32> = 1..=1;

    fn freeze(&self) -> Box<dyn SectionEncoder> {
        freeze_map(&self.map)
    }

    fn restore(version: u32, bytes: &[u8]) -> Result<Self, RestoreError> {
        codec::check_version::<Self>(version)?;
        let map = restore_map(bytes, USERS_MAX, |n: &String, u: &User| check_record(n, u))?;
        Ok(Users { map })
    }
}
