//! The shard's domain identity: which domain (a UUID) its data belongs to.
//!
//! Written once, when a shard is created or reset into a domain, to
//! `<shard dir>/identity` (format in `engine/FORMAT.md`) through the same
//! temporary file, fdatasync, rename and directory fsync as a snapshot.
//! Snapshots carry the domain too, and a snapshot of another domain is never
//! loaded; object storage keys are prefixed with it.

use crate::error::{Error, Result};
use crate::snapshot::format::{
    unix_ms_now, IdentityHeader, BLOCK_BYTES, IDENTITY_FORMAT_VERSION, IDENTITY_HEADER_BYTES,
    IDENTITY_MAGIC,
};
use ringstore_journal::storage::{IoBuf, Storage, StorageFile};
use std::{io, path::Path};
use uuid::Uuid;
use zerocopy::{FromBytes, IntoBytes};

/// Name of the identity file in the shard directory.
pub const IDENTITY_FILE_NAME: &str = "identity";
const IDENTITY_TEMP_NAME: &str = "identity.tmp";

/// Reads the identity in `dir`: `Ok(None)` if there is none.
pub async fn read_identity<S: Storage>(storage: &S, dir: &Path) -> Result<Option<Uuid>> {
    let path = dir.join(IDENTITY_FILE_NAME);
    let file = match storage.open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open identity file", &path, e)),
    };
    let read = file.read_at(0, BLOCK_BYTES as usize).await;
    let _ = file.close().await;
    let bytes = read.map_err(|e| Error::io("read identity file", &path, e))?;
    let damaged = |reason: &str| Error::Identity {
        path: path.clone(),
        reason: format!(
            "identity file is damaged ({reason}); it names the domain this shard's data \
             belongs to. Restore it from a backup, or move the shard dir aside and restore the \
             shard from object storage"
        ),
    };
    let (header, _) = IdentityHeader::read_from_prefix(&bytes[..]).map_err(|_| {
        damaged(&format!(
            "{} bytes, need {IDENTITY_HEADER_BYTES}",
            bytes.len()
        ))
    })?;
    if header.magic.get() != IDENTITY_MAGIC {
        return Err(damaged("bad magic"));
    }
    if header.checksum.get() != header.compute_checksum() {
        return Err(damaged("checksum mismatch"));
    }
    if header.version.get() != IDENTITY_FORMAT_VERSION {
        return Err(Error::Identity {
            path,
            reason: format!(
                "identity format version {}, this build reads version {IDENTITY_FORMAT_VERSION}",
                header.version.get()
            ),
        });
    }
    Ok(Some(Uuid::from_bytes(header.domain)))
}

/// Writes `domain` as the identity in `dir`, durably (replacing any).
pub async fn write_identity<S: Storage>(storage: &S, dir: &Path, domain: Uuid) -> Result<()> {
    let temp = dir.join(IDENTITY_TEMP_NAME);
    let path = dir.join(IDENTITY_FILE_NAME);
    match storage.remove(&temp).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove stale identity temp file", &temp, e)),
    }
    let file = storage
        .create(&temp, false)
        .await
        .map_err(|e| Error::io("create identity file", &temp, e))?;
    let mut header = IdentityHeader {
        checksum: 0.into(),
        magic: IDENTITY_MAGIC.into(),
        version: IDENTITY_FORMAT_VERSION.into(),
        reserved: 0.into(),
        domain: *domain.as_bytes(),
        created_unix_ms: unix_ms_now().into(),
    };
    header.checksum = header.compute_checksum().into();
    let mut buf = file.alloc_buf(BLOCK_BYTES as usize);
    buf.as_bytes_mut().fill(0);
    buf.as_bytes_mut()[..IDENTITY_HEADER_BYTES].copy_from_slice(header.as_bytes());
    let written = match file.write_at(buf, 0).await {
        Ok(()) => file
            .sync()
            .await
            .map_err(|e| Error::io("fdatasync identity file", &temp, e)),
        Err(e) => Err(Error::io("write identity file", &temp, e)),
    };
    let _ = file.close().await;
    written?;
    storage
        .rename(&temp, &path)
        .await
        .map_err(|e| Error::io("rename identity file", &path, e))?;
    storage
        .sync_dir(dir)
        .await
        .map_err(|e| Error::io("fsync shard directory", dir, e))
}
