//! Pins the journal's contract on real O_DIRECT files: round trips, replica
//! writes out of order with gaps, group commit, ring backpressure, the
//! watermark and segment retirement, idempotent reopen, configuration
//! validation, the tmpfs refusal and the glommio empty-file probe pitfall.
mod common;
use common::*;
use ringstore_journal::{Error, Journal, LogItem, Preallocation, TailState};
use std::rc::Rc;

const SEGMENT_BYTES: u64 = 1 << 20;
const BATCH_BYTES: u64 = 64 << 10;
const ENTRY_BYTES: u64 = 16 << 10;

fn builder(path: &std::path::Path) -> ringstore_journal::JournalBuilder {
    Journal::builder(path)
        .segment_bytes(SEGMENT_BYTES)
        .batch_bytes_max(BATCH_BYTES)
        .entry_bytes_max(ENTRY_BYTES)
        .slot_count(1024)
}

#[test]
fn round_trip_across_reopen_with_every_payload_size() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let journal = builder(&path).open().await.unwrap();
        let sizes = [
            0usize,
            1,
            7,
            8,
            40,
            4047,
            4048,
            4096,
            9000,
            ENTRY_BYTES as usize,
        ];
        for (i, len) in sizes.iter().enumerate() {
            assert_eq!(
                journal.append(&payload(i as u64 + 1, *len)).await.unwrap(),
                i as u64 + 1
            );
        }
        journal.close().await.unwrap();
        let journal = builder(&path).open().await.unwrap();
        assert_eq!(journal.recovery_report().tail, TailState::Clean);
        for (i, len) in sizes.iter().enumerate() {
            let op = i as u64 + 1;
            let entry = journal.read(op).await.unwrap().expect("present");
            assert_eq!(entry.payload, payload(op, *len), "op {op}");
        }
        assert!(matches!(
            journal.append(&vec![0; ENTRY_BYTES as usize + 1]).await,
            Err(Error::EntryTooLarge { .. })
        ));
        journal.close().await.unwrap();
        assert!(matches!(journal.append(b"x").await, Err(Error::Closed)));
    });
}

#[test]
fn replica_writes_out_of_order_with_gaps_report_missing_ops() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let journal = builder(&path).open().await.unwrap();
        for op in [5u64, 2, 9, 3] {
            journal.write(op, &payload(op, 50)).await.unwrap();
        }
        assert_eq!(journal.next_op(), 10);
        // The same op again in the same epoch is refused; a later epoch replaces it.
        assert!(matches!(
            journal.write(5, b"again").await,
            Err(Error::OpExists { .. })
        ));
        journal.set_epoch(2).unwrap();
        journal.write(5, b"epoch two").await.unwrap();
        assert!(matches!(
            journal.set_epoch(1),
            Err(Error::EpochRegression { .. })
        ));
        journal.close().await.unwrap();

        let journal = builder(&path).open().await.unwrap();
        assert_eq!(journal.epoch(), 2);
        let mut items = Vec::new();
        let mut entries = journal.entries(1..=10);
        while let Some(item) = entries.next().await {
            items.push(item.unwrap());
        }
        let present: Vec<u64> = items
            .iter()
            .filter_map(|i| match i {
                LogItem::Present(e) => Some(e.op),
                LogItem::Missing(_) => None,
            })
            .collect();
        assert_eq!(present, vec![2, 3, 5, 9]);
        assert_eq!(items.len(), 10);
        assert!(items.contains(&LogItem::Missing(1)));
        let five = journal.read(5).await.unwrap().unwrap();
        assert_eq!(
            (five.epoch, five.payload.as_slice()),
            (2, &b"epoch two"[..])
        );
        assert!(matches!(
            journal.write(0, b"x").await,
            Err(Error::InvalidOp { op: 0 })
        ));
        journal.close().await.unwrap();
    });
}

