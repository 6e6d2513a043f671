//! The only module that speaks S3.
//!
//! It builds one client per run (TLS via rustls with the system roots plus
//! any private CA, see [`tls`]; retries and timeouts in the SDK's retry
//! layer), and turns SDK errors into [`StoreError`] so callers can branch
//! on what happened: fatal for the run (unreachable, bad credentials,
//! missing bucket) or confined to one key. Messages never include secrets:
//! the SDK errors are rendered from their code and message, not from
//! request dumps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::DateTime;
use base64::Engine as _;
use md5::{Digest, Md5};

use crate::checksum::{Algorithm, Checksum};
use crate::config::Connection;

mod log;
pub mod tls;

/// What went wrong, classified for the caller.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(
        "bucket '{0}' does not exist on {1}; create it first or check the name and --endpoint"
    )]
    NoSuchBucket(String, String),
    #[error("not found")]
    NotFound,
    /// The server refused a parameter (`InvalidArgument`).
    #[error("{0}")]
    InvalidArgument(String),
    /// A condition (`If-Match`) did not hold: the object was replaced.
    #[error("the object changed meanwhile (precondition failed)")]
    PreconditionFailed,
    #[error("access denied ({0}); check the credentials' permissions on this bucket and prefix")]
    AccessDenied(String),
    #[error(
        "the server rejected the credentials ({detail}); they come from {from}: check or \
         replace them there"
    )]
    BadCredentials { detail: String, from: String },
    /// The server refused the bucket's name: a configuration mistake that
    /// only the server could see.
    #[error(
        "the server refused the bucket name '{bucket}' ({detail}); bucket names there are \
         usually 3 to 63 lowercase letters, digits, '-' and '.'"
    )]
    InvalidBucketName { bucket: String, detail: String },
    /// The server does not know the storage class asked for.
    #[error(
        "the server refused the storage class ({0}); give --storage-class (config key \
         \"storageClass\") one that this provider supports, or leave it out"
    )]
    InvalidStorageClass(String),
    #[error(
        "no credentials from {from} ({detail}); give keys there (for an SSO profile, run aws \
         sso login --profile NAME), or set accessKeyId/secretAccessKey in the config file or \
         AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    )]
    NoCredentials { detail: String, from: String },
    #[error("cannot reach {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    /// One request timed out (after its retries); others may still work.
    #[error(
        "{endpoint} did not answer in time (raise --connect-timeout / --read-timeout if the \
         link is slow)"
    )]
    TimedOut { endpoint: String },
    #[error("wrong region ({0}); pass the bucket's region with --region, or the right --endpoint")]
    WrongRegion(String),
    #[error(
        "the server rejected the request time ({0}); this machine's clock is off: \
         synchronise it (timedatectl set-ntp true)"
    )]
    ClockSkew(String),
    #[error("the server answered 200 but its response could not be read: {0}")]
    UnreadableSuccess(String),
    /// The service failed the request (5xx, SlowDown) after the retries:
    /// trouble on its side, not with this request.
    #[error("{0}")]
    ServerError(String),
    /// What was asked for (encryption, a checksum) was ignored or refused:
    /// the provider does not have it.
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Other(String),
}

/// Whose problem an error is: the one question every caller asks of a
/// failed request, answered in one place ([`StoreError::blame`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Blame {
    /// About this request: this object or this file (refused, not found,
    /// changed meanwhile). Other requests may well succeed.
    Request,
    /// The service is unreachable or failing; waiting may fix it.
    Server,
    /// The configuration is wrong (bucket, credentials, region, clock):
    /// no request can succeed until someone fixes it.
    Fatal,
}

impl StoreError {
    /// Whose problem this is; see [`Blame`].
    pub fn blame(&self) -> Blame {
        match self {
            StoreError::NoSuchBucket(..)
            | StoreError::BadCredentials { .. }
            | StoreError::InvalidBucketName { .. }
            | StoreError::InvalidStorageClass(_)
            | StoreError::Unsupported(_)
            | StoreError::NoCredentials { .. }
            | StoreError::WrongRegion(_)
            | StoreError::ClockSkew(_) => Blame::Fatal,
            StoreError::Unreachable { .. }
            | StoreError::TimedOut { .. }
            | StoreError::ServerError(_)
            | StoreError::UnreadableSuccess(_) => Blame::Server,
            StoreError::NotFound
            | StoreError::InvalidArgument(_)
            | StoreError::PreconditionFailed
            | StoreError::AccessDenied(_)
            | StoreError::Other(_) => Blame::Request,
        }
    }

    /// A mistake in the configuration, found by the server: exit 2 like
    /// the ones s3ma finds itself.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            StoreError::InvalidBucketName { .. }
                | StoreError::InvalidStorageClass(_)
                | StoreError::Unsupported(_)
        )
    }

    /// Errors after which a run cannot go on: the configuration is wrong,
    /// or the endpoint cannot be reached at all.
    pub fn is_fatal(&self) -> bool {
        self.blame() == Blame::Fatal || matches!(self, StoreError::Unreachable { .. })
    }
}

/// One object from a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// The ETag without quotes, when the server sends one.
    pub etag: Option<String>,
    pub last_modified: Option<DateTime>,
    /// In an archive storage class (GLACIER, DEEP_ARCHIVE): not readable
    /// until restored on the server.
    pub archived: bool,
}

/// Storage classes whose objects must be restored on the server before
/// they can be read.
pub fn is_archive_class(class: &str) -> bool {
    matches!(class, "GLACIER" | "DEEP_ARCHIVE")
}

/// One version of a key, or a delete marker (ListObjectVersions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub object: ObjectInfo,
    pub version_id: Option<String>,
    pub delete_marker: bool,
    pub latest: bool,
}

/// An object being downloaded: its body and what GetObject tells.
pub struct Download {
    pub body: ByteStream,
    pub size: u64,
    pub etag: Option<String>,
    pub metadata: HashMap<String, String>,
    pub last_modified: Option<DateTime>,
}

/// One page of ListObjectsV2.
#[derive(Debug, Default)]
pub struct Page {
    pub objects: Vec<ObjectInfo>,
    pub prefixes: Vec<String>,
}

