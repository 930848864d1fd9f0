//! The scrubber (`JournalBuilder::scrub_rate`) on the real disk: it finds
//! payload damage that a reopen leaves to reads, at the file and offset
//! `ringstore wal verify` and the read of the entry name, reports each
//! place once, reads a clean journal without a word, and keeps to its rate.
mod common;
use common::*;
use ringstore_journal::format::{BLOCK_BYTES, ENTRY_HEADER_BYTES};
use ringstore_journal::inspect::scan_journal;
use ringstore_journal::{Error, Journal, JournalBuilder};
use std::path::Path;
use std::time::{Duration, Instant};

const OPS: u64 = 12;
const PAYLOAD: usize = 300;
/// How long a test waits for a scrub pass before it fails.
const PASS_WAIT_MAX: Duration = Duration::from_secs(20);

fn builder(path: &Path) -> JournalBuilder {
    Journal::builder(path)
        .segment_bytes(1 << 20)
        .batch_bytes_max(64 << 10)
        .entry_bytes_max(16 << 10)
        .slot_count(256)
}

/// Ops 1..=OPS, one write each (op `k` at byte 4096 * k of segment 1),
/// then a clean close.
fn write_journal(path: &Path) {
    let p = path.to_path_buf();
    run(move || async move {
        let journal = builder(&p).open().await.unwrap();
        for op in 1..=OPS {
            assert_eq!(journal.append(&payload(op, PAYLOAD)).await.unwrap(), op);
        }
        journal.close().await.unwrap();
    });
}

