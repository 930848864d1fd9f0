//! Pins how snapshot files give way to foreground work: a write
//! ([`ringstore::snapshot::Pacing`]) in small writes while busy, large ones
//! while idle, a file that loads byte for byte either way (also when the
//! shard turns busy and idle in the middle of it), and the pause's
//! arithmetic; a removal (`SnapshotStore::prune_in_steps`) that gives the
//! space back a step at a time, never leaves a shrunk file under a
//! snapshot's name whatever step a power cut hits, and removes whole when
//! space is short, the shard stops serving, the file fits in a step, has
//! a second name or is in use.
mod common;
use common::*;
use ringstore::machine::{EncodeError, EncodeProgress, FrozenSection, SectionEncoder};
use ringstore::snapshot::store::{PACING_PAUSE_MAX, WRITE_CHUNK_BUSY_BYTES, WRITE_CHUNK_BYTES};
use ringstore::snapshot::{snapshot_file_name, Pacing, SnapshotMeta, SnapshotStore};
use ringstore_journal::storage::{MemStorage, Storage};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;
use uuid::Uuid;

/// Body bytes of the test snapshots: a whole number of both chunk sizes.
const BODY_BYTES: usize = 2 << 20;

/// A section of `left` bytes counting up from `next`.
struct Counting {
    left: usize,
    next: u8,
}

impl SectionEncoder for Counting {
    fn encode_some(
        &mut self,
        out: &mut Vec<u8>,
        bytes_goal: usize,
    ) -> Result<EncodeProgress, EncodeError> {
        while out.len() < bytes_goal && self.left > 0 {
            out.push(self.next);
            self.next = self.next.wrapping_add(1);
            self.left -= 1;
        }
        Ok(if self.left == 0 {
            EncodeProgress::Done
        } else {
            EncodeProgress::More
        })
    }
}

fn counting_section(seed: u8) -> Vec<FrozenSection> {
    vec![FrozenSection {
        name: "counting",
        version: 1,
        encoder: Box::new(Counting {
            left: BODY_BYTES,
            next: seed,
        }),
    }]
}

fn expected_bytes(seed: u8) -> Vec<u8> {
    (0..BODY_BYTES)
        .map(|i| seed.wrapping_add(i as u8))
        .collect()
}

/// The writes of each size issued between `before` and `after`.
fn writes_between(
    before: &BTreeMap<usize, u64>,
    after: &BTreeMap<usize, u64>,
) -> BTreeMap<usize, u64> {
    after
        .iter()
        .map(|(size, count)| (*size, count - before.get(size).copied().unwrap_or(0)))
        .filter(|(_, count)| *count > 0)
        .collect()
}

/// The domain of every test snapshot.
const DOMAIN: Uuid = Uuid::from_u128(0x5eed);

/// Persists the counting section `seed` at `op` with `pacing`; returns the
/// snapshot and the writes it issued by size.
async fn persist_counting(
    store: &SnapshotStore<MemStorage>,
    storage: &MemStorage,
    seed: u8,
    op: u64,
    pacing: Pacing<'_>,
) -> (SnapshotMeta, BTreeMap<usize, u64>) {
    let before = storage.write_sizes();
    let meta = store
        .persist_paced(counting_section(seed), op, 1, DOMAIN, pacing)
        .await
        .unwrap();
    (meta, writes_between(&before, &storage.write_sizes()))
}

