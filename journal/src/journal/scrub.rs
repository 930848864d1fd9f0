//! The scrubber: re-reads every segment, every byte, at a configured rate
//! ([`crate::JournalBuilder::scrub_rate`]), with the full scan of `ringstore
//! wal verify` ([`SegmentScanner::new`]).
//!
//! Recovery reads a vouched-for write's first header, index and padding,
//! not its payloads (see the `recovery` module): a payload damaged at rest
//! is found by the first read of its entry. The scrubber finds it before
//! that read, and finds it in entries nobody reads again (below the
//! watermark, or not yet replayed). Damage is reported, never repaired or
//! cut: a log line (error level) naming the file, offset and reason, the
//! counters in [`JournalStats`] (`scrub_damage`, `scrub_passes`,
//! `scrub_bytes`), and [`Journal::scrub_damage`]. A block that cannot be
//! read (a latent media error) is reported the same way, with its offset
//! (found by reading the failed range again a block at a time), and
//! counted in `scrub_read_errors`; [`Journal::scrub_pass`] runs a pass on
//! demand and returns both kinds of finding.
//!
//! Each segment is scanned up to the end that was durable when its scan
//! began (a closed segment's end, the active segment's durable end), so
//! every byte scanned is vouched for and any fault is damage. A segment
//! retired while it is scanned is forgotten; a read error skips the rest of
//! the segment (logged) and is retried on the next pass.

use super::*;
use crate::pace::Pacer;
use crate::verify::SegmentScanner;
use crate::verify::{check_segment_header, Damage, SegmentHeaderStatus, SegmentOutcome, Step};
use std::time::Duration;

/// Bytes read at a time.
const SCRUB_READ_BYTES: u64 = 1 << 20;
/// Findings kept for [`Journal::scrub_damage`], damage and unreadable
/// blocks alike (the counters count every one: `scrub_damage` and
/// `scrub_read_errors` in [`JournalStats`]).
pub const SCRUB_DAMAGE_KEPT: usize = 16;
/// Pause between two passes (so a journal that holds little is not read
/// over and over).
const SCRUB_PASS_PAUSE: Duration = Duration::from_millis(100);

/// One segment to scrub, as the journal had it when its scan began.
struct Target<F> {
    generation: u64,
    path: PathBuf,
    file: Rc<F>,
    end: u64,
}

impl<S: Storage> Journal<S> {
    /// What the scrubber found, oldest first, each place once: checksum
    /// damage, and blocks that fail every read (their `reason` starts with
    /// "unreadable"); at most [`SCRUB_DAMAGE_KEPT`].
    pub fn scrub_damage(&self) -> Vec<Damage> {
        self.shared.scrub_damage.borrow().clone()
    }
}

/// What one scrub pass found ([`Journal::scrub_pass`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubPass {
    /// Segments scanned (to their durable end, or to the first finding).
    pub segments: u64,
    /// Checksum damage: the first place in each damaged segment.
    pub damage: Vec<Damage>,
    /// Places that could not be read: the first unreadable block of each
    /// segment a read failed in (the rest of that segment waits for the
    /// next pass). Its `reason` carries the I/O error.
    pub unreadable: Vec<Damage>,
    /// Segments whose scan a read error cut short although every block of
    /// the failed read then read alone (a transient error): the offset of
    /// the failed read, and the error. Not scanned past it in this pass.
    pub cut_short: Vec<Damage>,
}

impl<S: Storage> Journal<S> {
    /// Runs one scrub pass now, besides any background one
    /// ([`crate::JournalBuilder::scrub_rate`]), and returns what it found;
    /// each finding is also reported as the background scrubber reports it
    /// (log, [`JournalStats`], [`Journal::scrub_damage`]). Unpaced: it
    /// reads as fast as the disk gives, so on a busy shard prefer the
    /// background scrubber's rate. `Err(Error::Closed)` if the journal
    /// closes before the pass ends.
    pub async fn scrub_pass(&self) -> Result<ScrubPass> {
        let mut pacer = Pacer::new(std::num::NonZeroU64::MAX);
        scrub_pass(&Rc::downgrade(&self.shared), &mut pacer)
            .await
            .ok_or(Error::Closed)
    }
}

