//! Pins the cache against its model (`ringstore_cache::sim`, the same checker
//! the cargo-fuzz target runs): random operation sequences with crashes —
//! puts, gets, stagings committed, conflicting, abandoned or dropped,
//! post-link unlink failures, held reservations, trims, injected ENOSPC —
//! keep accounting exact and never negative, never above the limits plus
//! reservations, and lose nothing committed except by trim.

use proptest::collection::vec;
use proptest::prelude::*;
use ringstore_cache::sim::arbitrary::{Arbitrary, Unstructured};
use ringstore_cache::sim::{run_ops_in, Op, SimInput, SimReport};

fn sim_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

fn run(ops: &[Op], crash_after: usize) -> SimReport {
    match run_ops_in(&sim_dir(), ops, crash_after) {
        Ok(report) => report,
        Err(failure) => panic!("{failure}\nops: {ops:#?}"),
    }
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..8;
    let slot = 0u8..3;
    prop_oneof![
        4 => (key.clone(), any::<u16>(), any::<u8>())
            .prop_map(|(key, len, fill)| Op::Put { key, len, fill }),
        3 => key.clone().prop_map(|key| Op::Get { key }),
        1 => key.clone().prop_map(|key| Op::Contains { key }),
        1 => key.clone().prop_map(|key| Op::Invalidate { key }),
        3 => (slot.clone(), key.clone()).prop_map(|(slot, key)| Op::Stage { slot, key }),
        3 => (slot.clone(), any::<u16>(), any::<u8>())
            .prop_map(|(slot, len, fill)| Op::Append { slot, len, fill }),
        2 => slot.clone().prop_map(|slot| Op::Commit { slot }),
        1 => slot.clone().prop_map(|slot| Op::CommitUnlinkFails { slot }),
        1 => slot.clone().prop_map(|slot| Op::Close { slot }),
        1 => slot.prop_map(|slot| Op::DropStaging { slot }),
        1 => (any::<u16>(), any::<u8>()).prop_map(|(bytes, objects)| Op::Reserve { bytes, objects }),
        1 => Just(Op::Release),
        1 => any::<bool>().prop_map(|exhaustive| Op::Trim { exhaustive }),
        1 => Just(Op::Persist),
        1 => (key, any::<u16>()).prop_map(|(key, len)| Op::PutNoSpace { key, len }),
        1 => Just(Op::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 160,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_sequences_keep_the_invariants(ops in vec(op(), 1..96), crash_after in 0usize..110) {
        run(&ops, crash_after);
    }
}

#[test]
fn overfilled_cache_with_open_stagings_and_a_crash() {
    let mut ops = Vec::new();
    for key in 0..8 {
        ops.push(Op::Put {
            key,
            len: 20_000,
            fill: key,
        });
    }
    ops.extend([
        Op::Stage { slot: 0, key: 0 },
        Op::Append {
            slot: 0,
            len: 20_000,
            fill: 1,
        },
        Op::Stage { slot: 1, key: 1 },
        Op::Append {
            slot: 1,
            len: 9_000,
            fill: 2,
        },
        Op::Reserve {
            bytes: 30_000,
            objects: 1,
        },
        Op::Commit { slot: 0 },
        Op::Put {
            key: 2,
            len: 24_000,
            fill: 3,
        },
        Op::CommitUnlinkFails { slot: 1 },
        Op::Stage { slot: 2, key: 5 },
        Op::Append {
            slot: 2,
            len: 1_000,
            fill: 4,
        },
    ]);
    // Crash with a staging file and a reservation still open.
    let report = run(&ops, ops.len());
    assert!(report.trimmed > 0, "{report:?}");
    assert_eq!(report.crashes, 1);
}

#[test]
fn conflicting_commits_and_enospc() {
    let ops = [
        Op::Stage { slot: 0, key: 3 },
        Op::Stage { slot: 1, key: 3 },
        Op::Append {
            slot: 0,
            len: 100,
            fill: 1,
        },
        Op::Append {
            slot: 1,
            len: 200,
            fill: 2,
        },
        Op::Commit { slot: 0 },
        Op::Commit { slot: 1 },
        Op::Get { key: 3 },
        Op::PutNoSpace { key: 4, len: 5_000 },
        Op::Put {
            key: 4,
            len: 5_000,
            fill: 9,
        },
        Op::Crash,
        Op::Get { key: 4 },
        Op::Trim { exhaustive: true },
    ];
    let report = run(&ops, ops.len());
    assert_eq!(
        (report.commits, report.conflicts, report.nospace),
        (1, 1, 1)
    );
    assert_eq!(report.crashes, 2);
}

/// What the fuzz target does: bytes -> `SimInput` through `Arbitrary`.
#[test]
fn arbitrary_byte_strings_drive_the_checker() {
    let mut seed: u64 = 0x5eed_cafe;
    let mut ops_run = 0;
    for _ in 0..24 {
        let raw: Vec<u8> = (0..256)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let input = SimInput::arbitrary_take_rest(Unstructured::new(&raw)).unwrap();
        ops_run += run(&input.ops, usize::from(input.crash_after_ops)).ops_run;
    }
    assert!(
        ops_run > 24 * 10,
        "inputs decoded to too few ops ({ops_run})"
    );
}
