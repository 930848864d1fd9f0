//! Pins `ringstore wal salvage` on a real shard (broker commands written
//! through `Shard`, two checkpoints, closed): with a flipped payload in
//! the middle of the journal the shard refuses to open; salvage without
//! `--yes` exits 2 and changes nothing; with `--yes` it cuts the journal at
//! the damage, moves the later segment into `<shard>/quarantine/<time>-journal/`
//! next to its report (text and JSON, listing the ops lost), `wal verify`
//! passes, and the shard opens again from its newest snapshot (the journal
//! advanced past the cut) and takes new commands. It refuses, exit 2 and
//! nothing moved, a healthy shard, a shard whose reopen would only cut a
//! torn tail, and a locked shard (the engine holding it open, or any
//! process holding its lock file).
#![cfg(feature = "cli")]

mod common;
use common::*;
use ringstore::broker::{Command, Metadata, StreamCommand};
use ringstore::Shard;
use ringstore_journal::format::ENTRY_HEADER_BYTES;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

/// Streams the shard creates in its first, second and third session.
const STREAMS: [u64; 3] = [40, 25, 10];
/// Ops in all.
const OPS: u64 = 40 + 25 + 10;
/// The newest snapshot's op (end of session two).
const SNAPSHOT_OP: u64 = 40 + 25;

/// `<tmp>/data/shard-000` (and the data directory's superblock: one
/// shard): three sessions of stream creations, the first
/// two ending with a checkpoint (the second retires journal segment 1),
/// so segments 2 (ops 41..=65) and 3 (ops 66..=75) remain. The last
/// session closes cleanly if `close_last`, else it ends in a crash.
fn data_dir(close_last: bool) -> (tempfile::TempDir, PathBuf) {
    let tmp = temp_dir();
    let data = tmp.path().join("data");
    let dir = data.join("shard-000");
    ringstore::runtime::startup::check_manifest(&data, 1).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    run(move || async move {
        for (session, streams) in STREAMS.into_iter().enumerate() {
            let shard = open(&dir).await.unwrap();
            for n in 0..streams {
                let name = format!("s{session}-{n}");
                shard
                    .submit(Command::Stream(StreamCommand::Create { name }))
                    .await
                    .unwrap()
                    .unwrap();
            }
            if session < 2 {
                shard.checkpoint().await.unwrap();
            }
            if session < 2 || close_last {
                shard.close().await.unwrap();
            } else {
                glommio::yield_if_needed().await;
                drop(shard);
            }
        }
    });
    (tmp, data)
}

