//! The deterministic crash simulation (see `ringstore_journal::sim`): random
//! workloads with power cuts at random points, checked after every recovery
//! against a model, under every fault profile. Fresh seeds every run; a
//! failure prints its seed, and `RINGSTORE_SIM_SEED=<seed>` replays exactly
//! that one (with `RINGSTORE_SIM_TRACE=1` and `RINGSTORE_SIM_TRACE_IO=1` to
//! see every step and storage call).
//!
//! `RINGSTORE_SIM_SEEDS` sets how many seeds per profile. With the default,
//! one run makes well over 10,000 crash-and-recover cycles; run with
//! `--nocapture` to see the cycle counts and how often each fault fired.
use ringstore_journal::sim::{
    random_ops, run_ops, with_damage_at_rest, SimOp, SimReport, SimShape,
};
use ringstore_journal::storage::FaultConfig;
use ringstore_journal::Durability;

const OPS_PER_SEED: usize = 400;
const SEEDS_DEFAULT: u64 = 60;
/// Crash-and-recover cycles one default run must reach across profiles.
const CRASH_CYCLES_MIN: u64 = 10_000;

fn seeds() -> (u64, u64, bool) {
    if let Ok(seed) = std::env::var("RINGSTORE_SIM_SEED") {
        return (seed.parse().expect("RINGSTORE_SIM_SEED is a u64"), 1, false);
    }
    let count = std::env::var("RINGSTORE_SIM_SEEDS")
        .map(|s| s.parse().expect("RINGSTORE_SIM_SEEDS is a count"))
        .unwrap_or(SEEDS_DEFAULT);
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    (base, count, count >= SEEDS_DEFAULT)
}

/// The profile whose lives are long enough to recycle segments.
const RECYCLING_PROFILE: &str = "tiny segments, recycled";
/// The profile with damage at rest for the scrubber to find
/// (`with_damage_at_rest`).
const DAMAGE_AT_REST_PROFILE: &str = "damage at rest, scrubbed";
/// Of the crashes and reopens of a generated list, the share
/// [`longer_lives`] keeps: one in this many.
const LONGER_LIVES_KEEP_ONE_IN: usize = 5;

/// Turns all but one in [`LONGER_LIVES_KEEP_ONE_IN`] crashes and reopens
/// into settles: a life then spans about 35 ops, enough for a segment to
/// be retired and then recycled by a later rollover.
fn longer_lives(ops: Vec<SimOp>) -> Vec<SimOp> {
    let mut ends = 0;
    ops.into_iter()
        .map(|op| match op {
            SimOp::Crash { .. } | SimOp::Reopen => {
                ends += 1;
                if ends % LONGER_LIVES_KEEP_ONE_IN == 0 {
                    op
                } else {
                    SimOp::Settle
                }
            }
            op => op,
        })
        .collect()
}

fn profiles() -> Vec<(&'static str, FaultConfig, SimShape)> {
    let shape = SimShape::default();
    vec![
        ("benign", FaultConfig::benign(), shape),
        ("destructive", FaultConfig::destructive(), shape),
        (
            "small disk, no fallocate",
            FaultConfig {
                fallocate_unsupported: true,
                capacity_bytes: Some(6 * (64 << 10)),
                ..FaultConfig::benign()
            },
            shape,
        ),
        (
            "write-through",
            FaultConfig::benign(),
            SimShape {
                durability: Durability::WriteThrough,
                ..shape
            },
        ),
        (
            "nosync",
            FaultConfig::benign(),
            SimShape {
                durability: Durability::NoSync,
                ..shape
            },
        ),
        (
            "1 write in flight",
            FaultConfig::benign(),
            SimShape {
                writes_in_flight: 1,
                ..shape
            },
        ),
        (
            // Every write spawned on its own task (no inline writes, which
            // wait for nothing else to be in flight), so up to 4 overlap.
            "4 writes in flight",
            FaultConfig::benign(),
            SimShape {
                writes_in_flight: 4,
                inline_write_bytes_max: 0,
                ..shape
            },
        ),
        (
            // A rollover every few appends and lives between crashes
            // stretched (`longer_lives`), so that they retire segments and
            // recycle them.
            RECYCLING_PROFILE,
            FaultConfig::benign(),
            SimShape {
                segment_bytes: 20 << 10,
                batch_bytes_max: 8 << 10,
                ..shape
            },
        ),
        // Bits flipped and sectors made unreadable on the disk between
        // steps; each time a scrub pass must report it and a read of the
        // op must fail with a typed error.
        (DAMAGE_AT_REST_PROFILE, FaultConfig::benign(), shape),
    ]
}

