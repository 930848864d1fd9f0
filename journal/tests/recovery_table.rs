//! Pins every row of the recovery decision table (see the `recovery` module
//! docs) by damaging bytes of real segment files and reopening.
//!
//! Setup shared by the rows: one session appends ops 1..=N one at a time,
//! so op `k` is the only entry of its write and sits at byte 4096 * k of
//! segment 1, which stays the last segment until the next open. The session
//! ends in a crash (the journal is dropped, never closed), so the end of
//! segment 1 is recorded nowhere; after a clean close the superblock records
//! it and any damage before it is corruption.
mod common;
use common::*;
use ringstore_journal::format::{
    EntryHeader, SegmentHeader, ENTRY_HEADER_BYTES, FORMAT_VERSION, SEGMENT_FLAG_RECYCLED,
};
use ringstore_journal::{Error, Journal, JournalBuilder, Recovery, TailState};
use std::path::{Path, PathBuf};
use zerocopy::{FromBytes, IntoBytes};

const N: u64 = 6;
const PAYLOAD: usize = 200;

fn builder(path: &Path) -> JournalBuilder {
    Journal::builder(path)
        .segment_bytes(1 << 20)
        .batch_bytes_max(64 << 10)
        .entry_bytes_max(16 << 10)
        .slot_count(64)
}

fn offset_of_op(op: u64) -> u64 {
    4096 * op
}

/// Writes ops 1..=N in one session that ends in a crash, then opens and
/// closes the journal `reopens` times; returns the directory.
fn write_session(reopens: usize) -> (tempfile::TempDir, PathBuf) {
    write_session_ending(reopens, false)
}

/// Like [`write_session`], but the writing session closes cleanly.
fn write_closed_session() -> (tempfile::TempDir, PathBuf) {
    write_session_ending(0, true)
}

fn write_session_ending(reopens: usize, close: bool) -> (tempfile::TempDir, PathBuf) {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    let p = path.clone();
    run(move || async move {
        let journal = builder(&p).open().await.unwrap();
        for op in 1..=N {
            assert_eq!(journal.append(&payload(op, PAYLOAD)).await.unwrap(), op);
        }
        if close {
            journal.close().await.unwrap();
        } else {
            crash(journal).await;
        }
    });
    // On a new reactor: the crashed journal's background tasks (a spare
    // segment's preparation) ended with the old one's thread, as with a
    // process, instead of racing the next open.
    let p = path.clone();
    run(move || async move {
        for _ in 0..reopens {
            builder(&p).open().await.unwrap().close().await.unwrap();
        }
    });
    (dir, path)
}

/// Reopens and returns (tail, present ops, error if open failed); every
/// read must succeed.
fn reopen(path: &Path, recovery: Recovery) -> Result<(TailState, Vec<u64>), Error> {
    reopen_reading(path, recovery).map(|(tail, present, failed)| {
        assert!(failed.is_empty(), "reads failed: {failed:?}");
        (tail, present)
    })
}

/// Reopens and reads every op: (tail, ops present, ops whose read failed
/// with the error), or the error of the open.
#[allow(clippy::type_complexity)]
fn reopen_reading(
    path: &Path,
    recovery: Recovery,
) -> Result<(TailState, Vec<u64>, Vec<(u64, Error)>), Error> {
    let p = path.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    run(move || async move {
        let result = match builder(&p).recovery(recovery).open().await {
            Ok(journal) => {
                let mut present = Vec::new();
                let mut failed = Vec::new();
                for op in 1..=N {
                    match journal.read(op).await {
                        Ok(Some(entry)) => {
                            assert_eq!(
                                entry.payload,
                                payload(op, PAYLOAD),
                                "op {op} served with wrong bytes"
                            );
                            present.push(op);
                        }
                        Ok(None) => {}
                        Err(e) => failed.push((op, e)),
                    }
                }
                let tail = journal.recovery_report().tail.clone();
                journal.close().await.unwrap();
                Ok((tail, present, failed))
            }
            Err(e) => Err(e),
        };
        tx.send(result).unwrap();
    });
    rx.recv().unwrap()
}

