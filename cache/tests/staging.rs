//! Pins the staging-file protocol: the full cycle (O_EXCL `.part` file,
//! chunked reservations as it grows, commit by link + unlink, readable after);
//! two commits to one key leave one object and correct accounting (the second
//! is a typed conflict); abandoned staging files (closed or dropped) release
//! their reservations; a failed unlink after the link leaves the object and
//! the accounting right; and a crash between link and unlink leaves the real
//! data at the key, never an empty file.

mod common;

use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{bytes, run, tempdir, tree};
use ringstore_cache::faults::Faults;
use ringstore_cache::{Cache, Error};

const CHUNK: u64 = 64 << 10;

#[test]
fn staging_full_cycle() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root)
            .chunk_bytes(CHUNK)
            .open()
            .await
            .unwrap();
        let mut staging = cache.create_staging("seg/0001").await.unwrap();
        let path = staging.path();
        assert!(
            path.to_string_lossy().ends_with(".part"),
            "{}",
            path.display()
        );
        assert!(path.exists());
        assert_eq!(staging.reserved_bytes(), CHUNK);
        assert_eq!(cache.stats().reserved_objects, 1);
        // Not visible until committed.
        assert!(!cache.contains("seg/0001").unwrap());

        let data = bytes(CHUNK as usize * 2 + 10, 3);
        for piece in data.chunks(20_000) {
            staging.append(piece).await.unwrap();
            // Reservation grows in whole chunks, always covering the data.
            assert!(staging.reserved_bytes() >= staging.len());
            assert_eq!(staging.reserved_bytes() % CHUNK, 0);
        }
        assert_eq!(staging.reserved_bytes(), CHUNK * 3);
        assert_eq!(cache.stats().reserved_bytes, CHUNK * 3);
        staging.commit().await.unwrap();

        assert!(!path.exists(), "staging name left behind");
        assert_eq!(
            &cache.get("seg/0001").await.unwrap().unwrap()[..],
            &data[..]
        );
        let stats = cache.stats();
        assert_eq!(stats.bytes, data.len() as u64);
        assert_eq!(stats.objects, 1);
        assert_eq!((stats.reserved_bytes, stats.reserved_objects), (0, 0));
        assert_eq!(stats.commits, 1);
        assert_eq!(
            tree(cache.objects_dir()),
            vec!["seg/".to_string(), "seg/0001".into()]
        );
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn a_staging_file_can_carry_an_upfront_reservation() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root)
            .chunk_bytes(CHUNK)
            .open()
            .await
            .unwrap();
        let mut staging = cache.create_staging("download").await.unwrap();
        let upfront = cache.reserve(1 << 20, 0, Instant::now()).await.unwrap();
        let mut part = cache.reserve(4096, 0, Instant::now()).await.unwrap();
        part.merge(cache.reserve(4096, 0, Instant::now()).await.unwrap())
            .unwrap();
        assert_eq!(part.bytes(), 8192);
        staging.attach(upfront).unwrap();
        staging.attach(part).unwrap();
        assert_eq!(staging.reserved_bytes(), CHUNK + (1 << 20) + 8192);
        staging.append(&bytes(1 << 20, 0)).await.unwrap();
        assert_eq!(staging.reserved_bytes(), CHUNK + (1 << 20) + 8192);
        staging.commit().await.unwrap();
        let stats = cache.stats();
        assert_eq!((stats.bytes, stats.reserved_bytes), (1 << 20, 0));
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn two_commits_to_one_key_leave_one_object() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root)
            .chunk_bytes(CHUNK)
            .open()
            .await
            .unwrap();
        let mut first = cache.create_staging("k").await.unwrap();
        let mut second = cache.create_staging("k").await.unwrap();
        assert_ne!(first.path(), second.path());
        first.append(b"first writer").await.unwrap();
        second.append(b"second writer, longer").await.unwrap();
        let second_path = second.path();
        first.commit().await.unwrap();
        let err = second.commit().await.unwrap_err();
        assert!(
            matches!(&err, Error::Conflict { key } if key == "k"),
            "{err}"
        );
        assert!(!second_path.exists(), "loser's staging file left behind");

        assert_eq!(&cache.get("k").await.unwrap().unwrap()[..], b"first writer");
        let stats = cache.stats();
        assert_eq!(stats.objects, 1);
        assert_eq!(stats.bytes, b"first writer".len() as u64);
        assert_eq!((stats.reserved_bytes, stats.reserved_objects), (0, 0));
        assert_eq!((stats.commits, stats.commit_conflicts), (1, 1));
        assert_eq!(tree(cache.objects_dir()), vec!["k".to_string()]);
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn abandoned_staging_releases_its_reservation() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root)
            .chunk_bytes(CHUNK)
            .bytes_limit(4 * CHUNK)
            .open()
            .await
            .unwrap();
        // close(): file gone at once, reservation back.
        let mut staging = cache.create_staging("a").await.unwrap();
        staging.append(&bytes(CHUNK as usize + 1, 0)).await.unwrap();
        assert_eq!(cache.stats().reserved_bytes, 2 * CHUNK);
        let path = staging.path();
        staging.close().await.unwrap();
        assert!(!path.exists());
        let stats = cache.stats();
        assert_eq!((stats.reserved_bytes, stats.reserved_objects), (0, 0));
        assert_eq!(stats.staging_abandoned, 1);

        // Dropped without close: reservation back at once; the name is
        // removed by the next maintenance pass or startup.
        let mut staging = cache.create_staging("b").await.unwrap();
        staging.append(&bytes(100, 0)).await.unwrap();
        drop(staging);
        let stats = cache.stats();
        assert_eq!((stats.reserved_bytes, stats.reserved_objects), (0, 0));
        assert_eq!(stats.staging_abandoned, 2);
        // The whole limit can be reserved again.
        let all = cache.reserve(4 * CHUNK, 1, Instant::now()).await.unwrap();
        drop(all);
        cache.shutdown().await.unwrap();
        assert_eq!(tree(&root.join("objects")), Vec::<String>::new());
    });
}

