//! The `--config` file: TOML, every key optional, unknown keys refused.
//!
//! The keys, with their defaults (this text is [`EXAMPLE_TOML`], and a test
//! checks that it parses):
//!
//! ```toml
//! # Where the engine keeps its shards: <data_dir>/shard-000/, ...
//! # --data-dir overrides it. Default: ./ringstore-data
//! data_dir = "./ringstore-data"
//!
//! [engine]
//! # Shards (one reactor thread each). Default: the number of CPUs.
//! # Range: 1 to 1024.
//! shards = 4
//!
//! [checkpoint]
//! # Checkpoint once this many ops were applied since the last snapshot.
//! # Default: a quarter of the journal's ring slots. At least 1.
//! ops_max = 16384
//! # Checkpoint once this many bytes of commands were applied since the
//! # last snapshot. Default: 268435456 (256 MiB). At least 1.
//! bytes_max = 268435456
//!
//! [demo]
//! # Commands the demo submits in all. Default: 100000. At least 1.
//! commands = 100000
//! # Concurrent demo clients. Default: 64. Range: 1 to 65536.
//! clients = 64
//! ```
//!
//! Extending: add a field (with `#[serde(default)]` semantics through the
//! section's `Default`) to the section struct, document it in the example
//! above, and check its range in [`Config::validate`].

use crate::CliError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The data directory when neither `--data-dir` nor `data_dir` is given.
pub const DATA_DIR_DEFAULT: &str = "./ringstore-data";
/// Most shards an engine runs.
pub const SHARDS_MAX: usize = 1024;
/// Most concurrent demo clients.
pub const DEMO_CLIENTS_MAX: usize = 1 << 16;
/// Default demo command count.
pub const DEMO_COMMANDS_DEFAULT: u64 = 100_000;
/// Default demo client count.
pub const DEMO_CLIENTS_DEFAULT: usize = 64;

/// The documented example (the module docs show it).
#[cfg_attr(not(test), allow(dead_code))]
pub const EXAMPLE_TOML: &str = r#"
# Where the engine keeps its shards: <data_dir>/shard-000/, ...
# --data-dir overrides it. Default: ./ringstore-data
data_dir = "./ringstore-data"

[engine]
# Shards (one reactor thread each). Default: the number of CPUs.
# Range: 1 to 1024.
shards = 4

[checkpoint]
# Checkpoint once this many ops were applied since the last snapshot.
# Default: a quarter of the journal's ring slots. At least 1.
ops_max = 16384
# Checkpoint once this many bytes of commands were applied since the
# last snapshot. Default: 268435456 (256 MiB). At least 1.
bytes_max = 268435456

[demo]
# Commands the demo submits in all. Default: 100000. At least 1.
commands = 100000
# Concurrent demo clients. Default: 64. Range: 1 to 65536.
clients = 64
"#;

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The data directory (`--data-dir` wins).
    pub data_dir: Option<PathBuf>,
    /// `[engine]`.
    pub engine: EngineSection,
    /// `[checkpoint]`.
    pub checkpoint: CheckpointSection,
    /// `[demo]`.
    pub demo: DemoSection,
}

/// `[engine]`: the multi-shard runtime.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Shards, one reactor thread each. Default: the number of CPUs.
    pub shards: usize,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// `[checkpoint]`: when each shard's compaction task checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Ops since the last snapshot. Default (`None`): a quarter of the
    /// ring's slots.
    pub ops_max: Option<u64>,
    /// Command bytes since the last snapshot.
    pub bytes_max: u64,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection {
            ops_max: None,
            bytes_max: ringstore::config::CHECKPOINT_BYTES_DEFAULT,
        }
    }
}

/// `[demo]`: the demo workload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoSection {
    /// Commands submitted in all.
    pub commands: u64,
    /// Concurrent clients.
    pub clients: usize,
}

impl Default for DemoSection {
    fn default() -> Self {
        DemoSection {
            commands: DEMO_COMMANDS_DEFAULT,
            clients: DEMO_CLIENTS_DEFAULT,
        }
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`. Errors name the file
    /// and, for a bad or unknown key, the key and its line.
    pub fn load(path: &Path) -> Result<Config, CliError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError(format!("config file {}: {e}", path.display())))?;
        Config::parse(&text).map_err(|e| CliError(format!("config file {}: {e}", path.display())))
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value's range; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let out_of_range = |key: &str, value: &dyn std::fmt::Display, range: &str| {
            Err(format!("{key} = {value} is out of range ({range})"))
        };
        if self.engine.shards == 0 || self.engine.shards > SHARDS_MAX {
            return out_of_range(
                "engine.shards",
                &self.engine.shards,
                &format!("1 to {SHARDS_MAX}"),
            );
        }
        if self.checkpoint.ops_max == Some(0) {
            return out_of_range("checkpoint.ops_max", &0, "at least 1");
        }
        if self.checkpoint.bytes_max == 0 {
            return out_of_range("checkpoint.bytes_max", &0, "at least 1");
        }
        if self.demo.commands == 0 {
            return out_of_range("demo.commands", &0, "at least 1");
        }
        if self.demo.clients == 0 || self.demo.clients > DEMO_CLIENTS_MAX {
            return out_of_range(
                "demo.clients",
                &self.demo.clients,
                &format!("1 to {DEMO_CLIENTS_MAX}"),
            );
        }
        if self
            .data_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err("data_dir is empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_the_docs_show_it() {
        let config = Config::parse(EXAMPLE_TOML).expect("example parses");
        assert_eq!(config.engine.shards, 4);
        assert_eq!(config.checkpoint.ops_max, Some(16384));
        assert_eq!(config.data_dir, Some(PathBuf::from(DATA_DIR_DEFAULT)));
        let docs: String = include_str!("config.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .map(|l| l.strip_prefix(' ').unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            docs.contains(EXAMPLE_TOML.trim()),
            "the module docs show EXAMPLE_TOML"
        );
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let config = Config::parse("").expect("empty parses");
        assert_eq!(config, Config::default());
        assert!(config.engine.shards >= 1);
        assert_eq!(config.demo.clients, DEMO_CLIENTS_DEFAULT);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = Config::parse("shardz = 3").expect_err("unknown key");
        assert!(err.contains("shardz"), "{err}");
        let err = Config::parse("[engine]\nshards = 2\nthreads = 1").expect_err("unknown key");
        assert!(err.contains("threads") && err.contains("line 3"), "{err}");
        let err = Config::parse("[checkpont]\nops_max = 1").expect_err("unknown section");
        assert!(err.contains("checkpont"), "{err}");
        let err = Config::parse("[engine]\nshards = 0").expect_err("out of range");
        assert!(err.contains("engine.shards"), "{err}");
        let err = Config::parse("[engine]\nshards = \"four\"").expect_err("wrong type");
        assert!(err.contains("shards"), "{err}");
    }
}
