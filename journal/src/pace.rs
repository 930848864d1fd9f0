//! Keeping background I/O out of the foreground's way: reads held to a
//! rate ([`Pacer`]: the scrubbers of the journal,
//! [`crate::JournalBuilder::scrub_rate`], and of the engine's snapshots),
//! and writes that give way while foreground work waits ([`Pacing`]: the
//! zero-fill of a spare segment, the engine's snapshot writes).

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

/// Most unused reading time a pacer saves up: after an idle spell (a pause
/// between passes, a journal that held little) it reads at full speed for
/// at most this long before the rate holds again.
pub const PACE_SAVED_MAX: Duration = Duration::from_millis(200);

/// Longest single sleep while pacing: between two, the caller's `go_on`
/// is asked again (a close, a retired segment).
const PACE_SLEEP_MAX: Duration = Duration::from_millis(50);

/// Holds reads to `bytes_per_second` on average.
#[derive(Debug)]
pub struct Pacer {
    /// When reading began, moved forward past idle time beyond
    /// [`PACE_SAVED_MAX`].
    started: Instant,
    read: u64,
    bytes_per_second: NonZeroU64,
}

impl Pacer {
    /// A pacer starting now.
    pub fn new(bytes_per_second: NonZeroU64) -> Pacer {
        Pacer {
            started: Instant::now(),
            read: 0,
            bytes_per_second,
        }
    }

    /// Waits (on the reactor's timer) until reading more keeps the rate,
    /// or until `go_on` says to stop: false then.
    pub async fn pace(&mut self, go_on: &dyn Fn() -> bool) -> bool {
        loop {
            if !go_on() {
                return false;
            }
            match self.wait_needed() {
                None => return true,
                Some(wait) => glommio::timer::sleep(wait.min(PACE_SLEEP_MAX)).await,
            }
        }
    }

    /// How long to wait before reading more, after forgiving idle time
    /// beyond [`PACE_SAVED_MAX`].
    fn wait_needed(&mut self) -> Option<Duration> {
        let due = Duration::from_secs_f64(self.read as f64 / self.bytes_per_second.get() as f64);
        let elapsed = self.started.elapsed();
        if let Some(idle) = elapsed.checked_sub(due + PACE_SAVED_MAX) {
            self.started += idle;
        }
        due.checked_sub(self.started.elapsed())
            .filter(|wait| !wait.is_zero())
    }

    /// Counts bytes read.
    pub fn note(&mut self, bytes: u64) {
        self.read += bytes;
    }
}

/// Longest pause after one paced write: a pause is not cut short when
/// foreground work starts waiting, so a write stalled for long at a low
/// [`Pacing`] share must not become a pause of seconds.
pub const PACING_PAUSE_MAX: Duration = Duration::from_millis(100);

/// How a background writer gives way to foreground work. While `busy()`
/// holds, the writer writes in small pieces (its own constant) and pauses
/// after each so that its share of the time is `busy_percent`: a write that
/// took 100 µs is followed by 300 µs without one at 25%. When idle, it
/// writes in large pieces at full speed.
#[derive(Clone, Copy)]
pub struct Pacing<'a> {
    busy: &'a dyn Fn() -> bool,
    busy_percent: u8,
}

impl<'a> Pacing<'a> {
    /// Never gives way: large pieces, back to back.
    pub const FULL_SPEED: Pacing<'static> = Pacing {
        busy: &|| false,
        busy_percent: 100,
    };

    /// Gives way while `busy()` holds, writing `busy_percent` of the time
    /// (clamped to 1-100; 100 only shrinks the writes).
    pub fn new(busy: &'a dyn Fn() -> bool, busy_percent: u8) -> Pacing<'a> {
        Pacing {
            busy,
            busy_percent: busy_percent.clamp(1, 100),
        }
    }

    /// Whether foreground work waits now.
    pub fn is_busy(&self) -> bool {
        (self.busy)()
    }

    /// The pause after a write that took `write` while busy, at most
    /// [`PACING_PAUSE_MAX`].
    pub fn pause_after(&self, write: Duration) -> Duration {
        let percent = u32::from(self.busy_percent);
        (write * (100 - percent) / percent).min(PACING_PAUSE_MAX)
    }
}

impl std::fmt::Debug for Pacing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacing")
            .field("busy_percent", &self.busy_percent)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_time_beyond_the_saved_maximum_is_not_read_at_full_speed() {
        let rate = NonZeroU64::new(1 << 20).unwrap();
        let mut pacer = Pacer::new(rate);
        // Ten idle seconds, then a second's worth of reading.
        pacer.started -= Duration::from_secs(10);
        assert_eq!(pacer.wait_needed(), None);
        pacer.note(1 << 20);
        let wait = pacer.wait_needed().expect("the rate holds again");
        // About a second, less the saved-up time.
        assert!(
            wait >= Duration::from_secs(1) - PACE_SAVED_MAX - Duration::from_millis(50),
            "{wait:?}"
        );
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
    }

    #[test]
    fn reading_under_the_rate_waits_for_nothing() {
        let mut pacer = Pacer::new(NonZeroU64::new(u64::MAX).unwrap());
        pacer.note(1 << 30);
        assert_eq!(pacer.wait_needed(), None);
    }
}
