//! Pins that the read-only scan behind `ringstore wal verify`
//! (`inspect::scan_journal`) and reopening the journal reach the same
//! verdict — refuse (with the same file, offset and reason), cut the tail
//! (with the same offset and ops), or open cleanly — for a catalogue of
//! damage: bit flips in the header and payload of the last and of a middle
//! write, zeroed blocks, a misdirected write, truncated, deleted and
//! zero-length segments, a deleted superblock, one and both superblock
//! copies flipped, a stray upper-case-hex segment name, a segment of
//! another journal, a spare segment, a crash that tore the last write, and
//! a journal of another owner (domain or shard).
//! Each case is scanned first (an open changes the directory: it cuts,
//! removes leftovers), then opened with `Recovery::Strict` on a copy and
//! with the default recovery in place.
mod common;
use common::*;
use ringstore_journal::inspect::{scan_journal, scan_journal_as, JournalReport, Verdict};
use ringstore_journal::verify::Refusal;
use ringstore_journal::{Error, Journal, JournalBuilder, JournalOwner, Recovery, RecoveryReport};
use std::path::{Path, PathBuf};

/// Ops per session; op `k` of a session is its write's only entry, at byte
/// 4096 * k of the session's segment.
const OPS: u64 = 4;
/// Payload of every op but the very last.
const PAYLOAD: usize = 200;
/// Payload of the last op: several sectors, so a torn write can leave part
/// of it.
const LAST_PAYLOAD: usize = 3000;
const LAST_OP: u64 = 3 * OPS;

fn builder(path: &Path) -> JournalBuilder {
    Journal::builder(path)
        .segment_bytes(1 << 20)
        .batch_bytes_max(64 << 10)
        .entry_bytes_max(16 << 10)
        .slot_count(64)
}

/// Three sessions of [`OPS`] ops each (segments 1, 2, 3); the first two
/// close cleanly, the third closes if `close`, else it ends in a crash (the
/// end of segment 3 is recorded nowhere).
fn write_journal(dir: &Path, close: bool) {
    write_journal_of(dir, close, None);
}

/// [`write_journal`], the journal opened as `owner`'s.
fn write_journal_of(dir: &Path, close: bool, owner: Option<JournalOwner>) {
    let p = dir.to_path_buf();
    run(move || async move {
        for session in 0..3 {
            let journal = with_owner(builder(&p), owner).open().await.unwrap();
            for op in session * OPS + 1..=(session + 1) * OPS {
                let len = if op == LAST_OP { LAST_PAYLOAD } else { PAYLOAD };
                assert_eq!(journal.append(&payload(op, len)).await.unwrap(), op);
            }
            if session < 2 || close {
                journal.close().await.unwrap();
            } else {
                glommio::yield_if_needed().await;
                drop(journal);
            }
        }
    });
}

fn with_owner(builder: JournalBuilder, owner: Option<JournalOwner>) -> JournalBuilder {
    match owner {
        Some(owner) => builder.owner(owner),
        None => builder,
    }
}

fn offset_of(op: u64) -> u64 {
    4096 * ((op - 1) % OPS + 1)
}

fn segment_of(dir: &Path, op: u64) -> PathBuf {
    segment_path(dir, (op - 1) / OPS + 1)
}

fn zero(path: &Path, offset: u64, len: usize) {
    patch(path, offset, &vec![0; len]);
}

