//! A shard's lifecycle: one state, and every transition, in one place.
//!
//! Opening is not a state: until the builder's open (recovery) has
//! finished there is no `Shard` to call. From then on:
//!
//! | from | event | to |
//! |---|---|---|
//! | `Serving` | a checkpoint (or an extension moving the watermark) takes the snapshot directory | `Checkpointing` |
//! | `Checkpointing` | it hands the directory back | `Serving` |
//! | `Serving`, `Checkpointing` | a reset begins | `Resetting`, the directory held or not as before |
//! | `Resetting` | the directory is taken or handed back | `Resetting`, `snapshots_held` set or cleared |
//! | `Resetting` | the reset ends (or is dropped) | `Serving`, or `Checkpointing` if a checkpoint holds the directory |
//! | any but `Poisoned` | a close begins | `Closing`, the directory held or not as before |
//! | any but `Poisoned` | a failure poisons the shard | `Poisoned`, remembering a close and the holder |
//! | `Poisoned` | a close begins | `Poisoned`, `closing` set |
//!
//! `snapshots_held` is the one piece of state that outlives the mode: the
//! snapshot directory (and the watermark) belong to one holder at a time —
//! a checkpoint, a reset, or an extension advancing the watermark — and a
//! holder that began before a close or a poisoning finishes (or is dropped)
//! after it, and must still be able to hand the directory back.
//! `Checkpointing` is `Serving` with the directory held.
//!
//! `Poisoned` and `Closing` are final: nothing leaves them but a reopen.
//! `Poisoned` wins over `Closing` (its cause is what callers see) and
//! remembers the close, which is all the snapshot scrubber asks. A reset
//! that ends after a close or a poisoning leaves the state as it is.
//!
//! What each state refuses ([`Lifecycle::refusal`]): submits and resets
//! get [`Error::Poisoned`] when poisoned, [`Error::Closed`] when closing,
//! [`Error::Resetting`] while a reset runs. Checkpoints are refused only
//! when poisoned; they wait while the directory is held.

use crate::error::Error;

/// Where a shard is in its life (see the [module docs](self)).
#[derive(Debug, Clone)]
pub(crate) enum Lifecycle {
    /// Submits, reads and checkpoints run; the snapshot directory is free.
    Serving,
    /// Serving, and the snapshot directory is held (by a checkpoint, or by
    /// an extension advancing the watermark).
    Checkpointing,
    /// A reset runs: submits are refused. `snapshots_held`: the reset, or a
    /// checkpoint it waits for, holds the snapshot directory.
    Resetting {
        /// The snapshot directory is held.
        snapshots_held: bool,
    },
    /// The shard is closing or closed: every call is refused.
    Closing {
        /// A checkpoint (or reset) that began before the close still holds
        /// the snapshot directory.
        snapshots_held: bool,
    },
    /// A failure made the shard's state untrustworthy: every call fails
    /// with the cause until the shard is reopened.
    Poisoned {
        /// The first failure.
        cause: Error,
        /// A close began (before or after the poisoning).
        closing: bool,
        /// The snapshot directory is still held.
        snapshots_held: bool,
    },
}

impl Lifecycle {
    /// The refusal a submit (or a reset) gets in this state, if any.
    pub(crate) fn refusal(&self) -> Option<Error> {
        match self {
            Lifecycle::Poisoned { cause, .. } => Some(Error::Poisoned {
                cause: Box::new(cause.clone()),
            }),
            Lifecycle::Closing { .. } => Some(Error::Closed),
            Lifecycle::Resetting { .. } => Some(Error::Resetting),
            Lifecycle::Serving | Lifecycle::Checkpointing => None,
        }
    }

    /// The first failure, if the shard is poisoned.
    pub(crate) fn poisoned(&self) -> Option<&Error> {
        match self {
            Lifecycle::Poisoned { cause, .. } => Some(cause),
            _ => None,
        }
    }

    /// A close began (poisoned or not).
    pub(crate) fn is_closing(&self) -> bool {
        matches!(
            self,
            Lifecycle::Closing { .. } | Lifecycle::Poisoned { closing: true, .. }
        )
    }

    /// Poisoned, or a close began: background tasks stop.
    pub(crate) fn is_poisoned_or_closing(&self) -> bool {
        matches!(self, Lifecycle::Closing { .. } | Lifecycle::Poisoned { .. })
    }

    /// Whether the snapshot directory is held.
    pub(crate) fn snapshots_held(&self) -> bool {
        match self {
            Lifecycle::Serving => false,
            Lifecycle::Checkpointing => true,
            Lifecycle::Resetting { snapshots_held }
            | Lifecycle::Closing { snapshots_held }
            | Lifecycle::Poisoned { snapshots_held, .. } => *snapshots_held,
        }
    }