#[test]
fn concurrent_appends_share_writes_and_fsyncs() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let journal = builder(&path).slot_count(4096).open().await.unwrap();
        const TASKS: u64 = 64;
        const PER_TASK: u64 = 20;
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let journal = journal.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut ops = Vec::new();
                for i in 0..PER_TASK {
                    let op = journal.append(&payload(t * 1000 + i, 256)).await.unwrap();
                    ops.push((op, t * 1000 + i));
                }
                ops
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await);
        }
        let stats = journal.stats();
        assert_eq!(stats.appends, TASKS * PER_TASK);
        assert!(
            stats.writes < stats.appends / 4,
            "group commit coalesced too little: {stats:?}"
        );
        assert_eq!(stats.fsyncs, stats.writes);
        assert!(stats.batch_entries_max > 1);
        for (op, seed) in all {
            assert_eq!(
                journal.read(op).await.unwrap().unwrap().payload,
                payload(seed, 256)
            );
        }
        journal.close().await.unwrap();
    });
}

#[test]
fn full_ring_refuses_before_io_and_watermark_frees_slots() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let journal = builder(&path).slot_count(8).open().await.unwrap();
        for op in 1..=8u64 {
            journal.append(&payload(op, 10)).await.unwrap();
        }
        assert_eq!(journal.remaining_capacity(), 0);
        let writes = journal.stats().writes;
        match journal.append(b"nine").await {
            Err(Error::RingFull {
                op: 9,
                occupant: 1,
                watermark: 0,
                ..
            }) => {}
            other => panic!("expected RingFull, got {other:?}"),
        }
        assert!(matches!(
            journal.write(16, b"x").await,
            Err(Error::RingFull { .. })
        ));
        assert_eq!(
            journal.stats().writes,
            writes,
            "a refused append must not do I/O"
        );
        journal.advance_watermark(2).await.unwrap();
        assert_eq!(journal.remaining_capacity(), 2);
        assert_eq!(journal.append(b"nine").await.unwrap(), 9);
        assert!(matches!(
            journal.read(1).await,
            Err(Error::BelowWatermark {
                op: 1,
                watermark: 2
            })
        ));
        assert!(matches!(
            journal.write(2, b"x").await,
            Err(Error::BelowWatermark { .. })
        ));
        assert!(matches!(
            journal.advance_watermark(1).await,
            Err(Error::WatermarkRegression { .. })
        ));
        journal.close().await.unwrap();
        // The watermark survives reopen, and so does the ring's occupancy.
        let journal = builder(&path).slot_count(8).open().await.unwrap();
        assert_eq!(journal.watermark(), 2);
        assert_eq!(journal.remaining_capacity(), 1);
        assert_eq!(journal.read(9).await.unwrap().unwrap().payload, b"nine");
        journal.close().await.unwrap();
    });
}

/// Segments with a written header (a spare prepared in the background for
/// the next rollover has none yet).
fn segment_count(path: &std::path::Path) -> usize {
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".wal"))
        .filter(|p| std::fs::read(p).unwrap().get(4..8) == Some(&b"RSEG"[..]))
        .count()
}

fn wal_files(path: &std::path::Path) -> usize {
    std::fs::read_dir(path)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".wal")
        })
        .count()
}

#[test]
fn watermark_retires_whole_segments_only() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        // Removed rather than kept for recycling (`tests/recycle.rs`).
        let journal = builder(&path).recycle_segments(false).open().await.unwrap();
        // 8 KiB entries, one write each: ~127 per 1 MiB segment.
        let mut last = 0;
        for i in 0..400u64 {
            last = journal.append(&payload(i, 8000)).await.unwrap();
        }
        let before = segment_count(&path);
        assert!(before >= 4, "expected several segments, found {before}");
        // A watermark inside the second segment retires only the first.
        journal.advance_watermark(150).await.unwrap();
        assert_eq!(segment_count(&path), before - 1);
        assert_eq!(journal.stats().segments_retired, 1);
        assert_eq!(
            journal.read(151).await.unwrap().unwrap().payload,
            payload(150, 8000)
        );
        journal.advance_watermark(last).await.unwrap();
        assert_eq!(segment_count(&path), 1, "only the active segment stays");
        journal.close().await.unwrap();
        assert_eq!(wal_files(&path), 1, "close removes the spare segment");
        let journal = builder(&path).open().await.unwrap();
        assert_eq!(journal.watermark(), last);
        assert_eq!(journal.next_op(), last + 1);
        assert_eq!(journal.append(b"after").await.unwrap(), last + 1);
        journal.close().await.unwrap();
    });
}

