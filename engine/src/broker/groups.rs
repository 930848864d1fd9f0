//! Consumer groups: named sets of members reading one topic together, with
//! the offset the group has committed per partition. Every join and leave
//! starts a new generation, which consumers use to notice a rebalance.

use super::codec::{self, freeze_map, restore_map};
use super::command::{GroupCommand, Reply};
use super::error::{Kind, Limit, Rejection};
use super::key_parts::KeyParts;
use super::validate::{self, path};
use super::{GROUPS_MAX, GROUP_MEMBERS_MAX, PARTITIONS_MAX};
use crate::machine::{RestoreError, SectionEncoder};
use crate::mux::Member;
use crate::OpId;
use imbl::OrdMap;
use serde::{Deserialize, Serialize};
use std::ops::RangeInclusive;

/// A group's identity: its topic and its name. Ordered by stream, then
/// topic, so a topic's groups are one range of the map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupKey {
    /// The topic's stream.
    pub stream: String,
    /// The topic.
    pub topic: String,
    /// The group's name.
    pub group: String,
}

impl KeyParts<3> for GroupKey {
    fn parts(&self) -> [&str; 3] {
        [&self.stream, &self.topic, &self.group]
    }
}

impl<'a> std::borrow::Borrow<dyn KeyParts<3> + 'a> for GroupKey {
    fn borrow(&self) -> &(dyn KeyParts<3> + 'a) {
        self
    }
}

impl GroupKey {
    /// The key of `stream/topic/group`.
    pub fn new(stream: &str, topic: &str, group: &str) -> GroupKey {
        GroupKey {
            stream: stream.to_owned(),
            topic: topic.to_owned(),
            group: group.to_owned(),
        }
    }

    /// `stream/topic/group`.
    pub fn path(&self) -> String {
        path(&[&self.stream, &self.topic, &self.group])
    }

    /// `stream/topic`, the group's topic.
    pub fn topic_path(&self) -> String {
        path(&[&self.stream, &self.topic])
    }
}

/// A consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The op that created it.
    pub id: u64,
    /// The epoch of that op.
    pub epoch: u64,
    /// Bumped by every join and leave; 0 when created.
    pub generation: u64,
    /// Members by name, each with the op it joined at (at most
    /// [`GROUP_MEMBERS_MAX`]).
    #[serde(with = "codec::ordmap_seq")]
    pub members: OrdMap<String, u64>,
    /// Committed offsets by partition. Every partition is below the topic's
    /// partition count.
    #[serde(with = "codec::ordmap_seq")]
    pub offsets: OrdMap<u32, u64>,
}

/// Every consumer group, by stream, topic and name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Groups {
    map: OrdMap<GroupKey, Group>,
}

impl Groups {
    /// The group `stream/topic/name`.
    pub fn get(&self, stream: &str, topic: &str, name: &str) -> Option<&Group> {
        self.map.get(&[stream, topic, name] as &dyn KeyParts<3>)
    }

    /// How many groups there are.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if there are no groups.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every group, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&GroupKey, &Group)> {
        self.map.iter()
    }

    /// How many groups read `stream/topic`.
    pub fn count_in_topic(&self, stream: &str, topic: &str) -> u64 {
        self.map
            .range(GroupKey::new(stream, topic, "")..)
            .take_while(|(key, _)| key.stream == stream && key.topic == topic)
            .count() as u64
    }

    /// Applies `command`, checking only what this member knows; the mux
    /// checks that a new group's topic exists and that a committed
    /// partition is below the topic's partition count.
    pub fn apply(&mut self, at: OpId, command: GroupCommand) -> Result<Reply, Rejection> {
        command.check_names()?;
        match command {
            GroupCommand::Create {
                stream,
                topic,
                name,
            } => {
                let key = GroupKey {
                    stream,
                    topic,
                    group: name,
                };
                if self.map.contains_key(&key) {
                    return Err(Rejection::Duplicate {
                        kind: Kind::Group,
                        name: key.path(),
                    });
                }
                if self.map.len() >= GROUPS_MAX {
                    return Err(Rejection::LimitExceeded {
                        what: Limit::Groups,
                        max: GROUPS_MAX as u64,
                    });
                }
                self.map.insert(
                    key,
                    Group {
                        id: at.op,
                        epoch: at.epoch,
                        generation: 0,
                        members: OrdMap::new(),
                        offsets: OrdMap::new(),
                    },
                );
                Ok(Reply::Created { id: at.op })
            }
            GroupCommand::Delete {
                stream,
                topic,
                name,
            } => {
                let key = GroupKey {
                    stream,
                    topic,
                    group: name,
                };
                match self.map.remove(&key) {
                    Some(_) => Ok(Reply::Deleted),
                    None => Err(not_found(&key)),
                }
            }
            GroupCommand::Join {
                stream,
                topic,
                group,
                member,
            } => {
                let key = GroupKey {
                    stream,
                    topic,
                    group,
                };
                let entry = self.map.get(&key).ok_or_else(|| not_found(&key))?;
                if entry.members.contains_key(&member) {
                    return Err(Rejection::Duplicate {
                        kind: Kind::Member,
                        name: path(&[&key.path(), &member]),
                    });
                }
                if entry.members.len() >= GROUP_MEMBERS_MAX {
                    return Err(Rejection::LimitExceeded {
                        what: Limit::GroupMembers,
                        max: GROUP_MEMBERS_MAX as u64,
                    });
                }
                let generation = next_generation(entry)?;
                let entry = self.map.get_mut(&key).ok_or_else(|| not_found(&key))?;
                entry.members.insert(member, at.op);
                entry.generation = generation;
                assert!(entry.members.len() <= GROUP_MEMBERS_MAX);
                Ok(Reply::Joined { generation })
            }
            GroupCommand::Leave {
                stream,
                topic,
                group,
                member,
            } => {
                let key = GroupKey {
                    stream,
                    topic,
                    group,
                };
                let entry = self.map.get(&key).ok_or_else(|| not_found(&key))?;
                if !entry.members.contains_key(&member) {
                    return Err(Rejection::NotFound {
                        kind: Kind::Member,
                        name: path(&[&key.path(), &member]),
                    });
                }
                let generation = next_generation(entry)?;
                let entry = self.map.get_mut(&key).ok_or_else(|| not_found(&key))?;
                entry.members.remove(&member);
                entry.generation = generation;
                Ok(Reply::Left { generation })
            }
            GroupCommand::CommitOffset {
                stream,
                topic,
                group,
                partition,
                offset,
            } => {
                let key = GroupKey {
                    stream,
                    topic,
                    group,
                };
                if !self.map.contains_key(&key) {
                    return Err(not_found(&key));
                }
                // The topic's own count is the mux's check; this one keeps
                // a standalone member within its limit.
                if partition >= PARTITIONS_MAX {
                    return Err(Rejection::PartitionOutOfRange {
                        topic: key.topic_path(),
                        partition,
                        partitions: PARTITIONS_MAX,
                    });
                }
                let entry = self.map.get_mut(&key).ok_or_else(|| not_found(&key))?;
                entry.offsets.insert(partition, offset);
                Ok(Reply::OffsetCommitted)
            }
        }
    }

    /// Checks every group as restore does.
    pub(crate) fn check(&self) -> Result<(), RestoreError> {
        codec::check_map::<Self, _, _>(&self.map, GROUPS_MAX, check_record)
    }
}

