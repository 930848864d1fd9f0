//! The two logs a user would write by hand: a plain `std::fs::File`.
//!
//! Both append framed records (`[len u32][crc32 u32][payload]`, see
//! [`super::record`]) to one file opened with `O_APPEND`, through the page
//! cache, as most hand-written logs do.
//!
//! - [`FileSync`]: every writer writes its record and calls `sync_data`
//!   itself. With many writers the kernel may let one fdatasync cover
//!   several writes, but nothing in the program arranges it.
//! - [`FileGroup`]: a hand-rolled group commit. A writer queues its framed
//!   record; if no sync is running it becomes the leader, takes everything
//!   queued, writes it with one `write` and one `sync_data`, and wakes the
//!   writers whose records that covered. Others wait on a condition variable.
//!
//! Recovery of a plain log is a scan: the file has no index, so finding
//! where valid data ends means reading and checking every frame.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};

use super::record::{
    encode_frame, scan_frames, BULK_RECORD_BYTES, FRAME_HEADER_BYTES, SMALL_RECORD_BYTES,
};
use super::{check_shared, DataSet, GapClock, Peer, SharedChecker};
use crate::latency::LatencyRecorder;

/// The log file inside a plain-file peer's directory.
const LOG_FILE_NAME: &str = "log.dat";
/// Read buffer of the scan (recovery and read-back).
const SCAN_BUFFER_BYTES: usize = 1 << 20;
/// Largest payload a scan accepts.
const RECORD_BYTES_MAX: usize = BULK_RECORD_BYTES;
/// Bytes the group commit's queue starts with (grown as needed, kept).
const QUEUE_BYTES_INITIAL: usize = 1 << 20;

const _: () = assert!(SMALL_RECORD_BYTES <= RECORD_BYTES_MAX);

fn log_path(dir: &Path) -> PathBuf {
    dir.join(LOG_FILE_NAME)
}

fn create_log(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let path = log_path(dir);
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    // The new name must survive a crash too.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync directory {}", dir.display()))?;
    Ok(file)
}

/// Scans the whole log, handing each verified record to `visit`.
fn scan(dir: &Path, visit: impl FnMut(&[u8]) -> Result<()>) -> Result<u64> {
    let path = log_path(dir);
    let file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
    let mut reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, file);
    scan_frames(&mut reader, RECORD_BYTES_MAX, visit)
        .with_context(|| format!("scan {}", path.display()))
}

fn scan_read_back(dir: &Path, checker: &SharedChecker) -> Result<(Duration, LatencyRecorder)> {
    let mut clock = GapClock::start();
    let started = std::time::Instant::now();
    scan(dir, |record| {
        clock.tick();
        check_shared(checker, record)
    })?;
    Ok((started.elapsed(), clock.into_gaps()))
}

/// An open plain log, and how many records the scan that opened it found
/// (zero for a new one).
pub struct PlainLog {
    file: File,
    recovered: u64,
}

/// Scans the log in `dir` to its valid end and opens it for appending.
fn recover_plain(dir: &Path) -> Result<PlainLog> {
    let recovered = scan(dir, |_| Ok(()))?;
    let path = log_path(dir);
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    Ok(PlainLog { file, recovered })
}

fn check_recovered_plain(log: &PlainLog, records: u64) -> Result<()> {
    ensure!(
        log.recovered == records,
        "recovery scan found {} records, {records} were written",
        log.recovered
    );
    Ok(())
}

/// Plain file, `sync_data` after every record (or batch).
pub struct FileSync;

impl Peer for FileSync {
    type Log = PlainLog;

    fn create(dir: &Path, _data: DataSet, _checker: &SharedChecker) -> Result<PlainLog> {
        Ok(PlainLog {
            file: create_log(dir)?,
            recovered: 0,
        })
    }

    fn append(log: &PlainLog, _writer: usize, _seq: u64, payload: &[u8]) -> Result<()> {
        let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
        encode_frame(&mut frame, payload);
        // One write call per frame: with O_APPEND, frames of concurrent
        // writers never interleave.
        let mut writer = &log.file;
        writer.write_all(&frame).context("write")?;
        log.file.sync_data().context("fdatasync")
    }

    fn append_batch(
        log: &PlainLog,
        _writer: usize,
        _first_seq: u64,
        payloads: &[Vec<u8>],
    ) -> Result<()> {
        let mut frames =
            Vec::with_capacity(payloads.iter().map(|p| FRAME_HEADER_BYTES + p.len()).sum());
        for payload in payloads {
            encode_frame(&mut frames, payload);
        }
        let mut writer = &log.file;
        writer.write_all(&frames).context("write")?;
        log.file.sync_data().context("fdatasync")
    }

