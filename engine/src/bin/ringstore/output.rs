//! Output helpers: tables, JSON, progress bars, number and time formats.
//!
//! Everything a command prints goes through [`Out`], which turns a closed
//! pipe (`ringstore wal dump | head`) into a quiet stop instead of a panic.

use crate::CliError;
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Buffered stdout that remembers a closed pipe.
pub struct Out {
    inner: std::io::BufWriter<std::io::Stdout>,
    /// The reader went away: stop producing output.
    pub closed: bool,
}

impl Out {
    /// Stdout.
    pub fn new() -> Out {
        Out {
            inner: std::io::BufWriter::new(std::io::stdout()),
            closed: false,
        }
    }

    /// Writes `text` and a newline. A closed pipe sets `closed`; any other
    /// error is returned.
    pub fn line(&mut self, text: impl std::fmt::Display) -> Result<(), CliError> {
        if self.closed {
            return Ok(());
        }
        let written = writeln!(self.inner, "{text}");
        self.check(written)
    }

    /// Writes raw text.
    pub fn raw(&mut self, text: &str) -> Result<(), CliError> {
        if self.closed {
            return Ok(());
        }
        let written = self.inner.write_all(text.as_bytes());
        self.check(written)
    }

    /// Writes one JSON document and a newline.
    pub fn json(&mut self, value: &serde_json::Value) -> Result<(), CliError> {
        let text = serde_json::to_string_pretty(value)?;
        self.line(text)
    }

    /// Flushes.
    pub fn flush(&mut self) -> Result<(), CliError> {
        if self.closed {
            return Ok(());
        }
        let flushed = self.inner.flush();
        self.check(flushed)
    }

    fn check(&mut self, result: std::io::Result<()>) -> Result<(), CliError> {
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(e) => Err(CliError(format!("writing to stdout: {e}"))),
        }
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.inner.flush();
        }
    }
}

/// A table with the tool's look and the given header.
pub fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    table
}

/// How long work runs before its progress bar appears: shorter work
/// finishes without one.
pub const PROGRESS_DELAY: Duration = Duration::from_secs(1);

/// A bytes progress bar on stderr that appears once the work has taken
/// [`PROGRESS_DELAY`]; never with `--json` or when stderr is not a terminal.
pub struct Progress {
    bar: ProgressBar,
    started: Instant,
    /// May it be drawn at all.
    allowed: bool,
    /// Is it drawn.
    visible: bool,
}

impl Progress {
    /// A hidden bar labelled `label`.
    pub fn new(label: &str, json: bool) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_owned());
        Progress {
            bar,
            started: Instant::now(),
            allowed: !json && std::io::stderr().is_terminal(),
            visible: false,
        }
    }

    /// Sets the total.
    pub fn set_length(&mut self, total_bytes: u64) {
        self.bar.set_length(total_bytes);
    }

    /// Sets the bytes done, showing the bar if the work has taken long
    /// enough.
    pub fn set_position(&mut self, done_bytes: u64) {
        if self.allowed && !self.visible && self.started.elapsed() >= PROGRESS_DELAY {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.visible = true;
        }
        self.bar.set_position(done_bytes);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A count progress bar on stderr (`total` items), hidden with `--json` or
/// when stderr is not a terminal.
pub fn counter_bar(total: u64, label: &str, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_owned());
    bar
}

/// A spinner with a running count on stderr, for work without an end
/// (hidden like the bars).
pub fn spinner(label: &str, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}: {pos} ({per_sec})") {
        bar.set_style(style);
    }
    bar.set_message(label.to_owned());
    bar
}

/// `n` bytes for people: `512 B`, `1.5 KiB`, `64.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// An inclusive op range, or `-` when there is none.
pub fn op_range(min: Option<u64>, max: Option<u64>) -> String {
    match (min, max) {
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a}..={b}"),
        _ => "-".into(),
    }
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS.mmm UTC`.
pub fn unix_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Up to `max` bytes as hex, with `…` if there were more.
pub fn hex_prefix(bytes: &[u8], max: usize) -> String {
    let mut text: String = bytes.iter().take(max).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > max {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64.0 MiB");
        assert_eq!(op_range(Some(1), Some(1)), "1");
        assert_eq!(op_range(Some(1), Some(9)), "1..=9");
        assert_eq!(op_range(None, None), "-");
        assert_eq!(unix_ms(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(unix_ms(951_782_400_123), "2000-02-29 00:00:00.123 UTC");
        assert_eq!(unix_ms(1_700_000_000_000), "2023-11-14 22:13:20.000 UTC");
        assert_eq!(hex_prefix(&[1, 0xab], 4), "01ab");
        assert_eq!(hex_prefix(&[1, 2, 3], 2), "0102…");
    }
}
