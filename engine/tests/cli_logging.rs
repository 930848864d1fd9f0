//! Pins that what the engine logs reaches the operator: the `ringstore`
//! tool installs a `tracing` subscriber on stderr. With `RUST_LOG` unset, a
//! warning from deep inside the engine (the shard skipping a damaged newest
//! snapshot as `check` reopens the data dir, on a reactor thread) is printed
//! on stderr while stdout stays one JSON document under `--json`;
//! `RUST_LOG=error` hides it; a `RUST_LOG` that does not parse is not fatal:
//! the default (warnings and errors) applies and a warning names the value.
#![cfg(feature = "cli")]

mod common;
use common::temp_dir;
use std::path::{Path, PathBuf};
use std::process::Output;

const BIN: &str = env!("CARGO_BIN_EXE_ringstore");

/// A one-shard data dir from `ringstore demo` (which ends with a
/// checkpoint, so it holds snapshots) with a bit flipped in the body of
/// its newest snapshot: reopening it skips that one with a warning and
/// recovers from the one before plus the journal. Returns the temp dir
/// (kept alive), the data dir and the damaged snapshot.
fn data_dir_with_a_damaged_snapshot() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = temp_dir();
    let data = tmp.path().join("data");
    let demo = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args([
            "demo",
            "--shards",
            "1",
            "--commands",
            "200",
            "--clients",
            "1",
        ])
        .env_remove("RUST_LOG")
        .output()
        .expect("run ringstore demo");
    assert!(demo.status.success(), "demo failed\n{}", text(&demo));
    let mut snapshots: Vec<PathBuf> = std::fs::read_dir(data.join("shard-000").join("snapshots"))
        .expect("snapshots dir")
        .map(|entry| entry.expect("dir entry").path())
        .collect();
    snapshots.sort();
    let newest = snapshots.pop().expect("demo left no snapshot");
    // A bit in the first section's body, past the 4 KiB header block.
    let mut bytes = std::fs::read(&newest).expect("read snapshot");
    bytes[4096 + 3] ^= 0x20;
    std::fs::write(&newest, bytes).expect("write snapshot");
    (tmp, data, newest)
}

/// `ringstore --json check` with an empty ack log (nothing to look up; the
/// engine still opens every shard), `RUST_LOG` as given (`None`: unset).
fn check(tmp: &Path, data: &Path, rust_log: Option<&str>) -> Output {
    let ack_log = tmp.join("acks");
    std::fs::write(&ack_log, "").expect("write ack log");
    let mut command = std::process::Command::new(BIN);
    command
        .arg("--data-dir")
        .arg(data)
        .args(["--json", "check", "--ack-log"])
        .arg(&ack_log)
        .env_remove("RUST_LOG");
    if let Some(value) = rust_log {
        command.env("RUST_LOG", value);
    }
    let output = command.output().expect("run ringstore check");
    assert!(output.status.success(), "check failed\n{}", text(&output));
    // Whatever is logged, stdout is the command's one JSON document.
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e})\n{}", text(&output)));
    assert_eq!(report["ok"], true, "{}", text(&output));
    output
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The stderr lines at level WARN that contain `needle`.
fn warnings_naming(output: &Output, needle: &str) -> usize {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| line.contains(" WARN ") && line.contains(needle))
        .count()
}

#[test]
fn engine_warnings_reach_stderr_unless_rust_log_hides_them() {
    let (tmp, data, damaged) = data_dir_with_a_damaged_snapshot();
    // The warning names the file; its wording is the snapshot store's.
    let damaged = damaged.to_str().expect("utf-8 path");

    let unset = check(tmp.path(), &data, None);
    assert_eq!(
        warnings_naming(&unset, damaged),
        1,
        "RUST_LOG unset: the skipped snapshot's warning is missing\n{}",
        text(&unset)
    );

    let errors_only = check(tmp.path(), &data, Some("error"));
    assert_eq!(
        warnings_naming(&errors_only, damaged),
        0,
        "RUST_LOG=error still shows the warning\n{}",
        text(&errors_only)
    );
    assert!(
        !String::from_utf8_lossy(&errors_only.stderr).contains(" WARN "),
        "{}",
        text(&errors_only)
    );

    // Not a level: the whole value is refused, the default applies.
    let bad = check(tmp.path(), &data, Some("ringstore=loud"));
    assert_eq!(
        warnings_naming(&bad, "ringstore=loud"),
        1,
        "a bad RUST_LOG is not reported\n{}",
        text(&bad)
    );
    assert_eq!(
        warnings_naming(&bad, damaged),
        1,
        "a bad RUST_LOG did not fall back to warnings and errors\n{}",
        text(&bad)
    );
}
