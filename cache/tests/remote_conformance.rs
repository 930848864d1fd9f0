//! The object-storage conformance suite: one set of tests, run against
//! `LocalFileSystem` (module `local`) and against a real S3-compatible
//! server, s3s-fs on loopback (module `s3`, one server per test). Pins:
//! put/get round trips below and above the multipart part size, a miss
//! downloaded once then served from the cache, refusal of an existing key
//! (single and multipart writes), `list`, `delete` (store and cache), key
//! prefixing by domain (two domains never collide), key validation, and
//! that a write the cache could not take never leaves an older cached copy
//! to be served, nor does a stale file an unlink failed to remove (or
//! anything else at the key) get handed out by `get_path`.

mod common;
mod remote_support;

use std::path::Path;
use std::rc::Rc;

use common::{bytes, run, tempdir};
use remote_support::{staging_files, Fixture};
use ringstore_cache::faults::Faults;
use ringstore_cache::remote::PART_BYTES_MIN;
use ringstore_cache::{Cache, Error, FileDigest, RemoteError, Tiered};
use ringstore_journal::storage::MemStorage;

const DOMAIN_A: &str = "7d3c1c1e-2f0b-4e1a-9a53-000000000001";
const DOMAIN_B: &str = "7d3c1c1e-2f0b-4e1a-9a53-000000000002";

/// A multipart-sized object: more than two parts, the last one short.
const BIG_BYTES: usize = 2 * PART_BYTES_MIN as usize + 12_345;

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[test]
                fn $name() {
                    let dir = super::tempdir();
                    let fixture = super::Fixture::local(dir.path());
                    super::$name(&fixture, dir.path());
                }
            )*
        }
        mod s3 {
            $(
                #[test]
                fn $name() {
                    let dir = super::tempdir();
                    let Some(fixture) = super::Fixture::s3(dir.path()) else {
                        return;
                    };
                    super::$name(&fixture, dir.path());
                }
            )*
        }
    };
}

conformance!(
    round_trip_small_and_multipart,
    miss_downloads_once_then_hits,
    existing_key_is_refused,
    list_under_prefixes,
    delete_removes_from_store_and_cache,
    domains_never_collide,
    keys_are_validated,
    a_checked_upload_sends_the_checked_bytes_or_nothing,
    a_damaged_cached_copy_is_dropped_and_downloaded_again,
    an_uncached_write_leaves_no_stale_copy_to_serve,
    a_write_whose_commit_fails_is_read_back_new,
    a_stale_file_left_at_its_key_is_never_handed_out,
    a_key_held_by_a_foreign_entry_is_refused_not_handed_out,
    a_file_refused_at_startup_and_left_at_its_key_is_counted_and_never_served,
    a_new_copy_dropped_after_a_failed_directory_fsync_is_not_counted_stale,
);

