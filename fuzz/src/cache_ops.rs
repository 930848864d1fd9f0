//! Target `cache_ops`: operation lists through the cache's model checker
//! ([`ringstore_cache::sim`]): puts, gets, staging files committed,
//! conflicting, abandoned or dropped, failed post-link unlinks, held
//! reservations, trims, injected ENOSPC and crashes (drop without shutdown,
//! reopen; then the same ops again on the simulated disk, where a crash is
//! a power loss), checked against a `BTreeMap` model after every operation. A
//! [`SimFailure`](ringstore_cache::sim::SimFailure) is a finding and this
//! target panics with it.
//!
//! The checker runs a real cache in a temporary directory under
//! `$RINGSTORE_SIM_DIR` (default `/var/tmp`, a real disk) on its own glommio
//! executor thread, so this target calls it directly, not inside
//! [`crate::block_on`] (executors do not nest).

use arbitrary::Arbitrary;
use ringstore_cache::sim::{run_ops, run_power_loss, Op};

/// Most operations per input (the checker's own bound is
/// [`ringstore_cache::sim::SIM_OPS_MAX`]; a lower one keeps an execution
/// short, since reservations wait on real timers).
pub const OPS_MAX: usize = 128;

/// One fuzz input. Its `Arbitrary` impl is dense, like
/// [`ringstore_cache::sim::SimInput`]'s: the crash point, then operations
/// until the input runs out (no per-element continuation byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Crash (drop without shutdown, reopen) before the op at this index (at
    /// the end if past it).
    pub crash_after_ops: u8,
    /// The operations (at most [`OPS_MAX`] are decoded).
    pub ops: Vec<Op>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Input> {
        let crash_after_ops = u8::arbitrary(u)?;
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < OPS_MAX {
            ops.push(Op::arbitrary(u)?);
        }
        Ok(Input {
            crash_after_ops,
            ops,
        })
    }

    fn arbitrary_take_rest(mut u: arbitrary::Unstructured<'a>) -> arbitrary::Result<Input> {
        Input::arbitrary(&mut u)
    }
}

/// Runs one input on the real disk (a crash drops the process), then on
/// the simulated one (a crash is a power loss; the crash byte also seeds
/// the disk's faults and cut points); panics on an invariant violation.
pub fn run(input: &Input) {
    let ops = &input.ops[..input.ops.len().min(OPS_MAX)];
    let crash_after_ops = usize::from(input.crash_after_ops);
    if let Err(failure) = run_ops(ops, crash_after_ops) {
        panic!(
            "cache model check failed: {failure}\ncrash_after_ops: {}\nops: {ops:#?}",
            input.crash_after_ops
        );
    }
    let seed = u64::from(input.crash_after_ops);
    if let Err(failure) = run_power_loss(ops, crash_after_ops, seed) {
        panic!(
            "cache model check under power loss failed: {failure}\ncrash_after_ops: {}\nops: {ops:#?}",
            input.crash_after_ops
        );
    }
}
