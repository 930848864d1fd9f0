//! The snapshot directory: persisting a frozen state, listing and loading
//! generations, and pruning old ones.
//!
//! # Persisting
//!
//! 1. **Create** `snapshot-<op>.snap.tmp` (a stale one from a crash is
//!    removed first).
//! 2. **Write** the sections from byte 4096 on, in chunks, with the next
//!    chunk encoded while the previous one is being written, yielding to the
//!    reactor every [`ENCODE_STEP_BYTES`] so the shard keeps applying; then
//!    the header block at offset 0. While foreground work waits, the writes
//!    are smaller and paced ([`Pacing`]).
//! 3. **Sync** (fdatasync) the temporary file.
//! 4. **Rename** it to `snapshot-<op>.snap`.
//! 5. **Dir sync**: fsync the directory, making the rename durable.
//!
//! A failure names its step ([`PersistStage`]); up to the rename the older
//! generations are untouched, and the temporary file is removed.
//!
//! # Loading
//!
//! Every byte is verified before anything is restored: the header's own
//! checksum (which covers the section table), every section's checksum, and
//! the whole-file checksum. The rules are [`super::verify`]'s (the same
//! verifier `ringstore snapshot verify` and the pre-upload check use); the
//! loader only reads the bytes it asks for. [`SnapshotStore::load_newest`]
//! walks the generations newest first and returns the first that verifies
//! (reading a file twice before it gives up on it), with the reasons it
//! skipped the others.

use super::verify::{Check, SnapshotVerifier};
use crate::error::{Error, PersistStage, Result, SkippedSnapshot, SnapshotError};
use crate::format::*;
use crate::machine::{EncodeProgress, FrozenSection, SectionSet, SECTION_NAME_BYTES_MAX};
use ringstore_journal::format::align_up;
use ringstore_journal::glommio_quirks::reactor_turn;
use ringstore_journal::storage::{shrink_in_steps, IoBuf, Storage, StorageFile};
use std::{
    io,
    path::{Path, PathBuf},
    rc::Rc,
    sync::Arc,
};
use uuid::Uuid;
use zerocopy::IntoBytes;

/// Bytes of one snapshot write while nothing else waits for the device:
/// large enough that a write costs little more than the device's bandwidth.
pub const WRITE_CHUNK_BYTES: usize = 512 << 10;

/// Bytes of one snapshot write while foreground work waits ([`Pacing`]): a
/// journal write queued behind it waits for at most this much of the
/// device's time. On the test host, with the disk in its slow bandwidth
/// mode (370-680 MB/s), a 512 KiB write took 0.8-1.4 ms, which moved the
/// submitters' p50 ack latency from 0.3 to 1.1 ms during a checkpoint;
/// 64 KiB writes with the default pacing left it at 0.3 ms
/// (`bench/PERFORMANCE.md`).
pub const WRITE_CHUNK_BUSY_BYTES: usize = 64 << 10;

/// Bytes encoded between two yields to the reactor: about 50-100 µs of
/// encoding, so a submit waiting behind a running checkpoint is delayed by
/// about that much, not by a whole chunk's encoding.
pub const ENCODE_STEP_BYTES: usize = 64 << 10;

const _: () = assert!(WRITE_CHUNK_BYTES.is_multiple_of(ENCODE_STEP_BYTES));
const _: () = assert!(WRITE_CHUNK_BYTES.is_multiple_of(WRITE_CHUNK_BUSY_BYTES));
const _: () = assert!(WRITE_CHUNK_BUSY_BYTES.is_multiple_of(BLOCK_BYTES as usize));

pub use ringstore_journal::pace::{Pacing, PACING_PAUSE_MAX};

/// Bytes written between two fdatasyncs of a snapshot being written.
pub const SYNC_EVERY_BYTES: u64 = 64 << 20;

/// Bytes of one snapshot read at load time.
pub const READ_CHUNK_BYTES: usize = 4 << 20;

/// What identifies a persisted snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The file.
    pub path: PathBuf,
    /// The state is that after every op up to and including this one.
    pub watermark: u64,
    /// The epoch recorded with it.
    pub epoch: u64,
    /// The domain it belongs to.
    pub domain: Uuid,
    /// Bytes of all sections.
    pub body_bytes: u64,
    /// Bytes of the file.
    pub file_bytes: u64,
}

/// A verified snapshot, ready for [`crate::StateMachine::restore`].
#[derive(Debug)]
pub struct LoadedSnapshot {
    /// What it is.
    pub meta: SnapshotMeta,
    /// Its sections.
    pub sections: SectionSet,
}

/// The names are the format's; here under their old path too.
pub use crate::format::{parse_snapshot_file_name, snapshot_file_name};

