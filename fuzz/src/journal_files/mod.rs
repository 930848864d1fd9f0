//! Target `journal_files`: arbitrary bytes as a journal directory (on-disk
//! format 3: a `superblock` file in two copies and a run of segment files).
//!
//! Up to [`FILES_MAX`] segment files and a superblock are put into an
//! in-memory disk ([`MemStorage`], no faults) and the journal is opened on
//! them. Recovery must never panic: it returns a typed error (on this
//! fault-free disk `Corruption` or `UnsupportedVersion`, or `WrongOwner` when
//! the input opens as another owner; nothing else), or it opens and then
//! every op above the watermark reads back present (its payload checksum
//! verified by the journal) or missing.
//!
//! Coverage-guided fuzzing does not get past a checksum by itself, so an
//! input either brings raw files ([`Source::Raw`], optionally with their
//! header checksums recomputed) or picks one of [`TEMPLATE_COUNT`] journals
//! written through the real append path ([`Source::Template`]: appends, group
//! commit, watermark advances that retire segments, epochs and replica
//! writes, an owner, `NoSync`; five closed cleanly, three cut by a crash that
//! tore the writes in flight) and damages it with [`Mutation`]s that model
//! the fault model's media faults: flipped bits, zeroed or torn sectors,
//! truncated, lost or renamed files, misdirected sector copies, arbitrary
//! pokes; in the superblock: flipped bits, a zeroed copy, truncation, loss,
//! a copy written at the other's place, a lost update (an older superblock
//! of the same journal) or another journal's superblock; segment files of
//! another journal; and header fields rewritten with their checksum
//! recomputed, so the damage reaches the rules behind the checksums.
//!
//! What is checked, beyond "no panic" and "typed errors" (each promise
//! below is a `Promise` of the input's files):
//! * an undamaged template opens and holds every acknowledged op above the
//!   watermark with exactly its bytes. One that ended in a clean close has
//!   its last segment's end recorded in the superblock (checked when the
//!   template is built), so its recovery reports a clean end and no
//!   unrecorded end, even under `Recovery::Strict`; one that ended in a crash
//!   has no such record and may report a cut (`TailState::Torn`): an
//!   acknowledged op missing after it must be named by the report — in the
//!   cut's op range, or above the highest op found
//!   (`RecoveryReport::unrecorded_end`) — and, since a crash cannot touch
//!   synced bytes, none may be missing at all;
//! * the same holds when a crash template is damaged only in the bytes the
//!   crash left unsynced (the last segment's bytes after the last
//!   acknowledged write and after everything a later write vouches for): a
//!   different tearing of the same crash; the cut then lies there too;
//! * damage that cannot forge a checksum to a cleanly closed template is
//!   refused or reported: after a clean close every byte of the log is
//!   vouched for, so recovery never cuts and never loses an acknowledged op
//!   (one whose payload is damaged fails to read, as corruption);
//! * any damage that cannot forge a checksum or a header field, to a
//!   template whose ops lie in file order: every acknowledged op lost is
//!   named by the report as above ("never silently");
//! * when the damage cannot forge an entry's checksum (no pokes, at most
//!   [`FLIPS_UNFORGEABLE_MAX`] flipped bits in segments: CRC-32 detects every
//!   error of up to three bits at these lengths), an entry served holds bytes
//!   submitted for that op to one of the templates whose files the input
//!   holds; when it cannot forge a header field either, to the very template
//!   whose journal id the superblock carries (segments of another journal
//!   are never served), and the watermark is one that was submitted;
//! * a journal recording an owner refuses to open as another owner;
//! * on this fault-free disk a read fails only as corruption (recovery
//!   reads a vouched-for write's first header and index, not its payloads:
//!   damage there is reported by the read, and again after a second
//!   recovery), an entry served carries the op asked for, ops at or below the
//!   watermark are refused as compacted, `Recovery::Strict` never cuts, a
//!   reported cut is well-formed (its op range and entry count agree; it is
//!   the unrecorded end) and the unrecorded end's highest op is at least
//!   every op served;
//! * recovery is repeatable: after a successful open (and optionally one
//!   append) and a clean close, a second open — `Recovery::Strict`, since a
//!   clean close leaves nothing undecidable — succeeds with a clean end,
//!   no unrecorded end, removes nothing, keeps the journal id and the
//!   watermark, and serves the same entries.
//!
//! Set `RINGSTORE_FUZZ_TRACE` to print what recovery made of each input.

