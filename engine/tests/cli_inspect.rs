//! Pins the `ringstore` tool's read-only inspection commands on a real data
//! dir (two broker shards written through `Shard`, checkpointed, closed):
//! `wal inspect|verify|dump` and `snapshot inspect|verify` succeed with exit
//! 0 and parseable JSON on a clean dir and change no byte of it; a flipped
//! bit in the middle of a journal segment makes `wal verify` exit 1 naming
//! the segment file and byte offset, while a damaged last write after a
//! crash is a torn tail whose ops are named (exit 0, or 1 with `--strict`)
//! and after a clean close is damage; a flipped or truncated snapshot
//! is named by `snapshot verify` (file and byte offset), which exits 1 when
//! an open would refuse the shard over it (and with `--strict` whenever); a missing or wrong data
//! dir and a bad config file are clear errors with exit 2; `wal dump`
//! prints decoded broker commands; journal directories of two shards
//! swapped fail `wal verify` as they fail the open (another owner); a
//! shard whose journal is gone is refused by the open and by both verifies
//! with one message.
#![cfg(feature = "cli")]

mod common;
use common::*;
use ringstore::broker::{Command, Metadata, StreamCommand, TopicCommand};
use ringstore::Shard;
use ringstore_journal::format::ENTRY_HEADER_BYTES;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

/// Streams each shard creates in its first, second and third session.
const STREAMS: [u64; 3] = [40, 25, 10];
/// Ops of each shard: the streams and one topic in the second session.
const OPS: u64 = 40 + 25 + 1 + 10;
/// The watermark of each shard's newest snapshot (end of session two).
const SNAPSHOT_OP: u64 = 40 + 25 + 1;

/// Builds `<tmp>/data/shard-000` and `shard-001` (plus the data directory's
/// superblock, the manifest)
/// with broker commands in three sessions: the first two end with a
/// checkpoint (so two snapshots, the second retiring segment 1), the third
/// leaves its ops in the journal only. Journal segments 2 and 3 remain.
/// Every session closes its shards cleanly.
fn data_dir() -> (tempfile::TempDir, PathBuf) {
    data_dir_ending(true)
}

