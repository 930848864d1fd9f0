//! Everything ringstore does because of how glommio 0.9 behaves, in one
//! place: the workarounds live here or are named here, so moving to a
//! newer glommio (or its fork) means reading this file first.
//!
//! glommio 0.9.0 (2024) is the last release on the registry; its upstream
//! asked for maintainers and a fork exists. It builds here with gcc 12 and
//! glibc 2.36 on Linux with io_uring. Nothing below is known to block a
//! newer distribution; what would is a kernel without io_uring (or with it
//! disabled by `io_uring_disabled`), which glommio needs for every reactor.
//!
//! The quirks:
//!
//! 1. **I/O is handed to the kernel only when no task is runnable.** The
//!    executor submits the queued io_uring requests between turns of its
//!    task queues; a task that stays runnable (a `yield_now` loop, a queue
//!    of jobs that never empties) holds back every write and fdatasync
//!    queued meanwhile until the preemption timer fires. [`reactor_turn`]
//!    takes the task off the run queue for one turn. Used between steps of
//!    long CPU work (journal verification windows, snapshot encoding) and
//!    between queued jobs of a raft shard's reactor.
//! 2. **io_uring opens fail with `EBADF` on a relative path.**
//!    [`absolute_dir`] resolves a directory once, when a builder is made
//!    (the journal's, the engine shard's).
//! 3. **The polled-I/O probe.** glommio decides once per executor thread
//!    and block device whether polled reads work, by reading the first
//!    `DmaFile` opened there; an empty first file makes it wrongly say yes
//!    and every later O_DIRECT read fails with `EOPNOTSUPP` (glommio issues
//!    #605 and #670). Guarded in `storage::dma`: a non-empty probe
//!    file is opened first, and a read that still fails that way falls back
//!    to a buffered handle. The cache's object files are buffered for their
//!    own reasons and never trip it (`ringstore_cache::staging`).
//! 4. **Errors lose their code.** glommio's own conversion of its
//!    "enhanced" errors into `io::Error` keeps only the kind (or a
//!    message); `storage::is_errno` matches the kind when the code is gone,
//!    and the cache unwraps the `io::Error` inside (`glommio_io` in
//!    `ringstore_cache::error`).
//! 5. **An executor that ends leaves descriptors open.** Each
//!    `LocalExecutor` leaks one eventfd when its thread ends (glommio issue
//!    #448, open upstream, fixed in the fork), and a file dropped without
//!    an explicit close is closed only at the reactor's next turn, which an
//!    executor that has just ended never takes (the cache's metadata ring
//!    reads its eventfd through such a file). A shard's executor lives as
//!    long as the process, so this costs nothing there; what spawns
//!    executors by the thousand (the crash simulations' and fuzzers' one
//!    per run) grows by two or three descriptors per run: about 20,000 in
//!    five minutes of `cache_ops` fuzzing, enough to hit the default open
//!    file limit of 1,024 within a minute. The cache test `descriptors`
//!    pins that a cache opened and closed on a living executor gives every
//!    descriptor back.
//! 6. **A task whose handle is dropped is cancelled.** `glommio::spawn_local`
//!    returns a `Task` that stops the task when dropped, where tokio's
//!    handle detaches it. openraft drops some of its tasks' handles at once
//!    and expects them to run on, so `ringstore::raft::ReactorRuntime`
//!    (openraft on a shard's reactor) detaches every task it spawns and
//!    returns its output through a channel; `ReactorThread::spawn` does the
//!    same. Everything else that spawns on a reactor keeps its `Task` or
//!    detaches it on purpose.
//! 7. **No timers or sockets that are `Send`.** glommio's timers and
//!    sockets belong to their reactor and are `!Send`, where openraft's
//!    runtime trait and network handles must be `Send`. `ReactorRuntime`
//!    takes its timers from the tokio runtime the reactor thread entered at
//!    start (their wakes cross threads; only timers pay that), and the
//!    cluster's peer connections live in tasks on the reactor behind `Send`
//!    handles (`ringstore::raft::cluster::reactor_net::ReactorLink`).
//! 8. **A glommio listener shares its port.** `glommio::net::TcpListener::bind`
//!    sets `SO_REUSEPORT`: a second node given the same address would
//!    share the port instead of being refused, and the connections it
//!    accepted linger in `TIME_WAIT` without `SO_REUSEADDR`, so a node
//!    SIGKILLed and restarted could not bind its address at once. The
//!    cluster accepts with tokio and hands each connection to the reactor
//!    (`reactor_net::adopt_stream`, through glommio 0.9's own socket2 0.4).
//! 9. **Every park is a `membarrier`.** A reactor with nothing to run calls
//!    `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` before it sleeps (its
//!    `sys/uring.rs`), an IPI to every core the process runs on; on a
//!    virtual machine that costs a VM exit per core. A replicated commit
//!    parks each node's reactor several times (`bench/PERFORMANCE.md`,
//!    "raft: where a commit's time goes"); `spin_before_park` did not
//!    change the 1-client latency there.
//! 10. **A socket write goes out before queued file I/O.** A task writing
//!     to a glommio `TcpStream` calls `send(2)` at once, while a file write
//!     queued before it waits for the next turn's `io_uring_enter` (quirk 1;
//!     the main ring is never "rushed"), and its submission then runs
//!     inline in that call (no `IOSQE_ASYNC` in glommio's API). A raft
//!     leader's requests therefore reach the followers before its own write
//!     reaches the kernel, and its write completes about 70 µs after theirs
//!     (`bench/PERFORMANCE.md`, "raft: the leader's own write is the
//!     1-client commit's last step"); making the requests wait a turn only
//!     moved the cost to them.
//! 11. **A directory's `sync` is an fdatasync.** `glommio::io::Directory::sync`
//!     issues `IORING_OP_FSYNC` with the datasync flag. ext4 and XFS make a
//!     directory's new entries durable either way, but POSIX promises it
//!     only for fsync(2), which is what the design asks for after a create,
//!     rename, link or unlink. `storage::dma`'s `sync_dir` calls a plain
//!     fsync on glommio's blocking thread pool instead.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Lets the reactor turn once: runs the other ready tasks, submits the I/O
/// they queued and reaps completions, before the caller goes on with CPU
/// work. A plain `yield_now` is not enough under glommio: the task is
/// runnable again at once, so the task queue never empties and the
/// executor neither hands queued I/O to the kernel nor reaps completions
/// (the journal's writes and fdatasyncs, which appenders wait for) until its
/// preemption timer fires. A timer takes the task off the run queue until
/// the reactor's next turn. Use it between steps of long CPU work on a
/// shard (verifying a window of entries, encoding a snapshot).
pub async fn reactor_turn() {
    glommio::timer::sleep(REACTOR_TURN).await;
}

