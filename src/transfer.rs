//! Executes per-file work: verify, hash, upload (single PUT or parallel
//! multipart), with the object's metadata.
//!
//! Concurrency: the caller holds one permit of the shared request semaphore
//! for each running job; a multipart job takes extra permits only when they
//! are free (`try_acquire`), so it speeds up when the pipe is idle and never
//! waits on other jobs (no deadlock). Memory: small files (up to
//! [`SMALL_BODY`]) are read once into memory and sent from there; larger
//! bodies and parts stream from disk, after one hashing pass that computes
//! the whole-file MD5 (for `md5chksum`) and each part's Content-MD5.
//! A file that changes while it is sent is detected by re-stat (and by the
//! server's Content-MD5 check) and re-sent; a failed multipart upload is
//! aborted. A second destination on the primary's service copies objects
//! the primary already holds on the server (CopyObject, or UploadPartCopy
//! above the multipart threshold) instead of sending the bytes again.

use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::CompletedPart;
use aws_smithy_types::body::SdkBody;
use md5::{Digest, Md5};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::checksum::{Algorithm, Checksum};
use crate::config::TransferConfig;
use crate::keys::Location;
use crate::plan::{self, Decision, RemoteFacts};
use crate::scan::LocalFile;
use crate::state::Record;
use crate::store::{Blame, ObjectInfo, PartCheck, PutMeta, Store, StoreError};

/// Files up to this size are read into memory once (hash and body).
pub const SMALL_BODY: u64 = 256 << 10;
/// Parts in flight for one multipart upload, at most.
const MAX_PARALLEL_PARTS: usize = 8;
/// Without state, files up to this size are hashed and compared with a
/// plain-MD5 ETag from the listing instead of sending a HEAD request.
const HASH_BEFORE_HEAD: u64 = 8 << 20;
/// Why an object is kept: its bytes are the file's.
const SAME: &str = "same content";
/// Why an object is kept: its bytes are the file's, and its metadata, which
/// said otherwise, was put right by a copy on the server.
const REPAIRED: &str = "same content; its md5chksum/mtime metadata was put right on the server";
/// Attempts for a file that keeps changing while it is sent.
const CHANGE_ATTEMPTS: u32 = 3;
/// The reason given for an upload of a file that grew while it was sent.
pub const GREW: &str = "grew while it was sent: its first bytes went, the rest follows";
/// CopyObject's limit; larger objects are uploaded again instead.
pub const MAX_COPY: u64 = 5 << 30;

/// Why an upload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the file changed while it was being uploaded")]
    Changed,
    #[error("the file disappeared before it could be uploaded")]
    Vanished,
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl UploadError {
    /// Whose problem this is: anything but a store error is about the
    /// file.
    pub fn blame(&self) -> Blame {
        match self {
            UploadError::Store(e) => e.blame(),
            _ => Blame::Request,
        }
    }
}

/// One file to bring up to date.
#[derive(Debug)]
pub struct Job {
    pub file: LocalFile,
    pub key: String,
    pub decision: Decision,
    pub remote: Option<ObjectInfo>,
    pub state: Option<Record>,
    /// A destination that copies from the primary: when the primary does
    /// not hold the file as it is yet, answer [`Outcome::Behind`] instead
    /// of uploading (`watch`, where the primary's upload is under way).
    pub wait_for_primary: bool,
    /// The header rules for it changed: when the content is found the
    /// same, the object gets the new headers by a copy onto itself.
    pub restyle: bool,
}

/// What became of a job.
#[derive(Debug)]
pub enum Outcome {
    Uploaded {
        record: Record,
        elapsed: Duration,
        reason: &'static str,
    },
    /// A server-side copy of `from` (a renamed file's old key).
    Copied {
        record: Record,
        elapsed: Duration,
        from: String,
    },
    /// Content already there; the record describes it.
    Unchanged {
        record: Record,
        why: &'static str,
    },
    /// A dry run: what would be sent. `from` is the primary's object a
    /// further destination on its service would copy on the server.
    WouldUpload {
        reason: &'static str,
        from: Option<String>,
    },
    /// The primary does not hold the file as it is yet (see
    /// [`Job::wait_for_primary`]).
    Behind,
    Vanished,
    Failed(UploadError),
}

/// Why a destination did not copy from the primary.
enum NoCopy {
    /// The primary does not hold the file as it is now.
    Behind,
    /// The server will not copy it, or nothing vouches for the content.
    Refused,
}

/// Why an unchanged file's object is written: new header rules.
pub const RESTYLED: &str = "headers changed";

/// Uploads files to one bucket.
#[derive(Clone)]
pub struct Uploader {
    store: Store,
    bucket: String,
    prefix: String,
    cfg: Arc<TransferConfig>,
    requests: Arc<Semaphore>,
    /// The primary destination, on the same service and readable with the
    /// same credentials: a file it already holds is copied from it on the
    /// server instead of being uploaded again.
    primary: Option<Arc<(Location, Store)>>,
    open_uploads: Option<OpenUploads>,
}

