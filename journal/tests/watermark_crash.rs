//! Pins that advancing the watermark is crash-safe at every step — the
//! watermark record's fdatasync, the superblock update that retires
//! segments, each segment removal, the directory fsync —
//! and that segments are preallocated by writing zeros where fallocate is
//! unsupported (EOPNOTSUPP).
mod common;
use common::*;
use ringstore_journal::storage::MemStorage;
use ringstore_journal::{Journal, JournalBuilder};
use std::path::Path;

const ENTRY: usize = 8000;

fn builder(mem: &MemStorage) -> JournalBuilder<MemStorage> {
    Journal::builder("/mem/wal")
        .segment_bytes(128 << 10)
        .batch_bytes_max(32 << 10)
        .entry_bytes_max(16 << 10)
        .slot_count(1024)
        .storage(mem.clone())
}

fn segments(mem: &MemStorage) -> usize {
    use ringstore_journal::storage::Storage;
    mem.list_dir(Path::new("/mem/wal")).unwrap().len()
}

/// Writes ops 1..=60 (several segments) and returns the journal.
async fn filled(mem: &MemStorage) -> Journal<MemStorage> {
    let journal = builder(mem).open().await.unwrap();
    for op in 1..=60u64 {
        assert_eq!(journal.append(&payload(op, ENTRY)).await.unwrap(), op);
    }
    journal
}

async fn check_after_crash(mem: &MemStorage, expected_watermark: u64) -> Journal<MemStorage> {
    mem.crash();
    let journal = builder(mem).open().await.unwrap();
    assert_eq!(journal.watermark(), expected_watermark);
    for op in expected_watermark + 1..=60 {
        assert_eq!(
            journal.read(op).await.unwrap().unwrap().payload,
            payload(op, ENTRY),
            "op {op}"
        );
    }
    journal
}

#[test]
fn crash_before_the_watermark_record_is_durable_keeps_the_old_watermark() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = filled(&mem).await;
        let before = segments(&mem);
        mem.fail_next_syncs(1, libc::EIO);
        assert!(journal.advance_watermark(40).await.is_err());
        assert!(journal.is_poisoned());
        assert_eq!(
            segments(&mem),
            before,
            "nothing retired before the record is durable"
        );
        drop(journal);
        let journal = check_after_crash(&mem, 0).await;
        journal.close().await.unwrap();
    });
}

#[test]
fn crash_after_the_superblock_update_but_before_removal_retires_at_open() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = filled(&mem).await;
        let before = segments(&mem);
        // The superblock already names the new first segment when a removal
        // fails: the segment is retired, its file a leftover.
        mem.fail_next_removes(1, libc::EIO);
        journal.advance_watermark(40).await.unwrap();
        assert!(!journal.is_poisoned(), "a failed unlink loses nothing");
        drop(journal);
        let journal = check_after_crash(&mem, 40).await;
        assert!(
            !journal.recovery_report().removed.is_empty(),
            "the file left behind is removed at open"
        );
        assert!(segments(&mem) < before, "old segments retired");
        journal.close().await.unwrap();
    });
}

#[test]
fn crash_after_removal_but_before_the_directory_fsync() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = filled(&mem).await;
        mem.fail_next_dir_syncs(1, libc::EIO);
        assert!(journal.advance_watermark(40).await.is_err());
        assert!(journal.is_poisoned(), "a failed directory fsync poisons");
        drop(journal);
        // The crash may bring the removed segments back: recovery copes.
        let journal = check_after_crash(&mem, 40).await;
        journal.advance_watermark(45).await.unwrap();
        journal.close().await.unwrap();
        let journal = check_after_crash(&mem, 45).await;
        journal.close().await.unwrap();
    });
}

#[test]
fn crash_after_a_completed_advance() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = filled(&mem).await;
        let before = segments(&mem);
        journal.advance_watermark(40).await.unwrap();
        assert!(segments(&mem) < before);
        drop(journal);
        let journal = check_after_crash(&mem, 40).await;
        journal.close().await.unwrap();
    });
}

#[test]
fn segments_are_zero_filled_where_fallocate_is_unsupported() {
    run(|| async {
        let mem = MemStorage::new();
        mem.fail_next_allocates(100, libc::EOPNOTSUPP);
        let journal = filled(&mem).await;
        assert!(journal.stats().segments_created > 1);
        journal.close().await.unwrap();
        let journal = check_after_crash(&mem, 0).await;
        journal.close().await.unwrap();
    });
}
