//! The crate's only `unsafe` code: a per-shard io_uring for the namespace
//! operations glommio 0.9 has no call for, and the few raw syscalls that have
//! no io_uring opcode at all.
//!
//! # Why a second ring
//!
//! glommio drives file *data* (`BufferedFile::{read_at, write_at, fdatasync}`)
//! through its own rings, but has no `linkat`, no `*at` variants relative to a
//! directory fd, and no `openat2` with `RESOLVE_BENEATH`. Those go through
//! [`Uring`], a small ring owned by the cache (one per shard, never shared
//! across threads). The kernel punts every one of these opcodes to its io-wq
//! workers, so submitting never blocks the reactor.
//!
//! Completions are signalled through an eventfd registered with the ring. A
//! reaper task reads that eventfd *through glommio* (a buffered read that the
//! kernel completes when the counter becomes non-zero), so waiting for a
//! metadata op parks the task in glommio's reactor like any other I/O: no
//! thread sleeps, no spinning.
//!
//! # Buffer ownership
//!
//! Every pointer handed to the kernel (paths, `open_how`, the `statx` buffer),
//! and the directory fd the op resolves names against (held by an `Rc`, so a
//! closed and reused fd number can never redirect an abandoned op), lives in
//! the op's slot in [`Uring`]'s slab until the completion arrives,
//! even if the future that submitted it is dropped first (the slot is then
//! marked abandoned and freed by the reaper; an abandoned `openat2` that
//! succeeded has its fd closed). Dropping the ring waits for every in-flight
//! op, so the kernel never writes into freed memory.
//!
//! # Syscalls without an io_uring opcode
//!
//! `fstatvfs` (filesystem size for percent limits and the free-space floor),
//! a blocking `openat2` for a directory listing, and `eventfd` itself have
//! no io_uring opcode (or no caller that can await); each is a single
//! short syscall. The instance lock is the storage layer's `flock`.
//!
//! `fsetxattr` and `fgetxattr` (an object's checksum attribute) are made
//! directly too, although io_uring has opcodes for them: those need Linux
//! 5.19, and each call here is one small attribute in the inode, set right
//! before an `fsync` the caller waits for anyway, or read before a read
//! of the whole object. The startup walk reads each object's attribute
//! with `lgetxattr` on glommio's blocking pool, beside its `lstat`.

use std::cell::{Cell, RefCell};
use std::ffi::CString;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use glommio::io::BufferedFile;
use io_uring::{opcode, squeue, types, IoUring};
use slab::Slab;

use event_listener::Event;

/// Submission-queue entries of the metadata ring. Every cache operation has at
/// most one metadata op in flight, so this bounds concurrent namespace
/// operations per shard; more wait (without blocking) for a free slot.
pub(crate) const URING_ENTRIES: u32 = 64;

/// Ops in flight on the metadata ring at once (the completion queue is twice
/// the submission queue, so it can never overflow).
const URING_OPS_IN_FLIGHT_MAX: usize = URING_ENTRIES as usize;

/// Attempts of `io_uring_enter` to submit when it fails transiently (EINTR,
/// EAGAIN, EBUSY) before the op is given up.
const SUBMIT_ATTEMPTS_MAX: u32 = 16;

/// An eventfd read returns its 8-byte counter.
const EVENTFD_READ_BYTES: usize = 8;

/// Back-off for the reaper if the eventfd read ever fails (it should not):
/// it then polls the completion queue on a glommio timer instead.
const REAPER_FALLBACK_POLL: Duration = Duration::from_micros(200);

/// What an op needs kept alive until its completion, and what to undo if
/// nobody is left to receive the result.
#[derive(Default)]
struct OpBufs {
    path_a: Option<CString>,
    path_b: Option<CString>,
    how: Option<Box<types::OpenHow>>,
    statx: Option<Box<libc::statx>>,
    /// The directory (or file) fd the op works relative to: kept open until
    /// the completion is reaped, so an abandoned op can never run against a
    /// closed fd number the process has since reused for something else.
    _dir: Option<Rc<OwnedFd>>,
    /// A second fd the op uses (the directory `link` links into, the file
    /// `link_fd` links): kept open like `_dir`.
    _src: Option<Rc<OwnedFd>>,
    /// The op returns a new fd (openat2): close it if the result is abandoned.
    returns_fd: bool,
}

