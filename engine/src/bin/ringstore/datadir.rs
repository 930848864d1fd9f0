//! Finding the shards of a data directory.
//!
//! A data directory holds `shard-NNN/` subdirectories (and the engine's
//! `superblock`, which is not read here). A shard directory given
//! directly — one holding `identity` or `journal/` — is taken as the only
//! shard, numbered 0.

use crate::CliError;
use ringstore::layout::{IDENTITY_FILE_NAME, JOURNAL_DIR_NAME, SNAPSHOT_DIR_NAME};
use std::path::{Path, PathBuf};

/// `--shard N`: the flag of every per-shard command.
#[derive(Debug, Clone, clap::Args)]
pub struct ShardArg {
    /// Only shard N (the NNN of shard-NNN); default: every shard.
    #[arg(long, value_name = "N")]
    pub shard: Option<usize>,
}

/// Prefix of shard directory names.
const SHARD_PREFIX: &str = "shard-";

/// One shard directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardDir {
    /// Its number (the `NNN` of `shard-NNN`; 0 for a plain shard dir).
    pub index: usize,
    /// How output names it: the directory's name.
    pub label: String,
    /// The directory.
    pub path: PathBuf,
}

impl ShardDir {
    /// `<shard>/journal`.
    pub fn journal_dir(&self) -> PathBuf {
        self.path.join(JOURNAL_DIR_NAME)
    }

    /// `<shard>/snapshots`.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.path.join(SNAPSHOT_DIR_NAME)
    }
}

/// The number in a shard directory name: `shard-` and the decimal digits
/// the engine writes (at least three, zero-padded). A look-alike such as
/// `shard-3` or `shard-0003` (a copy someone made) is not a shard: the
/// engine never opens it, and `--shard 3` must not pick it over `shard-003`.
fn shard_index(name: &str) -> Option<usize> {
    let digits = name.strip_prefix(SHARD_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index = digits.parse().ok()?;
    let canonical = ringstore::runtime::startup::shard_dir(Path::new(""), index);
    (canonical.as_os_str() == name).then_some(index)
}

fn is_shard_dir(path: &Path) -> bool {
    path.join(IDENTITY_FILE_NAME).is_file() || path.join(JOURNAL_DIR_NAME).is_dir()
}

/// The shards of `data_dir`, by number; only shard `only` if given.
pub fn shards(data_dir: &Path, only: Option<usize>) -> Result<Vec<ShardDir>, CliError> {
    let meta = std::fs::metadata(data_dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CliError(format!(
                "data dir {} does not exist (pass --data-dir, or data_dir in --config)",
                data_dir.display()
            ))
        } else {
            CliError(format!("data dir {}: {e}", data_dir.display()))
        }
    })?;
    if !meta.is_dir() {
        return Err(CliError(format!(
            "data dir {} is not a directory",
            data_dir.display()
        )));
    }
    let mut found = Vec::new();
    if is_shard_dir(data_dir) {
        found.push(ShardDir {
            index: 0,
            label: data_dir
                .file_name()
                .map_or_else(|| "shard".into(), |n| n.to_string_lossy().into_owned()),
            path: data_dir.to_path_buf(),
        });
    } else {
        let entries = std::fs::read_dir(data_dir)
            .map_err(|e| CliError(format!("listing data dir {}: {e}", data_dir.display())))?;
        for entry in entries {
            let entry = entry
                .map_err(|e| CliError(format!("listing data dir {}: {e}", data_dir.display())))?;
            let name = entry.file_name();
            let Some(index) = name.to_str().and_then(shard_index) else {
                continue;
            };
            if entry.path().is_dir() {
                found.push(ShardDir {
                    index,
                    label: name.to_string_lossy().into_owned(),
                    path: entry.path(),
                });
            }
        }
        found.sort_by_key(|s| s.index);
    }
    if found.is_empty() {
        return Err(CliError(format!(
            "{} is not a ringstore data dir: it holds no shard-NNN/ directories, and no {} or \
             {}/ of a single shard (wrong --data-dir?)",
            data_dir.display(),
            IDENTITY_FILE_NAME,
            JOURNAL_DIR_NAME
        )));
    }
    if let Some(only) = only {
        let available: Vec<String> = found.iter().map(|s| s.index.to_string()).collect();
        found.retain(|s| s.index == only);
        if found.is_empty() {
            return Err(CliError(format!(
                "no shard {only} in {} (shards: {})",
                data_dir.display(),
                available.join(", ")
            )));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_parse() {
        assert_eq!(shard_index("shard-000"), Some(0));
        assert_eq!(shard_index("shard-012"), Some(12));
        assert_eq!(shard_index("shard-1234"), Some(1234));
        for bad in [
            "shard-",
            "shard-x1",
            "shard--1",
            "shards-001",
            "engine",
            "shard-3",
            "shard-0003",
            "shard-01234",
        ] {
            assert_eq!(shard_index(bad), None, "{bad}");
        }
    }
}
