//! The data directory's superblock (the shard count routing depends on)
//! under the power-cut model: a cut at every storage call of its first
//! write, and of the repair of a damaged copy, then a power loss that
//! drops, tears and reorders what was not synced and undoes unsynced names;
//! and the record of which shards were created, updated under the same cuts.
//! After each, the directory opens with the configured count or is still
//! new: never a refusal, never another count.
mod common;
use common::run;
use ringstore::runtime::startup::{
    check_created_shards_on, check_manifest_on, read_manifest_on, read_manifest_record_on,
    record_created_shards_on, shard_dir, MANIFEST_FILE_NAME,
};
use ringstore_journal::storage::{FaultConfig, MemStorage};
use std::path::Path;

const SHARDS: usize = 4;
/// More cut points than either operation has storage calls: the loops end
/// at the first run the cut does not reach.
const CUTS_MAX: u64 = 64;

fn faults() -> FaultConfig {
    FaultConfig {
        crash_drop_rate: 0.35,
        crash_tear_rate: 0.35,
        dir_undo: true,
        ..FaultConfig::none()
    }
}

#[test]
fn a_power_cut_at_every_step_of_the_first_write_leaves_a_new_or_a_whole_superblock() {
    run(|| async {
        let data = Path::new("/disk/data");
        for cut in 1..=CUTS_MAX {
            let mem = MemStorage::with_faults(cut, faults());
            mem.cut_power_after_ops(cut);
            let first = check_manifest_on(&mem, data, SHARDS).await;
            if !mem.power_is_cut() {
                first.unwrap();
                // Every earlier cut landed inside the write.
                let cuts = cut - 1;
                eprintln!("first write: {cuts} cut points");
                assert!(cuts >= 6, "only {cuts} cut points");
                return;
            }
            mem.crash();
            match read_manifest_on(&mem, data).await {
                Ok(None) | Ok(Some(SHARDS)) => {}
                other => panic!("cut {cut}: the superblock reads {other:?}"),
            }
            check_manifest_on(&mem, data, SHARDS)
                .await
                .unwrap_or_else(|e| panic!("cut {cut}: the next start failed: {e}"));
            mem.crash();
            assert_eq!(read_manifest_on(&mem, data).await.unwrap(), Some(SHARDS));
        }
        panic!("the first write took more than {CUTS_MAX} storage calls");
    });
}

#[test]
fn a_power_cut_at_every_step_of_a_repair_keeps_the_shard_count() {
    run(|| async {
        let data = Path::new("/disk/data");
        let path = data.join(MANIFEST_FILE_NAME);
        for cut in 1..=CUTS_MAX {
            let mem = MemStorage::with_faults(cut, faults());
            check_manifest_on(&mem, data, SHARDS).await.unwrap();
            // One copy damaged at rest: the next start rewrites it.
            let mut bytes = mem.file_bytes(&path).unwrap();
            bytes[100] ^= 0x40;
            mem.set_file_bytes(&path, bytes);
            mem.cut_power_after_ops(cut);
            let repaired = check_manifest_on(&mem, data, SHARDS).await;
            if !mem.power_is_cut() {
                repaired.unwrap();
                let cuts = cut - 1;
                eprintln!("repair: {cuts} cut points");
                assert!(cuts >= 3, "only {cuts} cut points");
                // A loss after the repair (it also disarms the cut).
                mem.crash();
                assert_eq!(read_manifest_on(&mem, data).await.unwrap(), Some(SHARDS));
                return;
            }
            mem.crash();
            assert_eq!(
                read_manifest_on(&mem, data).await.unwrap(),
                Some(SHARDS),
                "cut {cut}"
            );
            check_manifest_on(&mem, data, SHARDS).await.unwrap();
        }
        panic!("the repair took more than {CUTS_MAX} storage calls");
    });
}

#[test]
fn another_shard_count_is_refused_on_the_simulated_disk_too() {
    run(|| async {
        let mem = MemStorage::new();
        let data = Path::new("/disk/data");
        check_manifest_on(&mem, data, SHARDS).await.unwrap();
        let refused = check_manifest_on(&mem, data, SHARDS + 1).await.unwrap_err();
        assert!(refused.to_string().contains("shard"), "{refused}");
    });
}

