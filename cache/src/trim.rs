//! Trim: evicting least-recently-accessed objects.
//!
//! A trim removes objects oldest-access-first until both `used bytes` and
//! `used objects` are at or below the low watermark (`low_watermark_percent`
//! of each limit) minus what outstanding reservations hold and what waiting
//! reservation requests ask for — so space that is promised is also actually
//! free, and a trim started for a waiter makes room for it. After ENOSPC the byte target is lowered
//! further, to free at least the failed write's size or
//! [`ENOSPC_TRIM_PERCENT`] of the cache, whichever is more: the filesystem is
//! full even though the cache is under its own limit.
//!
//! Two passes:
//! - **fast** ([`TrimKind::Fast`]): walks the in-memory access list only;
//! - **exhaustive** ([`TrimKind::Exhaustive`]): first walks `objects/` on the
//!   blocking pool and reconciles — files on disk the tracker does not know
//!   are adopted (as the oldest, so they go first), tracked objects missing
//!   from disk are dropped, sizes are corrected — then evicts as above. Keys
//!   that change while the walk runs are left as they are, and so is a file
//!   larger than the byte limit (it is not adopted, nor its size taken:
//!   see [`WalkReport::refused`]).
//!
//! Trims never touch `*.part` files (a live staging file is not an object),
//! remove directories left empty (never `objects/` or the cache root), run one
//! at a time, and are throttled: one starts no sooner than
//! `trim_interval_min` after the previous one ended. Objects are unlinked
//! under their key lock, so a trim cannot delete an object a concurrent `put`
//! just renamed into place.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::cache::{request_trim, Shared};
use crate::config::percent_of;
use crate::disk::CacheDisk;
use crate::error::Result;

/// After ENOSPC, free at least this percent of the cache's bytes.
pub const ENOSPC_TRIM_PERCENT: u64 = 10;

/// Unlinks a trim keeps in flight at once (well under the metadata ring's
/// `URING_ENTRIES`, so foreground operations still get slots).
pub const TRIM_UNLINKS_IN_FLIGHT: usize = 4;

/// Unlink failures after which a trim gives up (the disk is in trouble).
pub const TRIM_UNLINK_ERRORS_MAX: u32 = 16;

/// Which passes a trim runs (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrimKind {
    /// In-memory access order only.
    Fast,
    /// Directory walk and reconciliation first.
    Exhaustive,
}

/// Why a trim runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    Manual,
    Background,
    NoSpace { needed_bytes: u64 },
}

/// What an exhaustive trim's walk found and fixed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WalkReport {
    /// Object files on disk.
    pub files_seen: u64,
    /// `*.part` files seen (and left alone).
    pub staging_seen: u64,
    /// Files on disk the tracker did not know, now tracked.
    pub untracked_added: u64,
    /// Tracked objects missing from disk, now dropped.
    pub missing_dropped: u64,
    /// Tracked sizes corrected from disk.
    pub resized: u64,
    /// Object files larger than the byte limit (or that would take the
    /// total past `u64::MAX` bytes), neither adopted nor resized: a tracked
    /// one keeps its tracked size (a read refuses it), an untracked one is
    /// left to the next startup, which removes it.
    pub refused: u64,
}

/// What a trim did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TrimReport {
    /// The passes run.
    pub kind: TrimKind,
    /// Objects removed.
    pub objects_removed: u64,
    /// Bytes removed.
    pub bytes_removed: u64,
    /// Byte target (low watermark minus reservations, lowered after ENOSPC).
    pub target_bytes: u64,
    /// Object target.
    pub target_objects: u64,
    /// Whether both targets were reached (not if every remaining object was
    /// busy, or unlinks kept failing).
    pub reached_target: bool,
    /// How long it waited for the throttle interval.
    pub throttled_for: Duration,
    /// The walk's findings, for an exhaustive trim.
    pub walk: Option<WalkReport>,
}

