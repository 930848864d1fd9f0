//! Pins what snapshots promise under faults: every persist stage failing
//! (through the fault-injecting backend) leaves a loadable older snapshot
//! and the acknowledged state; a damaged newest snapshot falls back to the
//! previous generation (and says why), or is a typed error when the journal
//! no longer holds the ops above it; snapshots of unknown sections or
//! versions are refused; the domain identity is checked; a failed journal
//! write poisons the shard without losing an acknowledged command; and a
//! reset keeps op numbers and epochs increasing, with a power cut at every
//! step.
mod common;
use common::*;
use ringstore::machine::{FrozenSection, RestoreError, SectionSet};
use ringstore::mux::{freeze_member, restore_member, Member};
use ringstore::snapshot::{SnapshotFault, SnapshotStore};
use ringstore::{CheckpointPolicy, Error, OpId, PersistStage, ResetError, Shard, StateMachine};
use ringstore_journal::storage::MemStorage;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn mem_builder(storage: &MemStorage, dir: &str) -> ringstore::ShardBuilder<Kv, MemStorage> {
    Shard::<Kv>::builder(dir)
        .storage(storage.clone())
        .journal(|j| small_journal(j, 4096))
        .checkpoint_policy(CheckpointPolicy {
            automatic: false,
            ..CheckpointPolicy::default()
        })
}

fn disk_builder(dir: &Path) -> ringstore::ShardBuilder<Kv> {
    Shard::<Kv>::builder(dir)
        .journal(|j| small_journal(j, 4096))
        .checkpoint_policy(CheckpointPolicy {
            automatic: false,
            ..CheckpointPolicy::default()
        })
}

/// Submits `count` puts numbered from `first`, mirrored into `model`.
async fn put_many<S: ringstore_journal::storage::Storage>(
    shard: &Shard<Kv, S>,
    model: &mut BTreeMap<u64, Vec<u8>>,
    first: u64,
    count: u64,
) {
    for n in first..first + count {
        let command = KvCommand::Put {
            key: n % 37,
            value: value(n % 37, n, 50),
        };
        shard.submit(command.clone()).await.unwrap().unwrap();
        apply_model(model, &command);
    }
}

#[test]
fn every_persist_stage_failing_leaves_an_older_snapshot_and_the_acknowledged_state() {
    run(|| async {
        for stage in [
            PersistStage::Create,
            PersistStage::Write,
            PersistStage::Sync,
            PersistStage::Rename,
            PersistStage::DirSync,
        ] {
            let storage = MemStorage::new();
            let shard = mem_builder(&storage, "/shard").open().await.unwrap();
            let mut model = BTreeMap::new();
            put_many(&shard, &mut model, 0, 50).await;
            let first = shard.checkpoint().await.unwrap().snapshot.unwrap();
            put_many(&shard, &mut model, 50, 50).await;
            let eio = libc::EIO;
            match stage {
                PersistStage::Create => storage.fail_next_creates(1, eio),
                PersistStage::Write => storage.fail_next_writes(1, eio),
                PersistStage::Sync => storage.fail_next_syncs(1, eio),
                PersistStage::Rename => storage.fail_next_renames(1, eio),
                PersistStage::DirSync => storage.fail_next_dir_syncs(1, eio),
            }
            let error = shard.checkpoint().await.unwrap_err();
            match &error {
                Error::Persist { stage: failed, .. } => assert_eq!(*failed, stage),
                other => panic!("{stage}: wrong error {other}"),
            }
            let message = error.to_string();
            if stage.retry_is_safe() {
                assert!(message.contains("retrying is safe"), "{message}");
                // The shard goes on.
                put_many(&shard, &mut model, 100, 5).await;
            } else {
                assert!(message.contains("do not retry"), "{message}");
                assert!(matches!(
                    shard.submit(KvCommand::Delete { key: 1 }).await,
                    Err(Error::Poisoned { .. })
                ));
            }
            // Power loss, then restart.
            drop(shard);
            storage.crash();
            let shard = mem_builder(&storage, "/shard").open().await.unwrap();
            let report = shard.recovery_report();
            assert_eq!(
                report.snapshot.as_ref().map(|s| s.watermark),
                Some(first.watermark),
                "{stage}: the older snapshot is loaded"
            );
            assert_eq!(shard.read(|kv| kv.values()), model, "{stage}");
            let leftovers: Vec<_> = storage
                .paths()
                .into_iter()
                .filter(|p| p.to_string_lossy().ends_with(".tmp"))
                .collect();
            assert!(leftovers.is_empty(), "{stage}: {leftovers:?}");
            // And a checkpoint works again.
            shard.checkpoint().await.unwrap();
            shard.close().await.unwrap();
        }
    });
}

/// A named way to damage a file.
type Damage<'a> = (&'static str, Box<dyn Fn() + 'a>);

fn newest_snapshot(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.pop().expect("a snapshot")
}