impl OpBufs {
    /// Buffers of an op on two names relative to `dir`, which the op keeps
    /// open until its completion is collected.
    fn two_paths(dir: &Rc<OwnedFd>, a: &str, b: &str) -> io::Result<OpBufs> {
        Ok(OpBufs {
            _dir: Some(Rc::clone(dir)),
            path_a: Some(cstring(a)?),
            path_b: Some(cstring(b)?),
            ..OpBufs::default()
        })
    }
}

struct Slot {
    result: Option<i32>,
    waker: Option<Waker>,
    abandoned: bool,
    bufs: OpBufs,
}

struct RingInner {
    ring: RefCell<IoUring>,
    slots: RefCell<Slab<Slot>>,
    /// Signalled when a slot frees up.
    space: Event,
    /// Kept so a fallback poller knows the ring is still wanted.
    reaper_failed: Cell<bool>,
}

impl RingInner {
    /// Moves every posted completion into its slot and wakes its waiter.
    fn drain(&self) {
        let mut freed = false;
        let mut ring = self.ring.borrow_mut();
        let mut slots = self.slots.borrow_mut();
        for cqe in ring.completion() {
            let Ok(index) = usize::try_from(cqe.user_data()) else {
                continue;
            };
            let Some(slot) = slots.get_mut(index) else {
                // Not ours: every SQE we push carries its slot index.
                tracing::error!(user_data = cqe.user_data(), "completion for unknown slot");
                continue;
            };
            if slot.abandoned {
                if slot.bufs.returns_fd && cqe.result() >= 0 {
                    // SAFETY: the kernel just returned this fd to us and no one
                    // else has seen it; wrapping it in OwnedFd closes it once.
                    drop(unsafe { OwnedFd::from_raw_fd(cqe.result()) });
                }
                slots.remove(index);
                freed = true;
            } else {
                slot.result = Some(cqe.result());
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
            }
        }
        drop(slots);
        drop(ring);
        if freed {
            self.space.notify(usize::MAX);
        }
    }
}

impl RingInner {
    /// Pushes the SQE of the slot at `index` and submits it. On an error the
    /// slot is left consistent: removed if its entry never reached the
    /// submission queue, handed to the reaper (abandoned) if it did, since
    /// the next submit (another op's, or the teardown's) then hands it to the
    /// kernel and its buffers must live until its completion. So the slab
    /// only ever holds slots that really are, or will be, in flight.
    fn push(&self, index: usize, sqe: &squeue::Entry) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: every pointer in `sqe` points into the slot's `bufs` (and
        // the fd it names is kept open by `bufs._dir`), which stay alive
        // until this op's completion is reaped, even if the submitting future
        // is dropped (see `OpFuture::drop`).
        let mut pushed = unsafe { ring.submission().push(sqe).is_ok() };
        if !pushed {
            // The queue is full of entries not yet handed to the kernel.
            match submit_retrying(&mut ring) {
                // SAFETY: as above.
                Ok(()) => pushed = unsafe { ring.submission().push(sqe).is_ok() },
                Err(error) => {
                    drop(ring);
                    self.forget_unpushed(index);
                    return Err(error);
                }
            }
        }
        if !pushed {
            drop(ring);
            self.forget_unpushed(index);
            return Err(io::Error::other("metadata ring submission queue full"));
        }
        let submitted = submit_retrying(&mut ring);
        drop(ring);
        if submitted.is_err() {
            if let Some(slot) = self.slots.borrow_mut().get_mut(index) {
                slot.abandoned = true;
            }
        }
        submitted
    }

    /// Removes a slot whose entry never reached the submission queue.
    fn forget_unpushed(&self, index: usize) {
        self.slots.borrow_mut().remove(index);
        self.space.notify(usize::MAX);
    }
}

