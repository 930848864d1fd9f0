//! Pins the broker metadata machines' contract: every validation rule
//! refuses with its typed rejection and leaves the state unchanged; a
//! snapshot (per member and for the whole mux) restores to an equal state,
//! also after random command mixes; a frozen image reflects the state at
//! freeze time however much is applied before it is encoded; missing,
//! unknown and unsupported sections are refused by name; and hostile
//! section bytes (truncated, mutated, arbitrary) give an error or a valid
//! state, never a panic.

use proptest::prelude::*;
use ringstore::broker::{
    gen, Action, Command, ConfigValueError, Group, GroupCommand, GroupKey, Groups, Kind, Limit,
    Metadata, NameError, PasswordHashError, Permission, PermissionError, Rejection, Reply,
    Resource, StreamCommand, Streams, Topic, TopicCommand, TopicKey, Topics, UserCommand, Users,
    CONFIG_ENTRIES_MAX, CONFIG_VALUE_BYTES_MAX, GROUP_MEMBERS_MAX, NAME_BYTES_MAX, PARTITIONS_MAX,
    PASSWORD_HASH_BYTES_MAX, PERMISSIONS_MAX, STREAMS_MAX, USERS_MAX,
};
use ringstore::machine::{
    decode, encode, EncodeProgress, FrozenSection, RestoreError, SectionEncoder, SectionSet,
};
use ringstore::mux::Member;
use ringstore::{OpId, StateMachine};

const HASH: &str = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
/// Bytes asked of an encoder per step.
const STEP_BYTES: usize = 64;

fn at(op: u64) -> OpId {
    OpId { op, epoch: 7 }
}

fn s(text: &str) -> String {
    text.to_owned()
}

// ---- command builders -------------------------------------------------

fn create_stream(name: &str) -> Command {
    Command::Stream(StreamCommand::Create { name: s(name) })
}

fn delete_stream(name: &str) -> Command {
    Command::Stream(StreamCommand::Delete { name: s(name) })
}

fn create_topic(stream: &str, name: &str, partitions: u32) -> Command {
    create_topic_with(stream, name, partitions, vec![])
}

fn create_topic_with(
    stream: &str,
    name: &str,
    partitions: u32,
    config: Vec<(String, String)>,
) -> Command {
    Command::Topic(TopicCommand::Create {
        stream: s(stream),
        name: s(name),
        partitions,
        config,
    })
}

fn delete_topic(stream: &str, name: &str) -> Command {
    Command::Topic(TopicCommand::Delete {
        stream: s(stream),
        name: s(name),
    })
}

fn update_config(stream: &str, name: &str, set: &[(&str, &str)], remove: &[&str]) -> Command {
    Command::Topic(TopicCommand::UpdateConfig {
        stream: s(stream),
        name: s(name),
        set: set.iter().map(|(k, v)| (s(k), s(v))).collect(),
        remove: remove.iter().map(|k| s(k)).collect(),
    })
}

fn add_partitions(stream: &str, name: &str, count: u32) -> Command {
    Command::Topic(TopicCommand::AddPartitions {
        stream: s(stream),
        name: s(name),
        count,
    })
}

fn create_group(stream: &str, topic: &str, name: &str) -> Command {
    Command::Group(GroupCommand::Create {
        stream: s(stream),
        topic: s(topic),
        name: s(name),
    })
}

fn delete_group(stream: &str, topic: &str, name: &str) -> Command {
    Command::Group(GroupCommand::Delete {
        stream: s(stream),
        topic: s(topic),
        name: s(name),
    })
}

fn join(stream: &str, topic: &str, group: &str, member: &str) -> Command {
    Command::Group(GroupCommand::Join {
        stream: s(stream),
        topic: s(topic),
        group: s(group),
        member: s(member),
    })
}

fn leave(stream: &str, topic: &str, group: &str, member: &str) -> Command {
    Command::Group(GroupCommand::Leave {
        stream: s(stream),
        topic: s(topic),
        group: s(group),
        member: s(member),
    })
}

fn commit(stream: &str, topic: &str, group: &str, partition: u32, offset: u64) -> Command {
    Command::Group(GroupCommand::CommitOffset {
        stream: s(stream),
        topic: s(topic),
        group: s(group),
        partition,
        offset,
    })
}

fn create_user(name: &str, password_hash: &str, permissions: Vec<Permission>) -> Command {
    Command::User(UserCommand::Create {
        name: s(name),
        password_hash: s(password_hash),
        permissions,
    })
}

fn set_permissions(name: &str, permissions: Vec<Permission>) -> Command {
    Command::User(UserCommand::SetPermissions {
        name: s(name),
        permissions,
    })
}

fn set_hash(name: &str, password_hash: &str) -> Command {
    Command::User(UserCommand::SetPasswordHash {
        name: s(name),
        password_hash: s(password_hash),
    })
}

fn grant(action: Action, resource: Resource) -> Permission {
    Permission { action, resource }
}

fn on_stream(stream: &str) -> Resource {
    Resource::Stream { stream: s(stream) }
}

fn on_topic(stream: &str, topic: &str) -> Resource {
    Resource::Topic {
        stream: s(stream),
        topic: s(topic),
    }
}

// ---- fixtures and snapshot helpers -------------------------------------

/// Applies `commands` from op 1 on, requiring each to be accepted.
fn build(commands: Vec<Command>) -> Metadata {
    let mut metadata = Metadata::default();
    for (i, command) in commands.into_iter().enumerate() {
        let described = format!("{command:?}");
        if let Err(e) = metadata.apply(at(i as u64 + 1), command) {
            panic!("op {} ({described}) refused: {e}", i + 1);
        }
    }
    metadata
}