/// Multipart uploads under way, one small file each in a directory beside
/// the state database, written before the first part is sent: a run that
/// is killed leaves them behind, and the next run aborts them
/// ([`OpenUploads::left`]).
#[derive(Clone, Debug)]
pub struct OpenUploads(PathBuf);

impl OpenUploads {
    pub fn new(dir: PathBuf) -> OpenUploads {
        OpenUploads(dir)
    }

    fn marker(&self, upload_id: &str) -> PathBuf {
        let digest: [u8; 16] = Md5::digest(upload_id.as_bytes()).into();
        let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.0.join(name)
    }

    /// Best effort: without the record, a crash leaves the parts to the
    /// bucket's lifecycle rules, as before. Written whole or not at all
    /// (a temporary file renamed into place); the upload id comes first,
    /// as it holds no newline and a key may.
    fn record(&self, key: &str, upload_id: &str) {
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.0)?;
            let marker = self.marker(upload_id);
            let tmp = marker.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(format!("{upload_id}\n{key}").as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &marker)
        };
        let _ = write();
    }

    pub fn forget(&self, upload_id: &str) {
        let _ = std::fs::remove_file(self.marker(upload_id));
    }

    /// The uploads a killed run left: (key, upload id). Half-written
    /// records (a kill while writing one) are removed.
    pub fn left(&self) -> Vec<(String, String)> {
        let Ok(dir) = std::fs::read_dir(&self.0) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in dir.filter_map(Result::ok) {
            let path = entry.path();
            let parsed = std::fs::read_to_string(&path).ok().and_then(|text| {
                let (id, key) = text.split_once('\n')?;
                (!id.is_empty() && !key.is_empty() && path.extension().is_none())
                    .then(|| (key.to_string(), id.to_string()))
            });
            match parsed {
                Some(upload) => out.push(upload),
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        out
    }
}

fn stat(path: &Path) -> Result<(u64, i64), UploadError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok((m.len(), crate::scan::mtime_ns(&m))),
        Ok(_) => Err(UploadError::Vanished),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(UploadError::Vanished),
        Err(e) => Err(UploadError::Io(format!("cannot stat: {e}"))),
    }
}

fn io_err(e: std::io::Error) -> UploadError {
    if e.kind() == std::io::ErrorKind::NotFound {
        UploadError::Vanished
    } else {
        UploadError::Io(format!("cannot read: {e}"))
    }
}

/// The MD5 of a whole file of `size` bytes.
pub fn hash_file(path: &Path, size: u64) -> Result<[u8; 16], UploadError> {
    hash_range(path, 0, size, true)
}

/// The MD5 of the first `size` bytes of a file; bytes after them (a file
/// that grew) do not matter.
fn hash_prefix(path: &Path, size: u64) -> Result<[u8; 16], UploadError> {
    hash_range(path, 0, size, false)
}

/// [`hash_prefix`], and in the same pass the checksum `sum` of those bytes.
fn hash_prefix_and(
    path: &Path,
    size: u64,
    sum: Option<Algorithm>,
) -> Result<([u8; 16], Option<Checksum>), UploadError> {
    let mut md5 = Md5::new();
    let mut sum = sum.map(Algorithm::hasher);
    read_range(path, 0, size, false, |b| {
        md5.update(b);
        if let Some(h) = &mut sum {
            h.update(b);
        }
    })?;
    Ok((md5.finalize().into(), sum.map(|h| h.finish())))
}

/// The checksum `sum` of `len` bytes at `offset` (a part).
fn checksum_range(
    path: &Path,
    offset: u64,
    len: u64,
    sum: Algorithm,
) -> Result<Checksum, UploadError> {
    let mut h = sum.hasher();
    read_range(path, offset, len, false, |b| h.update(b))?;
    Ok(h.finish())
}

/// Does the file still begin with the `was.0` bytes whose MD5 is `md5`?
/// True when it is unchanged, or has only grown (appended to) since it was
/// stat'ed as `was` (size, mtime). What was sent is then a version the file
/// really had, its first bytes; the growth goes with the next round.
async fn kept_prefix(path: &Path, was: (u64, i64), md5: [u8; 16]) -> Result<bool, UploadError> {
    let now = stat(path)?;
    if now == was {
        return Ok(true);
    }
    if now.0 < was.0 {
        return Ok(false);
    }
    let p = path.to_path_buf();
    match blocking(move || hash_prefix(&p, was.0)).await {
        Ok(m) => Ok(m == md5),
        Err(UploadError::Changed) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The MD5 of `len` bytes at `offset`. `Changed` when the file is shorter
/// now or, with `to_end`, longer.
fn hash_range(path: &Path, offset: u64, len: u64, to_end: bool) -> Result<[u8; 16], UploadError> {
    let mut md5 = Md5::new();
    read_range(path, offset, len, to_end, |b| md5.update(b))?;
    Ok(md5.finalize().into())
}

/// Feeds `len` bytes at `offset` to `feed`, as [`hash_range`] reads them.
fn read_range(
    path: &Path,
    offset: u64,
    len: u64,
    to_end: bool,
    mut feed: impl FnMut(&[u8]),
) -> Result<(), UploadError> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(io_err)?;
    if offset > 0 {
        f.seek(SeekFrom::Start(offset)).map_err(io_err)?;
    }
    // One byte more than expected tells a grown file without reading it.
    let mut f = f.take(if to_end { len + 1 } else { len });
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        feed(&buf[..n]);
        total += n as u64;
    }
    if total != len {
        return Err(UploadError::Changed);
    }
    Ok(())
}

pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, UploadError> + Send + 'static,
) -> Result<T, UploadError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| UploadError::Io(format!("worker failed: {e}")))?
}

/// `len` bytes of a file from `offset`, as a request body that checks
/// before its last bytes go out that what it sent has the MD5 `md5` (the
/// request's Content-MD5). A file rewritten while it is sent fails the
/// request before it is complete, so no server stores a mix of two
/// versions, whether or not it checks Content-MD5 itself.
fn file_body(path: &Path, offset: u64, len: u64, md5: [u8; 16]) -> Result<ByteStream, UploadError> {
    let path = path.to_path_buf();
    let open = move || -> std::io::Result<CheckedBody> {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::File::open(&path)?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(CheckedBody {
            file: Ok(tokio::fs::File::from_std(f)),
            remaining: len,
            md5: Md5::new(),
            expected: md5,
            buf: Vec::new(),
        })
    };
    open().map_err(open_err)?;
    Ok(ByteStream::new(SdkBody::retryable(move || {
        let body = open().unwrap_or_else(|e| CheckedBody {
            file: Err(e.to_string()),
            remaining: len,
            md5: Md5::new(),
            expected: md5,
            buf: Vec::new(),
        });
        SdkBody::from_body_1_x(body)
    })))
}

/// `len` bytes of a file from `offset`, streamed as they are.
async fn part_body(path: &Path, offset: u64, len: u64) -> Result<ByteStream, UploadError> {
    ByteStream::read_from()
        .path(path)
        .offset(offset)
        .length(aws_smithy_types::byte_stream::Length::Exact(len))
        .build()
        .await
        .map_err(|e| {
            let io = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>());
            match io {
                Some(io) if io.kind() == std::io::ErrorKind::NotFound => UploadError::Vanished,
                _ => UploadError::Io(format!("cannot open for upload: {e}")),
            }
        })
}

fn open_err(e: std::io::Error) -> UploadError {
    if e.kind() == std::io::ErrorKind::NotFound {
        UploadError::Vanished
    } else {
        UploadError::Io(format!("cannot open for upload: {e}"))
    }
}

/// `body` within `--bwlimit`, when there is one.
fn limited(bwlimit: &Option<Arc<crate::bwlimit::Throttle>>, body: ByteStream) -> ByteStream {
    match bwlimit {
        Some(t) => t.limit(body),
        None => body,
    }
}

/// See [`file_body`].
struct CheckedBody {
    file: Result<tokio::fs::File, String>,
    remaining: u64,
    md5: Md5,
    expected: [u8; 16],
    buf: Vec<u8>,
}

impl http_body::Body for CheckedBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        use std::task::Poll;
        use tokio::io::AsyncRead;
        let this = &mut *self;
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let file = match &mut this.file {
            Ok(f) => f,
            Err(e) => return Poll::Ready(Some(Err(std::io::Error::other(e.clone())))),
        };
        let want = this.remaining.min(256 << 10) as usize;
        this.buf.resize(want, 0);
        let mut read = tokio::io::ReadBuf::new(&mut this.buf);
        match std::pin::Pin::new(file).poll_read(cx, &mut read) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {}
        }
        let chunk = bytes::Bytes::copy_from_slice(read.filled());
        if chunk.is_empty() {
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file got shorter while it was sent",
            ))));
        }
        this.md5.update(&chunk);
        let left = this.remaining - chunk.len() as u64;
        if left == 0 {
            let sent: [u8; 16] = this.md5.clone().finalize().into();
            if sent != this.expected {
                return Poll::Ready(Some(Err(std::io::Error::other(
                    "the file changed while it was sent; the upload is not completed",
                ))));
            }
        }
        this.remaining = left;
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

impl Uploader {
    /// Writes under `dest`'s bucket; its prefix is what header rules'
    /// patterns are relative to.
    pub fn new(
        store: Store,
        dest: &Location,
        cfg: TransferConfig,
        requests: Arc<Semaphore>,
    ) -> Self {
        Uploader {
            store,
            bucket: dest.bucket.clone(),
            prefix: dest.prefix.clone(),
            cfg: Arc::new(cfg),
            requests,
            primary: None,
            open_uploads: None,
        }
    }

    /// Records multipart uploads under way in `open` (see [`OpenUploads`]).
    pub fn recording_uploads(mut self, open: OpenUploads) -> Self {
        self.open_uploads = Some(open);
        self
    }

    /// Copies from `primary` (read through `store`) on the server where it
    /// already holds a file.
    pub fn copying_from(mut self, primary: Location, store: Store) -> Self {
        self.primary = Some(Arc::new((primary, store)));
        self
    }

