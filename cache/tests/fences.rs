//! Fences: a placement that stands for a store object (a download, a
//! write's upload) places nothing once its key was invalidated after the
//! fence was taken, so a delete racing a download or a write never leaves
//! an object the store dropped cached and served.

mod common;

use std::path::Path;
use std::rc::Rc;

use common::{bytes, run, tempdir};
use ringstore_cache::{Cache, Error, Remote, Tiered};
use ringstore_journal::storage::MemStorage;

const DOMAIN: &str = "7d3c1c1e-2f0b-4e1a-9a53-0000000000f1";

#[test]
fn a_fenced_commit_after_an_invalidation_places_nothing() {
    run(|| async {
        let cache = Cache::builder(Path::new("/cache"))
            .disk(MemStorage::new())
            .open()
            .await
            .unwrap();
        let key = "d/k";
        let data = bytes(10_000, 1);

        // Invalidated after the fence was taken: refused, nothing left.
        let fence = cache.fence(key).unwrap();
        cache.invalidate(key).await.unwrap();
        let mut staging = cache.create_staging(key).await.unwrap();
        staging.fence(fence).unwrap();
        staging.append(&data).await.unwrap();
        let refused = staging.commit().await;
        assert!(
            matches!(&refused, Err(Error::Invalidated { key: k }) if k == key),
            "{refused:?}"
        );
        assert!(!cache.contains(key).unwrap());
        let stats = cache.stats();
        assert_eq!(stats.fenced_placements_refused, 1, "{stats:?}");
        assert_eq!((stats.reserved_bytes, stats.objects), (0, 0), "{stats:?}");

        // A fence taken after the invalidation holds; so does one whose
        // key nobody invalidated since.
        let fence = cache.fence(key).unwrap();
        cache.invalidate("d/other").await.unwrap();
        let mut staging = cache.create_staging(key).await.unwrap();
        staging.fence(fence).unwrap();
        staging.append(&data).await.unwrap();
        staging.commit().await.unwrap();
        assert_eq!(&cache.get(key).await.unwrap().unwrap()[..], &data[..]);

        // A fence over another key is refused.
        let mut staging = cache.create_staging("d/j").await.unwrap();
        let wrong = staging.fence(cache.fence(key).unwrap());
        assert!(
            matches!(wrong, Err(Error::Config { field: "fence", .. })),
            "{wrong:?}"
        );
        staging.close().await.unwrap();
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn a_fenced_adopt_after_an_invalidation_places_nothing() {
    let dir = tempdir();
    let file = dir.path().join("upload");
    let data = bytes(20_000, 2);
    std::fs::write(&file, &data).unwrap();
    let cache_dir = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&cache_dir).open().await.unwrap();
        let fence = cache.fence("d/k").unwrap();
        cache.invalidate("d/k").await.unwrap();
        let refused = cache.adopt_fenced("d/k", &file, None, fence).await;
        assert!(
            matches!(&refused, Err(Error::Invalidated { .. })),
            "{refused:?}"
        );
        assert!(!cache.contains("d/k").unwrap());
        assert_eq!(cache.stats().fenced_placements_refused, 1);
        assert!(
            !cache_dir.join("objects/d/k").exists(),
            "nothing linked at the key"
        );
        // The holder's own invalidation, and only that, keeps the fence.
        let fence = cache.fence("d/k").unwrap();
        cache.invalidate("d/k").await.unwrap();
        assert!(fence.own_invalidation());
        cache.adopt_fenced("d/k", &file, None, fence).await.unwrap();
        assert_eq!(&cache.get("d/k").await.unwrap().unwrap()[..], &data[..]);
        let wrong = cache
            .adopt_fenced("d/j", &file, None, cache.fence("d/k").unwrap())
            .await;
        assert!(
            matches!(wrong, Err(Error::Config { field: "fence", .. })),
            "{wrong:?}"
        );
        cache.shutdown().await.unwrap();
    });
}

/// Objects big enough that a download is still streaming when a delete of
/// the key, started once the download has begun, is done.
const RACED_OBJECT_BYTES: usize = 24 << 20;

/// Downloads raced at most before the test gives up on seeing one whose
/// commit the delete's invalidation refused (each is checked either way).
const RACES_MAX: u32 = 8;

/// Turns of the reactor a race waits at most for its download to begin.
const BEGIN_TURNS_MAX: u32 = 200_000;

/// `get` of a key whose download a `delete` overtakes: before fences, the
/// download committed the deleted object afterwards and every later `get`
/// served it. Now the download's commit is refused (counted) and it
/// downloads again (finding nothing), and nothing of the object stays
/// cached. Races are repeated until one commit was refused; every race,
/// whichever way it went, must leave nothing of the object to serve.
#[test]
fn a_download_overtaken_by_a_delete_leaves_nothing_to_serve() {
    let dir = tempdir();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    run(move || async move {
        let remote = Remote::local(&store).open().unwrap();
        let cache = Rc::new(
            Cache::builder(Path::new("/cache"))
                .disk(MemStorage::new())
                .bytes_limit(256 << 20)
                .open()
                .await
                .unwrap(),
        );
        let tiered = Rc::new(Tiered::new(Rc::clone(&cache), remote.clone(), DOMAIN).unwrap());
        let data = Rc::new(bytes(RACED_OBJECT_BYTES, 3));
        for race in 0..RACES_MAX {
            let key = format!("raced/{race}");
            let full = tiered.object_key(&key).unwrap();
            // Uploaded behind the cache's back, so `get` downloads it.
            remote.put(&full, data.to_vec()).await.unwrap();
            let done = Rc::new(std::cell::Cell::new(false));
            let reader = glommio::spawn_local({
                let (tiered, key, done) = (Rc::clone(&tiered), key.clone(), Rc::clone(&done));
                async move {
                    let got = tiered.get(&key).await;
                    done.set(true);
                    got
                }
            })
            .detach();
            // The download has begun (its staging file holds a
            // reservation), or already finished: the delete runs either way.
            let begun = ringstore_journal::glommio_quirks::turn_until(
                || cache.stats().reserved_bytes > 0 || done.get(),
                BEGIN_TURNS_MAX,
            )
            .await;
            assert!(begun, "race {race}: the download neither began nor ended");
            tiered.delete(&key).await.unwrap();
            // What the racing get returns may be either (it began before
            // the delete); what stays cached must not be the object.
            match reader.await.expect("the reader ran").unwrap() {
                None => {}
                Some(object) => assert_eq!(&object[..], &data[..]),
            }
            assert!(
                !cache.contains(&full).unwrap(),
                "race {race}: the deleted object stayed cached"
            );
            assert!(
                tiered.get(&key).await.unwrap().is_none(),
                "race {race}: the deleted object is served"
            );
            if cache.stats().fenced_placements_refused > 0 {
                break;
            }
        }
        assert!(
            cache.stats().fenced_placements_refused > 0,
            "no download's commit came after its delete in {RACES_MAX} races"
        );
        drop(tiered);
        Rc::try_unwrap(cache).unwrap().shutdown().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}