mod files;
mod input;
mod templates;

use files::{apply, crash_like, raw_dir};
use ringstore_journal::format::SEGMENT_DATA_OFFSET;
use ringstore_journal::storage::MemStorage;
use ringstore_journal::superblock::SUPERBLOCK_FILE_NAME;
use ringstore_journal::{
    segment_generation, Error, Journal, JournalBuilder, LogItem, Recovery, RecoveryReport,
    TailState,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;
use templates::builder;

pub use files::{journal_superblock, scan_segment, Dir, SECTOR_BYTES};
pub use input::{
    Input, Mutation, RawFile, Source, FIELD_BYTES_MAX, FILES_MAX, FILE_BYTES_MAX, GENERATIONS,
    MUTATIONS_MAX, POKE_BYTES_MAX, RAW_EXTEND, RAW_FILES_MAX, RAW_RESEAL,
};
pub use templates::{
    template_journal_id, templates, Model, Template, OTHER_OWNER, SUPERBLOCK_VERSIONS_MAX,
    TEMPLATE_COUNT, TEMPLATE_OWNER,
};

/// The journal directory on the in-memory disk.
pub const DIR: &str = "/fuzz/wal";
/// Journal shape: the same as the crash simulator's, so segments are small.
pub const SEGMENT_BYTES: u64 = 64 << 10;
/// Largest group-commit write.
pub const BATCH_BYTES_MAX: u64 = 16 << 10;
/// Largest payload.
pub const ENTRY_BYTES_MAX: u64 = 2 << 10;
/// Ring slots.
pub const SLOT_COUNT: u64 = 64;

/// Most flipped bits in segment files for which an input still counts as
/// unable to forge a CRC-32 (its Hamming distance is 4 for messages this
/// short: an entry header, a payload of at most [`ENTRY_BYTES_MAX`], a
/// superblock copy).
pub const FLIPS_UNFORGEABLE_MAX: usize = 3;
/// Most ops read back per open.
pub const READS_MAX: u64 = 1024;

/// What an input's files promise about the template's acknowledged ops,
/// weakest first; each promise includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Promise {
    /// Nothing (raw files, forgeable damage, a journal whose ops are not in
    /// file order).
    Nothing,
    /// Any damage that cannot forge a checksum or a header field and
    /// leaves no older superblock of the journal in force, to a template
    /// whose ops lie in file order (appends only): if it opens as this
    /// journal, every acknowledged op it lost is named by its report —
    /// in the cut's op range, or above the highest op found when the end
    /// was not recorded (`RecoveryReport::unrecorded_end`: a write wiped to
    /// zeros looks like one never written). "A single bit flip costs at
    /// most the entries of those D writes, and never silently."
    Reported,
    /// Undamaged, or torn only where the crash left bytes unsynced, with
    /// durable acknowledgements: opens (unless `Strict` after a crash, or as
    /// another owner) and keeps every acknowledged op.
    Keep,
    /// A cleanly closed journal with damage that cannot forge a checksum:
    /// refused, or nothing cut and every acknowledged op kept or its read
    /// failing as corruption (a payload a reopen does not read).
    RefuseOrKeep,
}

// `Keep` and `RefuseOrKeep` exclude each other; both include `Reported`.
const _: () = assert!((Promise::Keep as u8) > (Promise::Reported as u8));
const _: () = assert!((Promise::RefuseOrKeep as u8) > (Promise::Reported as u8));