#[test]
fn reopening_twice_gives_the_same_state() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let journal = builder(&path).open().await.unwrap();
        for op in [1u64, 2, 3, 7, 8] {
            journal.write(op, &payload(op, 300)).await.unwrap();
        }
        journal.advance_watermark(2).await.unwrap();
        journal.close().await.unwrap();
        let mut states = Vec::new();
        for _ in 0..3 {
            let journal = builder(&path).open().await.unwrap();
            let mut items = Vec::new();
            let mut entries = journal.entries(3..=9);
            while let Some(item) = entries.next().await {
                items.push(item.unwrap());
            }
            states.push((
                items,
                journal.watermark(),
                journal.next_op(),
                journal.remaining_capacity(),
            ));
            journal.close().await.unwrap();
        }
        assert_eq!(states[0], states[1]);
        assert_eq!(states[1], states[2]);
    });
}

#[test]
fn zero_filled_segments_work_the_same() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let journal = builder(&path)
            .preallocation(Preallocation::ZeroFill)
            .open()
            .await
            .unwrap();
        for i in 1..=300u64 {
            journal.append(&payload(i, 5000)).await.unwrap();
        }
        journal.close().await.unwrap();
        let journal = builder(&path).open().await.unwrap();
        assert_eq!(
            journal.read(300).await.unwrap().unwrap().payload,
            payload(300, 5000)
        );
        journal.close().await.unwrap();
    });
}

#[test]
fn bad_settings_are_typed_errors() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cases: Vec<(ringstore_journal::JournalBuilder, &str)> = vec![
            (builder(&path).slot_count(0), "slot_count"),
            (builder(&path).slot_count(u64::MAX), "slot_count"),
            (builder(&path).segment_bytes(4097), "segment_bytes"),
            (builder(&path).segment_bytes(BATCH_BYTES), "segment_bytes"),
            (builder(&path).batch_bytes_max(4096), "batch_bytes_max"),
            (builder(&path).entry_bytes_max(0), "entry_bytes_max"),
            (builder(&path).entry_bytes_max(1 << 40), "entry_bytes_max"),
            // 0 left every append waiting for a write slot; 9 was written
            // into each segment header, acknowledged, and then refused by
            // the next open; u32::MAX made as many write slots at open.
            (builder(&path).writes_in_flight(0), "writes_in_flight"),
            (
                builder(&path)
                    .writes_in_flight(ringstore_journal::config::WRITES_IN_FLIGHT_MAX + 1),
                "writes_in_flight",
            ),
            (
                builder(&path).writes_in_flight(u32::MAX),
                "writes_in_flight",
            ),
        ];
        for (builder, setting) in cases {
            match builder.open().await {
                Err(Error::InvalidConfig { setting: s, .. }) => assert_eq!(s, setting),
                other => panic!("{setting}: expected InvalidConfig, got {other:?}"),
            }
        }
        assert!(
            std::fs::read_dir(&path).unwrap().next().is_none(),
            "nothing created"
        );
    });
}

#[test]
fn tmpfs_is_refused_with_the_path_unless_buffered_io_is_allowed() {
    let shm = std::path::Path::new("/dev/shm");
    let is_tmpfs = std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| {
            l.split_whitespace().nth(1) == Some("/dev/shm")
                && l.split_whitespace().nth(2) == Some("tmpfs")
        });
    assert!(is_tmpfs, "this test needs /dev/shm to be tmpfs");
    let dir = tempfile::tempdir_in(shm).unwrap();
    let path = dir.path().join("wal");
    run(move || async move {
        match Journal::builder(&path).open().await {
            Err(Error::DirectIoUnsupported { path: p }) => assert_eq!(p, path),
            other => panic!("expected DirectIoUnsupported, got {other:?}"),
        }
        let journal = Journal::builder(&path)
            .allow_buffered_io(true)
            .open()
            .await
            .unwrap();
        let op = journal.append(b"buffered").await.unwrap();
        assert_eq!(
            journal.read(op).await.unwrap().unwrap().payload,
            b"buffered"
        );
        journal.close().await.unwrap();
    });
}