/// Opens the shard. A lock still held for a moment by a child process
/// another test is spawning (it holds a copy of every descriptor between
/// fork and exec) is retried briefly.
async fn open(dir: &Path) -> Result<Shard<Metadata>, ringstore::Error> {
    for _ in 0..500 {
        match Shard::<Metadata>::builder(dir)
            .journal(|j| small_journal(j, 4096))
            .open()
            .await
        {
            Err(ringstore::Error::DirLocked { .. }) => {
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
    panic!("{} stayed locked", dir.display());
}

/// Opens the shard on a reactor: its stream names (or the error); then,
/// if it opened, creates stream `create`.
fn open_and_list(dir: &Path, create: &str) -> Result<Vec<String>, String> {
    let dir = dir.to_path_buf();
    let create = create.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    run(move || async move {
        let result = match open(&dir).await {
            Ok(shard) => {
                let names = shard.read(|m| {
                    m.streams()
                        .iter()
                        .map(|(n, _)| n.clone())
                        .collect::<Vec<_>>()
                });
                shard
                    .submit(Command::Stream(StreamCommand::Create { name: create }))
                    .await
                    .unwrap()
                    .unwrap();
                shard.close().await.unwrap();
                Ok(names)
            }
            Err(e) => Err(e.to_string()),
        };
        tx.send(result).unwrap();
    });
    rx.recv().unwrap()
}

fn ringstore(data: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ringstore"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("run ringstore")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn expect_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "exit code; output:\n{}",
        text(output)
    );
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", text(output)))
}

/// Every file under `dir` with its bytes, the lock file left out (every
/// process that locks the shard writes its pid into it).
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.insert(path.clone(), Vec::new());
                pending.push(path);
            } else if path.file_name().unwrap() != ringstore::LOCK_FILE_NAME {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

/// The data entries of the shard as (op, generation, offset).
fn entries(data: &Path) -> Vec<(u64, u64, u64)> {
    let output = ringstore(data, &["--json", "wal", "dump", "--shard", "0"]);
    expect_exit(&output, 0);
    json(&output)["shards"][0]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "data")
        .map(|e| {
            (
                e["op"].as_u64().unwrap(),
                e["generation"].as_u64().unwrap(),
                e["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn shard_dir(data: &Path) -> PathBuf {
    data.join("shard-000")
}

fn segment_path(data: &Path, generation: u64) -> PathBuf {
    shard_dir(data)
        .join("journal")
        .join(ringstore_journal::segment_file_name(generation))
}

#[test]
fn interior_damage_is_salvaged_and_the_shard_opens_again() {
    let (_tmp, data) = data_dir(true);
    let shard = shard_dir(&data);
    let all = entries(&data);
    assert_eq!(all.last().unwrap().0, OPS);
    // An op in the middle of segment 2, which segment 3's header closes.
    let in_segment_2: Vec<_> = all.iter().filter(|e| e.1 == 2).collect();
    let &(damaged_op, _, offset) = in_segment_2[in_segment_2.len() / 2];
    flip_byte(
        &segment_path(&data, 2),
        offset + ENTRY_HEADER_BYTES as u64 + 1,
    );
    // A reopen reads each write's index, not its payloads: it refuses only
    // if replay reads the damaged op (above the snapshot); verify reads
    // every byte either way. (On a copy: an open that succeeds writes.)
    let copy = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&shard)
        .arg(copy.path())
        .status()
        .unwrap();
    assert!(copied.success());
    if let Err(err) = open_and_list(&copy.path().join(shard.file_name().unwrap()), "x") {
        assert!(err.contains("payload checksum"), "{err}");
    }
    let output = ringstore(&data, &["wal", "verify", "--shard", "0"]);
    expect_exit(&output, 1);
    assert!(text(&output).contains("wal salvage --shard 0"));

    // Without --yes: what it would do, nothing changed.
    let before = tree(&shard);
    let output = ringstore(&data, &["wal", "salvage", "--shard", "0"]);
    expect_exit(&output, 2);
    let out = text(&output);
    assert!(out.contains("would salvage"), "{out}");
    assert!(out.contains("pass --yes"), "{out}");
    assert!(
        out.contains(&format!("{damaged_op}..={OPS}")),
        "the ops it would lose: {out}"
    );
    assert!(
        tree(&shard) == before,
        "salvage without --yes changed files"
    );

    // With --yes.
    let output = ringstore(
        &data,
        &["--json", "wal", "salvage", "--shard", "0", "--yes"],
    );
    expect_exit(&output, 0);
    let report = json(&output);
    assert_eq!(report["carried_out"], true);
    let salvage = &report["salvage"];
    assert_eq!(salvage["state"], "completed");
    assert_eq!(salvage["cut"]["generation"], 2);
    assert_eq!(salvage["cut"]["offset"], offset);
    assert_eq!(
        salvage["lost"]["ranges"],
        serde_json::json!([[damaged_op, OPS]]),
        "{salvage}"
    );
    let quarantine = PathBuf::from(salvage["quarantine"].as_str().unwrap());
    assert_eq!(quarantine.parent().unwrap(), shard.join("quarantine"));
    let moved = salvage["moved"].as_array().unwrap();
    assert_eq!(moved.len(), 1, "{salvage}");
    assert_eq!(moved[0]["from"], segment_path(&data, 3).to_str().unwrap());
    assert!(!segment_path(&data, 3).exists());
    assert_eq!(
        std::fs::read(quarantine.join(ringstore_journal::segment_file_name(3))).unwrap(),
        before[&segment_path(&data, 3)],
        "moved byte for byte"
    );
    // The report files, in the folder.
    let text_report = std::fs::read_to_string(quarantine.join("salvage-report.txt")).unwrap();
    assert!(
        text_report.contains(&format!("{damaged_op}..={OPS}")),
        "{text_report}"
    );
    let json_report: Value = serde_json::from_str(
        &std::fs::read_to_string(quarantine.join("salvage-report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json_report["lost"], salvage["lost"]);

    // The journal verifies, the shard opens from its newest snapshot and
    // takes commands; the ops after it are the ones reported lost.
    let output = ringstore(&data, &["wal", "verify", "--shard", "0"]);
    expect_exit(&output, 0);
    let names = open_and_list(&shard, "after-salvage").unwrap();
    assert_eq!(names.len() as u64, SNAPSHOT_OP, "{names:?}");
    assert!(names.iter().any(|n| n == "s1-24"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("s2-")), "{names:?}");
    let output = ringstore(&data, &["wal", "verify", "--shard", "0"]);
    expect_exit(&output, 0);
    let names = open_and_list(&shard, "and-again").unwrap();
    assert!(names.iter().any(|n| n == "after-salvage"), "{names:?}");
    // Nothing left to salvage.
    let output = ringstore(&data, &["wal", "salvage", "--shard", "0", "--yes"]);
    expect_exit(&output, 2);
    assert!(text(&output).contains("nothing to salvage"));
}

#[test]
fn salvage_refuses_a_healthy_shard_and_one_whose_reopen_only_cuts() {
    let (_tmp, data) = data_dir(true);
    let shard = shard_dir(&data);
    let before = tree(&shard);
    let output = ringstore(&data, &["wal", "salvage", "--shard", "0", "--yes"]);
    expect_exit(&output, 2);
    let out = text(&output);
    assert!(
        out.contains("nothing to salvage") && out.contains("opens"),
        "{out}"
    );
    assert!(tree(&shard) == before);

    // A crash, then a damaged last write: the reopen cuts it (and reports
    // the op); salvage leaves that to the reopen.
    let (_tmp, data) = data_dir(false);
    let shard = shard_dir(&data);
    let &(op, generation, offset) = entries(&data).last().unwrap();
    flip_byte(
        &segment_path(&data, generation),
        offset + ENTRY_HEADER_BYTES as u64 + 1,
    );
    let before = tree(&shard);
    let output = ringstore(&data, &["wal", "salvage", "--shard", "0", "--yes"]);
    expect_exit(&output, 2);
    let out = text(&output);
    assert!(out.contains("reopening cuts"), "{out}");
    assert!(out.contains(&format!("ops {op}..={op}")), "{out}");
    assert!(tree(&shard) == before);
}

#[test]
fn salvage_refuses_a_locked_shard() {
    // The engine holds the shard open.
    let (_tmp, data) = data_dir(true);
    let shard = shard_dir(&data);
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let dir = shard.clone();
    let holder = std::thread::spawn(move || {
        run(move || async move {
            let shard = open(&dir).await.unwrap();
            opened_tx.send(()).unwrap();
            while release_rx.try_recv().is_err() {
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
            shard.close().await.unwrap();
        })
    });
    opened_rx.recv().unwrap();
    let output = ringstore(&data, &["wal", "salvage", "--shard", "0", "--yes"]);
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    expect_exit(&output, 2);
    let out = text(&output);
    assert!(out.contains("in use"), "{out}");
    assert!(
        out.contains(&format!("by process {}", std::process::id())),
        "{out}"
    );

    // Any process holding the lock file, on a shard that needs salvage.
    let all = entries(&data);
    let &(_, _, offset) = all.iter().find(|e| e.1 == 2).unwrap();
    flip_byte(
        &segment_path(&data, 2),
        offset + ENTRY_HEADER_BYTES as u64 + 1,
    );
    let before = tree(&shard);
    let lock = std::fs::File::open(shard.join(ringstore::LOCK_FILE_NAME)).unwrap();
    lock.try_lock().unwrap();
    let output = ringstore(&data, &["wal", "salvage", "--shard", "0", "--yes"]);
    expect_exit(&output, 2);
    assert!(text(&output).contains("in use"), "{}", text(&output));
    assert!(tree(&shard) == before, "a locked shard was changed");
    drop(lock);
    let output = ringstore(&data, &["wal", "salvage", "--shard", "0", "--yes"]);
    expect_exit(&output, 0);
}