#[test]
fn failed_unlink_after_link_keeps_object_and_accounting() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let faults = Rc::new(Faults::new());
        let cache = Cache::builder(&root)
            .faults(Rc::clone(&faults))
            .tracker_persist_interval(Duration::from_secs(3600))
            .open()
            .await
            .unwrap();
        let data = bytes(10_000, 9);
        let mut staging = cache.create_staging("d/obj").await.unwrap();
        staging.append(&data).await.unwrap();
        let part = staging.path();
        faults.fail_next_staging_unlinks(1);
        staging.commit().await.unwrap();
        // Both names exist (one inode); the object is counted once.
        assert!(part.exists());
        assert_eq!(&cache.get("d/obj").await.unwrap().unwrap()[..], &data[..]);
        let stats = cache.stats();
        assert_eq!((stats.objects, stats.bytes), (1, 10_000));
        assert_eq!((stats.reserved_bytes, stats.reserved_objects), (0, 0));
        assert_eq!(stats.staging_unlink_failures, 1);
        // Trim never deletes `.part` files, and the dead name is not an object.
        let report = cache
            .trim(ringstore_cache::TrimKind::Exhaustive)
            .await
            .unwrap();
        assert_eq!(report.walk.unwrap().staging_seen, 1);
        assert!(part.exists());
        assert_eq!(cache.stats().bytes, 10_000);
        // Shutdown retries the unlink.
        cache.shutdown().await.unwrap();
        assert!(!part.exists());
        assert_eq!(
            tree(&root.join("objects")),
            vec!["d/".to_string(), "d/obj".into()]
        );
    });
}

#[test]
fn crash_between_link_and_unlink_leaves_real_data() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let faults = Rc::new(Faults::new());
        let cache = Cache::builder(&root)
            .faults(Rc::clone(&faults))
            .open()
            .await
            .unwrap();
        let data = bytes(300_000, 5);
        let mut staging = cache.create_staging("x/y").await.unwrap();
        staging.append(&data).await.unwrap();
        let part = staging.path();
        // The link happens, the unlink does not: exactly the on-disk state a
        // crash between the two leaves.
        faults.fail_next_staging_unlinks(1);
        staging.commit().await.unwrap();
        drop(cache); // crash: no shutdown

        assert!(part.exists());
        assert_eq!(std::fs::read(root.join("objects/x/y")).unwrap(), data);
        let cache = Cache::builder(&root).open().await.unwrap();
        assert!(!part.exists(), "startup must remove the staging name");
        assert_eq!(&cache.get("x/y").await.unwrap().unwrap()[..], &data[..]);
        let stats = cache.stats();
        assert_eq!((stats.objects, stats.bytes), (1, data.len() as u64));
        assert_eq!(stats.orphans_removed, 1);
        cache.shutdown().await.unwrap();
    });
}
