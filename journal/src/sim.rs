//! Deterministic crash simulation of the journal.
//!
//! [`run_ops`] drives a journal on the fault-injecting [`MemStorage`]
//! through a list of [`SimOp`]s — appends from many concurrent tasks,
//! out-of-order replica writes, rewrites in later epochs, reads, watermark
//! advances, clean reopens, and power cuts at a chosen point followed by a
//! crash and recovery — and checks the journal against a plain model after
//! every step:
//!
//! * every acknowledged entry above the highest watermark submitted (the
//!   caller's snapshot covers the rest) is present with exactly the bytes
//!   acknowledged (with [`FaultConfig::destructive`] faults, which
//!   can destroy data, it may instead be missing or reported as corrupt);
//! * no entry is ever returned with bytes nobody submitted for it, and no
//!   op appears that was never submitted (no phantoms);
//! * the watermark never goes back past an acknowledged advance;
//! * writes are serialized with hard states: when the hard state a
//!   recovery finds is the i-th submitted, every op with a data entry
//!   queued (and not failed) when hard state i was submitted is present,
//!   unless a truncation attempted since or the watermark covers it — a
//!   consensus replica must never see a vote it saved after an append
//!   without that append;
//! * recovery never panics, and damage is a typed error, never served;
//! * damage at rest ([`SimOp::Rot`], [`SimOp::Unreadable`], mixed in by
//!   [`with_damage_at_rest`]) is named by a scrub pass (the file, and the
//!   entry or the block) and a read of the op returns a typed error; an
//!   open over an unreadable sector opens (the read then names the block)
//!   or refuses naming the block, and cuts nothing. Each is undone after
//!   its check, so it weakens no other check.
//!
//! Everything is decided by the seed (the storage's faults, the task
//! interleavings, [`random_ops`]), so a failing seed replays exactly. The
//! cargo-fuzz targets feed structured op lists into the same driver.

use crate::storage::{FaultConfig, FaultCounts, MemStorage};
use crate::{Error, Journal, LogItem, QueuedAppend};
use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg64Mcg;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::rc::Rc;

/// True when `RINGSTORE_SIM_TRACE` is set: each step, open and
/// acknowledgement is printed to stderr.
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("RINGSTORE_SIM_TRACE").is_some())
}

/// Journal settings used by the simulation: small, so segments roll over,
/// the ring fills and batches split often.
#[derive(Debug, Clone, Copy)]
pub struct SimShape {
    /// Ring slots.
    pub slot_count: u64,
    /// Segment file size.
    pub segment_bytes: u64,
    /// Largest write.
    pub batch_bytes_max: u64,
    /// Largest payload.
    pub entry_bytes_max: u64,
    /// How appends are made durable (`NoSync` weakens the check to
    /// "nothing wrong is served", like destructive faults).
    pub durability: crate::Durability,
    /// Group-commit writes in flight at once.
    pub writes_in_flight: u32,
    /// Largest write made inline (0: every write through the ring's path).
    pub inline_write_bytes_max: u64,
}

impl Default for SimShape {
    fn default() -> Self {
        SimShape {
            slot_count: 64,
            segment_bytes: 64 << 10,
            batch_bytes_max: 16 << 10,
            entry_bytes_max: 2 << 10,
            durability: crate::Durability::Sync,
            writes_in_flight: crate::config::WRITES_IN_FLIGHT_DEFAULT,
            inline_write_bytes_max: crate::config::INLINE_WRITE_BYTES_MAX_DEFAULT,
        }
    }
}

/// Most operations one list may hold.
pub const SIM_OPS_MAX: usize = 4096;
/// Most concurrent tasks the driver keeps in flight.
pub const SIM_TASKS_MAX: usize = 64;
/// Attempts to open the journal after a crash when opening fails with an
/// I/O error (injected read EIO).
const OPEN_ATTEMPTS_MAX: u32 = 4;
/// Attempts to open the journal when every failed one met an injected
/// write/sync EIO or ENOSPC. An open makes 10-20 storage calls, each failing
/// at the profile's rate, so about 1 in 40 attempts fails and the next one
/// (which also repairs the copy the failure left stale) about 1 in 25: four
/// failures in a row come about once in 600,000 opens, a few percent of the
/// default runs. Sixteen make exhausting them by chance negligible; an
/// attempt that fails with no injected fault is a violation at once.
const OPEN_FAULT_ATTEMPTS_MAX: u32 = 16;

/// Whether a fault that can fail an open without destroying anything (write
/// or sync EIO, ENOSPC) fired between `before` and `after`.
fn injected_fault(before: &FaultCounts, after: &FaultCounts) -> bool {
    after.write_eios > before.write_eios
        || after.sync_eios > before.sync_eios
        || after.enospc > before.enospc
}

/// One step of a simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimOp {
    /// Spawn a task appending a payload of `len` bytes.
    Append {
        /// Payload length (clamped to the shape's maximum).
        len: u16,
    },
    /// Spawn a task writing op `next_op + ahead` (a replica's out-of-order write).
    Write {
        /// How far past the next op.
        ahead: u8,
        /// Payload length.
        len: u16,
    },
    /// Bump the epoch and spawn a task rewriting an acknowledged op.
    Rewrite {
        /// How far below the newest acknowledged op.
        back: u8,
        /// Payload length.
        len: u16,
    },
    /// Read an op and check it.
    Read {
        /// How far below the next op.
        back: u16,
    },
    /// Spawn a task advancing the watermark to `newest acknowledged - keep`.
    AdvanceWatermark {
        /// Acknowledged ops to keep above the watermark.
        keep: u8,
    },
    /// Bump the epoch.
    NewEpoch,
    /// Wait for every task in flight, then discard every op above
    /// `newest acknowledged - back` (a new leader overriding a suffix).
    Truncate {
        /// How far below the newest acknowledged op.
        back: u8,
    },
    /// Record a new hard state and wait for it.
    SetHardState,
    /// Record a new hard state without waiting for it (once the previous
    /// one finished): a crash may find it in flight together with the
    /// writes queued before it.
    QueueHardState,
    /// Wait for every task in flight.
    Settle,
    /// Cut the power after `after_ops` more storage operations, let the
    /// tasks in flight run into it, crash, recover and check everything.
    Crash {
        /// Storage operations that still succeed.
        after_ops: u8,
    },
    /// Wait for the tasks, close cleanly, reopen and check everything.
    Reopen,
    /// Damage at rest (a destructive fault): wait for the tasks, flip one
    /// bit of an acknowledged op's payload on the disk, run a scrub pass
    /// ([`Journal::scrub_pass`]) and check that it reports damage at that
    /// entry, then that reading the op fails with `Error::Corruption`; then
    /// flip the bit back. (With destructive faults, damage earlier in the
    /// segment counts too.)
    Rot {
        /// Which acknowledged op, counting down from the newest.
        back: u16,
        /// Which bit of its payload (modulo its length).
        bit: u16,
    },
    /// A latent read error (a destructive fault): wait for the tasks, make
    /// the sector under part of an acknowledged op's payload unreadable,
    /// run a scrub pass and check that it names that block, then that
    /// reading the op fails with `Error::Io` naming it; then close the
    /// journal (or crash, for an odd `byte`) and open it over the sector,
    /// which must open (the read naming the block again) or refuse with
    /// `Error::Io` naming the block; after a clean close, over a block of
    /// the payload alone, it must open. The sector reads again afterwards,
    /// and an open and a check of every op follow. (With destructive
    /// faults, damage earlier in the segment counts too.)
    Unreadable {
        /// Which acknowledged op, counting down from the newest.
        back: u16,
        /// Which byte of its payload (modulo its length); odd: the open
        /// over the sector follows a crash, even: a clean close.
        byte: u16,
    },
}

