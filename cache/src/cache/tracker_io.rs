//! Persisting the access tracker (`tracker.tmp`, fdatasync, rename,
//! directory fsync) and loading it at startup (a missing or damaged one is
//! ignored: access order only).

use super::*;

impl Shared {
    /// Persists the tracker: encode, write `tracker.tmp`, fdatasync, rename
    /// over `tracker`, fsync the root.
    pub(crate) async fn persist_tracker(&self) -> Result<()> {
        let _guard = self.persist_lock.lock().await;
        let encoded = {
            let mut tracker = self.tracker.borrow_mut();
            let count = tracker.len() as usize;
            let encoded = format::encode_tracker(
                ExactLen::new(tracker.iter_oldest_first(), count),
                self.cfg.tracker_chunk_entries,
            );
            tracker.mark_clean();
            encoded
        };
        let result = self.write_tracker(&encoded).await;
        match &result {
            Ok(()) => self.metrics.tracker_persists.inc(),
            // Try again at the next period.
            Err(_) => self.tracker.borrow_mut().mark_dirty(),
        }
        result
    }

    async fn write_tracker(&self, encoded: &[u8]) -> Result<()> {
        let tmp_path = self.root.join(TRACKER_TMP_FILE);
        let fd = self
            .uring
            .open_beneath(
                &self.root_fd,
                TRACKER_TMP_FILE,
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                0o644,
            )
            .await
            .map_err(|e| Error::io("openat2", &tmp_path, e))?;
        let file = sys::buffered_file_from_fd(fd);
        let mut offset = 0usize;
        while offset < encoded.len() {
            let end = (offset + TRACKER_WRITE_BYTES).min(encoded.len());
            let written = file
                .write_at(encoded[offset..end].to_vec(), offset as u64)
                .await
                .map_err(|e| Error::io("write", &tmp_path, glommio_io(e)))?;
            if written == 0 {
                return Err(Error::io(
                    "write",
                    &tmp_path,
                    std::io::Error::new(std::io::ErrorKind::WriteZero, "wrote 0 bytes"),
                ));
            }
            offset += written;
        }
        file.fdatasync()
            .await
            .map_err(|e| Error::io("fdatasync", &tmp_path, glommio_io(e)))?;
        drop(file);
        self.uring
            .rename(&self.root_fd, TRACKER_TMP_FILE, TRACKER_FILE)
            .await
            .map_err(|e| Error::io("renameat", self.root.join(TRACKER_FILE), e))?;
        self.uring
            .fsync(&self.root_fd)
            .await
            .map_err(|e| Error::io("fsync", &self.root, e))
    }

    pub(super) async fn load_tracker(&self) -> Vec<format::LoadedEntry> {
        let path = self.root.join(TRACKER_FILE);
        match self.read_tracker_file(&path).await {
            Ok(None) => Vec::new(),
            Ok(Some(bytes)) => match format::decode_tracker(&bytes) {
                Ok(entries) => entries,
                Err(reason) => {
                    tracing::warn!(path = %path.display(), %reason,
                        "ignoring the tracker file; access times rebuilt from a directory walk");
                    self.metrics.tracker_load_failures.inc();
                    Vec::new()
                }
            },
            Err(error) => {
                tracing::warn!(path = %path.display(), %error,
                    "cannot read the tracker file; access times rebuilt from a directory walk");
                self.metrics.tracker_load_failures.inc();
                Vec::new()
            }
        }
    }

    async fn read_tracker_file(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
        let fd = match self
            .uring
            .open_beneath(&self.root_fd, TRACKER_FILE, libc::O_RDONLY, 0)
            .await
        {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let fd = Rc::new(fd);
        let size = self.uring.stat_fd(&fd).await?.bytes;
        let fd = Rc::try_unwrap(fd)
            .map_err(|_| std::io::Error::other("tracker fd still held by the metadata ring"))?;
        let file = sys::buffered_file_from_fd(fd);
        if size > TRACKER_FILE_BYTES_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is {size} bytes, above TRACKER_FILE_BYTES_MAX",
                    path.display()
                ),
            ));
        }
        let object = read_to_end(&file, size, path, self)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Some(object.to_vec()))
    }
}

/// An iterator with a known length (the tracker's list walk).
struct ExactLen<I> {
    inner: I,
    remaining: usize,
}

impl<I> ExactLen<I> {
    fn new(inner: I, len: usize) -> ExactLen<I> {
        ExactLen {
            inner,
            remaining: len,
        }
    }
}

impl<I: Iterator> Iterator for ExactLen<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let item = self.inner.next()?;
        self.remaining = self.remaining.saturating_sub(1);
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<I: Iterator> ExactSizeIterator for ExactLen<I> {}