impl Drop for RingInner {
    fn drop(&mut self) {
        // Wait for every op still in flight so the kernel never writes into a
        // buffer (statx) we are about to free. Bounded by the ops in flight,
        // each of which completes on its own.
        let ring = self.ring.get_mut();
        let slots = self.slots.get_mut();
        // Slots whose completion already arrived are not in flight.
        slots.retain(|_, slot| slot.result.is_none());
        while !slots.is_empty() {
            if let Err(error) = ring.submit_and_wait(1) {
                if error.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                tracing::error!(%error, in_flight = slots.len(), "metadata ring teardown failed");
                // Leak the buffers rather than free memory the kernel may still
                // write to.
                std::mem::forget(std::mem::take(slots));
                return;
            }
            for cqe in ring.completion() {
                let Ok(index) = usize::try_from(cqe.user_data()) else {
                    continue;
                };
                if let Some(slot) = slots.try_remove(index) {
                    if slot.bufs.returns_fd && cqe.result() >= 0 && slot.result.is_none() {
                        // SAFETY: fd freshly returned by the kernel, never
                        // handed out (the slot's waiter is gone).
                        drop(unsafe { OwnedFd::from_raw_fd(cqe.result()) });
                    }
                }
            }
        }
    }
}

/// A per-shard io_uring for namespace operations (see the module docs).
pub(crate) struct Uring {
    inner: Rc<RingInner>,
    _reaper: glommio::Task<()>,
}

impl Uring {
    /// Creates the ring and its reaper task. Must be called on a glommio
    /// executor thread.
    pub(crate) fn new() -> io::Result<Uring> {
        let ring = IoUring::builder()
            .setup_cqsize(URING_ENTRIES * 2)
            .build(URING_ENTRIES)?;
        // Not EFD_NONBLOCK: io_uring would then complete a read of a zero
        // counter with EAGAIN instead of waiting for it (it arms a poll
        // itself, so the blocking fd never blocks the thread).
        // SAFETY: plain syscall with constant flags; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: eventfd just returned this fd; we are its only owner.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter().register_eventfd(efd.as_raw_fd())?;
        let inner = Rc::new(RingInner {
            ring: RefCell::new(ring),
            slots: RefCell::new(Slab::with_capacity(URING_OPS_IN_FLIGHT_MAX)),
            space: Event::new(),
            reaper_failed: Cell::new(false),
        });
        let efd_file = buffered_file_from_fd(efd);
        let reaper = glommio::spawn_local(reaper(Rc::downgrade(&inner), efd_file));
        Ok(Uring {
            inner,
            _reaper: reaper,
        })
    }

    /// Ops submitted whose completion has not been reaped yet.
    pub(crate) fn ops_in_flight(&self) -> usize {
        self.inner
            .slots
            .borrow()
            .iter()
            .filter(|(_, slot)| slot.result.is_none())
            .count()
    }

    /// Blocks until every op already submitted has completed. Used when a
    /// cache is dropped (a dropped cache must not keep changing the
    /// directory: a trim's unlink landing after the next instance opened
    /// it) and when `shutdown` has cancelled its tasks (their calls must not
    /// land in the middle of its own tracker persist). Bounded by the ops in
    /// flight, at most [`URING_ENTRIES`] short metadata calls.
    pub(crate) fn wait_for_in_flight(&self) {
        loop {
            let pending = self
                .inner
                .slots
                .borrow()
                .iter()
                .filter(|(_, slot)| slot.result.is_none())
                .count();
            if pending == 0 {
                return;
            }
            let waited = self.inner.ring.borrow_mut().submit_and_wait(1);
            if let Err(error) = waited {
                if error.raw_os_error() != Some(libc::EINTR) {
                    tracing::error!(%error, pending, "waiting for metadata ops failed");
                    return;
                }
            }
            self.inner.drain();
        }
    }

