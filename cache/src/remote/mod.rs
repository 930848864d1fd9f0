//! Object storage through the `object_store` crate, for shards that run on
//! glommio reactors.
//!
//! # Threading model
//!
//! `object_store` is written for tokio; a shard's reactor is glommio and
//! must never block. So every [`Remote`] owns one dedicated I/O thread
//! ([`THREAD_NAME`], see `thread.rs`) running a current-thread tokio runtime
//! that executes every call. [`Remote`] itself is a cheap, `Send + Sync +
//! Clone` handle: each shard keeps a clone, and a call is a boxed job sent
//! over a bounded queue (never waited on: a full queue is
//! [`RemoteError::Overloaded`]) whose reply comes back through a
//! `futures-channel` oneshot, which a glommio task awaits like any other
//! future. Downloads stream back through a bounded channel of chunks
//! ([`GET_CHUNKS_BUFFERED_MAX`]), so a large object is never all in memory
//! on either side. One thread is plenty: the work is network and disk
//! waiting, and `in_flight_max` calls proceed concurrently on it.
//!
//! # Deadlines
//!
//! Every call has one: `op_timeout` from the moment it is made (queueing
//! counts), extended by `bytes / rate_floor_bytes_per_sec` once the call
//! knows how many bytes it moves, so a large upload is not cut off by a
//! deadline sized for a small one. At the deadline the I/O thread drops the
//! call's work (cancelling its requests) and replies
//! [`RemoteError::Timeout`] naming the operation and the key. Nothing on a
//! reactor waits on a request longer than that: a server that accepts the
//! connection and never answers costs one deadline, not a hung shard.
//! Dropping a call's future cancels its work on the I/O thread too.
//!
//! # Retries
//!
//! Transient failures (network errors, 5xx, a refused connection) are
//! retried with exponential backoff and jitter ([`Backoff`]), at most `attempts_max` attempts and
//! never past the deadline; every retry is counted in [`RemoteStats`] and in
//! the `ringstore_remote_retries_total` counter of the `metrics` facade
//! (see `stats.rs` for the full list). Multipart uploads retry per part.
//!
//! # Writes never overwrite
//!
//! [`Remote::put`] and [`Remote::put_file`] refuse a key that already holds
//! an object with [`RemoteError::AlreadyExists`]: single `PUT`s use
//! `PutMode::Create` (`If-None-Match: *` on S3; a no-replace hard link on
//! the local filesystem); multipart uploads (anything above `part_bytes`)
//! check with a `HEAD` first, which races with a concurrent writer of the
//! same key (see [`CreateCheck`]). A put is atomic: no reader ever sees a
//! partial object.
//!
//! # Keys
//!
//! Object keys follow the cache's key rules ([`crate::Key`]: relative,
//! `/`-separated, no `.`/`..`/empty segments, no control characters, not
//! ending in `.part`), and no segment may end in `#<digits>` (the local
//! store's staging names); all checked before any request. [`crate::Tiered`] puts
//! every key of a shard under its domain: `<domain>/<key>`, so two domains
//! sharing a bucket never collide.
//!
//! # Backends
//!
//! - [`Backend::Local`] (the embedded default, [`Remote::local`]):
//!   `object_store`'s `LocalFileSystem` rooted at a directory, created if
//!   missing; writes are fsync'd before they are acknowledged.
//! - [`Backend::S3`] ([`Remote::s3`] with an [`S3Config`]): any
//!   S3-compatible endpoint (endpoint URL, region, bucket, access key,
//!   secret, `allow_http` for loopback test servers).
//! - [`Backend::Custom`]: any other `object_store` store. Google Cloud
//!   Storage and Azure Blob Storage come free with the crate: build this
//!   crate with feature `gcp` or `azure`, build the store with
//!   `object_store::gcp::GoogleCloudStorageBuilder` or
//!   `object_store::azure::MicrosoftAzureBuilder` (retries off), and pass
//!   it here with `conditional_put: true` (both enforce create-only writes).
//!
//! ```no_run
//! use ringstore_cache::{Remote, S3Config};
//! use std::time::Duration;
//!
//! // The default: a local directory.
//! let local = Remote::local("/var/lib/ringstore/objects").open()?;
//! // The switch: an S3-compatible endpoint.
//! let s3 = Remote::s3(
//!     S3Config::new("ringstore")
//!         .endpoint("http://127.0.0.1:9000")
//!         .credentials("access", "secret")
//!         .allow_http(true),
//! )
//! .op_timeout(Duration::from_secs(10))
//! .open()?;
//! # Ok::<(), ringstore_cache::RemoteError>(())
//! ```

