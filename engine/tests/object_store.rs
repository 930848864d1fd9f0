//! Pins snapshots in object storage and cold restore, as one conformance
//! suite run against `object_store`'s local filesystem (module `local`) and
//! a real S3-compatible server, s3s-fs on loopback (module `s3`, one server
//! per test): a checkpoint's snapshot is uploaded byte for byte under
//! `<domain>/snapshots/`; with the local data dir deleted, a restore through
//! the API gives back the state (broker `Metadata`, compared with `==`) and
//! new ops number above everything seen before; a damaged newest object is
//! skipped and reported, the previous generation restored; retention
//! deletes the generations beyond the count; an unknown domain, a directory
//! holding a shard, all generations damaged and an unfinished restore each
//! get their typed error (and a failed restore leaves nothing behind). Then,
//! against s3s-fs only: with the server down in `BeforeCompaction` mode the
//! watermark stays at the last uploaded snapshot while submits go on until
//! the ring fills (backpressure), and catches up once it is back; a server
//! killed in the middle of a multipart snapshot upload leaves the shard
//! serving and its state intact across a reopen, and the upload completes
//! once the server is restarted on the same port and directory. Last, the
//! upload counters in the `metrics` facade, and the runtime:
//! `EngineBuilder::restore_shard` rebuilds one lost shard of an engine.

mod common;
mod object_store_support;

use common::*;
use object_store_support::{flip_byte, Fixture, S3Server};
use ringstore::broker::{Command, Metadata, StreamCommand};
use ringstore::cold_restore::{self, ColdRestoreError, SkipReason, RESTORE_MARKER_NAME};
use ringstore::object_store::{
    numbering_key, snapshot_key, ObjectStoreSettings, Remote, UploadMode,
};
use ringstore::reset::ResetError;
use ringstore::runtime::Engine;
use ringstore::snapshot::snapshot_file_name;
use ringstore::{CheckpointPolicy, Error, Shard, ShardBuilder};
use std::path::Path;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Longest a test waits for an upload (or anything else the store does).
const WAIT: Duration = Duration::from_secs(30);

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[test]
                fn $name() {
                    let dir = super::temp_dir();
                    let fixture = super::Fixture::local(dir.path());
                    super::$name(&fixture, dir.path());
                }
            )*
        }
        mod s3 {
            $(
                #[test]
                fn $name() {
                    let dir = super::temp_dir();
                    let Some(fixture) = super::Fixture::s3(dir.path()) else {
                        return;
                    };
                    super::$name(&fixture, dir.path());
                }
            )*
        }
    };
}

conformance!(
    checkpoint_uploads_and_a_lost_shard_is_restored,
    damaged_newest_object_falls_back_to_the_previous_generation,
    retention_keeps_the_newest_generations,
    restore_refusals_are_typed_and_leave_nothing_behind,
    a_reset_numbers_above_every_key_of_the_domain_in_the_store,
    a_restore_numbers_above_a_restored_shard_whose_snapshot_never_went_up,
    a_pruned_snapshot_leaves_its_cached_copy_whole,
    an_object_of_the_snapshots_size_that_is_not_it_is_not_counted_as_uploaded,
);

