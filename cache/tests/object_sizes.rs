//! Pins that an object file's size on disk is checked before it is trusted:
//! a sparse 16 TiB file under a valid key (or one whose size disagrees with
//! the size its checksum records) is removed by the startup walk instead of
//! being accounted, and a file that grows after startup is refused by
//! `get` and `check` before a byte of it is read or a buffer of its size is
//! allocated (`Error::UnverifiableObject`), with the accounting left below
//! the byte limit, even when its checksum records that size. Before, startup accounted 16 TiB, `get` asked glommio for
//! a 16 TiB buffer (a panic on the shard's thread), and `check` read the
//! file in 1 MiB steps for hours.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{bytes, run, tempdir};
use ringstore_cache::format::{encode_object_checksum, OBJECT_CHECKSUM_ATTRIBUTE};
use ringstore_cache::{Cache, Error, FileDigest, TrimKind};
use ringstore_journal::storage::MemStorage;

/// 16 TiB: far above any byte limit, and nothing on the disk (sparse).
const SPARSE_BYTES: u64 = 1 << 44;

/// ext4 with 4 KiB blocks stores at most 16 TiB less one block in a file.
const EXT4_BLOCK_BYTES: u64 = 4096;

/// What the refusals must take at most: no read, no allocation of the
/// file's size (reading 16 TiB would take hours).
const REFUSAL_TIME_MAX: Duration = Duration::from_secs(5);

/// Extends (or creates) `path` to about [`SPARSE_BYTES`] without writing a
/// byte; returns its size.
fn make_sparse(path: &Path) -> u64 {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    let bytes = match file.set_len(SPARSE_BYTES) {
        Ok(()) => SPARSE_BYTES,
        Err(e) if e.raw_os_error() == Some(libc::EFBIG) => {
            file.set_len(SPARSE_BYTES - EXT4_BLOCK_BYTES).unwrap();
            SPARSE_BYTES - EXT4_BLOCK_BYTES
        }
        Err(e) => panic!("{}: {e}", path.display()),
    };
    assert_eq!(file.metadata().unwrap().len(), bytes);
    bytes
}

/// Records `digest` as the checksum of the file at `path`, as the cache
/// would have.
fn label(path: &Path, digest: FileDigest) {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(OBJECT_CHECKSUM_ATTRIBUTE).unwrap();
    let value = encode_object_checksum(digest);
    // SAFETY: NUL-terminated strings and a live value of its length.
    let res = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(res, 0, "{}", std::io::Error::last_os_error());
}

fn assert_refused(
    result: std::result::Result<impl std::fmt::Debug, Error>,
    key: &str,
    file: &Path,
) {
    match result {
        Err(Error::UnverifiableObject {
            key: refused,
            path,
            reason,
        }) => {
            assert_eq!(refused, key);
            assert_eq!(path, file);
            assert!(reason.contains("bytes"), "{reason}");
        }
        other => panic!("expected {key} refused as unverifiable, got {other:?}"),
    }
}

/// A sparse 16 TiB file under a valid key, with no checksum or with one
/// that agrees with its size, is removed at startup: `get` and `check`
/// find nothing, at once, and the accounting holds only the real object.
#[test]
fn a_sparse_file_under_a_key_is_removed_at_startup_not_accounted() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        let data = bytes(1000, 1);
        cache.put("small", &data).await.unwrap();
        cache.shutdown().await.unwrap();

        let objects = root.join("objects");
        std::fs::create_dir_all(objects.join("d")).unwrap();
        let bare: PathBuf = objects.join("d/huge");
        make_sparse(&bare);
        let labelled = objects.join("labelled");
        let labelled_bytes = make_sparse(&labelled);
        label(
            &labelled,
            FileDigest {
                bytes: labelled_bytes,
                crc32: 0,
            },
        );

        let cache = Cache::builder(&root).open().await.unwrap();
        let started = Instant::now();
        for key in ["d/huge", "labelled"] {
            assert!(cache.get(key).await.unwrap().is_none(), "{key}");
            assert!(!cache.check(key).await.unwrap(), "{key}");
            assert!(!cache.contains(key).unwrap(), "{key}");
        }
        assert!(
            started.elapsed() < REFUSAL_TIME_MAX,
            "{:?}",
            started.elapsed()
        );
        let stats = cache.stats();
        assert!(stats.bytes <= stats.bytes_limit, "{stats:?}");
        assert_eq!((stats.objects, stats.bytes), (1, 1000));
        assert_eq!(stats.refused_at_startup, 2);
        assert!(!bare.exists() && !labelled.exists());
        assert_eq!(&cache.get("small").await.unwrap().unwrap()[..], &data[..]);
        // The key is free again: a new object there is served.
        cache.put("d/huge", b"real").await.unwrap();
        assert_eq!(&cache.get("d/huge").await.unwrap().unwrap()[..], b"real");
        cache.shutdown().await.unwrap();
    });
}