mod backoff;
mod config;
mod error;
mod ops;
mod stats;
mod thread;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;
use object_store::path::Path as StorePath;
use object_store::ObjectStore;
use tokio::sync::mpsc;

pub use backoff::Backoff;
pub use config::{
    Backend, CreateCheck, RemoteBuilder, S3Config, ATTEMPTS_MAX_DEFAULT, ATTEMPTS_MAX_RANGE,
    BACKOFF_INITIAL_DEFAULT, BACKOFF_MAX_DEFAULT, BACKOFF_RANGE, IN_FLIGHT_MAX_DEFAULT,
    IN_FLIGHT_MAX_RANGE, LIST_ENTRIES_MAX, OP_TIMEOUT_DEFAULT, OP_TIMEOUT_RANGE, PARTS_MAX,
    PART_BYTES_DEFAULT, PART_BYTES_MAX, PART_BYTES_MIN, RATE_FLOOR_BYTES_PER_SEC_DEFAULT,
    RATE_FLOOR_BYTES_PER_SEC_RANGE, REQUESTS_QUEUED_MAX,
};
pub use error::{RemoteError, RemoteResult};
pub use ops::ObjectInfo;
pub use stats::RemoteStats;
pub use thread::{BLOCKING_DRAIN_WAIT, THREAD_NAME};

use config::Settings;
use ops::Source;
use stats::Counters;
use thread::{run_call, Ctx, Deadline, IoThread, Job};

/// Chunks of a download buffered between the I/O thread and the reader;
/// the download waits when the reader falls this far behind.
pub const GET_CHUNKS_BUFFERED_MAX: usize = 16;

/// What a caller read of a file it uploads with
/// [`Remote::put_file_checked`]: its size and the CRC-32 (ISO-HDLC, the
/// `crc32fast` crate's) of all of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDigest {
    /// The file's size in bytes.
    pub bytes: u64,
    /// The CRC-32 of those bytes, in order.
    pub crc32: u32,
}

impl FileDigest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> FileDigest {
        FileDigest {
            bytes: data.len() as u64,
            crc32: crc32fast::hash(data),
        }
    }
}

/// A handle to an object store served by a dedicated I/O thread (see the
/// module docs). `Send + Sync`; clones share the thread, the queue and the
/// counters. The thread stops when [`Remote::shutdown`] is called or the
/// last clone is dropped.
#[derive(Clone)]
pub struct Remote {
    shared: Arc<Shared>,
    op_timeout: Duration,
}

struct Shared {
    // Declared first: dropped (stop signalled) before the context it serves.
    thread: IoThread,
    ctx: Arc<Ctx>,
    describe: String,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("store", &self.shared.describe)
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

impl Remote {
    /// Starts configuring a remote on `backend`.
    pub fn builder(backend: Backend) -> RemoteBuilder {
        RemoteBuilder::new(backend)
    }

    /// The embedded default: a local directory (created if missing).
    pub fn local(root: impl Into<std::path::PathBuf>) -> RemoteBuilder {
        RemoteBuilder::new(Backend::Local { root: root.into() })
    }

    /// An S3-compatible endpoint.
    pub fn s3(config: S3Config) -> RemoteBuilder {
        RemoteBuilder::new(Backend::S3(config))
    }

