//! Per-shard metrics, through the [`metrics`] crate's facade and in
//! [`ShardStats`](crate::ShardStats).
//!
//! Install any `metrics` recorder (Prometheus exporter, statsd, ...) before
//! opening shards and these appear with a `shard` label (the shard's
//! directory name unless [`ShardBuilder::metrics_label`] says otherwise):
//!
//! | name | kind | what |
//! |---|---|---|
//! | `ringstore_commands_applied_total` | counter | commands applied (replies and rejections) |
//! | `ringstore_commands_rejected_total` | counter | commands the state machine rejected |
//! | `ringstore_ack_latency_seconds` | histogram | submit to acknowledgement (durable and applied) |
//! | `ringstore_journal_appends_total` | counter | entries appended |
//! | `ringstore_journal_bytes_written_total` | counter | bytes written by group commits (with padding) |
//! | `ringstore_journal_writes_total` | counter | group-commit writes |
//! | `ringstore_journal_fsyncs_total` | counter | durability points (fdatasync or O_DSYNC writes) |
//! | `ringstore_journal_segments_created_total` | counter | journal segments created (on open and at every rollover) |
//! | `ringstore_journal_segments_recycled_total` | counter | of those, segments made from a retired segment's file (`JournalBuilder::recycle_segments`): no zero-fill, no unwritten extents |
//! | `ringstore_journal_batches_total` | counter, label `entries` | group commits by size: `1`, `2-3`, `4-7`, ... |
//! | `ringstore_journal_read_corruptions_total` | counter | reads that found a journal entry damaged (each logged with its file and offset; the open leaves vouched-for payloads to the reads) |
//! | `ringstore_journal_read_io_errors_total` | counter | journal reads the disk failed (each logged with the file, the entry's offset and the block that fails alone) |
//! | `ringstore_journal_read_retries_total` | counter | journal reads whose entry failed verification and was read again, alone (a transient read error; damage, then also counted above; or a replay just behind the writer that read ahead before those bytes were written) |
//! | `ringstore_journal_scrub_passes_total` | counter | passes of the journal's scrubber over every segment (`JournalBuilder::scrub_rate`, through `ShardBuilder::journal`) |
//! | `ringstore_journal_scrub_bytes_total` | counter | bytes the scrubber read |
//! | `ringstore_journal_scrub_damage_total` | counter | places the scrubber found damaged (each also logged with its file and offset; reading the entries there fails) |
//! | `ringstore_journal_scrub_read_errors_total` | counter | segment scans the scrubber could not finish for a read error (each logged; a block that fails every read is logged with its file and offset and kept with the damage) |
//! | `ringstore_snapshot_scrub_passes_total` | counter | passes of the snapshot scrubber over every snapshot generation (`ShardBuilder::scrub_rate`) |
//! | `ringstore_snapshot_scrub_damage_total` | counter | snapshot files the scrubber found damaged (each also logged with its file and offset) |
//! | `ringstore_snapshot_scrub_read_errors_total` | counter | snapshot reads of the scrubber that failed (each logged; tried again next pass) |
//! | `ringstore_ring_slots_used` | gauge | ring slots holding ops above the watermark |
//! | `ringstore_ring_slots` | gauge | ring slots in all |
//! | `ringstore_checkpoints_total` | counter | checkpoints that wrote a snapshot |
//! | `ringstore_checkpoint_failures_total` | counter | checkpoints that failed |
//! | `ringstore_checkpoint_seconds` | histogram | time to write one snapshot |
//! | `ringstore_snapshot_uploads_total` | counter | snapshots uploaded to object storage |
//! | `ringstore_snapshot_upload_failures_total` | counter | upload attempts that failed (each retried after a backoff) |
//! | `ringstore_snapshot_uploads_refused_total` | counter | snapshots not uploaded because the local file no longer verified (each logged with its damage; a newer snapshot takes its place) |
//! | `ringstore_snapshot_upload_bytes_total` | counter | bytes of snapshots uploaded |
//! | `ringstore_snapshot_upload_lag_seconds` | gauge | of the last upload: from the snapshot's persist to the end of its upload |
//! | `ringstore_snapshot_uploaded_op` | gauge | op of the newest snapshot in object storage |
//! | `ringstore_remote_snapshots_deleted_total` | counter | old generations deleted from object storage |
//! | `ringstore_remote_retention_failures_total` | counter | retention passes that failed |
//! | `ringstore_journal_tail_cuts_total` | counter | opens whose journal recovery cut a tail that may have held acknowledged entries (see `ringstore_journal::TailState::Torn`) |
//! | `ringstore_journal_tail_cut_entries_total` | counter | entries in those cut tails whose headers still verified (ops that may have been acknowledged) |
//! | `ringstore_journal_unclean_opens_total` | counter | opens after an unclean shutdown: the journal's end was found, not recorded (`RecoveryReport::unrecorded_end`); an acknowledged op above the highest one found could have been wiped undetectably |
//! | `ringstore_journal_superblock_repairs_total` | counter | journal superblock copies found damaged or stale at open (rewritten) |
//! | `ringstore_journal_stray_files` | gauge | files in the journal directory that are not the journal's (ignored) |
//! | `ringstore_journal_write_through` | gauge | 1 if the journal makes appends durable with O_DSYNC writes (`Durability::WriteThrough`, configured or chosen by `Auto`'s probe), 0 if with write + fdatasync (or, under `NoSync`, not at all) |
//! | `ringstore_snapshots_skipped_total` | counter | snapshot files an open passed over because they did not verify (each also logged with its reason) |
//! | `ringstore_data_dir_superblock_repairs_total` | counter, no `shard` label | data directory superblock copies found damaged or stale at startup and rewritten from the good one |
//! | `ringstore_shards_abandoned_total` | counter, no `shard` label | shards recorded as created but found without their directory or identity at a start told to give them up (`EngineBuilder::abandon_missing_shard`), started empty |
//! | `ringstore_snapshots_set_aside_total` | counter, no `shard` label | snapshots an open passed over above the state it rebuilt and renamed `*.passed-over` (see `recovery`, step 4b) |
//! | `ringstore_shards_created_total` | counter, no `shard` label | new, empty shards an open created in a directory that held none (see `ShardBuilder::create_if_missing`) |
//!
//! The object store's own counters (calls, retries, timeouts, bytes) are
//! the `ringstore_remote_*` metrics of `ringstore_cache::Remote`, shared by
//! the shards of a process.
//!
//! Counters taken from the journal are published every
//! [`METRICS_PUBLISH_INTERVAL`] and whenever [`Shard::stats`] is called;
//! the rest as they happen. Without a recorder every call is a no-op.
//!
//! [`ShardBuilder::metrics_label`]: crate::ShardBuilder::metrics_label
//! [`Shard::stats`]: crate::Shard::stats

