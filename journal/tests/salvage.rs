//! Pins `salvage::salvage`: for journals that refuse to open (a flipped
//! payload in a middle segment, a deleted or zero-length segment, a damaged
//! first segment header, a deleted or doubly damaged superblock, a stray
//! segment holding data) it cuts at the first damage, keeps every op before
//! it, moves (never deletes) everything else into the quarantine folder,
//! reports the ops lost, and leaves a journal that the scan and a reopen
//! both accept and that takes new appends; without confirmation, on a
//! healthy journal and on one whose reopen would cut a tail it refuses and
//! changes nothing; interrupted after any number of its changes (as a crash
//! would), the journal is either as before (still refused, every byte
//! still on disk) or salvaged, and running salvage again finishes it.
//! Without a superblock, retired segments kept for recycling below a gap
//! are not taken for the start of the log.
mod common;
use common::*;
use ringstore_journal::inspect::{scan_journal, Verdict};
use ringstore_journal::salvage::{
    salvage, salvage_as, salvage_interrupted, SalvageError, SalvageReport, SalvageState,
    REPORT_JSON_NAME, REPORT_TEXT_NAME,
};
use ringstore_journal::{Journal, JournalBuilder};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const OPS: u64 = 4;
const PAYLOAD: usize = 200;
const LAST_OP: u64 = 3 * OPS;

fn builder(path: &Path) -> JournalBuilder {
    Journal::builder(path)
        .segment_bytes(1 << 20)
        .batch_bytes_max(64 << 10)
        .entry_bytes_max(16 << 10)
        .slot_count(64)
}

/// Three sessions of [`OPS`] ops (segments 1, 2, 3), each closed cleanly,
/// or the last ending in a crash unless `close`. Op `k` of a session is at
/// byte 4096 * k of its segment.
fn write_journal(dir: &Path, close: bool) {
    write_sessions(dir, close, false);
}

