//! Pins `Durability::Auto`: the probe at open on real O_DIRECT files, the
//! choice reported in the stats, the probe's scratch files removed (a
//! crash's leftovers by the next open), a failed probe falling back to
//! write + fdatasync, a power cut at every step of an open that probes
//! (and then appends) losing nothing acknowledged, and the durability
//! record: taken by the next open only for its device, preparation and
//! boot, measured again when damaged, and never failing an open.
mod common;
use common::*;
use ringstore_journal::durability::record::{
    self, DurabilityRecord, DURABILITY_RECORD_FILE_NAME, DURABILITY_RECORD_TEMP_NAME,
};
use ringstore_journal::durability::{
    self, DurabilityProbe, PROBE_LEFTOVER_NAMES, PROBE_ROUNDS_MAX, PROBE_ROUNDS_MIN,
    PROBE_SYNC_FILE_NAME,
};
use ringstore_journal::inspect::scan_journal;
use ringstore_journal::storage::{DmaStorage, FaultConfig, MemStorage, Storage};
use ringstore_journal::{Durability, Journal, JournalBuilder, Preallocation, ProbeOutcome};
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

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
        .any(|n| PROBE_LEFTOVER_NAMES.iter().any(|leftover| n == leftover))
}

/// A journal in `path` holding op 1 (`kept`), opened with a configured
/// durability (no probe, no record).
async fn journal_holding_kept(path: &Path) {
    let journal = small(Journal::builder(path))
        .durability(Durability::Sync)
        .open()
        .await
        .unwrap();
    journal.append(b"kept").await.unwrap();
    journal.close().await.unwrap();
}

fn this_boot() -> [u8; 16] {
    record::boot_id().expect("Linux hosts have a boot id")
}

/// The durability record in `dir` of the simulated disk.
fn mem_record(mem: &MemStorage, dir: &str) -> Option<DurabilityRecord> {
    let bytes = mem.file_bytes(&Path::new(dir).join(DURABILITY_RECORD_FILE_NAME))?;
    Some(DurabilityRecord::decode(&bytes).expect("a record verifies once renamed into place"))
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
        // The figures are recorded for the next process, and `inspect`
        // shows them.
        let bytes = std::fs::read(path.join(DURABILITY_RECORD_FILE_NAME)).unwrap();
        let kept = DurabilityRecord::decode(&bytes).unwrap();
        assert_eq!(kept.probe, probe);
        assert_eq!(kept.boot_id, this_boot());
        assert_eq!(kept.preallocation, Preallocation::Fallocate);
        let report = scan_journal(&path, &mut ()).unwrap();
        assert_eq!(report.durability_record, Some(Ok(kept)));
        assert!(report.is_intact() && report.stray.is_empty() && report.leftovers.is_empty());

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
        journal_holding_kept(&path).await;
        // What a crash in the middle of a probe (or of writing its record)
        // leaves: `inspect` says a reopen removes them.
        for name in PROBE_LEFTOVER_NAMES {
            std::fs::write(path.join(name), vec![0xa5; 8192]).unwrap();
        }
        let report = scan_journal(&path, &mut ()).unwrap();
        assert_eq!(report.leftovers.len(), PROBE_LEFTOVER_NAMES.len());
        assert!(report.stray.is_empty() && report.is_intact());
        let journal = small(Journal::builder(&path))
            .durability(Durability::WriteThrough)
            .open()
            .await
            .unwrap();
        let choice = journal.durability_choice();
        assert_eq!(choice.configured, Durability::WriteThrough);
        assert_eq!(choice.chosen, Durability::WriteThrough);
        assert_eq!(choice.probe, ProbeOutcome::NotRun);
        // Removed by recovery as the leftovers `inspect` called them, and
        // reported so; not strays of the journal.
        assert!(
            journal.recovery_report().stray_files.is_empty(),
            "{:?}",
            journal.recovery_report().stray_files
        );
        let mut removed = journal.recovery_report().removed.clone();
        removed.sort();
        let mut expected: Vec<_> = PROBE_LEFTOVER_NAMES.iter().map(|n| path.join(n)).collect();
        expected.sort();
        assert_eq!(removed, expected);
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
    let mut recorded = 0;
    // The probe's rounds are cut by time, so a life may make more
    // operations than the counted one: cut further until a life keeps
    // the record (bounded).
    let mut n = 0;
    while n < total || (recorded == 0 && n < total * 4) {
        n += 1;
        let (tx, rx) = std::sync::mpsc::channel();
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
            // A record under its name is whole and of this cut's device
            // (`mem_record` panics on one that does not verify).
            let kept = mem_record(&mem, "/mem/wal");
            if let Some(kept) = kept {
                assert_eq!(kept.device, 1 << 40 | n, "cut at op {n}");
            }
            tx.send(kept.is_some()).unwrap();
        });
        recorded += u64::from(rx.recv().unwrap());
    }
    // The cuts after the record's rename reached the disk keep it.
    assert!(recorded > 0, "no cut kept the record");
    assert!(recorded < n, "every cut kept the record");
    println!(
        "durability probe crash test: {n} power cuts ({recorded} kept the record), 0 violations"
    );
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

