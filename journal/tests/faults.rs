//! Pins what the journal does when the storage fails: poisoning after a
//! failed fdatasync or write, ENOSPC (on the in-memory disk and on a real,
//! genuinely full ext4 filesystem on a loop device) and power loss that
//! drops unsynced writes. In every case nothing acknowledged is lost.
mod common;
use common::*;
use ringstore_journal::storage::MemStorage;
use ringstore_journal::{Durability, Error, Journal, JournalBuilder};
use std::path::{Path, PathBuf};
use std::process::Command;

fn mem_builder(mem: &MemStorage) -> JournalBuilder<MemStorage> {
    Journal::builder("/mem/wal")
        .segment_bytes(256 << 10)
        .batch_bytes_max(64 << 10)
        .entry_bytes_max(16 << 10)
        .slot_count(4096)
        .storage(mem.clone())
}

/// An in-memory disk with room for the superblock, the first segment and
/// two more of [`mem_builder`]'s, no fourth.
fn small_disk() -> MemStorage {
    let mem = MemStorage::new();
    let superblock = ringstore_journal::superblock::SUPERBLOCK_FILE_BYTES;
    mem.set_capacity(Some(3 * (256 << 10) + 4096 + superblock));
    mem
}

async fn assert_ops_present(journal: &Journal<MemStorage>, ops: &[u64], len: usize) {
    for op in ops {
        let entry = journal
            .read(*op)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged op {op} lost"));
        assert_eq!(entry.payload, payload(*op, len));
    }
}

#[test]
fn a_failed_fsync_poisons_until_reopen() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = mem_builder(&mem).open().await.unwrap();
        let acked: Vec<u64> = {
            let mut v = Vec::new();
            for i in 1..=5u64 {
                v.push(journal.append(&payload(i, 100)).await.unwrap());
            }
            v
        };
        mem.fail_next_syncs(1, libc::EIO);
        match journal.append(&payload(6, 100)).await {
            // Naming where the bytes that may not be durable begin.
            Err(Error::Io {
                op: "fdatasync",
                offset: Some(_),
                ..
            }) => {}
            other => panic!("expected the fdatasync error with its offset, got {other:?}"),
        }
        assert!(journal.is_poisoned());
        // Every later call fails, even ones that would not touch the disk.
        assert!(matches!(
            journal.append(b"x").await,
            Err(Error::Poisoned { .. })
        ));
        assert!(matches!(journal.read(1).await, Err(Error::Poisoned { .. })));
        assert!(matches!(
            journal.advance_watermark(1).await,
            Err(Error::Poisoned { .. })
        ));
        assert!(journal.set_epoch(9).unwrap_err().is_poisoned());
        journal.close().await.unwrap();
        // The failed sync's bytes may or may not be durable: crash to the
        // worst case, then reopen.
        mem.crash();
        let journal = mem_builder(&mem).open().await.unwrap();
        assert_ops_present(&journal, &acked, 100).await;
        assert!(journal.append(b"again").await.is_ok());
        // A data write that finds the disk full names its file and offset.
        mem.fail_next_writes(1, libc::ENOSPC);
        match journal.append(b"full").await {
            Err(Error::NoSpace {
                op: "write",
                offset: Some(_),
                ..
            }) => {}
            other => panic!("expected NoSpace naming the write's offset, got {other:?}"),
        }
        journal.close().await.unwrap();
    });
}

#[test]
fn a_failed_write_poisons_and_fails_the_whole_batch() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = mem_builder(&mem).open().await.unwrap();
        let first = journal.append(&payload(1, 10)).await.unwrap();
        mem.fail_next_writes(1, libc::EIO);
        let mut tasks = Vec::new();
        for i in 0..4u64 {
            let journal = journal.clone();
            tasks.push(glommio::spawn_local(async move {
                journal.append(&payload(100 + i, 10)).await
            }));
        }
        for task in tasks {
            let result = task.await;
            assert!(
                matches!(
                    result,
                    Err(Error::Io { op: "write", .. }) | Err(Error::Poisoned { .. })
                ),
                "{result:?}"
            );
        }
        assert!(journal.is_poisoned());
        journal.close().await.unwrap();
        mem.crash();
        let journal = mem_builder(&mem).open().await.unwrap();
        assert_ops_present(&journal, &[first], 10).await;
        journal.close().await.unwrap();
    });
}