/// A state touching every member and every kind of nested data.
fn sample() -> Metadata {
    build(vec![
        create_stream("orders"),
        create_stream("audit"),
        create_topic_with(
            "orders",
            "created",
            4,
            vec![
                (s("retention.ms"), s("604800000")),
                (s("cleanup.policy"), s("delete")),
            ],
        ),
        create_topic("orders", "shipped", 2),
        create_topic("audit", "log", 1),
        create_group("orders", "created", "billing"),
        create_group("orders", "created", "search"),
        join("orders", "created", "billing", "billing-1"),
        join("orders", "created", "billing", "billing-2"),
        commit("orders", "created", "billing", 0, 42),
        commit("orders", "created", "billing", 3, 7),
        create_user("alice", HASH, vec![grant(Action::Admin, Resource::Cluster)]),
        create_user(
            "bob",
            HASH,
            vec![
                grant(Action::Read, on_stream("orders")),
                grant(Action::Write, on_topic("audit", "log")),
            ],
        ),
    ])
}

/// Runs an encoder to completion, `step_bytes` at a time.
fn run_encoder(mut encoder: Box<dyn SectionEncoder>, step_bytes: usize) -> Vec<u8> {
    let mut out = Vec::new();
    // A section can never need more steps than it has bytes plus one.
    for _ in 0..1_000_000 {
        let goal = out.len() + step_bytes;
        match encoder.encode_some(&mut out, goal) {
            Ok(EncodeProgress::Done) => return out,
            Ok(EncodeProgress::More) => {}
            Err(e) => panic!("encoding failed: {e}"),
        }
    }
    panic!("encoder never finished");
}

fn encode_sections(frozen: Vec<FrozenSection>, step_bytes: usize) -> Vec<(String, u32, Vec<u8>)> {
    frozen
        .into_iter()
        .map(|section| {
            (
                section.name.to_owned(),
                section.version,
                run_encoder(section.encoder, step_bytes),
            )
        })
        .collect()
}

fn section_set(sections: Vec<(String, u32, Vec<u8>)>) -> SectionSet {
    let mut set = SectionSet::new();
    for (name, version, bytes) in sections {
        set.insert(name, version, bytes)
            .expect("section names are unique");
    }
    set
}

/// Restores as the engine does: the machine takes its sections, then any
/// leftover is refused.
fn restore(sections: Vec<(String, u32, Vec<u8>)>) -> Result<Metadata, RestoreError> {
    let mut set = section_set(sections);
    let metadata = Metadata::restore(&mut set)?;
    set.finish()?;
    Ok(metadata)
}

fn round_trip(metadata: &Metadata, step_bytes: usize) -> Metadata {
    restore(encode_sections(metadata.freeze(), step_bytes)).expect("own snapshot restores")
}

fn member_bytes<M: Member>(member: &M) -> Vec<u8> {
    run_encoder(member.freeze(), STEP_BYTES)
}

fn member_round_trip<M: Member>(member: &M) -> M {
    M::restore(M::VERSION, &member_bytes(member)).expect("own section restores")
}

/// Applies `command` to a clone of `metadata` and checks that it is refused
/// with `expected` and that the clone still equals the original.
fn assert_refused(metadata: &Metadata, command: Command, expected: Rejection) {
    let mut after = metadata.clone();
    let described = format!("{command:?}");
    assert_eq!(
        after.apply(at(1_000), command),
        Err(expected),
        "command {described}"
    );
    assert_eq!(&after, metadata, "a refused command changed the state");
}

fn apply_ok(metadata: &mut Metadata, op: u64, command: Command) -> Reply {
    let described = format!("{command:?}");
    metadata
        .apply(at(op), command)
        .unwrap_or_else(|e| panic!("{described} refused: {e}"))
}

fn invalid_name(kind: Kind, name: &str, reason: NameError) -> Rejection {
    Rejection::InvalidName {
        kind,
        name: s(name),
        reason,
    }
}

fn limit(what: Limit, max: usize) -> Rejection {
    Rejection::LimitExceeded {
        what,
        max: max as u64,
    }
}

// ---- accepted commands --------------------------------------------------

#[test]
fn ids_are_the_creating_ops_and_replies_describe_the_change() {
    let mut m = Metadata::default();
    assert_eq!(
        apply_ok(&mut m, 5, create_stream("a")),
        Reply::Created { id: 5 }
    );
    assert_eq!(m.stream("a").map(|st| (st.id, st.epoch)), Some((5, 7)));
    assert_eq!(
        apply_ok(&mut m, 6, create_topic("a", "t", 2)),
        Reply::Created { id: 6 }
    );
    assert_eq!(
        apply_ok(&mut m, 7, add_partitions("a", "t", 3)),
        Reply::PartitionsAdded { partitions: 5 }
    );
    assert_eq!(
        apply_ok(
            &mut m,
            8,
            update_config("a", "t", &[("retention.ms", "10")], &[])
        ),
        Reply::Updated
    );
    assert_eq!(
        apply_ok(
            &mut m,
            9,
            update_config("a", "t", &[("segment.bytes", "1")], &["retention.ms"])
        ),
        Reply::Updated
    );
    let topic = m.topic("a", "t").expect("created");
    assert_eq!(topic.partitions, 5);
    assert_eq!(
        topic.config.get("segment.bytes").map(String::as_str),
        Some("1")
    );
    assert!(topic.config.get("retention.ms").is_none());

    assert_eq!(
        apply_ok(&mut m, 10, create_group("a", "t", "g")),
        Reply::Created { id: 10 }
    );
    assert_eq!(
        apply_ok(&mut m, 11, join("a", "t", "g", "m1")),
        Reply::Joined { generation: 1 }
    );
    assert_eq!(
        apply_ok(&mut m, 12, join("a", "t", "g", "m2")),
        Reply::Joined { generation: 2 }
    );
    assert_eq!(
        apply_ok(&mut m, 13, leave("a", "t", "g", "m1")),
        Reply::Left { generation: 3 }
    );
    assert_eq!(
        apply_ok(&mut m, 14, commit("a", "t", "g", 4, 99)),
        Reply::OffsetCommitted
    );
    // A group may rewind.
    assert_eq!(
        apply_ok(&mut m, 15, commit("a", "t", "g", 4, 1)),
        Reply::OffsetCommitted
    );
    let group = m.group("a", "t", "g").expect("created");
    assert_eq!(group.generation, 3);
    assert_eq!(group.members.get("m2"), Some(&12));
    assert!(group.members.get("m1").is_none());
    assert_eq!(group.offsets.get(&4), Some(&1));

    assert_eq!(
        apply_ok(&mut m, 16, create_user("u", HASH, vec![])),
        Reply::Created { id: 16 }
    );
    let perms = vec![grant(Action::Manage, on_topic("a", "t"))];
    assert_eq!(
        apply_ok(&mut m, 17, set_permissions("u", perms.clone())),
        Reply::Updated
    );
    let other_hash = "$scrypt$ln=15,r=8,p=1$c2FsdA$aGFzaA";
    assert_eq!(
        apply_ok(&mut m, 18, set_hash("u", other_hash)),
        Reply::Updated
    );
    let user = m.user("u").expect("created");
    assert_eq!(user.permissions, perms);
    assert_eq!(user.password_hash, other_hash);
    assert!(
        !format!("{user:?}").contains("scrypt"),
        "Debug must not print hashes"
    );

    // Children first, then parents.
    assert_eq!(
        apply_ok(&mut m, 19, delete_group("a", "t", "g")),
        Reply::Deleted
    );
    assert_eq!(apply_ok(&mut m, 20, delete_topic("a", "t")), Reply::Deleted);
    assert_eq!(apply_ok(&mut m, 21, delete_stream("a")), Reply::Deleted);
    let delete_user = Command::User(UserCommand::Delete { name: s("u") });
    assert_eq!(apply_ok(&mut m, 22, delete_user), Reply::Deleted);
    assert_eq!(m, Metadata::default());
    m.check().expect("consistent");
}

