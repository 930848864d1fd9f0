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
//!
//! [object_store]
//! # Where each shard's snapshots are uploaded (and `ringstore restore` reads
//! # them). Without this section demo and stress keep snapshots local;
//! # restore then uses the defaults below.
//! # "local" (the default): a directory. "s3": an S3-compatible endpoint.
//! # Google Cloud Storage and Azure Blob Storage are reached through the
//! # library (ringstore-cache features "gcp" and "azure"), not this file.
//! kind = "local"
//! # kind = "local": the directory. Default: <data_dir>/object-store (the
//! # same disk as the data: point it elsewhere to survive losing that disk).
//! root = "./ringstore-data/object-store"
//! # kind = "s3": endpoint (default: AWS itself), region (default
//! # us-east-1), bucket (required, must exist), static credentials (default:
//! # the environment's chain), allow_http (loopback test servers only).
//! # endpoint = "http://127.0.0.1:9000"
//! # region = "us-east-1"
//! # bucket = "ringstore"
//! # access_key_id = "ringstore"
//! # secret_access_key = "ringstore-secret"
//! # allow_http = false
//! # "before-compaction" (default): the journal is compacted only up to the
//! # newest uploaded snapshot (a store outage ends in backpressure).
//! # "background": compaction does not wait for uploads (a lost disk loses
//! # what was not uploaded yet).
//! upload = "before-compaction"
//! # Snapshot generations kept in object storage. Default 3. Range 1 to 1024.
//! generations = 3
//! # Byte limit of each shard's cache (<shard dir>/cache).
//! # Default 1073741824 (1 GiB). At least 1.
//! cache_bytes_limit = 1073741824
//! # Deadline of one object-store request, in ms. Default 30000.
//! # Range 10 to 3600000.
//! op_timeout_ms = 30000
//! ```
//!
//! Extending: add a field (with `#[serde(default)]` semantics through the
//! section's `Default`) to the section struct, document it in the example
//! above, and check its range in [`Config::validate`].

use crate::CliError;
use ringstore::object_store::{ObjectStoreSettings, Remote, S3Config, UploadMode};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

[object_store]
# Where each shard's snapshots are uploaded (and `ringstore restore` reads
# them). Without this section demo and stress keep snapshots local;
# restore then uses the defaults below.
# "local" (the default): a directory. "s3": an S3-compatible endpoint.
# Google Cloud Storage and Azure Blob Storage are reached through the
# library (ringstore-cache features "gcp" and "azure"), not this file.
kind = "local"
# kind = "local": the directory. Default: <data_dir>/object-store (the
# same disk as the data: point it elsewhere to survive losing that disk).
root = "./ringstore-data/object-store"
# kind = "s3": endpoint (default: AWS itself), region (default
# us-east-1), bucket (required, must exist), static credentials (default:
# the environment's chain), allow_http (loopback test servers only).
# endpoint = "http://127.0.0.1:9000"
# region = "us-east-1"
# bucket = "ringstore"
# access_key_id = "ringstore"
# secret_access_key = "ringstore-secret"
# allow_http = false
# "before-compaction" (default): the journal is compacted only up to the
# newest uploaded snapshot (a store outage ends in backpressure).
# "background": compaction does not wait for uploads (a lost disk loses
# what was not uploaded yet).
upload = "before-compaction"
# Snapshot generations kept in object storage. Default 3. Range 1 to 1024.
generations = 3
# Byte limit of each shard's cache (<shard dir>/cache).
# Default 1073741824 (1 GiB). At least 1.
cache_bytes_limit = 1073741824
# Deadline of one object-store request, in ms. Default 30000.
# Range 10 to 3600000.
op_timeout_ms = 30000
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
    /// `[object_store]` (`None`: the section is absent).
    pub object_store: Option<ObjectStoreSection>,
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

