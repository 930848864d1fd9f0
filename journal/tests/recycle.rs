//! Pins the recycling of retired segments (`JournalBuilder::recycle_segments`):
//! on real files a retired segment's file becomes a later segment, flagged
//! recycled, with the older bytes past its last write, and every op above
//! the watermark reads back before and after a reopen and after a crash;
//! with recycling off nothing is recycled; a failed rename falls back to a
//! new file; and a power cut at every storage call of a recycling life
//! loses no op above the watermark and leaves nothing behind the next open.
//! (`verify_agrees.rs` pins the verdicts on a damaged recycled segment.)
mod common;
use common::*;
use ringstore_journal::format::{
    SegmentHeader, BLOCK_BYTES, SEGMENT_DATA_OFFSET, SEGMENT_FLAG_RECYCLED,
};
use ringstore_journal::inspect::scan_journal;
use ringstore_journal::storage::{MemStorage, Storage};
use ringstore_journal::{segment_generation, Journal, JournalBuilder, Recovery, TailState};
use std::path::Path;
use zerocopy::FromBytes;

const ENTRY: usize = 8000;
/// Ops above the watermark at most: a watermark advance follows every
/// this many appends.
const WATERMARK_EVERY: u64 = 16;

fn builder(path: &Path) -> JournalBuilder {
    Journal::builder(path)
        .segment_bytes(1 << 20)
        .batch_bytes_max(64 << 10)
        .entry_bytes_max(16 << 10)
        .slot_count(256)
}

/// Appends `ops` entries after `last`, advancing the watermark to the
/// newest op every [`WATERMARK_EVERY`] (a checkpoint keeping pace); the
/// newest op.
async fn append_with_checkpoints<S: Storage>(
    journal: &Journal<S>,
    last: u64,
    ops: u64,
) -> ringstore_journal::Result<u64> {
    let mut op = last;
    for _ in 0..ops {
        op = journal.append(&payload(op + 1, ENTRY)).await?;
        if op.is_multiple_of(WATERMARK_EVERY) {
            journal.advance_watermark(op - WATERMARK_EVERY / 2).await?;
        }
    }
    Ok(op)
}

fn segment_header(path: &Path) -> SegmentHeader {
    let bytes = std::fs::read(path).unwrap();
    SegmentHeader::read_from_prefix(&bytes).unwrap().0
}

fn wal_files(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    names
}

#[test]
fn retired_segments_become_later_segments_and_everything_reads_back() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let journal = builder(&path).open().await.unwrap();
        // About 125 entries per 1 MiB segment: eight segments' worth.
        let last = append_with_checkpoints(&journal, 0, 1000).await.unwrap();
        let stats = journal.stats();
        assert!(stats.segments_created >= 8, "{stats:?}");
        // The first spares are new files (nothing is retired yet when the
        // second and third are prepared); the rest are recycled.
        assert!(
            stats.segments_recycled + 3 >= stats.segments_created,
            "{stats:?}"
        );
        // At most the live segments, the spare and the kept ones.
        let files = wal_files(&path);
        assert!(
            files.len() <= 3 + 1 + ringstore_journal::RECYCLED_SEGMENTS_KEPT,
            "{files:?}"
        );
        // The active segment is a recycled file: flagged so, with the older
        // segment's bytes past its last write.
        let newest = files
            .iter()
            .filter_map(|n| ringstore_journal::segment_generation(n.as_ref()))
            .map(|g| segment_path(&path, g))
            .rfind(|p| segment_header(p).magic.get() == ringstore_journal::format::SEGMENT_MAGIC)
            .unwrap();
        let header = segment_header(&newest);
        assert_ne!(header.flags.get() & SEGMENT_FLAG_RECYCLED, 0, "{newest:?}");
        let bytes = std::fs::read(&newest).unwrap();
        assert!(
            bytes[900 << 10..].iter().any(|b| *b != 0),
            "no older bytes near the end of {newest:?}"
        );
        let watermark = journal.watermark();
        for op in watermark + 1..=last {
            let entry = journal.read(op).await.unwrap().unwrap();
            assert_eq!(entry.payload, payload(op, ENTRY), "op {op}");
        }
        // A crash (no close): the log ends cleanly in the recycled
        // segment even for Strict, and every op is there.
        drop(journal);
        let journal = builder(&path)
            .recovery(Recovery::Strict)
            .open()
            .await
            .unwrap();
        assert_eq!(journal.recovery_report().tail, TailState::Clean);
        assert_eq!(journal.watermark(), watermark);
        assert_eq!(journal.next_op(), last + 1);
        for op in watermark + 1..=last {
            let entry = journal.read(op).await.unwrap().unwrap();
            assert_eq!(entry.payload, payload(op, ENTRY), "op {op}");
        }
        // More life after the crash, then a clean close: the kept files
        // go with it.
        let last = append_with_checkpoints(&journal, last, 300).await.unwrap();
        journal.close().await.unwrap();
        let journal = builder(&path).open().await.unwrap();
        assert!(journal.recovery_report().removed.is_empty());
        for op in journal.watermark() + 1..=last {
            let entry = journal.read(op).await.unwrap().unwrap();
            assert_eq!(entry.payload, payload(op, ENTRY), "op {op}");
        }
        journal.close().await.unwrap();
    });
}

