//! A shard's objects: the local [`Cache`] in front of a [`Remote`] object
//! store, under the shard's domain.
//!
//! [`Tiered`] is per shard and `!Send`, like the cache it wraps; the remote
//! handle is shared with the other shards (it is `Send + Sync`) and its
//! calls run on the object-store I/O thread, so nothing here blocks the
//! reactor.
//!
//! # Key layout
//!
//! A key `k` of domain `d` (the shard's domain UUID string) is the object
//! `d/k` in the store *and* the cache key `d/k`, so two domains sharing a
//! bucket or a cache never collide, and a domain's objects are one prefix
//! to list, copy or delete.
//!
//! # Reads: cache first, download on a miss
//!
//! [`Tiered::get`] serves a cached object from local disk. On a miss it
//! streams the object from the store into a staging file
//! ([`Cache::create_staging`], `append` chunk by chunk as they arrive, so a
//! large object is never all in memory), commits it, and returns it; later
//! reads hit locally. Two concurrent misses of one key both download; the
//! second commit finds the first's object, checks it is the object it
//! downloaded, and is dropped. Any other file a commit finds at the key
//! (a stale copy an unlink failed to remove) is removed and the object
//! downloaded once more; what still holds the key then (a symlink, a
//! directory) is [`Error::StaleObjectFile`], never served. A cached copy
//! that fails its checksum (or reads with EIO) is dropped, counted
//! (`damaged_replaced`) and downloaded again: the store's copy is the one
//! kept.
//!
//! # Deletes and writes racing a download or a write
//!
//! A download, `put` and `put_file` take a [`crate::Fence`] on the key
//! before they touch the store, and their commit or adopt places nothing
//! ([`Error::Invalidated`], counted in `CacheStats::fenced_placements_refused`)
//! if the key was invalidated since: by [`Tiered::delete`], a write's
//! dropping of a stale copy, or a damaged copy's replacement. Without it a
//! download that streamed an object while a `delete` ran committed the
//! deleted object afterwards, and every later `get` served it. A download
//! so refused downloads again (finding nothing, or the new object); after
//! `DOWNLOAD_ATTEMPTS_MAX` (2) attempts `get` reads the store's object into
//! memory, uncached, and `get_path` returns the error (the engine's cold
//! restore then downloads straight to its file). A write
//! so refused has still succeeded (the store took it before the delete);
//! it is counted as an uncached write.
//!
//! # Writes: stage, upload, commit
//!
//! [`Tiered::put`] stages the bytes in the cache first (its space is
//! reserved before any upload), uploads them, then commits the staging
//! file. [`Tiered::put_file`] uploads a finished file and then adopts it
//! into the cache with a hard link ([`Cache::adopt`]; a copy across
//! filesystems). A key that already holds an object is refused with
//! [`RemoteError::AlreadyExists`] (inside [`Error::Remote`]); nothing is
//! cached then. Once the upload succeeded the write has succeeded: if the
//! cache cannot take the object (full, oversize, an I/O error) that is
//! logged and counted (`uncached_writes`), and the next read downloads it.
//! Any copy the cache still holds at the key is invalidated then: the
//! create-only upload found no object in the store, so that copy is stale
//! (the object left the store other than by [`Tiered::delete`]) and must
//! not be served in place of the new bytes. If the upload fails nothing is
//! cached and the staging file is removed, so a retry of the same write
//! starts clean.
//!
//! ```no_run
//! use std::rc::Rc;
//! use ringstore_cache::{Cache, Remote, Tiered};
//!
//! // One remote for the process (Send + Sync + Clone), one Tiered per shard.
//! let remote = Remote::local("/var/lib/ringstore/objects").open()?;
//! glommio::LocalExecutorBuilder::default()
//!     .spawn(move || async move {
//!         let cache = Rc::new(Cache::builder("/var/cache/ringstore/shard-0").open().await?);
//!         let domain = "6f1c0f64-5d4e-4a3b-9c2d-1e0f9a8b7c6d";
//!         let objects = Tiered::new(Rc::clone(&cache), remote.clone(), domain)?;
//!         objects.put("snapshots/0001", b"snapshot bytes").await?;
//!         let object = objects.get("snapshots/0001").await?; // a local hit
//!         assert_eq!(object.as_deref(), Some(&b"snapshot bytes"[..]));
//!         remote.shutdown().await?;
//!         Ok::<(), ringstore_cache::Error>(())
//!     })
//!     .expect("executor")
//!     .join()
//!     .expect("join")
//!     .expect("objects");
//! # Ok::<(), ringstore_cache::RemoteError>(())
//! ```

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