/// [`data_dir`], but the third session ends in a crash (its shards are
/// dropped, not closed): nothing records where segment 3's data ends, so
/// damage in its last write is a tail a reopen cuts. After a clean close
/// the superblock records that end, and the same damage is corruption.
fn data_dir_ending(close_last: bool) -> (tempfile::TempDir, PathBuf) {
    let tmp = temp_dir();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    ringstore::runtime::startup::check_manifest(&data, 2).unwrap();
    for index in 0..2 {
        let dir = data.join(format!("shard-{index:03}"));
        run(move || async move {
            for (session, streams) in STREAMS.into_iter().enumerate() {
                let shard = open(&dir).await;
                for n in 0..streams {
                    let name = format!("s{session}-{index}-{n}");
                    shard
                        .submit(Command::Stream(StreamCommand::Create { name }))
                        .await
                        .unwrap()
                        .unwrap();
                }
                if session == 1 {
                    shard
                        .submit(Command::Topic(TopicCommand::Create {
                            stream: format!("s1-{index}-0"),
                            name: "events".into(),
                            partitions: 3,
                            config: vec![],
                        }))
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
    }
    (tmp, data)
}

/// Opens a shard of the fixture. The previous session's lock may still be
/// held for a moment by a child process another test is spawning (it holds
/// a copy of every descriptor between fork and exec), so `DirLocked` is
/// retried briefly.
async fn open(dir: &Path) -> Shard<Metadata> {
    for _ in 0..LOCK_RETRIES {
        match Shard::<Metadata>::builder(dir)
            .journal(|j| small_journal(j, 4096))
            .open()
            .await
        {
            Err(ringstore::Error::DirLocked { .. }) => {
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
            other => return other.unwrap(),
        }
    }
    panic!("{} stayed locked", dir.display());
}

/// Tries of [`open`] (10 ms apart).
const LOCK_RETRIES: usize = 500;

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

/// Every file under `dir` with its bytes and modification time.
fn tree(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, std::time::SystemTime)> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        files.insert(
            dir.clone(),
            (
                Vec::new(),
                std::fs::metadata(&dir).unwrap().modified().unwrap(),
            ),
        );
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let meta = std::fs::metadata(&path).unwrap();
                files.insert(
                    path.clone(),
                    (std::fs::read(&path).unwrap(), meta.modified().unwrap()),
                );
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

/// The data entries of shard `shard` as (op, generation, offset), from
/// `wal dump --json`.
fn entries(data: &Path, shard: &str) -> Vec<(u64, u64, u64)> {
    let output = ringstore(data, &["--json", "wal", "dump", "--shard", shard]);
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

fn segment_path(data: &Path, shard: &str, generation: u64) -> PathBuf {
    data.join(format!("shard-{shard:0>3}"))
        .join("journal")
        .join(ringstore_journal::segment_file_name(generation))
}

#[test]
fn a_clean_data_dir_inspects_and_verifies_without_changing_a_byte() {
    let (_tmp, data) = data_dir();
    let before = tree(&data);

    let output = ringstore(&data, &["--json", "wal", "inspect"]);
    expect_exit(&output, 0);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("data dir: {}", data.display())),
        "{stderr}"
    );
    let report = json(&output);
    assert_eq!(report["ok"], true);
    let shards = report["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    for shard in shards {
        assert_eq!(shard["op_max"], OPS, "{shard}");
        assert_eq!(shard["damage"].as_array().unwrap().len(), 0);
        assert_eq!(shard["tail"]["state"], "clean");
        assert_eq!(shard["verdict"], "opens");
        // The superblock records segments 2..=3 (1 was retired) and, after
        // the clean close, where the last one ends.
        assert_eq!(shard["superblock"]["first_generation"], 2, "{shard}");
        assert_eq!(shard["superblock"]["last_generation"], 3, "{shard}");
        assert_eq!(shard["superblock"]["ends"][1][0], 3, "{shard}");
        // The second checkpoint raised it to the first snapshot's op.
        assert_eq!(shard["watermark"], STREAMS[0], "{shard}");
        assert_eq!(shard["op_min"], STREAMS[0] + 1, "segment 1 was retired");
        let segments = shard["segments"].as_array().unwrap();
        let generations: Vec<_> = segments
            .iter()
            .map(|s| s["generation"].as_u64().unwrap())
            .collect();
        assert_eq!(generations, [2, 3], "{shard}");
        assert_eq!(segments[0]["header"]["segment_bytes"], 1 << 20);
        assert_eq!(segments[0]["end"]["state"], "sealed");
        assert_eq!(segments[1]["header"]["prev_generation"], 2);
        // The shards opened with `Durability::Auto` on a real disk: the
        // probe they took is recorded, for this boot.
        let record = &shard["durability_record"];
        assert_eq!(record["valid"], true, "{shard}");
        assert_eq!(record["this_boot"], true, "{shard}");
        assert_eq!(record["applies"], true, "{shard}");
        assert!(record["sync_p50_us"].as_u64().unwrap() > 0, "{record}");
    }

    let output = ringstore(&data, &["wal", "inspect", "--shard", "1"]);
    expect_exit(&output, 0);
    let out = text(&output);
    assert!(
        out.contains("shard-001") && !out.contains("shard-000 ("),
        "{out}"
    );
    assert!(
        out.contains("segment bytes") && out.contains("tail: clean"),
        "{out}"
    );
    assert!(
        out.contains("durability: Auto chose") && out.contains("this boot and device: Auto opens"),
        "{out}"
    );

    let output = ringstore(&data, &["wal", "verify"]);
    expect_exit(&output, 0);
    let out = text(&output);
    assert!(
        out.contains("shard-000: ok") && out.contains("shard-001: ok"),
        "{out}"
    );
    let output = ringstore(&data, &["wal", "verify", "--json", "--strict"]);
    expect_exit(&output, 0);
    assert_eq!(json(&output)["ok"], true);

    let output = ringstore(&data, &["--json", "snapshot", "inspect"]);
    expect_exit(&output, 0);
    let report = json(&output);
    let shard = &report["shards"][0];
    let identity_domain = shard["identity"]["domain"].as_str().unwrap().to_owned();
    let snapshots = shard["snapshots"]["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), 2, "{shard}");
    for snapshot in snapshots {
        assert_eq!(snapshot["header"]["domain"], identity_domain.as_str());
        let names: Vec<_> = snapshot["sections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect();
        assert!(names.contains(&"broker.streams".to_owned()), "{names:?}");
    }
    assert_eq!(snapshots[1]["header"]["watermark"], SNAPSHOT_OP);
    assert_eq!(shard["newest_intact"], SNAPSHOT_OP);

    let output = ringstore(&data, &["snapshot", "inspect"]);
    expect_exit(&output, 0);
    let out = text(&output);
    assert!(
        out.contains("broker.topics") && out.contains(&identity_domain),
        "{out}"
    );

    let output = ringstore(&data, &["snapshot", "verify"]);
    expect_exit(&output, 0);
    let output = ringstore(&data, &["--json", "snapshot", "verify"]);
    expect_exit(&output, 0);
    let report = json(&output);
    assert_eq!(report["ok"], true);
    let checked = &report["shards"][1]["snapshots"]["snapshots"][1];
    assert_eq!(checked["file_checksum_ok"], true);
    assert_eq!(checked["sections"][0]["checksum_ok"], true);

    assert!(tree(&data) == before, "the commands changed the data dir");
}

#[test]
fn a_shard_directory_works_as_the_data_dir() {
    let (_tmp, data) = data_dir();
    let shard = data.join("shard-001");
    let output = ringstore(&shard, &["--json", "wal", "verify"]);
    expect_exit(&output, 0);
    let report = json(&output);
    assert_eq!(report["shards"].as_array().unwrap().len(), 1);
    assert_eq!(report["shards"][0]["shard"], "shard-001");
    let output = ringstore(&shard, &["snapshot", "verify"]);
    expect_exit(&output, 0);
}

#[test]
fn wal_dump_prints_decoded_commands() {
    let (_tmp, data) = data_dir();
    let output = ringstore(&data, &["wal", "dump", "--shard", "0"]);
    expect_exit(&output, 0);
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.contains(r#"Stream(Create { name: "s1-0-0" })"#),
        "{out}"
    );
    assert!(
        out.contains(r#"Topic(Create { stream: "s1-0-0", name: "events""#),
        "{out}"
    );
    assert!(
        out.contains(r#"Stream(Create { name: "s2-0-9" })"#),
        "{out}"
    );
    assert!(out.contains("watermark 40"), "the watermark record: {out}");
    assert!(!out.contains("-1-"), "only shard 0: {out}");

    let output = ringstore(
        &data,
        &["wal", "dump", "--shard", "1", "--from", "45", "--to", "49"],
    );
    expect_exit(&output, 0);
    let out = String::from_utf8_lossy(&output.stdout);
    let ops: Vec<u64> = out
        .lines()
        .filter(|l| l.split_whitespace().nth(4) == Some("data"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(ops, [45, 46, 47, 48, 49], "{out}");
    assert!(
        out.contains(r#"name: "s1-1-4""#),
        "op 45 created stream 4 of session 1: {out}"
    );

    let output = ringstore(&data, &["--json", "wal", "dump", "--limit", "3"]);
    expect_exit(&output, 0);
    let report = json(&output);
    for shard in report["shards"].as_array().unwrap() {
        let entries = shard["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(shard["complete"], false);
        let first = &entries[0];
        assert_eq!(first["op"], STREAMS[0] + 1);
        assert!(
            first["command"]["Stream"]["Create"]["name"]
                .as_str()
                .unwrap()
                .starts_with("s1-"),
            "{first}"
        );
    }

    let output = ringstore(&data, &["wal", "dump", "--from", "9", "--to", "3"]);
    expect_exit(&output, 2);
}

#[test]
fn a_flipped_bit_in_the_middle_of_a_segment_fails_wal_verify_naming_file_and_offset() {
    let (_tmp, data) = data_dir();
    let entries = entries(&data, "0");
    // In segment 2, which segment 3's header closes: durable data.
    let (_, generation, offset) = entries[entries.len() / 2];
    assert_eq!(generation, 2);
    let segment = segment_path(&data, "0", generation);
    // A payload byte: the header still verifies, the payload checksum not.
    flip_byte(&segment, offset + ENTRY_HEADER_BYTES as u64 + 1);

    let output = ringstore(&data, &["wal", "verify"]);
    expect_exit(&output, 1);
    let out = text(&output);
    assert!(
        out.contains(&format!("{} at byte offset {offset}", segment.display())),
        "{out}"
    );
    assert!(out.contains("payload checksum"), "{out}");
    assert!(
        out.contains("shard-001: ok"),
        "the other shard is fine: {out}"
    );

    let output = ringstore(&data, &["--json", "wal", "verify", "--shard", "0"]);
    expect_exit(&output, 1);
    let report = json(&output);
    assert_eq!(report["ok"], false);
    let damage = &report["shards"][0]["damage"][0];
    assert_eq!(damage["path"], segment.to_str().unwrap());
    assert_eq!(damage["offset"], offset);

    // inspect shows the same, and dump stops at it with exit 1.
    expect_exit(&ringstore(&data, &["wal", "inspect", "--shard", "0"]), 1);
    let output = ringstore(&data, &["wal", "dump", "--shard", "0"]);
    expect_exit(&output, 1);
    assert!(text(&output).contains(&format!("byte offset {offset}")));
}

#[test]
fn a_damaged_last_write_is_a_torn_tail_not_damage() {
    let (_tmp, data) = data_dir_ending(false);
    let (op, generation, offset) = *entries(&data, "1").last().unwrap();
    let segment = segment_path(&data, "1", generation);
    flip_byte(&segment, offset + ENTRY_HEADER_BYTES as u64 + 1);

    let output = ringstore(&data, &["wal", "verify", "--shard", "1"]);
    expect_exit(&output, 0);
    let out = text(&output);
    assert!(out.contains("torn tail"), "{out}");
    assert!(
        out.contains(&format!("{} byte offset {offset}", segment.display())),
        "{out}"
    );
    // The ops the cut takes, in recovery's words.
    assert!(
        out.contains(&format!("1 entries of ops {op}..={op} in the cut bytes")),
        "{out}"
    );

    let output = ringstore(
        &data,
        &["--json", "wal", "verify", "--shard", "1", "--strict"],
    );
    expect_exit(&output, 1);
    let report = json(&output);
    let shard = &report["shards"][0];
    assert_eq!(shard["tail"]["state"], "torn");
    assert_eq!(shard["tail"]["offset"], offset);
    assert_eq!(shard["tail"]["ops"], serde_json::json!([op, op]));
    assert_eq!(shard["verdict"], "cuts");

    // After a clean close the same damage is corruption: the superblock
    // records where the last segment ends. A reopen takes that write from
    // its index and opens; reading the op fails; verify reports it.
    let (_tmp, data) = data_dir();
    let (_, generation, offset) = *entries(&data, "1").last().unwrap();
    let segment = segment_path(&data, "1", generation);
    flip_byte(&segment, offset + ENTRY_HEADER_BYTES as u64 + 1);
    let output = ringstore(&data, &["--json", "wal", "verify", "--shard", "1"]);
    expect_exit(&output, 1);
    let report = json(&output);
    assert_eq!(report["shards"][0]["verdict"], "opens");
    assert_eq!(report["shards"][0]["damage"][0]["offset"], offset);
    assert_eq!(
        report["shards"][0]["damage_found_on_read"][0]["offset"],
        offset
    );
    let output = ringstore(&data, &["wal", "verify", "--shard", "1"]);
    expect_exit(&output, 1);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("reading the entries at the damaged place(s) fails"),
        "{text}"
    );
}

#[test]
fn damaged_snapshots_fail_snapshot_verify_naming_the_file() {
    let (_tmp, data) = data_dir();
    let snapshots = data.join("shard-000").join("snapshots");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2);
    // A bit in the first section's body of the newest. The journal still
    // holds the ops above the older one (its watermark is the older one's),
    // so an open skips the damaged file and loads the older: `verify`
    // names the damage and passes, as an open does; `--strict` fails.
    flip_byte(&files[1], 4096 + 3);
    for args in [
        &["snapshot", "verify"][..],
        &["snapshot", "verify", "--strict"],
    ] {
        let output = ringstore(&data, args);
        expect_exit(&output, if args.len() == 3 { 1 } else { 0 });
        let out = text(&output);
        assert!(
            out.contains(&format!("{} at byte offset 4096", files[1].display())),
            "{out}"
        );
        assert!(out.contains("fails its checksum"), "{out}");
        assert!(
            out.contains("newest intact snapshot: watermark 40"),
            "{out}"
        );
        assert!(out.contains("an open skips it"), "{out}");
    }
    // The header-only inspection does not read the body.
    expect_exit(&ringstore(&data, &["snapshot", "inspect"]), 0);

    // Truncated: the older one.
    let len = std::fs::metadata(&files[0]).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[0])
        .unwrap();
    file.set_len(len - 4096).unwrap();
    let output = ringstore(&data, &["--json", "snapshot", "verify", "--shard", "0"]);
    expect_exit(&output, 1);
    let report = json(&output);
    let damaged: Vec<String> = report["shards"][0]["snapshots"]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["damage"].as_array().unwrap().clone())
        .map(|d| format!("{} {}", d["path"].as_str().unwrap(), d["reason"]))
        .collect();
    assert_eq!(damaged.len(), 3, "{damaged:?}");
    assert!(damaged[0].starts_with(files[0].to_str().unwrap()) && damaged[0].contains("truncated"));
    // No generation is usable now and the journal was compacted up to op
    // 40: an open refuses, and so does `verify`, naming both files.
    let refusal = report["shards"][0]["refusal"].as_str().unwrap();
    for file in &files {
        assert!(refusal.contains(file.to_str().unwrap()), "{refusal}");
    }
    assert!(refusal.contains("compacted up to op 40"), "{refusal}");
    // Now the header check sees it too.
    let output = ringstore(&data, &["snapshot", "inspect", "--shard", "0"]);
    expect_exit(&output, 1);
    assert!(text(&output).contains("truncated"));
}

#[test]
fn a_missing_or_wrong_data_dir_is_a_clear_error() {
    let tmp = temp_dir();
    let missing = tmp.path().join("nope");
    let output = ringstore(&missing, &["wal", "verify"]);
    expect_exit(&output, 2);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains(&format!("data dir {} does not exist", missing.display())),
        "{err}"
    );

    let output = ringstore(tmp.path(), &["snapshot", "inspect"]);
    expect_exit(&output, 2);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("is not a ringstore data dir"), "{err}");

    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let output = ringstore(&file, &["wal", "inspect"]);
    expect_exit(&output, 2);
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a directory"));

    let (_tmp, data) = data_dir();
    let output = ringstore(&data, &["wal", "inspect", "--shard", "7"]);
    expect_exit(&output, 2);
    assert!(String::from_utf8_lossy(&output.stderr).contains("no shard 7"));
    // Usage errors are exit 2 as well.
    expect_exit(&ringstore(&data, &["wal", "frobnicate"]), 2);
}

#[test]
fn the_config_file_is_validated_and_supplies_the_data_dir() {
    let (tmp, data) = data_dir();
    let config = tmp.path().join("ringstore.toml");
    std::fs::write(&config, "[engine]\nshards = 2\ncolour = \"blue\"\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringstore"))
        .arg("--config")
        .arg(&config)
        .args(["wal", "verify"])
        .output()
        .unwrap();
    expect_exit(&output, 2);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains(&config.display().to_string()) && err.contains("colour"),
        "{err}"
    );

    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[engine]\nshards = 2\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringstore"))
        .args(["wal", "verify", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    expect_exit(&output, 0);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(&format!("data dir: {}", data.display()))
    );
}

#[test]
fn a_journal_directory_of_another_shard_fails_wal_verify_like_the_open() {
    let (_tmp, data) = data_dir();
    let (a, b) = (data.join("shard-000"), data.join("shard-001"));
    std::fs::rename(a.join("journal"), a.join("journal.0")).unwrap();
    std::fs::rename(b.join("journal"), a.join("journal")).unwrap();
    std::fs::rename(a.join("journal.0"), b.join("journal")).unwrap();
    let output = ringstore(&data, &["--json", "wal", "verify"]);
    expect_exit(&output, 1);
    let report = json(&output);
    for shard in report["shards"].as_array().unwrap() {
        assert_eq!(shard["verdict"], "refuses", "{shard}");
        let refusal = shard["refusal"].as_str().unwrap();
        assert!(
            refusal.contains("the journal belongs to domain"),
            "{refusal}"
        );
    }
}

/// A damaged superblock copy, which the next open rewrites: `wal verify`
/// passes the journal and still names the copy (file and offset).
#[test]
fn a_damaged_superblock_copy_passes_wal_verify_and_is_named() {
    let (_tmp, data) = data_dir();
    let superblock = data.join("shard-000/journal/superblock");
    // The second copy's header.
    flip_byte(&superblock, 4096 + 8);
    let output = ringstore(&data, &["wal", "verify", "--shard", "0"]);
    expect_exit(&output, 0);
    let out = text(&output);
    assert!(
        out.contains(&format!(
            "superblock copy: {} at byte offset 4096",
            superblock.display()
        )) && out.contains("the next open rewrites it"),
        "{out}"
    );
}

/// A first open cut after it wrote the identity (journal not recorded)
/// and before it created the journal: the next open creates the journal,
/// and both verifies pass the shard, `wal verify` saying there is no
/// journal yet (it used to stop with an error, and leave the other shards
/// unchecked).
#[test]
fn a_shard_whose_first_open_stopped_before_its_journal_passes_both_verifies_like_the_open() {
    let (_tmp, data) = data_dir();
    let shard = data.join("shard-000");
    let domain = ringstore::snapshot::inspect::read_identity_file(&shard)
        .unwrap()
        .domain()
        .unwrap();
    std::fs::remove_dir_all(shard.join("journal")).unwrap();
    // A first open makes `snapshots/` before the identity: empty, then.
    std::fs::remove_dir_all(shard.join("snapshots")).unwrap();
    std::fs::create_dir(shard.join("snapshots")).unwrap();
    let identity_path = shard.join(ringstore::identity::IDENTITY_FILE_NAME);
    let identity = ringstore::identity::Identity::new(domain);
    std::fs::write(
        &identity_path,
        ringstore::identity::encode_identity(&identity),
    )
    .unwrap();
    for command in [
        &["snapshot", "verify"][..],
        &["wal", "verify"],
        &["wal", "verify", "--strict"],
    ] {
        let output = ringstore(&data, command);
        expect_exit(&output, 0);
        if command[0] == "wal" {
            let out = text(&output);
            assert!(out.contains("shard-000: ok: no journal yet"), "{out}");
            assert!(out.contains("shard-001: ok"), "{out}");
        }
    }
    let output = ringstore(&data, &["--json", "wal", "verify"]);
    expect_exit(&output, 0);
    let value = json(&output);
    assert_eq!(value["shards"][0]["journal_not_created"], true, "{value}");
    // The open agrees: it creates the journal.
    let (tx, rx) = std::sync::mpsc::channel();
    let opened_dir = shard.clone();
    run(move || async move {
        let opened = Shard::<Metadata>::builder(&opened_dir)
            .journal(|j| small_journal(j, 4096))
            .open()
            .await;
        tx.send(opened.map(|s| (s.domain(), s.applied().op)).ok())
            .unwrap();
    });
    assert_eq!(rx.recv().unwrap(), Some((domain, 0)));
    assert!(shard.join("journal").is_dir());
}

/// A shard the data directory's superblock records as created, whose
/// directory is gone: the engine refuses to start, and `wal verify` fails
/// the shards that are there with the same message.
#[test]
fn a_recorded_shard_whose_directory_is_gone_fails_wal_verify_like_the_start() {
    let (_tmp, data) = data_dir();
    ringstore::runtime::startup::record_created_shards(&data).unwrap();
    expect_exit(&ringstore(&data, &["wal", "verify"]), 0);
    std::fs::rename(
        data.join("shard-001"),
        data.with_file_name("shard-001.aside"),
    )
    .unwrap();
    let output = ringstore(&data, &["wal", "verify"]);
    expect_exit(&output, 1);
    let out = text(&output);
    assert!(out.contains("shard 1 was created"), "{out}");
    assert!(out.contains("refuses the data directory"), "{out}");
}

#[test]
fn a_shard_whose_journal_is_gone_is_refused_by_the_open_and_both_verifies() {
    // Gone entirely, or emptied: either way an open would otherwise start
    // an empty journal and drop the ops above the newest snapshot.
    for emptied in [false, true] {
        let (_tmp, data) = data_dir();
        let shard = data.join("shard-000");
        let journal = shard.join("journal");
        std::fs::remove_dir_all(&journal).unwrap();
        if emptied {
            std::fs::create_dir(&journal).unwrap();
        }
        let refused = {
            let shard = shard.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            run(move || async move {
                let opened = Shard::<Metadata>::builder(&shard)
                    .journal(|j| small_journal(j, 4096))
                    .open()
                    .await;
                tx.send(opened.err().map(|e| e.to_string())).unwrap();
            });
            rx.recv().unwrap().expect("the open refuses")
        };
        assert!(
            refused.contains("records that the shard's journal exists"),
            "{refused}"
        );
        assert!(refused.contains("holds no journal"), "{refused}");
        // The refused open created no journal in the missing one's place.
        let left = std::fs::read_dir(&journal).map(|d| d.count()).ok();
        assert_eq!(left, emptied.then_some(0), "emptied: {emptied}");
        for command in [["snapshot", "verify"], ["wal", "verify"]] {
            let output = ringstore(&data, &command);
            expect_exit(&output, 1);
            let out = text(&output);
            assert!(
                out.contains(&refused),
                "{command:?}, emptied {emptied}: {out}"
            );
        }
        // The other shard is untouched.
        let output = ringstore(&data, &["wal", "verify", "--shard", "1"]);
        expect_exit(&output, 0);
    }
}

/// `demo --fresh` deletes only an engine data directory: not a shard's
/// journal directory (it has a `superblock` file too), not a data
/// directory whose shard salvage left a quarantine in; an emptied one goes.
#[test]
fn demo_fresh_deletes_nothing_but_an_engine_data_directory() {
    let (_tmp, data) = data_dir();
    let journal = data.join("shard-000").join("journal");
    let before = std::fs::read_dir(&journal).unwrap().count();
    let refused = ringstore(&journal, &["demo", "--fresh", "--commands", "10"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("not an engine data directory"),
        "{}",
        text(&refused)
    );
    assert_eq!(std::fs::read_dir(&journal).unwrap().count(), before);
    let quarantine = data.join("shard-001").join("quarantine");
    std::fs::create_dir(&quarantine).unwrap();
    let refused = ringstore(&data, &["demo", "--fresh", "--commands", "10"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("quarantine"), "{}", text(&refused));
    assert!(journal.exists());
    std::fs::remove_dir(&quarantine).unwrap();
    let fresh = ringstore(
        &data,
        &["demo", "--fresh", "--shards", "2", "--commands", "10"],
    );
    assert!(fresh.status.success(), "{}", text(&fresh));
}

/// The name (under the shard directory) of the segment after the last:
/// where a crashed rollover leaves an empty file.
fn next_segment_name(shard: &Path) -> String {
    let last = std::fs::read_dir(shard.join("journal"))
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let digits = name.strip_prefix("segment-")?.strip_suffix(".wal")?;
            digits.parse::<u64>().ok()
        })
        .max()
        .expect("a segment");
    format!("journal/segment-{:016}.wal", last + 1)
}

/// A symlink at the next segment's name: followed by the open and by
/// `wal verify` alike, so one verdict on what it names. To an empty file
/// (a crashed rollover's leftover, which the open removes: the link, not
/// its target) both go on; to a FIFO both refuse ("not a regular file").
#[test]
fn a_symlink_at_a_segment_name_gets_one_verdict_from_the_open_and_wal_verify() {
    for target_kind in ["empty file", "fifo"] {
        let (tmp, data) = data_dir();
        let target = tmp.path().join("elsewhere.wal");
        match target_kind {
            "empty file" => std::fs::write(&target, b"").unwrap(),
            _ => assert!(std::process::Command::new("mkfifo")
                .arg(&target)
                .status()
                .expect("run mkfifo")
                .success()),
        }
        let link = data
            .join("shard-000")
            .join(next_segment_name(&data.join("shard-000")));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let verified = ringstore(&data, &["wal", "verify"]);
        let ack_log = data.join("no-acks");
        std::fs::write(&ack_log, b"").unwrap();
        let opened = ringstore(&data, &["check", "--ack-log", ack_log.to_str().unwrap()]);
        assert_eq!(
            verified.status.success(),
            opened.status.success(),
            "{target_kind}: verify {}\nopen {}",
            text(&verified),
            text(&opened)
        );
        assert_eq!(opened.status.success(), target_kind == "empty file");
        if target_kind == "fifo" {
            assert!(
                text(&opened).contains("not a regular file"),
                "{}",
                text(&opened)
            );
        }
        assert!(
            std::fs::symlink_metadata(&target).is_ok(),
            "{target_kind}: the link's target is never removed"
        );
    }
}

/// A FIFO planted at a segment's or a snapshot's name: the verifiers
/// answer (naming it, "not a regular file") rather than block for ever in
/// its open, and the open reaches the same verdict. (A snapshot that
/// cannot be read is passed over by both; a segment the tool cannot read
/// ends its run with an error, and the open refuses it, leaving it in
/// place, where it used to remove it as a crash's leftover; a snapshot
/// passed over is set aside, renamed.)
#[test]
fn a_fifo_at_a_journal_or_snapshot_name_does_not_hang_the_verifiers() {
    for (planted, command) in [
        // The generation after the last, where a crashed rollover leaves
        // an empty file, and a generation the superblock cannot record.
        ("next segment", "wal"),
        ("journal/segment-0000000000000099.wal", "wal"),
        ("snapshots/snapshot-00000000000000099999.snap", "snapshot"),
    ] {
        let (_tmp, data) = data_dir();
        let planted = match planted {
            "next segment" => next_segment_name(&data.join("shard-000")),
            other => other.to_owned(),
        };
        let fifo = data.join("shard-000").join(&planted);
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("run mkfifo");
        assert!(made.success());
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringstore"))
            .arg("--data-dir")
            .arg(&data)
            .args([command, "verify"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run ringstore");
        let started = std::time::Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if started.elapsed() > std::time::Duration::from_secs(60) {
                let _ = child.kill();
                panic!("`{command} verify` hung on a FIFO at {planted}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let output = child.wait_with_output().expect("output");
        if command == "wal" {
            assert!(!output.status.success(), "{}", text(&output));
        }
        assert!(
            text(&output).contains("not a regular file"),
            "{command}: {}",
            text(&output)
        );
        // The open: the same verdict, and the FIFO left where it was.
        let ack_log = data.join("no-acks");
        std::fs::write(&ack_log, b"").unwrap();
        let opened = ringstore(&data, &["check", "--ack-log", ack_log.to_str().unwrap()]);
        assert_eq!(
            opened.status.success(),
            command == "snapshot",
            "{planted}: {}",
            text(&opened)
        );
        if command == "wal" {
            assert!(
                text(&opened).contains("not a regular file"),
                "{}",
                text(&opened)
            );
        }
        // A snapshot the open passed over is set aside under a new name.
        let kept = match command {
            "wal" => fifo.clone(),
            _ => {
                let mut name = fifo.file_name().unwrap().to_os_string();
                name.push(ringstore::recovery::PASSED_OVER_SUFFIX);
                fifo.with_file_name(name)
            }
        };
        let kind = std::fs::symlink_metadata(&kept).expect("the FIFO is still there");
        assert!(
            std::os::unix::fs::FileTypeExt::is_fifo(&kind.file_type()),
            "{planted}"
        );
    }
}

/// An unfinished cold restore's marker in a shard directory: the open
/// refuses the directory, and so do both verifiers (exit 1).
#[test]
fn a_restore_marker_is_refused_by_both_verifiers_as_by_the_open() {
    let (_tmp, data) = data_dir();
    let marker = data
        .join("shard-001")
        .join(ringstore::layout::RESTORE_MARKER_NAME);
    std::fs::write(&marker, b"").unwrap();
    for command in ["wal", "snapshot"] {
        let output = ringstore(&data, &[command, "verify"]);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{command}: {}",
            text(&output)
        );
        assert!(
            text(&output).contains("restore"),
            "{command}: {}",
            text(&output)
        );
    }
    // `wal inspect --json`: the shard's own `ok` is false too, as the top
    // level's, with the refusal named; the other shard stays ok.
    let output = ringstore(&data, &["--json", "wal", "inspect"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&output)));
    assert_eq!(report["ok"], false, "{report}");
    let shards = report["shards"].as_array().expect("shards");
    let shard = |name: &str| {
        shards
            .iter()
            .find(|s| s["shard"].as_str().is_some_and(|n| n.contains(name)))
            .unwrap_or_else(|| panic!("{name} in {report}"))
    };
    assert_eq!(shard("shard-001")["ok"], false, "{report}");
    assert!(
        shard("shard-001")["data_dir_refusal"]
            .as_str()
            .is_some_and(|r| r.contains("restore")),
        "{report}"
    );
    assert_eq!(shard("shard-000")["ok"], true, "{report}");
}