#[test]
fn names_may_use_the_whole_allowed_alphabet_and_length() {
    let longest = "a".repeat(NAME_BYTES_MAX);
    let m = build(vec![
        create_stream("Az09._-"),
        create_stream(&longest),
        create_topic(&longest, &longest, PARTITIONS_MAX),
    ]);
    assert_eq!(m.streams().len(), 2);
    assert_eq!(
        m.topic(&longest, &longest).map(|t| t.partitions),
        Some(PARTITIONS_MAX)
    );
}

// ---- validation rules: typed rejection, state unchanged -----------------

#[test]
fn malformed_names_are_refused_naming_kind_and_reason() {
    let m = sample();
    let too_long = "x".repeat(NAME_BYTES_MAX + 1);
    let too_long_error = NameError::TooLong {
        bytes: NAME_BYTES_MAX + 1,
        max: NAME_BYTES_MAX,
    };
    let bad = |character| NameError::BadCharacter { character };
    let cases = [
        (
            create_stream(""),
            invalid_name(Kind::Stream, "", NameError::Empty),
        ),
        (
            create_stream(&too_long),
            invalid_name(Kind::Stream, &too_long[..NAME_BYTES_MAX], too_long_error),
        ),
        (
            create_stream("a/b"),
            invalid_name(Kind::Stream, "a/b", bad('/')),
        ),
        (
            create_stream("a b"),
            invalid_name(Kind::Stream, "a b", bad(' ')),
        ),
        (
            create_stream("café"),
            invalid_name(Kind::Stream, "café", bad('é')),
        ),
        (
            delete_stream("*"),
            invalid_name(Kind::Stream, "*", bad('*')),
        ),
        // A malformed stream name is reported as such, not as a missing
        // parent.
        (
            create_topic("bad:", "t", 1),
            invalid_name(Kind::Stream, "bad:", bad(':')),
        ),
        (
            create_topic("orders", "", 1),
            invalid_name(Kind::Topic, "", NameError::Empty),
        ),
        (
            create_group("orders", "created", "g!"),
            invalid_name(Kind::Group, "g!", bad('!')),
        ),
        (
            join("orders", "created", "billing", "m\n"),
            invalid_name(Kind::Member, "m\n", bad('\n')),
        ),
        (
            create_user("root@host", HASH, vec![]),
            invalid_name(Kind::User, "root@host", bad('@')),
        ),
        (
            update_config("orders", "created", &[("bad key", "1")], &[]),
            invalid_name(Kind::ConfigKey, "bad key", bad(' ')),
        ),
        (
            update_config("orders", "created", &[], &[""]),
            invalid_name(Kind::ConfigKey, "", NameError::Empty),
        ),
    ];
    for (command, expected) in cases {
        assert_refused(&m, command, expected);
    }
}

#[test]
fn stream_rules() {
    let m = sample();
    assert_refused(
        &m,
        create_stream("orders"),
        Rejection::Duplicate {
            kind: Kind::Stream,
            name: s("orders"),
        },
    );
    assert_refused(
        &m,
        delete_stream("nope"),
        Rejection::NotFound {
            kind: Kind::Stream,
            name: s("nope"),
        },
    );
    assert_refused(
        &m,
        delete_stream("orders"),
        Rejection::HasChildren {
            kind: Kind::Stream,
            name: s("orders"),
            children: Kind::Topic,
            count: 2,
        },
    );
}

#[test]
fn stream_count_is_bounded() {
    let mut m = Metadata::default();
    for i in 0..STREAMS_MAX as u64 {
        apply_ok(&mut m, i + 1, create_stream(&format!("s{i}")));
    }
    assert_refused(
        &m,
        create_stream("one-more"),
        limit(Limit::Streams, STREAMS_MAX),
    );
}

