//! okaywal: a write-ahead log with multi-threaded commit batching.
//!
//! Used as its README shows: `begin_entry()`, `write_chunk()` per record,
//! `commit()` (which returns once an fsync covers the entry; okaywal batches
//! concurrent commits into one fsync). One entry per record; a bulk batch is
//! one entry of 16 chunks.
//!
//! Configuration: the defaults (`Configuration::default_for`: 1 MiB
//! preallocated segments, checkpoint after 768 KiB) for the small-record
//! workloads. okaywal recycles a segment file once its `LogManager` has
//! checkpointed it, after which its entries are gone; the bench's manager
//! checks every checkpointed record (as a real one would apply it
//! elsewhere), so nothing acknowledged goes unverified. The bulk log must
//! keep every record for recovery and read-back to reopen, so there the
//! checkpoint threshold is set above the data size (segments are otherwise
//! as by default) and no segment is recycled.
//!
//! okaywal returns records only through recovery (`LogManager::recover`
//! during open) or by `LogPosition`, so its read-back is an open whose
//! manager reads every chunk, and its recovery an open whose manager only
//! reads and counts entries without checking the records' bytes. Those
//! read-only opens refuse checkpoints (the manager
//! returns an error, which stops okaywal's checkpoint thread before it
//! renames anything), so the records stay for the next reader.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use okaywal::{Configuration, Entry, EntryId, LogManager, SegmentReader, WriteAheadLog};

use super::record::BULK_BATCH_RECORDS;
use super::{check_shared, DataSet, Peer, SharedChecker};
use crate::latency::LatencyRecorder;

/// What the bench's `LogManager` does with the records okaywal hands it.
#[derive(Clone)]
enum Mode {
    /// Writing: check every checkpointed record, then let okaywal recycle it.
    Write(SharedChecker),
    /// Recovery: count entries; refuse checkpoints.
    Count,
    /// Read-back: check every recovered record; refuse checkpoints.
    Read(SharedChecker, Arc<Mutex<LatencyRecorder>>),
}

struct Manager {
    mode: Mode,
    entries: Arc<AtomicU64>,
    last: Instant,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            Mode::Write(_) => "write",
            Mode::Count => "count",
            Mode::Read(..) => "read",
        };
        f.debug_struct("Manager").field("mode", &mode).finish()
    }
}

fn to_io(error: anyhow::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{error:#}"))
}

impl Manager {
    /// Reads every chunk of `entry` (okaywal checks each chunk's CRC) and
    /// checks it as a record.
    fn check_entry(&mut self, entry: &mut Entry<'_>, checker: &SharedChecker) -> io::Result<()> {
        let chunks = entry.read_all_chunks()?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "aborted entry in a clean log")
        })?;
        for chunk in chunks {
            if let Mode::Read(_, gaps) = &self.mode {
                let now = Instant::now();
                if let Ok(mut gaps) = gaps.lock() {
                    gaps.record(now - self.last);
                }
                self.last = now;
            }
            check_shared(checker, &chunk).map_err(to_io)?;
        }
        Ok(())
    }
}

impl LogManager for Manager {
    fn recover(&mut self, entry: &mut Entry<'_>) -> io::Result<()> {
        match self.mode.clone() {
            Mode::Write(checker) | Mode::Read(checker, _) => self.check_entry(entry, &checker),
            Mode::Count => {
                // okaywal 0.3.1 cannot skip a chunk: `EntryChunk::
                // skip_remaining_bytes` seeks past the chunk's CRC and then
                // its `Drop` seeks 4 bytes further, so an open whose manager
                // leaves chunks unread loses its place after the first entry
                // (and takes the log's valid end to be there). Recovery must
                // therefore read every chunk; okaywal checks each one's CRC.
                entry.read_all_chunks()?.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "aborted entry in a clean log")
                })?;
                self.entries.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    fn checkpoint_to(
        &mut self,
        _last_checkpointed_id: EntryId,
        entries: &mut SegmentReader,
        _wal: &WriteAheadLog,
    ) -> io::Result<()> {
        match self.mode.clone() {
            Mode::Write(checker) => {
                while let Some(mut entry) = entries.read_entry()? {
                    self.check_entry(&mut entry, &checker)?;
                }
                Ok(())
            }
            Mode::Count | Mode::Read(..) => Err(io::Error::other(
                "read-only open: the records stay in the log for the next reader",
            )),
        }
    }
}