#[test]
fn with_recycling_off_every_segment_is_a_new_file() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let journal = builder(&path).recycle_segments(false).open().await.unwrap();
        append_with_checkpoints(&journal, 0, 600).await.unwrap();
        let stats = journal.stats();
        assert!(stats.segments_retired >= 2, "{stats:?}");
        assert_eq!(stats.segments_recycled, 0);
        journal.close().await.unwrap();
        for name in wal_files(&path) {
            let generation = ringstore_journal::segment_generation(name.as_ref()).unwrap();
            let header = segment_header(&segment_path(&path, generation));
            assert_eq!(header.flags.get() & SEGMENT_FLAG_RECYCLED, 0, "{name}");
        }
    });
}

fn mem_builder(mem: &MemStorage) -> JournalBuilder<MemStorage> {
    Journal::builder("/mem/wal")
        .segment_bytes(64 << 10)
        .batch_bytes_max(16 << 10)
        .entry_bytes_max(8 << 10)
        .slot_count(256)
        .storage(mem.clone())
}

#[test]
fn a_failed_rename_of_a_retired_segment_falls_back_to_a_new_file() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = mem_builder(&mem).open().await.unwrap();
        let mut last = append_with_checkpoints(&journal, 0, 60).await.unwrap();
        let recycled = journal.stats().segments_recycled;
        let created = journal.stats().segments_created;
        assert!(recycled > 0, "{:?}", journal.stats());
        // Every rename fails from here: each kept segment is removed and
        // the spare is a new file.
        mem.fail_next_renames(1000, libc::EIO);
        last = append_with_checkpoints(&journal, last, 60).await.unwrap();
        let stats = journal.stats();
        assert_eq!(stats.segments_recycled, recycled, "{stats:?}");
        assert!(stats.segments_created > created + 2, "{stats:?}");
        assert!(!journal.is_poisoned());
        let watermark = journal.watermark();
        drop(journal);
        mem.crash();
        let journal = mem_builder(&mem).open().await.unwrap();
        assert!(journal.watermark() >= watermark);
        for op in journal.watermark() + 1..=last {
            let entry = journal.read(op).await.unwrap().unwrap();
            assert_eq!(entry.payload, payload(op, ENTRY), "op {op}");
        }
        journal.close().await.unwrap();
    });
}

/// Ops LIFE_OPS appended with checkpoints, then closed; whether it got to
/// the end. Its acknowledged ops are recorded in `acked` as they come.
const LIFE_OPS: u64 = 48;