#[test]
fn topic_rules() {
    let m = sample();
    let topic_path = |name: &str| format!("orders/{name}");
    assert_refused(
        &m,
        create_topic("nope", "t", 1),
        Rejection::MissingParent {
            kind: Kind::Topic,
            name: s("nope/t"),
            parent: s("nope"),
        },
    );
    assert_refused(
        &m,
        create_topic("orders", "created", 1),
        Rejection::Duplicate {
            kind: Kind::Topic,
            name: topic_path("created"),
        },
    );
    assert_refused(
        &m,
        create_topic("orders", "t", 0),
        Rejection::InvalidPartitionCount {
            topic: topic_path("t"),
            partitions: 0,
        },
    );
    assert_refused(
        &m,
        create_topic("orders", "t", PARTITIONS_MAX + 1),
        limit(Limit::Partitions, PARTITIONS_MAX as usize),
    );
    assert_refused(
        &m,
        create_topic_with("orders", "t", 1, vec![(s("k"), s("1")), (s("k"), s("2"))]),
        Rejection::Duplicate {
            kind: Kind::ConfigKey,
            name: s("orders/t/k"),
        },
    );
    assert_refused(
        &m,
        create_topic_with(
            "orders",
            "t",
            1,
            vec![(s("k"), "v".repeat(CONFIG_VALUE_BYTES_MAX + 1))],
        ),
        Rejection::InvalidConfigValue {
            key: s("orders/t/k"),
            reason: ConfigValueError::TooLong {
                bytes: CONFIG_VALUE_BYTES_MAX + 1,
                max: CONFIG_VALUE_BYTES_MAX,
            },
        },
    );
    assert_refused(
        &m,
        create_topic_with("orders", "t", 1, vec![(s("k"), s("a\u{7}"))]),
        Rejection::InvalidConfigValue {
            key: s("orders/t/k"),
            reason: ConfigValueError::ControlCharacter { character: '\u{7}' },
        },
    );
    let too_many = (0..=CONFIG_ENTRIES_MAX)
        .map(|i| (format!("k{i}"), s("v")))
        .collect();
    assert_refused(
        &m,
        create_topic_with("orders", "t", 1, too_many),
        limit(Limit::ConfigEntries, CONFIG_ENTRIES_MAX),
    );
    assert_refused(
        &m,
        delete_topic("orders", "nope"),
        Rejection::NotFound {
            kind: Kind::Topic,
            name: topic_path("nope"),
        },
    );
    assert_refused(
        &m,
        delete_topic("orders", "created"),
        Rejection::HasChildren {
            kind: Kind::Topic,
            name: topic_path("created"),
            children: Kind::Group,
            count: 2,
        },
    );
}

#[test]
fn topic_update_rules() {
    let m = sample();
    assert_refused(
        &m,
        update_config("orders", "nope", &[("k", "v")], &[]),
        Rejection::NotFound {
            kind: Kind::Topic,
            name: s("orders/nope"),
        },
    );
    assert_refused(
        &m,
        update_config("orders", "created", &[], &["absent"]),
        Rejection::NotFound {
            kind: Kind::ConfigKey,
            name: s("orders/created/absent"),
        },
    );
    // A key both set and removed is ambiguous.
    assert_refused(
        &m,
        update_config(
            "orders",
            "created",
            &[("retention.ms", "1")],
            &["retention.ms"],
        ),
        Rejection::Duplicate {
            kind: Kind::ConfigKey,
            name: s("orders/created/retention.ms"),
        },
    );
    // Refused as a whole: the valid first entry is not applied either.
    assert_refused(
        &m,
        update_config("orders", "created", &[("ok", "1"), ("bad", "\u{0}")], &[]),
        Rejection::InvalidConfigValue {
            key: s("orders/created/bad"),
            reason: ConfigValueError::ControlCharacter { character: '\u{0}' },
        },
    );
    // The topic already has 2 entries; filling it past the limit is refused.
    let keys: Vec<String> = (0..CONFIG_ENTRIES_MAX - 1)
        .map(|i| format!("k{i}"))
        .collect();
    let set: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
    assert_refused(
        &m,
        update_config("orders", "created", &set, &[]),
        limit(Limit::ConfigEntries, CONFIG_ENTRIES_MAX),
    );
    // ... and accepted when the same update also removes an entry.
    let mut filled = m.clone();
    apply_ok(
        &mut filled,
        1_000,
        update_config("orders", "created", &set, &["cleanup.policy"]),
    );
    assert_eq!(
        filled.topic("orders", "created").map(|t| t.config.len()),
        Some(CONFIG_ENTRIES_MAX)
    );

    assert_refused(
        &m,
        add_partitions("orders", "created", 0),
        Rejection::InvalidPartitionCount {
            topic: s("orders/created"),
            partitions: 0,
        },
    );
    assert_refused(
        &m,
        add_partitions("orders", "created", u32::MAX),
        limit(Limit::Partitions, PARTITIONS_MAX as usize),
    );
    assert_refused(
        &m,
        add_partitions("orders", "created", PARTITIONS_MAX - 3),
        limit(Limit::Partitions, PARTITIONS_MAX as usize),
    );
    assert_refused(
        &m,
        add_partitions("orders", "nope", 1),
        Rejection::NotFound {
            kind: Kind::Topic,
            name: s("orders/nope"),
        },
    );
}

#[test]
fn group_rules() {
    let m = sample();
    assert_refused(
        &m,
        create_group("orders", "nope", "g"),
        Rejection::MissingParent {
            kind: Kind::Group,
            name: s("orders/nope/g"),
            parent: s("orders/nope"),
        },
    );
    assert_refused(
        &m,
        create_group("orders", "created", "billing"),
        Rejection::Duplicate {
            kind: Kind::Group,
            name: s("orders/created/billing"),
        },
    );
    let missing = Rejection::NotFound {
        kind: Kind::Group,
        name: s("orders/created/nope"),
    };
    assert_refused(
        &m,
        delete_group("orders", "created", "nope"),
        missing.clone(),
    );
    assert_refused(&m, join("orders", "created", "nope", "m"), missing.clone());
    assert_refused(&m, leave("orders", "created", "nope", "m"), missing.clone());
    // A missing group is reported before the partition is looked at.
    assert_refused(&m, commit("orders", "created", "nope", 99, 0), missing);
    assert_refused(
        &m,
        join("orders", "created", "billing", "billing-1"),
        Rejection::Duplicate {
            kind: Kind::Member,
            name: s("orders/created/billing/billing-1"),
        },
    );
    assert_refused(
        &m,
        leave("orders", "created", "billing", "ghost"),
        Rejection::NotFound {
            kind: Kind::Member,
            name: s("orders/created/billing/ghost"),
        },
    );
    assert_refused(
        &m,
        commit("orders", "created", "billing", 4, 0),
        Rejection::PartitionOutOfRange {
            topic: s("orders/created"),
            partition: 4,
            partitions: 4,
        },
    );
    // Once the topic grows, the partition is in range.
    let mut grown = m.clone();
    apply_ok(&mut grown, 1_000, add_partitions("orders", "created", 1));
    apply_ok(
        &mut grown,
        1_001,
        commit("orders", "created", "billing", 4, 0),
    );
}