use ringstore_journal::storage::errno;

use crate::cache::{Cache, Object};
use crate::disk::{CacheDisk, RootedDisk};
use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::key::Key;
use crate::remote::{FileDigest, ObjectInfo, Remote, RemoteError};
use crate::staging::Staging;

/// Counters of one [`Tiered`] (the cache and the remote keep their own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TieredStats {
    /// `get`s served from the cache.
    pub hits: u64,
    /// Objects downloaded into the cache.
    pub downloads: u64,
    /// Bytes downloaded into the cache.
    pub downloaded_bytes: u64,
    /// `get`s of keys the store does not have.
    pub not_found: u64,
    /// Objects written (uploaded).
    pub puts: u64,
    /// Files added to the cache by a hard link after their upload.
    pub adopted_linked: u64,
    /// Files copied into the cache after their upload.
    pub adopted_copied: u64,
    /// Uploaded objects the cache could not take (full, oversize, I/O, a
    /// file changed after its upload's check).
    pub uncached_writes: u64,
    /// Cached copies found stale (the store had no object at their key, or
    /// a download found another file there) and invalidated.
    pub stale_invalidations: u64,
    /// `delete` calls.
    pub deletes: u64,
    /// Cached objects that failed their check (damaged, or without a
    /// checksum), dropped from the cache and downloaded again.
    pub damaged_replaced: u64,
}

#[derive(Default)]
struct Counters {
    hits: Cell<u64>,
    downloads: Cell<u64>,
    downloaded_bytes: Cell<u64>,
    not_found: Cell<u64>,
    puts: Cell<u64>,
    adopted_linked: Cell<u64>,
    adopted_copied: Cell<u64>,
    uncached_writes: Cell<u64>,
    stale_invalidations: Cell<u64>,
    deletes: Cell<u64>,
    damaged_replaced: Cell<u64>,
}

/// Downloads of one key a `get` or `get_path` makes: a commit that finds
/// a file at the key that is not the object removes it and downloads once
/// more.
const DOWNLOAD_ATTEMPTS_MAX: u32 = 2;

/// What the cache may hold at a key an upload's bytes did not reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CachedCopy {
    /// Nothing of this write: a copy there is stale.
    Stale,
    /// This write's, committed, but its directory fsync failed.
    Unsynced,
}

/// What one download did.
enum Downloaded {
    /// The store has no such object.
    NotFound,
    /// Committed to the cache.
    Committed,
    /// The key was invalidated (a delete, a write) while it downloaded:
    /// nothing committed, the bytes may be of an object gone from the store.
    Invalidated,
    /// A file was at the key already; the downloaded object's checksum.
    Conflict(FileDigest),
}

fn add(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().saturating_add(n));
}

/// One shard's cache-backed view of the object store (see the module docs).
pub struct Tiered<S: CacheDisk = RootedDisk> {
    cache: Rc<Cache<S>>,
    remote: Remote,
    domain: String,
    counters: Counters,
}

impl<S: CacheDisk> std::fmt::Debug for Tiered<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiered")
            .field("domain", &self.domain)
            .field("remote", &self.remote)
            .field("cache", &self.cache.dir())
            .finish()
    }
}

