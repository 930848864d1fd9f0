//! Pins that `ringstore snapshot verify` and reopening the shard reach the
//! same verdict on its identity and snapshots, for every kind of damage:
//! a bit flipped in a snapshot's header, section table, section, last body
//! byte or zero padding; a snapshot truncated, cut inside its header block,
//! zero-length, of another format version or of another domain; an older
//! generation damaged; every generation damaged or gone; a leftover
//! temporary file; the identity missing (beside data, and in an empty
//! directory), flipped, truncated, zero-length, with a bad magic, of
//! another version, or with garbage after its header. Each case runs on a
//! shard whose journal still holds the ops above the older snapshot (an
//! open falls back to it) and on one compacted up to the newest (it
//! cannot).
//!
//! The deciders compared: the library verdict
//! (`ringstore::snapshot::inspect::inspect_shard`), the tool's exit code
//! and JSON (`snapshot verify`, and `--strict`), and
//! `Shard::builder(dir).open()`. A refusal is the same message from all
//! three, and it names every damaged file tried and, where there is one,
//! the byte offset; an accepted open skips exactly the files, with exactly
//! the reasons, that `verify` reports.
mod common;
use common::*;
use ringstore::cold_restore::RESTORE_MARKER_NAME;
use ringstore::identity::IDENTITY_FILE_NAME;
use ringstore::snapshot::format::{
    header_block_hasher, IdentityHeader, SnapshotHeader, BODY_OFFSET, HEADER_BLOCK_BYTES,
    SNAPSHOT_HEADER_BYTES,
};
use ringstore::snapshot::inspect::{inspect_shard, Check, ShardSnapshotsReport};
use ringstore::{CheckpointPolicy, Error, Shard, SkippedSnapshot};
use std::path::{Path, PathBuf};
use zerocopy::{FromBytes, IntoBytes};

/// What an open does with a shard directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accept,
    Refuse,
}
use Verdict::{Accept, Refuse};

/// Ops in each of the fixture's three sessions.
const OPS: [u64; 3] = [100, 100, 10];

fn builder(dir: &Path, keeps_previous: bool) -> ringstore::ShardBuilder<Kv> {
    Shard::<Kv>::builder(dir)
        .journal(|j| small_journal(j, 4096))
        .journal_keeps_previous_snapshot(keeps_previous)
        .checkpoint_policy(CheckpointPolicy {
            automatic: false,
            ..CheckpointPolicy::default()
        })
}

/// A shard with two snapshots (ops 100 and 200) and ten ops above them.
/// With `keeps_previous` the journal's watermark is the older snapshot's
/// (an open can fall back to it), without it the newer one's.
struct Fixture {
    dir: PathBuf,
    keeps_previous: bool,
    older: PathBuf,
    newer: PathBuf,
}

fn fixture(root: &Path, keeps_previous: bool) -> Fixture {
    let dir = root.join(if keeps_previous {
        "fallback"
    } else {
        "compacted"
    });
    let shard_dir = dir.clone();
    let (older, newer) = run_returning(move || async move {
        let shard = builder(&shard_dir, keeps_previous).open().await.unwrap();
        let mut next = 0;
        let mut snapshots = Vec::new();
        for (session, ops) in OPS.into_iter().enumerate() {
            for _ in 0..ops {
                next += 1;
                shard
                    .submit(KvCommand::Put {
                        key: next % 37,
                        value: value(next % 37, next, 50),
                    })
                    .await
                    .unwrap()
                    .unwrap();
            }
            if session < 2 {
                snapshots.push(shard.checkpoint().await.unwrap().snapshot.unwrap().path);
            }
        }
        let expected = if keeps_previous {
            OPS[0]
        } else {
            OPS[0] + OPS[1]
        };
        assert_eq!(shard.journal().watermark(), expected);
        shard.close().await.unwrap();
        (snapshots[0].clone(), snapshots[1].clone())
    });
    Fixture {
        dir,
        keeps_previous,
        older,
        newer,
    }
}

