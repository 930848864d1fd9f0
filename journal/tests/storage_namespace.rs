//! The namespace calls and buffered files of `Storage` (link, stat,
//! remove_dir, try_lock, create/open_buffered): one contract, checked on
//! the real disk and on the simulated one, then what a crash does to each
//! on the simulated disk (DESIGN.md's fault model: a namespace change not
//! covered by an fsync of its directory may be undone; unsynced bytes may
//! be lost or torn at sector boundaries).
mod common;
use common::*;
use ringstore_journal::storage::contract::{self, read_file, write_file};
use ringstore_journal::storage::{
    BufferedFile, DmaStorage, EntryKind, FaultConfig, MemStorage, Storage, SIM_SECTOR_BYTES,
};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

#[test]
fn the_real_disk_keeps_the_contract() {
    let dir = temp_dir();
    run(|| async move {
        contract::check(&DmaStorage::new(), dir.path()).await;
        // What the simulated disk cannot have: a symbolic link is neither
        // a file nor a directory, and is not followed.
        std::os::unix::fs::symlink("b", dir.path().join("link")).unwrap();
        let meta = DmaStorage::new().stat(&dir.path().join("link")).await;
        assert_eq!(meta.unwrap().kind, EntryKind::Other);
    });
}

#[test]
fn the_simulated_disk_keeps_the_contract() {
    run(|| async {
        let mem = MemStorage::new();
        let dir = Path::new("/disk/contract");
        mem.create_dir(dir).await.unwrap();
        contract::check(&mem, dir).await;
    });
}

#[test]
fn a_link_is_durable_only_once_its_directory_is_synced() {
    run(|| async {
        // Without `dir_undo`, a crash undoes every unsynced namespace change.
        let mem = MemStorage::with_faults(3, FaultConfig::none());
        let dir = Path::new("/disk/objects");
        mem.create_dir(dir).await.unwrap();
        mem.sync_dir(Path::new("/disk")).await.unwrap();
        write_file(&mem, &dir.join("part"), b"bytes").await;
        mem.link(&dir.join("part"), &dir.join("key")).await.unwrap();
        mem.crash();
        assert_eq!(
            mem.paths(),
            vec![dir.join("part")],
            "the unsynced link is undone"
        );

        mem.link(&dir.join("part"), &dir.join("key")).await.unwrap();
        mem.sync_dir(dir).await.unwrap();
        mem.remove(&dir.join("part")).await.unwrap();
        mem.crash();
        let names: Vec<PathBuf> = mem.paths();
        assert_eq!(
            names,
            vec![dir.join("key"), dir.join("part")],
            "remove undone"
        );
        assert_eq!(read_file(&mem, &dir.join("key")).await, b"bytes");

        // The name an open file is given is undone the same way.
        let opened = mem.open_buffered(&dir.join("key")).await.unwrap();
        mem.link_file(&opened, &dir.join("named")).await.unwrap();
        mem.crash();
        assert!(
            !mem.paths().contains(&dir.join("named")),
            "unsynced: undone"
        );
        let opened = mem.open_buffered(&dir.join("key")).await.unwrap();
        mem.link_file(&opened, &dir.join("named")).await.unwrap();
        mem.sync_dir(dir).await.unwrap();
        mem.crash();
        assert_eq!(read_file(&mem, &dir.join("named")).await, b"bytes");
    });
}

