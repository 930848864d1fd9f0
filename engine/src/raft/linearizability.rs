//! A linearizability checker for a replicated counter, for the cluster fault
//! test.
//!
//! **Model.** One counter, starting at 0. [`CounterOp::Add`] increments it by
//! exactly 1 and returns the value after the increment; [`CounterOp::Read`]
//! returns the value. Each [`Operation`] has an invocation and a completion
//! time on one monotonic clock, and an [`Outcome`]: a reply, `Unknown` (the
//! client cannot tell whether it took effect: timeout, lost connection,
//! killed leader) or `NotApplied` (refused before it was proposed). An unknown
//! add may have taken effect at any time after its invocation, even after the
//! client gave up, so its interval is `[invoked, ∞)`; unknown reads and
//! operations never applied say nothing and are ignored.
//!
//! **Why checking is cheap here.** General linearizability checking is
//! NP-complete, but a counter's replies give the order away. Let `F` be the
//! final value (every node's state after the run, if the caller has it; else
//! the largest value anyone observed). In any linearization the add applied
//! `k`-th returns `k`, so:
//!
//! 1. acknowledged add results are distinct and at least 1 (a repeat means
//!    one add was applied twice, or two adds produced one value), and at most
//!    `F`; reads return at most `F`;
//! 2. each value in `1..=F` that no acknowledged add returned was produced by
//!    an unknown add, so there must be at least as many unknown adds as
//!    missing values (extra unknown adds were never applied, or were applied
//!    after everything observed);
//! 3. the order is forced: add `k` comes `k`-th, a read of `v` sits after add
//!    `v` (after the start for `v = 0`) and before add `v + 1`. The only
//!    freedoms left are the order of reads of one value (they commute) and
//!    which unknown adds produce the missing values.
//!
//! What remains is to find non-decreasing points, one inside each
//! operation's interval, in that order. Equal points are allowed: an
//! operation invoked in the nanosecond another completed counts as
//! concurrent with it, since the clock cannot order them.
//!
//! **The greedy is exact.** Walk `k = 1..=F` with a running time `T`, placing
//! every operation at `max(T, invoked)`, the earliest point it can have; it
//! fits iff that is `<= completed`. Reads of one value are all placed from the
//! same `T` (their order is free, so each can go first), and the next add
//! starts from the latest of them. Points only push later points up, so the
//! earliest placement of each operation is never worse for the rest, and the
//! walk fails iff no placement exists.
//!
//! A missing value takes the unused unknown add invoked earliest. An unknown
//! add cannot take effect before its invocation, so this matters, and it is
//! optimal: the `j`-th missing value needs `j` distinct unknown adds applied
//! at or before it, so it cannot be produced before the `j`-th smallest
//! unknown invocation; taking them in invocation order reaches that bound,
//! and an unknown add never fails to fit since it never completes.
//!
//! **Reports.** Each [`Violation`] names the operations at fault by their
//! index in the history. An order violation is a witness pair: the values
//! force one operation after the other, yet it completed before the other
//! was invoked.
//!
//! **Cost.** Two sorts and one walk: `O(n log n)` for `n` operations. The
//! walk is bounded by `n` because it only starts once the missing values are
//! known to be covered (so `F <= n`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a client asked of the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CounterOp {
    /// Increment by 1; the reply is the value after the increment.
    Add,
    /// The reply is the current value.
    Read,
}

/// What the client learnt about its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// It took effect, and the reply was this value.
    Ok(u64),
    /// It may or may not have taken effect, at any time after its invocation.
    Unknown,
    /// It certainly never took effect.
    NotApplied,
}

/// One client operation in a history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Operation {
    /// The client that issued it (for reports only).
    pub client: u64,
    /// Add or read.
    pub op: CounterOp,
    /// When the client sent it, in nanoseconds on the history's clock.
    pub invoked_ns: u64,
    /// When the client got its reply or gave up, on the same clock.
    pub completed_ns: u64,
    /// What the client learnt.
    pub outcome: Outcome,
}

/// An operation of the history and its index there, as named in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OpRef {
    /// Its index in the history passed to [`check_counter`].
    pub index: usize,
    /// The operation.
    pub operation: Operation,
}