/// What HeadObject tells about an object.
#[derive(Debug, Clone)]
pub struct HeadInfo {
    pub size: u64,
    pub etag: Option<String>,
    pub metadata: HashMap<String, String>,
    /// The headers a rule may set, as the server gives them.
    pub headers: crate::headers::HeaderSet,
    pub last_modified: Option<DateTime>,
    /// `x-amz-restore` of an archived object: `ongoing-request="false"`
    /// once a readable copy is there.
    pub restore: Option<String>,
}

/// Server-side encryption of what s3ma writes.
#[derive(Clone, PartialEq, Eq)]
pub enum Sse {
    /// `--sse AES256`: keys the provider manages (SSE-S3).
    S3,
    /// `--sse aws:kms`, with a key id or the account's default key.
    Kms(Option<String>),
    /// SSE-C: a 256-bit key of the user's, sent with every request that
    /// reads or writes the object (`key` and its MD5, base64).
    Customer { key: String, md5: String },
}

/// Never shows an SSE-C key.
impl std::fmt::Debug for Sse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sse::S3 => f.write_str("S3"),
            Sse::Kms(id) => write!(f, "Kms({id:?})"),
            Sse::Customer { .. } => f.write_str("Customer(***)"),
        }
    }
}

impl Sse {
    fn algorithm(&self) -> Option<aws_sdk_s3::types::ServerSideEncryption> {
        use aws_sdk_s3::types::ServerSideEncryption as E;
        match self {
            Sse::S3 => Some(E::Aes256),
            Sse::Kms(_) => Some(E::AwsKms),
            Sse::Customer { .. } => None,
        }
    }

    fn kms_key(&self) -> Option<String> {
        match self {
            Sse::Kms(id) => id.clone(),
            _ => None,
        }
    }

    /// SSE-C's algorithm, key and key MD5, when it is SSE-C.
    fn customer(&self) -> (Option<String>, Option<String>, Option<String>) {
        match self {
            Sse::Customer { key, md5 } => {
                (Some("AES256".into()), Some(key.clone()), Some(md5.clone()))
            }
            _ => (None, None, None),
        }
    }

    /// How it is named on the command line, for messages.
    pub fn flag(&self) -> &'static str {
        match self {
            Sse::S3 => "--sse AES256",
            Sse::Kms(_) => "--sse aws:kms",
            Sse::Customer { .. } => "--sse-c-key-file",
        }
    }
}

/// Adds an SSE-C key to a request that reads an object or writes a part.
macro_rules! with_key {
    ($req:expr, $sse:expr) => {{
        let (alg, key, md5) = $sse.map(Sse::customer).unwrap_or_default();
        $req.set_sse_customer_algorithm(alg)
            .set_sse_customer_key(key)
            .set_sse_customer_key_md5(md5)
    }};
}

/// Adds the encryption of `sse` to a request that writes an object.
macro_rules! encrypted {
    ($req:expr, $sse:expr) => {{
        let sse: Option<&Sse> = $sse;
        let req = $req
            .set_server_side_encryption(sse.and_then(Sse::algorithm))
            .set_ssekms_key_id(sse.and_then(Sse::kms_key));
        with_key!(req, sse)
    }};
}

/// Adds the SSE-C key of a copy's source.
macro_rules! source_key {
    ($req:expr, $sse:expr) => {{
        let (alg, key, md5) = $sse.map(Sse::customer).unwrap_or_default();
        $req.set_copy_source_sse_customer_algorithm(alg)
            .set_copy_source_sse_customer_key(key)
            .set_copy_source_sse_customer_key_md5(md5)
    }};
}

/// Adds a checksum the server checks the body against (and keeps with
/// the object) to a PUT or a part.
macro_rules! checksummed {
    ($req:expr, $sum:expr) => {{
        let sum: Option<&Checksum> = $sum;
        $req.set_checksum_algorithm(sum.map(|s| s.algorithm.sdk()))
            .set_checksum_crc32_c(sum.and_then(Checksum::crc32c))
            .set_checksum_crc64_nvme(sum.and_then(Checksum::crc64nvme))
            .set_checksum_sha256(sum.and_then(Checksum::sha256))
    }};
}

/// Everything written with an object besides its bytes.
#[derive(Debug, Clone)]
pub struct PutMeta {
    pub content_type: String,
    pub metadata: Vec<(&'static str, String)>,
    pub storage_class: Option<String>,
    /// What a header rule sets (its Content-Type and storage class are
    /// already in the fields above).
    pub headers: crate::headers::HeaderSet,
    /// `--checksum-algorithm`: the checksum the server keeps with the
    /// object (and, for an upload, checks its bytes against).
    pub checksum: Option<Algorithm>,
}

/// What vouches for a part's bytes to the server.
pub enum PartCheck {
    Md5([u8; 16]),
    Sum(Checksum),
}

impl PartCheck {
    fn md5(&self) -> Option<String> {
        match self {
            PartCheck::Md5(m) => Some(b64(m)),
            PartCheck::Sum(_) => None,
        }
    }