/// A shard's snapshot directory on a [`Storage`] backend.
#[derive(Debug, Clone)]
pub struct SnapshotStore<S: Storage> {
    storage: S,
    dir: PathBuf,
}

/// A received snapshot written and verified under its temporary name, not
/// yet installed; see [`SnapshotStore::stage_bytes`].
#[derive(Debug)]
#[must_use = "a staged snapshot is published or discarded"]
pub struct StagedSnapshot {
    temp_path: PathBuf,
    final_path: PathBuf,
}

impl<S: Storage> SnapshotStore<S> {
    /// Opens (creating if needed) the directory and removes temporary files
    /// a crash left behind.
    pub async fn open(storage: S, dir: impl Into<PathBuf>) -> Result<SnapshotStore<S>> {
        let dir = dir.into();
        ringstore_journal::storage::prepare_dir(&storage, &dir)
            .await
            .map_err(|e| Error::io("prepare snapshot directory", &dir, e))?;
        let store = SnapshotStore { storage, dir };
        let names = store.list()?;
        let mut removed = false;
        for name in names.iter().filter(|n| n.ends_with(TEMP_SUFFIX)) {
            let path = store.dir.join(name);
            store
                .storage
                .remove(&path)
                .await
                .map_err(|e| Error::io("remove stale temporary snapshot", &path, e))?;
            removed = true;
        }
        if removed {
            store
                .storage
                .sync_dir(&store.dir)
                .await
                .map_err(|e| Error::io("fsync snapshot directory", &store.dir, e))?;
        }
        Ok(store)
    }

