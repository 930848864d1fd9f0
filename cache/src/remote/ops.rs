//! The operations, as they run on the I/O thread: writes (single `PUT` or
//! multipart), reads (streamed), `head`, `list`, `delete`, and the retry
//! loop they share.
//!
//! # Retries
//!
//! An attempt that fails with a transient error (`object_store`'s
//! `Generic`: the network, a 5xx, a refused connection) is tried again
//! after a jittered backoff ([`super::Backoff`]: a pause drawn from the
//! upper half of a step that starts at `backoff_initial` and doubles up to
//! `backoff_max`), at most `attempts_max` attempts in all, and never past the
//! call's deadline (a backoff that would end after it ends the call with
//! [`RemoteError::Unavailable`] instead). Anything else (not found, already
//! exists, denied) is final at once. `object_store`'s own retries are off so
//! that every retry is counted here.
//!
//! A multipart upload retries each *part* through `object_store`'s
//! part-level [`RetryPolicy`] with the same budget, so one lost part does not
//! resend the whole file; a failed start or completion restarts the upload
//! (after aborting the failed one, best effort: parts of an upload that
//! could not be aborted stay on the server until a lifecycle rule removes
//! them).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::{Backoff, FileDigest};

use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use futures_util::StreamExt;
use object_store::path::Path as StorePath;
use object_store::retry::{RetryContext, RetryFailure, RetryPolicy};
use object_store::{
    GetResult, ObjectMeta, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::config::{CreateCheck, LIST_ENTRIES_MAX, PARTS_MAX};
use super::error::{RemoteError, RemoteResult};
use super::thread::{Ctx, Deadline};

/// Parts of one multipart upload in flight at once: the next part is read
/// while earlier ones are on the wire, so a large file streams at the
/// store's bandwidth instead of one round trip per part.
pub(crate) const UPLOAD_PARTS_IN_FLIGHT: usize = 4;
/// A download's body reaches the reactor in pieces of at least this much
/// (but the last): the body arrives in small network chunks, and each piece
/// handed over costs the reactor a cross-thread wakeup.
pub(crate) const DOWNLOAD_PIECE_BYTES: usize = 1 << 20;

/// What one object in the store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The full object key.
    pub key: String,
    /// Its size.
    pub bytes: u64,
    /// When it was last written, as the store reports it.
    pub last_modified: SystemTime,
    /// The store's entity tag, if it has one.
    pub e_tag: Option<String>,
}

impl ObjectInfo {
    fn from_meta(meta: &ObjectMeta) -> ObjectInfo {
        ObjectInfo {
            key: meta.location.to_string(),
            bytes: meta.size,
            last_modified: SystemTime::from(meta.last_modified),
            e_tag: meta.e_tag.clone(),
        }
    }
}

/// What a write uploads.
pub(crate) enum Source {
    Bytes(Bytes),
    /// A local file; with a digest, the bytes read must match it or the
    /// upload is not completed.
    File(PathBuf, Option<FileDigest>),
}

/// A failed attempt: a store error (classified by [`retrying`]) or a final
/// error of our own.
enum Failure {
    Store(object_store::Error),
    Final(RemoteError),
}

impl From<object_store::Error> for Failure {
    fn from(error: object_store::Error) -> Failure {
        Failure::Store(error)
    }
}

/// Errors worth another attempt.
fn is_transient(error: &object_store::Error) -> bool {
    matches!(
        error,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    )
}

/// Maps a final store error to ours.
fn final_error(
    op: &'static str,
    key: &str,
    attempt: u32,
    error: object_store::Error,
) -> RemoteError {
    match error {
        object_store::Error::NotFound { .. } => RemoteError::NotFound {
            op,
            key: key.to_owned(),
        },
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            RemoteError::AlreadyExists {
                op,
                key: key.to_owned(),
                after_retry: attempt > 1,
            }
        }
        source => RemoteError::Store {
            op,
            key: key.to_owned(),
            source,
        },
    }
}

