//! Replays every committed fuzz input — the seed corpus in
//! `fuzz/corpus/<target>/` and the reproducers of past findings in
//! `fuzz/regressions/<target>/` — through the same checks the fuzz targets
//! run, on the stable toolchain without libFuzzer:
//! `cargo test --manifest-path fuzz/Cargo.toml`.
//!
//! A crash found by the fuzzer becomes a regression test by copying its
//! input from `fuzz/artifacts/<target>/` into `fuzz/regressions/<target>/`.

use arbitrary::{Arbitrary, Unstructured};
use std::path::{Path, PathBuf};

/// Every committed input of `target`. The seed corpus must exist and hold
/// at least one input (a missing or emptied directory would make this
/// replay pass having run nothing); reproducers exist only for targets
/// that had findings.
fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = root.join(kind).join(target);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if kind == "regressions" && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", dir.display()),
        };
        let before = files.len();
        for entry in entries {
            let path = entry.expect("read a corpus directory").path();
            if path.is_file() && path.file_name().is_some_and(|n| n != ".gitkeep") {
                files.push(path);
            }
        }
        assert!(
            kind != "corpus" || files.len() > before,
            "{}: the seed corpus holds no input",
            dir.display()
        );
    }
    files.sort();
    files
}

/// Decodes each input as libFuzzer's `fuzz_target!` does and runs it on a
/// thread of its own (a panic must not leave a half-run executor behind for
/// the next input), then fails naming every input that panicked.
fn replay<T: for<'a> Arbitrary<'a> + Send + 'static>(target: &str, run: fn(&T)) {
    let files = inputs(target);
    let mut failed = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).expect("read a fuzz input");
        let input = T::arbitrary_take_rest(Unstructured::new(&bytes))
            .unwrap_or_else(|e| panic!("{}: does not decode: {e}", path.display()));
        eprintln!("replaying {}", path.display());
        if std::thread::spawn(move || run(&input)).join().is_err() {
            failed.push(path.display().to_string());
        }
    }
    println!("{target}: {} inputs replayed", files.len());
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs fail (panics above):\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn journal_files_inputs() {
    replay("journal_files", ringstore_fuzz::journal_files::run);
}

#[test]
fn journal_ops_inputs() {
    replay(
        "journal_ops",
        ringstore_fuzz::journal_ops::run::<ringstore_fuzz::journal_ops::FuzzOp>,
    );
}

#[test]
fn journal_replica_ops_inputs() {
    replay(
        "journal_replica_ops",
        ringstore_fuzz::journal_ops::run::<ringstore_fuzz::journal_ops::ReplicaOp>,
    );
}

#[test]
fn journal_damage_ops_inputs() {
    replay(
        "journal_damage_ops",
        ringstore_fuzz::journal_ops::run::<ringstore_fuzz::journal_ops::DamageOp>,
    );
}

#[test]
fn cache_ops_inputs() {
    replay("cache_ops", ringstore_fuzz::cache_ops::run);
}

#[test]
fn snapshot_files_inputs() {
    replay("snapshot_files", ringstore_fuzz::snapshot_files::run);
}
