//! Persisting the access tracker (`tracker.tmp`, fdatasync, rename,
//! directory fsync) and loading it at startup (a missing or damaged one is
//! ignored: access order only).

use super::*;

impl<S: CacheDisk> Shared<S> {
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
        // A leftover of a persist that failed midway: it is replaced.
        match self.disk.remove(&tmp_path).await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::ENOENT) => {}
            Err(e) => return Err(Error::io("unlinkat", &tmp_path, e)),
        }
        let file = self
            .disk
            .create_buffered(&tmp_path)
            .await
            .map_err(|e| Error::io("create", &tmp_path, e))?;
        let written = async {
            let mut offset = 0usize;
            while offset < encoded.len() {
                let end = (offset + TRACKER_WRITE_BYTES).min(encoded.len());
                let written = file
                    .write_at(encoded[offset..end].to_vec(), offset as u64)
                    .await
                    .map_err(|e| Error::io("write", &tmp_path, e))?;
                if written == 0 {
                    return Err(Error::io(
                        "write",
                        &tmp_path,
                        std::io::Error::new(std::io::ErrorKind::WriteZero, "wrote 0 bytes"),
                    ));
                }
                offset += written;
            }
            file.sync()
                .await
                .map_err(|e| Error::io("fdatasync", &tmp_path, e))
        }
        .await;
        let _ = file.close().await;
        written?;
        let tracker_path = self.root.join(TRACKER_FILE);
        self.disk
            .rename(&tmp_path, &tracker_path)
            .await
            .map_err(|e| Error::io("renameat", tracker_path, e))?;
        self.disk
            .sync_dir(&self.root)
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
        let file = match self.disk.open_buffered(path).await {
            Ok(file) => file,
            Err(e) if errno(&e) == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let read = async {
            let size = file.file_len().await?;
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
        .await;
        let _ = file.close().await;
        read
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
