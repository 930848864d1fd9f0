//! `ringstore stress` killed with SIGKILL at random moments, many times,
//! with `ringstore check` after every kill: nothing acknowledged is ever
//! lost. Also `check`'s own refusals.
//!
//! RINGSTORE_STRESS_KILLS sets the number of kills (default 12).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ringstore");

fn ringstore(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(data_dir)
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

fn acked_lines(ack_log: &Path) -> usize {
    std::fs::read_to_string(ack_log)
        .map(|t| t.matches('\n').count())
        .unwrap_or(0)
}

#[test]
fn stress_killed_at_random_moments_never_loses_an_acknowledged_command() {
    let kills: u64 = std::env::var("RINGSTORE_STRESS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let dir = common::temp_dir();
    let data_dir = dir.path().join("data");
    let ack_log = dir.path().join("acks");
    let mut rng = ringstore::broker::gen::splitmix64(0x5eed ^ u64::from(std::process::id()));
    let mut checked = 0;
    for kill in 0..kills {
        let mut stress = Command::new(BIN)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["stress", "--shards", "2", "--clients", "16", "--ack-log"])
            .arg(&ack_log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stress");
        // Anywhere from during startup and recovery to well into the load.
        let wait = Duration::from_millis(50 + rng() % 1500);
        std::thread::sleep(wait);
        stress.kill().expect("SIGKILL");
        let status = stress.wait().expect("reap");
        assert!(
            status.code().is_none(),
            "stress ended by itself: {status:?}"
        );

        let check = ringstore(
            &data_dir,
            &["check", "--ack-log", ack_log.to_str().expect("utf-8 path")],
        );
        // A kill before the data directory's superblock or the ack log
        // exists leaves nothing to check yet.
        let manifest = ringstore::runtime::startup::MANIFEST_FILE_NAME;
        if !data_dir.join(manifest).exists() || !ack_log.exists() {
            continue;
        }
        assert!(
            check.status.success(),
            "kill {kill} after {wait:?}: check failed\n{}",
            text(&check)
        );
        checked += 1;
        eprintln!(
            "kill {kill} after {wait:?}: {} acknowledged ids so far, check passed",
            acked_lines(&ack_log)
        );
    }
    assert!(checked > 0, "no run got far enough to check");
    assert!(
        acked_lines(&ack_log) > 0,
        "no command was ever acknowledged"
    );
}

#[test]
fn check_names_the_first_missing_id_and_fails() {
    let dir = common::temp_dir();
    let data_dir = dir.path().join("data");
    let ack_log = dir.path().join("acks");
    let log = ack_log.to_str().expect("utf-8 path");
    let stress = ringstore(
        &data_dir,
        &[
            "stress",
            "--shards",
            "2",
            "--clients",
            "4",
            "--duration",
            "0.5",
            "--ack-log",
            log,
        ],
    );
    assert!(stress.status.success(), "{}", text(&stress));
    let check = ringstore(&data_dir, &["check", "--ack-log", log]);
    assert!(check.status.success(), "{}", text(&check));

    // An id that was never written: check must name it.
    let mut acks = std::fs::read_to_string(&ack_log).unwrap();
    let missing: u64 = 65536 * 1_000_000 + 7;
    acks.push_str(&format!("{missing}\n"));
    std::fs::write(&ack_log, acks).unwrap();
    let check = ringstore(&data_dir, &["check", "--ack-log", log]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(
        String::from_utf8_lossy(&check.stdout).contains(&missing.to_string()),
        "{}",
        text(&check)
    );

    // A second stress run continues with fresh ids.
    let before = acked_lines(&ack_log);
    let stress = ringstore(
        &data_dir,
        &[
            "stress",
            "--clients",
            "4",
            "--duration",
            "0.3",
            "--ack-log",
            log,
        ],
    );
    assert!(stress.status.success(), "{}", text(&stress));
    let ids: Vec<u64> = std::fs::read_to_string(&ack_log)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let old: std::collections::HashSet<u64> = ids[..before].iter().copied().collect();
    assert!(
        ids[before..].iter().all(|id| !old.contains(id)),
        "ids reused"
    );
}

#[test]
fn check_refuses_what_is_not_a_data_dir_or_an_ack_log() {
    let dir = common::temp_dir();
    let ack_log = dir.path().join("acks");
    std::fs::write(&ack_log, "1\n").unwrap();
    let log = ack_log.to_str().expect("utf-8 path");
    let check = ringstore(&dir.path().join("nothing"), &["check", "--ack-log", log]);
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    assert!(String::from_utf8_lossy(&check.stderr).contains("not an engine data directory"));

    let check = ringstore(dir.path(), &["check", "--ack-log", "/nonexistent/acks"]);
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    assert!(String::from_utf8_lossy(&check.stderr).contains("/nonexistent/acks"));
}

#[test]
fn startup_failures_are_clear_errors_with_a_nonzero_exit() {
    let dir = common::temp_dir();
    let data_dir = dir.path().join("data");
    let small = [
        "demo",
        "--shards",
        "1",
        "--commands",
        "100",
        "--clients",
        "4",
    ];

    // Too little locked memory for a reactor (root may lower its own limit).
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -l 64 && exec \"$0\" --data-dir \"$1\" {}",
            small.join(" ")
        ))
        .arg(BIN)
        .arg(&data_dir)
        .output()
        .expect("run sh");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("ulimit -l"),
        "{}",
        text(&output)
    );

    // A filesystem without O_DIRECT (tmpfs), where the machine has one.
    if Path::new("/dev/shm").is_dir() {
        let shm = tempfile::tempdir_in("/dev/shm").expect("tmpfs dir");
        let output = ringstore(shm.path(), &small);
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("O_DIRECT"),
            "{}",
            text(&output)
        );
    }

    // A data dir another process has open.
    let mut stress = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["stress", "--shards", "1", "--clients", "1", "--ack-log"])
        .arg(dir.path().join("acks"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start stress");
    let started = std::time::Instant::now();
    while !data_dir.join("shard-000").join("journal").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "stress did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = ringstore(&data_dir, &small);
    stress.kill().expect("SIGKILL");
    stress.wait().expect("reap");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("locked by process") && stderr.contains(&stress.id().to_string()),
        "{}",
        text(&output)
    );

    // Another shard count than the data dir holds.
    let output = ringstore(&data_dir, &["demo", "--shards", "3", "--commands", "10"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("holds 1 shards"),
        "{}",
        text(&output)
    );
}

#[test]
fn a_damaged_shard_fails_demo_and_check_naming_the_shard_and_file() {
    let dir = common::temp_dir();
    let data_dir = dir.path().join("data");
    let ack_log = dir.path().join("acks");
    let log = ack_log.to_str().expect("utf-8 path");
    let stress = ringstore(
        &data_dir,
        &[
            "stress",
            "--shards",
            "2",
            "--clients",
            "2",
            "--duration",
            "0.3",
            "--ack-log",
            log,
        ],
    );
    assert!(stress.status.success(), "{}", text(&stress));
    let identity = data_dir.join("shard-001").join("identity");
    let mut bytes = std::fs::read(&identity).unwrap();
    bytes[20] ^= 0x01;
    std::fs::write(&identity, bytes).unwrap();
    for args in [
        vec!["check", "--ack-log", log],
        vec!["demo", "--commands", "10"],
    ] {
        let output = ringstore(&data_dir, &args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("shard 1") && stderr.contains("identity"),
            "{args:?}: {}",
            text(&output)
        );
    }
}
