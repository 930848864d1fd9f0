//! `ShardBuilder::scrub_rate` on real files: the snapshot scrubber reports
//! damage in a snapshot generation no open reads (the older one) once, with
//! its file, while the journal's scrubber, started by the same setting,
//! reads the journal without a word; without the setting neither runs; a
//! snapshot pruned in steps while the scrubber reads it is not damage.
mod common;
use common::*;
use ringstore::Shard;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The scrub rate of the test that prunes a snapshot under the scrubber:
/// slow enough that it sits in the middle of a 3 MiB file for a while.
const SLOW_SCRUB_BYTES_PER_SECOND: u64 = 512 << 10;

/// How long the test waits for scrub passes before it fails.
const PASS_WAIT_MAX: Duration = Duration::from_secs(20);

fn builder(dir: &Path) -> ringstore::ShardBuilder<Kv> {
    Shard::<Kv>::builder(dir).journal(|j| small_journal(j, 4096))
}

/// Two checkpoints of 50 commands each, then a clean close.
fn write_shard(path: &Path) {
    let p = path.to_path_buf();
    run(move || async move {
        let shard = builder(&p).open().await.unwrap();
        for round in 0..2u64 {
            for n in 0..50u64 {
                let key = round * 100 + n;
                let command = KvCommand::Put {
                    key,
                    value: value(key, n, 200),
                };
                shard.submit(command).await.unwrap().unwrap();
            }
            shard.checkpoint().await.unwrap();
        }
        shard.close().await.unwrap();
    });
}

fn snapshot_files(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(path.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(ringstore::snapshot::parse_snapshot_file_name)
                .is_some()
        })
        .collect();
    files.sort();
    files
}

async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < PASS_WAIT_MAX,
            "{what}: not within {PASS_WAIT_MAX:?}"
        );
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn the_scrubbers_report_damage_in_a_snapshot_no_open_reads() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    write_shard(&path);
    let files = snapshot_files(&path);
    assert!(files.len() >= 2, "two generations kept: {files:?}");
    // A byte of the older generation's body.
    let older = files[0].clone();
    let mut bytes = std::fs::read(&older).unwrap();
    bytes[4096 + 10] ^= 0x20;
    std::fs::write(&older, bytes).unwrap();
    let p = path.clone();
    run(move || async move {
        let shard = builder(&p).scrub_rate(256 << 20).open().await.unwrap();
        assert!(shard.recovery_report().skipped_snapshots.is_empty());
        wait_for("two snapshot scrub passes", || {
            shard.stats().snapshot_scrub_passes >= 2
        })
        .await;
        wait_for("a journal scrub pass", || {
            shard.stats().journal.scrub_passes >= 1
        })
        .await;
        let stats = shard.stats();
        assert_eq!(stats.snapshot_scrub_damage, 1, "reported once: {stats:?}");
        let found = shard.snapshot_scrub_damage();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, older, "{found:?}");
        assert!(
            found[0].offset <= 4096 + 10,
            "at or before the flipped byte: {found:?}"
        );
        assert!(shard.snapshot_scrub_unreadable().is_empty());
        assert_eq!(stats.journal.scrub_damage, 0, "{stats:?}");
        assert_eq!(stats.snapshot_scrub_read_errors, 0, "{stats:?}");
        assert_eq!(stats.journal.scrub_read_errors, 0, "{stats:?}");
        assert!(stats.journal.scrub_bytes > 0);
        shard.close().await.unwrap();
    });
}

