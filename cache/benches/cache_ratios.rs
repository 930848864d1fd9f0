//! The cache's headline ratios, measured in one run on one glommio executor:
//!
//! 1. `get` of a cached 4 MiB object vs reading the same file directly
//!    (glommio `BufferedFile` open + read + close), both warm in the page
//!    cache;
//! 2. staging write + commit of a 4 MiB object (fdatasync, link, unlink,
//!    directory fsync) vs a plain write + fdatasync + rename;
//! 3. time to trim ~100,000 small objects (and, as a by-product, to open a
//!    cache over them: walk + rebuild);
//! 4. memory per tracked object (live heap bytes, from a counting allocator).
//!
//! Prints a table, then one line of JSON. Run with
//! `cargo bench -p ringstore-cache --bench cache_ratios`.
//! `RINGSTORE_BENCH_DIR` picks the parent directory (default: cargo's target
//! tmp dir, on the real disk).

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use glommio::io::{BufferedFile, OpenOptions};
use ringstore_cache::{Cache, TrimKind};

struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const OBJECT_BYTES: usize = 4 << 20;
const GET_ITERATIONS: usize = 200;
const GET_WARMUP: usize = 20;
const COMMIT_ITERATIONS: usize = 24;
const TRIM_OBJECTS: usize = 101_000;
const TRIM_DIRS: usize = 101;
const SMALL_OBJECT_BYTES: usize = 64;
/// The unlink-loop baseline samples this many files (same directory shape,
/// 1/5 of the objects per directory) to keep the run short; it is compared
/// per object.
const PLAIN_UNLINK_OBJECTS: usize = 20_000;

fn small_key(i: usize) -> String {
    format!("d{:03}/obj{i:06}", i % TRIM_DIRS)
}

/// `count` small files, oldest first (mtime order = creation order).
fn make_small_objects(objects: &Path, count: usize) {
    for d in 0..TRIM_DIRS {
        std::fs::create_dir_all(objects.join(format!("d{d:03}"))).expect("mkdir");
    }
    let small = vec![7u8; SMALL_OBJECT_BYTES];
    for i in 0..count {
        std::fs::write(objects.join(small_key(i)), &small).expect("write");
    }
}