    fn meta(&self, key: &str, path: &Path, mtime_ns: i64, md5: &[u8; 16]) -> PutMeta {
        let mut metadata = vec![(plan::META_MD5, crate::store::b64(md5))];
        if self.cfg.mtime_metadata {
            metadata.push((plan::META_MTIME, plan::format_mtime(mtime_ns)));
        }
        if self.cfg.metadata {
            metadata.extend(crate::attrs::of(path).iter().flat_map(|a| a.metadata()));
        }
        let rel = key.strip_prefix(self.prefix.as_str()).unwrap_or(key);
        let mut headers = self.cfg.headers_for(key, rel);
        PutMeta {
            content_type: headers.content_type.take().unwrap_or_default(),
            metadata,
            storage_class: headers
                .storage_class
                .take()
                .or_else(|| self.cfg.storage_class.clone()),
            headers,
            checksum: self.cfg.checksum,
        }
    }

    /// Runs one job to its outcome. The caller holds a request permit.
    pub async fn run(&self, job: Job, dry_run: bool) -> Outcome {
        let start = Instant::now();
        if let (Decision::Restyle, Some(record)) = (&job.decision, &job.state) {
            if dry_run {
                return self.would_restyle(&job);
            }
            let (key, record) = (job.key.clone(), record.clone());
            return Box::pin(self.copy_or_upload(job, key, record)).await;
        }
        let verify_head = match (&job.decision, &job.state) {
            (Decision::Skip, Some(record)) => {
                return Outcome::Unchanged {
                    record: record.clone(),
                    why: "unchanged",
                }
            }
            // Nothing on record vouches for the object: ask the server.
            (Decision::Skip, None) => Some(true),
            (Decision::Verify { head }, _) => Some(*head),
            (Decision::Hash, record) => Some(record.is_none()),
            (Decision::Checksum, _) => Some(true),
            (Decision::Upload(_), _) => None,
            // Nothing on record to copy: look first.
            (Decision::Restyle, _) => Some(true),
        };
        let reason = match (verify_head, &job.decision) {
            (None, Decision::Upload(reason)) => *reason,
            (None, _) => "new",
            (Some(head), _) => match self.verify(&job, head).await {
                Ok(Some((record, _))) if job.restyle && !dry_run => {
                    let key = job.key.clone();
                    return Box::pin(self.copy_or_upload(job, key, record)).await;
                }
                Ok(Some(_)) if job.restyle => return self.would_restyle(&job),
                Ok(Some((record, why))) => return Outcome::Unchanged { record, why },
                Ok(None) => "content changed",
                Err(UploadError::Store(StoreError::NotFound)) => "new",
                Err(UploadError::Vanished) => return Outcome::Vanished,
                Err(e) => return Outcome::Failed(e),
            },
        };
        if dry_run {
            // A real run copies from the primary once the primary holds
            // the file (in a dry run, it does not yet).
            let from = self.primary.as_ref().map(|p| {
                let primary = &p.0;
                format!("s3://{}/{}", primary.bucket, primary.key_for(&job.file.rel))
            });
            return Outcome::WouldUpload { reason, from };
        }
        // --backup-prefix: what is there now is kept before it is replaced.
        if job.remote.is_some() || job.state.is_some() {
            if let Err(e) = self.keep(&job).await {
                return Outcome::Failed(e);
            }
        }
        if let Some(primary) = self.primary.clone() {
            match self
                .copy_from_primary(&job, &primary.0, &primary.1, start)
                .await
            {
                Ok(outcome) => return outcome,
                Err(NoCopy::Behind) if job.wait_for_primary => return Outcome::Behind,
                Err(_) => {}
            }
        }
        let mut attempt = 1;
        loop {
            match self.upload(&job.file.path, &job.key).await {
                Ok((record, grew)) => {
                    return Outcome::Uploaded {
                        record,
                        elapsed: start.elapsed(),
                        reason: if grew { GREW } else { reason },
                    }
                }
                Err(UploadError::Changed) if attempt < CHANGE_ATTEMPTS => attempt += 1,
                Err(UploadError::Vanished) => return Outcome::Vanished,
                Err(e) => return Outcome::Failed(e),
            }
        }
    }

    /// A dry run's word for a copy of the object onto itself.
    fn would_restyle(&self, job: &Job) -> Outcome {
        Outcome::WouldUpload {
            reason: RESTYLED,
            from: Some(format!("s3://{}/{}", self.bucket, job.key)),
        }
    }

