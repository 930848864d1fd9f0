//! What a node wrote under openraft 0.9.25 reads back the same under 0.10:
//! the hard state, log entries and the snapshot's `raft` record are bincode
//! of openraft's types, and 0.10 kept their fields and order. The bytes
//! below were printed by a program built against openraft 0.9.25 and
//! bincode 2.0.1 (`bincode::serde::encode_to_vec`, standard config), which
//! encoded the values named in each test.

use super::log::{decode, HardState};
use super::shard::RaftRecord;
use super::types::{LeaderId, LogId, Vote};
use openraft::{BasicNode, EntryPayload};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The 0.9 program's command: a `(u64, u64, String)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Command(u64, u64, String);

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

openraft::declare_raft_types!(
    Types:
        D = Command,
        R = u64,
        NodeId = u64,
        Node = BasicNode,
);

type Entry = openraft::Entry<LeaderId, EntryPayload<Command, u64, BasicNode>>;

fn bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

fn log_id(term: u64, node_id: u64, index: u64) -> LogId {
    LogId::new(LeaderId { term, node_id }, index)
}

/// The three addresses of the 0.9 program's membership.
fn members() -> (Vec<BTreeSet<u64>>, Vec<(u64, String)>) {
    (
        vec![(1..=3).collect()],
        (1..=3).map(|i| (i, format!("127.0.0.1:710{i}"))).collect(),
    )
}

fn assert_membership(membership: &openraft::Membership<u64, BasicNode>) {
    let (configs, nodes) = members();
    assert_eq!(membership.get_joint_config(), &configs);
    let got: Vec<(u64, String)> = membership
        .nodes()
        .map(|(id, node)| (*id, node.addr.clone()))
        .collect();
    assert_eq!(got, nodes);
}

/// `HardState { vote: Vote::new_committed(7, 2), committed: (7, 2, 41),
/// purged: (3, 1, 9) }`.
#[test]
fn a_hard_state_written_under_0_9_reads_back() {
    let state = HardState::decode(&bytes("010702010107022901030109")).expect("decode");
    let mut vote = Vote::new(7, 2);
    vote.committed = true;
    assert_eq!(state.vote, Some(vote));
    assert_eq!(state.committed, Some(log_id(7, 2, 41)));
    assert_eq!(state.purged, Some(log_id(3, 1, 9)));
    assert_eq!(state.awaiting_repair, None);
    // Not awaiting repair, it is written as before: an older build reads it.
    assert_eq!(
        state.encode().expect("encode"),
        bytes("010702010107022901030109")
    );
}

/// A hard state awaiting repair has a leading form byte and one field
/// more; it reads back whole, and a reader of the first form alone (a
/// build from before) refuses it instead of dropping the mark.
#[test]
fn a_hard_state_awaiting_repair_reads_back() {
    let mut state = HardState::decode(&bytes("010702010107022901030109")).expect("decode");
    state.awaiting_repair = Some(7);
    let encoded = state.encode().expect("encode");
    assert_eq!(encoded, bytes("020107020101070229010301090107"));
    assert!(
        decode::<HardStateV1Like>(&encoded).is_err(),
        "a build from before reads it"
    );
    let back = HardState::decode(&encoded).expect("decode");
    assert_eq!(back.awaiting_repair, Some(7));
    assert_eq!(back.committed, Some(log_id(7, 2, 41)));
    // Cut short, or with a byte more, it does not decode.
    assert!(HardState::decode(&encoded[..encoded.len() - 1]).is_err());
    let mut longer = encoded.clone();
    longer.push(0);
    assert!(HardState::decode(&longer).is_err());
}

/// A normal entry `(5, 6, "cmd")` at (7, 2, 42), a membership entry of
/// nodes 1-3 at (1, 1, 0) and a blank one at (7, 2, 43).
#[test]
fn log_entries_written_under_0_9_read_back() {
    let normal: Entry = decode(&bytes("07022a01050603636d64")).expect("normal");
    assert_eq!(normal.log_id, log_id(7, 2, 42));
    assert!(matches!(normal.payload, EntryPayload::Normal(Command(5, 6, ref s)) if s == "cmd"));

    let membership: Entry = decode(&bytes(
        "01010002010301020303010e3132372e302e302e313a37313031020e3132372e302e302e313a\
         37313032030e3132372e302e302e313a37313033",
    ))
    .expect("membership");
    assert_eq!(membership.log_id, log_id(1, 1, 0));
    match &membership.payload {
        EntryPayload::Membership(m) => assert_membership(m),
        other => panic!("not a membership entry: {other:?}"),
    }

    let blank: Entry = decode(&bytes("07022b00")).expect("blank");
    assert_eq!(blank.log_id, log_id(7, 2, 43));
    assert!(matches!(blank.payload, EntryPayload::Blank));
}

/// The snapshot's `raft` record: last applied (7, 2, 43), the membership
/// above at (1, 1, 0), snapshot id "7-44-1", and client 5's session (seq
/// 6, op 43, response 9).
#[test]
fn a_raft_record_written_under_0_9_reads_back() {
    let record: RaftRecord<Types> = decode(&bytes(
        "0107022b01010100010301020303010e3132372e302e302e313a37313031020e3132372e302e30\
         2e313a37313032030e3132372e302e302e313a3731303306372d34342d310105062b09",
    ))
    .expect("raft record");
    assert_eq!(record.last_applied, Some(log_id(7, 2, 43)));
    assert_eq!(record.membership.log_id(), &Some(log_id(1, 1, 0)));
    assert_membership(record.membership.membership());
    assert_eq!(record.snapshot_id, "7-44-1");
    assert_eq!(record.sessions.len(), 1);
    let (client, session) = &record.sessions[0];
    assert_eq!(
        (*client, session.seq, session.op, session.response),
        (5, 6, 43, 9)
    );
}

/// The hard state as a build from before `awaiting_repair` decodes it
/// (`decode`, which leaves trailing bytes unread).
#[derive(Deserialize)]
#[allow(dead_code)]
struct HardStateV1Like {
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
}
