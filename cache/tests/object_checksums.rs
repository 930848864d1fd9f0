//! Pins object checksums: every object the cache writes (put, staging
//! commit, adopt by link or by copy) carries its size and CRC-32 in the
//! `user.ringstore.object` extended attribute of its file, and a read
//! checks the bytes against it: a flipped bit on the disk is
//! `Error::CorruptObject`, a file without the attribute (put there by
//! hand, or stripped) `Error::UnverifiableObject`, both counted, logged and
//! never served; the simulated disk keeps the attribute across a crash once
//! the object is committed.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use common::{bytes, run, tempdir};
use ringstore_cache::format::{
    decode_object_checksum, OBJECT_CHECKSUM_ATTRIBUTE, OBJECT_CHECKSUM_BYTES,
};
use ringstore_cache::{Adopted, Cache, Error, FileDigest};
use ringstore_journal::storage::MemStorage;

/// The checksum attribute of the file at `path`, read with getxattr(2).
fn attribute(path: &Path) -> Option<Vec<u8>> {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(OBJECT_CHECKSUM_ATTRIBUTE).unwrap();
    let mut value = vec![0u8; 64];
    // SAFETY: NUL-terminated strings and a live buffer of its length.
    let res = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    if res < 0 {
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENODATA)
        );
        return None;
    }
    value.truncate(res as usize);
    Some(value)
}

fn remove_attribute(path: &Path) {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(OBJECT_CHECKSUM_ATTRIBUTE).unwrap();
    // SAFETY: NUL-terminated strings.
    assert_eq!(
        unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) },
        0
    );
}

fn flip_byte(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    byte[0] ^= 0x04;
    file.write_all_at(&byte, at).unwrap();
}

fn assert_checksum(path: &Path, data: &[u8]) {
    let value = attribute(path).unwrap_or_else(|| panic!("{}: no checksum", path.display()));
    assert_eq!(value.len(), OBJECT_CHECKSUM_BYTES);
    assert_eq!(decode_object_checksum(&value), Ok(FileDigest::of(data)));
}

/// Each way in records the checksum of exactly the object's bytes.
#[test]
fn every_object_written_or_adopted_carries_its_checksum() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    let outside = dir.path().join("snapshot.bin");
    let adopted = bytes(300_000, 9);
    std::fs::write(&outside, &adopted).unwrap();
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        let objects = cache.objects_dir().to_path_buf();
        let put = bytes(70_000, 1);
        cache.put("put", &put).await.unwrap();
        assert_checksum(&objects.join("put"), &put);
        cache.put("empty", b"").await.unwrap();
        assert_checksum(&objects.join("empty"), b"");
        // A staging file written in pieces, larger than one write buffer.
        let staged = bytes(600_000, 2);
        let mut staging = cache.create_staging("deep/staged").await.unwrap();
        for piece in staged.chunks(100_000) {
            staging.append(piece).await.unwrap();
        }
        staging.commit().await.unwrap();
        assert_checksum(&objects.join("deep/staged"), &staged);
        // Adopted by a hard link: the caller's inode carries it.
        assert_eq!(
            cache.adopt("adopted", &outside).await.unwrap(),
            Adopted::Linked
        );
        assert_checksum(&outside, &adopted);
        assert_eq!(
            &cache.get("adopted").await.unwrap().unwrap()[..],
            &adopted[..]
        );
        // With the caller's digest, not read again; a file of another size
        // than the caller checked is refused unread, as a changed file.
        let vouched = dir_file(&objects, "vouched.bin", &bytes(5_000, 3));
        cache
            .adopt_checked("vouched", &vouched, FileDigest::of(&bytes(5_000, 3)))
            .await
            .unwrap();
        assert_checksum(&vouched, &bytes(5_000, 3));
        let other = dir_file(&objects, "other.bin", &bytes(5_000, 4));
        let checked = FileDigest::of(&bytes(4_999, 4));
        match cache.adopt_checked("other", &other, checked).await {
            Err(Error::AdoptedFileChanged {
                path,
                expected_bytes,
                found_bytes,
                found_crc32,
                ..
            }) => {
                assert_eq!(path, other);
                assert_eq!((expected_bytes, found_bytes), (checked.bytes, 5_000));
                assert_eq!(found_crc32, None);
            }
            result => panic!("expected the adopt refused, got {result:?}"),
        }
        assert_eq!(cache.stats().adopted_files_changed, 1);
        assert!(!cache.contains("other").unwrap());
        assert_eq!(attribute(&other), None);
        assert_eq!(cache.stats().damaged_objects, 0);
        cache.shutdown().await.unwrap();
    });
}