use hdrhistogram::Histogram;
use metrics::{Counter, Gauge};
use ringstore_journal::{JournalStats, BATCH_SIZE_BUCKETS};
use std::{cell::RefCell, time::Duration};

/// How often a shard publishes the journal's counters to the facade.
pub const METRICS_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// Largest ack latency the in-process histogram tells apart; longer ones
/// count as this (µs).
const ACK_LATENCY_MAX_US: u64 = 60_000_000;
/// Significant digits of the in-process histogram (0.1 % resolution).
const ACK_LATENCY_DIGITS: u8 = 3;

/// Percentiles of the ack latency since the shard was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Acknowledged submits measured.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Slowest.
    pub max: Duration,
}

pub(crate) struct ShardMetrics {
    ack_latency: RefCell<Histogram<u64>>,
    ack_latency_seconds: metrics::Histogram,
    commands_applied: Counter,
    commands_rejected: Counter,
    journal_appends: Counter,
    journal_bytes: Counter,
    journal_writes: Counter,
    journal_fsyncs: Counter,
    journal_segments_created: Counter,
    journal_segments_recycled: Counter,
    journal_read_corruptions: Counter,
    journal_read_retries: Counter,
    journal_read_io_errors: Counter,
    journal_scrub_passes: Counter,
    journal_scrub_bytes: Counter,
    journal_scrub_damage: Counter,
    journal_scrub_read_errors: Counter,
    snapshot_scrub_passes: Counter,
    snapshot_scrub_damage: Counter,
    snapshot_scrub_read_errors: Counter,
    journal_batches: Vec<Counter>,
    ring_slots_used: Gauge,
    ring_slots: Gauge,
    checkpoints: Counter,
    checkpoint_failures: Counter,
    checkpoint_seconds: metrics::Histogram,
    snapshot_uploads: Counter,
    snapshot_upload_failures: Counter,
    snapshot_uploads_refused: Counter,
    snapshot_upload_bytes: Counter,
    snapshot_upload_lag_seconds: Gauge,
    snapshot_uploaded_op: Gauge,
    remote_snapshots_deleted: Counter,
    remote_retention_failures: Counter,
}