fn damage(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], offset).unwrap();
    file.sync_all().unwrap();
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_previous_generation() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let shard = disk_builder(&path).open().await.unwrap();
        let mut model = BTreeMap::new();
        put_many(&shard, &mut model, 0, 100).await;
        let previous = shard.checkpoint().await.unwrap().snapshot.unwrap();
        put_many(&shard, &mut model, 100, 100).await;
        let newest = shard.checkpoint().await.unwrap().snapshot.unwrap();
        put_many(&shard, &mut model, 200, 10).await;
        // The journal still holds the ops above the previous snapshot.
        assert_eq!(shard.journal().watermark(), previous.watermark);
        shard.close().await.unwrap();

        // A flipped bit in the body, then a torn header, then a truncation:
        // each time the previous generation is loaded and the journal
        // replayed from it.
        let file = newest_snapshot(&path);
        assert_eq!(file, newest.path);
        let pristine = std::fs::read(&file).unwrap();
        let damages: [Damage; 3] = [
            (
                "bit flip in a section",
                Box::new(|| damage(&file, 4096 + 100)),
            ),
            ("bit flip in the header", Box::new(|| damage(&file, 20))),
            (
                "truncated",
                Box::new(|| {
                    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
                    f.set_len(4096).unwrap();
                }),
            ),
        ];
        for (what, apply_damage) in damages {
            std::fs::write(&file, &pristine).unwrap();
            apply_damage();
            let shard = disk_builder(&path).open().await.unwrap();
            let report = shard.recovery_report();
            assert_eq!(
                report.snapshot.as_ref().unwrap().watermark,
                previous.watermark,
                "{what}"
            );
            assert_eq!(report.skipped_snapshots.len(), 1, "{what}");
            let skipped = &report.skipped_snapshots[0];
            assert_eq!(skipped.path, file);
            let Some(damage) = skipped.reason.damage() else {
                panic!("{what}: not damage: {}", skipped.reason);
            };
            assert_eq!(damage.path, file, "{what}");
            match (&damage.fault, damage.offset, what) {
                (SnapshotFault::SectionChecksum { .. }, 4096, "bit flip in a section") => {}
                (SnapshotFault::HeaderChecksum { .. }, 0, "bit flip in the header") => {}
                (SnapshotFault::Truncated { .. }, 4096, "truncated") => {}
                (_, _, _) => panic!("{what}: wrong reason {}", skipped.reason),
            }
            assert_eq!(shard.read(|kv| kv.values()), model, "{what}");
            assert_eq!(shard.applied().op, 210);
            // Close without checkpointing: the damaged file stays for the
            // next case.
            shard.close().await.unwrap();
        }
    });
}

#[test]
fn a_damaged_newest_snapshot_over_a_compacted_journal_is_a_typed_error() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let builder = || disk_builder(&path).journal_keeps_previous_snapshot(false);
        let shard = builder().open().await.unwrap();
        let mut model = BTreeMap::new();
        put_many(&shard, &mut model, 0, 100).await;
        let previous = shard.checkpoint().await.unwrap().snapshot.unwrap();
        put_many(&shard, &mut model, 100, 100).await;
        let newest = shard.checkpoint().await.unwrap().snapshot.unwrap();
        assert_eq!(shard.journal().watermark(), newest.watermark);
        shard.close().await.unwrap();
        damage(&newest.path, 4096 + 7);
        match builder().open().await {
            Err(
                ref error @ Error::SnapshotBehindJournal {
                    snapshot_op,
                    journal_watermark,
                    ref skipped,
                    ..
                },
            ) => {
                assert_eq!(snapshot_op, previous.watermark);
                assert_eq!(journal_watermark, newest.watermark);
                assert_eq!(skipped.len(), 1);
                assert_eq!(skipped[0].path, newest.path);
                let message = error.to_string();
                assert!(
                    message.contains(&format!("{} at byte offset 4096", newest.path.display())),
                    "{message}"
                );
                assert!(
                    message.contains(&previous.path.display().to_string()),
                    "{message}"
                );
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("opened with ops missing"),
        }
    });
}

/// [`Kv`] written as section version 2, which `Kv` does not read.
#[derive(Debug, Clone, Default)]
struct KvV2(Kv);

impl StateMachine for KvV2 {
    type Command = KvCommand;
    type Reply = OpId;
    type Rejection = NotFound;
    fn apply(&mut self, at: OpId, command: KvCommand) -> Result<OpId, NotFound> {
        self.0.apply(at, command)
    }
    fn freeze(&self) -> Vec<FrozenSection> {
        let mut sections = StateMachine::freeze(&self.0);
        sections[0].version = 2;
        sections
    }
    fn restore(sections: &mut SectionSet) -> Result<Self, RestoreError> {
        let (_, bytes) = sections.take(Kv::SECTION, 2..=2)?;
        Ok(KvV2(<Kv as Member>::restore(1, &bytes)?))
    }
}

/// [`Kv`] plus a section no `Kv` build knows.
#[derive(Debug, Clone, Default)]
struct KvPlus(Kv, Kv);

struct Extra;
impl StateMachine for KvPlus {
    type Command = KvCommand;
    type Reply = OpId;
    type Rejection = NotFound;
    fn apply(&mut self, at: OpId, command: KvCommand) -> Result<OpId, NotFound> {
        self.0.apply(at, command)
    }
    fn freeze(&self) -> Vec<FrozenSection> {
        let mut extra = freeze_member(&self.1);
        extra.name = "audit-log";
        let _ = Extra;
        vec![freeze_member(&self.0), extra]
    }
    fn restore(sections: &mut SectionSet) -> Result<Self, RestoreError> {
        Ok(KvPlus(restore_member(sections)?, Kv::default()))
    }
}

