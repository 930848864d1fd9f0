//! The names under `objects/` and their durability: every namespace op on a
//! key goes through the cache's disk, which resolves it beneath the root
//! without following symlinks; parent directories are created one level at
//! a time and their parents fsync'd; unlinks that fail are remembered and
//! retried.

use super::*;

impl<S: CacheDisk> Shared<S> {
    /// Removes `rel` (relative to `objects/`): a file, or an empty
    /// directory when `is_dir`. The disk resolves it beneath the root
    /// without following a symlink (ELOOP or EXDEV if one is in the way).
    pub(crate) async fn unlink_rel(&self, rel: &str, is_dir: bool) -> std::io::Result<()> {
        let path = self.object_path(rel);
        if is_dir {
            let removed = self.disk.remove_dir(&path).await;
            if removed.is_ok() {
                // Made again, it is a new directory: not durable.
                self.durable_dirs.borrow_mut().remove(rel);
                self.dir_changes.set(self.dir_changes.get() + 1);
            }
            removed
        } else {
            self.disk.remove(&path).await
        }
    }

    /// Unlinks `key` and drops it from the accounting if the cache tracks
    /// it; an untracked regular file at `key` is unlinked too (see
    /// [`Shared::remove_untracked`]). Caller holds the key lock. Returns
    /// whether anything was removed.
    pub(crate) async fn remove_object(&self, key: &str, why: &'static str) -> Result<bool> {
        if !self.tracker.borrow().contains(key) {
            return self.remove_untracked(key, why).await;
        }
        let tracked = self.tracker.borrow_mut().remove(key);
        if let Some(bytes) = tracked {
            self.ledger.sub_used(bytes, 1);
        }
        let unlinked = self.unlink_rel(key, false).await;
        // An exhaustive walk that began after the tracker removal above may
        // have listed the file before this unlink: its listing of the key is
        // stale, so the walk must not add the file back (phantom bytes).
        self.tracker.borrow_mut().note_walk_change(key);
        match unlinked.as_ref().map_err(errno) {
            Ok(()) => Ok(true),
            Err(Some(libc::ENOENT)) => Ok(tracked.is_some()),
            Err(Some(libc::ELOOP) | Some(libc::EXDEV)) => {
                Err(Error::rejected(key, KeyRejection::SymlinkInPath))
            }
            Err(Some(libc::ENOTDIR)) => Err(Error::rejected(key, KeyRejection::ParentIsObject)),
            Err(Some(libc::EISDIR)) => Err(Error::rejected(key, KeyRejection::IsDirectory)),
            Err(_) => {
                let e = unlinked.expect_err("matched an error");
                tracing::warn!(key, why, error = %e, "unlink failed; file left untracked");
                Err(Error::io("unlinkat", self.object_path(key), e))
            }
        }
    }

    /// Unlinks a regular file at `key` the cache does not track: one left
    /// by an unlink that failed (an invalidate's, a trim's, a startup
    /// refusal's) or put there behind the cache's back. Left in place it
    /// would make every commit to the key a conflict, and the next startup
    /// would account it as an object, stale or not. Anything else at the
    /// key (a directory, a symlink, a symlink on the way) is not the
    /// cache's and is left alone. Caller holds the key lock.
    async fn remove_untracked(&self, key: &str, why: &'static str) -> Result<bool> {
        let path = self.object_path(key);
        match self.disk.stat(&path).await {
            Ok(meta) if meta.kind == EntryKind::File => {}
            Ok(_) => return Ok(false),
            Err(e) if is_not_ours(&e) => return Ok(false),
            Err(e) => return Err(Error::io("statx", path, e)),
        }
        match self.unlink_rel(key, false).await {
            Ok(()) => {
                // An exhaustive walk in flight may have listed it: it must
                // not adopt the key from that listing.
                self.tracker.borrow_mut().note_walk_change(key);
                tracing::warn!(key, why, path = %path.display(), "removed a file at the key that the cache did not track");
                Ok(true)
            }
            // Swapped for something else since the stat: not ours either.
            Err(e) if is_not_ours(&e) || errno(&e) == Some(libc::EISDIR) => Ok(false),
            Err(e) => Err(Error::io("unlinkat", path, e)),
        }
    }

    async fn sync_objects_dir(&self) -> Result<()> {
        self.fsync_dir(&self.objects_path)
            .await
            .map_err(|e| Error::io("fsync", &self.objects_path, e))
    }

    async fn sync_dir_rel(&self, rel: &str) -> Result<()> {
        let path = self.object_path(rel);
        self.fsync_dir(&path)
            .await
            .map_err(|e| Error::io("fsync", &path, e))
    }

    /// fsyncs `dir` (relative to `objects/`; `None` is `objects/` itself),
    /// or, if it is gone (or is not a real directory inside the cache), its
    /// nearest existing ancestor: whatever removed it is then durable.
    pub(crate) async fn sync_nearest_dir(&self, dir: Option<&str>) -> Result<()> {
        let mut dir = dir;
        while let Some(rel) = dir {
            match self.sync_dir_rel(rel).await {
                Err(Error::Io { source, .. }) if is_not_ours(&source) => {
                    dir = rel.rsplit_once('/').map(|(parent, _)| parent);
                }
                other => return other,
            }
        }
        self.sync_objects_dir().await
    }

