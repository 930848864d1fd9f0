//! The cache's model checker on the simulated disk, where a crash is a
//! power loss (`ringstore_cache::sim::run_power_loss`): seeded operation
//! sequences with power cuts landing inside commits, puts, invalidations,
//! trims and tracker persists. After every loss and reopen each key holds
//! its acknowledged bytes or an outcome the model allows, no `.part` file
//! is left, and the accounting is exact. Prints its totals, with the
//! disk's fault counts per kind.
//!
//! `RINGSTORE_CACHE_SIM_SEQUENCES` sets how many sequences run (default
//! below); the run also stops after `SIM_SECONDS_MAX`.

use ringstore_cache::sim::arbitrary::{Arbitrary, Unstructured};
use ringstore_cache::sim::{run_power_loss, SimInput, SimReport};
use std::time::{Duration, Instant};

/// Sequences run by default.
const SEQUENCES_DEFAULT: u64 = 400;
/// Bytes of generator output each sequence's ops are decoded from.
const INPUT_BYTES: usize = 600;
/// The run stops starting new sequences after this long.
const SIM_SECONDS_MAX: u64 = 60;

fn input_of(seed: u64) -> SimInput {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let bytes: Vec<u8> = (0..INPUT_BYTES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    SimInput::arbitrary(&mut Unstructured::new(&bytes)).expect("dense decoding never fails")
}

#[test]
fn power_losses_keep_every_acknowledged_object() {
    let sequences = std::env::var("RINGSTORE_CACHE_SIM_SEQUENCES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(SEQUENCES_DEFAULT);
    let started = Instant::now();
    let mut total = SimReport::default();
    let mut run = 0;
    for seed in 0..sequences {
        if started.elapsed() > Duration::from_secs(SIM_SECONDS_MAX) {
            break;
        }
        let input = input_of(seed);
        match run_power_loss(&input.ops, usize::from(input.crash_after_ops), seed) {
            Ok(report) => total.add(&report),
            Err(failure) => panic!("seed {seed}: {failure}\nops: {:#?}", input.ops),
        }
        run += 1;
    }
    let faults: Vec<String> = total
        .faults
        .kinds()
        .iter()
        .filter(|(_, count)| *count > 0)
        .map(|(kind, count)| format!("{kind} {count}"))
        .collect();
    println!(
        "cache simulation total: {run} sequences, {} ops, {} power losses ({} operations cut \
         midway, {} keys rolled back as allowed), {} puts, {} commits, {} trimmed; faults: {}; \
         0 violations",
        total.ops_run,
        total.power_losses,
        total.cut_ops,
        total.rolled_back,
        total.puts,
        total.commits,
        total.trimmed,
        faults.join(", ")
    );
    assert!(
        total.power_losses >= run,
        "every sequence ends in a power loss"
    );
    assert!(total.cut_ops > 0, "no power cut landed inside an operation");
    assert!(total.faults.writes_dropped + total.faults.writes_torn > 0);
    assert!(
        total.faults.dir_ops_undone > 0,
        "no namespace change was undone"
    );
}