/// The snapshot's key already holds an object of the snapshot's size that
/// is not it (here: its magic changed) when the shard uploads it (after a
/// reopen, which does not know what went up before): the upload does not
/// count it as the snapshot uploaded, where in `BeforeCompaction` mode the
/// watermark would move past the op on its strength. Before the header
/// check, the same size counted as uploaded.
fn an_object_of_the_snapshots_size_that_is_not_it_is_not_counted_as_uploaded(
    fixture: &Fixture,
    dir: &Path,
) {
    let remote = fixture.remote();
    let shard_dir = dir.join("shard");
    run(move || async move {
        let shard = builder(&shard_dir, settings(&remote)).open().await.unwrap();
        let domain = shard.domain();
        create_streams(&shard, "a", 20).await;
        let op = checkpoint_uploaded(&shard).await;
        let local = shard.snapshots().dir().join(snapshot_file_name(op));
        shard.close().await.unwrap();
        let key = format!("{domain}/{}", snapshot_key(op));
        let mut other = std::fs::read(&local).unwrap();
        other[5] ^= 0x10;
        remote.delete(&key).await.unwrap();
        remote.put(&key, other.clone()).await.unwrap();

        let shard = builder(&shard_dir, settings(&remote)).open().await.unwrap();
        wait_until("the upload refused", || {
            shard.stats().snapshot_upload_failures >= 1
        })
        .await;
        assert!(shard.uploaded_snapshot() < op, "counted as uploaded");
        assert_eq!(
            &remote.get_bytes(&key, u64::MAX).await.unwrap()[..],
            &other[..],
            "the object is left as it was"
        );
        shard.close().await.unwrap();

        // The snapshot itself at its key still counts, after a reopen.
        remote.delete(&key).await.unwrap();
        remote
            .put(&key, std::fs::read(&local).unwrap())
            .await
            .unwrap();
        let shard = builder(&shard_dir, settings(&remote)).open().await.unwrap();
        assert!(shard.wait_for_upload(WAIT).await);
        assert_eq!(shard.uploaded_snapshot(), op);
        assert_eq!(shard.stats().snapshot_upload_failures, 0);
        shard.close().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

fn settings(remote: &Remote) -> ObjectStoreSettings {
    ObjectStoreSettings::new(remote.clone())
        .upload_backoff(Duration::from_millis(10), Duration::from_millis(200))
}

fn builder(dir: &Path, settings: ObjectStoreSettings) -> ShardBuilder<Metadata> {
    Shard::<Metadata>::builder(dir)
        .journal(|j| small_journal(j, 4096))
        .object_store(settings)
}

fn create(name: String) -> Command {
    Command::Stream(StreamCommand::Create { name })
}

async fn create_streams(shard: &Shard<Metadata>, prefix: &str, count: usize) {
    for i in 0..count {
        shard
            .submit(create(format!("{prefix}-{i}")))
            .await
            .unwrap()
            .unwrap();
    }
}

/// Checkpoints and waits for the snapshot's upload; returns its op.
async fn checkpoint_uploaded<M: ringstore::StateMachine>(shard: &Shard<M>) -> u64 {
    let op = shard
        .checkpoint()
        .await
        .unwrap()
        .snapshot
        .expect("a new snapshot")
        .watermark;
    assert!(shard.wait_for_upload(WAIT).await, "snapshot {op} uploaded");
    assert_eq!(shard.uploaded_snapshot(), op);
    op
}

/// The snapshot ops in the store under `domain`, ascending.
async fn remote_ops(remote: &Remote, domain: Uuid) -> Vec<u64> {
    let prefix = format!("{domain}/snapshots");
    let mut ops: Vec<u64> = remote
        .list(&prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|info| {
            let key = info.key.strip_prefix(&format!("{domain}/")).unwrap();
            ringstore::object_store::parse_snapshot_key(key).unwrap()
        })
        .collect();
    ops.sort_unstable();
    ops
}

/// Polls `done` every 10 ms for up to [`WAIT`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "timed out waiting: {what}");
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// A fresh shard with an object store that joins a domain by `reset_to`
/// from an older snapshot of it (say, downloaded by hand) numbers a ring
/// above every key the domain has in the store, as a cold restore does:
/// its snapshots then never take a key of the domain's history (an object
/// of the same size there would count as the upload, and retention would
/// keep the old history's newer keys, which a cold restore would bring
/// back).
fn a_reset_numbers_above_every_key_of_the_domain_in_the_store(fixture: &Fixture, dir: &Path) {
    let remote = fixture.remote();
    let (first_dir, second_dir) = (dir.join("first"), dir.join("second"));
    let downloads = dir.join("downloads");
    run(move || async move {
        let shard = builder(&first_dir, settings(&remote)).open().await.unwrap();
        let domain = shard.domain();
        create_streams(&shard, "a", 20).await;
        let op = checkpoint_uploaded(&shard).await;
        std::fs::create_dir(&downloads).unwrap();
        let older = downloads.join(snapshot_file_name(op));
        std::fs::copy(shard.snapshots().dir().join(snapshot_file_name(op)), &older).unwrap();
        create_streams(&shard, "b", 20).await;
        let newest = checkpoint_uploaded(&shard).await;
        let ring = shard.journal().config().slot_count;
        shard.close().await.unwrap();

        let shard = builder(&second_dir, settings(&remote))
            .open()
            .await
            .unwrap();
        let reset = shard.reset_to(&older).await.unwrap();
        assert_eq!(shard.domain(), domain);
        assert_eq!(reset.source.watermark, op);
        assert!(
            reset.floor.op >= newest + ring,
            "floor {:?}: not a ring above the domain's newest key {newest}",
            reset.floor
        );
        // Its snapshot goes up under a key of its own.
        assert!(shard.wait_for_upload(WAIT).await);
        assert_eq!(shard.stats().snapshot_upload_failures, 0);
        let ops = remote_ops(&remote, domain).await;
        assert!(ops.contains(&reset.floor.op), "{ops:?}");
        assert!(ops.contains(&newest), "{ops:?}");
        shard.close().await.unwrap();

        // A key at the end of the op range: no numbering is left above it,
        // and a fresh shard refuses the reset before it joins the domain.
        let end_key = format!("{domain}/{}", snapshot_key(u64::MAX - 3));
        remote.put(&end_key, vec![0u8; 16]).await.unwrap();
        let third_dir = second_dir.with_file_name("third");
        let shard = builder(&third_dir, settings(&remote)).open().await.unwrap();
        let own = shard.domain();
        match shard.reset_to(&older).await {
            Err(ResetError::NumberingExhausted { op_seen, .. }) => assert_eq!(op_seen, u64::MAX),
            other => panic!("expected NumberingExhausted, got {other:?}"),
        }
        assert_eq!(shard.domain(), own, "the shard joined the domain");
        shard.close().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

/// A restored shard acknowledges ops above its reset's floor before the
/// reset's snapshot is uploaded. Its disk lost before that upload, a second
/// restore of the domain must still number above those ops: the first
/// restore claimed its floor in the store (`<domain>/numbering/`) before it
/// numbered the shard, and the second numbers a ring above that claim, in a
/// later epoch. (Without the claim the store shows only the older keys, and
/// the second restore took the first one's floor and epoch again.)
fn a_restore_numbers_above_a_restored_shard_whose_snapshot_never_went_up(
    fixture: &Fixture,
    dir: &Path,
) {
    let remote = fixture.remote();
    let shard_dir = dir.join("shard");
    run(move || async move {
        let shard = builder(&shard_dir, settings(&remote)).open().await.unwrap();
        let domain = shard.domain();
        create_streams(&shard, "a", 20).await;
        checkpoint_uploaded(&shard).await;
        shard.close().await.unwrap();
        std::fs::remove_dir_all(&shard_dir).unwrap();

        let (shard, report) = cold_restore::restore(builder(&shard_dir, settings(&remote)), domain)
            .await
            .unwrap();
        let first_floor = report.reset.floor;
        assert_eq!(report.unuploaded_reset, None, "no reset before this one");
        let claims: Vec<String> = remote
            .list(&format!("{domain}/numbering"))
            .await
            .unwrap()
            .into_iter()
            .map(|info| info.key)
            .collect();
        assert_eq!(
            claims,
            vec![format!("{domain}/{}", numbering_key(first_floor))]
        );
        create_streams(&shard, "acked", 5).await;
        let acked = shard.applied();
        assert_eq!(acked.op, first_floor.op + 5);
        shard.close().await.unwrap();
        // The disk is lost before the reset's snapshot went up: whether or
        // not it did in this run, the store no longer holds it.
        let reset_key = format!("{domain}/{}", snapshot_key(first_floor.op));
        let _ = remote.delete(&reset_key).await;
        std::fs::remove_dir_all(&shard_dir).unwrap();

        let (shard, report) = cold_restore::restore(builder(&shard_dir, settings(&remote)), domain)
            .await
            .unwrap();
        let floor = report.reset.floor;
        // The first restore's state, and the ops after it, are not in
        // the store: reported, not passed over in silence.
        assert_eq!(
            report.unuploaded_reset.map(|claim| claim.op),
            Some(first_floor.op)
        );
        assert!(
            floor.op > acked.op && floor.epoch > acked.epoch,
            "{floor:?} {acked:?}: the second restore reuses acknowledged numbers"
        );
        let (at, outcome) = shard.submit_at(create("after".into())).await.unwrap();
        outcome.unwrap();
        assert_eq!(at.op, floor.op + 1);
        shard.close().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

fn checkpoint_uploads_and_a_lost_shard_is_restored(fixture: &Fixture, dir: &Path) {
    let remote = fixture.remote();
    let shard_dir = dir.join("shard");
    run(move || async move {
        let shard = builder(&shard_dir, settings(&remote)).open().await.unwrap();
        let domain = shard.domain();
        create_streams(&shard, "a", 20).await;
        let op = checkpoint_uploaded(&shard).await;
        let stats = shard.stats();
        assert!(stats.snapshot_uploads >= 1, "{stats:?}");
        assert!(stats.snapshot_upload_bytes > 0, "{stats:?}");
        assert_eq!(stats.snapshot_uploaded_op, op);
        assert_eq!(stats.snapshot_upload_failures, 0);
        // The object is the local file, byte for byte, under the domain.
        let local = std::fs::read(shard.snapshots().dir().join(snapshot_file_name(op))).unwrap();
        let key = format!("{domain}/{}", snapshot_key(op));
        assert_eq!(
            &remote.get_bytes(&key, u64::MAX).await.unwrap()[..],
            &local[..]
        );
        assert_eq!(remote_ops(&remote, domain).await, vec![op]);
        // In BeforeCompaction mode the watermark follows the upload.
        assert_eq!(
            shard.journal().watermark(),
            0,
            "keeps the previous snapshot"
        );
        let before = shard.read(Metadata::clone);
        // Acknowledged after the uploaded snapshot: in the local journal
        // only, lost with the disk. The restore must number above them.
        create_streams(&shard, "lost", 5).await;
        let applied = shard.applied();
        assert_eq!(applied.op, op + 5);
        shard.close().await.unwrap();

        // The disk is lost: data, journal, snapshots and cache.
        std::fs::remove_dir_all(&shard_dir).unwrap();
        let (shard, report) = cold_restore::restore(builder(&shard_dir, settings(&remote)), domain)
            .await
            .unwrap();
        assert_eq!(report.domain, domain);
        assert_eq!(report.restored.op, op);
        assert_eq!(report.listed.len(), 1);
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        assert_eq!(report.reset.source.watermark, op);
        assert_eq!(report.downloaded_bytes, local.len() as u64);
        assert_eq!(shard.domain(), domain);
        assert_eq!(shard.read(Metadata::clone), before, "state equal to before");
        let floor = report.reset.floor;
        assert!(
            floor.op > applied.op && floor.epoch > applied.epoch,
            "{floor:?} {applied:?}: no acknowledged op number is reused"
        );
        assert!(!shard_dir.join(RESTORE_MARKER_NAME).exists());
        assert!(!shard_dir.join("restore").exists());
        // New ops number above everything seen before.
        let (at, outcome) = shard.submit_at(create("after".into())).await.unwrap();
        outcome.unwrap();
        assert_eq!(at.op, floor.op + 1);
        assert!(
            at.epoch >= floor.epoch && at.epoch > applied.epoch,
            "{at:?}"
        );
        // The reset's snapshot goes up too: a later restore numbers above it.
        assert!(shard.wait_for_upload(WAIT).await);
        assert_eq!(remote_ops(&remote, domain).await, vec![op, floor.op]);
        let after = shard.read(Metadata::clone);
        shard.close().await.unwrap();

        // A plain reopen recovers the same state.
        let shard = builder(&shard_dir, settings(&remote)).open().await.unwrap();
        assert_eq!(shard.read(Metadata::clone), after);
        assert_eq!(shard.applied(), at);
        shard.close().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

fn damaged_newest_object_falls_back_to_the_previous_generation(fixture: &Fixture, dir: &Path) {
    let remote = fixture.remote();
    let shard_dir = dir.join("shard");
    let (domain, older, newer, state) = {
        let remote = remote.clone();
        let shard_dir = shard_dir.clone();
        run_returning(move || async move {
            let shard = builder(&shard_dir, settings(&remote)).open().await.unwrap();
            create_streams(&shard, "a", 10).await;
            let older = checkpoint_uploaded(&shard).await;
            let state = shard.read(Metadata::clone);
            create_streams(&shard, "b", 10).await;
            let newer = checkpoint_uploaded(&shard).await;
            let domain = shard.domain();
            shard.close().await.unwrap();
            (domain, older, newer, state)
        })
    };
    std::fs::remove_dir_all(&shard_dir).unwrap();
    // One bit of the newest object's first section.
    flip_byte(
        &fixture.object_file(&format!("{domain}/{}", snapshot_key(newer))),
        4096 + 5,
    );
    run(move || async move {
        let (shard, report) = cold_restore::restore(builder(&shard_dir, settings(&remote)), domain)
            .await
            .unwrap();
        assert_eq!(report.restored.op, older);
        assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
        let skipped = &report.skipped[0];
        assert_eq!(skipped.snapshot.op, newer);
        assert!(
            matches!(skipped.reason, SkipReason::Damaged(_)),
            "{}",
            skipped.reason
        );
        assert!(
            skipped.reason.to_string().contains("checksum"),
            "{}",
            skipped.reason
        );
        assert_eq!(shard.read(Metadata::clone), state);
        // Numbering goes above the damaged object's key, so the shard's own
        // next snapshots never collide with it.
        assert!(report.reset.floor.op > newer, "{:?}", report.reset.floor);
        let (at, _) = shard.submit_at(create("after".into())).await.unwrap();
        assert!(at.op > newer);
        // The damaged copy is not left in the cache.
        let cached = shard_dir
            .join("cache/objects")
            .join(domain.to_string())
            .join(snapshot_key(newer));
        assert!(!cached.exists());
        shard.close().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

/// The regular files under `dir`, at any depth, that are the file `inode`.
fn names_of_inode(dir: &Path, inode: u64) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                dirs.push(entry.path());
            } else if meta.ino() == inode {
                found.push(entry.path());
            }
        }
    }
    found
}

/// An uploaded snapshot has a second name, the cache's hard link. A prune
/// that gives old snapshots back in steps removes such a file whole
/// (removing its name frees nothing) instead of shrinking it: the cached
/// copy keeps every byte.
fn a_pruned_snapshot_leaves_its_cached_copy_whole(fixture: &Fixture, dir: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let remote = fixture.remote();
    let shard_dir = dir.join("shard");
    run(move || async move {
        let settings = settings(&remote);
        let cache_dir = settings.cache_dir_for(&shard_dir);
        let shard = Shard::<Metadata>::builder(&shard_dir)
            .journal(|j| small_journal(j, 4096).reclaim_step_bytes(4096))
            .snapshot_generations(2)
            .object_store(settings)
            .open()
            .await
            .unwrap();
        create_streams(&shard, "first", 20).await;
        let first = checkpoint_uploaded(&shard).await;
        let path = shard_dir.join("snapshots").join(snapshot_file_name(first));
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 4096, "larger than a step: {}", bytes.len());
        let cached = names_of_inode(&cache_dir, std::fs::metadata(&path).unwrap().ino());
        assert_eq!(cached.len(), 1, "the cache links the uploaded file");
        for round in 0..2 {
            create_streams(&shard, &format!("later-{round}"), 3).await;
            checkpoint_uploaded(&shard).await;
        }
        assert!(!path.exists(), "the first snapshot was pruned");
        assert_eq!(shard.stats().snapshots_pruned, 1);
        let now = std::fs::read(&cached[0]).unwrap();
        assert!(
            now == bytes,
            "the cached copy changed: {} bytes, {} before",
            now.len(),
            bytes.len()
        );
        shard.close().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

fn retention_keeps_the_newest_generations(fixture: &Fixture, dir: &Path) {
    let remote = fixture.remote();
    let shard_dir = dir.join("shard");
    run(move || async move {
        let settings = settings(&remote).remote_generations(2);
        let shard = builder(&shard_dir, settings).open().await.unwrap();
        let domain = shard.domain();
        let mut ops = Vec::new();
        for round in 0..4 {
            create_streams(&shard, &format!("r{round}"), 3).await;
            ops.push(checkpoint_uploaded(&shard).await);
        }
        wait_until("retention deletes two generations", || {
            shard.stats().remote_snapshots_deleted == 2
        })
        .await;
        assert_eq!(remote_ops(&remote, domain).await, ops[2..].to_vec());
        assert_eq!(shard.stats().remote_retention_failures, 0);
        shard.close().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

fn restore_refusals_are_typed_and_leave_nothing_behind(fixture: &Fixture, dir: &Path) {
    let remote = fixture.remote();
    let dir = dir.to_path_buf();
    let object_file =
        |domain: Uuid, op: u64| fixture.object_file(&format!("{domain}/{}", snapshot_key(op)));
    // A shard with one uploaded generation.
    let held = dir.join("held");
    let (domain, op, state) = {
        let (remote, held) = (remote.clone(), held.clone());
        run_returning(move || async move {
            let shard = builder(&held, settings(&remote)).open().await.unwrap();
            create_streams(&shard, "a", 5).await;
            let op = checkpoint_uploaded(&shard).await;
            let state = shard.read(Metadata::clone);
            let domain = shard.domain();
            shard.close().await.unwrap();
            (domain, op, state)
        })
    };
    {
        let (remote, dir, held) = (remote.clone(), dir.clone(), held.clone());
        run(move || async move {
            // An unknown domain: refused before anything local is made.
            let fresh = dir.join("fresh");
            let err = cold_restore::restore(builder(&fresh, settings(&remote)), Uuid::new_v4())
                .await
                .map(drop)
                .unwrap_err();
            assert!(
                matches!(err, ColdRestoreError::NoRemoteSnapshot { .. }),
                "{err}"
            );
            assert!(!fresh.exists());
            // A directory holding a shard: refused, and the shard intact.
            let err = cold_restore::restore(builder(&held, settings(&remote)), domain)
                .await
                .map(drop)
                .unwrap_err();
            assert!(
                matches!(err, ColdRestoreError::RestoreTargetHoldsShard { .. }),
                "{err}"
            );
            let shard = builder(&held, settings(&remote)).open().await.unwrap();
            assert_eq!(shard.read(Metadata::clone), state);
            shard.close().await.unwrap();
            // A restore that did not finish: a plain open refuses the
            // directory, a restore starts over.
            let unfinished = dir.join("unfinished");
            std::fs::create_dir_all(unfinished.join("journal")).unwrap();
            std::fs::write(unfinished.join("journal/junk"), b"half a restore").unwrap();
            std::fs::write(unfinished.join(RESTORE_MARKER_NAME), b"").unwrap();
            let err = builder(&unfinished, settings(&remote))
                .open()
                .await
                .map(drop)
                .unwrap_err();
            assert!(matches!(err, Error::RestoreIncomplete { .. }), "{err}");
            let (shard, report) =
                cold_restore::restore(builder(&unfinished, settings(&remote)), domain)
                    .await
                    .unwrap();
            assert_eq!(report.restored.op, op);
            assert_eq!(shard.read(Metadata::clone), state);
            shard.close().await.unwrap();
        });
    }
    // Every generation damaged: a typed error naming each, and the
    // directory left without a shard (a plain open makes a new one).
    let snapshots: Vec<u64> = {
        let remote = remote.clone();
        run_returning(move || async move { remote_ops(&remote, domain).await })
    };
    for &op in &snapshots {
        flip_byte(&object_file(domain, op), 4096 + 5);
    }
    run(move || async move {
        let broken = dir.join("broken");
        let err = cold_restore::restore(builder(&broken, settings(&remote)), domain)
            .await
            .map(drop)
            .unwrap_err();
        match &err {
            ColdRestoreError::RemoteSnapshotsDamaged { skipped, .. } => {
                assert_eq!(skipped.len(), snapshots.len(), "{err}");
            }
            other => panic!("expected RemoteSnapshotsDamaged, got {other}"),
        }
        assert!(err.to_string().contains("checksum"), "{err}");
        for name in [
            "identity",
            "journal",
            "snapshots",
            "restore",
            RESTORE_MARKER_NAME,
        ] {
            assert!(!broken.join(name).exists(), "{name} left behind");
        }
        let shard = builder(&broken, settings(&remote)).open().await.unwrap();
        assert!(shard.recovery_report().domain_created);
        assert_ne!(shard.domain(), domain);
        shard.close().await.unwrap();
        remote.shutdown().await.unwrap();
    });
}

/// Runs `test` on a fresh executor and returns what it returns.
fn run_returning<T, F, Fut>(test: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(test)
        .expect("spawn executor")
        .join()
        .expect("test panicked")
}

/// An S3 remote that gives up fast when the server is down.
fn impatient_remote(server: &S3Server) -> Remote {
    Remote::s3(server.config())
        .op_timeout(Duration::from_millis(500))
        .attempts_max(2)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .open()
        .unwrap()
}

#[test]
fn s3_before_compaction_holds_the_watermark_while_the_store_is_down() {
    let dir = temp_dir();
    let Some(mut server) = S3Server::start(&dir.path().join("s3s-root")) else {
        return;
    };
    let remote = impatient_remote(&server);
    let shard_dir = dir.path().join("shard");
    let (down, up) = (
        std::sync::mpsc::channel::<()>(),
        std::sync::mpsc::channel::<()>(),
    );
    let (server_down_tx, server_down_rx) = down;
    let (server_up_tx, server_up_rx) = up;
    // The server is killed and restarted from this thread when the shard
    // asks (the S3Server is not Send-free of its child; keep it here).
    let test = std::thread::spawn(move || {
        run(move || async move {
            const SLOTS: u64 = 64;
            let settings = settings(&remote).mode(UploadMode::BeforeCompaction);
            let shard = Shard::<Metadata>::builder(&shard_dir)
                .journal(|j| small_journal(j, SLOTS))
                .journal_keeps_previous_snapshot(false)
                .checkpoint_policy(CheckpointPolicy {
                    ops_max: Some(8),
                    ring_full_wait_max: Duration::from_millis(200),
                    ..Default::default()
                })
                .object_store(settings)
                .open()
                .await
                .unwrap();
            create_streams(&shard, "a", 5).await;
            let uploaded = checkpoint_uploaded(&shard).await;
            wait_until("the watermark follows the upload", || {
                shard.journal().watermark() == uploaded
            })
            .await;

            server_down_tx.send(()).unwrap();
            server_up_rx.recv().unwrap(); // killed
                                          // Submits go on, checkpoints too, but the watermark stays at the
                                          // last uploaded snapshot until the ring is full.
            let mut accepted = 0;
            let backpressure = loop {
                match shard.submit(create(format!("b-{accepted}"))).await {
                    Ok(outcome) => {
                        outcome.unwrap();
                        accepted += 1;
                        assert!(accepted <= SLOTS, "the ring never filled");
                    }
                    Err(e) => break e,
                }
            };
            assert!(
                matches!(backpressure, Error::Backpressure { .. }),
                "{backpressure}"
            );
            assert!(accepted >= SLOTS - uploaded - 1, "accepted {accepted}");
            let stats = shard.stats();
            assert!(stats.checkpoints >= 2, "{stats:?}");
            assert!(shard.snapshot_watermark() > uploaded);
            assert_eq!(shard.journal().watermark(), uploaded, "not past the upload");
            wait_until("a failed upload is counted", || {
                shard.stats().snapshot_upload_failures > 0
            })
            .await;

            server_down_tx.send(()).unwrap();
            server_up_rx.recv().unwrap(); // restarted
            wait_until("the upload resumes and the watermark moves", || {
                shard.journal().watermark() > uploaded
            })
            .await;
            assert!(shard.wait_for_upload(WAIT).await);
            shard.submit(create("c".into())).await.unwrap().unwrap();
            shard.close().await.unwrap();
        })
    });
    server_down_rx.recv().unwrap();
    server.kill();
    server_up_tx.send(()).unwrap();
    server_down_rx.recv().unwrap();
    server.restart();
    server_up_tx.send(()).unwrap();
    test.join().expect("test");
}

/// A snapshot damaged on the disk between its write and its upload, with
/// the server down: the upload reads it again and refuses it. Without
/// automatic checkpoints it is never uploaded, and the next checkpoint's
/// snapshot takes its place.
#[test]
fn s3_a_snapshot_damaged_before_its_upload_is_never_uploaded() {
    damaged_before_its_upload(false);
}

/// As above, with automatic checkpoints (the default): the upload that
/// refuses the damaged snapshot has the shard write it again at its op
/// from the state in memory, and that file, whole, is what goes up once
/// the server is back.
#[test]
fn s3_a_snapshot_damaged_before_its_upload_is_written_again_and_uploaded() {
    damaged_before_its_upload(true);
}

fn damaged_before_its_upload(automatic_checkpoints: bool) {
    let dir = temp_dir();
    let Some(mut server) = S3Server::start(&dir.path().join("s3s-root")) else {
        return;
    };
    let remote = impatient_remote(&server);
    let shard_dir = dir.path().join("shard");
    let (to_main, from_shard) = std::sync::mpsc::channel::<()>();
    let (to_shard, from_main) = std::sync::mpsc::channel::<()>();
    let test = std::thread::spawn(move || {
        run(move || async move {
            let settings = settings(&remote).mode(UploadMode::BeforeCompaction);
            let shard = builder(&shard_dir, settings)
                .checkpoint_policy(CheckpointPolicy {
                    automatic: automatic_checkpoints,
                    ..Default::default()
                })
                .open()
                .await
                .unwrap();
            create_streams(&shard, "a", 3).await;
            let first = checkpoint_uploaded(&shard).await;

            to_main.send(()).unwrap();
            from_main.recv().unwrap(); // the server is down
            create_streams(&shard, "b", 3).await;
            shard.checkpoint().await.unwrap();
            let damaged = shard.snapshot_watermark();
            wait_until("an upload attempt failed", || {
                shard.stats().snapshot_upload_failures > 0
            })
            .await;
            // Damage on disk between the write and the upload: a bit in the
            // first section (the header block is 4 KiB; the file's tail is
            // padding no checksum covers).
            let path = shard.snapshots().dir().join(snapshot_file_name(damaged));
            let len = std::fs::metadata(&path).unwrap().len();
            flip_byte(&path, len - 1 - (4096 + 10));
            // With the server still down: an attempt that read the file
            // before the damage fails on the server, and the next one reads
            // it again and refuses it. Counted once that decision is made.
            wait_until("the damaged snapshot is refused", || {
                shard.stats().snapshot_uploads_refused == 1
            })
            .await;
            let domain = shard.domain();
            if automatic_checkpoints {
                wait_until("the damaged snapshot written again", || {
                    shard.stats().damaged_snapshots_replaced >= 1
                })
                .await;
                assert_eq!(shard.snapshot_watermark(), damaged, "at its op");
                to_main.send(()).unwrap();
                from_main.recv().unwrap(); // the server is back
                assert!(shard.wait_for_upload(WAIT).await, "uploaded");
                assert_eq!(shard.uploaded_snapshot(), damaged);
                let key = format!("{domain}/{}", snapshot_key(damaged));
                assert_eq!(
                    &remote.get_bytes(&key, u64::MAX).await.unwrap()[..],
                    &std::fs::read(&path).unwrap()[..],
                    "the file written again, whole"
                );
            } else {
                to_main.send(()).unwrap();
                from_main.recv().unwrap(); // the server is back
                assert_eq!(
                    remote_ops(&remote, domain).await,
                    vec![first],
                    "never uploaded"
                );
                assert_eq!(shard.uploaded_snapshot(), first);
                assert!(shard.journal().watermark() <= first, "the watermark stays");

                // The next checkpoint's snapshot takes its place.
                create_streams(&shard, "c", 3).await;
                let next = checkpoint_uploaded(&shard).await;
                // Uploads go in op order: with `next` there, the damaged one
                // was passed over for good.
                let uploaded = remote_ops(&remote, domain).await;
                assert!(uploaded.contains(&next), "{uploaded:?}");
                assert!(!uploaded.contains(&damaged), "{uploaded:?}");
            }
            shard.close().await.unwrap();
        })
    });
    from_shard.recv().unwrap();
    server.kill();
    to_shard.send(()).unwrap();
    from_shard.recv().unwrap();
    server.restart();
    to_shard.send(()).unwrap();
    test.join().expect("test");
}

#[test]
fn s3_server_killed_mid_upload_leaves_the_shard_serving_and_the_upload_resumes() {
    let dir = temp_dir();
    let Some(mut server) = S3Server::start(&dir.path().join("s3s-root")) else {
        return;
    };
    // Three parts: the server dies after the first has landed.
    let remote = Remote::s3(server.config())
        .part_bytes(ringstore_cache::remote::PART_BYTES_MIN)
        .op_timeout(Duration::from_secs(2))
        .attempts_max(2)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .open()
        .unwrap();
    let server_root = server.root().to_path_buf();
    let shard_dir = dir.path().join("shard");
    let (to_main, from_shard) = std::sync::mpsc::channel::<&'static str>();
    let (to_shard, from_main) = std::sync::mpsc::channel::<()>();
    let test = std::thread::spawn(move || {
        run(move || async move {
            let open = || {
                Shard::<Kv>::builder(&shard_dir)
                    .journal(|j| small_journal(j, 4096))
                    .checkpoint_policy(CheckpointPolicy {
                        automatic: false,
                        ..Default::default()
                    })
                    .object_store(settings(&remote).mode(UploadMode::Background))
                    .open()
            };
            let shard = open().await.unwrap();
            // About 12 MiB of state.
            let mut tasks = Vec::new();
            for t in 0..16u64 {
                let shard = shard.clone();
                tasks.push(glommio::spawn_local(async move {
                    for n in 0..100u64 {
                        let key = t * 1000 + n;
                        let command = KvCommand::Put {
                            key,
                            value: value(key, n, 8 << 10),
                        };
                        shard.submit(command).await.unwrap().unwrap();
                    }
                }));
            }
            for task in tasks {
                task.await;
            }
            let op = shard
                .checkpoint()
                .await
                .unwrap()
                .snapshot
                .unwrap()
                .watermark;
            let local = shard.snapshots().dir().join(snapshot_file_name(op));
            let local_bytes = std::fs::metadata(&local).unwrap().len();
            assert!(local_bytes > 2 * ringstore_cache::remote::PART_BYTES_MIN);
            // Wait for the first part on the server, then have it killed.
            let started = Instant::now();
            let mid_upload = loop {
                let landed = std::fs::read_dir(&server_root)
                    .unwrap()
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().contains(".part-1"));
                if landed {
                    break true;
                }
                if shard.stats().snapshot_uploads > 0 {
                    break false;
                }
                assert!(started.elapsed() < WAIT, "no part landed");
                glommio::timer::sleep(Duration::from_millis(1)).await;
            };
            to_main.send("kill").unwrap();
            from_main.recv().unwrap();
            if !mid_upload {
                eprintln!("the upload finished before the kill; the resume is not exercised");
            }
            // The shard keeps serving.
            for key in 0..10u64 {
                let command = KvCommand::Put {
                    key: 1_000_000 + key,
                    value: value(key, 0, 100),
                };
                shard.submit(command).await.unwrap().unwrap();
            }
            let expected = shard.read(Kv::values);
            shard.close().await.unwrap();
            // A reopen with the store still down: same state, nothing waits
            // on the store.
            let started = Instant::now();
            let shard = open().await.unwrap();
            assert!(started.elapsed() < Duration::from_secs(5));
            assert_eq!(shard.read(Kv::values), expected);
            if mid_upload {
                wait_until("a failed upload is counted", || {
                    shard.stats().snapshot_upload_failures > 0
                })
                .await;
                assert_eq!(shard.uploaded_snapshot(), 0);
            }
            to_main.send("restart").unwrap();
            from_main.recv().unwrap();
            wait_until("the upload completes", || shard.uploaded_snapshot() == op).await;
            let key = format!("{}/{}", shard.domain(), snapshot_key(op));
            assert_eq!(remote.head(&key).await.unwrap().bytes, local_bytes);
            assert_eq!(
                &remote.get_bytes(&key, u64::MAX).await.unwrap()[..],
                &std::fs::read(&local).unwrap()[..]
            );
            shard.close().await.unwrap();
            remote.shutdown().await.unwrap();
        })
    });
    assert_eq!(from_shard.recv().unwrap(), "kill");
    server.kill();
    to_shard.send(()).unwrap();
    assert_eq!(from_shard.recv().unwrap(), "restart");
    server.restart();
    to_shard.send(()).unwrap();
    test.join().expect("test");
}

#[test]
fn upload_counters_reach_the_metrics_facade() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let dir = temp_dir();
    let remote = Remote::local(dir.path().join("objects")).open().unwrap();
    let shard_dir = dir.path().join("shard");
    let mut uploaded_op = 0;
    metrics::with_local_recorder(&recorder, || {
        glommio::LocalExecutorBuilder::default()
            .make()
            .unwrap()
            .run(async {
                let shard = Shard::<Kv>::builder(&shard_dir)
                    .journal(|j| small_journal(j, 4096))
                    .metrics_label("7")
                    .object_store(settings(&remote).remote_generations(1))
                    .open()
                    .await
                    .unwrap();
                for key in 0..3u64 {
                    let command = KvCommand::Put {
                        key,
                        value: vec![1; 100],
                    };
                    shard.submit(command).await.unwrap().unwrap();
                    checkpoint_uploaded(&shard).await;
                }
                wait_until("retention", || shard.stats().remote_snapshots_deleted == 2).await;
                uploaded_op = shard.uploaded_snapshot();
                shard.close().await.unwrap();
            });
    });
    let snapshot = snapshotter.snapshot().into_hashmap();
    let find = |name: &str| {
        snapshot
            .iter()
            .find(|(key, _)| {
                key.key().name() == name
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "shard" && l.value() == "7")
            })
            .map(|(_, (_, _, value))| value)
            .unwrap_or_else(|| panic!("{name} not recorded"))
    };
    assert!(matches!(
        find("ringstore_snapshot_uploads_total"),
        DebugValue::Counter(3)
    ));
    assert!(matches!(
        find("ringstore_snapshot_upload_bytes_total"),
        DebugValue::Counter(n) if *n > 0
    ));
    assert!(matches!(
        find("ringstore_snapshot_upload_failures_total"),
        DebugValue::Counter(0)
    ));
    assert!(matches!(
        find("ringstore_remote_snapshots_deleted_total"),
        DebugValue::Counter(2)
    ));
    assert!(matches!(
        find("ringstore_snapshot_uploaded_op"),
        DebugValue::Gauge(v) if v.into_inner() == uploaded_op as f64
    ));
}

#[test]
fn engine_restores_one_lost_shard() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let remote = Remote::local(dir.path().join("objects")).open().unwrap();
    let engine_builder = || {
        Engine::<Kv>::builder()
            .data_dir(&data)
            .shards(2)
            .pin(false)
            .io_memory(1 << 20)
            .configure_shards(|_, shard| shard.journal(|j| small_journal(j, 4096)))
            .object_store(
                ObjectStoreSettings::new(remote.clone())
                    .upload_backoff(Duration::from_millis(10), Duration::from_millis(100)),
            )
    };
    let engine = engine_builder().start().unwrap();
    let client = engine.client();
    for key in 0..64u64 {
        let command = KvCommand::Put {
            key,
            value: key.to_le_bytes().to_vec(),
        };
        client
            .submit_blocking(key.to_le_bytes(), command)
            .unwrap()
            .unwrap();
    }
    let mut domains = Vec::new();
    let mut maps = Vec::new();
    for shard in 0..2 {
        futures_lite::future::block_on(client.checkpoint(shard)).unwrap();
        let (domain, uploaded) =
            futures_lite::future::block_on(client.run_on(shard, |s| async move {
                (s.domain(), s.wait_for_upload(WAIT).await)
            }))
            .unwrap();
        assert!(uploaded);
        domains.push(domain);
        maps.push(futures_lite::future::block_on(client.read_shard(shard, Kv::values)).unwrap());
    }
    engine.shutdown(false).unwrap();

    std::fs::remove_dir_all(data.join("shard-001")).unwrap();
    // Until it is restored, the engine does not start it empty.
    let err = engine_builder()
        .start()
        .err()
        .expect("a lost shard refused");
    assert!(matches!(err, Error::ShardMissing { shard: 1, .. }), "{err}");
    let restored = engine_builder().restore_shard(1, domains[1]).unwrap();
    assert_eq!(restored.shard, 1);
    assert!(restored.reset_snapshot_uploaded);
    assert!(restored.report.skipped.is_empty());
    // The manifest's shard count is checked.
    let err = engine_builder()
        .shards(3)
        .restore_shard(1, domains[1])
        .unwrap_err();
    assert!(matches!(err, Error::ShardCountMismatch { .. }), "{err}");

    let engine = engine_builder().start().unwrap();
    let client = engine.client();
    for (shard, map) in maps.iter().enumerate() {
        let found = futures_lite::future::block_on(client.read_shard(shard, Kv::values)).unwrap();
        assert_eq!(&found, map, "shard {shard}");
    }
    engine.shutdown(false).unwrap();
}