fn set_len(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// What one open found: its report, or its error.
fn open(
    dir: &Path,
    recovery: Recovery,
    owner: Option<JournalOwner>,
) -> Result<RecoveryReport, Error> {
    let p = dir.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    run(move || async move {
        let result = match with_owner(builder(&p), owner)
            .recovery(recovery)
            .open()
            .await
        {
            Ok(journal) => {
                let report = journal.recovery_report().clone();
                journal.close().await.unwrap();
                Ok(report)
            }
            Err(e) => Err(e),
        };
        tx.send(result).unwrap();
    });
    rx.recv().unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The verdict each case must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Opens,
    Cuts(Option<(u64, u64)>),
    Refuses,
    /// Damage the reopen does not read (inside a write a later one vouches
    /// for): it opens, the scan reports the damage, and reading the op (if
    /// any reads reach it: not below the watermark) fails naming the same
    /// file and offset.
    FoundOnRead(Option<u64>),
}

/// Reads `op` from the journal in `dir` (opened with the default recovery).
fn read_op(dir: &Path, op: u64) -> Result<Option<Vec<u8>>, Error> {
    let p = dir.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    run(move || async move {
        let journal = builder(&p).open().await.unwrap();
        let read = journal
            .read(op)
            .await
            .map(|e| e.map(|e| e.payload.to_vec()));
        journal.close().await.unwrap();
        tx.send(read).unwrap();
    });
    rx.recv().unwrap()
}

/// The places (file, offset) one scrub pass of the journal in `dir`
/// reports, opened on a copy (the open may tidy the directory).
fn scrub_places(dir: &Path, owner: Option<JournalOwner>) -> Vec<(PathBuf, u64)> {
    let copy = dir.with_extension("scrubbed");
    copy_dir(dir, &copy);
    let p = copy.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    run(move || async move {
        let mut b = builder(&p);
        if let Some(owner) = owner {
            b = b.owner(owner);
        }
        let journal = b.open().await.unwrap();
        let pass = journal.scrub_pass().await.unwrap();
        journal.close().await.unwrap();
        tx.send(pass).unwrap();
    });
    let pass = rx.recv().unwrap();
    // Named by their place in `dir`, as the scan names them.
    pass.damage
        .iter()
        .chain(&pass.unreadable)
        .map(|d| (dir.join(d.path.file_name().unwrap()), d.offset))
        .collect()
}

/// Checks that the scan and the opens agree, and that they reach `expect`.
fn check(name: &str, scanned: &JournalReport, dir: &Path, expect: Expect) {
    check_as(name, scanned, dir, expect, None);
}

/// [`check`], the opens expecting `owner` (as the scan did).
fn check_as(
    name: &str,
    scanned: &JournalReport,
    dir: &Path,
    expect: Expect,
    owner: Option<JournalOwner>,
) {
    let context = format!("{name}: {}", scanned.describe_verdict());
    match (expect, scanned.verdict) {
        (Expect::Opens, Verdict::Opens) if scanned.damage_found_on_read.is_empty() => {}
        (Expect::FoundOnRead(_), Verdict::Opens) if !scanned.damage_found_on_read.is_empty() => {
            assert_eq!(scanned.damage_found_on_read, scanned.damage, "{context}");
            assert!(!scanned.is_intact(), "{context}");
            // The ops after the damaged payload are there: none missing.
            assert_eq!(scanned.missing_op_count, 0, "{context}");
            assert_eq!(scanned.leading_gap, None, "{context}");
            // What the reopen does not read, a scrub pass of the reopened
            // journal names (below the watermark, where no read reaches,
            // nothing else would).
            let scrubbed = scrub_places(dir, owner);
            for damage in &scanned.damage_found_on_read {
                assert!(
                    scrubbed.contains(&(damage.path.clone(), damage.offset)),
                    "{context}: the scrub pass named {scrubbed:?}, not {damage}"
                );
            }
        }
        (Expect::Refuses, Verdict::Refuses) => {}
        (Expect::Cuts(ops), Verdict::Cuts) => match &scanned.tail {
            ringstore_journal::inspect::Tail::Torn { ops: found, .. } => {
                assert_eq!(*found, ops, "{context}")
            }
            other => panic!("{context}: a cut without a torn tail: {other:?}"),
        },
        (expect, found) => panic!("{context}: expected {expect:?}, the scan says {found:?}"),
    }
    // Strict on a copy (a failed open may still have removed leftovers),
    // the default on the directory itself, so paths compare as they are.
    let strict_dir = dir.with_extension("strict");
    copy_dir(dir, &strict_dir);

    let strict = open(&strict_dir, Recovery::Strict, owner);
    assert_eq!(
        strict.is_err(),
        scanned.reopen_refuses(Recovery::Strict),
        "{context}: Strict open gave {strict:?}"
    );
    let opened = open(dir, Recovery::TruncateTornTail, owner);
    assert_eq!(
        opened.is_err(),
        scanned.reopen_refuses(Recovery::TruncateTornTail),
        "{context}: open gave {opened:?}"
    );
    match opened {
        Err(Error::Corruption {
            path,
            offset,
            reason,
        }) => match &scanned.refusal {
            Some(Refusal::Damage(d)) => {
                assert_eq!(
                    (&d.path, d.offset, &d.reason),
                    (&path, offset, &reason),
                    "{context}"
                )
            }
            other => panic!("{context}: open refused with corruption, the scan with {other:?}"),
        },
        Err(Error::UnsupportedVersion { path, found, .. }) => match &scanned.refusal {
            Some(Refusal::UnsupportedVersion {
                path: p, found: f, ..
            }) => assert_eq!((p, *f), (&path, found), "{context}"),
            other => panic!("{context}: open refused a version, the scan with {other:?}"),
        },
        Err(Error::WrongOwner {
            path,
            recorded,
            expected,
        }) => match &scanned.refusal {
            Some(Refusal::WrongOwner {
                path: p,
                recorded: r,
                expected: e,
            }) => assert_eq!((p, r, e), (&path, &recorded, &expected), "{context}"),
            other => panic!("{context}: open refused the owner, the scan with {other:?}"),
        },
        Err(other) => panic!("{context}: open failed otherwise: {other}"),
        Ok(report) => {
            assert_eq!(
                Some(report.tail.clone()),
                scanned.tail.tail_state(),
                "{context}"
            );
            // Past a payload the reopen does not read, the scan counts what
            // the write's index lists, as the reopen does.
            assert_eq!(report.entries, scanned.data_entries, "{context}");
            assert_eq!(report.bytes, scanned.data_bytes, "{context}");
            assert_eq!(report.watermark, scanned.watermark, "{context}");
            let mut removed = report.removed.clone();
            removed.sort();
            let mut leftovers: Vec<PathBuf> =
                scanned.leftovers.iter().map(|l| l.path.clone()).collect();
            leftovers.sort();
            assert_eq!(removed, leftovers, "{context}");
            assert_eq!(report.stray_files, scanned.stray, "{context}");
            let damaged_copies = scanned
                .superblock
                .as_ref()
                .map_or(0, |sb| sb.damaged_copies.len());
            assert_eq!(
                report.superblock_repaired.len(),
                damaged_copies,
                "{context}"
            );
        }
    }
    if let Expect::FoundOnRead(Some(op)) = expect {
        let damage = &scanned.damage_found_on_read[0];
        match read_op(dir, op) {
            Err(Error::Corruption { path, offset, .. }) => {
                assert_eq!((&path, offset), (&damage.path, damage.offset), "{context}")
            }
            other => panic!("{context}: reading op {op} gave {other:?}"),
        }
    }
}

/// A damage applied to a fresh journal.
struct Case {
    name: &'static str,
    /// The writing session ended with a clean close (else a crash).
    closed: bool,
    damage: fn(&Path),
    expect: Expect,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "nothing damaged, after a crash",
            closed: false,
            damage: |_| {},
            expect: Expect::Opens,
        },
        Case {
            name: "nothing damaged, after a clean close",
            closed: true,
            damage: |_| {},
            expect: Expect::Opens,
        },
        Case {
            name: "payload bit flip in the last write, after a crash",
            closed: false,
            damage: |d| flip_bit(&segment_of(d, LAST_OP), offset_of(LAST_OP) + 56 + 7, 3),
            expect: Expect::Cuts(Some((LAST_OP, LAST_OP))),
        },
        Case {
            name: "header bit flip in the last write, after a crash",
            closed: false,
            damage: |d| flip_bit(&segment_of(d, LAST_OP), offset_of(LAST_OP) + 9, 0),
            expect: Expect::Cuts(None),
        },
        Case {
            name: "crash-only torn tail: one sector of the last write never written",
            closed: false,
            damage: |d| zero(&segment_of(d, LAST_OP), offset_of(LAST_OP) + 1024, 512),
            expect: Expect::Cuts(Some((LAST_OP, LAST_OP))),
        },
        Case {
            name: "the whole last write zeroed, after a crash (looks never written)",
            closed: false,
            damage: |d| zero(&segment_of(d, LAST_OP), offset_of(LAST_OP), 4096),
            expect: Expect::Opens,
        },
        Case {
            name: "payload bit flip in the last write, after a clean close",
            closed: true,
            damage: |d| flip_bit(&segment_of(d, LAST_OP), offset_of(LAST_OP) + 56 + 7, 3),
            expect: Expect::FoundOnRead(Some(LAST_OP)),
        },
        Case {
            name: "header bit flip in a middle write of the last segment",
            closed: false,
            damage: |d| flip_bit(&segment_of(d, LAST_OP - 2), offset_of(LAST_OP - 2) + 9, 0),
            expect: Expect::Refuses,
        },
        Case {
            name: "payload bit flip in a middle segment",
            closed: false,
            damage: |d| flip_bit(&segment_of(d, 6), offset_of(6) + 56 + 7, 3),
            expect: Expect::FoundOnRead(Some(6)),
        },
        Case {
            name: "a bit flip in a write's index in a middle segment",
            closed: false,
            damage: |d| {
                let segment = segment_of(d, 6);
                let index_at = read_header(&segment, offset_of(6)).index_at.get();
                flip_bit(&segment, u64::from(index_at) + 56 + 3, 3)
            },
            expect: Expect::Refuses,
        },
        Case {
            name: "header bit flip in a middle segment",
            closed: false,
            damage: |d| flip_bit(&segment_of(d, 6), offset_of(6) + 20, 5),
            expect: Expect::Refuses,
        },
        Case {
            name: "a zeroed block in a middle segment",
            closed: false,
            damage: |d| zero(&segment_of(d, 6), offset_of(6), 4096),
            expect: Expect::Refuses,
        },
        Case {
            name: "a misdirected write over the last write",
            closed: false,
            damage: |d| {
                let path = segment_of(d, LAST_OP);
                let bytes = std::fs::read(&path).unwrap();
                let from = offset_of(LAST_OP - 1) as usize;
                patch(&path, offset_of(LAST_OP), &bytes[from..from + 4096]);
            },
            expect: Expect::Refuses,
        },
        Case {
            name: "a truncated middle segment",
            closed: true,
            damage: |d| {
                let path = segment_path(d, 2);
                set_len(&path, file_len(&path) - 4096);
            },
            expect: Expect::Refuses,
        },
        Case {
            name: "a truncated last segment, after a crash",
            closed: false,
            damage: |d| {
                let path = segment_path(d, 3);
                set_len(&path, file_len(&path) / 2);
            },
            expect: Expect::Refuses,
        },
        Case {
            name: "a deleted middle segment",
            closed: true,
            damage: |d| std::fs::remove_file(segment_path(d, 2)).unwrap(),
            expect: Expect::Refuses,
        },
        Case {
            name: "a deleted last segment",
            closed: false,
            damage: |d| std::fs::remove_file(segment_path(d, 3)).unwrap(),
            expect: Expect::Refuses,
        },
        Case {
            name: "a zero-length segment",
            closed: true,
            damage: |d| set_len(&segment_path(d, 2), 0),
            expect: Expect::Refuses,
        },
        Case {
            name: "a deleted superblock",
            closed: true,
            damage: |d| std::fs::remove_file(d.join("superblock")).unwrap(),
            expect: Expect::Refuses,
        },
        Case {
            name: "one superblock copy flipped",
            closed: true,
            damage: |d| flip_bit(&d.join("superblock"), 40, 1),
            expect: Expect::Opens,
        },
        Case {
            name: "both superblock copies flipped",
            closed: true,
            damage: |d| {
                flip_bit(&d.join("superblock"), 40, 1);
                flip_bit(&d.join("superblock"), 4096 + 40, 1);
            },
            expect: Expect::Refuses,
        },
        Case {
            name: "a stray upper-case-hex segment name",
            closed: false,
            damage: |d| {
                std::fs::copy(segment_path(d, 2), d.join("segment-000000000000000A.wal")).unwrap();
            },
            expect: Expect::Opens,
        },
        Case {
            name: "a spare segment (created, no header yet)",
            closed: true,
            damage: |d| {
                let spare = segment_path(d, 4);
                let _ = std::fs::remove_file(&spare);
                std::fs::write(&spare, vec![0; 8192]).unwrap();
            },
            expect: Expect::Opens,
        },
    ]
}

