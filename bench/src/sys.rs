//! The bench's only `unsafe`: a tiny io_uring driver and a few libc calls.
//!
//! The device-limit measurements must not go through glommio (the thing being
//! compared against the device), so they drive io_uring directly. Submitting
//! an SQE that points at a buffer is `unsafe` because the kernel reads or
//! writes that memory until the matching completion arrives. [`Uring`]
//! therefore *owns* its buffers and never returns while an operation is in
//! flight; if waiting for completions ever fails with operations still owned
//! by the kernel, it leaks the buffers (never frees memory the kernel may
//! still touch) and reports the error.
//!
//! Everything here is synchronous and single-threaded on purpose: the device
//! limit is the best a plain submit/wait loop gets from the disk, with no
//! reactor, no task switching and no copies.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use aligned_vec::{AVec, ConstAlign};
use io_uring::{opcode, squeue, types, IoUring};

/// Alignment of every buffer handed to O_DIRECT: one page covers any logical
/// block size up to 4 KiB.
pub const BUFFER_ALIGN_BYTES: usize = 4096;

/// A page-aligned byte buffer usable for O_DIRECT.
pub type AlignedBuf = AVec<u8, ConstAlign<BUFFER_ALIGN_BYTES>>;

/// Allocates a zeroed, page-aligned buffer of `len_bytes`.
pub fn aligned_zeroed(len_bytes: usize) -> AlignedBuf {
    AVec::__from_elem(BUFFER_ALIGN_BYTES, 0u8, len_bytes)
}

/// The largest queue depth [`Uring`] accepts (bounds the ring and the buffer set).
pub const QUEUE_DEPTH_MAX: usize = 1024;

/// `user_data` tag of an fsync SQE (buffer indices are below [`QUEUE_DEPTH_MAX`]).
const USER_DATA_FSYNC: u64 = u64::MAX;

/// Which way a sequential pass moves bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `IORING_OP_WRITE` from the buffers to the file.
    Write,
    /// `IORING_OP_READ` from the file into the buffers.
    Read,
}

/// An io_uring instance plus the fixed set of aligned buffers it submits from.
pub struct Uring {
    ring: IoUring,
    buffers: Vec<AlignedBuf>,
    block_bytes: usize,
}

impl Uring {
    /// A ring able to keep `queue_depth` operations of `block_bytes` each in flight.
    pub fn new(queue_depth: usize, block_bytes: usize) -> io::Result<Self> {
        assert!(queue_depth >= 1, "queue depth must be at least 1");
        assert!(
            queue_depth <= QUEUE_DEPTH_MAX,
            "queue depth above QUEUE_DEPTH_MAX"
        );
        assert!(block_bytes > 0, "block size must be positive");
        assert!(
            block_bytes.is_multiple_of(BUFFER_ALIGN_BYTES),
            "block size must be page-aligned"
        );
        assert!(
            u32::try_from(block_bytes).is_ok(),
            "block size must fit an SQE length"
        );
        // +1: room for the trailing fsync, and for a linked write+fsync pair at depth 1.
        let entries = u32::try_from((queue_depth + 1).next_power_of_two())
            .map_err(|_| io::Error::other("queue depth too large"))?;
        let ring = IoUring::new(entries)?;
        let buffers = (0..queue_depth)
            .map(|_| aligned_zeroed(block_bytes))
            .collect();
        Ok(Self {
            ring,
            buffers,
            block_bytes,
        })
    }

    /// Mutable access to buffer `index`, e.g. to fill it before a write.
    pub fn buffer_mut(&mut self, index: usize) -> &mut [u8] {
        self.buffers[index].as_mut_slice()
    }

