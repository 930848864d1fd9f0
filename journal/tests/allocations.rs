//! Pins that the journal allocates nothing of its own, neither per append
//! nor per group-commit write: a batch's completion, entry list and
//! waiters' vector are reused, its write runs in one of the write slots
//! made at open, and the order of writes is kept by sequence numbers. What
//! a write still allocates belongs to the storage underneath: the
//! in-memory disk's buffer and its record of the write, or on real files
//! glommio's own bookkeeping of each io_uring request
//! (`glommio_quirks`), which the same write made straight through the
//! storage layer costs as well.
//!
//! Counted by a global allocator that counts per thread, on the reactor
//! thread that runs the journal. On real files the count leaves out what
//! glommio's executor allocates between task polls ([`REACTOR_LOOP`]):
//! it follows how often the reactor polls and parks, which the machine's
//! load decides (it moved the per-write count by more than one allocation
//! from run to run), while every allocation of the journal's own happens
//! inside a task's poll and is counted.
mod common;
#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use common::*;
use counting_alloc::{allocations, exclude_callers, Counting};
use ringstore_journal::storage::{DmaStorage, MemStorage, Storage, StorageFile};
use ringstore_journal::{Durability, Journal};

#[global_allocator]
static COUNTING: Counting = Counting;

/// What glommio's executor calls between task polls: polling the rings
/// and parking, each time preparing (allocating) its preemption timers.
const REACTOR_LOOP: &[&str] = &[
    "glommio::parking::Parker::",
    "glommio::reactor::Reactor::spin_poll_io",
];

/// Rounds of appends each task makes in a measured run.
const ROUNDS: usize = 50;

/// What the in-memory disk allocates for one write: the write's buffer
/// (`alloc_buf`) and its record of the write, kept until a sync or a
/// simulated power cut decides its fate.
const MEM_STORAGE_ALLOCATIONS_PER_WRITE: f64 = 2.0;

/// Allocations per group-commit write while `tasks` appenders each append
/// [`ROUNDS`] times, one append in flight each (so every batch holds one
/// append of every task).
async fn allocations_per_write<S: Storage>(journal: &Journal<S>, tasks: usize) -> f64 {
    let payload = payload(7, 200);
    let writes_before = journal.stats().writes;
    let mut running = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let journal = journal.clone();
        let payload = payload.clone();
        running.push(glommio::spawn_local(async move {
            for _ in 0..ROUNDS {
                journal.append(&payload).await.unwrap();
            }
        }));
    }
    // The tasks are spawned (allocated) but not polled yet: count from here.
    let before = allocations();
    for task in running.iter_mut() {
        task.await;
    }
    let spent = allocations() - before;
    let writes = journal.stats().writes - writes_before;
    assert!(writes > 0);
    spent as f64 / writes as f64
}

#[test]
fn neither_an_append_nor_a_write_allocates_in_memory() {
    run(|| async {
        let journal = Journal::builder("/mem/wal")
            .segment_bytes(64 << 20)
            .batch_bytes_max(1 << 20)
            .entry_bytes_max(64 << 10)
            .slot_count(1 << 16)
            .durability(Durability::Sync)
            .storage(MemStorage::new())
            .open()
            .await
            .unwrap();
        // Warm up: the journal's kept vectors grow to the largest batch.
        allocations_per_write(&journal, 64).await;
        let small = allocations_per_write(&journal, 4).await;
        let large = allocations_per_write(&journal, 64).await;
        println!(
            "allocations per group-commit write, in memory: {small:.2} with 4 appends in it, \
             {large:.2} with 64 (the in-memory disk's own: {MEM_STORAGE_ALLOCATIONS_PER_WRITE})"
        );
        // A little slack for the reactor's own timers; one allocation more
        // per write (a task, a completion, a path) fails.
        for (appends, per_write) in [(4, small), (64, large)] {
            assert!(
                per_write <= MEM_STORAGE_ALLOCATIONS_PER_WRITE + 0.2,
                "{per_write:.2} allocations per write with {appends} appends in it: \
                 more than the in-memory disk's own {MEM_STORAGE_ALLOCATIONS_PER_WRITE}"
            );
        }
        journal.close().await.unwrap();
    });
}

/// Allocations per write of `rounds` 4 KiB writes, each synced, made one
/// after the other straight through the storage layer into a file of its
/// own: what the storage and glommio cost per write.
async fn storage_allocations_per_write(dir: &std::path::Path, name: &str, rounds: u64) -> f64 {
    let file = DmaStorage::new()
        .create(&dir.join(name), false)
        .await
        .unwrap();
    file.allocate(rounds * 4096).await.unwrap();
    let before = allocations();
    for round in 0..rounds {
        let mut buf = file.alloc_buf(4096);
        buf.as_bytes_mut().fill(round as u8);
        file.write_at(buf, round * 4096).await.unwrap();
        file.sync().await.unwrap();
    }
    let spent = allocations() - before;
    file.close().await.unwrap();
    spent as f64 / rounds as f64
}

#[test]
fn on_real_files_a_write_allocates_no_more_than_the_storage_underneath() {
    run(|| async {
        let dir = temp_dir();
        let journal = Journal::builder(dir.path().join("wal"))
            .segment_bytes(64 << 20)
            .batch_bytes_max(1 << 20)
            .entry_bytes_max(64 << 10)
            .durability(Durability::Sync)
            .open()
            .await
            .unwrap();
        allocations_per_write(&journal, 256).await;
        let inline_before = journal.stats().inline_writes;
        // With the reactor's loop left out, the counts repeat from run to
        // run (8.06 against 8.00 on an idle machine and with both cores
        // busy), so one allocation more per write fails.
        exclude_callers(REACTOR_LOOP);
        let many = allocations_per_write(&journal, 256).await;
        let bare = storage_allocations_per_write(dir.path(), "bare", 200).await;
        // 256 appends of about 260 bytes make 64 KiB writes, over the inline
        // cap: each goes through io_uring, in a write slot.
        assert_eq!(journal.stats().inline_writes, inline_before);
        let one = allocations_per_write(&journal, 1).await;
        println!(
            "allocations per group-commit write on real files: {many:.2} with 256 appends in it \
             (through io_uring), {one:.2} with one (mostly inline); \
             the storage layer's own write + fdatasync: {bare:.2}"
        );
        for (shape, per_write) in [("256 appends", many), ("one append", one)] {
            assert!(
                per_write <= bare + 0.5,
                "{per_write:.2} allocations per journal write with {shape} in it, \
                 against {bare:.2} for a bare write + fdatasync through the storage layer"
            );
        }
        journal.close().await.unwrap();
    });
}
