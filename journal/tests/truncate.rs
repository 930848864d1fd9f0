//! Pins `Journal::truncate_after` (a consensus log's divergent suffix) and
//! `Journal::set_hard_state` (a replica's vote and commit point): at every
//! position, across segments and with a watermark, on reopen and after a
//! power cut at every storage operation.
mod common;
use common::*;
use ringstore_journal::storage::{FaultConfig, MemStorage};
use ringstore_journal::{Error, Journal, JournalBuilder};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// Ops in the log before a truncation.
const OPS: u64 = 40;
/// Payload bytes: about ten entries per 16 KiB write, several segments.
const ENTRY: usize = 1500;

fn builder(mem: &MemStorage) -> JournalBuilder<MemStorage> {
    Journal::builder("/mem/wal")
        .segment_bytes(64 << 10)
        .batch_bytes_max(16 << 10)
        .entry_bytes_max(4 << 10)
        .slot_count(128)
        .storage(mem.clone())
}

/// A payload distinct per (op, version).
fn version(op: u64, v: u64) -> Vec<u8> {
    payload(op * 1000 + v, ENTRY)
}

/// Reads every op in `1..=last` and compares with `expected` (absent from
/// `expected`: must read as missing). Ops at or below the watermark are
/// skipped.
async fn check(
    journal: &Journal<MemStorage>,
    expected: &BTreeMap<u64, Vec<u8>>,
    last: u64,
    what: &str,
) {
    let watermark = journal.watermark();
    for op in watermark + 1..=last {
        let got = journal
            .read(op)
            .await
            .unwrap_or_else(|e| panic!("{what}: read {op}: {e}"))
            .map(|e| e.payload);
        assert_eq!(got.as_ref(), expected.get(&op), "{what}: op {op}");
    }
}

#[test]
fn truncation_at_every_position_holds_across_reopen_and_crash() {
    let (tx, rx) = std::sync::mpsc::channel();
    run(move || async move {
        let mut truncations = 0;
        for watermark in [0, 7] {
            for at in 0..=OPS + 1 {
                let mem = MemStorage::new();
                let journal = builder(&mem).open().await.unwrap();
                let mut expected = BTreeMap::new();
                for op in 1..=OPS {
                    assert_eq!(journal.append(&version(op, 0)).await.unwrap(), op);
                    expected.insert(op, version(op, 0));
                }
                if watermark > 0 {
                    journal.advance_watermark(watermark).await.unwrap();
                }
                let result = journal.truncate_after(at).await;
                if at < watermark {
                    assert!(
                        matches!(result, Err(Error::BelowWatermark { op, .. }) if op == at),
                        "truncate_after({at}) below watermark {watermark}: {result:?}"
                    );
                    continue;
                }
                result.unwrap();
                truncations += 1;
                expected.retain(|op, _| *op <= at);
                let what = format!("truncate_after({at}), watermark {watermark}");
                assert_eq!(journal.next_op(), (at + 1).min(OPS + 1), "{what}");
                check(&journal, &expected, OPS + 2, &what).await;
                // The freed op numbers are written again, in the same epoch.
                let next = journal.next_op();
                for op in next..next + 3 {
                    assert_eq!(journal.append(&version(op, 1)).await.unwrap(), op);
                    expected.insert(op, version(op, 1));
                }
                check(&journal, &expected, OPS + 4, &what).await;
                journal.close().await.unwrap();
                let journal = builder(&mem).open().await.unwrap();
                check(&journal, &expected, OPS + 4, &format!("{what}, reopened")).await;
                assert_eq!(
                    journal.stats().truncations,
                    0,
                    "stats count this open's only"
                );
                drop(journal);
                mem.crash();
                let journal = builder(&mem).open().await.unwrap();
                check(&journal, &expected, OPS + 4, &format!("{what}, crashed")).await;
                journal.close().await.unwrap();
            }
        }
        tx.send(truncations).unwrap();
    });
    println!(
        "truncation at every position: {} truncations checked",
        rx.recv().unwrap()
    );
}