/// The scrubber task: passes over the segments, oldest first, until the
/// journal is closed or dropped.
pub(super) async fn run_scrubber<S: Storage>(
    shared: Weak<Shared<S>>,
    bytes_per_second: std::num::NonZeroU64,
) {
    let mut pacer = Pacer::new(bytes_per_second);
    loop {
        if scrub_pass(&shared, &mut pacer).await.is_none() {
            return;
        }
        glommio::timer::sleep(SCRUB_PASS_PAUSE).await;
    }
}

/// One pass over the segments, oldest first, each finding reported; `None`
/// once the journal is closed or dropped.
async fn scrub_pass<S: Storage>(shared: &Weak<Shared<S>>, pacer: &mut Pacer) -> Option<ScrubPass> {
    let mut pass = ScrubPass::default();
    let mut after = 0;
    loop {
        let target = {
            let shared = shared.upgrade()?;
            let state = shared.state.borrow();
            if state.closing {
                return None;
            }
            state
                .segments
                .iter()
                .find(|s| s.generation > after)
                .map(|s| Target {
                    generation: s.generation,
                    path: s.path.clone(),
                    file: s.file.clone(),
                    end: s.durable_end.min(s.write_pos),
                })
        };
        let Some(target) = target else {
            if pass.segments > 0 {
                shared.upgrade()?.state.borrow_mut().stats.scrub_passes += 1;
            }
            return Some(pass);
        };
        after = target.generation;
        let outcome = scrub_segment(shared, &target, pacer).await;
        let shared = shared.upgrade()?;
        let retired = !shared
            .state
            .borrow()
            .segments
            .iter()
            .any(|s| s.generation == target.generation);
        if retired {
            continue;
        }
        pass.segments += 1;
        match outcome {
            Scanned::Clean => {}
            Scanned::Damaged(damage) => {
                shared.report_scrub_damage(&damage);
                pass.damage.push(damage);
            }
            Scanned::Unreadable(place) => {
                shared.report_unreadable(&place);
                pass.unreadable.push(place);
            }
            Scanned::ReadFailed { offset, error } => {
                tracing::warn!(
                    path = %target.path.display(),
                    offset,
                    %error,
                    "a scrubber read failed, and every block of it read back alone: \
                     a transient error; the scrubber reads the segment again next pass"
                );
                shared.state.borrow_mut().stats.scrub_read_errors += 1;
                pass.cut_short.push(Damage {
                    path: target.path.clone(),
                    offset,
                    reason: error.to_string(),
                });
            }
        }
    }
}

/// How the scan of one segment ended.
enum Scanned {
    /// Up to its end, or stopped because the journal closed or the segment
    /// was retired.
    Clean,
    /// Checksum damage (the first in the segment).
    Damaged(Damage),
    /// A block that fails every read (the first in the segment).
    Unreadable(Damage),
    /// A read failed but each of its blocks read alone did not.
    ReadFailed { offset: u64, error: std::io::Error },
}

/// Reads `len` bytes at `pos` of the segment, naming the first block that
/// fails every read if the read fails (see
/// [`crate::storage::read_locating_unreadable`]); stops locating once
/// `go_on()` turns false.
async fn read_or_locate<F: StorageFile>(
    target: &Target<F>,
    pos: u64,
    len: usize,
    go_on: &dyn Fn() -> bool,
) -> std::result::Result<F::ReadBuf, Scanned> {
    match crate::storage::read_locating_unreadable(&*target.file, pos, len, go_on).await {
        Ok(bytes) => Ok(bytes),
        Err(error) => Err(match crate::storage::UnreadableBlock::in_error(&error) {
            Some(block) => Scanned::Unreadable(Damage {
                path: target.path.clone(),
                offset: block.offset,
                reason: format!("unreadable: {}", block.source),
            }),
            None if !go_on() => Scanned::Clean,
            None => Scanned::ReadFailed { offset: pos, error },
        }),
    }
}

