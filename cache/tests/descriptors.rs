//! Pins that a cache gives back every file descriptor it opened: opened
//! and shut down, or dropped like a crash, over and over on one reactor,
//! the process's descriptor count stays where it was. (Its own test
//! binary: other tests running at once would move the count.) What a
//! whole executor leaks when it ends is glommio's (see the journal's
//! `glommio_quirks`), not counted here.

mod common;

use common::{run, tempdir};
use ringstore_cache::Cache;

/// Open-and-close cycles of each kind.
const CYCLES: usize = 40;
/// Descriptors the count may move by (glommio's own, opened lazily).
const SLACK: usize = 4;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .count()
}

#[test]
fn opening_and_closing_a_cache_leaks_no_descriptor() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        // One cycle first, so whatever glommio opens once is open.
        let cache = Cache::builder(&root).open().await.unwrap();
        cache.put("k", b"v").await.unwrap();
        cache.shutdown().await.unwrap();
        glommio::executor().yield_task_queue_now().await;
        let before = open_descriptors();
        for i in 0..CYCLES {
            let cache = Cache::builder(&root).open().await.unwrap();
            cache.put(&format!("k{i}"), b"v").await.unwrap();
            if i % 2 == 0 {
                cache.shutdown().await.unwrap();
            } else {
                drop(cache); // a crash
            }
            // Let the reactor run the closes it queued.
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        let after = open_descriptors();
        assert!(
            after <= before + SLACK,
            "{CYCLES} caches opened and closed: {before} descriptors before, {after} after"
        );
    });
}