/// glommio 0.9 caches polled-I/O support per device from the first DmaFile
/// a thread opens; an empty first file makes later DMA reads fail with
/// EOPNOTSUPP. The journal must still read.
#[test]
fn reads_work_after_an_empty_dma_file_was_opened_first() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let empty = path.join("empty");
        std::fs::write(&empty, b"").unwrap();
        let file = glommio::io::DmaFile::open(&empty).await.unwrap();
        file.close().await.unwrap();
        let wal = path.join("wal");
        let journal = builder(&wal).open().await.unwrap();
        let op = journal.append(b"readable").await.unwrap();
        assert_eq!(
            journal.read(op).await.unwrap().unwrap().payload,
            b"readable"
        );
        journal.close().await.unwrap();
        let journal = builder(&wal).open().await.unwrap();
        assert_eq!(
            journal.read(op).await.unwrap().unwrap().payload,
            b"readable"
        );
        journal.close().await.unwrap();
    });
}

#[test]
fn appends_wait_for_room_when_the_batch_is_full() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        // Each batch holds at most 4 entries of 16 KiB, yet 32 appenders all
        // complete: the rest wait for the writer to take the batch.
        let journal = Rc::new(builder(&path).open().await.unwrap());
        let mut tasks = Vec::new();
        for t in 0..32u64 {
            let journal = journal.clone();
            tasks.push(glommio::spawn_local(async move {
                journal.append(&payload(t, 15_000)).await.unwrap()
            }));
        }
        let mut ops = Vec::new();
        for task in tasks {
            ops.push(task.await);
        }
        ops.sort_unstable();
        assert_eq!(ops, (1..=32).collect::<Vec<_>>());
        assert!(journal.stats().batch_entries_max <= 4);
        assert!(journal.stats().writes >= 8);
        journal.close().await.unwrap();
    });
}

#[test]
fn a_relative_directory_works() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        std::env::set_current_dir(&path).unwrap();
        let journal = builder(std::path::Path::new("relative-wal"))
            .open()
            .await
            .unwrap();
        assert!(journal.config().dir.is_absolute());
        let op = journal.append(b"x").await.unwrap();
        journal.close().await.unwrap();
        let journal = builder(&path.join("relative-wal")).open().await.unwrap();
        assert_eq!(journal.read(op).await.unwrap().unwrap().payload, b"x");
        journal.close().await.unwrap();
    });
}

/// `Durability::WriteThrough` on real files: segments opened with O_DSYNC,
/// no separate fdatasync, every acknowledged entry there after reopen.
#[test]
fn write_through_durability_on_real_files() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let journal = builder(&path)
            .durability(ringstore_journal::Durability::WriteThrough)
            .open()
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for t in 0..32u64 {
            let journal = journal.clone();
            tasks.push(glommio::spawn_local(async move {
                let op = journal.append(&payload(t, 3000)).await.unwrap();
                (op, t)
            }));
        }
        let mut acked = Vec::new();
        for task in tasks {
            acked.push(task.await);
        }
        let stats = journal.stats();
        assert_eq!(stats.fsyncs, stats.writes, "one durability point per write");
        journal.close().await.unwrap();
        let journal = builder(&path).open().await.unwrap();
        for (op, seed) in acked {
            assert_eq!(
                journal.read(op).await.unwrap().unwrap().payload,
                payload(seed, 3000)
            );
        }
        journal.close().await.unwrap();
    });
}

/// The walk reads the log once: where an entry starts exactly where the
/// window's reads end (one-block writes put one there every window), or in
/// the read ahead past a block without data entries (here a hard-state
/// write after every fourth append, which puts one at a window's end), it
/// continues with the reads already in
/// flight instead of dropping them and reading afresh. Pinned by the bytes
/// the simulated disk returned.
#[test]
fn entries_reads_the_log_once_across_window_boundaries() {
    for hard_state_every in [None, Some(4)] {
        run(move || async move {
            let mem = ringstore_journal::storage::MemStorage::new();
            let builder = || {
                Journal::builder("/mem/wal")
                    .segment_bytes(64 << 20)
                    .batch_bytes_max(64 << 10)
                    .entry_bytes_max(4 << 10)
                    .slot_count(1 << 14)
                    .storage(mem.clone())
            };
            let journal = builder().open().await.unwrap();
            let count = 8192u64;
            for op in 1..=count {
                journal.append(&payload(op, 2000)).await.unwrap();
                if hard_state_every.is_some_and(|n| op % n == 0) {
                    journal.set_hard_state(&op.to_le_bytes()).await.unwrap();
                }
            }
            let stats = journal.stats();
            assert_eq!(
                stats.bytes_written,
                stats.writes * 4096,
                "one block per write"
            );
            journal.close().await.unwrap();
            let journal = builder().open().await.unwrap();
            let window = ringstore_journal::ENTRIES_READ_AHEAD_BYTES;
            let log_bytes = stats.bytes_written;
            assert!(log_bytes >= 8 * window, "the walk crosses window ends");
            let before = mem.bytes_read();
            let mut entries = journal.entries(1..=count);
            let mut seen = 0;
            while let Some(item) = entries.next().await {
                assert!(matches!(item.unwrap(), LogItem::Present(_)));
                seen += 1;
            }
            assert_eq!(seen, count);
            drop(entries);
            let read = mem.bytes_read() - before;
            // The log, the rest of the read that holds its end, and the
            // two reads in flight past it.
            assert!(
                read <= log_bytes + 3 * window,
                "hard state every {hard_state_every:?} appends: the walk read {read} bytes \
                 of a {log_bytes}-byte log"
            );
            assert_eq!(journal.stats().read_retries, 0);
            journal.close().await.unwrap();
        });
    }
}

