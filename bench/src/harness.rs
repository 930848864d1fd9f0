//! What every benchmark command shares: the data directory, the probe chain
//! that brackets each workload, and the progress bar.
//!
//! The disk on this machine flips between a fast and a slow mode for minutes
//! at a time, so a figure is only comparable with the device limit measured
//! next to it. The harness runs the durable-write probe once at start and
//! once after every workload; each workload is bracketed by the probe before
//! it (the previous one's "after") and the probe after it, and is flagged
//! unreliable when their p50s or their means differ by more than
//! [`PROBE_AGREEMENT_RATIO_MAX`], or when they saw different disk modes. The mean matters too: the disk also has
//! spells where most writes are fast but a few percent take the slow mode's
//! ~4 ms, which leaves the p50 alone yet cuts throughput by half or more.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::device::{ensure_real_disk, ProbeResult, Prober};
use crate::report::{fmt_num, fmt_ratio};

/// Two probes whose p50s or means differ by more than this factor mean the
/// disk changed mode during the workload between them.
pub const PROBE_AGREEMENT_RATIO_MAX: f64 = 2.0;

/// Prefix of every file and directory the bench creates in the data directory;
/// stale entries with it are removed at start, and nothing else is touched.
pub const ENTRY_PREFIX: &str = "rsb-";

/// The probes on either side of one workload.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeBracket {
    /// The probe right before the workload.
    pub before: ProbeResult,
    /// The probe right after the workload.
    pub after: ProbeResult,
    /// The larger of `max/min` of the two probes' p50s and of their means.
    pub disagreement: f64,
    /// Whether the two probes saw the same disk mode and agree within
    /// [`PROBE_AGREEMENT_RATIO_MAX`].
    pub reliable: bool,
}

impl ProbeBracket {
    /// The mean of the two probes' p50s, in microseconds: the device's durable
    /// small-write latency around this workload.
    pub fn p50_us(&self) -> f64 {
        (self.before.latency.p50_us + self.after.latency.p50_us) / 2.0
    }

    /// Table cells: probe p50/mean before -> after (us), disk mode(s), reliable.
    pub fn cells(&self) -> [String; 3] {
        let figures = |probe: &ProbeResult| {
            format!(
                "{}/{}",
                fmt_num(probe.latency.p50_us),
                fmt_num(probe.latency.mean_us)
            )
        };
        [
            format!("{} -> {}", figures(&self.before), figures(&self.after)),
            self.modes(),
            if self.reliable {
                "yes".to_owned()
            } else if self.disagreement > PROBE_AGREEMENT_RATIO_MAX {
                format!("NO ({})", fmt_ratio(self.disagreement))
            } else {
                "NO (mode)".to_owned()
            },
        ]
    }

    /// Column headings matching [`ProbeBracket::cells`].
    pub const CELL_HEADINGS: [&'static str; 3] =
        ["probe p50/mean us before -> after", "disk", "reliable"];

    /// Disk mode(s) seen, e.g. `"fast"` or `"fast->slow"`.
    pub fn modes(&self) -> String {
        if self.before.mode == self.after.mode {
            self.before.mode.to_owned()
        } else {
            format!("{}->{}", self.before.mode, self.after.mode)
        }
    }
}

/// Shared state of one benchmark run.
pub struct Harness {
    dir: PathBuf,
    prober: Prober,
    last_probe: ProbeResult,
    progress: ProgressBar,
}

impl Harness {
    /// Prepares `dir` (created if missing; must be on a real disk), removes
    /// stale `rsb-*` entries from an earlier run, sets up the probe file, runs
    /// the first probe and starts a progress bar of `step_count` steps on stderr.
    pub fn new(dir: &Path, step_count: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        // Absolute from here on: the paths printed are unambiguous, and
        // nothing depends on the working directory staying put.
        let dir = &dir
            .canonicalize()
            .with_context(|| format!("resolve {}", dir.display()))?;
        ensure_real_disk(dir)?;
        remove_stale_entries(dir)?;
        let progress =
            ProgressBar::with_draw_target(Some(step_count), ProgressDrawTarget::stderr());
        progress.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                .expect("constant template is valid")
                .progress_chars("=> "),
        );
        progress.set_message("probe: set up");
        progress.inc(1);
        let mut prober = Prober::new(&dir.join(format!("{ENTRY_PREFIX}probe.dat")))?;
        let last_probe = prober.probe_default()?;
        Ok(Self {
            dir: dir.to_owned(),
            prober,
            last_probe,
            progress,
        })
    }

    /// Path of a bench-owned entry `name` inside the data directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{ENTRY_PREFIX}{name}"))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The most recent probe (the "before" of the next workload).
    pub fn last_probe(&self) -> &ProbeResult {
        &self.last_probe
    }

    /// Starts the next of the `step_count` steps, shown as `message`.
    pub fn step(&self, message: impl Into<String>) {
        self.progress.set_message(message.into());
        self.progress.inc(1);
    }

    /// Ends a workload: probes the device again and returns the bracket made
    /// of the previous probe and this one.
    pub fn bracket(&mut self) -> Result<ProbeBracket> {
        self.step("probe");
        let after = self.prober.probe_default()?;
        let before = std::mem::replace(&mut self.last_probe, after.clone());
        let disagreement = spread(before.latency.p50_us, after.latency.p50_us)
            .max(spread(before.latency.mean_us, after.latency.mean_us));
        let reliable = disagreement <= PROBE_AGREEMENT_RATIO_MAX && before.mode == after.mode;
        Ok(ProbeBracket {
            before,
            after,
            disagreement,
            reliable,
        })
    }

    /// Stops the progress bar and, unless `keep`, removes what the run created.
    pub fn finish(self, keep: bool) -> Result<()> {
        self.progress.finish_and_clear();
        if !keep {
            remove_stale_entries(&self.dir)?;
        }
        Ok(())
    }
}

/// `max(a, b) / min(a, b)`, for positive figures.
fn spread(a: f64, b: f64) -> f64 {
    a.max(b) / a.min(b).max(f64::MIN_POSITIVE)
}

/// Removes every `rsb-*` file or directory directly inside `dir`.
pub fn remove_stale_entries(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("list {}", dir.display()))?;
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(ENTRY_PREFIX)
        {
            continue;
        }
        remove_path(&entry.path())?;
    }
    Ok(())
}

/// Removes a bench-owned file or directory tree; a missing one is fine.
pub fn remove_path(path: &Path) -> Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    };
    result.with_context(|| format!("remove {}", path.display()))
}
