//! Pins the persisted access tracker: access order survives a shutdown and
//! reopen across the file's chunk boundaries (and beats the disk's own
//! timestamps); a wrong-version or corrupt tracker file is ignored with a
//! warning and access times are rebuilt from a directory walk; the next
//! persist writes a good file again; periodic persistence happens on its own.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::{run, tempdir};
use ringstore_cache::format::{
    TrackerHeader, CHUNK_HEADER_BYTES, TRACKER_HEADER_BYTES, TRACKER_VERSION,
};
use ringstore_cache::Cache;

const CHUNK_ENTRIES: u32 = 4;
const OBJECTS: usize = 10;

/// Gives every object file a timestamp so the disk's own order is
/// `disk_order` (oldest first), different from any order the tracker holds.
fn stamp_disk_order(objects: &std::path::Path, disk_order: &[String]) {
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    for (i, key) in disk_order.iter().enumerate() {
        let t = base + Duration::from_secs(i as u64);
        let file = std::fs::File::options()
            .write(true)
            .open(objects.join(key))
            .unwrap();
        file.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
            .unwrap();
    }
}

fn header_field(file: &[u8], offset: usize, len: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf[..len].copy_from_slice(&file[offset..offset + len]);
    u64::from_le_bytes(buf)
}

#[test]
fn tracker_round_trip_across_chunk_boundaries() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root)
            .tracker_chunk_entries(CHUNK_ENTRIES)
            .open()
            .await
            .unwrap();
        for i in 0..OBJECTS {
            cache
                .put(&format!("d{}/k{i}", i % 3), &[i as u8; 7])
                .await
                .unwrap();
        }
        // Scramble the access order.
        for i in [3, 0, 7, 5, 9, 1] {
            cache
                .get(&format!("d{}/k{i}", i % 3))
                .await
                .unwrap()
                .unwrap();
        }
        let order = cache.keys_oldest_first();
        cache.shutdown().await.unwrap();

        let file = std::fs::read(root.join("tracker")).unwrap();
        let count_at = std::mem::offset_of!(TrackerHeader, entry_count);
        let chunks_at = std::mem::offset_of!(TrackerHeader, chunk_count);
        assert_eq!(header_field(&file, count_at, 8), OBJECTS as u64);
        let chunks = OBJECTS.div_ceil(CHUNK_ENTRIES as usize);
        assert_eq!(header_field(&file, chunks_at, 4), chunks as u64);
        assert!(file.len() > TRACKER_HEADER_BYTES + chunks * CHUNK_HEADER_BYTES);

        // The disk says the reverse; the tracker must win.
        let mut reversed = order.clone();
        reversed.reverse();
        stamp_disk_order(&root.join("objects"), &reversed);
        let cache = Cache::builder(&root)
            .tracker_chunk_entries(CHUNK_ENTRIES)
            .open()
            .await
            .unwrap();
        assert_eq!(cache.keys_oldest_first(), order);
        assert_eq!(cache.stats().tracker_load_failures, 0);
        cache.shutdown().await.unwrap();
    });
}

fn damage_and_check(damage: impl FnOnce(&mut Vec<u8>) + Send + 'static) {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root)
            .tracker_chunk_entries(CHUNK_ENTRIES)
            .open()
            .await
            .unwrap();
        for i in 0..OBJECTS {
            cache.put(&format!("k{i}"), b"v").await.unwrap();
        }
        cache.get("k0").await.unwrap().unwrap();
        cache.shutdown().await.unwrap();
        let tracker = root.join("tracker");
        let mut file = std::fs::read(&tracker).unwrap();
        damage(&mut file);
        std::fs::write(&tracker, &file).unwrap();
        let disk_order: Vec<String> = (0..OBJECTS).rev().map(|i| format!("k{i}")).collect();
        stamp_disk_order(&root.join("objects"), &disk_order);

        let cache = Cache::builder(&root).open().await.unwrap();
        let stats = cache.stats();
        assert_eq!(stats.tracker_load_failures, 1);
        // Nothing lost: all objects rebuilt from the walk, ordered by the
        // disk's timestamps.
        assert_eq!(
            (stats.objects, stats.bytes),
            (OBJECTS as u64, OBJECTS as u64)
        );
        assert_eq!(cache.keys_oldest_first(), disk_order);
        cache.shutdown().await.unwrap();

        // Shutdown wrote a good tracker again.
        let cache = Cache::builder(&root).open().await.unwrap();
        assert_eq!(cache.stats().tracker_load_failures, 0);
        assert_eq!(cache.keys_oldest_first(), disk_order);
        cache.shutdown().await.unwrap();
    });
}

