//! Deterministic command generators: random mixes for simulations and
//! fuzzing, and bulk states for benchmarks.
//!
//! Both take no dependency on a random number crate: randomness comes from a
//! caller's `FnMut() -> u64` (see [`splitmix64`]), so a simulation seed
//! replays exactly.

use super::command::{
    Action, Command, GroupCommand, Permission, Resource, StreamCommand, TopicCommand, UserCommand,
};
use super::NAME_BYTES_MAX;

const STREAM_NAMES: [&str; 3] = ["s0", "s1", "s2"];
const TOPIC_NAMES: [&str; 3] = ["t0", "t1", "t2"];
const GROUP_NAMES: [&str; 2] = ["g0", "g1"];
const MEMBER_NAMES: [&str; 4] = ["m0", "m1", "m2", "m3"];
const USER_NAMES: [&str; 3] = ["alice", "bob", "carol"];
const CONFIG_KEYS: [&str; 5] = [
    "retention.ms",
    "segment.bytes",
    "cleanup.policy",
    "max.message.bytes",
    "bad key",
];
const CONFIG_VALUES: [&str; 6] = ["1", "604800000", "compact", "delete", "", "tab\there"];
const PASSWORD_HASHES: [&str; 5] = [
    "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
    "$scrypt$ln=15,r=8,p=1$c2FsdA$aGFzaA",
    "$pbkdf2-sha256$i=600000$c2FsdA$aGFzaA",
    "hunter2",
    "$$",
];
/// Most entries in a generated list (config entries, permissions).
const LIST_LENGTH_MAX: u64 = 4;