    /// Takes the snapshot directory if it is free (in any state: a caller
    /// that must not run when poisoned checks that first). Returns whether
    /// it was taken.
    pub(crate) fn hold_snapshots(&mut self) -> bool {
        if self.snapshots_held() {
            return false;
        }
        self.set_snapshots_held(true);
        true
    }

    /// Hands the snapshot directory back.
    pub(crate) fn release_snapshots(&mut self) {
        self.set_snapshots_held(false);
    }

    fn set_snapshots_held(&mut self, held: bool) {
        match self {
            Lifecycle::Serving | Lifecycle::Checkpointing => {
                *self = if held {
                    Lifecycle::Checkpointing
                } else {
                    Lifecycle::Serving
                };
            }
            Lifecycle::Resetting { snapshots_held }
            | Lifecycle::Closing { snapshots_held }
            | Lifecycle::Poisoned { snapshots_held, .. } => *snapshots_held = held,
        }
    }

    /// A reset begins: refused (with the refusal) unless serving.
    pub(crate) fn begin_reset(&mut self) -> Result<(), Error> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        *self = Lifecycle::Resetting {
            snapshots_held: self.snapshots_held(),
        };
        Ok(())
    }

    /// A reset ended (or was dropped): serving again, unless the shard was
    /// closed or poisoned meanwhile.
    pub(crate) fn end_reset(&mut self) {
        if let Lifecycle::Resetting { snapshots_held } = *self {
            *self = if snapshots_held {
                Lifecycle::Checkpointing
            } else {
                Lifecycle::Serving
            };
        }
    }

    /// A close begins. Final.
    pub(crate) fn begin_close(&mut self) {
        match self {
            Lifecycle::Poisoned { closing, .. } => *closing = true,
            _ => {
                *self = Lifecycle::Closing {
                    snapshots_held: self.snapshots_held(),
                }
            }
        }
    }

    /// The shard is poisoned by `cause`, unless it already was (the first
    /// cause stays). Returns whether this call poisoned it.
    pub(crate) fn poison(&mut self, cause: &Error) -> bool {
        if self.poisoned().is_some() {
            return false;
        }
        *self = Lifecycle::Poisoned {
            cause: cause.clone(),
            closing: self.is_closing(),
            snapshots_held: self.snapshots_held(),
        };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_holds_the_snapshots_and_gives_them_back() {
        let mut state = Lifecycle::Serving;
        assert!(state.hold_snapshots());
        assert!(matches!(state, Lifecycle::Checkpointing));
        assert!(!state.hold_snapshots());
        assert!(state.refusal().is_none());
        state.release_snapshots();
        assert!(matches!(state, Lifecycle::Serving));
    }

    #[test]
    fn a_reset_refuses_submits_and_waits_for_a_running_checkpoint() {
        let mut state = Lifecycle::Checkpointing;
        state.begin_reset().unwrap();
        assert!(matches!(state.refusal(), Some(Error::Resetting)));
        assert!(matches!(state.begin_reset(), Err(Error::Resetting)));
        // The checkpoint ends; the reset takes the directory.
        state.release_snapshots();
        assert!(state.hold_snapshots());
        state.release_snapshots();
        state.end_reset();
        assert!(matches!(state, Lifecycle::Serving));
        // A reset dropped while a checkpoint holds the directory.
        let mut state = Lifecycle::Serving;
        state.begin_reset().unwrap();
        assert!(state.hold_snapshots());
        state.end_reset();
        assert!(matches!(state, Lifecycle::Checkpointing));
    }

    #[test]
    fn close_and_poison_are_final_and_keep_the_holder() {
        let mut state = Lifecycle::Checkpointing;
        state.begin_close();
        assert!(matches!(state.refusal(), Some(Error::Closed)));
        assert!(state.is_closing());
        assert!(state.snapshots_held());
        state.release_snapshots();
        assert!(!state.snapshots_held());
        state.end_reset();
        assert!(matches!(state, Lifecycle::Closing { .. }));
        // Poisoning wins over the close, and remembers it.
        assert!(state.poison(&Error::Closed));
        assert!(!state.poison(&Error::Resetting));
        assert!(matches!(state.poisoned(), Some(Error::Closed)));
        assert!(matches!(state.refusal(), Some(Error::Poisoned { .. })));
        assert!(state.is_closing());
        // A poisoned shard not closing: the scrubber goes on until close.
        let mut state = Lifecycle::Resetting {
            snapshots_held: true,
        };
        assert!(state.poison(&Error::Closed));
        assert!(!state.is_closing());
        assert!(state.is_poisoned_or_closing());
        assert!(state.snapshots_held());
        state.end_reset();
        state.begin_close();
        assert!(state.is_closing());
        assert!(state.poisoned().is_some());
    }
}
