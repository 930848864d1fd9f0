//! Where objects live and how patiently to talk to them: [`Backend`]
//! ([`Backend::Local`] by default, [`S3Config`] as a switch, any other
//! `object_store` store through [`Backend::Custom`]) and [`RemoteBuilder`]
//! (deadlines, retries, part size, queue bounds). Every setter documents its
//! default and range; [`RemoteBuilder::open`] validates and returns
//! [`RemoteError::Config`] naming the setting, never clamping silently.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use super::error::{RemoteError, RemoteResult};
use super::Remote;

/// Default deadline of one call: 30 s (extended for big transfers, see
/// [`RemoteBuilder::rate_floor_bytes_per_sec`]).
pub const OP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Range of [`RemoteBuilder::op_timeout`].
pub const OP_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(3600));

/// Default slowest transfer rate a call is given time for: 1 MiB/s. A
/// transfer of `n` bytes gets `op_timeout + n / rate_floor` before its
/// deadline.
pub const RATE_FLOOR_BYTES_PER_SEC_DEFAULT: u64 = 1 << 20;
/// Range of [`RemoteBuilder::rate_floor_bytes_per_sec`].
pub const RATE_FLOOR_BYTES_PER_SEC_RANGE: (u64, u64) = (1 << 10, 1 << 40);

/// Default part size of multipart uploads: 8 MiB. Files up to this size go
/// up in one `PUT`; larger ones in parts of this size (the last may be
/// shorter). One part is in memory per upload.
pub const PART_BYTES_DEFAULT: u64 = 8 << 20;
/// Smallest part: 5 MiB, S3's minimum for every part but the last.
pub const PART_BYTES_MIN: u64 = 5 << 20;
/// Largest part: 256 MiB (it is held in memory while it uploads).
pub const PART_BYTES_MAX: u64 = 256 << 20;
/// Most parts of one multipart upload (S3's limit).
pub const PARTS_MAX: u64 = 10_000;

/// Default attempts per call (1 = no retry).
pub const ATTEMPTS_MAX_DEFAULT: u32 = 4;
/// Range of [`RemoteBuilder::attempts_max`].
pub const ATTEMPTS_MAX_RANGE: (u32, u32) = (1, 32);
/// Default first retry backoff (doubling after each retry).
pub const BACKOFF_INITIAL_DEFAULT: Duration = Duration::from_millis(50);
/// Default longest retry backoff.
pub const BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(2);
/// Range of both backoff settings.
pub const BACKOFF_RANGE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(60));

/// Default calls executing on the I/O thread at once; more wait there (their
/// deadline running).
pub const IN_FLIGHT_MAX_DEFAULT: usize = 16;
/// Range of [`RemoteBuilder::in_flight_max`].
pub const IN_FLIGHT_MAX_RANGE: (usize, usize) = (1, 1024);

/// Calls queued for the I/O thread and not yet picked up; beyond this a
/// call fails at once with [`RemoteError::Overloaded`] (the I/O thread picks
/// calls up as fast as they come, so this only fills if it is stuck).
pub const REQUESTS_QUEUED_MAX: usize = 4096;

/// Most entries one `list` returns ([`RemoteError::ListTooLong`] past it).
pub const LIST_ENTRIES_MAX: usize = 1_000_000;

/// Longest a TCP connect may take (capped by `op_timeout`).
const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(5);

/// Where the objects live.
pub enum Backend {
    /// The embedded default: `object_store`'s `LocalFileSystem` rooted at a
    /// directory (created if missing). Writes are fsync'd before they are
    /// acknowledged. Object `a/b` is the file `<root>/a/b`.
    Local {
        /// The root directory.
        root: PathBuf,
    },
    /// An S3-compatible endpoint (AWS, MinIO, Ceph, s3s-fs, R2, ...).
    S3(S3Config),
    /// Any other `object_store` store, built by the embedder: Google Cloud
    /// Storage (`object_store::gcp::GoogleCloudStorageBuilder`, this crate's
    /// feature `gcp`), Azure Blob Storage
    /// (`object_store::azure::MicrosoftAzureBuilder`, feature `azure`), the
    /// in-memory store for tests, a prefixed or throttled wrapper. Build it
    /// with its own retries off (`RetryConfig { max_retries: 0, .. }`): this
    /// layer retries, counts and bounds them itself.
    Custom {
        /// The store.
        store: Arc<dyn ObjectStore>,
        /// True if the store enforces `PutMode::Create` itself (GCS, Azure,
        /// the in-memory store and the local filesystem do); false makes
        /// every write check with a `HEAD` first (see [`CreateCheck`]).
        conditional_put: bool,
    },
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Local { root } => f.debug_struct("Local").field("root", root).finish(),
            Backend::S3(s3) => f.debug_tuple("S3").field(s3).finish(),
            Backend::Custom {
                store,
                conditional_put,
            } => f
                .debug_struct("Custom")
                .field("store", &store.to_string())
                .field("conditional_put", conditional_put)
                .finish(),
        }
    }
}

