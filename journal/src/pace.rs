//! Keeping background reads to a rate: the scrubbers of the journal
//! ([`crate::JournalBuilder::scrub_rate`]) and of the engine's snapshots.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

/// Holds reads to `bytes_per_second` on average since it was made.
#[derive(Debug)]
pub struct Pacer {
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

    /// Waits (on the reactor's timer) until reading more keeps the rate.
    pub async fn pace(&self) {
        let due = Duration::from_secs_f64(self.read as f64 / self.bytes_per_second.get() as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            glommio::timer::sleep(wait).await;
        }
    }

    /// Counts bytes read.
    pub fn note(&mut self, bytes: u64) {
        self.read += bytes;
    }
}
