//! Deterministic crash simulation of a shard, checkpoints included.
//!
//! [`run`] drives a [`Shard`] on the fault-injecting [`MemStorage`] through
//! cycles of: open (recovery), concurrent submits from many tasks while
//! checkpoints run (automatic ones on small thresholds, plus explicit ones),
//! then a power cut at a random storage operation (often in the middle of
//! a checkpoint: writing, syncing or renaming a snapshot, advancing the
//! watermark, retiring segments), a crash, and recovery again. After every
//! recovery it checks:
//!
//! * **nothing applied is lost**: the recovered shard has applied at least
//!   every op any earlier incarnation applied (an op is applied only once
//!   durable, and every acknowledged command was applied);
//! * **history is stable**: an op replayed after a crash carries the same
//!   command it had when it was first applied;
//! * **state equals the model**: the recovered state equals a fresh state
//!   machine that applied the recorded commands of ops `1..=applied` in
//!   order (so snapshots, replay and the watermark agree);
//! * **acknowledgements are honest**: each acknowledged command is in the
//!   history at the op its reply named;
//! * recovery never panics; an open may fail only with an injected I/O
//!   error (it is retried after another crash), never with corruption, a
//!   replay gap or a snapshot behind the journal;
//! * the snapshot scrubber reports damage at rest: a bit flipped in a
//!   snapshot file's checked bytes, and a sector there that fails every
//!   read (each undone after its check, so the cycle goes on with intact
//!   files; [`SimProfile::damage_snapshots_at_rest`]).
//!
//! Commands are recorded by wrapping the machine in [`Recorded`], whose
//! `apply` notes each op's command; everything is decided by the seed.

use crate::config::CheckpointPolicy;
use crate::error::Error;
use crate::machine::{FrozenSection, OpId, RestoreError, SectionSet, StateMachine};
use crate::shard::Shard;
use crate::snapshot::{Check, SnapshotVerifier};
use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg64Mcg;
use ringstore_journal::storage::{FaultConfig, FaultCounts, MemStorage};
use std::{cell::RefCell, collections::BTreeMap, rc::Rc, time::Duration};

/// Attempts to open the shard after a crash when opening fails with an
/// injected I/O error.
const OPEN_ATTEMPTS_MAX: u32 = 8;
/// Polls (1 ms apart) the workload gets to wind down after a power cut.
const CUT_GRACE_POLLS: u32 = 20;
/// Longest a cycle's workload may run without a power cut before the
/// simulation calls it hung.
const WORKLOAD_TIME_MAX: Duration = Duration::from_secs(60);
/// Most submitting tasks per cycle.
pub const SUBMITTERS_MAX: u64 = 32;
/// Most commands one submitter sends per cycle.
pub const COMMANDS_PER_SUBMITTER_MAX: u64 = 40;

/// Shard settings for one simulation profile.
#[derive(Debug, Clone)]
pub struct SimProfile {
    /// A name for reports.
    pub name: &'static str,
    /// The storage faults.
    pub faults: FaultConfig,
    /// Ring slots (small: the ring fills and submits wait for checkpoints).
    pub slot_count: u64,
    /// Checkpoint after this many ops.
    pub checkpoint_ops_max: u64,
    /// The journal keeps the previous snapshot's ops.
    pub journal_keeps_previous_snapshot: bool,
    /// Snapshot generations kept.
    pub snapshot_generations: usize,
    /// After every recovery, damage a snapshot file at rest (a flipped bit,
    /// then an unreadable sector, each undone after its check) and check
    /// that the snapshot scrubber's read of the file reports it.
    pub damage_snapshots_at_rest: bool,
}

impl SimProfile {
    /// The profiles CI runs: benign faults with the default watermark lag,
    /// checkpoints after nearly every batch, a tiny ring, and no lag.
    pub fn all() -> Vec<SimProfile> {
        let base = SimProfile {
            name: "benign",
            faults: FaultConfig::benign(),
            slot_count: 256,
            checkpoint_ops_max: 40,
            journal_keeps_previous_snapshot: true,
            snapshot_generations: 3,
            damage_snapshots_at_rest: true,
        };
        vec![
            base.clone(),
            SimProfile {
                name: "checkpoint-storm",
                checkpoint_ops_max: 3,
                ..base.clone()
            },
            SimProfile {
                name: "tiny-ring",
                slot_count: 32,
                checkpoint_ops_max: 16,
                ..base.clone()
            },
            SimProfile {
                name: "no-watermark-lag",
                journal_keeps_previous_snapshot: false,
                snapshot_generations: 1,
                ..base
            },
        ]
    }
}

