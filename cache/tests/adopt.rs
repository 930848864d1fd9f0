//! Pins `Cache::adopt`: a finished file joins the cache as a committed
//! object by a hard link of the open file (same inode, no copy), accounted
//! and durable across a reopen; nested keys get their directories; an
//! existing key is a `Conflict`; symlinks, directories and missing files
//! are refused with typed errors; oversize files are refused; a file on
//! another filesystem (tmpfs) is copied in instead; a copy (the link or the
//! label refused) caches only the bytes of the digest it was adopted with,
//! and a file that shrinks while it is copied is `AdoptedFileChanged`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{bytes, run, tempdir, until};
use ringstore_cache::{Adopted, Cache, Error, FileDigest};
use ringstore_journal::storage::MemStorage;

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

/// How a test makes the simulated disk turn an adopt into a copy.
#[derive(Debug, Clone, Copy)]
enum ForcedCopy {
    /// The caller's file cannot carry the checksum (not the process's).
    LabelRefused,
    /// The hard link is refused (another filesystem), after the label.
    LinkRefused,
}

const FORCED_COPIES: [ForcedCopy; 2] = [ForcedCopy::LabelRefused, ForcedCopy::LinkRefused];

impl ForcedCopy {
    fn arm(self, disk: &MemStorage) {
        match self {
            ForcedCopy::LabelRefused => disk.fail_next_attribute_sets(1, libc::EPERM),
            ForcedCopy::LinkRefused => disk.fail_next_links(1, libc::EXDEV),
        }
    }
}

/// Bug: an adopt that fell back to a copy committed whatever the copy read,
/// labelled with that read's own CRC, and never compared it with the digest
/// `adopt_checked` was given: a file changed (here a bit flipped) after its
/// upload's check was cached with a valid checksum and served, though the
/// store holds other bytes. The copy is now checked against the digest: a
/// mismatch is `Error::AdoptedFileChanged`, the staging copy is removed and
/// nothing is cached.
#[test]
fn a_copied_adopt_refuses_bytes_other_than_the_checked_ones() {
    for forced in FORCED_COPIES {
        run(move || async move {
            let disk = MemStorage::new();
            let root = Path::new("/cache");
            let file = Path::new("/elsewhere/snapshot.bin");
            let data = bytes(300_000, 5);
            let checked = FileDigest::of(&data);
            disk.insert_file(file, data.clone());
            let (flip_at, flip_bit) = (123_456, 2);
            assert!(disk.flip_bit(file, flip_at, flip_bit));
            let mut flipped = data;
            flipped[flip_at as usize] ^= 1 << flip_bit;
            let cache = Cache::builder(root)
                .disk(disk.clone())
                .open()
                .await
                .unwrap();
            forced.arm(&disk);
            match cache.adopt_checked("snap", file, checked).await {
                Err(Error::AdoptedFileChanged {
                    key,
                    path,
                    expected_bytes,
                    expected_crc32,
                    found_bytes,
                    found_crc32,
                }) => {
                    assert_eq!((key.as_str(), path.as_path()), ("snap", file));
                    assert_eq!(
                        (expected_bytes, expected_crc32),
                        (checked.bytes, checked.crc32)
                    );
                    let found = FileDigest::of(&flipped);
                    assert_eq!((found_bytes, found_crc32), (found.bytes, Some(found.crc32)));
                }
                other => panic!("{forced:?}: expected AdoptedFileChanged, got {other:?}"),
            }
            assert!(cache.get("snap").await.unwrap().is_none(), "{forced:?}");
            let stats = cache.stats();
            assert_eq!((stats.objects, stats.bytes), (0, 0), "{forced:?}");
            assert_eq!((stats.reserved_bytes, stats.reserved_objects), (0, 0));
            assert_eq!((stats.adopted_linked, stats.adopted_copied), (0, 0));
            assert_eq!(stats.adopted_files_changed, 1, "{forced:?}");
            let objects = root.join("objects");
            let left: Vec<_> = disk
                .paths()
                .into_iter()
                .filter(|p| p.starts_with(&objects))
                .collect();
            assert!(left.is_empty(), "{forced:?}: left behind {left:?}");
            cache.shutdown().await.unwrap();
        });
    }
}

