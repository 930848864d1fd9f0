//! Pins `ringstore restore` on the default local object store
//! (`<data-dir>/object-store`, no config file): a broker shard whose
//! directory was deleted is rebuilt from its uploaded snapshot (exit 0, a
//! table naming the generation and the op and epoch before and after), its
//! state equal to before; a second loss and restore with `--json` restores
//! the first restore's own snapshot and numbers above it; one from behind
//! a damaged newest generation exits 1 naming it; an unknown domain exits 2
//! with a clear error and touches nothing; a directory holding a shard is
//! refused.
#![cfg(feature = "cli")]

mod common;
use common::*;
use ringstore::broker::{Command, Metadata, StreamCommand};
use ringstore::object_store::{ObjectStoreSettings, Remote};
use ringstore::Shard;
use serde_json::Value;
use std::path::Path;
use std::process::Output;
use std::time::Duration;
use uuid::Uuid;

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
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Opens shard 0 of `data` with the CLI's defaults (default journal, the
/// local store in `<data>/object-store`), retrying a lock a child process
/// may still hold for a moment.
async fn open(data: &Path) -> Shard<Metadata> {
    let remote = Remote::local(data.join("object-store")).open().unwrap();
    for _ in 0..500 {
        match Shard::<Metadata>::builder(data.join("shard-000"))
            .object_store(ObjectStoreSettings::new(remote.clone()))
            .open()
            .await
        {
            Err(ringstore::Error::DirLocked { .. }) => {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            other => return other.unwrap(),
        }
    }
    panic!("shard-000 stayed locked");
}

fn state(data: &Path) -> Metadata {
    let data = data.to_path_buf();
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let shard = open(&data).await;
            let state = shard.read(Metadata::clone);
            shard.close().await.unwrap();
            state
        })
        .unwrap()
        .join()
        .unwrap()
}

/// `ringstore restore --json` of shard 0 of `domain` into `data`, which
/// must exit with `code`; its report.
fn restore_json(data: &Path, domain: &str, code: i32) -> Value {
    let output = ringstore(
        data,
        &["restore", "--domain", domain, "--shard", "0", "--json"],
    );
    assert_eq!(output.status.code(), Some(code), "{}", text(&output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&output)))
}

#[test]
fn restore_rebuilds_a_deleted_shard_from_the_local_store() {
    let tmp = temp_dir();
    let data = tmp.path().join("data");
    ringstore::runtime::startup::check_manifest(&data, 1).unwrap();
    let (domain, op, before) = {
        let data = data.clone();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let shard = open(&data).await;
                for n in 0..30 {
                    let name = format!("s-{n}");
                    let create = Command::Stream(StreamCommand::Create { name });
                    shard.submit(create).await.unwrap().unwrap();
                }
                let op = shard
                    .checkpoint()
                    .await
                    .unwrap()
                    .snapshot
                    .unwrap()
                    .watermark;
                assert!(shard.wait_for_upload(Duration::from_secs(30)).await);
                let state = shard.read(Metadata::clone);
                let domain = shard.domain();
                shard.close().await.unwrap();
                (domain, op, state)
            })
            .unwrap()
            .join()
            .unwrap()
    };
    let domain_arg = domain.to_string();

    // An unknown domain: exit 2, a clear error, nothing touched.
    std::fs::remove_dir_all(data.join("shard-000")).unwrap();
    let unknown = Uuid::new_v4().to_string();
    let output = ringstore(&data, &["restore", "--domain", &unknown, "--shard", "0"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("no snapshot of domain {unknown}")),
        "{stderr}"
    );
    assert!(!data.join("shard-000").exists());

    // The lost shard, restored: a table of what happened.
    let output = ringstore(&data, &["restore", "--domain", &domain_arg, "--shard", "0"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for expected in [
        format!("snapshots/snapshot-{op:020}.snap"),
        "op before -> after".to_string(),
        "epoch before -> after".to_string(),
        domain_arg.clone(),
    ] {
        assert!(stdout.contains(&expected), "{expected:?} in\n{stdout}");
    }
    assert_eq!(state(&data), before, "state equal to before");

    // Nor the shard count of a data directory that records none (its
    // superblock lost with the disk).
    let lost = tmp.path().join("lost");
    let output = ringstore(&lost, &["restore", "--domain", &domain_arg, "--shard", "0"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--shards"),
        "{}",
        text(&output)
    );
    assert!(!lost.join("shard-000").exists());

    // Which shard is never guessed.
    let output = ringstore(&data, &["restore", "--domain", &domain_arg]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--shard"),
        "{}",
        text(&output)
    );

    // A directory holding a shard is refused.
    let output = ringstore(&data, &["restore", "--domain", &domain_arg, "--shard", "0"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("already holds a shard"),
        "{}",
        text(&output)
    );

    // Lost again: the newest generation is now the first restore's own
    // snapshot, and numbering goes above it.
    std::fs::remove_dir_all(data.join("shard-000")).unwrap();
    let report = restore_json(&data, &domain_arg, 0);
    let restored_op = report["restored"]["op"].as_u64().unwrap();
    assert!(restored_op > op, "{report}");
    assert!(report["floor"]["op"].as_u64().unwrap() > restored_op);
    assert!(
        report["floor"]["epoch"].as_u64().unwrap() > report["restored"]["epoch"].as_u64().unwrap()
    );
    assert_eq!(report["skipped"].as_array().unwrap().len(), 0);
    assert_eq!(report["domain"], domain_arg.as_str());
    assert_eq!(report["reset_snapshot_uploaded"], true);
    assert_eq!(state(&data), before);

    // Lost a third time, with the store's newest generation damaged: the
    // restore passes it over for the one before, and exits 1 (restored,
    // but from less than the newest state the store should have held), so
    // a script can tell; the report names what it passed over.
    std::fs::remove_dir_all(data.join("shard-000")).unwrap();
    let uploaded = data
        .join("object-store")
        .join(&domain_arg)
        .join("snapshots");
    let newest = std::fs::read_dir(&uploaded)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "snap"))
        .max()
        .expect("an uploaded snapshot");
    let mut bytes = std::fs::read(&newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&newest, &bytes).unwrap();
    let report = restore_json(&data, &domain_arg, 1);
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{report}");
    let newest_name = newest.file_name().unwrap().to_string_lossy().into_owned();
    assert!(skipped[0].to_string().contains(&newest_name), "{report}");
    assert_eq!(state(&data), before);
}