impl OpRef {
    fn new(history: &[Operation], index: usize) -> Self {
        // Indices come from enumerating `history`; the default is never used.
        let operation = history.get(index).copied().unwrap_or(Operation {
            client: 0,
            op: CounterOp::Read,
            invoked_ns: 0,
            completed_ns: 0,
            outcome: Outcome::NotApplied,
        });
        Self { index, operation }
    }
}

impl fmt::Display for OpRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = &self.operation;
        let kind = match op.op {
            CounterOp::Add => "add",
            CounterOp::Read => "read",
        };
        write!(
            f,
            "{kind} #{} (client {}, [{}, {}] ns, ",
            self.index, op.client, op.invoked_ns, op.completed_ns
        )?;
        match op.outcome {
            Outcome::Ok(value) => write!(f, "returned {value})"),
            Outcome::Unknown => f.write_str("outcome unknown)"),
            Outcome::NotApplied => f.write_str("not applied)"),
        }
    }
}

/// What a linearizable history established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSummary {
    /// Adds with a reply.
    pub adds_acknowledged: usize,
    /// Adds with an unknown outcome.
    pub adds_unknown: usize,
    /// Unknown adds that must have been applied: exactly that many if the
    /// final value was given, else at least that many.
    pub adds_unknown_applied: usize,
    /// Reads with a reply, all placed in the linearization.
    pub reads_checked: usize,
    /// The final value checked against: the one given, or the largest one
    /// observed.
    pub final_value: u64,
}

/// Why a history is not a linearizable counter history (or not a valid one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Violation {
    /// The operation completed before it was invoked: a broken history, not a
    /// broken counter.
    #[error("invalid history: {op} completed before it was invoked")]
    InvalidInterval {
        /// The operation.
        op: OpRef,
    },
    /// An add returned 0, but the value after an increment is at least 1.
    #[error("{op}: an add returns the value after its increment, which is at least 1")]
    AddReturnedZero {
        /// The add.
        op: OpRef,
    },
    /// Two acknowledged adds returned the same value: one add was applied
    /// twice, or two adds produced one value.
    #[error(
        "{first} and {second} returned the same value (an add applied twice, or two adds \
         producing one value)"
    )]
    DuplicateAddResult {
        /// The one earlier in the history.
        first: OpRef,
        /// The other one.
        second: OpRef,
    },
    /// An operation returned a value above the final one.
    #[error("{op} returned a value above the final value {final_value}")]
    ValueAboveFinal {
        /// The operation.
        op: OpRef,
        /// The final value.
        final_value: u64,
    },
    /// A value up to the final one was returned by no acknowledged add, and
    /// too few unknown adds exist to have produced all such values.
    #[error(
        "value {value} was produced by no operation: {missing} of the values 1..={final_value} \
         were returned by no acknowledged add, but only {unknown_adds} adds have an unknown outcome"
    )]
    UnproducedValue {
        /// The smallest value left without an operation to produce it.
        value: u64,
        /// The final value.
        final_value: u64,
        /// How many values in `1..=final_value` no acknowledged add returned.
        missing: u64,
        /// How many adds have an unknown outcome.
        unknown_adds: usize,
    },
    /// The values force `op` to take effect after `must_follow`, but `op`
    /// completed before `must_follow` was invoked (a stale read, a read from
    /// the future, or adds numbered against real time).
    #[error(
        "{op} completed before {must_follow} was invoked, yet their values order it after that one"
    )]
    RealTimeOrder {
        /// The operation that completed too early.
        op: OpRef,
        /// The operation the values put before it.
        must_follow: OpRef,
    },
    /// The values force `op` after the production of `value`, which no
    /// acknowledged add returned, and no unknown add could have produced it
    /// before `op` completed: `unknown_add` is the earliest that could, given
    /// the missing values before it.
    #[error(
        "{op} must take effect after value {value} was produced, but no acknowledged add \
         returned {value} and the earliest unknown add that could have produced it is \
         {unknown_add}, invoked after {op} completed"
    )]
    MissingValueTooLate {
        /// The operation that completed too early.
        op: OpRef,
        /// The value it must follow.
        value: u64,
        /// The earliest unknown add that could have produced `value`.
        unknown_add: OpRef,
    },
}