/// Of the ops [`with_damage_at_rest`] leaves, about one in this many
/// becomes [`SimOp::Rot`] or [`SimOp::Unreadable`].
const DAMAGE_AT_REST_ONE_IN: u64 = 25;

/// `ops` with about one in [`DAMAGE_AT_REST_ONE_IN`] replaced by damage at
/// rest ([`SimOp::Rot`], [`SimOp::Unreadable`]), drawn from `seed` (a
/// stream of its own, so the rest of the list is as [`random_ops`] made it).
pub fn with_damage_at_rest(seed: u64, ops: Vec<SimOp>) -> Vec<SimOp> {
    let mut rng = Pcg64Mcg::seed_from_u64(seed ^ 0xda3a_6e00_0a70_5e57);
    ops.into_iter()
        .map(|op| {
            if rng.next_u64() % DAMAGE_AT_REST_ONE_IN != 0 {
                return op;
            }
            let back = (rng.next_u64() % 64) as u16;
            let at = rng.next_u64() as u16;
            if rng.next_u64() % 2 == 0 {
                SimOp::Rot { back, bit: at }
            } else {
                SimOp::Unreadable { back, byte: at }
            }
        })
        .collect()
}

/// Generates `count` ops from `seed`.
pub fn random_ops(seed: u64, count: usize) -> Vec<SimOp> {
    let mut rng = Pcg64Mcg::seed_from_u64(seed ^ 0x5eed_0f5e_ed00_0001);
    let mut next = |bound: u64| rng.next_u64() % bound;
    (0..count.min(SIM_OPS_MAX))
        .map(|_| {
            let len = next(2100) as u16;
            match next(100) {
                0..=39 => SimOp::Append { len },
                40..=47 => SimOp::Write {
                    ahead: next(8) as u8,
                    len,
                },
                48..=50 => SimOp::Rewrite {
                    back: next(8) as u8,
                    len,
                },
                51..=60 => SimOp::Read {
                    back: next(80) as u16,
                },
                61..=62 => SimOp::Truncate {
                    back: next(16) as u8,
                },
                63..=64 => SimOp::SetHardState,
                65..=72 => SimOp::AdvanceWatermark {
                    keep: next(40) as u8,
                },
                73..=74 => SimOp::NewEpoch,
                75..=82 => SimOp::Settle,
                83..=84 => SimOp::QueueHardState,
                85..=94 => SimOp::Crash {
                    after_ops: next(40) as u8,
                },
                _ => SimOp::Reopen,
            }
        })
        .collect()
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimReport {
    /// Crash-and-recover cycles.
    pub crash_cycles: u64,
    /// Clean close-and-reopen cycles.
    pub reopens: u64,
    /// Appends and writes acknowledged.
    pub acked: u64,
    /// Entries read back and checked.
    pub reads_checked: u64,
    /// Damage reported as a typed error (destructive faults only).
    pub corruption_reported: u64,
    /// Opens that failed with an I/O error and were retried.
    pub open_retries: u64,
    /// Ops checked present after a recovery because they were queued
    /// before the hard state it found (writes serialized with hard states).
    pub hard_state_orderings_checked: u64,
    /// Segments made from retired segments' files (crashes then hit
    /// recycled segments, whose space past the last write is not zeros).
    pub segments_recycled: u64,
    /// Bit flips at rest ([`SimOp::Rot`]) a scrub pass reported.
    pub rot_found_by_scrub: u64,
    /// Unreadable sectors ([`SimOp::Unreadable`]) a scrub pass reported.
    pub unreadable_found_by_scrub: u64,
    /// Opens over an unreadable sector (after a clean close or a crash)
    /// that opened, the read of the op there then naming the block.
    pub unreadable_opened_over: u64,
    /// Opens over an unreadable sector that refused with an I/O error
    /// naming the block (it lay in what an open reads), cutting nothing.
    pub unreadable_refused_open: u64,
    /// How often each fault fired.
    pub faults: FaultCounts,
}

impl SimReport {
    /// Adds another run's figures.
    pub fn add(&mut self, other: &SimReport) {
        self.crash_cycles += other.crash_cycles;
        self.reopens += other.reopens;
        self.acked += other.acked;
        self.reads_checked += other.reads_checked;
        self.corruption_reported += other.corruption_reported;
        self.open_retries += other.open_retries;
        self.hard_state_orderings_checked += other.hard_state_orderings_checked;
        self.segments_recycled += other.segments_recycled;
        self.rot_found_by_scrub += other.rot_found_by_scrub;
        self.unreadable_found_by_scrub += other.unreadable_found_by_scrub;
        self.unreadable_opened_over += other.unreadable_opened_over;
        self.unreadable_refused_open += other.unreadable_refused_open;
        self.faults.add(&other.faults);
    }
}

/// An invariant the journal broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimViolation {
    /// The seed that reproduces it.
    pub seed: u64,
    /// Index of the op during which it was found.
    pub step: usize,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for SimViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invariant violated at step {} of seed {}: {} (replay: the same seed and ops)",
            self.step, self.seed, self.message
        )
    }
}

