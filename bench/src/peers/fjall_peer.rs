//! fjall 3: an LSM-tree key-value store with its own journal.
//!
//! Used as its README recommends for durability: one [`fjall::Database`]
//! with one keyspace, default options; after each `insert` the writer calls
//! `Database::persist(PersistMode::SyncData)` (an fdatasync of the journal),
//! and a bulk batch is one `WriteBatch` committed with
//! `durability(Some(PersistMode::SyncData))`. Keys are the records' stamps
//! big-endian, so key order is (writer, seq) order.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::record::{payload, restamp, stamp, BULK_RECORD_BYTES};
use super::{check_shared, DataSet, GapClock, Peer, SharedChecker};
use crate::latency::LatencyRecorder;

/// The keyspace every record goes to.
const KEYSPACE: &str = "records";

/// An open fjall database and its keyspace.
pub struct FjallLog {
    db: Database,
    records: Keyspace,
}

fn key(writer: usize, seq: u64) -> [u8; 8] {
    stamp(writer, seq).to_be_bytes()
}

fn open(dir: &Path) -> Result<FjallLog> {
    let db = Database::builder(dir)
        .open()
        .map_err(|e| anyhow!("open fjall database in {}: {e}", dir.display()))?;
    let records = db
        .keyspace(KEYSPACE, KeyspaceCreateOptions::default)
        .map_err(|e| anyhow!("open fjall keyspace: {e}"))?;
    Ok(FjallLog { db, records })
}

/// fjall as a peer.
pub struct Fjall;

impl Peer for Fjall {
    type Log = FjallLog;

    fn create(dir: &Path, _data: DataSet, _checker: &SharedChecker) -> Result<FjallLog> {
        open(dir)
    }

    fn append(log: &FjallLog, writer: usize, seq: u64, payload: &[u8]) -> Result<()> {
        log.records
            .insert(key(writer, seq), payload)
            .map_err(|e| anyhow!("fjall insert: {e}"))?;
        log.db
            .persist(PersistMode::SyncData)
            .map_err(|e| anyhow!("fjall persist: {e}"))
    }

    fn append_batch(
        log: &FjallLog,
        writer: usize,
        first_seq: u64,
        payloads: &[Vec<u8>],
    ) -> Result<()> {
        let mut batch = log.db.batch().durability(Some(PersistMode::SyncData));
        for (index, payload) in payloads.iter().enumerate() {
            batch.insert(
                &log.records,
                key(writer, first_seq + index as u64),
                payload.as_slice(),
            );
        }
        batch
            .commit()
            .map_err(|e| anyhow!("fjall batch commit: {e}"))
    }

    fn close(log: FjallLog) -> Result<()> {
        log.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| anyhow!("fjall persist at close: {e}"))
    }

    fn recover(dir: &Path) -> Result<FjallLog> {
        open(dir)
    }

    fn check_recovered(log: &FjallLog, records: u64) -> Result<()> {
        let last = records - 1;
        let found = log
            .records
            .get(key(0, last))
            .map_err(|e| anyhow!("fjall get: {e}"))?
            .with_context(|| format!("record {last} missing after recovery"))?;
        let mut expected = payload(0, BULK_RECORD_BYTES);
        restamp(&mut expected, 0, last);
        ensure!(*found == *expected, "record {last} differs after recovery");
        Ok(())
    }

    fn read_back(dir: &Path, checker: &SharedChecker) -> Result<(Duration, LatencyRecorder)> {
        let log = open(dir)?;
        let mut clock = GapClock::start();
        let started = Instant::now();
        for guard in log.records.iter() {
            let (_key, value) = guard
                .into_inner()
                .map_err(|e| anyhow!("fjall iterate: {e}"))?;
            clock.tick();
            check_shared(checker, &value)?;
        }
        let elapsed = started.elapsed();
        Ok((elapsed, clock.into_gaps()))
    }
}
