//! The one retry policy for object storage: exponential backoff with
//! jitter, used by every remote call's retries and by the engine's upload
//! task.
//!
//! The n-th pause is drawn uniformly from the upper half of
//! `min(cap, first * 2^(n-1))` ("equal jitter"): it still grows with each
//! failure and never drops below half its step, but many shards that failed
//! together (one store outage) retry spread out instead of all at once.

use std::time::Duration;

/// Pauses before successive retries; see the module docs.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    /// Pauses taken since the start (or the last reset).
    taken: u32,
    random: fn() -> u64,
}

impl Backoff {
    /// Pauses from `first`, doubling up to `cap` (a `first` above `cap` is
    /// taken as `cap`).
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff::with_random(first, cap, crate::sys::random_u64)
    }

    /// [`Backoff::new`] drawing its jitter from `random` (tests).
    pub fn with_random(first: Duration, cap: Duration, random: fn() -> u64) -> Backoff {
        Backoff {
            first: first.min(cap),
            cap,
            taken: 0,
            random,
        }
    }

    /// The pause before the next retry; the step after it doubles (up to
    /// the cap).
    pub fn next_pause(&mut self) -> Duration {
        self.taken = self.taken.saturating_add(1);
        self.pause_before_retry(self.taken)
    }

    /// The pause before retry `n` (1: the first), for callers that count
    /// attempts themselves.
    pub fn pause_before_retry(&self, n: u32) -> Duration {
        let shift = n.saturating_sub(1).min(DOUBLINGS_MAX);
        let step = self.first.saturating_mul(1 << shift).min(self.cap);
        let half = step / 2;
        let spread = u64::try_from((step - half).as_nanos()).unwrap_or(u64::MAX);
        let jitter = match spread.checked_add(1) {
            Some(bound) => (self.random)() % bound,
            None => (self.random)(),
        };
        half.saturating_add(Duration::from_nanos(jitter)).min(step)
    }

    /// Starts over from the first pause (after a success).
    pub fn reset(&mut self) {
        self.taken = 0;
    }
}

/// Doublings past which the step stops growing before the cap applies
/// (2^16 times the first pause is past any sensible cap).
const DOUBLINGS_MAX: u32 = 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn lowest() -> u64 {
        0
    }

    fn highest() -> u64 {
        u64::MAX
    }

    #[test]
    fn pauses_double_within_their_jitter_up_to_the_cap() {
        let (first, cap) = (Duration::from_millis(100), Duration::from_millis(700));
        let mut low = Backoff::with_random(first, cap, lowest);
        let lows: Vec<_> = (0..5).map(|_| low.next_pause().as_millis()).collect();
        assert_eq!(lows, [50, 100, 200, 350, 350]);
        let mut high = Backoff::with_random(first, cap, highest);
        for _ in 0..5 {
            let pause = high.next_pause();
            assert!(pause <= cap, "{pause:?} above the cap");
        }
        let mut real = Backoff::new(first, cap);
        for step in [100, 200, 400, 700, 700] {
            let pause = real.next_pause().as_millis();
            assert!(
                (step / 2..=step).contains(&pause),
                "{pause} ms outside [{}, {step}]",
                step / 2
            );
        }
        real.reset();
        assert!(real.next_pause() <= first);
    }

    #[test]
    fn degenerate_settings_do_not_panic() {
        let mut zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.next_pause(), Duration::ZERO);
        let mut inverted = Backoff::new(Duration::from_secs(9), Duration::from_secs(1));
        assert!(inverted.next_pause() <= Duration::from_secs(1));
        let mut huge = Backoff::new(Duration::MAX, Duration::MAX);
        for _ in 0..3 {
            let _ = huge.next_pause();
        }
    }
}