/// Entries larger than a read-ahead window (and small ones between them)
/// span several reads, which the walk joins to verify: each comes back as
/// `read` returns it, in a fresh process's walk and after a flipped
/// payload byte, which the walk reports at that op.
#[test]
fn entries_larger_than_a_read_ahead_window_are_joined() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let open = || {
            Journal::builder(&path)
                .segment_bytes(64 << 20)
                .batch_bytes_max(16 << 20)
                .entry_bytes_max(12 << 20)
                .slot_count(1 << 10)
                .open()
        };
        let journal = open().await.unwrap();
        let window = ringstore_journal::ENTRIES_READ_AHEAD_BYTES as usize;
        let sizes = [
            window + 1,
            100,
            2 * window + 4096,
            window - 64,
            3000,
            window / 2,
            window,
        ];
        // One byte value per op, so op 3's payload is found in the file.
        let fill = |i: usize| 0xa0 + i as u8;
        for (i, len) in sizes.iter().enumerate() {
            journal.append(&vec![fill(i); *len]).await.unwrap();
        }
        // Then enough to fill the first segment, so that the open's tail
        // check (the last segment's) leaves those payloads to the reads.
        for i in 0..12 {
            journal.append(&payload(i, window)).await.unwrap();
        }
        journal.close().await.unwrap();
        let journal = open().await.unwrap();
        assert!(journal.recovery_report().segments >= 2);
        let count = sizes.len() as u64;
        let mut entries = journal.entries(1..=count);
        let mut seen = 0;
        while let Some(item) = entries.next().await {
            match item.unwrap() {
                LogItem::Present(entry) => {
                    assert_eq!(entry.payload.len(), sizes[seen], "op {}", entry.op);
                    let single = journal.read(entry.op).await.unwrap().unwrap();
                    assert_eq!(entry, single, "op {}", entry.op);
                    seen += 1;
                }
                LogItem::Missing(op) => panic!("op {op} missing"),
            }
        }
        assert_eq!(seen, sizes.len());
        // Every entry verified from the walk's reads, none read again.
        assert_eq!(journal.stats().read_retries, 0);
        journal.close().await.unwrap();
        // One payload byte of op 3 (the largest, in three reads) flipped,
        // past its first window: the walk reports op 3, after ops 1 and 2.
        let segment = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .min()
            .unwrap();
        let bytes = std::fs::read(&segment).unwrap();
        let at = bytes
            .windows(64)
            .position(|w| w.iter().all(|b| *b == fill(2)))
            .expect("op 3's payload is in the first segment")
            + window
            + 10;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(at as u64)).unwrap();
        std::io::Write::write_all(&mut file, &[bytes[at] ^ 0x10]).unwrap();
        drop(file);
        let journal = open().await.unwrap();
        let mut entries = journal.entries(1..=count);
        for op in 1..=2 {
            assert!(matches!(
                entries.next().await,
                Some(Ok(LogItem::Present(entry))) if entry.op == op
            ));
        }
        match entries.next().await {
            Some(Err(ringstore_journal::Error::Corruption { reason, .. })) => {
                assert!(reason.contains("op 3"), "{reason}")
            }
            other => panic!("expected op 3's corruption, got {other:?}"),
        }
        let stats = journal.stats();
        assert_eq!((stats.read_retries, stats.read_corruptions), (1, 1));
        assert!(entries.next().await.is_none());
        journal.close().await.unwrap();
    });
}

