//! Topics: partitioned logs within a stream, each with a small key/value
//! configuration. Partitions can be added, never removed, so a committed
//! offset's partition stays in range for the topic's life.

use super::codec::{self, freeze_map, restore_map};
use super::command::{Reply, TopicCommand};
use super::error::{Kind, Limit, Rejection};
use super::key_parts::KeyParts;
use super::validate::{self, path};
use super::{CONFIG_ENTRIES_MAX, PARTITIONS_MAX, TOPICS_MAX};
use crate::machine::{RestoreError, SectionEncoder};
use crate::mux::Member;
use crate::OpId;
use imbl::OrdMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::ops::RangeInclusive;

/// A topic's identity: its stream and its name. Ordered by stream first, so
/// a stream's topics are one range of the map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicKey {
    /// The parent stream.
    pub stream: String,
    /// The topic's name.
    pub topic: String,
}

impl KeyParts<2> for TopicKey {
    fn parts(&self) -> [&str; 2] {
        [&self.stream, &self.topic]
    }
}

impl<'a> std::borrow::Borrow<dyn KeyParts<2> + 'a> for TopicKey {
    fn borrow(&self) -> &(dyn KeyParts<2> + 'a) {
        self
    }
}

impl TopicKey {
    /// The key of `stream/topic`.
    pub fn new(stream: &str, topic: &str) -> TopicKey {
        TopicKey {
            stream: stream.to_owned(),
            topic: topic.to_owned(),
        }
    }

    /// `stream/topic`.
    pub fn path(&self) -> String {
        path(&[&self.stream, &self.topic])
    }
}

/// A topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    /// The op that created it.
    pub id: u64,
    /// The epoch of that op.
    pub epoch: u64,
    /// How many partitions it has (1 to [`PARTITIONS_MAX`]).
    pub partitions: u32,
    /// Its configuration (at most [`CONFIG_ENTRIES_MAX`] entries). A
    /// persistent map, so cloning a topic is O(1).
    #[serde(with = "codec::ordmap_seq")]
    pub config: OrdMap<String, String>,
}

/// Every topic, by stream and name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topics {
    map: OrdMap<TopicKey, Topic>,
}

impl Topics {
    /// The topic `stream/name`.
    pub fn get(&self, stream: &str, name: &str) -> Option<&Topic> {
        self.map.get(&[stream, name] as &dyn KeyParts<2>)
    }

    /// How many topics there are.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if there are no topics.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every topic, in (stream, name) order.
    pub fn iter(&self) -> impl Iterator<Item = (&TopicKey, &Topic)> {
        self.map.iter()
    }

    /// How many topics `stream` has.
    pub fn count_in_stream(&self, stream: &str) -> u64 {
        self.map
            .range(TopicKey::new(stream, "")..)
            .take_while(|(key, _)| key.stream == stream)
            .count() as u64
    }

    /// Applies `command`, checking only what this member knows; the mux
    /// checks that a new topic's stream exists and that a deleted topic has
    /// no groups.
    pub fn apply(&mut self, at: OpId, command: TopicCommand) -> Result<Reply, Rejection> {
        command.check_names()?;
        match command {
            TopicCommand::Create {
                stream,
                name,
                partitions,
                config,
            } => {
                let key = TopicKey {
                    stream,
                    topic: name,
                };
                if self.map.contains_key(&key) {
                    return Err(Rejection::Duplicate {
                        kind: Kind::Topic,
                        name: key.path(),
                    });
                }
                if self.map.len() >= TOPICS_MAX {
                    return Err(Rejection::LimitExceeded {
                        what: Limit::Topics,
                        max: TOPICS_MAX as u64,
                    });
                }
                check_partitions(&key, 0, partitions)?;
                let config = updated_config(&key, &OrdMap::new(), config, Vec::new())?;
                self.map.insert(
                    key,
                    Topic {
                        id: at.op,
                        epoch: at.epoch,
                        partitions,
                        config,
                    },
                );
                Ok(Reply::Created { id: at.op })
            }
            TopicCommand::Delete { stream, name } => {
                let key = TopicKey {
                    stream,
                    topic: name,
                };
                match self.map.remove(&key) {
                    Some(_) => Ok(Reply::Deleted),
                    None => Err(not_found(&key)),
                }
            }
            TopicCommand::UpdateConfig {
                stream,
                name,
                set,
                remove,
            } => {
                let key = TopicKey {
                    stream,
                    topic: name,
                };
                let topic = self.map.get_mut(&key).ok_or_else(|| not_found(&key))?;
                topic.config = updated_config(&key, &topic.config, set, remove)?;
                Ok(Reply::Updated)
            }
            TopicCommand::AddPartitions {
                stream,
                name,
                count,
            } => {
                let key = TopicKey {
                    stream,
                    topic: name,
                };
                let topic = self.map.get_mut(&key).ok_or_else(|| not_found(&key))?;
                check_partitions(&key, topic.partitions, count)?;
                topic.partitions += count;
                assert!(topic.partitions <= PARTITIONS_MAX);
                Ok(Reply::PartitionsAdded {
                    partitions: topic.partitions,
                })
            }
        }
    }

    /// Checks every topic as restore does.
    pub(crate) fn check(&self) -> Result<(), RestoreError> {
        codec::check_map::<Self, _, _>(&self.map, TOPICS_MAX, check_record)
    }
}