/// A file beside the cache (not in it), holding `data`.
fn dir_file(objects: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = objects.parent().unwrap().parent().unwrap().join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// Damage at rest is found by the read, named, counted, and never served;
/// the object stays until it is invalidated (or put again).
#[test]
fn a_flipped_bit_or_a_missing_checksum_is_refused_not_served() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    let outside = dir.path().join("adopted.bin");
    std::fs::write(&outside, bytes(50_000, 5)).unwrap();
    run(move || async move {
        let cache = Cache::builder(&root).open().await.unwrap();
        let objects = cache.objects_dir().to_path_buf();
        let data = bytes(100_000, 1);
        cache.put("flipped", &data).await.unwrap();
        flip_byte(&objects.join("flipped"), 77_777);
        for _ in 0..2 {
            match cache.get("flipped").await {
                Err(Error::CorruptObject {
                    key,
                    path,
                    expected_bytes,
                    expected_crc32,
                    found_bytes,
                    found_crc32,
                }) => {
                    assert_eq!(key, "flipped");
                    assert_eq!(path, objects.join("flipped"));
                    assert_eq!(expected_bytes, 100_000);
                    assert_eq!(found_bytes, 100_000);
                    assert_eq!(expected_crc32, crc32fast::hash(&data));
                    assert_ne!(found_crc32, expected_crc32);
                }
                other => panic!("expected CorruptObject, got {other:?}"),
            }
        }
        // The adopted caller's file damaged afterwards: the object is that
        // inode, so the read finds it.
        cache.adopt("adopted", &outside).await.unwrap();
        flip_byte(&outside, 10);
        assert!(matches!(
            cache.get("adopted").await,
            Err(Error::CorruptObject { .. })
        ));
        // Stripped of its checksum.
        cache.put("stripped", b"abc").await.unwrap();
        remove_attribute(&objects.join("stripped"));
        match cache.get("stripped").await {
            Err(Error::UnverifiableObject { key, reason, .. }) => {
                assert_eq!(key, "stripped");
                assert!(reason.contains(OBJECT_CHECKSUM_ATTRIBUTE), "{reason}");
            }
            other => panic!("expected UnverifiableObject, got {other:?}"),
        }
        let stats = cache.stats();
        assert_eq!(stats.damaged_objects, 4);
        assert_eq!(stats.hits, 0);
        // Invalidated, the key reads as a miss; put again, it reads back.
        assert!(cache.invalidate("flipped").await.unwrap());
        assert!(cache.get("flipped").await.unwrap().is_none());
        cache.put("flipped", &data).await.unwrap();
        assert_eq!(&cache.get("flipped").await.unwrap().unwrap()[..], &data[..]);
        cache.shutdown().await.unwrap();
    });
}

/// On the simulated disk: a committed object's checksum survives a crash
/// (it is durable with the commit), and a flipped bit there is refused too.
#[test]
fn the_checksum_is_durable_with_the_commit_on_the_simulated_disk() {
    run(|| async {
        let disk = MemStorage::new();
        let root = Path::new("/cache");
        let data = bytes(20_000, 7);
        {
            let cache = Cache::builder(root)
                .disk(disk.clone())
                .open()
                .await
                .unwrap();
            cache.put("a", &data).await.unwrap();
            let mut staging = cache.create_staging("b").await.unwrap();
            staging.append(&data[..5_000]).await.unwrap();
            staging.commit().await.unwrap();
            std::mem::forget(cache);
        }
        disk.crash();
        let cache = Cache::builder(root)
            .disk(disk.clone())
            .open()
            .await
            .unwrap();
        assert_eq!(&cache.get("a").await.unwrap().unwrap()[..], &data[..]);
        assert_eq!(&cache.get("b").await.unwrap().unwrap()[..], &data[..5_000]);
        assert!(disk.flip_bit(&root.join("objects/a"), 123, 3));
        assert!(matches!(
            cache.get("a").await,
            Err(Error::CorruptObject { .. })
        ));
        assert!(disk.set_file_attribute(&root.join("objects/b"), OBJECT_CHECKSUM_ATTRIBUTE, None));
        assert!(matches!(
            cache.get("b").await,
            Err(Error::UnverifiableObject { .. })
        ));
        cache.shutdown().await.unwrap();
    });
}

