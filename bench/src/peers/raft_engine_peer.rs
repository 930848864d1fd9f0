//! raft-engine: TiKV's log store for many raft groups, with group commit.
//!
//! Used as TiKV uses it: each writer is one raft group (region id: the
//! writer's index plus one) appending entries with consecutive indexes;
//! every append is a `LogBatch` written with `Engine::write(batch, sync =
//! true)`, which joins concurrent writers into one write and one fdatasync.
//! A bulk batch is one `LogBatch` of 16 entries. Configuration:
//! `Config::default()` with only `dir` set (128 MiB files, LZ4 for batches
//! over 8 KiB, log recycling on).
//!
//! An entry is a protobuf message; `BytesValue` (protobuf's wrapper of one
//! `bytes` field) carries the payload, and the entry's index is read back
//! from the payload's stamp.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use protobuf::well_known_types::BytesValue;
use raft_engine::{Config, Engine, LogBatch, MessageExt};

use super::record::{payload, read_stamp, restamp, split_stamp, BULK_RECORD_BYTES};
use super::{check_shared, DataSet, GapClock, Peer, SharedChecker};
use crate::latency::LatencyRecorder;

/// Entries fetched per call during read-back.
const FETCH_ENTRIES_MAX: u64 = 256;

/// Maps the bench's records onto raft entries.
struct RecordEntries;

impl MessageExt for RecordEntries {
    type Entry = BytesValue;

    fn index(entry: &BytesValue) -> u64 {
        read_stamp(&entry.value)
            .map(|stamp| split_stamp(stamp).1 + 1)
            .unwrap_or(0)
    }
}

fn region(writer: usize) -> u64 {
    writer as u64 + 1
}

fn entry(payload: &[u8]) -> BytesValue {
    BytesValue {
        value: payload.to_vec(),
        ..BytesValue::default()
    }
}

fn open(dir: &Path) -> Result<Engine> {
    let dir_text = dir
        .to_str()
        .with_context(|| format!("{} is not UTF-8", dir.display()))?;
    let config = Config {
        dir: dir_text.to_owned(),
        ..Config::default()
    };
    Engine::open(config).map_err(|e| anyhow!("open raft-engine in {}: {e}", dir.display()))
}

/// raft-engine as a peer.
pub struct RaftEngine;

impl Peer for RaftEngine {
    type Log = Engine;

    fn create(dir: &Path, _data: DataSet, _checker: &SharedChecker) -> Result<Engine> {
        open(dir)
    }

    fn append(log: &Engine, writer: usize, _seq: u64, payload: &[u8]) -> Result<()> {
        let mut batch = LogBatch::default();
        batch
            .add_entries::<RecordEntries>(region(writer), &[entry(payload)])
            .map_err(|e| anyhow!("raft-engine add_entries: {e}"))?;
        log.write(&mut batch, true)
            .map_err(|e| anyhow!("raft-engine write: {e}"))?;
        Ok(())
    }

    fn append_batch(
        log: &Engine,
        writer: usize,
        _first_seq: u64,
        payloads: &[Vec<u8>],
    ) -> Result<()> {
        let entries: Vec<BytesValue> = payloads.iter().map(|p| entry(p)).collect();
        let mut batch = LogBatch::default();
        batch
            .add_entries::<RecordEntries>(region(writer), &entries)
            .map_err(|e| anyhow!("raft-engine add_entries: {e}"))?;
        log.write(&mut batch, true)
            .map_err(|e| anyhow!("raft-engine write: {e}"))?;
        Ok(())
    }

    fn close(log: Engine) -> Result<()> {
        log.sync().map_err(|e| anyhow!("raft-engine sync: {e}"))?;
        drop(log);
        Ok(())
    }

    fn recover(dir: &Path) -> Result<Engine> {
        open(dir)
    }

    fn check_recovered(log: &Engine, records: u64) -> Result<()> {
        let last = log.last_index(region(0));
        ensure!(
            last == Some(records),
            "recovered last index {last:?}, {records} entries were written"
        );
        let found = log
            .get_entry::<RecordEntries>(region(0), records)
            .map_err(|e| anyhow!("raft-engine get_entry: {e}"))?
            .with_context(|| format!("entry {records} missing after recovery"))?;
        let mut expected = payload(0, BULK_RECORD_BYTES);
        restamp(&mut expected, 0, records - 1);
        ensure!(
            found.value == expected,
            "entry {records} differs after recovery"
        );
        Ok(())
    }

    fn read_back(dir: &Path, checker: &SharedChecker) -> Result<(Duration, LatencyRecorder)> {
        let engine = open(dir)?;
        let mut groups = engine.raft_groups();
        groups.sort_unstable();
        let mut clock = GapClock::start();
        let started = Instant::now();
        let mut entries = Vec::with_capacity(FETCH_ENTRIES_MAX as usize);
        for group in groups {
            let (Some(first), Some(last)) = (engine.first_index(group), engine.last_index(group))
            else {
                continue;
            };
            let mut next = first;
            while next <= last {
                let end = (next + FETCH_ENTRIES_MAX).min(last + 1);
                entries.clear();
                engine
                    .fetch_entries_to::<RecordEntries>(group, next, end, None, &mut entries)
                    .map_err(|e| anyhow!("raft-engine fetch_entries_to: {e}"))?;
                ensure!(
                    entries.len() as u64 == end - next,
                    "raft group {group}: fetched {} of entries {next}..{end}",
                    entries.len()
                );
                for entry in &entries {
                    clock.tick();
                    check_shared(checker, &entry.value)?;
                }
                next = end;
            }
        }
        let elapsed = started.elapsed();
        drop(engine);
        Ok((elapsed, clock.into_gaps()))
    }
}
