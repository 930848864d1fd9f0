//! `ringstore-bench remote`: snapshots in object storage (issue 7). For each
//! store — an s3s-fs server on loopback and `LocalFileSystem` on the same
//! disk — a broker state of `--state-mib` (default 1 GiB encoded) is built
//! in a shard, checkpointed, and its snapshot uploaded; then the shard's
//! directory is deleted and the shard rebuilt from the store
//! (`cold_restore::restore`: list, download, verify every checksum, restore
//! the state, reset). Every workload is bracketed by durable-write probes;
//! the raw sequential write and read of the disk are measured first, since
//! both stores end on it.
//!
//! Figures: upload MB/s (snapshot bytes over the time from the checkpoint's
//! end to the upload's end), cold-restore MB/s (bytes downloaded over the
//! restore's whole time) and the restore time itself. Next to them, the
//! store's own transfer rates through the same `Remote` in the same run: a
//! plain `put_file` of a file of the snapshot's size and a `get_to_file` of
//! it back (what the engine's upload and the restore's download are bound
//! by).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use ringstore::broker::Metadata;
use ringstore::object_store::{Remote, S3Config};
use ringstore::{CheckpointPolicy, ObjectStoreSettings, Shard, UploadMode};
use serde::Serialize;

use crate::cmd_device::{
    CommonArgs, SEQ_READ_BLOCK_BYTES, SEQ_READ_QUEUE_DEPTH, SEQ_WRITE_BLOCK_BYTES,
    SEQ_WRITE_QUEUE_DEPTH,
};
use crate::cmd_journal::on_reactor;
use crate::device::{self, mb_per_s, SeqResult};
use crate::harness::{Harness, ProbeBracket};
use crate::report::{fmt_num, round3, Table};

/// Credentials and bucket of the loopback server.
const S3_ACCESS_KEY: &str = "ringstore";
const S3_SECRET_KEY: &str = "ringstore-secret";
const S3_BUCKET: &str = "ringstore-bench";
/// How long the server may take to accept connections.
const SERVER_READY_WAIT: Duration = Duration::from_secs(20);
/// Longest wait for one upload of the whole snapshot.
const UPLOAD_WAIT_MAX: Duration = Duration::from_secs(600);
/// Deadline of each object-store request (a 1 GiB multipart upload is many
/// part requests, each under it).
const OP_TIMEOUT: Duration = Duration::from_secs(120);

/// Arguments of `ringstore-bench remote`.
#[derive(Args, Debug, Clone)]
pub struct RemoteArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Encoded size of the state in MiB [default: 1024, or 128 with --quick].
    #[arg(long)]
    pub state_mib: Option<u64>,
}

/// One store's figures.
#[derive(Debug, Serialize)]
struct StoreFigures {
    store: String,
    snapshot_bytes: u64,
    upload_seconds: f64,
    upload_mb_per_s: f64,
    upload_probes: ProbeBracket,
    restore_seconds: f64,
    restore_downloaded_bytes: u64,
    restore_mb_per_s: f64,
    restore_probes: ProbeBracket,
    raw_put_mb_per_s: f64,
    raw_get_mb_per_s: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    state_mib: u64,
    seq_write: SeqResult,
    seq_read: SeqResult,
    stores: Vec<StoreFigures>,
}