#[test]
fn wrong_version_tracker_is_ignored_and_rebuilt() {
    damage_and_check(|file| {
        let at = std::mem::offset_of!(TrackerHeader, version);
        file[at..at + 4].copy_from_slice(&(TRACKER_VERSION + 1).to_le_bytes());
        // A well-formed file of another version: fix its header checksum.
        let crc_at = std::mem::offset_of!(TrackerHeader, header_crc32);
        let crc = crc32fast::hash(&file[..crc_at]);
        file[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    });
}

#[test]
fn corrupt_tracker_is_ignored_and_rebuilt() {
    damage_and_check(|file| {
        let last = file.len() - 1;
        file[last] ^= 0xff;
    });
}

#[test]
fn truncated_tracker_is_ignored_and_rebuilt() {
    damage_and_check(|file| file.truncate(TRACKER_HEADER_BYTES + 3));
}

#[test]
fn tracker_is_persisted_periodically() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    run(move || async move {
        let cache = Cache::builder(&root)
            .tracker_persist_interval(Duration::from_millis(20))
            .open()
            .await
            .unwrap();
        cache.put("k", b"v").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.stats().tracker_persists == 0 {
            assert!(Instant::now() < deadline, "tracker never persisted");
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        assert!(root.join("tracker").exists());
        drop(cache); // crash: the periodic copy is what survives
        let cache = Cache::builder(&root).open().await.unwrap();
        assert_eq!(cache.stats().tracker_load_failures, 0);
        assert!(cache.contains("k").unwrap());
        cache.shutdown().await.unwrap();
    });
}

/// The tracker's row of the corruption matrix (the engine's
/// `corruption_matrix` test covers the journal, snapshot, identity and
/// superblock files): every damage kind either is detected (counted in
/// `tracker_load_failures`, logged, the file ignored) or leaves a valid
/// tracker; in every case every committed object is still there with its
/// size, because the tracker only ever supplies access order.
#[test]
fn every_damage_to_the_tracker_is_detected_and_loses_no_object() {
    type Damage = fn(&mut Vec<u8>, &[u8], &[u8]);
    let cells: [(&str, Damage, u64); 11] = [
        ("bit flip in the header", |f, _, _| f[5] ^= 0x04, 1),
        (
            "bit flip in a chunk",
            |f, _, _| f[TRACKER_HEADER_BYTES + CHUNK_HEADER_BYTES + 3] ^= 0x20,
            1,
        ),
        (
            "zeroed first block",
            |f, _, _| {
                let end = f.len().min(4096);
                f[..end].fill(0)
            },
            1,
        ),
        (
            "truncated inside the header",
            |f, _, _| f.truncate(TRACKER_HEADER_BYTES / 2),
            1,
        ),
        (
            "truncated at a chunk boundary",
            |f, _, _| f.truncate(TRACKER_HEADER_BYTES),
            1,
        ),
        ("truncated mid-chunk", |f, _, _| f.truncate(f.len() - 5), 1),
        ("zero length", |f, _, _| f.clear(), 1),
        ("deleted (no tracker)", |_, _, _| {}, 0),
        (
            "stale copy (an older, valid tracker)",
            |f, older, _| *f = older.to_vec(),
            0,
        ),
        (
            "foreign (another cache's valid tracker)",
            |f, _, foreign| *f = foreign.to_vec(),
            0,
        ),
        (
            "misdirected (the header copied over the first chunk)",
            |f, _, _| {
                let header = f[..TRACKER_HEADER_BYTES].to_vec();
                let at = TRACKER_HEADER_BYTES;
                let end = (at + header.len()).min(f.len());
                f[at..end].copy_from_slice(&header[..end - at]);
            },
            1,
        ),
    ];
    for (name, damage, failures) in cells {
        let dir = tempdir();
        let root = dir.path().join("cache");
        let other = dir.path().join("other");
        let deleted = name.starts_with("deleted");
        run(move || async move {
            // Another cache's tracker, and an older one of this cache.
            let cache = Cache::builder(&other)
                .tracker_chunk_entries(CHUNK_ENTRIES)
                .open()
                .await
                .unwrap();
            for i in 0..3 {
                cache.put(&format!("x{i}"), b"other").await.unwrap();
            }
            cache.shutdown().await.unwrap();
            let foreign = std::fs::read(other.join("tracker")).unwrap();
            let cache = Cache::builder(&root)
                .tracker_chunk_entries(CHUNK_ENTRIES)
                .open()
                .await
                .unwrap();
            for i in 0..OBJECTS / 2 {
                cache.put(&format!("k{i}"), &[1; 3]).await.unwrap();
            }
            cache.shutdown().await.unwrap();
            let older = std::fs::read(root.join("tracker")).unwrap();
            let cache = Cache::builder(&root)
                .tracker_chunk_entries(CHUNK_ENTRIES)
                .open()
                .await
                .unwrap();
            for i in OBJECTS / 2..OBJECTS {
                cache.put(&format!("k{i}"), &[1; 3]).await.unwrap();
            }
            cache.shutdown().await.unwrap();
            let tracker = root.join("tracker");
            if deleted {
                std::fs::remove_file(&tracker).unwrap();
            } else {
                let mut file = std::fs::read(&tracker).unwrap();
                damage(&mut file, &older, &foreign);
                std::fs::write(&tracker, &file).unwrap();
            }
            let cache = Cache::builder(&root).open().await.unwrap();
            let stats = cache.stats();
            assert_eq!(stats.tracker_load_failures, failures, "{name}");
            assert_eq!(
                (stats.objects, stats.bytes),
                (OBJECTS as u64, 3 * OBJECTS as u64),
                "{name}: every committed object is still accounted"
            );
            for i in 0..OBJECTS {
                assert_eq!(
                    cache.get(&format!("k{i}")).await.unwrap().map(|b| b.len()),
                    Some(3),
                    "{name}: object k{i}"
                );
            }
            assert!(
                !cache.contains("x0").unwrap(),
                "{name}: nothing of the other cache appears"
            );
            cache.shutdown().await.unwrap();
        });
    }
}