/// Runs one trim. `Ok(None)` if it did not run: the cache closed, or it was
/// throttled and `wait_throttle` is false (a background trim is then asked
/// for instead).
pub(crate) async fn run<S: CacheDisk>(
    shared: &Rc<Shared<S>>,
    kind: TrimKind,
    trigger: Trigger,
    wait_throttle: bool,
) -> Result<Option<TrimReport>> {
    let _guard = shared.trim_lock.lock().await;
    let mut throttled_for = Duration::ZERO;
    if let Some(end) = shared.trim_last_end.get() {
        let ready = end + shared.cfg.trim_interval_min;
        let now = Instant::now();
        if now < ready {
            if !wait_throttle {
                request_trim(&shared.trim_signal);
                return Ok(None);
            }
            shared.metrics.trims_throttled.inc();
            throttled_for = ready - now;
            glommio::timer::sleep(throttled_for).await;
        }
    }
    if shared.closed.get() {
        return Ok(None);
    }
    let result = run_locked(shared, kind, trigger, throttled_for).await;
    shared.trim_last_end.set(Some(Instant::now()));
    match kind {
        TrimKind::Fast => shared.metrics.trims_fast.inc(),
        TrimKind::Exhaustive => shared.metrics.trims_exhaustive.inc(),
    }
    match trigger {
        Trigger::Manual => {}
        Trigger::Background => shared.metrics.trims_background.inc(),
        Trigger::NoSpace { .. } => shared.metrics.trims_enospc.inc(),
    }
    result.map(Some)
}

async fn run_locked<S: CacheDisk>(
    shared: &Rc<Shared<S>>,
    kind: TrimKind,
    trigger: Trigger,
    throttled_for: Duration,
) -> Result<TrimReport> {
    let walk = match kind {
        TrimKind::Fast => None,
        TrimKind::Exhaustive => Some(reconcile(shared).await?),
    };
    let (target_bytes, target_objects) = targets(shared, trigger);
    let mut report = TrimReport {
        kind,
        objects_removed: 0,
        bytes_removed: 0,
        target_bytes,
        target_objects,
        reached_target: false,
        throttled_for,
        walk,
    };
    let mut dirs = BTreeSet::new();
    let mut errors = 0u32;
    'evict: loop {
        // Pick a batch of victims synchronously (accounting and tracker are
        // updated at once), then unlink them concurrently: each unlink is an
        // io-wq round trip, and pipelining them is most of a trim's speed.
        let mut batch = Vec::with_capacity(TRIM_UNLINKS_IN_FLIGHT);
        while batch.len() < TRIM_UNLINKS_IN_FLIGHT {
            let s = shared.ledger.state();
            if s.used_bytes <= target_bytes && s.used_objects <= target_objects {
                report.reached_target = true;
                break;
            }
            let victim = shared
                .tracker
                .borrow()
                .oldest_where(|key| shared.locks.is_locked(key));
            let Some((key, bytes)) = victim else {
                break;
            };
            let Some(key_guard) = shared.locks.try_lock(&key) else {
                break;
            };
            shared.log_trimmed(&key);
            if let Some(tracked) = shared.tracker.borrow_mut().remove(&key) {
                shared.ledger.sub_used(tracked, 1);
            }
            report.objects_removed += 1;
            report.bytes_removed += bytes;
            shared.metrics.objects_trimmed.inc();
            shared.metrics.bytes_trimmed.add(bytes);
            let mut rel: &str = &key;
            while let Some((parent, _)) = rel.rsplit_once('/') {
                dirs.insert(parent.to_owned());
                rel = parent;
            }
            batch.push((key, key_guard));
        }
        if batch.is_empty() {
            break;
        }
        let unlinks = batch.iter().map(|(key, _)| shared.unlink_rel(key, false));
        let results = futures_util::future::join_all(unlinks).await;
        for ((key, key_guard), result) in batch.into_iter().zip(results) {
            drop(key_guard);
            match result {
                Ok(()) => {}
                Err(e) if ringstore_journal::storage::errno(&e) == Some(libc::ENOENT) => {}
                Err(error) => {
                    errors += 1;
                    // The file stays on disk untracked; an exhaustive trim or
                    // the next startup adopts it again.
                    tracing::warn!(key = &*key, %error, "trim could not unlink an object");
                    if errors >= TRIM_UNLINK_ERRORS_MAX {
                        break 'evict;
                    }
                }
            }
        }
        if report.reached_target {
            break;
        }
        glommio::yield_if_needed().await;
    }
    let mut dirs: Vec<String> = dirs.into_iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    shared.remove_empty_dirs(&dirs).await;
    tracing::debug!(?report, "trim done");
    Ok(report)
}