/// What the checks may assume about an input's files.
struct Expect<'a> {
    name: String,
    /// The template the files come from.
    template: Option<&'a Template>,
    /// The templates whose files the input holds (its own first).
    sources: Vec<&'a Template>,
    /// Every template, to find one by journal id.
    templates: &'a [Template],
    /// No damage can forge an entry's checksums: a served entry was
    /// submitted for its op to one of `sources`.
    entries_unforged: bool,
    /// Nor a header field (no field rewritten with its checksum
    /// recomputed): a served entry was submitted to the template whose
    /// journal id the superblock carries, and the watermark is one that was
    /// submitted.
    headers_unforged: bool,
    promise: Promise,
    /// The superblock records an owner that disagrees with the one the
    /// input opens as, and is undamaged: recovery must refuse.
    owner_conflict: bool,
}

/// With `RINGSTORE_FUZZ_TRACE` set, prints what recovery made of an input
/// (for writing seeds and reading findings).
fn trace(message: std::fmt::Arguments<'_>) {
    if std::env::var_os("RINGSTORE_FUZZ_TRACE").is_some() {
        eprintln!("{message}");
    }
}

/// Runs one input; panics on a finding.
pub fn run(input: &Input) {
    let templates = match input.source {
        Source::Template { .. } => templates(),
        Source::Raw(_) => Rc::new(Vec::new()),
    };
    let (dir, expect) = match &input.source {
        Source::Raw(raw) => (
            raw_dir(raw),
            Expect {
                name: "raw".into(),
                template: None,
                sources: Vec::new(),
                templates: &templates,
                entries_unforged: false,
                headers_unforged: false,
                promise: Promise::Nothing,
                owner_conflict: false,
            },
        ),
        Source::Template {
            template,
            mutations,
        } => {
            let template = &templates[usize::from(*template) % TEMPLATE_COUNT];
            let mutations = &mutations[..mutations.len().min(MUTATIONS_MAX)];
            let mut dir = template.dir.clone();
            for mutation in mutations {
                apply(&mut dir, mutation, &templates);
            }
            let expect = expect_for(input, template, mutations, &dir, &templates);
            (dir, expect)
        }
    };
    crate::block_on(check(input, &dir, &expect));
}

fn expect_for<'a>(
    input: &Input,
    template: &'a Template,
    mutations: &[Mutation],
    dir: &Dir,
    templates: &'a [Template],
) -> Expect<'a> {
    let flips = mutations
        .iter()
        .filter(|m| matches!(m, Mutation::FlipBit { .. }))
        .count();
    let entries_unforged = flips <= FLIPS_UNFORGEABLE_MAX
        && !mutations
            .iter()
            .any(|m| matches!(m, Mutation::Poke { bytes, .. } if !bytes.is_empty()));
    let headers_unforged = entries_unforged
        && !mutations.iter().any(|m| {
            matches!(
                m,
                Mutation::SuperblockWrite { .. } | Mutation::SegmentHeaderWrite { .. }
            )
        });
    let mut sources = vec![template];
    for mutation in mutations {
        if let Mutation::SuperblockFrom { template, .. } | Mutation::SegmentFrom { template, .. } =
            mutation
        {
            let source = &templates[usize::from(*template) % TEMPLATE_COUNT];
            if !sources.iter().any(|s| std::ptr::eq(*s, source)) {
                sources.push(source);
            }
        }
    }
    let crash_torn_only = template
        .unsynced_from
        .is_some_and(|tail| mutations.iter().all(|m| crash_like(&template.dir, m, tail)));
    // The superblock recovery will choose is the template's final one, or
    // another journal's (refused), or none (refused): not a lost update of
    // this one's (two lost copy writes, a second fault), which takes back
    // what the superblock vouched for — the clean close's record of the
    // last segment's end, the segments that must exist (with those files
    // removed too, an older state naming no segment opens as an empty
    // journal).
    let superblock_current = dir
        .superblock
        .as_deref()
        .and_then(journal_superblock)
        .is_none_or(|sb| {
            sb.journal_id != template.journal_id
                || Some(&sb)
                    == template
                        .dir
                        .superblock
                        .as_deref()
                        .and_then(journal_superblock)
                        .as_ref()
        });
    let promise = if template.acks_durable && (*dir == template.dir || crash_torn_only) {
        Promise::Keep
    } else if template.clean_close && headers_unforged && superblock_current && dir.holds_journal()
    {
        Promise::RefuseOrKeep
    } else if headers_unforged && superblock_current && template.ops_in_file_order {
        Promise::Reported
    } else {
        Promise::Nothing
    };
    let owner_conflict = input.other_owner
        && template
            .owner
            .is_some_and(|owner| !OTHER_OWNER.agrees_with(&owner))
        && dir.superblock == template.dir.superblock;
    Expect {
        name: template.name.into(),
        template: Some(template),
        sources,
        templates,
        entries_unforged,
        headers_unforged,
        promise,
        owner_conflict,
    }
}

