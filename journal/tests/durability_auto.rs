//! Pins `Durability::Auto`: the probe at open on real O_DIRECT files, the
//! choice reported in the stats, the probe's scratch files removed (a
//! crash's leftovers by the next open), a failed probe falling back to
//! write + fdatasync, and a power cut at every step of an open that probes
//! (and then appends) losing nothing acknowledged.
mod common;
use common::*;
use ringstore_journal::durability::{
    self, PROBE_ROUNDS_MAX, PROBE_ROUNDS_MIN, PROBE_SYNC_FILE_NAME, PROBE_WRITE_THROUGH_FILE_NAME,
};
use ringstore_journal::storage::{DmaStorage, FaultConfig, MemStorage, Storage};
use ringstore_journal::{Durability, Journal, JournalBuilder, Preallocation, ProbeOutcome};
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

fn small<S: Storage>(builder: JournalBuilder<S>) -> JournalBuilder<S> {
    builder
        .segment_bytes(1 << 20)
        .batch_bytes_max(64 << 10)
        .entry_bytes_max(16 << 10)
        .slot_count(1024)
}

fn has_probe_files(names: &[std::ffi::OsString]) -> bool {
    names
        .iter()
        .any(|n| n == PROBE_SYNC_FILE_NAME || n == PROBE_WRITE_THROUGH_FILE_NAME)
}

#[test]
fn auto_is_the_default_and_its_choice_is_reported() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let journal = small(Journal::builder(&path)).open().await.unwrap();
        let choice = journal.durability_choice().clone();
        assert_eq!(choice.configured, Durability::Auto);
        assert!(
            matches!(choice.chosen, Durability::Sync | Durability::WriteThrough),
            "{choice:?}"
        );
        let probe = match &choice.probe {
            ProbeOutcome::Measured(p) | ProbeOutcome::Cached(p) => *p,
            other => panic!("a real disk is probed: {other:?}"),
        };
        assert_eq!(probe.chosen(), choice.chosen);
        assert!((PROBE_ROUNDS_MIN..=PROBE_ROUNDS_MAX).contains(&(probe.rounds as usize)));
        assert!(!probe.sync_p50.is_zero() && !probe.write_through_p50.is_zero());
        assert_eq!(journal.stats().durability, choice.chosen);
        assert_eq!(journal.config().durability, choice.chosen);
        for op in 1..=20u64 {
            assert_eq!(journal.append(&payload(op, 300)).await.unwrap(), op);
        }
        assert_eq!(journal.stats().fsyncs, journal.stats().writes);
        journal.close().await.unwrap();

        let names = DmaStorage::new().list_dir(&path).unwrap();
        assert!(!has_probe_files(&names), "{names:?}");

        // A second open in this process takes the cached figures for the
        // device, and everything acknowledged is there.
        let journal = small(Journal::builder(&path)).open().await.unwrap();
        assert_eq!(
            journal.durability_choice().probe,
            ProbeOutcome::Cached(probe)
        );
        for op in 1..=20u64 {
            let entry = journal.read(op).await.unwrap().expect("acknowledged");
            assert_eq!(entry.payload, payload(op, 300));
        }
        journal.close().await.unwrap();
    });
}

#[test]
fn the_probe_measures_both_preparations_and_leaves_nothing() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let storage = DmaStorage::new();
        for preallocation in [Preallocation::ZeroFill, Preallocation::Fallocate] {
            let probe = durability::probe(&storage, &path, preallocation)
                .await
                .unwrap();
            assert!(
                (PROBE_ROUNDS_MIN..=PROBE_ROUNDS_MAX).contains(&(probe.rounds as usize)),
                "{preallocation:?}: {probe:?}"
            );
            assert!(!probe.sync_p50.is_zero() && !probe.write_through_p50.is_zero());
            println!(
                "durability probe, {preallocation:?}: write + fdatasync p50 {:?}, O_DSYNC write p50 {:?} over {} rounds: {:?}",
                probe.sync_p50,
                probe.write_through_p50,
                probe.rounds,
                probe.chosen()
            );
            assert!(!has_probe_files(&storage.list_dir(&path).unwrap()));
        }
    });
}

