//! Pins that every superblock update is crash-safe at every step: a journal
//! is created, rolls over several segments, retires some, closes, reopens
//! (reusing its empty last segment) and writes on; the power is cut at the
//! n-th storage operation of that life, for every n, with the in-memory
//! disk then losing, tearing or keeping unsynced writes as the fault model
//! allows. After each cut the journal must reopen with every acknowledged
//! op present (above the acknowledged watermark), nothing it never
//! acknowledged served wrong, and a second reopen must agree.
mod common;
use common::*;
use ringstore_journal::storage::{FaultConfig, MemStorage, Storage};
use ringstore_journal::superblock::SuperblockKind;
use ringstore_journal::{Journal, JournalBuilder, JournalOwner};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

const ENTRY: usize = 3000;

fn builder(mem: &MemStorage) -> JournalBuilder<MemStorage> {
    Journal::builder("/mem/wal")
        .segment_bytes(64 << 10)
        .batch_bytes_max(16 << 10)
        .entry_bytes_max(8 << 10)
        .slot_count(256)
        .owner(JournalOwner {
            domain: [5; 16],
            shard: 1,
            shards: 2,
        })
        .storage(mem.clone())
}

/// What the journal acknowledged before the power went.
#[derive(Default)]
struct Acked {
    ops: BTreeMap<u64, u64>,
    watermark: u64,
}

/// The life of one journal, stopping at the first error (the power cut).
async fn life(mem: &MemStorage, acked: Rc<RefCell<Acked>>) -> Result<(), ringstore_journal::Error> {
    let journal = builder(mem).open().await?;
    for seed in 1..=40u64 {
        let op = journal.append(&payload(seed, ENTRY)).await?;
        acked.borrow_mut().ops.insert(op, seed);
    }
    journal.advance_watermark(25).await?;
    acked.borrow_mut().watermark = 25;
    journal.close().await?;
    // Reopen: the empty last segment is reused (two superblock updates).
    let journal = builder(mem).open().await?;
    journal.close().await?;
    let journal = builder(mem).open().await?;
    for seed in 41..=60u64 {
        let op = journal.append(&payload(seed, ENTRY)).await?;
        acked.borrow_mut().ops.insert(op, seed);
    }
    journal.advance_watermark(45).await?;
    acked.borrow_mut().watermark = 45;
    journal.close().await
}

#[test]
fn a_power_cut_at_every_step_loses_nothing_acknowledged() {
    let total = operations_of_a_life(|mem| async move { life(&mem, Rc::default()).await.is_ok() });
    assert!(total > 100, "the life makes {total} storage operations");
    let mut cuts = 0;
    for n in 1..=total {
        // Every unsynced change lost; or lost, torn, reordered and undone
        // at random (with the occasional failed write or sync too).
        for (seed, faults) in [(n, FaultConfig::none()), (n, FaultConfig::benign())] {
            run(move || async move {
                let mem = MemStorage::with_faults(seed, faults);
                let acked = Rc::new(RefCell::new(Acked::default()));
                mem.cut_power_after_ops(n);
                let _ = life(&mem, acked.clone()).await;
                mem.crash();
                // The check itself runs on a disk without faults.
                mem.set_faults(FaultConfig::none());
                let acked = std::mem::take(&mut *acked.borrow_mut());
                let journal = builder(&mem)
                    .open()
                    .await
                    .unwrap_or_else(|e| panic!("cut at op {n}, seed {seed}: reopen failed: {e}"));
                // An advance cut short may still have become durable.
                let floor = journal.watermark();
                assert!(floor >= acked.watermark, "cut at op {n}");
                assert!(
                    [0, 25, 45].contains(&floor),
                    "cut at op {n}: watermark {floor}"
                );
                for (&op, &seed_of_op) in acked.ops.range(floor + 1..) {
                    let entry = journal.read(op).await.unwrap_or_else(|e| {
                        panic!("cut at op {n}: read of acknowledged op {op} failed: {e}")
                    });
                    assert_eq!(
                        entry.map(|e| e.payload),
                        Some(payload(seed_of_op, ENTRY)),
                        "cut at op {n}: acknowledged op {op}"
                    );
                }
                let next = journal.next_op();
                journal.close().await.unwrap();
                // A second open reaches the same state.
                let again = builder(&mem).open().await.unwrap();
                assert_eq!(again.next_op(), next, "cut at op {n}");
                again.close().await.unwrap();
                let names = mem.list_dir(Path::new("/mem/wal")).unwrap();
                assert!(
                    names.iter().any(|n| n == "superblock"),
                    "cut at op {n}: {names:?}"
                );
            });
            cuts += 1;
        }
    }
    println!(
        "superblock crash test: {cuts} power cuts over {total} storage operations, 0 violations"
    );
}