    /// Creates the directories above `key`, one level at a time, checking
    /// that each existing level is a real directory (never a symlink) before
    /// creating anything inside it. New directories are made durable by an
    /// fsync of their parent. A level removed under us (a trim sweeping empty
    /// directories) restarts the chain, at most
    /// [`STAGING_CREATE_ATTEMPTS_MAX`] times.
    pub(crate) async fn ensure_parent_dirs(&self, key: &Key) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_parent_dirs(key).await {
                Err(Error::Io { source, .. })
                    if errno(&source) == Some(libc::ENOENT)
                        && attempt < STAGING_CREATE_ATTEMPTS_MAX => {}
                other => return other,
            }
        }
    }

    async fn try_parent_dirs(&self, key: &Key) -> Result<()> {
        // Outermost first. The disk resolves each level beneath the root
        // without following a symlink, so a symlink swapped in after a
        // level was checked is refused at the next call, never followed.
        for level in key.ancestors() {
            let path = self.object_path(level);
            let made = self.disk.create_dir(&path).await;
            match made.as_ref().map_err(errno) {
                Ok(()) => self.dir_changes.set(self.dir_changes.get() + 1),
                // Created concurrently, by a task that may not have fsync'd
                // its parent yet (and may never: it can be dropped), or by
                // an earlier instance that crashed before it did: ours
                // does. It must be a real directory.
                Err(Some(libc::EEXIST)) => match self.disk.stat(&path).await {
                    Ok(meta) if meta.kind == EntryKind::Dir => {}
                    Ok(meta) if meta.kind == EntryKind::File => {
                        return Err(Error::rejected(key.as_str(), KeyRejection::ParentIsObject))
                    }
                    Ok(_) => {
                        return Err(Error::rejected(key.as_str(), KeyRejection::SymlinkInPath))
                    }
                    // Removed since (a trim's sweep): the caller retries.
                    Err(e) => return Err(Error::io("statx", path, e)),
                },
                Err(Some(libc::ELOOP) | Some(libc::EXDEV)) => {
                    return Err(Error::rejected(key.as_str(), KeyRejection::SymlinkInPath))
                }
                Err(Some(libc::ENOTDIR)) => {
                    return Err(Error::rejected(key.as_str(), KeyRejection::ParentIsObject))
                }
                // ENOENT: this level's parent was just removed; the caller
                // retries.
                Err(_) => {
                    let e = made.expect_err("matched an error");
                    return Err(Error::io("mkdirat", path, e));
                }
            };
            // The level's entry is made durable in its parent in every
            // case: nothing tells a level another task (which may have been
            // dropped) or a crashed instance made and never synced from an
            // old one. An extra fsync, only when a key's directory was
            // missing.
            self.durable_dirs.borrow_mut().remove(level);
        }
        self.sync_new_ancestors(key).await
    }

    /// fsyncs the parent of every directory above `key` that this instance
    /// has not made durable itself, so a commit under it never returns
    /// before the directory chain survives a crash, whoever created the
    /// directory: a task of this instance, or an earlier instance that
    /// never synced it (a put into such a directory finds it in place and
    /// creates nothing). One fsync per level per instance.
    pub(crate) async fn sync_new_ancestors(&self, key: &Key) -> Result<()> {
        for level in key.ancestors() {
            if self.durable_dirs.borrow().contains(level) {
                continue;
            }
            // A directory removed and made again while the fsync is in
            // flight is not the one it covered: recorded only if no
            // directory was made or removed meanwhile (another commit
            // under it then syncs again).
            let changes = self.dir_changes.get();
            match level.rsplit_once('/') {
                None => self.sync_objects_dir().await?,
                Some((parent, _)) => self.sync_dir_rel(parent).await?,
            }
            if self.dir_changes.get() == changes {
                self.durable_dirs.borrow_mut().insert(level.to_owned());
            }
        }
        Ok(())
    }

    /// Removes now-empty directories above `key`, deepest first, stopping at
    /// the first that is not empty. Never removes `objects/` or the root.
    pub(crate) async fn remove_empty_parents(&self, key: &str) {
        let mut rel = key;
        while let Some((parent, _)) = rel.rsplit_once('/') {
            match self.unlink_rel(parent, true).await {
                Ok(()) => self.metrics.empty_dirs_removed.inc(),
                Err(_) => return,
            }
            rel = parent;
        }
    }

    /// Remembers a dead staging name for a later unlink.
    pub(crate) fn defer_unlink(&self, rel: String) {
        let mut pending = self.pending_unlinks.borrow_mut();
        if pending.len() < PENDING_UNLINKS_MAX {
            pending.push(rel);
        } else {
            tracing::warn!(
                rel,
                "too many dead staging names; leaving it for startup cleanup"
            );
        }
    }

    /// Unlinks dead staging names remembered by `defer_unlink`.
    pub(crate) async fn retry_pending_unlinks(&self) {
        let pending = std::mem::take(&mut *self.pending_unlinks.borrow_mut());
        for rel in pending {
            match self.unlink_rel(&rel, false).await {
                Ok(()) => self.metrics.orphans_removed.inc(),
                // Gone, or its directory is no longer a real one inside the
                // cache: nothing of ours to remove.
                Err(e) if is_not_ours(&e) => {}
                Err(error) => {
                    tracing::warn!(rel, %error, "retrying a staging unlink failed");
                    self.defer_unlink(rel);
                }
            }
        }
    }

    /// Removes the given directories if empty (deepest first).
    pub(crate) async fn remove_empty_dirs(&self, dirs_deepest_first: &[String]) {
        for rel in dirs_deepest_first {
            // ENOTEMPTY (or already gone): leave it.
            if self.unlink_rel(rel, true).await.is_ok() {
                self.metrics.empty_dirs_removed.inc();
            }
        }
    }
}

/// Nothing of the cache's at a name: it is gone, or a component on the way
/// is not a real directory inside the cache (a file, a symlink).
fn is_not_ours(error: &std::io::Error) -> bool {
    matches!(
        errno(error),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP) | Some(libc::EXDEV)
    )
}
