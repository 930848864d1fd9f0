//! The fuzz targets' inputs and checks, shared by the libFuzzer binaries in
//! `fuzz_targets/`, the seed-corpus generator (`examples/make_corpus.rs`)
//! and the replay test (`tests/replay.rs`), which runs every committed
//! corpus and regression input on the stable toolchain without libFuzzer.
//!
//! Each module holds one target: its `Input` (an `Arbitrary` type whose
//! every list has a named upper bound) and `run(&Input)`, which panics on a
//! finding — a broken invariant, never an expected, typed error.
//!
//! * [`journal_files`] — arbitrary bytes as a journal directory (its
//!   superblock and segment files), raw or derived from a valid journal and
//!   then damaged.
//! * [`journal_ops`] — operation lists through the journal's deterministic
//!   crash simulator (`ringstore_journal::sim`); also `journal_replica_ops`,
//!   the same with a replica's truncations and hard states.
//! * [`cache_ops`] — operation lists through the cache's model checker
//!   (`ringstore_cache::sim`).
//! * [`snapshot_files`] — arbitrary bytes and sections as a snapshot file,
//!   loaded and restored as the broker metadata machine.

#![forbid(unsafe_code)]

pub mod cache_ops;
pub mod journal_files;
pub mod journal_ops;
pub mod snapshot_files;

use std::future::Future;

thread_local! {
    /// One glommio executor per thread, made on first use and reused by every
    /// input: making one (io_uring rings, buffers) costs far more than most
    /// inputs take to run.
    static EXECUTOR: glommio::LocalExecutor = glommio::LocalExecutorBuilder::default()
        .name("fuzz")
        .make()
        .expect("a glommio executor for the fuzz target (io_uring available? RLIMIT_MEMLOCK?)");
}

/// Scheduler turns given, after an input's future completed, to the tasks it
/// left behind.
const SETTLE_YIELDS_MAX: usize = 256;

/// Runs `future` to completion on this thread's executor, then gives the
/// tasks it left behind (a dropped journal's writer, read-ahead or
/// spare-segment tasks) [`SETTLE_YIELDS_MAX`] turns to finish, so what they
/// do is this input's doing and replays alone, not the next input's. Must
/// not be called from inside that executor (glommio executors do not nest).
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    EXECUTOR.with(|executor| {
        executor.run(async {
            let output = future.await;
            settle().await;
            output
        })
    })
}

/// Gives the other tasks on this thread's executor [`SETTLE_YIELDS_MAX`]
/// turns: background work (a journal's spare segment, its writer) gets to a
/// point that does not depend on the executor's timing, so what a crash
/// finds unsynced is the same in every run.
pub(crate) async fn settle() {
    for _ in 0..SETTLE_YIELDS_MAX {
        YieldNow(false).await;
    }
}

/// Pending once (after waking itself), then ready: lets every other ready
/// task of the queue run.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// When `RINGSTORE_FUZZ_PANIC_LOG` names a file, appends one line per panic
/// to it — `location<TAB>message`, newlines folded — before libFuzzer's hook
/// aborts. In fork mode (`-fork=N`) the children's output is discarded, so
/// this is the only record of what each crash was. `scripts/fuzz.sh` sets it.
pub fn log_panics() {
    let Some(path) = std::env::var_os("RINGSTORE_FUZZ_PANIC_LOG") else {
        return;
    };
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        use std::io::Write;
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let message: String = message.replace('\n', " | ").chars().take(600).collect();
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            let _ = writeln!(file, "{location}\t{message}");
        }
        previous(info);
    }));
}