#[test]
fn the_scan_and_reopening_agree_on_every_damage() {
    let root = temp_dir();
    for (i, case) in cases().into_iter().enumerate() {
        let dir = root.path().join(format!("case-{i}"));
        write_journal(&dir, case.closed);
        (case.damage)(&dir);
        let scanned = scan_journal(&dir, &mut ()).unwrap();
        check(case.name, &scanned, &dir, case.expect);
    }
}

/// Ops written into the recycled segment of [`write_recycled_journal`],
/// one write each; the last has [`LAST_PAYLOAD`] bytes.
const RECYCLED_OPS: u64 = 4;
/// Where [`write_recycled_journal`]'s segment holds older bytes only.
const RECYCLED_STALE_AT: u64 = 768 << 10;

/// The end of a journal whose last segment is a recycled file.
#[derive(Debug, Clone)]
struct RecycledTail {
    segment: PathBuf,
    /// Offset of the last op's write.
    last_at: u64,
    last_op: u64,
}

/// A journal whose last segment is a retired segment's file, recycled
/// (8000-byte ops, the watermark kept close behind, until a rollover
/// activates a recycled spare), holding [`RECYCLED_OPS`] ops; the session
/// ends with a clean close if `close`, else in a crash.
fn write_recycled_journal(dir: &Path, close: bool) -> RecycledTail {
    let p = dir.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    run(move || async move {
        let journal = builder(&p).open().await.unwrap();
        let mut op = 0;
        let mut recycled_at = None;
        // Until the recycled spare has become the active segment.
        while recycled_at.is_none_or(|created| journal.stats().segments_created == created) {
            op = journal.append(&payload(op + 1, 8000)).await.unwrap();
            if op % 16 == 0 {
                journal.advance_watermark(op - 8).await.unwrap();
            }
            if recycled_at.is_none() && journal.stats().segments_recycled > 0 {
                recycled_at = Some(journal.stats().segments_created);
            }
            assert!(op < 2000, "nothing recycled: {:?}", journal.stats());
        }
        for _ in 0..RECYCLED_OPS {
            let len = if op % 2 == 0 { PAYLOAD } else { PAYLOAD + 8 };
            op = journal.append(&payload(op + 1, len)).await.unwrap();
        }
        let last_op = journal
            .append(&payload(op + 1, LAST_PAYLOAD))
            .await
            .unwrap();
        if close {
            journal.close().await.unwrap();
        } else {
            glommio::yield_if_needed().await;
            drop(journal);
        }
        tx.send(last_op).unwrap();
    });
    let last_op = rx.recv().unwrap();
    // The newest segment with a header (a spare prepared after the last
    // rollover has none).
    let generation = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| ringstore_journal::segment_generation(&e.unwrap().file_name()))
        .filter(|g| std::fs::read(segment_path(dir, *g)).unwrap().get(4..8) == Some(&b"RSEG"[..]))
        .max()
        .unwrap();
    let segment = segment_path(dir, generation);
    let last_at = (1..256)
        .map(|block| block * 4096)
        .find(|at| {
            let h = read_header(&segment, *at);
            h.op.get() == last_op && h.generation.get() == generation
        })
        .expect("the last op's write");
    let bytes = std::fs::read(&segment).unwrap();
    let flags = u32::from_le_bytes(bytes[64..68].try_into().unwrap());
    assert_ne!(flags & ringstore_journal::format::SEGMENT_FLAG_RECYCLED, 0);
    let stale = &bytes[RECYCLED_STALE_AT as usize..][..4096];
    assert!(stale.iter().any(|b| *b != 0), "no older bytes to copy");
    RecycledTail {
        segment,
        last_at,
        last_op,
    }
}