/// What a simulation run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimReport {
    /// Cycles run.
    pub cycles: u64,
    /// Crashes simulated.
    pub crashes: u64,
    /// Crashes whose power cut hit a running checkpoint.
    pub crashes_during_checkpoint: u64,
    /// Clean closes and reopens.
    pub clean_reopens: u64,
    /// Commands acknowledged.
    pub acknowledged: u64,
    /// Checkpoints that wrote a snapshot.
    pub checkpoints: u64,
    /// Checkpoints that failed (injected faults, power cuts).
    pub checkpoint_failures: u64,
    /// Ops replayed by recoveries.
    pub replayed_ops: u64,
    /// Snapshot files recovery skipped as damaged.
    pub snapshots_skipped: u64,
    /// Opens retried after an injected I/O error.
    pub open_retries: u64,
    /// Bits flipped in snapshot files that the snapshot scrubber reported.
    pub snapshot_rot_found: u64,
    /// Unreadable sectors of snapshot files the snapshot scrubber failed on.
    pub snapshot_unreadable_found: u64,
    /// Faults the storage injected.
    pub faults: FaultCounts,
}

impl SimReport {
    /// Adds another run's figures.
    pub fn add(&mut self, other: &SimReport) {
        self.cycles += other.cycles;
        self.crashes += other.crashes;
        self.crashes_during_checkpoint += other.crashes_during_checkpoint;
        self.clean_reopens += other.clean_reopens;
        self.acknowledged += other.acknowledged;
        self.checkpoints += other.checkpoints;
        self.checkpoint_failures += other.checkpoint_failures;
        self.replayed_ops += other.replayed_ops;
        self.snapshots_skipped += other.snapshots_skipped;
        self.open_retries += other.open_retries;
        self.snapshot_rot_found += other.snapshot_rot_found;
        self.snapshot_unreadable_found += other.snapshot_unreadable_found;
        self.faults.add(&other.faults);
    }
}

thread_local! {
    /// Op → (epoch, encoded command) of every apply on this thread, for
    /// [`Recorded`].
    static HISTORY: RefCell<BTreeMap<u64, (u64, Vec<u8>)>> = const { RefCell::new(BTreeMap::new()) };
    /// First history conflict seen (an op applied with two commands).
    static CONFLICT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A state machine that records the command of every op it applies in a
/// thread-local history, so the simulation knows what each op was even if
/// its submitter never heard back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded<M>(pub M);

impl<M: StateMachine> StateMachine for Recorded<M> {
    type Command = M::Command;
    type Reply = M::Reply;
    type Rejection = M::Rejection;

    fn apply(&mut self, at: OpId, command: M::Command) -> Result<M::Reply, M::Rejection> {
        let encoded =
            crate::machine::encode(&command).expect("a command that was journaled encodes");
        HISTORY.with(|history| {
            let mut history = history.borrow_mut();
            let entry = (at.epoch, encoded);
            match history.get(&at.op) {
                Some(existing) if *existing != entry => CONFLICT.with(|c| {
                    c.borrow_mut().get_or_insert_with(|| {
                        format!("op {} applied with two different commands or epochs", at.op)
                    });
                }),
                Some(_) => {}
                None => {
                    history.insert(at.op, entry);
                }
            }
        });
        self.0.apply(at, command)
    }

    fn freeze(&self) -> Vec<FrozenSection> {
        self.0.freeze()
    }

    fn restore(sections: &mut SectionSet) -> Result<Self, RestoreError> {
        M::restore(sections).map(Recorded)
    }
}

/// An invariant the simulation found broken.
#[derive(Debug, Clone)]
pub struct SimViolation {
    /// The seed that reproduces it.
    pub seed: u64,
    /// The profile.
    pub profile: &'static str,
    /// The cycle it happened in.
    pub cycle: u64,
    /// What was wrong.
    pub message: String,
}

impl std::fmt::Display for SimViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} profile {} cycle {}: {}",
            self.seed, self.profile, self.cycle, self.message
        )
    }
}

