//! The cache builder: limits, watermarks, intervals. Every setter documents
//! its default and valid range; [`CacheBuilder::open`] validates and returns
//! [`Error::Config`] rather than clamping silently.

use std::path::PathBuf;
use std::time::Duration;

use crate::disk::{CacheDisk, RootedDisk};

use crate::error::{Error, Result};
use crate::format::{TRACKER_CHUNK_ENTRIES_DEFAULT, TRACKER_CHUNK_ENTRIES_MAX};

/// Default byte limit: 1 GiB.
pub const BYTES_LIMIT_DEFAULT: u64 = 1 << 30;
/// Default object limit.
pub const OBJECTS_LIMIT_DEFAULT: u64 = 1_000_000;
/// Largest object limit (the tracker indexes objects with `u32`).
pub const OBJECTS_LIMIT_MAX: u64 = 100_000_000;
/// Default free-space floor: 0, off. Set one in production so the cache
/// stops growing before the filesystem fills (ENOSPC is handled, but late).
pub const MIN_FREE_BYTES_DEFAULT: u64 = 0;
/// Default reservation chunk while a staging file grows: 1 MiB.
pub const CHUNK_BYTES_DEFAULT: u64 = 1 << 20;
/// Smallest reservation chunk: 4 KiB.
pub const CHUNK_BYTES_MIN: u64 = 4 << 10;
/// Largest reservation chunk: 256 MiB.
pub const CHUNK_BYTES_MAX: u64 = 256 << 20;
/// Default low watermark: trims go down to 80% of the limits.
pub const LOW_WATERMARK_PERCENT_DEFAULT: u8 = 80;
/// Default trim threshold: a background trim starts above 90% of a limit.
pub const TRIM_THRESHOLD_PERCENT_DEFAULT: u8 = 90;
/// Default shortest time between the end of one trim and the start of the
/// next.
pub const TRIM_INTERVAL_MIN_DEFAULT: Duration = Duration::from_secs(1);
/// Range of `trim_interval_min`.
pub const TRIM_INTERVAL_MIN_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(3600));
/// Default time `put` and staging appends wait for space.
pub const RESERVATION_WAIT_DEFAULT: Duration = Duration::from_secs(5);
/// Longest `reservation_wait`.
pub const RESERVATION_WAIT_MAX: Duration = Duration::from_secs(3600);
/// Default period of tracker persistence.
pub const TRACKER_PERSIST_INTERVAL_DEFAULT: Duration = Duration::from_secs(30);
/// Range of `tracker_persist_interval`.
pub const TRACKER_PERSIST_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(86_400));

/// How big the cache may grow, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BytesLimit {
    /// An absolute number of bytes (at least 1).
    Bytes(u64),
    /// A percentage (1..=100) of the size of the filesystem holding the
    /// cache, resolved once at open.
    PercentOfFilesystem(u8),
}

impl From<u64> for BytesLimit {
    fn from(bytes: u64) -> BytesLimit {
        BytesLimit::Bytes(bytes)
    }
}

/// Validated settings (byte limit still unresolved).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) dir: PathBuf,
    pub(crate) bytes_limit: BytesLimit,
    pub(crate) objects_limit: u64,
    pub(crate) min_free_bytes: u64,
    pub(crate) chunk_bytes: u64,
    pub(crate) low_watermark_percent: u8,
    pub(crate) trim_threshold_percent: u8,
    pub(crate) trim_interval_min: Duration,
    pub(crate) reservation_wait: Duration,
    pub(crate) tracker_persist_interval: Duration,
    pub(crate) tracker_chunk_entries: u32,
}

/// Builds a [`crate::Cache`]; see [`crate::Cache::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `open` is awaited"]
pub struct CacheBuilder<S: CacheDisk = RootedDisk> {
    pub(crate) cfg: Config,
    /// The disk, if given ([`CacheBuilder::disk`]); otherwise the open makes
    /// the real one.
    pub(crate) disk: Option<S>,
    #[cfg(feature = "sim")]
    pub(crate) faults: Option<std::rc::Rc<crate::faults::Faults>>,
}

impl CacheBuilder {
    pub(crate) fn new(dir: impl Into<PathBuf>) -> CacheBuilder {
        CacheBuilder {
            disk: None,
            cfg: Config {
                dir: dir.into(),
                bytes_limit: BytesLimit::Bytes(BYTES_LIMIT_DEFAULT),
                objects_limit: OBJECTS_LIMIT_DEFAULT,
                min_free_bytes: MIN_FREE_BYTES_DEFAULT,
                chunk_bytes: CHUNK_BYTES_DEFAULT,
                low_watermark_percent: LOW_WATERMARK_PERCENT_DEFAULT,
                trim_threshold_percent: TRIM_THRESHOLD_PERCENT_DEFAULT,
                trim_interval_min: TRIM_INTERVAL_MIN_DEFAULT,
                reservation_wait: RESERVATION_WAIT_DEFAULT,
                tracker_persist_interval: TRACKER_PERSIST_INTERVAL_DEFAULT,
                tracker_chunk_entries: TRACKER_CHUNK_ENTRIES_DEFAULT,
            },
            #[cfg(feature = "sim")]
            faults: None,
        }
    }
}

