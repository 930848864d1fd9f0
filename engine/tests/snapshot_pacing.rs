//! Pins how a snapshot write gives way to foreground work
//! ([`ringstore::snapshot::Pacing`]): small writes while busy, large ones
//! while idle, a file that loads byte for byte either way (also when the
//! shard turns busy and idle in the middle of it), and the pause's
//! arithmetic.
mod common;
use common::*;
use ringstore::machine::{EncodeError, EncodeProgress, FrozenSection, SectionEncoder};
use ringstore::snapshot::store::{WRITE_CHUNK_BUSY_BYTES, WRITE_CHUNK_BYTES};
use ringstore::snapshot::{Pacing, SnapshotStore};
use ringstore_journal::storage::MemStorage;
use std::cell::Cell;
use std::collections::BTreeMap;
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

#[test]
fn busy_writes_are_small_idle_writes_large_and_every_file_loads_whole() {
    run(|| async {
        let storage = MemStorage::new();
        let store = SnapshotStore::open(storage.clone(), "snapshots")
            .await
            .unwrap();
        let domain = Uuid::new_v4();
        let body_writes = |sizes: &BTreeMap<usize, u64>, chunk: usize| {
            sizes.get(&chunk).copied().unwrap_or(0) as usize
        };

        // Idle: the large writes only.
        let before = storage.write_sizes();
        let idle = store
            .persist(counting_section(1), 10, 1, domain)
            .await
            .unwrap();
        let idle_writes = writes_between(&before, &storage.write_sizes());
        assert_eq!(
            body_writes(&idle_writes, WRITE_CHUNK_BYTES),
            BODY_BYTES / WRITE_CHUNK_BYTES,
            "{idle_writes:?}"
        );
        assert_eq!(body_writes(&idle_writes, WRITE_CHUNK_BUSY_BYTES), 0);

        // Busy all along: the small writes only (100%: no pauses to wait
        // out; a simulated write takes no time anyway).
        let always = || true;
        let before = storage.write_sizes();
        let busy = store
            .persist_paced(
                counting_section(2),
                20,
                1,
                domain,
                Pacing::new(&always, 100),
            )
            .await
            .unwrap();
        let busy_writes = writes_between(&before, &storage.write_sizes());
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
        let before = storage.write_sizes();
        let mixed = store
            .persist_paced(
                counting_section(3),
                30,
                1,
                domain,
                Pacing::new(&by_turns, 50),
            )
            .await
            .unwrap();
        let mixed_writes = writes_between(&before, &storage.write_sizes());
        assert!(
            body_writes(&mixed_writes, WRITE_CHUNK_BUSY_BYTES) > 0
                && body_writes(&mixed_writes, WRITE_CHUNK_BYTES) > 0,
            "{mixed_writes:?}"
        );

        for (meta, seed) in [(idle, 1), (busy, 2), (mixed, 3)] {
            let mut loaded = store.load(&meta.path, Some(domain)).await.unwrap();
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
}