#[test]
fn power_loss_keeps_every_acknowledged_append() {
    for durability in [Durability::Sync, Durability::WriteThrough] {
        power_loss_keeps_every_acknowledged_append_with(durability);
    }
}

fn power_loss_keeps_every_acknowledged_append_with(durability: Durability) {
    run(move || async move {
        let mem = MemStorage::new();
        let journal = mem_builder(&mem)
            .durability(durability)
            .open()
            .await
            .unwrap();
        let mut acked = Vec::new();
        for round in 0..20u64 {
            let mut tasks = Vec::new();
            for t in 0..16u64 {
                let journal = journal.clone();
                let seed = round * 100 + t;
                tasks.push(glommio::spawn_local(async move {
                    (journal.append(&payload(seed, 700)).await.unwrap(), seed)
                }));
            }
            for task in tasks {
                acked.push(task.await);
            }
        }
        // The power fails; nothing was closed.
        mem.crash();
        drop(journal);
        let journal = mem_builder(&mem).open().await.unwrap();
        for (op, seed) in &acked {
            assert_eq!(
                journal.read(*op).await.unwrap().unwrap().payload,
                payload(*seed, 700)
            );
        }
        journal.close().await.unwrap();
    });
}

#[test]
fn enospc_is_a_clear_error_and_advancing_the_watermark_recovers() {
    run(|| async {
        let mem = small_disk();
        let journal = mem_builder(&mem).open().await.unwrap();
        let mut acked = Vec::new();
        let error = loop {
            match journal.append(&payload(acked.len() as u64 + 1, 8000)).await {
                Ok(op) => acked.push(op),
                Err(e) => break e,
            }
        };
        match &error {
            Error::NoSpace { op, path, .. } => {
                assert!(["create segment", "fallocate"].contains(op), "{op}");
                assert!(path.starts_with("/mem/wal"), "{path:?}");
            }
            other => panic!("expected NoSpace, got {other:?}"),
        }
        assert!(
            !journal.is_poisoned(),
            "ENOSPC before any write must not poison"
        );
        assert_ops_present(&journal, &acked, 8000).await;
        // Snapshot taken: the watermark advances into the reserved block and
        // retires segments, and appends flow again.
        journal
            .advance_watermark(*acked.last().unwrap())
            .await
            .unwrap();
        assert!(journal.stats().segments_retired >= 2);
        let op = journal.append(&payload(999, 8000)).await.unwrap();
        assert_eq!(op, acked.last().unwrap() + 1);
        journal.close().await.unwrap();
        mem.crash();
        let journal = mem_builder(&mem).open().await.unwrap();
        assert_eq!(
            journal.read(op).await.unwrap().unwrap().payload,
            payload(999, 8000)
        );
        journal.close().await.unwrap();
    });
}

