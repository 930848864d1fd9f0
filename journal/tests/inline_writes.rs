//! Inline writes (`JournalBuilder::inline_write_bytes_max`): a small
//! group-commit write with nothing else in flight is a blocking `pwrite`
//! (and `fdatasync`) on the reactor thread. Pins that they are taken when
//! they should be and not otherwise, that what they write survives a reopen
//! on a real disk with either durability, that their failures poison the
//! journal as ring writes do, and that slow ones pause them. (That a run
//! of them ends, `INLINE_STREAK_MAX`, the engine's
//! `checkpoint_during_a_stream_of_submits_loses_nothing` pins: without it
//! the checkpoints fell behind.)
mod common;
use common::*;
use ringstore_journal::storage::MemStorage;
use ringstore_journal::{
    Durability, Error, Journal, JournalBuilder, INLINE_WRITES_PAUSED_FOR, INLINE_WRITE_SLOW,
};
use std::path::Path;
use std::time::Duration;

/// Small enough for an inline write, with its header and padding.
const SMALL: usize = 300;
/// Larger than [`INLINE_MAX`]: written through io_uring.
const LARGE: usize = 40 << 10;
/// The largest inline write of these tests.
const INLINE_MAX: u64 = 16 << 10;

fn real_builder(dir: &Path, durability: Durability) -> JournalBuilder {
    Journal::builder(dir)
        .segment_bytes(4 << 20)
        .durability(durability)
        .inline_write_bytes_max(INLINE_MAX)
}

fn mem_builder(mem: &MemStorage) -> JournalBuilder<MemStorage> {
    Journal::builder("/mem/wal")
        .segment_bytes(256 << 10)
        .batch_bytes_max(64 << 10)
        .entry_bytes_max(48 << 10)
        .inline_write_bytes_max(INLINE_MAX)
        .storage(mem.clone())
}

#[test]
fn small_writes_are_inline_and_survive_a_reopen_on_a_real_disk() {
    for durability in [Durability::Sync, Durability::WriteThrough] {
        let dir = temp_dir();
        let path = dir.path().join("wal");
        run(move || async move {
            let journal = real_builder(&path, durability).open().await.unwrap();
            let before = journal.stats();
            let mut ops = Vec::new();
            for i in 0..20u64 {
                ops.push((journal.append(&payload(i, SMALL)).await.unwrap(), SMALL));
            }
            let small = journal.stats();
            // Back-to-back appends: a run of inline writes ends now and then
            // with a write through io_uring, so that the reactor turns. On
            // a slow disk (its slow mode, or a loaded machine) inline
            // writes pause after the first slow one: then only the pause
            // explains a minority of inline writes. The write after one
            // through io_uring starts a new run inline, so at least every
            // other write is inline (exactly half when each inline write
            // outlasts the run's time on a loaded machine).
            let (inline, writes, paused) = (
                small.inline_writes - before.inline_writes,
                small.writes - before.writes,
                small.inline_write_pauses - before.inline_write_pauses,
            );
            assert!(
                (inline * 2 >= writes || paused > 0) && inline >= 1 && writes >= 20,
                "{durability:?}: {inline} of {writes} small writes inline, {paused} pauses"
            );
            ops.push((journal.append(&payload(99, LARGE)).await.unwrap(), LARGE));
            let large = journal.stats();
            assert_eq!(
                large.inline_writes, small.inline_writes,
                "a large write is not"
            );
            assert_eq!(large.writes, small.writes + 1);
            assert_eq!(large.inline_write_pauses, small.inline_write_pauses);
            journal.close().await.unwrap();

            let journal = real_builder(&path, durability).open().await.unwrap();
            for (op, len) in &ops {
                let entry = journal.read(*op).await.unwrap().expect("acknowledged");
                let index = if *len == LARGE { 99 } else { op - ops[0].0 };
                assert_eq!(entry.payload, payload(index, *len));
            }
            journal.close().await.unwrap();
        });
    }
}

#[test]
fn with_inline_writes_off_every_write_goes_through_the_ring() {
    let dir = temp_dir();
    let path = dir.path().join("wal");
    run(move || async move {
        let journal = real_builder(&path, Durability::Sync)
            .inline_write_bytes_max(0)
            .open()
            .await
            .unwrap();
        for i in 0..5u64 {
            journal.append(&payload(i, SMALL)).await.unwrap();
        }
        assert_eq!(journal.stats().inline_writes, 0);
        journal.close().await.unwrap();
    });
}