    /// The storage the snapshots are on.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn list(&self) -> Result<Vec<String>> {
        let names = self
            .storage
            .list_dir(&self.dir)
            .map_err(|e| Error::io("list snapshot directory", &self.dir, e))?;
        Ok(names
            .into_iter()
            .filter_map(|n| n.into_string().ok())
            .collect())
    }

    /// The snapshot files present, oldest first, as `(watermark, path)`.
    /// Presence says nothing about validity.
    pub fn generations(&self) -> Result<Vec<(u64, PathBuf)>> {
        let mut found: Vec<(u64, PathBuf)> = self
            .list()?
            .into_iter()
            .filter_map(|name| parse_snapshot_file_name(&name).map(|op| (op, self.dir.join(name))))
            .collect();
        found.sort();
        Ok(found)
    }

    /// Writes `sections` as the snapshot at `watermark` and makes it durable
    /// (see the module docs for the steps).
    pub async fn persist(
        &self,
        sections: Vec<FrozenSection>,
        watermark: u64,
        epoch: u64,
        domain: Uuid,
    ) -> Result<SnapshotMeta> {
        self.persist_paced(sections, watermark, epoch, domain, Pacing::FULL_SPEED)
            .await
    }

    /// [`SnapshotStore::persist`], giving way to foreground work as
    /// `pacing` says: a journal write queued behind a snapshot write waits
    /// for it, and a journal fdatasync's cache flush waits for every byte
    /// written before it.
    pub async fn persist_paced(
        &self,
        sections: Vec<FrozenSection>,
        watermark: u64,
        epoch: u64,
        domain: Uuid,
        pacing: Pacing<'_>,
    ) -> Result<SnapshotMeta> {
        let (final_path, temp_path, file) = self.create_temp(watermark).await?;
        let file = Rc::new(file);
        let written = write_snapshot(
            &file, &temp_path, sections, watermark, epoch, domain, pacing,
        )
        .await;
        let written = match written {
            Ok((body_bytes, file_bytes)) => file
                .sync()
                .await
                .map(|()| (body_bytes, file_bytes))
                .map_err(|e| failed(PersistStage::Sync, &temp_path, e)),
            Err(e) => Err(e),
        };
        if let Ok(file) = Rc::try_unwrap(file) {
            let _ = file.close().await;
        }
        let (body_bytes, file_bytes) = match written {
            Ok(sizes) => sizes,
            Err(e) => {
                // Best effort: open() removes it otherwise.
                let _ = self.storage.remove(&temp_path).await;
                return Err(e);
            }
        };
        self.publish(&temp_path, &final_path).await?;
        Ok(SnapshotMeta {
            path: final_path,
            watermark,
            epoch,
            domain,
            body_bytes,
            file_bytes,
        })
    }

    /// Renames the synced temporary file `temp_path` to `final_path` and
    /// syncs the directory: the snapshot exists from then on, whole. A
    /// failed rename removes the temporary file.
    async fn publish(&self, temp_path: &Path, final_path: &Path) -> Result<()> {
        if let Err(e) = self.storage.rename(temp_path, final_path).await {
            let _ = self.storage.remove(temp_path).await;
            return Err(failed(PersistStage::Rename, final_path, e));
        }
        self.storage
            .sync_dir(&self.dir)
            .await
            .map_err(|e| failed(PersistStage::DirSync, &self.dir, e))
    }

    /// Installs `bytes`, a whole snapshot file received from elsewhere (a
    /// Raft leader), as the snapshot at `watermark`: [`Self::stage_bytes`],
    /// then [`Self::publish_staged`]. A file that does not verify is removed
    /// and refused; the snapshots already here are untouched.
    pub async fn install_bytes(
        &self,
        bytes: &[u8],
        watermark: u64,
        domain: Uuid,
    ) -> Result<std::result::Result<LoadedSnapshot, SnapshotError>> {
        match self.stage_bytes(bytes, watermark, domain).await? {
            Ok((staged, loaded)) => {
                self.publish_staged(staged).await?;
                Ok(Ok(loaded))
            }
            Err(refused) => Ok(Err(refused)),
        }
    }

    /// Writes `bytes`, a whole snapshot file received from elsewhere, under
    /// a temporary name, syncs it and verifies it (of `domain`, at
    /// `watermark`), without installing it: the caller decodes what it
    /// holds first, then installs it with [`Self::publish_staged`] or drops
    /// it with [`Self::discard_staged`]. So a file that verifies but cannot
    /// be restored (a section this build does not read) never takes a
    /// snapshot's name, where every later open would refuse it. The loaded
    /// snapshot's path is the name it will have.
    pub async fn stage_bytes(
        &self,
        bytes: &[u8],
        watermark: u64,
        domain: Uuid,
    ) -> Result<std::result::Result<(StagedSnapshot, LoadedSnapshot), SnapshotError>> {
        let (final_path, temp_path, file) = self.create_temp(watermark).await?;
        // Files this store writes are whole blocks; anything else fails
        // verification below, zeros and all.
        let mut buf = file.alloc_buf(align_up(bytes.len() as u64, BLOCK_BYTES) as usize);
        let (head, tail) = buf.as_bytes_mut().split_at_mut(bytes.len());
        head.copy_from_slice(bytes);
        tail.fill(0);
        let written = match file.write_at(buf, 0).await {
            Ok(()) => file
                .sync()
                .await
                .map_err(|e| failed(PersistStage::Sync, &temp_path, e)),
            Err(e) => Err(failed(PersistStage::Write, &temp_path, e)),
        };
        let _ = file.close().await;
        if let Err(e) = written {
            let _ = self.storage.remove(&temp_path).await;
            return Err(e);
        }
        // Verified under the name it will have (the verifier checks that
        // the header's op matches the name).
        let verified = match self.storage.open(&temp_path).await {
            Ok(file) => {
                let file = Rc::new(file);
                let io_error = |op: &'static str, offset: u64, e: io::Error| SnapshotError::Io {
                    op,
                    path: temp_path.clone(),
                    offset,
                    source: Arc::new(e),
                };
                let result = load_open_file(&file, &final_path, Some(domain), io_error).await;
                if let Ok(file) = Rc::try_unwrap(file) {
                    let _ = file.close().await;
                }
                result
            }
            Err(e) => Err(SnapshotError::Io {
                op: "open",
                path: temp_path.clone(),
                offset: 0,
                source: Arc::new(e),
            }),
        };
        let loaded = match verified {
            Ok(loaded) if loaded.meta.watermark == watermark => loaded,
            refused => {
                let _ = self.storage.remove(&temp_path).await;
                return Ok(Err(match refused {
                    Ok(loaded) => SnapshotError::WrongWatermark {
                        path: temp_path,
                        expected: watermark,
                        found: loaded.meta.watermark,
                    },
                    Err(e) => e,
                }));
            }
        };
        let loaded = LoadedSnapshot {
            meta: SnapshotMeta {
                path: final_path.clone(),
                ..loaded.meta
            },
            sections: loaded.sections,
        };
        Ok(Ok((
            StagedSnapshot {
                temp_path,
                final_path,
            },
            loaded,
        )))
    }

    /// Installs a staged snapshot under its name (rename, directory sync).
    pub async fn publish_staged(&self, staged: StagedSnapshot) -> Result<()> {
        self.publish(&staged.temp_path, &staged.final_path).await
    }

    /// Removes a staged snapshot that will not be installed (a file left
    /// behind is removed at the next open, as any temporary file is).
    pub async fn discard_staged(&self, staged: StagedSnapshot) {
        let _ = self.storage.remove(&staged.temp_path).await;
    }

    /// The whole file at `path`, as it is on disk (to send it elsewhere).
    pub async fn read_file(&self, path: &Path) -> Result<Vec<u8>> {
        let file = self
            .storage
            .open(path)
            .await
            .map_err(|e| Error::io("open snapshot", path, e))?;
        let read = async {
            let len = file.file_len().await?;
            let len = usize::try_from(len).map_err(io::Error::other)?;
            file.read_at(0, len).await
        }
        .await;
        let _ = file.close().await;
        let bytes = read.map_err(|e| Error::io("read snapshot", path, e))?;
        Ok(bytes.to_vec())
    }

    /// Removes the snapshot file at `path` whole and syncs the directory:
    /// one found damaged after a newer snapshot replaced it (nothing would
    /// load it, and `ringstore snapshot verify --strict` would keep
    /// failing on it).
    pub async fn remove_generation(&self, path: &Path) -> Result<()> {
        self.storage
            .remove(path)
            .await
            .map_err(|e| Error::io("remove snapshot", path, e))?;
        self.storage
            .sync_dir(&self.dir)
            .await
            .map_err(|e| Error::io("fsync snapshot directory", &self.dir, e))
    }

    /// The temporary name of the snapshot at `watermark`: being written,
    /// or being removed.
    fn temp_path(&self, watermark: u64) -> PathBuf {
        self.dir
            .join(format!("{FILE_PREFIX}{watermark:020}{TEMP_SUFFIX}"))
    }

    /// The final and temporary names of the snapshot at `watermark`, and
    /// the temporary file, created afresh (a stale one removed first).
    async fn create_temp(&self, watermark: u64) -> Result<(PathBuf, PathBuf, S::File)> {
        let final_path = self.dir.join(snapshot_file_name(watermark));
        let temp_path = self.temp_path(watermark);
        match self.storage.remove(&temp_path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(PersistStage::Create, &temp_path, e)),
        }
        let file = self
            .storage
            .create(&temp_path, false)
            .await
            .map_err(|e| failed(PersistStage::Create, &temp_path, e))?;
        Ok((final_path, temp_path, file))
    }

    /// Loads and verifies the snapshot at `path`. With `domain`, a snapshot
    /// of another domain is refused.
    pub async fn load(
        &self,
        path: &Path,
        domain: Option<Uuid>,
    ) -> Result<LoadedSnapshot, SnapshotError> {
        load_snapshot(&self.storage, path, domain).await
    }

    /// Loads the newest snapshot that verifies. Returns it (or `None` if
    /// none does) and every newer file skipped, with the reason.
    pub async fn load_newest(
        &self,
        domain: Uuid,
    ) -> Result<(Option<LoadedSnapshot>, Vec<SkippedSnapshot>)> {
        let mut skipped = Vec::new();
        for (_, path) in self.generations()?.into_iter().rev() {
            let mut loaded = load_snapshot(&self.storage, &path, Some(domain)).await;
            if loaded.is_err() {
                // Once more before skipping it: a read error or a flipped
                // bit in transit must not pass for a damaged file.
                loaded = load_snapshot(&self.storage, &path, Some(domain)).await;
            }
            match loaded {
                Ok(loaded) => return Ok((Some(loaded), skipped)),
                Err(reason) => {
                    // A warning: the open goes on from an older generation
                    // only if the journal reaches back to it, and refuses
                    // otherwise (counted in `ringstore_snapshots_skipped_total`).
                    tracing::warn!(path = %path.display(), %reason, "skipping snapshot");
                    skipped.push(SkippedSnapshot { path, reason });
                }
            }
        }
        Ok((None, skipped))
    }

    /// Removes all but the newest `keep` snapshot files, and never one at
    /// or above `protect_from` (the journal's watermark: recovery may need
    /// any of those, a damaged newer one's predecessor included), then syncs
    /// the directory. Returns how many were removed.
    pub async fn prune(&self, keep: usize, protect_from: u64) -> Result<usize> {
        self.prune_with(keep, protect_from, None).await
    }

    /// [`SnapshotStore::prune`], giving the space of each file larger than
    /// `step_bytes` back `step_bytes` at a time ([`shrink_in_steps`])
    /// instead of all at once, which on a filesystem with online discard
    /// stalls every fdatasync there (220 ms for a 1 GiB snapshot on this
    /// project's test host). Such a file is first renamed to its temporary
    /// name and the rename synced, so no snapshot's name ever holds a
    /// shrunk file (a crash leaves a temporary file, which
    /// [`SnapshotStore::open`] removes). The rest of a file is removed
    /// whole once `keep_shrinking()` turns false (the shard's: when it
    /// stops serving, and when submits wait for ring slots that moving
    /// the watermark cannot free), and a file
    /// is removed whole when free space is under its size (the next
    /// checkpoint needs about as much).
    ///
    /// A file with a second name (a cache's hard link) is removed whole:
    /// that frees nothing, and shrinking would shrink the other name's
    /// file too. So is one `in_use` names (the snapshot an upload reads,
    /// which the cache may link by its descriptor after the rename). A reader that opened a file before it was renamed reads
    /// a shrinking file, so a reader that finds damage in a snapshot
    /// looks whether its name is still there before reporting it (the
    /// shard's snapshot scrubber and upload do).
    /// The shard calls it with the snapshot directory held.
    pub async fn prune_in_steps(
        &self,
        keep: usize,
        protect_from: u64,
        step_bytes: u64,
        keep_shrinking: &dyn Fn() -> bool,
        in_use: &dyn Fn(u64) -> bool,
    ) -> Result<usize> {
        let in_steps = InSteps {
            step_bytes,
            keep_shrinking,
            in_use,
        };
        self.prune_with(keep, protect_from, Some(in_steps)).await
    }

    async fn prune_with(
        &self,
        keep: usize,
        protect_from: u64,
        in_steps: Option<InSteps<'_>>,
    ) -> Result<usize> {
        let generations = self.generations()?;
        let excess = generations.len().saturating_sub(keep);
        let mut removed = 0;
        for (op, path) in generations.into_iter().take(excess) {
            if op >= protect_from {
                continue;
            }
            let path = match &in_steps {
                Some(in_steps) => self.shrink_doomed(op, &path, in_steps).await?,
                None => path,
            };
            self.storage
                .remove(&path)
                .await
                .map_err(|e| Error::io("remove old snapshot", &path, e))?;
            removed += 1;
        }
        if removed > 0 {
            self.storage
                .sync_dir(&self.dir)
                .await
                .map_err(|e| Error::io("fsync snapshot directory", &self.dir, e))?;
        }
        Ok(removed)
    }

    /// Renames the snapshot at `path` to its temporary name, durably, and
    /// shrinks it step by step; returns the path to remove. A file of at
    /// most `step_bytes`, or larger than the free space, is left as it is.
    async fn shrink_doomed(&self, op: u64, path: &Path, in_steps: &InSteps<'_>) -> Result<PathBuf> {
        let (step_bytes, keep_shrinking) = (in_steps.step_bytes, in_steps.keep_shrinking);
        let len = match self.storage.stat(path).await {
            Ok(meta) => meta.len,
            Err(e) => return Err(Error::io("stat old snapshot", path, e)),
        };
        let space_left = self
            .storage
            .fs_space(&self.dir)
            .is_ok_and(|space| space.avail_bytes >= len);
        if len <= step_bytes || !space_left || !keep_shrinking() {
            return Ok(path.to_path_buf());
        }
        let doomed = self.temp_path(op);
        self.storage
            .rename(path, &doomed)
            .await
            .map_err(|e| Error::io("rename old snapshot for removal", path, e))?;
        self.storage
            .sync_dir(&self.dir)
            .await
            .map_err(|e| Error::io("fsync snapshot directory", &self.dir, e))?;
        // A second name (the cache's hard link of an uploaded snapshot)
        // keeps the file whole: removing this name frees nothing then, so
        // there is nothing to give back in steps. Looked at after the
        // rename, when no new link can be made by the snapshot's name, nor
        // can a reader open it by that name; one that opened it before
        // and may link it is `in_use`.
        if (in_steps.in_use)(op) {
            return Ok(doomed);
        }
        match self.storage.stat(&doomed).await {
            Ok(meta) if meta.links <= 1 => {}
            // Removed whole, as a file that cannot be looked at is.
            _ => return Ok(doomed),
        }
        let shrunk = async {
            let file = self.storage.open(&doomed).await?;
            let shrunk = shrink_in_steps(&file, len, step_bytes, keep_shrinking).await;
            let _ = file.close().await;
            shrunk
        }
        .await;
        if let Err(e) = shrunk {
            tracing::warn!(path = %doomed.display(), error = %e, "shrinking an old snapshot failed; removing it whole");
        }
        Ok(doomed)
    }
}