#[test]
fn snapshots_with_unknown_sections_or_versions_are_refused() {
    let dir = temp_dir();
    let root = dir.path().to_path_buf();
    run(move || async move {
        // Version 2 of the "kv" section.
        let path = root.join("v2");
        let shard = Shard::<KvV2>::builder(&path).open().await.unwrap();
        shard
            .submit(KvCommand::Put {
                key: 1,
                value: vec![1],
            })
            .await
            .unwrap()
            .unwrap();
        shard.checkpoint().await.unwrap();
        shard.close().await.unwrap();
        match Shard::<Kv>::builder(&path).open().await {
            Err(Error::Restore { source, .. }) => assert!(
                matches!(
                    &*source,
                    RestoreError::UnsupportedVersion { name, version: 2, .. } if name == "kv"
                ),
                "{source}"
            ),
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("restored an unsupported version"),
        }

        // An extra section.
        let path = root.join("extra");
        let shard = Shard::<KvPlus>::builder(&path).open().await.unwrap();
        shard
            .submit(KvCommand::Put {
                key: 1,
                value: vec![1],
            })
            .await
            .unwrap()
            .unwrap();
        shard.checkpoint().await.unwrap();
        shard.close().await.unwrap();
        match Shard::<Kv>::builder(&path).open().await {
            Err(Error::Restore { source, .. }) => assert!(
                matches!(&*source, RestoreError::UnknownSection { name, .. } if name == "audit-log"),
                "{source}"
            ),
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("restored with an unknown section"),
        }
    });
}

#[test]
fn the_domain_identity_is_kept_and_checked() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let shard = disk_builder(&path).open().await.unwrap();
        let domain = shard.domain();
        let mut model = BTreeMap::new();
        put_many(&shard, &mut model, 0, 5).await;
        shard.close().await.unwrap();
        let shard = disk_builder(&path).open().await.unwrap();
        assert_eq!(shard.domain(), domain);
        assert!(!shard.recovery_report().domain_created);
        shard.close().await.unwrap();

        let identity = path.join("identity");
        let pristine = std::fs::read(&identity).unwrap();
        damage(&identity, 20);
        match disk_builder(&path).open().await {
            Err(Error::Identity(damage)) => {
                assert_eq!(damage.path, identity);
                assert_eq!(damage.offset, Some(0), "{damage}");
                assert!(damage.to_string().contains("damaged"), "{damage}");
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("opened with a damaged identity"),
        }
        std::fs::remove_file(&identity).unwrap();
        match disk_builder(&path).open().await {
            Err(Error::Identity(damage)) => {
                assert!(damage.to_string().contains("missing"), "{damage}")
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("opened data without an identity"),
        }
        std::fs::write(&identity, pristine).unwrap();
        let shard = disk_builder(&path).open().await.unwrap();
        assert_eq!(shard.read(|kv| kv.values()), model);
        shard.close().await.unwrap();
    });
}

#[test]
fn a_power_cut_at_every_step_of_a_first_open_leaves_a_shard_that_opens() {
    // The first open creates the shard directory, its identity (flag
    // clear), the journal, then records the journal in the identity. A cut
    // anywhere must leave a directory the next open accepts (never one it
    // refuses for a missing journal), and what the next open acknowledges
    // survives the next crash, directory entries included.
    run(|| async {
        let mut cut_at = 1;
        loop {
            let storage = MemStorage::with_faults(
                cut_at,
                ringstore_journal::storage::FaultConfig {
                    dir_undo: true,
                    ..ringstore_journal::storage::FaultConfig::none()
                },
            );
            storage.cut_power_after_ops(cut_at);
            let first = mem_builder(&storage, "/data/shard-0").open().await;
            let finished = !storage.power_is_cut();
            drop(first);
            storage.crash();
            let shard = match mem_builder(&storage, "/data/shard-0").open().await {
                Ok(shard) => shard,
                Err(e) => panic!("cut at op {cut_at}: the next open refused: {e}"),
            };
            let mut model = BTreeMap::new();
            put_many(&shard, &mut model, 0, 3).await;
            drop(shard);
            storage.crash();
            let shard = mem_builder(&storage, "/data/shard-0").open().await.unwrap();
            assert_eq!(shard.read(|kv| kv.values()), model, "cut at op {cut_at}");
            shard.close().await.unwrap();
            if finished {
                break;
            }
            cut_at += 1;
            assert!(cut_at < 1_000, "the first open never finished");
        }
        assert!(cut_at > 10, "only {cut_at} steps: the cut missed the open");
    });
}

