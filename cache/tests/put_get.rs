//! Pins the basic object API: `put`/`get` round trips (including empty and
//! nested keys), overwrite through `put`, a missing key, `contains`,
//! `invalidate`, oversize objects, and refusal of `.part` keys.

mod common;

use common::{bytes, run, tempdir, tree};
use ringstore_cache::{Cache, Error, KeyRejection};

#[test]
fn put_get_round_trip_and_overwrite() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        let a = bytes(100_000, 1);
        cache.put("a", &a).await.unwrap();
        cache.put("nested/deeper/b", b"bee").await.unwrap();
        cache.put("empty", b"").await.unwrap();
        assert_eq!(&cache.get("a").await.unwrap().unwrap()[..], &a[..]);
        assert_eq!(
            &cache.get("nested/deeper/b").await.unwrap().unwrap()[..],
            b"bee"
        );
        assert_eq!(cache.get("empty").await.unwrap().unwrap().len(), 0);
        let stats = cache.stats();
        assert_eq!(stats.objects, 3);
        assert_eq!(stats.bytes, 100_003);
        assert_eq!(stats.puts, 3);
        assert_eq!(stats.hits, 3);

        // Overwrite through put: new bytes, accounting replaced not added.
        cache.put("a", b"short").await.unwrap();
        assert_eq!(&cache.get("a").await.unwrap().unwrap()[..], b"short");
        let stats = cache.stats();
        assert_eq!(stats.objects, 3);
        assert_eq!(stats.bytes, 5 + 3);
        assert_eq!(stats.reserved_bytes, 0);
        assert_eq!(stats.reserved_objects, 0);
        assert!(!tree(cache.objects_dir())
            .iter()
            .any(|p| p.ends_with(".part")));
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn missing_key_is_none_and_counts_a_miss() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        assert!(cache.get("nope").await.unwrap().is_none());
        assert!(cache.get("no/such/dir").await.unwrap().is_none());
        assert!(!cache.contains("nope").unwrap());
        let stats = cache.stats();
        assert_eq!((stats.misses, stats.hits), (2, 0));
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn contains_and_invalidate() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        cache.put("d/x", b"12345").await.unwrap();
        assert!(cache.contains("d/x").unwrap());
        assert!(cache.invalidate("d/x").await.unwrap());
        assert!(!cache.contains("d/x").unwrap());
        assert!(!cache.invalidate("d/x").await.unwrap());
        assert!(cache.get("d/x").await.unwrap().is_none());
        let stats = cache.stats();
        assert_eq!((stats.objects, stats.bytes, stats.invalidations), (0, 0, 1));
        // The emptied directory went with it; objects/ stays.
        assert_eq!(tree(cache.objects_dir()), Vec::<String>::new());
        assert!(cache.objects_dir().is_dir());
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn oversize_object_is_refused_without_touching_disk() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root)
            .bytes_limit(1000u64)
            .open()
            .await
            .unwrap();
        let err = cache.put("big", &bytes(1001, 0)).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Oversize {
                    bytes: 1001,
                    bytes_limit: 1000,
                    ..
                }
            ),
            "{err}"
        );
        let err = cache
            .reserve(1001, 1, std::time::Instant::now())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ReservationTooLarge { .. }), "{err}");
        // A staging file cannot grow past the limit either.
        let mut staging = cache.create_staging("grow").await.unwrap();
        staging.append(&bytes(1000, 0)).await.unwrap();
        let err = staging.append(b"x").await.unwrap_err();
        assert!(matches!(err, Error::Oversize { .. }), "{err}");
        staging.close().await.unwrap();
        cache.put("fits", &bytes(1000, 0)).await.unwrap();
        assert_eq!(cache.stats().bytes, 1000);
        assert_eq!(tree(cache.objects_dir()), vec!["fits".to_string()]);
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn part_keys_are_refused_for_puts_and_staging() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        for key in ["x.part", "d/y.3.part"] {
            let err = cache.put(key, b"data").await.unwrap_err();
            assert!(
                matches!(
                    &err,
                    Error::KeyRejected {
                        reason: KeyRejection::StagingSuffix,
                        ..
                    }
                ),
                "{err}"
            );
            let err = cache.create_staging(key).await.unwrap_err();
            assert!(matches!(&err, Error::KeyRejected { .. }), "{err}");
            assert!(cache.get(key).await.is_err());
        }
        assert_eq!(tree(cache.objects_dir()), Vec::<String>::new());
        assert_eq!(cache.stats().reserved_bytes, 0);
        cache.shutdown().await.unwrap();
    });
}