/// Damage a reopen does not read (inside a write a later one vouches for):
/// the journal opens, every other op reads back, and reading `op` returns
/// the corruption, naming `file` and `offset`.
fn expect_found_on_read(path: &Path, file: &Path, offset: u64, op: u64) {
    let (tail, present, failed) = reopen_reading(path, Recovery::Strict).unwrap();
    assert_eq!(tail, TailState::Clean);
    assert_eq!(present, (1..=N).filter(|o| *o != op).collect::<Vec<_>>());
    match &failed[..] {
        [(
            o,
            Error::Corruption {
                path: p,
                offset: at,
                ..
            },
        )] => assert_eq!((*o, p.as_path(), *at), (op, file, offset)),
        other => panic!("expected op {op}'s read to fail as corruption, got {other:?}"),
    }
}

/// Ends a session the way a crash does: no close, no final superblock
/// update; what was written stays as it is.
async fn crash(journal: Journal) {
    // Let a spare segment's background preparation finish or not, as it may.
    glommio::yield_if_needed().await;
    drop(journal);
}

fn expect_torn(path: &Path, at_op: u64, reason: &str, cut_ops: Option<(u64, u64)>) {
    let (tail, present) = reopen(path, Recovery::TruncateTornTail).unwrap();
    match tail {
        TailState::Torn {
            offset,
            reason: r,
            ops,
            ..
        } => {
            assert_eq!(offset, offset_of_op(at_op));
            assert!(r.contains(reason), "reason {r:?} should mention {reason:?}");
            assert_eq!(ops, cut_ops, "the ops reported as possibly acknowledged");
        }
        other => panic!("expected a torn tail, got {other:?}"),
    }
    assert_eq!(present, (1..at_op).collect::<Vec<_>>());
    // Idempotent: the next open sees the same log (now with a clean end).
    let (_, again) = reopen(path, Recovery::TruncateTornTail).unwrap();
    assert_eq!(again, present);
    // And the cut log accepts new appends after the old ops.
    let p = path.to_path_buf();
    run(move || async move {
        let journal = builder(&p).open().await.unwrap();
        assert_eq!(journal.append(b"after").await.unwrap(), at_op);
        journal.close().await.unwrap();
    });
}

fn expect_corruption(result: Result<(TailState, Vec<u64>), Error>, file: &Path, offset: u64) {
    match result {
        Err(Error::Corruption {
            path,
            offset: o,
            reason,
        }) => {
            assert_eq!(path, file, "{reason}");
            assert_eq!(o, offset, "{reason}");
        }
        other => panic!(
            "expected corruption in {} at {offset}, got {other:?}",
            file.display()
        ),
    }
}

#[test]
fn row1_zeroed_tail_is_a_clean_end() {
    let (_dir, path) = write_session(0);
    let (tail, present) = reopen(&path, Recovery::Strict).unwrap();
    assert_eq!(tail, TailState::Clean);
    assert_eq!(present, (1..=N).collect::<Vec<_>>());
}

#[test]
fn row2_header_checksum_mismatch_at_the_tail_is_cut() {
    let (_dir, path) = write_session(0);
    flip_bit(&segment_path(&path, 1), offset_of_op(N) + 9, 3);
    expect_torn(&path, N, "checksum", None);
}

#[test]
fn row2_strict_recovery_reports_a_torn_tail() {
    let (_dir, path) = write_session(0);
    let segment = segment_path(&path, 1);
    flip_bit(&segment, offset_of_op(N) + 9, 3);
    expect_corruption(reopen(&path, Recovery::Strict), &segment, offset_of_op(N));
}

#[test]
fn row3_payload_checksum_mismatch_at_the_tail_is_cut() {
    let (_dir, path) = write_session(0);
    flip_bit(
        &segment_path(&path, 1),
        offset_of_op(N) + ENTRY_HEADER_BYTES as u64 + 17,
        0,
    );
    expect_torn(&path, N, "payload checksum", Some((N, N)));
}

#[test]
fn row3_a_lost_sector_of_the_last_write_is_cut() {
    let (_dir, path) = write_session(0);
    // The whole last write never reached the disk: its sector reads as zeros.
    patch(&segment_path(&path, 1), offset_of_op(N), &[0; 512]);
    let (tail, present) = reopen(&path, Recovery::Strict).unwrap();
    assert_eq!(
        tail,
        TailState::Clean,
        "a never-written tail is a clean end"
    );
    assert_eq!(present, (1..N).collect::<Vec<_>>());
}

