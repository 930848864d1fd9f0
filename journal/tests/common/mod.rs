//! Helpers shared by the journal's integration tests.
#![allow(dead_code)]

use ringstore_journal::format::{EntryHeader, ENTRY_HEADER_BYTES};
use ringstore_journal::segment_file_name;
use std::future::Future;
use std::path::{Path, PathBuf};
use zerocopy::{FromBytes, IntoBytes};

/// Runs `test` on a fresh glommio executor thread and propagates panics.
pub fn run<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(test)
        .expect("spawn executor")
        .join()
        .expect("test panicked");
}

/// A temporary directory on the real disk (never tmpfs: O_DIRECT).
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")
}

pub fn segment_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(segment_file_name(generation))
}

pub fn payload(op: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (op as usize * 31 + i) as u8).collect()
}

/// Reads the entry header at `offset` of a segment file.
pub fn read_header(path: &Path, offset: u64) -> EntryHeader {
    let bytes = std::fs::read(path).expect("read segment");
    let at = offset as usize;
    EntryHeader::read_from_bytes(&bytes[at..at + ENTRY_HEADER_BYTES]).expect("header bytes")
}

/// Overwrites the entry header at `offset`.
pub fn write_header(path: &Path, offset: u64, header: &EntryHeader) {
    patch(path, offset, header.as_bytes());
}

/// Overwrites bytes of a file in place.
pub fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for patch");
    file.write_all_at(bytes, offset).expect("patch");
    file.sync_all().expect("sync patch");
}

/// Flips one bit of a file.
pub fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let bytes = std::fs::read(path).expect("read");
    patch(path, offset, &[bytes[offset as usize] ^ (1 << bit)]);
}

/// The journal id in a segment file's header: the key its entry headers'
/// checksums are seeded with (`EntryHeader::seal`).
pub fn journal_id_of(segment: &Path) -> [u8; 16] {
    let bytes = std::fs::read(segment).expect("read segment");
    let header = ringstore_journal::format::SegmentHeader::read_from_bytes(
        &bytes[..ringstore_journal::format::SEGMENT_HEADER_BYTES],
    )
    .expect("segment header bytes");
    header.journal_id
}

/// An upper bound of the storage operations `life` makes on an in-memory
/// disk: the first power cut (in growing steps) after which it completes
/// (`life` returns whether it did).
pub fn operations_of_a_life<Fut>(life: fn(ringstore_journal::storage::MemStorage) -> Fut) -> u64
where
    Fut: Future<Output = bool> + 'static,
{
    let mut n = 1;
    loop {
        let (tx, rx) = std::sync::mpsc::channel();
        run(move || async move {
            let mem = ringstore_journal::storage::MemStorage::new();
            mem.cut_power_after_ops(n);
            tx.send(life(mem).await).unwrap();
        });
        if rx.recv().unwrap() {
            return n;
        }
        assert!(
            n < 100_000,
            "the life never completes, even without a power cut"
        );
        n += 1 + n / 16;
    }
}

/// Opens the journal `builder` describes once more and checks that the
/// open before it left nothing behind: no leftover for recovery to remove
/// and no stray file (`context` names the case in a failure); closes it.
pub async fn assert_nothing_left_behind(
    builder: ringstore_journal::JournalBuilder<ringstore_journal::storage::MemStorage>,
    context: &str,
) {
    let reopened = builder.open().await.unwrap();
    let report = reopened.recovery_report();
    assert!(
        report.removed.is_empty() && report.stray_files.is_empty(),
        "{context}: {report:?}"
    );
    reopened.close().await.unwrap();
}

/// Waits until a new journal on `mem` has its spare segment (prepared in
/// the background, the third file), and returns the bytes its files take
/// then: as a capacity, a disk with room for no other segment.
pub async fn bytes_once_the_spare_exists(mem: &ringstore_journal::storage::MemStorage) -> u64 {
    while mem.paths().len() < 3 {
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
    mem.paths()
        .iter()
        .map(|p| mem.file_bytes(p).map_or(0, |b| b.len() as u64))
        .sum()
}

/// Queues op `op` (two blocks: too large for the block left in the current
/// segment, so its write needs a new one) with every storage call of
/// `mem` yielding first and `capacity_bytes` set, so that the writer's
/// attempt to create the segment spans several turns; checks that the
/// write is still in flight one turn later.
pub async fn queue_append_needing_a_new_segment(
    journal: &ringstore_journal::Journal<ringstore_journal::storage::MemStorage>,
    mem: &ringstore_journal::storage::MemStorage,
    capacity_bytes: Option<u64>,
    op: u64,
) -> ringstore_journal::QueuedAppend {
    mem.set_faults(ringstore_journal::storage::FaultConfig {
        yield_rate: 1.0,
        capacity_bytes,
        ..ringstore_journal::storage::FaultConfig::none()
    });
    let append = journal.queue_append(&payload(op, 4096)).await.unwrap();
    assert_eq!(append.op(), op);
    // Let the writer take the append's write and start the rollover.
    futures_lite::future::yield_now().await;
    let in_flight = futures_lite::future::poll_once(append.durable())
        .await
        .is_none();
    assert!(in_flight, "the append's write is still in flight");
    append
}
