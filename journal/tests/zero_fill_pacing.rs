//! Pins how a spare segment is zero-filled (`Preallocation::ZeroFill`):
//! in small writes while appends are in flight, so that an append never
//! queues behind (or flushes) a large zero write, and in large ones when
//! nothing appends or the spare falls behind the active segment; and that
//! appends made meanwhile, across the rollovers onto paced spares, are all
//! there after a reopen.
mod common;
use common::*;
use ringstore_journal::storage::MemStorage;
use ringstore_journal::{Durability, Journal, JournalBuilder, Preallocation};
use ringstore_journal::{ZERO_FILL_BUSY_WRITE_BYTES, ZERO_FILL_WRITE_BYTES};
use std::time::Duration;

/// Bytes of a segment here: enough zero writes to see how they are sized.
const SEGMENT_BYTES: u64 = 8 << 20;

fn zero_filled(mem: &MemStorage) -> JournalBuilder<MemStorage> {
    Journal::builder("/mem/wal")
        .storage(mem.clone())
        .preallocation(Preallocation::ZeroFill)
        .durability(Durability::Sync)
        .segment_bytes(SEGMENT_BYTES)
        .batch_bytes_max(64 << 10)
        .entry_bytes_max(16 << 10)
        .slot_count(1 << 20)
}

fn writes_of(mem: &MemStorage, bytes: u64) -> u64 {
    mem.write_sizes()
        .get(&(bytes as usize))
        .copied()
        .unwrap_or(0)
}

#[test]
fn an_idle_journal_fills_its_spare_in_large_writes() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = zero_filled(&mem).open().await.unwrap();
        // The open filled the active segment itself; the spare follows in
        // the background with nothing appending.
        glommio::timer::sleep(Duration::from_millis(50)).await;
        journal.close().await.unwrap();
        let large = writes_of(&mem, ZERO_FILL_WRITE_BYTES);
        assert_eq!(
            large,
            2 * SEGMENT_BYTES / ZERO_FILL_WRITE_BYTES,
            "{:?}",
            mem.write_sizes()
        );
        assert_eq!(writes_of(&mem, ZERO_FILL_BUSY_WRITE_BYTES), 0);
    });
}

#[test]
fn a_spare_filled_while_appends_run_gives_way_and_nothing_is_lost() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = zero_filled(&mem).open().await.unwrap();
        let mut op = 0;
        // Small appends, one at a time with pauses (slower than the
        // spare fills, as on a real disk), for a while: the spare's zeros go
        // down in small writes between them.
        while writes_of(&mem, ZERO_FILL_BUSY_WRITE_BYTES) < 16 {
            op += 1;
            assert_eq!(journal.append(&payload(op, 200)).await.unwrap(), op);
            glommio::timer::sleep(Duration::from_micros(200)).await;
            assert!(
                op < 100_000,
                "no paced zero write seen: {:?}",
                mem.write_sizes()
            );
        }
        // Then enough to roll over twice: a spare that falls behind the
        // active segment is filled at full speed, and every rollover finds
        // one.
        let rolled_at = journal.stats().segments_created;
        while journal.stats().segments_created < rolled_at + 2 {
            op += 1;
            assert_eq!(journal.append(&payload(op, 12 << 10)).await.unwrap(), op);
        }
        journal.close().await.unwrap();
        let journal = zero_filled(&mem).open().await.unwrap();
        for read in 1..=op {
            let entry = journal.read(read).await.unwrap().expect("acknowledged");
            let len = entry.payload.len().min(12 << 10);
            assert_eq!(entry.payload, payload(read, len), "op {read}");
        }
        assert_eq!(journal.next_op(), op + 1);
        journal.close().await.unwrap();
    });
}

fn zero_writes(mem: &MemStorage) -> u64 {
    writes_of(mem, ZERO_FILL_WRITE_BYTES) + writes_of(mem, ZERO_FILL_BUSY_WRITE_BYTES)
}

#[test]
fn a_spare_waits_through_the_first_quarter_of_a_busy_segment_and_fills_when_idle() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = zero_filled(&mem).open().await.unwrap();
        // Idle: the first spare fills at once.
        wait_for(|| zero_writes(&mem) == 2 * SEGMENT_BYTES / ZERO_FILL_WRITE_BYTES).await;
        // Roll over onto it; the next spare starts with appends running.
        let mut op = 0;
        while journal.stats().segments_created < 2 {
            op += 1;
            journal.append(&payload(op, 12 << 10)).await.unwrap();
        }
        let at_rollover = zero_writes(&mem);
        // Well inside the new segment's first quarter: no zero written
        // (appends back to back, so no idle spell comes between them).
        for _ in 0..100 {
            op += 1;
            journal.append(&payload(op, 200)).await.unwrap();
        }
        assert_eq!(zero_writes(&mem), at_rollover, "{:?}", mem.write_sizes());
        // Then idle: it fills at full speed.
        let filled = 3 * SEGMENT_BYTES / ZERO_FILL_WRITE_BYTES;
        wait_for(|| writes_of(&mem, ZERO_FILL_WRITE_BYTES) == filled).await;
        assert_eq!(writes_of(&mem, ZERO_FILL_BUSY_WRITE_BYTES), 0);
        journal.close().await.unwrap();
    });
}

/// Waits (on the reactor's timer) until `done` holds; fails after
/// [`WAIT_MAX`].
async fn wait_for(done: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT_MAX, "timed out");
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// Longest wait for something that takes milliseconds on an idle machine.
const WAIT_MAX: Duration = Duration::from_secs(20);

/// A payload whose write (header, index, padding) ends 4 KiB before a
/// quarter of [`SEGMENT_BYTES`].
const FIRST_LEN: usize = (2 << 20) - (12 << 10) - 256;

#[test]
fn a_rollover_early_in_a_segment_does_not_wait_on_a_holding_spare() {
    // A batch as large as most of a segment: the rollover comes while the
    // active segment has used less than a quarter of its room, with the
    // spare still holding off and other appenders arriving. The rollover
    // waiting for the spare ends the holding (else it would last until the
    // appenders had been quiet for `APPENDS_IDLE_AFTER`).
    run(|| async {
        let mem = MemStorage::new();
        let journal = std::rc::Rc::new(
            zero_filled(&mem)
                .batch_bytes_max(7 << 20)
                .entry_bytes_max(6 << 20)
                .open()
                .await
                .unwrap(),
        );
        // Appenders arriving now and then: some land in the next batch
        // while the rollover waits.
        let small: Vec<_> = (0..4)
            .map(|_| {
                let journal = journal.clone();
                glommio::spawn_local(async move {
                    let mut appended = 0u64;
                    while journal.stats().segments_created < 2 {
                        glommio::timer::sleep(Duration::from_millis(2)).await;
                        journal.append(&[7; 100]).await.unwrap();
                        appended += 1;
                    }
                    appended
                })
            })
            .collect();
        let large_len = 6 << 20;
        let large = async {
            // Ends the first write 4 KiB short of the quarter mark.
            journal.append(&vec![1; FIRST_LEN]).await.unwrap();
            journal.append(&vec![2; large_len]).await.unwrap()
        };
        let done = glommio::timer::timeout(WAIT_MAX, async { Ok(large.await) }).await;
        let op = done.expect("the large append (and its rollover) completed");
        for appender in small {
            assert!(appender.await > 0);
        }
        let entry = journal.read(op).await.unwrap().expect("acknowledged");
        assert_eq!(entry.payload.len(), large_len);
        let Ok(journal) = std::rc::Rc::try_unwrap(journal) else {
            panic!("a handle is still held");
        };
        journal.close().await.unwrap();
    });
}