/// Copies `len` of the recycled segment's older bytes over `offset`.
fn stale_over(tail: &RecycledTail, offset: u64, len: usize) {
    let bytes = std::fs::read(&tail.segment).unwrap();
    let at = RECYCLED_STALE_AT as usize;
    patch(&tail.segment, offset, &bytes[at..at + len]);
}

/// A recycled last segment holds an older segment's bytes past its last
/// write, not zeros: the scan and the opens read them as the end of the
/// log (Strict too), and damage to the last write as a torn tail with the
/// same cut, as in a segment of zeros.
#[test]
fn a_recycled_segment_gets_the_same_verdict_from_both() {
    let root = temp_dir();
    let crashed = root.path().join("crashed");
    let tail = write_recycled_journal(&crashed, false);
    let closed = root.path().join("closed");
    let closed_tail = write_recycled_journal(&closed, true);
    let last = tail.last_op;
    let closed_last = closed_tail.last_op;
    type Damaging = fn(&RecycledTail);
    let cases: [(&str, bool, Damaging, Expect); 6] = [
        (
            "recycled, after a crash: nothing damaged",
            false,
            |_| {},
            Expect::Opens,
        ),
        (
            "recycled, after a crash: payload bit flip in the last write",
            false,
            |t| flip_bit(&t.segment, t.last_at + 56 + 7, 3),
            Expect::Cuts(Some((last, last))),
        ),
        (
            "recycled, after a crash: header bit flip in the last write",
            false,
            |t| flip_bit(&t.segment, t.last_at + 9, 0),
            Expect::Cuts(None),
        ),
        (
            "recycled, after a crash: a sector of the last write holds older bytes",
            false,
            |t| stale_over(t, t.last_at + 1024, 512),
            Expect::Cuts(Some((last, last))),
        ),
        (
            "recycled, after a crash: the whole last write holds older bytes (looks never written)",
            false,
            |t| stale_over(t, t.last_at, 4096),
            Expect::Opens,
        ),
        (
            "recycled, after a clean close: payload bit flip in the last write",
            true,
            |t| flip_bit(&t.segment, t.last_at + 56 + 7, 3),
            Expect::FoundOnRead(Some(closed_last)),
        ),
    ];
    for (i, (name, after_close, damage, expect)) in cases.into_iter().enumerate() {
        let (template, template_tail) = if after_close {
            (&closed, &closed_tail)
        } else {
            (&crashed, &tail)
        };
        let dir = root.path().join(format!("recycled-{i}"));
        copy_dir(template, &dir);
        let case_tail = RecycledTail {
            segment: dir.join(template_tail.segment.file_name().unwrap()),
            ..template_tail.clone()
        };
        damage(&case_tail);
        let scanned = scan_journal(&dir, &mut ()).unwrap();
        check(name, &scanned, &dir, expect);
    }
}

