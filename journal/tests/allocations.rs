//! Pins that an append allocates nothing of its own: the heap allocations
//! of a group commit do not grow with the number of appends in it. A batch
//! still costs a fixed handful (its write's task, buffer and completion;
//! the in-memory disk's copy of the write; on real files, glommio's I/O
//! bookkeeping), shared by every append in it.
//!
//! Counted by a global allocator that counts per thread, on the reactor
//! thread that runs the journal.
mod common;
#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use common::*;
use counting_alloc::{allocations, Counting};
use ringstore_journal::storage::MemStorage;
use ringstore_journal::{Durability, Journal};

#[global_allocator]
static COUNTING: Counting = Counting;

/// Rounds of appends each task makes in a measured run.
const ROUNDS: usize = 50;

/// Allocations per group-commit write while `tasks` appenders each append
/// [`ROUNDS`] times, one append in flight each (so every batch holds one
/// append of every task).
async fn allocations_per_write(journal: &Journal<MemStorage>, tasks: usize) -> f64 {
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
fn an_append_allocates_nothing_of_its_own() {
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
            "allocations per group-commit write: {small:.1} with 4 appends in it, {large:.1} with 64"
        );
        // 60 more appends in every write, and not one more allocation for
        // them (a little slack: a write that carried fewer appends, when a
        // task was slow to come back, spreads the fixed cost differently).
        assert!(
            large <= small + 1.0,
            "allocations grow with the appends in a write: {small:.1} per write with 4, {large:.1} with 64"
        );
        journal.close().await.unwrap();
    });
}
