//! Pins `Cache::adopt`: a finished file joins the cache as a committed
//! object by a hard link of the open file (same inode, no copy), accounted
//! and durable across a reopen; nested keys get their directories; an
//! existing key is a `Conflict`; symlinks, directories and missing files
//! are refused with typed errors; oversize files are refused; a file on
//! another filesystem (tmpfs) is copied in instead.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{bytes, run, tempdir};
use ringstore_cache::{Adopted, Cache, Error};

#[test]
fn adopt_links_the_file_and_accounts_it() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    let file = dir.path().join("snapshot.bin");
    let data = bytes(3 << 20, 4);
    std::fs::write(&file, &data).unwrap();
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        assert_eq!(
            cache.adopt("snapshots/0001", &file).await.unwrap(),
            Adopted::Linked
        );
        let object = cache.objects_dir().join("snapshots/0001");
        assert_eq!(
            std::fs::metadata(&object).unwrap().ino(),
            std::fs::metadata(&file).unwrap().ino()
        );
        let stats = cache.stats();
        assert_eq!((stats.objects, stats.bytes), (1, data.len() as u64));
        assert_eq!((stats.reserved_bytes, stats.reserved_objects), (0, 0));
        assert_eq!((stats.adopted_linked, stats.adopted_copied), (1, 0));
        assert_eq!(
            &cache.get("snapshots/0001").await.unwrap().unwrap()[..],
            &data[..]
        );
        // The caller's name can go; the object stays.
        std::fs::remove_file(&file).unwrap();
        cache.shutdown().await.unwrap();
        let cache = Cache::builder(&root).open().await.unwrap();
        assert_eq!(cache.stats().bytes, data.len() as u64);
        assert_eq!(
            &cache.get("snapshots/0001").await.unwrap().unwrap()[..],
            &data[..]
        );
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn adopt_refuses_an_existing_key_and_bad_sources() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    let file = dir.path().join("f");
    std::fs::write(&file, b"new bytes").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let subdir = dir.path().join("subdir");
    std::fs::create_dir(&subdir).unwrap();
    let missing = dir.path().join("missing");
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        cache.put("k", b"old").await.unwrap();
        assert!(matches!(
            cache.adopt("k", &file).await,
            Err(Error::Conflict { key }) if key == "k"
        ));
        assert!(matches!(
            cache.adopt("via-symlink", &link).await,
            Err(Error::Io { op: "open", .. })
        ));
        assert!(matches!(
            cache.adopt("a-dir", &subdir).await,
            Err(Error::Io { op: "open", .. })
        ));
        assert!(matches!(
            cache.adopt("gone", &missing).await,
            Err(Error::Io { op: "open", .. })
        ));
        assert!(matches!(
            cache.adopt("bad/../key", &file).await,
            Err(Error::KeyRejected { .. })
        ));
        assert_eq!(&cache.get("k").await.unwrap().unwrap()[..], b"old");
        let stats = cache.stats();
        assert_eq!((stats.objects, stats.bytes), (1, 3));
        assert_eq!((stats.reserved_bytes, stats.reserved_objects), (0, 0));
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn adopt_refuses_oversize_files() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    let file = dir.path().join("big");
    std::fs::write(&file, bytes(100_000, 1)).unwrap();
    run(move || async move {
        let cache = Cache::builder(&root)
            .bytes_limit(64 << 10)
            .chunk_bytes(4 << 10)
            .open()
            .await
            .unwrap();
        assert!(matches!(
            cache.adopt("big", &file).await,
            Err(Error::Oversize { bytes: 100_000, .. })
        ));
        assert_eq!(cache.stats().objects, 0);
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn adopt_copies_across_filesystems() {
    let shm = std::path::Path::new("/dev/shm");
    let dir = tempdir();
    let same_fs = std::fs::metadata(shm)
        .map(|m| m.dev() == std::fs::metadata(dir.path()).unwrap().dev())
        .unwrap_or(true);
    if same_fs {
        eprintln!("no second filesystem at /dev/shm; skipping");
        return;
    }
    let other = tempfile::tempdir_in(shm).unwrap();
    let file = other.path().join("segment");
    let data = bytes(2 << 20, 9);
    std::fs::write(&file, &data).unwrap();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        assert_eq!(cache.adopt("seg", &file).await.unwrap(), Adopted::Copied);
        assert_ne!(
            std::fs::metadata(cache.objects_dir().join("seg"))
                .unwrap()
                .ino(),
            std::fs::metadata(&file).unwrap().ino()
        );
        assert_eq!(&cache.get("seg").await.unwrap().unwrap()[..], &data[..]);
        let stats = cache.stats();
        assert_eq!((stats.adopted_linked, stats.adopted_copied), (0, 1));
        assert_eq!((stats.objects, stats.bytes), (1, data.len() as u64));
        assert_eq!(stats.reserved_bytes, 0);
        cache.shutdown().await.unwrap();
        drop(other);
    });
}
