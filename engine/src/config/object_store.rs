//! The object-store settings the builder takes
//! ([`ShardBuilder::object_store`](super::ShardBuilder::object_store)): the
//! store, the upload mode, retention, the cache. Plain values, here with
//! the builder's other settings so that the builder does not depend on the
//! upload extension that reads them (`ringstore::object_store`, which
//! re-exports them and says what each does).

use crate::error::{Error, Result};
use ringstore_cache::Remote;
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// Default snapshot generations kept in object storage.
pub const REMOTE_GENERATIONS_DEFAULT: usize = 3;
/// Most snapshot generations kept in object storage.
pub const REMOTE_GENERATIONS_MAX: usize = 1024;
/// Default first pause after a failed upload (doubling after each failure).
pub const UPLOAD_BACKOFF_MIN_DEFAULT: Duration = Duration::from_millis(100);
/// Default longest pause between upload attempts.
pub const UPLOAD_BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(30);
/// Range of both upload backoff settings.
pub const UPLOAD_BACKOFF_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(3600));
/// Default cache directory, relative to the shard directory.
pub const CACHE_DIR_DEFAULT: &str = "cache";
/// Default byte limit of a shard's cache (1 GiB).
pub const CACHE_BYTES_LIMIT_DEFAULT: u64 = ringstore_cache::BYTES_LIMIT_DEFAULT;
/// When the journal's watermark may pass a snapshot that is not in object
/// storage yet (see the module docs of `ringstore::object_store` for what each mode risks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UploadMode {
    /// The watermark never passes the newest uploaded snapshot: a lost disk
    /// loses nothing compacted. A store outage ends in backpressure.
    #[default]
    BeforeCompaction,
    /// Compaction goes on locally; uploads follow and may lag. A lost disk
    /// loses the ops above the newest uploaded snapshot.
    Background,
}

/// Object storage for a shard's snapshots; see the module docs of `ringstore::object_store`.
/// Cheap to clone (the [`Remote`] is a shared handle).
#[derive(Debug, Clone)]
#[must_use = "settings do nothing until given to ShardBuilder::object_store"]
pub struct ObjectStoreSettings {
    pub(crate) remote: Remote,
    pub(crate) mode: UploadMode,
    pub(crate) remote_generations: usize,
    pub(crate) cache_dir: PathBuf,
    pub(crate) cache_bytes_limit: u64,
    pub(crate) upload_backoff_min: Duration,
    pub(crate) upload_backoff_max: Duration,
}

impl ObjectStoreSettings {
    /// Snapshots to `remote`, with the defaults: [`UploadMode::BeforeCompaction`],
    /// [`REMOTE_GENERATIONS_DEFAULT`] generations, the cache in
    /// `<shard dir>/cache` limited to [`CACHE_BYTES_LIMIT_DEFAULT`].
    pub fn new(remote: Remote) -> ObjectStoreSettings {
        ObjectStoreSettings {
            remote,
            mode: UploadMode::default(),
            remote_generations: REMOTE_GENERATIONS_DEFAULT,
            cache_dir: PathBuf::from(CACHE_DIR_DEFAULT),
            cache_bytes_limit: CACHE_BYTES_LIMIT_DEFAULT,
            upload_backoff_min: UPLOAD_BACKOFF_MIN_DEFAULT,
            upload_backoff_max: UPLOAD_BACKOFF_MAX_DEFAULT,
        }
    }

    /// The upload mode. Default [`UploadMode::BeforeCompaction`].
    pub fn mode(mut self, mode: UploadMode) -> Self {
        self.mode = mode;
        self
    }

    /// Snapshot generations kept in object storage. Default
    /// [`REMOTE_GENERATIONS_DEFAULT`]; range 1 to [`REMOTE_GENERATIONS_MAX`].
    pub fn remote_generations(mut self, generations: usize) -> Self {
        self.remote_generations = generations;
        self
    }

    /// The shard's cache directory; a relative path is taken relative to
    /// the shard directory. Default [`CACHE_DIR_DEFAULT`]. Each shard needs
    /// its own (a cache directory is locked by the shard that opens it), so
    /// with several shards leave it relative.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = dir.into();
        self
    }

    /// Byte limit of the shard's cache. Default
    /// [`CACHE_BYTES_LIMIT_DEFAULT`]; at least 1. Uploaded snapshots join
    /// the cache by a hard link: they cost no extra disk while the local
    /// snapshot file exists, their full size once it is pruned, until the
    /// cache trims them (least recently used first). A snapshot larger than
    /// the cache is still uploaded, just not cached.
    pub fn cache_bytes_limit(mut self, bytes: u64) -> Self {
        self.cache_bytes_limit = bytes;
        self
    }

    /// Pause after the first failed upload (doubling after each failure,
    /// each drawn from the upper half of its step:
    /// [`Backoff`](ringstore_cache::remote::Backoff)) and its cap. Defaults
    /// [`UPLOAD_BACKOFF_MIN_DEFAULT`] and
    /// [`UPLOAD_BACKOFF_MAX_DEFAULT`], each within [`UPLOAD_BACKOFF_RANGE`],
    /// the first at most the second.
    pub fn upload_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.upload_backoff_min = first;
        self.upload_backoff_max = max;
        self
    }

    /// The object store.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// The upload mode.
    pub fn upload_mode(&self) -> UploadMode {
        self.mode
    }

    /// Generations kept in object storage.
    pub fn generations(&self) -> usize {
        self.remote_generations
    }

    /// The cache directory of the shard in `shard_dir`.
    pub fn cache_dir_for(&self, shard_dir: &Path) -> PathBuf {
        shard_dir.join(&self.cache_dir)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |setting: &'static str, value: String, reason: String| {
            Err(Error::InvalidConfig {
                setting,
                value,
                reason,
            })
        };
        if !(1..=REMOTE_GENERATIONS_MAX).contains(&self.remote_generations) {
            return invalid(
                "object_store remote_generations",
                self.remote_generations.to_string(),
                format!("1 to {REMOTE_GENERATIONS_MAX}"),
            );
        }
        if self.cache_bytes_limit == 0 {
            return invalid(
                "object_store cache_bytes_limit",
                "0".into(),
                "at least 1".into(),
            );
        }
        let (min, max) = UPLOAD_BACKOFF_RANGE;
        for backoff in [self.upload_backoff_min, self.upload_backoff_max] {
            if backoff < min || backoff > max {
                return invalid(
                    "object_store upload_backoff",
                    format!("{backoff:?}"),
                    format!("{min:?} to {max:?}"),
                );
            }
        }
        if self.upload_backoff_min > self.upload_backoff_max {
            return invalid(
                "object_store upload_backoff",
                format!("{:?}", self.upload_backoff_min),
                format!("at most the cap {:?}", self.upload_backoff_max),
            );
        }
        Ok(())
    }
}
