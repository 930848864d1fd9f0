//! Shared by the engine's object-storage tests: the two backends the
//! conformance suite runs against (`object_store`'s local filesystem, and a
//! real S3-compatible server, s3s-fs, started per test on a loopback port
//! and killed on drop), with where each keeps an object's bytes on disk so
//! a test can damage one. The server itself is the cache's test support
//! (`cache/tests/remote_support`), included here.
//!
//! s3s-fs is found through `RINGSTORE_S3S_FS`, then `PATH`, then
//! `~/.cargo/bin`. Without it the S3 tests fail and say to run
//! `scripts/s3-server.sh install`, unless `RINGSTORE_S3_SKIP=1`.
#![allow(dead_code)]

use ringstore::object_store::{Remote, RemoteBuilder};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[path = "../../../cache/tests/remote_support/mod.rs"]
mod remote_support;
pub use remote_support::{S3Server, BUCKET};

/// A backend of the conformance suite.
pub enum Fixture {
    Local { root: PathBuf },
    S3 { server: S3Server },
}

impl Fixture {
    pub fn local(dir: &Path) -> Fixture {
        Fixture::Local {
            root: dir.join("objects-local"),
        }
    }

    /// `None` when the S3 tests are skipped (`RINGSTORE_S3_SKIP=1` and no
    /// s3s-fs); panics when s3s-fs is missing otherwise.
    pub fn s3(dir: &Path) -> Option<Fixture> {
        S3Server::start(&dir.join("s3s-root")).map(|server| Fixture::S3 { server })
    }

    /// A builder for this backend with test-sized deadlines.
    pub fn builder(&self) -> RemoteBuilder {
        let builder = match self {
            Fixture::Local { root } => Remote::local(root),
            Fixture::S3 { server } => Remote::s3(server.config()),
        };
        builder
            .op_timeout(Duration::from_secs(10))
            .backoff(Duration::from_millis(10), Duration::from_millis(100))
    }

    pub fn remote(&self) -> Remote {
        self.builder().open().expect("open remote")
    }

    /// The file holding object `key`'s bytes.
    pub fn object_file(&self, key: &str) -> PathBuf {
        match self {
            Fixture::Local { root } => root.join(key),
            Fixture::S3 { server } => server.root().join(BUCKET).join(key),
        }
    }
}

/// Flips one bit of the file at `path`, `from_end` bytes before its end.
pub fn flip_byte(path: &Path, from_end: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let len = file.metadata().unwrap().len();
    assert!(len > from_end, "{} is only {len} bytes", path.display());
    let at = len - 1 - from_end;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    byte[0] ^= 0x10;
    file.write_all_at(&byte, at).unwrap();
    file.sync_all().unwrap();
}
