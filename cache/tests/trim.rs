//! Pins trimming: limits evict least-recently-accessed objects first (a
//! waiting reservation triggers the trim), down to the low watermark minus
//! reservations; `.part` files survive every trim; emptied directories go but
//! `objects/` and the root stay; trims are throttled; a background trim
//! starts above the threshold; an exhaustive trim reconciles the tracker with
//! the disk.

mod common;

use std::time::{Duration, Instant};

use common::{bytes, run, tempdir, tree};
use ringstore_cache::{Cache, TrimKind};

/// Waits (without blocking the reactor) until `cond` holds, at most 5 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

#[test]
fn object_limit_evicts_least_recently_accessed_first() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root)
            .objects_limit(3)
            .low_watermark_percent(100)
            .trim_threshold_percent(100)
            .trim_interval_min(Duration::from_millis(1))
            .open()
            .await
            .unwrap();
        for key in ["a", "b", "c"] {
            cache.put(key, key.as_bytes()).await.unwrap();
        }
        cache.get("a").await.unwrap().unwrap();
        assert_eq!(cache.keys_oldest_first(), ["b", "c", "a"]);
        // Full: this put waits for its reservation, which asks for a trim;
        // the trim removes exactly the least recently accessed object.
        cache.put("d", b"d").await.unwrap();
        assert_eq!(cache.keys_oldest_first(), ["c", "a", "d"]);
        cache.get("c").await.unwrap().unwrap();
        cache.put("e", b"e").await.unwrap();
        assert_eq!(cache.keys_oldest_first(), ["d", "c", "e"]);
        let stats = cache.stats();
        assert_eq!(stats.objects_trimmed, 2);
        assert!(stats.reservation_waits >= 2);
        assert_eq!(stats.objects, 3);
        assert!(stats.objects_high_watermark <= 3);
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn byte_limit_trims_to_low_watermark_minus_reservations() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root)
            .bytes_limit(10_000u64)
            .low_watermark_percent(50)
            .trim_threshold_percent(100)
            .trim_interval_min(Duration::from_millis(1))
            .open()
            .await
            .unwrap();
        for i in 0..9 {
            cache.put(&format!("k{i}"), &bytes(1000, i)).await.unwrap();
        }
        cache.get("k0").await.unwrap().unwrap();
        let held = cache.reserve(2000, 0, Instant::now()).await.unwrap_err();
        // 9000 used + 2000 > 10000: the reservation had to wait and timed out
        // at once (deadline now), but asked for a trim on the way.
        assert!(matches!(
            held,
            ringstore_cache::Error::ReservationTimeout { .. }
        ));
        let held = cache.reserve(1000, 0, Instant::now()).await.unwrap();
        let report = cache.trim(TrimKind::Fast).await.unwrap();
        // Target: 50% of 10000 minus the 1000 reserved = 4000.
        assert_eq!(report.target_bytes, 4000);
        assert!(report.reached_target);
        let stats = cache.stats();
        assert!(stats.bytes <= 4000, "{}", stats.bytes);
        // k0 was touched last, so it survives; the oldest went first.
        assert!(cache.contains("k0").unwrap());
        assert!(!cache.contains("k1").unwrap());
        assert_eq!(stats.bytes + stats.reserved_bytes, 5000);
        drop(held);
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn part_files_survive_trim_and_empty_dirs_go_but_not_the_root() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root)
            .bytes_limit(1u64 << 20)
            .low_watermark_percent(1)
            .trim_interval_min(Duration::from_millis(1))
            .open()
            .await
            .unwrap();
        for i in 0..5 {
            cache
                .put(&format!("x/y{i}/obj"), &bytes(20_000, i))
                .await
                .unwrap();
        }
        let mut staging = cache.create_staging("x/y0/incoming").await.unwrap();
        staging.append(&bytes(5000, 1)).await.unwrap();
        let part = staging.path();
        for kind in [TrimKind::Fast, TrimKind::Exhaustive] {
            cache.trim(kind).await.unwrap();
            assert!(part.exists(), "{kind:?} trim deleted a .part file");
        }
        let stats = cache.stats();
        assert_eq!(stats.objects, 0);
        assert_eq!(stats.objects_trimmed, 5);
        // Only the staging file and the directories above it remain.
        let left = tree(cache.objects_dir());
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(left[0] == "x/" && left[1] == "x/y0/" && left[2].ends_with(".part"));
        staging.commit().await.unwrap();
        assert_eq!(
            cache.get("x/y0/incoming").await.unwrap().unwrap().len(),
            5000
        );
        assert!(cache.invalidate("x/y0/incoming").await.unwrap());
        cache.trim(TrimKind::Exhaustive).await.unwrap();
        assert_eq!(tree(cache.objects_dir()), Vec::<String>::new());
        assert!(cache.objects_dir().is_dir() && root.is_dir());
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn trims_are_throttled() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        // Long enough that a stall of the machine between the two trims
        // does not let the second one through unthrottled.
        let interval = Duration::from_secs(2);
        let cache = Cache::builder(&root)
            .trim_interval_min(interval)
            .open()
            .await
            .unwrap();
        let first = cache.trim(TrimKind::Fast).await.unwrap();
        assert_eq!(first.throttled_for, Duration::ZERO);
        let started = Instant::now();
        let second = cache.trim(TrimKind::Fast).await.unwrap();
        assert!(second.throttled_for > interval / 2, "{second:?}");
        assert!(started.elapsed() >= second.throttled_for);
        assert_eq!(cache.stats().trims_throttled, 1);
        assert_eq!(cache.stats().trims_fast, 2);
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn background_trim_starts_above_the_threshold() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root)
            .objects_limit(10)
            .trim_threshold_percent(50)
            .low_watermark_percent(20)
            .trim_interval_min(Duration::from_millis(1))
            .open()
            .await
            .unwrap();
        for i in 0..6 {
            cache.put(&format!("k{i}"), b"v").await.unwrap();
        }
        eventually("a background trim", || cache.stats().trims_background >= 1).await;
        eventually("the low watermark", || cache.stats().objects <= 2).await;
        // Newest survive.
        assert!(cache.contains("k5").unwrap());
        assert!(!cache.contains("k0").unwrap());
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn exhaustive_trim_reconciles_tracker_with_disk() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root)
            .objects_limit(100)
            .trim_interval_min(Duration::from_millis(1))
            .open()
            .await
            .unwrap();
        cache.put("tracked", b"0123456789").await.unwrap();
        cache.put("gone", b"abc").await.unwrap();
        cache.put("resized", b"abc").await.unwrap();
        let objects = cache.objects_dir().to_path_buf();
        std::fs::create_dir(objects.join("adopt")).unwrap();
        std::fs::write(objects.join("adopt/me"), b"12345").unwrap();
        std::fs::remove_file(objects.join("gone")).unwrap();
        std::fs::write(objects.join("resized"), b"abcdef").unwrap();

        let report = cache.trim(TrimKind::Exhaustive).await.unwrap();
        let walk = report.walk.unwrap();
        assert_eq!(
            (walk.untracked_added, walk.missing_dropped, walk.resized),
            (1, 1, 1)
        );
        assert_eq!(report.objects_removed, 0);
        // Adopted files are the first to go.
        assert_eq!(cache.keys_oldest_first()[0], "adopt/me");
        let stats = cache.stats();
        assert_eq!((stats.objects, stats.bytes), (3, 10 + 5 + 6));
        // Tracked, but a file put there by hand carries no checksum: it is
        // not served (a `Tiered` view downloads the object again).
        assert!(matches!(
            cache.get("adopt/me").await,
            Err(ringstore_cache::Error::UnverifiableObject { .. })
        ));
        assert_eq!(cache.stats().damaged_objects, 1);
        cache.shutdown().await.unwrap();
    });
}
