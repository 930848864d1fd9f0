//! Pins the bugs a review of the cache found (each test names its bug):
//! namespace operations following symlinks out of the cache, short reads
//! taken for EOF, short writes reported as ENOSPC, stale staging handles
//! deleting a later instance's files, `invalidate` not making an earlier
//! removal durable, and a FIFO planted at a key hanging `get`.

mod common;

use std::rc::Rc;
use std::time::Duration;

use common::{bytes, run, tempdir, tree};
use ringstore_cache::faults::Faults;
use ringstore_cache::{Cache, Error, KeyRejection, TrimKind};

/// Bug: `invalidate` (and the empty-parent sweep after it) ran a plain
/// `unlinkat(objects_fd, key)`, which follows a symlink in an intermediate
/// component: with `objects/link -> /outside`, `invalidate("link/victim")`
/// deleted `/outside/victim`. Untracked keys are never unlinked now, and
/// tracked ones are unlinked relative to a parent opened without symlinks.
#[test]
fn invalidate_never_follows_a_directory_symlink_out_of_the_cache() {
    let dir = tempdir();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("victim"), b"precious").unwrap();
    std::fs::write(outside.join("sub/victim2"), b"precious").unwrap();
    std::fs::write(outside.join("tracked"), b"precious").unwrap();
    let root = dir.path().join("cache");
    let outside2 = outside.clone();
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        let objects = cache.objects_dir().to_path_buf();
        std::os::unix::fs::symlink(&outside2, objects.join("link")).unwrap();
        assert!(!cache.invalidate("link/victim").await.unwrap());
        assert!(!cache.invalidate("link/sub/victim2").await.unwrap());

        // A tracked key whose directory is swapped for a symlink afterwards.
        cache.put("d/tracked", b"cache data").await.unwrap();
        std::fs::remove_file(objects.join("d/tracked")).unwrap();
        std::fs::remove_dir(objects.join("d")).unwrap();
        std::os::unix::fs::symlink(&outside2, objects.join("d")).unwrap();
        let err = cache.invalidate("d/tracked").await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::KeyRejected {
                    reason: KeyRejection::SymlinkInPath,
                    ..
                }
            ),
            "{err}"
        );
        cache.shutdown().await.unwrap();
    });
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"precious");
    assert_eq!(
        std::fs::read(outside.join("sub/victim2")).unwrap(),
        b"precious"
    );
    assert_eq!(std::fs::read(outside.join("tracked")).unwrap(), b"precious");
    assert!(outside.join("sub").is_dir(), "outside/sub was removed");
}

/// Bug: `read_to_end` took a short read for EOF, but Linux caps one read at
/// 0x7ffff000 bytes, so a get of an object above 2 GiB came back truncated.
/// The fault hook shortens reads the same way.
#[test]
fn get_keeps_reading_after_short_reads() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let faults = Rc::new(Faults::new());
        let cache = Cache::builder(&root)
            .faults(Rc::clone(&faults))
            .open()
            .await
            .unwrap();
        let data = bytes(300_000, 3);
        cache.put("k", &data).await.unwrap();
        faults.shorten_next_reads(5);
        let got = cache.get("k").await.unwrap().unwrap();
        assert_eq!(got.len(), data.len(), "truncated object served");
        assert_eq!(&got[..], &data[..]);
        // And the common case still works.
        assert_eq!(&cache.get("k").await.unwrap().unwrap()[..], &data[..]);
        cache.shutdown().await.unwrap();
    });
}

/// Bug: a staging flush sent its whole buffer in one `write_at` and took a
/// short write for a full disk: a put above 2 GiB (where Linux caps one
/// write) failed with a bogus `NoSpace` and an exhaustive ENOSPC trim. The
/// fault hook shortens writes the same way.
#[test]
fn short_writes_are_continued_not_reported_as_enospc() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let faults = Rc::new(Faults::new());
        let cache = Cache::builder(&root)
            .faults(Rc::clone(&faults))
            .open()
            .await
            .unwrap();
        cache.put("keep", b"small").await.unwrap();
        let data = bytes(1_000_000, 9);
        faults.shorten_next_writes(3);
        cache.put("big", &data).await.unwrap();
        assert_eq!(&cache.get("big").await.unwrap().unwrap()[..], &data[..]);
        assert!(cache.contains("keep").unwrap());
        let stats = cache.stats();
        assert_eq!(stats.trims_enospc, 0);
        assert_eq!(stats.bytes, 5 + data.len() as u64);
        cache.shutdown().await.unwrap();
    });
}