    fn sum(&self) -> Option<&Checksum> {
        match self {
            PartCheck::Md5(_) => None,
            PartCheck::Sum(s) => Some(s),
        }
    }
}

impl PutMeta {
    fn user_metadata(&self) -> HashMap<String, String> {
        self.metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn class(&self) -> Option<aws_sdk_s3::types::StorageClass> {
        self.storage_class.as_deref().map(Into::into)
    }

    fn acl(&self) -> Option<aws_sdk_s3::types::ObjectCannedAcl> {
        self.headers.acl.as_deref().map(Into::into)
    }
}

/// A bucket from ListBuckets.
#[derive(Debug, Clone)]
pub struct BucketInfo {
    pub name: String,
    pub created: Option<DateTime>,
}

/// An S3 client bound to one service.
#[derive(Clone, Debug)]
pub struct Store {
    client: Client,
    endpoint: String,
    /// Where the credentials come from, for the message when they are
    /// rejected.
    keys_from: String,
    connect_timeout: Duration,
    read_timeout: Duration,
    /// The server refused a listing page size above its default: ask for
    /// none from now on.
    default_pages: Arc<AtomicBool>,
    /// Answers and throttles of every attempt, for `pace`.
    signals: Arc<crate::pace::Signals>,
    /// How written objects are encrypted.
    sse: Option<Arc<Sse>>,
}

impl Store {
    /// Builds the client. Nothing is sent yet.
    pub async fn connect(conn: &Connection) -> Result<Store> {
        // The SDK's client trusts the system roots; a bundle needs a
        // verifier of its own, which that client cannot take.
        let http = match &conn.ca_bundle {
            Some(ca) => tls::client(&tls::Bundle::read(ca)?)?,
            None => aws_smithy_http_client::Builder::new()
                .tls_provider(Provider::Rustls(CryptoMode::Ring))
                .build_https(),
        };

        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http.clone())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(conn.connect_timeout)
                    .read_timeout(conn.read_timeout)
                    .build(),
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(conn.max_attempts)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(5)),
            );
        if let Some(p) = &conn.profile {
            loader = loader.profile_name(p);
            if conn.profile_only {
                let provider_config = aws_config::provider_config::ProviderConfig::without_region()
                    .with_http_client(http.clone())
                    .with_region(conn.region.clone().map(Region::new))
                    .with_behavior_version(Some(BehaviorVersion::latest()));
                loader = loader.credentials_provider(
                    aws_config::profile::ProfileFileCredentialsProvider::builder()
                        .configure(&provider_config)
                        .profile_name(p)
                        .build(),
                );
            }
        }
        if let Some(r) = &conn.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(c) = &conn.credentials {
            loader = loader.credentials_provider(Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                c.session_token.clone(),
                None,
                "s3ma-config-file",
            ));
        }
        let sdk = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(conn.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if sdk.region().is_none() {
            builder = builder.region(Region::new("us-east-1"));
        }
        if let Some(e) = &conn.endpoint {
            builder = builder.endpoint_url(e);
        }
        if conn.log_requests {
            builder = builder.interceptor(log::RequestLog);
        }
        let signals = Arc::new(crate::pace::Signals::default());
        builder = builder.interceptor(crate::pace::Counting(signals.clone()));
        Ok(Store {
            client: Client::from_conf(builder.build()),
            endpoint: conn.describe(),
            keys_from: conn.keys_from.clone(),
            connect_timeout: conn.connect_timeout,
            read_timeout: conn.read_timeout,
            default_pages: Arc::default(),
            signals,
            sse: None,
        })
    }

    /// Encrypts what it writes with `sse` (and reads with its SSE-C key).
    pub fn with_sse(mut self, sse: Option<Sse>) -> Store {
        self.sse = sse.map(Arc::new);
        self
    }

    fn sse(&self) -> Option<&Sse> {
        self.sse.as_deref()
    }

    /// What a HEAD says of an object's content and metadata.
    pub fn facts(&self, head: &HeadInfo) -> crate::plan::RemoteFacts {
        self.facts_of(head.etag.as_deref(), &head.metadata)
    }

    /// [`Store::facts`] from an ETag and metadata however read (a GET).
    pub fn facts_of(
        &self,
        etag: Option<&str>,
        metadata: &HashMap<String, String>,
    ) -> crate::plan::RemoteFacts {
        let of_bytes = etag.and_then(|e| self.etag_md5(e));
        crate::plan::RemoteFacts::from_head(of_bytes, metadata)
    }

    /// The MD5 an ETag stands for, when it stands for one: not under
    /// SSE-KMS or SSE-C, where the ETag is no MD5 of the bytes.
    pub fn etag_md5(&self, etag: &str) -> Option<[u8; 16]> {
        match self.sse() {
            Some(Sse::Kms(_) | Sse::Customer { .. }) => None,
            _ => etag_md5(etag),
        }
    }

    /// Was what was just written encrypted as asked? When not, the
    /// provider ignores the headers: the object (or the multipart upload,
    /// `upload_id`) is removed again at once, and the run stops.
    async fn check_encrypted(
        &self,
        written: (&str, &str, Option<&str>),
        algorithm: Option<&str>,
        customer: Option<&str>,
    ) -> Result<(), StoreError> {
        let Some(sse) = self.sse() else {
            return Ok(());
        };
        let applied = match sse {
            Sse::Customer { .. } => customer.is_some(),
            _ => algorithm.is_some(),
        };
        if applied {
            return Ok(());
        }
        let (bucket, key, upload_id) = written;
        let undone = match upload_id {
            Some(id) => self.abort_multipart(bucket, key, id).await,
            None => self
                .client
                .delete_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.classify(e, Some(bucket))),
        };
        let after = match undone {
            Ok(()) => "it was removed again".to_string(),
            Err(e) => format!("removing it again failed ({e}): delete s3://{bucket}/{key} by hand"),
        };
        Err(StoreError::Unsupported(format!(
            "{} stored s3://{bucket}/{key} without the encryption {} asks for, and {after}; \
             this provider does not support that encryption (or ignores it): leave the option \
             out, or use a provider that has it",
            self.endpoint,
            sse.flag()
        )))
    }

    /// Has the server checked the checksum `sent` with a write of `what`?
    /// It says so by sending it back; a provider without AWS's flexible
    /// checksums ignores it and says nothing, which stops the run.
    fn check_checksum(
        &self,
        what: &str,
        sent: Option<&Checksum>,
        echoed: [Option<&str>; 3],
    ) -> Result<(), StoreError> {
        let Some(sent) = sent else {
            return Ok(());
        };
        let [crc32c, crc64nvme, sha256] = echoed;
        let echoed = match sent.algorithm {
            Algorithm::Crc32c => crc32c,
            Algorithm::Crc64Nvme => crc64nvme,
            Algorithm::Sha256 => sha256,
        };
        match echoed {
            Some(v) if v == sent.value => Ok(()),
            Some(v) => Err(StoreError::Other(format!(
                "{} answered the write of {what} with the {} checksum {v}, not the {} sent; \
                 it is sent again",
                self.endpoint,
                sent.algorithm.name(),
                sent.value
            ))),
            None => Err(StoreError::Unsupported(format!(
                "{} did not confirm the {} checksum sent with {what}: this provider does not \
                 support --checksum-algorithm (AWS's flexible checksums), or ignores it; leave \
                 the option out (s3ma then sends Content-MD5, which every provider checks)",
                self.endpoint,
                sent.algorithm.name()
            ))),
        }
    }

    /// What the server's answers have been, for `pace`.
    pub fn signals(&self) -> Arc<crate::pace::Signals> {
        self.signals.clone()
    }

    /// The read timeout covers sending the body too (the response comes
    /// after it): allow for a slow uplink of 64 KiB/s on top.
    fn upload_timeouts(&self, len: u64) -> aws_sdk_s3::config::Builder {
        let extra = Duration::from_secs(len / (64 << 10));
        aws_sdk_s3::config::Builder::default().timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(self.connect_timeout)
                .read_timeout(self.read_timeout + extra)
                .build(),
        )
    }

    /// Where requests go, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn classify<E>(&self, err: SdkError<E, HttpResponse>, bucket: Option<&str>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match classify(err, &self.endpoint, bucket) {
            StoreError::BadCredentials { detail, .. } => StoreError::BadCredentials {
                detail,
                from: self.keys_from.clone(),
            },
            StoreError::NoCredentials { detail, .. } => StoreError::NoCredentials {
                detail,
                from: self.keys_from.clone(),
            },
            other => other,
        }
    }

    pub async fn list_buckets(&self) -> Result<Vec<BucketInfo>, StoreError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let resp = self
                .client
                .list_buckets()
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| not_s3(self.classify(e, None), &self.endpoint))?;
            for b in resp.buckets() {
                out.push(BucketInfo {
                    name: b.name().unwrap_or_default().to_string(),
                    created: b.creation_date().cloned(),
                });
            }
            match resp.continuation_token() {
                Some(t) if !t.is_empty() && Some(t) != token.as_deref() => {
                    token = Some(t.to_string())
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// A paginated ListObjectsV2 under `prefix`; with a delimiter, common
    /// prefixes are returned too.
    pub fn lister(&self, bucket: &str, prefix: &str, delimiter: Option<&str>) -> Lister {
        Lister {
            store: self.clone(),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            delimiter: delimiter.map(str::to_string),
            token: None,
            start_after: None,
            done: false,
            page_size: None,
        }
    }

    pub async fn head(&self, bucket: &str, key: &str) -> Result<HeadInfo, StoreError> {
        self.head_version(bucket, key, None).await
    }

    /// [`Store::head`] of one version of the key (`None`: the current one).
    pub async fn head_version(
        &self,
        bucket: &str,
        key: &str,
        version: Option<&str>,
    ) -> Result<HeadInfo, StoreError> {
        let req = self.client.head_object();
        let resp = with_key!(req, self.sse())
            .bucket(bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .map_err(|e| self.classify(e, Some(bucket)))?;
        let text = |s: Option<&str>| s.map(str::to_string);
        Ok(HeadInfo {
            size: resp.content_length().unwrap_or(0).max(0) as u64,
            etag: resp.e_tag().map(unquote),
            metadata: resp.metadata().cloned().unwrap_or_default(),
            headers: crate::headers::HeaderSet {
                cache_control: text(resp.cache_control()),
                content_type: text(resp.content_type()),
                content_encoding: text(resp.content_encoding()),
                content_disposition: text(resp.content_disposition()),
                content_language: text(resp.content_language()),
                storage_class: resp.storage_class().map(|c| c.as_str().to_string()),
                acl: None,
            },
            last_modified: resp.last_modified().cloned(),
            restore: text(resp.restore()),
        })
    }

    /// Starts downloading (one version of) an object, or bytes `range`
    /// (inclusive) of it; `if_match` fails it (`PreconditionFailed`) when
    /// the object is not that one any more.
    pub async fn get(
        &self,
        bucket: &str,
        key: &str,
        version: Option<&str>,
        range: Option<(u64, u64)>,
        if_match: Option<&str>,
    ) -> Result<Download, StoreError> {
        let req = self.client.get_object();
        let resp = with_key!(req, self.sse())
            .bucket(bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .set_range(range.map(|(a, b)| format!("bytes={a}-{b}")))
            .set_if_match(if_match.map(|e| format!("\"{e}\"")))
            .send()
            .await
            .map_err(|e| self.classify(e, Some(bucket)))?;
        Ok(Download {
            size: resp.content_length().unwrap_or(0).max(0) as u64,
            etag: resp.e_tag().map(unquote),
            metadata: resp.metadata().cloned().unwrap_or_default(),
            last_modified: resp.last_modified().cloned(),
            body: resp.body,
        })
    }

    /// The versioning status of a bucket: `Some(Enabled or Suspended)`,
    /// `Some(None)` for a bucket that never had it, `None` when the answer
    /// (a 200) could not be read: some servers name its XML root otherwise.
    pub async fn versioning(&self, bucket: &str) -> Result<Option<Option<String>>, StoreError> {
        let resp = self
            .client
            .get_bucket_versioning()
            .bucket(bucket)
            .send()
            .await;
        match resp {
            Ok(r) => Ok(Some(r.status().map(|s| s.as_str().to_string()))),
            Err(e) => {
                let ok_status = e.raw_response().map(|r| r.status().as_u16()) == Some(200);
                if ok_status && e.code().is_none() {
                    return Ok(None);
                }
                Err(self.classify(e, Some(bucket)))
            }
        }
    }

    /// Every version and delete marker under `prefix`, in key order and,
    /// for each key, newest first (as ListObjectVersions gives them);
    /// `each` is called page by page.
    pub async fn versions(
        &self,
        bucket: &str,
        prefix: &str,
        mut each: impl FnMut(Vec<Version>),
    ) -> Result<(), StoreError> {
        let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
        loop {
            let resp = self
                .client
                .list_object_versions()
                .bucket(bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| not_s3(self.classify(e, Some(bucket)), &self.endpoint))?;
            let mut page: Vec<Version> = resp
                .versions()
                .iter()
                .map(|v| Version {
                    object: ObjectInfo {
                        key: v.key().unwrap_or_default().to_string(),
                        size: v.size().unwrap_or(0).max(0) as u64,
                        etag: v.e_tag().map(unquote).filter(|e| !e.is_empty()),
                        last_modified: v.last_modified().cloned(),
                        archived: v
                            .storage_class()
                            .is_some_and(|c| is_archive_class(c.as_str())),
                    },
                    version_id: v.version_id().map(str::to_string),
                    delete_marker: false,
                    latest: v.is_latest() == Some(true),
                })
                .chain(resp.delete_markers().iter().map(|d| Version {
                    object: ObjectInfo {
                        key: d.key().unwrap_or_default().to_string(),
                        size: 0,
                        etag: None,
                        last_modified: d.last_modified().cloned(),
                        archived: false,
                    },
                    version_id: d.version_id().map(str::to_string),
                    delete_marker: true,
                    latest: d.is_latest() == Some(true),
                }))
                .collect();
            order_versions(&mut page);
            each(page);
            if resp.is_truncated() != Some(true) {
                return Ok(());
            }
            key_marker = resp.next_key_marker().map(str::to_string);
            version_marker = resp.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() {
                return Err(StoreError::Other(format!(
                    "the version listing of s3://{bucket}/{prefix} is truncated but gives no way \
                     to continue"
                )));
            }
        }
    }

    /// Downloads an object and returns its size and the MD5 of its bytes
    /// (nothing is kept in memory but one chunk).
    pub async fn get_md5(&self, bucket: &str, key: &str) -> Result<(u64, [u8; 16]), StoreError> {
        let mut body = self.get(bucket, key, None, None, None).await?.body;
        let mut md5 = Md5::new();
        let mut size = 0u64;
        loop {
            match body.try_next().await {
                Ok(Some(chunk)) => {
                    size += chunk.len() as u64;
                    md5.update(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(StoreError::ServerError(format!(
                        "the download of {key} broke off: {}",
                        source_chain(&e)
                    )))
                }
            }
        }
        Ok((size, md5.finalize().into()))
    }

    /// A single PUT with Content-MD5 (`md5` is the raw digest) and, with
    /// `--checksum-algorithm`, the checksum `sum` of the same bytes.
    #[allow(clippy::too_many_arguments)]
    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        len: u64,
        md5: &[u8; 16],
        sum: Option<&Checksum>,
        meta: &PutMeta,
    ) -> Result<Option<String>, StoreError> {
        let req = self.client.put_object();
        let req = checksummed!(encrypted!(req, self.sse()), sum)
            .bucket(bucket)
            .key(key)
            .body(body)
            .content_length(len as i64)
            .content_md5(b64(md5))
            .content_type(&meta.content_type)
            .set_metadata(Some(meta.user_metadata()))
            .set_storage_class(meta.class())
            .set_cache_control(meta.headers.cache_control.clone())
            .set_content_encoding(meta.headers.content_encoding.clone())
            .set_content_disposition(meta.headers.content_disposition.clone())
            .set_content_language(meta.headers.content_language.clone())
            .set_acl(meta.acl());
        let resp = req
            .customize()
            .config_override(self.upload_timeouts(len))
            .send()
            .await
            .map_err(|e| self.classify(e, Some(bucket)))?;
        self.check_encrypted(
            (bucket, key, None),
            resp.server_side_encryption().map(|a| a.as_str()),
            resp.sse_customer_algorithm(),
        )
        .await?;
        self.check_checksum(
            &format!("s3://{bucket}/{key}"),
            sum,
            [
                resp.checksum_crc32_c(),
                resp.checksum_crc64_nvme(),
                resp.checksum_sha256(),
            ],
        )?;
        Ok(resp.e_tag().map(unquote))
    }

    pub async fn create_multipart(
        &self,
        bucket: &str,
        key: &str,
        meta: &PutMeta,
    ) -> Result<String, StoreError> {
        let req = self.client.create_multipart_upload();
        let req = encrypted!(req, self.sse())
            .bucket(bucket)
            .key(key)
            .content_type(&meta.content_type)
            .set_metadata(Some(meta.user_metadata()))
            .set_storage_class(meta.class())
            .set_cache_control(meta.headers.cache_control.clone())
            .set_content_encoding(meta.headers.content_encoding.clone())
            .set_content_disposition(meta.headers.content_disposition.clone())
            .set_content_language(meta.headers.content_language.clone())
            .set_acl(meta.acl())
            .set_checksum_algorithm(meta.checksum.map(Algorithm::sdk))
            .set_checksum_type(meta.checksum.map(Algorithm::multipart_type));
        let resp = req
            .send()
            .await
            .map_err(|e| self.classify(e, Some(bucket)))?;
        self.check_encrypted(
            (bucket, key, resp.upload_id()),
            resp.server_side_encryption().map(|a| a.as_str()),
            resp.sse_customer_algorithm(),
        )
        .await?;
        resp.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StoreError::Other("the server returned no upload id".into()))
    }

    /// One part, with its Content-MD5 or, in an upload made with a
    /// checksum algorithm, its checksum.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: ByteStream,
        len: u64,
        check: &PartCheck,
    ) -> Result<CompletedPart, StoreError> {
        let req = self.client.upload_part();
        let resp = checksummed!(with_key!(req, self.sse()), check.sum())
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number)
            .content_length(len as i64)
            .set_content_md5(check.md5())
            .body(body)
            .customize()
            .config_override(self.upload_timeouts(len))
            .send()
            .await
            .map_err(|e| self.classify(e, Some(bucket)))?;
        let sum = check.sum();
        self.check_checksum(
            &format!("part {part_number} of s3://{bucket}/{key}"),
            sum,
            [
                resp.checksum_crc32_c(),
                resp.checksum_crc64_nvme(),
                resp.checksum_sha256(),
            ],
        )?;
        Ok(CompletedPart::builder()
            .part_number(part_number)
            .set_e_tag(resp.e_tag().map(str::to_string))
            .set_checksum_crc32_c(sum.and_then(Checksum::crc32c))
            .set_checksum_crc64_nvme(sum.and_then(Checksum::crc64nvme))
            .set_checksum_sha256(sum.and_then(Checksum::sha256))
            .build())
    }

    /// Completes a multipart upload. A 200 answer whose body cannot be read
    /// (some servers name the XML root differently) is
    /// [`StoreError::UnreadableSuccess`]: the caller confirms with HEAD.
    ///
    /// `whole`: with a checksum algorithm that has one for multipart
    /// objects, the whole object's checksum (the server checks it against
    /// the one it makes of the parts'). The type goes only with it: some
    /// servers refuse a type without a checksum.
    pub async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
        whole: Option<&Checksum>,
    ) -> Result<Option<String>, StoreError> {
        let resp = self
            .client
            .complete_multipart_upload()
            .set_checksum_type(whole.map(|w| w.algorithm.multipart_type()))
            .set_checksum_crc32_c(whole.and_then(Checksum::crc32c))
            .set_checksum_crc64_nvme(whole.and_then(Checksum::crc64nvme))
            .set_checksum_sha256(whole.and_then(Checksum::sha256))
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match resp {
            Ok(r) => Ok(r.e_tag().map(unquote)),
            Err(e) => {
                let ok_status = e.raw_response().map(|r| r.status().as_u16()) == Some(200);
                if ok_status && e.code().is_none() {
                    return Err(StoreError::UnreadableSuccess(source_chain(&e)));
                }
                Err(self.classify(e, Some(bucket)))
            }
        }
    }

    /// A server-side copy of `from` (in bucket `from.0`) to `to` in
    /// `bucket`, with the metadata replaced by `meta` (the new name may have
    /// another Content-Type). `if_match` guards against a source replaced by
    /// someone else. Sources up to 5 GiB only.
    pub async fn copy(
        &self,
        from: (&str, &str),
        bucket: &str,
        to: &str,
        if_match: Option<&str>,
        meta: &PutMeta,
    ) -> Result<Option<String>, StoreError> {
        let req = self.client.copy_object();
        let req = source_key!(encrypted!(req, self.sse()), self.sse());
        let resp = req
            .bucket(bucket)
            .key(to)
            .copy_source(copy_source(from.0, from.1))
            .set_copy_source_if_match(if_match.map(|e| format!("\"{e}\"")))
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .content_type(&meta.content_type)
            .set_metadata(Some(meta.user_metadata()))
            .set_storage_class(meta.class())
            .set_cache_control(meta.headers.cache_control.clone())
            .set_content_encoding(meta.headers.content_encoding.clone())
            .set_content_disposition(meta.headers.content_disposition.clone())
            .set_content_language(meta.headers.content_language.clone())
            .set_acl(meta.acl())
            .set_checksum_algorithm(meta.checksum.map(Algorithm::sdk))
            .send()
            .await
            .map_err(|e| self.classify(e, Some(bucket)))?;
        self.check_encrypted(
            (bucket, to, None),
            resp.server_side_encryption().map(|a| a.as_str()),
            resp.sse_customer_algorithm(),
        )
        .await?;
        Ok(resp
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .map(unquote))
    }

    /// A server-side copy of `from` to `to` in `bucket` as it is, metadata
    /// and headers included. False when there is nothing at `from`.
    pub async fn copy_as_is(
        &self,
        from: (&str, &str),
        bucket: &str,
        to: &str,
    ) -> Result<bool, StoreError> {
        let req = self.client.copy_object();
        let sent = source_key!(encrypted!(req, self.sse()), self.sse())
            .bucket(bucket)
            .key(to)
            .copy_source(copy_source(from.0, from.1))
            .send()
            .await;
        match sent.map_err(|e| self.classify(e, Some(bucket))) {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One part of a multipart copy: bytes `range` (inclusive) of `from`.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_part_copy(
        &self,
        from: (&str, &str),
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        range: (u64, u64),
        if_match: Option<&str>,
    ) -> Result<CompletedPart, StoreError> {
        let req = self.client.upload_part_copy();
        let resp = source_key!(with_key!(req, self.sse()), self.sse())
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number)
            .copy_source(copy_source(from.0, from.1))
            .copy_source_range(format!("bytes={}-{}", range.0, range.1))
            .set_copy_source_if_match(if_match.map(|e| format!("\"{e}\"")))
            .send()
            .await
            .map_err(|e| self.classify(e, Some(bucket)))?;
        Ok(CompletedPart::builder()
            .part_number(part_number)
            .set_e_tag(
                resp.copy_part_result()
                    .and_then(|r| r.e_tag())
                    .map(str::to_string),
            )
            .build())
    }

    /// The ids of the multipart uploads open for exactly `key`.
    pub async fn open_uploads(&self, bucket: &str, key: &str) -> Result<Vec<String>, StoreError> {
        let resp = self
            .client
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(key)
            .send()
            .await
            .map_err(|e| self.classify(e, Some(bucket)))?;
        Ok(resp
            .uploads()
            .iter()
            .filter(|u| u.key() == Some(key))
            .filter_map(|u| u.upload_id().map(str::to_string))
            .collect())
    }

    pub async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        self.client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| self.classify(e, Some(bucket)))?;
        Ok(())
    }

    /// Deletes up to 1000 keys in one DeleteObjects request, with Content-MD5
    /// as S3 requires. Returns the keys that failed, with the reason.
    pub async fn delete_batch(
        &self,
        bucket: &str,
        keys: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        let objects = keys
            .iter()
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Other(e.to_string()))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| StoreError::Other(e.to_string()))?;
        let resp = self
            .client
            .delete_objects()
            .bucket(bucket)
            .delete(delete)
            .customize()
            .mutate_request(|req| {
                // Content-MD5 is what every S3 implementation understands;
                // the SDK's CRC32 is dropped for providers that reject it.
                if let Some(body) = req.body().bytes() {
                    let md5: [u8; 16] = Md5::digest(body).into();
                    let headers = req.headers_mut();
                    headers.remove("x-amz-checksum-crc32");
                    headers.remove("x-amz-sdk-checksum-algorithm");
                    headers.insert("Content-MD5", b64(&md5));
                }
            })
            .send()
            .await
            .map_err(|e| self.classify(e, Some(bucket)))?;
        Ok(resp
            .errors()
            .iter()
            .map(|e| {
                (
                    e.key().unwrap_or_default().to_string(),
                    format!(
                        "{}: {}",
                        e.code().unwrap_or("error"),
                        e.message().unwrap_or_default()
                    ),
                )
            })
            .collect())
    }
}