/// Op whose entries are compacted in [`damage_below_the_watermark`]: the
/// middle segment's third op, so that segment stays (its last op is above).
const WATERMARK: u64 = OPS + 3;

/// Damage to entries at or below the watermark (their state is in a
/// snapshot, and they are never read again) in a segment that still holds
/// live entries: both refuse, naming the file and offset. Damage there is
/// still damage of the medium, and reporting it is what an operator needs;
/// the scan and the opens must agree either way.
#[test]
fn damage_below_the_watermark_gets_the_same_verdict_from_both() {
    let root = temp_dir();
    type Damaging = fn(&Path);
    // Below the watermark no read reaches the op: only the scan reports a
    // payload there.
    let damages: [(&str, Damaging, Expect); 3] = [
        (
            "payload bit flip below the watermark",
            |d| flip_bit(&segment_of(d, OPS + 1), offset_of(OPS + 1) + 56 + 7, 3),
            Expect::FoundOnRead(None),
        ),
        (
            "header bit flip below the watermark",
            |d| flip_bit(&segment_of(d, OPS + 1), offset_of(OPS + 1) + 20, 5),
            Expect::Refuses,
        ),
        (
            "payload bit flip at the watermark",
            |d| flip_bit(&segment_of(d, WATERMARK), offset_of(WATERMARK) + 56 + 7, 3),
            Expect::FoundOnRead(None),
        ),
    ];
    for (i, (name, damage, expect)) in damages.into_iter().enumerate() {
        let dir = root.path().join(format!("watermark-{i}"));
        write_journal(&dir, true);
        let p = dir.clone();
        run(move || async move {
            let journal = builder(&p).open().await.unwrap();
            journal.advance_watermark(WATERMARK).await.unwrap();
            journal.close().await.unwrap();
        });
        damage(&dir);
        let scanned = scan_journal(&dir, &mut ()).unwrap();
        check(name, &scanned, &dir, expect);
    }
}