#[test]
fn group_members_are_bounded() {
    let mut m = build(vec![
        create_stream("s"),
        create_topic("s", "t", 1),
        create_group("s", "t", "g"),
    ]);
    for i in 0..GROUP_MEMBERS_MAX as u64 {
        apply_ok(&mut m, 100 + i, join("s", "t", "g", &format!("m{i}")));
    }
    assert_refused(
        &m,
        join("s", "t", "g", "late"),
        limit(Limit::GroupMembers, GROUP_MEMBERS_MAX),
    );
}

#[test]
fn user_rules() {
    let m = sample();
    assert_refused(
        &m,
        create_user("alice", HASH, vec![]),
        Rejection::Duplicate {
            kind: Kind::User,
            name: s("alice"),
        },
    );
    let missing = Rejection::NotFound {
        kind: Kind::User,
        name: s("nope"),
    };
    assert_refused(
        &m,
        Command::User(UserCommand::Delete { name: s("nope") }),
        missing.clone(),
    );
    assert_refused(&m, set_permissions("nope", vec![]), missing.clone());
    assert_refused(&m, set_hash("nope", HASH), missing);

    let hash_error = |reason| Rejection::InvalidPasswordHash {
        user: s("carol"),
        reason,
    };
    let long_hash = format!("$argon2id${}", "a".repeat(PASSWORD_HASH_BYTES_MAX));
    let hash_cases = [
        ("hunter2", PasswordHashError::NotPhc),
        ("", PasswordHashError::NotPhc),
        ("$$", PasswordHashError::NotPhc),
        ("$argon2id$", PasswordHashError::NotPhc),
        ("$argon2id", PasswordHashError::NotPhc),
        (
            "$ARGON$abc",
            PasswordHashError::BadCharacter { character: 'A' },
        ),
        (
            "$argon2id$v=19 x",
            PasswordHashError::BadCharacter { character: ' ' },
        ),
        (
            long_hash.as_str(),
            PasswordHashError::TooLong {
                bytes: long_hash.len(),
                max: PASSWORD_HASH_BYTES_MAX,
            },
        ),
    ];
    for (hash, reason) in hash_cases {
        assert_refused(
            &m,
            create_user("carol", hash, vec![]),
            hash_error(reason.clone()),
        );
        let on_existing = Rejection::InvalidPasswordHash {
            user: s("alice"),
            reason,
        };
        assert_refused(&m, set_hash("alice", hash), on_existing);
    }

    let permission_error = |reason| Rejection::InvalidPermission { reason };
    let permission_cases = [
        (
            vec![grant(Action::Admin, on_stream("orders"))],
            permission_error(PermissionError::AdminNotOnCluster {
                resource: on_stream("orders"),
            }),
        ),
        (
            vec![grant(Action::Admin, on_topic("orders", "created"))],
            permission_error(PermissionError::AdminNotOnCluster {
                resource: on_topic("orders", "created"),
            }),
        ),
        (
            vec![
                grant(Action::Read, Resource::Cluster),
                grant(Action::Read, Resource::Cluster),
            ],
            permission_error(PermissionError::Duplicate {
                permission: grant(Action::Read, Resource::Cluster),
            }),
        ),
        (
            vec![grant(Action::Read, on_stream("a/b"))],
            permission_error(PermissionError::BadResourceName {
                kind: Kind::Stream,
                name: s("a/b"),
                reason: NameError::BadCharacter { character: '/' },
            }),
        ),
        (
            vec![grant(Action::Write, on_topic("orders", ""))],
            permission_error(PermissionError::BadResourceName {
                kind: Kind::Topic,
                name: s(""),
                reason: NameError::Empty,
            }),
        ),
        (
            (0..=PERMISSIONS_MAX)
                .map(|i| grant(Action::Read, on_stream(&format!("s{i}"))))
                .collect(),
            limit(Limit::Permissions, PERMISSIONS_MAX),
        ),
    ];
    for (permissions, expected) in permission_cases {
        assert_refused(
            &m,
            create_user("carol", HASH, permissions.clone()),
            expected.clone(),
        );
        assert_refused(&m, set_permissions("bob", permissions), expected);
    }
    // Grants may name objects that do not exist (yet): they are ACLs.
    let mut granted = m.clone();
    apply_ok(
        &mut granted,
        1_000,
        set_permissions("bob", vec![grant(Action::Read, on_stream("future"))]),
    );
}

#[test]
fn user_count_is_bounded() {
    let mut m = Metadata::default();
    for i in 0..USERS_MAX as u64 {
        apply_ok(&mut m, i + 1, create_user(&format!("u{i}"), HASH, vec![]));
    }
    assert_refused(
        &m,
        create_user("late", HASH, vec![]),
        limit(Limit::Users, USERS_MAX),
    );
}

// ---- snapshots -------------------------------------------------------

#[test]
fn sample_round_trips_per_member_and_whole() {
    let m = sample();
    m.check().expect("consistent");
    assert_eq!(&member_round_trip(m.streams()), m.streams());
    assert_eq!(&member_round_trip(m.topics()), m.topics());
    assert_eq!(&member_round_trip(m.groups()), m.groups());
    assert_eq!(&member_round_trip(m.users()), m.users());
    for step_bytes in [1, 9, 64, 1 << 20] {
        assert_eq!(round_trip(&m, step_bytes), m);
    }
    assert_eq!(
        round_trip(&Metadata::default(), STEP_BYTES),
        Metadata::default()
    );
}