#[test]
fn row4_stale_generation_at_the_tail_is_cut() {
    let (_dir, path) = write_session(0);
    let segment = segment_path(&path, 1);
    let mut header = read_header(&segment, offset_of_op(N));
    header.generation = 9.into();
    write_header(
        &segment,
        offset_of_op(N),
        &header.seal(&journal_id_of(&segment)),
    );
    expect_torn(&path, N, "generation", None);
}

/// Flags segment 1 of `path` recycled (its header resealed), as if its
/// file had held an older segment.
fn mark_recycled(path: &Path) {
    let segment = segment_path(path, 1);
    let bytes = std::fs::read(&segment).unwrap();
    let (mut header, _) = SegmentHeader::read_from_prefix(&bytes).unwrap();
    header.flags = (header.flags.get() | SEGMENT_FLAG_RECYCLED).into();
    patch(&segment, 0, header.seal().as_bytes());
}

/// Replaces op N's write in segment 1 of `path` with what another
/// segment's file could hold there: op N's first header resealed as of
/// `generation`, then bytes that are no header.
fn last_write_of_generation(path: &Path, generation: u64) {
    let segment = segment_path(path, 1);
    let mut header = read_header(&segment, offset_of_op(N));
    header.generation = generation.into();
    write_header(
        &segment,
        offset_of_op(N),
        &header.seal(&journal_id_of(&segment)),
    );
    patch(
        &segment,
        offset_of_op(N) + ENTRY_HEADER_BYTES as u64,
        &[0xa5; 4096 - ENTRY_HEADER_BYTES],
    );
}

#[test]
fn row16_older_bytes_past_the_end_of_a_recycled_segment_are_a_clean_end() {
    let (_dir, path) = write_session(0);
    mark_recycled(&path);
    // The last write's place holds what an older segment left there: a
    // header of an older generation (0: segment 1 has no older one), then
    // bytes that are no header.
    last_write_of_generation(&path, 0);
    let (tail, present) = reopen(&path, Recovery::Strict).unwrap();
    assert_eq!(tail, TailState::Clean);
    assert_eq!(present, (1..N).collect::<Vec<_>>());
}

#[test]
fn row16_a_later_generation_at_the_tail_is_cut() {
    let (_dir, path) = write_session(0);
    mark_recycled(&path);
    last_write_of_generation(&path, 9);
    expect_torn(&path, N, "generation", None);
}

#[test]
fn row16_a_header_of_this_generation_past_the_fault_still_makes_a_cut() {
    let (_dir, path) = write_session(0);
    mark_recycled(&path);
    // The last write's first header flipped: its index header, of this
    // generation, still verifies after it (row 2).
    flip_bit(&segment_path(&path, 1), offset_of_op(N) + 9, 3);
    expect_torn(&path, N, "checksum", None);
}

#[test]
fn row12_a_misdirected_write_at_the_tail_is_corruption() {
    let (_dir, path) = write_session(0);
    let segment = segment_path(&path, 1);
    // The block meant for op N-1's place landed at op N's place too.
    let bytes = std::fs::read(&segment).unwrap();
    let from = offset_of_op(N - 1) as usize;
    patch(&segment, offset_of_op(N), &bytes[from..from + 4096]);
    expect_corruption(
        reopen(&path, Recovery::TruncateTornTail),
        &segment,
        offset_of_op(N),
    );
}

#[test]
fn row12_a_misdirected_last_write_found_past_zeroes_is_corruption() {
    let (_dir, path) = write_session(0);
    let segment = segment_path(&path, 1);
    // The last write landed three sectors past its place, which reads as
    // zeros: not a clean end, because the copy is there.
    let bytes = std::fs::read(&segment).unwrap();
    let from = offset_of_op(N) as usize;
    let block = bytes[from..from + 4096].to_vec();
    patch(&segment, offset_of_op(N), &[0; 4096]);
    patch(&segment, offset_of_op(N) + 3 * 512, &block);
    expect_corruption(
        reopen(&path, Recovery::TruncateTornTail),
        &segment,
        offset_of_op(N),
    );
}