/// Bug: a file that shrank while it was copied in failed with
/// `Error::Io` (op `read`, an unexpected EOF), where a file changed in
/// place was `AdoptedFileChanged`. Both are the same fault of the caller:
/// now it is `AdoptedFileChanged` too, naming the bytes the copy read, and
/// counted. The file shrinks while the copy waits for its reservation.
#[test]
fn a_file_that_shrinks_while_it_is_copied_in_is_a_changed_file() {
    run(|| async {
        let disk = MemStorage::new();
        let root = Path::new("/cache");
        let file = Path::new("/elsewhere/snapshot.bin");
        let data = bytes(300_000, 7);
        let checked = FileDigest::of(&data);
        disk.insert_file(file, data.clone());
        let cache = Rc::new(
            Cache::builder(root)
                .disk(disk.clone())
                .bytes_limit(1u64 << 20)
                .chunk_bytes(64 << 10)
                .reservation_wait(Duration::from_secs(10))
                .open()
                .await
                .unwrap(),
        );
        // Room for the copy's first chunk, not for the rest of it.
        let held = cache
            .reserve((1 << 20) - (100 << 10), 0, Instant::now())
            .await
            .unwrap();
        disk.fail_next_attribute_sets(1, libc::EPERM);
        let adopting = glommio::spawn_local({
            let cache = Rc::clone(&cache);
            async move { cache.adopt_checked("snap", file, checked).await }
        });
        until("the copy waits for its reservation", || {
            cache.stats().reservation_waits == 1
        })
        .await;
        let kept = 100_000;
        disk.set_file_bytes(file, data[..kept].to_vec());
        drop(held);
        match adopting.await {
            Err(Error::AdoptedFileChanged {
                key,
                expected_bytes,
                found_bytes,
                found_crc32,
                ..
            }) => {
                assert_eq!((key.as_str(), expected_bytes), ("snap", checked.bytes));
                let found = FileDigest::of(&data[..kept]);
                assert_eq!((found_bytes, found_crc32), (found.bytes, Some(found.crc32)));
            }
            other => panic!("expected AdoptedFileChanged, got {other:?}"),
        }
        let stats = cache.stats();
        assert_eq!(stats.adopted_files_changed, 1);
        assert_eq!((stats.objects, stats.reserved_bytes), (0, 0));
        assert!(!cache.contains("snap").unwrap());
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
    });
}

/// The copy's check passes the checked bytes: with the link or the label
/// refused, `adopt_checked` of an unchanged file still adopts it by a copy.
#[test]
fn a_copied_adopt_of_the_checked_bytes_caches_them() {
    for forced in FORCED_COPIES {
        run(move || async move {
            let disk = MemStorage::new();
            let root = Path::new("/cache");
            let file = Path::new("/elsewhere/snapshot.bin");
            let data = bytes(300_000, 6);
            disk.insert_file(file, data.clone());
            let cache = Cache::builder(root)
                .disk(disk.clone())
                .open()
                .await
                .unwrap();
            forced.arm(&disk);
            assert_eq!(
                cache
                    .adopt_checked("snap", file, FileDigest::of(&data))
                    .await
                    .unwrap(),
                Adopted::Copied,
                "{forced:?}"
            );
            assert_eq!(&cache.get("snap").await.unwrap().unwrap()[..], &data[..]);
            let stats = cache.stats();
            assert_eq!((stats.objects, stats.bytes), (1, data.len() as u64));
            assert_eq!((stats.adopted_linked, stats.adopted_copied), (0, 1));
            assert_eq!((stats.reserved_bytes, stats.reserved_objects), (0, 0));
            cache.shutdown().await.unwrap();
        });
    }
}

/// A file inside the cache's own object directory (an object, reached by
/// its path, by `..`, or through a symlink to the directory) is refused:
/// adopting it would give the cache's own file a second key. The object
/// stays as it was, counted once.
#[test]
fn adopt_refuses_a_file_inside_the_cache() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    let file = dir.path().join("upload");
    let data = bytes(10_000, 5);
    std::fs::write(&file, &data).unwrap();
    let link = dir.path().join("link-to-objects");
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        cache.adopt("d/first", &file).await.unwrap();
        let object = cache.objects_dir().join("d/first");
        std::os::unix::fs::symlink(cache.objects_dir(), &link).unwrap();
        let dotted = cache.objects_dir().join("d/../d/first");
        for inside in [object.clone(), dotted, link.join("d/first")] {
            let refused = cache.adopt("d/second", &inside).await;
            assert!(
                matches!(&refused, Err(Error::AdoptedFileInCache { key, .. }) if key == "d/second"),
                "{}: {refused:?}",
                inside.display()
            );
        }
        assert!(!cache.contains("d/second").unwrap());
        let stats = cache.stats();
        assert_eq!((stats.objects, stats.bytes), (1, data.len() as u64));
        assert_eq!(&cache.get("d/first").await.unwrap().unwrap()[..], &data[..]);
        cache.shutdown().await.unwrap();
    });
}