/// An S3-compatible endpoint. The secret is never printed by `Debug`.
#[derive(Clone)]
pub struct S3Config {
    /// The endpoint URL (`http://127.0.0.1:9000`); `None` is AWS itself
    /// (`https://s3.<region>.amazonaws.com`). Requests are path-style
    /// (`<endpoint>/<bucket>/<key>`), which every S3-compatible server
    /// accepts.
    pub endpoint: Option<String>,
    /// The region (`us-east-1` unless set; most non-AWS servers ignore it
    /// but it is part of the signature).
    pub region: String,
    /// The bucket; it must exist.
    pub bucket: String,
    /// Access key id; `None` uses `object_store`'s credential chain
    /// (instance metadata, web identity).
    pub access_key_id: Option<String>,
    /// Secret access key (with `access_key_id`).
    pub secret_access_key: Option<String>,
    /// Allow `http://` endpoints (plain text: for loopback test servers
    /// only). Default false.
    pub allow_http: bool,
    /// True (the default) if the server honours `If-None-Match: *` on
    /// `PutObject` (AWS since 2024, MinIO, R2, s3s-fs): a write of an
    /// existing key is then refused by the server itself. False makes every
    /// write check with a `HEAD` first (see [`CreateCheck`]).
    pub conditional_put: bool,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .field("conditional_put", &self.conditional_put)
            .finish()
    }
}

impl S3Config {
    /// A bucket on AWS in `us-east-1`, credentials from the environment's
    /// chain, conditional puts on.
    pub fn new(bucket: impl Into<String>) -> S3Config {
        S3Config {
            endpoint: None,
            region: "us-east-1".to_owned(),
            bucket: bucket.into(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            conditional_put: true,
        }
    }

    /// Sets [`S3Config::endpoint`].
    #[must_use]
    pub fn endpoint(mut self, url: impl Into<String>) -> S3Config {
        self.endpoint = Some(url.into());
        self
    }

    /// Sets [`S3Config::region`].
    #[must_use]
    pub fn region(mut self, region: impl Into<String>) -> S3Config {
        self.region = region.into();
        self
    }

    /// Sets the static credentials.
    #[must_use]
    pub fn credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> S3Config {
        self.access_key_id = Some(access_key_id.into());
        self.secret_access_key = Some(secret_access_key.into());
        self
    }

    /// Sets [`S3Config::allow_http`].
    #[must_use]
    pub fn allow_http(mut self, allow: bool) -> S3Config {
        self.allow_http = allow;
        self
    }

    /// Sets [`S3Config::conditional_put`].
    #[must_use]
    pub fn conditional_put(mut self, enforced_by_server: bool) -> S3Config {
        self.conditional_put = enforced_by_server;
        self
    }
}

/// How a write makes sure it never replaces an object.
///
/// | mode | single `PUT` | multipart upload |
/// |---|---|---|
/// | `Conditional` | `PutMode::Create` (`If-None-Match: *`, or a no-replace link on the local filesystem): race-free | `HEAD`, then upload |
/// | `HeadFirst` | `HEAD`, then a plain `PUT` | `HEAD`, then upload |
///
/// `object_store` 0.14 has no conditional multipart completion, so a
/// multipart upload (files above the part size) always checks with a `HEAD`
/// first. That check races: two writers of the same key that both pass it
/// both upload and the last to complete wins. ringstore keys are per domain
/// and a domain has one writer (its shard), so the race needs a
/// misconfiguration (two shards claiming one domain) to happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateCheck {
    /// The store enforces create-only writes itself.
    Conditional,
    /// Check with a `HEAD` before writing.
    HeadFirst,
}

/// Validated settings, shared with the I/O thread.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) op_timeout: Duration,
    pub(crate) rate_floor_bytes_per_sec: u64,
    pub(crate) part_bytes: u64,
    pub(crate) attempts_max: u32,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) in_flight_max: usize,
    pub(crate) create_check: CreateCheck,
}

impl Settings {
    /// The time a call moving `bytes` is given: `op_timeout` plus the bytes
    /// at the floor rate.
    pub(crate) fn allowance(&self, bytes: u64) -> Duration {
        let transfer_ms = bytes.saturating_mul(1000) / self.rate_floor_bytes_per_sec;
        self.op_timeout
            .saturating_add(Duration::from_millis(transfer_ms))
    }
}