/// A replica's writes queued in a pipeline hit a full disk: the failed
/// ones and everything queued behind them are refused, and the next op
/// goes back to the first of them. A consensus layer checks a replica's
/// appends against the next op; one that still counted the failed writes
/// would accept an append past a hole.
#[test]
fn failed_replica_writes_give_back_their_op_numbers() {
    run(|| async {
        let mem = small_disk();
        let journal = mem_builder(&mem).open().await.unwrap();
        // Queued without waiting, about eight to a batch: several batches
        // are behind the one that finds no room.
        let mut queued = Vec::new();
        for op in 1..=200u64 {
            match journal.queue_write(op, &payload(op, 8000)).await {
                Ok(q) => queued.push((op, q)),
                Err(_) => break,
            }
        }
        let mut first_failed = None;
        for (op, q) in queued {
            match q.durable().await {
                Ok(()) => assert!(first_failed.is_none(), "op {op} acked after a failure"),
                Err(Error::NoSpace { .. }) => {
                    first_failed.get_or_insert(op);
                }
                Err(other) => panic!("op {op}: expected NoSpace, got {other:?}"),
            }
        }
        let failed = first_failed.expect("the disk filled up");
        assert!(failed > 1, "some writes fit");
        assert!(!journal.is_poisoned());
        assert_eq!(journal.next_op(), failed, "failed writes still counted");
        assert!(journal.read(failed).await.unwrap().is_none());
        assert_ops_present(&journal, &(1..failed).collect::<Vec<_>>(), 8000).await;
        // Room again: the replica goes on from the first failed op.
        journal.advance_watermark(failed - 1).await.unwrap();
        journal.write(failed, &payload(failed, 8000)).await.unwrap();
        assert_eq!(journal.next_op(), failed + 1);
        journal.close().await.unwrap();
        drop(journal);
        mem.crash();
        let journal = mem_builder(&mem).open().await.unwrap();
        assert_eq!(journal.next_op(), failed + 1, "reopen agrees");
        assert_ops_present(&journal, &[failed], 8000).await;
        journal.close().await.unwrap();
    });
}

/// A rewrite (a later epoch's write of an op already durable) that finds
/// the disk full leaves the durable entry in place, and the next op where
/// it was: going back below the rewritten op would hand its number out
/// again and overwrite an acknowledged entry.
#[test]
fn a_failed_rewrite_of_the_last_op_keeps_the_next_op() {
    run(|| async {
        let mem = small_disk();
        let journal = mem_builder(&mem).open().await.unwrap();
        let mut last = 0;
        loop {
            match journal.append(&payload(last + 1, 8000)).await {
                Ok(op) => last = op,
                Err(Error::NoSpace { .. }) => break,
                Err(other) => panic!("expected NoSpace, got {other:?}"),
            }
        }
        assert_eq!(journal.next_op(), last + 1);
        journal.set_epoch(journal.epoch() + 1).unwrap();
        let refused = journal.write(last, &payload(7, 8000)).await;
        assert!(matches!(refused, Err(Error::NoSpace { .. })), "{refused:?}");
        assert_eq!(
            journal.next_op(),
            last + 1,
            "the rewritten op is still held"
        );
        assert_ops_present(&journal, &[last], 8000).await;
        journal.advance_watermark(last - 1).await.unwrap();
        assert_eq!(
            journal.append(&payload(last + 1, 8000)).await.unwrap(),
            last + 1
        );
        assert_ops_present(&journal, &[last, last + 1], 8000).await;
        journal.close().await.unwrap();
    });
}

