//! The contract every [`Storage`] backend keeps for the namespace calls,
//! buffered files (link, stat, remove_dir, try_lock, create/open_buffered),
//! truncating a file and opening a renamed file again for writes,
//! as one check a backend's tests run on a directory of its own: the real
//! disk's and the simulated disk's in this crate, the cache's rooted disk
//! in `ringstore-cache`. It panics on the first broken promise. Feature
//! `sim` (test support, like the simulator).

use super::{BufferedFile, EntryKind, IoBuf, Storage, StorageFile};
use std::io::ErrorKind;
use std::path::Path;

/// A buffered file at `path` holding `bytes`, synced, its name synced too.
pub async fn write_file<S: Storage>(storage: &S, path: &Path, bytes: &[u8]) {
    let file = storage.create_buffered(path).await.expect("storage call");
    let written = file
        .write_at(bytes.to_vec(), 0)
        .await
        .expect("storage call");
    assert_eq!(written, bytes.len());
    file.sync().await.expect("storage call");
    file.close().await.expect("storage call");
    storage
        .sync_dir(super::parent_dir(path))
        .await
        .expect("storage call");
}

/// The whole of the file at `path`, read through a buffered handle.
pub async fn read_file<S: Storage>(storage: &S, path: &Path) -> Vec<u8> {
    let file = storage.open_buffered(path).await.expect("storage call");
    let len = file.file_len().await.expect("storage call");
    let bytes = file
        .read_at(0, len as usize)
        .await
        .expect("storage call")
        .to_vec();
    file.close().await.expect("storage call");
    bytes
}