    pub(crate) fn start(
        store: Arc<dyn ObjectStore>,
        settings: Settings,
        describe: String,
    ) -> RemoteResult<Remote> {
        let op_timeout = settings.op_timeout;
        let ctx = Arc::new(Ctx::new(store, settings, Arc::new(Counters::default())));
        let thread = IoThread::start(Arc::clone(&ctx))?;
        tracing::info!(store = describe, "object-store I/O thread started");
        Ok(Remote {
            shared: Arc::new(Shared {
                thread,
                ctx,
                describe,
            }),
            op_timeout,
        })
    }

    /// What the store is (`local:<dir>`, `s3:<endpoint>/<bucket>`, ...).
    pub fn describe(&self) -> &str {
        &self.shared.describe
    }

    /// This handle's `op_timeout`.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// A handle whose calls get `timeout` instead (same thread, same
    /// counters). Range [`OP_TIMEOUT_RANGE`].
    pub fn with_op_timeout(&self, timeout: Duration) -> RemoteResult<Remote> {
        let (min, max) = OP_TIMEOUT_RANGE;
        if timeout < min || timeout > max {
            return Err(RemoteError::Config {
                setting: "op_timeout",
                reason: format!("{timeout:?} is outside {min:?}..={max:?}"),
            });
        }
        Ok(Remote {
            shared: Arc::clone(&self.shared),
            op_timeout: timeout,
        })
    }

    /// The multipart part size (files above it go up in parts).
    pub fn part_bytes(&self) -> u64 {
        self.shared.ctx.settings.part_bytes
    }

    /// How writes refuse existing keys with this store.
    pub fn create_check(&self) -> CreateCheck {
        self.shared.ctx.settings.create_check
    }

    /// A snapshot of the counters (shared by all clones).
    pub fn stats(&self) -> RemoteStats {
        self.shared.ctx.counters.snapshot()
    }

    /// Stores `data` at `key`, which must not hold an object yet
    /// ([`RemoteError::AlreadyExists`]). Above `part_bytes` it goes up in
    /// parts (slices of `data`, no copy).
    pub async fn put(&self, key: &str, data: impl Into<Bytes>) -> RemoteResult<()> {
        let data = data.into();
        let path = store_path("put", key)?;
        let key = key.to_owned();
        self.call("put", key.clone(), move |ctx, deadline| {
            ops::put(ctx, "put", key, path, Source::Bytes(data), deadline)
        })
        .await
        .map(drop)
    }

    /// Uploads the local file at `file` to `key`, which must not hold an
    /// object yet. Files up to `part_bytes` go up in one `PUT`, larger ones
    /// in parts of `part_bytes`, read one at a time (one part in memory).
    /// The file must not change while it uploads (a size change is
    /// detected and fails the call). Returns the bytes uploaded.
    pub async fn put_file(&self, key: &str, file: impl AsRef<Path>) -> RemoteResult<u64> {
        self.upload_file(key, file.as_ref(), None).await
    }

    /// [`Remote::put_file`] of a file the caller has read and checked, as
    /// `digest` (its size and CRC-32): every attempt's bytes are checked
    /// against it before the object is completed (a single `PUT` is not
    /// sent, a multipart upload is aborted), so the store never gets other
    /// bytes than the checked ones, whatever happened to the file since
    /// ([`RemoteError::SourceChanged`]).
    pub async fn put_file_checked(
        &self,
        key: &str,
        file: impl AsRef<Path>,
        digest: FileDigest,
    ) -> RemoteResult<u64> {
        self.upload_file(key, file.as_ref(), Some(digest)).await
    }

    async fn upload_file(
        &self,
        key: &str,
        file: &Path,
        digest: Option<FileDigest>,
    ) -> RemoteResult<u64> {
        let path = store_path("put_file", key)?;
        let file = file.to_path_buf();
        let key = key.to_owned();
        self.call("put_file", key.clone(), move |ctx, deadline| {
            ops::put(
                ctx,
                "put_file",
                key,
                path,
                Source::File(file, digest),
                deadline,
            )
        })
        .await
    }