/// Pages through ListObjectsV2; owns its continuation token.
pub struct Lister {
    store: Store,
    bucket: String,
    prefix: String,
    delimiter: Option<String>,
    token: Option<String>,
    start_after: Option<String>,
    done: bool,
    /// MaxKeys to ask for; `None`: the server's default (1,000).
    page_size: Option<i32>,
}

impl Lister {
    /// Asks for pages of up to `n` keys. S3 never returns more than 1,000
    /// whatever is asked; servers that return larger pages answer a long
    /// listing in fewer requests, and a server that refuses the number
    /// (`InvalidArgument`) is asked again without it.
    pub fn page_size(mut self, n: i32) -> Self {
        if !self.store.default_pages.load(Ordering::Relaxed) {
            self.page_size = Some(n);
        }
        self
    }

    /// Starts after `key` (a listing of one range of keys).
    pub fn start_after(mut self, key: Option<String>) -> Self {
        self.start_after = key;
        self
    }

    /// The next page, or `None` after the last.
    pub async fn next_page(&mut self) -> Result<Option<Page>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let resp = loop {
            let sent = self
                .store
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .set_delimiter(self.delimiter.clone())
                .set_continuation_token(self.token.clone())
                .set_start_after(self.start_after.clone())
                .set_max_keys(self.page_size)
                .send()
                .await
                .map_err(|e| {
                    not_s3(
                        self.store.classify(e, Some(&self.bucket)),
                        &self.store.endpoint,
                    )
                });
            match sent {
                // Refused (InvalidArgument, or a bare 400 on some
                // servers): the same page again at the default size.
                Err(StoreError::InvalidArgument(_)) if self.page_size.is_some() => {
                    self.page_size = None;
                    self.store.default_pages.store(true, Ordering::Relaxed);
                }
                Err(StoreError::Other(m))
                    if self.page_size.is_some() && m.starts_with("HTTP 400") =>
                {
                    self.page_size = None;
                    self.store.default_pages.store(true, Ordering::Relaxed);
                }
                other => break other?,
            }
        };
        self.token = None;
        self.start_after = None;
        let objects = resp
            .contents()
            .iter()
            .map(|o| ObjectInfo {
                key: o.key().unwrap_or_default().to_string(),
                size: o.size().unwrap_or(0).max(0) as u64,
                etag: o.e_tag().map(unquote).filter(|e| !e.is_empty()),
                last_modified: o.last_modified().cloned(),
                archived: o
                    .storage_class()
                    .is_some_and(|c| is_archive_class(c.as_str())),
            })
            .collect();
        let prefixes = resp
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(str::to_string))
            .collect();
        let last = resp
            .contents()
            .last()
            .and_then(|o| o.key())
            .map(str::to_string);
        match (
            resp.is_truncated() == Some(true),
            resp.next_continuation_token(),
        ) {
            (true, Some(t)) if !t.is_empty() => self.token = Some(t.to_string()),
            // A truncated page without a token (servers in ListObjects V1
            // style): go on after the last key seen.
            (true, _) => match last {
                Some(k) => self.start_after = Some(k),
                None => {
                    return Err(StoreError::Other(format!(
                        "the listing of s3://{}/{} is truncated but gives no way to continue",
                        self.bucket, self.prefix
                    )))
                }
            },
            (false, _) => self.done = true,
        }
        Ok(Some(Page { objects, prefixes }))
    }
}

