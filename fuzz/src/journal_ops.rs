//! Targets `journal_ops`, `journal_replica_ops` and `journal_damage_ops`:
//! structured operation lists through the journal's deterministic crash
//! simulator ([`ringstore_journal::sim::run_ops`]). The second adds what a
//! consensus replica does — truncating a divergent suffix, recording its
//! hard state — and the third damage at rest for the scrubber to find, each
//! as its own target, so the committed inputs of the one before keep
//! decoding to the operations they were found with.
//!
//! The simulator checks the journal against a plain model after every step
//! and every crash-and-recover cycle (no acknowledged entry lost, no wrong
//! bytes served, no phantom ops, recovery never panics, damage is a typed
//! error); a [`SimViolation`](ringstore_journal::sim::SimViolation) is a
//! finding and this target panics with it. The seed decides the fault
//! draws and the task interleavings, so an input replays exactly.

use arbitrary::Arbitrary;
use ringstore_journal::sim::{run_ops, SimOp, SimShape};
use ringstore_journal::storage::FaultConfig;

/// Most operations per input (the rest are ignored).
pub const OPS_MAX: usize = 256;

/// [`SimOp`], for `Arbitrary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum FuzzOp {
    /// [`SimOp::Append`].
    Append {
        /// Payload length (the simulator clamps it).
        len: u16,
    },
    /// [`SimOp::Write`].
    Write {
        /// How far past the next op.
        ahead: u8,
        /// Payload length.
        len: u16,
    },
    /// [`SimOp::Rewrite`].
    Rewrite {
        /// How far below the newest acknowledged op.
        back: u8,
        /// Payload length.
        len: u16,
    },
    /// [`SimOp::Read`].
    Read {
        /// How far below the next op.
        back: u16,
    },
    /// [`SimOp::AdvanceWatermark`].
    AdvanceWatermark {
        /// Acknowledged ops kept above the watermark.
        keep: u8,
    },
    /// [`SimOp::NewEpoch`].
    NewEpoch,
    /// [`SimOp::Settle`].
    Settle,
    /// [`SimOp::Crash`].
    Crash {
        /// Storage operations that still succeed before the power cut.
        after_ops: u8,
    },
    /// [`SimOp::Reopen`].
    Reopen,
}

impl From<FuzzOp> for SimOp {
    fn from(op: FuzzOp) -> SimOp {
        match op {
            FuzzOp::Append { len } => SimOp::Append { len },
            FuzzOp::Write { ahead, len } => SimOp::Write { ahead, len },
            FuzzOp::Rewrite { back, len } => SimOp::Rewrite { back, len },
            FuzzOp::Read { back } => SimOp::Read { back },
            FuzzOp::AdvanceWatermark { keep } => SimOp::AdvanceWatermark { keep },
            FuzzOp::NewEpoch => SimOp::NewEpoch,
            FuzzOp::Settle => SimOp::Settle,
            FuzzOp::Crash { after_ops } => SimOp::Crash { after_ops },
            FuzzOp::Reopen => SimOp::Reopen,
        }
    }
}

/// Which faults the simulated disk injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Profile {
    /// [`FaultConfig::none`]: crashes drop every unsynced write.
    None,
    /// [`FaultConfig::benign`]: torn, dropped and reordered writes, undone
    /// directory operations, failed writes and syncs; nothing acknowledged
    /// may be lost.
    Benign,
    /// [`FaultConfig::destructive`]: also flipped bits, read EIO and
    /// misdirected writes; damage must be reported, never served.
    Destructive,
    /// Benign, on a disk of six segments without fallocate (ENOSPC,
    /// EOPNOTSUPP), as in `journal/tests/simulation.rs`.
    SmallDisk,
}

impl Profile {
    /// The fault configuration.
    pub fn faults(self) -> FaultConfig {
        match self {
            Profile::None => FaultConfig::none(),
            Profile::Benign => FaultConfig::benign(),
            Profile::Destructive => FaultConfig::destructive(),
            Profile::SmallDisk => FaultConfig {
                fallocate_unsupported: true,
                capacity_bytes: Some(6 * SimShape::default().segment_bytes),
                ..FaultConfig::benign()
            },
        }
    }
}

/// [`FuzzOp`] plus a replica's operations, for `journal_replica_ops`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum ReplicaOp {
    /// Any [`FuzzOp`].
    Base(FuzzOp),
    /// [`SimOp::Truncate`].
    Truncate {
        /// How far below the newest acknowledged op.
        back: u8,
    },
    /// [`SimOp::SetHardState`].
    SetHardState,
}

impl From<ReplicaOp> for SimOp {
    fn from(op: ReplicaOp) -> SimOp {
        match op {
            ReplicaOp::Base(op) => op.into(),
            ReplicaOp::Truncate { back } => SimOp::Truncate { back },
            ReplicaOp::SetHardState => SimOp::SetHardState,
        }
    }
}

