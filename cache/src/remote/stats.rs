//! Counters of a [`crate::Remote`], shared by its clones and its I/O thread
//! (atomics: the handle is `Send + Sync`). [`crate::Remote::stats`] copies
//! them into a [`RemoteStats`] snapshot; every count is also reported
//! through the `metrics` facade, so an embedder that installed a recorder
//! sees them without polling:
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `ringstore_remote_calls_total` | `op`, `outcome` (`ok`, `error`, `timeout`) | finished calls |
//! | `ringstore_remote_retries_total` | `op` | attempts after the first (parts of a multipart upload included) |
//! | `ringstore_remote_uploaded_bytes_total` | | object bytes written |
//! | `ringstore_remote_downloaded_bytes_total` | | object bytes read |
//! | `ringstore_remote_multipart_uploads_total` | | uploads done in parts |
//! | `ringstore_remote_rejected_total` | `reason` (`overloaded`, `shutdown`) | calls refused before they started |

use std::sync::atomic::{AtomicU64, Ordering};

use super::error::RemoteError;

/// A snapshot of a [`crate::Remote`]'s counters (all clones share them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteStats {
    /// Calls that finished successfully.
    pub calls_ok: u64,
    /// Calls that finished with an error (timeouts included).
    pub calls_failed: u64,
    /// Calls that hit their deadline.
    pub timeouts: u64,
    /// Attempts after the first, all operations (and multipart parts).
    pub retries: u64,
    /// Writes refused because the key existed.
    pub already_exists: u64,
    /// Objects written (single `PUT` or multipart).
    pub puts: u64,
    /// Objects written through a multipart upload (also in `puts`).
    pub multipart_uploads: u64,
    /// Downloads started (`get_*` calls that found the object).
    pub gets: u64,
    /// `head` calls (including the existence checks before writes).
    pub heads: u64,
    /// `list` calls.
    pub lists: u64,
    /// `delete` calls.
    pub deletes: u64,
    /// Object bytes written.
    pub uploaded_bytes: u64,
    /// Object bytes read.
    pub downloaded_bytes: u64,
    /// Calls refused before they started (queue full, shut down).
    pub rejected: u64,
}

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    calls_ok: AtomicU64,
    calls_failed: AtomicU64,
    timeouts: AtomicU64,
    retries: AtomicU64,
    already_exists: AtomicU64,
    puts: AtomicU64,
    multipart_uploads: AtomicU64,
    gets: AtomicU64,
    heads: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    uploaded_bytes: AtomicU64,
    downloaded_bytes: AtomicU64,
    rejected: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> RemoteStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RemoteStats {
            calls_ok: get(&self.calls_ok),
            calls_failed: get(&self.calls_failed),
            timeouts: get(&self.timeouts),
            retries: get(&self.retries),
            already_exists: get(&self.already_exists),
            puts: get(&self.puts),
            multipart_uploads: get(&self.multipart_uploads),
            gets: get(&self.gets),
            heads: get(&self.heads),
            lists: get(&self.lists),
            deletes: get(&self.deletes),
            uploaded_bytes: get(&self.uploaded_bytes),
            downloaded_bytes: get(&self.downloaded_bytes),
            rejected: get(&self.rejected),
        }
    }

    /// A call finished.
    pub(crate) fn finished<T>(&self, op: &'static str, result: &Result<T, RemoteError>) {
        let outcome = match result {
            Ok(_) => {
                add(&self.calls_ok, 1);
                "ok"
            }
            Err(error) => {
                add(&self.calls_failed, 1);
                match error {
                    RemoteError::Timeout { .. } => {
                        add(&self.timeouts, 1);
                        "timeout"
                    }
                    RemoteError::AlreadyExists { .. } => {
                        add(&self.already_exists, 1);
                        "error"
                    }
                    _ => "error",
                }
            }
        };
        metrics::counter!("ringstore_remote_calls_total", "op" => op, "outcome" => outcome)
            .increment(1);
    }

    pub(crate) fn retry(&self, op: &'static str) {
        add(&self.retries, 1);
        metrics::counter!("ringstore_remote_retries_total", "op" => op).increment(1);
    }

    pub(crate) fn rejected(&self, reason: &'static str) {
        add(&self.rejected, 1);
        metrics::counter!("ringstore_remote_rejected_total", "reason" => reason).increment(1);
    }

    pub(crate) fn put(&self, bytes: u64, multipart: bool) {
        add(&self.puts, 1);
        if multipart {
            add(&self.multipart_uploads, 1);
            metrics::counter!("ringstore_remote_multipart_uploads_total").increment(1);
        }
        add(&self.uploaded_bytes, bytes);
        metrics::counter!("ringstore_remote_uploaded_bytes_total").increment(bytes);
    }

    pub(crate) fn get(&self) {
        add(&self.gets, 1);
    }

    pub(crate) fn downloaded(&self, bytes: u64) {
        add(&self.downloaded_bytes, bytes);
        metrics::counter!("ringstore_remote_downloaded_bytes_total").increment(bytes);
    }

    pub(crate) fn head(&self) {
        add(&self.heads, 1);
    }

    pub(crate) fn list(&self) {
        add(&self.lists, 1);
    }

    pub(crate) fn delete(&self) {
        add(&self.deletes, 1);
    }
}