#[test]
fn a_section_started_in_a_nearly_full_buffer_still_decodes() {
    // The snapshot writer shares one buffer across sections, asks each step
    // to fill it to a fixed goal and then writes out whole chunks; a section
    // may start with the buffer a few bytes short of the goal.
    let m = sample();
    let goal_bytes = 1 << 10;
    for left_bytes in 0..=16 {
        let mut sections = Vec::new();
        for frozen in m.freeze() {
            let mut encoder = frozen.encoder;
            // The previous section's tail.
            let start = goal_bytes - left_bytes;
            let mut buffer = vec![0xAA; start];
            let mut written = Vec::new();
            loop {
                let progress = encoder
                    .encode_some(&mut buffer, goal_bytes)
                    .expect("encodes");
                while buffer.len() >= goal_bytes {
                    written.extend(buffer.drain(..goal_bytes));
                }
                if progress == EncodeProgress::Done {
                    break;
                }
            }
            written.append(&mut buffer);
            sections.push((
                frozen.name.to_owned(),
                frozen.version,
                written.split_off(start),
            ));
        }
        assert_eq!(
            restore(sections).expect("restores"),
            m,
            "{left_bytes} bytes left"
        );
    }
}

#[test]
fn sections_have_their_own_names_and_versions() {
    let frozen = sample().freeze();
    let names: Vec<(&str, u32)> = frozen.iter().map(|f| (f.name, f.version)).collect();
    assert_eq!(
        names,
        [
            (Streams::SECTION, Streams::VERSION),
            (Topics::SECTION, Topics::VERSION),
            (Groups::SECTION, Groups::VERSION),
            (Users::SECTION, Users::VERSION),
        ]
    );
    for name in [
        Streams::SECTION,
        Topics::SECTION,
        Groups::SECTION,
        Users::SECTION,
    ] {
        assert!(name.len() <= ringstore::machine::SECTION_NAME_BYTES_MAX);
    }
}

#[test]
fn equal_states_encode_to_equal_bytes() {
    // The same state built in a different order encodes identically.
    let forward = build(vec![create_stream("a"), create_stream("b")]);
    let mut backward = Metadata::default();
    apply_ok(&mut backward, 2, create_stream("b"));
    apply_ok(&mut backward, 1, create_stream("a"));
    assert_eq!(forward, backward);
    assert_eq!(
        encode_sections(forward.freeze(), STEP_BYTES),
        encode_sections(backward.freeze(), STEP_BYTES)
    );
}

#[test]
fn a_frozen_image_is_the_state_at_freeze_time() {
    let mut m = sample();
    let at_freeze = m.clone();
    let frozen = m.freeze();
    // Change every member, including nested maps of existing entries.
    let later = vec![
        create_stream("later"),
        delete_topic("orders", "shipped"),
        update_config(
            "orders",
            "created",
            &[("retention.ms", "1")],
            &["cleanup.policy"],
        ),
        add_partitions("orders", "created", 4),
        commit("orders", "created", "billing", 0, 1_000_000),
        join("orders", "created", "billing", "billing-3"),
        delete_group("orders", "created", "search"),
        set_hash("alice", "$scrypt$ln=15,r=8,p=1$c2FsdA$aGFzaA"),
        Command::User(UserCommand::Delete { name: s("bob") }),
    ];
    for (i, command) in later.into_iter().enumerate() {
        apply_ok(&mut m, 100 + i as u64, command);
    }
    assert_ne!(m, at_freeze);
    let restored = restore(encode_sections(frozen, STEP_BYTES)).expect("restores");
    assert_eq!(restored, at_freeze);
    assert_eq!(round_trip(&m, STEP_BYTES), m);
}

#[test]
fn an_empty_section_set_is_not_an_empty_broker() {
    // No snapshot means `Metadata::default()`; a snapshot without sections
    // is damaged, and restoring it as empty would lose the broker.
    let mut set = SectionSet::new();
    match Metadata::restore(&mut set) {
        Err(RestoreError::MissingSection { name }) => assert_eq!(name, Streams::SECTION),
        other => panic!("an empty set restored: {other:?}"),
    }
}

#[test]
fn missing_unknown_and_unsupported_sections_are_refused() {
    let sections = encode_sections(sample().freeze(), STEP_BYTES);
    for missing in [
        Streams::SECTION,
        Topics::SECTION,
        Groups::SECTION,
        Users::SECTION,
    ] {
        let kept = sections
            .iter()
            .filter(|(n, _, _)| n != missing)
            .cloned()
            .collect();
        match restore(kept) {
            Err(RestoreError::MissingSection { name }) => assert_eq!(name, missing),
            other => panic!("without {missing}: {other:?}"),
        }
    }

    let mut extra = sections.clone();
    extra.push((s("broker.quotas"), 1, vec![0; 8]));
    match restore(extra) {
        Err(RestoreError::UnknownSection { name, version }) => {
            assert_eq!((name.as_str(), version), ("broker.quotas", 1));
        }
        other => panic!("with an unknown section: {other:?}"),
    }

    for (index, name) in [
        Streams::SECTION,
        Topics::SECTION,
        Groups::SECTION,
        Users::SECTION,
    ]
    .into_iter()
    .enumerate()
    {
        for version in [0, 2, u32::MAX] {
            let mut bumped = sections.clone();
            bumped[index].1 = version;
            match restore(bumped) {
                Err(RestoreError::UnsupportedVersion {
                    name: found,
                    version: found_version,
                    readable,
                }) => {
                    assert_eq!((found.as_str(), found_version), (name, version));
                    assert_eq!(readable, 1..=1);
                }
                other => panic!("{name} at version {version}: {other:?}"),
            }
        }
    }
    // Members refuse foreign versions when restored directly, too.
    assert!(matches!(
        Topics::restore(2, &sections[1].2),
        Err(RestoreError::UnsupportedVersion { .. })
    ));
}