fn open_builder(input: &Input, storage: &MemStorage) -> JournalBuilder<MemStorage> {
    let builder = builder(storage.clone());
    if input.other_owner {
        builder.owner(OTHER_OWNER)
    } else {
        builder
    }
}

/// The id of the journal on `storage`, from its superblock.
fn journal_id_on(storage: &MemStorage) -> Option<[u8; 16]> {
    let file = storage.file_bytes(&Path::new(DIR).join(SUPERBLOCK_FILE_NAME))?;
    journal_superblock(&file).map(|sb| sb.journal_id)
}

/// True if the recovery report names `op` as possibly lost: in the cut's op
/// range, or above the highest op found when the log's end was not
/// recorded (after an unclean shutdown).
fn report_names(report: &RecoveryReport, op: u64) -> bool {
    let cut = matches!(
        report.tail,
        TailState::Torn { ops: Some((lo, hi)), .. } if (lo..=hi).contains(&op)
    );
    let unrecorded = report
        .unrecorded_end
        .as_ref()
        .is_some_and(|end| op > end.last_op);
    cut || unrecorded
}

/// Checks a recovery report's tail on its own.
fn check_tail(name: &str, strict: bool, report: &RecoveryReport) {
    let tail = &report.tail;
    if let Some(end) = &report.unrecorded_end {
        assert!(
            end.path.parent() == Some(Path::new(DIR))
                && end.path.file_name().and_then(segment_generation).is_some(),
            "{name}: the unrecorded end names {}, not a segment of the journal",
            end.path.display()
        );
    }
    let TailState::Torn {
        path,
        offset,
        ops,
        entries,
        ..
    } = tail
    else {
        return;
    };
    assert!(
        !strict,
        "{name}: Recovery::Strict cut the log's tail: {}",
        tail.describe()
    );
    assert!(
        path.parent() == Some(Path::new(DIR))
            && path.file_name().and_then(segment_generation).is_some(),
        "{name}: a cut names {}, not a segment of the journal",
        path.display()
    );
    assert!(
        *offset >= SEGMENT_DATA_OFFSET && offset.is_multiple_of(8),
        "{name}: a cut at offset {offset}, not an entry position"
    );
    // A cut happens only where no end is recorded, and is where the log
    // now ends.
    assert!(
        report
            .unrecorded_end
            .as_ref()
            .is_some_and(|end| end.path == *path && end.offset == *offset),
        "{name}: a cut at {} offset {offset}, but the unrecorded end is {:?}",
        path.display(),
        report.unrecorded_end
    );
    match ops {
        None => assert_eq!(
            *entries, 0,
            "{name}: a cut reports {entries} entries but no op range"
        ),
        Some((lo, hi)) => assert!(
            lo <= hi && *entries >= 1 && (lo == hi || *entries >= 2),
            "{name}: a cut reports ops {lo}..={hi} in {entries} entries"
        ),
    }
}