/// Checks that `history` is linearizable for a counter starting at 0 (see the
/// module doc for the model and the algorithm).
///
/// `final_value` is the counter's value once the run is over and every
/// applied operation is in (e.g. read from every node after the cluster
/// settles); without it, the largest observed value stands in for it and
/// unknown adds beyond it are taken as never applied.
///
/// Returns the first violation found; `O(n log n)` in the history's length.
pub fn check_counter(
    history: &[Operation],
    final_value: Option<u64>,
) -> Result<CheckSummary, Violation> {
    let op_ref = |index| OpRef::new(history, index);

    // (value, index) of acknowledged adds and reads; (invoked, index) of
    // unknown adds. The index breaks ties, which keeps reports stable.
    let mut acked = Vec::new();
    let mut unknown = Vec::new();
    let mut reads = Vec::new();
    for (index, op) in history.iter().enumerate() {
        if op.completed_ns < op.invoked_ns {
            return Err(Violation::InvalidInterval { op: op_ref(index) });
        }
        match (op.op, op.outcome) {
            (CounterOp::Add, Outcome::Ok(0)) => {
                return Err(Violation::AddReturnedZero { op: op_ref(index) })
            }
            (CounterOp::Add, Outcome::Ok(value)) => acked.push((value, index)),
            (CounterOp::Add, Outcome::Unknown) => unknown.push((op.invoked_ns, index)),
            (CounterOp::Read, Outcome::Ok(value)) => reads.push((value, index)),
            (_, Outcome::Unknown | Outcome::NotApplied) => {}
        }
    }
    acked.sort_unstable();
    unknown.sort_unstable();
    reads.sort_unstable();

    for pair in acked.windows(2) {
        if let [(a, first), (b, second)] = *pair {
            if a == b {
                return Err(Violation::DuplicateAddResult {
                    first: op_ref(first),
                    second: op_ref(second),
                });
            }
        }
    }

    let highest_add = acked.last().copied();
    let highest_read = reads.last().copied();
    let final_value = match final_value {
        Some(final_value) => {
            for (value, index) in [highest_add, highest_read].into_iter().flatten() {
                if value > final_value {
                    return Err(Violation::ValueAboveFinal {
                        op: op_ref(index),
                        final_value,
                    });
                }
            }
            final_value
        }
        None => highest_add.max(highest_read).map_or(0, |(value, _)| value),
    };

    // Acknowledged results are distinct and in 1..=final_value, so they
    // leave exactly this many values to unknown adds.
    let missing = final_value.saturating_sub(len_u64(acked.len()));
    if missing > len_u64(unknown.len()) {
        let uncovered = len_u64(unknown.len()).saturating_add(1);
        return Err(Violation::UnproducedValue {
            value: nth_missing(&acked, uncovered),
            final_value,
            missing,
            unknown_adds: unknown.len(),
        });
    }

    let mut acked_left = acked.iter().peekable();
    let mut unknown_left = unknown.iter();
    let mut reads_left = reads.iter().peekable();
    // Reads of the initial value come before the first add.
    let mut frontier = place_reads(history, &mut reads_left, 0, None)?;
    // Bounded by the history's length: final_value = acked + missing, and
    // missing <= unknown.len().
    for value in 1..=final_value {
        if let Some(&(_, index)) = acked_left.next_if(|&&(v, _)| v == value) {
            fits(history, index, frontier)?;
            frontier = advance(frontier, start_of(history, index), Cause::Forced(index));
        } else if let Some(&(invoked, index)) = unknown_left.next() {
            frontier = advance(
                frontier,
                invoked,
                Cause::Missing {
                    value,
                    unknown: index,
                },
            );
        } else {
            // Excluded by the count above; reported rather than assumed.
            return Err(Violation::UnproducedValue {
                value,
                final_value,
                missing,
                unknown_adds: unknown.len(),
            });
        }
        frontier = place_reads(history, &mut reads_left, value, frontier)?;
    }

    Ok(CheckSummary {
        adds_acknowledged: acked.len(),
        adds_unknown: unknown.len(),
        // At most unknown.len(), checked above.
        adds_unknown_applied: usize::try_from(missing).unwrap_or(unknown.len()),
        reads_checked: reads.len(),
        final_value,
    })
}