fn bench_dir() -> PathBuf {
    std::env::var_os("RINGSTORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

fn mean(samples: &[Duration]) -> Duration {
    samples.iter().sum::<Duration>() / samples.len().max(1) as u32
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn direct_read(path: &Path) -> usize {
    let file = BufferedFile::open(path).await.expect("open");
    let data = file.read_at(0, OBJECT_BYTES + 1).await.expect("read");
    // Dropped, not `close().await`ed: the cache's `get` does the same.
    data.len()
}

async fn plain_write_sync_rename(dir: &Path, i: usize, data: &[u8]) {
    let tmp = dir.join(format!("plain-{i}.tmp"));
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .buffered_open(&tmp)
        .await
        .expect("create");
    let written = file.write_at(data.to_vec(), 0).await.expect("write");
    assert_eq!(written, data.len());
    file.fdatasync().await.expect("fdatasync");
    file.close().await.expect("close");
    glommio::io::rename(&tmp, dir.join(format!("plain-{i}")))
        .await
        .expect("rename");
}

struct Figures {
    get_cache: Duration,
    get_direct: Duration,
    commit_cache: Duration,
    put_cache: Duration,
    commit_plain: Duration,
    startup: Duration,
    trimmed: u64,
    trim: Duration,
    plain_unlinked: u64,
    plain_unlink: Duration,
    bytes_per_object: f64,
}

async fn run(base: PathBuf) -> Figures {
    let object: Vec<u8> = (0..OBJECT_BYTES).map(|i| (i % 251) as u8).collect();

    // 1. get vs direct read.
    let root = base.join("get");
    let cache = Cache::builder(&root)
        .bytes_limit(8u64 << 30)
        .open()
        .await
        .expect("open");
    cache.put("bench/object", &object).await.expect("put");
    let path = cache.objects_dir().join("bench/object");
    for _ in 0..GET_WARMUP {
        assert_eq!(
            cache.get("bench/object").await.unwrap().unwrap().len(),
            OBJECT_BYTES
        );
        assert_eq!(direct_read(&path).await, OBJECT_BYTES);
    }
    let (mut via_cache, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..GET_ITERATIONS {
        let t = Instant::now();
        let got = cache.get("bench/object").await.unwrap().unwrap();
        via_cache.push(t.elapsed());
        assert_eq!(got.len(), OBJECT_BYTES);
        drop(got);
        let t = Instant::now();
        let n = direct_read(&path).await;
        direct.push(t.elapsed());
        assert_eq!(n, OBJECT_BYTES);
    }
    cache.shutdown().await.expect("shutdown");

    // 2. staging write + commit vs write + fdatasync + rename (interleaved).
    let root = base.join("commit");
    let plain_dir = base.join("plain");
    std::fs::create_dir_all(&plain_dir).expect("mkdir");
    let cache = Cache::builder(&root)
        .bytes_limit(8u64 << 30)
        .chunk_bytes(4 << 20)
        .open()
        .await
        .expect("open");
    let (mut commits, mut puts, mut plains) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..COMMIT_ITERATIONS {
        let t = Instant::now();
        let mut staging = cache
            .create_staging(&format!("c/{i}"))
            .await
            .expect("stage");
        staging.append(&object).await.expect("append");
        staging.commit().await.expect("commit");
        commits.push(t.elapsed());
        let t = Instant::now();
        cache.put(&format!("p/{i}"), &object).await.expect("put");
        puts.push(t.elapsed());
        let t = Instant::now();
        plain_write_sync_rename(&plain_dir, i, &object).await;
        plains.push(t.elapsed());
    }
    cache.shutdown().await.expect("shutdown");

    // 3 + 4. Many small objects: open (walk + rebuild), memory, trim; the
    // baseline is a plain `unlink` loop over an identical set of files.
    let root = base.join("trim");
    let objects = root.join("objects");
    let plain_objects = base.join("plain-unlink");
    make_small_objects(&objects, TRIM_OBJECTS);
    make_small_objects(&plain_objects, PLAIN_UNLINK_OBJECTS);
    // Write back the new files first so neither side is timed against the
    // kernel's writeback of them.
    let _ = std::process::Command::new("sync").status();
    // Half the baseline runs before the trim and half after, so drift in the
    // disk's speed (other tenants, writeback) hits both sides alike.
    let half = PLAIN_UNLINK_OBJECTS / 2;
    let unlink_range = |range: std::ops::Range<usize>| {
        let t = Instant::now();
        for i in range {
            std::fs::remove_file(plain_objects.join(small_key(i))).expect("unlink");
        }
        t.elapsed()
    };
    let plain_before = unlink_range(0..half);
    // Baseline: an empty cache's live heap.
    let empty_root = base.join("empty");
    let before_empty = LIVE_BYTES.load(Ordering::Relaxed);
    let empty = Cache::builder(&empty_root).open().await.expect("open");
    let empty_bytes = LIVE_BYTES.load(Ordering::Relaxed) - before_empty;
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let t = Instant::now();
    let cache = Cache::builder(&root)
        .objects_limit(TRIM_OBJECTS as u64)
        .low_watermark_percent(1)
        .trim_threshold_percent(100)
        .open()
        .await
        .expect("open");
    let startup = t.elapsed();
    let full_bytes = LIVE_BYTES.load(Ordering::Relaxed) - before;
    assert_eq!(cache.stats().objects, TRIM_OBJECTS as u64);
    let bytes_per_object = (full_bytes - empty_bytes) as f64 / TRIM_OBJECTS as f64;
    empty.shutdown().await.expect("shutdown");
    let t = Instant::now();
    let report = cache.trim(TrimKind::Fast).await.expect("trim");
    let trim = t.elapsed();
    let plain_after = unlink_range(half..PLAIN_UNLINK_OBJECTS);
    let plain_unlinked = PLAIN_UNLINK_OBJECTS as u64;
    let plain_unlink = plain_before + plain_after;
    assert!(report.reached_target);
    cache.shutdown().await.expect("shutdown");

    Figures {
        get_cache: median(&mut via_cache),
        get_direct: median(&mut direct),
        commit_cache: mean(&commits),
        put_cache: mean(&puts),
        commit_plain: mean(&plains),
        startup,
        trimmed: report.objects_removed,
        trim,
        plain_unlinked,
        plain_unlink,
        bytes_per_object,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let base = tempfile::tempdir_in(bench_dir()).expect("bench tempdir");
    let base_path = base.path().to_path_buf();
    let started = Instant::now();
    let f = glommio::LocalExecutorBuilder::default()
        .name("cache-bench")
        .spawn(move || run(base_path))
        .expect("executor")
        .join()
        .expect("bench");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let get_ratio = us(f.get_cache) / us(f.get_direct);
    let commit_ratio = ms(f.commit_cache) / ms(f.commit_plain);
    let put_ratio = ms(f.put_cache) / ms(f.commit_plain);
    let trim_us_per_object = us(f.trim) / f.trimmed.max(1) as f64;
    let unlink_us_per_object = us(f.plain_unlink) / f.plain_unlinked.max(1) as f64;
    let trim_ratio = trim_us_per_object / unlink_us_per_object;
    println!(
        "ringstore-cache ratios (one run, {} s total)",
        started.elapsed().as_secs()
    );
    println!(
        "{:<52} {:>14} {:>14} {:>8}",
        "measure", "cache", "baseline", "ratio"
    );
    println!(
        "{:<52} {:>11.0} us {:>11.0} us {:>8.2}",
        "get 4 MiB (median; baseline: direct open+read)",
        us(f.get_cache),
        us(f.get_direct),
        get_ratio
    );
    println!(
        "{:<52} {:>11.2} ms {:>11.2} ms {:>8.2}",
        "stage+commit 4 MiB (mean; baseline: write+fsync+rename)",
        ms(f.commit_cache),
        ms(f.commit_plain),
        commit_ratio
    );
    println!(
        "{:<52} {:>11.2} ms {:>11.2} ms {:>8.2}",
        "put 4 MiB (mean; same baseline)",
        ms(f.put_cache),
        ms(f.commit_plain),
        put_ratio
    );
    println!(
        "{:<52} {:>11.0} ms {:>11.0} ms {:>8.2}",
        format!("trim {} small objects (baseline: unlink loop*)", f.trimmed),
        ms(f.trim),
        ms(f.plain_unlink),
        trim_ratio
    );
    println!(
        "{:<52} {:>11.1} us {:>11.1} us {:>8.2}",
        "  per object", trim_us_per_object, unlink_us_per_object, trim_ratio
    );
    println!(
        "{:<52}",
        format!(
            "  (*baseline times {} files; ratio is per object)",
            f.plain_unlinked
        )
    );
    println!(
        "{:<52} {:>11.0} ms {:>14} {:>8}",
        format!("open over {TRIM_OBJECTS} objects (walk + rebuild)"),
        ms(f.startup),
        "-",
        "-"
    );
    println!(
        "{:<52} {:>11.0} B {:>14} {:>8}",
        "memory per tracked object (keys ~11 bytes)", f.bytes_per_object, "-", "-"
    );
    println!(
        "{{\"get_4mib_cache_us\":{:.1},\"get_4mib_direct_us\":{:.1},\"get_ratio\":{:.3},\
         \"commit_4mib_cache_ms\":{:.3},\"commit_4mib_plain_ms\":{:.3},\"commit_ratio\":{:.3},\
         \"put_4mib_cache_ms\":{:.3},\"put_ratio\":{:.3},\"trim_objects\":{},\"trim_ms\":{:.1},\
         \"trim_us_per_object\":{:.2},\"unlink_us_per_object\":{:.2},\"trim_ratio\":{:.3},\"open_over_objects_ms\":{:.1},\"memory_bytes_per_object\":{:.1}}}",
        us(f.get_cache),
        us(f.get_direct),
        get_ratio,
        ms(f.commit_cache),
        ms(f.commit_plain),
        commit_ratio,
        ms(f.put_cache),
        put_ratio,
        f.trimmed,
        ms(f.trim),
        trim_us_per_object,
        unlink_us_per_object,
        trim_ratio,
        ms(f.startup),
        f.bytes_per_object
    );
}
