//! The shard's crash simulation (see `ringstore::sim`): every profile, many
//! seeds, power cuts during checkpoints, recovery checked against a model
//! after every crash. `RINGSTORE_SIM_SEEDS` sets the seeds per profile and
//! `RINGSTORE_SIM_SEED` runs one seed; the report is printed with
//! `--nocapture`.
mod common;
use common::*;
use rand_core::RngCore;
use ringstore::sim::{self, SimProfile, SimReport};

/// Seeds per profile when `RINGSTORE_SIM_SEEDS` is unset.
const SEEDS_DEFAULT: u64 = 40;
/// Crash cycles per seed.
const CYCLES_PER_SEED: u64 = 12;

fn random_kv_command(rng: &mut rand_pcg::Pcg64Mcg) -> KvCommand {
    let key = rng.next_u64() % 64;
    if rng.next_u64().is_multiple_of(4) {
        KvCommand::Delete { key }
    } else {
        let len = (rng.next_u64() % 600) as usize;
        KvCommand::Put {
            key,
            value: value(key, rng.next_u64(), len),
        }
    }
}

#[test]
fn crashes_during_checkpoints_lose_nothing_acknowledged() {
    let seeds: Vec<u64> = match std::env::var("RINGSTORE_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("RINGSTORE_SIM_SEED is a u64")],
        Err(_) => {
            let count = std::env::var("RINGSTORE_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(SEEDS_DEFAULT);
            (0..count).collect()
        }
    };
    run(move || async move {
        let mut total = SimReport::default();
        for profile in SimProfile::all() {
            let mut report = SimReport::default();
            for &seed in &seeds {
                match sim::run::<Kv, _>(seed, &profile, CYCLES_PER_SEED, random_kv_command).await {
                    Ok(one) => report.add(&one),
                    Err(violation) => panic!("engine simulation violation: {violation}"),
                }
            }
            println!(
                "engine simulation {:>18}: {} seeds, {} cycles, {} crashes ({} during a checkpoint), \
                 {} acknowledged, {} checkpoints ({} failed), {} ops replayed, {} snapshots skipped",
                profile.name,
                seeds.len(),
                report.cycles,
                report.crashes,
                report.crashes_during_checkpoint,
                report.acknowledged,
                report.checkpoints,
                report.checkpoint_failures,
                report.replayed_ops,
                report.snapshots_skipped,
            );
            total.add(&report);
        }
        println!(
            "engine simulation total: {} cycles, {} crashes ({} during a checkpoint), {} acknowledged \
             commands, {} checkpoints, 0 invariant violations",
            total.cycles,
            total.crashes,
            total.crashes_during_checkpoint,
            total.acknowledged,
            total.checkpoints
        );
        println!(
            "engine simulation: damage at rest found by the snapshot scrubber: {} flipped bits, \
             {} unreadable sectors",
            total.snapshot_rot_found, total.snapshot_unreadable_found
        );
        assert!(
            total.crashes_during_checkpoint > 0,
            "no crash hit a checkpoint"
        );
        assert!(
            total.snapshot_rot_found > 0 && total.snapshot_unreadable_found > 0,
            "no snapshot was damaged at rest"
        );
    });
}

#[test]
fn the_broker_metadata_machine_survives_the_same_crashes() {
    let seeds = std::env::var("RINGSTORE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS_DEFAULT)
        / 2;
    run(move || async move {
        let mut total = SimReport::default();
        for profile in SimProfile::all() {
            for seed in std::env::var("RINGSTORE_SIM_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .map_or(0..seeds.max(1), |s: u64| s..s + 1)
            {
                let command = |rng: &mut rand_pcg::Pcg64Mcg| {
                    ringstore::broker::gen::random_command(&mut || rng.next_u64())
                };
                match sim::run::<ringstore::broker::Metadata, _>(
                    seed,
                    &profile,
                    CYCLES_PER_SEED,
                    command,
                )
                .await
                {
                    Ok(one) => total.add(&one),
                    Err(violation) => panic!("engine simulation violation: {violation}"),
                }
            }
        }
        println!(
            "engine simulation (broker metadata) total: {} cycles, {} crashes ({} during a \
             checkpoint), {} acknowledged commands, {} checkpoints, 0 invariant violations",
            total.cycles,
            total.crashes,
            total.crashes_during_checkpoint,
            total.acknowledged,
            total.checkpoints
        );
        assert!(
            total.crashes_during_checkpoint > 0,
            "no crash hit a checkpoint"
        );
    });
}