#[test]
fn row5_damage_followed_by_enough_valid_writes_is_corruption() {
    // Two writes in flight at most (the default): two valid writes after
    // the damaged one prove it had finished. A payload there is not read
    // by the reopen (it takes the write from its index): its read fails.
    let (_dir, path) = write_session(0);
    let segment = segment_path(&path, 1);
    flip_bit(
        &segment,
        offset_of_op(N - 2) + ENTRY_HEADER_BYTES as u64 + 3,
        6,
    );
    expect_found_on_read(&path, &segment, offset_of_op(N - 2), N - 2);
    // A write's first header is read: the reopen refuses.
    let (_dir, path) = write_session(0);
    let segment = segment_path(&path, 1);
    flip_bit(&segment, offset_of_op(2) + 20, 1);
    expect_corruption(
        reopen(&path, Recovery::TruncateTornTail),
        &segment,
        offset_of_op(2),
    );
}

#[test]
fn row5_one_later_write_that_vouches_for_the_damage_is_corruption() {
    // Op N's write was issued after op N-1's had finished (the appends are
    // serial), so its `durable_before` vouches for op N-1: damage there is
    // acknowledged data, although the last two writes could have been in
    // flight together.
    let (_dir, path) = write_session(0);
    let segment = segment_path(&path, 1);
    assert_eq!(
        u64::from(read_header(&segment, offset_of_op(N)).durable_before.get()),
        offset_of_op(N),
        "the last write vouches for everything before it"
    );
    flip_bit(
        &segment,
        offset_of_op(N - 1) + ENTRY_HEADER_BYTES as u64 + 3,
        6,
    );
    expect_found_on_read(&path, &segment, offset_of_op(N - 1), N - 1);
    // Its index is read: damage there is refused.
    let (_dir, path) = write_session(0);
    let segment = segment_path(&path, 1);
    let index_at = u64::from(read_header(&segment, offset_of_op(N - 1)).index_at.get());
    flip_bit(&segment, index_at + ENTRY_HEADER_BYTES as u64 + 9, 2);
    expect_corruption(
        reopen(&path, Recovery::TruncateTornTail),
        &segment,
        index_at,
    );
}

#[test]
fn a_write_that_does_not_vouch_leaves_the_damage_a_reported_cut() {
    // The same damage, but op N's write claims nothing about op N-1 (as when
    // both were in flight together): the cut is made and reported.
    let (_dir, path) = write_session(0);
    let segment = segment_path(&path, 1);
    let mut header = read_header(&segment, offset_of_op(N));
    header.durable_before = (offset_of_op(N - 1) as u32).into();
    write_header(
        &segment,
        offset_of_op(N),
        &header.seal(&journal_id_of(&segment)),
    );
    flip_bit(
        &segment,
        offset_of_op(N - 1) + ENTRY_HEADER_BYTES as u64 + 3,
        6,
    );
    // Strict refuses to cut what may have been acknowledged (and changes
    // nothing); the default cuts and reports.
    expect_corruption(
        reopen(&path, Recovery::Strict),
        &segment,
        offset_of_op(N - 1),
    );
    let (tail, present) = reopen(&path, Recovery::TruncateTornTail).unwrap();
    match &tail {
        TailState::Torn {
            offset,
            ops,
            entries,
            ..
        } => {
            assert_eq!(*offset, offset_of_op(N - 1));
            assert_eq!(*ops, Some((N - 1, N)), "both cut ops are reported");
            assert_eq!(*entries, 2);
        }
        other => panic!("expected a reported cut, got {other:?}"),
    }
    assert!(tail.describe().contains("may have been acknowledged"));
    assert_eq!(present, (1..N - 1).collect::<Vec<_>>());
}

