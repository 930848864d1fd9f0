//! Directories under the power-cut model: a directory is an entry of its
//! parent, undone by a crash with everything beneath it (synced or not)
//! unless its parent was synced after it; `prepare_dir` makes a whole path
//! durable, on the simulated disk and on the real one.
mod common;
use common::*;
use ringstore_journal::storage::{
    create_dir_all_durably_blocking, prepare_dir, DmaStorage, FaultConfig, IoBuf, MemStorage,
    Storage, StorageFile,
};
use ringstore_journal::Journal;
use std::path::Path;

/// Writes a durable one-block file at `path` (fdatasync, then an fsync of
/// its directory): durable as far as the file and its own directory go.
async fn write_synced_file(mem: &MemStorage, path: &Path) {
    let file = mem.create(path, false).await.unwrap();
    let mut buf = file.alloc_buf(4096);
    buf.as_bytes_mut().fill(7);
    file.write_at(buf, 0).await.unwrap();
    file.sync().await.unwrap();
    mem.sync_dir(path.parent().unwrap()).await.unwrap();
}

#[test]
fn a_directory_whose_parent_was_not_synced_is_lost_with_its_synced_files() {
    run(|| async {
        let mem = MemStorage::new();
        let dir = Path::new("/disk/shard-0");
        mem.create_dir(dir).await.unwrap();
        write_synced_file(&mem, &dir.join("identity")).await;
        mem.crash();
        assert!(mem.paths().is_empty(), "left {:?}", mem.paths());
        assert!(mem.list_dir(dir).is_err(), "the directory itself is gone");
        // Gone means gone: nothing can be created in it until it is made again.
        assert!(mem.create(&dir.join("x"), false).await.is_err());
    });
}

#[test]
fn prepare_dir_makes_every_level_durable() {
    run(|| async {
        // A crash undoes every directory operation not synced.
        let mem = MemStorage::with_faults(1, FaultConfig::none());
        // Beneath a directory the disk made, every level must be made.
        prepare_dir(&mem, Path::new("/disk/data")).await.unwrap();
        let dir = Path::new("/disk/data/shard-0/journal");
        assert!(mem.create_dir(dir).await.is_err(), "its parent is missing");
        prepare_dir(&mem, dir).await.unwrap();
        write_synced_file(&mem, &dir.join("superblock")).await;
        mem.crash();
        assert_eq!(mem.paths(), vec![dir.join("superblock")]);
        // Found again after the crash; `.` components are ignored.
        prepare_dir(&mem, &dir.join(".")).await.unwrap();
        let deeper = Path::new("/disk/data/shard-1/./journal/.");
        prepare_dir(&mem, deeper).await.unwrap();
        write_synced_file(&mem, Path::new("/disk/data/shard-1/journal/superblock")).await;
        mem.crash();
        assert_eq!(mem.paths().len(), 2, "{:?}", mem.paths());
    });
}

#[test]
fn a_path_too_deep_is_an_error_not_a_hang() {
    run(|| async {
        let mem = MemStorage::new();
        prepare_dir(&mem, Path::new("/disk/base")).await.unwrap();
        let mut deep = std::path::PathBuf::from("/disk/base");
        for level in 0..(ringstore_journal::storage::DIR_DEPTH_MAX + 2) {
            deep.push(format!("l{level}"));
        }
        let error = prepare_dir(&mem, &deep).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{error}");
    });
}

#[test]
fn an_acknowledged_append_survives_a_crash_right_after_the_first_open() {
    // The journal's first open creates its directory (and the shard
    // directory above it); an append acknowledged then must survive a crash
    // that undoes every directory operation not synced.
    run(|| async {
        let mem = MemStorage::new();
        prepare_dir(&mem, Path::new("/disk/data")).await.unwrap();
        let dir = Path::new("/disk/data/shard-3/journal");
        let open = || {
            Journal::builder(dir)
                .storage(mem.clone())
                .slot_count(64)
                .open()
        };
        let journal = open().await.unwrap();
        let op = journal.append(b"acknowledged").await.unwrap();
        drop(journal);
        mem.crash();
        let journal = open().await.unwrap();
        let entry = journal
            .read(op)
            .await
            .unwrap()
            .expect("acknowledged op lost");
        assert_eq!(entry.payload, b"acknowledged");
    });
}

#[test]
fn the_real_disk_creates_and_checks_a_nested_directory() {
    let root = temp_dir();
    let dir = root.path().join("a/b/c");
    run({
        let dir = dir.clone();
        || async move {
            prepare_dir(&DmaStorage::new(), &dir).await.unwrap();
            // Again: it exists now, and its levels are synced again.
            prepare_dir(&DmaStorage::new(), &dir.join("."))
                .await
                .unwrap();
        }
    });
    assert!(dir.is_dir());
    assert!(create_dir_all_durably_blocking(&root.path().join("d/./e/.")).is_ok());
    assert!(root.path().join("d/e").is_dir());
    let blocking = root.path().join("x/y");
    create_dir_all_durably_blocking(&blocking).unwrap();
    create_dir_all_durably_blocking(&blocking).unwrap();
    assert!(blocking.is_dir());
    // A file where a directory should be: an error, not a panic.
    std::fs::write(root.path().join("file"), b"").unwrap();
    assert!(create_dir_all_durably_blocking(&root.path().join("file/z")).is_err());
}