async fn recycling_life(mem: MemStorage, acked: std::rc::Rc<std::cell::Cell<u64>>) -> bool {
    let Ok(journal) = mem_builder(&mem).open().await else {
        return false;
    };
    for op in 1..=LIFE_OPS {
        match journal.append(&payload(op, ENTRY)).await {
            Ok(appended) => acked.set(appended),
            Err(_) => return false,
        }
        if op.is_multiple_of(WATERMARK_EVERY / 2)
            && journal
                .advance_watermark(op - WATERMARK_EVERY / 4)
                .await
                .is_err()
        {
            return false;
        }
    }
    journal.stats().segments_recycled > 0 && journal.close().await.is_ok()
}

async fn recycling_life_untracked(mem: MemStorage) -> bool {
    recycling_life(mem, Default::default()).await
}

#[test]
fn a_power_cut_at_every_step_of_a_recycling_life_loses_nothing_acknowledged() {
    let operations = operations_of_a_life(recycling_life_untracked);
    let mut cuts = 0;
    for cut in 1..=operations {
        run(move || async move {
            let mem = MemStorage::new();
            mem.cut_power_after_ops(cut);
            let acked = std::rc::Rc::new(std::cell::Cell::new(0));
            recycling_life(mem.clone(), acked.clone()).await;
            mem.crash();
            let journal = mem_builder(&mem)
                .open()
                .await
                .unwrap_or_else(|e| panic!("cut {cut}: reopen failed: {e}"));
            // This disk drops every unsynced write whole, and the life
            // has one write in flight at most: the log ends cleanly, on
            // zeros or on a recycled segment's older bytes.
            assert!(
                matches!(
                    journal.recovery_report().tail,
                    TailState::Clean | TailState::Empty
                ),
                "cut {cut}: {:?}",
                journal.recovery_report().tail
            );
            // Every acknowledged op above the watermark reads back.
            for op in journal.watermark() + 1..=acked.get() {
                let entry = journal.read(op).await.unwrap();
                assert_eq!(
                    entry.map(|e| e.payload),
                    Some(payload(op, ENTRY)),
                    "cut {cut}: op {op}"
                );
            }
            journal.close().await.unwrap();
            // That open removed whatever the cut interrupted.
            assert_nothing_left_behind(mem_builder(&mem), &format!("cut {cut}")).await;
        });
        cuts += 1;
    }
    println!("recycling crash test: {cuts} power cuts, 0 violations");
}

/// The zeroing of the first segment kept for recycling is misdirected (it
/// lands a block later and reports success), so the file's old header, of
/// another generation, stays in front. Kept, it would become a spare that
/// an open after a crash refuses as data the superblock does not record;
/// the zeroing is read back and such a file removed instead. A power cut
/// at every step of that life: every reopen succeeds, nothing acknowledged
/// above the watermark is lost.
#[test]
fn a_misdirected_zeroing_of_a_retired_segment_never_leaves_a_spare_that_refuses_the_open() {
    let operations = operations_of_a_life(recycling_life_untracked);
    let mut misdirected = 0;
    for cut in 1..=operations {
        let (tx, rx) = std::sync::mpsc::channel();
        run(move || async move {
            let mem = MemStorage::new();
            // The front a retired segment's zeroing writes.
            let zeroed = (SEGMENT_DATA_OFFSET + BLOCK_BYTES) as usize;
            mem.misdirect_next_write(0, zeroed, 4096);
            mem.cut_power_after_ops(cut);
            let acked = std::rc::Rc::new(std::cell::Cell::new(0));
            recycling_life(mem.clone(), acked.clone()).await;
            let hit = mem.fault_counts().writes_misdirected;
            mem.crash();
            let journal = mem_builder(&mem)
                .open()
                .await
                .unwrap_or_else(|e| panic!("cut {cut}: reopen failed: {e}"));
            for op in journal.watermark() + 1..=acked.get() {
                let entry = journal.read(op).await.unwrap();
                assert_eq!(
                    entry.map(|e| e.payload),
                    Some(payload(op, ENTRY)),
                    "cut {cut}: op {op}"
                );
            }
            journal.close().await.unwrap();
            tx.send(hit).unwrap();
        });
        misdirected += rx.recv().unwrap();
    }
    assert!(misdirected > 0, "no run reached the zeroing");
}