    fn close(log: PlainLog) -> Result<()> {
        log.file.sync_all().context("fsync at close")
    }

    fn recover(dir: &Path) -> Result<PlainLog> {
        recover_plain(dir)
    }

    fn check_recovered(log: &PlainLog, records: u64) -> Result<()> {
        check_recovered_plain(log, records)
    }

    fn read_back(dir: &Path, checker: &SharedChecker) -> Result<(Duration, LatencyRecorder)> {
        scan_read_back(dir, checker)
    }
}

/// State of the hand-rolled group commit.
struct Queue {
    /// Framed records waiting for the next leader.
    pending: Vec<u8>,
    /// The batch that records queued now will go out in.
    open_batch: u64,
    /// Every batch up to and including this one is durable.
    durable_batch: u64,
    /// A leader is writing and syncing.
    leader_active: bool,
    /// The first write or sync error; every later append fails with it
    /// (after a failed fsync the page cache cannot be trusted).
    failed: Option<String>,
}

/// A plain file with a hand-rolled group commit.
pub struct GroupLog {
    log: PlainLog,
    queue: Mutex<Queue>,
    durable: Condvar,
}

impl GroupLog {
    fn lock(&self) -> Result<MutexGuard<'_, Queue>> {
        self.queue
            .lock()
            .map_err(|_| anyhow!("group-commit queue poisoned"))
    }

    /// Queues `frames` and returns once they are durable.
    fn commit(&self, frames: impl FnOnce(&mut Vec<u8>)) -> Result<()> {
        let mut queue = self.lock()?;
        frames(&mut queue.pending);
        let mine = queue.open_batch;
        // Spare buffer the leader swaps in, so followers can keep queueing.
        let mut taken = Vec::new();
        loop {
            if let Some(error) = &queue.failed {
                return Err(anyhow!("group commit failed earlier: {error}"));
            }
            if queue.durable_batch >= mine {
                return Ok(());
            }
            if queue.leader_active {
                queue = self
                    .durable
                    .wait(queue)
                    .map_err(|_| anyhow!("group-commit queue poisoned"))?;
                continue;
            }
            // Lead: the open batch (which holds this record) goes out now.
            queue.leader_active = true;
            let batch = queue.open_batch;
            queue.open_batch += 1;
            if taken.capacity() == 0 {
                taken.reserve(QUEUE_BYTES_INITIAL);
            }
            std::mem::swap(&mut taken, &mut queue.pending);
            drop(queue);
            let mut writer = &self.log.file;
            let result = writer
                .write_all(&taken)
                .context("write")
                .and_then(|()| self.log.file.sync_data().context("fdatasync"));
            taken.clear();
            queue = self.lock()?;
            queue.leader_active = false;
            match result {
                Ok(()) => queue.durable_batch = batch,
                Err(error) => queue.failed = Some(format!("{error:#}")),
            }
            self.durable.notify_all();
        }
    }
}

/// Plain file, hand-rolled group commit.
pub struct FileGroup;

impl Peer for FileGroup {
    type Log = GroupLog;

    fn create(dir: &Path, _data: DataSet, _checker: &SharedChecker) -> Result<GroupLog> {
        Ok(GroupLog {
            log: PlainLog {
                file: create_log(dir)?,
                recovered: 0,
            },
            queue: Mutex::new(Queue {
                pending: Vec::with_capacity(QUEUE_BYTES_INITIAL),
                open_batch: 1,
                durable_batch: 0,
                leader_active: false,
                failed: None,
            }),
            durable: Condvar::new(),
        })
    }

    fn append(log: &GroupLog, _writer: usize, _seq: u64, payload: &[u8]) -> Result<()> {
        log.commit(|pending| encode_frame(pending, payload))
    }

    fn append_batch(
        log: &GroupLog,
        _writer: usize,
        _first_seq: u64,
        payloads: &[Vec<u8>],
    ) -> Result<()> {
        log.commit(|pending| {
            for payload in payloads {
                encode_frame(pending, payload);
            }
        })
    }

    fn close(log: GroupLog) -> Result<()> {
        log.log.file.sync_all().context("fsync at close")
    }

    fn recover(dir: &Path) -> Result<GroupLog> {
        Ok(GroupLog {
            log: recover_plain(dir)?,
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                open_batch: 1,
                durable_batch: 0,
                leader_active: false,
                failed: None,
            }),
            durable: Condvar::new(),
        })
    }

    fn check_recovered(log: &GroupLog, records: u64) -> Result<()> {
        check_recovered_plain(&log.log, records)
    }

    fn read_back(dir: &Path, checker: &SharedChecker) -> Result<(Duration, LatencyRecorder)> {
        scan_read_back(dir, checker)
    }
}