/// Most storage operations of one reopen cut by the second power cut below
/// (a reopen of this journal makes fewer; the loop stops once it completes).
const REOPEN_CUTS_MAX: u64 = 64;

/// The first cut of the pair lands on every this-many-th storage operation
/// of the life (every one takes about 100 s in a debug build; this keeps
/// the test near 30 s while still cutting inside every superblock update,
/// each of which spans more operations than this).
const FIRST_CUT_STRIDE: usize = 3;

/// A power cut during the life, then a second one during the recovery and
/// open that follow it, at every step of the reopen (every unsynced write
/// lost).
/// Recovery adopts what the first cut left half-done (a segment past the
/// superblock's last, a superblock whose copies differ) and then writes
/// itself: the second cut must find a journal that still opens with every
/// acknowledged op.
#[test]
fn a_second_power_cut_during_recovery_loses_nothing_acknowledged() {
    let total = operations_of_a_life(|mem| async move { life(&mem, Rc::default()).await.is_ok() });
    let (tx, rx) = std::sync::mpsc::channel();
    // One executor for all of it: thousands of pairs, each a few
    // milliseconds of in-memory I/O.
    run(move || async move {
        let mut pairs = 0u64;
        for n in (1..=total).step_by(FIRST_CUT_STRIDE) {
            for m in 1..=REOPEN_CUTS_MAX {
                let mem = MemStorage::new();
                let acked = Rc::new(RefCell::new(Acked::default()));
                mem.cut_power_after_ops(n);
                let _ = life(&mem, acked.clone()).await;
                mem.crash();
                mem.cut_power_after_ops(m);
                // Completed inside the budget: later second cuts would
                // change nothing.
                let reopened = builder(&mem).open().await.is_ok();
                mem.crash();
                let acked = std::mem::take(&mut *acked.borrow_mut());
                let journal = builder(&mem).open().await.unwrap_or_else(|e| {
                    panic!("cuts at op {n} then {m} of the reopen: reopen failed: {e}")
                });
                let floor = journal.watermark();
                assert!(floor >= acked.watermark, "cuts {n}/{m}");
                for (&op, &seed_of_op) in acked.ops.range(floor + 1..) {
                    let entry = journal.read(op).await.unwrap_or_else(|e| {
                        panic!("cuts {n}/{m}: read of acknowledged op {op} failed: {e}")
                    });
                    assert_eq!(
                        entry.map(|e| e.payload),
                        Some(payload(seed_of_op, ENTRY)),
                        "cuts {n}/{m}: acknowledged op {op}"
                    );
                }
                journal.close().await.unwrap();
                pairs += 1;
                if reopened {
                    break;
                }
            }
        }
        tx.send(pairs).unwrap();
    });
    let pairs = rx.recv().unwrap();
    println!(
        "superblock crash test: {pairs} pairs of power cuts (life, then recovery), 0 violations"
    );
}

