//! The cache's rooted disk (`RootedDisk`) keeps the storage contract the
//! journal's two backends keep, and changes nothing outside its root: not
//! through a planted symlink, not through `..`, not by an absolute path
//! elsewhere (from where it only reads and links).
mod common;
use common::*;
use ringstore_cache::disk::RootedDisk;
use ringstore_journal::storage::contract::{self, read_file, write_file};
use ringstore_journal::storage::{EntryKind, Storage};
use std::io::ErrorKind;

#[test]
fn the_rooted_disk_keeps_the_storage_contract() {
    let dir = tempdir();
    run(move || async move {
        let disk = RootedDisk::open(dir.path()).unwrap();
        let sub = dir.path().join("contract");
        disk.create_dir(&sub).await.unwrap();
        disk.sync_dir(dir.path()).await.unwrap();
        contract::check(&disk, &sub).await;
        // The root itself: a directory that can be synced and listed.
        assert_eq!(disk.stat(dir.path()).await.unwrap().kind, EntryKind::Dir);
        disk.sync_dir(dir.path()).await.unwrap();
        let names = disk.list_dir(&sub).unwrap();
        assert!(names.iter().any(|n| n == "b"), "{names:?}");
    });
}

#[test]
fn nothing_leads_outside_the_root() {
    let outside = tempdir();
    let dir = tempdir();
    run(move || async move {
        std::fs::write(outside.path().join("secret"), b"outside").unwrap();
        // A directory symlink planted inside the root, pointing out of it.
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
        let disk = RootedDisk::open(dir.path()).unwrap();
        let through = dir.path().join("escape/secret");
        let through_new = dir.path().join("escape/new");
        assert!(disk.open_buffered(&through).await.is_err());
        assert!(disk.create_buffered(&through_new).await.is_err());
        assert!(disk.remove(&through).await.is_err());
        assert!(disk.stat(&through).await.is_err());
        assert!(disk.list_dir(&dir.path().join("escape")).is_err());
        assert!(disk.sync_dir(&dir.path().join("escape")).await.is_err());
        write_file(&disk, &dir.path().join("mine"), b"inside").await;
        assert!(disk
            .link(&dir.path().join("mine"), &through_new)
            .await
            .is_err());
        // The symlink itself is seen, not followed, and can be removed.
        let meta = disk.stat(&dir.path().join("escape")).await.unwrap();
        assert_eq!(meta.kind, EntryKind::Other);
        // A file symlink is not opened either.
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("leaf")).unwrap();
        assert!(disk.open_buffered(&dir.path().join("leaf")).await.is_err());
        // `..` and paths elsewhere are refused.
        let up = dir.path().join("../x");
        assert!(disk.create_buffered(&up).await.is_err());
        // Outside the root the disk reads and links from, and changes
        // nothing.
        let elsewhere = outside.path().join("secret");
        assert_eq!(read_file(&disk, &elsewhere).await, b"outside");
        for refused in [
            disk.remove(&elsewhere).await.unwrap_err(),
            disk.create_buffered(&outside.path().join("new"))
                .await
                .unwrap_err(),
            disk.create_dir(&outside.path().join("dir"))
                .await
                .unwrap_err(),
            disk.rename(&elsewhere, &outside.path().join("moved"))
                .await
                .unwrap_err(),
            disk.link(&dir.path().join("mine"), &outside.path().join("new"))
                .await
                .unwrap_err(),
            disk.try_lock(&outside.path().join("lock"), b"")
                .await
                .unwrap_err(),
        ] {
            assert_eq!(refused.kind(), ErrorKind::InvalidInput, "{refused}");
        }
        disk.link(&elsewhere, &dir.path().join("adopted"))
            .await
            .unwrap();
        assert_eq!(
            read_file(&disk, &dir.path().join("adopted")).await,
            b"outside"
        );
        // Nothing outside changed.
        assert_eq!(
            std::fs::read(outside.path().join("secret")).unwrap(),
            b"outside"
        );
        assert!(!outside.path().join("new").exists());
        assert_eq!(read_file(&disk, &dir.path().join("mine")).await, b"inside");
        disk.remove(&dir.path().join("escape")).await.unwrap();
        assert!(outside.path().join("secret").exists());
    });
}

#[test]
fn a_fifo_in_place_of_a_file_is_refused_without_blocking() {
    let dir = tempdir();
    run(move || async move {
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let disk = RootedDisk::open(dir.path()).unwrap();
        let error = disk.open_buffered(&fifo).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
    });
}
