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
        for read in [1, op / 2, op] {
            let entry = journal.read(read).await.unwrap().expect("acknowledged");
            let len = if entry.payload.len() == 200 {
                200
            } else {
                12 << 10
            };
            assert_eq!(entry.payload, payload(read, len));
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
        glommio::timer::sleep(Duration::from_millis(100)).await;
        assert_eq!(zero_writes(&mem), 2 * SEGMENT_BYTES / ZERO_FILL_WRITE_BYTES);
        // Roll over onto it; the next spare starts with appends running.
        let mut op = 0;
        while journal.stats().segments_created < 2 {
            op += 1;
            journal.append(&payload(op, 12 << 10)).await.unwrap();
        }
        let at_rollover = zero_writes(&mem);
        // Well inside the new segment's first quarter: no zero written.
        for _ in 0..100 {
            op += 1;
            journal.append(&payload(op, 200)).await.unwrap();
            glommio::timer::sleep(Duration::from_micros(200)).await;
        }
        assert_eq!(zero_writes(&mem), at_rollover, "{:?}", mem.write_sizes());
        // Then idle: it fills at full speed.
        glommio::timer::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            writes_of(&mem, ZERO_FILL_WRITE_BYTES),
            3 * SEGMENT_BYTES / ZERO_FILL_WRITE_BYTES,
            "{:?}",
            mem.write_sizes()
        );
        journal.close().await.unwrap();
    });
}