#[test]
fn every_truncation_of_every_section_is_an_error() {
    let sections = encode_sections(sample().freeze(), STEP_BYTES);
    for (index, (name, _, bytes)) in sections.iter().enumerate() {
        for cut in 0..bytes.len() {
            let mut truncated = sections.clone();
            truncated[index].2.truncate(cut);
            match restore(truncated) {
                Err(RestoreError::Decode { section, .. }) => assert_eq!(&section, name),
                other => panic!("{name} cut at {cut}: {other:?}"),
            }
        }
        // Trailing bytes after the last record are refused too.
        let mut longer = sections.clone();
        longer[index].2.push(0);
        assert!(restore(longer).is_err(), "{name} with a trailing byte");
    }
}

/// A section of `records`, in the order given, as `RecordsEncoder` writes
/// them: a little-endian count, then each record.
fn crafted<T: serde::Serialize>(records: &[T]) -> Vec<u8> {
    let mut bytes = (records.len() as u64).to_le_bytes().to_vec();
    for record in records {
        bytes.extend(encode(record).expect("encodes"));
    }
    bytes
}

fn expect_inconsistent(result: Result<impl std::fmt::Debug, RestoreError>, section: &str) {
    match result {
        Err(RestoreError::Inconsistent { section: found, .. }) => assert_eq!(found, section),
        other => panic!("expected {section} to be inconsistent, got {other:?}"),
    }
}

fn topic_value(partitions: u32) -> Topic {
    Topic {
        id: 1,
        epoch: 1,
        partitions,
        config: imbl::OrdMap::new(),
    }
}

fn group_value(generation: u64, offsets: &[(u32, u64)]) -> Group {
    Group {
        id: 1,
        epoch: 1,
        generation,
        members: imbl::OrdMap::new(),
        offsets: offsets.iter().copied().collect(),
    }
}

#[test]
fn sections_breaking_member_invariants_are_inconsistent() {
    let stream = ringstore::broker::Stream { id: 1, epoch: 1 };
    let section = |name: &str| name.to_owned();
    // Duplicate and out-of-order keys.
    let twice = crafted(&[(s("a"), stream.clone()), (s("a"), stream.clone())]);
    expect_inconsistent(
        restore_member_in::<Streams>(twice),
        &section(Streams::SECTION),
    );
    let backwards = crafted(&[(s("b"), stream.clone()), (s("a"), stream.clone())]);
    expect_inconsistent(
        restore_member_in::<Streams>(backwards),
        &section(Streams::SECTION),
    );
    // A name no command accepts.
    let bad_name = crafted(&[(s("a/b"), stream.clone())]);
    expect_inconsistent(
        restore_member_in::<Streams>(bad_name),
        &section(Streams::SECTION),
    );
    // A topic without partitions.
    let no_partitions = crafted(&[(TopicKey::new("s", "t"), topic_value(0))]);
    expect_inconsistent(
        restore_member_in::<Topics>(no_partitions),
        &section(Topics::SECTION),
    );
    // A user with a plaintext password.
    let plaintext = crafted(&[(
        s("u"),
        ringstore::broker::User {
            id: 1,
            epoch: 1,
            password_hash: s("hunter2"),
            permissions: vec![],
        },
    )]);
    expect_inconsistent(
        restore_member_in::<Users>(plaintext),
        &section(Users::SECTION),
    );
}

fn restore_member_in<M: Member + std::fmt::Debug>(bytes: Vec<u8>) -> Result<M, RestoreError> {
    let mut set = section_set(vec![(M::SECTION.to_owned(), M::VERSION, bytes)]);
    ringstore::mux::restore_member(&mut set)
}

#[test]
fn sections_breaking_cross_member_invariants_are_inconsistent() {
    let base = encode_sections(sample().freeze(), STEP_BYTES);
    let with = |index: usize, bytes: Vec<u8>| {
        let mut sections = base.clone();
        sections[index].2 = bytes;
        restore(sections)
    };
    // A topic whose stream is absent.
    let orphan_topic = crafted(&[(TopicKey::new("ghost", "t"), topic_value(1))]);
    expect_inconsistent(with(1, orphan_topic), Topics::SECTION);
    // A group whose topic is absent.
    let orphan_group = crafted(&[(GroupKey::new("orders", "ghost", "g"), group_value(0, &[]))]);
    expect_inconsistent(with(2, orphan_group), Groups::SECTION);
    // An offset beyond its topic's partitions ("orders/created" has 4).
    let beyond = crafted(&[(
        GroupKey::new("orders", "created", "g"),
        group_value(0, &[(4, 0)]),
    )]);
    expect_inconsistent(with(2, beyond), Groups::SECTION);
}

#[test]
fn a_group_at_the_last_generation_refuses_to_wrap() {
    let mut sections = encode_sections(sample().freeze(), STEP_BYTES);
    sections[2].2 = crafted(&[(
        GroupKey::new("orders", "created", "g"),
        group_value(u64::MAX, &[]),
    )]);
    let m = restore(sections).expect("a generation is any u64");
    assert_refused(
        &m,
        join("orders", "created", "g", "m"),
        Rejection::LimitExceeded {
            what: Limit::Generation,
            max: u64::MAX,
        },
    );
}

#[test]
fn commands_survive_the_journal_encoding() {
    let mut rng = gen::splitmix64(7);
    for _ in 0..1_000 {
        let command = gen::random_command(&mut rng);
        let bytes = encode(&command).expect("encodes");
        let decoded: Command = decode(&bytes).expect("decodes");
        assert_eq!(decoded, command);
    }
}

#[test]
fn bulk_state_is_valid_deterministic_and_near_its_target() {
    let target_bytes = 4 << 20;
    let commands = Metadata::bulk_state(target_bytes);
    assert_eq!(
        commands,
        gen::bulk_commands(target_bytes).collect::<Vec<_>>()
    );
    let m = build(commands);
    m.check().expect("consistent");
    let encoded: u64 = encode_sections(m.freeze(), 1 << 20)
        .iter()
        .map(|(_, _, bytes)| bytes.len() as u64)
        .sum();
    let ratio = encoded as f64 / target_bytes as f64;
    assert!(
        (0.95..1.10).contains(&ratio),
        "encoded {encoded} bytes for {target_bytes}"
    );
    assert_eq!(round_trip(&m, 1 << 16), m);
}