#[test]
fn a_removed_directory_comes_back_unless_its_parent_is_synced() {
    run(|| async {
        let mem = MemStorage::with_faults(4, FaultConfig::none());
        let parent = Path::new("/disk/objects");
        let dir = parent.join("a");
        mem.create_dir(parent).await.unwrap();
        mem.create_dir(&dir).await.unwrap();
        mem.sync_dir(Path::new("/disk")).await.unwrap();
        mem.sync_dir(parent).await.unwrap();
        mem.remove_dir(&dir).await.unwrap();
        mem.crash();
        assert_eq!(mem.stat(&dir).await.unwrap().kind, EntryKind::Dir);

        mem.remove_dir(&dir).await.unwrap();
        mem.sync_dir(parent).await.unwrap();
        mem.crash();
        assert_eq!(
            mem.stat(&dir).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        // A root directory (one the disk never made) can be removed too,
        // and a crash before its parent's sync brings it back.
        mem.remove_dir(parent).await.unwrap();
        assert!(mem.stat(parent).await.is_err());
        mem.crash();
        assert_eq!(mem.stat(parent).await.unwrap().kind, EntryKind::Dir);
    });
}

#[test]
fn a_crash_releases_every_lock() {
    run(|| async {
        let mem = MemStorage::new();
        let path = Path::new("/disk/lock");
        let held = mem.try_lock(path, b"1").await.unwrap().expect("free");
        assert!(mem.try_lock(path, b"1").await.unwrap().is_none());
        mem.crash();
        let again = mem.try_lock(path, b"1").await.unwrap();
        assert!(again.is_some(), "the dead process's lock is gone");
        // Dropping the dead process's guard late releases nothing of the
        // living one's.
        drop(held);
        assert!(mem.try_lock(path, b"1").await.unwrap().is_none());
    });
}

#[test]
fn an_unsynced_buffered_write_tears_at_sector_boundaries() {
    run(|| async {
        let sector = SIM_SECTOR_BYTES as usize;
        let mut torn_seen = 0;
        for seed in 0..32 {
            let mem = MemStorage::with_faults(
                seed,
                FaultConfig {
                    crash_drop_rate: 0.0,
                    crash_tear_rate: 1.0,
                    ..FaultConfig::none()
                },
            );
            let path = Path::new("/disk/object");
            let old = vec![0xAAu8; 4 * sector];
            let file = mem.create_buffered(path).await.unwrap();
            file.write_at(old.clone(), 0).await.unwrap();
            file.sync().await.unwrap();
            mem.sync_dir(Path::new("/disk")).await.unwrap();
            // Unaligned: from the middle of sector 0 into sector 3.
            let start = sector / 2 + 3;
            let new = vec![0x55u8; 2 * sector + 100];
            file.write_at(new.clone(), start as u64).await.unwrap();
            mem.crash();
            let after = read_file(&mem, path).await;
            assert_eq!(after.len(), old.len());
            // Each disk sector the write touched is all old or all new
            // within the write's range: a tear never splits a sector.
            let end = start + new.len();
            for s in 0..4 {
                let lo = (s * sector).max(start);
                let hi = ((s + 1) * sector).min(end);
                if lo >= hi {
                    continue;
                }
                let piece = &after[lo..hi];
                assert!(
                    piece.iter().all(|&b| b == 0xAA) || piece.iter().all(|&b| b == 0x55),
                    "seed {seed}: sector {s} split"
                );
            }
            torn_seen += usize::from(after[start..end].contains(&0xAA) && after.contains(&0x55));
        }
        assert!(torn_seen > 0, "no seed tore the write");
    });
}

#[test]
fn remove_tree_takes_everything_beneath_and_copy_file_copies() {
    use ringstore_journal::storage::{copy_file, remove_tree};
    let dir = temp_dir();
    run(move || async move {
        let real = DmaStorage::new();
        let mem = MemStorage::new();
        let mem_root = Path::new("/disk/tree");
        mem.create_dir(mem_root).await.unwrap();
        for (storage_root, is_real) in [
            (dir.path().to_path_buf(), true),
            (mem_root.to_path_buf(), false),
        ] {
            let tree = storage_root.join("t");
            macro_rules! each {
                ($s:expr) => {{
                    let s = $s;
                    s.create_dir(&tree).await.unwrap();
                    s.create_dir(&tree.join("a")).await.unwrap();
                    s.create_dir(&tree.join("a/b")).await.unwrap();
                    write_file(s, &tree.join("a/b/f"), b"deep").await;
                    write_file(s, &tree.join("g"), b"top").await;
                    let copied =
                        copy_file(s, &tree.join("a/b/f"), &storage_root.join("copy")).await;
                    assert_eq!(copied.unwrap(), 4);
                    assert_eq!(read_file(s, &storage_root.join("copy")).await, b"deep");
                    let again = copy_file(s, &tree.join("g"), &storage_root.join("copy")).await;
                    assert_eq!(again.unwrap_err().kind(), ErrorKind::AlreadyExists);
                    remove_tree(s, &tree).await.unwrap();
                    assert_eq!(s.stat(&tree).await.unwrap_err().kind(), ErrorKind::NotFound);
                    remove_tree(s, &tree).await.unwrap();
                }};
            }
            if is_real {
                // A symlink in the tree is removed, not followed.
                let outside = storage_root.join("outside");
                std::fs::create_dir(&outside).unwrap();
                std::fs::write(outside.join("kept"), b"kept").unwrap();
                real.create_dir(&tree).await.unwrap();
                std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
                remove_tree(&real, &tree).await.unwrap();
                assert!(outside.join("kept").exists());
                each!(&real);
            } else {
                each!(&mem);
            }
        }
    });
}
