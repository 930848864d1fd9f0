//! ringstore's journal in each workload: appender tasks on one glommio
//! reactor (one shard), the default `Durability::Auto` (write + fdatasync or
//! O_DSYNC writes, whichever the journal's probe at open finds faster: the
//! small run prints which), every append resolving only once its entry is
//! durable.
//!
//! - Small records: the journal command's small-entry run (`n` tasks, each
//!   appending its next entry when the previous one is acknowledged; a task
//!   standing in for the checkpoint task advances the watermark so ring slots
//!   are reused), `Preallocation::ZeroFill`.
//! - Bulk: [`BULK_TASKS`] tasks append 64 KiB records until the total is
//!   written; each append is durable on its own, and group commit coalesces
//!   what is queued into writes of up to 4 MiB with one fdatasync each.
//!   `Preallocation::Fallocate`, like the raw writer's fresh file.
//! - Recovery: `open()` of that journal, which reads each write's first
//!   header and index (every byte of a tail nothing vouches for) and
//!   rebuilds the ring index; payloads are verified when read (read-back).
//! - Read-back: every op from 1 in order through `Journal::entries`, the
//!   in-order walk, which reads the log in windows of
//!   `ringstore_journal::ENTRIES_READ_AHEAD_BYTES`.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ringstore_journal::LogItem;

use super::record::{payload, restamp, RecordChecker, BULK_RECORD_BYTES, SMALL_RECORD_BYTES};
use super::{
    bulk_records, drop_tree_from_cache, GapClock, PeerName, PeerRunArgs, RunKind, RunResult,
};
use crate::cmd_journal::{
    append_retrying, on_reactor, open_journal, run_small, DurabilityArg, JournalShape,
    PreallocationArg,
};
use crate::latency::LatencyRecorder;

/// Concurrent appender tasks in the bulk workload.
pub const BULK_TASKS: usize = 64;

const SMALL_SHAPE: JournalShape = JournalShape {
    preallocation: PreallocationArg::ZeroFill,
    durability: DurabilityArg::Auto,
    inline_write_bytes_max: None,
};
const BULK_SHAPE: JournalShape = JournalShape {
    preallocation: PreallocationArg::Fallocate,
    durability: DurabilityArg::Auto,
    inline_write_bytes_max: None,
};

const _: () = assert!(SMALL_RECORD_BYTES == crate::cmd_journal::SMALL_ENTRY_BYTES);
const _: () = assert!(BULK_RECORD_BYTES == crate::cmd_journal::BULK_ENTRY_BYTES);

/// Runs ringstore's side of one workload.
pub fn run(args: &PeerRunArgs, duration: Duration) -> Result<RunResult> {
    let dir = args.dir.clone();
    match args.kind {
        RunKind::Small => {
            let small = run_small(dir, args.writers, duration, SMALL_SHAPE)?;
            let mut result = RunResult::new(
                PeerName::Ringstore,
                RunKind::Small,
                args.writers,
                small.entries,
                small.entries * SMALL_RECORD_BYTES as u64,
                Duration::from_secs_f64(small.seconds),
                Some(small.latency),
            );
            result.syncs = Some(small.fsyncs);
            Ok(result)
        }
        RunKind::Bulk => bulk(dir, args.bytes),
        RunKind::Recovery => recovery(dir, args.records),
        RunKind::Readback => readback(dir, args.records),
    }
}