#[test]
fn a_replica_write_above_a_truncation_needs_no_greater_epoch() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = builder(&mem).open().await.unwrap();
        journal.set_epoch(3).unwrap();
        for op in 1..=5 {
            journal.write(op, &version(op, 0)).await.unwrap();
        }
        // Without a truncation, op 5 exists: a rewrite needs a later epoch.
        assert!(journal.write(5, &version(5, 1)).await.is_err());
        journal.truncate_after(3).await.unwrap();
        assert_eq!(journal.read(4).await.unwrap(), None);
        journal.write(4, &version(4, 1)).await.unwrap();
        journal.write(5, &version(5, 1)).await.unwrap();
        journal.close().await.unwrap();
        let journal = builder(&mem).open().await.unwrap();
        for (op, v) in [(3, 0), (4, 1), (5, 1)] {
            assert_eq!(
                journal.read(op).await.unwrap().map(|e| e.payload),
                Some(version(op, v)),
                "op {op}"
            );
        }
        journal.close().await.unwrap();
    });
}

#[test]
fn a_truncation_waits_for_writes_in_flight_and_orders_with_later_appends() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = builder(&mem).open().await.unwrap();
        // Queued, not yet durable: the truncation must come after them.
        let mut queued = Vec::new();
        for op in 1..=20 {
            queued.push(journal.queue_append(&version(op, 0)).await.unwrap());
        }
        journal.truncate_after(10).await.unwrap();
        for q in queued {
            q.durable().await.unwrap();
        }
        let op = journal.append(&version(11, 1)).await.unwrap();
        assert_eq!(op, 11);
        assert_eq!(journal.read(12).await.unwrap(), None);
        journal.close().await.unwrap();
        let journal = builder(&mem).open().await.unwrap();
        assert_eq!(
            journal.read(11).await.unwrap().map(|e| e.payload),
            Some(version(11, 1))
        );
        assert_eq!(journal.read(12).await.unwrap(), None);
        assert_eq!(journal.next_op(), 12);
        journal.close().await.unwrap();
    });
}

/// A replica's writes may leave gaps. A truncation at a gap leaves the
/// next op one above the highest op still held, as a reopen finds it.
#[test]
fn a_truncation_at_a_gap_continues_above_the_highest_op_held() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = builder(&mem).open().await.unwrap();
        for op in [1, 2, 6, 7] {
            journal.write(op, &version(op, 0)).await.unwrap();
        }
        assert_eq!(journal.next_op(), 8);
        journal.truncate_after(4).await.unwrap();
        assert_eq!(journal.next_op(), 3, "ops 3 and 4 were never written");
        assert_eq!(journal.read(6).await.unwrap(), None);
        journal.close().await.unwrap();
        let journal = builder(&mem).open().await.unwrap();
        assert_eq!(journal.next_op(), 3, "reopen agrees");
        assert_eq!(journal.append(&version(3, 1)).await.unwrap(), 3);
        journal.close().await.unwrap();
    });
}

/// What the journal acknowledged before the power went, and what it was
/// asked that may or may not have become durable.
#[derive(Default)]
struct Acked {
    ops: BTreeMap<u64, Vec<u8>>,
    truncated_after: Option<u64>,
    hard_states: Vec<Vec<u8>>,
    hard_state_acked: usize,
}

/// Appends, a hard state, a truncation across a segment boundary, more
/// appends and hard states; stops at the first error (the power cut).
async fn life(mem: &MemStorage, acked: Rc<RefCell<Acked>>) -> Result<(), Error> {
    let journal = builder(mem).open().await?;
    for op in 1..=30 {
        journal.append(&version(op, 0)).await?;
        acked.borrow_mut().ops.insert(op, version(op, 0));
        if op % 10 == 0 {
            let hs = format!("term {op}").into_bytes();
            acked.borrow_mut().hard_states.push(hs.clone());
            journal.set_hard_state(&hs).await?;
            let count = acked.borrow().hard_states.len();
            acked.borrow_mut().hard_state_acked = count;
        }
    }
    {
        // From here on ops above 12 may be gone: the truncation may be
        // durable before it is acknowledged.
        acked.borrow_mut().ops.retain(|op, _| *op <= 12);
    }
    journal.truncate_after(12).await?;
    acked.borrow_mut().truncated_after = Some(12);
    for op in 13..=18 {
        journal.append(&version(op, 1)).await?;
        acked.borrow_mut().ops.insert(op, version(op, 1));
    }
    let hs = b"term 99".to_vec();
    acked.borrow_mut().hard_states.push(hs.clone());
    journal.set_hard_state(&hs).await?;
    let count = acked.borrow().hard_states.len();
    acked.borrow_mut().hard_state_acked = count;
    journal.close().await
}