/// Builds a [`Remote`]; see [`Remote::builder`].
#[must_use = "a builder does nothing until `open` is called"]
#[derive(Debug)]
pub struct RemoteBuilder {
    backend: Backend,
    op_timeout: Duration,
    rate_floor_bytes_per_sec: u64,
    part_bytes: u64,
    attempts_max: u32,
    backoff_initial: Duration,
    backoff_max: Duration,
    in_flight_max: usize,
}

impl RemoteBuilder {
    pub(crate) fn new(backend: Backend) -> RemoteBuilder {
        RemoteBuilder {
            backend,
            op_timeout: OP_TIMEOUT_DEFAULT,
            rate_floor_bytes_per_sec: RATE_FLOOR_BYTES_PER_SEC_DEFAULT,
            part_bytes: PART_BYTES_DEFAULT,
            attempts_max: ATTEMPTS_MAX_DEFAULT,
            backoff_initial: BACKOFF_INITIAL_DEFAULT,
            backoff_max: BACKOFF_MAX_DEFAULT,
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
        }
    }

    /// Deadline of one call, retries included. Default
    /// [`OP_TIMEOUT_DEFAULT`], range [`OP_TIMEOUT_RANGE`].
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// The slowest transfer rate a call is given time for: moving `n` bytes
    /// extends its deadline by `n / rate`. Default
    /// [`RATE_FLOOR_BYTES_PER_SEC_DEFAULT`], range
    /// [`RATE_FLOOR_BYTES_PER_SEC_RANGE`].
    pub fn rate_floor_bytes_per_sec(mut self, bytes_per_sec: u64) -> Self {
        self.rate_floor_bytes_per_sec = bytes_per_sec;
        self
    }

    /// Part size of multipart uploads (and the threshold above which a file
    /// goes up in parts). Default [`PART_BYTES_DEFAULT`], range
    /// [`PART_BYTES_MIN`]..=[`PART_BYTES_MAX`].
    pub fn part_bytes(mut self, bytes: u64) -> Self {
        self.part_bytes = bytes;
        self
    }

    /// Attempts per call, the first included (1 disables retries). Default
    /// [`ATTEMPTS_MAX_DEFAULT`], range [`ATTEMPTS_MAX_RANGE`].
    pub fn attempts_max(mut self, attempts: u32) -> Self {
        self.attempts_max = attempts;
        self
    }

    /// Backoff before the first retry (then doubling) and its cap. Defaults
    /// [`BACKOFF_INITIAL_DEFAULT`] and [`BACKOFF_MAX_DEFAULT`], each within
    /// [`BACKOFF_RANGE`], initial at most max.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// Calls executing at once on the I/O thread. Default
    /// [`IN_FLIGHT_MAX_DEFAULT`], range [`IN_FLIGHT_MAX_RANGE`].
    pub fn in_flight_max(mut self, calls: usize) -> Self {
        self.in_flight_max = calls;
        self
    }

    /// Validates the settings, builds the store (creating a local root if
    /// missing) and starts the I/O thread. Blocking only for the one-time
    /// thread start; call it before (or outside) the reactors.
    pub fn open(self) -> RemoteResult<Remote> {
        let settings = self.validate()?;
        let (store, create_check, describe) = build_store(self.backend, &settings)?;
        Remote::start(
            store,
            Settings {
                create_check,
                ..settings
            },
            describe,
        )
    }

    fn validate(&self) -> RemoteResult<Settings> {
        in_range("op_timeout", self.op_timeout, OP_TIMEOUT_RANGE)?;
        in_range(
            "rate_floor_bytes_per_sec",
            self.rate_floor_bytes_per_sec,
            RATE_FLOOR_BYTES_PER_SEC_RANGE,
        )?;
        in_range(
            "part_bytes",
            self.part_bytes,
            (PART_BYTES_MIN, PART_BYTES_MAX),
        )?;
        in_range("attempts_max", self.attempts_max, ATTEMPTS_MAX_RANGE)?;
        in_range("backoff (initial)", self.backoff_initial, BACKOFF_RANGE)?;
        in_range("backoff (max)", self.backoff_max, BACKOFF_RANGE)?;
        if self.backoff_initial > self.backoff_max {
            return Err(RemoteError::config(
                "backoff",
                format!(
                    "initial {:?} is above max {:?}",
                    self.backoff_initial, self.backoff_max
                ),
            ));
        }
        in_range("in_flight_max", self.in_flight_max, IN_FLIGHT_MAX_RANGE)?;
        Ok(Settings {
            op_timeout: self.op_timeout,
            rate_floor_bytes_per_sec: self.rate_floor_bytes_per_sec,
            part_bytes: self.part_bytes,
            attempts_max: self.attempts_max,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            in_flight_max: self.in_flight_max,
            create_check: CreateCheck::Conditional,
        })
    }
}