#[test]
fn busy_writes_are_small_idle_writes_large_and_every_file_loads_whole() {
    run(|| async {
        let storage = MemStorage::new();
        let store = SnapshotStore::open(storage.clone(), SNAPSHOT_DIR)
            .await
            .unwrap();
        let body_writes = |sizes: &BTreeMap<usize, u64>, chunk: usize| {
            sizes.get(&chunk).copied().unwrap_or(0) as usize
        };

        // Idle: the large writes only.
        let (idle, idle_writes) =
            persist_counting(&store, &storage, 1, 10, Pacing::FULL_SPEED).await;
        assert_eq!(
            body_writes(&idle_writes, WRITE_CHUNK_BYTES),
            BODY_BYTES / WRITE_CHUNK_BYTES,
            "{idle_writes:?}"
        );
        assert_eq!(body_writes(&idle_writes, WRITE_CHUNK_BUSY_BYTES), 0);

        // Busy all along: the small writes only (100%: no pauses to wait
        // out; a simulated write takes no time anyway).
        let always = || true;
        let (busy, busy_writes) =
            persist_counting(&store, &storage, 2, 20, Pacing::new(&always, 100)).await;
        assert_eq!(
            body_writes(&busy_writes, WRITE_CHUNK_BUSY_BYTES),
            BODY_BYTES / WRITE_CHUNK_BUSY_BYTES,
            "{busy_writes:?}"
        );
        assert_eq!(body_writes(&busy_writes, WRITE_CHUNK_BYTES), 0);

        // Busy and idle by turns: both sizes, one after the other in the
        // same file.
        let asked = Cell::new(0u32);
        let by_turns = || {
            asked.set(asked.get() + 1);
            (asked.get() / 5).is_multiple_of(2)
        };
        let (mixed, mixed_writes) =
            persist_counting(&store, &storage, 3, 30, Pacing::new(&by_turns, 50)).await;
        assert!(
            body_writes(&mixed_writes, WRITE_CHUNK_BUSY_BYTES) > 0
                && body_writes(&mixed_writes, WRITE_CHUNK_BYTES) > 0,
            "{mixed_writes:?}"
        );

        for (meta, seed) in [(idle, 1), (busy, 2), (mixed, 3)] {
            let mut loaded = store.load(&meta.path, Some(DOMAIN)).await.unwrap();
            let (_, bytes) = loaded.sections.take("counting", 1..=1).unwrap();
            assert!(
                bytes == expected_bytes(seed),
                "{} differs",
                meta.path.display()
            );
        }
    });
}

#[test]
fn the_pause_keeps_the_writer_to_its_share_of_the_time() {
    let busy = || true;
    let write = Duration::from_micros(100);
    assert_eq!(
        Pacing::new(&busy, 25).pause_after(write),
        Duration::from_micros(300)
    );
    assert_eq!(Pacing::new(&busy, 50).pause_after(write), write);
    assert_eq!(Pacing::new(&busy, 100).pause_after(write), Duration::ZERO);
    // Out of range: clamped, never a division by zero.
    assert_eq!(
        Pacing::new(&busy, 0).pause_after(write),
        Duration::from_micros(9_900)
    );
    assert_eq!(Pacing::new(&busy, 200).pause_after(write), Duration::ZERO);
    // A long-stalled write at a low share: bounded.
    assert_eq!(
        Pacing::new(&busy, 1).pause_after(Duration::from_secs(1)),
        PACING_PAUSE_MAX
    );
}

/// Where the tests keep their snapshots.
const SNAPSHOT_DIR: &str = "/shard/snapshots";

/// Step of the pruning tests: a 2 MiB body shrinks in 8 steps.
const PRUNE_STEP_BYTES: u64 = 256 << 10;

/// A store holding snapshots at ops 10, 20 and 30 (seeds 1-3).
async fn store_with_three(storage: &MemStorage) -> SnapshotStore<MemStorage> {
    let store = SnapshotStore::open(storage.clone(), SNAPSHOT_DIR)
        .await
        .unwrap();
    for (op, seed) in [(10, 1), (20, 2), (30, 3)] {
        store
            .persist(counting_section(seed), op, 1, DOMAIN)
            .await
            .unwrap();
    }
    store
}

/// Every length each file in the snapshot directory had, whatever its
/// name, sampled each reactor turn while `running` holds.
fn watch_lengths(
    storage: &MemStorage,
    running: Rc<Cell<bool>>,
) -> (Rc<RefCell<Vec<usize>>>, glommio::Task<()>) {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let task = glommio::spawn_local({
        let storage = storage.clone();
        let seen = seen.clone();
        async move {
            let mut last = BTreeMap::new();
            while running.get() {
                for path in storage.paths() {
                    let len = storage.file_bytes(&path).map_or(0, |b| b.len());
                    if last.insert(path, len) != Some(len) {
                        seen.borrow_mut().push(len);
                    }
                }
                ringstore_journal::glommio_quirks::reactor_turn().await;
            }
        }
    });
    (seen, task)
}

/// Lengths strictly between gone and a whole test snapshot file.
fn shrunk(lengths: &[usize]) -> usize {
    lengths
        .iter()
        .filter(|&&len| len > 0 && len < BODY_BYTES)
        .count()
}