#[test]
fn a_power_cut_at_every_step_keeps_truncations_and_hard_state_in_order() {
    let total = operations_of_a_life(|mem| async move { life(&mem, Rc::default()).await.is_ok() });
    let (tx, rx) = std::sync::mpsc::channel();
    run(move || async move {
        let mut cuts = 0;
        for n in 1..=total {
            for faults in [FaultConfig::none(), FaultConfig::benign()] {
                let mem = MemStorage::with_faults(n, faults);
                let acked = Rc::new(RefCell::new(Acked::default()));
                mem.cut_power_after_ops(n);
                let _ = life(&mem, acked.clone()).await;
                mem.crash();
                mem.set_faults(FaultConfig::none());
                let acked = std::mem::take(&mut *acked.borrow_mut());
                let journal = builder(&mem)
                    .open()
                    .await
                    .unwrap_or_else(|e| panic!("cut at op {n}: reopen failed: {e}"));
                // Every acknowledged op, with the bytes last acknowledged.
                for (&op, bytes) in &acked.ops {
                    let got = journal.read(op).await.unwrap().map(|e| e.payload);
                    assert_eq!(got.as_ref(), Some(bytes), "cut at op {n}: op {op}");
                }
                // Above a durable truncation, only what was written after it.
                if acked.truncated_after.is_some() {
                    for op in 13..=30 {
                        if let Some(e) = journal.read(op).await.unwrap() {
                            assert_eq!(e.payload, version(op, 1), "cut at op {n}: op {op}");
                        }
                    }
                } else {
                    // Submitted or not: what is there is the old version.
                    for op in 13..=30 {
                        if let Some(e) = journal.read(op).await.unwrap() {
                            assert_eq!(e.payload, version(op, 0), "cut at op {n}: op {op}");
                        }
                    }
                }
                // The hard state: one that was submitted, no older than the
                // last acknowledged, and never newer than the appends before
                // it allow (a hard state is never durable without them).
                let hs = journal.hard_state();
                if acked.hard_state_acked > 0 {
                    let at = acked
                        .hard_states
                        .iter()
                        .position(|h| *h == hs)
                        .unwrap_or_else(|| panic!("cut at op {n}: hard state {hs:?} never set"));
                    assert!(
                        at + 1 >= acked.hard_state_acked,
                        "cut at op {n}: older hard state"
                    );
                } else {
                    assert!(
                        hs.is_empty() || acked.hard_states.contains(&hs),
                        "cut at op {n}: hard state {hs:?}"
                    );
                }
                let needs = match hs.as_slice() {
                    b"term 10" => Some((10, version(10, 0))),
                    b"term 99" => Some((18, version(18, 1))),
                    _ => None,
                };
                if let Some((op, bytes)) = needs {
                    assert_eq!(
                        journal.read(op).await.unwrap().map(|e| e.payload),
                        Some(bytes),
                        "cut at op {n}: hard state {hs:?} without the append before it"
                    );
                }
                journal.close().await.unwrap();
                cuts += 1;
            }
        }
        tx.send(cuts).unwrap();
    });
    println!(
        "truncation and hard state: {} power cuts over {total} storage operations, 0 violations",
        rx.recv().unwrap()
    );
}

#[test]
fn the_hard_state_survives_retiring_the_segment_that_holds_its_record() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = builder(&mem).open().await.unwrap();
        journal.set_hard_state(b"vote 7 for node 2").await.unwrap();
        // Enough appends to fill several segments, then a watermark past
        // them all: the first segment (with the record) is retired.
        for op in 1..=120 {
            journal.append(&version(op, 0)).await.unwrap();
        }
        journal.advance_watermark(115).await.unwrap();
        assert!(journal.stats().segments_retired > 0);
        journal.close().await.unwrap();
        let journal = builder(&mem).open().await.unwrap();
        assert_eq!(journal.hard_state(), b"vote 7 for node 2");
        journal.close().await.unwrap();
    });
}