/// Names of the segment files in `path` whose header says recycled.
fn recycled_files(path: &Path) -> Vec<String> {
    wal_files(path)
        .into_iter()
        .filter(|name| {
            // (A reclaim may remove a file between the listing and the read.)
            let bytes = std::fs::read(path.join(name)).unwrap_or_default();
            bytes.get(4..8) == Some(&b"RSEG"[..])
                && SegmentHeader::read_from_prefix(&bytes)
                    .is_ok_and(|(h, _)| h.flags.get() & SEGMENT_FLAG_RECYCLED != 0)
        })
        .collect()
}

/// A recycled segment's file was renamed while open; once retired and
/// handed to the paced reclaim (the kept ones are enough already), it is
/// still shrunk step by step, which needs its length through the handle.
#[test]
fn a_recycled_segment_retired_beyond_those_kept_shrinks_in_steps() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        // 1 MiB segments, 128 KiB steps.
        let journal = builder(&path)
            .slot_count(1024)
            .reclaim_step_bytes(128 << 10)
            .open()
            .await
            .unwrap();
        let mut last = 0;
        while journal.stats().segments_recycled < 4 {
            last = append_with_checkpoints(&journal, last, 16).await.unwrap();
            assert!(last < 5000, "nothing recycled: {:?}", journal.stats());
        }
        // Several segments without a checkpoint: the first made from the
        // kept files, the rest new.
        let before = last;
        for _ in 0..500 {
            last = journal.append(&payload(last + 1, ENTRY)).await.unwrap();
        }
        // Retire segments until as many are kept as may be: files below
        // the superblock's first generation.
        let first_generation = |path: &Path| {
            scan_journal(path, &mut ())
                .unwrap()
                .superblock
                .unwrap()
                .first_generation
        };
        let generation_of = |name: &String| segment_generation(name.as_ref()).unwrap();
        let mut watermark = before;
        loop {
            watermark += 32;
            journal.advance_watermark(watermark).await.unwrap();
            let first = first_generation(&path);
            let kept = wal_files(&path)
                .iter()
                .filter(|n| generation_of(n) < first)
                .count();
            if kept == ringstore_journal::RECYCLED_SEGMENTS_KEPT {
                break;
            }
            assert!(
                watermark < last - 100,
                "nothing kept: {:?}",
                journal.stats()
            );
        }
        // The live recycled segments but the active one (the newest with a
        // header).
        let first = first_generation(&path);
        let active = wal_files(&path)
            .iter()
            // (A reclaim may remove a file between the listing and the read.)
            .filter(|n| {
                std::fs::read(path.join(n)).unwrap_or_default().get(4..8) == Some(&b"RSEG"[..])
            })
            .map(generation_of)
            .max()
            .unwrap();
        let mut recycled = recycled_files(&path);
        recycled.retain(|name| generation_of(name) >= first && generation_of(name) < active);
        assert!(!recycled.is_empty(), "{:?}", journal.stats());
        // Retires the rest but the active segment: none can be kept.
        journal.advance_watermark(last - 1).await.unwrap();
        let mut shrinking = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let now: Vec<(String, u64)> = std::fs::read_dir(&path)
                .unwrap()
                .filter_map(|e| {
                    let e = e.ok()?;
                    let len = e.metadata().ok()?.len();
                    Some((e.file_name().to_string_lossy().into_owned(), len))
                })
                .filter(|(name, _)| recycled.contains(name))
                .collect();
            shrinking.extend(
                now.iter()
                    .filter(|(_, len)| *len > 0 && *len < 1 << 20)
                    .map(|(name, _)| name.clone()),
            );
            if now.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "retired recycled segments were never removed: {now:?}"
            );
            ringstore_journal::glommio_quirks::reactor_turn().await;
        }
        assert!(
            !shrinking.is_empty(),
            "no retired recycled segment of {recycled:?} was seen shrinking"
        );
        assert_eq!(
            journal.read(last).await.unwrap().unwrap().payload,
            payload(last, ENTRY)
        );
        journal.close().await.unwrap();
    });
}