#[test]
fn entries_walks_many_read_ahead_windows_and_segments() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        // 9000-byte entries in 8 MiB segments: entries straddle the 4 MiB
        // read-ahead windows and the walk crosses segments.
        let journal = Journal::builder(&path)
            .segment_bytes(8 << 20)
            .batch_bytes_max(256 << 10)
            .entry_bytes_max(16 << 10)
            .slot_count(1 << 14)
            .open()
            .await
            .unwrap();
        let count = 3000u64;
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let journal = journal.clone();
                glommio::spawn_local(async move {
                    for i in 0..count / 8 {
                        journal.append(&payload(t * 1000 + i, 9000)).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        journal.close().await.unwrap();
        let journal = Journal::builder(&path)
            .segment_bytes(8 << 20)
            .batch_bytes_max(256 << 10)
            .entry_bytes_max(16 << 10)
            .slot_count(1 << 14)
            .open()
            .await
            .unwrap();
        assert!(journal.recovery_report().segments >= 3);
        let mut entries = journal.entries(1..=count);
        let mut seen = 0;
        while let Some(item) = entries.next().await {
            match item.unwrap() {
                LogItem::Present(entry) => {
                    let single = journal.read(entry.op).await.unwrap().unwrap();
                    assert_eq!(entry, single, "op {}", entry.op);
                    seen += 1;
                }
                LogItem::Missing(op) => panic!("op {op} missing"),
            }
        }
        assert_eq!(seen, count);
        assert_eq!(journal.stats().read_retries, 0);
        journal.close().await.unwrap();
    });
}

/// Resolves `durable` or gives up after [`DROPPED_WAIT_MAX`] (`None`): a
/// wait that never ends is the failure these tests look for.
async fn within<T>(durable: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(durable.await) }, async {
        glommio::timer::sleep(DROPPED_WAIT_MAX).await;
        None
    })
    .await
}

/// How long a dropped journal's appends may take to resolve.
const DROPPED_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(5);

#[test]
fn a_journal_dropped_without_close_finishes_its_writes_and_fails_the_rest() {
    run(|| async {
        let dir = temp_dir();
        let open = || {
            Journal::builder(dir.path())
                .segment_bytes(1 << 20)
                .batch_bytes_max(64 << 10)
                .entry_bytes_max(16 << 10)
                .writes_in_flight(1)
                // Every write through io_uring, in a write slot.
                .inline_write_bytes_max(0)
                .open()
        };
        let journal = open().await.unwrap();
        // The next segment is prepared in the background, by a task that
        // holds the journal while it runs: let it end.
        glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
        // The first write goes to the disk; the second batch waits for the
        // one write slot; then the handle goes.
        let first = journal.queue_append(&payload(1, 100)).await.unwrap();
        futures_lite::future::yield_now().await;
        futures_lite::future::yield_now().await;
        let second = journal.queue_append(&payload(2, 100)).await.unwrap();
        futures_lite::future::yield_now().await;
        drop(journal);
        let first_done = within(first.durable()).await;
        let second_done = within(second.durable()).await;
        assert!(
            matches!(first_done, Some(Ok(()))),
            "the first write, issued: {first_done:?}"
        );
        assert!(
            matches!(second_done, Some(Ok(()))),
            "the second write, issued before the drop: {second_done:?}"
        );
        // An entry not yet handed to a write when the journal goes fails
        // with `Closed` instead of waiting for ever (or, if a background
        // task still held the journal and the writer took it, is written).
        let journal = open().await.unwrap();
        glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
        let queued = journal.queue_append(&payload(3, 100)).await.unwrap();
        drop(journal);
        let queued_done = within(queued.durable()).await;
        let journal = open().await.unwrap();
        match &queued_done {
            Some(Err(Error::Closed)) => {}
            Some(Ok(())) => assert!(journal.read(queued.op()).await.unwrap().is_some()),
            other => panic!("an entry still queued: {other:?}"),
        }
        println!("an entry queued when its journal was dropped: {queued_done:?}");
        for op in [first.op(), second.op()] {
            assert_eq!(
                journal.read(op).await.unwrap().unwrap().payload,
                payload(op, 100)
            );
        }
        journal.close().await.unwrap();
    });
}