/// Runs `test` on a fresh executor and returns what it returns.
fn run_returning<T: Send + 'static, Fut: std::future::Future<Output = T> + 'static>(
    test: impl FnOnce() -> Fut + Send + 'static,
) -> T {
    glommio::LocalExecutorBuilder::default()
        .spawn(test)
        .expect("spawn executor")
        .join()
        .expect("test panicked")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

fn set_len(path: &Path, len: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(len).unwrap();
}

fn body_bytes(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    SnapshotHeader::read_from_prefix(&bytes)
        .unwrap()
        .0
        .body_bytes
        .get()
}

/// Rewrites a snapshot's header with `change` and recomputes both
/// checksums: a well-formed file that says something else.
fn reseal_snapshot(path: &Path, change: impl Fn(&mut SnapshotHeader)) {
    let mut bytes = std::fs::read(path).unwrap();
    let (mut header, _) = SnapshotHeader::read_from_prefix(&bytes).unwrap();
    change(&mut header);
    bytes[..SNAPSHOT_HEADER_BYTES].copy_from_slice(header.as_bytes());
    let body_end = (BODY_OFFSET + header.body_bytes.get()) as usize;
    let mut hasher = header_block_hasher(&bytes[..HEADER_BLOCK_BYTES as usize]);
    hasher.update(&bytes[BODY_OFFSET as usize..body_end]);
    header.file_checksum = hasher.finalize().into();
    bytes[..SNAPSHOT_HEADER_BYTES].copy_from_slice(header.as_bytes());
    header.header_checksum = crc32fast::hash(&bytes[4..HEADER_BLOCK_BYTES as usize]).into();
    bytes[..SNAPSHOT_HEADER_BYTES].copy_from_slice(header.as_bytes());
    std::fs::write(path, bytes).unwrap();
}

/// Rewrites the identity header with `change` and recomputes its checksum.
fn reseal_identity(path: &Path, change: impl Fn(&mut IdentityHeader)) {
    let mut bytes = std::fs::read(path).unwrap();
    let (mut header, _) = IdentityHeader::read_from_prefix(&bytes).unwrap();
    change(&mut header);
    header.checksum = header.compute_checksum().into();
    bytes[..size_of::<IdentityHeader>()].copy_from_slice(header.as_bytes());
    std::fs::write(path, bytes).unwrap();
}

/// The files of one copy of a fixture.
struct Files {
    dir: PathBuf,
    older: PathBuf,
    newer: PathBuf,
    identity: PathBuf,
}

/// A kind of damage: applied to a copy, it returns the files (and byte
/// offsets, where there is one) the verdict must name.
type Apply = fn(&Files) -> Vec<(PathBuf, Option<u64>)>;

struct Case {
    name: &'static str,
    apply: Apply,
    /// The verdict when an open can fall back to the older snapshot.
    fallback: Verdict,
    /// The verdict when the journal was compacted up to the newer one.
    compacted: Verdict,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "pristine",
            apply: |_| vec![],
            fallback: Accept,
            compacted: Accept,
        },
        Case {
            name: "bit flip in the newest snapshot's header",
            apply: |f| {
                flip(&f.newer, 20);
                vec![(f.newer.clone(), Some(0))]
            },
            fallback: Accept,
            compacted: Refuse,
        },
        Case {
            name: "bit flip in the newest snapshot's magic",
            apply: |f| {
                flip(&f.newer, 5);
                vec![(f.newer.clone(), Some(4))]
            },
            fallback: Accept,
            compacted: Refuse,
        },
        Case {
            name: "bit flip in the newest snapshot's section table",
            apply: |f| {
                flip(&f.newer, SNAPSHOT_HEADER_BYTES as u64 + 44);
                vec![(f.newer.clone(), Some(0))]
            },
            fallback: Accept,
            compacted: Refuse,
        },
        Case {
            name: "bit flip in the newest snapshot's recorded file checksum",
            apply: |f| {
                flip(&f.newer, 64);
                vec![(f.newer.clone(), Some(0))]
            },
            fallback: Accept,
            compacted: Refuse,
        },
        Case {
            name: "bit flip in the newest snapshot's section",
            apply: |f| {
                flip(&f.newer, BODY_OFFSET + 100);
                vec![(f.newer.clone(), Some(BODY_OFFSET))]
            },
            fallback: Accept,
            compacted: Refuse,
        },
        Case {
            name: "bit flip in the newest snapshot's last body byte",
            apply: |f| {
                flip(&f.newer, BODY_OFFSET + body_bytes(&f.newer) - 1);
                vec![(f.newer.clone(), Some(BODY_OFFSET))]
            },
            fallback: Accept,
            compacted: Refuse,
        },
        Case {
            // No checksum covers the padding (FORMAT.md), and no reader
            // reads it: both accept.
            name: "bit flip in the newest snapshot's zero padding",
            apply: |f| {
                let at = BODY_OFFSET + body_bytes(&f.newer) + 1;
                assert!(at < std::fs::metadata(&f.newer).unwrap().len());
                flip(&f.newer, at);
                vec![]
            },
            fallback: Accept,
            compacted: Accept,
        },
        Case {
            name: "newest snapshot truncated to its header block",
            apply: |f| {
                set_len(&f.newer, HEADER_BLOCK_BYTES);
                vec![(f.newer.clone(), Some(HEADER_BLOCK_BYTES))]
            },
            fallback: Accept,
            compacted: Refuse,
        },
        Case {
            name: "newest snapshot cut inside its header block",
            apply: |f| {
                set_len(&f.newer, 100);
                vec![(f.newer.clone(), Some(100))]
            },
            fallback: Accept,
            compacted: Refuse,
        },
        Case {
            name: "newest snapshot zero-length",
            apply: |f| {
                set_len(&f.newer, 0);
                vec![(f.newer.clone(), Some(0))]
            },
            fallback: Accept,
            compacted: Refuse,
        },
        Case {
            name: "newest snapshot of another format version",
            apply: |f| {
                reseal_snapshot(&f.newer, |h| h.version = 2.into());
                vec![(f.newer.clone(), Some(8))]
            },
            fallback: Accept,
            compacted: Refuse,
        },
        Case {
            name: "newest snapshot of another domain",
            apply: |f| {
                reseal_snapshot(&f.newer, |h| h.domain = [7; 16]);
                vec![(f.newer.clone(), Some(32))]
            },
            fallback: Accept,
            compacted: Refuse,
        },
        Case {
            // An open never reads it: the newer one verifies.
            name: "older snapshot damaged",
            apply: |f| {
                flip(&f.older, BODY_OFFSET + 3);
                vec![(f.older.clone(), Some(BODY_OFFSET))]
            },
            fallback: Accept,
            compacted: Accept,
        },
        Case {
            name: "every generation damaged",
            apply: |f| {
                flip(&f.older, BODY_OFFSET + 3);
                reseal_snapshot(&f.newer, |h| h.domain = [7; 16]);
                vec![
                    (f.older.clone(), Some(BODY_OFFSET)),
                    (f.newer.clone(), Some(32)),
                ]
            },
            fallback: Refuse,
            compacted: Refuse,
        },
        Case {
            name: "every generation gone",
            apply: |f| {
                std::fs::remove_file(&f.older).unwrap();
                std::fs::remove_file(&f.newer).unwrap();
                vec![(f.dir.join("snapshots"), None)]
            },
            fallback: Refuse,
            compacted: Refuse,
        },
        Case {
            // An open removes it; it is no generation.
            name: "a leftover temporary snapshot",
            apply: |f| {
                let temp = f
                    .dir
                    .join("snapshots/snapshot-00000000000000000300.snap.tmp");
                std::fs::write(temp, b"half written").unwrap();
                vec![]
            },
            fallback: Accept,
            compacted: Accept,
        },
        Case {
            name: "identity missing beside data",
            apply: |f| {
                std::fs::remove_file(&f.identity).unwrap();
                vec![(f.identity.clone(), None), (f.older.clone(), None)]
            },
            fallback: Refuse,
            compacted: Refuse,
        },
        Case {
            name: "identity flipped",
            apply: |f| {
                flip(&f.identity, 20);
                vec![(f.identity.clone(), Some(0))]
            },
            fallback: Refuse,
            compacted: Refuse,
        },
        Case {
            name: "identity magic flipped",
            apply: |f| {
                flip(&f.identity, 4);
                vec![(f.identity.clone(), Some(4))]
            },
            fallback: Refuse,
            compacted: Refuse,
        },
        Case {
            name: "identity truncated",
            apply: |f| {
                set_len(&f.identity, 10);
                vec![(f.identity.clone(), Some(10))]
            },
            fallback: Refuse,
            compacted: Refuse,
        },
        Case {
            name: "identity zero-length",
            apply: |f| {
                set_len(&f.identity, 0);
                vec![(f.identity.clone(), Some(0))]
            },
            fallback: Refuse,
            compacted: Refuse,
        },
        Case {
            name: "identity of another version",
            apply: |f| {
                reseal_identity(&f.identity, |h| h.version = 2.into());
                vec![(f.identity.clone(), Some(8))]
            },
            fallback: Refuse,
            compacted: Refuse,
        },
        Case {
            // An unfinished cold restore's: its half work is not a shard.
            name: "the marker of an unfinished cold restore",
            apply: |f| {
                let marker = f.dir.join(RESTORE_MARKER_NAME);
                std::fs::write(&marker, b"").unwrap();
                vec![(marker, None)]
            },
            fallback: Refuse,
            compacted: Refuse,
        },
        Case {
            // The zeros after the header are not checked (FORMAT.md).
            name: "identity with garbage after its header",
            apply: |f| {
                flip(&f.identity, 100);
                vec![]
            },
            fallback: Accept,
            compacted: Accept,
        },
    ]
}