/// Puts a page of versions back in key order, newest first within a key:
/// the SDK gives versions and delete markers apart. Servers that keep
/// times to the second make ties: the latest goes first, then a delete
/// marker before a version (a delete follows the put of what it deletes).
fn order_versions(page: &mut [Version]) {
    page.sort_by(|a, b| {
        a.object
            .key
            .cmp(&b.object.key)
            .then_with(|| b.latest.cmp(&a.latest))
            .then_with(|| b.object.last_modified.cmp(&a.object.last_modified))
            .then_with(|| b.delete_marker.cmp(&a.delete_marker))
    });
}

/// A listing answered "404" without an S3 error code: the endpoint is not
/// an S3 service, or it wants the other addressing style.
fn not_s3(e: StoreError, endpoint: &str) -> StoreError {
    match e {
        StoreError::TimedOut { endpoint } => StoreError::Unreachable {
            endpoint,
            detail: "no answer in time (raise --connect-timeout / --read-timeout if the link \
                     is slow)"
                .into(),
        },
        StoreError::NotFound => StoreError::Unreachable {
            endpoint: endpoint.to_string(),
            detail: "it answered 404 Not Found to a listing: is it an S3 endpoint? check \
                     --endpoint, and try --path-style or --virtual-host"
                .into(),
        },
        other => other,
    }
}