/// How [`SnapshotStore::prune_in_steps`] gives space back.
struct InSteps<'a> {
    step_bytes: u64,
    /// False once the rest should go at once (the shard's: it stops
    /// serving, or submits wait for slots only a checkpoint can free).
    keep_shrinking: &'a dyn Fn() -> bool,
    /// Whether a reader that may link the file holds the snapshot at an
    /// op: that file is removed whole.
    in_use: &'a dyn Fn(u64) -> bool,
}

/// A persist step failed on `path`.
fn failed(stage: PersistStage, path: &Path, e: io::Error) -> Error {
    Error::Persist {
        stage,
        path: path.to_path_buf(),
        source: Arc::new(e),
    }
}

/// Writes the body, then the header; returns `(body_bytes, file_bytes)`.
async fn write_snapshot<F: StorageFile>(
    file: &Rc<F>,
    path: &Path,
    sections: Vec<FrozenSection>,
    watermark: u64,
    epoch: u64,
    domain: Uuid,
    pacing: Pacing<'_>,
) -> Result<(u64, u64)> {
    if sections.len() > SECTION_COUNT_MAX {
        return Err(Error::InvalidConfig {
            setting: "snapshot sections",
            value: sections.len().to_string(),
            reason: format!("a snapshot holds at most {SECTION_COUNT_MAX} sections"),
        });
    }
    let mut writer = ChunkWriter::new(file.clone(), path.to_path_buf(), pacing);
    let mut table = Vec::with_capacity(sections.len());
    let mut body_hasher = crc32fast::Hasher::new();
    let mut offset = BODY_OFFSET;
    for mut section in sections {
        if section.name.is_empty() || section.name.len() > SECTION_NAME_BYTES_MAX {
            return Err(Error::InvalidConfig {
                setting: "snapshot section name",
                value: section.name.to_owned(),
                reason: format!("1 to {SECTION_NAME_BYTES_MAX} bytes"),
            });
        }
        let start = offset;
        let mut section_hasher = crc32fast::Hasher::new();
        loop {
            let before = writer.staged.len();
            let progress = section
                .encoder
                .encode_some(&mut writer.staged, before + ENCODE_STEP_BYTES)
                .map_err(|e| Error::Encode {
                    section: section.name.to_owned(),
                    source: Arc::new(e),
                })?;
            let fresh = &writer.staged[before..];
            section_hasher.update(fresh);
            body_hasher.update(fresh);
            offset += fresh.len() as u64;
            writer.flush_full_chunks().await?;
            // Let the shard apply commands between steps.
            reactor_turn().await;
            if progress == EncodeProgress::Done {
                break;
            }
        }
        let mut entry = SectionEntry {
            name: [0; SECTION_NAME_BYTES_MAX],
            version: section.version.into(),
            checksum: section_hasher.finalize().into(),
            offset: start.into(),
            len: (offset - start).into(),
        };
        entry.name[..section.name.len()].copy_from_slice(section.name.as_bytes());
        table.push(entry);
    }
    writer.finish().await?;
    let body_bytes = offset - BODY_OFFSET;
    let mut header = SnapshotHeader {
        header_checksum: 0.into(),
        magic: SNAPSHOT_MAGIC.into(),
        version: SNAPSHOT_FORMAT_VERSION.into(),
        section_count: (table.len() as u32).into(),
        watermark: watermark.into(),
        epoch: epoch.into(),
        domain: *domain.as_bytes(),
        created_unix_ms: unix_ms_now().into(),
        body_bytes: body_bytes.into(),
        file_checksum: 0.into(),
        reserved: 0.into(),
    };
    let mut block = vec![0u8; HEADER_BLOCK_BYTES as usize];
    for (i, entry) in table.iter().enumerate() {
        let at = SNAPSHOT_HEADER_BYTES + i * SECTION_ENTRY_BYTES;
        block[at..at + SECTION_ENTRY_BYTES].copy_from_slice(entry.as_bytes());
    }
    block[..SNAPSHOT_HEADER_BYTES].copy_from_slice(header.as_bytes());
    let mut file_hasher = header_block_hasher(&block);
    file_hasher.combine(&body_hasher);
    header.file_checksum = file_hasher.finalize().into();
    block[..SNAPSHOT_HEADER_BYTES].copy_from_slice(header.as_bytes());
    header.header_checksum = crc32fast::hash(&block[4..]).into();
    block[..SNAPSHOT_HEADER_BYTES].copy_from_slice(header.as_bytes());
    // The header goes last: a file whose header verifies had every section
    // written before it.
    let mut buf = file.alloc_buf(block.len());
    buf.as_bytes_mut().copy_from_slice(&block);
    file.write_at(buf, 0).await.map_err(|e| Error::Persist {
        stage: PersistStage::Write,
        path: path.to_path_buf(),
        source: Arc::new(e),
    })?;
    let file_bytes = BODY_OFFSET + align_up(body_bytes, BLOCK_BYTES);
    Ok((body_bytes, file_bytes))
}