#[test]
fn concurrent_appenders_share_inline_writes() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = mem_builder(&mem).open().await.unwrap();
        let before = journal.stats();
        let tasks: Vec<_> = (0..16u64)
            .map(|i| {
                let journal = journal.clone();
                glommio::spawn_local(async move {
                    for round in 0..8 {
                        journal
                            .append(&payload(i * 8 + round, SMALL))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        let stats = journal.stats();
        let writes = stats.writes - before.writes;
        assert!(
            writes < 16 * 8,
            "{writes} writes for 128 appends: no group commit"
        );
        assert!(stats.inline_writes > before.inline_writes);
        journal.close().await.unwrap();
    });
}

#[test]
fn a_failed_inline_write_or_sync_poisons_and_loses_nothing_acknowledged() {
    for fail_sync in [false, true] {
        run(move || async move {
            let mem = MemStorage::new();
            let journal = mem_builder(&mem).open().await.unwrap();
            let acked: Vec<u64> = {
                let mut acked = Vec::new();
                for i in 1..=3u64 {
                    acked.push(journal.append(&payload(i, SMALL)).await.unwrap());
                }
                acked
            };
            // A fresh run of inline writes, so the next one is inline.
            ringstore_journal::glommio_quirks::reactor_turn().await;
            let inline_before = journal.stats().inline_writes;
            // At least the first was inline (the others too unless the
            // thread was descheduled past the run's time between them).
            assert!(inline_before >= 1);
            if fail_sync {
                mem.fail_next_syncs(1, libc::EIO);
            } else {
                mem.fail_next_writes(1, libc::EIO);
            }
            let expected = if fail_sync { "fdatasync" } else { "write" };
            match journal.append(&payload(4, SMALL)).await {
                Err(Error::Io { op, .. }) if op == expected => {}
                other => panic!("expected the {expected} error, got {other:?}"),
            }
            assert!(journal.is_poisoned());
            assert_eq!(journal.stats().inline_writes, inline_before);
            assert!(matches!(
                journal.append(b"after").await,
                Err(Error::Poisoned { .. })
            ));
            journal.close().await.unwrap();
            mem.crash();
            let journal = mem_builder(&mem).open().await.unwrap();
            for op in &acked {
                let entry = journal.read(*op).await.unwrap().expect("acknowledged");
                assert_eq!(entry.payload, payload(*op, SMALL));
            }
            journal.close().await.unwrap();
        });
    }
}

/// One append, then a reactor turn: the in-memory disk's writes through
/// the ring need none, so back-to-back appends here would end each run of
/// inline writes for good (see `ringstore_journal::INLINE_STREAK_MAX`).
async fn append_alone(journal: &Journal<MemStorage>, op: u64) {
    journal.append(&payload(op, SMALL)).await.unwrap();
    ringstore_journal::glommio_quirks::reactor_turn().await;
}

#[test]
fn slow_inline_writes_pause_them_and_a_fast_one_after_the_pause_resumes_them() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = mem_builder(&mem).open().await.unwrap();
        // A lone slow write among fast ones does not pause them.
        for i in 0..4u64 {
            append_alone(&journal, i).await;
        }
        mem.set_blocking_write_delay(INLINE_WRITE_SLOW * 3);
        append_alone(&journal, 4).await;
        mem.set_blocking_write_delay(Duration::ZERO);
        append_alone(&journal, 5).await;
        assert_eq!(journal.stats().inline_write_pauses, 0);

        // A spell of slow writes does, after a few.
        mem.set_blocking_write_delay(INLINE_WRITE_SLOW * 4);
        let inline_before = journal.stats().inline_writes;
        let mut slow_inline = 0;
        for i in 6..12u64 {
            append_alone(&journal, i).await;
            let stats = journal.stats();
            if stats.inline_write_pauses == 1 {
                slow_inline = stats.inline_writes - inline_before;
                break;
            }
        }
        assert!(
            (1..=3).contains(&slow_inline),
            "paused after {slow_inline} slow inline writes"
        );
        // Paused: the writes go through the ring (here: unslowed).
        let paused = journal.stats();
        for i in 12..15u64 {
            append_alone(&journal, i).await;
        }
        let stats = journal.stats();
        assert_eq!(stats.inline_writes, paused.inline_writes);
        assert!(stats.writes > paused.writes);

        // After the pause one slow write pauses them again.
        glommio::timer::sleep(INLINE_WRITES_PAUSED_FOR + Duration::from_millis(50)).await;
        append_alone(&journal, 15).await;
        let stats = journal.stats();
        assert_eq!(stats.inline_writes, paused.inline_writes + 1);
        assert_eq!(stats.inline_write_pauses, 2);

        // After the next pause, fast writes resume them for good.
        mem.set_blocking_write_delay(Duration::ZERO);
        glommio::timer::sleep(INLINE_WRITES_PAUSED_FOR + Duration::from_millis(50)).await;
        let resumed = journal.stats();
        for i in 16..24u64 {
            append_alone(&journal, i).await;
        }
        let stats = journal.stats();
        assert_eq!(stats.inline_writes, resumed.inline_writes + 8);
        assert_eq!(stats.inline_write_pauses, 2);
        journal.close().await.unwrap();
    });
}
