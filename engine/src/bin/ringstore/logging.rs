//! Where the engine's log goes: one `tracing` subscriber writing to stderr,
//! installed by the `ringstore` tool and by the examples (which include
//! this file by path, so they all log alike).
//!
//! The libraries only emit `tracing` events: a torn tail cut at recovery,
//! a full disk, a snapshot skipped as damaged, a failed checkpoint. Without
//! a subscriber those vanish, and the operator never learns the data dir
//! needed attention. The filter comes from `RUST_LOG` (`EnvFilter` syntax:
//! `info`, `warn,ringstore_journal=debug`); unset or empty, warnings and
//! errors are shown. A `RUST_LOG` that does not parse is not fatal: the
//! default applies and a warning says so.
//!
//! Stderr, never stdout: with `--json` stdout carries one machine-readable
//! document, and a log line in it would break every parser.

use std::ffi::OsString;
use std::io::IsTerminal;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};

/// The environment variable the filter comes from.
const FILTER_VAR: &str = "RUST_LOG";
/// What is shown when `RUST_LOG` is unset, empty or does not parse.
const LEVEL_DEFAULT: LevelFilter = LevelFilter::WARN;

/// Installs the process's global `tracing` subscriber: events to stderr,
/// filtered by `RUST_LOG` (default: warnings and errors).
///
/// Call it first thing in `main`: the engine's reactor threads log through
/// the global subscriber, and an event emitted before it exists is lost.
pub fn init_logging() {
    let (filter, rejected) = filter_from_env();
    // Colour only for a person at a terminal (and not if NO_COLOR asks
    // otherwise); escape codes in a captured log are noise.
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
    if let Err(error) = installed {
        // Only if something installed a subscriber first; the tool still
        // works, its log goes wherever that one sends it.
        eprintln!("cannot install the log subscriber: {error}");
        return;
    }
    if let Some((value, error)) = rejected {
        tracing::warn!(
            rust_log = %value.to_string_lossy(),
            %error,
            "ignoring {FILTER_VAR}; showing warnings and errors"
        );
    }
}

/// The filter `RUST_LOG` asks for, else the default together with the
/// rejected value and why it was rejected.
fn filter_from_env() -> (EnvFilter, Option<(OsString, String)>) {
    let Some(value) = std::env::var_os(FILTER_VAR) else {
        return (filter_default(), None);
    };
    let parsed = value.to_str().map(|text| {
        EnvFilter::builder()
            .with_default_directive(LEVEL_DEFAULT.into())
            .parse(text)
    });
    match parsed {
        Some(Ok(filter)) => (filter, None),
        Some(Err(error)) => (filter_default(), Some((value, error.to_string()))),
        None => (filter_default(), Some((value, "not UTF-8".to_string()))),
    }
}

/// Warnings and errors from every target.
fn filter_default() -> EnvFilter {
    EnvFilter::default().add_directive(LEVEL_DEFAULT.into())
}