    async fn submit(
        &self,
        mut bufs: OpBufs,
        build: impl FnOnce(&mut OpBufs) -> squeue::Entry,
    ) -> io::Result<(i32, OpBufs)> {
        loop {
            if self.inner.slots.borrow().len() < URING_OPS_IN_FLIGHT_MAX {
                break;
            }
            event_listener::listener!(self.inner.space => listen);
            if self.inner.slots.borrow().len() < URING_OPS_IN_FLIGHT_MAX {
                break;
            }
            listen.await;
        }
        let index = {
            let mut slots = self.inner.slots.borrow_mut();
            let entry = slots.vacant_entry();
            let index = entry.key();
            // The boxed/heap buffers do not move when the slab grows.
            let sqe = build(&mut bufs).user_data(index as u64);
            entry.insert(Slot {
                result: None,
                waker: None,
                abandoned: false,
                bufs,
            });
            (index, sqe)
        };
        let (index, sqe) = index;
        self.inner.push(index, &sqe)?;
        let result = OpFuture {
            inner: Rc::clone(&self.inner),
            index,
            done: false,
        }
        .await;
        let slot = self.inner.slots.borrow_mut().remove(index);
        self.inner.space.notify(usize::MAX);
        Ok((result, slot.bufs))
    }

    /// `openat2(dirfd, path, flags, mode)` with `RESOLVE_BENEATH |
    /// RESOLVE_NO_SYMLINKS`: the path may not leave `dirfd` nor pass through
    /// any symlink (ELOOP / EXDEV otherwise).
    pub(crate) async fn open_beneath(
        &self,
        dir: &Rc<OwnedFd>,
        path: &str,
        flags: i32,
        mode: u32,
    ) -> io::Result<OwnedFd> {
        let dirfd = dir.as_raw_fd();
        let bufs = OpBufs {
            _dir: Some(Rc::clone(dir)),
            path_a: Some(cstring(path)?),
            how: Some(Box::new(
                types::OpenHow::new()
                    .flags((flags | libc::O_CLOEXEC) as u64)
                    .mode(u64::from(mode))
                    .resolve(libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS),
            )),
            returns_fd: true,
            ..OpBufs::default()
        };
        let (res, _) = self
            .submit(bufs, |b| {
                opcode::OpenAt2::new(types::Fd(dirfd), cptr(&b.path_a), how_ptr(&b.how)).build()
            })
            .await?;
        let fd = check(res)?;
        // SAFETY: the kernel returned a fresh fd that nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// `linkat(old_dir, old, new_dir, new, 0)`; EEXIST if `new` exists. A
    /// final symlink `old` is linked itself, not followed.
    pub(crate) async fn link(
        &self,
        old_dir: &Rc<OwnedFd>,
        old: &str,
        new_dir: &Rc<OwnedFd>,
        new: &str,
    ) -> io::Result<()> {
        let old_dirfd = old_dir.as_raw_fd();
        let new_dirfd = new_dir.as_raw_fd();
        let mut bufs = OpBufs::two_paths(old_dir, old, new)?;
        bufs._src = Some(Rc::clone(new_dir));
        let (res, _) = self
            .submit(bufs, |b| {
                opcode::LinkAt::new(
                    types::Fd(old_dirfd),
                    cptr(&b.path_a),
                    types::Fd(new_dirfd),
                    cptr(&b.path_b),
                )
                .build()
            })
            .await?;
        check(res).map(drop)
    }

    /// Links the open file `src` into `dir` as `new`: `linkat(AT_FDCWD,
    /// "/proc/self/fd/<src>", dirfd, new, AT_SYMLINK_FOLLOW)`, the unprivileged
    /// way to link an fd (`AT_EMPTY_PATH` needs `CAP_DAC_READ_SEARCH`). The
    /// inode linked is the one `src` has open, whatever happened to the name
    /// it was opened by. EEXIST if `new` exists; EXDEV across filesystems;
    /// ENOENT if `/proc` is not mounted (or `dir` lost its entry).
    pub(crate) async fn link_fd(
        &self,
        src: &Rc<OwnedFd>,
        dir: &Rc<OwnedFd>,
        new: &str,
    ) -> io::Result<()> {
        let dirfd = dir.as_raw_fd();
        let proc_path = format!("/proc/self/fd/{}", src.as_raw_fd());
        let mut bufs = OpBufs::two_paths(dir, &proc_path, new)?;
        bufs._src = Some(Rc::clone(src));
        let (res, _) = self
            .submit(bufs, |b| {
                opcode::LinkAt::new(
                    types::Fd(libc::AT_FDCWD),
                    cptr(&b.path_a),
                    types::Fd(dirfd),
                    cptr(&b.path_b),
                )
                .flags(libc::AT_SYMLINK_FOLLOW)
                .build()
            })
            .await?;
        check(res).map(drop)
    }

    /// `renameat(dirfd, old, dirfd, new)`: atomically replaces `new`.
    pub(crate) async fn rename(&self, dir: &Rc<OwnedFd>, old: &str, new: &str) -> io::Result<()> {
        let dirfd = dir.as_raw_fd();
        let bufs = OpBufs::two_paths(dir, old, new)?;
        let (res, _) = self
            .submit(bufs, |b| {
                opcode::RenameAt::new(
                    types::Fd(dirfd),
                    cptr(&b.path_a),
                    types::Fd(dirfd),
                    cptr(&b.path_b),
                )
                .build()
            })
            .await?;
        check(res).map(drop)
    }

    /// `unlinkat(dirfd, path, 0)`, or with `AT_REMOVEDIR` when `is_dir`.
    pub(crate) async fn unlink(
        &self,
        dir: &Rc<OwnedFd>,
        path: &str,
        is_dir: bool,
    ) -> io::Result<()> {
        let dirfd = dir.as_raw_fd();
        let bufs = OpBufs {
            _dir: Some(Rc::clone(dir)),
            path_a: Some(cstring(path)?),
            ..OpBufs::default()
        };
        let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
        let (res, _) = self
            .submit(bufs, |b| {
                opcode::UnlinkAt::new(types::Fd(dirfd), cptr(&b.path_a))
                    .flags(flags)
                    .build()
            })
            .await?;
        check(res).map(drop)
    }

    /// `mkdirat(dirfd, path, mode)`.
    pub(crate) async fn mkdir(&self, dir: &Rc<OwnedFd>, path: &str, mode: u32) -> io::Result<()> {
        let dirfd = dir.as_raw_fd();
        let bufs = OpBufs {
            _dir: Some(Rc::clone(dir)),
            path_a: Some(cstring(path)?),
            ..OpBufs::default()
        };
        let (res, _) = self
            .submit(bufs, |b| {
                opcode::MkDirAt::new(types::Fd(dirfd), cptr(&b.path_a))
                    .mode(mode)
                    .build()
            })
            .await?;
        check(res).map(drop)
    }

    /// `statx(dirfd, path, AT_SYMLINK_NOFOLLOW)`: what `path` itself is.
    pub(crate) async fn stat_nofollow(
        &self,
        dir: &Rc<OwnedFd>,
        path: &str,
    ) -> io::Result<StatInfo> {
        self.statx(dir, path, libc::AT_SYMLINK_NOFOLLOW).await
    }

    /// `statx(fd, "", AT_EMPTY_PATH)`: the open file itself. (glommio's own
    /// `stat` needs the file's path, which an fd from `openat2` lacks.)
    pub(crate) async fn stat_fd(&self, fd: &Rc<OwnedFd>) -> io::Result<StatInfo> {
        self.statx(fd, "", libc::AT_EMPTY_PATH).await
    }

    async fn statx(&self, dir: &Rc<OwnedFd>, path: &str, flags: i32) -> io::Result<StatInfo> {
        let dirfd = dir.as_raw_fd();
        let bufs = OpBufs {
            _dir: Some(Rc::clone(dir)),
            path_a: Some(cstring(path)?),
            // SAFETY: `statx` is a plain C struct of integers; all-zero is a
            // valid value.
            statx: Some(Box::new(unsafe { std::mem::zeroed::<libc::statx>() })),
            ..OpBufs::default()
        };
        let (res, bufs) = self
            .submit(bufs, |b| {
                let buf: *mut libc::statx = match b.statx.as_mut() {
                    Some(statx) => &mut **statx,
                    None => std::ptr::null_mut(),
                };
                opcode::Statx::new(
                    types::Fd(dirfd),
                    cptr(&b.path_a),
                    buf.cast::<types::statx>(),
                )
                .flags(flags)
                .mask(
                    libc::STATX_TYPE
                        | libc::STATX_SIZE
                        | libc::STATX_INO
                        | libc::STATX_NLINK
                        | libc::STATX_ATIME
                        | libc::STATX_MTIME,
                )
                .build()
            })
            .await?;
        check(res)?;
        let Some(statx) = bufs.statx else {
            return Err(io::Error::other("statx buffer missing"));
        };
        let kind = u32::from(statx.stx_mode) & libc::S_IFMT;
        Ok(StatInfo {
            is_file: kind == libc::S_IFREG,
            is_dir: kind == libc::S_IFDIR,
            bytes: statx.stx_size,
            dev: libc::makedev(statx.stx_dev_major, statx.stx_dev_minor),
            ino: statx.stx_ino,
            links: u64::from(statx.stx_nlink),
            accessed_ms: ms_of(&statx.stx_atime).max(ms_of(&statx.stx_mtime)),
        })
    }

    /// `fsync(fd)` (full, so a directory's entries are covered).
    pub(crate) async fn fsync(&self, fd: &Rc<OwnedFd>) -> io::Result<()> {
        let raw = fd.as_raw_fd();
        let bufs = OpBufs {
            _dir: Some(Rc::clone(fd)),
            ..OpBufs::default()
        };
        let (res, _) = self
            .submit(bufs, |_| opcode::Fsync::new(types::Fd(raw)).build())
            .await?;
        check(res).map(drop)
    }
}

/// What `statx` said about a path (not following a final symlink).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StatInfo {
    pub(crate) is_file: bool,
    pub(crate) is_dir: bool,
    pub(crate) bytes: u64,
    /// Device and inode: one file's identity, whatever its names.
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    /// Names the file has (hard links).
    pub(crate) links: u64,
    /// max(atime, mtime), ms since the epoch.
    pub(crate) accessed_ms: u64,
}