#[test]
fn after_a_clean_close_tail_damage_is_corruption() {
    // The superblock records where the log ends: nothing is undecidable.
    // A payload in the last write: the recorded end vouches for it, so the
    // reopen takes the write from its index and the read fails.
    let (_dir, path) = write_closed_session();
    let segment = segment_path(&path, 1);
    flip_bit(&segment, offset_of_op(N) + ENTRY_HEADER_BYTES as u64 + 3, 6);
    expect_found_on_read(&path, &segment, offset_of_op(N), N);
    // Its block zeroed: the reopen refuses.
    let (_dir, path) = write_closed_session();
    let segment = segment_path(&path, 1);
    patch(&segment, offset_of_op(N), &[0; 4096]);
    expect_corruption(
        reopen(&path, Recovery::TruncateTornTail),
        &segment,
        offset_of_op(N),
    );
}

#[test]
fn row5_with_serial_writes_one_valid_write_after_the_damage_is_corruption() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    let p = path.clone();
    run(move || async move {
        let journal = builder(&p).writes_in_flight(1).open().await.unwrap();
        for op in 1..=N {
            journal.append(&payload(op, PAYLOAD)).await.unwrap();
        }
        journal.close().await.unwrap();
    });
    let segment = segment_path(&path, 1);
    flip_bit(&segment, offset_of_op(N - 1) + 20, 6);
    expect_corruption(
        reopen(&path, Recovery::TruncateTornTail),
        &segment,
        offset_of_op(N - 1),
    );
}

#[test]
fn row6_damage_in_an_earlier_segment_is_corruption_even_at_its_end() {
    let (_dir, path) = write_session(1);
    let segment = segment_path(&path, 1);
    flip_bit(&segment, offset_of_op(N) + 30, 2);
    expect_corruption(
        reopen(&path, Recovery::TruncateTornTail),
        &segment,
        offset_of_op(N),
    );
}

#[test]
fn row7_an_incomplete_new_segment_is_removed() {
    let (_dir, path) = write_session(0);
    let incomplete = segment_path(&path, 2);
    std::fs::write(&incomplete, vec![0u8; 8192]).unwrap();
    let p = path.clone();
    let inc = incomplete.clone();
    run(move || async move {
        let journal = builder(&p).open().await.unwrap();
        assert_eq!(journal.recovery_report().removed, vec![inc]);
        assert_eq!(
            journal.read(N).await.unwrap().unwrap().payload,
            payload(N, PAYLOAD)
        );
        journal.close().await.unwrap();
    });
    let (tail, present) = reopen(&path, Recovery::Strict).unwrap();
    assert_eq!(tail, TailState::Clean);
    assert_eq!(present.len() as u64, N);
}

#[test]
fn row8_a_damaged_segment_header_with_data_is_corruption() {
    // Not the last segment.
    let (_dir, path) = write_session(1);
    let segment = segment_path(&path, 1);
    flip_bit(&segment, 20, 0);
    expect_corruption(reopen(&path, Recovery::TruncateTornTail), &segment, 0);
    // The last segment, but it holds a valid first write.
    let (_dir, path) = write_session(0);
    let segment = segment_path(&path, 1);
    flip_bit(&segment, 20, 0);
    expect_corruption(reopen(&path, Recovery::TruncateTornTail), &segment, 0);
}

#[test]
fn row9_a_missing_segment_is_corruption() {
    let (_dir, path) = write_session(0);
    // Two more sessions that each append, so segments 2 and 3 hold data.
    let p = path.clone();
    run(move || async move {
        for op in [N + 1, N + 2] {
            let journal = builder(&p).open().await.unwrap();
            assert_eq!(journal.append(&payload(op, PAYLOAD)).await.unwrap(), op);
            journal.close().await.unwrap();
        }
    });
    assert!(segment_path(&path, 3).exists());
    std::fs::remove_file(segment_path(&path, 2)).unwrap();
    expect_corruption(
        reopen(&path, Recovery::TruncateTornTail),
        &segment_path(&path, 2),
        0,
    );
}

#[test]
fn row10_two_live_ops_in_one_slot_is_corruption() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    let p = path.clone();
    run(move || async move {
        let journal = builder(&p).slot_count(64).open().await.unwrap();
        journal.write(3, b"three").await.unwrap();
        journal.write(35, b"thirty-five").await.unwrap();
        journal.close().await.unwrap();
        // Reopened with 32 slots, ops 3 and 35 share slot 3.
        match builder(&p).slot_count(32).open().await {
            Err(Error::Corruption { reason, .. }) => assert!(reason.contains("op 3"), "{reason}"),
            other => panic!("expected corruption, got {other:?}"),
        }
    });
}