impl<S: CacheDisk> CacheBuilder<S> {
    /// The disk the cache keeps its files on, instead of the real one
    /// ([`RootedDisk`], made at open): the simulated disk
    /// ([`ringstore_journal::storage::MemStorage`]) for the model checker
    /// and tests that cut the power. `dir` must be a path on it.
    pub fn disk<T: CacheDisk>(self, disk: T) -> CacheBuilder<T> {
        CacheBuilder {
            cfg: self.cfg,
            disk: Some(disk),
            #[cfg(feature = "sim")]
            faults: self.faults,
        }
    }

    /// Byte limit: absolute (`1 << 30`, or `BytesLimit::Bytes`) or
    /// `BytesLimit::PercentOfFilesystem(1..=100)`. Default
    /// [`BYTES_LIMIT_DEFAULT`].
    pub fn bytes_limit(mut self, limit: impl Into<BytesLimit>) -> Self {
        self.cfg.bytes_limit = limit.into();
        self
    }

    /// Object limit, 1..=[`OBJECTS_LIMIT_MAX`]. Default
    /// [`OBJECTS_LIMIT_DEFAULT`].
    pub fn objects_limit(mut self, objects: u64) -> Self {
        self.cfg.objects_limit = objects;
        self
    }

    /// Free bytes the filesystem must keep: a reservation that would leave
    /// less waits (and asks for a trim). 0 turns the floor off. Default
    /// [`MIN_FREE_BYTES_DEFAULT`].
    pub fn min_free_bytes(mut self, bytes: u64) -> Self {
        self.cfg.min_free_bytes = bytes;
        self
    }

    /// Reservation chunk while a staging file grows,
    /// [`CHUNK_BYTES_MIN`]..=[`CHUNK_BYTES_MAX`]. Default
    /// [`CHUNK_BYTES_DEFAULT`].
    pub fn chunk_bytes(mut self, bytes: u64) -> Self {
        self.cfg.chunk_bytes = bytes;
        self
    }

    /// Trims stop at this percent of each limit (minus outstanding
    /// reservations), 1..=100 and at most the trim threshold. Default
    /// [`LOW_WATERMARK_PERCENT_DEFAULT`].
    pub fn low_watermark_percent(mut self, percent: u8) -> Self {
        self.cfg.low_watermark_percent = percent;
        self
    }

    /// A background trim starts when `used + reserved` passes this percent
    /// of a limit, 1..=100. Default [`TRIM_THRESHOLD_PERCENT_DEFAULT`].
    pub fn trim_threshold_percent(mut self, percent: u8) -> Self {
        self.cfg.trim_threshold_percent = percent;
        self
    }

    /// Shortest pause between the end of one trim and the start of the next,
    /// in [`TRIM_INTERVAL_MIN_RANGE`]. Default [`TRIM_INTERVAL_MIN_DEFAULT`].
    pub fn trim_interval_min(mut self, interval: Duration) -> Self {
        self.cfg.trim_interval_min = interval;
        self
    }

    /// How long `put` and staging appends wait for space before
    /// [`Error::ReservationTimeout`], up to [`RESERVATION_WAIT_MAX`] (0 means
    /// "do not wait"). Default [`RESERVATION_WAIT_DEFAULT`].
    pub fn reservation_wait(mut self, wait: Duration) -> Self {
        self.cfg.reservation_wait = wait;
        self
    }

    /// How often the access tracker is persisted (if it changed), in
    /// [`TRACKER_PERSIST_INTERVAL_RANGE`]. Default
    /// [`TRACKER_PERSIST_INTERVAL_DEFAULT`].
    pub fn tracker_persist_interval(mut self, interval: Duration) -> Self {
        self.cfg.tracker_persist_interval = interval;
        self
    }

    /// Entries per tracker-file chunk, 1..=[`TRACKER_CHUNK_ENTRIES_MAX`].
    /// Default [`TRACKER_CHUNK_ENTRIES_DEFAULT`].
    pub fn tracker_chunk_entries(mut self, entries: u32) -> Self {
        self.cfg.tracker_chunk_entries = entries;
        self
    }

