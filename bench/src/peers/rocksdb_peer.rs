//! RocksDB through the `rocksdb` crate (behind the `rocksdb` cargo feature,
//! linked against the system librocksdb).
//!
//! Used as its docs describe for durable writes: default `Options` (WAL on)
//! with `create_if_missing`, and every write through `WriteOptions` with
//! `set_sync(true)`, so `put` returns once the WAL is fdatasynced; RocksDB
//! joins concurrent synced writers into one WAL write and sync. A bulk batch
//! is one `WriteBatch` of 16 puts. Keys are the records' stamps big-endian.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use rocksdb::{IteratorMode, Options, WriteBatch, WriteOptions, DB};

use super::record::{payload, restamp, stamp, BULK_RECORD_BYTES};
use super::{check_shared, DataSet, GapClock, Peer, SharedChecker};
use crate::latency::LatencyRecorder;

fn key(writer: usize, seq: u64) -> [u8; 8] {
    stamp(writer, seq).to_be_bytes()
}

fn open(dir: &Path) -> Result<DB> {
    let mut options = Options::default();
    options.create_if_missing(true);
    DB::open(&options, dir).map_err(|e| anyhow!("open RocksDB in {}: {e}", dir.display()))
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

/// RocksDB as a peer.
pub struct Rocksdb;

impl Peer for Rocksdb {
    type Log = DB;

    fn create(dir: &Path, _data: DataSet, _checker: &SharedChecker) -> Result<DB> {
        open(dir)
    }

    fn append(log: &DB, writer: usize, seq: u64, payload: &[u8]) -> Result<()> {
        log.put_opt(key(writer, seq), payload, &synced())
            .map_err(|e| anyhow!("RocksDB put: {e}"))
    }

    fn append_batch(log: &DB, writer: usize, first_seq: u64, payloads: &[Vec<u8>]) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (index, payload) in payloads.iter().enumerate() {
            batch.put(key(writer, first_seq + index as u64), payload);
        }
        log.write_opt(batch, &synced())
            .map_err(|e| anyhow!("RocksDB write: {e}"))
    }

    fn close(log: DB) -> Result<()> {
        log.flush_wal(true)
            .map_err(|e| anyhow!("RocksDB flush_wal: {e}"))?;
        drop(log);
        Ok(())
    }

    fn recover(dir: &Path) -> Result<DB> {
        open(dir)
    }

    fn check_recovered(log: &DB, records: u64) -> Result<()> {
        let last = records - 1;
        let found = log
            .get(key(0, last))
            .map_err(|e| anyhow!("RocksDB get: {e}"))?
            .with_context(|| format!("record {last} missing after recovery"))?;
        let mut expected = payload(0, BULK_RECORD_BYTES);
        restamp(&mut expected, 0, last);
        ensure!(found == expected, "record {last} differs after recovery");
        Ok(())
    }

    fn read_back(dir: &Path, checker: &SharedChecker) -> Result<(Duration, LatencyRecorder)> {
        let db = open(dir)?;
        let mut clock = GapClock::start();
        let started = Instant::now();
        for item in db.iterator(IteratorMode::Start) {
            let (_key, value) = item.map_err(|e| anyhow!("RocksDB iterate: {e}"))?;
            clock.tick();
            check_shared(checker, &value)?;
        }
        let elapsed = started.elapsed();
        drop(db);
        Ok((elapsed, clock.into_gaps()))
    }
}