/// Figures no real probe measures (a clear win for O_DSYNC writes), so an
/// open that reports them took them from the record.
fn forged_probe() -> DurabilityProbe {
    DurabilityProbe {
        rounds: 3,
        sync_p50: Duration::from_micros(977),
        write_through_p50: Duration::from_micros(11),
    }
}

/// A simulated disk reporting `device`, holding a journal (opened once with
/// a configured durability, so nothing probed) and, if given, `record` in
/// its directory.
async fn seeded_with_record(device: u64, record: Option<&DurabilityRecord>) -> MemStorage {
    let mem = MemStorage::new();
    seeded(&mem).await;
    if let Some(record) = record {
        record::write(&mem, Path::new("/mem/wal"), record)
            .await
            .unwrap();
    }
    mem.set_latency_device(Some(device));
    mem
}

#[test]
fn a_record_of_this_device_preparation_and_boot_is_taken_without_probing() {
    run(|| async {
        let device = 4 << 40;
        let kept =
            DurabilityRecord::now(device, Preallocation::ZeroFill, this_boot(), forged_probe());
        let mem = seeded_with_record(device, Some(&kept)).await;
        // An open with a configured durability neither reads nor touches it.
        let journal = probing(&mem)
            .durability(Durability::Sync)
            .open()
            .await
            .unwrap();
        assert_eq!(journal.durability_choice().probe, ProbeOutcome::NotRun);
        journal.close().await.unwrap();
        assert_eq!(mem_record(&mem, "/mem/wal"), Some(kept));
        let journal = probing(&mem).open().await.unwrap();
        let choice = journal.durability_choice().clone();
        assert_eq!(choice.probe, ProbeOutcome::Recorded(forged_probe()));
        assert_eq!(choice.chosen, Durability::WriteThrough);
        assert_eq!(journal.stats().durability, Durability::WriteThrough);
        for op in ACKED_BEFORE + 1..=ACKED_BEFORE + 3 {
            assert_eq!(journal.append(&payload(op, 500)).await.unwrap(), op);
        }
        journal.close().await.unwrap();
        // Left as it was, and taken by the next open of this process from
        // memory.
        assert_eq!(mem_record(&mem, "/mem/wal"), Some(kept));
        let journal = probing(&mem).open().await.unwrap();
        assert_eq!(
            journal.durability_choice().probe,
            ProbeOutcome::Cached(forged_probe())
        );
        journal.close().await.unwrap();
    });
}

#[test]
fn a_record_of_another_device_preparation_or_boot_is_measured_again() {
    let other_boot = {
        let mut boot = this_boot();
        boot[0] ^= 0xff;
        boot
    };
    let cases = [
        (
            "another device",
            5 << 40,
            5 << 40 | 1,
            Preallocation::ZeroFill,
            this_boot(),
        ),
        (
            "another preparation",
            6 << 40,
            6 << 40,
            Preallocation::Fallocate,
            this_boot(),
        ),
        (
            "another boot",
            7 << 40,
            7 << 40,
            Preallocation::ZeroFill,
            other_boot,
        ),
    ];
    for (case, device, recorded_device, preallocation, boot) in cases {
        run(move || async move {
            let stale = DurabilityRecord::now(recorded_device, preallocation, boot, forged_probe());
            let mem = seeded_with_record(device, Some(&stale)).await;
            let journal = probing(&mem).open().await.unwrap();
            let ProbeOutcome::Measured(measured) = journal.durability_choice().probe else {
                panic!("{case}: {:?}", journal.durability_choice());
            };
            assert_ne!(measured, forged_probe(), "{case}");
            journal.close().await.unwrap();
            // Replaced by what this open measured, for this boot.
            let kept = mem_record(&mem, "/mem/wal").expect("a record");
            assert!(
                kept.applies_to(device, Preallocation::ZeroFill, this_boot()),
                "{case}: {kept:?}"
            );
            assert_eq!(kept.probe, measured, "{case}");
        });
    }
}

