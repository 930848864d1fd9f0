//! Opening a cache.
//!
//! 1. Create the root if needed, take the instance `flock`, check the layout
//!    version and that the filesystem has user extended attributes (every
//!    object's checksum is one).
//! 2. Load the tracker file; a missing, wrong-version or corrupt one is
//!    ignored with a warning (access times then come from the disk).
//! 3. Remove `tracker.tmp` (an interrupted persist) and walk `objects/`,
//!    reading each object file's size and checksum attribute: rebuild sizes
//!    and counts from what is on disk — the tracker only contributes access
//!    order — except for a file larger than the byte limit or of another size
//!    than its checksum records (a sparse file, a damaged inode, one changed
//!    since it was written), which is removed, logged and counted
//!    (`refused_at_startup`; one whose unlink fails is counted too, logged as
//!    an error and left untracked) instead: a size read from the disk is
//!    trusted only once checked, so the totals stay within what trims can
//!    take apart and no read is ever sized by such a file. Remove every
//!    `*.part` (staging files cannot outlive their process) and then empty
//!    directories (never `objects/` or the root).
//! 4. If the rebuilt usage is above the trim threshold, ask for a trim.

use super::*;
use crate::format::LAYOUT_FILE;

impl<S: CacheDisk> Cache<S> {
    pub(crate) async fn open(builder: CacheBuilder<S>) -> Result<Cache<S>> {
        builder.validate()?;
        let cfg = builder.cfg;
        let root = cfg.dir.clone();
        let objects_path = root.join(OBJECTS_DIR);
        // Durably in its parent too: a root a crash undid would take every
        // committed object with it.
        let disk = S::for_root(builder.disk, &root)
            .await
            .map_err(|e| Error::io("mkdir", &root, e))?;
        let lock = fs::prepare_root(&disk, &root).await?;
        check_attributes_supported(&disk, &root).await?;
        let bytes_limit = match cfg.bytes_limit {
            BytesLimit::Bytes(bytes) => bytes,
            BytesLimit::PercentOfFilesystem(percent) => {
                let space = disk
                    .fs_space(&root)
                    .map_err(|e| Error::io("fstatvfs", &root, e))?;
                let bytes = percent_of(space.total_bytes, percent);
                if bytes == 0 {
                    return Err(Error::Config {
                        field: "bytes_limit",
                        reason: format!(
                            "{percent}% of a {}-byte filesystem is 0",
                            space.total_bytes
                        ),
                    });
                }
                bytes
            }
        };
        let space = {
            let (disk, root) = (disk.clone(), root.clone());
            Box::new(move || disk.fs_space(&root))
        };
        let ledger = Rc::new(Ledger::new(
            bytes_limit,
            cfg.objects_limit,
            cfg.min_free_bytes,
            space,
        ));
        let shared = Rc::new(Shared {
            bytes_limit,
            root: root.clone(),
            objects_path,
            disk,
            ledger,
            tracker: RefCell::new(Tracker::new()),
            locks: Rc::new(KeyLocks::default()),
            fences: Rc::new(FenceTable::default()),
            metrics: Metrics::default(),
            trim_lock: Rc::new(AsyncLock::default()),
            trim_last_end: Cell::new(None),
            trim_signal: Rc::new(TrimSignal::default()),
            persist_lock: Rc::new(AsyncLock::default()),
            staging_seq: Cell::new(0),
            staging_instance: sys::random_u64() as u32,
            pending_unlinks: RefCell::new(Vec::new()),
            durable_dirs: RefCell::new(HashSet::new()),
            dir_changes: Cell::new(0),
            closed: Cell::new(false),
            #[cfg(feature = "sim")]
            faults: builder.faults.unwrap_or_default(),
            #[cfg(feature = "sim")]
            trimmed_log: RefCell::new(Vec::new()),
            cfg,
        });
        shared.recover().await?;
        let tasks = vec![
            glommio::spawn_local(trimmer(
                Rc::downgrade(&shared),
                Rc::clone(&shared.trim_signal),
            )),
            glommio::spawn_local(persister(Rc::downgrade(&shared))),
        ];
        shared.maybe_request_trim();
        Ok(Cache {
            shared,
            tasks,
            _lock: lock,
        })
    }
}