/// Two power cuts in a row: the first between a superblock update's two
/// copies (so they differ: the first written holds the new state, the
/// other the old), the second anywhere in the next write of the superblock
/// (recovery's repair, or the next update), with every unsynced write torn.
/// The state read afterwards must never be the one before the first update:
/// recovery may already have acted on the newer one (removed the segments it
/// retired). That holds only because the next write goes to the stale copy
/// first; writing the newest copy first fails this test.
#[test]
fn two_power_cuts_in_a_row_never_bring_back_an_older_superblock() {
    use ringstore_journal::superblock::{decode, write_file, SUPERBLOCK_COPIES};
    // Bodies longer than a sector, so a torn copy verifies as neither.
    let body = |fill: u8| vec![fill; 2000];
    let path = Path::new("/mem/wal/superblock");
    let mut cuts = 0;
    for first_cut in 1..=4u64 {
        for second_cut in 1..=4u64 {
            for seed in 0..8u64 {
                let faults = FaultConfig {
                    crash_drop_rate: 0.0,
                    crash_tear_rate: 1.0,
                    ..FaultConfig::none()
                };
                run(move || async move {
                    let mem = MemStorage::with_faults(seed, faults);
                    ringstore_journal::storage::prepare_dir(&mem, Path::new("/mem/wal"))
                        .await
                        .unwrap();
                    let kind = SuperblockKind::Journal;
                    let last = SUPERBLOCK_COPIES - 1;
                    write_file(&mem, path, true, kind, 1, &body(1), last)
                        .await
                        .unwrap();
                    mem.cut_power_after_ops(first_cut);
                    let _ = write_file(&mem, path, false, kind, 2, &body(2), last).await;
                    mem.crash();
                    let read = |mem: &MemStorage| decode(&mem.file_bytes(path).unwrap(), kind);
                    let chosen = read(&mem).expect("one copy holds a whole state");
                    // What recovery acts on: the newest valid state.
                    let acted_on = chosen.body.clone();
                    mem.cut_power_after_ops(second_cut);
                    let _ =
                        write_file(&mem, path, false, kind, 3, &body(3), chosen.newest_copy).await;
                    mem.crash();
                    let after = read(&mem).unwrap_or_else(|f| {
                        panic!("cuts {first_cut}/{second_cut}, seed {seed}: {f}")
                    });
                    assert!(
                        after.body == acted_on || after.body == body(3),
                        "cuts {first_cut}/{second_cut}, seed {seed}: an older state came back"
                    );
                });
                cuts += 1;
            }
        }
    }
    println!("superblock double-cut test: {cuts} pairs of power cuts, 0 violations");
}