#[test]
fn reset_keeps_op_numbers_and_epochs_increasing() {
    let dir = temp_dir();
    let root = dir.path().to_path_buf();
    run(move || async move {
        // The source shard and its snapshot.
        let source_dir = root.join("source");
        let source = disk_builder(&source_dir).open().await.unwrap();
        let mut snapshot_model = BTreeMap::new();
        put_many(&source, &mut snapshot_model, 0, 100).await;
        let snapshot = source.checkpoint().await.unwrap().snapshot.unwrap();
        let exported = root.join(snapshot.path.file_name().unwrap());
        std::fs::copy(&snapshot.path, &exported).unwrap();
        let mut later = snapshot_model.clone();
        put_many(&source, &mut later, 100, 50).await;
        let seen = source.applied();
        source.close().await.unwrap();

        // A new, empty shard joins the snapshot's domain.
        let fresh_dir = root.join("fresh");
        let fresh = disk_builder(&fresh_dir).open().await.unwrap();
        let outcome = fresh.reset_to(&exported).await.unwrap();
        assert_eq!(fresh.domain(), snapshot.domain);
        assert_eq!(outcome.floor.op, snapshot.watermark + 1);
        assert!(outcome.floor.epoch > snapshot.epoch);
        assert_eq!(fresh.read(|kv| kv.values()), snapshot_model);
        let at = fresh
            .submit(KvCommand::Put {
                key: 1000,
                value: vec![1],
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(at.op, outcome.floor.op + 1);
        assert!(at.epoch >= outcome.floor.epoch);
        fresh.close().await.unwrap();
        let fresh = disk_builder(&fresh_dir).open().await.unwrap();
        assert_eq!(fresh.domain(), snapshot.domain);
        assert_eq!(fresh.applied().op, outcome.floor.op + 1);
        fresh.close().await.unwrap();

        // The source shard itself, reset to its older snapshot: state rolls
        // back, numbers go on past everything it had seen.
        let source = disk_builder(&source_dir).open().await.unwrap();
        let outcome = source.reset_to(&exported).await.unwrap();
        assert_eq!(outcome.floor.op, seen.op + 1);
        assert!(outcome.floor.epoch > seen.epoch);
        assert_eq!(source.read(|kv| kv.values()), snapshot_model);
        let at = source
            .submit(KvCommand::Delete { key: 1 })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(at.op, seen.op + 2);
        source.close().await.unwrap();
        let source = disk_builder(&source_dir).open().await.unwrap();
        assert_eq!(source.applied().op, seen.op + 2);
        let mut expected = snapshot_model.clone();
        expected.remove(&1);
        assert_eq!(source.read(|kv| kv.values()), expected);
        source.close().await.unwrap();

        // A shard with data of another domain refuses.
        let other_dir = root.join("other");
        let other = disk_builder(&other_dir).open().await.unwrap();
        put_many(&other, &mut BTreeMap::new(), 0, 3).await;
        match other.reset_to(&exported).await {
            Err(ResetError::DomainMismatch { .. }) => {}
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("reset across domains"),
        }
        other.close().await.unwrap();
    });
}

#[test]
fn a_power_cut_at_every_step_of_a_reset_keeps_numbers_increasing() {
    run(|| async {
        let mut completed = false;
        for cut in 1.. {
            let storage = MemStorage::new();
            let shard = mem_builder(&storage, "/shard").open().await.unwrap();
            let mut model = BTreeMap::new();
            put_many(&shard, &mut model, 0, 30).await;
            let snapshot = shard.checkpoint().await.unwrap().snapshot.unwrap();
            let snapshot_model = model.clone();
            put_many(&shard, &mut model, 30, 20).await;
            let seen = shard.applied();
            storage.cut_power_after_ops(cut);
            let result = shard.reset_to(&snapshot.path).await;
            let cut_happened = storage.power_is_cut();
            drop(shard);
            storage.crash();
            let shard = mem_builder(&storage, "/shard").open().await.unwrap();
            let recovered = shard.applied();
            if recovered.op <= seen.op {
                // The reset did not take: the state before it.
                assert!(result.is_err(), "cut {cut}: an acknowledged reset was lost");
                assert_eq!(recovered, seen, "cut {cut}");
                assert_eq!(shard.read(|kv| kv.values()), model, "cut {cut}");
            } else {
                assert!(
                    recovered.op > seen.op && recovered.epoch > seen.epoch,
                    "cut {cut}"
                );
                assert_eq!(shard.read(|kv| kv.values()), snapshot_model, "cut {cut}");
            }
            let at = shard
                .submit(KvCommand::Delete { key: 0 })
                .await
                .unwrap()
                .unwrap();
            assert_eq!(at.op, recovered.op + 1, "cut {cut}");
            assert!(at.epoch >= recovered.epoch, "cut {cut}");
            shard.close().await.unwrap();
            if !cut_happened {
                result.unwrap();
                completed = true;
                break;
            }
        }
        assert!(completed);
    });
}

/// Another shard's snapshot, as a reset that joins its domain takes it.
struct Foreign {
    /// The other shard's domain.
    domain: uuid::Uuid,
    /// Its state.
    model: BTreeMap<u64, Vec<u8>>,
    /// The snapshot.
    snapshot: ringstore::snapshot::SnapshotMeta,
    /// The snapshot file's bytes.
    bytes: Vec<u8>,
}

/// A snapshot of a shard of another domain after 30 puts; `large` adds
/// 20 keys of 1,000 bytes (a state larger than the identity's block).
async fn foreign_snapshot(large: bool) -> Foreign {
    let storage = MemStorage::new();
    let source = mem_builder(&storage, "/source").open().await.unwrap();
    let mut model = BTreeMap::new();
    put_many(&source, &mut model, 0, 30).await;
    if large {
        for key in 100..120 {
            let command = KvCommand::Put {
                key,
                value: vec![key as u8; 1000],
            };
            source.submit(command.clone()).await.unwrap().unwrap();
            apply_model(&mut model, &command);
        }
    }
    let snapshot = source.checkpoint().await.unwrap().snapshot.unwrap();
    let bytes = storage.file_bytes(&snapshot.path).unwrap();
    let domain = source.domain();
    source.close().await.unwrap();
    Foreign {
        domain,
        model,
        snapshot,
        bytes,
    }
}

/// A fresh shard reset to another domain's snapshot (a cold restore's
/// join), cut by a power loss after each of its storage operations in
/// turn: after the crash the shard is either the fresh shard it was (its
/// own domain, nothing applied) or the joined one (the snapshot's domain
/// and state, numbered above the snapshot). Never an empty shard of the
/// snapshot's domain numbering from op 1: its ops would take numbers of
/// that domain's history, and a later cold restore would prefer the
/// history's keys to them without a word.
#[test]
fn a_power_cut_at_every_step_of_a_reset_that_joins_a_domain_leaves_the_old_or_the_joined_shard() {
    run(|| async {
        let Foreign {
            domain: joined_domain,
            model,
            snapshot,
            bytes: snapshot_bytes,
        } = foreign_snapshot(false).await;
        // Named as the store names it (the header's op is checked against it).
        let incoming = &Path::new("/incoming").join(snapshot.path.file_name().unwrap());
        let mut completed = false;
        let (mut cuts_leaving_a_snapshot, mut cuts_joined) = (0u32, 0u32);
        for cut in 1.. {
            let storage = MemStorage::new();
            storage.insert_file(incoming, snapshot_bytes.clone());
            let shard = mem_builder(&storage, "/shard").open().await.unwrap();
            let own_domain = shard.domain();
            storage.cut_power_after_ops(cut);
            let result = shard.reset_to(incoming).await;
            let cut_happened = storage.power_is_cut();
            drop(shard);
            storage.crash();
            let shard = mem_builder(&storage, "/shard").open().await.unwrap();
            let recovered = shard.applied();
            if shard.domain() == own_domain {
                assert!(result.is_err(), "cut {cut}: an acknowledged reset was lost");
                assert_eq!(recovered.op, 0, "cut {cut}");
                let left = storage
                    .paths()
                    .iter()
                    .any(|path| path.starts_with("/shard/snapshots"));
                cuts_leaving_a_snapshot += u32::from(left);
                assert!(shard.read(|kv| kv.values()).is_empty(), "cut {cut}");
                // The reset can be run again: a snapshot of the domain
                // left by the cut one does not make the shard hold data.
                storage.insert_file(incoming, snapshot_bytes.clone());
                let again = shard.reset_to(incoming).await.unwrap();
                assert_eq!(shard.domain(), joined_domain, "cut {cut}");
                assert!(again.floor.op > snapshot.watermark, "cut {cut}");
            } else {
                cuts_joined += 1;
                assert_eq!(shard.domain(), joined_domain, "cut {cut}");
                assert!(
                    recovered.op > snapshot.watermark,
                    "cut {cut}: joined {joined_domain} numbering from op {} (the snapshot is \
                     at op {})",
                    recovered.op,
                    snapshot.watermark
                );
                assert_eq!(shard.read(|kv| kv.values()), model, "cut {cut}");
            }
            let floor = shard.applied();
            let at = shard
                .submit(KvCommand::Delete { key: 0 })
                .await
                .unwrap()
                .unwrap();
            assert_eq!(at.op, floor.op + 1, "cut {cut}");
            shard.close().await.unwrap();
            if !cut_happened {
                result.unwrap();
                completed = true;
                break;
            }
        }
        assert!(completed);
        // Both outcomes were reached, and a reset cut after its snapshot
        // was written was run again over it.
        assert!(cuts_leaving_a_snapshot > 0 && cuts_joined > 0);
    });
}

/// A simulated disk whose calls yield at random (seeded), holding the
/// snapshot a reset is given at `incoming`.
fn yielding_disk(seed: u64, incoming: &Path, snapshot: &[u8]) -> MemStorage {
    let faults = ringstore_journal::storage::FaultConfig {
        yield_rate: 0.5,
        ..ringstore_journal::storage::FaultConfig::none()
    };
    let storage = MemStorage::with_faults(seed, faults);
    storage.insert_file(incoming, snapshot.to_vec());
    storage
}

/// Polls `future` up to `polls` times, letting the tasks it spawned run in
/// between; its output if it finished.
async fn poll_up_to<F: std::future::Future + Unpin>(
    future: &mut F,
    polls: u32,
) -> Option<F::Output> {
    for _ in 0..polls {
        if let Some(output) = futures_lite::future::poll_once(&mut *future).await {
            return Some(output);
        }
        glommio::yield_if_needed().await;
        futures_lite::future::yield_now().await;
    }
    None
}

/// A reset that joins a domain, dropped by its caller after each number of
/// polls in turn (the disk yielding at random, so the drop lands between
/// any two of its storage calls): the shard is then either untouched and
/// still serving (whatever it acknowledges after is kept), or poisoned
/// (`ResetError::Abandoned`); a reopen gives the shard as it was or the
/// joined one, never a mix.
#[test]
fn a_reset_dropped_midway_leaves_the_shard_serving_as_it_was_or_poisoned() {
    run(|| async {
        let Foreign {
            domain: joined_domain,
            model,
            snapshot,
            bytes: snapshot_bytes,
        } = foreign_snapshot(false).await;
        let incoming = &Path::new("/incoming").join(snapshot.path.file_name().unwrap());
        let (mut untouched, mut poisoned, mut finished) = (0u32, 0u32, false);
        for polls in 1..400u32 {
            let storage = yielding_disk(u64::from(polls), incoming, &snapshot_bytes);
            let shard = mem_builder(&storage, "/shard").open().await.unwrap();
            let own_domain = shard.domain();
            let mut reset = Box::pin(shard.reset_to(incoming));
            let outcome = poll_up_to(&mut reset, polls).await;
            drop(reset);
            if let Some(outcome) = outcome {
                outcome.unwrap();
                finished = true;
                shard.close().await.unwrap();
                break;
            }
            let mut acked = None;
            match shard.submit(KvCommand::Delete { key: 0 }).await {
                Err(Error::Poisoned { .. }) => poisoned += 1,
                Ok(applied) => {
                    untouched += 1;
                    assert_eq!(shard.domain(), own_domain, "polls {polls}");
                    acked = Some(applied);
                }
                Err(e) => panic!("polls {polls}: {e}"),
            }
            drop(shard);
            storage.crash();
            let shard = mem_builder(&storage, "/shard").open().await.unwrap();
            if shard.domain() == own_domain {
                // Whatever the untouched shard acknowledged is there.
                let expected = u64::from(acked.is_some());
                assert_eq!(shard.applied().op, expected, "polls {polls}");
            } else {
                assert!(acked.is_none(), "polls {polls}: acknowledged, then joined");
                assert_eq!(shard.domain(), joined_domain, "polls {polls}");
                assert!(shard.applied().op > snapshot.watermark, "polls {polls}");
                assert_eq!(shard.read(|kv| kv.values()), model, "polls {polls}");
            }
            shard.close().await.unwrap();
        }
        assert!(finished, "the reset never finished");
        assert!(untouched > 0 && poisoned > 0, "{untouched} {poisoned}");
    });
}

/// A close called while a reset runs, after each number of the reset's
/// polls in turn (the disk yielding at random): the close returns only once
/// the reset has ended, or the reset refuses without writing anything. The
/// next owner of the directory opens and acknowledges a command as soon as
/// the close returns, while the reset (if it still ran) goes on; after a
/// crash that command is there, with nothing written over it. Half the runs
/// reset to a snapshot of another domain (a join), half to one of the
/// shard's own, whose number a still-running reset would give the next
/// owner's command too.
#[test]
fn a_close_during_a_reset_waits_for_it_or_the_reset_writes_nothing() {
    run(|| async {
        let Foreign {
            domain: joined_domain,
            snapshot,
            bytes: foreign_bytes,
            ..
        } = foreign_snapshot(false).await;
        let incoming = &Path::new("/incoming").join(snapshot.path.file_name().unwrap());
        let (mut refused, mut finished_first) = (0u32, 0u32);
        for polls in 0..200u32 {
            let own_snapshot = polls % 4 >= 2;
            let storage = yielding_disk(u64::from(polls), incoming, &foreign_bytes);
            let shard = mem_builder(&storage, "/shard").open().await.unwrap();
            let own_domain = shard.domain();
            let source = if own_snapshot {
                let _ = shard.submit(KvCommand::Delete { key: 2 }).await.unwrap();
                let own = shard.checkpoint().await.unwrap().snapshot.unwrap();
                let source = Path::new("/incoming").join(own.path.file_name().unwrap());
                storage.insert_file(&source, storage.file_bytes(&own.path).unwrap());
                source
            } else {
                incoming.to_path_buf()
            };
            // In every other run a submit is in flight when the reset
            // begins, so the reset waits for it before it takes the
            // snapshot directory, and the close can begin in between.
            let mut submit = Box::pin(shard.submit(KvCommand::Delete { key: 1 }));
            if polls % 2 == 1 {
                assert!(futures_lite::future::poll_once(&mut submit).await.is_none());
            }
            let reset_ended = std::cell::Cell::new(false);
            let mut reset = Box::pin(async {
                let outcome = shard.reset_to(&source).await;
                reset_ended.set(true);
                outcome
            });
            let early = poll_up_to(&mut reset, polls / 2).await;
            // The close, then at once the next owner: it opens and
            // acknowledges a command.
            let close_then_next = async {
                shard.close().await.unwrap();
                let reset_ended_before_close = reset_ended.get();
                let next = mem_builder(&storage, "/shard").open().await.unwrap();
                let _ = next.submit(KvCommand::Delete { key: 0 }).await.unwrap();
                (
                    reset_ended_before_close,
                    next.applied(),
                    next.domain(),
                    next,
                )
            };
            let submitted = async {
                if polls % 2 == 1 {
                    // Acknowledged before the close, or refused by it.
                    let _ = submit.await;
                }
            };
            let (outcome, (reset_ended_before_close, acked, next_domain, next)) = match early {
                Some(outcome) => (outcome, close_then_next.await),
                None => {
                    let (_, (next, outcome)) = futures_lite::future::zip(
                        submitted,
                        futures_lite::future::zip(close_then_next, reset),
                    )
                    .await;
                    (outcome, next)
                }
            };
            drop(next);
            storage.crash();
            let reopened = mem_builder(&storage, "/shard").open().await.unwrap();
            // The next owner's command is there, nothing written over it.
            assert_eq!(reopened.applied(), acked, "polls {polls}");
            assert_eq!(reopened.domain(), next_domain, "polls {polls}");
            match outcome {
                Ok(_) => {
                    assert!(
                        reset_ended_before_close,
                        "polls {polls}: close returned first"
                    );
                    let expected = if own_snapshot {
                        own_domain
                    } else {
                        joined_domain
                    };
                    assert_eq!(next_domain, expected, "polls {polls}");
                    finished_first += 1;
                }
                Err(e) => {
                    assert!(
                        matches!(e, ResetError::Shard(Error::Closed)),
                        "polls {polls}: {e}"
                    );
                    assert_eq!(next_domain, own_domain, "polls {polls}");
                    refused += 1;
                }
            }
            reopened.close().await.unwrap();
        }
        eprintln!("reset refused: {refused}, finished before the close: {finished_first}");
        assert!(
            refused > 0 && finished_first > 0,
            "{refused} {finished_first}"
        );
    });
}

/// A reset that joins a domain and fails to write its snapshot (a full
/// disk) leaves the shard in its own domain, as it was, and the reset can
/// be run again once there is room.
#[test]
fn a_reset_that_cannot_write_its_snapshot_does_not_join_the_domain() {
    run(|| async {
        let Foreign {
            domain: joined_domain,
            model,
            snapshot,
            bytes: snapshot_bytes,
        } = foreign_snapshot(true).await;

        let storage = MemStorage::new();
        // Named as the store names it (the header's op is checked against it).
        let incoming = &Path::new("/incoming").join(snapshot.path.file_name().unwrap());
        storage.insert_file(incoming, snapshot_bytes.clone());
        let shard = mem_builder(&storage, "/shard").open().await.unwrap();
        let own_domain = shard.domain();
        // Room for the identity's rewrite (a few hundred bytes), not for
        // the snapshot.
        let used: u64 = storage
            .paths()
            .iter()
            .filter_map(|path| storage.file_bytes(path))
            .map(|bytes| bytes.len() as u64)
            .sum();
        assert!(snapshot_bytes.len() > 3 * 4096);
        storage.set_capacity(Some(used + 2 * 4096));
        let error = shard.reset_to(incoming).await.unwrap_err();
        assert!(
            matches!(&error, ResetError::Shard(Error::Persist { .. })),
            "{error:?}"
        );
        assert_eq!(shard.domain(), own_domain);
        assert_eq!(shard.applied().op, 0);
        shard.close().await.unwrap();
        storage.set_capacity(None);
        let shard = mem_builder(&storage, "/shard").open().await.unwrap();
        assert_eq!(shard.domain(), own_domain);
        let outcome = shard.reset_to(incoming).await.unwrap();
        assert_eq!(shard.domain(), joined_domain);
        assert!(outcome.floor.op > snapshot.watermark);
        assert_eq!(shard.read(|kv| kv.values()), model);
        shard.close().await.unwrap();
    });
}

/// A follower's snapshot store on a fresh `MemStorage`, holding the
/// snapshot `bytes` at `watermark`.
async fn follower_holding(
    bytes: &[u8],
    watermark: u64,
    domain: uuid::Uuid,
) -> (MemStorage, SnapshotStore<MemStorage>) {
    let storage = MemStorage::new();
    let store = SnapshotStore::open(storage.clone(), "/follower/snapshots")
        .await
        .unwrap();
    store
        .install_bytes(bytes, watermark, domain)
        .await
        .unwrap()
        .unwrap();
    (storage, store)
}

/// What a Raft follower does with a snapshot its leader sent
/// (`SnapshotStore::install_bytes`), cut by a power loss after each of its
/// storage operations in turn: after the crash the store loads either the
/// snapshot it had or the received one, whole, and never a damaged file
/// under a snapshot's name; an install that returned is never undone.
#[test]
fn a_power_cut_at_every_step_of_installing_a_received_snapshot_keeps_a_whole_one() {
    run(|| async {
        // The leader's two snapshots, as the bytes it would stream.
        let leader_storage = MemStorage::new();
        let leader = mem_builder(&leader_storage, "/leader")
            .open()
            .await
            .unwrap();
        let domain = leader.domain();
        let mut model = BTreeMap::new();
        let leader_snapshots = SnapshotStore::open(leader_storage.clone(), "/leader/snapshots")
            .await
            .unwrap();
        put_many(&leader, &mut model, 0, 30).await;
        let older = leader.checkpoint().await.unwrap().snapshot.unwrap();
        let older_bytes = leader_snapshots.read_file(&older.path).await.unwrap();
        put_many(&leader, &mut model, 30, 30).await;
        let newer = leader.checkpoint().await.unwrap().snapshot.unwrap();
        let newer_bytes = leader_snapshots.read_file(&newer.path).await.unwrap();
        leader.close().await.unwrap();

        let mut completed = false;
        for cut in 1.. {
            let (storage, store) = follower_holding(&older_bytes, older.watermark, domain).await;
            storage.cut_power_after_ops(cut);
            let result = store
                .install_bytes(&newer_bytes, newer.watermark, domain)
                .await;
            let cut_happened = storage.power_is_cut();
            drop(store);
            storage.crash();
            let store = SnapshotStore::open(storage.clone(), "/follower/snapshots")
                .await
                .unwrap();
            let (loaded, skipped) = store.load_newest(domain).await.unwrap();
            assert!(
                skipped.is_empty(),
                "cut {cut}: a damaged file under a snapshot's name: {skipped:?}"
            );
            let loaded = loaded.unwrap_or_else(|| panic!("cut {cut}: no snapshot loads"));
            if matches!(result, Ok(Ok(_))) {
                assert_eq!(
                    loaded.meta.watermark, newer.watermark,
                    "cut {cut}: an install that returned was undone"
                );
            } else {
                assert!(
                    [older.watermark, newer.watermark].contains(&loaded.meta.watermark),
                    "cut {cut}: {:?}",
                    loaded.meta
                );
            }
            if !cut_happened {
                result.unwrap().unwrap();
                completed = true;
                break;
            }
        }
        assert!(completed);

        // A damaged file is refused, and the store keeps what it had.
        let (_storage, store) = follower_holding(&older_bytes, older.watermark, domain).await;
        let mut damaged = newer_bytes.clone();
        // In the body, past the header block.
        damaged[4096 + 3] ^= 0x40;
        let refused = store
            .install_bytes(&damaged, newer.watermark, domain)
            .await
            .unwrap();
        assert!(refused.is_err(), "a damaged snapshot was installed");
        let refused = store
            .install_bytes(&newer_bytes, newer.watermark, uuid::Uuid::new_v4())
            .await
            .unwrap();
        assert!(refused.is_err(), "another cluster's snapshot was installed");
        let (loaded, skipped) = store.load_newest(domain).await.unwrap();
        assert!(skipped.is_empty());
        assert_eq!(loaded.unwrap().meta.watermark, older.watermark);
        assert_eq!(store.generations().unwrap().len(), 1);
    });
}

#[test]
fn a_failed_journal_write_poisons_the_shard_and_loses_nothing_acknowledged() {
    run(|| async {
        let storage = MemStorage::new();
        let shard = mem_builder(&storage, "/shard").open().await.unwrap();
        let mut model = BTreeMap::new();
        put_many(&shard, &mut model, 0, 20).await;
        // 32 submitters with unique keys; one group-commit write fails.
        let mut tasks = Vec::new();
        for t in 0..32u64 {
            let shard = shard.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut acked = Vec::new();
                for n in 0..20u64 {
                    let key = 1_000 + t * 100 + n;
                    let value = value(key, n, 40);
                    match shard
                        .submit(KvCommand::Put {
                            key,
                            value: value.clone(),
                        })
                        .await
                    {
                        Ok(outcome) => {
                            outcome.unwrap();
                            acked.push((key, value));
                        }
                        Err(error) => return (acked, Some(error)),
                    }
                }
                (acked, None)
            }));
        }
        futures_lite::future::yield_now().await;
        storage.fail_next_writes(1, libc::EIO);
        let mut acked = Vec::new();
        let mut failures = 0;
        for task in tasks {
            let (mut done, error) = task.await;
            acked.append(&mut done);
            if let Some(error) = error {
                // The write's own error, or the poison it left behind.
                assert!(
                    matches!(error, Error::Journal(_) | Error::Poisoned { .. }),
                    "{error}"
                );
                failures += 1;
            }
        }
        assert!(failures > 0, "the failed write reached some submitter");
        assert!(matches!(
            shard.submit(KvCommand::Delete { key: 0 }).await,
            Err(Error::Poisoned { .. })
        ));
        drop(shard);
        storage.crash();
        let shard = mem_builder(&storage, "/shard").open().await.unwrap();
        let recovered = shard.read(|kv| kv.values());
        for (key, value) in &model {
            assert_eq!(recovered.get(key), Some(value), "key {key}");
        }
        for (key, value) in &acked {
            assert_eq!(
                recovered.get(key),
                Some(value),
                "acknowledged key {key} lost"
            );
        }
        shard.close().await.unwrap();
    });
}