#[derive(Debug, Default)]
struct OpModel {
    /// Payloads submitted for this op, in order.
    submissions: Vec<Vec<u8>>,
    /// Index of the newest acknowledged submission.
    acked: Option<usize>,
}

/// A data entry of [`Model::queued`].
#[derive(Debug)]
struct QueuedEntry {
    /// Its payload's [`payload_id`].
    id: u64,
    /// Its write; `None` once a recovery found the op present (durable,
    /// whatever the write reported).
    write: Option<QueuedAppend>,
}

#[derive(Debug, Default)]
struct Model {
    ops: BTreeMap<u64, OpModel>,
    /// Payloads of appends whose op is unknown (in flight at a crash or
    /// failed after possibly reaching the disk).
    maybe_appends: HashSet<Vec<u8>>,
    watermark_acked: u64,
    watermark_submitted: u64,
    newest_acked: u64,
    /// Hard states submitted, in order (each awaited before the next).
    hard_states: Vec<Vec<u8>>,
    /// How many of them were acknowledged (the last acknowledged is
    /// `hard_states[hard_state_acked - 1]`).
    hard_state_acked: usize,
    /// Data entries the journal has queued (`queue_append`/`queue_write`
    /// returned without error, so the entry is in its write order), by op,
    /// in order. An op is forgotten when a truncation covering it is
    /// attempted, when a recovery finds it missing (it was lost with the
    /// writes after it), and once at or below the submitted watermark; an
    /// entry, once its write failed.
    queued: BTreeMap<u64, Vec<QueuedEntry>>,
    /// For each of `hard_states`, the ops queued, and not failed, when it
    /// was submitted ([`queued_before`]), with their payloads' ids (less
    /// what truncations attempted since cover).
    queued_before_hard_state: Vec<BTreeMap<u64, Vec<u64>>>,
    acked: u64,
    /// The highest op the journal held when last opened.
    opened_top: u64,
    violation: Option<String>,
}

impl Model {
    fn fail(&mut self, message: String) {
        if self.violation.is_none() {
            self.violation = Some(message);
        }
    }

    /// Checks bytes the journal returned for `op`. With destructive faults
    /// the newest acknowledged version may have been destroyed (a misdirected
    /// write), so an older submitted version is accepted; never bytes that
    /// were not submitted for this op.
    fn check_present(&mut self, op: u64, payload: &[u8], destructive: bool) {
        let known = self.ops.get(&op);
        let ok = match known {
            Some(model) => {
                // With several submissions (rewrites in later epochs) the
                // driver cannot tell their epoch order — a task may enqueue
                // after a later epoch bump — so any of them is accepted;
                // "the later epoch wins" is pinned by the journal's own tests.
                let from = if destructive || model.submissions.len() > 1 {
                    0
                } else {
                    model.acked.unwrap_or(0)
                };
                model.submissions[from..].iter().any(|p| p == payload)
                    || self.maybe_appends.contains(payload)
            }
            None => self.maybe_appends.contains(payload),
        };
        if !ok {
            self.fail(format!(
                "op {op} returned {} bytes nobody submitted for it",
                payload.len()
            ));
        }
    }

    /// Checks the hard state a reopened journal holds: one that was
    /// submitted, and never older than the last acknowledged.
    fn check_hard_state(&mut self, hard_state: &[u8], destructive: bool) {
        if hard_state.is_empty() {
            if self.hard_state_acked > 0 && !destructive {
                self.fail("the acknowledged hard state is gone".into());
            }
            return;
        }
        match self.hard_states.iter().rposition(|h| h == hard_state) {
            None => self.fail(format!("hard state {hard_state:?} was never submitted")),
            Some(at) if at + 1 < self.hard_state_acked && !destructive => self.fail(format!(
                "hard state {} of {} came back after {} was acknowledged",
                at + 1,
                self.hard_states.len(),
                self.hard_state_acked
            )),
            Some(_) => {}
        }
    }

    fn check_missing(&mut self, op: u64, destructive: bool) {
        // Once an advance to w was submitted the caller holds a durable
        // snapshot covering w (the contract of advance_watermark): ops at or
        // below it are no longer the journal's to keep.
        if destructive || op <= self.watermark_submitted {
            return;
        }
        if self.ops.get(&op).is_some_and(|m| m.acked.is_some()) {
            self.fail(format!("acknowledged op {op} is missing"));
        }
    }

    /// The journal queued `payload` as op `op`: it is now ordered before
    /// every hard state queued later.
    fn note_queued(&mut self, op: u64, payload: &[u8], write: QueuedAppend) {
        self.queued.entry(op).or_default().push(QueuedEntry {
            id: payload_id(payload),
            write: Some(write),
        });
    }

    /// The write of `payload` as op `op` failed: from now on it is no longer
    /// in the journal's write order (a failure that poisons the journal
    /// refuses every later hard state; one that does not — a segment that
    /// could not be created — means the entry never reached the disk), so
    /// hard states submitted later do not depend on it. Those submitted
    /// while it was still queued do.
    fn forget_queued(&mut self, op: u64, payload: &[u8]) {
        let id = payload_id(payload);
        if let Some(entries) = self.queued.get_mut(&op) {
            entries.retain(|e| e.id != id || e.write.is_none());
            if entries.is_empty() {
                self.queued.remove(&op);
            }
        }
    }

    /// A hard state is about to be submitted: remembers it with what is
    /// queued ahead of it.
    fn submit_hard_state(&mut self, hard_state: Vec<u8>) {
        let before = self.queued_before();
        self.hard_states.push(hard_state);
        self.queued_before_hard_state.push(before);
    }

    /// What a hard state submitted now is queued behind: every data entry
    /// the journal queued whose write has not failed (yet), above the
    /// submitted watermark, as op → payload ids. Called in the same poll
    /// as the `set_hard_state` it is for: the journal queues the hard state
    /// when that is first polled (unless the filling batch is full; entries
    /// queued while it waits for room go either side of it and are not
    /// recorded).
    fn queued_before(&mut self) -> BTreeMap<u64, Vec<u64>> {
        let floor = self.watermark_submitted.saturating_add(1);
        self.queued = self.queued.split_off(&floor);
        let mut before: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (op, entries) in &self.queued {
            for entry in entries {
                // A write that failed already is out of the write order: a
                // failure that poisons the journal refuses the hard state;
                // one that does not means the entry never reached the disk.
                // (Its task may not have run since, so ask the write.)
                let failed = entry.write.as_ref().is_some_and(|write| {
                    let mut done = std::pin::pin!(write.durable());
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    matches!(done.as_mut().poll(&mut cx), std::task::Poll::Ready(Err(_)))
                });
                if !failed {
                    before.entry(*op).or_default().push(entry.id);
                }
            }
        }
        before
    }