async fn check(input: &Input, dir: &Dir, expect: &Expect<'_>) {
    let storage = MemStorage::new();
    dir.install(&storage);
    let recovery = if input.strict {
        Recovery::Strict
    } else {
        Recovery::TruncateTornTail
    };
    let name = expect.name.as_str();
    let journal = match open_builder(input, &storage)
        .recovery(recovery)
        .open()
        .await
    {
        Ok(journal) => journal,
        Err(error) => {
            trace(format_args!("{name}: refused: {error}"));
            let wrong_owner = matches!(error, Error::WrongOwner { .. });
            assert!(
                matches!(
                    error,
                    Error::Corruption { .. } | Error::UnsupportedVersion { .. }
                ) || (wrong_owner && input.other_owner),
                "{name}: recovery on a fault-free disk failed with an error other than \
                 corruption, an unsupported version or (opened as another owner) the wrong \
                 owner: {error}"
            );
            assert!(
                wrong_owner || !expect.owner_conflict,
                "{name}: a journal of {TEMPLATE_OWNER} opened as {OTHER_OWNER} was refused \
                 with another error than WrongOwner: {error}"
            );
            if expect.promise == Promise::Keep {
                let crash = expect.template.is_some_and(|t| !t.clean_close);
                assert!(
                    expect.owner_conflict || (input.strict && crash),
                    "{name}: the journal failed to open although it is undamaged (or damaged \
                     only in bytes its crash left unsynced): {error}"
                );
            }
            return;
        }
    };
    assert!(
        !expect.owner_conflict,
        "{name}: a journal of {TEMPLATE_OWNER} opened as {OTHER_OWNER}"
    );
    let watermark = journal.watermark();
    let report = journal.recovery_report().clone();
    check_tail(name, input.strict, &report);
    let journal_id = journal_id_on(&storage);
    // With no journal id forgeable, the template whose id the superblock
    // carries is the one whose entries may be served.
    let owner_template =
        journal_id.and_then(|id| expect.templates.iter().find(|t| t.journal_id == id));
    let reads = read_all(&journal, expect, owner_template, None).await;
    let first = &reads.present;
    trace(format_args!(
        "{name}: opened: watermark {watermark}, {} ops served, {}, journal {}, removed {:?}, \
         superblock repaired {:?}, stray {:?}",
        first.len(),
        report.tail.describe(),
        owner_template.map_or("of no template", |t| t.name),
        report.removed,
        report.superblock_repaired,
        report.stray_files,
    ));
    if let (Some(end), Some(highest)) = (&report.unrecorded_end, first.keys().next_back()) {
        assert!(
            end.last_op >= *highest,
            "{name}: the unrecorded end reports the highest op found as {}, but op {highest} \
             is served",
            end.last_op
        );
    }
    if expect.headers_unforged && !expect.sources.is_empty() {
        let submitted = expect
            .sources
            .iter()
            .map(|t| t.model.watermark_submitted)
            .max()
            .unwrap_or(0);
        assert!(
            watermark <= submitted,
            "{name}: watermark {watermark} above any submitted ({submitted})"
        );
    }
    if let Some(template) = expect
        .template
        .filter(|_| expect.promise != Promise::Nothing)
    {
        // The promise is about this template's journal; files of another
        // journal (its superblock and segments swapped in) may open as that
        // one, whose entries the identity check above covers.
        let own = journal_id == Some(template.journal_id);
        assert!(
            own || expect.promise != Promise::Keep,
            "{name}: the undamaged journal opened with another journal id"
        );
        if own {
            check_acked(name, template, expect.promise, &report, &reads);
        }
    }

    let mut appended = None;
    if input.append_after_open {
        let payload = b"appended after recovery by the fuzz target".to_vec();
        if let Ok(op) = journal.append(&payload).await {
            match journal.read(op).await {
                Ok(Some(entry)) => assert_eq!(
                    entry.payload, payload,
                    "{name}: op {op} appended after recovery reads back different bytes"
                ),
                other => panic!("{name}: op {op} appended after recovery reads back {other:?}"),
            }
            appended = Some((op, payload));
        }
    }
    let next_op = journal.next_op();
    if journal.close().await.is_err() {
        return;
    }
    drop(journal);

    // A second recovery of what the first left must reach the same state,
    // and after a clean close nothing is undecidable: Strict must open it.
    let journal = open_builder(input, &storage)
        .recovery(Recovery::Strict)
        .open()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{name}: the first recovery succeeded and closed cleanly, a second one \
                 (Strict) on its result failed: {e}"
            )
        });
    let second_report = journal.recovery_report().clone();
    assert!(
        second_report.tail == TailState::Clean,
        "{name}: after a clean close the second recovery reports {} (the superblock records \
         the last segment's end)",
        second_report.tail.describe()
    );
    // Not checked with forged header fields: a segment adopted as the
    // unrecorded `last + 1` while the superblock records none, and kept
    // because its header records a watermark, is its successor's
    // predecessor yet left below the first generation the open records, so
    // the next open removes it (see fuzz/README.md, known findings).
    assert!(
        !expect.headers_unforged || second_report.removed.is_empty(),
        "{name}: after a clean close the second recovery removed {:?}",
        second_report.removed
    );
    assert!(
        second_report.unrecorded_end.is_none(),
        "{name}: after a clean close the second recovery reports an unrecorded end: {:?}",
        second_report.unrecorded_end
    );
    assert!(
        journal_id_on(&storage) == journal_id,
        "{name}: the journal id changed across a clean reopen"
    );
    assert!(
        journal.watermark() == watermark,
        "{name}: the watermark changed from {watermark} to {} across a clean reopen",
        journal.watermark()
    );
    assert!(
        journal.next_op() >= next_op,
        "{name}: next_op went back from {next_op} to {} across a clean reopen",
        journal.next_op()
    );
    let second = read_all(&journal, expect, owner_template, appended.as_ref()).await;
    assert!(
        second.corrupt == reads.corrupt,
        "{name}: reads failing as corruption after the first recovery {:?}, after the second {:?}",
        reads.corrupt,
        second.corrupt
    );
    let second = second.present;
    for (op, payload) in first {
        assert!(
            second.get(op) == Some(payload),
            "{name}: op {op} served after the first recovery is {} after the second",
            if second.contains_key(op) {
                "different"
            } else {
                "gone"
            }
        );
    }
    if let Some((op, payload)) = appended {
        assert!(
            second.get(&op) == Some(&payload),
            "{name}: op {op} appended and acknowledged after the first recovery is lost"
        );
    }
    let _ = journal.close().await;
}

