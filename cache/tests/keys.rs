//! Pins key validation and containment: absolute paths, `..`, `.`, empty
//! segments and sibling-prefix escapes (`../cachedir_other`) are refused with
//! a typed error before any filesystem call (nothing is created, inside or
//! outside the cache), and a symlink planted inside the cache is never
//! followed out of it.

mod common;

use common::{run, tempdir, tree};
use ringstore_cache::{Cache, Error, KeyRejection};

const ESCAPES: [(&str, KeyRejection); 8] = [
    ("/etc/passwd", KeyRejection::Absolute),
    ("../cachedir_other/x", KeyRejection::ParentSegment),
    ("../cachedir", KeyRejection::ParentSegment),
    ("a/../../cachedir_other", KeyRejection::ParentSegment),
    ("a/./b", KeyRejection::CurrentSegment),
    ("a//b", KeyRejection::EmptySegment),
    ("trailing/", KeyRejection::EmptySegment),
    ("", KeyRejection::Empty),
];

#[test]
fn path_escapes_are_refused_with_nothing_created() {
    let dir = tempdir();
    let parent = dir.path().to_path_buf();
    // The cache lives in `cachedir`; `cachedir_other` is the sibling an
    // escape would reach.
    let root = parent.join("cachedir");
    std::fs::create_dir(parent.join("cachedir_other")).unwrap();
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        let before_parent = tree(&parent);
        for (key, reason) in ESCAPES {
            let check = |err: Error| match err {
                Error::KeyRejected { reason: got, .. } => assert_eq!(got, reason, "{key:?}"),
                other => panic!("{key:?}: {other}"),
            };
            check(cache.put(key, b"escape").await.unwrap_err());
            check(cache.create_staging(key).await.unwrap_err());
            check(cache.get(key).await.unwrap_err());
            check(cache.invalidate(key).await.unwrap_err());
            check(cache.contains(key).unwrap_err());
        }
        // Absolute path into the sibling, spelled out.
        let sibling = format!("{}/cachedir_other/x", parent.display());
        assert!(cache.put(&sibling, b"escape").await.is_err());
        assert_eq!(tree(&parent), before_parent, "something was created");
        assert_eq!(tree(&parent.join("cachedir_other")), Vec::<String>::new());
        assert_eq!(tree(cache.objects_dir()), Vec::<String>::new());
        let stats = cache.stats();
        assert_eq!((stats.reserved_bytes, stats.reserved_objects), (0, 0));
        assert_eq!(
            stats.misses + stats.hits,
            0,
            "a refused get counted as a lookup"
        );
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn symlinks_inside_the_cache_never_lead_outside() {
    let dir = tempdir();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"do not serve me").unwrap();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        let objects = cache.objects_dir().to_path_buf();
        // A directory symlink and a file symlink pointing outside.
        std::os::unix::fs::symlink(&outside, objects.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), objects.join("filelink")).unwrap();
        let outside_before = tree(&outside);

        for key in ["link/new", "link/deeper/new"] {
            let err = cache.put(key, b"x").await.unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::KeyRejected {
                        reason: KeyRejection::SymlinkInPath,
                        ..
                    }
                ),
                "{key}: {err}"
            );
            let err = cache.create_staging(key).await.unwrap_err();
            assert!(matches!(err, Error::KeyRejected { .. }), "{key}: {err}");
        }
        // Invalidate never unlinks through the links: not tracked, so
        // nothing is touched, inside or outside.
        assert!(!cache.invalidate("link/secret").await.unwrap());
        assert!(!cache.invalidate("filelink").await.unwrap());
        assert_eq!(tree(&outside), outside_before);
        assert!(objects.join("link").is_symlink());
        assert!(objects.join("filelink").is_symlink());
        // Not tracked, so never opened; even an exhaustive trim leaves the
        // links alone (they are not objects).
        assert!(cache.get("link/secret").await.unwrap().is_none());
        assert!(cache.get("filelink").await.unwrap().is_none());
        let report = cache
            .trim(ringstore_cache::TrimKind::Exhaustive)
            .await
            .unwrap();
        assert_eq!(report.walk.unwrap().untracked_added, 0);
        assert!(cache.get("filelink").await.unwrap().is_none());
        // Putting over a symlink replaces the link itself, never its target.
        cache.put("filelink", b"cache data").await.unwrap();
        assert_eq!(
            &cache.get("filelink").await.unwrap().unwrap()[..],
            b"cache data"
        );
        // Invalidating it removes the cache's file, never the old target.
        assert!(cache.invalidate("filelink").await.unwrap());
        assert_eq!(
            std::fs::read(outside.join("secret")).unwrap(),
            b"do not serve me"
        );
        assert_eq!(tree(&outside), outside_before);
        cache.shutdown().await.unwrap();
    });
}
