//! Salvage: the operator's way out when a journal refuses to open, or opens
//! but fails to read damaged entries.
//!
//! Recovery refuses damage where acknowledged data must be (a typed error
//! naming file and offset) rather than dropping it quietly, and a read of
//! an entry whose bytes are damaged returns such an error too. [`salvage`] is
//! the explicit alternative: it cuts the log at its **first** damage, keeps
//! everything before it, moves everything it no longer reads into a
//! quarantine folder (renamed, never deleted, never copied and deleted),
//! rewrites the superblock so the cut is what the log records, and writes a
//! report of what was lost. After it the journal opens and `ringstore wal
//! verify` passes; what it lost has to come back from elsewhere (object
//! storage, a replica).
//!
//! # What it keeps
//!
//! It reads the directory with the read-only scan of [`crate::inspect`],
//! so with the journal's one verifier, and walks the log from its first
//! segment: a segment whose scan reaches its recorded end is kept whole;
//! the walk stops at the first segment that is missing, does not pass its
//! own checks, does not link to its predecessor, or ends otherwise than
//! where it is recorded to (damaged, a tail that does not verify, zeroed
//! space). That last segment is kept up to where its verifying entries end
//! — the cut. Everything after the cut is out: the bytes of the cut
//! segment after it (they stay in the file, which the superblock now says
//! ends at the cut; a copy of the file goes to the quarantine folder so
//! they outlive its retirement), every later segment, and every file the
//! new superblock does not record (leftovers, stray files, segments of
//! another journal or not recorded) — all moved into
//! `<quarantine_root>/<UTC time>-journal/`. The durability record stays
//! where it is: it describes the device, not the log.
//!
//! Damage that is not in the log's segments (a superblock of which no copy
//! verifies, a stray segment holding data) cuts nothing: the files are
//! moved and the superblock written anew.
//!
//! The hard state (`Journal::set_hard_state`): the new superblock keeps the
//! old one's copy with its sequence, and of that and the last hard-state
//! record in the kept segments the one with the greater sequence holds, so
//! a salvage never brings back a hard state older than the superblock's.
//! Records after the cut are quarantined with the rest. A consensus replica
//! must treat a salvaged journal as it treats an uncertain tail (see
//! `recovery`): given the hook a replica gives its open
//! ([`crate::JournalBuilder::hard_state_after_cut`]), [`salvage_as`] runs
//! it when the salvage cuts damage out of the log, on the newest hard state
//! it keeps and the last op it keeps, and writes what it returns into the
//! new superblock, with a sequence above every record kept (so the mark,
//! e.g. a raft node's "awaiting repair", is made in the same write as the
//! cut: no crash leaves one without the other). One whose superblock had no
//! verifying copy has no hard state at all.
//!
//! Before it changes anything, it checks the journal it is about to leave
//! behind: the new superblock's bytes and the kept segments go through the
//! same verifier ([`crate::inspect`]'s scan of that view), which must find
//! a journal that opens with exactly the kept segments, each ending where
//! the new superblock says. If it would not, nothing is done
//! ([`SalvageError::Unverifiable`]).
//!
//! # Refusals
//!
//! It refuses ([`SalvageError`]) a journal that opens and reads back
//! ([`SalvageError::Healthy`]; damage a reopen does not read,
//! [`crate::inspect::JournalReport::damage_found_on_read`], is salvaged), one whose reopen would cut an unverifiable
//! tail and report it ([`SalvageError::WouldCut`]: open it instead, which
//! keeps everything that verifies), files of another format version, a
//! journal of another owner ([`salvage_as`]: it is in the wrong place, not
//! damaged), and —
//! without `confirm` — everything ([`SalvageError::NotConfirmed`] carries
//! the plan, so a caller can show what it would do). It takes no lock:
//! the caller makes sure nothing has the journal open (`ringstore wal
//! salvage` holds the shard's lock).
//!
//! # Order of the steps, and why a crash between any two is safe
//!
//! 1. Scan, decide, and verify the result in memory. Nothing written.
//! 2. Create the quarantine folder (and its parent), fsync their parents.
//! 3. Write the report files, marked *started*, with everything planned;
//!    fsync them and the folder. From here on a crash leaves a record.
//! 4. Copy into the folder what stays in place but changes meaning: the
//!    superblock (rewritten in step 6) and the cut segment; fsync.
//! 5. Move (rename) every file to quarantine into the folder, the highest
//!    generation first; fsync the folder, then the journal directory.
//! 6. **Commit**: write the new superblock — in place with sequence + 1
//!    (copy 0, fdatasync, copy 1, fdatasync: superblock.rs's order), or,
//!    when no copy verified, as `superblock.tmp` renamed into place and the
//!    directory fsync'd.
//! 7. Rewrite the report files, marked *completed*.
//!
//! Until step 6 the old superblock rules, and nothing of the journal's was
//! written or removed: the kept files are untouched, and the moved ones
//! are intact in the folder. A crash in steps 2–5 leaves a journal that
//! still refuses to open — the old superblock records segments that are
//! now missing, or it was the damage — so nothing is read past the damage
//! by accident, and moving the files back restores the old state exactly.
//! (If only files the old superblock does not record were to move, the
//! journal may open after step 5: then it opens as the salvage would have
//! left it.) Running salvage again finds the same cut, since the kept files
//! did not change, moves what is left (into a new folder) and commits. A
//! crash inside step 6 leaves one superblock copy with the old state or
//! the new one in full, so either the old state or the salvaged one; a
//! crash before the renamed `superblock.tmp` is durable leaves no
//! superblock (refused; a rerun moves the temporary file and writes it
//! again). After step 6 the journal is salvaged even if step 7 never
//! happens (the report then still says *started*).

use crate::config::{HardStateAfterCut, ENTRY_BYTES_MAX_LIMIT};
use crate::durability::record::DURABILITY_RECORD_FILE_NAME;
use crate::format::{
    check_entry_header, EntryHeader, EntryKind, ENTRY_ALIGN_BYTES, ENTRY_HEADER_BYTES, ENTRY_MAGIC,
    HARD_STATE_BYTES_MAX, SEGMENT_DATA_OFFSET,
};
use crate::inspect::{
    self, Damage, HardStateRecord, InspectError, JournalReport, OpSet, SegmentEnd, SegmentReport,
    Verdict, Window,
};
use crate::segment::{segment_file_name, segment_generation};
use crate::superblock::{
    self, JournalOwner, JournalSuperblock, SuperblockKind, SUPERBLOCK_COPIES, SUPERBLOCK_FILE_NAME,
};
use crate::verify::{Names, Refusal, SUPERBLOCK_TEMP_NAME};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The end of a quarantine folder's name (after the UTC time).
pub const QUARANTINE_SUFFIX: &str = "-journal";
/// The plain-text report in the quarantine folder.
pub const REPORT_TEXT_NAME: &str = "salvage-report.txt";
/// The JSON report in the quarantine folder.
pub const REPORT_JSON_NAME: &str = "salvage-report.json";
/// Most op ranges a report lists (the counts are always exact).
pub const OP_RANGES_MAX: usize = 64;
/// Attempts at a quarantine folder name not taken yet.
const FOLDER_ATTEMPTS_MAX: u32 = 100;

