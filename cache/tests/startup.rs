//! Pins startup recovery: orphaned `.part` files and `tracker.tmp` are
//! removed, empty directories are removed but `objects/` and the cache root
//! are kept, sizes and counts are rebuilt from disk (not trusted from the
//! tracker; a file of another size than its checksum records is removed
//! instead), a second instance on the same directory is refused, and an
//! unknown layout version is a typed error.

mod common;

use common::{bytes, run, tempdir, tree};
use ringstore_cache::{Cache, Error};

#[test]
fn startup_removes_orphans_and_empty_dirs_but_keeps_the_root() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        cache.put("keep/me", &bytes(1234, 1)).await.unwrap();
        cache.put("top", &bytes(10, 2)).await.unwrap();
        cache.shutdown().await.unwrap();

        let objects = root.join("objects");
        // Debris a crash can leave: staging files (some alone in their
        // directories), empty directories, an interrupted tracker write.
        std::fs::write(objects.join("top.7.part"), b"partial").unwrap();
        std::fs::create_dir_all(objects.join("keep/staging-only")).unwrap();
        std::fs::write(objects.join("keep/staging-only/x.0.part"), b"p").unwrap();
        std::fs::create_dir_all(objects.join("empty/nested/deeper")).unwrap();
        std::fs::write(root.join("tracker.tmp"), b"half a tracker").unwrap();
        // And an object written behind the cache's back: it is adopted.
        std::fs::write(objects.join("adopted"), bytes(99, 3)).unwrap();

        let cache = Cache::builder(&root).open().await.unwrap();
        assert_eq!(
            tree(&objects),
            ["adopted", "keep/", "keep/me", "top"].map(String::from)
        );
        assert!(!root.join("tracker.tmp").exists());
        assert!(objects.is_dir() && root.is_dir());
        let stats = cache.stats();
        assert_eq!(stats.orphans_removed, 2);
        assert_eq!(stats.empty_dirs_removed, 4);
        assert_eq!((stats.objects, stats.bytes), (3, 1234 + 10 + 99));
        assert_eq!(
            &cache.get("keep/me").await.unwrap().unwrap()[..],
            &bytes(1234, 1)[..]
        );
        cache.shutdown().await.unwrap();

        // Everything empty: objects/ and the root still stay.
        let cache = Cache::builder(&root).open().await.unwrap();
        for key in ["adopted", "keep/me", "top"] {
            assert!(cache.invalidate(key).await.unwrap());
        }
        cache.shutdown().await.unwrap();
        let cache = Cache::builder(&root).open().await.unwrap();
        assert_eq!(tree(&objects), Vec::<String>::new());
        assert!(objects.is_dir());
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn sizes_come_from_disk_not_from_the_tracker() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        cache.put("a", &bytes(100, 0)).await.unwrap();
        cache.put("b", &bytes(200, 0)).await.unwrap();
        cache.put("c", &bytes(300, 0)).await.unwrap();
        cache.shutdown().await.unwrap();
        // Changed while the cache was down: replaced by a new file (no
        // checksum: accounted by its size, not served), removed, and
        // rewritten in place (its checksum records another size: removed).
        std::fs::remove_file(root.join("objects/a")).unwrap();
        std::fs::write(root.join("objects/a"), bytes(150, 0)).unwrap();
        std::fs::remove_file(root.join("objects/b")).unwrap();
        std::fs::write(root.join("objects/c"), bytes(350, 0)).unwrap();
        let cache = Cache::builder(&root).open().await.unwrap();
        let stats = cache.stats();
        assert_eq!((stats.objects, stats.bytes), (1, 150));
        assert!(!cache.contains("b").unwrap());
        assert!(!cache.contains("c").unwrap());
        assert_eq!(stats.refused_at_startup, 1);
        assert!(!root.join("objects/c").exists());
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn one_instance_per_directory_and_layout_is_checked() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        let err = Cache::builder(&root).open().await.err().unwrap();
        assert!(matches!(err, Error::Locked { .. }), "{err}");
        cache.shutdown().await.unwrap();
        std::fs::write(root.join("layout"), "ringstore-cache layout 99\n").unwrap();
        let err = Cache::builder(&root).open().await.err().unwrap();
        assert!(matches!(err, Error::UnsupportedLayout { .. }), "{err}");
        let err = Cache::builder(&root)
            .objects_limit(0)
            .open()
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                Error::Config {
                    field: "objects_limit",
                    ..
                }
            ),
            "{err}"
        );
    });
}

/// An earlier instance made `objects/` and died (or its fsync failed)
/// before the root's entry for it was synced; the next open finds it in
/// place. A put that open acknowledges must survive a power loss that
/// undoes every unsynced directory operation: the open syncs the root
/// whether it made `objects/` or found it. (It took a found `objects/` for
/// durable, and the loss took the directory with the object.)
#[test]
fn an_object_put_into_an_objects_dir_an_earlier_instance_never_synced_survives_a_power_loss() {
    use ringstore_journal::storage::{MemStorage, Storage};
    run(|| async {
        let root = std::path::Path::new("/disk/cache");
        let objects = root.join("objects");
        // Every unsynced directory operation is undone by a crash.
        let disk = MemStorage::new();
        let cache = Cache::builder(root)
            .disk(disk.clone())
            .open()
            .await
            .unwrap();
        cache.shutdown().await.unwrap();
        // What a dead instance leaves: `objects/` made, its entry unsynced.
        disk.remove_dir(&objects).await.unwrap();
        disk.sync_dir(root).await.unwrap();
        disk.create_dir(&objects).await.unwrap();
        let cache = Cache::builder(root)
            .disk(disk.clone())
            .open()
            .await
            .unwrap();
        cache.put("k", b"acknowledged").await.unwrap();
        drop(cache);
        disk.crash();
        let cache = Cache::builder(root)
            .disk(disk.clone())
            .open()
            .await
            .unwrap();
        let got = cache.get("k").await.unwrap().map(|o| o.to_vec());
        assert_eq!(got.as_deref(), Some(&b"acknowledged"[..]));
        cache.shutdown().await.unwrap();
    });
}