const SHARD_DIR: &str = "/sim/shard";

/// An acknowledged command: its op and its encoding.
type Acknowledged = (u64, Vec<u8>);

fn builder<M: StateMachine>(
    storage: &MemStorage,
    profile: &SimProfile,
) -> crate::ShardBuilder<Recorded<M>, MemStorage> {
    let slot_count = profile.slot_count;
    Shard::<Recorded<M>>::builder(SHARD_DIR)
        .storage(storage.clone())
        .journal(move |j| {
            j.slot_count(slot_count)
                .segment_bytes(64 << 10)
                .batch_bytes_max(16 << 10)
                .entry_bytes_max(4 << 10)
        })
        .checkpoint_policy(CheckpointPolicy {
            ops_max: Some(profile.checkpoint_ops_max.min(slot_count)),
            ring_free_slots_min: Some(slot_count / 4),
            ring_full_wait_max: Duration::from_secs(600),
            ..CheckpointPolicy::default()
        })
        .journal_keeps_previous_snapshot(profile.journal_keeps_previous_snapshot)
        .snapshot_generations(profile.snapshot_generations)
}

/// Whether a failed open is an injected I/O failure worth retrying after
/// another crash (anything else is a violation).
fn is_injected_io(error: &Error) -> bool {
    match error {
        Error::Io { .. } | Error::Persist { .. } => true,
        Error::Snapshot(_) => true,
        Error::Poisoned { .. } => true,
        Error::Journal(e) => matches!(
            e,
            ringstore_journal::Error::Io { .. }
                | ringstore_journal::Error::Poisoned { .. }
                | ringstore_journal::Error::NoSpace { .. }
        ),
        _ => false,
    }
}

/// Damages one snapshot file at rest, for the snapshot scrubber: a flipped
/// bit, which a scrub of the file must report in that file (at or before
/// the bit, or in its header block for a bit there), then an unreadable
/// sector, which the scrub must fail on with a read error naming its
/// block. Each is undone after its check, so recovery and the workload see
/// intact files.
async fn damage_snapshot_at_rest<M: StateMachine>(
    shard: &Shard<Recorded<M>, MemStorage>,
    storage: &MemStorage,
    rng: &mut Pcg64Mcg,
    report: &mut SimReport,
) -> Result<(), String> {
    let (files, domain) = shard
        .snapshot_files()
        .map_err(|e| format!("listing the snapshots failed: {e}"))?;
    if files.is_empty() {
        return Ok(());
    }
    let path = &files[(rng.next_u64() % files.len() as u64) as usize];
    let Some(bytes) = storage.file_bytes(path) else {
        return Ok(());
    };
    let len = bytes.len() as u64;
    let header_block = crate::format::HEADER_BLOCK_BYTES;
    if len < header_block {
        return Ok(());
    }
    // Only the header and the body are read and checked; the zero padding
    // after the body is not (`engine/FORMAT.md`).
    let mut layout = SnapshotVerifier::new(path, len, Some(domain), Check::Full);
    layout.header_block(&bytes[..header_block as usize]);
    let checked_end = layout.body_range().map_or(header_block, |body| body.end);
    let offset = rng.next_u64() % checked_end;
    let bit = (rng.next_u64() % 8) as u8;
    let scrub = || async {
        let mut pacer = ringstore_journal::pace::Pacer::new(std::num::NonZeroU64::MAX);
        crate::snapshot::scrub_snapshot(storage, path, Some(domain), &mut pacer, &|| true).await
    };
    // A prune in steps may take the file away meanwhile (it renames it
    // first): then there is nothing to check.
    let gone = || storage.file_bytes(path).is_none();
    if !storage.flip_bit(path, offset, bit) {
        return Ok(());
    }
    let found = scrub().await;
    if gone() {
        return Ok(());
    }
    storage.flip_bit(path, offset, bit);
    match found {
        Ok(Some(damage))
            if damage.path == *path
                && (damage.offset <= offset
                    || (offset < header_block && damage.offset < header_block)) =>
        {
            report.snapshot_rot_found += 1
        }
        other => {
            return Err(format!(
                "the snapshot scrub missed a flipped bit at {}:{offset} (bit {bit}): {other:?}",
                path.display()
            ))
        }
    }
    if !storage.set_unreadable(path, offset) {
        return Ok(());
    }
    let read = scrub().await;
    if gone() {
        return Ok(());
    }
    storage.clear_unreadable(path);
    let block = offset - offset % crate::format::BLOCK_BYTES;
    match read {
        Err(e)
            if ringstore_journal::storage::UnreadableBlock::in_error(&e)
                .is_some_and(|found| found.offset == block) =>
        {
            report.snapshot_unreadable_found += 1
        }
        other => {
            return Err(format!(
                "the snapshot scrub did not name the unreadable block at {}:{block} \
                 (sector of byte {offset}): {other:?}",
                path.display()
            ))
        }
    }
    Ok(())
}