    /// Moves `total_bytes` sequentially between `file` (from offset 0) and the
    /// buffers, keeping up to `queue_depth` operations in flight.
    ///
    /// For writes, `prepare(buffer, file_offset)` fills a buffer right before it
    /// is submitted. For reads, `check(buffer, file_offset)` inspects each
    /// completed block and may fail the pass. `total_bytes` must be a multiple
    /// of the block size. Returns only once nothing is in flight.
    pub fn sequential(
        &mut self,
        file: &File,
        direction: Direction,
        total_bytes: u64,
        mut prepare: impl FnMut(&mut [u8], u64),
        mut check: impl FnMut(&[u8], u64) -> Result<(), String>,
    ) -> io::Result<()> {
        let block_bytes = self.block_bytes as u64;
        assert!(
            total_bytes.is_multiple_of(block_bytes),
            "total must be whole blocks"
        );
        let fd = types::Fd(file.as_raw_fd());
        let block_count = total_bytes / block_bytes;
        let mut next_block: u64 = 0;
        let mut in_flight: usize = 0;
        // File offset each buffer is currently bound to (valid while in flight).
        let mut offsets = vec![0u64; self.buffers.len()];
        let mut free: Vec<usize> = (0..self.buffers.len()).rev().collect();
        let mut first_error: Option<io::Error> = None;
        // Reaped (user_data, result) pairs; allocated once, reused every wait.
        let mut completed: Vec<(u64, i32)> = Vec::with_capacity(self.buffers.len());

        loop {
            // Refill the queue unless a failure already stopped the pass.
            while first_error.is_none() && next_block < block_count {
                let Some(index) = free.pop() else { break };
                let offset = next_block * block_bytes;
                next_block += 1;
                offsets[index] = offset;
                let buffer = &mut self.buffers[index];
                let sqe = match direction {
                    Direction::Write => {
                        prepare(buffer.as_mut_slice(), offset);
                        opcode::Write::new(fd, buffer.as_ptr(), self.block_bytes as u32)
                            .offset(offset)
                            .build()
                    }
                    Direction::Read => {
                        opcode::Read::new(fd, buffer.as_mut_ptr(), self.block_bytes as u32)
                            .offset(offset)
                            .build()
                    }
                }
                .user_data(index as u64);
                // SAFETY: the SQE points into `self.buffers[index]`, which `self`
                // owns and neither moves nor frees while the op is in flight:
                // this function only returns once `in_flight == 0`, or leaks the
                // buffers (see `abandon`). The buffer is `block_bytes` long, as
                // the SQE says, and `file` outlives this call (io_uring also
                // holds its own reference to the file once submitted).
                let pushed = unsafe { self.ring.submission().push(&sqe) };
                assert!(pushed.is_ok(), "ring sized for queue_depth + 1 entries");
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
            if let Err(error) = self.wait(1) {
                return Err(self.abandon(error));
            }
            completed.clear();
            completed.extend(
                self.ring
                    .completion()
                    .map(|cqe| (cqe.user_data(), cqe.result())),
            );
            for &(user_data, result) in &completed {
                let index = usize::try_from(user_data).expect("user_data is a buffer index");
                in_flight -= 1;
                free.push(index);
                let offset = offsets[index];
                if result < 0 {
                    first_error.get_or_insert_with(|| {
                        let source = io::Error::from_raw_os_error(-result);
                        io::Error::new(
                            source.kind(),
                            format!("{direction:?} at offset {offset}: {source}"),
                        )
                    });
                } else if result as u64 != block_bytes {
                    first_error.get_or_insert_with(|| {
                        io::Error::other(format!(
                            "short {direction:?} at offset {offset}: {result} of {block_bytes} bytes"
                        ))
                    });
                } else if direction == Direction::Read && first_error.is_none() {
                    if let Err(message) = check(self.buffers[index].as_slice(), offset) {
                        first_error = Some(io::Error::new(io::ErrorKind::InvalidData, message));
                    }
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// `fdatasync(file)` through the ring.
    pub fn fdatasync(&mut self, file: &File) -> io::Result<()> {
        let sqe = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(USER_DATA_FSYNC);
        // SAFETY: an fsync SQE references no user memory.
        let pushed = unsafe { self.ring.submission().push(&sqe) };
        assert!(pushed.is_ok(), "ring is empty between calls");
        self.wait(1)?;
        let cqe = self
            .ring
            .completion()
            .next()
            .expect("waited for one completion");
        assert_eq!(cqe.user_data(), USER_DATA_FSYNC);
        check_result(cqe.result(), "fdatasync", 0)
    }

    /// Writes buffer 0 (one block) at `offset`, then `fdatasync`s, as one
    /// linked pair in a single `io_uring_enter`: the cheapest durable write the
    /// kernel offers at queue depth 1.
    pub fn write_then_fdatasync(&mut self, file: &File, offset: u64) -> io::Result<()> {
        let fd = types::Fd(file.as_raw_fd());
        let write = opcode::Write::new(fd, self.buffers[0].as_ptr(), self.block_bytes as u32)
            .offset(offset)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(0);
        let sync = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(USER_DATA_FSYNC);
        // SAFETY: `write` points at `self.buffers[0]` (`block_bytes` long), owned
        // by `self` and untouched until both completions are reaped below; on a
        // failed wait `abandon` leaks the buffers instead of freeing them.
        let pushed = unsafe { self.ring.submission().push_multiple(&[write, sync]) };
        assert!(pushed.is_ok(), "ring holds at least two entries");
        let mut write_result = None;
        let mut sync_result = None;
        while write_result.is_none() || sync_result.is_none() {
            if let Err(error) = self.wait(1) {
                return Err(self.abandon(error));
            }
            for cqe in self.ring.completion() {
                if cqe.user_data() == USER_DATA_FSYNC {
                    sync_result = Some(cqe.result());
                } else {
                    write_result = Some(cqe.result());
                }
            }
        }
        check_result(write_result.unwrap_or_default(), "pwrite", self.block_bytes)?;
        check_result(sync_result.unwrap_or_default(), "fdatasync", 0)
    }

    /// Writes buffer `i` (one block) at `writes[i]`'s offset into its file,
    /// each write linked to an `fdatasync` of that file, every pair in one
    /// `io_uring_enter`: N journals on one disk making one entry durable at
    /// the same moment. Returns, per pair in order, the time from the
    /// submission to its `fdatasync`'s completion. Needs a ring made with a
    /// queue depth of at least `2 * writes.len()`.
    #[cfg(feature = "raft")]
    pub fn write_then_fdatasync_each(
        &mut self,
        writes: &[(&File, u64)],
    ) -> io::Result<Vec<std::time::Duration>> {
        assert!(
            writes.len() * 2 <= self.buffers.len(),
            "a ring with room for every pair"
        );
        for (index, (file, offset)) in writes.iter().enumerate() {
            let fd = types::Fd(file.as_raw_fd());
            let write =
                opcode::Write::new(fd, self.buffers[index].as_ptr(), self.block_bytes as u32)
                    .offset(*offset)
                    .build()
                    .flags(squeue::Flags::IO_LINK)
                    .user_data(2 * index as u64);
            let sync = opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(2 * index as u64 + 1);
            // SAFETY: `write` points at `self.buffers[index]` (`block_bytes`
            // long), owned by `self` and untouched until every completion is
            // reaped below; on a failed wait `abandon` leaks the buffers.
            let pushed = unsafe { self.ring.submission().push_multiple(&[write, sync]) };
            assert!(pushed.is_ok(), "the ring holds every pair");
        }
        let started = std::time::Instant::now();
        let mut write_results = vec![None; writes.len()];
        let mut synced: Vec<Option<(i32, std::time::Duration)>> = vec![None; writes.len()];
        while write_results.iter().any(Option::is_none) || synced.iter().any(Option::is_none) {
            if let Err(error) = self.wait(1) {
                return Err(self.abandon(error));
            }
            let now = started.elapsed();
            for cqe in self.ring.completion() {
                let index = (cqe.user_data() / 2) as usize;
                if cqe.user_data() % 2 == 1 {
                    synced[index] = Some((cqe.result(), now));
                } else {
                    write_results[index] = Some(cqe.result());
                }
            }
        }
        let mut took = Vec::with_capacity(writes.len());
        for (written, synced) in write_results.into_iter().zip(synced) {
            check_result(written.unwrap_or_default(), "pwrite", self.block_bytes)?;
            let (result, at) = synced.unwrap_or_default();
            check_result(result, "fdatasync", 0)?;
            took.push(at);
        }
        Ok(took)
    }

    /// Submits what is queued and waits for `want` completions, retrying EINTR.
    fn wait(&mut self, want: usize) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// Called when completions can no longer be awaited while the kernel may
    /// still own buffers: leaks them so that memory is never reused, and
    /// returns the error. The `Uring` is useless afterwards.
    fn abandon(&mut self, error: io::Error) -> io::Error {
        std::mem::forget(std::mem::take(&mut self.buffers));
        io::Error::new(
            error.kind(),
            format!("io_uring wait failed, buffers abandoned: {error}"),
        )
    }
}

/// Maps a CQE result to `Ok` when it is `expected_bytes` (0 for fsync).
fn check_result(result: i32, op: &str, expected_bytes: usize) -> io::Result<()> {
    if result < 0 {
        let source = io::Error::from_raw_os_error(-result);
        return Err(io::Error::new(source.kind(), format!("{op}: {source}")));
    }
    if result as usize != expected_bytes {
        return Err(io::Error::other(format!(
            "short {op}: {result} of {expected_bytes} bytes"
        )));
    }
    Ok(())
}

/// Reserves `len_bytes` of disk for `file` from offset 0 (`fallocate`, mode 0),
/// so later writes never allocate.
pub fn fallocate(file: &File, len_bytes: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len_bytes).map_err(|_| io::Error::other("length too large"))?;
    // SAFETY: plain syscall on a valid, open file descriptor; no memory is shared.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks the kernel to drop `file`'s cached pages (`POSIX_FADV_DONTNEED`), so a
/// following read comes from the device. Touches only this file's pages.
pub fn drop_cached_pages(file: &File) -> io::Result<()> {
    // SAFETY: plain syscall on a valid, open file descriptor; no memory is shared.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// The `statfs` filesystem type magic of the filesystem holding `path`.
pub fn filesystem_magic(path: &std::path::Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: `statfs` is plain old data; all-zero is a valid value of it.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stats` a valid,
    // writable `statfs` that outlives the call.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stats) };
    if rc == 0 {
        #[allow(clippy::unnecessary_cast)] // `f_type`'s width differs between targets.
        Ok(stats.f_type as i64)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Peak resident set size of this process so far, in bytes (`getrusage`'s
/// `ru_maxrss`, which Linux reports in KiB).
pub fn peak_rss_bytes() -> io::Result<u64> {
    Ok(u64::try_from(rusage_self()?.ru_maxrss).unwrap_or(0) * 1024)
}

/// `getrusage(RUSAGE_SELF)`: this process's resource use so far.
pub fn rusage_self() -> io::Result<libc::rusage> {
    // SAFETY: `rusage` is plain old data; all-zero is a valid value of it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage` that outlives the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc == 0 {
        Ok(usage)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// This process's CPU time (user and system, every thread, io_uring's
/// kernel workers included) and context switches (voluntary and not) so
/// far.
pub fn cpu_and_switches() -> io::Result<(std::time::Duration, u64)> {
    let usage = rusage_self()?;
    let time = |t: libc::timeval| {
        std::time::Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + std::time::Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    let switches =
        u64::try_from(usage.ru_nvcsw).unwrap_or(0) + u64::try_from(usage.ru_nivcsw).unwrap_or(0);
    Ok((time(usage.ru_utime) + time(usage.ru_stime), switches))
}
