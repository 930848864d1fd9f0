//! Recovery reads each write's first header and index, not its payloads
//! (`journal/FORMAT.md`, "Write index"; `SegmentScanner::indexed`):
//!
//! * on the simulated disk, which counts the bytes reads return, a reopen
//!   of a journal of 60 KiB appends in 2 MiB writes reads under 2% of its
//!   bytes after a clean close, and all of it reads back;
//! * on the real disk, for sessions of concurrent appends of mixed sizes,
//!   truncations, hard states and watermark advances ending in crashes
//!   and clean closes, the reopen (by index) and `ringstore wal verify`'s
//!   full scan find the same entries, and every op reads back.
mod common;
use common::*;
use ringstore_journal::inspect::{scan_journal, Verdict};
use ringstore_journal::storage::MemStorage;
use ringstore_journal::{Journal, JournalBuilder, Recovery, TailState};
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

/// Bytes of each bulk append.
const BULK_ENTRY_BYTES: usize = 60 << 10;
/// Concurrent appenders, and appends each, of the bulk journal.
const BULK_TASKS: u64 = 32;
const BULK_APPENDS: u64 = 12;

fn bulk(builder: JournalBuilder<MemStorage>) -> JournalBuilder<MemStorage> {
    builder
        .segment_bytes(8 << 20)
        .batch_bytes_max(2 << 20)
        .entry_bytes_max(64 << 10)
        .slot_count(1 << 10)
}

fn content(op: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (op as usize * 131 + i * 7) as u8)
        .collect()
}

#[test]
fn a_reopen_reads_each_writes_index_not_its_payloads() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = Rc::new(
            bulk(Journal::builder("/mem/wal").storage(mem.clone()))
                .open()
                .await
                .unwrap(),
        );
        let tasks: Vec<_> = (0..BULK_TASKS)
            .map(|_| {
                let journal = journal.clone();
                glommio::spawn_local(async move {
                    let mut ops = Vec::new();
                    for _ in 0..BULK_APPENDS {
                        let op = journal.next_op();
                        let appended = journal.append(&content(op, BULK_ENTRY_BYTES)).await;
                        ops.push(appended.unwrap());
                    }
                    ops
                })
            })
            .collect();
        let mut ops = Vec::new();
        for task in tasks {
            ops.extend(task.await);
        }
        let stats = journal.stats();
        assert!(stats.writes < ops.len() as u64, "appends shared writes");
        journal.close().await.unwrap();
        let data_bytes = stats.bytes_written;

        let before = mem.bytes_read();
        let journal = bulk(Journal::builder("/mem/wal").storage(mem.clone()))
            .recovery(Recovery::Strict)
            .open()
            .await
            .unwrap();
        let read = mem.bytes_read() - before;
        println!(
            "reopen read {read} bytes of {data_bytes} written in {} writes ({:.2}%)",
            stats.writes,
            read as f64 * 100.0 / data_bytes as f64
        );
        assert!(
            read * 50 < data_bytes,
            "the reopen read {read} of {data_bytes} bytes"
        );
        assert_eq!(journal.recovery_report().entries, ops.len() as u64);
        // The payloads the reopen did not read are verified when read.
        ops.sort_unstable();
        for op in ops {
            let entry = journal.read(op).await.unwrap().expect("acknowledged");
            assert!(
                entry.payload == content(entry.op, BULK_ENTRY_BYTES),
                "op {op}"
            );
        }
        journal.close().await.unwrap();
    });
}

/// What the model expects of the journal: every op above the watermark
/// with its bytes.
#[derive(Default)]
struct Model {
    ops: BTreeMap<u64, Vec<u8>>,
    watermark: u64,
}

fn mixed(path: &Path) -> JournalBuilder {
    Journal::builder(path)
        .segment_bytes(1 << 20)
        .batch_bytes_max(64 << 10)
        .entry_bytes_max(8 << 10)
        .slot_count(1 << 12)
}

/// One session: concurrent appends of mixed sizes, then (by `session`) a
/// truncation, a hard state or a watermark advance, then more appends;
/// ends in a clean close or a crash (the journal dropped).
async fn session(path: &Path, session: u64, model: &mut Model) {
    let journal = Rc::new(mixed(path).open().await.unwrap());
    let round = |journal: Rc<Journal>, base: u64| async move {
        let tasks: Vec<_> = (0..16u64)
            .map(|task| {
                let journal = journal.clone();
                glommio::spawn_local(async move {
                    let mut acked = Vec::new();
                    for i in 0..8u64 {
                        let len = ((base + task * 8 + i) * 379 % 3000) as usize;
                        let op = journal.next_op();
                        let payload = content(op, len);
                        let appended = journal.append(&payload).await.unwrap();
                        assert_eq!(appended, op, "appends on one reactor get ops in order");
                        acked.push((appended, payload));
                    }
                    acked
                })
            })
            .collect();
        let mut acked = Vec::new();
        for task in tasks {
            acked.extend(task.await);
        }
        acked
    };
    model
        .ops
        .extend(round(journal.clone(), session * 1000).await);
    match session % 3 {
        0 => {
            let keep = journal.next_op() - 20;
            journal.truncate_after(keep).await.unwrap();
            model.ops.retain(|op, _| *op <= keep);
        }
        1 => journal
            .set_hard_state(&session.to_le_bytes())
            .await
            .unwrap(),
        _ => {
            let watermark = journal.next_op() - 50;
            journal.advance_watermark(watermark).await.unwrap();
            model.watermark = watermark;
            model.ops.retain(|op, _| *op > watermark);
        }
    }
    model
        .ops
        .extend(round(journal.clone(), session * 1000 + 500).await);
    if session.is_multiple_of(2) {
        journal.close().await.unwrap();
    } else {
        glommio::yield_if_needed().await;
        drop(journal);
    }
}

#[test]
fn the_reopen_by_index_and_the_full_scan_agree_on_mixed_writes() {
    let dir = temp_dir();
    let path = dir.path().join("journal");
    let p = path.clone();
    run(move || async move {
        let mut model = Model::default();
        for s in 0..6 {
            session(&p, s, &mut model).await;
            let scanned = scan_journal(&p, &mut ()).unwrap();
            assert!(scanned.is_intact(), "session {s}: {:?}", scanned.damage);
            assert_eq!(scanned.verdict, Verdict::Opens, "session {s}");
            let journal = mixed(&p).recovery(Recovery::Strict).open().await.unwrap();
            let report = journal.recovery_report();
            assert_eq!(report.tail, TailState::Clean, "session {s}");
            assert_eq!(report.entries, scanned.data_entries, "session {s}");
            assert_eq!(report.bytes, scanned.data_bytes, "session {s}");
            assert_eq!(report.watermark, scanned.watermark, "session {s}");
            assert_eq!(journal.watermark(), model.watermark, "session {s}");
            for (op, payload) in &model.ops {
                let entry = journal.read(*op).await.unwrap();
                assert!(
                    entry.is_some_and(|e| e.payload == *payload),
                    "session {s}: op {op}"
                );
            }
            let last = *model.ops.keys().next_back().unwrap();
            assert_eq!(journal.next_op(), last + 1, "session {s}");
            if s % 3 == 1 {
                assert_eq!(journal.hard_state(), s.to_le_bytes(), "session {s}");
            }
            journal.close().await.unwrap();
        }
    });
}
