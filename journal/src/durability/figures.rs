//! What a durability probe measured, and the durability it calls for:
//! shared by the probe (`durability`) and its record
//! (`durability::record`), which neither refers back to.

use std::time::Duration;

use crate::config::Durability;

/// Write-through is chosen only when its median latency is below this
/// percentage of write + fdatasync's: a clear win, not noise.
pub const WRITE_THROUGH_CHOSEN_BELOW_PERCENT: u128 = 90;

/// What the durability probe measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurabilityProbe {
    /// Rounds run (each timed `PROBE_RUN_WRITES - 1` writes of each kind).
    pub rounds: u32,
    /// Median of a 4 KiB write + fdatasync.
    pub sync_p50: Duration,
    /// Median of a 4 KiB O_DSYNC write.
    pub write_through_p50: Duration,
}

impl DurabilityProbe {
    /// The durability these figures call for.
    pub fn chosen(&self) -> Durability {
        let sync = self.sync_p50.as_nanos();
        let write_through = self.write_through_p50.as_nanos();
        if write_through * 100 < sync * WRITE_THROUGH_CHOSEN_BELOW_PERCENT {
            Durability::WriteThrough
        } else {
            Durability::Sync
        }
    }
}