fn bulk(dir: PathBuf, total_bytes: u64) -> Result<RunResult> {
    let records = bulk_records(total_bytes)?;
    on_reactor("rsb-ringstore-bulk", move || async move {
        let journal = open_journal(&dir, BULK_SHAPE).await?;
        let remaining = Rc::new(Cell::new(records));
        let latency = Rc::new(RefCell::new(LatencyRecorder::new()));
        let stats_before = journal.stats();
        let started = Instant::now();
        let tasks: Vec<_> = (0..BULK_TASKS)
            .map(|task| {
                let journal = journal.clone();
                let remaining = Rc::clone(&remaining);
                let latency = Rc::clone(&latency);
                glommio::spawn_local(async move {
                    let mut record = payload(task, BULK_RECORD_BYTES);
                    let mut seq = 0u64;
                    let mut retries = 0u64;
                    while remaining.get() > 0 {
                        remaining.set(remaining.get() - 1);
                        restamp(&mut record, task, seq);
                        let sent = Instant::now();
                        append_retrying(&journal, &record, &mut retries).await?;
                        latency.borrow_mut().record(sent.elapsed());
                        seq += 1;
                    }
                    anyhow::Ok(seq)
                })
            })
            .collect();
        let mut appended = 0;
        for task in tasks {
            appended += task.await?;
        }
        let elapsed = started.elapsed();
        ensure!(appended == records, "appended {appended} of {records}");
        let stats = journal.stats();
        let syncs = stats.fsyncs - stats_before.fsyncs;
        ensure!(syncs >= 1, "no fdatasync for {records} durable appends");
        ensure!(
            stats.bytes_written - stats_before.bytes_written >= total_bytes,
            "journal wrote fewer bytes than the payload"
        );
        journal.close().await.context("close bulk journal")?;
        let summary = latency.borrow().summary();
        let mut result = RunResult::new(
            PeerName::Ringstore,
            RunKind::Bulk,
            BULK_TASKS,
            records,
            total_bytes,
            elapsed,
            Some(summary),
        );
        result.syncs = Some(syncs);
        Ok(result)
    })
}

fn recovery(dir: PathBuf, records: u64) -> Result<RunResult> {
    ensure!(
        records > 0,
        "recovery needs the record count of the bulk run"
    );
    drop_tree_from_cache(&dir)?;
    on_reactor("rsb-ringstore-recovery", move || async move {
        let started = Instant::now();
        let journal = open_journal(&dir, BULK_SHAPE).await?;
        let elapsed = started.elapsed();
        let report = journal.recovery_report().clone();
        ensure!(
            report.entries == records,
            "recovery verified {} entries, {records} were appended",
            report.entries
        );
        ensure!(
            journal.next_op() == records + 1,
            "recovered journal would append op {}, not {}",
            journal.next_op(),
            records + 1
        );
        journal.close().await.context("close recovered journal")?;
        Ok(RunResult::new(
            PeerName::Ringstore,
            RunKind::Recovery,
            1,
            records,
            records * BULK_RECORD_BYTES as u64,
            elapsed,
            None,
        ))
    })
}

fn readback(dir: PathBuf, records: u64) -> Result<RunResult> {
    ensure!(
        records > 0,
        "read-back needs the record count of the bulk run"
    );
    drop_tree_from_cache(&dir)?;
    on_reactor("rsb-ringstore-readback", move || async move {
        let journal = open_journal(&dir, BULK_SHAPE).await?;
        // Recovery read the segments; drop them again so the read-back
        // comes from the disk like every peer's.
        drop_tree_from_cache(&dir)?;
        let mut checker = RecordChecker::new(BULK_TASKS, BULK_RECORD_BYTES);
        let mut clock = GapClock::start();
        let started = Instant::now();
        // The in-order walk: `entries` reads whole windows of the log, the
        // way a replay or a follower catching up reads it.
        let mut entries = journal.entries(1..=records);
        while let Some(item) = entries.next().await {
            let entry = match item.context("read back")? {
                LogItem::Present(entry) => entry,
                LogItem::Missing(op) => bail!("op {op} is missing"),
            };
            clock.tick();
            checker.check(&entry.payload)?;
        }
        let elapsed = started.elapsed();
        checker.finish_total(records)?;
        journal
            .close()
            .await
            .context("close journal after read-back")?;
        Ok(RunResult::new(
            PeerName::Ringstore,
            RunKind::Readback,
            1,
            records,
            records * BULK_RECORD_BYTES as u64,
            elapsed,
            Some(clock.into_gaps().summary()),
        ))
    })
}