impl ShardMetrics {
    /// Publishes what recovery found (snapshots skipped; of the journal: a cut tail, repaired
    /// superblock copies, stray files): counted once per open, so a monitor
    /// sees a cut that may have lost acknowledged entries.
    pub fn with_recovery(
        self,
        shard: &str,
        report: &ringstore_journal::RecoveryReport,
        snapshots_skipped: usize,
    ) -> Self {
        let label = shard.to_string();
        metrics::counter!("ringstore_snapshots_skipped_total", "shard" => label.clone())
            .increment(snapshots_skipped as u64);
        if let ringstore_journal::TailState::Torn { entries, .. } = &report.tail {
            tracing::warn!(shard, tail = %report.tail.describe(), "the journal's recovery cut its tail");
            metrics::counter!("ringstore_journal_tail_cuts_total", "shard" => label.clone())
                .increment(1);
            metrics::counter!("ringstore_journal_tail_cut_entries_total", "shard" => label.clone())
                .increment(*entries);
        }
        metrics::counter!("ringstore_journal_unclean_opens_total", "shard" => label.clone())
            .increment(u64::from(report.unrecorded_end.is_some()));
        metrics::counter!("ringstore_journal_superblock_repairs_total", "shard" => label.clone())
            .increment(report.superblock_repaired.len() as u64);
        metrics::gauge!("ringstore_journal_stray_files", "shard" => label)
            .set(report.stray_files.len() as f64);
        self
    }

    /// Publishes how the journal makes appends durable (its open chose it).
    pub fn with_durability(self, shard: &str, chosen: ringstore_journal::Durability) -> Self {
        let write_through = chosen == ringstore_journal::Durability::WriteThrough;
        metrics::gauge!("ringstore_journal_write_through", "shard" => shard.to_string())
            .set(f64::from(u8::from(write_through)));
        self
    }

    pub fn new(shard: &str) -> ShardMetrics {
        let label = shard.to_string();
        let counter = |name: &'static str| metrics::counter!(name, "shard" => label.clone());
        let journal_batches = (0..BATCH_SIZE_BUCKETS)
            .map(|i| {
                let low = 1u64 << i;
                let entries = if i == BATCH_SIZE_BUCKETS - 1 {
                    format!("{low}+")
                } else if low == 1 {
                    "1".to_string()
                } else {
                    format!("{low}-{}", (low << 1) - 1)
                };
                metrics::counter!("ringstore_journal_batches_total",
                    "shard" => label.clone(), "entries" => entries)
            })
            .collect();
        ShardMetrics {
            ack_latency: RefCell::new(
                Histogram::new_with_bounds(1, ACK_LATENCY_MAX_US, ACK_LATENCY_DIGITS)
                    .expect("constant bounds are valid"),
            ),
            ack_latency_seconds: metrics::histogram!("ringstore_ack_latency_seconds", "shard" => label.clone()),
            commands_applied: counter("ringstore_commands_applied_total"),
            commands_rejected: counter("ringstore_commands_rejected_total"),
            journal_appends: counter("ringstore_journal_appends_total"),
            journal_bytes: counter("ringstore_journal_bytes_written_total"),
            journal_writes: counter("ringstore_journal_writes_total"),
            journal_fsyncs: counter("ringstore_journal_fsyncs_total"),
            journal_segments_created: counter("ringstore_journal_segments_created_total"),
            journal_segments_recycled: counter("ringstore_journal_segments_recycled_total"),
            journal_read_corruptions: counter("ringstore_journal_read_corruptions_total"),
            journal_read_retries: counter("ringstore_journal_read_retries_total"),
            journal_read_io_errors: counter("ringstore_journal_read_io_errors_total"),
            journal_scrub_passes: counter("ringstore_journal_scrub_passes_total"),
            journal_scrub_bytes: counter("ringstore_journal_scrub_bytes_total"),
            journal_scrub_damage: counter("ringstore_journal_scrub_damage_total"),
            journal_scrub_read_errors: counter("ringstore_journal_scrub_read_errors_total"),
            snapshot_scrub_passes: counter("ringstore_snapshot_scrub_passes_total"),
            snapshot_scrub_damage: counter("ringstore_snapshot_scrub_damage_total"),
            snapshot_scrub_read_errors: counter("ringstore_snapshot_scrub_read_errors_total"),
            journal_batches,
            ring_slots_used: metrics::gauge!("ringstore_ring_slots_used", "shard" => label.clone()),
            ring_slots: metrics::gauge!("ringstore_ring_slots", "shard" => label.clone()),
            checkpoints: counter("ringstore_checkpoints_total"),
            checkpoint_failures: counter("ringstore_checkpoint_failures_total"),
            checkpoint_seconds: metrics::histogram!("ringstore_checkpoint_seconds", "shard" => label.clone()),
            snapshot_uploads: counter("ringstore_snapshot_uploads_total"),
            snapshot_upload_failures: counter("ringstore_snapshot_upload_failures_total"),
            snapshot_uploads_refused: counter("ringstore_snapshot_uploads_refused_total"),
            snapshot_upload_bytes: counter("ringstore_snapshot_upload_bytes_total"),
            snapshot_upload_lag_seconds: metrics::gauge!("ringstore_snapshot_upload_lag_seconds", "shard" => label.clone()),
            snapshot_uploaded_op: metrics::gauge!("ringstore_snapshot_uploaded_op", "shard" => label.clone()),
            remote_snapshots_deleted: counter("ringstore_remote_snapshots_deleted_total"),
            remote_retention_failures: counter("ringstore_remote_retention_failures_total"),
        }
    }