#[test]
fn a_damaged_hard_state_in_a_vouched_write_is_refused_by_both() {
    // A reopen takes vouched writes from their indexes, but reads a hard
    // state's payload (it is the replica's vote): damage there refuses the
    // open as it fails `wal verify`, at the same place.
    for close in [true, false] {
        let root = temp_dir();
        let dir = root.path().join("journal");
        let p = dir.clone();
        run(move || async move {
            let journal = builder(&p).open().await.unwrap();
            journal.append(&payload(1, PAYLOAD)).await.unwrap();
            journal
                .set_hard_state(b"term 7, voted for 3")
                .await
                .unwrap();
            for op in 2..=4 {
                journal.append(&payload(op, PAYLOAD)).await.unwrap();
            }
            if close {
                journal.close().await.unwrap();
            } else {
                glommio::yield_if_needed().await;
                drop(journal);
            }
        });
        let segment = segment_path(&dir, 1);
        let header = read_header(&segment, 8192);
        assert_eq!(
            header.entry_kind(),
            Some(ringstore_journal::format::EntryKind::HardState)
        );
        flip_bit(&segment, 8192 + 56 + 3, 1);
        let scanned = scan_journal(&dir, &mut ()).unwrap();
        assert!(scanned.damage_found_on_read.is_empty());
        check(
            &format!("a damaged hard state (clean close: {close})"),
            &scanned,
            &dir,
            Expect::Refuses,
        );
    }
}