/// A small real ext4 filesystem on a loop device, unmounted on drop.
struct LoopFs {
    mount: PathBuf,
    device: String,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    fn new(megabytes: u64) -> LoopFs {
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "this test mounts a loop device and needs root (CI runs as root)"
        );
        let dir = temp_dir();
        let image = dir.path().join("fs.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let sh = |cmd: &str| {
            let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
            assert!(
                out.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        sh(&format!(
            "truncate -s {megabytes}M {0} && mkfs.ext4 -q {0}",
            image.display()
        ));
        let device = sh(&format!("losetup -f --show {}", image.display()));
        let fs = LoopFs {
            mount,
            device,
            _dir: dir,
        };
        sh(&format!("mount {} {}", fs.device, fs.mount.display()));
        fs
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.mount)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

#[test]
fn a_genuinely_full_filesystem_gives_no_space_and_loses_nothing() {
    let fs = LoopFs::new(32);
    let path = fs.mount.join("wal");
    // Someone else's file on the same filesystem, deleted later to make room.
    let ballast = fs.mount.join("ballast");
    std::fs::write(&ballast, vec![1u8; 6 << 20]).unwrap();
    let builder = |p: &Path| {
        Journal::builder(p)
            .segment_bytes(4 << 20)
            .batch_bytes_max(256 << 10)
            .entry_bytes_max(64 << 10)
    };
    let p = path.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    run(move || async move {
        let journal = builder(&p).open().await.unwrap();
        let mut acked = Vec::new();
        let error = loop {
            match journal
                .append(&payload(acked.len() as u64 + 1, 60_000))
                .await
            {
                Ok(op) => acked.push(op),
                Err(e) => break e,
            }
            assert!(acked.len() < 10_000, "the filesystem never filled");
        };
        let message = error.to_string();
        assert!(matches!(error, Error::NoSpace { .. }), "{error:?}");
        assert!(message.contains(p.to_str().unwrap()), "{message}");
        assert!(!journal.is_poisoned());
        journal.close().await.unwrap();
        // Restart while the disk is still full: the journal opens, serves
        // every acknowledged entry, and refuses appends with NoSpace.
        let journal = builder(&p).open().await.unwrap();
        for op in &acked {
            assert_eq!(
                journal.read(*op).await.unwrap().unwrap().payload,
                payload(*op, 60_000)
            );
        }
        assert!(matches!(
            journal.append(b"no room").await,
            Err(Error::NoSpace { .. })
        ));
        journal.close().await.unwrap();
        tx.send(acked).unwrap();
    });
    let acked = rx.recv().unwrap();
    assert!(acked.len() > 100, "only {} appends fit", acked.len());
    std::fs::remove_file(&ballast).unwrap();
    let p = path.clone();
    run(move || async move {
        let journal = builder(&p).open().await.unwrap();
        for op in &acked {
            assert_eq!(
                journal.read(*op).await.unwrap().unwrap().payload,
                payload(*op, 60_000)
            );
        }
        let op = journal.append(b"room again").await.unwrap();
        assert_eq!(op, *acked.last().unwrap() + 1);
        journal.close().await.unwrap();
    });
}

/// A failed fdatasync, then a restart without power loss: what recovery read
/// was not durable; the journal must make it so before a new segment
/// vouches for it, or a later power loss would look like mid-log damage.
#[test]
fn reopen_after_a_failed_fsync_then_power_loss() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = mem_builder(&mem).open().await.unwrap();
        journal.append(&payload(1, 100)).await.unwrap();
        mem.fail_next_syncs(1, libc::EIO);
        assert!(journal.append(&payload(2, 100)).await.is_err());
        journal.close().await.unwrap();
        drop(journal);
        let journal = mem_builder(&mem).open().await.unwrap();
        let op = journal.append(&payload(3, 100)).await.unwrap();
        drop(journal);
        mem.crash();
        let journal = mem_builder(&mem).open().await.unwrap();
        assert_ops_present(&journal, &[1], 100).await;
        assert_eq!(
            journal.read(op).await.unwrap().unwrap().payload,
            payload(3, 100)
        );
        journal.close().await.unwrap();
    });
}

/// NoSync appends across several segments, then power loss: unsynced
/// appends may be gone (what NoSync promises), what remains verifies, and the
/// journal opens (segments are synced before the next one vouches for them).
#[test]
fn nosync_power_loss_across_segments_reopens() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = mem_builder(&mem)
            .durability(Durability::NoSync)
            .open()
            .await
            .unwrap();
        for i in 1..=200u64 {
            journal.append(&payload(i, 3000)).await.unwrap();
        }
        assert!(journal.stats().segments_created > 2);
        assert_eq!(journal.stats().fsyncs, 0, "NoSync appends never fdatasync");
        drop(journal);
        mem.crash();
        let journal = mem_builder(&mem).open().await.unwrap();
        for i in 1..=200u64 {
            if let Some(entry) = journal.read(i).await.unwrap() {
                assert_eq!(entry.payload, payload(i, 3000));
            }
        }
        journal.close().await.unwrap();
    });
}