/// A tracked object whose file becomes a sparse 16 TiB one while the cache
/// runs is refused by `get` and `check` from its size alone, named, and
/// counted; an exhaustive trim does not account the new size; invalidating
/// the key removes it.
#[test]
fn an_object_grown_sparse_after_startup_is_refused_before_it_is_read() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        cache.put("grows", b"12345").await.unwrap();
        let file = cache.objects_dir().join("grows");
        make_sparse(&file);

        let started = Instant::now();
        assert_refused(cache.get("grows").await, "grows", &file);
        assert_refused(cache.check("grows").await, "grows", &file);
        assert!(
            started.elapsed() < REFUSAL_TIME_MAX,
            "{:?}",
            started.elapsed()
        );
        let report = cache.trim(TrimKind::Exhaustive).await.unwrap();
        assert_eq!(report.walk.unwrap().refused, 1);
        let stats = cache.stats();
        assert_eq!((stats.objects, stats.bytes), (1, 5));
        assert_eq!(stats.damaged_objects, 2);
        assert_eq!(stats.hits, 0);
        assert!(cache.invalidate("grows").await.unwrap());
        assert!(!file.exists());
        assert_eq!(cache.stats().bytes, 0);
        cache.shutdown().await.unwrap();
    });
}

/// On the simulated disk: an object file of another size than its checksum
/// records is refused without a byte of it read, and the next startup
/// removes it rather than account for it.
#[test]
fn a_file_of_another_size_than_its_checksum_is_refused_unread_on_the_simulated_disk() {
    run(|| async {
        let disk = MemStorage::new();
        let root = Path::new("/cache");
        let path = root.join("objects/a");
        {
            let cache = Cache::builder(root)
                .disk(disk.clone())
                .open()
                .await
                .unwrap();
            cache.put("a", &bytes(20_000, 3)).await.unwrap();
            disk.set_file_bytes(&path, bytes(30_000, 3));
            let read_before = disk.bytes_read();
            assert_refused(cache.get("a").await, "a", &path);
            assert_refused(cache.check("a").await, "a", &path);
            assert_eq!(disk.bytes_read(), read_before);
            assert_eq!(cache.stats().bytes, 20_000);
            cache.shutdown().await.unwrap();
        }
        let cache = Cache::builder(root)
            .disk(disk.clone())
            .open()
            .await
            .unwrap();
        let stats = cache.stats();
        assert_eq!((stats.objects, stats.bytes), (0, 0));
        assert_eq!(stats.refused_at_startup, 1);
        assert!(disk.file_bytes(&path).is_none());
        assert!(cache.get("a").await.unwrap().is_none());
        cache.shutdown().await.unwrap();
    });
}

/// On the simulated disk: a tracked object replaced, while the cache runs,
/// by a file above the byte limit whose checksum records its new size (so
/// only the limit can tell) is refused by `get` and `check` from its size,
/// without a byte of it read, rather than read whole and served.
#[test]
fn a_file_above_the_byte_limit_with_a_matching_checksum_is_refused_unread() {
    run(|| async {
        let disk = MemStorage::new();
        let root = Path::new("/cache");
        let bytes_limit = 64 << 10;
        let cache = Cache::builder(root)
            .disk(disk.clone())
            .bytes_limit(bytes_limit)
            .chunk_bytes(4 << 10)
            .open()
            .await
            .unwrap();
        cache.put("a", &bytes(1_000, 4)).await.unwrap();
        let path = root.join("objects/a");
        let big = bytes(bytes_limit as usize + 1, 4);
        disk.set_file_bytes(&path, big.clone());
        let label = encode_object_checksum(FileDigest::of(&big)).to_vec();
        assert!(disk.set_file_attribute(&path, OBJECT_CHECKSUM_ATTRIBUTE, Some(label)));
        let read_before = disk.bytes_read();
        for result in [
            cache.get("a").await.map(|_| ()),
            cache.check("a").await.map(|_| ()),
        ] {
            assert_refused(result, "a", &path);
        }
        match cache.check("a").await {
            Err(Error::UnverifiableObject { reason, .. }) => {
                assert!(reason.contains("byte limit"), "{reason}")
            }
            other => panic!("expected the byte limit's refusal, got {other:?}"),
        }
        assert_eq!(disk.bytes_read(), read_before);
        let stats = cache.stats();
        assert_eq!((stats.bytes, stats.damaged_objects), (1_000, 3));
        cache.shutdown().await.unwrap();
    });
}
