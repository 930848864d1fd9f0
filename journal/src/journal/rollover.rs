//! Moving to the next segment: the spare prepared in the background, and
//! the superblock naming the new segment before any write goes to it.

use super::*;
use crate::pace::Pacing;
use crate::segment::{SparePacing, ZERO_FILL_BUSY_PERCENT};
use std::time::{Duration, Instant};

/// A journal that has issued no write for this long counts as idle: a
/// spare's zero-fill then goes at full speed.
pub const APPENDS_IDLE_AFTER: Duration = Duration::from_millis(50);

/// While appends run, a spare's zero-fill waits until the active segment
/// has used `1 / ZERO_FILL_HOLD_OFF_PART` of its room.
pub const ZERO_FILL_HOLD_OFF_PART: u64 = 4;

impl<S: Storage> Shared<S> {
    /// Starts preparing the next segment's file in the background, unless a
    /// spare exists or is being prepared.
    pub(super) fn prepare_spare(self: &Rc<Self>) {
        let generation = {
            let mut state = self.state.borrow_mut();
            if state.preparing || state.spare.is_some() || state.closing || state.poisoned.is_some()
            {
                return;
            }
            let Some(generation) = state.active().generation.checked_add(1) else {
                return;
            };
            state.preparing = true;
            generation
        };
        let shared = Rc::downgrade(self);
        let preparation = async move {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let filled = Cell::new(0);
            let segment_bytes = shared.config.segment_bytes;
            // The writes count last seen and when it last moved.
            let last_write = Cell::new((shared.state.borrow().stats.writes, None::<Instant>));
            // Appends are waiting on the device: a write in flight or
            // queued now, or one issued in the last `APPENDS_IDLE_AFTER`
            // (a closed-loop appender is between two writes for moments,
            // a light one for longer). With how much room the active
            // segment has left.
            let appending = || {
                let state = shared.state.borrow();
                let writes = state.stats.writes;
                let (seen, moved_at) = last_write.get();
                let moved_at = if writes != seen {
                    Some(Instant::now())
                } else {
                    moved_at
                };
                last_write.set((writes, moved_at));
                let recently = moved_at.is_some_and(|at| at.elapsed() < APPENDS_IDLE_AFTER);
                let used = state.segments.back().map_or(segment_bytes, |s| s.write_pos);
                let appending = state.writes_in_flight > 0 || !state.filling.is_empty() || recently;
                // Not when a rollover (or a failure) has stopped them.
                let stopped = state.closing || state.spare_awaited || state.poisoned.is_some();
                (appending && !stopped, segment_bytes.saturating_sub(used))
            };
            // Paced while appending, unless the spare falls behind: more
            // bytes left to fill than twice the active segment's room left
            // (the next rollover must find it ready).
            let busy = || {
                let (appending, room) = appending();
                appending && segment_bytes - filled.get().min(segment_bytes) <= 2 * room
            };
            // Not started at all while appending in the active segment's
            // first quarter: an idle spell may come to fill it at full speed.
            let hold_off = || {
                let (appending, room) = appending();
                appending && room > segment_bytes - segment_bytes / ZERO_FILL_HOLD_OFF_PART
            };
            let pacing = Pacing::new(&busy, ZERO_FILL_BUSY_PERCENT);
            let prepared = shared
                .spare_file(
                    generation,
                    SparePacing {
                        pacing,
                        hold_off: &hold_off,
                        filled: &filled,
                    },
                )
                .await;
            {
                let mut state = shared.state.borrow_mut();
                state.preparing = false;
                state.spare_awaited = false;
                match prepared {
                    Ok(spare) => state.spare = Some(spare),
                    // A file under the spare's name whose state is unknown
                    // (its removal failed): nothing may be created there.
                    Err(e) if e.poison => {
                        drop(state);
                        shared.poison(e.error);
                    }
                    // The rollover will try again in the foreground and
                    // report the error to the appenders.
                    Err(e) => tracing::warn!(error = %e.error, "preparing the next segment failed"),
                }
            }
            wake_all(&shared.spare_ready);
        };
        glommio::spawn_local(preparation).detach();
    }
    pub(super) async fn rollover(self: &Rc<Self>) -> Result<()> {
        let (generation, predecessor, watermark, active_file, active_path) = {
            let state = self.state.borrow();
            let active = state.active();
            let predecessor = Predecessor {
                generation: active.generation,
                end: active.write_pos,
            };
            let generation = next_generation(&self.config.dir, active.generation)?;
            let file = active.file.clone();
            (
                generation,
                predecessor,
                state.durable_watermark,
                file,
                active.path.clone(),
            )
        };
        if self.config.durability == Durability::NoSync {
            // The new segment's header vouches for everything before
            // `prev_end`: make it durable first.
            if let Err(e) = active_file.sync().await {
                return Err(self.poison(Error::io("fdatasync", &active_path, None, e)));
            }
        }
        // Take the spare prepared in the background (waiting for it if its
        // preparation is still running), or create the segment here.
        if self.state.borrow().preparing {
            self.state.borrow_mut().spare_awaited = true;
            while self.state.borrow().preparing {
                notified(&self.spare_ready).await;
            }
        }
        // The preparation may have poisoned the journal (a file it could
        // not remove lies under the new segment's name): nothing more is
        // written.
        if let Some(cause) = &self.state.borrow().poisoned {
            return Err(Error::Poisoned {
                cause: Box::new(cause.clone()),
            });
        }
        let spare = self.state.borrow_mut().spare.take();
        let journal_id = self.superblock.borrow().0.journal_id;
        let recycled = Cell::new(false);
        let created = match spare {
            Some(spare) if spare.generation == generation => {
                recycled.set(spare.recycled);
                activate_segment(
                    spare,
                    &self.config,
                    journal_id,
                    Some(predecessor),
                    watermark,
                )
                .await
            }
            _ => {
                let filled = Cell::new(0);
                match self
                    .spare_file(generation, SparePacing::full_speed(&filled))
                    .await
                {
                    Ok(file) => {
                        recycled.set(file.recycled);
                        activate_segment(
                            file,
                            &self.config,
                            journal_id,
                            Some(predecessor),
                            watermark,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match created {
            Ok(segment) => {
                // The superblock names the segment before any write goes to
                // it; recovery relies on that (see `verify`).
                self.update_superblock(|sb| record_rollover(sb, generation, Some(predecessor)))
                    .await?;
                {
                    let mut state = self.state.borrow_mut();
                    state.segments.push_back(segment);
                    state.needs_fresh_segment = false;
                    state.stats.segments_created += 1;
                    state.stats.segments_recycled += u64::from(recycled.get());
                }
                self.prepare_spare();
                Ok(())
            }
            Err(CreateError {
                error,
                poison: true,
            }) => Err(self.poison(error)),
            Err(CreateError {
                error,
                poison: false,
            }) => Err(error),
        }
    }
}

/// The generation after `generation`, or an error naming the directory if
/// the numbers ran out (only a hostile file name can get there).
pub(super) fn next_generation(dir: &Path, generation: u64) -> Result<u64> {
    generation.checked_add(1).ok_or_else(|| {
        Error::corruption(
            dir,
            0,
            format!("segment generation {generation} cannot be followed"),
        )
    })
}

/// Records a new last segment in a superblock: `generation` must now exist,
/// and its predecessor's data ends where the new segment's header says.
pub(super) fn record_rollover(
    sb: &mut JournalSuperblock,
    generation: u64,
    predecessor: Option<Predecessor>,
) {
    if sb.first_generation == 0 {
        sb.first_generation = generation;
    }
    sb.last_generation = generation;
    sb.ends.retain(|(g, _)| *g < generation);
    if let Some(p) = predecessor {
        sb.ends.retain(|(g, _)| *g != p.generation);
        sb.ends.push((p.generation, p.end));
    }
    // Only the newest are recorded (older segments' ends are in their
    // successors' headers): keep memory bounded too.
    let excess = sb.ends.len().saturating_sub(superblock::SEGMENT_ENDS_MAX);
    sb.ends.drain(..excess);
}