/// Runs `attempt(n)` for n = 1, 2, ... (see the module docs).
async fn retrying<T, F, Fut>(
    ctx: &Ctx,
    op: &'static str,
    key: &str,
    deadline: &Deadline,
    mut attempt: F,
) -> RemoteResult<T>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let settings = &ctx.settings;
    let mut backoff = Backoff::new(settings.backoff_initial, settings.backoff_max);
    let mut n = 1;
    loop {
        let error = match attempt(n).await {
            Ok(value) => return Ok(value),
            Err(Failure::Final(error)) => return Err(error),
            Err(Failure::Store(error)) => error,
        };
        if !is_transient(&error) {
            return Err(final_error(op, key, n, error));
        }
        let pause = backoff.next_pause();
        let out_of_time = Instant::now() + pause >= deadline.at();
        if n >= settings.attempts_max || out_of_time {
            return Err(RemoteError::Unavailable {
                op,
                key: key.to_owned(),
                attempts: n,
                source: error,
            });
        }
        tracing::debug!(op, key, attempt = n, %error, ?pause, "retrying");
        tokio::time::sleep(pause).await;
        n += 1;
        ctx.counters.retry(op);
    }
}

/// `object_store`'s part-level retry hook for multipart uploads: the same
/// budget as [`retrying`], per part.
struct PartRetry {
    ctx: Arc<Ctx>,
    op: &'static str,
    deadline: Deadline,
}

#[async_trait::async_trait]
impl RetryPolicy for PartRetry {
    async fn retry(&self, context: RetryContext) -> bool {
        let transient = match context.failure {
            RetryFailure::Status(status) => {
                status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408
            }
            RetryFailure::Transport(_) => true,
            _ => false,
        };
        let settings = &self.ctx.settings;
        let attempt = u32::try_from(context.attempt).unwrap_or(u32::MAX);
        if !transient || attempt >= settings.attempts_max {
            return false;
        }
        let backoff = Backoff::new(settings.backoff_initial, settings.backoff_max)
            .pause_before_retry(attempt);
        if Instant::now() + backoff >= self.deadline.at() {
            return false;
        }
        tokio::time::sleep(backoff).await;
        self.ctx.counters.retry(self.op);
        true
    }
}

impl std::fmt::Debug for PartRetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartRetry")
            .field("op", &self.op)
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// Writes an object that must not exist yet. Returns its size.
pub(crate) async fn put(
    ctx: Arc<Ctx>,
    op: &'static str,
    key: String,
    path: StorePath,
    source: Source,
    deadline: Deadline,
) -> RemoteResult<u64> {
    let bytes = match &source {
        Source::Bytes(data) => data.len() as u64,
        Source::File(file, expected) => {
            let bytes = file_size(file).await?;
            // Another size than checked: nothing to read or send.
            if let Some(expected) = expected.filter(|expected| expected.bytes != bytes) {
                return Err(RemoteError::SourceChanged {
                    op,
                    key,
                    path: file.clone(),
                    expected_bytes: expected.bytes,
                    expected_crc32: expected.crc32,
                    read_bytes: bytes,
                    read_crc32: None,
                });
            }
            bytes
        }
    };
    deadline.extend_to(ctx.settings.allowance(bytes));
    let part_bytes = ctx.settings.part_bytes;
    let multipart = bytes > part_bytes;
    if bytes.div_ceil(part_bytes) > PARTS_MAX {
        return Err(RemoteError::TooLarge {
            key,
            bytes,
            bytes_max: part_bytes.saturating_mul(PARTS_MAX),
        });
    }
    let head_first = multipart || ctx.settings.create_check == CreateCheck::HeadFirst;
    let (ctx_ref, key_ref, path_ref, source_ref) = (&ctx, key.as_str(), &path, &source);
    let deadline_ref = &deadline;
    retrying(
        ctx_ref,
        op,
        key_ref,
        deadline_ref,
        move |attempt| async move {
            if head_first {
                ctx_ref.counters.head();
                match ctx_ref.store.head(path_ref).await {
                    Ok(_) => {
                        return Err(Failure::Final(RemoteError::AlreadyExists {
                            op,
                            key: key_ref.to_owned(),
                            after_retry: attempt > 1,
                        }))
                    }
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(error) => return Err(Failure::Store(error)),
                }
            }
            if multipart {
                put_multipart(ctx_ref, op, path_ref, source_ref, bytes, deadline_ref).await
            } else {
                let payload = match source_ref {
                    Source::Bytes(data) => PutPayload::from(data.clone()),
                    Source::File(file, expected) => {
                        let data = read_small_file(file, bytes).await?;
                        if let Some(expected) = expected {
                            let read = FileDigest {
                                bytes,
                                crc32: crc32fast::hash(&data),
                            };
                            check_digest(op, key_ref, file, *expected, read)?;
                        }
                        PutPayload::from(data)
                    }
                };
                let mode = match ctx_ref.settings.create_check {
                    CreateCheck::Conditional => PutMode::Create,
                    // Checked by the HEAD above.
                    CreateCheck::HeadFirst => PutMode::Overwrite,
                };
                ctx_ref
                    .store
                    .put_opts(path_ref, payload, PutOptions::from(mode))
                    .await?;
                Ok(())
            }
        },
    )
    .await?;
    ctx.counters.put(bytes, multipart);
    Ok(bytes)
}