    /// Starts a download of `key`: returns once the store has answered,
    /// with the object's size; the bytes then stream through
    /// [`RemoteReader::next_chunk`]. [`RemoteError::NotFound`] if there is
    /// no such object.
    pub async fn get_stream(&self, key: &str) -> RemoteResult<RemoteReader> {
        let path = store_path("get", key)?;
        let (head_tx, head_rx) = oneshot::channel();
        let (chunk_tx, chunk_rx) = mpsc::channel(GET_CHUNKS_BUFFERED_MAX);
        let owned = key.to_owned();
        let done = self.spawn_call("get", key.to_owned(), move |ctx, deadline| {
            ops::get_stream(ctx, owned, path, deadline, head_tx, chunk_tx)
        })?;
        match head_rx.await {
            Ok(info) => Ok(RemoteReader {
                info,
                chunks: chunk_rx,
                done: Some(done),
                received_bytes: 0,
            }),
            // The call ended before announcing the object: its result says
            // why.
            Err(oneshot::Canceled) => match done.await {
                Ok(Err(error)) => Err(error),
                Ok(Ok(())) | Err(oneshot::Canceled) => Err(RemoteError::Shutdown),
            },
        }
    }

    /// Downloads `key` into memory; objects above `bytes_max` are refused
    /// ([`RemoteError::TooLarge`]) before their body is read.
    pub async fn get_bytes(&self, key: &str, bytes_max: u64) -> RemoteResult<Bytes> {
        let path = store_path("get", key)?;
        let owned = key.to_owned();
        self.call("get", key.to_owned(), move |ctx, deadline| {
            ops::get_bytes(ctx, owned, path, deadline, bytes_max)
        })
        .await
    }

    /// Downloads `key` into a new local file at `file` (which must not
    /// exist; removed again if the download fails), written and fsync'd on
    /// the I/O thread. Returns the bytes written.
    pub async fn get_to_file(&self, key: &str, file: impl AsRef<Path>) -> RemoteResult<u64> {
        let path = store_path("get", key)?;
        let owned = key.to_owned();
        let file = file.as_ref().to_path_buf();
        self.call("get", key.to_owned(), move |ctx, deadline| {
            ops::get_to_file(ctx, owned, path, deadline, file)
        })
        .await
    }

    /// What is at `key` ([`RemoteError::NotFound`] if nothing).
    pub async fn head(&self, key: &str) -> RemoteResult<ObjectInfo> {
        let path = store_path("head", key)?;
        let owned = key.to_owned();
        self.call("head", key.to_owned(), move |ctx, deadline| {
            ops::head(ctx, owned, path, deadline)
        })
        .await
    }

    /// Every object under `prefix` (whole segments: `a/b` lists `a/b/x`, not
    /// `a/bc`; `""` lists the whole store), in no particular order, at most
    /// [`LIST_ENTRIES_MAX`].
    pub async fn list(&self, prefix: &str) -> RemoteResult<Vec<ObjectInfo>> {
        let path = if prefix.is_empty() {
            None
        } else {
            Some(store_path("list", prefix)?)
        };
        let owned = prefix.to_owned();
        self.call("list", prefix.to_owned(), move |ctx, deadline| {
            ops::list(ctx, owned, path, deadline)
        })
        .await
    }

    /// Deletes `key`. Deleting a missing key succeeds.
    pub async fn delete(&self, key: &str) -> RemoteResult<()> {
        let path = store_path("delete", key)?;
        let owned = key.to_owned();
        self.call("delete", key.to_owned(), move |ctx, deadline| {
            ops::delete(ctx, owned, path, deadline)
        })
        .await
    }

    /// Stops the I/O thread for every clone and joins it: queued calls fail
    /// with [`RemoteError::Shutdown`], running ones finish (each within its
    /// deadline), then the runtime stops (waiting at most
    /// [`BLOCKING_DRAIN_WAIT`] for blocking file calls). Later calls on any
    /// clone fail with [`RemoteError::Shutdown`]. Awaiting does not block
    /// the executor; the final join happens after the thread has said it is
    /// done.
    pub async fn shutdown(&self) -> RemoteResult<()> {
        self.shared.thread.shutdown().await
    }