#[test]
fn a_configured_durability_is_kept_and_a_crashed_probes_files_are_removed() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let journal = small(Journal::builder(&path))
            .durability(Durability::Sync)
            .open()
            .await
            .unwrap();
        journal.append(b"kept").await.unwrap();
        journal.close().await.unwrap();
        // What a crash in the middle of a probe leaves.
        for name in [PROBE_SYNC_FILE_NAME, PROBE_WRITE_THROUGH_FILE_NAME] {
            std::fs::write(path.join(name), vec![0xa5; 8192]).unwrap();
        }
        let journal = small(Journal::builder(&path))
            .durability(Durability::WriteThrough)
            .open()
            .await
            .unwrap();
        let choice = journal.durability_choice();
        assert_eq!(choice.configured, Durability::WriteThrough);
        assert_eq!(choice.chosen, Durability::WriteThrough);
        assert_eq!(choice.probe, ProbeOutcome::NotRun);
        // Removed before recovery listed the directory: not reported as
        // strays of the journal.
        assert!(
            journal.recovery_report().stray_files.is_empty(),
            "{:?}",
            journal.recovery_report().stray_files
        );
        assert_eq!(journal.read(1).await.unwrap().unwrap().payload, b"kept");
        assert_eq!(journal.append(b"more").await.unwrap(), 2);
        journal.close().await.unwrap();
        assert!(!has_probe_files(
            &DmaStorage::new().list_dir(&path).unwrap()
        ));
    });
}

#[test]
fn the_simulated_disk_is_never_timed() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = small(Journal::builder("/mem/wal").storage(mem.clone()))
            .open()
            .await
            .unwrap();
        let choice = journal.durability_choice();
        assert_eq!(choice.chosen, Durability::Sync);
        assert_eq!(choice.probe, ProbeOutcome::NotRun);
        journal.close().await.unwrap();
    });
}

#[test]
fn a_failed_probe_falls_back_to_write_and_fdatasync() {
    run(|| async {
        let mem = MemStorage::new();
        mem.set_latency_device(Some(u64::MAX - 1));
        // The probe's first data write fails as on a full disk (the
        // preparation writes nothing for a fallocated probe).
        mem.fail_next_writes(1, libc::ENOSPC);
        let journal = small(Journal::builder("/mem/wal").storage(mem.clone()))
            .preallocation(Preallocation::Fallocate)
            .open()
            .await
            .unwrap();
        let choice = journal.durability_choice().clone();
        assert_eq!(choice.chosen, Durability::Sync);
        let ProbeOutcome::Failed(reason) = &choice.probe else {
            panic!("{choice:?}");
        };
        assert!(reason.contains(PROBE_SYNC_FILE_NAME), "{reason}");
        assert_eq!(journal.append(b"after").await.unwrap(), 1);
        journal.close().await.unwrap();
        assert!(!has_probe_files(
            &mem.list_dir(Path::new("/mem/wal")).unwrap()
        ));
    });
}

/// Appends acknowledged before the probing open, and by it.
const ACKED_BEFORE: u64 = 12;
const ACKED_AFTER: u64 = 6;

fn probing(mem: &MemStorage) -> JournalBuilder<MemStorage> {
    small(Journal::builder("/mem/wal").storage(mem.clone())).preallocation(Preallocation::ZeroFill)
}

/// An open that probes (and appends, on the durability the probe chose),
/// from a journal already holding data; `acked` gets each op acknowledged.
async fn probing_life(mem: MemStorage, acked: Rc<RefCell<Vec<u64>>>) -> bool {
    let life = async {
        let journal = probing(&mem).open().await?;
        for op in ACKED_BEFORE + 1..=ACKED_BEFORE + ACKED_AFTER {
            let appended = journal.append(&payload(op, 500)).await?;
            assert_eq!(appended, op);
            acked.borrow_mut().push(op);
        }
        journal.close().await
    };
    life.await.is_ok()
}