async fn put_multipart(
    ctx: &Arc<Ctx>,
    op: &'static str,
    path: &StorePath,
    source: &Source,
    bytes: u64,
    deadline: &Deadline,
) -> Result<(), Failure> {
    let policy = PartRetry {
        ctx: Arc::clone(ctx),
        op,
        deadline: deadline.clone(),
    };
    let options = PutMultipartOptions::default().with_retry_policy(Arc::new(policy));
    let mut upload = ctx.store.put_multipart_opts(path, options).await?;
    let sent = async {
        let part_bytes = ctx.settings.part_bytes;
        let mut file = match source {
            Source::File(file, _) => Some((
                file,
                tokio::fs::File::open(file)
                    .await
                    .map_err(|e| Failure::Final(RemoteError::local_io("open", file, e)))?,
            )),
            Source::Bytes(_) => None,
        };
        // The parts are read in order: their CRC is the file's.
        let mut read_crc32 = crc32fast::Hasher::new();
        let mut offset = 0u64;
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        // Bounded: PARTS_MAX parts at most (checked by the caller).
        while offset < bytes {
            let len = part_bytes.min(bytes - offset);
            let part = match (source, file.as_mut()) {
                (Source::Bytes(data), _) => data.slice(offset as usize..(offset + len) as usize),
                (Source::File(_, _), Some((name, handle))) => {
                    let part = read_part(name, handle, len).await?;
                    read_crc32.update(&part);
                    part
                }
                (Source::File(name, _), None) => {
                    return Err(Failure::Final(RemoteError::local_io(
                        "open",
                        name,
                        std::io::Error::other("file not open"),
                    )))
                }
            };
            in_flight.push(upload.put_part(PutPayload::from(part)));
            offset += len;
            while in_flight.len() >= UPLOAD_PARTS_IN_FLIGHT {
                if let Some(sent) = in_flight.next().await {
                    sent?;
                }
            }
        }
        while let Some(sent) = in_flight.next().await {
            sent?;
        }
        if let Source::File(name, Some(expected)) = source {
            let read = FileDigest {
                bytes,
                crc32: read_crc32.finalize(),
            };
            // Before the complete: a mismatch aborts the upload below.
            check_digest(op, path.as_ref(), name, *expected, read)?;
        }
        upload.complete().await?;
        Ok(())
    }
    .await;
    if sent.is_err() {
        if let Err(error) = upload.abort().await {
            tracing::warn!(%path, %error, "aborting a failed multipart upload failed; its parts stay on the server");
        }
    }
    sent
}

