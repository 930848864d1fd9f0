//! ringstore-cache: the per-shard local-disk cache that sits in front of
//! object storage, written for a thread-per-core (glommio) runtime.
//!
//! One [`Cache`] per shard, used from that shard's executor only (`!Send`).
//! What it gives:
//!
//! - **Limits** on bytes (absolute or a percent of the filesystem) and on
//!   objects, plus an optional free-disk floor.
//! - **Reservations** ([`Cache::reserve`]): RAII guards that merge, release
//!   what is unused on drop, and time out with a typed error; waiting never
//!   blocks the reactor.
//! - **Staging files** ([`Cache::create_staging`]): `*.part` files created
//!   with O_EXCL that reserve space in chunks as they grow and are committed
//!   with `linkat` + `unlinkat` (io_uring), never overwriting an object.
//! - **`put` / `get` / `contains` / `invalidate`**, every object checked
//!   on read against the size and CRC-32 its file carries (an extended
//!   attribute): a damaged object is an error, never served.
//! - **Trim** by least-recent access down to a low watermark, in the
//!   background above a threshold, after ENOSPC, or on request.
//! - **An access tracker** persisted periodically and at shutdown.
//! - **Startup recovery**: orphaned `.part` files removed, accounting rebuilt
//!   from disk (a file above the byte limit, or of another size than its
//!   checksum records, is removed rather than accounted).
//!
//! In front of object storage:
//!
//! - **[`Remote`]** ([`remote`]): `object_store` (the local filesystem by
//!   default, S3-compatible endpoints by config, GCS/Azure through the
//!   crate) on a dedicated I/O thread, behind a `Send + Sync + Clone` handle
//!   whose calls a glommio reactor awaits without blocking; every call has a
//!   deadline, transient failures are retried and counted, writes never
//!   overwrite.
//! - **[`Tiered`]** ([`tiered`]): one shard's objects under its domain
//!   (`<domain>/<key>`): reads from the cache first and download on a miss,
//!   writes stage, upload, then commit (large files join the cache by hard
//!   link: [`Cache::adopt`]).
//!
//! Everything it writes is described in `cache/FORMAT.md`; the module docs
//! of [`staging`], [`trim`] and [`reservation`] explain the protocols.
//!
//! ```no_run
//! use ringstore_cache::{Cache, TrimKind};
//!
//! glommio::LocalExecutorBuilder::default()
//!     .spawn(|| async move {
//!         let cache = Cache::builder("/var/cache/ringstore/shard-0")
//!             .bytes_limit(8u64 << 30)
//!             .objects_limit(1_000_000)
//!             .open()
//!             .await?;
//!         cache.put("segments/0001", b"bytes from object storage").await?;
//!         let object = cache.get("segments/0001").await?;
//!         assert_eq!(object.as_deref(), Some(&b"bytes from object storage"[..]));
//!         cache.trim(TrimKind::Fast).await?;
//!         cache.shutdown().await
//!     })
//!     .expect("executor")
//!     .join()
//!     .expect("join")
//!     .expect("cache");
//! ```

#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![warn(missing_docs)]

pub mod adopt;
mod cache;
mod config;
pub mod disk;
mod error;
#[cfg(feature = "sim")]
pub mod faults;
mod fence;
pub mod format;
mod fs;
mod key;
mod locks;
mod metrics;
pub mod remote;
pub mod reservation;
#[cfg(feature = "sim")]
pub mod sim;
pub mod staging;
#[allow(unsafe_code)]
mod sys;
pub mod tiered;
mod tracker;
pub mod trim;

pub use adopt::Adopted;
pub use cache::{Cache, Object, PENDING_UNLINKS_MAX, TRACKER_FILE_BYTES_MAX};
pub use config::{
    BytesLimit, CacheBuilder, BYTES_LIMIT_DEFAULT, CHUNK_BYTES_DEFAULT, CHUNK_BYTES_MAX,
    CHUNK_BYTES_MIN, LOW_WATERMARK_PERCENT_DEFAULT, MIN_FREE_BYTES_DEFAULT, OBJECTS_LIMIT_DEFAULT,
    OBJECTS_LIMIT_MAX, RESERVATION_WAIT_DEFAULT, RESERVATION_WAIT_MAX,
    TRACKER_PERSIST_INTERVAL_DEFAULT, TRACKER_PERSIST_INTERVAL_RANGE, TRIM_INTERVAL_MIN_DEFAULT,
    TRIM_INTERVAL_MIN_RANGE, TRIM_THRESHOLD_PERCENT_DEFAULT,
};
pub use error::{Error, KeyRejection, Result};
pub use fence::Fence;
pub use key::{Key, KEY_BYTES_MAX, KEY_DEPTH_MAX, KEY_SEGMENT_BYTES_MAX, STAGING_SUFFIX};
pub use metrics::CacheStats;
pub use remote::{
    Backend, CreateCheck, FileDigest, ObjectInfo, Remote, RemoteBuilder, RemoteError, RemoteReader,
    RemoteResult, RemoteStats, S3Config, LIST_ENTRIES_MAX, REQUESTS_QUEUED_MAX,
};
pub use reservation::{Reservation, FLOOR_RECHECK_INTERVAL, RESERVATION_WAITERS_MAX};
pub use staging::{Staging, WRITE_BUFFER_BYTES};
pub use tiered::{Tiered, TieredStats};
pub use trim::{TrimKind, TrimReport, WalkReport};