/// Streams the body in [`WRITE_CHUNK_BYTES`] writes ([`WRITE_CHUNK_BUSY_BYTES`]
/// while busy), with one write in flight while the next chunk is encoded.
struct ChunkWriter<'a, F: StorageFile> {
    file: Rc<F>,
    path: PathBuf,
    pacing: Pacing<'a>,
    /// When the write in flight was issued.
    issued_at: std::time::Instant,
    /// File offset up to which an fdatasync covered the writes.
    synced_to: u64,
    /// Encoded bytes not yet handed to a write.
    staged: Vec<u8>,
    /// File offset of `staged[0]`.
    pos: u64,
    in_flight: Option<glommio::Task<io::Result<()>>>,
}

impl<'a, F: StorageFile> ChunkWriter<'a, F> {
    fn new(file: Rc<F>, path: PathBuf, pacing: Pacing<'a>) -> ChunkWriter<'a, F> {
        ChunkWriter {
            file,
            path,
            pacing,
            issued_at: std::time::Instant::now(),
            synced_to: BODY_OFFSET,
            staged: Vec::with_capacity(2 * WRITE_CHUNK_BYTES),
            pos: BODY_OFFSET,
            in_flight: None,
        }
    }

    async fn wait_in_flight(&mut self) -> Result<()> {
        if let Some(task) = self.in_flight.take() {
            task.await.map_err(|e| Error::Persist {
                stage: PersistStage::Write,
                path: self.path.clone(),
                source: Arc::new(e),
            })?;
            if self.pacing.is_busy() {
                let pause = self.pacing.pause_after(self.issued_at.elapsed());
                if !pause.is_zero() {
                    glommio::timer::sleep(pause).await;
                }
            }
            // Flush as we go, so the final fdatasync has little left to
            // flush: a device cache flush of the whole file at once would
            // hold up every journal fdatasync behind it.
            if self.pos - self.synced_to >= SYNC_EVERY_BYTES {
                self.file.sync().await.map_err(|e| Error::Persist {
                    stage: PersistStage::Sync,
                    path: self.path.clone(),
                    source: Arc::new(e),
                })?;
                self.synced_to = self.pos;
            }
        }
        Ok(())
    }

    async fn write(&mut self, len: usize) -> Result<()> {
        let mut buf = self.file.alloc_buf(len);
        let data_len = len.min(self.staged.len());
        buf.as_bytes_mut()[..data_len].copy_from_slice(&self.staged[..data_len]);
        buf.as_bytes_mut()[data_len..].fill(0);
        self.staged.drain(..data_len);
        self.wait_in_flight().await?;
        let file = self.file.clone();
        let pos = self.pos;
        self.pos += len as u64;
        self.issued_at = std::time::Instant::now();
        self.in_flight = Some(glommio::spawn_local(async move {
            file.write_at(buf, pos).await
        }));
        Ok(())
    }

    async fn flush_full_chunks(&mut self) -> Result<()> {
        loop {
            let chunk = if self.pacing.is_busy() {
                WRITE_CHUNK_BUSY_BYTES
            } else {
                WRITE_CHUNK_BYTES
            };
            if self.staged.len() < chunk {
                return Ok(());
            }
            self.write(chunk).await?;
        }
    }

    /// Writes what is left, padded with zeros to a block boundary, and
    /// waits for every write.
    async fn finish(&mut self) -> Result<()> {
        self.flush_full_chunks().await?;
        if !self.staged.is_empty() {
            let len = align_up(self.staged.len() as u64, BLOCK_BYTES) as usize;
            self.write(len).await?;
        }
        self.wait_in_flight().await
    }
}

async fn load_snapshot<S: Storage>(
    storage: &S,
    path: &Path,
    domain: Option<Uuid>,
) -> Result<LoadedSnapshot, SnapshotError> {
    let io_error = |op: &'static str, offset: u64, e: io::Error| SnapshotError::Io {
        op,
        path: path.to_path_buf(),
        offset,
        source: Arc::new(e),
    };
    let file = Rc::new(
        storage
            .open(path)
            .await
            .map_err(|e| io_error("open", 0, e))?,
    );
    let result = load_open_file(&file, path, domain, io_error).await;
    if let Ok(file) = Rc::try_unwrap(file) {
        let _ = file.close().await;
    }
    result
}