#[test]
fn crash_simulation_under_every_fault_profile() {
    let (base, count, full) = seeds();
    println!("simulation: {count} seed(s) per profile from {base}, {OPS_PER_SEED} ops each");
    let reports = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let mut reports = Vec::new();
            for (profile, faults, shape) in profiles() {
                let mut total = SimReport::default();
                for i in 0..count {
                    let seed = base.wrapping_add(i);
                    let mut ops = random_ops(seed, OPS_PER_SEED);
                    if profile == RECYCLING_PROFILE {
                        ops = longer_lives(ops);
                    }
                    if profile == DAMAGE_AT_REST_PROFILE {
                        ops = with_damage_at_rest(seed, ops);
                    }
                    match run_ops(seed, faults.clone(), shape, &ops).await {
                        Ok(report) => total.add(&report),
                        Err(violation) => {
                            panic!("{profile}: {violation}; replay with RINGSTORE_SIM_SEED={seed}")
                        }
                    }
                }
                reports.push((profile, total));
            }
            reports
        })
        .expect("executor")
        .join()
        .expect("simulation panicked");

    let mut all = SimReport::default();
    for (profile, report) in &reports {
        println!(
            "{profile:>26}: {} crash-recover cycles, {} clean reopens, {} acked, {} reads checked, {} hard-state orderings checked, {} segments recycled, {} corruption reported",
            report.crash_cycles, report.reopens, report.acked, report.reads_checked, report.hard_state_orderings_checked, report.segments_recycled, report.corruption_reported
        );
        assert!(
            report.crash_cycles > 0 && report.acked > 0,
            "{profile} did nothing"
        );
        all.add(report);
    }
    println!(
        "simulation total: {} crash-recover cycles, {} clean reopens, {} acked appends, {} reads checked, {} hard-state orderings checked, 0 invariant violations",
        all.crash_cycles, all.reopens, all.acked, all.reads_checked, all.hard_state_orderings_checked
    );
    println!("faults injected, by kind:");
    for (kind, fired) in all.faults.kinds() {
        println!("  {kind:>26}: {fired}");
    }
    if full {
        assert!(
            all.crash_cycles >= CRASH_CYCLES_MIN,
            "only {} crash-recover cycles",
            all.crash_cycles
        );
    }
    // Crashes hit recycled segments too.
    let (_, tiny) = reports
        .iter()
        .find(|(profile, _)| *profile == RECYCLING_PROFILE)
        .expect("the recycling profile ran");
    assert!(tiny.segments_recycled > 0, "nothing was recycled");
    let (_, rest) = reports
        .iter()
        .find(|(profile, _)| *profile == DAMAGE_AT_REST_PROFILE)
        .expect("the damage-at-rest profile ran");
    println!(
        "damage at rest found by scrub passes: {} flipped bits, {} unreadable sectors; \
         opens over an unreadable sector: {} opened (the read named the block), \
         {} refused naming the block",
        rest.rot_found_by_scrub,
        rest.unreadable_found_by_scrub,
        rest.unreadable_opened_over,
        rest.unreadable_refused_open
    );
    assert!(
        rest.rot_found_by_scrub > 0 && rest.unreadable_found_by_scrub > 0,
        "no damage at rest was injected"
    );
    assert!(
        rest.unreadable_opened_over > 0,
        "no open over an unreadable sector"
    );
    let small_disk = &reports[2].1;
    assert!(small_disk.faults.enospc > 0, "the small disk never filled");
    assert_eq!(
        reports[0].1.corruption_reported, 0,
        "benign faults never corrupt"
    );
}
