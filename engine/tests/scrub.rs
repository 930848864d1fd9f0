//! `ShardBuilder::scrub_rate` on real files: the snapshot scrubber reports
//! damage in a snapshot generation no open reads (the older one) once, with
//! its file, while the journal's scrubber, started by the same setting,
//! reads the journal without a word; without the setting neither runs.
mod common;
use common::*;
use ringstore::Shard;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