#[test]
fn row11_an_unknown_format_version_is_refused() {
    let (_dir, path) = write_session(0);
    let segment = segment_path(&path, 1);
    let bytes = std::fs::read(&segment).unwrap();
    let mut header =
        SegmentHeader::read_from_bytes(&bytes[..ringstore_journal::format::SEGMENT_HEADER_BYTES])
            .unwrap();
    header.version = (FORMAT_VERSION + 1).into();
    patch(&segment, 0, header.seal().as_bytes());
    match reopen(&path, Recovery::TruncateTornTail) {
        Err(Error::UnsupportedVersion {
            path: p,
            found,
            supported: FORMAT_VERSION,
        }) if found == FORMAT_VERSION + 1 => assert_eq!(p, segment),
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

#[test]
fn torn_write_with_later_sectors_persisted_is_a_reported_tail_cut() {
    // The last write held several entries; its first sector was lost but a
    // later one persisted (sectors may land out of order). The surviving
    // entries lack the first-in-write flag, so this is a tail, not mid-log
    // damage — but not a clean end either: the ops whose entries survive are
    // reported as cut.
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    let p = path.clone();
    run(move || async move {
        let journal = builder(&p).open().await.unwrap();
        journal.append(b"first").await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..8u64 {
            let journal = journal.clone();
            tasks.push(glommio::spawn_local(async move {
                journal.append(&payload(i, 1500)).await.unwrap()
            }));
        }
        for t in tasks {
            t.await;
        }
        crash(journal).await;
    });
    let segment = segment_path(&path, 1);
    // The second write starts at 8192; drop its first sector.
    let header: EntryHeader = read_header(&segment, 8192);
    assert_eq!(header.flags & 1, 1);
    assert!(
        read_header(&segment, 8192 + 1552).op.get() > 1,
        "a later entry of the write persisted"
    );
    patch(&segment, 8192, &[0; 512]);
    run(move || async move {
        let journal = builder(&path).open().await.unwrap();
        match journal.recovery_report().tail.clone() {
            TailState::Torn {
                offset,
                ops,
                entries,
                ..
            } => {
                assert_eq!(offset, 8192);
                let (lo, hi) = ops.expect("surviving entries are reported");
                assert!(lo >= 2 && hi <= 9 && entries >= 1, "{lo}..={hi}, {entries}");
            }
            other => panic!("expected a reported cut, got {other:?}"),
        }
        assert_eq!(journal.read(1).await.unwrap().unwrap().payload, b"first");
        for op in 2..=9 {
            assert_eq!(
                journal.read(op).await.unwrap(),
                None,
                "op {op} of the torn write"
            );
        }
        journal.close().await.unwrap();
    });
}

/// A payload flip in the first entry of a full-size write, with more writes
/// after it: the next write starts exactly `batch_bytes_max` later, which
/// must still count as evidence of mid-log damage.
#[test]
fn damage_in_a_full_size_write_followed_by_another_is_corruption() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    let p = path.clone();
    run(move || async move {
        let journal = builder(&p).open().await.unwrap();
        // 64 KiB batches: one entry of this size, its write's index and
        // the padding header fill a write exactly.
        let big = (64 << 10) - 3 * ENTRY_HEADER_BYTES - 32;
        let journal = {
            journal.close().await.unwrap();
            Journal::builder(&p)
                .segment_bytes(1 << 20)
                .batch_bytes_max(64 << 10)
                .entry_bytes_max(big as u64)
                .slot_count(64)
                .open()
                .await
                .unwrap()
        };
        journal.append(&payload(1, big)).await.unwrap();
        journal.append(&payload(2, 10)).await.unwrap();
        journal.append(&payload(3, 10)).await.unwrap();
        journal.close().await.unwrap();
    });
    // The first open's empty segment was reused: segment 1 holds the writes.
    let segment = segment_path(&path, 1);
    assert_eq!(
        read_header(&segment, 4096 + (64 << 10)).offset.get(),
        4096 + (64 << 10)
    );
    // Its first header (a payload there the reopen would leave to reads).
    flip_bit(&segment, 4096 + 20, 4);
    let p = path.clone();
    run(move || async move {
        match Journal::builder(&p)
            .segment_bytes(1 << 20)
            .batch_bytes_max(64 << 10)
            .entry_bytes_max(16 << 10)
            .slot_count(64)
            .open()
            .await
        {
            Err(Error::Corruption {
                offset: 4096, path, ..
            }) => assert_eq!(path, segment_path(&p, 1)),
            other => panic!("expected corruption at 4096, got {other:?}"),
        }
    });
}

/// Entries written with a larger entry_bytes_max stay readable after a
/// reopen with a smaller one: the limit applies to new writes only.
#[test]
fn a_smaller_entry_limit_on_reopen_keeps_larger_entries() {
    let (_dir, path) = write_session(0);
    let p = path.clone();
    run(move || async move {
        let journal = builder(&p).entry_bytes_max(64).open().await.unwrap();
        assert_eq!(
            journal.read(N).await.unwrap().unwrap().payload,
            payload(N, PAYLOAD)
        );
        assert!(matches!(
            journal.append(&[0; 65]).await,
            Err(Error::EntryTooLarge { .. })
        ));
        journal.close().await.unwrap();
        let journal = builder(&p).entry_bytes_max(64).open().await.unwrap();
        assert_eq!(
            journal.read(1).await.unwrap().unwrap().payload,
            payload(1, PAYLOAD)
        );
        journal.close().await.unwrap();
    });
}

/// Hostile segment headers with valid checksums: typed errors, no panic.
#[test]
fn hostile_segment_header_fields_are_corruption_not_panics() {
    type Damage = fn(&mut SegmentHeader);
    let hostile: [(&str, Damage); 4] = [
        ("huge batch size", |h| h.batch_bytes_max = (!4095u64).into()),
        ("batch larger than the segment", |h| {
            h.batch_bytes_max = (h.segment_bytes.get() * 2).into()
        }),
        ("huge segment size", |h| h.segment_bytes = (!4095u64).into()),
        ("unknown flags", |h| h.flags = 0x80.into()),
    ];
    for (what, damage) in hostile {
        let (_dir, path) = write_session(0);
        let segment = segment_path(&path, 1);
        let bytes = std::fs::read(&segment).unwrap();
        let mut header = SegmentHeader::read_from_bytes(
            &bytes[..ringstore_journal::format::SEGMENT_HEADER_BYTES],
        )
        .unwrap();
        damage(&mut header);
        patch(&segment, 0, header.seal().as_bytes());
        match reopen(&path, Recovery::TruncateTornTail) {
            Err(Error::Corruption { .. }) => {}
            other => panic!("{what}: expected corruption, got {other:?}"),
        }
    }
}

/// A segment named with the last generation there is, holding entries: the
/// next segment cannot be numbered; an error, not an overflow.
#[test]
fn the_last_possible_generation_is_an_error_not_an_overflow() {
    let (_dir, path) = write_session(0);
    let from = segment_path(&path, 1);
    let to = segment_path(&path, u64::MAX);
    // Renumber the segment: its header and every entry header (each write
    // is one entry followed by a padding entry).
    let bytes = std::fs::read(&from).unwrap();
    let mut header =
        SegmentHeader::read_from_bytes(&bytes[..ringstore_journal::format::SEGMENT_HEADER_BYTES])
            .unwrap();
    header.generation = u64::MAX.into();
    patch(&from, 0, header.seal().as_bytes());
    for op in 1..=N {
        let entry_at = offset_of_op(op);
        let mut entry = read_header(&from, entry_at);
        let padding_at = entry_at + entry.footprint();
        entry.generation = u64::MAX.into();
        write_header(&from, entry_at, &entry.seal(&journal_id_of(&from)));
        let mut padding = read_header(&from, padding_at);
        padding.generation = u64::MAX.into();
        write_header(&from, padding_at, &padding.seal(&journal_id_of(&from)));
    }
    std::fs::rename(&from, &to).unwrap();
    // The last generation is never a segment name (a stray file), and the
    // superblock's segment 1 is gone: refused before any numbering.
    match reopen(&path, Recovery::TruncateTornTail) {
        Err(Error::Corruption {
            reason, path: p, ..
        }) => {
            assert!(reason.contains("missing"), "{reason}");
            assert_eq!(p, from);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

/// Row 13: a segment written without fdatasync may end in several torn
/// writes; valid writes after the damage are not evidence of mid-log damage.
#[test]
fn row13_nosync_segments_cut_at_the_first_damage() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    let p = path.clone();
    run(move || async move {
        let journal = builder(&p)
            .durability(ringstore_journal::Durability::NoSync)
            .open()
            .await
            .unwrap();
        for op in 1..=N {
            journal.append(&payload(op, PAYLOAD)).await.unwrap();
        }
        crash(journal).await;
    });
    flip_bit(&segment_path(&path, 1), offset_of_op(3) + 20, 2);
    let (tail, present) = reopen(&path, Recovery::TruncateTornTail).unwrap();
    assert!(
        matches!(tail, TailState::Torn { offset, .. } if offset == offset_of_op(3)),
        "{tail:?}"
    );
    assert_eq!(present, vec![1, 2]);
}

/// Found by the `journal_files` fuzz target: a last segment file shorter
/// than its header says, cut inside an entry, made the search for later
/// writes read past the end of the file and panic. Segments are
/// preallocated and synced before their header is written, so no crash
/// shortens one: it is corruption naming the file and where it ends.
#[test]
fn a_segment_cut_short_is_corruption_not_a_panic() {
    for cut in [
        offset_of_op(N) + 100,
        offset_of_op(N) + 512,
        offset_of_op(N - 1) + 17,
    ] {
        let (_dir, path) = write_session(0);
        let segment = segment_path(&path, 1);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(cut)
            .unwrap();
        expect_corruption(reopen(&path, Recovery::TruncateTornTail), &segment, cut);
    }
}

/// Found in review: a payload is client-chosen bytes, and could carry what
/// looks like a valid entry header. Placed where recovery's search past
/// damage looks, it must not turn a crash-torn tail into a refusal (as a
/// "misdirected write"): entry header checksums are seeded with the
/// journal's id, which a client does not know.
#[test]
fn a_header_forged_inside_a_payload_is_not_evidence() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    // A header as an attacker would forge it: right magic, generation and
    // kind, sealed without the journal's id, naming another offset.
    let forged = EntryHeader {
        checksum: 0.into(),
        magic: ringstore_journal::format::ENTRY_MAGIC.into(),
        op: 99.into(),
        epoch: 0.into(),
        generation: 1.into(),
        offset: 4096.into(),
        payload_len: 0.into(),
        payload_checksum: 0.into(),
        durable_before: 0.into(),
        kind: ringstore_journal::format::EntryKind::Padding as u8,
        flags: 0,
        index_at: 0.into(),
        reserved: [0; 2],
    }
    .seal(&[0; 16]);
    // In the payload past the write's first sector, 8-byte aligned in the file.
    let at = 464;
    let mut crafted = vec![7u8; 600];
    crafted[at..at + ENTRY_HEADER_BYTES].copy_from_slice(forged.as_bytes());
    let p = path.clone();
    let c = crafted.clone();
    run(move || async move {
        let journal = builder(&p).open().await.unwrap();
        for op in 1..N {
            journal.append(&payload(op, PAYLOAD)).await.unwrap();
        }
        assert_eq!(journal.append(&c).await.unwrap(), N);
        crash(journal).await;
    });
    let segment = segment_path(&path, 1);
    assert_eq!(
        (offset_of_op(N) + ENTRY_HEADER_BYTES as u64 + at as u64) % 8,
        0
    );
    // The crash kept the write's later sectors but not its first.
    patch(&segment, offset_of_op(N), &[0; 512]);
    let (tail, present) = reopen(&path, Recovery::TruncateTornTail).unwrap();
    assert!(
        matches!(tail, TailState::Torn { offset, .. } if offset == offset_of_op(N)),
        "a reported cut, not a refusal: {tail:?}"
    );
    assert_eq!(present, (1..N).collect::<Vec<_>>());
}