fn in_range<T: PartialOrd + fmt::Debug>(
    setting: &'static str,
    value: T,
    (min, max): (T, T),
) -> RemoteResult<()> {
    if value < min || value > max {
        return Err(RemoteError::config(
            setting,
            format!("{value:?} is outside {min:?}..={max:?}"),
        ));
    }
    Ok(())
}

type Built = (Arc<dyn ObjectStore>, CreateCheck, String);

fn build_store(backend: Backend, settings: &Settings) -> RemoteResult<Built> {
    match backend {
        Backend::Local { root } => build_local(root),
        Backend::S3(s3) => build_s3(s3, settings),
        Backend::Custom {
            store,
            conditional_put,
        } => {
            let describe = store.to_string();
            Ok((store, create_check(conditional_put), describe))
        }
    }
}

fn create_check(conditional_put: bool) -> CreateCheck {
    if conditional_put {
        CreateCheck::Conditional
    } else {
        CreateCheck::HeadFirst
    }
}

fn build_local(root: PathBuf) -> RemoteResult<Built> {
    if root.as_os_str().is_empty() {
        return Err(RemoteError::config("local root", "empty path"));
    }
    // Durably in its parent too: an acknowledged put must not vanish with
    // a root directory a crash undid.
    ringstore_journal::storage::create_dir_all_durably_blocking(&root)
        .map_err(|e| RemoteError::local_io("mkdir", &root, e))?;
    let store = LocalFileSystem::new_with_prefix(&root)
        .map_err(|e| RemoteError::config("local root", format!("{}: {e}", root.display())))?
        // Acknowledged writes survive power loss, like a remote store's.
        // (Automatic cleanup of emptied directories stays off: it races with
        // a concurrent write creating a file in the directory it removes.)
        .with_fsync(true);
    let describe = format!("local:{}", root.display());
    Ok((Arc::new(store), CreateCheck::Conditional, describe))
}

fn build_s3(s3: S3Config, settings: &Settings) -> RemoteResult<Built> {
    if s3.bucket.is_empty() {
        return Err(RemoteError::config("S3Config::bucket", "empty"));
    }
    if s3.bucket.contains('/') {
        return Err(RemoteError::config(
            "S3Config::bucket",
            format!("{:?} contains '/'", s3.bucket),
        ));
    }
    if s3.region.is_empty() {
        return Err(RemoteError::config("S3Config::region", "empty"));
    }
    if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
        return Err(RemoteError::config(
            "S3Config::credentials",
            "set both access_key_id and secret_access_key, or neither",
        ));
    }
    if let Some(endpoint) = &s3.endpoint {
        let is_http = endpoint.starts_with("http://");
        if !is_http && !endpoint.starts_with("https://") {
            return Err(RemoteError::config(
                "S3Config::endpoint",
                format!("{endpoint:?} is not an http:// or https:// URL"),
            ));
        }
        if is_http && !s3.allow_http {
            return Err(RemoteError::config(
                "S3Config::allow_http",
                format!("endpoint {endpoint:?} is plain http; set allow_http to use it"),
            ));
        }
    }
    // No per-request timeout: a download's body may take far longer than
    // one op_timeout; the call's own deadline (which grows with the bytes)
    // bounds every request instead.
    let client = ClientOptions::new()
        .with_allow_http(s3.allow_http)
        .with_connect_timeout(settings.op_timeout.min(CONNECT_TIMEOUT_MAX))
        .with_timeout_disabled();
    // object_store's own retries are off: this layer retries, counts and
    // bounds them inside each call's deadline.
    let retry = RetryConfig {
        max_retries: 0,
        retry_timeout: settings.op_timeout,
        ..RetryConfig::default()
    };
    let conditional = if s3.conditional_put {
        S3ConditionalPut::ETagMatch
    } else {
        S3ConditionalPut::Disabled
    };
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&s3.bucket)
        .with_region(&s3.region)
        .with_allow_http(s3.allow_http)
        .with_client_options(client)
        .with_retry(retry)
        .with_conditional_put(conditional);
    if let Some(endpoint) = &s3.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_virtual_hosted_style_request(false);
    }
    if let (Some(id), Some(secret)) = (&s3.access_key_id, &s3.secret_access_key) {
        builder = builder
            .with_access_key_id(id)
            .with_secret_access_key(secret);
    }
    let store = builder
        .build()
        .map_err(|e| RemoteError::config("S3Config", e.to_string()))?;
    let describe = match &s3.endpoint {
        Some(endpoint) => format!("s3:{endpoint}/{}", s3.bucket),
        None => format!("s3://{}", s3.bucket),
    };
    Ok((Arc::new(store), create_check(s3.conditional_put), describe))
}