/// `[object_store]`: where snapshots are uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectStoreSection {
    /// The backend.
    pub kind: StoreKind,
    /// `local`: the directory (default `<data-dir>/object-store`).
    pub root: Option<PathBuf>,
    /// `s3`: the endpoint URL (default: AWS).
    pub endpoint: Option<String>,
    /// `s3`: the region (default `us-east-1`).
    pub region: Option<String>,
    /// `s3`: the bucket (required).
    pub bucket: Option<String>,
    /// `s3`: access key id (with the secret; default: the environment's
    /// credential chain).
    pub access_key_id: Option<String>,
    /// `s3`: secret access key.
    pub secret_access_key: Option<String>,
    /// `s3`: allow a plain `http://` endpoint.
    pub allow_http: bool,
    /// The upload mode.
    pub upload: UploadSetting,
    /// Generations kept in object storage.
    pub generations: usize,
    /// Byte limit of each shard's cache.
    pub cache_bytes_limit: u64,
    /// Deadline of one request, ms.
    pub op_timeout_ms: u64,
}

/// `object_store.kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// `object_store`'s local filesystem.
    #[default]
    Local,
    /// An S3-compatible endpoint.
    S3,
}

/// `object_store.upload`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UploadSetting {
    /// [`UploadMode::BeforeCompaction`].
    #[default]
    BeforeCompaction,
    /// [`UploadMode::Background`].
    Background,
}

/// Default `object_store.op_timeout_ms`.
pub const OP_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// The local store's directory inside the data directory by default.
pub const LOCAL_ROOT_DEFAULT: &str = "object-store";

impl Default for ObjectStoreSection {
    fn default() -> Self {
        ObjectStoreSection {
            kind: StoreKind::Local,
            root: None,
            endpoint: None,
            region: None,
            bucket: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            upload: UploadSetting::BeforeCompaction,
            generations: ringstore::object_store::REMOTE_GENERATIONS_DEFAULT,
            cache_bytes_limit: ringstore::object_store::CACHE_BYTES_LIMIT_DEFAULT,
            op_timeout_ms: OP_TIMEOUT_MS_DEFAULT,
        }
    }
}