/// Why [`salvage`] did nothing, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SalvageError {
    /// The directory could not be scanned.
    #[error(transparent)]
    Inspect(#[from] InspectError),
    /// The journal opens: nothing to salvage.
    #[error("{dir}: nothing to salvage: the journal {what}")]
    Healthy {
        /// The journal directory.
        dir: PathBuf,
        /// What a reopen does.
        what: String,
    },
    /// The journal opens after cutting a tail nothing vouches for, which a
    /// reopen reports: open it instead (it keeps everything that verifies).
    #[error(
        "{dir}: nothing to salvage: reopening cuts the log's tail and reports it ({tail}); \
         open it with the default recovery instead, which keeps everything that verifies"
    )]
    WouldCut {
        /// The journal directory.
        dir: PathBuf,
        /// The cut, in recovery's words.
        tail: String,
    },
    /// Files of another format version: not damage, a build that reads
    /// them opens them.
    #[error(
        "{}: written by another format version ({}); open or salvage it with a build that \
         reads that version", .paths.first().map(|p| p.display().to_string()).unwrap_or_default(),
        .refusal
    )]
    UnsupportedVersion {
        /// The files.
        paths: Vec<PathBuf>,
        /// What the verifier says.
        refusal: String,
    },
    /// The journal belongs to another shard or domain: not damage; it is
    /// in the wrong place.
    #[error(
        "{dir}: {refusal}; salvage does not fix that: put the journal directory back where it \
         belongs (nothing was changed)"
    )]
    WrongOwner {
        /// The journal directory.
        dir: PathBuf,
        /// What the verifier says.
        refusal: String,
    },
    /// `confirm` was false: what salvage would do, nothing done.
    #[error("salvage of {} not confirmed (nothing was changed); it would {}",
        .0.dir.display(), .0.summary())]
    NotConfirmed(Box<SalvageReport>),
    /// The journal salvage would leave behind does not pass the verifier
    /// (a bug, or damage the walk does not understand): nothing was done.
    #[error("{dir}: the salvaged journal would not verify ({reason}); nothing was changed")]
    Unverifiable {
        /// The journal directory.
        dir: PathBuf,
        /// What the verifier said of it.
        reason: String,
    },
    /// A step failed; `state` says where that leaves the journal.
    #[error("salvage of {dir} stopped: {op} failed on {path}: {source}. {state}")]
    Io {
        /// The journal directory.
        dir: PathBuf,
        /// The step, e.g. `"rename"`.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
        /// Where this leaves the journal.
        state: String,
    },
    /// Test hook ([`salvage_interrupted`]): stopped after that many
    /// changes, as a crash would.
    #[doc(hidden)]
    #[error("salvage of {dir} interrupted after {steps} change(s)")]
    Interrupted {
        /// The journal directory.
        dir: PathBuf,
        /// Changes made.
        steps: usize,
    },
}

/// A segment the salvaged log keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptSegment {
    /// Its generation.
    pub generation: u64,
    /// Its file.
    pub path: PathBuf,
    /// Where its data ends (recorded in the new superblock).
    pub end: u64,
}

/// Where the log is cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutPoint {
    /// The segment the log now ends in.
    pub path: PathBuf,
    /// Its generation.
    pub generation: u64,
    /// The log's new end in it.
    pub offset: u64,
    /// Why the log ends there.
    pub reason: String,
}

/// A file salvage moved or copied into the quarantine folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedFile {
    /// Where it was.
    pub from: PathBuf,
    /// Where it is (or goes).
    pub to: PathBuf,
    /// Why.
    pub reason: String,
}

/// Data entries counted by op.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpTally {
    /// Entries (an op written twice counts twice).
    pub entries: u64,
    /// Distinct ops.
    pub ops: u64,
    /// The ops as inclusive ranges, ascending (at most [`OP_RANGES_MAX`]).
    pub ranges: Vec<(u64, u64)>,
    /// How many ranges there are in all.
    pub ranges_total: usize,
}

impl OpTally {
    fn from_set(set: &OpSet, entries: u64) -> OpTally {
        let all: Vec<_> = set.ranges().collect();
        OpTally {
            entries,
            ops: set.count(),
            ranges_total: all.len(),
            ranges: all.into_iter().take(OP_RANGES_MAX).collect(),
        }
    }

    /// `ops 3..=9, 12 (8 entries)`, or `none`.
    pub fn describe(&self) -> String {
        if self.entries == 0 {
            return "none".into();
        }
        let mut ranges: Vec<String> = self
            .ranges
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}..={b}")
                }
            })
            .collect();
        if self.ranges_total > self.ranges.len() {
            ranges.push("...".into());
        }
        format!(
            "{} op(s) in {} entries: {}",
            self.ops,
            self.entries,
            ranges.join(", ")
        )
    }
}

/// The superblock salvage writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSuperblock {
    /// Its sequence (the old one's + 1, or 1).
    pub sequence: u64,
    /// No copy of the old one verified (or there was none): written anew.
    pub fresh: bool,
    /// Its contents.
    pub superblock: JournalSuperblock,
    /// Its hard state is what the owner's hook made of the newest one kept
    /// (the salvage cut damage out of the log; see [`salvage_as`]).
    pub hard_state_marked: bool,
}

/// How far a salvage got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SalvageState {
    /// Planned only (not confirmed, or not started).
    Planned,
    /// Started: the report is written, the journal not yet salvaged.
    Started,
    /// Done: the journal is salvaged.
    Completed,
}

/// What a salvage does or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalvageReport {
    /// The journal directory.
    pub dir: PathBuf,
    /// The quarantine folder (created when salvage runs).
    pub quarantine: PathBuf,
    /// When it was planned, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// How far it got.
    pub state: SalvageState,
    /// Why reopening refused, or (damage a reopen does not read) what it
    /// does and which reads fail.
    pub refusal: String,
    /// All damage the scan found.
    pub damage: Vec<Damage>,
    /// The first damage in log order, where the walk stopped (`None`: the
    /// log's segments verify; the damage is elsewhere).
    pub first_damage: Option<Damage>,
    /// The segments kept, oldest first.
    pub kept: Vec<KeptSegment>,
    /// Where the log now ends (`None`: no segment kept).
    pub cut: Option<CutPoint>,
    /// Files moved into the quarantine folder.
    pub moved: Vec<QuarantinedFile>,
    /// Files copied into it (left in place).
    pub copied: Vec<QuarantinedFile>,
    /// Data entries no longer in the log and above the watermark: in the
    /// cut bytes and in quarantined segments of this journal, counted when
    /// their headers still verify. These ops are lost unless a replica or
    /// object storage has them.
    pub lost: OpTally,
    /// Such entries at or below the watermark (in a snapshot already).
    pub covered: OpTally,
    /// Quarantined segments whose header is damaged and in which no entry
    /// could be counted (no journal id known to check their entries with,
    /// or none verified): what they held is lost too, and not in `lost`.
    pub uncounted: Vec<PathBuf>,
    /// The superblock written.
    pub superblock: NewSuperblock,
}

