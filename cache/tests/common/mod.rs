//! Shared helpers for the integration tests: a glommio executor per test and
//! temporary directories on the real disk (never tmpfs).

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};

/// Runs `f` to completion on a fresh glommio executor thread.
pub fn run<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(f)
        .expect("spawn executor")
        .join()
        .expect("executor panicked");
}

/// A temporary directory under cargo's target tmp dir (real disk).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir")
}

/// Every path under `dir`, relative, sorted (directories end in `/`).
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path: PathBuf = entry.path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.push(format!("{rel}/"));
            walk(root, &path, out);
        } else {
            out.push(rel);
        }
    }
}

/// Deterministic test bytes.
pub fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

/// Turns of the reactor [`until`] waits at most.
const UNTIL_TURNS_MAX: u32 = 200_000;

/// Lets the reactor turn until `done` holds (see
/// `ringstore_journal::glommio_quirks::turn_until`); fails naming `what`
/// after [`UNTIL_TURNS_MAX`] turns.
pub async fn until(what: &str, done: impl FnMut() -> bool) {
    if !ringstore_journal::glommio_quirks::turn_until(done, UNTIL_TURNS_MAX).await {
        panic!("{what}: not reached after {UNTIL_TURNS_MAX} reactor turns");
    }
}