impl ObjectStoreSection {
    /// Checks the section; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let s3_keys = [
            ("endpoint", self.endpoint.is_some()),
            ("region", self.region.is_some()),
            ("bucket", self.bucket.is_some()),
            ("access_key_id", self.access_key_id.is_some()),
            ("secret_access_key", self.secret_access_key.is_some()),
            ("allow_http", self.allow_http),
        ];
        match self.kind {
            StoreKind::Local => {
                if let Some((key, _)) = s3_keys.iter().find(|(_, set)| *set) {
                    return Err(format!(
                        "object_store.{key} is an S3 setting; set kind = \"s3\" to use it"
                    ));
                }
                if self.root.as_ref().is_some_and(|r| r.as_os_str().is_empty()) {
                    return Err("object_store.root is empty".into());
                }
            }
            StoreKind::S3 => {
                if self.root.is_some() {
                    return Err(
                        "object_store.root is a local setting; with kind = \"s3\" name a bucket"
                            .into(),
                    );
                }
                if self.bucket.as_deref().is_none_or(str::is_empty) {
                    return Err("object_store.bucket is required with kind = \"s3\"".into());
                }
                if self.access_key_id.is_some() != self.secret_access_key.is_some() {
                    return Err(
                        "object_store: set both access_key_id and secret_access_key, or neither"
                            .into(),
                    );
                }
            }
        }
        let max = ringstore::object_store::REMOTE_GENERATIONS_MAX;
        if self.generations == 0 || self.generations > max {
            return Err(format!(
                "object_store.generations = {} is out of range (1 to {max})",
                self.generations
            ));
        }
        if self.cache_bytes_limit == 0 {
            return Err("object_store.cache_bytes_limit = 0 is out of range (at least 1)".into());
        }
        if !(10..=3_600_000).contains(&self.op_timeout_ms) {
            return Err(format!(
                "object_store.op_timeout_ms = {} is out of range (10 to 3600000)",
                self.op_timeout_ms
            ));
        }
        Ok(())
    }

    /// The local store's directory.
    pub fn local_root(&self, data_dir: &Path) -> PathBuf {
        self.root
            .clone()
            .unwrap_or_else(|| data_dir.join(LOCAL_ROOT_DEFAULT))
    }

    /// Opens the store (starts its I/O thread).
    pub fn remote(&self, data_dir: &Path) -> Result<Remote, CliError> {
        let builder = match self.kind {
            StoreKind::Local => Remote::local(self.local_root(data_dir)),
            StoreKind::S3 => {
                let mut s3 = S3Config::new(self.bucket.clone().unwrap_or_default())
                    .allow_http(self.allow_http);
                if let Some(endpoint) = &self.endpoint {
                    s3 = s3.endpoint(endpoint);
                }
                if let Some(region) = &self.region {
                    s3 = s3.region(region);
                }
                if let (Some(id), Some(secret)) = (&self.access_key_id, &self.secret_access_key) {
                    s3 = s3.credentials(id, secret);
                }
                Remote::s3(s3)
            }
        };
        builder
            .op_timeout(Duration::from_millis(self.op_timeout_ms))
            .open()
            .map_err(|e| CliError(format!("object store: {e}")))
    }

    /// The shards' object-store settings.
    pub fn settings(&self, data_dir: &Path) -> Result<ObjectStoreSettings, CliError> {
        let mode = match self.upload {
            UploadSetting::BeforeCompaction => UploadMode::BeforeCompaction,
            UploadSetting::Background => UploadMode::Background,
        };
        Ok(ObjectStoreSettings::new(self.remote(data_dir)?)
            .mode(mode)
            .remote_generations(self.generations)
            .cache_bytes_limit(self.cache_bytes_limit))
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
        if let Some(section) = &self.object_store {
            section.validate()?;
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
        let objects = config.object_store.clone().expect("[object_store]");
        assert_eq!(objects.kind, StoreKind::Local);
        assert_eq!(objects.upload, UploadSetting::BeforeCompaction);
        assert_eq!(
            objects,
            ObjectStoreSection {
                root: Some(PathBuf::from("./ringstore-data/object-store")),
                ..ObjectStoreSection::default()
            }
        );
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

    #[test]
    fn object_store_sections_are_checked_by_kind() {
        let config = Config::parse("[object_store]").expect("defaults");
        assert_eq!(config.object_store, Some(ObjectStoreSection::default()));
        let s3 = "[object_store]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:9000\"\n\
                  bucket = \"b\"\naccess_key_id = \"a\"\nsecret_access_key = \"s\"\n\
                  allow_http = true\nupload = \"background\"";
        let config = Config::parse(s3).expect("s3 parses");
        let objects = config.object_store.expect("section");
        assert_eq!(objects.kind, StoreKind::S3);
        assert_eq!(objects.upload, UploadSetting::Background);
        let err = Config::parse("[object_store]\nbucket = \"b\"").expect_err("s3 key on local");
        assert!(
            err.contains("object_store.bucket") && err.contains("s3"),
            "{err}"
        );
        let err = Config::parse("[object_store]\nkind = \"s3\"").expect_err("no bucket");
        assert!(err.contains("bucket"), "{err}");
        let err = Config::parse("[object_store]\nkind = \"gcs\"").expect_err("unknown kind");
        assert!(err.contains("kind") || err.contains("gcs"), "{err}");
        let err = Config::parse("[object_store]\ngenerations = 0").expect_err("range");
        assert!(err.contains("object_store.generations"), "{err}");
        let err = Config::parse("[object_store]\nupload = \"later\"").expect_err("mode");
        assert!(err.contains("upload") || err.contains("later"), "{err}");
    }
}