/// Bug: a staging handle that outlived its (dropped) cache still unlinked
/// its name on close/commit, and staging names restarted at sequence 0 in
/// every instance, so the stale handle deleted the next instance's live
/// staging file. Now a closed cache's handles touch nothing, and names carry
/// a random per-instance part.
#[test]
fn stale_staging_never_touches_a_later_instances_files() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let a = Cache::builder(&root).open().await.unwrap();
        let mut old = a.create_staging("k").await.unwrap();
        old.append(b"old").await.unwrap();
        let old_path = old.path();
        let mut old2 = a.create_staging("k2").await.unwrap();
        old2.append(b"old").await.unwrap();
        let old2_path = old2.path();
        drop(a); // a crash while staging files are still held
        let b = Cache::builder(&root).open().await.unwrap();
        let mut new = b.create_staging("k").await.unwrap();
        new.append(b"new data").await.unwrap();
        assert_ne!(new.path(), old_path, "a staging name was reused");
        // Even a file at exactly the stale name is left alone.
        std::fs::write(&old_path, b"not yours").unwrap();
        std::fs::write(&old2_path, b"not yours").unwrap();
        assert!(matches!(old.commit().await, Err(Error::Closed)));
        old2.close().await.unwrap();
        assert_eq!(std::fs::read(&old_path).unwrap(), b"not yours");
        assert_eq!(std::fs::read(&old2_path).unwrap(), b"not yours");
        new.commit().await.unwrap();
        assert_eq!(&b.get("k").await.unwrap().unwrap()[..], b"new data");
        b.shutdown().await.unwrap();
    });
}

/// Bug: `invalidate` fsync'd the directory only when it removed something
/// itself, so after a trim's (unsynced) removal of the key, `invalidate`
/// returned with the removal still not durable: a crash could bring the
/// stale object back. It now always fsyncs the parent (or nearest ancestor).
#[test]
fn invalidate_always_syncs_the_parent_directory() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root)
            .bytes_limit(10_000)
            .tracker_persist_interval(Duration::from_secs(3600))
            .open()
            .await
            .unwrap();
        cache.put("d/old", &bytes(5_000, 1)).await.unwrap();
        cache.put("d/new", &bytes(4_000, 2)).await.unwrap();
        cache.trim(TrimKind::Fast).await.unwrap();
        assert!(!cache.contains("d/old").unwrap(), "trim kept d/old");
        let before = cache.stats().dir_syncs;
        assert!(!cache.invalidate("d/old").await.unwrap());
        assert!(
            cache.stats().dir_syncs > before,
            "invalidate returned without a directory fsync"
        );
        // A key whose directory is gone altogether syncs an ancestor.
        let before = cache.stats().dir_syncs;
        assert!(!cache.invalidate("gone/deeper/k").await.unwrap());
        assert!(cache.stats().dir_syncs > before);
        cache.shutdown().await.unwrap();
    });
}

/// Bug: `ensure_parent_dirs` took an existing directory (or EEXIST from a
/// concurrent mkdir) as durable, so a commit under a directory this process
/// had created but whose parent fsync had not happened (still in flight in
/// another task, or failed) returned success with the directory entry not
/// durable. Every level created in this process stays "unsynced" until its
/// parent's fsync succeeds, and commits under it do that fsync.
#[test]
fn a_commit_under_a_new_directory_makes_the_directory_durable() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let faults = Rc::new(Faults::new());
        let cache = Cache::builder(&root)
            .faults(Rc::clone(&faults))
            .open()
            .await
            .unwrap();
        // The first put creates `d` but its fsync of `objects/` fails.
        faults.fail_next_dir_syncs(1);
        assert!(cache.put("d/a", b"first").await.is_err());
        assert!(cache.objects_dir().join("d").is_dir());
        // The next put finds `d` in place; it must still sync `objects/`
        // (for `d`) as well as `d` (for its own object).
        let before = cache.stats().dir_syncs;
        cache.put("d/b", b"second").await.unwrap();
        assert_eq!(cache.stats().dir_syncs - before, 2);
        // Once durable, later puts only sync their own directory.
        let before = cache.stats().dir_syncs;
        cache.put("d/c", b"third").await.unwrap();
        assert_eq!(cache.stats().dir_syncs - before, 1);
        cache.shutdown().await.unwrap();
    });
}

/// Bug: which directories were not yet durable lived only in the instance
/// that created them, so a directory an earlier instance made and never
/// synced (its fsync failed, or it crashed first) was taken as durable by
/// the next: a put under it synced only the directory itself, and a power
/// loss could take the directory's entry, and the acknowledged object with
/// it. Each instance now makes every level durable once before a commit
/// under it returns.
#[test]
fn a_put_into_a_directory_an_earlier_instance_never_synced_makes_it_durable() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        // An earlier instance left `d` holding an object. Whether it synced
        // `d`'s entry, the next instance cannot tell from the disk (a crash
        // or a failed fsync leaves the same files as a success).
        let cache = Cache::builder(&root).open().await.unwrap();
        cache.put("d/a", b"first").await.unwrap();
        drop(cache);
        let cache = Cache::builder(&root).open().await.unwrap();
        assert!(cache.contains("d/a").unwrap());
        // `d` is in place, so the put creates no directory; it must still
        // sync `objects/` (for `d`) as well as `d` (for its own object).
        let before = cache.stats().dir_syncs;
        cache.put("d/b", b"second").await.unwrap();
        assert_eq!(cache.stats().dir_syncs - before, 2);
        let before = cache.stats().dir_syncs;
        cache.put("d/c", b"third").await.unwrap();
        assert_eq!(cache.stats().dir_syncs - before, 1);
        cache.shutdown().await.unwrap();
    });
}