    /// Sends `work` to the I/O thread and returns the receiver of its
    /// result.
    fn spawn_call<T, F, Fut>(
        &self,
        op: &'static str,
        key: String,
        work: F,
    ) -> RemoteResult<oneshot::Receiver<RemoteResult<T>>>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Ctx>, Deadline) -> Fut + Send + 'static,
        Fut: Future<Output = RemoteResult<T>> + Send + 'static,
    {
        let (reply, receiver) = oneshot::channel();
        let deadline = Deadline::new(self.op_timeout);
        let job: Job = Box::new(move |ctx: Arc<Ctx>| {
            let fut = work(Arc::clone(&ctx), deadline.clone());
            Box::pin(run_call(ctx, op, key, deadline, fut, reply))
        });
        if let Err(error) = self.shared.thread.submit(job) {
            let reason = match error {
                RemoteError::Overloaded { .. } => "overloaded",
                _ => "shutdown",
            };
            self.shared.ctx.counters.rejected(reason);
            return Err(error);
        }
        Ok(receiver)
    }

    async fn call<T, F, Fut>(&self, op: &'static str, key: String, work: F) -> RemoteResult<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Ctx>, Deadline) -> Fut + Send + 'static,
        Fut: Future<Output = RemoteResult<T>> + Send + 'static,
    {
        let receiver = self.spawn_call(op, key, work)?;
        // Canceled: the thread dropped the call (shut down, or died).
        receiver.await.unwrap_or(Err(RemoteError::Shutdown))
    }
}

/// Validates `key` by the cache's key rules, then as an `object_store`
/// path.
pub(crate) fn store_path(op: &'static str, key: &str) -> RemoteResult<StorePath> {
    if let Err(crate::Error::KeyRejected { reason, .. }) = crate::Key::new(key) {
        return Err(RemoteError::KeyRejected {
            op,
            key: key.to_owned(),
            reason: reason.to_string(),
        });
    }
    // `object_store`'s local store names its staging files `<name>#<n>` and
    // refuses such keys; refused everywhere so every backend takes the same
    // keys.
    let staging_like = key.split('/').any(|segment| {
        segment
            .rsplit_once('#')
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    if staging_like {
        return Err(RemoteError::KeyRejected {
            op,
            key: key.to_owned(),
            reason: "a segment ends in `#<digits>`, reserved for the local store's staging files"
                .to_owned(),
        });
    }
    StorePath::parse(key).map_err(|e| RemoteError::KeyRejected {
        op,
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// A download in progress (see [`Remote::get_stream`]). Dropping it
/// cancels the download.
#[derive(Debug)]
pub struct RemoteReader {
    info: ObjectInfo,
    chunks: mpsc::Receiver<Bytes>,
    done: Option<oneshot::Receiver<RemoteResult<()>>>,
    received_bytes: u64,
}

impl RemoteReader {
    /// The object being read.
    pub fn info(&self) -> &ObjectInfo {
        &self.info
    }

    /// Its size.
    pub fn len(&self) -> u64 {
        self.info.bytes
    }

    /// True for an empty object.
    pub fn is_empty(&self) -> bool {
        self.info.bytes == 0
    }

    /// The next chunk, `None` once all [`RemoteReader::len`] bytes have
    /// come. A download cut short is an error ([`RemoteError::Timeout`],
    /// [`RemoteError::Unavailable`], [`RemoteError::Truncated`]), never a
    /// short object.
    pub async fn next_chunk(&mut self) -> RemoteResult<Option<Bytes>> {
        if let Some(chunk) = self.chunks.recv().await {
            self.received_bytes += chunk.len() as u64;
            return Ok(Some(chunk));
        }
        // The sender is gone: the call is over, its result says how.
        if let Some(done) = self.done.take() {
            match done.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error),
                Err(oneshot::Canceled) => return Err(RemoteError::Shutdown),
            }
        }
        if self.received_bytes != self.info.bytes {
            return Err(RemoteError::Truncated {
                key: self.info.key.clone(),
                received_bytes: self.received_bytes,
                expected_bytes: self.info.bytes,
            });
        }
        Ok(None)
    }
}