/// A cache on a fresh simulated disk (whose faults the test arms), and
/// the disk.
async fn simulated_cache() -> (MemStorage, Rc<Cache<MemStorage>>) {
    let disk = MemStorage::new();
    let cache = Cache::builder(Path::new("/cache"))
        .disk(disk.clone())
        .open()
        .await
        .unwrap();
    (disk, Rc::new(cache))
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

fn round_trip_small_and_multipart(fixture: &Fixture, dir: &Path) {
    let remote = fixture.remote();
    let cache_dir = dir.join("cache");
    let cold_dir = dir.join("cache-cold");
    let small = bytes(1000, 3);
    let big = bytes(BIG_BYTES, 7);
    let big_file = write_file(dir, "big.bin", &big);
    let download = dir.join("download.bin");
    run(move || async move {
        let cache = Rc::new(Cache::builder(&cache_dir).open().await.unwrap());
        let tiered = Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN_A).unwrap();
        tiered.put("small", &small).await.unwrap();
        tiered.put_file("big", &big_file).await.unwrap();
        assert_eq!(remote.stats().multipart_uploads, 1, "big went up in parts");
        // The uploaded file joined the cache by a hard link, not a copy.
        assert_eq!(tiered.stats().adopted_linked, 1);
        let key = tiered.object_key("big").unwrap();
        let cached = std::fs::metadata(cache.objects_dir().join(&key)).unwrap();
        let original = std::fs::metadata(&big_file).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&cached),
            std::os::unix::fs::MetadataExt::ino(&original)
        );
        assert_eq!(remote.stats().puts, 2);
        assert_eq!(remote.stats().uploaded_bytes, (1000 + BIG_BYTES) as u64);
        // Written objects are cached: reads hit locally.
        assert_eq!(&tiered.get("small").await.unwrap().unwrap()[..], &small[..]);
        assert_eq!(&tiered.get("big").await.unwrap().unwrap()[..], &big[..]);
        assert_eq!(tiered.stats().hits, 2);
        assert_eq!(remote.stats().gets, 0);
        // A cold cache downloads both, streamed through staging files.
        let cold = Rc::new(Cache::builder(&cold_dir).open().await.unwrap());
        let cold_tiered = Tiered::new(Rc::clone(&cold), remote.clone(), DOMAIN_A).unwrap();
        assert_eq!(
            &cold_tiered.get("big").await.unwrap().unwrap()[..],
            &big[..]
        );
        assert_eq!(
            &cold_tiered.get("small").await.unwrap().unwrap()[..],
            &small[..]
        );
        assert_eq!(cold_tiered.stats().downloads, 2);
        assert_eq!(cold.stats().objects, 2);
        assert_eq!(cold.stats().bytes, (1000 + BIG_BYTES) as u64);
        assert_eq!(cold.stats().reserved_bytes, 0);
        assert!(staging_files(cold.objects_dir()).is_empty());
        // The remote's own read paths.
        let key = tiered.object_key("big").unwrap();
        let head = remote.head(&key).await.unwrap();
        assert_eq!(
            (head.key.as_str(), head.bytes),
            (key.as_str(), BIG_BYTES as u64)
        );
        assert_eq!(
            &remote.get_bytes(&key, u64::MAX).await.unwrap()[..],
            &big[..]
        );
        assert!(matches!(
            remote.get_bytes(&key, 10).await,
            Err(RemoteError::TooLarge { bytes_max: 10, .. })
        ));
        assert_eq!(
            remote.get_to_file(&key, &download).await.unwrap(),
            BIG_BYTES as u64
        );
        assert_eq!(std::fs::read(&download).unwrap(), big);
        let path = cold_tiered.get_path("big").await.unwrap().unwrap();
        assert_eq!(std::fs::read(path).unwrap(), big);
        drop(cold_tiered);
        Rc::try_unwrap(cold).unwrap().shutdown().await.unwrap();
        drop(tiered);
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

/// `put_file_checked`: a file whose bytes still match the digest its
/// caller took goes up; one changed since (a flipped bit, below and above
/// the multipart size) fails with `SourceChanged` naming both digests, and
/// the store holds nothing at the key (the single `PUT` is not sent, the
/// multipart upload is aborted before its complete), nor does the cache.
fn a_checked_upload_sends_the_checked_bytes_or_nothing(fixture: &Fixture, dir: &Path) {
    let remote = fixture.remote();
    let cache_dir = dir.join("cache");
    let small = bytes(1000, 3);
    let big = bytes(BIG_BYTES, 7);
    let files = [
        ("small", write_file(dir, "small.bin", &small), small.clone()),
        ("big", write_file(dir, "big.bin", &big), big.clone()),
    ];
    run(move || async move {
        let cache = Rc::new(Cache::builder(&cache_dir).open().await.unwrap());
        let tiered = Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN_A).unwrap();
        for (name, file, data) in &files {
            let digest = FileDigest::of(data);
            // Checked as it is: it goes up.
            let good = format!("{name}-good");
            tiered.put_file_checked(&good, file, digest).await.unwrap();
            let key = tiered.object_key(&good).unwrap();
            assert_eq!(
                &remote.get_bytes(&key, u64::MAX).await.unwrap()[..],
                &data[..]
            );
            // Changed after the check (one bit, in the last part): nothing
            // goes up.
            let mut changed = data.clone();
            let at = changed.len() - 10;
            changed[at] ^= 0x10;
            let changed_file = file.with_extension("changed");
            std::fs::write(&changed_file, &changed).unwrap();
            let bad = format!("{name}-bad");
            match tiered.put_file_checked(&bad, &changed_file, digest).await {
                Err(Error::Remote(RemoteError::SourceChanged {
                    expected_crc32,
                    read_crc32,
                    read_bytes,
                    path,
                    ..
                })) => {
                    assert_eq!(expected_crc32, digest.crc32);
                    assert_eq!(read_crc32, Some(crc32fast::hash(&changed)));
                    assert_eq!(read_bytes, changed.len() as u64);
                    assert_eq!(path, changed_file);
                }
                other => panic!("{name}: expected SourceChanged, got {other:?}"),
            }
            let key = tiered.object_key(&bad).unwrap();
            assert!(
                matches!(
                    remote.get_bytes(&key, u64::MAX).await,
                    Err(RemoteError::NotFound { .. })
                ),
                "{name}: the changed file was stored"
            );
            assert!(!cache.contains(&key).unwrap(), "{name}: cached");
            // Another size than checked: refused before anything is read.
            std::fs::write(&changed_file, &data[..data.len() - 1]).unwrap();
            match tiered.put_file_checked(&bad, &changed_file, digest).await {
                Err(Error::Remote(RemoteError::SourceChanged {
                    read_bytes,
                    read_crc32: None,
                    ..
                })) => assert_eq!(read_bytes, data.len() as u64 - 1),
                other => panic!("{name}: expected SourceChanged, got {other:?}"),
            }
        }
        // The good big file went up in parts; the changed one's upload was
        // aborted, not completed.
        assert_eq!(remote.stats().multipart_uploads, 1);
        drop(tiered);
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

/// A cached copy damaged at rest (a flipped bit, or no checksum) is never
/// served by `get` or handed out by `get_path`: it is dropped, counted and
/// downloaded again from the store, whose copy is good.
fn a_damaged_cached_copy_is_dropped_and_downloaded_again(fixture: &Fixture, dir: &Path) {
    let remote = fixture.remote();
    let cache_dir = dir.join("cache");
    let data = bytes(50_000, 11);
    let file = write_file(dir, "uploaded.bin", &data);
    run(move || async move {
        let cache = Rc::new(Cache::builder(&cache_dir).open().await.unwrap());
        let tiered = Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN_A).unwrap();
        tiered.put("k", &data).await.unwrap();
        tiered
            .put_file_checked("f", &file, FileDigest::of(&data))
            .await
            .unwrap();
        let flip = |path: &Path| {
            let mut bytes = std::fs::read(path).unwrap();
            bytes[1234] ^= 0x01;
            // In place: the same inode, its checksum attribute kept.
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
                .unwrap();
        };
        let cached = |key: &str| cache.objects_dir().join(tiered.object_key(key).unwrap());
        flip(&cached("k"));
        assert_eq!(&tiered.get("k").await.unwrap().unwrap()[..], &data[..]);
        // The adopted upload shares the caller's inode: damage the file.
        flip(&file);
        let path = tiered.get_path("f").await.unwrap().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        let stats = tiered.stats();
        assert_eq!(stats.damaged_replaced, 2, "{stats:?}");
        assert_eq!(stats.downloads, 2, "{stats:?}");
        assert_eq!(cache.stats().damaged_objects, 2);
        // Good again: served from the cache.
        assert_eq!(&tiered.get("k").await.unwrap().unwrap()[..], &data[..]);
        assert_eq!(tiered.stats().downloads, 2);
        drop(tiered);
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

/// The cache limit of the stale-copy tests: the old objects fit, the new
/// ones do not.
const SMALL_CACHE_BYTES: u64 = 64 << 10;

/// Bug: a write the cache could not take (here: larger than the whole
/// cache) was uploaded and reported done, but the cache kept the copy it
/// held from before, when the store had since lost the object other than
/// by `Tiered::delete`; `get` then served those old bytes. Only a commit
/// `Conflict` invalidated it. Now every upload the cache did not take
/// invalidates the key: the read goes to the store, which holds the new
/// object (too large to cache, so `get` says so).
fn an_uncached_write_leaves_no_stale_copy_to_serve(fixture: &Fixture, dir: &Path) {
    let remote = fixture.remote();
    let cache_dir = dir.join("cache");
    let old = bytes(1_000, 1);
    let new = bytes(SMALL_CACHE_BYTES as usize + 1, 2);
    let file = write_file(dir, "new.bin", &new);
    run(move || async move {
        let cache = Rc::new(
            Cache::builder(&cache_dir)
                .bytes_limit(SMALL_CACHE_BYTES)
                .chunk_bytes(4 << 10)
                .open()
                .await
                .unwrap(),
        );
        let tiered = Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN_A).unwrap();
        for key in ["put", "put-file"] {
            tiered.put(key, &old).await.unwrap();
            let full = tiered.object_key(key).unwrap();
            assert!(cache.contains(&full).unwrap());
            // Lost from the store behind this view's back.
            remote.delete(&full).await.unwrap();
            if key == "put" {
                tiered.put(key, &new).await.unwrap();
            } else {
                tiered.put_file(key, &file).await.unwrap();
            }
            assert!(!cache.contains(&full).unwrap(), "{key}");
            match tiered.get(key).await {
                Err(Error::Oversize { bytes, .. }) => assert_eq!(bytes, new.len() as u64),
                other => panic!("{key}: expected the new object's Oversize, got {other:?}"),
            }
            assert_eq!(
                &remote.get_bytes(&full, u64::MAX).await.unwrap()[..],
                &new[..]
            );
        }
        let stats = tiered.stats();
        assert_eq!(
            (stats.uncached_writes, stats.stale_invalidations),
            (2, 2),
            "{stats:?}"
        );
        assert_eq!(cache.stats().objects, 0);
        drop(tiered);
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

/// The same bug through a commit that fails with an I/O error (the
/// simulated disk's link refused with EIO) after the upload: the old copy
/// is invalidated, and the next `get` downloads and returns the new bytes.
fn a_write_whose_commit_fails_is_read_back_new(fixture: &Fixture, _dir: &Path) {
    let remote = fixture.remote();
    run(move || async move {
        let (disk, cache) = simulated_cache().await;
        let tiered = Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN_A).unwrap();
        let (old, new) = (bytes(20_000, 3), bytes(30_000, 4));
        tiered.put("k", &old).await.unwrap();
        let full = tiered.object_key("k").unwrap();
        remote.delete(&full).await.unwrap();
        disk.fail_next_links(1, libc::EIO);
        tiered.put("k", &new).await.unwrap();
        assert!(!cache.contains(&full).unwrap());
        assert_eq!(&tiered.get("k").await.unwrap().unwrap()[..], &new[..]);
        let stats = tiered.stats();
        assert_eq!(
            (
                stats.uncached_writes,
                stats.stale_invalidations,
                stats.downloads
            ),
            (1, 1, 1),
            "{stats:?}"
        );
        drop(tiered);
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

/// Bug: an unlink that failed left a stale copy at its key, untracked
/// (here the invalidation after a write whose commit found the old copy
/// there). `get_path` then downloaded the new object, its commit hit the
/// old file (`Conflict`), took it for the same object and handed out its
/// path: the old bytes. Now a commit that finds a file at the key keeps it
/// only if it reads whole as the downloaded object; the stale file is
/// removed and the object downloaded again.
fn a_stale_file_left_at_its_key_is_never_handed_out(fixture: &Fixture, _dir: &Path) {
    let remote = fixture.remote();
    run(move || async move {
        let (disk, cache) = simulated_cache().await;
        let tiered = Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN_A).unwrap();
        let (old, new) = (bytes(20_000, 5), bytes(30_000, 6));
        tiered.put("k", &old).await.unwrap();
        let full = tiered.object_key("k").unwrap();
        let path = cache.objects_dir().join(&full);
        remote.delete(&full).await.unwrap();
        // The new write's commit finds the old copy: the unlink of its
        // staging file fails, and so does the old copy's.
        disk.fail_next_removes(2, libc::EIO);
        tiered.put("k", &new).await.unwrap();
        assert!(!cache.contains(&full).unwrap());
        assert!(disk.file_bytes(&path) == Some(old), "no stale file left");
        // While the stale file cannot be removed: an error naming it.
        disk.fail_next_removes(2, libc::EIO);
        match tiered.get_path("k").await {
            Err(Error::Io {
                op: "unlinkat",
                path: named,
                ..
            }) => assert_eq!(named, path),
            other => panic!("expected the failed unlink, got {other:?}"),
        }
        match tiered.get_path("k").await {
            Ok(Some(got)) => {
                assert_eq!(got, path);
                assert!(
                    disk.file_bytes(&got).as_deref() == Some(&new[..]),
                    "get_path handed out the stale file"
                );
            }
            other => panic!("expected the new object's path, got {other:?}"),
        }
        assert_eq!(&cache.get(&full).await.unwrap().unwrap()[..], &new[..]);
        let stats = tiered.stats();
        assert_eq!(
            (stats.downloads, stats.stale_invalidations),
            (3, 1),
            "{stats:?}"
        );
        drop(tiered);
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

/// The same bug with something at the key the cache never removes (here a
/// symlink to a file outside the cache): `get_path` handed out its path.
/// Now neither `get_path` nor `get` serves it: `StaleObjectFile`, naming
/// the key and the path.
fn a_key_held_by_a_foreign_entry_is_refused_not_handed_out(fixture: &Fixture, dir: &Path) {
    let remote = fixture.remote();
    let cache_dir = dir.join("cache");
    let outside = write_file(dir, "outside.bin", b"not the object");
    run(move || async move {
        let cache = Rc::new(Cache::builder(&cache_dir).open().await.unwrap());
        let tiered = Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN_A).unwrap();
        let full = tiered.object_key("k").unwrap();
        remote.put(&full, bytes(10_000, 8)).await.unwrap();
        let path = cache.objects_dir().join(&full);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&outside, &path).unwrap();
        let refused = |result: Result<_, Error>| match result {
            Err(Error::StaleObjectFile { key, path: named }) => {
                assert_eq!(
                    (key.as_str(), named.as_path()),
                    (full.as_str(), path.as_path())
                )
            }
            other => panic!("expected StaleObjectFile, got {other:?}"),
        };
        refused(tiered.get_path("k").await.map(|_| ()));
        refused(tiered.get("k").await.map(|_| ()));
        assert_eq!(std::fs::read(&outside).unwrap(), b"not the object");
        drop(tiered);
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

/// Bug: a file the startup walk refused to account for (here of another
/// size than its checksum records) whose unlink failed was logged as a
/// warning only, not counted, and stayed at its key, untracked. It is now
/// counted (`refused_at_startup`) and logged as an error, and never served:
/// `get_path` replaces it with the store's object.
fn a_file_refused_at_startup_and_left_at_its_key_is_counted_and_never_served(
    fixture: &Fixture,
    _dir: &Path,
) {
    let remote = fixture.remote();
    run(move || async move {
        let disk = MemStorage::new();
        let root = Path::new("/cache");
        let open = |faults: Rc<Faults>| {
            Cache::builder(root)
                .disk(disk.clone())
                .faults(faults)
                .open()
        };
        let cache = Rc::new(open(Rc::new(Faults::new())).await.unwrap());
        let tiered = Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN_A).unwrap();
        let full = tiered.object_key("k").unwrap();
        let path = cache.objects_dir().join(&full);
        let (old, new) = (bytes(20_000, 5), bytes(30_000, 6));
        tiered.put("k", &old).await.unwrap();
        drop(tiered);
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        // Lost from the store, written again; the cached file changed size.
        remote.delete(&full).await.unwrap();
        remote.put(&full, new.clone()).await.unwrap();
        disk.set_file_bytes(&path, old[..10_000].to_vec());

        let faults = Rc::new(Faults::new());
        faults.fail_next_refused_unlinks(1);
        let cache = Rc::new(open(faults).await.unwrap());
        let stats = cache.stats();
        assert_eq!(
            (stats.refused_at_startup, stats.objects),
            (1, 0),
            "{stats:?}"
        );
        assert!(disk.file_bytes(&path).is_some(), "the file was removed");
        let tiered = Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN_A).unwrap();
        let got = tiered.get_path("k").await.unwrap().unwrap();
        assert_eq!(got, path);
        assert!(
            disk.file_bytes(&got) == Some(new.clone()),
            "served the refused file"
        );
        assert_eq!(&tiered.get("k").await.unwrap().unwrap()[..], &new[..]);
        drop(tiered);
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

/// Bug: a commit whose directory fsync failed after the link (the new
/// object in the cache, its link perhaps not durable) had its copy dropped,
/// counted and logged as a stale copy, though it was this write's. It is
/// dropped still, counted as an uncached write only; a read downloads it.
fn a_new_copy_dropped_after_a_failed_directory_fsync_is_not_counted_stale(
    fixture: &Fixture,
    dir: &Path,
) {
    let remote = fixture.remote();
    let cache_dir = dir.join("cache");
    run(move || async move {
        let faults = Rc::new(Faults::new());
        let cache = Rc::new(
            Cache::builder(&cache_dir)
                .faults(Rc::clone(&faults))
                .open()
                .await
                .unwrap(),
        );
        let tiered = Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN_A).unwrap();
        // The domain's directory exists: the commit below syncs only its own.
        tiered.put("first", b"first").await.unwrap();
        let data = bytes(20_000, 9);
        faults.fail_next_dir_syncs(1);
        tiered.put("k", &data).await.unwrap();
        assert!(!cache.contains(&tiered.object_key("k").unwrap()).unwrap());
        let stats = tiered.stats();
        assert_eq!(
            (stats.uncached_writes, stats.stale_invalidations),
            (1, 0),
            "{stats:?}"
        );
        assert_eq!(&tiered.get("k").await.unwrap().unwrap()[..], &data[..]);
        drop(tiered);
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

fn miss_downloads_once_then_hits(fixture: &Fixture, dir: &Path) {
    let remote = fixture.remote();
    let cache_dir = dir.join("cache");
    let data = bytes(300_000, 11);
    run(move || async move {
        let cache = Rc::new(Cache::builder(&cache_dir).open().await.unwrap());
        let tiered = Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN_A).unwrap();
        // Written behind the cache's back (another host, a restore).
        let key = tiered.object_key("seg/0001").unwrap();
        remote.put(&key, data.clone()).await.unwrap();
        assert!(!cache.contains(&key).unwrap());

        assert_eq!(
            &tiered.get("seg/0001").await.unwrap().unwrap()[..],
            &data[..]
        );
        assert_eq!(
            &tiered.get("seg/0001").await.unwrap().unwrap()[..],
            &data[..]
        );
        assert_eq!(
            &tiered.get("seg/0001").await.unwrap().unwrap()[..],
            &data[..]
        );
        let stats = tiered.stats();
        assert_eq!((stats.downloads, stats.hits), (1, 2));
        assert_eq!(stats.downloaded_bytes, data.len() as u64);
        assert_eq!(remote.stats().gets, 1, "downloaded exactly once");
        assert_eq!(remote.stats().downloaded_bytes, data.len() as u64);
        assert!(cache.contains(&key).unwrap());

        // A key the store does not have.
        assert!(tiered.get("seg/0002").await.unwrap().is_none());
        assert!(tiered.get_path("seg/0002").await.unwrap().is_none());
        assert_eq!(tiered.stats().not_found, 2);
        assert!(matches!(
            remote.get_stream("nothing/here").await,
            Err(RemoteError::NotFound { op: "get", .. })
        ));
        drop(tiered);
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

fn existing_key_is_refused(fixture: &Fixture, dir: &Path) {
    let remote = fixture.remote();
    let cache_dir = dir.join("cache");
    let first = bytes(5000, 1);
    let big = bytes(BIG_BYTES, 2);
    let big_file = write_file(dir, "big.bin", &big);
    let other_big = write_file(dir, "other-big.bin", &bytes(BIG_BYTES, 9));
    let small_file = write_file(dir, "small.bin", b"small file");
    run(move || async move {
        let cache = Rc::new(Cache::builder(&cache_dir).open().await.unwrap());
        let tiered = Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN_A).unwrap();
        tiered.put("k", &first).await.unwrap();
        tiered.put_file("big", &big_file).await.unwrap();

        let refused = |result: ringstore_cache::Result<()>| match result {
            Err(Error::Remote(RemoteError::AlreadyExists {
                after_retry: false, ..
            })) => {}
            other => panic!("expected AlreadyExists, got {other:?}"),
        };
        refused(tiered.put("k", b"second").await);
        refused(tiered.put_file("k", &small_file).await);
        // Above the part size: the multipart path (HEAD first).
        refused(tiered.put_file("big", &other_big).await);
        refused(tiered.put("big", b"small over big").await);
        let key = tiered.object_key("k").unwrap();
        match remote.put(&key, &b"raw"[..]).await {
            Err(RemoteError::AlreadyExists {
                op: "put", key: k, ..
            }) => assert_eq!(k, key),
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(remote.stats().already_exists, 5);

        // Nothing changed, in the store or in the cache.
        assert_eq!(
            &remote.get_bytes(&key, u64::MAX).await.unwrap()[..],
            &first[..]
        );
        assert_eq!(&tiered.get("k").await.unwrap().unwrap()[..], &first[..]);
        assert_eq!(&tiered.get("big").await.unwrap().unwrap()[..], &big[..]);
        let stats = cache.stats();
        assert_eq!(stats.objects, 2);
        assert_eq!(stats.bytes, (5000 + BIG_BYTES) as u64);
        assert_eq!((stats.reserved_bytes, stats.reserved_objects), (0, 0));
        assert!(staging_files(cache.objects_dir()).is_empty());
        drop(tiered);
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

fn list_under_prefixes(fixture: &Fixture, dir: &Path) {
    let remote = fixture.remote();
    let cache_dir = dir.join("cache");
    run(move || async move {
        let cache = Rc::new(Cache::builder(&cache_dir).open().await.unwrap());
        let tiered = Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN_A).unwrap();
        for (key, len) in [("a/1", 10), ("a/2", 20), ("ab/1", 30), ("b/c/1", 40)] {
            tiered.put(key, &bytes(len, 0)).await.unwrap();
        }
        let keys = |entries: Vec<ringstore_cache::ObjectInfo>| {
            entries
                .into_iter()
                .map(|e| (e.key, e.bytes))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(tiered.list("").await.unwrap()),
            [("a/1", 10), ("a/2", 20), ("ab/1", 30), ("b/c/1", 40)].map(|(k, n)| (k.to_owned(), n))
        );
        // Whole segments: "a" is not a prefix of "ab".
        assert_eq!(
            keys(tiered.list("a").await.unwrap()),
            [("a/1".to_owned(), 10), ("a/2".to_owned(), 20)]
        );
        assert_eq!(
            keys(tiered.list("b/c").await.unwrap()),
            [("b/c/1".to_owned(), 40)]
        );
        assert!(tiered.list("nothing").await.unwrap().is_empty());
        // The store's view: full keys under the domain.
        let mut full: Vec<String> = remote
            .list(DOMAIN_A)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        full.sort();
        assert_eq!(full[0], format!("{DOMAIN_A}/a/1"));
        assert_eq!(full.len(), 4);
        assert!(remote.stats().lists >= 5);
        drop(tiered);
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

fn delete_removes_from_store_and_cache(fixture: &Fixture, dir: &Path) {
    let remote = fixture.remote();
    let cache_dir = dir.join("cache");
    run(move || async move {
        let cache = Rc::new(Cache::builder(&cache_dir).open().await.unwrap());
        let tiered = Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN_A).unwrap();
        tiered.put("doomed", b"bytes").await.unwrap();
        let key = tiered.object_key("doomed").unwrap();
        assert!(cache.contains(&key).unwrap());

        tiered.delete("doomed").await.unwrap();
        assert!(!cache.contains(&key).unwrap());
        assert!(matches!(
            remote.head(&key).await,
            Err(RemoteError::NotFound { op: "head", .. })
        ));
        assert!(tiered.get("doomed").await.unwrap().is_none());
        assert!(tiered.list("").await.unwrap().is_empty());
        // Idempotent.
        tiered.delete("doomed").await.unwrap();
        remote.delete("never/was").await.unwrap();
        // The key can be written again once deleted.
        tiered.put("doomed", b"again").await.unwrap();
        assert_eq!(&tiered.get("doomed").await.unwrap().unwrap()[..], b"again");
        assert_eq!(tiered.stats().deletes, 2);
        assert_eq!(cache.stats().objects, 1);
        drop(tiered);
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

fn domains_never_collide(fixture: &Fixture, dir: &Path) {
    let remote = fixture.remote();
    let cache_dir = dir.join("cache");
    run(move || async move {
        // One cache and one store shared by two domains.
        let cache = Rc::new(Cache::builder(&cache_dir).open().await.unwrap());
        let a = Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN_A).unwrap();
        let b = Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN_B).unwrap();
        a.put("snapshot/1", b"from a").await.unwrap();
        b.put("snapshot/1", b"from b").await.unwrap();
        assert_eq!(&a.get("snapshot/1").await.unwrap().unwrap()[..], b"from a");
        assert_eq!(&b.get("snapshot/1").await.unwrap().unwrap()[..], b"from b");
        assert_eq!(a.list("").await.unwrap().len(), 1);
        assert_eq!(b.list("").await.unwrap().len(), 1);
        let mut all: Vec<String> = remote
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        all.sort();
        assert_eq!(
            all,
            [
                format!("{DOMAIN_A}/snapshot/1"),
                format!("{DOMAIN_B}/snapshot/1")
            ]
        );
        b.delete("snapshot/1").await.unwrap();
        assert_eq!(&a.get("snapshot/1").await.unwrap().unwrap()[..], b"from a");
        assert!(b.get("snapshot/1").await.unwrap().is_none());

        for bad in ["", "a/b", "..", ".", "x\n"] {
            match Tiered::new(Rc::clone(&cache), remote.clone(), bad) {
                Err(Error::Config {
                    field: "domain", ..
                }) => {}
                other => panic!("domain {bad:?}: expected Config error, got {other:?}"),
            }
        }
        drop((a, b));
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

fn keys_are_validated(fixture: &Fixture, dir: &Path) {
    let remote = fixture.remote();
    let cache_dir = dir.join("cache");
    run(move || async move {
        let cache = Rc::new(Cache::builder(&cache_dir).open().await.unwrap());
        let tiered = Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN_A).unwrap();
        for bad in [
            "/abs",
            "../escape",
            "a//b",
            "a/./b",
            "x.part",
            "",
            "seg#12/x",
        ] {
            assert!(
                matches!(
                    remote.put(bad, &b"x"[..]).await,
                    Err(RemoteError::KeyRejected { op: "put", .. })
                ),
                "remote key {bad:?}"
            );
            assert!(
                matches!(
                    tiered.put(bad, b"x").await,
                    Err(Error::KeyRejected { .. })
                        | Err(Error::Remote(RemoteError::KeyRejected { .. }))
                ),
                "tiered key {bad:?}"
            );
            assert!(
                matches!(remote.head(bad).await, Err(RemoteError::KeyRejected { .. })),
                "head {bad:?}"
            );
        }
        assert_eq!(remote.stats().calls_ok + remote.stats().calls_failed, 0);
        drop(tiered);
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}