fn targets<S: CacheDisk>(shared: &Shared<S>, trigger: Trigger) -> (u64, u64) {
    let s = shared.ledger.state();
    let low = shared.cfg.low_watermark_percent;
    let promised_bytes = s.reserved_bytes.saturating_add(s.waiting_bytes);
    let promised_objects = s.reserved_objects.saturating_add(s.waiting_objects);
    let mut bytes = percent_of(shared.bytes_limit, low).saturating_sub(promised_bytes);
    let objects = percent_of(shared.cfg.objects_limit, low).saturating_sub(promised_objects);
    if let Trigger::NoSpace { needed_bytes } = trigger {
        let free = needed_bytes.max(s.used_bytes / 100 * ENOSPC_TRIM_PERCENT);
        bytes = bytes.min(s.used_bytes.saturating_sub(free));
    }
    (bytes, objects)
}

/// The exhaustive pass's walk and reconciliation (see the module docs).
async fn reconcile<S: CacheDisk>(shared: &Rc<Shared<S>>) -> Result<WalkReport> {
    shared.tracker.borrow_mut().begin_walk();
    let walk = shared.walk(false).await;
    let changed = shared.tracker.borrow_mut().end_walk();
    let walk = walk?;
    let mut report = WalkReport {
        files_seen: walk.files.len() as u64,
        staging_seen: walk.staging.len() as u64,
        ..WalkReport::default()
    };
    let skip = |key: &str| changed.contains(key) || shared.locks.is_locked(key);
    {
        let mut tracker = shared.tracker.borrow_mut();
        for file in &walk.files {
            if skip(&file.key) {
                continue;
            }
            // The limit only: this walk reads no checksum attributes (a
            // read checks a file's size against its checksum first).
            let refused = file.bytes > shared.bytes_limit;
            match tracker.bytes_of(&file.key) {
                None => {
                    if refused || !shared.ledger.try_add_used(file.bytes, 1) {
                        report.refused += 1;
                        continue;
                    }
                    tracker.insert_oldest(&file.key, file.bytes, file.atime_ms);
                    report.untracked_added += 1;
                }
                Some(tracked) if tracked != file.bytes => {
                    let accounted = if file.bytes > tracked {
                        !refused && shared.ledger.try_add_used(file.bytes - tracked, 0)
                    } else {
                        shared.ledger.sub_used(tracked - file.bytes, 0);
                        true
                    };
                    if !accounted {
                        report.refused += 1;
                        continue;
                    }
                    tracker.set_bytes(&file.key, file.bytes);
                    report.resized += 1;
                }
                Some(_) => {}
            }
        }
        let on_disk: std::collections::HashSet<&str> =
            walk.files.iter().map(|f| f.key.as_str()).collect();
        let missing: Vec<Rc<str>> = tracker
            .iter_oldest_first()
            .filter(|o| !on_disk.contains(&*o.key) && !skip(&o.key))
            .map(|o| o.key)
            .collect();
        for key in missing {
            if let Some(bytes) = tracker.remove(&key) {
                shared.ledger.sub_used(bytes, 1);
                report.missing_dropped += 1;
            }
        }
    }
    if report.untracked_added + report.missing_dropped + report.resized + report.refused > 0 {
        tracing::warn!(?report, "exhaustive trim corrected the tracker from disk");
    }
    shared.remove_empty_dirs(&walk.dirs_deepest_first).await;
    Ok(report)
}