impl<S: CacheDisk> Shared<S> {
    /// Startup: load the tracker, clean up, rebuild accounting from disk.
    async fn recover(self: &Rc<Self>) -> Result<()> {
        let loaded = self.load_tracker().await;
        let tracker_tmp = self.root.join(TRACKER_TMP_FILE);
        match self.disk.remove(&tracker_tmp).await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::ENOENT) => {}
            Err(e) => return Err(Error::io("unlinkat", tracker_tmp, e)),
        }
        let walk = self.walk(true).await?;
        // Access order: the tracker's where it knows the key, the disk's
        // otherwise; ties keep the tracker file's order.
        let order: HashMap<&str, (u64, usize)> = loaded
            .iter()
            .enumerate()
            .map(|(i, e)| (e.key.as_str(), (e.atime_ms, i)))
            .collect();
        let mut files: Vec<(u64, usize, &fs::WalkFile)> = walk
            .files
            .iter()
            .map(|f| match order.get(f.key.as_str()) {
                Some(&(atime, index)) => (atime, index, f),
                None => (f.atime_ms, usize::MAX, f),
            })
            .collect();
        files.sort_by_key(|&(atime, index, _)| (atime, index));
        // A size is trusted only once checked (see `fs::size_refusal`);
        // the totals are summed checked, so a trim can take them apart.
        let mut refused: Vec<(&str, fs::SizeRefusal)> = Vec::new();
        {
            let mut tracker = self.tracker.borrow_mut();
            for (atime, _, file) in &files {
                let refusal = fs::size_refusal(file.bytes, file.recorded_bytes, self.bytes_limit)
                    .or_else(|| {
                        (!self.ledger.try_add_used(file.bytes, 1))
                            .then_some(fs::SizeRefusal::TotalPastMax { bytes: file.bytes })
                    });
                match refusal {
                    Some(reason) => refused.push((&file.key, reason)),
                    None => {
                        tracker.insert_at(&file.key, file.bytes, *atime);
                    }
                }
            }
        }
        for rel in &walk.staging {
            match self.unlink_rel(rel, false).await {
                Ok(()) => self.metrics.orphans_removed.inc(),
                Err(e) if errno(&e) == Some(libc::ENOENT) => {}
                Err(e) => return Err(Error::io("unlinkat", self.object_path(rel), e)),
            }
        }
        // Damaged (or never to be served): removed rather than left at a
        // key, where it would make every commit to the key a conflict. Not
        // made durable: one a crash brings back is removed again.
        for (key, reason) in &refused {
            let path = self.object_path(key);
            tracing::warn!(key, path = %path.display(), %reason, "object file not accounted; removing it");
            let unlinked = if self.inject_refused_unlink_failure() {
                Err(std::io::Error::from_raw_os_error(libc::EIO))
            } else {
                self.unlink_rel(key, false).await
            };
            match unlinked {
                Ok(()) => self.metrics.refused_at_startup.inc(),
                Err(e) if errno(&e) == Some(libc::ENOENT) => {}
                // Untracked, so never served (a read misses; `invalidate`
                // or a `Tiered` download to the key removes it), but it
                // stays on disk and the next startup refuses it again.
                Err(error) => {
                    self.metrics.refused_at_startup.inc();
                    tracing::error!(key, path = %path.display(), %error,
                        "could not remove an object file not accounted; it stays at its key, untracked");
                }
            }
        }
        self.remove_empty_dirs(&walk.dirs_deepest_first).await;
        if !walk.foreign.is_empty() {
            tracing::warn!(
                count = walk.foreign.len(),
                first = walk.foreign.first().map(String::as_str),
                "entries in the cache directory that are not cache objects were left alone"
            );
        }
        let used = self.ledger.state();
        tracing::info!(
            objects = used.used_objects,
            bytes = used.used_bytes,
            orphans = walk.staging.len(),
            refused = refused.len(),
            "cache recovered"
        );
        Ok(())
    }

    /// Walks `objects/` through the disk (reading each object file's
    /// checksum attribute `with_checksums`).
    pub(crate) async fn walk(&self, with_checksums: bool) -> Result<fs::Walk> {
        fs::walk(&self.disk, &self.objects_path, with_checksums).await
    }
}

impl<S: CacheDisk> CacheBuilder<S> {
    /// Validates the settings, prepares the directory (see the module docs
    /// for the startup steps) and opens the cache. Must run on a glommio
    /// executor.
    pub async fn open(self) -> Result<Cache<S>> {
        Cache::open(self).await
    }
}

/// Every object carries its checksum in an extended attribute: a
/// filesystem without user attributes (tmpfs before Linux 6.6, some
/// network and FUSE filesystems) is refused at open, before anything is
/// written, rather than at every write and read. Asks for the attribute on
/// the layout file, which has none: "no such attribute" is the answer of a
/// filesystem that has them.
async fn check_attributes_supported<S: CacheDisk>(disk: &S, root: &Path) -> Result<()> {
    let layout = root.join(LAYOUT_FILE);
    let file = disk
        .open_buffered(&layout)
        .await
        .map_err(|e| Error::io("open", &layout, e))?;
    let asked = disk.object_checksum(&file).await;
    if let Err(error) = file.close().await {
        tracing::debug!(%error, path = %layout.display(), "closing the layout file");
    }
    match asked {
        Ok(_) => Ok(()),
        Err(e) if errno(&e) == Some(libc::EOPNOTSUPP) => Err(Error::NoExtendedAttributes {
            path: root.to_path_buf(),
        }),
        Err(e) => Err(Error::io("fgetxattr", layout, e)),
    }
}
