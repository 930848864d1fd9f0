//! Pins how retired segments give their space back: a segment larger than
//! the reclaim step is shrunk step by step in the background and then
//! removed (on real files), a close during that removes the rest at once,
//! a disk short of space (under four segments free) still gets them back
//! at once, and a power cut at every
//! storage call of a reclaim loses no op above the watermark and leaves no
//! retired file behind the next open. Recycling is off here: these are
//! the paths of segments that are removed (`tests/recycle.rs` has those
//! kept for reuse).
mod common;
use common::*;
use ringstore_journal::glommio_quirks::reactor_turn;
use ringstore_journal::storage::MemStorage;
use ringstore_journal::{Journal, JournalBuilder};
use std::path::Path;

const ENTRY: usize = 8000;

/// Turns the reactor until `done` holds or `deadline_s` seconds of wall
/// clock have passed (the reclaim's steps are 10 ms apart, each synced, on
/// a machine that may be busy); whether it held.
async fn until(mut done: impl FnMut() -> bool, deadline_s: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(deadline_s);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        reactor_turn().await;
    }
    done()
}

fn wal_files(path: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<_> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        // A file the reclaim removes between the listing and the stat is
        // gone.
        .filter_map(|e| {
            let len = e.metadata().ok()?.len();
            Some((e.file_name().to_string_lossy().into_owned(), len))
        })
        .collect();
    files.sort();
    files
}

/// A journal in `path` of 1 MiB segments reclaimed `step` bytes at a time,
/// holding 400 entries over several segments; its last op.
async fn filled_on_disk(path: &Path, step: u64) -> (Journal, u64) {
    let journal = Journal::builder(path)
        .segment_bytes(1 << 20)
        .batch_bytes_max(64 << 10)
        .entry_bytes_max(16 << 10)
        .slot_count(1024)
        .reclaim_step_bytes(step)
        .recycle_segments(false)
        .open()
        .await
        .unwrap();
    let mut last = 0;
    for i in 0..400u64 {
        last = journal.append(&payload(i, ENTRY)).await.unwrap();
    }
    (journal, last)
}

#[test]
fn a_large_retired_segment_shrinks_in_steps_then_goes() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        // 1 MiB segments, 128 KiB steps: 8 steps each.
        let (journal, last) = filled_on_disk(&path, 128 << 10).await;
        let before = wal_files(&path);
        assert!(before.len() >= 4, "{before:?}");
        journal.advance_watermark(last - 1).await.unwrap();
        // Retired, not yet removed: the files go a step at a time.
        assert_eq!(journal.stats().segments_retired, 0);
        let first = before[0].0.clone();
        let mut lengths = Vec::new();
        // Until only the active segment (and perhaps the spare) is left.
        let gone = until(
            || {
                let now = wal_files(&path);
                if let Some((_, len)) = now.iter().find(|(name, _)| *name == first) {
                    if lengths.last() != Some(len) {
                        lengths.push(*len);
                    }
                }
                now.len() <= 2 && !now.iter().any(|(name, _)| *name == first)
            },
            120,
        )
        .await;
        assert!(gone, "retired segments were never removed");
        assert!(
            lengths.iter().any(|len| *len > 0 && *len < 1 << 20),
            "the first retired file was seen shrinking: {lengths:?}"
        );
        assert_eq!(
            journal.read(last).await.unwrap().unwrap().payload,
            payload(last - 1, ENTRY)
        );
        journal.close().await.unwrap();
        assert!(journal.stats().segments_retired >= before.len() as u64 - 2);
        let journal = Journal::builder(&path).open().await.unwrap();
        assert_eq!(journal.watermark(), last - 1);
        journal.close().await.unwrap();
    });
}

#[test]
fn a_close_while_reclaiming_removes_every_retired_file() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (journal, last) = filled_on_disk(&path, 64 << 10).await;
        assert!(wal_files(&path).len() >= 4);
        journal.advance_watermark(last).await.unwrap();
        assert_eq!(journal.stats().segments_retired, 0, "reclaiming");
        journal.close().await.unwrap();
        assert!(journal.stats().segments_retired >= 3);
        assert_eq!(wal_files(&path).len(), 1, "{:?}", wal_files(&path));
        // Nothing for the next open (or verify) to take for an interrupted
        // retirement.
        let report = ringstore_journal::inspect::scan_journal(&path, &mut ()).unwrap();
        assert!(report.is_intact(), "{}", report.describe_verdict());
    });
}

fn mem_builder(mem: &MemStorage) -> JournalBuilder<MemStorage> {
    Journal::builder("/mem/wal")
        .segment_bytes(128 << 10)
        .batch_bytes_max(32 << 10)
        .entry_bytes_max(16 << 10)
        .slot_count(1024)
        .reclaim_step_bytes(32 << 10)
        .recycle_segments(false)
        .storage(mem.clone())
}

/// Ops 1..=60 over several segments, then a watermark at 40 whose
/// segments are reclaimed in steps; whether the life got to the end.
async fn reclaiming_life(mem: MemStorage) -> bool {
    let Ok(journal) = mem_builder(&mem).open().await else {
        return false;
    };
    for op in 1..=60u64 {
        if journal.append(&payload(op, ENTRY)).await.is_err() {
            return false;
        }
    }
    if journal.advance_watermark(40).await.is_err() {
        return false;
    }
    let reclaimed = until(|| journal.stats().segments_retired >= 2, 60).await;
    reclaimed && journal.close().await.is_ok()
}

