//! Criterion micro-benchmarks of the journal's hot paths.
//!
//! - `header/encode`, `header/decode`: an entry header sealed (checksum
//!   computed) and copied out; a header checked as recovery and reads check
//!   it (`format::check_entry_header`).
//! - `checksum/256`, `checksum/65536`: CRC-32 (crc32fast, what the journal
//!   uses) of a small and a bulk payload.
//! - `ring_index/*` and `group_commit/*` go through the public `Journal` API
//!   on the in-memory storage backend, so no disk time is in them: an append
//!   (ring index insert, batch assembly, the in-memory write and sync, the
//!   acknowledgement), a read of a present op (ring index lookup, the
//!   in-memory read, entry verification), and `n` concurrent appends that
//!   group commit assembles into batches. The ring index itself is private
//!   to the journal crate; these measure it in place.
//!
//! Run with `scripts/bench.sh micro` (or `cargo bench -p ringstore-bench`).

use std::cell::Cell;
use std::future::Future;
use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringstore_journal::format::{
    check_entry_header, EntryHeader, EntryKind, ENTRY_HEADER_BYTES, ENTRY_MAGIC,
    FLAG_FIRST_IN_WRITE, SEGMENT_DATA_OFFSET,
};
use ringstore_journal::storage::MemStorage;
use ringstore_journal::{Journal, JournalBuilder};
use zerocopy::IntoBytes;

/// Segment size of the in-memory journals.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Ring slots of the in-memory journals.
const SLOT_COUNT: u64 = 1 << 20;
/// The benchmarks advance the watermark every this many appends...
const WATERMARK_EVERY_OPS: u64 = 1 << 16;
/// ...to this many ops below the newest, so memory and the ring stay bounded.
const WATERMARK_TRAIL_OPS: u64 = 1 << 10;
/// Payload of the journal benchmarks.
const PAYLOAD_BYTES: usize = 256;
/// Ops appended before the read benchmark starts.
const READ_OPS: u64 = 4096;

/// The journal id the benchmark's entry headers are sealed with.
const JOURNAL_ID: [u8; 16] = [7; 16];

fn header(op: u64) -> EntryHeader {
    EntryHeader {
        checksum: 0.into(),
        magic: ENTRY_MAGIC.into(),
        op: op.into(),
        epoch: 3.into(),
        generation: 7.into(),
        offset: (SEGMENT_DATA_OFFSET as u32).into(),
        payload_len: (PAYLOAD_BYTES as u32).into(),
        payload_checksum: 0x1234_5678.into(),
        durable_before: (SEGMENT_DATA_OFFSET as u32).into(),
        kind: EntryKind::Data as u8,
        flags: FLAG_FIRST_IN_WRITE,
        index_at: (SEGMENT_DATA_OFFSET as u32 + 4096).into(),
        reserved: [0; 2],
    }
}

fn bench_header(c: &mut Criterion) {
    let mut group = c.benchmark_group("header");
    group.bench_function("encode", |b| {
        let mut out = [0u8; ENTRY_HEADER_BYTES];
        let mut op = 0u64;
        b.iter(|| {
            op += 1;
            let sealed = header(black_box(op)).seal(&JOURNAL_ID);
            out.copy_from_slice(sealed.as_bytes());
            black_box(&out);
        });
    });
    let sealed = header(42).seal(&JOURNAL_ID);
    let bytes = sealed.as_bytes().to_vec();
    group.bench_function("decode", |b| {
        b.iter(|| {
            let decoded = check_entry_header(
                black_box(&bytes),
                &JOURNAL_ID,
                7,
                SEGMENT_DATA_OFFSET,
                SEGMENT_BYTES,
                1 << 20,
            );
            assert!(decoded.is_ok());
            black_box(decoded)
        });
    });
    group.finish();
}