async fn load_open_file<F: StorageFile>(
    file: &Rc<F>,
    path: &Path,
    domain: Option<Uuid>,
    io_error: impl Fn(&'static str, u64, io::Error) -> SnapshotError,
) -> Result<LoadedSnapshot, SnapshotError> {
    let len = file
        .file_len()
        .await
        .map_err(|e| io_error("file length", 0, e))?;
    // Every decision is the verifier's; this only reads the bytes it asks
    // for, and stops at the first damage it reports.
    let mut verifier = SnapshotVerifier::new(path, len, domain, Check::Full);
    let refused = |verifier: &SnapshotVerifier| {
        verifier
            .first_damage()
            .map(|damage| SnapshotError::Damaged(damage.clone()))
    };
    if len < HEADER_BLOCK_BYTES {
        verifier.header_block(&[]);
    } else {
        let block = file
            .read_at(0, HEADER_BLOCK_BYTES as usize)
            .await
            .map_err(|e| io_error("read", 0, e))?;
        verifier.header_block(&block);
    }
    if let Some(refusal) = refused(&verifier) {
        return Err(refusal);
    }
    let Some(body_range) = verifier.body_range() else {
        unreachable!("a full check of a header block without damage checks the body");
    };
    // The body, read in large chunks and split into sections.
    let table: Vec<(String, u32, u64)> = verifier
        .sections()
        .iter()
        .map(|s| (s.name.clone(), s.version, s.len))
        .collect();
    let mut sections = SectionSet::new();
    let mut body = BodyReader {
        file: file.clone(),
        pos: body_range.start,
        end: body_range.end,
        buffered: Vec::new(),
        in_flight: None,
    };
    for (name, version, len) in table {
        let (bytes, complete) = body.take(len as usize, &io_error).await?;
        verifier.body(&bytes);
        if !complete {
            break;
        }
        if let Some(refusal) = refused(&verifier) {
            return Err(refusal);
        }
        sections
            .insert(name, version, bytes)
            .expect("the verifier refuses a section table that names a section twice");
    }
    let report = verifier.finish();
    if let Some(refusal) = report.refusal() {
        return Err(refusal);
    }
    let header = report.header.expect("a verified snapshot has a header");
    Ok(LoadedSnapshot {
        meta: SnapshotMeta {
            path: path.to_path_buf(),
            watermark: header.watermark,
            epoch: header.epoch,
            domain: header.domain,
            body_bytes: header.body_bytes,
            file_bytes: len,
        },
        sections,
    })
}

/// Reads a snapshot's body front to back in [`READ_CHUNK_BYTES`] aligned
/// reads, the next one in flight while the current one is copied out,
/// handing out one section's bytes at a time.
struct BodyReader<F: StorageFile> {
    file: Rc<F>,
    /// File offset of the next read to issue (block-aligned).
    pos: u64,
    /// End of the body.
    end: u64,
    /// Bytes read and not yet handed out.
    buffered: Vec<u8>,
    /// The read ahead.
    in_flight: Option<ReadAhead<F>>,
}

/// A read in flight: its offset, the bytes wanted from it, and the read.
type ReadAhead<F> = (
    u64,
    u64,
    glommio::Task<io::Result<<F as StorageFile>::ReadBuf>>,
);

impl<F: StorageFile> BodyReader<F> {
    /// Starts the next read unless one is in flight or the body is read;
    /// then lets the reactor turn so the read is submitted now (see
    /// [`reactor_turn`]).
    async fn issue(&mut self) {
        if self.in_flight.is_some() || self.pos >= self.end {
            return;
        }
        let want = (self.end - self.pos).min(READ_CHUNK_BYTES as u64);
        let read_len = align_up(want, BLOCK_BYTES) as usize;
        let file = self.file.clone();
        let pos = self.pos;
        let read = glommio::spawn_local(async move { file.read_at(pos, read_len).await });
        self.in_flight = Some((pos, want, read));
        self.pos += want;
        reactor_turn().await;
    }

    /// The next `len` bytes of the body, and whether they are all there
    /// (false: the file ended early; the bytes up to its end).
    async fn take(
        &mut self,
        len: usize,
        io_error: &impl Fn(&'static str, u64, io::Error) -> SnapshotError,
    ) -> Result<(Vec<u8>, bool), SnapshotError> {
        // `len` was checked against the file's length.
        let mut out = Vec::with_capacity(len);
        let from_buffer = len.min(self.buffered.len());
        out.extend_from_slice(&self.buffered[..from_buffer]);
        self.buffered.drain(..from_buffer);
        while out.len() < len {
            self.issue().await;
            let Some((pos, want, read)) = self.in_flight.take() else {
                // The section table was checked against the body length.
                unreachable!("section extends past the body");
            };
            let read = read.await.map_err(|e| io_error("read", pos, e))?;
            // The next read goes out before this one is copied.
            self.issue().await;
            let got = (read.len() as u64).min(want) as usize;
            let needed = (len - out.len()).min(got);
            out.extend_from_slice(&read[..needed]);
            if (got as u64) < want {
                // Shorter than when its length was checked: the verifier
                // names where it ends.
                return Ok((out, false));
            }
            self.buffered.extend_from_slice(&read[needed..got]);
        }
        Ok((out, true))
    }
}