fn not_found(key: &TopicKey) -> Rejection {
    Rejection::NotFound {
        kind: Kind::Topic,
        name: key.path(),
    }
}

/// Checks that a topic with `partitions` may gain `count` more.
fn check_partitions(key: &TopicKey, partitions: u32, count: u32) -> Result<(), Rejection> {
    if count == 0 {
        return Err(Rejection::InvalidPartitionCount {
            topic: key.path(),
            partitions: count,
        });
    }
    // In u64: `count` comes from a command and may be anything.
    if u64::from(partitions) + u64::from(count) > u64::from(PARTITIONS_MAX) {
        return Err(Rejection::LimitExceeded {
            what: Limit::Partitions,
            max: u64::from(PARTITIONS_MAX),
        });
    }
    Ok(())
}

/// `config` with `set` written and `remove` removed, or why not. Works on
/// a clone (O(1)), so a refusal leaves the topic as it was.
fn updated_config(
    key: &TopicKey,
    config: &OrdMap<String, String>,
    set: Vec<(String, String)>,
    remove: Vec<String>,
) -> Result<OrdMap<String, String>, Rejection> {
    // Neither list can be valid when longer than a whole configuration;
    // refusing early bounds the work below.
    if set.len() > CONFIG_ENTRIES_MAX || remove.len() > CONFIG_ENTRIES_MAX {
        return Err(config_limit());
    }
    let topic_path = key.path();
    let mut named = BTreeSet::new();
    for (config_key, value) in &set {
        validate::config_entry(&topic_path, config_key, value)?;
        if !named.insert(config_key.as_str()) {
            return Err(duplicate_key(&topic_path, config_key));
        }
    }
    for config_key in &remove {
        validate::name(Kind::ConfigKey, config_key)?;
        if !named.insert(config_key.as_str()) {
            return Err(duplicate_key(&topic_path, config_key));
        }
        if !config.contains_key(config_key) {
            return Err(Rejection::NotFound {
                kind: Kind::ConfigKey,
                name: path(&[&topic_path, config_key]),
            });
        }
    }
    // Each removed key exists and is set nowhere else, so each removal
    // shrinks the map by one.
    let mut config = config.clone();
    let len_before = config.len();
    for config_key in &remove {
        config.remove(config_key);
    }
    assert_eq!(config.len(), len_before - remove.len());
    for (config_key, value) in set {
        config.insert(config_key, value);
    }
    if config.len() > CONFIG_ENTRIES_MAX {
        return Err(config_limit());
    }
    Ok(config)
}

fn config_limit() -> Rejection {
    Rejection::LimitExceeded {
        what: Limit::ConfigEntries,
        max: CONFIG_ENTRIES_MAX as u64,
    }
}

fn duplicate_key(topic_path: &str, config_key: &str) -> Rejection {
    Rejection::Duplicate {
        kind: Kind::ConfigKey,
        name: path(&[topic_path, config_key]),
    }
}

fn check_record(key: &TopicKey, topic: &Topic) -> Result<(), String> {
    let checks = || -> Result<(), Rejection> {
        validate::name(Kind::Stream, &key.stream)?;
        validate::name(Kind::Topic, &key.topic)?;
        check_partitions(key, 0, topic.partitions)?;
        if topic.config.len() > CONFIG_ENTRIES_MAX {
            return Err(config_limit());
        }
        let topic_path = key.path();
        topic.config.iter().try_for_each(|(config_key, value)| {
            validate::config_entry(&topic_path, config_key, value)
        })
    };
    checks().map_err(|e| format!("topic {:?}: {e}", key.path()))
}

/// Section format, version 1: [`crate::machine::RecordsEncoder`] records of
/// `(TopicKey, Topic)` in key order; a topic's config is a sequence of
/// `(key, value)` pairs in key order.
impl Member for Topics {
    const SECTION: &'static str = "broker.topics";
    const VERSION: u32 = 1;
    const READABLE: RangeInclusive<u32> = 1..=1;

    fn freeze(&self) -> Box<dyn SectionEncoder> {
        freeze_map(&self.map)
    }

    fn restore(version: u32, bytes: &[u8]) -> Result<Self, RestoreError> {
        codec::check_version::<Self>(version)?;
        let map = restore_map(bytes, TOPICS_MAX, check_record)?;
        Ok(Topics { map })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The borrowed lookup finds exactly the owned key with the same parts,
    /// also where the parts' boundaries differ ("a" + "bc" against
    /// "ab" + "c").
    #[test]
    fn lookups_by_borrowed_parts_match_owned_keys() {
        let keys = [("a", "bc"), ("ab", "c"), ("abc", ""), ("", "abc")];
        let mut map: OrdMap<TopicKey, usize> = OrdMap::new();
        for (i, &(s, t)) in keys.iter().take(2).enumerate() {
            map.insert(TopicKey::new(s, t), i);
        }
        for (i, &(s, t)) in keys.iter().enumerate() {
            let borrowed = map.get(&[s, t] as &dyn KeyParts<2>).copied();
            let owned = map.get(&TopicKey::new(s, t)).copied();
            assert_eq!(borrowed, owned, "{s}/{t}");
            assert_eq!(borrowed, (i < 2).then_some(i), "{s}/{t}");
        }
    }
}