/// The newest snapshot is passed over at an open (damaged, or a read fault
/// that will not last) while the journal ends below it: the open goes on
/// from the previous snapshot and the journal, a history in which the
/// shard then acknowledges new commands at the same op numbers. Should
/// that snapshot read as valid at a later open, loading it would bring the
/// old history back and drop the new commands without a word; the first
/// open sets it aside (renamed, logged), so no later open can.
#[test]
fn a_snapshot_passed_over_above_the_journals_end_never_comes_back() {
    run(|| async {
        let storage = MemStorage::new();
        let builder = || {
            mem_builder(&storage, "/shard").journal(|j| {
                small_journal(j, 4096).durability(ringstore_journal::Durability::NoSync)
            })
        };
        let shard = builder().open().await.unwrap();
        let put = |key: u64, tag: u8| KvCommand::Put {
            key,
            value: vec![tag; 10],
        };
        for key in 1..=5 {
            shard.submit(put(key, 1)).await.unwrap().unwrap();
        }
        shard.checkpoint().await.unwrap();
        for key in 6..=10 {
            shard.submit(put(key, 1)).await.unwrap().unwrap();
        }
        let newest = shard.checkpoint().await.unwrap().snapshot.unwrap();
        assert_eq!(newest.watermark, 10);
        // A power loss: the journal's unsynced tail (NoSync) is gone, the
        // snapshots are not; the newest then reads damaged.
        drop(shard);
        storage.crash();
        assert!(storage.flip_bit(&newest.path, 4096 + 3, 1));
        let shard = builder().open().await.unwrap();
        assert_eq!(shard.recovery_report().skipped_snapshots.len(), 1);
        let applied = shard.applied().op;
        assert!(
            applied < 10,
            "the journal ends below the snapshot: {applied}"
        );
        // A new history: other commands at the ops the lost ones had.
        for key in applied + 1..=10 {
            shard.submit(put(key, 2)).await.unwrap().unwrap();
        }
        let state = shard.read(|kv| kv.values());
        shard.close().await.unwrap();
        // The fault was transient: the file reads as valid again.
        for path in storage.paths() {
            if path.starts_with(newest.path.parent().unwrap()) {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with(newest.path.file_name().unwrap().to_str().unwrap()) {
                    assert!(storage.flip_bit(&path, 4096 + 3, 1));
                }
            }
        }
        let shard = builder().open().await.unwrap();
        assert_eq!(
            shard.read(|kv| kv.values()),
            state,
            "the old history came back"
        );
        shard.close().await.unwrap();
    });
}