/// A close whose directory fsync fails after it removed its unused spare
/// segment leaves that removal undone by a crash; the next open lowers the
/// superblock's last segment (it reuses the empty one), and a power cut
/// anywhere in that open must not leave the spare two past the last
/// recorded segment (which recovery refuses as unrecorded). Recovery makes
/// the directory and the superblock durable before acting on them. Found by
/// the `journal_ops` fuzz target.
#[test]
fn an_undone_spare_removal_does_not_outlive_a_lowered_superblock() {
    let mut cuts = 0;
    for m in 1..=REOPEN_CUTS_MAX {
        let (tx, rx) = std::sync::mpsc::channel();
        run(move || async move {
            let mem = MemStorage::new();
            let (journal, acked) = appends_then_an_empty_segment(&mem).await;
            // The spare segment is prepared in the background.
            while !mem
                .paths()
                .iter()
                .any(|p| p.ends_with(ringstore_journal::segment_file_name(3)))
            {
                glommio::yield_if_needed().await;
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
            mem.fail_next_dir_syncs(1, libc::EIO);
            assert!(
                journal.close().await.is_err(),
                "the close's directory fsync fails"
            );
            let what = format!("cut at op {m} of the reopen");
            tx.send(cut_a_reopen_then_check(&mem, m, &acked, &what).await)
                .unwrap();
        });
        cuts += 1;
        if rx.recv().unwrap() {
            break;
        }
    }
    println!("undone spare removal: {cuts} power cuts, 0 violations");
}

/// The empty last segment an open would reuse, but with bytes where its
/// first entry would go: the remains of a torn write recovery cut, or bytes
/// past the end a clean close recorded. Reusing it lowers the superblock's
/// last segment before the file is removed, and a power cut between the two
/// would leave a segment past the last recorded one that holds data, which
/// recovery must refuse. So such a segment is kept (its end recorded), and a
/// power cut anywhere in the open loses nothing. Found by the `journal_ops`
/// fuzz target.
#[test]
fn an_empty_last_segment_with_bytes_in_it_is_not_reused() {
    let mut cuts = 0;
    for past_recorded_end in [true, false] {
        for m in 1..=REOPEN_CUTS_MAX {
            let (tx, rx) = std::sync::mpsc::channel();
            run(move || async move {
                let mem = MemStorage::new();
                let (journal, acked) = appends_then_an_empty_segment(&mem).await;
                // A clean close records its end, a crash does not.
                if past_recorded_end {
                    journal.close().await.unwrap();
                } else {
                    drop(journal);
                    mem.crash();
                }
                let path = Path::new("/mem/wal").join(ringstore_journal::segment_file_name(2));
                let mut bytes = mem.file_bytes(&path).unwrap();
                let first_entry = ringstore_journal::format::SEGMENT_DATA_OFFSET as usize;
                bytes[first_entry..first_entry + 512].fill(0xA5);
                mem.set_file_bytes(&path, bytes);
                let what =
                    format!("cut at op {m} of the reopen (end recorded: {past_recorded_end})");
                tx.send(cut_a_reopen_then_check(&mem, m, &acked, &what).await)
                    .unwrap();
            });
            cuts += 1;
            if rx.recv().unwrap() {
                break;
            }
        }
    }
    println!("empty last segment holding bytes: {cuts} power cuts, 0 violations");
}

/// Cuts the power after `m` storage operations of an open, crashes, opens
/// again and checks every acknowledged op (`op -> payload seed`). Returns
/// whether the first open completed inside the budget (later cuts would
/// change nothing).
async fn cut_a_reopen_then_check(
    mem: &MemStorage,
    m: u64,
    acked: &BTreeMap<u64, u64>,
    what: &str,
) -> bool {
    mem.cut_power_after_ops(m);
    let reopened = builder(mem).open().await.is_ok();
    mem.crash();
    let journal = builder(mem)
        .open()
        .await
        .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    for (&op, &seed) in acked {
        assert_eq!(
            journal.read(op).await.unwrap().map(|e| e.payload),
            Some(payload(seed, ENTRY)),
            "{what}: acknowledged op {op}"
        );
    }
    journal.close().await.unwrap();
    reopened
}

/// A journal with three acknowledged appends in segment 1, closed and
/// opened again: its segment 2 holds nothing (the empty last segment the
/// next open reuses). Returns it open, and `op -> payload seed`.
async fn appends_then_an_empty_segment(
    mem: &MemStorage,
) -> (Journal<MemStorage>, BTreeMap<u64, u64>) {
    let mut acked = BTreeMap::new();
    let journal = builder(mem).open().await.unwrap();
    for seed in 1..=3u64 {
        acked.insert(journal.append(&payload(seed, ENTRY)).await.unwrap(), seed);
    }
    journal.close().await.unwrap();
    (builder(mem).open().await.unwrap(), acked)
}

/// A crash between the two copies of a superblock update leaves copy 0
/// holding the newer state and copy 1 the older. If the open's read of the
/// superblock then flips a bit of copy 0 (a transient fault: the bytes on
/// disk are intact), the newer state must still be the one chosen: the
/// open reads the file again before it rewrites a copy it found wanting,
/// where taking the first read would write the older state over the newer
/// one for good.
#[test]
fn a_transient_read_fault_in_the_newer_superblock_copy_does_not_bring_back_the_older() {
    use ringstore_journal::superblock::{self, JournalSuperblock};
    let (tx, rx) = std::sync::mpsc::channel();
    run(move || async move {
        let mem = MemStorage::new();
        let path = Path::new("/mem/wal/superblock");
        let journal = builder(&mem).open().await.unwrap();
        journal.append(&payload(1, 100)).await.unwrap();
        journal.set_hard_state(b"older").await.unwrap();
        journal.copy_hard_state_to_superblock().await.unwrap();
        journal.close().await.unwrap();
        // Copy 0 of an update that a crash cut short before copy 1.
        let bytes = mem.file_bytes(path).unwrap();
        let chosen = superblock::decode(&bytes, SuperblockKind::Journal).unwrap();
        let mut newer = JournalSuperblock::decode(&chosen.body).unwrap();
        newer.hard_state = b"newer".to_vec();
        newer.hard_state_sequence += 1;
        let copy0 = superblock::encode_copy(
            SuperblockKind::Journal,
            chosen.sequence + 1,
            0,
            &newer.encode(),
        );
        let mut crafted = bytes.clone();
        crafted[..copy0.len()].copy_from_slice(&copy0);
        mem.set_file_bytes(path, crafted);
        mem.flip_next_read(path, 100, 2);
        let journal = builder(&mem).open().await.unwrap();
        let first = (
            journal.hard_state(),
            journal.recovery_report().transient_read_faults,
        );
        journal.close().await.unwrap();
        let journal = builder(&mem).open().await.unwrap();
        let second = journal.hard_state();
        journal.close().await.unwrap();
        tx.send((first, second)).unwrap();
    });
    let ((first, transient), second) = rx.recv().unwrap();
    assert_eq!(first, b"newer", "the open chose the older copy");
    assert!(transient >= 1, "the second read was not counted");
    assert_eq!(
        second, b"newer",
        "the older state was written over the newer"
    );
}

/// Most storage operations of one superblock update (the loop below stops
/// at the first cut the update does not reach).
const UPDATE_CUTS_MAX: u64 = 32;

/// Entries, and their size, that fill about 30 segments of the builder's.
const ROTATED_ENTRIES: u64 = 240;
const BIG_ENTRY: usize = 8000;

/// Runs per cut point: each tears the unsynced copy another way.
const SEEDS_PER_CUT: u64 = 8;

/// The superblock copy an update writes last rots after the open, then the
/// power is cut at every step of the next update (several seeds each), the
/// unsynced copy torn: the update must write the rotten copy first, so that
/// the one that verified is intact whenever the other is torn, and the
/// journal reopens with every acknowledged op and its hard state. (Written
/// first, a torn good copy left none that verifies: a refusal.) In every
/// other run a transient read fault also flips a bit of the good copy
/// when the update reads both back, so that neither verifies in that one
/// read: the update reads again rather than take the fault for rot.
#[test]
fn an_update_after_a_copy_rotted_never_leaves_both_copies_unreadable() {
    let path = Path::new("/mem/wal/superblock");
    let mut reached = 0;
    'cuts: for n in 1..=UPDATE_CUTS_MAX {
        for seed in 0..SEEDS_PER_CUT {
            let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let finished_in = finished.clone();
            run(move || async move {
                // Every unsynced write torn (none dropped whole).
                let faults = FaultConfig {
                    crash_drop_rate: 0.0,
                    crash_tear_rate: 1.0,
                    ..FaultConfig::none()
                };
                let mem = MemStorage::with_faults(n * SEEDS_PER_CUT + seed, faults);
                let journal = builder(&mem).open().await.unwrap();
                // Enough segments that their recorded ends carry the copy
                // past its first sector (a copy within one sector is
                // replaced whole or not at all).
                let mut acked = BTreeMap::new();
                for seed in 1..=ROTATED_ENTRIES {
                    let op = journal.append(&payload(seed, BIG_ENTRY)).await.unwrap();
                    acked.insert(op, seed);
                }
                journal.set_hard_state(b"vote 3").await.unwrap();
                // The second copy (the one an update writes last by
                // default) rots at rest.
                let mut bytes = mem.file_bytes(path).unwrap();
                bytes[4096 + 100] ^= 0x10;
                mem.set_file_bytes(path, bytes);
                if seed % 2 == 1 {
                    mem.flip_next_read(path, 100, 2);
                }
                mem.cut_power_after_ops(n);
                let updated = journal.copy_hard_state_to_superblock().await;
                let cut = mem.power_is_cut();
                if !cut {
                    updated.unwrap();
                }
                mem.crash();
                mem.set_faults(FaultConfig::none());
                let journal = builder(&mem).open().await.unwrap_or_else(|e| {
                    panic!("cut at op {n} of the update, seed {seed}: reopen failed: {e}")
                });
                for (&op, &seed) in &acked {
                    let entry = journal.read(op).await.unwrap().map(|e| e.payload);
                    assert_eq!(
                        entry,
                        Some(payload(seed, BIG_ENTRY)),
                        "cut at op {n}: op {op}"
                    );
                }
                assert_eq!(journal.hard_state(), b"vote 3", "cut at op {n}");
                journal.close().await.unwrap();
                finished_in.store(!cut, std::sync::atomic::Ordering::SeqCst);
            });
            if finished.load(std::sync::atomic::Ordering::SeqCst) {
                reached = n - 1;
                break 'cuts;
            }
        }
    }
    assert!(reached >= 4, "the update took {reached} storage operations");
}
