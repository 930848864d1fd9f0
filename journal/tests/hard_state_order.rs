//! Writes serialized with hard states: a hard state saved after an append
//! was queued must not be visible (after a crash, or at all) unless that
//! append is durable too (`Journal::set_hard_state`'s promise, which a
//! consensus replica — openraft's "all write-IO must be serialized" —
//! relies on).
//!
//! Pins a case the journal once broke: a group-commit write that fails
//! before it is issued without poisoning the journal (no room for the next
//! segment) let the write queued after it — here the hard state's, small
//! enough for the current segment — become durable. Now everything queued
//! behind a write that fails unissued fails with it.
mod common;
use common::*;
use ringstore_journal::storage::{FaultConfig, MemStorage};
use ringstore_journal::{Journal, JournalBuilder};

fn builder(mem: &MemStorage) -> JournalBuilder<MemStorage> {
    Journal::builder("/mem/wal")
        .segment_bytes(64 << 10)
        .batch_bytes_max(16 << 10)
        .entry_bytes_max(4 << 10)
        .slot_count(128)
        .storage(mem.clone())
}

/// No room for a third segment: its creation fails with ENOSPC.
#[test]
fn a_hard_state_queued_after_an_append_is_not_durable_without_it_full_disk() {
    run(|| hard_state_after_a_failed_rollover(true));
}

/// The third segment's creation fails with EIO (the benign fault model's
/// failed writes and syncs), in the background and again in the foreground.
#[test]
fn a_hard_state_queued_after_an_append_is_not_durable_without_it_create_eio() {
    run(|| hard_state_after_a_failed_rollover(false));
}

/// Queues an append that needs a new segment, whose creation fails without
/// poisoning the journal, then — while that append's write is in flight —
/// a hard state small enough for the current segment; then cuts the power.
async fn hard_state_after_a_failed_rollover(full_disk: bool) {
    let mem = MemStorage::new();
    let journal = builder(&mem).open().await.unwrap();
    // The spare segment (prepared in the background) exists: the first
    // rollover takes it.
    let used = bytes_once_the_spare_exists(&mem).await;
    let capacity = full_disk.then_some(used);
    mem.set_capacity(capacity);
    // One 4 KiB write per append, 14 per segment (the last block is the
    // watermark reserve): 27 leave one block free in the second.
    for op in 1..=27 {
        if op == 15 && !full_disk {
            // The rollover of op 15 starts preparing the next spare.
            mem.fail_next_creates(1, libc::EIO);
        }
        assert_eq!(journal.append(&payload(op, 1000)).await.unwrap(), op);
    }
    if !full_disk {
        mem.fail_next_creates(1, libc::EIO);
    }
    // Every storage operation yields first, so the writer's attempt to
    // create a third segment spans several turns of the executor.
    let append = queue_append_needing_a_new_segment(&journal, &mem, capacity, 28).await;
    // The hard state goes into the next write: one block, which fits.
    let vote = b"voted for 2 in term 7".to_vec();
    let hard_state = journal.set_hard_state(&vote).await;
    let appended = append.durable().await;
    eprintln!(
        "append: {appended:?}; hard state: {hard_state:?}; poisoned: {}",
        journal.is_poisoned()
    );

    // A power cut now: the next open must not hold the hard state without
    // the append queued before it.
    drop(journal);
    mem.crash();
    mem.set_faults(FaultConfig::none());
    let journal = builder(&mem).open().await.unwrap();
    let visible = journal.hard_state() == vote;
    let present = journal.read(28).await.unwrap().is_some();
    eprintln!("after the crash: hard state visible {visible}, op 28 present {present}");
    assert!(
        !visible || present,
        "the hard state set after op 28 was queued survived the crash, but op 28 is missing \
         (append: {appended:?}; hard state: {hard_state:?})"
    );
}

/// The simulator's hard-state order check where it bites: bursts of
/// appends, a hard state queued behind them without waiting, and a power
/// cut a few storage operations later, so that the writes ahead of the
/// hard state and its own are in flight at the cut.
#[test]
fn hard_states_queued_behind_appends_under_power_cuts() {
    use ringstore_journal::sim::{run_ops, SimOp, SimReport, SimShape};
    run(|| async {
        let mut total = SimReport::default();
        for seed in 0..12u64 {
            for after_ops in 0..12u8 {
                let mut ops = Vec::new();
                for round in 0..6u16 {
                    let burst = 1 + (seed as u16 + round) % 6;
                    ops.extend((0..burst).map(|i| SimOp::Append { len: 100 + 700 * i }));
                    // Lets the burst reach the journal's write pipeline.
                    ops.push(SimOp::Read { back: 0 });
                    ops.extend((0..seed as u16 % 3).map(|i| SimOp::Append { len: 300 + 500 * i }));
                    ops.push(SimOp::QueueHardState);
                    ops.push(SimOp::Append { len: 50 });
                    ops.push(SimOp::Crash {
                        after_ops: (after_ops + round as u8) % 12,
                    });
                }
                match run_ops(seed, FaultConfig::benign(), SimShape::default(), &ops).await {
                    Ok(report) => total.add(&report),
                    Err(violation) => panic!("after_ops {after_ops}: {violation}"),
                }
            }
        }
        assert!(total.crash_cycles > 0);
        assert!(
            total.hard_state_orderings_checked > 0,
            "no hard state ever had entries queued ahead of it"
        );
    });
}