impl<S: CacheDisk> Tiered<S> {
    /// Puts `cache` in front of `remote` for the keys of `domain`, which
    /// must be one valid key segment (a UUID string is); otherwise
    /// [`Error::Config`] naming `domain`.
    pub fn new(cache: Rc<Cache<S>>, remote: Remote, domain: &str) -> Result<Tiered<S>> {
        if domain.contains('/') || Key::new(domain).is_err() {
            return Err(Error::Config {
                field: "domain",
                reason: format!("{domain:?} is not a single valid key segment"),
            });
        }
        Ok(Tiered {
            cache,
            remote,
            domain: domain.to_owned(),
            counters: Counters::default(),
        })
    }

    /// The domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The cache.
    pub fn cache(&self) -> &Rc<Cache<S>> {
        &self.cache
    }

    /// The remote.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// The object key (and cache key) of `key`: `<domain>/<key>`.
    pub fn object_key(&self, key: &str) -> Result<String> {
        Key::new(key)?;
        let full = format!("{}/{key}", self.domain);
        // The prefix can push a key past KEY_BYTES_MAX or KEY_DEPTH_MAX.
        Key::new(&full)?;
        // And the store's own rules, before anything is staged.
        crate::remote::store_path("key", &full)?;
        Ok(full)
    }

    /// A snapshot of this shard's counters.
    pub fn stats(&self) -> TieredStats {
        let c = &self.counters;
        TieredStats {
            hits: c.hits.get(),
            downloads: c.downloads.get(),
            downloaded_bytes: c.downloaded_bytes.get(),
            not_found: c.not_found.get(),
            puts: c.puts.get(),
            adopted_linked: c.adopted_linked.get(),
            adopted_copied: c.adopted_copied.get(),
            uncached_writes: c.uncached_writes.get(),
            stale_invalidations: c.stale_invalidations.get(),
            deletes: c.deletes.get(),
            damaged_replaced: c.damaged_replaced.get(),
        }
    }