/// Waits until the scrubber has finished `passes` passes.
async fn wait_for_passes<S: ringstore_journal::storage::Storage>(
    journal: &Journal<S>,
    passes: u64,
) {
    let started = Instant::now();
    while journal.stats().scrub_passes < passes {
        assert!(
            started.elapsed() < PASS_WAIT_MAX,
            "no scrub pass within {PASS_WAIT_MAX:?}: {:?}",
            journal.stats()
        );
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn the_scrubber_reports_damage_a_reopen_leaves_to_reads() {
    let dir = temp_dir();
    let path = dir.path().join("journal");
    write_journal(&path);
    let segment = segment_path(&path, 1);
    let damaged_op = 3;
    flip_bit(&segment, 4096 * damaged_op + 56 + 5, 2);
    let scanned = scan_journal(&path, &mut ()).unwrap();
    assert_eq!(scanned.damage_found_on_read.len(), 1);
    let verified = scanned.damage_found_on_read[0].clone();
    let p = path.clone();
    run(move || async move {
        let journal = builder(&p).scrub_rate(256 << 20).open().await.unwrap();
        wait_for_passes(&journal, 1).await;
        let stats = journal.stats();
        assert_eq!(stats.scrub_damage, 1, "{stats:?}");
        let found = journal.scrub_damage();
        assert_eq!(found.len(), 1);
        assert_eq!(
            (&found[0].path, found[0].offset, &found[0].reason),
            (&verified.path, verified.offset, &verified.reason),
            "the scrubber and `wal verify` name the same damage"
        );
        match journal.read(damaged_op).await {
            Err(Error::Corruption { path, offset, .. }) => {
                assert_eq!((&path, offset), (&found[0].path, found[0].offset))
            }
            other => panic!("reading op {damaged_op} gave {other:?}"),
        }
        // The read that found it counts it (and logs it), once per read.
        assert_eq!(journal.stats().read_corruptions, 1);
        let mut entries = journal.entries(damaged_op..=damaged_op);
        assert!(matches!(
            entries.next().await,
            Some(Err(Error::Corruption { .. }))
        ));
        assert_eq!(journal.stats().read_corruptions, 2);
        for op in (1..=OPS).filter(|op| *op != damaged_op) {
            let entry = journal.read(op).await.unwrap().unwrap();
            assert_eq!(entry.payload, payload(op, PAYLOAD));
        }
        // Found again by the next pass, reported once.
        wait_for_passes(&journal, 2).await;
        assert_eq!(journal.stats().scrub_damage, 1);
        assert_eq!(journal.scrub_damage().len(), 1);
        journal.close().await.unwrap();
    });
}

#[test]
fn a_clean_journal_is_scrubbed_without_a_word_and_at_its_rate() {
    let dir = temp_dir();
    let path = dir.path().join("journal");
    write_journal(&path);
    let p = path.clone();
    run(move || async move {
        let journal = builder(&p).scrub_rate(256 << 20).open().await.unwrap();
        wait_for_passes(&journal, 1).await;
        let stats = journal.stats();
        assert_eq!(stats.scrub_damage, 0, "{stats:?}");
        assert_eq!(stats.scrub_read_errors, 0, "{stats:?}");
        assert!(journal.scrub_damage().is_empty());
        // Every byte of the log was read: the header block and OPS writes.
        assert!(stats.scrub_bytes >= 4096 * (OPS + 1), "{stats:?}");
        journal.close().await.unwrap();

        // A slow rate: never more than the rate allows (plus one read).
        let rate = 64 << 10;
        let journal = builder(&p).scrub_rate(rate).open().await.unwrap();
        let started = Instant::now();
        glommio::timer::sleep(Duration::from_millis(300)).await;
        let allowed = (rate as f64 * started.elapsed().as_secs_f64()) as u64 + (1 << 20) + 4096;
        let read = journal.stats().scrub_bytes;
        assert!(read <= allowed, "read {read} bytes, {allowed} allowed");
        journal.close().await.unwrap();
    });
}

#[test]
fn without_a_rate_there_is_no_scrubber() {
    let dir = temp_dir();
    let path = dir.path().join("journal");
    write_journal(&path);
    let p = path.clone();
    run(move || async move {
        let journal = builder(&p).open().await.unwrap();
        glommio::timer::sleep(Duration::from_millis(50)).await;
        let stats = journal.stats();
        assert_eq!((stats.scrub_passes, stats.scrub_bytes), (0, 0));
        journal.close().await.unwrap();
    });
}

/// A latent read error, which only the in-memory disk can make: the
/// background scrubber names the unreadable block (the failed read is read
/// again a block at a time), counts it, keeps it with the damage and logs
/// it once; an on-demand pass (`Journal::scrub_pass`) returns it; reading
/// the op there fails with `Error::Io`; once the sector reads again, so do
/// the op and the next pass.
#[test]
fn an_unreadable_block_is_named_by_its_offset() {
    use ringstore_journal::storage::MemStorage;
    run(move || async move {
        let s = MemStorage::new();
        let journal = Journal::builder("/mem/journal")
            .storage(s.clone())
            .segment_bytes(1 << 20)
            .batch_bytes_max(64 << 10)
            .entry_bytes_max(16 << 10)
            .slot_count(256)
            .scrub_rate(256 << 20)
            .open()
            .await
            .unwrap();
        for op in 1..=OPS {
            assert_eq!(journal.append(&payload(op, PAYLOAD)).await.unwrap(), op);
        }
        let segment = s
            .paths()
            .into_iter()
            .find(|p| p.to_string_lossy().ends_with(".wal"))
            .expect("a segment");
        // Op 5's payload, in its own write: one block per write, the
        // segment's header block first.
        let unreadable_op = 5;
        let block = BLOCK_BYTES * unreadable_op;
        let byte = block + ENTRY_HEADER_BYTES as u64 + PAYLOAD as u64 / 2;
        assert!(s.set_unreadable(&segment, byte));
        let passes = journal.stats().scrub_passes;
        wait_for_passes(&journal, passes + 2).await;
        let stats = journal.stats();
        assert_eq!(stats.scrub_damage, 0, "{stats:?}");
        assert!(stats.scrub_read_errors >= 1, "{stats:?}");
        let found = journal.scrub_damage();
        assert_eq!(found.len(), 1, "reported once: {found:?}");
        assert_eq!((&found[0].path, found[0].offset), (&segment, block));
        assert!(found[0].reason.starts_with("unreadable"), "{found:?}");

        let pass = journal.scrub_pass().await.unwrap();
        assert!(
            pass.damage.is_empty() && pass.cut_short.is_empty(),
            "{pass:?}"
        );
        assert_eq!(pass.unreadable.len(), 1, "{pass:?}");
        assert_eq!(pass.unreadable[0].offset, block);
        assert!(matches!(
            journal.read(unreadable_op).await,
            Err(Error::Io { .. })
        ));
        for op in (1..=OPS).filter(|op| *op != unreadable_op) {
            let entry = journal.read(op).await.unwrap().unwrap();
            assert_eq!(entry.payload, payload(op, PAYLOAD));
        }

        s.clear_unreadable(&segment);
        let pass = journal.scrub_pass().await.unwrap();
        assert!(
            pass.damage.is_empty() && pass.unreadable.is_empty(),
            "{pass:?}"
        );
        assert!(pass.segments >= 1, "{pass:?}");
        let entry = journal.read(unreadable_op).await.unwrap().unwrap();
        assert_eq!(entry.payload, payload(unreadable_op, PAYLOAD));
        journal.close().await.unwrap();
    });
}

/// A block the disk cannot read gets the verdict `FORMAT.md`'s table gives
/// it from each of reopen, a read, the in-order walk and a scrub pass. In
/// a vouched write's payload: the journal opens (payloads are left to the
/// reads); the read and the walk fail with `Error::Io` naming the segment,
/// the entry's offset and the block, and count it; a scrub pass names the
/// block. In a write's first header, which reopen reads: reopen refuses
/// with `Error::Io` naming the segment and cuts nothing, so once the
/// sector reads again every op is there.
#[test]
fn an_unreadable_block_gets_one_verdict_from_reopen_reads_and_scrub() {
    use ringstore_journal::storage::{MemStorage, UnreadableBlock};
    run(move || async move {
        let s = MemStorage::new();
        let open = || {
            Journal::builder("/mem/journal")
                .storage(s.clone())
                .segment_bytes(1 << 20)
                .batch_bytes_max(256 << 10)
                .entry_bytes_max(BIG_PAYLOAD as u64 + (4 << 10))
                .slot_count(256)
                .open()
        };
        // Ops 1..=OPS one block each (op `k` at block `k`), then a big op
        // (its own write, from block OPS + 1), then a small one.
        const BIG_PAYLOAD: usize = 64 << 10;
        let big_op = OPS + 1;
        let len = |op: u64| if op == big_op { BIG_PAYLOAD } else { PAYLOAD };
        let last_op = big_op + 1;
        let journal = open().await.unwrap();
        for op in 1..=last_op {
            assert_eq!(journal.append(&payload(op, len(op))).await.unwrap(), op);
        }
        journal.close().await.unwrap();
        let mut segments: Vec<_> = s
            .paths()
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".wal"))
            .collect();
        segments.sort();
        let segment = segments[0].clone();
        // The big op's second block: payload only, which reopen does not
        // read (it reads a write's first header and, at its end, its index).
        let unreadable_op = big_op;
        let entry_offset = BLOCK_BYTES * big_op;
        let block = entry_offset + BLOCK_BYTES;
        let names_the_block = |error: &Error| match error {
            Error::Io {
                path,
                offset,
                source,
                ..
            } => {
                path == &segment
                    && *offset == Some(entry_offset)
                    && UnreadableBlock::in_error(source).map(|b| b.offset) == Some(block)
            }
            _ => false,
        };

        // In a payload: opens; the read, the walk and a scrub pass name it.
        assert!(s.set_unreadable(&segment, block + 100));
        let journal = open().await.expect("payloads are left to the reads");
        let error = journal.read(unreadable_op).await.unwrap_err();
        assert!(names_the_block(&error), "{error:?}");
        assert_eq!(journal.stats().read_io_errors, 1);
        let mut walk = journal.entries(1..=last_op);
        for op in 1..unreadable_op {
            match walk.next().await {
                Some(Ok(ringstore_journal::LogItem::Present(entry))) => {
                    assert_eq!(entry.payload, payload(op, len(op)))
                }
                other => panic!("op {op}: {other:?}"),
            }
        }
        match walk.next().await {
            Some(Err(error)) => assert!(names_the_block(&error), "{error:?}"),
            other => panic!("op {unreadable_op}: {other:?}"),
        }
        assert_eq!(journal.stats().read_io_errors, 2);
        for op in (1..=last_op).filter(|op| *op != unreadable_op) {
            let entry = journal.read(op).await.unwrap().unwrap();
            assert_eq!(entry.payload, payload(op, len(op)));
        }
        let pass = journal.scrub_pass().await.unwrap();
        assert_eq!(pass.unreadable.len(), 1, "{pass:?}");
        assert_eq!(pass.unreadable[0].offset, block);
        journal.close().await.unwrap();
        s.clear_unreadable(&segment);

        // In a write's first header: reopen refuses, and cuts nothing.
        let header_op = 3;
        assert!(s.set_unreadable(&segment, BLOCK_BYTES * header_op + 8));
        match open().await {
            Err(Error::Io { path, source, .. }) => {
                assert_eq!(path, segment);
                assert_eq!(
                    UnreadableBlock::in_error(&source).map(|b| b.offset),
                    Some(BLOCK_BYTES * header_op)
                );
            }
            other => panic!("a reopen that cannot read a write's header must refuse: {other:?}"),
        }
        s.clear_unreadable(&segment);
        let journal = open().await.unwrap();
        for op in 1..=last_op {
            let entry = journal.read(op).await.unwrap().unwrap();
            assert_eq!(entry.payload, payload(op, len(op)));
        }
        journal.close().await.unwrap();
    });
}