/// Reopened on a full disk, advancing the watermark frees the segments it
/// covers first, so the watermark record and then appends find room.
#[test]
fn a_full_disk_reopened_frees_space_by_advancing_the_watermark() {
    run(|| async {
        let mem = MemStorage::new();
        let journal = mem_builder(&mem).open().await.unwrap();
        let mut last = 0;
        for i in 1..=120u64 {
            last = journal.append(&payload(i, 8000)).await.unwrap();
        }
        journal.close().await.unwrap();
        drop(journal);
        // No room for even one more segment.
        mem.set_capacity(Some(0));
        let journal = mem_builder(&mem).open().await.unwrap();
        assert!(matches!(
            journal.append(b"x").await,
            Err(Error::NoSpace { .. })
        ));
        mem.set_capacity(Some(mem_used(&mem)));
        journal.advance_watermark(last - 5).await.unwrap();
        let op = journal.append(&payload(7, 8000)).await.unwrap();
        journal.close().await.unwrap();
        drop(journal);
        mem.crash();
        let journal = mem_builder(&mem).open().await.unwrap();
        assert_eq!(journal.watermark(), last - 5);
        assert_ops_present(&journal, &(last - 4..=last).collect::<Vec<_>>(), 8000).await;
        assert_eq!(
            journal.read(op).await.unwrap().unwrap().payload,
            payload(7, 8000)
        );
        journal.close().await.unwrap();
    });
}

/// The same advance on a full disk with the power cut at every step: the
/// segments it frees go before its watermark record, so a crash between
/// the two must still leave every op it covered below the watermark after
/// reopen (their segments are gone), never simply missing, and number new
/// ops above every op written.
#[test]
fn a_full_disk_advance_cut_at_every_step_leaves_its_ops_below_the_watermark() {
    run(|| async {
        let mut cut = 1;
        loop {
            let mem = MemStorage::new();
            let journal = mem_builder(&mem).open().await.unwrap();
            let mut last = 0;
            for i in 1..=120u64 {
                last = journal.append(&payload(i, 8000)).await.unwrap();
            }
            journal.close().await.unwrap();
            drop(journal);
            mem.set_capacity(Some(0));
            let journal = mem_builder(&mem).open().await.unwrap();
            mem.set_capacity(Some(mem_used(&mem)));
            let target = last - 5;
            mem.cut_power_after_ops(cut);
            let advanced = journal.advance_watermark(target).await;
            drop(journal);
            mem.crash();
            mem.set_capacity(None);
            let journal = mem_builder(&mem).open().await.unwrap();
            let watermark = journal.watermark();
            for op in 1..=last {
                match journal.read(op).await {
                    Ok(Some(entry)) => assert_eq!(entry.payload, payload(op, 8000)),
                    Err(Error::BelowWatermark { .. }) => assert!(op <= watermark),
                    other => panic!(
                        "cut {cut}: op {op} (watermark {watermark}, advance to {target}) \
                         reads {other:?}"
                    ),
                }
            }
            let next = journal.append(b"after").await.unwrap();
            assert!(next > last, "cut {cut}: op {next} reused");
            journal.close().await.unwrap();
            if advanced.is_ok() {
                assert!(cut > 1);
                break;
            }
            cut += 1;
            assert!(cut < 200, "the advance never finished");
        }
    });
}