    /// Reads `key`: from the cache, or downloaded into it first. `Ok(None)`
    /// if the store has no such object.
    pub async fn get(&self, key: &str) -> Result<Option<Object>> {
        let full = self.object_key(key)?;
        if let Some(object) = self.cached(&full).await? {
            add(&self.counters.hits, 1);
            return Ok(Some(object));
        }
        match self.download(&full).await {
            Ok(false) => return Ok(None),
            Ok(true) => {
                if let Some(object) = self.cached(&full).await? {
                    return Ok(Some(object));
                }
            }
            // Invalidated under every download (writes or deletes of the key
            // racing them): the store's object as it is now, uncached.
            Err(Error::Invalidated { .. }) => {}
            Err(error) => return Err(error),
        }
        // Trimmed (or found damaged) between the commit and the read (a cache under heavy
        // pressure), or invalidated under every download: serve it from memory this once.
        let bytes_max = self.cache.stats().bytes_limit;
        match self.remote.get_bytes(&full, bytes_max).await {
            Ok(bytes) => Ok(Some(Object::from_vec(bytes.to_vec()))),
            Err(RemoteError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Makes sure `key` is cached (downloading it on a miss) and returns
    /// the local path of its object, for callers that read it in place
    /// (mmap, sendfile). `Ok(None)` if the store has no such object. The
    /// path is valid until the object is trimmed or invalidated; this call
    /// does not count as an access for the trim order. The cached copy is
    /// read whole in steps and checked first (`Cache::check`): a damaged
    /// one is replaced by a new download before its path is handed out,
    /// and so is a file at the key the cache does not track (see the
    /// module docs): the path handed out is always of a file that was
    /// checked or just committed from the store's bytes.
    pub async fn get_path(&self, key: &str) -> Result<Option<PathBuf>> {
        let full = self.object_key(key)?;
        // Read in steps and checked here (the caller reads the file
        // itself): a damaged copy is replaced before its path is handed out.
        let checked = self.cache.check(&full).await;
        if self.replaced_if_damaged(&full, checked).await? == Some(true) {
            add(&self.counters.hits, 1);
        } else if !self.download(&full).await? {
            return Ok(None);
        }
        Ok(Some(self.cache.objects_dir().join(&full)))
    }

    /// The cached object at `full`, checked against its checksum (see
    /// [`Tiered::replaced_if_damaged`]).
    async fn cached(&self, full: &str) -> Result<Option<Object>> {
        let got = self.cache.get(full).await;
        Ok(self.replaced_if_damaged(full, got).await?.flatten())
    }

    /// A read of the cached copy of `full`: one that failed its check
    /// (damaged, or without a checksum) or could not be read (EIO) is
    /// dropped from the cache, logged and counted, and read as a miss
    /// (`Ok(None)`): the store holds the object, and the caller downloads it
    /// again.
    async fn replaced_if_damaged<T>(&self, full: &str, read: Result<T>) -> Result<Option<T>> {
        match read {
            Ok(value) => Ok(Some(value)),
            Err(error)
                if matches!(
                    &error,
                    Error::CorruptObject { .. } | Error::UnverifiableObject { .. }
                ) || matches!(&error, Error::Io { source, .. } if errno(source) == Some(libc::EIO)) =>
            {
                tracing::warn!(key = full, %error, "dropping the damaged cached copy; downloading the object again");
                self.cache.invalidate(full).await?;
                add(&self.counters.damaged_replaced, 1);
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Downloads `full` into the cache through a staging file. False if the
    /// store has no such object. A commit that finds a file at the key
    /// keeps it only if it reads whole as the downloaded object (a
    /// concurrent download of the key committed first). Any other file
    /// there (a stale copy an unlink failed to remove, one put there
    /// behind the cache's back) is removed and the object downloaded once
    /// more; then [`Error::StaleObjectFile`]. So no caller is handed a file
    /// that did not verify.
    async fn download(&self, full: &str) -> Result<bool> {
        let mut attempts = 0;
        // Bounded by DOWNLOAD_ATTEMPTS_MAX.
        loop {
            attempts += 1;
            let downloaded = match self.download_once(full).await? {
                Downloaded::NotFound => return Ok(false),
                Downloaded::Committed => return Ok(true),
                Downloaded::Invalidated if attempts >= DOWNLOAD_ATTEMPTS_MAX => {
                    return Err(Error::Invalidated {
                        key: full.to_owned(),
                    })
                }
                Downloaded::Invalidated => {
                    tracing::debug!(
                        key = full,
                        "the key was invalidated while it downloaded; downloading it again"
                    );
                    continue;
                }
                Downloaded::Conflict(downloaded) => downloaded,
            };
            if self.holds(full, downloaded).await? {
                return Ok(true);
            }
            let path = self.cache.objects_dir().join(full);
            if attempts >= DOWNLOAD_ATTEMPTS_MAX {
                return Err(Error::StaleObjectFile {
                    key: full.to_owned(),
                    path,
                });
            }
            tracing::warn!(key = full, path = %path.display(),
                "the file at the key is not the downloaded object; replacing it");
            if self.cache.invalidate(full).await? {
                add(&self.counters.stale_invalidations, 1);
            }
        }
    }

    /// Whether the cache holds the object of `digest` at `full`: a tracked
    /// copy, read whole, that matches its recorded checksum, which is
    /// `digest`. A damaged copy is dropped and counted as on a read.
    async fn holds(&self, full: &str, digest: FileDigest) -> Result<bool> {
        let checked = self.cache.checked_digest(full).await;
        let found = self.replaced_if_damaged(full, checked).await?.flatten();
        Ok(found == Some(digest))
    }

    /// One download of `full` into a staging file and its commit, fenced
    /// from before the store is asked (see [`crate::Fence`]): a delete or a
    /// write of the key while it runs leaves nothing of it cached.
    async fn download_once(&self, full: &str) -> Result<Downloaded> {
        let fence = self.cache.fence(full)?;
        let mut reader = match self.remote.get_stream(full).await {
            Ok(reader) => reader,
            Err(RemoteError::NotFound { .. }) => {
                add(&self.counters.not_found, 1);
                return Ok(Downloaded::NotFound);
            }
            Err(error) => return Err(error.into()),
        };
        let bytes_limit = self.cache.stats().bytes_limit;
        if reader.len() > bytes_limit {
            return Err(Error::Oversize {
                key: full.to_owned(),
                bytes: reader.len(),
                bytes_limit,
            });
        }
        let mut staging = self.cache.create_staging(full).await?;
        let streamed = async {
            staging.fence(fence)?;
            // Bounded by the object's size (the reader checks it).
            while let Some(chunk) = reader.next_chunk().await? {
                staging.append(&chunk).await?;
            }
            Ok::<(), Error>(())
        }
        .await;
        if let Err(error) = streamed {
            close_quietly(staging).await;
            return Err(error);
        }
        let digest = staging.digest();
        let downloaded = match staging.commit().await {
            Ok(()) => Downloaded::Committed,
            // Something is at the key already: the caller checks what.
            Err(Error::Conflict { .. }) => Downloaded::Conflict(digest),
            Err(Error::Invalidated { .. }) => return Ok(Downloaded::Invalidated),
            Err(error) => return Err(error),
        };
        add(&self.counters.downloads, 1);
        add(&self.counters.downloaded_bytes, reader.len());
        Ok(downloaded)
    }

    /// Writes `data` at `key` (stage, upload, commit; see the module docs).
    /// An existing key is refused with [`RemoteError::AlreadyExists`].
    pub async fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let full = self.object_key(key)?;
        // Before the upload: a delete after it must not find the commit
        // still to come (see `crate::Fence`).
        let fence = self.cache.fence(&full)?;
        let staging = match self.stage(&full, data, fence).await {
            Ok(staging) => Some(staging),
            Err(error) if is_capacity(&error) => {
                tracing::warn!(key = full, %error, "the cache cannot take this object; uploading it uncached");
                add(&self.counters.uncached_writes, 1);
                None
            }
            Err(error) => return Err(error),
        };
        if let Err(error) = self.remote.put(&full, Bytes::copy_from_slice(data)).await {
            if let Some(staging) = staging {
                close_quietly(staging).await;
            }
            return Err(error.into());
        }
        add(&self.counters.puts, 1);
        match staging {
            Some(staging) => {
                let committed = staging.commit().await;
                self.after_upload(&full, committed).await;
            }
            None => self.drop_stale_copy(&full).await,
        }
        Ok(())
    }

    async fn stage(&self, full: &str, data: &[u8], fence: Fence) -> Result<Staging<S>> {
        let mut staging = self.cache.create_staging(full).await?;
        let staged = match staging.fence(fence) {
            Ok(()) => staging.append(data).await,
            Err(error) => Err(error),
        };
        if let Err(error) = staged {
            close_quietly(staging).await;
            return Err(error);
        }
        Ok(staging)
    }

    /// Uploads the finished file at `file` to `key`, then adds it to the
    /// cache by a hard link (a copy across filesystems). The file must not
    /// change afterwards (the cached object shares its inode). An existing
    /// key is refused with [`RemoteError::AlreadyExists`].
    pub async fn put_file(&self, key: &str, file: impl AsRef<Path>) -> Result<()> {
        self.upload_file(key, file.as_ref(), None).await
    }

    /// [`Tiered::put_file`] of a file the caller has read and checked, as
    /// `digest`: the store gets exactly those bytes or nothing
    /// ([`Remote::put_file_checked`]; a mismatch is
    /// [`RemoteError::SourceChanged`], and the file is not cached either).
    /// The cache keeps only those bytes too: a file that changes after the
    /// upload's check is not adopted ([`Error::AdoptedFileChanged`], logged
    /// as an error, counted in `CacheStats::adopted_files_changed` and as an
    /// uncached write), and a linked one that changes later fails its check
    /// when read and is downloaded again.
    pub async fn put_file_checked(
        &self,
        key: &str,
        file: impl AsRef<Path>,
        digest: FileDigest,
    ) -> Result<()> {
        self.upload_file(key, file.as_ref(), Some(digest)).await
    }

    /// The uploaded file into the cache, with the digest its upload was
    /// checked against when there is one (not read again).
    async fn adopt(
        &self,
        full: &str,
        file: &Path,
        digest: Option<FileDigest>,
        fence: &Fence,
    ) -> Result<crate::Adopted> {
        self.cache
            .adopt_fenced(full, file, digest, fence.clone())
            .await
    }

    async fn upload_file(&self, key: &str, file: &Path, digest: Option<FileDigest>) -> Result<()> {
        let full = self.object_key(key)?;
        // Before the upload (see `Tiered::put`).
        let fence = self.cache.fence(&full)?;
        match digest {
            Some(digest) => self.remote.put_file_checked(&full, file, digest).await?,
            None => self.remote.put_file(&full, file).await?,
        };
        add(&self.counters.puts, 1);
        let adopted = self.adopt(&full, file, digest, &fence).await;
        let adopted = match adopted {
            Err(Error::Conflict { .. }) => {
                self.drop_stale_copy(&full).await;
                // The fence still holds only if that was the key's one
                // invalidation since the upload began.
                if fence.own_invalidation() {
                    self.adopt(&full, file, digest, &fence).await
                } else {
                    Err(Error::Invalidated { key: full.clone() })
                }
            }
            other => other,
        };
        match adopted {
            Ok(crate::Adopted::Linked) => add(&self.counters.adopted_linked, 1),
            Ok(crate::Adopted::Copied) => add(&self.counters.adopted_copied, 1),
            // Deleted or written again since the upload began: whoever did
            // that invalidated the key, and nothing of this write is cached.
            Err(error @ Error::Invalidated { .. }) => {
                tracing::debug!(key = full, %error, "uploaded, but not cached");
                add(&self.counters.uncached_writes, 1);
            }
            // The caller changed the file it handed over (counted by the
            // cache, `adopted_files_changed`): a bug to fix, not a full cache.
            Err(error @ Error::AdoptedFileChanged { .. }) => {
                tracing::error!(key = full, %error,
                    "uploaded, but the file changed after its upload's check; not cached");
                add(&self.counters.uncached_writes, 1);
                self.drop_stale_copy(&full).await;
            }
            Err(error) => {
                tracing::warn!(key = full, %error, "uploaded, but the cache could not take the file");
                add(&self.counters.uncached_writes, 1);
                self.drop_stale_copy(&full).await;
            }
        }
        Ok(())
    }

    /// After a successful upload: the commit's outcome only decides what is
    /// cached, never whether the write succeeded.
    async fn after_upload(&self, full: &str, committed: Result<()>) {
        match committed {
            Ok(()) => {}
            Err(Error::Conflict { .. }) => self.drop_stale_copy(full).await,
            // Deleted or written again since the upload began (see
            // `upload_file`): nothing of this write is cached.
            Err(error @ Error::Invalidated { .. }) => {
                tracing::debug!(key = full, %error, "uploaded, but not cached");
                add(&self.counters.uncached_writes, 1);
            }
            // Placed and accounted, then a directory fsync failed (see
            // `Staging::commit`): the copy at the key is this write's, its
            // link perhaps not durable. Dropped all the same, so no copy
            // whose durability is unknown stays (and the fsync retried).
            Err(error @ Error::Io { op: "fsync", .. }) => {
                tracing::warn!(key = full, %error,
                    "uploaded, but the commit's directory fsync failed; dropping the new cached copy");
                add(&self.counters.uncached_writes, 1);
                self.drop_copy(full, CachedCopy::Unsynced).await;
            }
            Err(error) => {
                tracing::warn!(key = full, %error, "uploaded, but committing it to the cache failed");
                add(&self.counters.uncached_writes, 1);
                self.drop_stale_copy(full).await;
            }
        }
    }

    /// After a successful upload whose bytes the cache did not take (full,
    /// oversize, a failed commit or adopt, a commit `Conflict`): the
    /// create-only upload found no object at `full` in the store, so a copy
    /// the cache holds there is stale (the object left the store other than
    /// by [`Tiered::delete`]) and must not be served in place of the new
    /// bytes. Runs even when nothing is cached: `invalidate` also makes an
    /// earlier trim's unlink of the key durable, so a crash cannot bring an
    /// old copy back.
    async fn drop_stale_copy(&self, full: &str) {
        self.drop_copy(full, CachedCopy::Stale).await;
    }

    /// Invalidates `full` after an upload, logging and counting by what
    /// `copy` says the cache held there. The write succeeded (the store
    /// holds it) whatever happens here: nothing is returned.
    async fn drop_copy(&self, full: &str, copy: CachedCopy) {
        let error = match self.cache.invalidate(full).await {
            Ok(false) => return,
            Ok(true) => {
                match copy {
                    CachedCopy::Stale => {
                        tracing::warn!(
                            key = full,
                            "cached object was stale (not in the store); invalidated it"
                        );
                        add(&self.counters.stale_invalidations, 1);
                    }
                    CachedCopy::Unsynced => {
                        tracing::debug!(key = full, "dropped the new cached copy")
                    }
                }
                return;
            }
            Err(error) => error,
        };
        let path = self.cache.objects_dir().join(full);
        // `invalidate` drops the key from the accounting before it unlinks
        // the file, so `get` misses and downloads unless the cache still
        // tracks it (it was shut down first). A file whose unlink failed
        // stays, untracked: a `Tiered` read replaces it, but the next open
        // would account it, stale, as an object.
        let tracked = self.cache.contains(full).unwrap_or(false);
        let file_left = matches!(&error, Error::Io { op: "unlinkat", .. });
        match copy {
            CachedCopy::Stale if tracked => tracing::error!(
                key = full,
                path = %path.display(),
                %error,
                "uploaded, but the cache still holds a stale copy it could not invalidate; \
                 remove the file before the cache is opened again"
            ),
            CachedCopy::Stale if file_left => tracing::error!(
                key = full,
                path = %path.display(),
                %error,
                "uploaded, but the stale cached copy could not be unlinked and stays, untracked; \
                 remove the file before the cache is opened again"
            ),
            // Nothing stale is cached or known to be left (the copy was
            // unlinked, or there was none), or the copy is this write's.
            _ => tracing::warn!(
                key = full,
                path = %path.display(),
                %error,
                "uploaded; invalidating the key's cached copy failed, but no stale copy is known to remain"
            ),
        }
    }

    /// Every object of this domain under `prefix` (whole segments; `""` for
    /// all), with keys relative to the domain, sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let full = if prefix.is_empty() {
            self.domain.clone()
        } else {
            self.object_key(prefix)?
        };
        let strip = format!("{}/", self.domain);
        let mut entries: Vec<ObjectInfo> = self
            .remote
            .list(&full)
            .await?
            .into_iter()
            .filter_map(|mut info| {
                let key = info.key.strip_prefix(&strip)?.to_owned();
                info.key = key;
                Some(info)
            })
            .collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }

    /// Deletes `key` from the store, then from the cache. Deleting a missing
    /// key succeeds.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let full = self.object_key(key)?;
        self.remote.delete(&full).await?;
        add(&self.counters.deletes, 1);
        self.cache.invalidate(&full).await?;
        Ok(())
    }
}

/// Failures that mean "the cache has no room for this", not "the write is
/// broken".
fn is_capacity(error: &Error) -> bool {
    matches!(
        error,
        Error::Oversize { .. }
            | Error::ReservationTooLarge { .. }
            | Error::ReservationTimeout { .. }
            | Error::NoSpace { .. }
            | Error::TooManyWaiters { .. }
    )
}

async fn close_quietly<S: CacheDisk>(staging: Staging<S>) {
    if let Err(error) = staging.close().await {
        tracing::warn!(%error, "closing a staging file failed; it is removed at the next startup");
    }
}