/// A statx timestamp in ms since the epoch (0 before it).
fn ms_of(time: &libc::statx_timestamp) -> u64 {
    u64::try_from(time.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1000)
        .saturating_add(u64::from(time.tv_nsec) / 1_000_000)
}

struct OpFuture {
    inner: Rc<RingInner>,
    index: usize,
    done: bool,
}

impl Future for OpFuture {
    type Output = i32;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        // Completions may already be posted before the reaper ran.
        self.inner.drain();
        let mut slots = self.inner.slots.borrow_mut();
        let Some(slot) = slots.get_mut(self.index) else {
            // Cannot happen: the slot lives until this future takes it.
            return Poll::Ready(-libc::EIO);
        };
        if let Some(result) = slot.result {
            drop(slots);
            self.done = true;
            return Poll::Ready(result);
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for OpFuture {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut slots = self.inner.slots.borrow_mut();
        let Some(slot) = slots.get_mut(self.index) else {
            return;
        };
        match slot.result {
            // Completed but never collected: release now.
            Some(result) => {
                if slot.bufs.returns_fd && result >= 0 {
                    // SAFETY: fd returned by the kernel, never handed out.
                    drop(unsafe { OwnedFd::from_raw_fd(result) });
                }
                slots.remove(self.index);
                drop(slots);
                self.inner.space.notify(usize::MAX);
            }
            // Still in flight: the kernel owns the buffers until the reaper
            // sees the completion.
            None => {
                slot.abandoned = true;
                slot.waker = None;
            }
        }
    }
}

async fn reaper(ring: Weak<RingInner>, efd: BufferedFile) {
    loop {
        let failed = match ring.upgrade() {
            Some(inner) => inner.reaper_failed.get(),
            None => return,
        };
        if failed {
            glommio::timer::sleep(REAPER_FALLBACK_POLL).await;
        } else if let Err(error) = efd.read_at(0, EVENTFD_READ_BYTES).await {
            tracing::warn!(%error, "metadata ring eventfd read failed; polling instead");
            if let Some(inner) = ring.upgrade() {
                inner.reaper_failed.set(true);
            }
        }
        match ring.upgrade() {
            Some(inner) => inner.drain(),
            None => return,
        }
    }
}

/// `ring.submit()`, retried a bounded number of times on transient errors.
fn submit_retrying(ring: &mut IoUring) -> io::Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match ring.submit() {
            Ok(_) => return Ok(()),
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                ) && attempt < SUBMIT_ATTEMPTS_MAX => {}
            Err(error) => return Err(error),
        }
    }
}