#[test]
fn bad_arguments_are_refused_with_typed_errors() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = builder(&mem).open().await.unwrap();
        let too_large = vec![1u8; ringstore_journal::format::HARD_STATE_BYTES_MAX + 1];
        assert!(matches!(
            journal.set_hard_state(&too_large).await,
            Err(Error::EntryTooLarge { .. })
        ));
        for op in 1..=5 {
            journal.append(&version(op, 0)).await.unwrap();
        }
        journal.advance_watermark(3).await.unwrap();
        assert!(matches!(
            journal.truncate_after(2).await,
            Err(Error::BelowWatermark {
                op: 2,
                watermark: 3
            })
        ));
        assert!(matches!(
            journal.truncate_after(u64::MAX).await,
            Err(Error::InvalidOp { op: u64::MAX })
        ));
        // Truncating at the watermark discards everything above it.
        journal.truncate_after(3).await.unwrap();
        assert_eq!(journal.read(4).await.unwrap(), None);
        assert_eq!(journal.hard_state(), Vec::<u8>::new());
        journal.close().await.unwrap();
    });
}

/// A journal on `mem` whose next open cuts its tail: the hard state is
/// "term 1", and the last write (op 2, in the second segment) is damaged.
async fn a_tail_to_cut(mem: &MemStorage) {
    let journal = builder(mem).open().await.unwrap();
    journal.set_hard_state(b"term 1").await.unwrap();
    journal.append(&version(1, 0)).await.unwrap();
    journal.close().await.unwrap();
    let journal = builder(mem).open().await.unwrap();
    // After a clean close: no cut.
    assert!(!journal.recovery_report().tail_is_uncertain());
    journal.append(&version(2, 0)).await.unwrap();
    drop(journal);
    mem.crash();
    let path = std::path::Path::new("/mem/wal").join(ringstore_journal::segment_file_name(2));
    let mut bytes = mem.file_bytes(&path).expect("the second segment");
    let first_entry = ringstore_journal::format::SEGMENT_DATA_OFFSET as usize;
    bytes[first_entry + 100] ^= 0xff;
    mem.set_file_bytes(&path, bytes);
}

/// The uncertain-tail signal a consensus layer acts on: set by a cut tail,
/// not by a clean end.
#[test]
fn a_cut_tail_is_reported_as_uncertain_and_a_clean_end_is_not() {
    run(|| async {
        let mem = MemStorage::new();
        a_tail_to_cut(&mem).await;
        let journal = builder(&mem).open().await.unwrap();
        let report = journal.recovery_report();
        assert!(report.tail_is_uncertain(), "{report:?}");
        assert_eq!(journal.read(2).await.unwrap(), None);
        assert_eq!(journal.hard_state(), b"term 1");
        journal.close().await.unwrap();
    });
}

/// What `hard_state_after_cut` makes of a hard state in these tests.
fn mark(hard_state: &[u8], _last_op: u64) -> Vec<u8> {
    let mut marked = hard_state.to_vec();
    if !marked.ends_with(b" marked") {
        marked.extend_from_slice(b" marked");
    }
    marked
}