/// Checks what `promise` says of the template's acknowledged ops after a
/// recovery that reported `report` and served `reads` (an op whose read
/// fails as corruption is reported, not lost).
fn check_acked(
    name: &str,
    template: &Template,
    promise: Promise,
    report: &RecoveryReport,
    reads: &Reads,
) {
    let model = &template.model;
    let (watermark, tail) = (report.watermark, &report.tail);
    let lost: Vec<u64> = model
        .acked
        .range(watermark + 1..)
        .filter(|(op, payload)| {
            reads.present.get(op) != Some(payload) && !reads.corrupt.contains(op)
        })
        .map(|(op, _)| *op)
        .collect();
    if promise >= Promise::Reported {
        // What recovery removes is reported: an acknowledged op that is
        // gone must be named by the cut's op range, or lie above the
        // highest op found when the end was not recorded.
        for op in &lost {
            assert!(
                report_names(report, *op),
                "{name}: acknowledged op {op} is lost and the recovery report does not name it \
                 ({}; unrecorded end {:?})",
                tail.describe(),
                report.unrecorded_end
            );
        }
    }
    if promise >= Promise::Keep {
        assert!(
            watermark >= model.watermark_acked,
            "{name}: watermark {watermark} below the acknowledged {}",
            model.watermark_acked
        );
        assert_eq!(
            report.unrecorded_end.is_none(),
            (template.clean_close && promise == Promise::Keep) || promise == Promise::RefuseOrKeep,
            "{name}: the end is recorded exactly after a clean close (unrecorded end {:?})",
            report.unrecorded_end
        );
    }
    match promise {
        Promise::Nothing | Promise::Reported => {}
        Promise::Keep => {
            // A crash touches no synced byte, so nothing acknowledged may
            // be gone at all, nor fail to read.
            assert!(
                reads.corrupt.is_empty(),
                "{name}: reading ops {:?} failed as corruption although only a crash touched \
                 the files",
                reads.corrupt
            );
            assert!(
                lost.is_empty(),
                "{name}: acknowledged ops {lost:?} not served intact although only a crash \
                 touched the files ({})",
                tail.describe()
            );
            if template.clean_close {
                assert!(
                    *tail == TailState::Clean,
                    "{name}: a cleanly closed journal recovers with {} (its superblock records \
                     the last segment's end)",
                    tail.describe()
                );
            }
            if let (Some((generation, from)), TailState::Torn { path, offset, .. }) =
                (template.unsynced_from, tail)
            {
                let cut_generation = path.file_name().and_then(segment_generation);
                assert!(
                    cut_generation > Some(generation)
                        || (cut_generation == Some(generation) && *offset >= from),
                    "{name}: cut at {} offset {offset}, before the crash's unsynced bytes \
                     (segment {generation} from {from})",
                    path.display()
                );
            }
        }
        Promise::RefuseOrKeep => {
            assert!(
                lost.is_empty(),
                "{name}: damage to a cleanly closed journal lost acknowledged ops {lost:?} \
                 without an error; after a clean close every byte of the log is vouched for \
                 ({})",
                tail.describe()
            );
            assert!(
                *tail == TailState::Clean,
                "{name}: a damaged, cleanly closed journal opened with {} instead of an error",
                tail.describe()
            );
        }
    }
}