/// An open okaywal log.
pub struct OkaywalLog {
    wal: WriteAheadLog,
    writable: bool,
    /// Entries recovered at open (counted in `Mode::Count` only).
    entries: Arc<AtomicU64>,
}

fn open(dir: &Path, data: DataSet, mode: Mode) -> Result<OkaywalLog> {
    let writable = matches!(mode, Mode::Write(_));
    let entries = Arc::new(AtomicU64::new(0));
    let mut config = Configuration::default_for(dir);
    if data == DataSet::Bulk {
        config = config.checkpoint_after_bytes(u64::MAX);
    }
    let wal = config
        .open(Manager {
            mode,
            entries: Arc::clone(&entries),
            last: Instant::now(),
        })
        .with_context(|| format!("open okaywal in {}", dir.display()))?;
    Ok(OkaywalLog {
        wal,
        writable,
        entries,
    })
}

/// okaywal as a peer.
pub struct Okaywal;

impl Peer for Okaywal {
    type Log = OkaywalLog;

    fn create(dir: &Path, data: DataSet, checker: &SharedChecker) -> Result<OkaywalLog> {
        open(dir, data, Mode::Write(Arc::clone(checker)))
    }

    fn append(log: &OkaywalLog, _writer: usize, _seq: u64, payload: &[u8]) -> Result<()> {
        let mut entry = log.wal.begin_entry().context("okaywal begin_entry")?;
        entry.write_chunk(payload).context("okaywal write_chunk")?;
        entry.commit().context("okaywal commit")?;
        Ok(())
    }

    fn append_batch(
        log: &OkaywalLog,
        _writer: usize,
        _first_seq: u64,
        payloads: &[Vec<u8>],
    ) -> Result<()> {
        let mut entry = log.wal.begin_entry().context("okaywal begin_entry")?;
        for payload in payloads {
            entry.write_chunk(payload).context("okaywal write_chunk")?;
        }
        entry.commit().context("okaywal commit")?;
        Ok(())
    }

    fn close(log: OkaywalLog) -> Result<()> {
        if log.writable {
            // Waits for the checkpoint thread to finish every queued segment.
            log.wal.shutdown().context("okaywal shutdown")
        } else {
            // The checkpoint thread stopped at the refused checkpoint;
            // `shutdown` would report that as a broken pipe.
            drop(log.wal);
            Ok(())
        }
    }

    fn recover(dir: &Path) -> Result<OkaywalLog> {
        open(dir, DataSet::Bulk, Mode::Count)
    }

    fn check_recovered(log: &OkaywalLog, records: u64) -> Result<()> {
        // Bulk entries carry `BULK_BATCH_RECORDS` records each.
        let entries = log.entries.load(Ordering::Relaxed);
        let expected = records.div_ceil(BULK_BATCH_RECORDS as u64);
        ensure!(
            entries == expected,
            "recovery saw {entries} entries, {expected} were written ({records} records)"
        );
        Ok(())
    }

    fn read_back(dir: &Path, checker: &SharedChecker) -> Result<(Duration, LatencyRecorder)> {
        let gaps = Arc::new(Mutex::new(LatencyRecorder::new()));
        let started = Instant::now();
        let log = open(
            dir,
            DataSet::Bulk,
            Mode::Read(Arc::clone(checker), Arc::clone(&gaps)),
        )?;
        let elapsed = started.elapsed();
        Self::close(log)?;
        let gaps = std::mem::take(&mut *gaps.lock().map_err(|_| anyhow!("gap recorder poisoned"))?);
        Ok((elapsed, gaps))
    }
}