    /// The last submitted hard state never reached the journal.
    fn withdraw_hard_state(&mut self) {
        self.hard_states.pop();
        self.queued_before_hard_state.pop();
    }

    /// A truncation of every op above `after` was attempted: whether or
    /// not it became durable, those ops may now be gone.
    fn forget_queued_above(&mut self, after: u64) {
        let above = after.saturating_add(1);
        self.queued.split_off(&above);
        for queued in &mut self.queued_before_hard_state {
            queued.split_off(&above);
        }
    }

    /// After a recovery whose hard state is `hard_state`: every op queued
    /// before it (above `watermark`, the recovered one, and the submitted
    /// one) must be in `present`, the ops the recovered journal holds. Then
    /// forgets the queued ops the recovery lost: an op lost with a hard
    /// state that did not survive is no obligation of a later one. Returns
    /// how many ops were checked.
    fn check_hard_state_order(
        &mut self,
        hard_state: &[u8],
        present: &HashSet<u64>,
        watermark: u64,
        destructive: bool,
    ) -> u64 {
        let mut checked = 0;
        let floor = watermark.max(self.watermark_submitted);
        let at = if hard_state.is_empty() {
            None
        } else {
            self.hard_states.iter().rposition(|h| h == hard_state)
        };
        // Destructive faults may destroy what was durable; the other checks
        // skip that case too.
        if let Some(at) = at.filter(|_| !destructive) {
            let mut missing = None;
            for (op, ids) in self.queued_before_hard_state[at].range(floor.saturating_add(1)..) {
                checked += 1;
                if !present.contains(op) {
                    missing = Some((*op, ids.clone()));
                    break;
                }
            }
            if let Some((op, ids)) = missing {
                self.fail(format!(
                    "op {op} (payloads {ids:?} queued) was submitted before hard state {} of {}, \
                     which survived the crash, but is missing",
                    at + 1,
                    self.hard_states.len()
                ));
            }
        }
        self.queued
            .retain(|op, _| *op > floor && present.contains(op));
        for entry in self.queued.values_mut().flatten() {
            entry.write = None;
        }
        checked
    }
}

/// Where [`Driver::damage_at_rest`] left a sector unreadable: the op whose
/// payload it is in, that entry's offset and the block.
struct UnreadablePlace {
    path: std::path::PathBuf,
    op: u64,
    entry_offset: u64,
    block: u64,
    /// The block holds nothing but the entry's payload.
    payload_only: bool,
}

/// The block an I/O error names as failing alone, if it names one.
fn unreadable_block(source: &std::io::Error) -> Option<u64> {
    crate::storage::UnreadableBlock::in_error(source).map(|block| block.offset)
}