/// `snapshot verify --json` on `dir`: the exit code and the refusal; and
/// the exit code of `snapshot verify --strict`.
#[cfg(feature = "cli")]
fn cli_verdict(dir: &Path) -> Option<(i32, Option<String>, i32)> {
    let verify = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ringstore"))
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .output()
            .expect("run ringstore")
    };
    let output = verify(&["--json", "snapshot", "verify"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let refusal = report["shards"][0]["refusal"].as_str().map(str::to_owned);
    let strict = verify(&["snapshot", "verify", "--strict"]);
    Some((
        output.status.code().unwrap(),
        refusal,
        strict.status.code().unwrap(),
    ))
}

#[cfg(not(feature = "cli"))]
fn cli_verdict(_dir: &Path) -> Option<(i32, Option<String>, i32)> {
    None
}

/// Opens the shard and closes it again: the skipped snapshots, or the
/// refusal. A lock held for a moment by another test's child process
/// (between its fork and exec) is waited out.
async fn reopen(dir: &Path, keeps_previous: bool) -> Result<Vec<SkippedSnapshot>, Error> {
    for _ in 0..500 {
        match builder(dir, keeps_previous).open().await {
            Err(Error::DirLocked { .. }) => {
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e),
            Ok(shard) => {
                let skipped = shard.recovery_report().skipped_snapshots.clone();
                shard.close().await.unwrap();
                return Ok(skipped);
            }
        }
    }
    panic!("{} stayed locked", dir.display());
}

fn skipped_text(skipped: &[SkippedSnapshot]) -> Vec<(PathBuf, String)> {
    skipped
        .iter()
        .map(|s| (s.path.clone(), s.reason.to_string()))
        .collect()
}

/// Where a message names `path` (at `offset`).
fn names(message: &str, path: &Path, offset: Option<u64>) -> bool {
    match offset {
        Some(offset) => message.contains(&format!("{} at byte offset {offset}", path.display())),
        None => message.contains(&path.display().to_string()),
    }
}

/// Runs every case on a copy of `fixture` and compares the verdicts.
async fn check_agreement(fixture: &Fixture, root: &Path) {
    for (index, case) in cases().into_iter().enumerate() {
        let what = format!(
            "{} ({})",
            case.name,
            if fixture.keeps_previous {
                "journal holds the ops above the older snapshot"
            } else {
                "journal compacted up to the newest snapshot"
            }
        );
        let dir = root.join(format!("case-{index}"));
        copy_dir(&fixture.dir, &dir);
        let files = Files {
            older: dir
                .join("snapshots")
                .join(fixture.older.file_name().unwrap()),
            newer: dir
                .join("snapshots")
                .join(fixture.newer.file_name().unwrap()),
            identity: dir.join(IDENTITY_FILE_NAME),
            dir: dir.clone(),
        };
        let named = (case.apply)(&files);
        let expected = if fixture.keeps_previous {
            case.fallback
        } else {
            case.compacted
        };

        // Read-only first: the library verdict, then the tool.
        let library: ShardSnapshotsReport = inspect_shard(&dir, Check::Full, &mut |_| {}).unwrap();
        let cli = cli_verdict(&dir);
        let reopened = reopen(&dir, fixture.keeps_previous).await;

        let verdict = |refused: bool| if refused { Refuse } else { Accept };
        assert_eq!(verdict(reopened.is_err()), expected, "{what}: reopen");
        assert_eq!(
            verdict(library.open_refused()),
            expected,
            "{what}: library verdict {:?}",
            library.refusal.as_ref().map(ToString::to_string)
        );
        if let Some((exit, refusal, strict_exit)) = &cli {
            assert_eq!(*exit, i32::from(expected == Refuse), "{what}: exit code");
            assert_eq!(
                refusal.as_deref(),
                library.refusal.as_ref().map(ToString::to_string).as_deref(),
                "{what}: the tool's refusal"
            );
            assert_eq!(
                *strict_exit,
                i32::from(library.damage_found()),
                "{what}: --strict fails on any damage"
            );
        }
        match &reopened {
            Err(error) => {
                // One message, naming every file tried and the offsets.
                let message = error.to_string();
                assert_eq!(
                    Some(message.clone()),
                    library.refusal.as_ref().map(ToString::to_string),
                    "{what}"
                );
                assert!(
                    matches!(
                        error,
                        Error::Identity(_)
                            | Error::SnapshotBehindJournal { .. }
                            | Error::RestoreIncomplete { .. }
                    ),
                    "{what}: {message}"
                );
                for (path, offset) in &named {
                    assert!(names(&message, path, *offset), "{what}: {message}");
                }
                if let Error::SnapshotBehindJournal {
                    journal_watermark, ..
                } = error
                {
                    assert!(
                        message.contains(&format!("compacted up to op {journal_watermark}")),
                        "{what}: {message}"
                    );
                    assert_eq!(library.journal_watermark, Some(*journal_watermark));
                }
            }
            Ok(skipped) => {
                // The same files skipped, for the same reasons.
                assert_eq!(
                    skipped_text(skipped),
                    skipped_text(&library.skipped),
                    "{what}"
                );
                let damage: Vec<String> = library
                    .snapshots
                    .snapshots
                    .iter()
                    .flat_map(|s| s.damage.iter().map(ToString::to_string))
                    .collect();
                assert_eq!(damage.is_empty(), named.is_empty(), "{what}: {damage:?}");
                for (path, offset) in &named {
                    assert!(
                        damage.iter().any(|d| names(d, path, *offset)),
                        "{what}: {damage:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn verify_and_reopen_agree_when_the_journal_holds_the_ops_above_the_older_snapshot() {
    let tmp = temp_dir();
    let fixture = fixture(tmp.path(), true);
    let root = tmp.path().join("cases");
    run(move || async move { check_agreement(&fixture, &root).await });
}

#[test]
fn verify_and_reopen_agree_when_the_journal_was_compacted_up_to_the_newest_snapshot() {
    let tmp = temp_dir();
    let fixture = fixture(tmp.path(), false);
    let root = tmp.path().join("cases");
    run(move || async move { check_agreement(&fixture, &root).await });
}

#[test]
fn a_new_shard_directory_without_identity_or_data_is_accepted_by_both() {
    let tmp = temp_dir();
    let dir = tmp.path().join("new");
    // What makes it a shard directory to the tool; nothing in it.
    std::fs::create_dir_all(dir.join("journal")).unwrap();
    std::fs::create_dir_all(dir.join("snapshots")).unwrap();
    let library = inspect_shard(&dir, Check::Full, &mut |_| {}).unwrap();
    assert!(!library.open_refused(), "{:?}", library.refusal);
    if let Some((exit, refusal, strict_exit)) = cli_verdict(&dir) {
        assert_eq!((exit, refusal, strict_exit), (0, None, 0));
    }
    run(move || async move {
        let shard = builder(&dir, true).open().await.unwrap();
        assert!(shard.recovery_report().domain_created);
        shard.close().await.unwrap();
    });
}

/// A snapshot that cannot be read (a directory stands under its name: the
/// read fails, as on an unreadable disk): `verify` counts it as one an open
/// passes over, as the open does, rather than failing with an I/O error.
/// Both accept the shard when the journal reaches the older snapshot and
/// refuse it when it was compacted up to the unreadable one, and both skip
/// exactly that file.
#[test]
fn an_unreadable_snapshot_gets_the_same_verdict_from_verify_and_reopen() {
    let tmp = temp_dir();
    for keeps_previous in [true, false] {
        let fixture = fixture(tmp.path(), keeps_previous);
        let dir = tmp.path().join(format!("unreadable-{keeps_previous}"));
        copy_dir(&fixture.dir, &dir);
        let newer = dir
            .join("snapshots")
            .join(fixture.newer.file_name().unwrap());
        std::fs::remove_file(&newer).unwrap();
        std::fs::create_dir(&newer).unwrap();
        let library = inspect_shard(&dir, Check::Full, &mut |_| {}).unwrap();
        let unreadable = library
            .snapshots
            .snapshots
            .iter()
            .find(|s| s.path == newer)
            .expect("listed");
        assert!(!unreadable.is_intact(), "{unreadable:?}");
        assert!(unreadable.read_failure.is_some(), "{unreadable:?}");
        assert_eq!(library.open_refused(), !keeps_previous, "{library:?}");
        if let Some((exit, _, strict_exit)) = cli_verdict(&dir) {
            assert_eq!(exit, i32::from(!keeps_previous), "exit code");
            assert_eq!(strict_exit, 1, "--strict fails on it");
        }
        let skipped_by_verify: Vec<PathBuf> =
            library.skipped.iter().map(|s| s.path.clone()).collect();
        assert_eq!(skipped_by_verify, vec![newer.clone()]);
        let reopened = run_returning(move || async move {
            reopen(&dir, keeps_previous)
                .await
                .map(|skipped| skipped.into_iter().map(|s| s.path).collect::<Vec<_>>())
                .map_err(|e| e.to_string())
        });
        match reopened {
            Ok(skipped) => {
                assert!(keeps_previous, "opened a compacted shard: {skipped:?}");
                assert_eq!(skipped, vec![newer]);
            }
            Err(message) => {
                assert!(!keeps_previous, "refused: {message}");
                assert!(message.contains(&newer.display().to_string()), "{message}");
            }
        }
    }
}