/// The mark of a cut tail (`hard_state_after_cut`) is durable before the
/// open records the cut: a power cut at any step of that open leaves the
/// next open either the cut to find again or the mark. Without the mark,
/// the open that cut the tail is the only one to report it.
#[test]
fn a_mark_of_a_cut_tail_is_durable_before_the_cut_is_recorded() {
    run(|| async {
        let mem = MemStorage::new();
        a_tail_to_cut(&mem).await;
        let journal = builder(&mem).open().await.unwrap();
        assert!(journal.recovery_report().tail_is_uncertain());
        journal.close().await.unwrap();
        let journal = builder(&mem).open().await.unwrap();
        assert!(!journal.recovery_report().tail_is_uncertain());
        assert_eq!(journal.hard_state(), b"term 1");
        journal.close().await.unwrap();

        let mut n = 1;
        loop {
            let mem = MemStorage::new();
            a_tail_to_cut(&mem).await;
            mem.cut_power_after_ops(n);
            let opened = builder(&mem).hard_state_after_cut(mark).open().await;
            let completed = opened.is_ok();
            drop(opened);
            mem.crash();
            let journal = builder(&mem).open().await.unwrap();
            let uncertain = journal.recovery_report().tail_is_uncertain();
            let hard_state = journal.hard_state();
            assert!(
                uncertain || hard_state == b"term 1 marked",
                "power cut at op {n} of the open: neither the cut nor the mark is left \
                 (hard state {:?})",
                String::from_utf8_lossy(&hard_state)
            );
            journal.close().await.unwrap();
            if completed {
                break;
            }
            assert!(n < 10_000, "the open never completes");
            n += 1;
        }
        assert!(n > 3, "the open took {n} storage operations");
    });
}

/// A hook whose hard state is longer than a hard state may be fails the
/// open that cut the tail with a typed error, before anything records the
/// cut: the next open with a sound hook finds the same cut and marks it.
#[test]
fn a_mark_longer_than_a_hard_state_fails_the_open_and_leaves_the_cut() {
    fn too_long(_: &[u8], _: u64) -> Vec<u8> {
        vec![b'x'; ringstore_journal::format::HARD_STATE_BYTES_MAX + 1]
    }
    run(|| async {
        let mem = MemStorage::new();
        a_tail_to_cut(&mem).await;
        match builder(&mem).hard_state_after_cut(too_long).open().await {
            Err(ringstore_journal::Error::EntryTooLarge { len, max }) => {
                assert_eq!((len, max), (max + 1, 128));
            }
            other => panic!("expected EntryTooLarge, got {:?}", other.map(|_| ())),
        }
        let journal = builder(&mem)
            .hard_state_after_cut(mark)
            .open()
            .await
            .unwrap();
        assert!(journal.recovery_report().tail_is_uncertain());
        assert_eq!(journal.hard_state(), b"term 1 marked");
        journal.close().await.unwrap();
    });
}

/// A hard state copied into the superblock outlives a cut of the write
/// that holds its record (a replica's vote must), while one that is not
/// copied goes with that write; a later record wins over the copy.
#[test]
fn a_hard_state_copied_to_the_superblock_outlives_a_cut_tail() {
    for copied in [false, true] {
        run(move || async move {
            let mem = MemStorage::new();
            let journal = builder(&mem).open().await.unwrap();
            journal.set_hard_state(b"term 1").await.unwrap();
            journal.append(&version(1, 0)).await.unwrap();
            journal.close().await.unwrap();
            // The second open's segment: its first write holds "term 2".
            let journal = builder(&mem).open().await.unwrap();
            journal.set_hard_state(b"term 2").await.unwrap();
            if copied {
                journal.copy_hard_state_to_superblock().await.unwrap();
            }
            drop(journal);
            mem.crash();
            let path =
                std::path::Path::new("/mem/wal").join(ringstore_journal::segment_file_name(2));
            let mut bytes = mem.file_bytes(&path).expect("the second segment");
            let first_entry = ringstore_journal::format::SEGMENT_DATA_OFFSET as usize;
            bytes[first_entry + 40] ^= 0xff;
            mem.set_file_bytes(&path, bytes);
            let journal = builder(&mem).open().await.unwrap();
            let report = journal.recovery_report();
            assert!(report.tail_is_uncertain(), "{report:?}");
            let expected: &[u8] = if copied { b"term 2" } else { b"term 1" };
            assert_eq!(journal.hard_state(), expected, "copied: {copied}");
            journal.set_hard_state(b"term 3").await.unwrap();
            journal.close().await.unwrap();
            let journal = builder(&mem).open().await.unwrap();
            assert_eq!(journal.hard_state(), b"term 3");
            journal.close().await.unwrap();
        });
    }
}
/// A truncation forgets the ops in memory when it is queued; if its record
/// cannot be written (a full disk when it needs a new segment), memory and
/// disk disagree, so the journal is poisoned rather than left usable (a
/// full disk leaves it usable otherwise), and a reopen serves what the disk
/// holds: the ops the truncation did not remove.
#[test]
fn a_truncation_that_cannot_be_written_poisons_the_journal() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = builder(&mem).open().await.unwrap();
        // Once the spare segment (prepared in the background) exists, no
        // room for any other: the first rollover takes the spare, the next
        // one fails.
        let used = bytes_once_the_spare_exists(&mem).await;
        mem.set_capacity(Some(used));
        // Fill both segments: one 4 KiB write per append, 14 fit in each.
        for op in 1..=28 {
            assert_eq!(journal.append(&version(op, 0)).await.unwrap(), op);
        }
        let result = journal.truncate_after(5).await;
        assert!(matches!(result, Err(Error::NoSpace { .. })), "{result:?}");
        assert!(journal.is_poisoned());
        assert!(matches!(
            journal.append(&version(6, 1)).await,
            Err(Error::Poisoned { .. })
        ));
        drop(journal);
        mem.set_capacity(None);
        let journal = builder(&mem).open().await.unwrap();
        for op in 1..=28 {
            assert_eq!(
                journal.read(op).await.unwrap().map(|e| e.payload),
                Some(version(op, 0)),
                "op {op}"
            );
        }
        journal.close().await.unwrap();
    });
}