#[test]
fn a_power_cut_at_every_step_of_a_reclaim_loses_nothing_above_the_watermark() {
    let operations = operations_of_a_life(reclaiming_life);
    for cut in 1..=operations {
        run(move || async move {
            let mem = MemStorage::new();
            mem.cut_power_after_ops(cut);
            let completed = reclaiming_life(mem.clone()).await;
            mem.crash();
            let journal = mem_builder(&mem).open().await.unwrap();
            let watermark = journal.watermark();
            assert!(watermark == 0 || watermark == 40, "cut {cut}: {watermark}");
            // Every op the life appended is above the watermark or below
            // it; each one above reads back (ops the cut stopped short of
            // are simply missing).
            let mut present = 0;
            for op in watermark + 1..=60 {
                match journal.read(op).await.unwrap() {
                    Some(entry) => {
                        assert_eq!(entry.payload, payload(op, ENTRY), "cut {cut}, op {op}");
                        present += 1;
                    }
                    None => break,
                }
            }
            if completed {
                assert_eq!(watermark, 40, "cut {cut}");
                assert_eq!(present, 20, "cut {cut}");
            }
            if completed {
                assert!(journal.recovery_report().removed.is_empty(), "cut {cut}");
            }
            journal.close().await.unwrap();
            // That open removed whatever retirement the cut interrupted.
            assert_nothing_left_behind(mem_builder(&mem), &format!("cut {cut}")).await;
        });
    }
}

#[test]
fn a_disk_short_of_space_gets_retired_segments_back_at_once() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = mem_builder(&mem).open().await.unwrap();
        for op in 1..=60u64 {
            journal.append(&payload(op, ENTRY)).await.unwrap();
        }
        // Less than the headroom of four 128 KiB segments left: the
        // advance removes what it retires before it returns.
        use ringstore_journal::storage::Storage;
        let used = mem.fs_space(Path::new("/mem/wal")).unwrap();
        let used = used.total_bytes - used.avail_bytes;
        mem.set_capacity(Some(used + (256 << 10)));
        journal.advance_watermark(40).await.unwrap();
        assert!(
            journal.stats().segments_retired >= 2,
            "{:?}",
            journal.stats()
        );
        // With room again, the next retirement is paced.
        mem.set_capacity(None);
        for op in 61..=120u64 {
            journal.append(&payload(op, ENTRY)).await.unwrap();
        }
        let retired = journal.stats().segments_retired;
        journal.advance_watermark(100).await.unwrap();
        assert_eq!(journal.stats().segments_retired, retired, "reclaiming");
        journal.close().await.unwrap();
        assert!(journal.stats().segments_retired > retired);
    });
}

/// An advance of the watermark whose future is dropped part way, at every
/// point it can stop (a caller's timeout, a `select`), leaves nothing that
/// holds later work back: the same advance again and the close finish,
/// and the segments it frees are gone once the journal is reopened (a
/// retired file whose removal was cut short is removed by the open). (A
/// retirement cut short once left its flag set: every later one returned
/// at once without retiring, and `close` waited for ever.)
#[test]
fn an_advance_dropped_part_way_holds_nothing_back() {
    use ringstore_journal::storage::FaultConfig;
    run(|| async {
        let builder = |mem: &MemStorage| {
            Journal::builder("/mem/wal")
                .segment_bytes(64 << 10)
                .batch_bytes_max(16 << 10)
                .entry_bytes_max(4 << 10)
                .slot_count(256)
                .recycle_segments(false)
                .storage(mem.clone())
        };
        let mut finished = false;
        let mut cut = 0;
        while !finished {
            cut += 1;
            assert!(cut < 10_000, "the advance never finished");
            let mem = MemStorage::new();
            let journal = builder(&mem).open().await.unwrap();
            let mut last = 0;
            for op in 1..=60 {
                last = journal.append(&payload(op, 3000)).await.unwrap();
            }
            let segments_before = mem.paths().len();
            // Every storage call yields first, so the advance stops at each
            // of them.
            mem.set_faults(FaultConfig {
                yield_rate: 1.0,
                ..FaultConfig::none()
            });
            {
                let advance = journal.advance_watermark(last - 5);
                futures_lite::pin!(advance);
                for _ in 0..cut {
                    if futures_lite::future::poll_once(&mut advance)
                        .await
                        .is_some()
                    {
                        finished = true;
                        break;
                    }
                    futures_lite::future::yield_now().await;
                }
            }
            mem.set_faults(FaultConfig::none());
            let done = futures_lite::future::or(
                async {
                    journal.advance_watermark(last - 5).await.unwrap();
                    journal.close().await.unwrap();
                    Some(())
                },
                async {
                    glommio::timer::sleep(std::time::Duration::from_secs(5)).await;
                    None
                },
            )
            .await;
            assert!(
                done.is_some(),
                "cut after {cut} polls: the advance again or the close hangs"
            );
            let journal = builder(&mem).open().await.unwrap();
            for op in last - 4..=last {
                assert_eq!(
                    journal.read(op).await.unwrap().map(|e| e.payload),
                    Some(payload(op, 3000)),
                    "cut after {cut} polls: op {op}"
                );
            }
            journal.close().await.unwrap();
            let segments_after = mem.paths().len();
            assert!(
                segments_after < segments_before,
                "cut after {cut} polls: nothing retired ({segments_before} files before, \
                 {segments_after} after a reopen)"
            );
        }
        eprintln!(
            "an advance dropped after each of its first {} polls",
            cut - 1
        );
    });
}