/// A cache on a filesystem without user extended attributes is refused at
/// open with `Error::NoExtendedAttributes`, before anything is written.
/// Runs where `RINGSTORE_CACHE_NO_XATTR_DIR` names a directory on such a
/// filesystem (e.g. `mount -t ramfs none <dir>`, as root); skipped
/// otherwise.
#[test]
fn a_filesystem_without_extended_attributes_is_refused_at_open() {
    let Some(dir) = std::env::var_os("RINGSTORE_CACHE_NO_XATTR_DIR") else {
        return;
    };
    let root = PathBuf::from(dir).join("cache");
    run(move || async move {
        match Cache::builder(&root).open().await {
            Err(Error::NoExtendedAttributes { path }) => assert_eq!(path, root),
            other => panic!("expected NoExtendedAttributes, got {:?}", other.err()),
        }
        let objects = root.join("objects");
        assert!(std::fs::read_dir(&objects).map_or(true, |mut d| d.next().is_none()));
    });
}

/// A file the cache cannot label (the attribute refused: not the
/// process's file, or a filesystem without them) is adopted by a copy,
/// whose staging file gets the checksum; on the simulated disk, where the
/// refusal is injected.
#[test]
fn a_file_that_cannot_carry_the_checksum_is_adopted_by_a_copy() {
    run(|| async {
        let disk = MemStorage::new();
        let root = Path::new("/cache");
        let outside = Path::new("/elsewhere/snapshot.bin");
        let data = bytes(30_000, 8);
        disk.insert_file(outside, data.clone());
        let cache = Cache::builder(root)
            .disk(disk.clone())
            .open()
            .await
            .unwrap();
        disk.fail_next_attribute_sets(1, libc::EPERM);
        assert_eq!(cache.adopt("a", outside).await.unwrap(), Adopted::Copied);
        assert_eq!(&cache.get("a").await.unwrap().unwrap()[..], &data[..]);
        assert_eq!(cache.stats().adopted_copied, 1);
        cache.shutdown().await.unwrap();
    });
}

/// A cached copy that reads with EIO (a latent media error) is, to a
/// `Tiered` view, damage like a checksum mismatch: `get` and `get_path`
/// drop it, count it and download the object again (the simulated disk's
/// unreadable sector; the store on the real disk).
#[test]
fn a_cached_copy_that_reads_with_eio_is_replaced_from_the_store() {
    let dir = tempdir();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    run(move || async move {
        let remote = ringstore_cache::Remote::local(&store).open().unwrap();
        let disk = MemStorage::new();
        let root = Path::new("/cache");
        let cache = std::rc::Rc::new(
            Cache::builder(root)
                .disk(disk.clone())
                .open()
                .await
                .unwrap(),
        );
        let domain = "7d3c1c1e-2f0b-4e1a-9a53-000000000001";
        let tiered =
            ringstore_cache::Tiered::new(std::rc::Rc::clone(&cache), remote.clone(), domain)
                .unwrap();
        let data = bytes(40_000, 6);
        tiered.put("k", &data).await.unwrap();
        tiered.put("p", &data).await.unwrap();
        let cached = |key: &str| root.join("objects").join(tiered.object_key(key).unwrap());
        assert!(disk.set_unreadable(&cached("k"), 20_000));
        assert!(disk.set_unreadable(&cached("p"), 100));
        assert_eq!(&tiered.get("k").await.unwrap().unwrap()[..], &data[..]);
        let path = tiered.get_path("p").await.unwrap().unwrap();
        assert_eq!(disk.file_bytes(&path).unwrap(), data);
        let stats = tiered.stats();
        assert_eq!(
            (stats.damaged_replaced, stats.downloads),
            (2, 2),
            "{stats:?}"
        );
        // The new copies read: served from the cache.
        assert_eq!(&tiered.get("k").await.unwrap().unwrap()[..], &data[..]);
        assert_eq!(tiered.stats().downloads, 2);
        drop(tiered);
        std::rc::Rc::try_unwrap(cache)
            .unwrap()
            .shutdown()
            .await
            .unwrap();
        remote.shutdown().await.unwrap();
    });
}