/// A truncation below a watermark an advance has asked for, durable or not,
/// is refused: those ops may already be in the caller's snapshot.
#[test]
fn a_truncation_below_a_requested_watermark_is_refused() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = builder(&mem).open().await.unwrap();
        for op in 1..=10 {
            journal.append(&version(op, 0)).await.unwrap();
        }
        let advancing = {
            let journal = journal.clone();
            glommio::spawn_local(async move { journal.advance_watermark(8).await })
        };
        glommio::yield_if_needed().await;
        glommio::executor().yield_task_queue_now().await;
        let result = journal.truncate_after(6).await;
        assert!(
            matches!(result, Err(Error::BelowWatermark { op: 6, .. })),
            "{result:?}"
        );
        advancing.await.unwrap();
        journal.close().await.unwrap();
    });
}

/// A truncation that waits for a write in flight above it goes on when
/// that write fails before it is issued (no room for the segment it
/// needs): the failed write's ops are handed back, so nothing above the
/// truncation is pending any more. (It once waited for the next write to
/// finish, which on an idle log never came.)
#[test]
fn a_truncation_waiting_for_a_write_that_fails_unissued_goes_on() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = builder(&mem).open().await.unwrap();
        let used = bytes_once_the_spare_exists(&mem).await;
        mem.set_capacity(Some(used));
        // One 4 KiB write per append, 14 per segment: 27 leave one block
        // free in the second.
        for op in 1..=27 {
            assert_eq!(journal.append(&version(op, 0)).await.unwrap(), op);
        }
        // The rollover the next append needs spans several turns, and
        // fails (no room); still in flight, the truncation below waits for
        // it.
        let append = queue_append_needing_a_new_segment(&journal, &mem, Some(used), 28).await;
        let truncated =
            futures_lite::future::or(async { Some(journal.truncate_after(27).await) }, async {
                glommio::timer::sleep(std::time::Duration::from_secs(5)).await;
                None
            })
            .await;
        let appended = append.durable().await;
        assert!(
            matches!(appended, Err(Error::NoSpace { .. })),
            "the append needing a new segment: {appended:?}"
        );
        let truncated = truncated.expect("the truncation still waits 5 s after the write failed");
        // Its record fits in the block left: written.
        assert!(truncated.is_ok(), "the truncation: {truncated:?}");
        mem.set_faults(FaultConfig::none());
        mem.set_capacity(None);
        drop(journal);
        let journal = builder(&mem).open().await.unwrap();
        for op in 1..=27 {
            assert_eq!(
                journal.read(op).await.unwrap().map(|e| e.payload),
                Some(version(op, 0)),
                "op {op}"
            );
        }
        assert_eq!(journal.read(28).await.unwrap(), None);
        journal.close().await.unwrap();
    });
}