async fn file_size(file: &PathBuf) -> RemoteResult<u64> {
    let meta = tokio::fs::metadata(file)
        .await
        .map_err(|e| RemoteError::local_io("stat", file, e))?;
    if !meta.is_file() {
        return Err(RemoteError::local_io(
            "stat",
            file,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    Ok(meta.len())
}

fn changed_size(file: &PathBuf, expected: u64) -> Failure {
    Failure::Final(RemoteError::local_io(
        "read",
        file,
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the file changed size during the upload (expected {expected} bytes)"),
        ),
    ))
}

/// A file's bytes read for an upload against the digest its caller took:
/// a mismatch is final (reading again would upload other bytes than the
/// ones the caller checked).
fn check_digest(
    op: &'static str,
    key: &str,
    file: &std::path::Path,
    expected: FileDigest,
    read: FileDigest,
) -> Result<(), Failure> {
    if read == expected {
        return Ok(());
    }
    Err(Failure::Final(RemoteError::SourceChanged {
        op,
        key: key.to_owned(),
        path: file.to_path_buf(),
        expected_bytes: expected.bytes,
        expected_crc32: expected.crc32,
        read_bytes: read.bytes,
        read_crc32: Some(read.crc32),
    }))
}

async fn read_small_file(file: &PathBuf, bytes: u64) -> Result<Bytes, Failure> {
    let data = tokio::fs::read(file)
        .await
        .map_err(|e| Failure::Final(RemoteError::local_io("read", file, e)))?;
    if data.len() as u64 != bytes {
        return Err(changed_size(file, bytes));
    }
    Ok(Bytes::from(data))
}

async fn read_part(
    name: &PathBuf,
    handle: &mut tokio::fs::File,
    len: u64,
) -> Result<Bytes, Failure> {
    let mut buf = BytesMut::zeroed(len as usize);
    match handle.read_exact(&mut buf).await {
        Ok(_) => Ok(buf.freeze()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(changed_size(name, len)),
        Err(e) => Err(Failure::Final(RemoteError::local_io("read", name, e))),
    }
}

/// Starts a download: the first response, with the object's size.
async fn open_get(
    ctx: &Ctx,
    op: &'static str,
    key: &str,
    path: &StorePath,
    deadline: &Deadline,
) -> RemoteResult<GetResult> {
    let result = retrying(ctx, op, key, deadline, |_| async {
        Ok(ctx.store.get(path).await?)
    })
    .await?;
    ctx.counters.get();
    deadline.extend_to(ctx.settings.allowance(result.meta.size));
    Ok(result)
}

/// The body of a download, chunk by chunk, checked against the announced
/// size (a body cut short is an error, never a short object).
struct Body<'a> {
    ctx: &'a Ctx,
    key: &'a str,
    stream: futures_util::stream::BoxStream<'static, object_store::Result<Bytes>>,
    expected: u64,
    received: u64,
}

impl<'a> Body<'a> {
    fn new(ctx: &'a Ctx, key: &'a str, result: GetResult) -> Body<'a> {
        Body {
            ctx,
            key,
            expected: result.meta.size,
            stream: result.into_stream(),
            received: 0,
        }
    }

    /// The next chunk; `None` once the whole object has come.
    async fn next(&mut self) -> RemoteResult<Option<Bytes>> {
        let Some(chunk) = self.stream.next().await else {
            if self.received != self.expected {
                return Err(self.truncated());
            }
            return Ok(None);
        };
        let chunk = chunk.map_err(|source| RemoteError::Unavailable {
            op: "get",
            key: self.key.to_owned(),
            attempts: 1,
            source,
        })?;
        self.received += chunk.len() as u64;
        self.ctx.counters.downloaded(chunk.len() as u64);
        if self.received > self.expected {
            return Err(self.truncated());
        }
        Ok(Some(chunk))
    }

    fn truncated(&self) -> RemoteError {
        RemoteError::Truncated {
            key: self.key.to_owned(),
            received_bytes: self.received,
            expected_bytes: self.expected,
        }
    }
}

/// Streams an object into `chunks`, after announcing it on `head`.
pub(crate) async fn get_stream(
    ctx: Arc<Ctx>,
    key: String,
    path: StorePath,
    deadline: Deadline,
    head: oneshot::Sender<ObjectInfo>,
    chunks: mpsc::Sender<Bytes>,
) -> RemoteResult<()> {
    let result = open_get(&ctx, "get", &key, &path, &deadline).await?;
    if head.send(ObjectInfo::from_meta(&result.meta)).is_err() {
        return Ok(());
    }
    let mut body = Body::new(&ctx, &key, result);
    let mut piece = BytesMut::new();
    // Bounded by the object's size: every chunk holds at least one byte.
    while let Some(chunk) = body.next().await? {
        if piece.is_empty() && chunk.len() >= DOWNLOAD_PIECE_BYTES {
            piece = BytesMut::from(chunk);
        } else {
            piece.extend_from_slice(&chunk);
        }
        if piece.len() >= DOWNLOAD_PIECE_BYTES && chunks.send(piece.split().freeze()).await.is_err()
        {
            // The reader was dropped: nobody wants the rest.
            return Ok(());
        }
    }
    if !piece.is_empty() {
        let _ = chunks.send(piece.freeze()).await;
    }
    Ok(())
}

/// Downloads an object into memory, refusing one above `bytes_max`.
pub(crate) async fn get_bytes(
    ctx: Arc<Ctx>,
    key: String,
    path: StorePath,
    deadline: Deadline,
    bytes_max: u64,
) -> RemoteResult<Bytes> {
    let result = open_get(&ctx, "get", &key, &path, &deadline).await?;
    let size = result.meta.size;
    if size > bytes_max {
        return Err(RemoteError::TooLarge {
            key,
            bytes: size,
            bytes_max,
        });
    }
    let capacity = usize::try_from(size).unwrap_or(usize::MAX);
    let mut buf = BytesMut::with_capacity(capacity);
    let mut body = Body::new(&ctx, &key, result);
    while let Some(chunk) = body.next().await? {
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Downloads an object into a new local file (created with `O_EXCL`;
/// removed again if the download fails). fsyncs it before returning.
pub(crate) async fn get_to_file(
    ctx: Arc<Ctx>,
    key: String,
    path: StorePath,
    deadline: Deadline,
    file: PathBuf,
) -> RemoteResult<u64> {
    let result = open_get(&ctx, "get", &key, &path, &deadline).await?;
    let size = result.meta.size;
    let out = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file)
        .await
        .map_err(|e| RemoteError::local_io("create", &file, e))?;
    // One blocking write per piece, not per network chunk.
    let mut out = tokio::io::BufWriter::with_capacity(DOWNLOAD_PIECE_BYTES, out);
    let written = async {
        let mut body = Body::new(&ctx, &key, result);
        while let Some(chunk) = body.next().await? {
            out.write_all(&chunk)
                .await
                .map_err(|e| RemoteError::local_io("write", &file, e))?;
        }
        out.flush()
            .await
            .map_err(|e| RemoteError::local_io("write", &file, e))?;
        out.get_ref()
            .sync_all()
            .await
            .map_err(|e| RemoteError::local_io("fsync", &file, e))
    }
    .await;
    if let Err(error) = written {
        drop(out);
        if let Err(remove) = tokio::fs::remove_file(&file).await {
            tracing::warn!(file = %file.display(), %remove, "removing a failed download");
        }
        return Err(error);
    }
    Ok(size)
}

pub(crate) async fn head(
    ctx: Arc<Ctx>,
    key: String,
    path: StorePath,
    deadline: Deadline,
) -> RemoteResult<ObjectInfo> {
    ctx.counters.head();
    let meta = retrying(&ctx, "head", &key, &deadline, |_| async {
        Ok(ctx.store.head(&path).await?)
    })
    .await?;
    Ok(ObjectInfo::from_meta(&meta))
}

/// Deletes an object. Deleting a missing key succeeds (S3 cannot tell the
/// difference; the local store can, and is made to agree).
pub(crate) async fn delete(
    ctx: Arc<Ctx>,
    key: String,
    path: StorePath,
    deadline: Deadline,
) -> RemoteResult<()> {
    ctx.counters.delete();
    let deleted = retrying(&ctx, "delete", &key, &deadline, |_| async {
        Ok(ctx.store.delete(&path).await?)
    })
    .await;
    match deleted {
        Err(RemoteError::NotFound { .. }) => Ok(()),
        other => other,
    }
}

/// Lists every object under `prefix` (whole segments: `a/b` lists `a/b/..`,
/// not `a/bc`), at most [`LIST_ENTRIES_MAX`]. A failure part-way restarts
/// the listing.
pub(crate) async fn list(
    ctx: Arc<Ctx>,
    prefix: String,
    path: Option<StorePath>,
    deadline: Deadline,
) -> RemoteResult<Vec<ObjectInfo>> {
    ctx.counters.list();
    let (ctx_ref, prefix_ref, path_ref) = (&*ctx, prefix.as_str(), path.as_ref());
    retrying(
        ctx_ref,
        "list",
        prefix_ref,
        &deadline,
        move |_| async move {
            let mut stream = ctx_ref.store.list(path_ref);
            let mut entries = Vec::new();
            while let Some(meta) = stream.next().await {
                let meta = meta?;
                if entries.len() >= LIST_ENTRIES_MAX {
                    return Err(Failure::Final(RemoteError::ListTooLong {
                        prefix: prefix_ref.to_owned(),
                        entries_max: LIST_ENTRIES_MAX,
                    }));
                }
                entries.push(ObjectInfo::from_meta(&meta));
            }
            Ok(entries)
        },
    )
    .await
}