    /// A submit's acknowledgement, `latency` after it started.
    pub fn record_ack(&self, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, ACK_LATENCY_MAX_US);
        self.ack_latency.borrow_mut().saturating_record(micros);
        self.ack_latency_seconds.record(latency.as_secs_f64());
    }

    /// A command applied (whether or not its submitter still waits).
    pub fn record_applied(&self, rejected: bool) {
        self.commands_applied.increment(1);
        if rejected {
            self.commands_rejected.increment(1);
        }
    }

    pub fn record_checkpoint(&self, took: Option<Duration>) {
        match took {
            Some(took) => {
                self.checkpoints.increment(1);
                self.checkpoint_seconds.record(took.as_secs_f64());
            }
            None => self.checkpoint_failures.increment(1),
        }
    }

    pub fn record_upload(&self, bytes: u64, lag: Duration, uploaded_op: u64) {
        self.snapshot_uploads.increment(1);
        self.snapshot_upload_bytes.increment(bytes);
        self.snapshot_upload_lag_seconds.set(lag.as_secs_f64());
        self.snapshot_uploaded_op.set(uploaded_op as f64);
    }

    pub fn record_upload_refused(&self) {
        self.snapshot_uploads_refused.increment(1);
    }

    pub fn record_upload_failure(&self) {
        self.snapshot_upload_failures.increment(1);
    }

    pub fn record_remote_deleted(&self, generations: u64) {
        self.remote_snapshots_deleted.increment(generations);
    }

    pub fn record_snapshot_scrub_pass(&self) {
        self.snapshot_scrub_passes.increment(1);
    }

    pub fn record_snapshot_scrub_damage(&self) {
        self.snapshot_scrub_damage.increment(1);
    }

    pub fn record_snapshot_scrub_read_error(&self) {
        self.snapshot_scrub_read_errors.increment(1);
    }

    pub fn record_retention_failure(&self) {
        self.remote_retention_failures.increment(1);
    }

    /// Publishes the journal's counters and the ring's fill.
    pub fn publish(&self, journal: &JournalStats, ring_slots_used: u64, ring_slots: u64) {
        self.journal_appends.absolute(journal.appends);
        self.journal_bytes.absolute(journal.bytes_written);
        self.journal_writes.absolute(journal.writes);
        self.journal_fsyncs.absolute(journal.fsyncs);
        self.journal_segments_created
            .absolute(journal.segments_created);
        self.journal_segments_recycled
            .absolute(journal.segments_recycled);
        self.journal_read_corruptions
            .absolute(journal.read_corruptions);
        self.journal_read_retries.absolute(journal.read_retries);
        self.journal_read_io_errors.absolute(journal.read_io_errors);
        self.journal_scrub_passes.absolute(journal.scrub_passes);
        self.journal_scrub_bytes.absolute(journal.scrub_bytes);
        self.journal_scrub_damage.absolute(journal.scrub_damage);
        self.journal_scrub_read_errors
            .absolute(journal.scrub_read_errors);
        for (counter, &count) in self.journal_batches.iter().zip(&journal.batch_entries_log2) {
            counter.absolute(count);
        }
        self.ring_slots_used.set(ring_slots_used as f64);
        self.ring_slots.set(ring_slots as f64);
    }

    pub fn ack_latency(&self) -> LatencySummary {
        let histogram = self.ack_latency.borrow();
        let at = |quantile: f64| Duration::from_micros(histogram.value_at_quantile(quantile));
        LatencySummary {
            count: histogram.len(),
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
            max: Duration::from_micros(histogram.max()),
        }
    }
}