    /// Fault-injection hooks (feature `sim` only).
    #[cfg(feature = "sim")]
    pub fn faults(mut self, faults: std::rc::Rc<crate::faults::Faults>) -> Self {
        self.faults = Some(faults);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let c = &self.cfg;
        let bad = |field: &'static str, reason: String| Err(Error::Config { field, reason });
        if c.dir.as_os_str().is_empty() {
            return bad("dir", "empty path".into());
        }
        match c.bytes_limit {
            BytesLimit::Bytes(0) => return bad("bytes_limit", "must be at least 1".into()),
            BytesLimit::PercentOfFilesystem(p) if p == 0 || p > 100 => {
                return bad("bytes_limit", format!("percent {p} not in 1..=100"))
            }
            _ => {}
        }
        if c.objects_limit == 0 || c.objects_limit > OBJECTS_LIMIT_MAX {
            return bad(
                "objects_limit",
                format!("{} not in 1..={OBJECTS_LIMIT_MAX}", c.objects_limit),
            );
        }
        if !(CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(&c.chunk_bytes) {
            return bad(
                "chunk_bytes",
                format!(
                    "{} not in {CHUNK_BYTES_MIN}..={CHUNK_BYTES_MAX}",
                    c.chunk_bytes
                ),
            );
        }
        if c.trim_threshold_percent == 0 || c.trim_threshold_percent > 100 {
            return bad(
                "trim_threshold_percent",
                format!("{} not in 1..=100", c.trim_threshold_percent),
            );
        }
        if c.low_watermark_percent == 0 || c.low_watermark_percent > c.trim_threshold_percent {
            return bad(
                "low_watermark_percent",
                format!(
                    "{} not in 1..={} (the trim threshold)",
                    c.low_watermark_percent, c.trim_threshold_percent
                ),
            );
        }
        let (lo, hi) = TRIM_INTERVAL_MIN_RANGE;
        if !(lo..=hi).contains(&c.trim_interval_min) {
            return bad(
                "trim_interval_min",
                format!("{:?} not in {lo:?}..={hi:?}", c.trim_interval_min),
            );
        }
        if c.reservation_wait > RESERVATION_WAIT_MAX {
            return bad(
                "reservation_wait",
                format!("{:?} above {RESERVATION_WAIT_MAX:?}", c.reservation_wait),
            );
        }
        let (lo, hi) = TRACKER_PERSIST_INTERVAL_RANGE;
        if !(lo..=hi).contains(&c.tracker_persist_interval) {
            return bad(
                "tracker_persist_interval",
                format!("{:?} not in {lo:?}..={hi:?}", c.tracker_persist_interval),
            );
        }
        if c.tracker_chunk_entries == 0 || c.tracker_chunk_entries > TRACKER_CHUNK_ENTRIES_MAX {
            return bad(
                "tracker_chunk_entries",
                format!(
                    "{} not in 1..={TRACKER_CHUNK_ENTRIES_MAX}",
                    c.tracker_chunk_entries
                ),
            );
        }
        Ok(())
    }
}

/// `value * percent / 100`, without overflow.
pub(crate) fn percent_of(value: u64, percent: u8) -> u64 {
    let scaled = u128::from(value) * u128::from(percent) / 100;
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        CacheBuilder::new("/x").validate().unwrap();
    }

    #[test]
    fn out_of_range_values_are_typed_errors() {
        let cases = [
            CacheBuilder::new("/x").bytes_limit(0u64),
            CacheBuilder::new("/x").bytes_limit(BytesLimit::PercentOfFilesystem(0)),
            CacheBuilder::new("/x").bytes_limit(BytesLimit::PercentOfFilesystem(101)),
            CacheBuilder::new("/x").objects_limit(0),
            CacheBuilder::new("/x").objects_limit(OBJECTS_LIMIT_MAX + 1),
            CacheBuilder::new("/x").chunk_bytes(CHUNK_BYTES_MIN - 1),
            CacheBuilder::new("/x").low_watermark_percent(95),
            CacheBuilder::new("/x").trim_threshold_percent(0),
            CacheBuilder::new("/x").trim_interval_min(Duration::ZERO),
            CacheBuilder::new("/x").reservation_wait(Duration::from_secs(7200)),
            CacheBuilder::new("/x").tracker_persist_interval(Duration::ZERO),
            CacheBuilder::new("/x").tracker_chunk_entries(0),
            CacheBuilder::new(""),
        ];
        for builder in cases {
            assert!(
                matches!(builder.validate(), Err(Error::Config { .. })),
                "{builder:?}"
            );
        }
    }

    #[test]
    fn percent_of_does_not_overflow() {
        assert_eq!(percent_of(u64::MAX, 100), u64::MAX);
        assert_eq!(percent_of(1000, 80), 800);
    }
}