fn bench_checksum(c: &mut Criterion) {
    let mut group = c.benchmark_group("checksum");
    for len in [256usize, 64 << 10] {
        let data: Vec<u8> = (0..len).map(|i| (i * 131 + 7) as u8).collect();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(len), &data, |b, data| {
            b.iter(|| crc32fast::hash(black_box(data)));
        });
    }
    group.finish();
}

fn mem_journal() -> JournalBuilder<MemStorage> {
    Journal::builder("/mem/bench")
        .segment_bytes(SEGMENT_BYTES)
        .slot_count(SLOT_COUNT)
        .storage(MemStorage::new())
}

/// Runs `body` on a fresh glommio reactor and returns the time it reports.
fn on_reactor<F, Fut>(body: F) -> Duration
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Duration> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(body)
        .expect("start glommio executor")
        .join()
        .expect("benchmark body panicked")
}

/// Keeps the in-memory journal bounded: advances the watermark now and then.
async fn keep_bounded(journal: &Journal<MemStorage>, op: u64) {
    if op.is_multiple_of(WATERMARK_EVERY_OPS) {
        journal
            .advance_watermark(op - WATERMARK_TRAIL_OPS)
            .await
            .expect("advance watermark");
    }
}

fn bench_ring_index(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_index");
    group.bench_function("append_256B", |b| {
        b.iter_custom(|iters| {
            on_reactor(move || async move {
                let journal = mem_journal().open().await.expect("open");
                let payload = vec![7u8; PAYLOAD_BYTES];
                let started = Instant::now();
                for _ in 0..iters {
                    let op = journal.append(&payload).await.expect("append");
                    keep_bounded(&journal, op).await;
                }
                let elapsed = started.elapsed();
                journal.close().await.expect("close");
                elapsed
            })
        });
    });
    group.bench_function("read_256B", |b| {
        b.iter_custom(|iters| {
            on_reactor(move || async move {
                let journal = mem_journal().open().await.expect("open");
                let payload = vec![7u8; PAYLOAD_BYTES];
                for _ in 0..READ_OPS {
                    journal.append(&payload).await.expect("append");
                }
                let started = Instant::now();
                for i in 0..iters {
                    let op = 1 + i % READ_OPS;
                    let entry = journal.read(op).await.expect("read").expect("present");
                    black_box(entry);
                }
                let elapsed = started.elapsed();
                journal.close().await.expect("close");
                elapsed
            })
        });
    });
    group.finish();
}

fn bench_group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("group_commit");
    for tasks in [16u64, 256] {
        group.throughput(Throughput::Elements(tasks));
        group.bench_with_input(
            BenchmarkId::new("appends_256B", tasks),
            &tasks,
            |b, &tasks| {
                b.iter_custom(|iters| {
                    on_reactor(move || async move {
                        let journal = mem_journal().open().await.expect("open");
                        let newest = Rc::new(Cell::new(0u64));
                        let started = Instant::now();
                        for _ in 0..iters {
                            // `tasks` appends in flight at once: one batch
                            // (or two, with a write in flight) per round.
                            let handles: Vec<_> = (0..tasks)
                                .map(|_| {
                                    let journal = journal.clone();
                                    let newest = Rc::clone(&newest);
                                    glommio::spawn_local(async move {
                                        let op = journal
                                            .append(&[9u8; PAYLOAD_BYTES])
                                            .await
                                            .expect("append");
                                        newest.set(newest.get().max(op));
                                    })
                                })
                                .collect();
                            for handle in handles {
                                handle.await;
                            }
                            let op = newest.get();
                            if op / WATERMARK_EVERY_OPS != (op - tasks) / WATERMARK_EVERY_OPS {
                                journal
                                    .advance_watermark(op - WATERMARK_TRAIL_OPS)
                                    .await
                                    .expect("advance watermark");
                            }
                        }
                        let elapsed = started.elapsed();
                        journal.close().await.expect("close");
                        elapsed
                    })
                });
            },
        );
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_header,
    bench_checksum,
    bench_ring_index,
    bench_group_commit
);
criterion_main!(benches);