impl SalvageReport {
    /// A one-line summary of the plan.
    pub fn summary(&self) -> String {
        let keep = match (&self.kept.first(), &self.cut) {
            (Some(first), Some(cut)) => format!(
                "keep segments {}..={} and cut the log at {} byte offset {}",
                first.generation,
                cut.generation,
                cut.path.display(),
                cut.offset
            ),
            _ => "keep no segment".into(),
        };
        format!(
            "{keep}, move {} file(s) into {}, write superblock sequence {}; ops lost: {}",
            self.moved.len(),
            self.quarantine.display(),
            self.superblock.sequence,
            self.lost_description()
        )
    }

    /// `lost`, and the segments whose ops could not be counted.
    pub fn lost_description(&self) -> String {
        if self.uncounted.is_empty() {
            return self.lost.describe();
        }
        format!(
            "{}, and whatever {} quarantined segment(s) with a damaged header held (not \
             counted: {})",
            self.lost.describe(),
            self.uncounted.len(),
            self.uncounted
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// The report as plain text (what goes into [`REPORT_TEXT_NAME`]).
    pub fn text(&self) -> String {
        let mut t = String::new();
        let mut line = |s: String| {
            t.push_str(&s);
            t.push('\n');
        };
        line("ringstore journal salvage".into());
        line(format!("journal:    {}", self.dir.display()));
        line(format!("quarantine: {}", self.quarantine.display()));
        line(format!(
            "state:      {}",
            match self.state {
                SalvageState::Planned => "planned (nothing changed)",
                SalvageState::Started => {
                    "started, not finished (if the journal still refuses to open, run salvage again)"
                }
                SalvageState::Completed => "completed",
            }
        ));
        line(format!("time:       {}", utc(self.unix_ms, ":")));
        line(String::new());
        line(format!("reopening refused: {}", self.refusal));
        line("damage found:".into());
        for d in &self.damage {
            line(format!("  {d}"));
        }
        match &self.first_damage {
            Some(d) => line(format!("first damage in the log: {d}")),
            None => line(
                "first damage in the log: none (the damage is outside the log's segments)".into(),
            ),
        }
        match &self.cut {
            Some(cut) => line(format!(
                "cut: {} (generation {}) at byte offset {}: {}",
                cut.path.display(),
                cut.generation,
                cut.offset,
                cut.reason
            )),
            None => line("cut: no segment is kept; the journal starts empty".into()),
        }
        for k in &self.kept {
            line(format!(
                "kept: {} (generation {}), data ends at {}",
                k.path.display(),
                k.generation,
                k.end
            ));
        }
        let sb = &self.superblock;
        line(format!(
            "superblock: sequence {}{}, journal id {}, generations {}..={}, watermark {}, {} segment end(s)",
            sb.sequence,
            if sb.fresh { " (written anew: no copy of the old one verified)" } else { "" },
            uuid::Uuid::from_bytes(sb.superblock.journal_id),
            sb.superblock.first_generation,
            sb.superblock.last_generation,
            sb.superblock.watermark,
            sb.superblock.ends.len()
        ));
        if sb.hard_state_marked {
            line(format!(
                "hard state: marked by the journal's owner's hook for the cut (sequence {})",
                sb.superblock.hard_state_sequence
            ));
        }
        line(format!(
            "ops lost (above the watermark {}; entries whose header still verifies in the cut \
             bytes and the quarantined segments): {}",
            sb.superblock.watermark,
            self.lost_description()
        ));
        line(format!(
            "ops at or below the watermark there (in a snapshot): {}",
            self.covered.describe()
        ));
        line("moved into the quarantine folder:".into());
        for f in &self.moved {
            line(format!(
                "  {} -> {}: {}",
                f.from.display(),
                f.to.display(),
                f.reason
            ));
        }
        line("copied into the quarantine folder (left in place):".into());
        for f in &self.copied {
            line(format!(
                "  {} -> {}: {}",
                f.from.display(),
                f.to.display(),
                f.reason
            ));
        }
        t
    }

    /// The report as JSON (what goes into [`REPORT_JSON_NAME`]).
    pub fn json(&self) -> String {
        let path = |p: &Path| Json::Str(p.display().to_string());
        let tally = |t: &OpTally| {
            Json::Obj(vec![
                ("entries", Json::Num(t.entries)),
                ("ops", Json::Num(t.ops)),
                (
                    "ranges",
                    Json::Arr(
                        t.ranges
                            .iter()
                            .map(|&(a, b)| Json::Arr(vec![Json::Num(a), Json::Num(b)]))
                            .collect(),
                    ),
                ),
                ("ranges_total", Json::Num(t.ranges_total as u64)),
            ])
        };
        let damage = |d: &Damage| {
            Json::Obj(vec![
                ("path", path(&d.path)),
                ("offset", Json::Num(d.offset)),
                ("reason", Json::Str(d.reason.clone())),
            ])
        };
        let file = |f: &QuarantinedFile| {
            Json::Obj(vec![
                ("from", path(&f.from)),
                ("to", path(&f.to)),
                ("reason", Json::Str(f.reason.clone())),
            ])
        };
        let sb = &self.superblock;
        let value = Json::Obj(vec![
            ("dir", path(&self.dir)),
            ("quarantine", path(&self.quarantine)),
            ("unix_ms", Json::Num(self.unix_ms)),
            (
                "state",
                Json::Str(
                    match self.state {
                        SalvageState::Planned => "planned",
                        SalvageState::Started => "started",
                        SalvageState::Completed => "completed",
                    }
                    .into(),
                ),
            ),
            ("refusal", Json::Str(self.refusal.clone())),
            (
                "damage",
                Json::Arr(self.damage.iter().map(damage).collect()),
            ),
            (
                "first_damage",
                self.first_damage.as_ref().map_or(Json::Null, damage),
            ),
            (
                "cut",
                self.cut.as_ref().map_or(Json::Null, |c| {
                    Json::Obj(vec![
                        ("path", path(&c.path)),
                        ("generation", Json::Num(c.generation)),
                        ("offset", Json::Num(c.offset)),
                        ("reason", Json::Str(c.reason.clone())),
                    ])
                }),
            ),
            (
                "kept",
                Json::Arr(
                    self.kept
                        .iter()
                        .map(|k| {
                            Json::Obj(vec![
                                ("generation", Json::Num(k.generation)),
                                ("path", path(&k.path)),
                                ("end", Json::Num(k.end)),
                            ])
                        })
                        .collect(),
                ),
            ),
            (
                "superblock",
                Json::Obj(vec![
                    ("sequence", Json::Num(sb.sequence)),
                    ("fresh", Json::Bool(sb.fresh)),
                    ("hard_state_marked", Json::Bool(sb.hard_state_marked)),
                    (
                        "journal_id",
                        Json::Str(uuid::Uuid::from_bytes(sb.superblock.journal_id).to_string()),
                    ),
                    (
                        "first_generation",
                        Json::Num(sb.superblock.first_generation),
                    ),
                    ("last_generation", Json::Num(sb.superblock.last_generation)),
                    ("watermark", Json::Num(sb.superblock.watermark)),
                    (
                        "ends",
                        Json::Arr(
                            sb.superblock
                                .ends
                                .iter()
                                .map(|&(g, e)| Json::Arr(vec![Json::Num(g), Json::Num(e)]))
                                .collect(),
                        ),
                    ),
                ]),
            ),
            ("lost", tally(&self.lost)),
            (
                "uncounted",
                Json::Arr(
                    self.uncounted
                        .iter()
                        .map(|p| Json::Str(p.display().to_string()))
                        .collect(),
                ),
            ),
            ("covered", tally(&self.covered)),
            ("moved", Json::Arr(self.moved.iter().map(file).collect())),
            ("copied", Json::Arr(self.copied.iter().map(file).collect())),
        ]);
        let mut out = String::new();
        value.write(&mut out, 0);
        out.push('\n');
        out
    }
}

/// Salvages the journal in `dir` (see the module docs): quarantines into a
/// new folder under `quarantine_root`, and returns what it did. Without
/// `confirm` it changes nothing and returns
/// [`SalvageError::NotConfirmed`] with the plan.
pub fn salvage(
    dir: &Path,
    quarantine_root: &Path,
    confirm: bool,
) -> Result<SalvageReport, SalvageError> {
    run(dir, None, None, quarantine_root, confirm, usize::MAX)
}

/// [`salvage`] of a journal expected to belong to `owner` (as its shard
/// opens it): one that records another owner is refused
/// ([`SalvageError::WrongOwner`]) — a journal directory in the wrong place
/// is not damage, and cutting it would not help. `after_cut` is the hook
/// the journal's owner gives its open
/// ([`crate::JournalBuilder::hard_state_after_cut`]): a salvage that cuts
/// damage out of the log writes what it returns as the new superblock's
/// hard state (see the module docs).
pub fn salvage_as(
    dir: &Path,
    owner: Option<JournalOwner>,
    after_cut: Option<HardStateAfterCut>,
    quarantine_root: &Path,
    confirm: bool,
) -> Result<SalvageReport, SalvageError> {
    run(dir, owner, after_cut, quarantine_root, confirm, usize::MAX)
}

/// [`salvage`], confirmed, stopping after `changes` changes to the disk
/// (creating the folder, writing a report, a copy, a move, a directory
/// fsync, the superblock) as a crash there would. For tests of the step
/// order.
#[doc(hidden)]
pub fn salvage_interrupted(
    dir: &Path,
    quarantine_root: &Path,
    changes: usize,
) -> Result<SalvageReport, SalvageError> {
    run(dir, None, None, quarantine_root, true, changes)
}

fn run(
    dir: &Path,
    owner: Option<JournalOwner>,
    after_cut: Option<HardStateAfterCut>,
    quarantine_root: &Path,
    confirm: bool,
    changes_max: usize,
) -> Result<SalvageReport, SalvageError> {
    let scan = inspect::scan_journal_as(dir, owner, &mut ())?;
    let plan = plan(dir, quarantine_root, &scan, after_cut)?;
    if !confirm {
        return Err(SalvageError::NotConfirmed(Box::new(plan.report)));
    }
    Executor {
        plan,
        changes: 0,
        changes_max,
    }
    .execute()
}

/// What [`plan`] decided, with what executing it needs.
struct Plan {
    report: SalvageReport,
    /// The superblock file exists and a copy verifies: rewrite in place.
    rewrite_in_place: bool,
    /// The old superblock file exists (copied or moved).
    superblock_exists: bool,
}

fn plan(
    dir: &Path,
    quarantine_root: &Path,
    scan: &JournalReport,
    after_cut: Option<HardStateAfterCut>,
) -> Result<Plan, SalvageError> {
    match scan.verdict {
        // Damage a reopen leaves to the reads of its entries: cut at it
        // like any other, so that `ringstore wal verify` passes after.
        Verdict::Opens if !scan.damage_found_on_read.is_empty() => {}
        Verdict::Opens => {
            return Err(SalvageError::Healthy {
                dir: dir.to_path_buf(),
                what: scan.describe_verdict(),
            })
        }
        Verdict::Cuts => {
            return Err(SalvageError::WouldCut {
                dir: dir.to_path_buf(),
                tail: scan.tail.describe(),
            })
        }
        Verdict::Refuses => {}
    }
    // The refusal, or (a journal that opens) the reads that fail.
    let refusal = scan
        .refusal
        .as_ref()
        .map_or_else(|| scan.describe_verdict(), |r| r.to_string());
    if let Some(Refusal::WrongOwner { .. }) = &scan.refusal {
        return Err(SalvageError::WrongOwner {
            dir: dir.to_path_buf(),
            refusal,
        });
    }
    if !scan.unsupported.is_empty() {
        return Err(SalvageError::UnsupportedVersion {
            paths: scan.unsupported.clone(),
            refusal,
        });
    }
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let quarantine = quarantine_root.join(format!("{}{QUARANTINE_SUFFIX}", utc(unix_ms, "-")));
    let damage_at = |path: &Path| scan.damage.iter().find(|d| d.path == path).cloned();

    // Walk the log: keep segments while each ends where it is recorded to.
    let log: Vec<&SegmentReport> = scan.segments.iter().filter(|s| s.in_log).collect();
    let mut kept: Vec<KeptSegment> = Vec::new();
    let mut first_damage = None;
    let mut cut_reason = None;
    // The log starts where the superblock says, else (none readable) at
    // the oldest segment file: a first segment that is not part of the
    // log is the first damage.
    let mut expected = scan
        .superblock
        .as_ref()
        .map(|sb| sb.first_generation)
        .filter(|g| *g != 0)
        .or_else(|| {
            scan.segments
                .iter()
                .find(|s| !matches!(s.end, SegmentEnd::Leftover { .. }))
                .map(|s| s.generation)
        })
        .or_else(|| log.first().map(|s| s.generation));
    let mut stopped_inside = false;
    for segment in &log {
        let Some(header) = segment.header else { break };
        if Some(segment.generation) != expected {
            // A generation in between is missing or not part of the log.
            let missing = dir.join(segment_file_name(expected.unwrap_or(0)));
            first_damage = damage_at(&missing);
            cut_reason = Some(format!(
                "the next segment, {}, is missing or damaged",
                segment_file_name(expected.unwrap_or(0))
            ));
            break;
        }
        if let Some(prev) = kept.last() {
            if header.prev_generation != prev.generation || header.prev_end != prev.end {
                first_damage = damage_at(&segment.path).or_else(|| {
                    Some(Damage {
                        path: segment.path.clone(),
                        offset: 0,
                        reason: format!(
                            "segment header names previous generation {} ending at {}; the log \
                             has {} ending at {}",
                            header.prev_generation, header.prev_end, prev.generation, prev.end
                        ),
                    })
                });
                cut_reason = Some(format!(
                    "the next segment, {}, does not continue it",
                    segment_file_name(segment.generation)
                ));
                break;
            }
        }
        let (end, stop, reason) = match &segment.end {
            SegmentEnd::Sealed { offset } => (*offset, false, None),
            SegmentEnd::Clean { offset } => (
                *offset,
                true,
                Some("zeroed space after the last entry (the end of its data)".to_string()),
            ),
            SegmentEnd::Torn { offset, reason, .. } => {
                first_damage = Some(Damage {
                    path: segment.path.clone(),
                    offset: *offset,
                    reason: reason.clone(),
                });
                (*offset, true, Some(reason.clone()))
            }
            SegmentEnd::Damaged { offset } => {
                let d = scan
                    .damage
                    .iter()
                    .find(|d| d.path == segment.path && d.offset == *offset)
                    .cloned();
                let reason = d.as_ref().map_or_else(String::new, |d| d.reason.clone());
                first_damage = d;
                (*offset, true, Some(reason))
            }
            _ => break,
        };
        kept.push(KeptSegment {
            generation: segment.generation,
            path: segment.path.clone(),
            end,
        });
        if stop {
            stopped_inside = true;
            cut_reason = reason;
            break;
        }
        expected = Some(segment.generation + 1);
    }
    if first_damage.is_none() && cut_reason.is_none() {
        // The walk passed every segment of the log; is one recorded after
        // the last kept one missing or damaged?
        if let Some(next) = expected {
            let path = dir.join(segment_file_name(next));
            if let Some(d) = damage_at(&path) {
                first_damage = Some(d);
                cut_reason = Some(format!(
                    "the next segment, {}, is missing or damaged",
                    segment_file_name(next)
                ));
            }
        }
    }
    let cut = kept.last().map(|k| CutPoint {
        path: k.path.clone(),
        generation: k.generation,
        offset: k.end,
        reason: cut_reason.clone().unwrap_or_else(|| {
            "the end of the log (the damage is outside the log's segments)".into()
        }),
    });

    // The new superblock.
    let old = scan.superblock.as_ref();
    let cut_generation = cut.as_ref().map(|c| c.generation);
    let known_journal_id = old.map(|sb| sb.journal_id).or_else(|| {
        kept.first()
            .and_then(|k| scan.segment(k.generation))
            .and_then(|s| s.header)
            .map(|h| h.journal_id)
    });
    let journal_id = known_journal_id.unwrap_or_else(|| *uuid::Uuid::new_v4().as_bytes());
    let kept_watermark = kept
        .iter()
        .filter_map(|k| scan.segment(k.generation))
        .map(|s| s.watermark)
        .max()
        .unwrap_or(0);
    // The hard state: the superblock's copy, or a newer record in the kept
    // segments (what an open of the salvaged journal would take), marked by
    // the owner's hook when damage is cut out of the log.
    let marked_hard_state = match (after_cut, &first_damage) {
        (Some(mark), Some(_)) => {
            // In log order: segments kept whole as the scan saw them, unless
            // they hold truncation records (which lower the last op where
            // they stand); of the cut one, only what is before the cut (the
            // scan read past damage).
            let mut op_max = None;
            let mut newest = old.map(|sb| (sb.hard_state_sequence, sb.hard_state.clone()));
            for k in &kept {
                let Some(segment) = scan.segment(k.generation) else {
                    continue;
                };
                let cut_here = stopped_inside && Some(k.generation) == cut_generation;
                let hard_state = if cut_here || segment.truncate_records > 0 {
                    walk_kept(&k.path, segment, k.end, &mut op_max).map_err(|source| {
                        InspectError::Io {
                            op: "read",
                            path: k.path.clone(),
                            offset: None,
                            source,
                        }
                    })?
                } else {
                    op_max = op_max.max(segment.op_max);
                    segment.last_hard_state.clone()
                };
                newest = newest
                    .into_iter()
                    .chain(hard_state)
                    .max_by_key(|(seq, _)| *seq);
            }
            let (sequence, bytes) = newest.unwrap_or_default();
            let marked = mark(&bytes, op_max.unwrap_or(0));
            if marked.len() > HARD_STATE_BYTES_MAX {
                return Err(SalvageError::Unverifiable {
                    dir: dir.to_path_buf(),
                    reason: format!(
                        "the hard state the owner's hook returned is {} bytes, over \
                         HARD_STATE_BYTES_MAX ({HARD_STATE_BYTES_MAX})",
                        marked.len()
                    ),
                });
            }
            // u64::MAX only in forged bytes (an open refuses such a record).
            let Some(sequence) = sequence.checked_add(1) else {
                return Err(SalvageError::Unverifiable {
                    dir: dir.to_path_buf(),
                    reason: crate::verify::NO_SEQUENCE_CAN_FOLLOW.to_owned(),
                });
            };
            Some((sequence, marked))
        }
        _ => None,
    };
    let new_sb = NewSuperblock {
        sequence: old.map_or(1, |sb| sb.sequence + 1),
        fresh: old.is_none(),
        superblock: JournalSuperblock {
            journal_id,
            owner: old.and_then(|sb| sb.owner),
            first_generation: kept.first().map_or(0, |k| k.generation),
            last_generation: kept.last().map_or(0, |k| k.generation),
            watermark: old.map_or(0, |sb| sb.watermark).max(kept_watermark),
            ends: kept.iter().map(|k| (k.generation, k.end)).collect(),
            // Hard-state records in quarantined segments are lost with them
            // (see `salvage` in the module docs); the superblock's stays,
            // unless the hook marked the newest kept one.
            hard_state: marked_hard_state.as_ref().map_or_else(
                || old.map_or_else(Vec::new, |sb| sb.hard_state.clone()),
                |(_, bytes)| bytes.clone(),
            ),
            hard_state_sequence: marked_hard_state.as_ref().map_or_else(
                || old.map_or(0, |sb| sb.hard_state_sequence),
                |(sequence, _)| *sequence,
            ),
        },
        hard_state_marked: marked_hard_state.is_some(),
    };

    // What moves: everything in the directory but the kept segments and a
    // superblock that is rewritten in place.
    let names = inspect::list_dir(dir)?;
    let superblock_exists = names.iter().any(|n| n == SUPERBLOCK_FILE_NAME);
    let rewrite_in_place = superblock_exists && old.is_some();
    let kept_names: Vec<OsString> = kept
        .iter()
        .map(|k| OsString::from(segment_file_name(k.generation)))
        .collect();
    let mut to_move: Vec<(OsString, String)> = Vec::new();
    for name in names {
        // The durability record stays: it describes the device, not the
        // log (see `durability::record`).
        if kept_names.contains(&name)
            || (name == SUPERBLOCK_FILE_NAME && rewrite_in_place)
            || name == DURABILITY_RECORD_FILE_NAME
        {
            continue;
        }
        let path = dir.join(&name);
        let reason = if name == SUPERBLOCK_FILE_NAME {
            format!(
                "the superblock: {}; replaced by a new one",
                damage_at(&path).map_or_else(|| "no copy verifies".into(), |d| d.reason)
            )
        } else if let Some(leftover) = scan.leftovers.iter().find(|l| l.path == path) {
            format!("{} (a reopen would remove it)", leftover.reason)
        } else if let Some(generation) = segment_generation(&name) {
            let after = kept.last().is_some_and(|k| generation > k.generation);
            let detail = damage_at(&path).map(|d| format!(": {}", d.reason));
            match (after, detail) {
                (true, Some(detail)) => format!("after the cut{detail}"),
                (true, None) => "after the cut: no longer part of the log".into(),
                (false, Some(detail)) => format!("not part of the log{detail}"),
                (false, None) => "not part of the log".into(),
            }
        } else if name == SUPERBLOCK_TEMP_NAME {
            "a superblock whose creation did not complete".into()
        } else {
            "not a journal file (stray)".into()
        };
        to_move.push((name, reason));
    }
    // Segments highest generation first, then the rest by name.
    to_move.sort_by(
        |(a, _), (b, _)| match (segment_generation(a), segment_generation(b)) {
            (Some(x), Some(y)) => y.cmp(&x),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.cmp(b),
        },
    );
    let moved: Vec<QuarantinedFile> = to_move
        .into_iter()
        .map(|(name, reason)| QuarantinedFile {
            from: dir.join(&name),
            to: quarantine.join(&name),
            reason,
        })
        .collect();
    let mut copied = Vec::new();
    if rewrite_in_place {
        copied.push(QuarantinedFile {
            from: dir.join(SUPERBLOCK_FILE_NAME),
            to: quarantine.join(SUPERBLOCK_FILE_NAME),
            reason: format!(
                "the superblock before salvage (sequence {}; rewritten in place)",
                old.map_or(0, |sb| sb.sequence)
            ),
        });
    }
    if let (Some(cut), true) = (&cut, stopped_inside) {
        if first_damage.as_ref().is_some_and(|d| d.path == cut.path) {
            let name = segment_file_name(cut.generation);
            copied.push(QuarantinedFile {
                from: cut.path.clone(),
                to: quarantine.join(&name),
                reason: format!(
                    "the cut segment as it was: its bytes from offset {} on are no longer part \
                     of the log (the file stays, and is retired with the log later)",
                    cut.offset
                ),
            });
        }
    }

    // What is lost: entries in the cut bytes and in quarantined segments of
    // this journal whose headers verify.
    let watermark = new_sb.superblock.watermark;
    let mut lost = (OpSet::default(), 0u64);
    let mut covered = (OpSet::default(), 0u64);
    let mut uncounted = Vec::new();
    // Returns how many entries it counted.
    let mut count = |path: &Path, segment: &SegmentReport, from: u64, to: u64| {
        let before = lost.1 + covered.1;
        tally_entries(
            path,
            segment,
            from,
            to,
            known_journal_id,
            watermark,
            &mut lost,
            &mut covered,
        )
        .map_err(|source| InspectError::Io {
            op: "read",
            path: path.to_path_buf(),
            offset: Some(from),
            source,
        })?;
        Ok::<u64, InspectError>(lost.1 + covered.1 - before)
    };
    if let (Some(cut), true) = (&cut, stopped_inside) {
        if let Some(segment) = scan.segment(cut.generation) {
            let limit = segment
                .sealed_end
                .or(segment.header.map(|h| h.segment_bytes))
                .unwrap_or(segment.file_bytes);
            count(&cut.path, segment, cut.offset, limit)?;
        }
    }
    for f in &moved {
        let Some(generation) = f.from.file_name().and_then(segment_generation) else {
            continue;
        };
        let Some(segment) = scan.segment(generation) else {
            continue;
        };
        // A damaged header may be ours: its entries are counted if they
        // verify under this journal's id.
        let ours = segment.header.is_none_or(|h| h.journal_id == journal_id);
        let leftover = scan.leftovers.iter().any(|l| l.path == segment.path);
        if !ours || leftover {
            continue;
        }
        let limit = segment
            .sealed_end
            .or(segment.header.map(|h| h.segment_bytes))
            .unwrap_or(segment.file_bytes);
        let counted = count(&f.from, segment, SEGMENT_DATA_OFFSET, limit)?;
        // Part of the log as the superblock records it (a stray file past
        // it, a copy of another, held nothing acknowledged).
        let recorded =
            old.is_none_or(|sb| (sb.first_generation..=sb.last_generation).contains(&generation));
        if segment.header.is_none() && counted == 0 && recorded {
            uncounted.push(f.from.clone());
        }
    }

    let report = SalvageReport {
        dir: dir.to_path_buf(),
        quarantine,
        unix_ms,
        state: SalvageState::Planned,
        refusal,
        damage: scan.damage.clone(),
        first_damage,
        kept,
        cut,
        moved,
        copied,
        lost: OpTally::from_set(&lost.0, lost.1),
        covered: OpTally::from_set(&covered.0, covered.1),
        uncounted,
        superblock: new_sb,
    };
    check_result(dir, &report)?;
    Ok(Plan {
        report,
        rewrite_in_place,
        superblock_exists,
    })
}

/// Runs the verifier over the journal salvage would leave behind: the new
/// superblock's bytes and the kept segments, as they are on disk.
fn check_result(dir: &Path, report: &SalvageReport) -> Result<(), SalvageError> {
    let unverifiable = |reason: String| SalvageError::Unverifiable {
        dir: dir.to_path_buf(),
        reason,
    };
    let names = Names {
        generations: report.kept.iter().map(|k| k.generation).collect(),
        superblock: true,
        superblock_temp: false,
        durability_record: false,
        probe_leftovers: Vec::new(),
        stray: Vec::new(),
    };
    let bytes = superblock_bytes(&report.superblock);
    let view = inspect::scan_view(dir, &names, Some(&bytes), None, &mut ())?;
    if view.verdict != Verdict::Opens || !view.damage.is_empty() || !view.leftovers.is_empty() {
        return Err(unverifiable(view.describe_verdict()));
    }
    for k in &report.kept {
        let end = view.segment(k.generation).map(|s| &s.end);
        if end != Some(&SegmentEnd::Sealed { offset: k.end }) {
            return Err(unverifiable(format!(
                "{} ends {end:?}, not at {}",
                k.path.display(),
                k.end
            )));
        }
    }
    Ok(())
}

/// Both copies of the new superblock, as the file holds them.
fn superblock_bytes(sb: &NewSuperblock) -> Vec<u8> {
    let body = sb.superblock.encode();
    (0..SUPERBLOCK_COPIES)
        .flat_map(|copy| superblock::encode_copy(SuperblockKind::Journal, sb.sequence, copy, &body))
        .collect()
}

/// Counts the data entries whose headers verify in `[from, to)` of a
/// segment, split at `watermark` into `lost` and `covered`.
#[allow(clippy::too_many_arguments)]
fn tally_entries(
    path: &Path,
    segment: &SegmentReport,
    from: u64,
    to: u64,
    journal_id: Option<[u8; 16]>,
    watermark: u64,
    lost: &mut (OpSet, u64),
    covered: &mut (OpSet, u64),
) -> io::Result<()> {
    walk_entries(path, segment, from, to, journal_id, |entry, _| {
        if entry.entry_kind() == Some(EntryKind::Data) {
            let op = entry.op.get();
            let tally = if op <= watermark {
                &mut *covered
            } else {
                &mut *lost
            };
            tally.0.insert(op);
            tally.1 += 1;
        }
        Ok(())
    })
}

/// Walks the entries of `segment` before `end` (what salvage keeps of it)
/// in order: `last_op`, the log's last op so far, rises with each data op
/// and falls to a truncation record's op (as recovery reads the log).
/// Returns the last hard-state record whose payload verifies.
fn walk_kept(
    path: &Path,
    segment: &SegmentReport,
    end: u64,
    last_op: &mut Option<u64>,
) -> io::Result<Option<HardStateRecord>> {
    let mut hard_state = None;
    walk_entries(
        path,
        segment,
        SEGMENT_DATA_OFFSET,
        end,
        None,
        |entry, window| {
            match entry.entry_kind() {
                Some(EntryKind::Data) => *last_op = (*last_op).max(Some(entry.op.get())),
                Some(EntryKind::Truncate) => *last_op = (*last_op).min(Some(entry.op.get())),
                Some(EntryKind::HardState) => {
                    let pos = u64::from(entry.offset.get()) + ENTRY_HEADER_BYTES as u64;
                    let len = u64::from(entry.payload_len.get());
                    let bytes = window.get(pos, len)?;
                    if pos + len <= end
                        && bytes.len() as u64 == len
                        && crc32fast::hash(bytes) == entry.payload_checksum.get()
                    {
                        hard_state = Some((entry.op.get(), bytes.to_vec()));
                    }
                }
                _ => {}
            }
            Ok(())
        },
    )?;
    Ok(hard_state)
}

/// Calls `visit` on every entry of `segment` between `from` and `to` whose
/// header verifies, in order, stepping over bytes that are not one. A
/// segment whose own header is damaged is walked with `journal_id` (the
/// journal's, when known; every entry names its generation and offset
/// too), or not at all.
fn walk_entries(
    path: &Path,
    segment: &SegmentReport,
    from: u64,
    to: u64,
    journal_id: Option<[u8; 16]>,
    mut visit: impl FnMut(&EntryHeader, &mut Window<'_>) -> io::Result<()>,
) -> io::Result<()> {
    let (journal_id, segment_bytes) = match (segment.header, journal_id) {
        (Some(header), _) => (header.journal_id, header.segment_bytes),
        (None, Some(journal_id)) => (journal_id, segment.file_bytes),
        (None, None) => return Ok(()),
    };
    let file = crate::inspect::open_regular(path)?;
    let to = to.min(segment.file_bytes);
    let mut window = Window::new(&file, segment.file_bytes);
    let mut pos = from.next_multiple_of(ENTRY_ALIGN_BYTES);
    while pos + ENTRY_HEADER_BYTES as u64 <= to {
        let bytes = window.get(pos, ENTRY_HEADER_BYTES as u64)?;
        if bytes.len() < ENTRY_HEADER_BYTES || bytes[4..8] != ENTRY_MAGIC.to_le_bytes() {
            pos += ENTRY_ALIGN_BYTES;
            continue;
        }
        match check_entry_header(
            bytes,
            &journal_id,
            segment.generation,
            pos,
            segment_bytes,
            ENTRY_BYTES_MAX_LIMIT,
        ) {
            Ok(entry) => {
                visit(&entry, &mut window)?;
                pos += entry.footprint();
            }
            Err(_) => pos += ENTRY_ALIGN_BYTES,
        }
    }
    Ok(())
}

/// Carries out a [`Plan`] in the order of the module docs.
struct Executor {
    plan: Plan,
    changes: usize,
    changes_max: usize,
}

impl Executor {
    fn dir(&self) -> &Path {
        &self.plan.report.dir
    }

    /// Counts one change; stops (as a crash would) past the budget.
    fn change(&mut self) -> Result<(), SalvageError> {
        if self.changes >= self.changes_max {
            return Err(SalvageError::Interrupted {
                dir: self.dir().to_path_buf(),
                steps: self.changes,
            });
        }
        self.changes += 1;
        Ok(())
    }

    fn io_error(
        &self,
        op: &'static str,
        path: &Path,
        committed: bool,
    ) -> impl FnOnce(io::Error) -> SalvageError {
        let dir = self.dir().to_path_buf();
        let quarantine = self.plan.report.quarantine.clone();
        let path = path.to_path_buf();
        move |source| SalvageError::Io {
            state: if committed {
                format!(
                    "The journal is salvaged (its new superblock is durable); only the final \
                     report in {} could not be written",
                    quarantine.display()
                )
            } else {
                format!(
                    "The new superblock was not written, so the journal still refuses to open \
                     as before; files moved so far are intact in {} (moving them back restores \
                     the old state). Run salvage again to finish: it finds the same cut",
                    quarantine.display()
                )
            },
            dir,
            op,
            path,
            source,
        }
    }

    fn execute(mut self) -> Result<SalvageReport, SalvageError> {
        let quarantine = self.plan.report.quarantine.clone();
        let root = quarantine
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        // 2. The folder.
        self.change()?;
        // The levels `create_dir_all` makes, deepest first: each one's
        // entry is in its parent, which is synced below.
        let created: Vec<PathBuf> = root
            .ancestors()
            .take_while(|dir| !dir.as_os_str().is_empty() && !dir.exists())
            .map(Path::to_path_buf)
            .collect();
        std::fs::create_dir_all(&root).map_err(self.io_error("create directory", &root, false))?;
        let folder = create_folder(&quarantine).map_err(self.io_error(
            "create directory",
            &quarantine,
            false,
        ))?;
        if folder != quarantine {
            // The name was taken (two salvages within a millisecond).
            self.plan.report.quarantine = folder.clone();
            for f in self
                .plan
                .report
                .moved
                .iter_mut()
                .chain(self.plan.report.copied.iter_mut())
            {
                if let Some(name) = f.to.file_name().map(|n| n.to_os_string()) {
                    f.to = folder.join(name);
                }
            }
        }
        sync_dir(&root).map_err(self.io_error("fsync directory", &root, false))?;
        for dir in &created {
            let parent = match dir.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            sync_dir(parent).map_err(self.io_error("fsync directory", parent, false))?;
        }
        // 3. The report, marked started.
        self.change()?;
        self.plan.report.state = SalvageState::Started;
        self.write_reports(false)?;
        // 4. Copies of what stays in place but changes meaning.
        for f in self.plan.report.copied.clone() {
            self.change()?;
            copy_synced(&f.from, &f.to).map_err(self.io_error("copy", &f.from, false))?;
        }
        if !self.plan.report.copied.is_empty() {
            sync_dir(&folder).map_err(self.io_error("fsync directory", &folder, false))?;
        }
        // 5. Moves.
        for f in self.plan.report.moved.clone() {
            self.change()?;
            std::fs::rename(&f.from, &f.to).map_err(self.io_error("rename", &f.from, false))?;
        }
        if !self.plan.report.moved.is_empty() {
            self.change()?;
            sync_dir(&folder).map_err(self.io_error("fsync directory", &folder, false))?;
            let dir = self.dir().to_path_buf();
            sync_dir(&dir).map_err(self.io_error("fsync directory", &dir, false))?;
        }
        // The superblock about to be written records where every kept
        // segment's data ends, which says every byte before it is durable:
        // make it so first (the last process may have died with writes
        // finished but not synced).
        for kept in self.plan.report.kept.clone() {
            std::fs::File::open(&kept.path)
                .and_then(|file| file.sync_data())
                .map_err(self.io_error("fdatasync", &kept.path, false))?;
        }
        if !self.plan.report.kept.is_empty() {
            let dir = self.dir().to_path_buf();
            sync_dir(&dir).map_err(self.io_error("fsync directory", &dir, false))?;
        }
        // 6. Commit: the superblock.
        self.change()?;
        let sb = &self.plan.report.superblock;
        let body = sb.superblock.encode();
        let dir = self.dir().to_path_buf();
        let path = dir.join(SUPERBLOCK_FILE_NAME);
        if self.plan.rewrite_in_place {
            // The copy holding the state in use is written last, as every
            // update does: the other one may be the damaged copy, and a
            // crash while writing the good one would leave none.
            let newest_copy = std::fs::read(&path)
                .ok()
                .and_then(|bytes| superblock::decode(&bytes, SuperblockKind::Journal).ok())
                .map_or(superblock::SUPERBLOCK_COPIES - 1, |chosen| {
                    chosen.newest_copy
                });
            superblock::write_file_blocking_keeping(
                &path,
                false,
                SuperblockKind::Journal,
                sb.sequence,
                &body,
                newest_copy,
            )
            .map_err(|f| self.io_error(f.op, &path, false)(f.source))?;
        } else {
            debug_assert!(
                !self.plan.superblock_exists
                    || self.plan.report.moved.iter().any(|f| f.from == path)
            );
            let temp = dir.join(SUPERBLOCK_TEMP_NAME);
            superblock::write_file_blocking(
                &temp,
                true,
                SuperblockKind::Journal,
                sb.sequence,
                &body,
            )
            .map_err(|f| self.io_error(f.op, &temp, false)(f.source))?;
            std::fs::rename(&temp, &path).map_err(self.io_error("rename", &temp, false))?;
            sync_dir(&dir).map_err(self.io_error("fsync directory", &dir, false))?;
        }
        // 7. The report, marked completed.
        self.change()?;
        self.plan.report.state = SalvageState::Completed;
        self.write_reports(true)?;
        Ok(self.plan.report)
    }

    /// Writes both report files (through a temporary name, then renamed)
    /// and fsyncs the folder.
    fn write_reports(&self, committed: bool) -> Result<(), SalvageError> {
        let report = &self.plan.report;
        let folder = &report.quarantine;
        for (name, contents) in [
            (REPORT_TEXT_NAME, report.text()),
            (REPORT_JSON_NAME, report.json()),
        ] {
            let path = folder.join(name);
            let temp = folder.join(format!("{name}.tmp"));
            write_synced(&temp, contents.as_bytes()).map_err(self.io_error(
                "write report",
                &temp,
                committed,
            ))?;
            std::fs::rename(&temp, &path).map_err(self.io_error("rename", &temp, committed))?;
        }
        sync_dir(folder).map_err(self.io_error("fsync directory", folder, committed))
    }
}

/// Creates `path` as a new directory, or a sibling with `.N` appended if
/// it exists; returns the one created.
fn create_folder(path: &Path) -> io::Result<PathBuf> {
    let mut candidate = path.to_path_buf();
    for attempt in 1..=FOLDER_ATTEMPTS_MAX {
        match std::fs::create_dir(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let mut name = path.as_os_str().to_os_string();
                name.push(format!(".{attempt}"));
                candidate = PathBuf::from(name);
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{} and {FOLDER_ATTEMPTS_MAX} variants exist",
            path.display()
        ),
    ))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Copies `from` to the new file `to` and syncs it.
fn copy_synced(from: &Path, to: &Path) -> io::Result<()> {
    let mut source = File::open(from)?;
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    io::copy(&mut source, &mut target)?;
    target.sync_all()
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DDTHH<sep>MM<sep>SS.mmmZ`
/// (UTC; `-` as the separator makes it a portable file name).
fn utc(unix_ms: u64, sep: &str) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}{sep}{:02}{sep}{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// Just enough JSON for the report file (the journal crate has no JSON
/// dependency).
enum Json {
    Null,
    Bool(bool),
    Num(u64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(&'static str, Json)>),
}

impl Json {
    fn is_scalar(&self) -> bool {
        !matches!(self, Json::Arr(_) | Json::Obj(_))
    }

    fn write(&self, out: &mut String, indent: usize) {
        let pad = |out: &mut String, n: usize| out.extend(std::iter::repeat_n(' ', n));
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) => out.push_str(&n.to_string()),
            Json::Str(s) => write_json_string(out, s),
            Json::Arr(items) if items.iter().all(Json::is_scalar) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out, indent);
                }
                out.push(']');
            }
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    pad(out, indent + 2);
                    item.write(out, indent + 2);
                }
                out.push('\n');
                pad(out, indent);
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    pad(out, indent + 2);
                    write_json_string(out, key);
                    out.push_str(": ");
                    value.write(out, indent + 2);
                }
                out.push('\n');
                pad(out, indent);
                out.push('}');
            }
        }
    }
}

fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_format() {
        assert_eq!(utc(0, ":"), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123, "-"), "2000-02-29T00-00-00.123Z");
        assert_eq!(utc(1_700_000_000_000, ":"), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        Json::Obj(vec![
            ("a", Json::Str("x\"y\\z\n\u{1}".into())),
            (
                "b",
                Json::Arr(vec![Json::Num(1), Json::Null, Json::Bool(true)]),
            ),
            ("c", Json::Arr(vec![])),
            (
                "d",
                Json::Arr(vec![Json::Arr(vec![Json::Num(1), Json::Num(2)])]),
            ),
        ])
        .write(&mut out, 0);
        assert_eq!(
            out,
            "{\n  \"a\": \"x\\\"y\\\\z\\n\\u0001\",\n  \"b\": [1, null, true],\n  \"c\": [],\n  \"d\": [\n    [1, 2]\n  ]\n}"
        );
    }
}