    /// With `--backup-prefix`, copies the object at the job's key to the
    /// backup location (nothing there is no error). A copy the server
    /// refuses stops the upload, so nothing is overwritten unkept.
    async fn keep(&self, job: &Job) -> Result<(), UploadError> {
        let Some(backup) = &self.cfg.backup else {
            return Ok(());
        };
        let to = backup.key_for(&job.file.rel, std::time::SystemTime::now());
        match self
            .store
            .copy_as_is((&self.bucket, &job.key), &backup.at.bucket, &to)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.blame() == Blame::Request => Err(UploadError::Io(format!(
                "not overwritten: the object {} could not be kept in {}: {e}",
                job.key, backup.at
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// A renamed file: copies the object at `from` (described by `source`,
    /// which the caller has matched with the file's size and mtime) to the
    /// job's key on the server. When the server cannot copy (the source is
    /// gone or was replaced, copying is not supported) or the file changed
    /// meanwhile, uploads instead.
    pub async fn copy_or_upload(&self, job: Job, from: String, source: Record) -> Outcome {
        let start = Instant::now();
        let meta = self.meta(&job.key, &job.file.path, job.file.mtime_ns, &source.md5);
        let copied = self
            .store
            .copy(
                (&self.bucket, &from),
                &self.bucket,
                &job.key,
                source.etag.as_deref(),
                &meta,
            )
            .await;
        match copied {
            // A copy answered with a plain MD5 that is not the source's
            // did not copy what the record describes: upload instead.
            Ok(Some(etag))
                if self
                    .store
                    .etag_md5(&etag)
                    .is_some_and(|md5| md5 != source.md5) => {}
            Ok(etag) => {
                let still = stat(&job.file.path);
                if still.as_ref().ok() == Some(&(job.file.size, job.file.mtime_ns)) {
                    return Outcome::Copied {
                        record: Record {
                            size: source.size,
                            mtime_ns: job.file.mtime_ns,
                            md5: source.md5,
                            etag: etag.or(source.etag),
                        },
                        elapsed: start.elapsed(),
                        from,
                    };
                }
            }
            // The server is in trouble: retrying later beats uploading now.
            Err(e) if e.blame() != Blame::Request => return Outcome::Failed(e.into()),
            Err(_) => {}
        }
        let reason = if from == job.key { RESTYLED } else { "renamed" };
        let job = Job {
            decision: Decision::Upload(reason),
            ..job
        };
        self.run(job, false).await
    }

    /// A destination on the primary's service: when the primary holds this
    /// file as it is now (size, and mtime or MD5), copies the primary's
    /// object on the server. [`NoCopy`] when it cannot: the caller uploads
    /// instead (or waits for the primary).
    async fn copy_from_primary(
        &self,
        job: &Job,
        primary: &Location,
        primary_store: &Store,
        start: Instant,
    ) -> Result<Outcome, NoCopy> {
        let from = primary.key_for(&job.file.rel);
        let source = (primary.bucket.as_str(), from.as_str());
        let head = match primary_store.head(source.0, source.1).await {
            Ok(h) => h,
            Err(e) if e.blame() == Blame::Server => return Ok(Outcome::Failed(e.into())),
            Err(StoreError::NotFound) => return Err(NoCopy::Behind),
            Err(_) => return Err(NoCopy::Refused),
        };
        if head.size != job.file.size {
            return Err(NoCopy::Behind);
        }
        let facts = primary_store.facts(&head);
        // No MD5 to vouch for the content: upload.
        let md5 = facts.md5.ok_or(NoCopy::Refused)?;
        if !facts.same_mtime(job.file.mtime_ns) {
            let (path, size) = (job.file.path.clone(), job.file.size);
            match blocking(move || hash_file(&path, size)).await {
                Ok(local) if local == md5 => {}
                Ok(_) => return Err(NoCopy::Behind),
                Err(UploadError::Vanished) => return Ok(Outcome::Vanished),
                Err(e) => return Ok(Outcome::Failed(e)),
            }
        }
        let meta = self.meta(&job.key, &job.file.path, job.file.mtime_ns, &md5);
        let if_match = head.etag.as_deref();
        let size = job.file.size;
        let copied = if size > MAX_COPY || size >= self.cfg.multipart_threshold {
            let (part_size, _) = plan::part_layout(size, self.cfg.chunk_size);
            let (bucket, key) = (primary.bucket.clone(), from.clone());
            let if_match = if_match.map(str::to_string);
            // Copied parts come with no checksum of s3ma's to give.
            let meta = PutMeta {
                checksum: None,
                ..meta
            };
            self.multipart(&job.key, size, part_size, &meta, None, move |part| {
                let (bucket, key, if_match) = (bucket.clone(), key.clone(), if_match.clone());
                async move {
                    let range = (part.offset, part.offset + part.len - 1);
                    Ok(part
                        .store
                        .upload_part_copy(
                            (&bucket, &key),
                            &part.bucket,
                            &part.key,
                            &part.upload_id,
                            part.number,
                            range,
                            if_match.as_deref(),
                        )
                        .await?)
                }
            })
            .await
        } else {
            self.store
                .copy(source, &self.bucket, &job.key, if_match, &meta)
                .await
                .map_err(UploadError::from)
        };
        match copied {
            Ok(etag) => Ok(Outcome::Copied {
                record: Record {
                    size,
                    mtime_ns: job.file.mtime_ns,
                    md5,
                    etag,
                },
                elapsed: start.elapsed(),
                from: format!("s3://{}/{from}", primary.bucket),
            }),
            Err(e) if e.blame() == Blame::Server => Ok(Outcome::Failed(e)),
            // Replaced meanwhile: the primary's next version is on its way.
            Err(UploadError::Store(StoreError::PreconditionFailed | StoreError::NotFound)) => {
                Err(NoCopy::Behind)
            }
            // The server does not copy (or not this): upload.
            Err(_) => Err(NoCopy::Refused),
        }
    }

    /// Same size, mtime differs or unknown: is the content already there?
    /// Returns the record to keep when it is, and what was found.
    async fn verify(
        &self,
        job: &Job,
        head: bool,
    ) -> Result<Option<(Record, &'static str)>, UploadError> {
        let local = &job.file;
        // The object's metadata was read (a HEAD): only then can it be
        // found wanting and put right. The listing and the state database
        // say nothing of it.
        let mut looked = false;
        let (facts, etag) = match (&job.state, head) {
            (Some(s), false) => (
                RemoteFacts {
                    md5: Some(s.md5),
                    // Hash: the mtime alone may not vouch for the content.
                    mtime: (job.decision != Decision::Hash).then_some((s.mtime_ns, 1)),
                    metadata_whole: true,
                },
                s.etag.clone(),
            ),
            _ => {
                let listed_md5 = job
                    .remote
                    .as_ref()
                    .and_then(|r| r.etag.as_deref())
                    .and_then(|e| self.store.etag_md5(e));
                let listed = || RemoteFacts {
                    md5: listed_md5,
                    mtime: None,
                    // Not looked at.
                    metadata_whole: true,
                };
                match listed_md5 {
                    // A small file is cheaper to hash than a HEAD request.
                    Some(_) if local.size <= HASH_BEFORE_HEAD => (listed(), None),
                    _ => match self.store.head(&self.bucket, &job.key).await {
                        Ok(h) if h.size != local.size => return Ok(None),
                        Ok(h) => {
                            looked = true;
                            (self.store.facts(&h), h.etag)
                        }
                        // Credentials that may list and write but not read:
                        // the listing's ETag is all there is to compare.
                        Err(StoreError::AccessDenied(_)) => (listed(), None),
                        Err(e) => return Err(e.into()),
                    },
                }
            }
        };
        let etag = job.remote.as_ref().and_then(|r| r.etag.clone()).or(etag);
        let record = |md5| Record {
            size: local.size,
            mtime_ns: local.mtime_ns,
            md5,
            etag: etag.clone(),
        };
        let trust_mtime = job.decision != Decision::Checksum;
        if let (true, true, Some(md5)) = (trust_mtime, facts.same_mtime(local.mtime_ns), facts.md5)
        {
            return Ok(Some((record(md5), SAME)));
        }
        let path = local.path.clone();
        let size = local.size;
        let md5 = blocking(move || hash_file(&path, size)).await?;
        let same = match facts.md5 {
            Some(remote) => remote == md5,
            // No MD5 on record (multipart object without md5chksum): the
            // recorded mtime is the only evidence.
            None => facts.same_mtime(local.mtime_ns),
        };
        if !same {
            return Ok(None);
        }
        let missing_mtime = self.cfg.mtime_metadata && facts.mtime.is_none();
        if looked && (!facts.metadata_whole || missing_mtime) && local.size <= MAX_COPY {
            // The right bytes without the metadata that says so (a copy or
            // upload cut off between the two, or another tool's upload):
            // the metadata is put right on the server, the bytes stay.
            let meta = self.meta(&job.key, &local.path, local.mtime_ns, &md5);
            let from = (self.bucket.as_str(), job.key.as_str());
            match self
                .store
                .copy(from, &self.bucket, &job.key, etag.as_deref(), &meta)
                .await
            {
                Ok(new) => {
                    let mut repaired = record(md5);
                    if new.is_some() {
                        repaired.etag = new;
                    }
                    return Ok(Some((repaired, REPAIRED)));
                }
                // Gone, or replaced since the HEAD: it is not what was
                // looked at; send the file.
                Err(StoreError::NotFound | StoreError::PreconditionFailed) => return Ok(None),
                // The bytes are right: the object is kept as it is (with
                // its incomplete metadata) rather than sent again.
                Err(_) => {}
            }
        }
        Ok(Some((record(md5), SAME)))
    }

    /// Uploads one file as it is now; the record describes what was sent.
    /// A file that grows while it is sent is sent as it was when it was
    /// stat'ed (its first bytes, checked unchanged afterwards); the second
    /// value says so.
    pub async fn upload(&self, path: &Path, key: &str) -> Result<(Record, bool), UploadError> {
        let (size, mtime_ns) = stat(path)?;
        let (md5, etag) = if size <= SMALL_BODY {
            let p = path.to_path_buf();
            // Exactly the bytes the stat saw; growth after them is checked
            // for below.
            let data = blocking(move || {
                let mut data = Vec::with_capacity(size as usize);
                std::fs::File::open(&p)
                    .and_then(|f| f.take(size).read_to_end(&mut data))
                    .map_err(io_err)?;
                Ok(data)
            })
            .await?;
            if data.len() as u64 != size {
                return Err(UploadError::Changed);
            }
            let md5: [u8; 16] = Md5::digest(&data).into();
            let sum = self.cfg.checksum.map(|a| a.of(&data));
            let meta = self.meta(key, path, mtime_ns, &md5);
            let etag = self
                .store
                .put(
                    &self.bucket,
                    key,
                    limited(&self.cfg.bwlimit, ByteStream::from(data)),
                    size,
                    &md5,
                    sum.as_ref(),
                    &meta,
                )
                .await
                .map_err(UploadError::from);
            (md5, etag)
        } else if size < self.cfg.multipart_threshold {
            let p = path.to_path_buf();
            let algorithm = self.cfg.checksum;
            let (md5, sum) = blocking(move || hash_prefix_and(&p, size, algorithm)).await?;
            let meta = self.meta(key, path, mtime_ns, &md5);
            let body = limited(&self.cfg.bwlimit, file_body(path, 0, size, md5)?);
            let etag = self
                .store
                .put(&self.bucket, key, body, size, &md5, sum.as_ref(), &meta)
                .await
                .map_err(UploadError::from);
            (md5, etag)
        } else {
            let (part_size, _) = plan::part_layout(size, self.cfg.chunk_size);
            let p = path.to_path_buf();
            // The whole file's MD5 goes into the metadata, which is given
            // when the upload is created (and the whole file's checksum, if
            // the algorithm has one for multipart objects, in the same
            // pass); each part's MD5 or checksum is computed by the task
            // that sends it, in parallel.
            let algorithm = self.cfg.checksum;
            let whole = algorithm.filter(|a| a.full_object());
            let (md5, whole) = blocking(move || hash_prefix_and(&p, size, whole)).await?;
            let meta = self.meta(key, path, mtime_ns, &md5);
            let source = Some(Sent {
                path,
                was: (size, mtime_ns),
                md5,
                whole,
            });
            let path = path.to_path_buf();
            let bwlimit = self.cfg.bwlimit.clone();
            let etag = self
                .multipart(key, size, part_size, &meta, source, move |part| {
                    let path = path.clone();
                    let bwlimit = bwlimit.clone();
                    async move {
                        let (p, offset, len) = (path.clone(), part.offset, part.len);
                        let check = blocking(move || match algorithm {
                            Some(a) => checksum_range(&p, offset, len, a).map(PartCheck::Sum),
                            None => hash_range(&p, offset, len, false).map(PartCheck::Md5),
                        })
                        .await?;
                        // The part's bytes are not hashed a second time
                        // while they go out: a file that changes meanwhile
                        // is caught before the upload is completed.
                        let body = limited(&bwlimit, part_body(&path, offset, len).await?);
                        Ok(part
                            .store
                            .upload_part(
                                &part.bucket,
                                &part.key,
                                &part.upload_id,
                                part.number,
                                body,
                                len,
                                &check,
                            )
                            .await?)
                    }
                })
                .await;
            (md5, etag)
        };
        // Whatever happened, a file that changed meanwhile is re-sent;
        // one that only grew was sent as it was.
        let now = stat(path)?;
        if now != (size, mtime_ns) && !kept_prefix(path, (size, mtime_ns), md5).await? {
            return Err(UploadError::Changed);
        }
        let grew = now.0 > size;
        let etag = etag?;
        Ok((
            Record {
                size,
                mtime_ns,
                md5,
                etag,
            },
            grew,
        ))
    }

    /// Creates a multipart upload, sends its parts with `send` (several at
    /// once), and completes it; aborts it on any failure, so no parts are
    /// left behind.
    ///
    /// `source`: the file sent, as it was hashed. A file that changed
    /// while its parts were sent is not completed (the parts may mix two
    /// versions): the upload is aborted and the object keeps its previous
    /// content. One that only grew is completed with the bytes it had.
    async fn multipart<F, Fut>(
        &self,
        key: &str,
        size: u64,
        part_size: u64,
        meta: &PutMeta,
        source: Option<Sent<'_>>,
        send: F,
    ) -> Result<Option<String>, UploadError>
    where
        F: Fn(Part) -> Fut,
        Fut: Future<Output = Result<CompletedPart, UploadError>> + Send + 'static,
    {
        let upload_id = self.store.create_multipart(&self.bucket, key, meta).await?;
        if let Some(open) = &self.open_uploads {
            open.record(key, &upload_id);
        }
        let result = self
            .send_parts(key, &upload_id, size, part_size, send)
            .await;
        let kept = match (&result, &source) {
            (Ok(_), Some(s)) => kept_prefix(s.path, s.was, s.md5).await.unwrap_or(false),
            _ => true,
        };
        let whole = source.and_then(|s| s.whole);
        let result = match result {
            Ok(_) if !kept => Err(UploadError::Changed),
            Ok(parts) => {
                match self
                    .store
                    .complete_multipart(&self.bucket, key, &upload_id, parts, whole.as_ref())
                    .await
                {
                    Err(StoreError::UnreadableSuccess(detail)) => {
                        self.confirm(key, size, meta, detail).await
                    }
                    other => other.map_err(UploadError::from),
                }
            }
            Err(e) => Err(e),
        };
        // Never leave parts behind; an abort failure is secondary (the
        // record stays, and the next run aborts it).
        let ended = result.is_ok()
            || self
                .store
                .abort_multipart(&self.bucket, key, &upload_id)
                .await
                .is_ok();
        if let (true, Some(open)) = (ended, &self.open_uploads) {
            open.forget(&upload_id);
        }
        // A CreateMultipartUpload whose answer was lost (and retried)
        // leaves an upload nobody knows the id of: abort whatever is still
        // open for this key. Best effort; some servers cannot list uploads.
        if let Ok(orphans) = self.store.open_uploads(&self.bucket, key).await {
            for id in orphans {
                let _ = self.store.abort_multipart(&self.bucket, key, &id).await;
            }
        }
        result
    }

    /// After an unreadable "200 OK" to CompleteMultipartUpload: the upload
    /// counts only if the object is there with our size and MD5.
    async fn confirm(
        &self,
        key: &str,
        size: u64,
        meta: &PutMeta,
        detail: String,
    ) -> Result<Option<String>, UploadError> {
        let want = meta.metadata.iter().find(|(k, _)| *k == plan::META_MD5);
        match self.store.head(&self.bucket, key).await {
            Ok(h) if h.size == size && want.is_some_and(|(k, v)| h.metadata.get(*k) == Some(v)) => {
                Ok(h.etag)
            }
            _ => Err(UploadError::Store(StoreError::UnreadableSuccess(detail))),
        }
    }

    async fn send_parts<F, Fut>(
        &self,
        key: &str,
        upload_id: &str,
        size: u64,
        part_size: u64,
        send: F,
    ) -> Result<Vec<CompletedPart>, UploadError>
    where
        F: Fn(Part) -> Fut,
        Fut: Future<Output = Result<CompletedPart, UploadError>> + Send + 'static,
    {
        let count = size.div_ceil(part_size).max(1) as usize;
        let mut done = Vec::with_capacity(count);
        let mut set: JoinSet<Result<CompletedPart, UploadError>> = JoinSet::new();
        let mut extra_permits = Vec::new();
        let mut next = 0usize;
        loop {
            while next < count {
                let allowed = 1 + extra_permits.len();
                if set.len() >= allowed {
                    if set.len() >= MAX_PARALLEL_PARTS {
                        break;
                    }
                    match self.requests.clone().try_acquire_owned() {
                        Ok(p) => extra_permits.push(p),
                        Err(_) => break,
                    }
                }
                let offset = next as u64 * part_size;
                set.spawn(send(Part {
                    store: self.store.clone(),
                    bucket: self.bucket.clone(),
                    key: key.to_string(),
                    upload_id: upload_id.to_string(),
                    number: next as i32 + 1,
                    offset,
                    len: part_size.min(size - offset),
                }));
                next += 1;
            }
            match set.join_next().await {
                None => break,
                Some(Ok(Ok(part))) => done.push(part),
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(UploadError::Io(format!("part upload failed: {e}"))),
            }
        }
        done.sort_by_key(|p| p.part_number());
        Ok(done)
    }
}

/// The file a multipart upload sends, as it was when it was hashed.
struct Sent<'a> {
    path: &'a Path,
    /// Its size and mtime then.
    was: (u64, i64),
    /// The MD5 of those bytes.
    md5: [u8; 16],
    /// Their checksum, when the upload's algorithm has one for the whole
    /// object.
    whole: Option<Checksum>,
}

/// One part of a multipart upload, for the task that sends it.
pub struct Part {
    store: Store,
    bucket: String,
    key: String,
    upload_id: String,
    number: i32,
    offset: u64,
    len: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_uploads_round_trip_any_key_and_drop_half_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = OpenUploads::new(dir.path().join("x.uploads"));
        open.record("line\nbreak.bin", "id-1");
        open.record("plain.bin", "id-2");
        // A record a kill cut short, and a temporary file never renamed.
        std::fs::write(dir.path().join("x.uploads/0123"), "id-3").expect("write");
        std::fs::write(dir.path().join("x.uploads/4567.tmp"), "id-4\nk").expect("write");
        let mut left = open.left();
        left.sort();
        assert_eq!(
            left,
            [
                ("line\nbreak.bin".to_string(), "id-1".to_string()),
                ("plain.bin".to_string(), "id-2".to_string())
            ]
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("x.uploads"))
                .expect("dir")
                .count(),
            2
        );
        open.forget("id-1");
        assert_eq!(open.left().len(), 1);
    }

    #[test]
    fn hashes_whole_files_and_parts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let whole = hash_file(&path, data.len() as u64).expect("hash");
        assert_eq!(whole, <[u8; 16]>::from(Md5::digest(&data)));
        for (i, chunk) in data.chunks(1_000_000).enumerate() {
            let part =
                hash_range(&path, i as u64 * 1_000_000, chunk.len() as u64, false).expect("part");
            assert_eq!(part, <[u8; 16]>::from(Md5::digest(chunk)), "part {i}");
        }
        // Longer or shorter than expected: changed.
        assert!(matches!(hash_file(&path, 1), Err(UploadError::Changed)));
        assert!(matches!(
            hash_range(&path, 2_000_000, 600_000, false),
            Err(UploadError::Changed)
        ));
        assert!(matches!(
            hash_file(&dir.path().join("missing"), 1),
            Err(UploadError::Vanished)
        ));
    }
}
