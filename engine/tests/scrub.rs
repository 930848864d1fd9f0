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