/// A transient read fault in one copy while the other has rotted at rest:
/// one read finds no copy that verifies, the next finds the good one. The
/// read is taken again, so the directory opens with its count rather than
/// being refused as damaged.
#[test]
fn a_transient_read_fault_beside_a_rotten_copy_is_read_again_not_refused() {
    run(|| async {
        let mem = MemStorage::new();
        let data = Path::new("/disk/data");
        check_manifest_on(&mem, data, SHARDS).await.unwrap();
        let path = data.join(MANIFEST_FILE_NAME);
        assert!(mem.flip_bit(&path, 4096 + 40, 3), "copy 1 rots");
        mem.flip_next_read(&path, 40, 3);
        assert_eq!(read_manifest_on(&mem, data).await.unwrap(), Some(SHARDS));
        check_manifest_on(&mem, data, SHARDS).await.unwrap();
    });
}

/// Gives shard `index` of `data` a durable identity file (what its first
/// open writes), through the storage layer.
async fn create_identity(mem: &MemStorage, data: &Path, index: usize) {
    use ringstore_journal::storage::{Storage, StorageFile};
    let dir = shard_dir(data, index);
    ringstore_journal::storage::create_dir_all_durably(mem, &dir)
        .await
        .unwrap();
    let file = mem.create(&dir.join("identity"), false).await.unwrap();
    file.sync().await.unwrap();
    file.close().await.unwrap();
    mem.sync_dir(&dir).await.unwrap();
}

#[test]
fn a_power_cut_at_every_step_of_recording_a_created_shard_keeps_the_count_and_the_record() {
    run(|| async {
        let data = Path::new("/disk/data");
        for cut in 1..=CUTS_MAX {
            let mem = MemStorage::with_faults(cut, faults());
            check_manifest_on(&mem, data, SHARDS).await.unwrap();
            create_identity(&mem, data, 0).await;
            record_created_shards_on(&mem, data).await.unwrap();
            create_identity(&mem, data, 2).await;
            mem.cut_power_after_ops(cut);
            let recorded = record_created_shards_on(&mem, data).await;
            let power_cut = mem.power_is_cut();
            mem.crash();
            let read = read_manifest_record_on(&mem, data)
                .await
                .unwrap_or_else(|e| panic!("cut {cut}: {e}"))
                .unwrap();
            assert_eq!(read.shards, SHARDS, "cut {cut}");
            let created = read.created.unwrap();
            // Shard 0's record, durable before, is never lost; shard 2's
            // is there once the update returned.
            assert!(created[0], "cut {cut}: shard 0's record lost");
            assert!(!created[1] && !created[3], "cut {cut}: {created:?}");
            if !power_cut {
                recorded.unwrap();
                assert!(created[2], "cut {cut}: shard 2 not recorded");
                let cuts = cut - 1;
                eprintln!("record: {cuts} cut points");
                assert!(cuts >= 3, "only {cuts} cut points");
                return;
            }
            record_created_shards_on(&mem, data).await.unwrap();
            let created = read_manifest_record_on(&mem, data)
                .await
                .unwrap()
                .unwrap()
                .created
                .unwrap();
            assert_eq!(created, vec![true, false, true, false], "cut {cut}");
        }
        panic!("recording took more than {CUTS_MAX} storage calls");
    });
}

#[test]
fn a_recorded_shard_without_its_identity_is_refused_on_the_simulated_disk_too() {
    run(|| async {
        let mem = MemStorage::new();
        let data = Path::new("/disk/data");
        check_manifest_on(&mem, data, SHARDS).await.unwrap();
        // Nothing recorded yet: a new data directory starts.
        check_created_shards_on(&mem, data, &[]).await.unwrap();
        create_identity(&mem, data, 1).await;
        record_created_shards_on(&mem, data).await.unwrap();
        check_created_shards_on(&mem, data, &[]).await.unwrap();
        use ringstore_journal::storage::Storage;
        mem.remove(&shard_dir(data, 1).join("identity"))
            .await
            .unwrap();
        let refused = check_created_shards_on(&mem, data, &[]).await.unwrap_err();
        assert!(
            matches!(refused, ringstore::Error::ShardMissing { shard: 1, .. }),
            "{refused}"
        );
        check_created_shards_on(&mem, data, &[1]).await.unwrap();
    });
}