/// Bug: the reservation queue added waiting bytes with `saturating_add` but
/// took them back with a plain `-=`: two waiters whose sizes together pass
/// `u64::MAX` made the second one's departure underflow (a panic in debug
/// builds, a wrapped counter in release). Found with it: the fit check
/// saturated too, so under a `u64::MAX` limit a full ledger granted more
/// (and the release then panicked on underflow).
#[test]
fn waiters_whose_sizes_saturate_leave_without_underflow() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root)
            .bytes_limit(u64::MAX)
            .open()
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let hold = cache.reserve(u64::MAX, 0, deadline).await.unwrap();
        let half = u64::MAX / 2 + 1;
        let soon = std::time::Instant::now() + Duration::from_millis(30);
        let (a, b) =
            futures_lite::future::zip(cache.reserve(half, 0, soon), cache.reserve(half, 0, soon))
                .await;
        assert!(matches!(a, Err(Error::ReservationTimeout { .. })), "{a:?}");
        assert!(matches!(b, Err(Error::ReservationTimeout { .. })), "{b:?}");
        drop(hold);
        let stats = cache.stats();
        assert_eq!((stats.reserved_bytes, stats.bytes), (0, 0));
        cache.shutdown().await.unwrap();
    });
}

/// Bug: objects were opened without `O_NONBLOCK`, so a FIFO planted at a
/// tracked key blocked the open in the kernel forever (and with it `get`
/// and the metadata ring's teardown). Now the open returns at once and the
/// FIFO is refused as not a regular file.
#[test]
fn a_fifo_at_a_key_cannot_hang_get() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        cache.put("k", b"data").await.unwrap();
        let path = cache.objects_dir().join("k");
        std::fs::remove_file(&path).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        assert!(cache.get("k").await.is_err());
        drop(cache);
    });
    assert!(tree(&dir.path().join("cache/objects")).contains(&"k".to_owned()));
}

/// Bug: dropping a `put` (or `commit`) future while its `renameat`/`linkat`
/// was in flight let the kernel finish the rename while the tracker and
/// ledger were never updated (and the key lock was released early): an
/// object on disk the cache did not count. The namespace op and its
/// accounting now run in a detached task that owns the key lock.
#[test]
fn a_put_dropped_mid_commit_still_keeps_disk_and_accounting_in_step() {
    const CUTS_MAX: usize = 40;
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let faults = Rc::new(Faults::new());
        let cache = Cache::builder(&root)
            .tracker_persist_interval(Duration::from_secs(3600))
            .faults(Rc::clone(&faults))
            .open()
            .await
            .unwrap();
        let mut mismatches = Vec::new();
        // Each put is polled only when woken, and dropped at its `cut`-th
        // wake-up without being polled: one cut lands on the wake-up of the
        // rename's completion (or while it is still in flight), whatever the
        // timing, because every await point takes its own wake-up.
        for cut in 1..CUTS_MAX {
            let key = format!("k{cut}");
            let data = bytes(1000 + cut, cut as u8);
            // The rename is often done before its submitter is polled again;
            // the hook holds the commit at that point for one wake-up.
            faults.pause_next_commits_after_place(1);
            let finished = CutAfter {
                inner: Box::pin(cache.put(&key, &data)),
                polls_left: cut,
            }
            .await;
            if let Some(result) = finished {
                result.unwrap();
            }
            // The dropped put finishes in a task of its own.
            common::until("the dropped put's work finishes", || !cache.is_busy(&key)).await;
            let on_disk = cache.objects_dir().join(&key).exists();
            let tracked = cache.contains(&key).unwrap();
            if on_disk != tracked {
                mismatches.push((cut, on_disk, tracked));
            }
        }
        let objects = cache.objects_dir().to_path_buf();
        let disk: u64 = tree(&objects)
            .iter()
            .filter(|p| !p.ends_with('/') && !p.ends_with(".part"))
            .map(|p| std::fs::metadata(objects.join(p)).unwrap().len())
            .sum();
        assert!(
            mismatches.is_empty(),
            "(cut, on disk, tracked): {mismatches:?}"
        );
        assert_eq!(cache.stats().bytes, disk);
        cache.shutdown().await.unwrap();
    });
}

/// Polls `inner` (only when woken) at most `polls_left` times, then drops it
/// unfinished: `None`.
struct CutAfter<F> {
    inner: std::pin::Pin<Box<F>>,
    polls_left: usize,
}

impl<F: std::future::Future> std::future::Future for CutAfter<F> {
    type Output = Option<F::Output>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        if self.polls_left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.polls_left -= 1;
        self.inner.as_mut().poll(cx).map(Some)
    }
}
