//! The names under `objects/` and their durability: every namespace op on a
//! key runs beneath `objects/` without following symlinks; parent
//! directories are created one level at a time and their parents fsync'd;
//! unlinks that fail are remembered and retried.

use super::*;

impl Shared {
    /// Opens the directory holding `rel` (relative to `objects/`) without
    /// following any symlink and without leaving `objects/` (`openat2` with
    /// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), and returns it with `rel`'s
    /// last segment. Every namespace op on a key runs on that segment
    /// relative to this fd, so no intermediate component is ever resolved
    /// again after the check. `readable` opens it `O_RDONLY` (so it can be
    /// fsync'd), otherwise `O_PATH`.
    pub(crate) async fn parent_dir<'a>(
        &self,
        rel: &'a str,
        readable: bool,
    ) -> std::io::Result<(Rc<OwnedFd>, &'a str)> {
        match rel.rsplit_once('/') {
            None => Ok((Rc::clone(&self.objects_fd), rel)),
            Some((parent, leaf)) => {
                let mode = if readable {
                    libc::O_RDONLY
                } else {
                    libc::O_PATH
                };
                let fd = self
                    .uring
                    .open_beneath(&self.objects_fd, parent, mode | libc::O_DIRECTORY, 0)
                    .await?;
                Ok((Rc::new(fd), leaf))
            }
        }
    }

    /// `unlinkat` of `rel` (relative to `objects/`) through [`Self::parent_dir`].
    pub(crate) async fn unlink_rel(&self, rel: &str, is_dir: bool) -> std::io::Result<()> {
        let (dir, leaf) = self.parent_dir(rel, false).await?;
        self.uring.unlink(&dir, leaf, is_dir).await
    }

    /// Unlinks `key` and drops it from the accounting, if the cache tracks
    /// it (an untracked name is never unlinked: it is not a cache object).
    /// Caller holds the key lock. Returns whether anything was removed.
    pub(crate) async fn remove_object(&self, key: &str, why: &'static str) -> Result<bool> {
        if !self.tracker.borrow().contains(key) {
            return Ok(false);
        }
        let tracked = self.tracker.borrow_mut().remove(key);
        if let Some(bytes) = tracked {
            self.ledger.sub_used(bytes, 1);
        }
        match self.unlink_rel(key, false).await {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(tracked.is_some()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EXDEV)) => {
                Err(Error::rejected(key, KeyRejection::SymlinkInPath))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                Err(Error::rejected(key, KeyRejection::ParentIsObject))
            }
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
                Err(Error::rejected(key, KeyRejection::IsDirectory))
            }
            Err(e) => {
                tracing::warn!(key, why, error = %e, "unlink failed; file left untracked");
                Err(Error::io("unlinkat", self.object_path(key), e))
            }
        }
    }

    async fn sync_objects_dir(&self) -> Result<()> {
        self.fsync_dir(&self.objects_fd)
            .await
            .map_err(|e| Error::io("fsync", &self.objects_path, e))
    }

    async fn sync_dir_rel(&self, rel: &str) -> Result<()> {
        let path = self.object_path(rel);
        let fd = self
            .uring
            .open_beneath(&self.objects_fd, rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .await
            .map_err(|e| Error::io("openat2", &path, e))?;
        self.fsync_dir(&Rc::new(fd))
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
                Err(Error::Io { source, .. })
                    if matches!(
                        source.raw_os_error(),
                        Some(libc::ENOENT)
                            | Some(libc::ENOTDIR)
                            | Some(libc::ELOOP)
                            | Some(libc::EXDEV)
                    ) =>
                {
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
                    if source.raw_os_error() == Some(libc::ENOENT)
                        && attempt < STAGING_CREATE_ATTEMPTS_MAX => {}
                other => return other,
            }
        }
    }

    async fn try_parent_dirs(&self, key: &Key) -> Result<()> {
        // Walk down holding each level's fd: every level is opened relative
        // to the one above with RESOLVE_NO_SYMLINKS, so a symlink swapped in
        // after a check can never be followed.
        let mut current = Rc::clone(&self.objects_fd);
        for level in key.ancestors() {
            let path = self.object_path(level);
            let segment = level.rsplit_once('/').map_or(level, |(_, s)| s);
            let mut made = false;
            let opened = loop {
                let open = self
                    .uring
                    .open_beneath(&current, segment, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    .await;
                match open {
                    Ok(fd) => break fd,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !made => {
                        made = true;
                        match self.uring.mkdir(&current, segment, 0o755).await {
                            // EEXIST: created concurrently, by a task that may
                            // not have fsync'd its parent yet; ours does.
                            Ok(()) => {}
                            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                            // ENOENT: this level's parent was just removed;
                            // the caller retries.
                            Err(e) => return Err(Error::io("mkdirat", path, e)),
                        }
                        self.unsynced_dirs.borrow_mut().insert(level.to_owned());
                    }
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EXDEV)) => {
                        return Err(Error::rejected(key.as_str(), KeyRejection::SymlinkInPath))
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                        return Err(Error::rejected(key.as_str(), KeyRejection::ParentIsObject))
                    }
                    Err(e) => return Err(Error::io("openat2", path, e)),
                }
            };
            current = Rc::new(opened);
        }
        self.sync_new_ancestors(key).await
    }

    /// fsyncs the parent of every directory above `key` that this process
    /// created (or found just created) and has not yet made durable, so a
    /// commit under it never returns before the directory chain survives a
    /// crash, whichever task created the directory.
    pub(crate) async fn sync_new_ancestors(&self, key: &Key) -> Result<()> {
        for level in key.ancestors() {
            if !self.unsynced_dirs.borrow().contains(level) {
                continue;
            }
            match level.rsplit_once('/') {
                None => self.sync_objects_dir().await?,
                Some((parent, _)) => self.sync_dir_rel(parent).await?,
            }
            self.unsynced_dirs.borrow_mut().remove(level);
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
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT)
                            | Some(libc::ENOTDIR)
                            | Some(libc::ELOOP)
                            | Some(libc::EXDEV)
                    ) => {}
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