/// Longest extended-attribute value read ([`get_xattr`]): a larger one is
/// not one the cache wrote.
const XATTR_VALUE_BYTES_MAX: usize = 64;

/// `fsetxattr(2)` of `name` on `fd` (create or replace). A short call on
/// the reactor thread: the attribute lives in the inode (or one block
/// beside it) and is written back with it.
pub(crate) fn set_xattr(fd: RawFd, name: &str, value: &[u8]) -> io::Result<()> {
    let name = cstring(name)?;
    // SAFETY: `name` is a NUL-terminated string and `value` a live slice
    // of `value.len()` bytes; the kernel reads both during the call only.
    let res = unsafe { libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if res < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fgetxattr(2)` of `name` on `fd`: `None` if the file has no such
/// attribute. A value longer than [`XATTR_VALUE_BYTES_MAX`] is ERANGE (it
/// is none the cache wrote).
pub(crate) fn get_xattr(fd: RawFd, name: &str) -> io::Result<Option<Vec<u8>>> {
    read_xattr(name, |name, value, len| {
        // SAFETY: `read_xattr` passes a NUL-terminated `name` and a live
        // buffer `value` of `len` bytes the kernel writes at most that
        // many bytes into.
        unsafe { libc::fgetxattr(fd, name, value, len) }
    })
}

/// `lgetxattr(2)` of `name` on the entry `leaf` of the directory open as
/// `dir`, named through `/proc/self/fd` (the directory is not resolved
/// again by name, and a symlink at `leaf` is not followed): as
/// [`get_xattr`] otherwise.
pub(crate) fn get_xattr_in(
    dir: BorrowedFd<'_>,
    leaf: &std::ffi::OsStr,
    name: &str,
) -> io::Result<Option<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt as _;
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(leaf.as_bytes());
    let path = CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    read_xattr(name, |name, value, len| {
        // SAFETY: `path` is NUL-terminated and lives across the call;
        // `read_xattr` passes a NUL-terminated `name` and a live buffer
        // `value` of `len` bytes the kernel writes at most that many
        // bytes into.
        unsafe { libc::lgetxattr(path.as_ptr(), name, value, len) }
    })
}

/// A `getxattr` family call (`call(name, value, len)`, returning what the
/// syscall returns) of `name` into a buffer of [`XATTR_VALUE_BYTES_MAX`]
/// bytes: `name` NUL-terminated, `value` live for `len` bytes.
fn read_xattr(
    name: &str,
    call: impl FnOnce(*const libc::c_char, *mut libc::c_void, usize) -> isize,
) -> io::Result<Option<Vec<u8>>> {
    let name = cstring(name)?;
    let mut value = vec![0u8; XATTR_VALUE_BYTES_MAX];
    let res = call(name.as_ptr(), value.as_mut_ptr().cast(), value.len());
    xattr_value(res, value)
}

/// The value a `getxattr` family call returned `res` for, read into `value`.
fn xattr_value(res: isize, mut value: Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    if res < 0 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::ENODATA) => Ok(None),
            _ => Err(error),
        };
    }
    value.truncate(res as usize);
    Ok(Some(value))
}

fn cstring(path: &str) -> io::Result<CString> {
    CString::new(path).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn cptr(s: &Option<CString>) -> *const libc::c_char {
    s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
}

fn how_ptr(how: &Option<Box<types::OpenHow>>) -> *const types::OpenHow {
    how.as_ref()
        .map_or(std::ptr::null(), |h| &**h as *const types::OpenHow)
}

fn check(res: i32) -> io::Result<i32> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res)
    }
}

/// A duplicate of `fd` (close-on-exec) that the caller owns: what an op in
/// the ring keeps open while the kernel may still resolve it, whatever the
/// original's owner does meanwhile.
pub(crate) fn dup_fd(fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall on an fd number; the result is checked.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl just returned this fd; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// `openat2(dir, path, O_RDONLY | O_DIRECTORY)` with `RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS`, as a plain syscall: for the callers that cannot
/// await (a directory listing). One short metadata call.
pub(crate) fn open_beneath_blocking(dir: &OwnedFd, path: &str) -> io::Result<OwnedFd> {
    let path = cstring(if path.is_empty() { "." } else { path })?;
    // SAFETY: `open_how` is a plain C struct of integers; all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: `path` and `how` outlive the call; the size is `how`'s own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Hands an owned fd to glommio as a `BufferedFile` (which then owns and
/// closes it).
pub(crate) fn buffered_file_from_fd(fd: OwnedFd) -> BufferedFile {
    // SAFETY: `into_raw_fd` gives up our ownership, so the BufferedFile is
    // the fd's only owner and closes it exactly once.
    unsafe { BufferedFile::from_raw_fd(fd.into_raw_fd()) }
}

/// Clears `O_NONBLOCK` on `fd` (objects are opened with it so a FIFO planted
/// in the cache cannot block the open; buffered reads must not see it, or
/// io_uring returns EAGAIN instead of waiting for the disk). `fcntl` has no
/// io_uring opcode; it is one short, non-blocking syscall.
pub(crate) fn clear_nonblock(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on an open fd.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// True if `fd` is a regular file (`fstat`: one short, non-blocking syscall
/// on an open fd).
pub(crate) fn is_regular_file(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut out = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `out` is a valid, writable stat-sized buffer; fd is open.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), out.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat returned 0, so it filled the whole struct.
    let st = unsafe { out.assume_init() };
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFREG)
}

/// 64 random bits from `getrandom(2)` (non-blocking once the pool is
/// initialised, which it is long before a cache opens); falls back to the
/// clock and pid if the call fails.
pub(crate) fn random_u64() -> u64 {
    let mut out = [0u8; 8];
    // SAFETY: `out` is a valid, writable 8-byte buffer.
    let rc = unsafe { libc::getrandom(out.as_mut_ptr().cast(), out.len(), libc::GRND_NONBLOCK) };
    if rc == 8 {
        return u64::from_ne_bytes(out);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Size and free space of the filesystem holding `fd`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FsSpace {
    pub(crate) total_bytes: u64,
    /// Bytes available to unprivileged users (`f_bavail`).
    pub(crate) avail_bytes: u64,
}

/// `fstatvfs(fd)`. io_uring has no statfs opcode; this is one short,
/// non-blocking syscall.
pub(crate) fn fs_space(fd: BorrowedFd<'_>) -> io::Result<FsSpace> {
    let mut out = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `out` is a valid, writable statvfs-sized buffer; fd is open.
    let rc = unsafe { libc::fstatvfs(fd.as_raw_fd(), out.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatvfs returned 0, so it filled the whole struct.
    let st = unsafe { out.assume_init() };
    let frsize = st.f_frsize;
    Ok(FsSpace {
        total_bytes: st.f_blocks.saturating_mul(frsize),
        avail_bytes: st.f_bavail.saturating_mul(frsize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_complete_through_the_eventfd_reaper() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async move {
                // /var/tmp: a real disk, not tmpfs.
                let dir = tempfile::tempdir_in("/var/tmp").unwrap();
                let root = Rc::new(OwnedFd::from(std::fs::File::open(dir.path()).unwrap()));
                let ring = Uring::new().unwrap();
                for i in 0..50 {
                    let name = format!("d{i}");
                    ring.mkdir(&root, &name, 0o755).await.unwrap();
                    let info = ring.stat_nofollow(&root, &name).await.unwrap();
                    assert!(info.is_dir && !info.is_file);
                    ring.unlink(&root, &name, true).await.unwrap();
                }
                let missing = ring.stat_nofollow(&root, "nope").await.unwrap_err();
                assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
                // Waiting went through glommio's read of the eventfd, not the
                // timer fallback.
                assert!(!ring.inner.reaper_failed.get());
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
