//! Pins reservations: a reservation waiting past its deadline times out with
//! a typed error while the reactor keeps running other tasks; releasing
//! (dropping) a reservation wakes a waiter; waiting is first-come,
//! first-served; guards merge (same cache only); the free-disk floor and
//! percent-of-filesystem limits are applied.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{run, tempdir, until};
use ringstore_cache::{BytesLimit, Cache, Error};

#[test]
fn waiting_past_the_deadline_times_out_without_blocking_the_reactor() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root)
            .bytes_limit(1000u64)
            .open()
            .await
            .unwrap();
        let held = cache.reserve(900, 1, Instant::now()).await.unwrap();
        let ticks = Rc::new(Cell::new(0u32));
        let ticker = glommio::spawn_local({
            let ticks = Rc::clone(&ticks);
            async move {
                loop {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                    ticks.set(ticks.get() + 1);
                }
            }
        });
        let wait = Duration::from_millis(150);
        let started = Instant::now();
        let err = cache.reserve(200, 0, started + wait).await.unwrap_err();
        let waited = started.elapsed();
        assert!(
            matches!(err, Error::ReservationTimeout { bytes: 200, .. }),
            "{err}"
        );
        assert!(waited >= wait, "{waited:?}");
        assert!(waited < wait + Duration::from_secs(2), "{waited:?}");
        // The reactor ran the other task the whole time (about 30 ticks;
        // a blocked reactor makes at most one, a loaded machine fewer).
        assert!(ticks.get() >= 3, "only {} ticks while waiting", ticks.get());
        drop(ticker);
        let stats = cache.stats();
        assert_eq!(
            (stats.reservation_waits, stats.reservation_timeouts),
            (1, 1)
        );
        assert_eq!(stats.reserved_bytes, 900);
        drop(held);
        assert_eq!(cache.stats().reserved_bytes, 0);
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn dropping_a_reservation_wakes_a_waiter() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Rc::new(
            Cache::builder(&root)
                .bytes_limit(1000u64)
                .open()
                .await
                .unwrap(),
        );
        let held = cache.reserve(800, 0, Instant::now()).await.unwrap();
        let waiter = glommio::spawn_local({
            let cache = Rc::clone(&cache);
            async move {
                cache
                    .reserve(500, 0, Instant::now() + Duration::from_secs(10))
                    .await
            }
        });
        until("the second reservation waits", || {
            cache.stats().reservation_waits == 1
        })
        .await;
        let released_at = Instant::now();
        drop(held);
        let granted = waiter.await.unwrap();
        assert!(released_at.elapsed() < Duration::from_secs(1));
        assert_eq!(granted.bytes(), 500);
        assert_eq!(cache.stats().reserved_bytes, 500);
        drop(granted);
        Rc::try_unwrap(cache)
            .ok()
            .unwrap()
            .shutdown()
            .await
            .unwrap();
    });
}

#[test]
fn waiting_is_first_come_first_served() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Rc::new(
            Cache::builder(&root)
                .bytes_limit(100u64)
                .open()
                .await
                .unwrap(),
        );
        let held = cache.reserve(60, 0, Instant::now()).await.unwrap();
        let big = glommio::spawn_local({
            let cache = Rc::clone(&cache);
            async move {
                cache
                    .reserve(50, 0, Instant::now() + Duration::from_secs(10))
                    .await
            }
        });
        until("the larger reservation waits", || {
            cache.stats().reservation_waits == 1
        })
        .await;
        // 60 + 30 fits, but a larger request is already waiting: queue.
        let small = cache.reserve(30, 0, Instant::now()).await;
        assert!(matches!(small, Err(Error::ReservationTimeout { .. })));
        drop(held);
        let big = big.await.unwrap();
        assert_eq!(big.bytes(), 50);
        drop(big);
        Rc::try_unwrap(cache)
            .ok()
            .unwrap()
            .shutdown()
            .await
            .unwrap();
    });
}

#[test]
fn reservations_merge_within_one_cache_only() {
    let dir = tempdir();
    let root_a = dir.path().join("a");
    let root_b = dir.path().join("b");
    run(move || async move {
        let a = Cache::builder(&root_a).open().await.unwrap();
        let b = Cache::builder(&root_b).open().await.unwrap();
        let mut r = a.reserve(10, 1, Instant::now()).await.unwrap();
        r.merge(a.reserve(5, 2, Instant::now()).await.unwrap())
            .unwrap();
        assert_eq!((r.bytes(), r.objects()), (15, 3));
        assert_eq!(a.stats().reserved_bytes, 15);
        let foreign = b.reserve(7, 0, Instant::now()).await.unwrap();
        assert!(matches!(r.merge(foreign), Err(Error::ForeignReservation)));
        // The refused reservation went back to its own cache.
        assert_eq!(b.stats().reserved_bytes, 0);
        drop(r);
        assert_eq!(
            (a.stats().reserved_bytes, a.stats().reserved_objects),
            (0, 0)
        );
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    });
}

#[test]
fn free_disk_floor_and_percent_limits() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let one = Cache::builder(&root)
            .bytes_limit(BytesLimit::PercentOfFilesystem(1))
            .open()
            .await
            .unwrap();
        let one_percent = one.stats().bytes_limit;
        one.shutdown().await.unwrap();
        let two = Cache::builder(&root)
            .bytes_limit(BytesLimit::PercentOfFilesystem(2))
            .open()
            .await
            .unwrap();
        let two_percent = two.stats().bytes_limit;
        two.shutdown().await.unwrap();
        assert!(one_percent > 0);
        assert!(
            two_percent.abs_diff(2 * one_percent) <= 2,
            "{one_percent} {two_percent}"
        );

        // A floor larger than any disk: nothing can be reserved.
        let floored = Cache::builder(&root)
            .min_free_bytes(u64::MAX / 2)
            .reservation_wait(Duration::from_millis(60))
            .open()
            .await
            .unwrap();
        let err = floored.put("k", b"v").await.unwrap_err();
        assert!(matches!(err, Error::ReservationTimeout { .. }), "{err}");
        assert!(!floored.contains("k").unwrap());
        floored.shutdown().await.unwrap();
        // A small floor leaves room.
        let fine = Cache::builder(&root)
            .min_free_bytes(1 << 20)
            .open()
            .await
            .unwrap();
        fine.put("k", b"v").await.unwrap();
        fine.shutdown().await.unwrap();
    });
}