#[test]
fn a_segment_of_another_journal_is_refused_by_both() {
    let root = temp_dir();
    let dir = root.path().join("journal");
    let other = root.path().join("other");
    write_journal(&dir, true);
    write_journal(&other, true);
    std::fs::copy(segment_path(&other, 2), segment_path(&dir, 2)).unwrap();
    let scanned = scan_journal(&dir, &mut ()).unwrap();
    assert!(
        scanned.damage[0].reason.contains("another journal"),
        "{:?}",
        scanned.damage
    );
    check(
        "a segment of another journal",
        &scanned,
        &dir,
        Expect::Refuses,
    );
}

#[test]
fn a_best_effort_scan_still_reports_damage_past_the_refusal() {
    // Two problems: segment 2 is missing (the plan refuses) and a payload
    // in segment 1 is flipped. Reopening reports the first; the scan both.
    let root = temp_dir();
    let dir = root.path().join("journal");
    write_journal(&dir, true);
    std::fs::remove_file(segment_path(&dir, 2)).unwrap();
    flip_bit(&segment_path(&dir, 1), offset_of(2) + 56 + 3, 2);
    let scanned = scan_journal(&dir, &mut ()).unwrap();
    assert!(!scanned.planned);
    let places: Vec<_> = scanned
        .damage
        .iter()
        .map(|d| (d.path.clone(), d.offset))
        .collect();
    assert_eq!(
        places,
        [
            (segment_path(&dir, 2), 0),
            (segment_path(&dir, 1), offset_of(2))
        ],
        "{:?}",
        scanned.damage
    );
    check("two problems", &scanned, &dir, Expect::Refuses);
}