/// The newest snapshot, the one an open loads, damaged under a running
/// shard: the scrubber finds it and a checkpoint replaces it at once from
/// the state in memory (at the same op: nothing was applied since), so a
/// reopen loads it and skips nothing. Without the replacement the damaged
/// file stays the newest until enough ops make a checkpoint due, and an
/// open meanwhile passes over it.
#[test]
fn a_damaged_newest_snapshot_is_replaced_from_memory() {
    const KEYS: u64 = 50;
    let command = |key: u64| KvCommand::Put {
        key,
        value: value(key, 0, 200),
    };
    let mut expected = std::collections::BTreeMap::new();
    for key in 0..KEYS {
        apply_model(&mut expected, &command(key));
    }
    for journal_keeps_previous in [true, false] {
        let dir = temp_dir();
        let p = dir.path().to_path_buf();
        let snapshot_op = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let written = snapshot_op.clone();
        run(move || async move {
            let shard = builder(&p)
                .journal_keeps_previous_snapshot(journal_keeps_previous)
                .scrub_rate(256 << 20)
                .open()
                .await
                .unwrap();
            for key in 0..KEYS {
                shard.submit(command(key)).await.unwrap().unwrap();
            }
            shard.checkpoint().await.unwrap();
            let op = shard.snapshot_watermark();
            written.store(op, std::sync::atomic::Ordering::Relaxed);
            let newest = p
                .join("snapshots")
                .join(ringstore::snapshot::snapshot_file_name(op));
            let mut bytes = std::fs::read(&newest).unwrap();
            bytes[4096 + 10] ^= 0x20;
            std::fs::write(&newest, bytes).unwrap();
            wait_for("the damaged snapshot replaced", || {
                shard.stats().damaged_snapshots_replaced >= 1
            })
            .await;
            let stats = shard.stats();
            assert!(stats.snapshot_scrub_damage >= 1, "{stats:?}");
            assert_eq!(shard.snapshot_watermark(), op, "rewritten at its op");
            let report = ringstore::snapshot::inspect::inspect_snapshot(
                &newest,
                ringstore::snapshot::Check::Full,
                Some(shard.domain()),
                &mut |_| {},
            )
            .unwrap();
            assert!(report.is_intact(), "{report:?}");
            shard.close().await.unwrap();
        });
        let op = snapshot_op.load(std::sync::atomic::Ordering::Relaxed);
        let p = dir.path().to_path_buf();
        let expected = expected.clone();
        run(move || async move {
            let shard = builder(&p).open().await.unwrap();
            let report = shard.recovery_report();
            assert!(report.skipped_snapshots.is_empty(), "{report:?}");
            assert_eq!(report.snapshot.as_ref().map(|s| s.watermark), Some(op));
            assert_eq!(shard.read(|kv| kv.values()), expected);
            shard.close().await.unwrap();
        });
    }
}

#[test]
fn without_a_scrub_rate_nothing_is_scrubbed() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    write_shard(&path);
    let p = path.clone();
    run(move || async move {
        let shard = builder(&p).open().await.unwrap();
        glommio::timer::sleep(Duration::from_millis(50)).await;
        let stats = shard.stats();
        assert_eq!(stats.snapshot_scrub_passes, 0);
        assert_eq!(
            (stats.journal.scrub_passes, stats.journal.scrub_bytes),
            (0, 0)
        );
        shard.close().await.unwrap();
    });
}

/// What this process's descriptors name (`/proc/self/fd`): a file renamed
/// since it was opened shows its new name, one removed ends in
/// " (deleted)".
fn open_files() -> Vec<PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .collect()
}

/// A checkpoint prunes the older snapshot in steps (renamed, then shrunk)
/// while the scrubber is in the middle of reading it: the scrubber reads a
/// file that shrank under it, sees that its name is gone, and reports
/// nothing: a pruned file is no snapshot, and no open would read it.
#[test]
fn a_snapshot_pruned_in_steps_while_the_scrubber_reads_it_is_not_damage() {
    let dir = temp_dir();
    let path = dir.path().canonicalize().unwrap();
    run(move || async move {
        let shard = Shard::<Kv>::builder(&path)
            .journal(|j| small_journal(j, 4096).reclaim_step_bytes(64 << 10))
            .snapshot_generations(2)
            .scrub_rate(SLOW_SCRUB_BYTES_PER_SECOND)
            .open()
            .await
            .unwrap();
        // About 3 MiB of state, so the scrubber takes seconds over it.
        for key in 0..256u64 {
            let value = value(key, 1, 12 << 10);
            let put = KvCommand::Put { key, value };
            shard.submit(put).await.unwrap().unwrap();
        }
        shard.checkpoint().await.unwrap();
        let files = snapshot_files(&path);
        assert_eq!(files.len(), 1, "{files:?}");
        let older = files[0].clone();
        assert!(std::fs::metadata(&older).unwrap().len() > 3 << 20);
        wait_for("the scrubber reading the snapshot", || {
            open_files().contains(&older)
        })
        .await;
        // Two newer generations (the fewest kept): the second prunes it.
        for n in 2..4 {
            let put = KvCommand::Put {
                key: 1,
                value: value(1, n, 100),
            };
            shard.submit(put).await.unwrap().unwrap();
            shard.checkpoint().await.unwrap();
        }
        assert!(!older.exists(), "the older snapshot was pruned");
        // The scrubber holds it still, under no snapshot's name.
        let snapshots = path.join("snapshots");
        let held: Vec<_> = open_files()
            .into_iter()
            .filter(|f| f.starts_with(&snapshots) && !snapshot_files(&path).contains(f))
            .collect();
        assert_eq!(held.len(), 1, "{held:?}");
        let passes = shard.stats().snapshot_scrub_passes;
        wait_for("the scrubber's pass over the pruned file", || {
            shard.stats().snapshot_scrub_passes > passes
        })
        .await;
        let stats = shard.stats();
        assert_eq!(stats.snapshots_pruned, 1, "{stats:?}");
        assert_eq!(
            stats.snapshot_scrub_damage,
            0,
            "{:?}",
            shard.snapshot_scrub_damage()
        );
        assert_eq!(stats.snapshot_scrub_read_errors, 0, "{stats:?}");
        shard.close().await.unwrap();
    });
}