/// Why the running time of the walk is what it is.
#[derive(Debug, Clone, Copy)]
enum Cause {
    /// The invocation of this operation, which the values place before
    /// whatever comes next.
    Forced(usize),
    /// The invocation of this unknown add, the earliest possible producer of
    /// the missing `value`.
    Missing { value: u64, unknown: usize },
}

/// The walk's running time: the latest point placed so far, and its cause.
/// `None` until something is placed (time 0, which blocks nothing).
#[derive(Debug, Clone, Copy)]
struct Frontier {
    time: u64,
    cause: Cause,
}

/// Moves the running time up to `time` if that is later.
fn advance(frontier: Option<Frontier>, time: u64, cause: Cause) -> Option<Frontier> {
    if frontier.is_none_or(|f| time > f.time) {
        Some(Frontier { time, cause })
    } else {
        frontier
    }
}

/// Whether operation `index` can still take effect at or after the running
/// time; if not, the violation blames what set the running time.
fn fits(history: &[Operation], index: usize, frontier: Option<Frontier>) -> Result<(), Violation> {
    let completed = history.get(index).map_or(u64::MAX, |op| op.completed_ns);
    match frontier {
        Some(f) if f.time > completed => {
            let op = OpRef::new(history, index);
            Err(match f.cause {
                Cause::Forced(before) => Violation::RealTimeOrder {
                    op,
                    must_follow: OpRef::new(history, before),
                },
                Cause::Missing { value, unknown } => Violation::MissingValueTooLate {
                    op,
                    value,
                    unknown_add: OpRef::new(history, unknown),
                },
            })
        }
        _ => Ok(()),
    }
}

/// Places the reads of `value` (next in `reads`, sorted by value) right after
/// the add that produced it, each as early as it can go, and returns the
/// running time for the next add: the latest of their points.
fn place_reads<'a>(
    history: &[Operation],
    reads: &mut std::iter::Peekable<impl Iterator<Item = &'a (u64, usize)>>,
    value: u64,
    frontier: Option<Frontier>,
) -> Result<Option<Frontier>, Violation> {
    let mut after = frontier;
    while let Some(&(_, index)) = reads.next_if(|&&(v, _)| v == value) {
        fits(history, index, frontier)?;
        after = advance(after, start_of(history, index), Cause::Forced(index));
    }
    Ok(after)
}

fn start_of(history: &[Operation], index: usize) -> u64 {
    history.get(index).map_or(0, |op| op.invoked_ns)
}

/// The `n`-th (from 1) value in `1..` that no acknowledged add returned;
/// `acked` is sorted by value, without repeats or zero.
fn nth_missing(acked: &[(u64, usize)], n: u64) -> u64 {
    for (i, &(value, _)) in acked.iter().enumerate() {
        let missing_below = value.saturating_sub(len_u64(i).saturating_add(1));
        if missing_below >= n {
            return n.saturating_add(len_u64(i));
        }
    }
    n.saturating_add(len_u64(acked.len()))
}

fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(client: u64, invoked_ns: u64, completed_ns: u64, value: u64) -> Operation {
        Operation {
            client,
            op: CounterOp::Add,
            invoked_ns,
            completed_ns,
            outcome: Outcome::Ok(value),
        }
    }

    /// An add whose client gave up at `gave_up_ns`.
    fn add_unknown(client: u64, invoked_ns: u64, gave_up_ns: u64) -> Operation {
        Operation {
            client,
            op: CounterOp::Add,
            invoked_ns,
            completed_ns: gave_up_ns,
            outcome: Outcome::Unknown,
        }
    }

    fn at(history: &[Operation], index: usize) -> OpRef {
        OpRef {
            index,
            operation: history[index],
        }
    }

    fn read(client: u64, invoked_ns: u64, completed_ns: u64, value: u64) -> Operation {
        Operation {
            client,
            op: CounterOp::Read,
            invoked_ns,
            completed_ns,
            outcome: Outcome::Ok(value),
        }
    }

    #[test]
    fn sequential_history_passes() {
        let history = [
            read(1, 0, 5, 0),
            add(1, 10, 20, 1),
            read(2, 21, 25, 1),
            add(2, 30, 40, 2),
            add(1, 41, 50, 3),
            read(1, 51, 60, 3),
        ];
        let summary = check_counter(&history, Some(3)).unwrap();
        assert_eq!(
            summary,
            CheckSummary {
                adds_acknowledged: 3,
                adds_unknown: 0,
                adds_unknown_applied: 0,
                reads_checked: 3,
                final_value: 3,
            }
        );
    }

    #[test]
    fn empty_history_passes() {
        assert_eq!(check_counter(&[], None).unwrap().final_value, 0);
        assert!(check_counter(&[], Some(0)).is_ok());
    }

    #[test]
    fn concurrent_adds_pass_in_either_order() {
        for (a, b) in [(1, 2), (2, 1)] {
            let history = [add(1, 0, 100, a), add(2, 50, 150, b), read(3, 40, 120, 1)];
            assert!(check_counter(&history, Some(2)).is_ok(), "values {a}, {b}");
        }
    }

    #[test]
    fn planted_stale_read_is_named() {
        let mut history: Vec<_> = (1..=5).map(|v| add(1, v * 100, v * 100 + 50, v)).collect();
        // Invoked after the add returning 5 completed, yet sees 4.
        history.push(read(2, 600, 610, 4));
        let err = check_counter(&history, None).unwrap_err();
        assert_eq!(
            err,
            Violation::RealTimeOrder {
                op: at(&history, 4),
                must_follow: at(&history, 5),
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("read #5 (client 2, [600, 610] ns, returned 4)"),
            "{text}"
        );
        assert!(text.contains("add #4"), "{text}");
    }

    #[test]
    fn read_overlapping_the_next_add_may_be_old() {
        // Sees 4 while the add producing 5 is in flight.
        let mut history: Vec<_> = (1..=4).map(|v| add(1, v * 10, v * 10 + 5, v)).collect();
        history.push(add(1, 100, 200, 5));
        history.push(read(2, 150, 160, 4));
        assert!(check_counter(&history, None).is_ok());
    }

    #[test]
    fn ties_count_as_concurrent() {
        // The read is invoked in the nanosecond the add completed.
        let history = [add(1, 0, 100, 1), read(2, 100, 120, 0)];
        assert!(check_counter(&history, None).is_ok());
    }

    #[test]
    fn read_of_initial_value_after_an_add_is_stale() {
        let history = [add(1, 0, 100, 1), read(2, 101, 120, 0)];
        let err = check_counter(&history, None).unwrap_err();
        assert!(matches!(
            err,
            Violation::RealTimeOrder {
                op: OpRef { index: 0, .. },
                must_follow: OpRef { index: 1, .. }
            }
        ));
    }

    #[test]
    fn read_from_the_future_is_named() {
        let history = [
            add(1, 0, 10, 1),
            add(1, 20, 30, 2),
            read(2, 5, 15, 3),
            add(1, 40, 50, 3),
        ];
        let err = check_counter(&history, None).unwrap_err();
        assert_eq!(
            err,
            Violation::RealTimeOrder {
                op: at(&history, 2),
                must_follow: at(&history, 3),
            }
        );
    }

    #[test]
    fn adds_numbered_against_real_time_are_a_violation() {
        let history = [add(1, 0, 10, 2), add(2, 20, 30, 1)];
        let err = check_counter(&history, None).unwrap_err();
        assert!(matches!(
            err,
            Violation::RealTimeOrder {
                op: OpRef { index: 0, .. },
                must_follow: OpRef { index: 1, .. }
            }
        ));
    }

    #[test]
    fn duplicate_add_result_is_a_violation() {
        let history = [add(1, 0, 10, 1), add(2, 20, 30, 2), add(1, 40, 50, 2)];
        let err = check_counter(&history, None).unwrap_err();
        assert_eq!(
            err,
            Violation::DuplicateAddResult {
                first: at(&history, 1),
                second: at(&history, 2),
            }
        );
    }

    #[test]
    fn add_returning_zero_is_a_violation() {
        let err = check_counter(&[add(1, 0, 10, 0)], None).unwrap_err();
        assert!(matches!(
            err,
            Violation::AddReturnedZero {
                op: OpRef { index: 0, .. }
            }
        ));
    }

    #[test]
    fn interval_ending_before_it_starts_is_rejected() {
        let history = [add(1, 0, 10, 1), read(2, 30, 20, 1)];
        let err = check_counter(&history, None).unwrap_err();
        assert!(matches!(
            err,
            Violation::InvalidInterval {
                op: OpRef { index: 1, .. }
            }
        ));
    }

    #[test]
    fn missing_value_without_unknown_add_is_a_violation() {
        let history = [add(1, 0, 10, 1), add(1, 20, 30, 3), read(2, 40, 50, 3)];
        let err = check_counter(&history, None).unwrap_err();
        assert_eq!(
            err,
            Violation::UnproducedValue {
                value: 2,
                final_value: 3,
                missing: 1,
                unknown_adds: 0
            }
        );
        assert!(err
            .to_string()
            .starts_with("value 2 was produced by no operation"));
    }

    #[test]
    fn missing_value_covered_by_early_unknown_add_passes() {
        let history = [add(1, 0, 10, 1), add_unknown(2, 5, 15), add(1, 20, 30, 3)];
        let summary = check_counter(&history, Some(3)).unwrap();
        assert_eq!(summary.adds_unknown, 1);
        assert_eq!(summary.adds_unknown_applied, 1);
    }

    #[test]
    fn unknown_add_may_take_effect_after_its_client_gave_up() {
        // Gave up at 15, applied after the add returning 1 at 20..30.
        let history = [add_unknown(2, 0, 15), add(1, 20, 30, 1), read(3, 40, 50, 2)];
        assert!(check_counter(&history, None).is_ok());
    }

    #[test]
    fn missing_value_covered_only_by_late_unknown_add_is_a_violation() {
        // Value 2 must precede the add returning 3, but the only unknown add
        // was invoked after that add completed.
        let history = [add(1, 0, 10, 1), add(1, 20, 30, 3), add_unknown(2, 35, 45)];
        let err = check_counter(&history, None).unwrap_err();
        assert_eq!(
            err,
            Violation::MissingValueTooLate {
                op: at(&history, 1),
                value: 2,
                unknown_add: at(&history, 2),
            }
        );
    }

    #[test]
    fn earliest_unknown_add_fills_the_first_gap() {
        // The late unknown add comes first in the history; taking it for
        // value 2 would wrongly fail the add returning 3.
        let history = [
            add_unknown(3, 50, 60),
            add(1, 0, 10, 1),
            add_unknown(2, 5, 15),
            add(1, 20, 30, 3),
            read(4, 70, 80, 4),
        ];
        let summary = check_counter(&history, None).unwrap();
        assert_eq!(summary.adds_unknown_applied, 2);
    }

    #[test]
    fn final_value_below_an_acknowledged_result_is_a_violation() {
        let history = [add(1, 0, 10, 1), add(1, 20, 30, 2)];
        let err = check_counter(&history, Some(1)).unwrap_err();
        assert_eq!(
            err,
            Violation::ValueAboveFinal {
                op: at(&history, 1),
                final_value: 1
            }
        );
    }

    #[test]
    fn read_above_final_value_is_a_violation() {
        let history = [add(1, 0, 10, 1), read(2, 20, 30, 2)];
        let err = check_counter(&history, Some(1)).unwrap_err();
        assert!(matches!(
            err,
            Violation::ValueAboveFinal {
                op: OpRef { index: 1, .. },
                ..
            }
        ));
    }

    #[test]
    fn final_value_above_acknowledged_needs_unknown_adds() {
        let history = [add(1, 0, 10, 1), add_unknown(2, 20, 30)];
        assert_eq!(
            check_counter(&history, Some(2))
                .unwrap()
                .adds_unknown_applied,
            1
        );
        assert_eq!(
            check_counter(&history, Some(1))
                .unwrap()
                .adds_unknown_applied,
            0
        );
        let err = check_counter(&history, Some(3)).unwrap_err();
        assert!(matches!(
            err,
            Violation::UnproducedValue {
                value: 3,
                missing: 2,
                ..
            }
        ));
        // A huge final value is rejected before any walk over its values.
        let err = check_counter(&history, Some(u64::MAX)).unwrap_err();
        assert!(matches!(err, Violation::UnproducedValue { value: 3, .. }));
    }

    #[test]
    fn ignored_outcomes_do_not_count() {
        let history = [
            Operation {
                outcome: Outcome::NotApplied,
                ..add(1, 0, 10, 0)
            },
            Operation {
                outcome: Outcome::Unknown,
                ..read(2, 0, 10, 0)
            },
            add(1, 20, 30, 1),
        ];
        let summary = check_counter(&history, Some(1)).unwrap();
        assert_eq!((summary.adds_acknowledged, summary.reads_checked), (1, 0));
        // A never-applied add cannot fill a gap.
        assert!(check_counter(&history, Some(2)).is_err());
    }

    /// xorshift64*: enough randomness for histories, no crates.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        /// Uniform enough in `0..n` (`n > 0`).
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn one_in(&mut self, n: u64) -> bool {
            self.below(n) == 0
        }
    }

    /// A history of a correct counter: `clients` sequential clients, each
    /// operation taking effect at a random point of its interval (an unknown
    /// add possibly after its client gave up). Returns it with the final
    /// value.
    fn simulate(rng: &mut Rng, clients: u64, ops_per_client: u64) -> (Vec<Operation>, u64) {
        // (point, operation, applied)
        let mut planned = Vec::new();
        for client in 0..clients {
            let mut now = rng.below(100);
            for _ in 0..ops_per_client {
                let invoked_ns = now + rng.below(50);
                let completed_ns = invoked_ns + rng.below(300);
                let (op, outcome, applied) = if rng.one_in(2) {
                    match rng.below(10) {
                        0 => (CounterOp::Add, Outcome::Unknown, true),
                        1 => (CounterOp::Add, Outcome::Unknown, false),
                        2 => (CounterOp::Add, Outcome::NotApplied, false),
                        _ => (CounterOp::Add, Outcome::Ok(0), true),
                    }
                } else if rng.one_in(10) {
                    (CounterOp::Read, Outcome::Unknown, true)
                } else {
                    (CounterOp::Read, Outcome::Ok(0), true)
                };
                let reach = if outcome == Outcome::Unknown { 3 } else { 1 };
                let point = invoked_ns + rng.below((completed_ns - invoked_ns) * reach + 1);
                let operation = Operation {
                    client,
                    op,
                    invoked_ns,
                    completed_ns,
                    outcome,
                };
                planned.push((point, operation, applied));
                now = completed_ns;
            }
        }
        let mut order: Vec<usize> = (0..planned.len()).collect();
        order.sort_by_key(|&i| planned[i].0);
        let mut counter = 0;
        for i in order {
            let (_, operation, applied) = &mut planned[i];
            if !*applied {
                continue;
            }
            if operation.op == CounterOp::Add {
                counter += 1;
            }
            if let Outcome::Ok(value) = &mut operation.outcome {
                *value = counter;
            }
        }
        (
            planned
                .into_iter()
                .map(|(_, operation, _)| operation)
                .collect(),
            counter,
        )
    }

    #[test]
    fn random_linearizable_histories_pass_and_stale_reads_fail() {
        let mut mutated = 0;
        for seed in 1..=400 {
            let mut rng = Rng::new(seed);
            let clients = 1 + rng.below(6);
            let (mut history, final_value) = simulate(&mut rng, clients, 40);
            let given = rng.one_in(2).then_some(final_value);
            let summary = check_counter(&history, given)
                .unwrap_or_else(|v| panic!("seed {seed}: {v}\n{history:?}"));
            if given.is_some() {
                let unknown_applied = final_value - summary.adds_acknowledged as u64;
                assert_eq!(
                    summary.adds_unknown_applied as u64, unknown_applied,
                    "seed {seed}"
                );
            }

            // Make one read return an older value where that is certainly
            // stale: an acknowledged add producing a higher value completed
            // before the read was invoked.
            let Some(r) = (0..history.len()).find(|&r| {
                history[r].op == CounterOp::Read
                    && matches!(history[r].outcome, Outcome::Ok(v) if v > 0)
            }) else {
                continue;
            };
            let Outcome::Ok(seen) = history[r].outcome else {
                unreachable!()
            };
            let older = rng.below(seen);
            let stale = history.iter().any(|op| {
                matches!(op.outcome, Outcome::Ok(v) if op.op == CounterOp::Add && v > older)
                    && op.completed_ns < history[r].invoked_ns
            });
            history[r].outcome = Outcome::Ok(older);
            if stale {
                mutated += 1;
                assert!(
                    check_counter(&history, given).is_err(),
                    "seed {seed}: read #{r} {older}"
                );
            }
        }
        assert!(mutated > 50, "only {mutated} certainly stale mutations");
    }

    /// Reference checker by exhaustive search: every subset of unknown adds
    /// taken as applied, every order, each operation placed as early as it
    /// can go. Exponential; for tiny histories only.
    fn brute_force(history: &[Operation], final_value: Option<u64>) -> bool {
        if history.iter().any(|op| op.completed_ns < op.invoked_ns) {
            return false;
        }
        let known: Vec<usize> = (0..history.len())
            .filter(|&i| matches!(history[i].outcome, Outcome::Ok(_)))
            .collect();
        let unknown: Vec<usize> = (0..history.len())
            .filter(|&i| history[i].op == CounterOp::Add && history[i].outcome == Outcome::Unknown)
            .collect();
        (0..1u32 << unknown.len()).any(|mask| {
            let mut chosen = known.clone();
            chosen.extend(
                (0..unknown.len())
                    .filter(|b| mask & (1 << b) != 0)
                    .map(|b| unknown[b]),
            );
            let mut used = vec![false; chosen.len()];
            search(history, &chosen, &mut used, 0, 0, final_value)
        })
    }

    fn search(
        history: &[Operation],
        chosen: &[usize],
        used: &mut [bool],
        time: u64,
        counter: u64,
        final_value: Option<u64>,
    ) -> bool {
        if used.iter().all(|&u| u) {
            return final_value.is_none_or(|f| f == counter);
        }
        for slot in 0..chosen.len() {
            if used[slot] {
                continue;
            }
            let op = history[chosen[slot]];
            let at = time.max(op.invoked_ns);
            let after = counter + u64::from(op.op == CounterOp::Add);
            let fits = match op.outcome {
                Outcome::Ok(value) => at <= op.completed_ns && value == after,
                _ => true,
            };
            if fits {
                used[slot] = true;
                let found = search(history, chosen, used, at, after, final_value);
                used[slot] = false;
                if found {
                    return true;
                }
            }
        }
        false
    }

    #[test]
    fn agrees_with_exhaustive_search_on_tiny_histories() {
        let (mut passed, mut failed) = (0, 0);
        for seed in 1..=20_000 {
            let mut rng = Rng::new(seed);
            let history: Vec<Operation> = (0..1 + rng.below(6))
                .map(|client| {
                    let invoked_ns = rng.below(20);
                    let completed_ns = invoked_ns + rng.below(10);
                    let op = if rng.one_in(2) {
                        CounterOp::Add
                    } else {
                        CounterOp::Read
                    };
                    let outcome = match rng.below(8) {
                        0 => Outcome::Unknown,
                        1 => Outcome::NotApplied,
                        _ => Outcome::Ok(rng.below(4)),
                    };
                    Operation {
                        client,
                        op,
                        invoked_ns,
                        completed_ns,
                        outcome,
                    }
                })
                .collect();
            let final_value = rng.one_in(2).then(|| rng.below(4));
            let expected = brute_force(&history, final_value);
            let got = check_counter(&history, final_value);
            assert_eq!(
                got.is_ok(),
                expected,
                "seed {seed}: {got:?}\n{history:?} final {final_value:?}"
            );
            if expected {
                passed += 1;
            } else {
                failed += 1;
            }
        }
        assert!(
            passed > 1_000 && failed > 1_000,
            "{passed} passed, {failed} failed"
        );
    }

    #[test]
    fn large_history_is_checked() {
        let mut rng = Rng::new(7);
        let (history, final_value) = simulate(&mut rng, 50, 2_000);
        assert_eq!(history.len(), 100_000);
        let summary = check_counter(&history, Some(final_value)).unwrap();
        assert_eq!(summary.final_value, final_value);
    }
}