/// A splitmix64 generator seeded with `seed`: small, fast and good enough
/// to drive simulations.
pub fn splitmix64(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A random command over a small name space, so that duplicates, missing
/// parents, children blocking deletes and out-of-range partitions happen
/// often; about one name in thirty-two is malformed, and limits, permissions,
/// hashes and config values are sometimes invalid too.
pub fn random_command(rng: &mut impl FnMut() -> u64) -> Command {
    let stream = name(rng, &STREAM_NAMES);
    let topic = name(rng, &TOPIC_NAMES);
    let group = name(rng, &GROUP_NAMES);
    match below(rng, 100) {
        0..=7 => Command::Stream(StreamCommand::Create { name: stream }),
        8..=10 => Command::Stream(StreamCommand::Delete { name: stream }),
        11..=24 => Command::Topic(TopicCommand::Create {
            stream,
            name: topic,
            partitions: if below(rng, 50) == 0 {
                super::PARTITIONS_MAX + 1
            } else {
                below(rng, 6) as u32
            },
            config: config_entries(rng),
        }),
        25..=28 => Command::Topic(TopicCommand::Delete {
            stream,
            name: topic,
        }),
        29..=36 => {
            let remove_count = below(rng, 3);
            Command::Topic(TopicCommand::UpdateConfig {
                stream,
                name: topic,
                set: config_entries(rng),
                remove: (0..remove_count).map(|_| pick(rng, &CONFIG_KEYS)).collect(),
            })
        }
        37..=41 => Command::Topic(TopicCommand::AddPartitions {
            stream,
            name: topic,
            count: if below(rng, 50) == 0 {
                u32::MAX
            } else {
                below(rng, 4) as u32
            },
        }),
        42..=51 => Command::Group(GroupCommand::Create {
            stream,
            topic,
            name: group,
        }),
        52..=55 => Command::Group(GroupCommand::Delete {
            stream,
            topic,
            name: group,
        }),
        56..=63 => Command::Group(GroupCommand::Join {
            stream,
            topic,
            group,
            member: name(rng, &MEMBER_NAMES),
        }),
        64..=68 => Command::Group(GroupCommand::Leave {
            stream,
            topic,
            group,
            member: name(rng, &MEMBER_NAMES),
        }),
        69..=80 => Command::Group(GroupCommand::CommitOffset {
            stream,
            topic,
            group,
            partition: below(rng, 8) as u32,
            offset: below(rng, 1000),
        }),
        81..=86 => Command::User(UserCommand::Create {
            name: name(rng, &USER_NAMES),
            password_hash: pick(rng, &PASSWORD_HASHES),
            permissions: permissions(rng),
        }),
        87..=89 => Command::User(UserCommand::Delete {
            name: name(rng, &USER_NAMES),
        }),
        90..=94 => Command::User(UserCommand::SetPermissions {
            name: name(rng, &USER_NAMES),
            permissions: permissions(rng),
        }),
        _ => Command::User(UserCommand::SetPasswordHash {
            name: name(rng, &USER_NAMES),
            password_hash: pick(rng, &PASSWORD_HASHES),
        }),
    }
}

fn below(rng: &mut impl FnMut() -> u64, bound: u64) -> u64 {
    rng() % bound
}

fn pick(rng: &mut impl FnMut() -> u64, pool: &[&str]) -> String {
    let index = below(rng, pool.len() as u64) as usize;
    pool.get(index).copied().unwrap_or_default().to_owned()
}

/// A name from `pool`, or now and then a malformed one.
fn name(rng: &mut impl FnMut() -> u64, pool: &[&str]) -> String {
    if below(rng, 32) != 0 {
        return pick(rng, pool);
    }
    match below(rng, 4) {
        0 => String::new(),
        1 => "bad/name".to_owned(),
        2 => "with space".to_owned(),
        _ => "x".repeat(NAME_BYTES_MAX + 1),
    }
}

fn config_entries(rng: &mut impl FnMut() -> u64) -> Vec<(String, String)> {
    let count = below(rng, LIST_LENGTH_MAX);
    (0..count)
        .map(|_| (pick(rng, &CONFIG_KEYS), pick(rng, &CONFIG_VALUES)))
        .collect()
}

fn permissions(rng: &mut impl FnMut() -> u64) -> Vec<Permission> {
    let count = below(rng, LIST_LENGTH_MAX + 1);
    (0..count)
        .map(|_| {
            let action = match below(rng, 4) {
                0 => Action::Read,
                1 => Action::Write,
                2 => Action::Manage,
                _ => Action::Admin,
            };
            let resource = match below(rng, 4) {
                0 => Resource::Cluster,
                1 => Resource::Stream {
                    stream: name(rng, &STREAM_NAMES),
                },
                _ => Resource::Topic {
                    stream: name(rng, &STREAM_NAMES),
                    topic: name(rng, &TOPIC_NAMES),
                },
            };
            Permission { action, resource }
        })
        .collect()
}

/// Topics per stream in a bulk state.
pub const BULK_TOPICS_PER_STREAM: u64 = 1024;
/// Partitions per topic in a bulk state.
pub const BULK_PARTITIONS: u32 = 16;
/// Config entries per topic in a bulk state.
pub const BULK_CONFIG_ENTRIES: usize = 32;
/// Length of each config value in a bulk state, in bytes.
pub const BULK_CONFIG_VALUE_BYTES: usize = 1000;
/// Members of each topic's one group in a bulk state.
pub const BULK_GROUP_MEMBERS: usize = 4;
/// Users in a bulk state (a fixed handful: users are few in practice).
pub const BULK_USERS: usize = 16;

/// About how many snapshot bytes one bulk unit (a topic, its config, its
/// group with members and offsets) takes: the config values dominate; names
/// and varints add roughly 40 bytes per entry and a few hundred per unit.
pub const BULK_UNIT_BYTES: u64 =
    (BULK_CONFIG_ENTRIES * (BULK_CONFIG_VALUE_BYTES + 12) + 64 + 40 + BULK_GROUP_MEMBERS * 16)
        as u64
        + BULK_PARTITIONS as u64 * 6;

const _: () = assert!(BULK_CONFIG_ENTRIES <= super::CONFIG_ENTRIES_MAX);
const _: () = assert!(BULK_CONFIG_VALUE_BYTES <= super::CONFIG_VALUE_BYTES_MAX);
const _: () = assert!(BULK_PARTITIONS <= super::PARTITIONS_MAX);
const _: () = assert!(BULK_GROUP_MEMBERS <= super::GROUP_MEMBERS_MAX);
const _: () = assert!(BULK_USERS <= super::USERS_MAX);

/// Commands that build a state whose snapshot is about `target_bytes`
/// (within a few percent once past a few units), every one valid when
/// applied in order to an empty [`super::Metadata`]. Lazy, so a benchmark
/// building a 1 GiB state holds one unit's commands at a time.
///
/// Shape: [`BULK_USERS`] users, then units of one topic with
/// [`BULK_PARTITIONS`] partitions and [`BULK_CONFIG_ENTRIES`] config
/// entries of [`BULK_CONFIG_VALUE_BYTES`], one group on it with
/// [`BULK_GROUP_MEMBERS`] members and an offset per partition;
/// [`BULK_TOPICS_PER_STREAM`] topics per stream.
pub fn bulk_commands(target_bytes: u64) -> impl Iterator<Item = Command> {
    let units = target_bytes.div_ceil(BULK_UNIT_BYTES);
    let users = (0..BULK_USERS).map(|user| {
        Command::User(UserCommand::Create {
            name: format!("user-{user:04}"),
            password_hash: PASSWORD_HASHES[0].to_owned(),
            permissions: vec![
                Permission {
                    action: Action::Read,
                    resource: Resource::Cluster,
                },
                Permission {
                    action: Action::Write,
                    resource: Resource::Stream {
                        stream: bulk_stream(user as u64),
                    },
                },
            ],
        })
    });
    users.chain((0..units).flat_map(bulk_unit))
}

fn bulk_stream(unit: u64) -> String {
    format!("bulk-{:05}", unit / BULK_TOPICS_PER_STREAM)
}

fn bulk_unit(unit: u64) -> Vec<Command> {
    let stream = bulk_stream(unit);
    let topic = format!("topic-{unit:07}");
    let group = "readers".to_owned();
    let mut commands = Vec::with_capacity(3 + BULK_GROUP_MEMBERS + BULK_PARTITIONS as usize);
    if unit.is_multiple_of(BULK_TOPICS_PER_STREAM) {
        commands.push(Command::Stream(StreamCommand::Create {
            name: stream.clone(),
        }));
    }
    let config = (0..BULK_CONFIG_ENTRIES)
        .map(|entry| {
            let value = (0..BULK_CONFIG_VALUE_BYTES)
                .map(|i| {
                    // Printable and varied, so the bytes are not trivially
                    // compressible.
                    let mixed = (unit as usize)
                        .wrapping_mul(31)
                        .wrapping_add(entry * 7)
                        .wrapping_add(i * 13);
                    char::from(b'!' + (mixed % 94) as u8)
                })
                .collect();
            (format!("key-{entry:04}"), value)
        })
        .collect();
    commands.push(Command::Topic(TopicCommand::Create {
        stream: stream.clone(),
        name: topic.clone(),
        partitions: BULK_PARTITIONS,
        config,
    }));
    commands.push(Command::Group(GroupCommand::Create {
        stream: stream.clone(),
        topic: topic.clone(),
        name: group.clone(),
    }));
    for member in 0..BULK_GROUP_MEMBERS {
        commands.push(Command::Group(GroupCommand::Join {
            stream: stream.clone(),
            topic: topic.clone(),
            group: group.clone(),
            member: format!("member-{member:02}"),
        }));
    }
    for partition in 0..BULK_PARTITIONS {
        commands.push(Command::Group(GroupCommand::CommitOffset {
            stream: stream.clone(),
            topic: topic.clone(),
            group: group.clone(),
            partition,
            offset: unit
                .wrapping_mul(1_000_003)
                .wrapping_add(u64::from(partition))
                % (1 << 40),
        }));
    }
    commands
}