#[test]
fn pruning_in_steps_shrinks_the_old_files_then_removes_them() {
    run(|| async {
        let storage = MemStorage::new();
        let store = store_with_three(&storage).await;
        let running = Rc::new(Cell::new(true));
        let (seen, watcher) = watch_lengths(&storage, running.clone());
        let removed = store
            .prune_in_steps(1, 30, PRUNE_STEP_BYTES, &|| true, &|_| false)
            .await
            .unwrap();
        running.set(false);
        watcher.await;
        assert_eq!(removed, 2);
        // Both old files seen at each of their 8 lengths between whole and
        // gone.
        let seen = seen.borrow().clone();
        assert!(shrunk(&seen) >= 16, "lengths seen: {seen:?}");
        let names: Vec<_> = storage.paths();
        assert!(
            names.iter().all(|p| !p.to_string_lossy().ends_with(".tmp")),
            "{names:?}"
        );
        let (newest, skipped) = store.load_newest(DOMAIN).await.unwrap();
        assert!(skipped.is_empty());
        assert_eq!(newest.unwrap().meta.watermark, 30);
    });
}

#[test]
fn pruning_removes_whole_when_space_is_short_the_shard_stops_the_file_is_small_linked_or_in_use() {
    run(|| async {
        let cases = [
            "space is short",
            "not serving",
            "file within a step",
            "linked",
            "in use",
        ];
        for case in cases {
            let storage = MemStorage::new();
            let store = store_with_three(&storage).await;
            let in_use = case == "in use";
            let (keep, step_bytes, serving) = match case {
                // Less free space than one snapshot file holds (one is
                // pruned: a second would find the first one's space free).
                "space is short" => {
                    let used: u64 = storage
                        .paths()
                        .iter()
                        .filter_map(|p| storage.file_bytes(p))
                        .map(|b| b.len() as u64)
                        .sum();
                    storage.set_capacity(Some(used + (BODY_BYTES as u64) / 2));
                    (2, PRUNE_STEP_BYTES, true)
                }
                "not serving" => (1, PRUNE_STEP_BYTES, false),
                "file within a step" => (1, 4 * BODY_BYTES as u64, true),
                // A second name for each old file, as the cache's hard
                // link of an uploaded snapshot: the files stay whole.
                "linked" => {
                    for (op, _) in store.generations().unwrap().into_iter().take(2) {
                        let path = store.dir().join(snapshot_file_name(op));
                        let link = store.dir().join(format!("linked-{op}"));
                        storage.link(&path, &link).await.unwrap();
                    }
                    (1, PRUNE_STEP_BYTES, true)
                }
                _ => (1, PRUNE_STEP_BYTES, true),
            };
            let running = Rc::new(Cell::new(true));
            let (seen, watcher) = watch_lengths(&storage, running.clone());
            let removed = store
                .prune_in_steps(keep, 30, step_bytes, &|| serving, &|_| in_use)
                .await
                .unwrap();
            running.set(false);
            watcher.await;
            assert_eq!(removed, 3 - keep, "{case}");
            let seen = seen.borrow().clone();
            assert_eq!(shrunk(&seen), 0, "{case}: shrunk: {seen:?}");
            assert_eq!(store.generations().unwrap().len(), keep, "{case}");
        }
    });
}

#[test]
fn a_power_cut_at_every_step_of_pruning_leaves_no_shrunk_snapshot() {
    run(|| async {
        let mut cut_at = 1;
        loop {
            let storage = MemStorage::new();
            let store = store_with_three(&storage).await;
            storage.cut_power_after_ops(cut_at);
            let pruned = store
                .prune_in_steps(1, 30, PRUNE_STEP_BYTES, &|| true, &|_| false)
                .await;
            let finished = !storage.power_is_cut();
            storage.crash();
            // The reopen removes what a cut left under a temporary name;
            // every snapshot still named is whole.
            let store = SnapshotStore::open(storage.clone(), SNAPSHOT_DIR)
                .await
                .unwrap();
            assert!(
                storage
                    .paths()
                    .iter()
                    .all(|p| !p.to_string_lossy().ends_with(".tmp")),
                "cut at {cut_at}"
            );
            let generations = store.generations().unwrap();
            assert!(
                generations.iter().any(|(op, _)| *op == 30),
                "cut at {cut_at}: the newest is gone"
            );
            for (op, path) in generations {
                let seed = (op / 10) as u8;
                let mut loaded = store
                    .load(&path, Some(DOMAIN))
                    .await
                    .unwrap_or_else(|e| panic!("cut at {cut_at}: snapshot {op}: {e}"));
                let (_, bytes) = loaded.sections.take("counting", 1..=1).unwrap();
                assert!(
                    bytes == expected_bytes(seed),
                    "cut at {cut_at}: {op} differs"
                );
            }
            if finished {
                assert_eq!(pruned.unwrap(), 2);
                break;
            }
            cut_at += 1;
        }
    });
}