/// Turns the reactor ([`reactor_turn`]) until `done` holds, at most
/// `turns_max` times; whether it held. A wait on an event observed by a
/// condition (a task reached its wait, a counter moved) rather than on a
/// guess of how long it takes: a yielding loop would keep the executor from
/// submitting the I/O the awaited task needs (quirk 1).
pub async fn turn_until(mut done: impl FnMut() -> bool, turns_max: u32) -> bool {
    for _ in 0..turns_max {
        if done() {
            return true;
        }
        reactor_turn().await;
    }
    done()
}

/// Tells whether the reactor has turned since a mark, with one task and
/// one timer made once ([`TurnWatch::spawn`]) instead of a task and a
/// timer per mark: the journal marks at the start of every run of inline
/// writes. [`TurnWatch::turned`] holds from the first reactor turn after
/// [`TurnWatch::mark`] (the watch's timer fires in that turn: quirk 1).
pub struct TurnWatch {
    inner: Rc<TurnWatchInner>,
}

#[derive(Default)]
struct TurnWatchInner {
    /// A mark the task has not armed its timer for yet.
    marked: Cell<bool>,
    turned: Cell<bool>,
    /// The task, waiting for a mark.
    waker: RefCell<Option<Waker>>,
    /// The watch was dropped: the task exits.
    dropped: Cell<bool>,
}

impl TurnWatchInner {
    fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

impl TurnWatch {
    /// A watch and its task, on the current reactor.
    pub fn spawn() -> TurnWatch {
        let inner = Rc::new(TurnWatchInner::default());
        glommio::spawn_local(watch_turns(inner.clone())).detach();
        TurnWatch { inner }
    }

    /// From now, [`TurnWatch::turned`] is false until the reactor turns.
    pub fn mark(&self) {
        self.inner.turned.set(false);
        self.inner.marked.set(true);
        self.inner.wake();
    }

    /// Whether the reactor turned since the last [`TurnWatch::mark`].
    pub fn turned(&self) -> bool {
        self.inner.turned.get()
    }
}

impl Drop for TurnWatch {
    fn drop(&mut self) {
        self.inner.dropped.set(true);
        self.inner.wake();
    }
}

/// The watch's task: for each mark, waits one reactor turn on a timer it
/// keeps, then says so.
async fn watch_turns(inner: Rc<TurnWatchInner>) {
    let mut timer = glommio::timer::Timer::new(REACTOR_TURN);
    loop {
        let marked = std::future::poll_fn(|cx| {
            if inner.dropped.get() {
                return Poll::Ready(false);
            }
            if inner.marked.replace(false) {
                return Poll::Ready(true);
            }
            *inner.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        if !marked {
            return;
        }
        timer.reset(REACTOR_TURN);
        (&mut timer).await;
        inner.turned.set(true);
    }
}

/// The timer [`reactor_turn`] sleeps on: any positive duration will do.
const REACTOR_TURN: std::time::Duration = std::time::Duration::from_micros(1);

/// `dir` made absolute against the current directory, without touching
/// the filesystem (glommio's io_uring opens fail with `EBADF` on a relative
/// path); `dir` itself if the current directory is unknown.
pub fn absolute_dir(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_directory_becomes_absolute_under_the_current_one() {
        let resolved = absolute_dir(Path::new("some/dir"));
        assert!(resolved.is_absolute());
        assert!(resolved.ends_with("some/dir"));
        assert_eq!(absolute_dir(Path::new("/already")), Path::new("/already"));
    }
}