/// The unique counter [`Driver::payload`] puts in a payload's first bytes.
fn payload_id(payload: &[u8]) -> u64 {
    payload
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Whether an error means the entry certainly never reached the disk.
/// `Poisoned` is not one: a write issued behind a failed one reaches the
/// disk and is then refused its acknowledgement.
fn refused(error: &Error) -> bool {
    matches!(
        error,
        Error::RingFull { .. }
            | Error::OpExists { .. }
            | Error::BelowWatermark { .. }
            | Error::EntryTooLarge { .. }
            | Error::InvalidOp { .. }
            | Error::Closed
            | Error::EpochRegression { .. }
            | Error::WatermarkRegression { .. }
    )
}

struct Driver {
    seed: u64,
    storage: MemStorage,
    shape: SimShape,
    destructive: bool,
    model: Rc<RefCell<Model>>,
    journal: Option<Journal<MemStorage>>,
    tasks: Vec<glommio::task::JoinHandle<()>>,
    /// The hard state in flight ([`SimOp::QueueHardState`]).
    hard_state_task: Option<glommio::task::JoinHandle<()>>,
    payload_counter: u64,
    report: SimReport,
}

const SIM_DIR: &str = "/sim/wal";

impl Driver {
    fn builder(&self) -> crate::JournalBuilder<MemStorage> {
        Journal::builder(SIM_DIR)
            .slot_count(self.shape.slot_count)
            .segment_bytes(self.shape.segment_bytes)
            .batch_bytes_max(self.shape.batch_bytes_max)
            .entry_bytes_max(self.shape.entry_bytes_max)
            .durability(self.shape.durability)
            .writes_in_flight(self.shape.writes_in_flight)
            .inline_write_bytes_max(self.shape.inline_write_bytes_max)
            .storage(self.storage.clone())
    }

    /// A payload unique within the run: an 8-byte counter, then a pattern.
    fn payload(&mut self, len: u16) -> Vec<u8> {
        self.payload_counter += 1;
        let len = (len as usize).clamp(8, self.shape.entry_bytes_max as usize);
        let mut payload: Vec<u8> = (0..len)
            .map(|i| {
                (self.payload_counter as usize)
                    .wrapping_mul(131)
                    .wrapping_add(i) as u8
            })
            .collect();
        payload[..8].copy_from_slice(&self.payload_counter.to_le_bytes());
        payload
    }

    async fn settle(&mut self) {
        for task in self.tasks.drain(..) {
            task.await;
        }
        if let Some(task) = self.hard_state_task.take() {
            task.await;
        }
    }

    fn spawn(&mut self, task: impl std::future::Future<Output = ()> + 'static) {
        self.tasks.push(glommio::spawn_local(task).detach());
    }

    async fn open(&mut self) -> Result<(), String> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let faults_before = self.storage.fault_counts();
            match self.builder().open().await {
                Ok(journal) => {
                    if trace() {
                        eprintln!(
                            "  opened: {:?} next_op {}",
                            journal.recovery_report(),
                            journal.next_op()
                        );
                    }
                    // What recovery found (a failed write may have reached
                    // the disk), for `check_next_op`.
                    self.model.borrow_mut().opened_top = journal.next_op() - 1;
                    self.journal = Some(journal);
                    return Ok(());
                }
                Err(error) if self.destructive && attempts < OPEN_ATTEMPTS_MAX => {
                    // Read faults can fail (or, as corruption, stop) an open;
                    // both are typed errors. Try again after a restart.
                    if matches!(error, Error::Corruption { .. }) {
                        self.report.corruption_reported += 1;
                    }
                    self.report.open_retries += 1;
                    self.storage.crash();
                }
                Err(error) if self.destructive => {
                    // Persistent damage found on every attempt: reported,
                    // typed, not served. The run cannot continue on this disk.
                    return Err(format!("stop: {error}"));
                }
                // Injected write/sync EIO or a full disk while creating the
                // new segment: a typed error; restart and try again.
                Err(Error::NoSpace { .. } | Error::Io { .. })
                    if attempts < OPEN_FAULT_ATTEMPTS_MAX
                        && injected_fault(&faults_before, &self.storage.fault_counts()) =>
                {
                    self.report.open_retries += 1;
                    self.storage.crash();
                }
                Err(error) => return Err(format!("open failed: {error}")),
            }
        }
    }

    /// Checks the whole journal against the model after an open.
    async fn verify_all(&mut self) {
        let Some(journal) = self.journal.clone() else {
            return;
        };
        let watermark = journal.watermark();
        let hard_state = journal.hard_state();
        self.model
            .borrow_mut()
            .check_hard_state(&hard_state, self.destructive);
        {
            let mut model = self.model.borrow_mut();
            if watermark < model.watermark_acked && !self.destructive {
                let acked = model.watermark_acked;
                model.fail(format!(
                    "watermark {watermark} went back below the acknowledged {acked}"
                ));
            }
            if watermark > model.watermark_submitted {
                let submitted = model.watermark_submitted;
                model.fail(format!(
                    "watermark {watermark} above any submitted ({submitted})"
                ));
            }
            model.ops = std::mem::take(&mut model.ops).split_off(&(watermark + 1));
            model.watermark_acked = model.watermark_acked.max(watermark);
        }
        let last = journal.next_op().saturating_sub(1);
        let (present, scanned) = if last > watermark {
            self.verify_entries(&journal, watermark, last).await
        } else {
            (HashSet::new(), true)
        };
        self.report.hard_state_orderings_checked += self.model.borrow_mut().check_hard_state_order(
            &hard_state,
            &present,
            watermark,
            self.destructive || !scanned,
        );
    }

    /// Checks ops `watermark + 1..=last` of a reopened journal and the
    /// acknowledged ones beyond. Returns the ops present and whether every
    /// op could be asked about (a read error ends the scan; ops after it
    /// count as missing for the hard-state order, whose check is then
    /// skipped: forgetting a queued op only loses checks, never adds one).
    async fn verify_entries(
        &mut self,
        journal: &Journal<MemStorage>,
        watermark: u64,
        last: u64,
    ) -> (HashSet<u64>, bool) {
        let mut present = HashSet::new();
        let mut scanned = true;
        let mut entries = journal.entries(watermark + 1..=last);
        while let Some(item) = entries.next().await {
            match item {
                Ok(LogItem::Present(entry)) => {
                    self.report.reads_checked += 1;
                    present.insert(entry.op);
                    self.model.borrow_mut().check_present(
                        entry.op,
                        &entry.payload,
                        self.destructive,
                    );
                }
                Ok(LogItem::Missing(op)) => {
                    self.model.borrow_mut().check_missing(op, self.destructive)
                }
                Err(error) => {
                    self.note_error(&error);
                    scanned = false;
                    break;
                }
            }
        }
        // Acknowledged ops beyond what the journal thinks is last.
        let beyond: Vec<u64> = self
            .model
            .borrow()
            .ops
            .iter()
            .filter(|(op, m)| **op > last && m.acked.is_some())
            .map(|(op, _)| *op)
            .collect();
        for op in beyond {
            self.model.borrow_mut().check_missing(op, self.destructive);
        }
        (present, scanned)
    }

    /// [`SimOp::Rot`] (`rot`) or [`SimOp::Unreadable`], aimed at payload
    /// bit `bit` (modulo the payload's bits) of the `back`-th newest
    /// acknowledged op the journal holds.
    async fn damage_at_rest(
        &mut self,
        journal: &Journal<MemStorage>,
        back: u16,
        bit: u64,
        rot: bool,
    ) -> Option<UnreadablePlace> {
        self.settle().await;
        if journal.is_poisoned() {
            return None;
        }
        // Above any watermark asked for: one not yet recorded (a full disk)
        // already refuses reads of the ops it covers.
        let floor = journal
            .watermark()
            .max(self.model.borrow().watermark_submitted);
        let acked: Vec<u64> = self
            .model
            .borrow()
            .ops
            .iter()
            .filter(|(op, m)| **op > floor && m.acked.is_some())
            .map(|(op, _)| *op)
            .collect();
        let &op = acked
            .iter()
            .rev()
            .nth(usize::from(back) % acked.len().max(1))?;
        let (path, entry_offset, payload_len) = journal.entry_place(op)?;
        let bit = bit % (u64::from(payload_len).max(1) * 8);
        let byte = entry_offset + crate::format::ENTRY_HEADER_BYTES as u64 + bit / 8;
        let flip = (bit % 8) as u8;
        if rot {
            self.storage.flip_bit(&path, byte, flip);
        } else {
            self.storage.set_unreadable(&path, byte);
        }
        let faults_before = self.storage.fault_counts();
        let pass = journal.scrub_pass().await;
        let read = journal.read(op).await;
        // A flip is undone, so the rest of the run keeps every check at
        // full strength (a damaged op would end each later scan of the log
        // at it); an unreadable sector stays for an open over it
        // ([`Driver::open_over_unreadable`]), which clears it.
        if rot {
            self.storage.flip_bit(&path, byte, flip);
        }
        // Destructive profiles: a transient read fault may have cut the
        // pass's scan short or failed the read otherwise, and a misdirected
        // write may have damaged the segment before this op; then the
        // finding may lie earlier in the segment, or be missing.
        let faults_after = self.storage.fault_counts();
        let transient = faults_after.read_flips > faults_before.read_flips
            || faults_after.read_eios > faults_before.read_eios;
        // A background task (the next segment's preparation) may have
        // poisoned the journal while the pass ran: a fault the profile
        // injected, which refuses every later read. The pass reads on.
        let poisoned_meanwhile = journal.is_poisoned();
        let destructive = self.destructive;
        let block = crate::format::align_down(byte, crate::format::BLOCK_BYTES);
        let found = match &pass {
            Ok(pass) if rot => pass.damage.iter().any(|d| {
                d.path == path && (d.offset == entry_offset || destructive && d.offset < byte)
            }),
            Ok(pass) => {
                pass.unreadable
                    .iter()
                    .any(|d| d.path == path && d.offset == block)
                    || destructive
                        && pass
                            .damage
                            .iter()
                            .any(|d| d.path == path && d.offset < byte)
            }
            Err(_) => false,
        };
        let mut model = self.model.borrow_mut();
        let what = if rot {
            "a flipped bit"
        } else {
            "an unreadable sector"
        };
        if found && rot {
            self.report.rot_found_by_scrub += 1;
        } else if found {
            self.report.unreadable_found_by_scrub += 1;
        } else if !transient {
            model.fail(format!(
                "the scrub pass missed {what} at {}:{byte} (op {op}, entry at {entry_offset}): \
                 {pass:?}",
                path.display()
            ));
        }
        // A typed error that says where: the file, and the entry's offset
        // (and for an unreadable sector, its block).
        let names_entry = |p: &std::path::Path, o: Option<u64>| {
            transient || (p == path.as_path() && o == Some(entry_offset))
        };
        match read {
            Err(Error::Corruption {
                path: p, offset: o, ..
            }) if (rot || transient) && names_entry(&p, Some(o)) => {
                self.report.corruption_reported += 1
            }
            Err(Error::Io {
                path: p,
                offset: o,
                source,
                ..
            }) if (!rot || transient)
                && names_entry(&p, o)
                && (transient || unreadable_block(&source) == Some(block)) => {}
            Err(Error::Poisoned { .. }) if poisoned_meanwhile => {}
            // A transient flip of the same bit in the read mended it (the
            // read is retried once): what it served must be the op's bytes.
            Ok(Some(entry)) if rot && transient => {
                self.report.reads_checked += 1;
                model.check_present(op, &entry.payload, self.destructive);
            }
            other => model.fail(format!(
                "reading op {op} over {what} at {}:{byte} gave {other:?}",
                path.display()
            )),
        }
        (!rot).then_some(UnreadablePlace {
            path,
            op,
            entry_offset,
            block,
            payload_only: block >= entry_offset + crate::format::ENTRY_HEADER_BYTES as u64
                && block + crate::format::BLOCK_BYTES
                    <= entry_offset
                        + crate::format::ENTRY_HEADER_BYTES as u64
                        + u64::from(payload_len),
        })
    }

    /// Opens the journal over an unreadable sector [`Driver::damage_at_rest`]
    /// left (after a clean close, or a crash if `crash`), then without it.
    /// Over it the open either opens, and the read of the op there names
    /// the block, or refuses with an I/O error naming the block (it lay
    /// in what an open reads: a write's first header or index, or the tail
    /// nothing vouches for after a crash); either way it cuts nothing,
    /// which the open after the sector is cleared and [`Driver::verify_all`]
    /// check.
    async fn open_over_unreadable(
        &mut self,
        journal: Journal<MemStorage>,
        place: UnreadablePlace,
        crash: bool,
    ) -> Result<(), String> {
        self.settle().await;
        if crash {
            self.report.crash_cycles += 1;
        } else {
            let _ = journal.close().await;
            self.report.reopens += 1;
        }
        self.report.segments_recycled += journal.stats().segments_recycled;
        drop(journal);
        self.journal = None;
        if crash {
            self.storage.crash();
        }
        let faults_before = self.storage.fault_counts();
        let names_block = |path: &std::path::Path, source: &std::io::Error| {
            path == place.path && unreadable_block(source) == Some(place.block)
        };
        let verdict = match self.builder().open().await {
            Ok(over) => {
                let read = over.read(place.op).await;
                let _ = over.close().await;
                self.report.segments_recycled += over.stats().segments_recycled;
                match read {
                    Err(Error::Io {
                        path,
                        offset,
                        source,
                        ..
                    }) if offset == Some(place.entry_offset) && names_block(&path, &source) => {
                        self.report.unreadable_opened_over += 1;
                        Ok(())
                    }
                    other => Err(format!(
                        "opened over an unreadable sector in op {}'s entry at {}:{}, whose \
                         read gave {other:?}",
                        place.op,
                        place.path.display(),
                        place.entry_offset
                    )),
                }
            }
            // After a clean close every write is vouched for, and an open
            // reads no payload of one: a block of payload alone must not
            // stop it (after a crash the tail is read whole).
            Err(Error::Io { path, source, .. })
                if names_block(&path, &source) && (crash || !place.payload_only) =>
            {
                self.report.unreadable_refused_open += 1;
                Ok(())
            }
            Err(other) => Err(format!(
                "an open over an unreadable sector at {}:{} (op {}) gave {other}",
                place.path.display(),
                place.block,
                place.op
            )),
        };
        self.storage.clear_unreadable(&place.path);
        let transient = injected_fault(&faults_before, &self.storage.fault_counts());
        if let Err(message) = verdict {
            if !(transient || self.destructive) {
                self.model.borrow_mut().fail(message);
            }
        }
        self.open().await?;
        self.verify_all().await;
        Ok(())
    }

    fn note_error(&mut self, error: &Error) {
        match error {
            Error::Corruption { .. } if self.destructive => self.report.corruption_reported += 1,
            Error::Io { .. } if self.destructive => {}
            Error::Poisoned { .. } | Error::Closed => {}
            other => self
                .model
                .borrow_mut()
                .fail(format!("unexpected error: {other}")),
        }
    }

    async fn step(&mut self, op: SimOp) -> Result<(), String> {
        if self.tasks.len() >= SIM_TASKS_MAX {
            self.settle().await;
        }
        let Some(journal) = self.journal.clone() else {
            return Ok(());
        };
        match op {
            SimOp::Append { len } => {
                let payload = self.payload(len);
                let model = self.model.clone();
                model.borrow_mut().maybe_appends.insert(payload.clone());
                self.spawn(async move {
                    // `append`, in its two halves: the model learns the op
                    // as soon as the entry is queued (ordered before any
                    // hard state queued later).
                    let result = match journal.queue_append(&payload).await {
                        Ok(queued) => {
                            model
                                .borrow_mut()
                                .note_queued(queued.op(), &payload, queued.clone());
                            let durable = queued.durable().await;
                            if let Err(error) = &durable {
                                if trace() {
                                    eprintln!("  append op {} failed: {error:?}", queued.op());
                                }
                                model.borrow_mut().forget_queued(queued.op(), &payload);
                            }
                            durable.map(|()| queued.op())
                        }
                        Err(error) => Err(error),
                    };
                    let mut model = model.borrow_mut();
                    match result {
                        Ok(op) => {
                            if trace() {
                                eprintln!("  acked append op {op} ({} bytes)", payload.len());
                            }
                            model.maybe_appends.remove(&payload);
                            let entry = model.ops.entry(op).or_default();
                            entry.submissions.push(payload);
                            entry.acked = Some(entry.submissions.len() - 1);
                            model.newest_acked = model.newest_acked.max(op);
                            model.acked += 1;
                        }
                        Err(error) if refused(&error) => {
                            model.maybe_appends.remove(&payload);
                        }
                        Err(Error::Corruption { .. }) => {
                            model.fail("append returned Corruption".into())
                        }
                        Err(_) => {}
                    }
                });
            }
            SimOp::Write { ahead, len } => {
                let op = journal.next_op() + u64::from(ahead);
                self.spawn_write(journal, op, len);
            }
            SimOp::Rewrite { back, len } => {
                let op = self
                    .model
                    .borrow()
                    .newest_acked
                    .saturating_sub(u64::from(back));
                if op > journal.watermark() && journal.set_epoch(journal.epoch() + 1).is_ok() {
                    self.spawn_write(journal, op, len);
                }
            }
            SimOp::Read { back } => {
                let op = journal.next_op().saturating_sub(u64::from(back) + 1);
                if op > journal.watermark() {
                    match journal.read(op).await {
                        Ok(Some(entry)) => {
                            self.report.reads_checked += 1;
                            self.model.borrow_mut().check_present(
                                op,
                                &entry.payload,
                                self.destructive,
                            );
                        }
                        Ok(None) => {
                            // Missing while the journal is up: only ops not
                            // acknowledged, or acknowledged then refused... an
                            // acknowledged op must be there.
                            self.model.borrow_mut().check_missing(op, self.destructive);
                        }
                        Err(Error::BelowWatermark { .. }) => {}
                        Err(error) => self.note_error(&error),
                    }
                }
            }
            SimOp::AdvanceWatermark { keep } => {
                let target = self
                    .model
                    .borrow()
                    .newest_acked
                    .saturating_sub(u64::from(keep));
                if target > journal.watermark() {
                    let model = self.model.clone();
                    {
                        let mut m = model.borrow_mut();
                        m.watermark_submitted = m.watermark_submitted.max(target);
                    }
                    self.spawn(async move {
                        let result = journal.advance_watermark(target).await;
                        let mut model = model.borrow_mut();
                        match result {
                            Ok(()) => model.watermark_acked = model.watermark_acked.max(target),
                            Err(Error::Corruption { .. }) => {
                                model.fail("advance returned Corruption".into())
                            }
                            Err(_) => {}
                        }
                    });
                }
            }
            SimOp::NewEpoch => {
                let _ = journal.set_epoch(journal.epoch() + 1);
            }
            SimOp::Truncate { back } => {
                self.settle().await;
                let after = {
                    let mut model = self.model.borrow_mut();
                    let after = model.newest_acked.saturating_sub(u64::from(back));
                    if after < journal.watermark() {
                        // Refused below the watermark (pinned by the
                        // journal's own tests); nothing to model.
                        return Ok(());
                    }
                    // Until acknowledged, every op above may or may not be
                    // gone after a crash.
                    for entry in model.ops.range_mut(after + 1..).map(|(_, m)| m) {
                        entry.acked = None;
                    }
                    after
                };
                let result = journal.truncate_after(after).await;
                if trace() {
                    eprintln!("  truncate after {after}: {result:?}");
                }
                let mut model = self.model.borrow_mut();
                if !matches!(&result, Err(error) if refused(error)) {
                    model.forget_queued_above(after);
                }
                match result {
                    Ok(()) => {
                        // Without fsync (or with destructive faults) even an
                        // acknowledged truncation may be undone by a crash:
                        // the old versions stay acceptable there.
                        if !self.destructive {
                            model.ops.split_off(&(after + 1));
                        }
                        model.newest_acked = model.newest_acked.min(after);
                    }
                    Err(Error::Corruption { .. }) => {
                        model.fail("truncate returned Corruption".into())
                    }
                    Err(_) => {}
                }
            }
            SimOp::SetHardState | SimOp::QueueHardState => {
                // One at a time: the model orders hard states by submission.
                if let Some(previous) = self.hard_state_task.take() {
                    previous.await;
                }
                self.payload_counter += 1;
                let hard_state = format!("hard state {}", self.payload_counter).into_bytes();
                let model = self.model.clone();
                let task = async move {
                    // Recorded with what is queued ahead of it in the poll
                    // that queues it.
                    model.borrow_mut().submit_hard_state(hard_state.clone());
                    let result = journal.set_hard_state(&hard_state).await;
                    if trace() {
                        eprintln!("  set hard state: {result:?}");
                    }
                    let mut model = model.borrow_mut();
                    match result {
                        Ok(()) => model.hard_state_acked = model.hard_states.len(),
                        Err(error) if refused(&error) => model.withdraw_hard_state(),
                        Err(Error::Corruption { .. }) => {
                            model.fail("set_hard_state returned Corruption".into())
                        }
                        Err(_) => {}
                    }
                };
                if op == SimOp::SetHardState {
                    task.await;
                } else {
                    self.hard_state_task = Some(glommio::spawn_local(task).detach());
                }
            }
            SimOp::Settle => self.settle().await,
            SimOp::Rot { back, bit } => {
                self.damage_at_rest(&journal, back, u64::from(bit), true)
                    .await;
            }
            SimOp::Unreadable { back, byte } => {
                if let Some(place) = self
                    .damage_at_rest(&journal, back, u64::from(byte) * 8, false)
                    .await
                {
                    self.open_over_unreadable(journal, place, byte % 2 == 1)
                        .await?;
                }
            }
            SimOp::Crash { after_ops } => {
                self.storage.cut_power_after_ops(u64::from(after_ops) + 1);
                self.settle().await;
                self.report.segments_recycled += journal.stats().segments_recycled;
                drop(journal);
                self.journal = None;
                self.storage.crash();
                self.report.crash_cycles += 1;
                self.open().await?;
                self.verify_all().await;
            }
            SimOp::Reopen => {
                self.settle().await;
                let _ = journal.close().await;
                self.report.segments_recycled += journal.stats().segments_recycled;
                drop(journal);
                self.journal = None;
                self.report.reopens += 1;
                self.open().await?;
                self.verify_all().await;
            }
        }
        Ok(())
    }

    /// The journal's next op counts only ops it was asked to hold: queued
    /// and not failed, covered by a watermark, or found by the last
    /// recovery (a failed write may have reached the disk); and it is above
    /// every op it holds. A consensus layer checks appends against it, so
    /// one that still counted failed writes would let an append past a hole
    /// in, and one below a held op would hand that op's number out again.
    fn check_next_op(&self) {
        let Some(journal) = self.journal.as_ref() else {
            return;
        };
        if journal.is_poisoned() {
            return;
        }
        let mut model = self.model.borrow_mut();
        let top = journal.next_op() - 1;
        let queued_top = model.queued.keys().next_back().copied().unwrap_or(0);
        let held = queued_top
            .max(model.opened_top)
            .max(model.watermark_submitted)
            .max(journal.watermark());
        if top > held {
            let watermark = model.watermark_submitted;
            model.fail(format!(
                "next op {} counts op {top}, which the journal was never asked to hold \
                 (highest queued {queued_top}, watermark {watermark})",
                top + 1
            ));
            return;
        }
        // Nor does it go back to an op the journal holds: the highest op
        // queued whose entry was acknowledged (or found by a recovery).
        let acked = |op: u64, entry: &QueuedEntry| {
            entry.write.is_none()
                || model.ops.get(&op).is_some_and(|m| {
                    m.acked
                        .is_some_and(|a| payload_id(&m.submissions[a]) == entry.id)
                })
        };
        let held_top = model
            .queued
            .iter()
            .rev()
            .find(|(op, entries)| entries.iter().any(|e| acked(**op, e)))
            .map(|(op, _)| *op);
        if let Some(held_top) = held_top.filter(|h| *h > top) {
            model.fail(format!(
                "next op {} would hand out op {held_top} again, which the journal holds",
                top + 1
            ));
        }
    }

    fn spawn_write(&mut self, journal: Journal<MemStorage>, op: u64, len: u16) {
        let payload = self.payload(len);
        let model = self.model.clone();
        let index = {
            let mut model = model.borrow_mut();
            let entry = model.ops.entry(op).or_default();
            entry.submissions.push(payload.clone());
            entry.submissions.len() - 1
        };
        self.spawn(async move {
            // `write`, in its two halves (see `SimOp::Append`).
            let result = match journal.queue_write(op, &payload).await {
                Ok(queued) => {
                    model.borrow_mut().note_queued(op, &payload, queued.clone());
                    let durable = queued.durable().await;
                    if durable.is_err() {
                        model.borrow_mut().forget_queued(op, &payload);
                    }
                    durable
                }
                Err(error) => Err(error),
            };
            if trace() {
                eprintln!(
                    "  write op {op} ({} bytes, epoch {}): {result:?}",
                    payload.len(),
                    journal.epoch()
                );
            }
            let mut model = model.borrow_mut();
            match result {
                Ok(()) => {
                    if let Some(entry) = model.ops.get_mut(&op) {
                        entry.acked = Some(entry.acked.map_or(index, |a| a.max(index)));
                    }
                    model.newest_acked = model.newest_acked.max(op);
                    model.acked += 1;
                }
                Err(error) if refused(&error) => {
                    // Never written: forget the submission unless acknowledged
                    // ones after it depend on its index.
                    if let Some(entry) = model.ops.get_mut(&op) {
                        if entry.submissions.len() == index + 1 && entry.acked != Some(index) {
                            entry.submissions.pop();
                        }
                    }
                }
                Err(Error::Corruption { .. }) => model.fail("write returned Corruption".into()),
                Err(_) => {}
            }
        });
    }
}

