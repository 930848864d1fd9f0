//! The deterministic crash simulation (see `ringstore_journal::sim`): random
//! workloads with power cuts at random points, checked after every recovery
//! against a model. Fresh seeds every run; a failure prints its seed, and
//! `RINGSTORE_SIM_SEED=<seed>` replays exactly that one.
//!
//! `RINGSTORE_SIM_SEEDS` sets how many seeds per fault profile (CI runs
//! enough for at least 10,000 crash-and-recover cycles).
use ringstore_journal::sim::{random_ops, run_ops, SimReport, SimShape};
use ringstore_journal::storage::FaultConfig;

const OPS_PER_SEED: usize = 400;
const SEEDS_DEFAULT: u64 = 60;

fn seeds() -> (u64, u64) {
    if let Ok(seed) = std::env::var("RINGSTORE_SIM_SEED") {
        return (seed.parse().expect("RINGSTORE_SIM_SEED is a u64"), 1);
    }
    let count = std::env::var("RINGSTORE_SIM_SEEDS")
        .map(|s| s.parse().expect("RINGSTORE_SIM_SEEDS is a count"))
        .unwrap_or(SEEDS_DEFAULT);
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    (base, count)
}

fn simulate(profile: &str, faults: FaultConfig) -> SimReport {
    simulate_shape(profile, faults, SimShape::default())
}

fn simulate_shape(profile: &str, faults: FaultConfig, shape: SimShape) -> SimReport {
    let (base, count) = seeds();
    println!("{profile}: {count} seeds from {base}");
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let mut total = SimReport::default();
            for i in 0..count {
                let seed = base.wrapping_add(i);
                let ops = random_ops(seed, OPS_PER_SEED);
                match run_ops(seed, faults.clone(), shape, &ops).await {
                    Ok(report) => total.add(&report),
                    Err(violation) => panic!("{violation}; replay with RINGSTORE_SIM_SEED={seed}"),
                }
            }
            total
        })
        .expect("executor")
        .join()
        .expect("simulation panicked")
}

fn print(profile: &str, report: &SimReport) {
    println!(
        "{profile}: {} crash-recover cycles, {} clean reopens, {} acked, {} reads checked, {} corruption reported, {} open retries",
        report.crash_cycles, report.reopens, report.acked, report.reads_checked, report.corruption_reported, report.open_retries
    );
    for (kind, count) in report.faults.kinds() {
        println!("  {kind:>26}: {count}");
    }
}

#[test]
fn benign_faults_never_lose_an_acknowledged_entry() {
    let report = simulate("benign", FaultConfig::benign());
    print("benign", &report);
    assert!(report.crash_cycles > 0 && report.acked > 0);
    assert_eq!(report.corruption_reported, 0);
}

#[test]
fn destructive_faults_are_detected_never_served() {
    let report = simulate("destructive", FaultConfig::destructive());
    print("destructive", &report);
    assert!(report.crash_cycles > 0 && report.acked > 0);
}

#[test]
fn unsupported_fallocate_and_a_small_disk() {
    let faults = FaultConfig {
        fallocate_unsupported: true,
        capacity_bytes: Some(6 * (64 << 10)),
        ..FaultConfig::benign()
    };
    let report = simulate("small disk", faults);
    print("small disk", &report);
    assert!(report.faults.enospc > 0, "the disk never filled");
}

#[test]
fn write_through_and_nosync_durability() {
    for (profile, durability) in [
        ("write-through", ringstore_journal::Durability::WriteThrough),
        ("nosync", ringstore_journal::Durability::NoSync),
    ] {
        let shape = SimShape {
            durability,
            ..SimShape::default()
        };
        let report = simulate_shape(profile, FaultConfig::benign(), shape);
        print(profile, &report);
        assert!(report.crash_cycles > 0 && report.acked > 0);
    }
}

#[test]
fn serial_and_deep_write_pipelines() {
    for (profile, writes_in_flight) in [("1 write in flight", 1), ("4 writes in flight", 4)] {
        let shape = SimShape {
            writes_in_flight,
            ..SimShape::default()
        };
        let report = simulate_shape(profile, FaultConfig::benign(), shape);
        print(profile, &report);
        assert!(report.crash_cycles > 0 && report.acked > 0);
    }
}