async fn seeded(mem: &MemStorage) {
    let journal = small(Journal::builder("/mem/wal").storage(mem.clone()))
        .durability(Durability::Sync)
        .open()
        .await
        .unwrap();
    for op in 1..=ACKED_BEFORE {
        journal.append(&payload(op, 500)).await.unwrap();
    }
    journal.close().await.unwrap();
}

#[test]
fn a_power_cut_at_every_step_of_a_probing_open_loses_nothing() {
    let total = operations_of_a_probing_life();
    assert!(total > 20, "a probing life makes {total} operations");
    for n in 1..=total {
        run(move || async move {
            let mem = MemStorage::with_faults(n, FaultConfig::benign());
            mem.set_faults(FaultConfig::none());
            seeded(&mem).await;
            // A device id per cut: each open probes afresh.
            mem.set_latency_device(Some(1 << 40 | n));
            mem.set_faults(FaultConfig::benign());
            mem.cut_power_after_ops(n);
            let acked = Rc::new(RefCell::new(Vec::new()));
            let _ = probing_life(mem.clone(), acked.clone()).await;
            mem.crash();
            mem.set_faults(FaultConfig::none());
            mem.set_latency_device(None);
            let journal = probing(&mem)
                .open()
                .await
                .unwrap_or_else(|e| panic!("cut at op {n}: reopen failed: {e}"));
            let acked_after = acked.borrow().clone();
            for op in (1..=ACKED_BEFORE).chain(acked_after) {
                let entry = journal.read(op).await.unwrap();
                assert_eq!(
                    entry.map(|e| e.payload),
                    Some(payload(op, 500)),
                    "cut at op {n}: acknowledged op {op}"
                );
            }
            journal.close().await.unwrap();
            let names = mem.list_dir(Path::new("/mem/wal")).unwrap();
            assert!(!has_probe_files(&names), "cut at op {n}: {names:?}");
        });
    }
    println!("durability probe crash test: {total} power cuts, 0 violations");
}

/// The storage operations of [`probing_life`] after [`seeded`]: the
/// first power cut after which it completes.
fn operations_of_a_probing_life() -> u64 {
    let mut n = 1;
    loop {
        let (tx, rx) = std::sync::mpsc::channel();
        run(move || async move {
            let mem = MemStorage::new();
            seeded(&mem).await;
            // Device ids apart from the cut loop's: a probe that completed
            // here must not be taken from the cache there.
            mem.set_latency_device(Some(2 << 40 | n));
            mem.cut_power_after_ops(n);
            tx.send(probing_life(mem, Rc::default()).await).unwrap();
        });
        if rx.recv().unwrap() {
            return n;
        }
        assert!(n < 10_000, "the probing life never completes");
        n += 1;
    }
}

#[test]
fn journals_opening_at_once_on_one_device_probe_it_once() {
    // Two reactors, each opening a journal on a disk that reports the same
    // device (a device id no other test uses).
    let opens: Vec<_> = (0..2)
        .map(|shard| {
            glommio::LocalExecutorBuilder::default()
                .spawn(move || async move {
                    let mem = MemStorage::new();
                    mem.set_latency_device(Some(3 << 40));
                    let journal = small(Journal::builder(format!("/mem/wal-{shard}")).storage(mem))
                        .open()
                        .await
                        .unwrap();
                    let probe = journal.durability_choice().probe.clone();
                    journal.close().await.unwrap();
                    probe
                })
                .unwrap()
        })
        .collect();
    let probes: Vec<ProbeOutcome> = opens.into_iter().map(|open| open.join().unwrap()).collect();
    let measured: Vec<_> = probes
        .iter()
        .filter_map(|p| match p {
            ProbeOutcome::Measured(m) => Some(*m),
            _ => None,
        })
        .collect();
    assert_eq!(measured.len(), 1, "{probes:?}");
    assert!(
        probes.contains(&ProbeOutcome::Cached(measured[0])),
        "{probes:?}"
    );
}