/// Runs `cycles` crash cycles of profile `profile` with seed `seed`.
/// `command` draws a random command.
pub async fn run<M, G>(
    seed: u64,
    profile: &SimProfile,
    cycles: u64,
    command: G,
) -> Result<SimReport, SimViolation>
where
    M: StateMachine + Clone + PartialEq + std::fmt::Debug,
    M::Command: Clone,
    G: Fn(&mut Pcg64Mcg) -> M::Command + Clone + 'static,
{
    HISTORY.with(|h| h.borrow_mut().clear());
    CONFLICT.with(|c| c.borrow_mut().take());
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let storage = MemStorage::with_faults(seed, profile.faults.clone());
    let mut report = SimReport::default();
    // The model: the state after `model_op` ops of the history.
    let mut model = M::default();
    let mut model_op = 0u64;
    // The highest op any incarnation applied.
    let mut applied_max = 0u64;
    let violation = |cycle: u64, message: String| SimViolation {
        seed,
        profile: profile.name,
        cycle,
        message,
    };
    for cycle in 0..cycles {
        report.cycles += 1;
        // Open, retrying after injected I/O failures.
        let mut attempts = 0;
        let shard = loop {
            match builder::<M>(&storage, profile).open().await {
                Ok(shard) => break shard,
                Err(e) if is_injected_io(&e) && attempts < OPEN_ATTEMPTS_MAX => {
                    attempts += 1;
                    report.open_retries += 1;
                    storage.crash();
                    report.crashes += 1;
                }
                Err(e) => return Err(violation(cycle, format!("open failed: {e}"))),
            }
        };
        let recovered = shard.applied();
        let recovery = shard.recovery_report();
        report.replayed_ops += recovery.replayed_ops;
        report.snapshots_skipped += recovery.skipped_snapshots.len() as u64;
        if let Some(conflict) = CONFLICT.with(|c| c.borrow_mut().take()) {
            return Err(violation(cycle, conflict));
        }
        if recovered.op < applied_max {
            return Err(violation(
                cycle,
                format!(
                    "recovered to op {} but op {applied_max} had been applied",
                    recovered.op
                ),
            ));
        }
        // Bring the model up to the recovered op and compare.
        let history_gap = HISTORY.with(|h| {
            let history = h.borrow();
            while model_op < recovered.op {
                let Some((epoch, encoded)) = history.get(&(model_op + 1)) else {
                    return Some(model_op + 1);
                };
                let command: M::Command =
                    crate::machine::decode(encoded).expect("recorded commands decode");
                model_op += 1;
                let _ = model.apply(
                    OpId {
                        op: model_op,
                        epoch: *epoch,
                    },
                    command,
                );
            }
            None
        });
        if let Some(op) = history_gap {
            return Err(violation(
                cycle,
                format!("op {op} is below the recovered op but was never applied"),
            ));
        }
        let matches = shard.read(|state| state.0 == model);
        if !matches {
            return Err(violation(
                cycle,
                format!(
                    "recovered state at op {} differs from the model",
                    recovered.op
                ),
            ));
        }
        applied_max = applied_max.max(recovered.op);
        if profile.damage_snapshots_at_rest {
            // A stream of its own, so the workload's draws are not moved
            // (the disk's fault draws are: the scrub's reads take some).
            let mut damage_rng = Pcg64Mcg::seed_from_u64(seed ^ 0x5c4b_da3a_6e00_0000 ^ cycle);
            if let Err(message) =
                damage_snapshot_at_rest(&shard, &storage, &mut damage_rng, &mut report).await
            {
                return Err(violation(cycle, message));
            }
        }

        // The workload: submitters, explicit checkpoints, and maybe a power
        // cut somewhere in the middle.
        let submitters = 1 + rng.next_u64() % SUBMITTERS_MAX;
        let per_submitter = 1 + rng.next_u64() % COMMANDS_PER_SUBMITTER_MAX;
        let acked: Rc<RefCell<Vec<Acknowledged>>> = Rc::default();
        let running = Rc::new(std::cell::Cell::new(0u64));
        let mut tasks = Vec::new();
        for _ in 0..submitters {
            let shard = shard.clone();
            let acked = acked.clone();
            let running = running.clone();
            running.set(running.get() + 1);
            let mut task_rng = Pcg64Mcg::seed_from_u64(rng.next_u64());
            let command = command.clone();
            tasks.push(glommio::spawn_local(async move {
                for _ in 0..per_submitter {
                    let next = command(&mut task_rng);
                    let encoded = crate::machine::encode(&next).expect("commands encode");
                    match shard.submit_at(next).await {
                        Ok((at, _outcome)) => acked.borrow_mut().push((at.op, encoded)),
                        Err(_) => break,
                    }
                }
                running.set(running.get() - 1);
            }));
        }
        let checkpointer = {
            let shard = shard.clone();
            let running = running.clone();
            running.set(running.get() + 1);
            let explicit = rng.next_u64() % 4;
            let mut task_rng = Pcg64Mcg::seed_from_u64(rng.next_u64());
            glommio::spawn_local(async move {
                for _ in 0..explicit {
                    for _ in 0..(task_rng.next_u64() % 8) {
                        futures_lite::future::yield_now().await;
                    }
                    if shard.checkpoint().await.is_err() {
                        break;
                    }
                }
                running.set(running.get() - 1);
            })
        };
        let ending = rng.next_u64() % 10;
        let power_cut = ending < 7;
        if power_cut {
            storage.cut_power_after_ops(1 + rng.next_u64() % 400);
        }
        // Wait for the workload. After a power cut, tasks waiting for ring
        // slots would wait out their full bound (checkpoints keep failing):
        // they are cancelled instead, as the crash would kill them.
        let started = std::time::Instant::now();
        let mut since_cut = 0;
        while running.get() > 0 {
            if storage.power_is_cut() {
                since_cut += 1;
                if since_cut > CUT_GRACE_POLLS {
                    break;
                }
            }
            if started.elapsed() > WORKLOAD_TIME_MAX {
                return Err(violation(
                    cycle,
                    format!(
                        "workload hung: {} tasks still running after {WORKLOAD_TIME_MAX:?}; {}",
                        running.get(),
                        shard.describe()
                    ),
                ));
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        drop(tasks);
        drop(checkpointer);
        let stats = shard.stats();
        report.checkpoints += stats.checkpoints;
        report.checkpoint_failures += stats.checkpoint_failures;
        report.acknowledged += acked.borrow().len() as u64;
        // Every acknowledged command is in the history at its op.
        let wrong = HISTORY.with(|h| {
            let history = h.borrow();
            acked
                .borrow()
                .iter()
                .find(|(op, command)| history.get(op).map(|(_, c)| c) != Some(command))
                .map(|(op, _)| *op)
        });
        if let Some(op) = wrong {
            return Err(violation(
                cycle,
                format!("op {op} was acknowledged but the history holds another command"),
            ));
        }
        applied_max = applied_max.max(shard.applied().op);
        if power_cut || ending == 7 {
            let cut_during_checkpoint =
                power_cut && storage.power_is_cut() && stats.checkpoint_failures > 0;
            report.crashes_during_checkpoint += u64::from(cut_during_checkpoint);
            drop(shard);
            storage.crash();
            report.crashes += 1;
        } else {
            match shard.close().await {
                Ok(()) => report.clean_reopens += 1,
                Err(_) => {
                    storage.crash();
                    report.crashes += 1;
                }
            }
        }
        // Let tasks of the dead incarnation notice and exit.
        for _ in 0..4 {
            futures_lite::future::yield_now().await;
        }
    }
    report.faults = storage.fault_counts();
    Ok(report)
}