/// The `x-amz-copy-source` value: `bucket/key`, URL-encoded except `/`.
fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = String::with_capacity(bucket.len() + key.len() + 8);
    for b in bucket
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(key.bytes())
    {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unquote(s: &str) -> String {
    s.trim_matches('"').to_string()
}

/// The MD5 an ETag stands for: only a plain 32-hex-digit ETag (not a
/// multipart `…-N` one) is an MD5 of the content.
pub fn etag_md5(etag: &str) -> Option<[u8; 16]> {
    if etag.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(etag, &mut out).ok()?;
    Some(out)
}

fn source_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p: &String| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

fn classify<E>(err: SdkError<E, HttpResponse>, endpoint: &str, bucket: Option<&str>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let unreachable = |detail: String| StoreError::Unreachable {
        endpoint: endpoint.to_string(),
        detail,
    };
    match &err {
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            return StoreError::TimedOut {
                endpoint: endpoint.to_string(),
            }
        }
        SdkError::DispatchFailure(d) => {
            let detail = d
                .as_connector_error()
                .map(|c| source_chain(c))
                .unwrap_or_else(|| source_chain(&err));
            if detail.contains("loading credentials")
                || detail.contains("no credentials")
                || detail.contains("credential provider was not enabled")
            {
                return StoreError::NoCredentials {
                    detail,
                    from: String::new(),
                };
            }
            // The request body (a file) could not be read or refused to
            // finish: about that file, not the server.
            if d.is_user() || detail.contains("while it was sent") {
                return StoreError::Other(detail);
            }
            // A connection trusting a CA bundle: say which check failed
            // rather than ask for the bundle that was given.
            if let Some(why) = d.as_connector_error().and_then(|c| tls::explain(c)) {
                return unreachable(why);
            }
            let hint = if detail.contains("certificate") || detail.contains("UnknownIssuer") {
                " (the TLS certificate did not verify; for a private CA pass --ca-bundle FILE.pem or set AWS_CA_BUNDLE)"
            } else if detail.contains("dns error") || detail.contains("failed to lookup") {
                " (the host name does not resolve; check --endpoint)"
            } else if detail.contains("Connection refused") {
                " (nothing listens there; check --endpoint and that the service is up)"
            } else {
                ""
            };
            return unreachable(format!("{detail}{hint}"));
        }
        SdkError::TimeoutError(_) => {
            return StoreError::TimedOut {
                endpoint: endpoint.to_string(),
            }
        }
        SdkError::ConstructionFailure(_) => {
            let detail = source_chain(&err);
            if detail.to_ascii_lowercase().contains("credential") {
                return StoreError::NoCredentials {
                    detail,
                    from: String::new(),
                };
            }
            return StoreError::Other(format!("cannot build the request: {detail}"));
        }
        _ => {}
    }
    let status = match &err {
        SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
        SdkError::ResponseError(r) => Some(r.raw().status().as_u16()),
        _ => None,
    };
    let code = err.code().unwrap_or_default().to_string();
    let message = err.message().unwrap_or_default().to_string();
    let what = if message.is_empty() {
        code.clone()
    } else {
        format!("{code}: {message}")
    };
    match code.as_str() {
        "NoSuchBucket" => {
            return StoreError::NoSuchBucket(bucket.unwrap_or("?").to_string(), endpoint.into())
        }
        "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "NotSignedUp"
        | "InvalidToken"
        | "ExpiredToken"
        | "TokenRefreshRequired"
        | "InvalidClientTokenId"
        | "UnrecognizedClientException" => {
            return StoreError::BadCredentials {
                detail: what,
                from: "the configured credentials".into(),
            }
        }
        "InvalidStorageClass" => return StoreError::InvalidStorageClass(what),
        "InvalidBucketName" => {
            return StoreError::InvalidBucketName {
                bucket: bucket.unwrap_or("?").to_string(),
                detail: what,
            }
        }
        "AuthorizationHeaderMalformed"
        | "PermanentRedirect"
        | "IllegalLocationConstraintException" => return StoreError::WrongRegion(what),
        "RequestTimeTooSkewed" => return StoreError::ClockSkew(what),
        "AccessDenied" | "AllAccessDisabled" => return StoreError::AccessDenied(what),
        "NoSuchKey" | "NotFound" => return StoreError::NotFound,
        "PreconditionFailed" => return StoreError::PreconditionFailed,
        "InvalidArgument" => return StoreError::InvalidArgument(what),
        "SlowDown"
        | "ServiceUnavailable"
        | "InternalError"
        | "RequestTimeout"
        | "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded" => return StoreError::ServerError(what),
        _ => {}
    }
    match status {
        Some(404) => StoreError::NotFound,
        Some(412) => StoreError::PreconditionFailed,
        Some(403) => StoreError::AccessDenied(if what.is_empty() {
            "HTTP 403".into()
        } else {
            what
        }),
        Some(s) if s >= 500 && what.is_empty() => {
            StoreError::ServerError(format!("HTTP {s} from {endpoint}: {}", source_chain(&err)))
        }
        Some(s) if s >= 500 => StoreError::ServerError(what),
        Some(s) if what.is_empty() => {
            StoreError::Other(format!("HTTP {s} from {endpoint}: {}", source_chain(&err)))
        }
        _ if what.is_empty() => StoreError::Other(source_chain(&err)),
        _ => StoreError::Other(what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_one_second_keep_the_latest_first_then_the_delete() {
        let v = |key: &str, secs: i64, marker: bool, latest: bool| Version {
            object: ObjectInfo {
                key: key.into(),
                size: 0,
                etag: None,
                last_modified: Some(DateTime::from_secs(secs)),
                archived: false,
            },
            version_id: Some(format!("{key}{secs}{marker}")),
            delete_marker: marker,
            latest,
        };
        // As the SDK gives them: versions first, then delete markers.
        let mut page = vec![
            v("a", 10, false, false),
            v("a", 10, false, true),
            v("b", 10, false, false),
            v("b", 9, false, false),
            v("a", 10, true, false),
            v("b", 10, true, true),
        ];
        order_versions(&mut page);
        let order: Vec<(&str, i64, bool, bool)> = page
            .iter()
            .map(|v| {
                let t = v.object.last_modified.as_ref().map_or(0, |t| t.secs());
                (v.object.key.as_str(), t, v.delete_marker, v.latest)
            })
            .collect();
        assert_eq!(
            order,
            [
                ("a", 10, false, true),
                ("a", 10, true, false),
                ("a", 10, false, false),
                ("b", 10, true, true),
                ("b", 10, false, false),
                ("b", 9, false, false),
            ]
        );
    }

    #[test]
    fn copy_source_is_url_encoded() {
        assert_eq!(
            copy_source("b", "dir/a b+c%d?.txt"),
            "b/dir/a%20b%2Bc%25d%3F.txt"
        );
        assert_eq!(copy_source("b", "日"), "b/%E6%97%A5");
    }

    #[test]
    fn only_plain_etags_are_md5() {
        assert!(etag_md5("d41d8cd98f00b204e9800998ecf8427e").is_some());
        assert!(etag_md5("d41d8cd98f00b204e9800998ecf8427e-2").is_none());
        assert!(etag_md5("zz1d8cd98f00b204e9800998ecf8427e").is_none());
        assert!(etag_md5("").is_none());
    }
}