/// The s3s-fs binary: `$RINGSTORE_S3S_FS`, `PATH`, or `~/.cargo/bin`.
fn s3s_fs_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("RINGSTORE_S3S_FS") {
        return Ok(PathBuf::from(path));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("s3s-fs"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/s3s-fs"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("s3s-fs not found: run scripts/s3-server.sh install"))
}

/// An s3s-fs process on a free loopback port, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(dir: &Path) -> Result<Server> {
        std::fs::create_dir_all(dir.join(S3_BUCKET))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(s3s_fs_binary()?)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start s3s-fs")?;
        let server = Server { child, port };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > SERVER_READY_WAIT {
                bail!("s3s-fs did not accept connections on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    fn remote(&self) -> Result<Remote> {
        let config = S3Config::new(S3_BUCKET)
            .endpoint(format!("http://127.0.0.1:{}", self.port))
            .region("us-east-1")
            .credentials(S3_ACCESS_KEY, S3_SECRET_KEY)
            .allow_http(true);
        Ok(Remote::s3(config).op_timeout(OP_TIMEOUT).open()?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn settings(remote: Remote) -> ObjectStoreSettings {
    ObjectStoreSettings::new(remote).mode(UploadMode::Background)
}

/// Builds the state, checkpoints, waits for the upload. Returns the
/// snapshot's bytes, the upload time and the shard's domain.
fn build_and_upload(
    dir: &Path,
    remote: Remote,
    state_bytes: u64,
) -> Result<(u64, Duration, uuid::Uuid)> {
    let dir = dir.to_owned();
    on_reactor("rsb-remote-upload", move || async move {
        let policy = CheckpointPolicy {
            automatic: false,
            ..Default::default()
        };
        let shard = crate::cmd_engine::shard_builder(&dir, policy)
            .object_store(settings(remote))
            .open()
            .await?;
        crate::cmd_engine::build_state(&shard, state_bytes).await?;
        let outcome = shard.checkpoint().await?;
        let snapshot = outcome
            .snapshot
            .ok_or_else(|| anyhow!("the checkpoint wrote no snapshot"))?;
        let started = Instant::now();
        if !shard.wait_for_upload(UPLOAD_WAIT_MAX).await {
            bail!(
                "the upload did not finish within {UPLOAD_WAIT_MAX:?}: {:?}",
                shard.stats()
            );
        }
        let upload = started.elapsed();
        let domain = shard.domain();
        shard.close().await?;
        Ok((snapshot.file_bytes, upload, domain))
    })
}

/// Rebuilds the shard in `dir` (deleted first) from the store.
fn cold_restore(dir: &Path, remote: Remote, domain: uuid::Uuid) -> Result<(Duration, u64)> {
    crate::harness::remove_path(dir)?;
    let dir = dir.to_owned();
    on_reactor("rsb-remote-restore", move || async move {
        let policy = CheckpointPolicy {
            automatic: false,
            ..Default::default()
        };
        let builder = crate::cmd_engine::shard_builder(&dir, policy).object_store(settings(remote));
        let (shard, report): (Shard<Metadata>, _) =
            ringstore::cold_restore::restore(builder, domain).await?;
        shard.close().await?;
        if !report.skipped.is_empty() {
            bail!("generations were skipped: {:?}", report.skipped);
        }
        Ok((report.elapsed, report.downloaded_bytes))
    })
}

fn run_store(
    harness: &mut Harness,
    name: &str,
    remote: Remote,
    state_bytes: u64,
) -> Result<StoreFigures> {
    let dir = harness.path(&format!("remote-{name}-shard"));
    crate::harness::remove_path(&dir)?;
    harness.step(format!(
        "{name}: build {} MiB, checkpoint, upload",
        state_bytes >> 20
    ));
    let (snapshot_bytes, upload, domain) = build_and_upload(&dir, remote.clone(), state_bytes)?;
    let upload_probes = harness.bracket()?;
    harness.step(format!("{name}: cold restore"));
    let (restore, downloaded) = cold_restore(&dir, remote.clone(), domain)?;
    let restore_probes = harness.bracket()?;
    crate::harness::remove_path(&dir)?;
    harness.step(format!("{name}: plain put_file and get_to_file"));
    let (raw_put, raw_get) = raw_transfer(harness, &remote, snapshot_bytes)?;
    futures_lite::future::block_on(remote.shutdown())?;
    Ok(StoreFigures {
        store: name.to_owned(),
        snapshot_bytes,
        upload_seconds: round3(upload.as_secs_f64()),
        upload_mb_per_s: mb_per_s(snapshot_bytes, upload).round(),
        upload_probes,
        restore_seconds: round3(restore.as_secs_f64()),
        restore_downloaded_bytes: downloaded,
        restore_mb_per_s: mb_per_s(downloaded, restore).round(),
        restore_probes,
        raw_put_mb_per_s: mb_per_s(snapshot_bytes, raw_put).round(),
        raw_get_mb_per_s: mb_per_s(snapshot_bytes, raw_get).round(),
    })
}

/// A file of `bytes` up and back down through `remote` alone: the
/// transfer limit the engine's figures compare with.
fn raw_transfer(harness: &Harness, remote: &Remote, bytes: u64) -> Result<(Duration, Duration)> {
    let source = harness.path("remote-raw-source.dat");
    let back = harness.path("remote-raw-back.dat");
    crate::harness::remove_path(&back)?;
    let mut data = vec![0u8; bytes as usize];
    device::fill_pattern(&mut data, bytes);
    std::fs::write(&source, &data)?;
    let key = format!("raw-{}", std::process::id());
    let started = Instant::now();
    futures_lite::future::block_on(remote.put_file(&key, &source))?;
    let put = started.elapsed();
    let started = Instant::now();
    futures_lite::future::block_on(remote.get_to_file(&key, &back))?;
    let get = started.elapsed();
    futures_lite::future::block_on(remote.delete(&key))?;
    crate::harness::remove_path(&source)?;
    crate::harness::remove_path(&back)?;
    Ok((put, get))
}

pub fn run(args: &RemoteArgs) -> Result<()> {
    let state_mib = args
        .state_mib
        .unwrap_or(if args.common.quick { 128 } else { 1024 });
    let state_bytes = state_mib << 20;
    let mut harness = Harness::new(&args.common.dir, 14)?;

    harness.step("device: sequential write");
    let raw = harness.path("remote-raw.dat");
    let seq_bytes = state_bytes.next_multiple_of(SEQ_WRITE_BLOCK_BYTES as u64);
    let seq_write = device::seq_write(
        &raw,
        seq_bytes,
        SEQ_WRITE_BLOCK_BYTES,
        SEQ_WRITE_QUEUE_DEPTH,
    )?;
    harness.step("device: sequential read");
    let seq_read = device::seq_read(&raw, seq_bytes, SEQ_READ_BLOCK_BYTES, SEQ_READ_QUEUE_DEPTH)?;
    crate::harness::remove_path(&raw)?;
    let _ = harness.bracket()?;

    let server_dir = harness.path("remote-s3");
    crate::harness::remove_path(&server_dir)?;
    let server = Server::start(&server_dir)?;
    let s3 = run_store(
        &mut harness,
        "s3s-fs (loopback)",
        server.remote()?,
        state_bytes,
    )?;
    drop(server);
    crate::harness::remove_path(&server_dir)?;

    let local_root = harness.path("remote-local");
    crate::harness::remove_path(&local_root)?;
    let local = Remote::local(&local_root).op_timeout(OP_TIMEOUT).open()?;
    let local = run_store(&mut harness, "LocalFileSystem", local, state_bytes)?;
    crate::harness::remove_path(&local_root)?;

    let report = Report {
        state_mib,
        seq_write,
        seq_read,
        stores: vec![s3, local],
    };
    print_table(&report);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn print_table(report: &Report) {
    let mut headings = vec![
        "store",
        "snapshot MB",
        "upload MB/s",
        "upload s",
        "restore MB/s",
        "restore s",
        "plain put / get MB/s",
    ];
    headings.extend(ProbeBracket::CELL_HEADINGS);
    let mut table = Table::new(headings);
    for store in &report.stores {
        let mut cells = vec![
            store.store.clone(),
            fmt_num(store.snapshot_bytes as f64 / 1e6),
            fmt_num(store.upload_mb_per_s),
            fmt_num(store.upload_seconds),
            fmt_num(store.restore_mb_per_s),
            fmt_num(store.restore_seconds),
            format!(
                "{} / {}",
                fmt_num(store.raw_put_mb_per_s),
                fmt_num(store.raw_get_mb_per_s)
            ),
        ];
        cells.extend(store.restore_probes.cells());
        table.row(cells);
    }
    println!("{}", table.render());
    println!(
        "disk: raw sequential write {} MB/s, read {} MB/s",
        fmt_num(report.seq_write.mb_per_s),
        fmt_num(report.seq_read.mb_per_s)
    );
}