/// Runs `ops` against a fresh simulated disk seeded with `seed`. Must run
/// on a glommio executor; see [`run_ops_blocking`].
pub async fn run_ops(
    seed: u64,
    faults: FaultConfig,
    shape: SimShape,
    ops: &[SimOp],
) -> Result<SimReport, SimViolation> {
    // NoSync promises nothing about acknowledged entries after power loss.
    let destructive = faults.read_flip_rate > 0.0
        || faults.read_eio_rate > 0.0
        || faults.write_misdirect_rate > 0.0
        || shape.durability == crate::Durability::NoSync;
    let mut driver = Driver {
        seed,
        storage: MemStorage::with_faults(seed, faults),
        shape,
        destructive,
        model: Rc::new(RefCell::new(Model::default())),
        journal: None,
        tasks: Vec::new(),
        hard_state_task: None,
        payload_counter: 0,
        report: SimReport::default(),
    };
    let violation = |step: usize, message: String| SimViolation {
        seed,
        step,
        message,
    };
    if let Err(message) = driver.open().await {
        return Err(violation(0, message));
    }
    let trace = trace();
    for (step, op) in ops.iter().take(SIM_OPS_MAX).enumerate() {
        if trace {
            let (next, watermark) = driver
                .journal
                .as_ref()
                .map_or((0, 0), |j| (j.next_op(), j.watermark()));
            eprintln!(
                "step {step}: {op:?} (next_op {next}, watermark {watermark}, faults {:?})",
                driver.storage.fault_counts()
            );
        }
        if let Err(message) = driver.step(*op).await {
            if message.starts_with("stop: ") {
                break;
            }
            return Err(violation(step, message));
        }
        driver.check_next_op();
        if let Some(message) = driver.model.borrow_mut().violation.take() {
            return Err(violation(step, message));
        }
    }
    driver.settle().await;
    if let Some(journal) = driver.journal.take() {
        let _ = journal.close().await;
        driver.report.segments_recycled += journal.stats().segments_recycled;
    }
    if let Some(message) = driver.model.borrow_mut().violation.take() {
        return Err(violation(ops.len(), message));
    }
    driver.report.acked = driver.model.borrow().acked;
    driver.report.faults = driver.storage.fault_counts();
    let _ = driver.seed;
    Ok(driver.report)
}

/// [`run_ops`] on a new glommio executor thread.
pub fn run_ops_blocking(
    seed: u64,
    faults: FaultConfig,
    shape: SimShape,
    ops: Vec<SimOp>,
) -> Result<SimReport, SimViolation> {
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move { run_ops(seed, faults, shape, &ops).await })
        .map_err(|e| SimViolation {
            seed,
            step: 0,
            message: format!("could not start an executor: {e}"),
        })?
        .join()
        .map_err(|e| SimViolation {
            seed,
            step: 0,
            message: format!("the simulation panicked: {e}"),
        })?
}