fn not_found(key: &GroupKey) -> Rejection {
    Rejection::NotFound {
        kind: Kind::Group,
        name: key.path(),
    }
}

/// The generation after `group`'s, refused rather than wrapped: consumers
/// rely on generations increasing.
fn next_generation(group: &Group) -> Result<u64, Rejection> {
    group
        .generation
        .checked_add(1)
        .ok_or(Rejection::LimitExceeded {
            what: Limit::Generation,
            max: u64::MAX,
        })
}

fn check_record(key: &GroupKey, group: &Group) -> Result<(), String> {
    let checks = || -> Result<(), Rejection> {
        validate::name(Kind::Stream, &key.stream)?;
        validate::name(Kind::Topic, &key.topic)?;
        validate::name(Kind::Group, &key.group)?;
        if group.members.len() > GROUP_MEMBERS_MAX {
            return Err(Rejection::LimitExceeded {
                what: Limit::GroupMembers,
                max: GROUP_MEMBERS_MAX as u64,
            });
        }
        group
            .members
            .keys()
            .try_for_each(|member| validate::name(Kind::Member, member))?;
        // Partitions are checked against the topic by the mux; here only
        // against the absolute limit.
        match group.offsets.get_max() {
            Some((partition, _)) if *partition >= PARTITIONS_MAX => {
                Err(Rejection::PartitionOutOfRange {
                    topic: key.topic_path(),
                    partition: *partition,
                    partitions: PARTITIONS_MAX,
                })
            }
            _ => Ok(()),
        }
    };
    checks().map_err(|e| format!("group {:?}: {e}", key.path()))
}

/// Section format, version 1: [`crate::machine::RecordsEncoder`] records of
/// `(GroupKey, Group)` in key order; members and offsets are sequences of
/// pairs in key order.
impl Member for Groups {
    const SECTION: &'static str = "broker.groups";
    const VERSION: u32 = 1;
    const READABLE: RangeInclusive<u32> = 1..=1;

    fn freeze(&self) -> Box<dyn SectionEncoder> {
        freeze_map(&self.map)
    }

    fn restore(version: u32, bytes: &[u8]) -> Result<Self, RestoreError> {
        codec::check_version::<Self>(version)?;
        let map = restore_map(bytes, GROUPS_MAX, check_record)?;
        Ok(Groups { map })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The borrowed lookup finds exactly the owned key with the same parts,
    /// also where the parts' boundaries differ but their concatenation does
    /// not ("a" + "bc" against "ab" + "c").
    #[test]
    fn lookups_by_borrowed_parts_match_owned_keys() {
        let keys = [
            ("a", "bc", "g"),
            ("ab", "c", "g"),
            ("a", "b", "cg"),
            ("a", "", "bcg"),
            ("", "abc", "g"),
        ];
        let mut map: OrdMap<GroupKey, usize> = OrdMap::new();
        for (i, &(s, t, g)) in keys.iter().take(3).enumerate() {
            map.insert(GroupKey::new(s, t, g), i);
        }
        for (i, &(s, t, g)) in keys.iter().enumerate() {
            let borrowed = map.get(&[s, t, g] as &dyn KeyParts<3>).copied();
            let owned = map.get(&GroupKey::new(s, t, g)).copied();
            assert_eq!(borrowed, owned, "{s}/{t}/{g}");
            assert_eq!(borrowed, (i < 3).then_some(i), "{s}/{t}/{g}");
        }
    }
}
