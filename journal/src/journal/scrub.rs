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
//! `scrub_bytes`), and [`Journal::scrub_damage`].
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
/// Damage kept for [`Journal::scrub_damage`] (the counter counts all).
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
    /// Damage the scrubber found, oldest first (at most
    /// [`SCRUB_DAMAGE_KEPT`]; `JournalStats::scrub_damage` counts all).
    pub fn scrub_damage(&self) -> Vec<Damage> {
        self.shared.scrub_damage.borrow().clone()
    }
}

/// The scrubber task: passes over the segments, oldest first, until the
/// journal is closed or dropped.
pub(super) async fn run_scrubber<S: Storage>(
    shared: Weak<Shared<S>>,
    bytes_per_second: std::num::NonZeroU64,
) {
    let mut pacer = Pacer::new(bytes_per_second);
    let mut after = 0;
    loop {
        let target = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let state = shared.state.borrow();
            if state.closing {
                return;
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
            // A pass is over.
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if after > 0 {
                shared.state.borrow_mut().stats.scrub_passes += 1;
            }
            drop(shared);
            after = 0;
            glommio::timer::sleep(SCRUB_PASS_PAUSE).await;
            continue;
        };
        after = target.generation;
        let outcome = scrub_segment(&shared, &target, &mut pacer).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let retired = !shared
            .state
            .borrow()
            .segments
            .iter()
            .any(|s| s.generation == target.generation);
        match outcome {
            _ if retired => {}
            Ok(None) => {}
            Ok(Some(damage)) => shared.report_scrub_damage(damage),
            Err(error) => {
                tracing::warn!(
                    path = %target.path.display(),
                    %error,
                    "the scrubber could not read a segment; it tries again next pass"
                );
                shared.state.borrow_mut().stats.scrub_read_errors += 1;
            }
        }
    }
}

/// Scans one segment up to `target.end`, at the pacer's rate: its damage,
/// if any. Stops early (`Ok(None)`) once the journal is closed or dropped.
async fn scrub_segment<S: Storage>(
    shared: &Weak<Shared<S>>,
    target: &Target<S::File>,
    pacer: &mut Pacer,
) -> std::io::Result<Option<Damage>> {
    let damage = |offset, reason: String| {
        Some(Damage {
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
        return Ok(None);
    }
    let block = target.file.read_at(0, BLOCK_BYTES as usize).await?;
    pacer.note(block.len() as u64);
    if let Some(shared) = shared.upgrade() {
        shared.state.borrow_mut().stats.scrub_bytes += block.len() as u64;
    }
    let header = match check_segment_header(&block, target.generation) {
        SegmentHeaderStatus::Valid(header) => header,
        SegmentHeaderStatus::Damaged { offset, reason } => return Ok(damage(offset, reason)),
        _ => return Ok(damage(0, "segment header does not verify".into())),
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
                        return Ok(None);
                    }
                    window_start = align_down(pos, BLOCK_BYTES);
                    let want = align_up(end, BLOCK_BYTES).max(window_start + SCRUB_READ_BYTES);
                    let bytes = target
                        .file
                        .read_at(window_start, (want - window_start) as usize)
                        .await?;
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
                return Ok(damage(offset, reason))
            }
            Step::Done(_) => return Ok(None),
        };
    }
}

impl<S: Storage> Shared<S> {
    /// Records damage the scrubber found (once per place).
    fn report_scrub_damage(&self, damage: Damage) {
        let place = (damage.path.clone(), damage.offset);
        if !self.scrub_reported.borrow_mut().insert(place) {
            return;
        }
        let mut kept = self.scrub_damage.borrow_mut();
        tracing::error!(
            path = %damage.path.display(),
            offset = damage.offset,
            reason = %damage.reason,
            "the scrubber found damage in the journal: reading the entries there fails; \
             `ringstore wal verify` reports it and `ringstore wal salvage` cuts at it"
        );
        self.state.borrow_mut().stats.scrub_damage += 1;
        if kept.len() == SCRUB_DAMAGE_KEPT {
            kept.remove(0);
        }
        kept.push(damage);
    }
}