/// Checks the contract in `dir` (an existing, empty directory), leaving
/// its files there.
pub async fn check<S: Storage>(storage: &S, dir: &Path) {
    // Buffered files: exclusive create, writes and reads at any offset.
    let a = dir.join("a");
    let file = storage.create_buffered(&a).await.expect("storage call");
    assert_eq!(
        storage
            .create_buffered(&a)
            .await
            .expect_err("storage call should fail")
            .kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        file.write_at(b"hello, ".to_vec(), 0)
            .await
            .expect("storage call"),
        7
    );
    assert_eq!(
        file.write_at(b"world".to_vec(), 7)
            .await
            .expect("storage call"),
        5
    );
    assert_eq!(
        file.write_at(b"W".to_vec(), 7).await.expect("storage call"),
        1
    );
    file.sync().await.expect("storage call");
    assert_eq!(file.file_len().await.expect("storage call"), 12);
    assert_eq!(&*file.read_at(3, 6).await.expect("storage call"), b"lo, Wo");
    assert_eq!(
        &*file.read_at(10, 100).await.expect("storage call"),
        b"ld",
        "short at the end"
    );
    let created = file.meta().await.expect("storage call");
    file.close().await.expect("storage call");
    assert_eq!(read_file(storage, &a).await, b"hello, World");
    // Opened for reading only: a write is refused, and the open file is
    // the one its name names.
    let opened = storage.open_buffered(&a).await.expect("storage call");
    assert!(opened.write_at(b"x".to_vec(), 0).await.is_err());
    assert_eq!(opened.meta().await.expect("storage call").id, created.id);
    opened.close().await.expect("storage call");
    assert_eq!(
        storage
            .open_buffered(dir)
            .await
            .expect_err("a directory is not a buffered file")
            .kind(),
        ErrorKind::InvalidInput
    );
    let space = storage.fs_space(dir).expect("storage call");
    assert!(space.avail_bytes <= space.total_bytes && space.total_bytes > 0);
    assert_eq!(
        storage
            .open_buffered(&dir.join("missing"))
            .await
            .expect_err("storage call should fail")
            .kind(),
        ErrorKind::NotFound
    );

    // Files for O_DIRECT I/O: truncate shrinks to exactly the length asked
    // (the reclaiming of retired segments relies on it).
    let d = dir.join("d");
    let file = storage.create(&d, false).await.expect("storage call");
    let mut block = file.alloc_buf(2 * 4096);
    block.as_bytes_mut().fill(7);
    file.write_at(block, 0).await.expect("storage call");
    file.sync().await.expect("storage call");
    file.truncate(4096).await.expect("storage call");
    assert_eq!(file.file_len().await.expect("storage call"), 4096);
    let read = file.read_at(0, 2 * 4096).await.expect("storage call");
    assert_eq!(
        &*read,
        &[7u8; 4096][..],
        "the first block stays, short read"
    );
    file.truncate(0).await.expect("storage call");
    file.sync().await.expect("storage call");
    assert_eq!(file.file_len().await.expect("storage call"), 0);
    file.close().await.expect("storage call");
    assert_eq!(storage.stat(&d).await.expect("storage call").len, 0);
    storage.remove(&d).await.expect("storage call");

    // A file renamed while open, opened again under its new name for
    // writes (how a retired segment is recycled): the same bytes, its
    // length, and writes through the new handle, O_DSYNC or not.
    let old = dir.join("old");
    let new = dir.join("new");
    let file = storage.create(&old, false).await.expect("storage call");
    let mut block = file.alloc_buf(2 * 4096);
    block.as_bytes_mut().fill(5);
    file.write_at(block, 0).await.expect("storage call");
    file.sync().await.expect("storage call");
    storage.rename(&old, &new).await.expect("storage call");
    for write_through in [true, false] {
        let reopened = storage
            .open_for_writes(&new, write_through)
            .await
            .expect("storage call");
        assert_eq!(reopened.file_len().await.expect("storage call"), 2 * 4096);
        let mut block = reopened.alloc_buf(4096);
        block.as_bytes_mut().fill(u8::from(write_through) + 8);
        reopened.write_at(block, 4096).await.expect("storage call");
        reopened.sync().await.expect("storage call");
        let read = reopened.read_at(0, 2 * 4096).await.expect("storage call");
        assert_eq!(&read[..4096], &[5u8; 4096][..]);
        assert_eq!(&read[4096..], &[u8::from(write_through) + 8; 4096][..]);
        reopened.close().await.expect("storage call");
    }
    file.close().await.expect("storage call");
    match storage.open_for_writes(&old, false).await {
        Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "the old name is gone"),
        Ok(_) => panic!("the old name opened after the rename"),
    }
    storage.remove(&new).await.expect("storage call");

    // stat: kind, length, one id per file.
    let meta = storage.stat(&a).await.expect("storage call");
    assert_eq!((meta.kind, meta.len), (EntryKind::File, 12));
    assert_eq!(
        storage.stat(dir).await.expect("storage call").kind,
        EntryKind::Dir
    );
    assert_eq!(
        storage
            .stat(&dir.join("missing"))
            .await
            .expect_err("storage call should fail")
            .kind(),
        ErrorKind::NotFound
    );

    // link: a second name for the same file, never replacing.
    let b = dir.join("b");
    storage.link(&a, &b).await.expect("storage call");
    assert_eq!(storage.stat(&b).await.expect("storage call").id, meta.id);
    assert_eq!(
        storage
            .link(&a, &b)
            .await
            .expect_err("storage call should fail")
            .kind(),
        ErrorKind::AlreadyExists
    );
    write_file(storage, &dir.join("c"), b"other").await;
    assert_ne!(
        storage.stat(&dir.join("c")).await.expect("storage call").id,
        meta.id
    );
    assert_eq!(
        storage
            .link(&dir.join("c"), &b)
            .await
            .expect_err("storage call should fail")
            .kind(),
        ErrorKind::AlreadyExists,
        "an existing name is never replaced"
    );
    assert_eq!(read_file(storage, &b).await, b"hello, World");
    assert_eq!(
        storage
            .link(&dir.join("missing"), &dir.join("d"))
            .await
            .expect_err("storage call should fail")
            .kind(),
        ErrorKind::NotFound
    );
    // link_file: the open file gets a name, whatever its own name became
    // (its first name is removed before the link), never replacing.
    let opened = storage.open_buffered(&a).await.expect("storage call");
    storage.remove(&a).await.expect("storage call");
    let named = dir.join("named");
    storage
        .link_file(&opened, &named)
        .await
        .expect("storage call");
    assert_eq!(
        storage.stat(&named).await.expect("storage call").id,
        meta.id
    );
    assert_eq!(
        storage
            .link_file(&opened, &b)
            .await
            .expect_err("an existing name is never replaced")
            .kind(),
        ErrorKind::AlreadyExists
    );
    opened.close().await.expect("storage call");
    storage.remove(&named).await.expect("storage call");
    assert_eq!(
        read_file(storage, &b).await,
        b"hello, World",
        "the other name stays"
    );
    // A file whose every name is gone cannot be named again.
    let nameless = dir.join("nameless");
    write_file(storage, &nameless, b"gone").await;
    let opened = storage
        .open_buffered(&nameless)
        .await
        .expect("storage call");
    storage.remove(&nameless).await.expect("storage call");
    assert_eq!(
        storage
            .link_file(&opened, &dir.join("revived"))
            .await
            .expect_err("a nameless file is not linked")
            .kind(),
        ErrorKind::NotFound
    );
    opened.close().await.expect("storage call");

    // remove_dir: only an empty directory.
    let sub = dir.join("sub");
    storage.create_dir(&sub).await.expect("storage call");
    write_file(storage, &sub.join("x"), b"x").await;
    assert_eq!(
        storage
            .remove_dir(&sub)
            .await
            .expect_err("storage call should fail")
            .kind(),
        ErrorKind::DirectoryNotEmpty
    );
    storage.remove(&sub.join("x")).await.expect("storage call");
    storage.remove_dir(&sub).await.expect("storage call");
    assert_eq!(
        storage
            .stat(&sub)
            .await
            .expect_err("storage call should fail")
            .kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        storage
            .remove_dir(&sub)
            .await
            .expect_err("storage call should fail")
            .kind(),
        ErrorKind::NotFound
    );

    // try_lock: one holder at a time, released on drop.
    let lock_path = dir.join("lock");
    let lock = storage
        .try_lock(&lock_path, b"holder 1")
        .await
        .expect("storage call");
    assert!(lock.is_some());
    assert!(storage
        .try_lock(&lock_path, b"holder 2")
        .await
        .expect("storage call")
        .is_none());
    assert_eq!(
        read_file(storage, &lock_path).await,
        b"holder 1",
        "the holder's note"
    );
    drop(lock);
    assert!(storage
        .try_lock(&lock_path, b"holder 2")
        .await
        .expect("storage call")
        .is_some());
}