/// One `journal_replica_ops` input.
pub type ReplicaInput = Input<ReplicaOp>;

/// [`ReplicaOp`] plus damage at rest, for `journal_damage_ops` (a target of
/// its own, so `journal_replica_ops`'s inputs keep their decoding). One op
/// in about [`DAMAGE_ONE_IN`] is damage, so that a list has entries for it
/// to land on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageOp {
    /// Any [`ReplicaOp`].
    Base(ReplicaOp),
    /// [`SimOp::Rot`]: a bit of an acknowledged payload flipped on the
    /// disk; a scrub pass must report it, a read must fail typed.
    Rot {
        /// Which acknowledged op, counting down from the newest.
        back: u16,
        /// Which bit of its payload.
        bit: u16,
    },
    /// [`SimOp::Unreadable`]: a sector under an acknowledged payload
    /// fails every read; a scrub pass must name its block, a read must fail
    /// typed.
    Unreadable {
        /// Which acknowledged op, counting down from the newest.
        back: u16,
        /// Which byte of its payload.
        byte: u16,
    },
}

/// Of the values of a [`DamageOp`]'s first byte, one in about this many
/// decodes to damage.
pub const DAMAGE_ONE_IN: u8 = 12;

impl<'a> Arbitrary<'a> for DamageOp {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<DamageOp> {
        let pick = u8::arbitrary(u)?;
        Ok(match pick % DAMAGE_ONE_IN {
            0 if pick < 128 => DamageOp::Rot {
                back: u16::arbitrary(u)?,
                bit: u16::arbitrary(u)?,
            },
            0 => DamageOp::Unreadable {
                back: u16::arbitrary(u)?,
                byte: u16::arbitrary(u)?,
            },
            _ => DamageOp::Base(ReplicaOp::arbitrary(u)?),
        })
    }
}

impl From<DamageOp> for SimOp {
    fn from(op: DamageOp) -> SimOp {
        match op {
            DamageOp::Base(op) => op.into(),
            DamageOp::Rot { back, bit } => SimOp::Rot { back, bit },
            DamageOp::Unreadable { back, byte } => SimOp::Unreadable { back, byte },
        }
    }
}

/// One `journal_damage_ops` input.
pub type DamageInput = Input<DamageOp>;

/// One fuzz input (of `journal_ops`; [`ReplicaInput`] for
/// `journal_replica_ops`).
///
/// Its `Arbitrary` impl is dense: the fixed fields, then operations until
/// the input runs out (no per-element continuation byte, which a derived
/// `Vec` spends and which makes random or mutated bytes decode to lists of
/// two or three ops).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input<Op = FuzzOp> {
    /// Seeds the disk's fault draws and the task interleavings.
    pub seed: u64,
    /// Fault profile.
    pub profile: Profile,
    /// A [`SimOp::Crash`] is inserted before the op at this index (at the
    /// end if past it).
    pub crash_after_ops: u8,
    /// Storage operations that still succeed before that crash's power cut.
    pub crash_after_storage_ops: u8,
    /// The operations (at most [`OPS_MAX`] are decoded).
    pub ops: Vec<Op>,
}

impl<'a, Op: Arbitrary<'a>> Arbitrary<'a> for Input<Op> {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Input<Op>> {
        let seed = u64::arbitrary(u)?;
        let profile = Profile::arbitrary(u)?;
        let crash_after_ops = u8::arbitrary(u)?;
        let crash_after_storage_ops = u8::arbitrary(u)?;
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < OPS_MAX {
            ops.push(Op::arbitrary(u)?);
        }
        Ok(Input {
            seed,
            profile,
            crash_after_ops,
            crash_after_storage_ops,
            ops,
        })
    }

    fn arbitrary_take_rest(mut u: arbitrary::Unstructured<'a>) -> arbitrary::Result<Input<Op>> {
        Input::arbitrary(&mut u)
    }
}

impl<Op: Copy + Into<SimOp>> Input<Op> {
    /// The simulator's op list: the bounded ops with the crash inserted.
    pub fn sim_ops(&self) -> Vec<SimOp> {
        let mut ops: Vec<SimOp> = self
            .ops
            .iter()
            .take(OPS_MAX)
            .map(|op| (*op).into())
            .collect();
        let at = usize::from(self.crash_after_ops).min(ops.len());
        ops.insert(
            at,
            SimOp::Crash {
                after_ops: self.crash_after_storage_ops,
            },
        );
        ops
    }
}

/// Runs one input; panics on an invariant violation.
pub fn run<Op: Copy + Into<SimOp> + std::fmt::Debug>(input: &Input<Op>) {
    let ops = input.sim_ops();
    let faults = input.profile.faults();
    let result = crate::block_on(run_ops(input.seed, faults, SimShape::default(), &ops));
    if let Err(violation) = result {
        panic!("{violation}\nprofile: {:?}\nops: {ops:?}", input.profile);
    }
}