/// After a crash the file past the last segment recorded is a spare (or
/// a segment that never got data): zeros at its first entry position. A
/// transient read fault that flips a bit there while an open reads it
/// must not make it data the superblock does not record (a refusal that a
/// retry lets through): the open, and the scan `wal verify` runs, read it
/// again.
#[test]
fn a_transient_flip_at_an_empty_segments_first_entry_does_not_refuse_the_open() {
    use ringstore_journal::format::{BLOCK_BYTES, SEGMENT_DATA_OFFSET};
    use ringstore_journal::storage::Storage;
    run(|| async {
        let mem = MemStorage::new();
        let journal = mem_builder(&mem).open().await.unwrap();
        for i in 1..=3u64 {
            journal.append(&payload(i, 100)).await.unwrap();
        }
        // The spare is prepared in the background.
        let segment_files = |mem: &MemStorage| {
            mem.list_dir(Path::new("/mem/wal"))
                .unwrap()
                .iter()
                .filter(|n| n.to_string_lossy().ends_with(".wal"))
                .count()
        };
        for _ in 0..200 {
            if segment_files(&mem) >= 2 {
                break;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(journal);
        mem.crash();
        let dir = Path::new("/mem/wal");
        let mut names: Vec<_> = mem
            .list_dir(dir)
            .unwrap()
            .into_iter()
            .filter(|n| n.to_string_lossy().ends_with(".wal"))
            .collect();
        names.sort();
        let empty = dir.join(names.last().expect("segment files"));
        let bytes = mem.file_bytes(&empty).unwrap();
        let first_entry =
            SEGMENT_DATA_OFFSET as usize..(SEGMENT_DATA_OFFSET + BLOCK_BYTES) as usize;
        assert!(
            bytes.len() as u64 > SEGMENT_DATA_OFFSET && bytes[first_entry].iter().all(|b| *b == 0),
            "{} holds data",
            empty.display()
        );
        mem.flip_next_read(&empty, SEGMENT_DATA_OFFSET + 9, 1);
        let journal = mem_builder(&mem)
            .open()
            .await
            .unwrap_or_else(|e| panic!("one flipped read refused the open: {e}"));
        for i in 1..=3u64 {
            assert_eq!(
                journal.read(i).await.unwrap().map(|e| e.payload),
                Some(payload(i, 100))
            );
        }
        journal.close().await.unwrap();
    });
}

/// A write's first header rots at rest, and the next write, which records
/// it as durable (so the damage is not a torn tail: a refusal), is misread
/// once by a transient fault while the open searches for that evidence.
/// Taken from that one read, no evidence is in reach and the open cuts
/// both writes, acknowledged, as a torn tail; the search is run once more
/// on bytes read afresh, finds the evidence and refuses, naming the
/// damage.
#[test]
fn a_transient_fault_in_the_write_that_vouches_for_damage_does_not_turn_the_refusal_into_a_cut() {
    // The fault lands on each of the first reads of that header in turn.
    for nth in 1..=4 {
        a_transient_fault_in_the_vouching_write(nth);
    }
}

fn a_transient_fault_in_the_vouching_write(nth: u32) {
    run(move || async move {
        let mem = MemStorage::new();
        let journal = mem_builder(&mem).open().await.unwrap();
        // One write per op: op k's header at byte 4096 * k.
        for op in 1..=6u64 {
            assert_eq!(journal.append(&payload(op, 100)).await.unwrap(), op);
        }
        // A crash: the segment's end is recorded nowhere.
        drop(journal);
        mem.crash();
        let segment = Path::new("/mem/wal/segment-0000000000000001.wal");
        assert!(mem.flip_bit(segment, 4096 * 5 + 9, 3), "op 5's header rots");
        mem.flip_nth_read(segment, 4096 * 6 + 9, 3, nth);
        match mem_builder(&mem).open().await {
            Err(Error::Corruption { offset, .. }) => assert_eq!(offset, 4096 * 5),
            Err(other) => panic!("read {nth} flipped: refused for another reason: {other}"),
            Ok(journal) => panic!(
                "read {nth} flipped: opened with tail {:?}: ops 5 and 6 were acknowledged",
                journal.recovery_report().tail
            ),
        }
    });
}

fn mem_used(mem: &MemStorage) -> u64 {
    use ringstore_journal::storage::Storage;
    mem.list_dir(Path::new("/mem/wal"))
        .unwrap()
        .iter()
        .map(|name| {
            mem.file_bytes(&Path::new("/mem/wal").join(name))
                .unwrap()
                .len() as u64
        })
        .sum()
}