// ---- random mixes and hostile bytes ------------------------------------

/// Applies `count` random commands from `seed`, checking after each that a
/// refusal changed nothing. Returns the state and every result.
fn random_run(seed: u64, count: usize) -> (Metadata, Vec<Result<Reply, Rejection>>) {
    let mut rng = gen::splitmix64(seed);
    let mut m = Metadata::default();
    let mut results = Vec::with_capacity(count);
    for i in 0..count {
        let before = m.clone();
        let result = m.apply(at(i as u64 + 1), gen::random_command(&mut rng));
        if result.is_err() {
            assert_eq!(m, before, "a refused command changed the state");
        }
        results.push(result);
    }
    (m, results)
}

#[test]
fn random_mixes_exercise_both_outcomes() {
    let (m, results) = random_run(1, 2_000);
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert!(accepted > 200, "only {accepted} accepted");
    assert!(
        results.len() - accepted > 200,
        "only {} refused",
        results.len() - accepted
    );
    assert!(!m.topics().is_empty() && !m.groups().is_empty() && !m.users().is_empty());
    assert!(m.groups().iter().any(|(_, g)| !g.offsets.is_empty()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_commands_keep_invariants_replay_and_round_trip(
        seed in any::<u64>(),
        count in 0usize..400,
        step_bytes in 1usize..512,
    ) {
        let (m, results) = random_run(seed, count);
        m.check().map_err(|e| TestCaseError::fail(e.to_string()))?;
        // Replay gives the same replies and the same state.
        let (again, again_results) = random_run(seed, count);
        prop_assert_eq!(&again, &m);
        prop_assert_eq!(again_results, results);
        prop_assert_eq!(&round_trip(&m, step_bytes), &m);
        prop_assert_eq!(&member_round_trip(m.streams()), m.streams());
        prop_assert_eq!(&member_round_trip(m.topics()), m.topics());
        prop_assert_eq!(&member_round_trip(m.groups()), m.groups());
        prop_assert_eq!(&member_round_trip(m.users()), m.users());
    }

    #[test]
    fn arbitrary_member_bytes_restore_or_fail_cleanly(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        count in 0u64..4,
    ) {
        // Half the cases get a plausible count prefix, so decoding reaches
        // the records.
        let mut prefixed = count.to_le_bytes().to_vec();
        prefixed.extend_from_slice(&bytes);
        for input in [&bytes, &prefixed] {
            if let Ok(member) = Streams::restore(1, input) {
                prop_assert_eq!(&member_round_trip(&member), &member);
            }
            if let Ok(member) = Topics::restore(1, input) {
                prop_assert_eq!(&member_round_trip(&member), &member);
            }
            if let Ok(member) = Groups::restore(1, input) {
                prop_assert_eq!(&member_round_trip(&member), &member);
            }
            if let Ok(member) = Users::restore(1, input) {
                prop_assert_eq!(&member_round_trip(&member), &member);
            }
        }
    }

    #[test]
    fn mutated_snapshots_restore_to_valid_states_or_fail(
        seed in any::<u64>(),
        flips in proptest::collection::vec((0usize..4, any::<usize>(), 1u8..=255), 1..4),
    ) {
        let (m, _) = random_run(seed, 200);
        let mut sections = encode_sections(m.freeze(), STEP_BYTES);
        for (index, position, mask) in flips {
            let bytes = &mut sections[index].2;
            let position = position % bytes.len();
            bytes[position] ^= mask;
        }
        if let Ok(restored) = restore(sections) {
            restored.check().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&round_trip(&restored, STEP_BYTES), &restored);
        }
    }

    #[test]
    fn arbitrary_section_sets_restore_or_fail_cleanly(
        sections in proptest::collection::vec(
            (0usize..5, 0u32..3, proptest::collection::vec(any::<u8>(), 0..64)),
            0..6,
        ),
    ) {
        let names = [Streams::SECTION, Topics::SECTION, Groups::SECTION, Users::SECTION, "other"];
        let mut set = SectionSet::new();
        for (name, version, bytes) in sections {
            // Repeated names are the loader's error, not the machine's.
            let _ = set.insert(names[name].to_owned(), version, bytes);
        }
        if let Ok(restored) = Metadata::restore(&mut set) {
            restored.check().map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
    }
}

#[test]
fn members_alone_check_only_what_they_hold() {
    // Cross-member rules are the mux's: a member alone accepts a topic
    // whose stream it cannot see ...
    let mut topics = Topics::default();
    let create = TopicCommand::Create {
        stream: s("unseen"),
        name: s("t"),
        partitions: 1,
        config: vec![],
    };
    assert_eq!(topics.apply(at(1), create), Ok(Reply::Created { id: 1 }));
    assert_eq!(topics.count_in_stream("unseen"), 1);
    assert_eq!(topics.count_in_stream("unse"), 0);
    // ... but still keeps its own limits.
    let mut groups = Groups::default();
    let create = GroupCommand::Create {
        stream: s("s"),
        topic: s("t"),
        name: s("g"),
    };
    assert_eq!(groups.apply(at(2), create), Ok(Reply::Created { id: 2 }));
    let before = groups.clone();
    let beyond = GroupCommand::CommitOffset {
        stream: s("s"),
        topic: s("t"),
        group: s("g"),
        partition: PARTITIONS_MAX,
        offset: 0,
    };
    assert_eq!(
        groups.apply(at(3), beyond),
        Err(Rejection::PartitionOutOfRange {
            topic: s("s/t"),
            partition: PARTITIONS_MAX,
            partitions: PARTITIONS_MAX,
        })
    );
    assert_eq!(groups, before);
    assert_eq!(groups.count_in_topic("s", "t"), 1);
    assert_eq!(groups.count_in_topic("s", "t2"), 0);
}