/// [`write_journal`], with a hard state `hs-<session>` recorded after each
/// session's ops if `hard_states`.
fn write_sessions(dir: &Path, close: bool, hard_states: bool) {
    let p = dir.to_path_buf();
    run(move || async move {
        for session in 0..3 {
            let journal = builder(&p).open().await.unwrap();
            for op in session * OPS + 1..=(session + 1) * OPS {
                assert_eq!(journal.append(&payload(op, PAYLOAD)).await.unwrap(), op);
            }
            if hard_states {
                journal
                    .set_hard_state(format!("hs-{session}").as_bytes())
                    .await
                    .unwrap();
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

fn offset_of(op: u64) -> u64 {
    4096 * ((op - 1) % OPS + 1)
}

/// Opens the journal: the ops present among 1..=LAST_OP (each checked
/// against its payload), then appends one op and returns its number too.
fn open_and_append(dir: &Path) -> Result<(Vec<u64>, u64), ringstore_journal::Error> {
    let p = dir.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    run(move || async move {
        let result = match builder(&p).open().await {
            Ok(journal) => {
                let mut present = Vec::new();
                for op in 1..=LAST_OP {
                    if let Some(entry) = journal.read(op).await.unwrap() {
                        assert_eq!(entry.payload, payload(op, PAYLOAD), "op {op}");
                        present.push(op);
                    }
                }
                let next = journal.append(b"after salvage").await.unwrap();
                journal.close().await.unwrap();
                Ok((present, next))
            }
            Err(e) => Err(e),
        };
        tx.send(result).unwrap();
    });
    rx.recv().unwrap()
}

/// Whether reading some op fails as corruption, in a copy of `dir` opened
/// (an open changes the directory).
fn reads_fail(dir: &Path) -> bool {
    let copy = temp_dir();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
    }
    let p = copy.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    run(move || async move {
        let journal = builder(&p).open().await.unwrap();
        let mut failed = false;
        for op in 1..=LAST_OP {
            match journal.read(op).await {
                Err(ringstore_journal::Error::Corruption { .. }) => failed = true,
                other => {
                    other.unwrap();
                }
            }
        }
        journal.close().await.unwrap();
        tx.send(failed).unwrap();
    });
    rx.recv().unwrap()
}

/// Every file under `dir` with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// Every file's bytes, by name, wherever it is under `root` (the journal
/// directory or a quarantine folder): nothing may be lost.
fn contents_by_name(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<_> = tree(root)
        .into_iter()
        .filter(|(p, _)| {
            let name = p.file_name().unwrap().to_string_lossy();
            !name.starts_with("salvage-report")
        })
        .map(|(p, bytes)| (p.file_name().unwrap().to_string_lossy().into_owned(), bytes))
        .collect();
    all.sort();
    all
}

struct Case {
    name: &'static str,
    closed: bool,
    damage: fn(&Path),
    /// Ops present after salvage: 1 up to this one (0: none).
    kept_through: u64,
    /// Ops the report lists as lost.
    lost_ops: Vec<(u64, u64)>,
    /// Files moved into the quarantine folder, by name.
    moved: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "a flipped payload in a middle segment",
            closed: true,
            damage: |d| flip_bit(&segment_path(d, 2), offset_of(6) + 56 + 9, 4),
            kept_through: 5,
            lost_ops: vec![(6, 12)],
            moved: &["segment-0000000000000003.wal"],
        },
        Case {
            name: "a deleted middle segment",
            closed: true,
            damage: |d| std::fs::remove_file(segment_path(d, 2)).unwrap(),
            kept_through: 4,
            lost_ops: vec![(9, 12)],
            moved: &["segment-0000000000000003.wal"],
        },
        Case {
            name: "a zero-length middle segment",
            closed: false,
            damage: |d| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(segment_path(d, 2))
                    .unwrap()
                    .set_len(0)
                    .unwrap()
            },
            kept_through: 4,
            lost_ops: vec![(9, 12)],
            moved: &[
                "segment-0000000000000002.wal",
                "segment-0000000000000003.wal",
            ],
        },
        Case {
            name: "a damaged header of the first segment",
            closed: true,
            damage: |d| flip_bit(&segment_path(d, 1), 30, 2),
            kept_through: 0,
            // Ops 1..=4 too: the segment's entries still verify under the
            // journal's id (counted as 5..=12 only, they were under-reported).
            lost_ops: vec![(1, 12)],
            moved: &[
                "segment-0000000000000001.wal",
                "segment-0000000000000002.wal",
                "segment-0000000000000003.wal",
            ],
        },
        Case {
            name: "both superblock copies flipped",
            closed: true,
            damage: |d| {
                flip_bit(&d.join("superblock"), 40, 1);
                flip_bit(&d.join("superblock"), 4096 + 40, 1);
            },
            kept_through: LAST_OP,
            lost_ops: vec![],
            moved: &["superblock"],
        },
        Case {
            name: "a deleted superblock, after a crash",
            closed: false,
            damage: |d| std::fs::remove_file(d.join("superblock")).unwrap(),
            kept_through: LAST_OP,
            lost_ops: vec![],
            moved: &[],
        },
        Case {
            name: "a stray segment holding data, not recorded",
            closed: true,
            damage: |d| {
                std::fs::copy(segment_path(d, 3), segment_path(d, 7)).unwrap();
            },
            kept_through: LAST_OP,
            lost_ops: vec![],
            moved: &["segment-0000000000000007.wal"],
        },
    ]
}

/// Salvages one damaged journal and checks everything the module docs
/// promise of the result.
fn salvage_case(root: &Path, case: &Case) -> SalvageReport {
    let dir = root.join("journal");
    let quarantine = root.join("quarantine");
    write_journal(&dir, case.closed);
    // A spare segment the last session left: reopen would remove it.
    for generation in 4..=5 {
        let _ = std::fs::remove_file(segment_path(&dir, generation));
    }
    (case.damage)(&dir);
    let before = scan_journal(&dir, &mut ()).unwrap();
    assert!(!before.is_intact(), "{}", case.name);
    if before.damage_found_on_read.is_empty() {
        assert_eq!(before.verdict, Verdict::Refuses, "{}", case.name);
        assert!(
            open_and_append(&dir).is_err(),
            "{}: opens before",
            case.name
        );
    } else {
        // A payload the reopen does not read: it opens, the read fails.
        assert_eq!(before.verdict, Verdict::Opens, "{}", case.name);
        assert!(
            reads_fail(&dir),
            "{}: every read succeeds before",
            case.name
        );
    }
    let files_before = contents_by_name(&dir);

    // Not confirmed: the plan, nothing changed.
    let tree_before = tree(root);
    match salvage(&dir, &quarantine, false) {
        Err(SalvageError::NotConfirmed(plan)) => {
            assert_eq!(plan.state, SalvageState::Planned);
            assert!(!plan.quarantine.exists());
        }
        other => panic!("{}: expected NotConfirmed, got {other:?}", case.name),
    }
    assert!(
        tree(root) == tree_before,
        "{}: unconfirmed changed files",
        case.name
    );

    let report = salvage(&dir, &quarantine, true)
        .unwrap_or_else(|e| panic!("{}: salvage failed: {e}", case.name));
    assert_eq!(report.state, SalvageState::Completed);
    match &before.superblock {
        Some(sb) => assert_eq!(report.superblock.sequence, sb.sequence + 1),
        None => assert!(report.superblock.fresh && report.superblock.sequence == 1),
    }
    assert!(report.quarantine.starts_with(&quarantine));
    let mut moved: Vec<String> = report
        .moved
        .iter()
        .map(|f| f.from.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    moved.sort();
    assert_eq!(moved, case.moved, "{}: {}", case.name, report.text());
    for f in &report.moved {
        // A damaged superblock is moved, and a new one written in its place.
        let replaced = f.from.ends_with("superblock");
        assert!(
            f.to.exists() && (replaced || !f.from.exists()),
            "{}: {f:?}",
            case.name
        );
    }
    assert_eq!(
        report.lost.ranges,
        case.lost_ops,
        "{}: {}",
        case.name,
        report.text()
    );
    // Only a segment emptied whole leaves ops that no header counts: the
    // report names it rather than call its ops none.
    let uncounted: Vec<String> = report
        .uncounted
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let expected: &[&str] = if case.name == "a zero-length middle segment" {
        &["segment-0000000000000002.wal"]
    } else {
        &[]
    };
    assert_eq!(uncounted, expected, "{}: {}", case.name, report.text());
    if !expected.is_empty() {
        assert!(
            report.summary().contains("not counted"),
            "{}",
            report.summary()
        );
    }
    let text = std::fs::read_to_string(report.quarantine.join(REPORT_TEXT_NAME)).unwrap();
    assert!(text.contains("state:      completed"), "{text}");
    let json = std::fs::read_to_string(report.quarantine.join(REPORT_JSON_NAME)).unwrap();
    assert!(json.contains("\"state\": \"completed\""), "{json}");
    assert_eq!(text, report.text());
    // Nothing lost: every file that was there still is, in the journal or
    // in the folder, byte for byte (the superblock copy is the old one).
    let mut after = contents_by_name(root);
    for (name, bytes) in &files_before {
        let found = after.iter().position(|(n, b)| n == name && b == bytes);
        assert!(found.is_some(), "{}: {name} lost", case.name);
        after.remove(found.unwrap());
    }

    // The scan and a reopen accept it; the kept ops are all there.
    let scanned = scan_journal(&dir, &mut ()).unwrap();
    assert_eq!(
        scanned.verdict,
        Verdict::Opens,
        "{}: {}",
        case.name,
        scanned.describe_verdict()
    );
    assert!(scanned.is_intact(), "{}: {:?}", case.name, scanned.damage);
    let (present, next) = open_and_append(&dir).unwrap();
    assert_eq!(
        present,
        (1..=case.kept_through).collect::<Vec<_>>(),
        "{}",
        case.name
    );
    assert_eq!(next, case.kept_through + 1, "{}", case.name);
    // And salvage has nothing more to do.
    assert!(
        matches!(
            salvage(&dir, &quarantine, true),
            Err(SalvageError::Healthy { .. })
        ),
        "{}",
        case.name
    );
    report
}

#[test]
fn salvage_cuts_at_the_first_damage_quarantines_the_rest_and_the_journal_opens() {
    for case in cases() {
        let root = temp_dir();
        let report = salvage_case(root.path(), &case);
        if case.name.contains("payload") {
            let cut = report.cut.as_ref().unwrap();
            assert_eq!((cut.generation, cut.offset), (2, offset_of(6)));
            assert!(cut.reason.contains("payload checksum"), "{}", cut.reason);
            // The cut segment is copied (its bytes past the cut are no
            // longer the log's), the old superblock too.
            assert_eq!(report.copied.len(), 2, "{:?}", report.copied);
            assert!(!report.superblock.fresh);
        }
        if case.name.contains("superblock") {
            assert!(report.superblock.fresh);
            assert_eq!(report.superblock.sequence, 1);
        }
    }
}

#[test]
fn salvage_refuses_a_journal_that_opens_or_that_a_reopen_only_cuts() {
    let root = temp_dir();
    let dir = root.path().join("journal");
    let quarantine = root.path().join("quarantine");
    write_journal(&dir, true);
    let before = tree(root.path());
    let err = salvage(&dir, &quarantine, true).unwrap_err();
    assert!(matches!(err, SalvageError::Healthy { .. }), "{err}");
    assert!(tree(root.path()) == before);

    let root = temp_dir();
    let dir = root.path().join("journal");
    write_journal(&dir, false);
    flip_bit(&segment_path(&dir, 3), offset_of(LAST_OP) + 56 + 9, 4);
    let before = tree(root.path());
    let err = salvage(&dir, &quarantine, true).unwrap_err();
    assert!(matches!(err, SalvageError::WouldCut { .. }), "{err}");
    assert!(err.to_string().contains("ops 12..=12"), "{err}");
    assert!(tree(root.path()) == before);
}

#[test]
fn an_interrupted_salvage_leaves_the_old_journal_or_the_salvaged_one() {
    for case in cases()
        .into_iter()
        .filter(|c| c.name.contains("payload") || c.name.contains("both superblock"))
    {
        let mut changes = 0;
        loop {
            let root = temp_dir();
            let dir = root.path().join("journal");
            let quarantine = root.path().join("quarantine");
            write_journal(&dir, case.closed);
            for generation in 4..=5 {
                let _ = std::fs::remove_file(segment_path(&dir, generation));
            }
            (case.damage)(&dir);
            let files_before = contents_by_name(&dir);
            let result = salvage_interrupted(&dir, &quarantine, changes);
            let finished = result.is_ok();
            if let Err(e) = &result {
                assert!(
                    matches!(e, SalvageError::Interrupted { .. }),
                    "{}: {e}",
                    case.name
                );
            }
            // Nothing is ever lost: every file is in the journal or in
            // the folder.
            let after = contents_by_name(root.path());
            for file in &files_before {
                assert!(
                    after.contains(file),
                    "{} after {changes} change(s): {} lost",
                    case.name,
                    file.0
                );
            }
            let scanned = scan_journal(&dir, &mut ()).unwrap();
            match scanned.verdict {
                Verdict::Cuts => panic!("{}: a cut after {changes} change(s)", case.name),
                // The old state: still refused, or still failing reads. A
                // rerun finishes.
                _ if !scanned.is_intact() => {
                    assert!(!finished);
                    salvage(&dir, &quarantine, true).unwrap_or_else(|e| {
                        panic!("{} after {changes} change(s): rerun: {e}", case.name)
                    });
                }
                // Salvaged (the commit happened).
                Verdict::Opens => {}
                Verdict::Refuses => unreachable!("a refused journal is not intact"),
            }
            let (present, _) = open_and_append(&dir).unwrap();
            assert_eq!(
                present,
                (1..=case.kept_through).collect::<Vec<_>>(),
                "{} after {changes} change(s)",
                case.name
            );
            if finished {
                break;
            }
            changes += 1;
        }
        assert!(changes >= 4, "{}: only {changes} steps", case.name);
    }
}

/// Without a superblock, retired segments a running journal kept for
/// recycling (below a gap: a checkpoint retired more than it keeps) are not
/// where the log begins: salvage starts at the run of generations that
/// ends at the newest, keeps every op of it, and the journal opens.
#[test]
fn without_a_superblock_kept_retired_segments_below_a_gap_are_not_the_log() {
    let root = temp_dir();
    let dir = root.path().join("journal");
    let p = dir.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    run(move || async move {
        let journal = builder(&p).slot_count(1024).open().await.unwrap();
        // Files below the superblock's first generation: the kept ones.
        let kept = |p: &Path| {
            let first = scan_journal(p, &mut ())
                .unwrap()
                .superblock
                .unwrap()
                .first_generation;
            std::fs::read_dir(p)
                .unwrap()
                .filter_map(|e| ringstore_journal::segment_generation(&e.unwrap().file_name()))
                .filter(|g| *g < first)
                .count()
        };
        let mut op = 0;
        while journal.stats().segments_recycled < 2 {
            op = journal.append(&payload(op + 1, 8000)).await.unwrap();
            if op % 16 == 0 {
                journal.advance_watermark(op - 8).await.unwrap();
            }
            assert!(op < 5000, "nothing recycled: {:?}", journal.stats());
        }
        // A checkpoint that retires several segments at once: two kept.
        for _ in 0..400 {
            op = journal.append(&payload(op + 1, 8000)).await.unwrap();
        }
        journal.advance_watermark(op - 8).await.unwrap();
        assert_eq!(kept(&p), 2, "{:?}", journal.stats());
        let watermark = journal.watermark();
        // A crash: the kept files stay.
        glommio::yield_if_needed().await;
        drop(journal);
        tx.send((watermark, op)).unwrap();
    });
    let (watermark, last) = rx.recv().unwrap();
    let scanned = scan_journal(&dir, &mut ()).unwrap();
    let first = scanned.superblock.as_ref().unwrap().first_generation;
    let mut kept: Vec<u64> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| ringstore_journal::segment_generation(&e.unwrap().file_name()))
        .filter(|g| *g < first)
        .collect();
    kept.sort();
    assert_eq!(kept.len(), 2, "{kept:?}");
    // The newer of the two removed as if retired and not kept (a gap
    // below the log), then the superblock lost.
    std::fs::remove_file(segment_path(&dir, kept[1])).unwrap();
    std::fs::remove_file(dir.join("superblock")).unwrap();
    let before = scan_journal(&dir, &mut ()).unwrap();
    assert_eq!(before.verdict, Verdict::Refuses);
    let report = salvage(&dir, &root.path().join("quarantine"), true)
        .unwrap_or_else(|e| panic!("salvage failed: {e}"));
    assert_eq!(report.state, SalvageState::Completed);
    // The log's segments are all kept (only the kept retired files below
    // it, and a spare, are moved).
    let kept_generations: Vec<u64> = report.kept.iter().map(|k| k.generation).collect();
    assert_eq!(kept_generations.first(), Some(&first), "{}", report.text());
    let p = dir.clone();
    run(move || async move {
        let journal = builder(&p).slot_count(1024).open().await.unwrap();
        assert!(journal.watermark() >= watermark);
        for op in journal.watermark() + 1..=last {
            let entry = journal.read(op).await.unwrap();
            assert_eq!(entry.map(|e| e.payload), Some(payload(op, 8000)), "op {op}");
        }
        journal.close().await.unwrap();
    });
}

/// The hook a replica gives its open for a cut tail, as a test sees it:
/// what it was given, and the last op.
fn mark(hard_state: &[u8], last_op: u64) -> Vec<u8> {
    let mut marked = format!("marked:{last_op}:").into_bytes();
    marked.extend_from_slice(hard_state);
    marked
}

/// [`write_journal`], closed, with a hard state recorded after each
/// session's ops (`hs-0` in segment 1, `hs-1` in 2, `hs-2` in 3; each
/// close also writes the newest into the superblock).
fn write_journal_with_hard_states(dir: &Path) {
    write_sessions(dir, true, true);
}

/// The hard state an open of the journal in `dir` reads.
fn hard_state_at_open(dir: &Path) -> Vec<u8> {
    let p = dir.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    run(move || async move {
        let journal = builder(&p).open().await.unwrap();
        tx.send(journal.hard_state()).unwrap();
        journal.close().await.unwrap();
    });
    rx.recv().unwrap()
}

/// A replica must treat a salvaged log as a cut tail: given the hook its
/// open runs for one, a salvage that cuts damage out of the log runs it on
/// the newest hard state it keeps and the last op it keeps, and writes the
/// result into the new superblock, above every record kept, so the reopen
/// reads it. A salvage whose damage is outside the log (a stray segment)
/// cuts nothing from it and leaves the hard state as it was.
#[test]
fn a_salvage_that_cuts_the_log_marks_the_hard_state_with_the_owners_hook() {
    // Damage in segment 2 at op 6: ops 6 to 12 and the records `hs-1`
    // (segment 2, after op 8) and `hs-2` (segment 3) are cut; the
    // superblock's copy of `hs-2`, the newest, stays. The scan reads on
    // past the damage (op 8 verifies), but the hook is given op 5.
    let root = temp_dir();
    let dir = root.path().join("journal");
    write_journal_with_hard_states(&dir);
    assert_eq!(hard_state_at_open(&dir), b"hs-2");
    flip_bit(&segment_path(&dir, 2), offset_of(6) + 56 + 9, 4);
    let report = salvage_as(&dir, None, Some(mark), &root.path().join("q"), true)
        .unwrap_or_else(|e| panic!("salvage failed: {e}"));
    assert!(report.superblock.hard_state_marked, "{}", report.text());
    assert!(
        report.text().contains("hard state: marked"),
        "{}",
        report.text()
    );
    assert!(
        report.json().contains("\"hard_state_marked\": true"),
        "{}",
        report.json()
    );
    assert_eq!(hard_state_at_open(&dir), mark(b"hs-2", 5));
    // Without the hook the kept hard state is left as it was.
    let root = temp_dir();
    let dir = root.path().join("journal");
    write_journal_with_hard_states(&dir);
    flip_bit(&segment_path(&dir, 2), offset_of(6) + 56 + 9, 4);
    let report = salvage_as(&dir, None, None, &root.path().join("q"), true).unwrap();
    assert!(!report.superblock.hard_state_marked);
    assert_eq!(hard_state_at_open(&dir), b"hs-2");
    // Damage outside the log: nothing cut from it, nothing marked.
    let root = temp_dir();
    let dir = root.path().join("journal");
    write_journal_with_hard_states(&dir);
    std::fs::copy(segment_path(&dir, 3), segment_path(&dir, 7)).unwrap();
    let report = salvage_as(&dir, None, Some(mark), &root.path().join("q"), true)
        .unwrap_or_else(|e| panic!("salvage failed: {e}"));
    assert!(!report.superblock.hard_state_marked, "{}", report.text());
    assert_eq!(hard_state_at_open(&dir), b"hs-2");
}

/// Of the cut segment, salvage keeps only what is before the cut: the
/// newest hard state it takes may be a record there (newer than the
/// superblock's copy), never one after the cut, and the last op it hands
/// the hook is the last before the cut.
#[test]
fn a_salvage_marks_the_newest_hard_state_before_the_cut() {
    let root = temp_dir();
    let dir = root.path().join("journal");
    let p = dir.clone();
    run(move || async move {
        for session in 0..3 {
            let journal = builder(&p).open().await.unwrap();
            if session == 2 {
                journal.set_hard_state(b"before").await.unwrap();
            }
            for op in session * OPS + 1..=(session + 1) * OPS {
                assert_eq!(journal.append(&payload(op, PAYLOAD)).await.unwrap(), op);
            }
            if session < 2 {
                journal.set_hard_state(b"closed").await.unwrap();
                journal.close().await.unwrap();
            } else {
                // After the ops, then a crash: the superblock keeps
                // "closed".
                journal.set_hard_state(b"after").await.unwrap();
                glommio::yield_if_needed().await;
                drop(journal);
            }
        }
    });
    // Op 11's payload (segment 3, one block later for the record
    // "before"), with op 12 and the record "after" behind it: salvage
    // cuts at op 11.
    flip_bit(&segment_path(&dir, 3), offset_of(11) + 4096 + 56 + 9, 4);
    assert!(!scan_journal(&dir, &mut ()).unwrap().is_intact());
    // A quarantine root several levels deep: each level made (and its
    // parent synced).
    let report = salvage_as(&dir, None, Some(mark), &root.path().join("q/a/b"), true)
        .unwrap_or_else(|e| panic!("salvage failed: {e}"));
    assert!(report.superblock.hard_state_marked, "{}", report.text());
    assert_eq!(hard_state_at_open(&dir), mark(b"before", 10));
    assert!(report.quarantine.starts_with(root.path().join("q/a/b")));
    assert!(report.quarantine.join(REPORT_TEXT_NAME).is_file());
}

/// A truncation record in the log the salvage keeps lowers the last op it
/// hands the hook where it stands, as it does for recovery: ops a replica
/// discarded after a leader change are not counted as kept.
#[test]
fn a_salvage_hands_the_hook_the_last_op_after_truncations() {
    let root = temp_dir();
    let dir = root.path().join("journal");
    let p = dir.clone();
    run(move || async move {
        // Segment 1: ops 1..=6, then all above 3 discarded.
        let journal = builder(&p).open().await.unwrap();
        for op in 1..=6 {
            assert_eq!(journal.append(&payload(op, PAYLOAD)).await.unwrap(), op);
        }
        journal.truncate_after(3).await.unwrap();
        journal.set_hard_state(b"kept").await.unwrap();
        journal.close().await.unwrap();
        // Segment 2: ops 4..=7 again; segment 3: 8..=11.
        for ops in [4..=7, 8..=11] {
            let journal = builder(&p).open().await.unwrap();
            for op in ops {
                assert_eq!(journal.append(&payload(op, PAYLOAD)).await.unwrap(), op);
            }
            journal.close().await.unwrap();
        }
    });
    // Op 6 of segment 2 (its third block): the salvage keeps ops 1..=3
    // of segment 1 and 4..=5 of segment 2.
    flip_bit(&segment_path(&dir, 2), 3 * 4096 + 56 + 9, 4);
    let report = salvage_as(&dir, None, Some(mark), &root.path().join("q"), true)
        .unwrap_or_else(|e| panic!("salvage failed: {e}"));
    assert!(report.superblock.hard_state_marked, "{}", report.text());
    assert_eq!(hard_state_at_open(&dir), mark(b"kept", 5));
}

/// A hook whose hard state is longer than a hard state may be fails the
/// salvage before anything changes.
#[test]
fn a_mark_longer_than_a_hard_state_fails_the_salvage_with_nothing_changed() {
    fn too_long(_: &[u8], _: u64) -> Vec<u8> {
        vec![b'x'; ringstore_journal::format::HARD_STATE_BYTES_MAX + 1]
    }
    let root = temp_dir();
    let dir = root.path().join("journal");
    write_journal_with_hard_states(&dir);
    flip_bit(&segment_path(&dir, 2), offset_of(6) + 56 + 9, 4);
    let before = tree(&dir);
    match salvage_as(&dir, None, Some(too_long), &root.path().join("q"), true) {
        Err(SalvageError::Unverifiable { reason, .. }) => {
            assert!(reason.contains("HARD_STATE_BYTES_MAX"), "{reason}")
        }
        other => panic!("expected Unverifiable, got {other:?}"),
    }
    assert_eq!(tree(&dir), before);
    assert!(!root.path().join("q").exists());
}