/// What reading every op found.
struct Reads {
    /// Ops served, with their bytes.
    present: BTreeMap<u64, Vec<u8>>,
    /// Ops whose read failed as corruption.
    corrupt: BTreeSet<u64>,
}

/// Reads every op above the watermark (at most [`READS_MAX`]) through
/// `entries` and checks each item; `appended` is an entry this target
/// appended itself.
async fn read_all(
    journal: &Journal<MemStorage>,
    expect: &Expect<'_>,
    owner_template: Option<&Template>,
    appended: Option<&(u64, Vec<u8>)>,
) -> Reads {
    let name = expect.name.as_str();
    let watermark = journal.watermark();
    if watermark > 0 {
        let result = journal.read(watermark).await;
        assert!(
            matches!(result, Err(Error::BelowWatermark { .. })),
            "{name}: reading op {watermark} at the watermark gave {result:?}"
        );
    }
    let mut present = BTreeMap::new();
    let mut corrupt = BTreeSet::new();
    let last = journal.next_op().saturating_sub(1);
    let end = last.min(watermark.saturating_add(READS_MAX));
    let mut op = watermark + 1;
    while op <= end {
        // An error ends an iteration: go on after the op that failed.
        let mut entries = journal.entries(op..=end);
        while let Some(item) = entries.next().await {
            match item {
                Ok(LogItem::Present(entry)) => {
                    assert_eq!(
                        entry.op, op,
                        "{name}: entries yielded op {} for op {op}",
                        entry.op
                    );
                    let ours = appended == Some(&(op, entry.payload.clone()));
                    if expect.entries_unforged && !ours {
                        assert!(
                            expect
                                .sources
                                .iter()
                                .any(|t| t.model.allows(op, &entry.payload)),
                            "{name}: op {op} served {} bytes nobody submitted for it",
                            entry.payload.len()
                        );
                    }
                    if expect.headers_unforged && !ours {
                        match owner_template {
                            Some(t) => assert!(
                                t.model.allows(op, &entry.payload),
                                "{name}: op {op} served {} bytes that were not submitted to \
                                 journal {}, whose id the superblock carries (a segment of \
                                 another journal was read)",
                                entry.payload.len(),
                                t.name
                            ),
                            None => panic!(
                                "{name}: op {op} served by a journal whose id is no \
                                 template's (a new journal holds nothing)"
                            ),
                        }
                    }
                    present.insert(op, entry.payload);
                }
                Ok(LogItem::Missing(missing)) => {
                    assert_eq!(
                        missing, op,
                        "{name}: entries yielded Missing({missing}) for op {op}"
                    );
                }
                // Recovery takes a write a later one vouches for from its
                // index, without reading its payloads: damage there is
                // reported by the read, as corruption.
                Err(Error::Corruption { .. }) => {
                    corrupt.insert(op);
                }
                Err(error) => panic!(
                    "{name}: op {op} is indexed after recovery but reading it failed other \
                     than as corruption: {error}"
                ),
            }
            op += 1;
        }
    }
    Reads { present, corrupt }
}