/// Scans one segment up to `target.end`, at the pacer's rate: its first
/// finding, if any. Stops early ([`Scanned::Clean`]) once the journal is
/// closed or dropped, or the segment retired.
async fn scrub_segment<S: Storage>(
    shared: &Weak<Shared<S>>,
    target: &Target<S::File>,
    pacer: &mut Pacer,
) -> Scanned {
    let damage = |offset, reason: String| {
        Scanned::Damaged(Damage {
            path: target.path.clone(),
            offset,
            reason,
        })
    };
    // Still to be scrubbed: the journal open, the segment not retired (so
    // that a retirement or a close does not wait on this scan's handle).
    let open = || {
        shared.upgrade().is_some_and(|s| {
            let state = s.state.borrow();
            !state.closing
                && state
                    .segments
                    .iter()
                    .any(|segment| segment.generation == target.generation)
        })
    };
    if !pacer.pace(&open).await {
        return Scanned::Clean;
    }
    let block = match read_or_locate(target, 0, BLOCK_BYTES as usize, &open).await {
        Ok(block) => block,
        Err(failed) => return failed,
    };
    pacer.note(block.len() as u64);
    if let Some(shared) = shared.upgrade() {
        shared.state.borrow_mut().stats.scrub_bytes += block.len() as u64;
    }
    let header = match check_segment_header(&block, target.generation) {
        SegmentHeaderStatus::Valid(header) => header,
        SegmentHeaderStatus::Damaged { offset, reason } => return damage(offset, reason),
        _ => return damage(0, "segment header does not verify".into()),
    };
    let mut scanner = SegmentScanner::new(&header, Some(target.end));
    let (mut window_start, mut window) = (0u64, Vec::new());
    let mut step = scanner.step(None);
    loop {
        step = match step {
            Step::Read {
                pos, len, again, ..
            } => {
                let end = pos.saturating_add(len).min(target.end.max(pos));
                let window_end = window_start + window.len() as u64;
                if again || pos < window_start || end > window_end {
                    if !pacer.pace(&open).await {
                        return Scanned::Clean;
                    }
                    window_start = align_down(pos, BLOCK_BYTES);
                    // A window of `SCRUB_READ_BYTES`, but never past the
                    // durable end's block: the bytes beyond were never
                    // vouched for, and an error there is no finding.
                    let want = align_up(end, BLOCK_BYTES).max(
                        (window_start + SCRUB_READ_BYTES).min(align_up(target.end, BLOCK_BYTES)),
                    );
                    let len = (want - window_start) as usize;
                    let bytes = match read_or_locate(target, window_start, len, &open).await {
                        Ok(bytes) => bytes,
                        Err(failed) => return failed,
                    };
                    pacer.note(bytes.len() as u64);
                    window = bytes.to_vec();
                    if let Some(shared) = shared.upgrade() {
                        shared.state.borrow_mut().stats.scrub_bytes += bytes.len() as u64;
                    }
                }
                let from = ((pos - window_start) as usize).min(window.len());
                let to = ((end - window_start) as usize).min(window.len()).max(from);
                scanner.step(Some(&window[from..to]))
            }
            Step::Entry(_) => scanner.step(None),
            Step::Done(SegmentOutcome::Damaged { offset, reason }) => {
                return damage(offset, reason)
            }
            Step::Done(_) => return Scanned::Clean,
        };
    }
}

impl<S: Storage> Shared<S> {
    /// Records damage the scrubber found (once per place).
    fn report_scrub_damage(&self, damage: &Damage) {
        let place = (damage.path.clone(), damage.offset, FindingKind::Damage);
        if !self.scrub_reported.borrow_mut().insert(place) {
            return;
        }
        tracing::error!(
            path = %damage.path.display(),
            offset = damage.offset,
            reason = %damage.reason,
            "the scrubber found damage in the journal: reading the entries there fails; \
             `ringstore wal verify` reports it and `ringstore wal salvage` cuts at it"
        );
        self.state.borrow_mut().stats.scrub_damage += 1;
        self.keep_scrub_finding(damage);
    }

    /// Records a block the scrubber could not read: counted each time a
    /// pass meets it (the rest of its segment waits for the next pass),
    /// logged and kept once per place.
    fn report_unreadable(&self, place: &Damage) {
        self.state.borrow_mut().stats.scrub_read_errors += 1;
        if !self.scrub_reported.borrow_mut().insert((
            place.path.clone(),
            place.offset,
            FindingKind::Unreadable,
        )) {
            return;
        }
        tracing::error!(
            path = %place.path.display(),
            offset = place.offset,
            reason = %place.reason,
            "the scrubber cannot read a block of the journal: reading the entries there \
             fails; `ringstore wal verify` reports it"
        );
        self.keep_scrub_finding(place);
    }

    fn keep_scrub_finding(&self, finding: &Damage) {
        let mut kept = self.scrub_damage.borrow_mut();
        if kept.len() == SCRUB_DAMAGE_KEPT {
            kept.remove(0);
        }
        kept.push(finding.clone());
    }
}

/// The two kinds of scrubber finding, so that a place reported as one is
/// still reported as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum FindingKind {
    Damage,
    Unreadable,
}