#[test]
fn a_journal_of_another_owner_is_refused_by_both() {
    let owner = |domain: u8, shard: u32, shards: u32| JournalOwner {
        domain: [domain; 16],
        shard,
        shards,
    };
    let root = temp_dir();
    let dir = root.path().join("journal");
    write_journal_of(&dir, true, Some(owner(7, 1, 3)));
    // The shard's own place, or its domain alone (a shard opened on its
    // own): both open.
    for expected in [owner(7, 1, 3), owner(7, 0, 0)] {
        let scanned = scan_journal_as(&dir, Some(expected), &mut ()).unwrap();
        check_as("its owner", &scanned, &dir, Expect::Opens, Some(expected));
    }
    // Another domain, another shard's place: both refuse, with the same
    // words.
    for expected in [owner(8, 1, 3), owner(7, 2, 3)] {
        let scanned = scan_journal_as(&dir, Some(expected), &mut ()).unwrap();
        assert!(
            matches!(scanned.refusal, Some(Refusal::WrongOwner { .. })),
            "{:?}",
            scanned.refusal
        );
        check_as(
            "another owner",
            &scanned,
            &dir,
            Expect::Refuses,
            Some(expected),
        );
    }
}

#[test]
fn a_second_damaged_payload_in_one_segment_is_named_as_well() {
    let root = temp_dir();
    let dir = root.path().join("journal");
    write_journal(&dir, false);
    // Two ops of the middle segment, each its own write.
    let (first, second) = (OPS + 1, OPS + 3);
    assert_eq!(segment_of(&dir, first), segment_of(&dir, second));
    for op in [first, second] {
        flip_bit(&segment_of(&dir, op), offset_of(op) + 56 + 7, 3);
    }
    let scanned = scan_journal(&dir, &mut ()).unwrap();
    let context = scanned.describe_verdict();
    assert_eq!(scanned.verdict, Verdict::Opens, "{context}");
    let named: Vec<u64> = scanned
        .damage_found_on_read
        .iter()
        .map(|d| d.offset)
        .collect();
    assert_eq!(named, [offset_of(first), offset_of(second)], "{context}");
    assert_eq!(scanned.damage_found_on_read, scanned.damage, "{context}");
    assert_eq!(scanned.missing_op_count, 0, "{context}");
    // A read of each names the same place.
    for op in [first, second] {
        match read_op(&dir, op) {
            Err(Error::Corruption { path, offset, .. }) => {
                assert_eq!((path, offset), (segment_of(&dir, op), offset_of(op)))
            }
            other => panic!("reading op {op} gave {other:?}"),
        }
    }
}