#[test]
fn a_damaged_record_is_measured_again_and_replaced() {
    let device = 8 << 40;
    let kept = DurabilityRecord::now(device, Preallocation::ZeroFill, this_boot(), forged_probe());
    let good = kept.encode();
    let mut flipped = good.clone();
    flipped[40] ^= 0x10;
    let damaged = [
        ("a flipped bit", flipped),
        ("cut short", good[..good.len() - 1].to_vec()),
        ("empty", Vec::new()),
        ("zeroed", vec![0; good.len()]),
    ];
    for (n, (case, bytes)) in damaged.into_iter().enumerate() {
        let device = device | n as u64;
        run(move || async move {
            let mem = seeded_with_record(device, None).await;
            mem.insert_file(
                &Path::new("/mem/wal").join(DURABILITY_RECORD_FILE_NAME),
                bytes,
            );
            let journal = probing(&mem).open().await.unwrap();
            assert!(
                matches!(journal.durability_choice().probe, ProbeOutcome::Measured(_)),
                "{case}: {:?}",
                journal.durability_choice()
            );
            // Nothing acknowledged is touched by it.
            for op in 1..=ACKED_BEFORE {
                let entry = journal.read(op).await.unwrap().expect("acknowledged");
                assert_eq!(entry.payload, payload(op, 500), "{case}");
            }
            journal.close().await.unwrap();
            let replaced = mem_record(&mem, "/mem/wal").expect("a record");
            assert!(replaced.applies_to(device, Preallocation::ZeroFill, this_boot()));
        });
    }
}

#[test]
fn a_record_that_cannot_be_written_fails_nothing() {
    run(|| async {
        let device = 9 << 40;
        let mem = seeded_with_record(device, None).await;
        // The open's first rename is the record's (the journal exists).
        mem.fail_next_renames(1, libc::EIO);
        let journal = probing(&mem).open().await.unwrap();
        assert!(matches!(
            journal.durability_choice().probe,
            ProbeOutcome::Measured(_)
        ));
        assert_eq!(
            journal.append(&payload(99, 500)).await.unwrap(),
            ACKED_BEFORE + 1
        );
        journal.close().await.unwrap();
        let names = mem.list_dir(Path::new("/mem/wal")).unwrap();
        assert!(
            !names
                .iter()
                .any(|n| n == DURABILITY_RECORD_FILE_NAME || n == DURABILITY_RECORD_TEMP_NAME),
            "{names:?}"
        );
    });
}

#[test]
fn inspect_reports_a_damaged_record_without_calling_it_damage() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        journal_holding_kept(&path).await;
        let record_path = path.join(DURABILITY_RECORD_FILE_NAME);
        let kept = DurabilityRecord::now(1, Preallocation::Fallocate, this_boot(), forged_probe());
        let mut bytes = kept.encode();
        bytes[60] ^= 1;
        std::fs::write(&record_path, &bytes).unwrap();
        let report = scan_journal(&path, &mut ()).unwrap();
        let Some(Err(reason)) = &report.durability_record else {
            panic!("{:?}", report.durability_record);
        };
        assert!(reason.contains("checksum"), "{reason}");
        assert!(report.is_intact() && report.damage.is_empty() && report.stray.is_empty());
        // An open that probes replaces it; one with a configured
        // durability leaves it alone (it reads nothing of it).
        let journal = small(Journal::builder(&path)).open().await.unwrap();
        assert!(matches!(
            journal.durability_choice().probe,
            ProbeOutcome::Measured(_) | ProbeOutcome::Cached(_)
        ));
        assert_eq!(journal.read(1).await.unwrap().unwrap().payload, b"kept");
        journal.close().await.unwrap();
        let report = scan_journal(&path, &mut ()).unwrap();
        let Some(Ok(replaced)) = report.durability_record else {
            panic!("{:?}", report.durability_record);
        };
        assert_eq!(replaced.boot_id, this_boot());
        assert_eq!(replaced.preallocation, Preallocation::Fallocate);
    });
}

#[test]
fn a_journal_opened_on_cached_figures_gets_a_record_once() {
    run(|| async {
        let device = 10 << 40;
        let mem = seeded_with_record(device, None).await;
        let first = probing(&mem).open().await.unwrap();
        let ProbeOutcome::Measured(measured) = first.durability_choice().probe else {
            panic!("{:?}", first.durability_choice());
        };
        first.close().await.unwrap();
        // Another journal on the device, in this process: the figures
        // from memory, and a record of its own for the next process.
        let other = Path::new("/mem/other");
        let open_other = || {
            small(Journal::builder(other).storage(mem.clone()))
                .preallocation(Preallocation::ZeroFill)
                .open()
        };
        let second = open_other().await.unwrap();
        assert_eq!(
            second.durability_choice().probe,
            ProbeOutcome::Cached(measured)
        );
        second.close().await.unwrap();
        let record_path = other.join(DURABILITY_RECORD_FILE_NAME);
        assert_eq!(
            mem_record(&mem, "/mem/other").map(|r| r.probe),
            Some(measured)
        );
        let written = mem.stat(&record_path).await.unwrap().id;
        // Its next open finds the record applies and leaves it alone.
        let third = open_other().await.unwrap();
        assert_eq!(
            third.durability_choice().probe,
            ProbeOutcome::Cached(measured)
        );
        third.close().await.unwrap();
        assert_eq!(mem.stat(&record_path).await.unwrap().id, written);
    });
}
