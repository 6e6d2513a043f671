//! Configuration: flags > environment > config file > defaults, resolved once
//! into plain structs with no clap types in them.
//!
//! The config file is node-s3ma's `conf/config.json` (camelCase keys); every
//! key node-s3ma understood keeps its meaning. All fallible resolution (paths,
//! endpoint, sizes, mime table, credentials source) happens here, so the
//! commands only wire components together.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use crate::cli::{ConnectionArgs, FilterArgs, MirrorArgs, TransferArgs, WatchArgs};
use crate::keys::Location;
use crate::mime::MimeTable;

/// Every key the config file may hold. node-s3ma's keys first, then the AWS
/// SDK for JavaScript keys node-s3ma passed through, then s3ma's own.
const KNOWN_KEYS: &[&str] = &[
    "watchDir",
    "accessKeyId",
    "secretAccessKey",
    "region",
    "bucket",
    "topPrefix",
    "bucketSync",
    "topPrefixSync",
    "endpointSync",
    "storageClass",
    "mtimeToMetaData",
    "mimeConfig",
    "syslogFacility",
    "sessionToken",
    "s3ForcePathStyle",
    "sslEnabled",
    "maxRetries",
    "signatureVersion",
    "endpoint",
    "pathStyle",
    "profile",
    "caBundle",
    "exclude",
    "includeHidden",
    "followSymlinks",
    "delete",
    "maxDelete",
    "concurrency",
    "multipartThreshold",
    "multipartChunkSize",
    "stateDir",
    "connectTimeout",
    "readTimeout",
    "includeTempFiles",
    "debounce",
    "rescanInterval",
    "maxDelay",
    "maxDeleteWindow",
    "eventQueue",
    "destinations",
];

/// The config file as written. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileConfig {
    pub watch_dir: Option<PathBuf>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub bucket: Option<String>,
    pub top_prefix: Option<String>,
    pub bucket_sync: Option<String>,
    pub top_prefix_sync: Option<String>,
    pub endpoint_sync: Option<String>,
    pub storage_class: Option<String>,
    #[serde(rename = "mtimeToMetaData")]
    pub mtime_to_meta_data: Option<bool>,
    pub mime_config: Option<PathBuf>,
    pub syslog_facility: Option<serde_json::Value>,
    #[serde(rename = "s3ForcePathStyle")]
    pub s3_force_path_style: Option<bool>,
    pub ssl_enabled: Option<bool>,
    pub max_retries: Option<u32>,
    pub signature_version: Option<String>,
    pub endpoint: Option<String>,
    pub path_style: Option<bool>,
    pub profile: Option<String>,
    pub ca_bundle: Option<PathBuf>,
    pub exclude: Option<Vec<String>>,
    pub include_hidden: Option<bool>,
    pub follow_symlinks: Option<bool>,
    pub delete: Option<bool>,
    pub max_delete: Option<u64>,
    pub concurrency: Option<usize>,
    pub multipart_threshold: Option<SizeValue>,
    pub multipart_chunk_size: Option<SizeValue>,
    pub state_dir: Option<PathBuf>,
    pub connect_timeout: Option<f64>,
    pub read_timeout: Option<f64>,
    pub include_temp_files: Option<bool>,
    /// Milliseconds.
    pub debounce: Option<u64>,
    /// A duration such as `"1h"`, or seconds as a number.
    pub rescan_interval: Option<DurationValue>,
    /// Longest a changing path waits before it is uploaded anyway.
    pub max_delay: Option<DurationValue>,
    /// The window `maxDelete` counts deletions over, in `watch`.
    pub max_delete_window: Option<DurationValue>,
    /// Events held between the kernel and the daemon.
    pub event_queue: Option<usize>,
    /// Further buckets every object is mirrored to.
    pub destinations: Option<Vec<DestinationFile>>,
}

/// One entry of `destinations`. Unset connection keys are the primary's.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationFile {
    pub name: Option<String>,
    pub bucket: String,
    pub prefix: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub profile: Option<String>,
    pub path_style: Option<bool>,
    pub storage_class: Option<String>,
}

/// A duration written as seconds or a string such as `"15m"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    Seconds(u64),
    Text(String),
}

/// A size written as a number of bytes or a string such as `"64MiB"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    fn bytes(&self) -> Result<u64> {
        match self {
            SizeValue::Bytes(n) => Ok(*n),
            SizeValue::Text(s) => parse_size(s),
        }
    }
}

/// A loaded config file and what it said that deserves a warning.
#[derive(Debug, Default)]
pub struct Loaded {
    pub file: FileConfig,
    pub path: Option<PathBuf>,
    pub warnings: Vec<String>,
}

/// Finds and reads the config file: the explicit path (flag or
/// `S3MA_CONFIG`) must exist; otherwise `./conf/config.json` is used when
/// present.
pub fn load(explicit: Option<&Path>) -> Result<Loaded> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let default = PathBuf::from("conf/config.json");
            if !default.is_file() {
                return Ok(Loaded::default());
            }
            default
        }
    };
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the config file {} (give another with --config or S3MA_CONFIG)",
            path.display()
        )
    })?;
    let file = parse(&text).with_context(|| format!("in the config file {}", path.display()))?;
    let mut warnings = Vec::new();
    check_permissions(&path, &file, &mut warnings);
    if file.bucket_sync.is_none()
        && (file.endpoint_sync.is_some() || file.top_prefix_sync.is_some())
    {
        warnings.push(format!(
            "{}: topPrefixSync and endpointSync have no effect without bucketSync; objects go \
             to the primary bucket only",
            path.display()
        ));
    }
    if let Some(v) = file.signature_version.as_deref().filter(|v| *v != "v4") {
        warnings.push(format!(
            "{}: signatureVersion \"{v}\" is ignored; s3ma always signs with AWS Signature Version 4",
            path.display()
        ));
    }
    if file.syslog_facility.is_some() {
        warnings.push(format!(
            "{}: syslogFacility is ignored; s3ma logs to stdout/stderr (use journald or your cron mail)",
            path.display()
        ));
    }
    Ok(Loaded {
        file,
        path: Some(path),
        warnings,
    })
}

/// Parses config JSON: syntax errors name line and column, unknown keys get
/// a suggestion, type errors name the key.
pub fn parse(text: &str) -> Result<FileConfig> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        anyhow!(
            "invalid JSON at line {}, column {}: {}",
            e.line(),
            e.column(),
            strip_position(&e)
        )
    })?;
    let Some(map) = value.as_object() else {
        bail!("the config must be a JSON object ({{ \"key\": value, … }})");
    };
    for key in map.keys() {
        if !KNOWN_KEYS.contains(&key.as_str()) {
            match did_you_mean(key) {
                Some(s) => bail!("unknown key \"{key}\"; did you mean \"{s}\"?"),
                None => bail!(
                    "unknown key \"{key}\"; see docs/configuration.md for the keys s3ma reads"
                ),
            }
        }
    }
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        anyhow!(
            "key \"{key}\" at line {}, column {}: {}",
            inner.line(),
            inner.column(),
            strip_position(&inner)
        )
    })
}

fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn did_you_mean(key: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    KNOWN_KEYS
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn check_permissions(path: &Path, file: &FileConfig, warnings: &mut Vec<String>) {
    use std::os::unix::fs::PermissionsExt;
    let in_destinations = file
        .destinations
        .iter()
        .flatten()
        .any(|d| d.secret_access_key.is_some());
    if file.secret_access_key.is_none() && !in_destinations {
        return;
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            warnings.push(format!(
                "{} holds a secret key and is readable by group or others; run: chmod 600 {}",
                path.display(),
                path.display()
            ));
        }
    }
}

/// Parses `5242880`, `64M`, `64MiB`, `1.5G`, `512k` (binary units).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow!("'{s}' is not a size (examples: 5242880, 64MiB, 1G)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => bail!("'{s}' has an unknown unit (use K, M, G, T, KiB, MiB, GiB or TiB)"),
    };
    Ok((n * mult as f64) as u64)
}

/// Access keys given in the config file. Debug never shows the secret.
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .finish()
    }
}

/// How to reach the S3 service.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Custom endpoint URL with scheme; `None` means AWS.
    pub endpoint: Option<String>,
    /// Region to sign for; `None` lets the AWS chain decide (then us-east-1).
    pub region: Option<String>,
    /// Profile for the AWS credential chain.
    pub profile: Option<String>,
    /// `--profile` was given: credentials come from that profile only.
    pub profile_only: bool,
    /// Path-style addressing (`host/bucket`) rather than virtual host.
    pub path_style: bool,
    /// Extra CA certificates (PEM) added to the system roots.
    pub ca_bundle: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Attempts per request, retries included.
    pub max_attempts: u32,
    /// Keys from the config file; `None` uses the AWS chain.
    pub credentials: Option<StaticCredentials>,
}

impl Connection {
    /// Where requests go, for messages.
    pub fn describe(&self) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None => format!(
                "AWS S3 ({})",
                self.region.as_deref().unwrap_or("default region")
            ),
        }
    }
}

/// What `sync` (and later `watch`) needs.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// The directory, as the user named it (a symbolic link stays one).
    pub dir: PathBuf,
    /// The bucket and key prefix it is mirrored to.
    pub dest: Location,
    /// Delete objects whose file is gone.
    pub delete: bool,
    /// At most this many deletions per reconcile (in `watch`, per
    /// [`WatchConfig::max_delete_window`]).
    pub max_delete: Option<u64>,
    /// Print what would be done, change nothing.
    pub dry_run: bool,
    /// Compare every file's MD5 with the object's, not size and mtime.
    pub checksum: bool,
    /// Which paths are mirrored.
    pub filter: FilterConfig,
    /// How objects are sent.
    pub transfer: TransferConfig,
    /// Where the state database, the lock and the journal live.
    pub state_dir: PathBuf,
    /// The primary's location and connection, when this is a further
    /// destination on the primary's service with its credentials: objects
    /// the primary holds are copied from it on the server.
    pub copy_from: Option<(Location, Connection)>,
}

/// Which local paths are mirrored.
#[derive(Debug, Clone, Default)]
pub struct FilterConfig {
    /// Gitignore-style globs relative to the root.
    pub exclude: Vec<String>,
    pub include_hidden: bool,
    pub follow_symlinks: bool,
    /// Mirror editors' temporary and backup files too.
    pub include_temp_files: bool,
}

/// How objects are written.
#[derive(Debug, Clone)]
pub struct TransferConfig {
    /// Concurrent requests (uploads, parts, HEADs).
    pub concurrency: usize,
    /// Files at least this large go multipart.
    pub multipart_threshold: u64,
    /// Preferred part size; grows so no upload exceeds 10,000 parts.
    pub chunk_size: u64,
    pub storage_class: Option<String>,
    /// Write the `mtime` user metadata (node-s3ma's `mtimeToMetaData`).
    pub mtime_metadata: bool,
    pub mime: MimeTable,
}

/// S3's minimum part size (except the last part).
pub const MIN_PART_SIZE: u64 = 5 << 20;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A URL with a scheme; `host` alone means https (http when the node-s3ma
/// key `sslEnabled` is false).
pub fn endpoint_url(value: &str, ssl: bool) -> Result<String> {
    let v = value.trim().trim_end_matches('/');
    if v.is_empty() {
        bail!("the endpoint is empty");
    }
    if let Some((scheme, rest)) = v.split_once("://") {
        if scheme != "http" && scheme != "https" {
            bail!("endpoint '{value}' has scheme '{scheme}'; use http:// or https://");
        }
        if rest.is_empty() {
            bail!("endpoint '{value}' names no host");
        }
        return Ok(v.to_string());
    }
    Ok(format!("{}://{v}", if ssl { "https" } else { "http" }))
}

fn seconds(name: &str, v: f64) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
        bail!("{name} must be a number of seconds above 0 and at most 86400, not {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

pub fn resolve_connection(args: &ConnectionArgs, file: &FileConfig) -> Result<Connection> {
    let ssl = file.ssl_enabled.unwrap_or(true);
    let endpoint = match args
        .endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .or_else(|| file.endpoint.clone())
    {
        Some(e) => Some(endpoint_url(&e, ssl)?),
        None => None,
    };
    let region = args
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .or_else(|| file.region.clone())
        .filter(|r| !r.trim().is_empty());
    let path_style = if args.path_style {
        true
    } else if args.virtual_host {
        false
    } else {
        file.path_style
            .or(file.s3_force_path_style)
            .unwrap_or(endpoint.is_some())
    };
    // An explicit --profile beats keys in the file (flags win); otherwise
    // the file's keys are used before the AWS chain, as node-s3ma did.
    let credentials = match (&file.access_key_id, &file.secret_access_key) {
        _ if args.profile.is_some() => None,
        (Some(id), Some(secret)) => Some(StaticCredentials {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
            session_token: file.session_token.clone(),
        }),
        (Some(_), None) | (None, Some(_)) => bail!(
            "the config file has only one of accessKeyId and secretAccessKey; give both, or \
             neither to use the AWS credential chain"
        ),
        (None, None) => None,
    };
    let max_attempts = args
        .retries
        .or(file.max_retries.map(|r| r.saturating_add(1)))
        .unwrap_or(5);
    if !(1..=100).contains(&max_attempts) {
        bail!(
            "the number of attempts (--retries, or maxRetries + 1) must be between 1 and 100, \
             not {max_attempts}"
        );
    }
    Ok(Connection {
        endpoint,
        region,
        profile: args
            .profile
            .clone()
            .or_else(|| env("AWS_PROFILE"))
            .or_else(|| file.profile.clone()),
        profile_only: args.profile.is_some(),
        path_style,
        ca_bundle: args
            .ca_bundle
            .clone()
            .or_else(|| env("AWS_CA_BUNDLE").map(PathBuf::from))
            .or_else(|| file.ca_bundle.clone()),
        connect_timeout: seconds(
            "the connect timeout",
            args.connect_timeout
                .or(file.connect_timeout)
                .unwrap_or(10.0),
        )?,
        read_timeout: seconds(
            "the read timeout",
            args.read_timeout.or(file.read_timeout).unwrap_or(60.0),
        )?,
        max_attempts,
        credentials,
    })
}

/// Splits `[DIR] [s3://DEST]` and fills the gaps from the config file.
pub fn resolve_paths(paths: &[String], file: &FileConfig) -> Result<(PathBuf, Location)> {
    let (dir, dest) = match paths {
        [] => (None, None),
        [one] if one.starts_with("s3://") => (None, Some(one.as_str())),
        [one] => (Some(one.as_str()), None),
        [a, b] => (Some(a.as_str()), Some(b.as_str())),
        _ => bail!("give at most a directory and an s3:// destination"),
    };
    if let Some(d) = dir {
        if d.starts_with("s3://") {
            bail!("'{d}' is an S3 location; give the local directory first: s3ma sync DIR s3://BUCKET/PREFIX");
        }
    }
    let dir = match dir {
        Some(d) => PathBuf::from(d),
        None => file.watch_dir.clone().ok_or_else(|| {
            anyhow!("no directory given: pass DIR, or set watchDir in the config file")
        })?,
    };
    let dest = match dest {
        Some(d) => Location::parse(d)?,
        None => {
            let bucket = file.bucket.as_deref().ok_or_else(|| {
                anyhow!(
                    "no destination given: pass s3://BUCKET[/PREFIX], or set bucket (and topPrefix) in the config file"
                )
            })?;
            Location::new(bucket, file.top_prefix.as_deref().unwrap_or(""))
                .context("in the config key \"bucket\"")?
        }
    };
    Ok((dir, dest))
}

pub fn resolve_filter(args: &FilterArgs, file: &FileConfig) -> FilterConfig {
    let mut exclude = file.exclude.clone().unwrap_or_default();
    exclude.extend(args.exclude.iter().cloned());
    FilterConfig {
        exclude,
        include_hidden: args.include_hidden || file.include_hidden.unwrap_or(false),
        follow_symlinks: args.follow_symlinks || file.follow_symlinks.unwrap_or(false),
        include_temp_files: args.include_temp_files || file.include_temp_files.unwrap_or(false),
    }
}

pub fn resolve_transfer(
    args: &TransferArgs,
    file: &FileConfig,
    config_path: Option<&Path>,
) -> Result<TransferConfig> {
    let concurrency = args.concurrency.or(file.concurrency).unwrap_or(32);
    if concurrency == 0 || concurrency > 1024 {
        bail!("concurrency must be between 1 and 1024, not {concurrency}");
    }
    let size = |flag: &Option<String>, key: &Option<SizeValue>, name: &str, default: u64| match (
        flag, key,
    ) {
        (Some(s), _) => parse_size(s).with_context(|| format!("in --{name}")),
        (None, Some(v)) => v
            .bytes()
            .with_context(|| format!("in the config key for {name}")),
        (None, None) => Ok(default),
    };
    let multipart_threshold = size(
        &args.multipart_threshold,
        &file.multipart_threshold,
        "multipart-threshold",
        64 << 20,
    )?;
    let chunk_size = size(
        &args.multipart_chunk_size,
        &file.multipart_chunk_size,
        "multipart-chunk-size",
        16 << 20,
    )?;
    if chunk_size < MIN_PART_SIZE {
        bail!("the multipart chunk size must be at least 5MiB (S3's minimum part size)");
    }
    if chunk_size > 5 << 30 {
        bail!("the multipart chunk size must be at most 5GiB (S3's maximum part size)");
    }
    if multipart_threshold > 5 << 30 {
        bail!("the multipart threshold must be at most 5GiB (S3's largest single PUT)");
    }
    let mime = match &file.mime_config {
        Some(p) => MimeTable::load(p).context("in the config key \"mimeConfig\"")?,
        None => {
            let beside = config_path
                .and_then(Path::parent)
                .map(|d| d.join("config_mime.types"));
            match beside {
                Some(p) if p.is_file() => MimeTable::load(&p)?,
                _ => MimeTable::default(),
            }
        }
    };
    Ok(TransferConfig {
        concurrency,
        multipart_threshold: multipart_threshold.max(1),
        chunk_size,
        storage_class: args
            .storage_class
            .clone()
            .or_else(|| file.storage_class.clone()),
        mtime_metadata: file.mtime_to_meta_data.unwrap_or(true),
        mime,
    })
}

pub fn default_state_dir() -> PathBuf {
    if let Some(x) = env("XDG_STATE_HOME") {
        return PathBuf::from(x).join("s3ma");
    }
    match env("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/s3ma"),
        None => PathBuf::from("/var/lib/s3ma"),
    }
}

impl SyncConfig {
    /// The compiled filters for the directory; the state directory is
    /// never mirrored, even when it lies inside.
    pub fn filter(&self) -> Result<crate::scan::Filter> {
        crate::scan::Filter::new(&self.dir, &self.filter, Some(&self.state_dir))
    }
}

pub fn resolve_sync(args: &MirrorArgs, dry_run: bool, loaded: &Loaded) -> Result<SyncConfig> {
    let file = &loaded.file;
    let (dir, dest) = resolve_paths(&args.paths, file)?;
    Ok(SyncConfig {
        dir,
        dest,
        delete: !args.no_delete && (args.delete || file.delete.unwrap_or(false)),
        max_delete: args.max_delete.or(file.max_delete),
        dry_run,
        checksum: args.checksum,
        filter: resolve_filter(&args.filter, file),
        transfer: resolve_transfer(&args.transfer, file, loaded.path.as_deref())?,
        state_dir: args
            .transfer
            .state_dir
            .clone()
            .or_else(|| file.state_dir.clone())
            .unwrap_or_else(default_state_dir),
        copy_from: None,
    })
}

/// A further bucket every object is mirrored to: node-s3ma's `bucketSync`,
/// or an entry of `destinations`.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Shown before its log lines (`[name] upload …`).
    pub name: String,
    pub conn: Connection,
    pub dest: Location,
    pub storage_class: Option<String>,
    /// Same service and credentials as the primary: objects are copied
    /// from the primary on the server instead of uploaded again.
    pub copy_from_primary: bool,
}

impl Destination {
    /// The sync of the same directory to this destination.
    pub fn sync_config(&self, primary: &SyncConfig, primary_conn: &Connection) -> SyncConfig {
        let mut cfg = primary.clone();
        cfg.dest = self.dest.clone();
        if self.storage_class.is_some() {
            cfg.transfer.storage_class = self.storage_class.clone();
        }
        cfg.copy_from = self
            .copy_from_primary
            .then(|| (primary.dest.clone(), primary_conn.clone()));
        cfg
    }
}

/// The region of an AWS S3 endpoint (`s3.eu-west-1.amazonaws.com`,
/// `s3-eu-west-1.amazonaws.com`, `s3.amazonaws.com`), `None` for any other
/// host.
fn aws_region_of(url: &str) -> Option<String> {
    let host = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = host.split(['/', ':']).next()?.to_ascii_lowercase();
    let name = host.strip_suffix(".amazonaws.com")?;
    let region = match name {
        "s3" | "s3-external-1" => "us-east-1",
        _ => name.strip_prefix("s3.dualstack.").or_else(|| {
            name.strip_prefix("s3.")
                .or_else(|| name.strip_prefix("s3-"))
        })?,
    };
    // A region name: `eu-west-1`, `us-gov-west-1`; not `accelerate` or
    // `website-us-east-1`.
    let parts: Vec<&str> = region.split('-').collect();
    let looks_like_region = parts.len() >= 3
        && parts[0].len() == 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    looks_like_region.then(|| region.to_string())
}

/// The service a connection talks to, for comparing two of them: AWS
/// (any region, as bucket names are global there) or the endpoint URL in
/// lower case.
fn service(conn: &Connection) -> String {
    match &conn.endpoint {
        None => "aws".into(),
        Some(url) if aws_region_of(url).is_some() => "aws".into(),
        Some(url) => url.trim_end_matches('/').to_ascii_lowercase(),
    }
}

/// Points a connection at `url`: an AWS S3 endpoint becomes AWS in that
/// region (virtual-host addressing), any other host a custom endpoint
/// (path style unless told otherwise).
fn set_endpoint(conn: &mut Connection, url: String, path_style: Option<bool>) {
    match aws_region_of(&url) {
        Some(region) => {
            conn.endpoint = None;
            conn.region = Some(region);
            conn.path_style = path_style.unwrap_or(false);
        }
        None => {
            conn.endpoint = Some(url);
            conn.path_style = path_style.unwrap_or(true);
        }
    }
}

fn same_account(a: &Connection, b: &Connection) -> bool {
    match (&a.credentials, &b.credentials) {
        (Some(x), Some(y)) => {
            x.access_key_id == y.access_key_id
                && x.secret_access_key == y.secret_access_key
                && x.session_token == y.session_token
        }
        (None, None) => a.profile == b.profile,
        _ => false,
    }
}

/// The destinations beyond the primary (`conn`, `primary`): node-s3ma's
/// `bucketSync` first, then the `destinations` list.
pub fn resolve_destinations(
    conn: &Connection,
    primary: &Location,
    file: &FileConfig,
) -> Result<Vec<Destination>> {
    let ssl = file.ssl_enabled.unwrap_or(true);
    let mut out: Vec<Destination> = Vec::new();
    if let Some(bucket) = &file.bucket_sync {
        let mut c = conn.clone();
        if let Some(e) = &file.endpoint_sync {
            let url = endpoint_url(e, ssl).context("in the config key \"endpointSync\"")?;
            set_endpoint(&mut c, url, None);
        }
        let prefix = file.top_prefix_sync.as_deref().unwrap_or(&primary.prefix);
        out.push(Destination {
            name: "bucketSync".into(),
            dest: Location::new(bucket, prefix).context("in the config key \"bucketSync\"")?,
            copy_from_primary: service(&c) == service(conn),
            conn: c,
            storage_class: None,
        });
    }
    for (i, d) in file.destinations.iter().flatten().enumerate() {
        let at = || format!("in destinations[{i}] of the config file");
        let mut c = conn.clone();
        if let Some(e) = &d.endpoint {
            let url = endpoint_url(e, ssl).with_context(at)?;
            set_endpoint(&mut c, url, d.path_style);
        } else if let Some(p) = d.path_style {
            c.path_style = p;
        }
        if let Some(r) = d.region.as_deref().filter(|r| !r.trim().is_empty()) {
            c.region = Some(r.to_string());
        }
        match (&d.access_key_id, &d.secret_access_key, &d.profile) {
            (Some(id), Some(secret), _) => {
                c.credentials = Some(StaticCredentials {
                    access_key_id: id.clone(),
                    secret_access_key: secret.clone(),
                    session_token: d.session_token.clone(),
                });
                c.profile = None;
                c.profile_only = false;
            }
            (Some(_), None, _) | (None, Some(_), _) => {
                return Err(anyhow!(
                    "only one of accessKeyId and secretAccessKey is given; give both, a \
                     profile, or neither to use the primary's credentials"
                ))
                .with_context(at)
            }
            (None, None, Some(profile)) => {
                c.credentials = None;
                c.profile = Some(profile.clone());
                c.profile_only = true;
            }
            (None, None, None) => {}
        }
        let dest = Location::new(&d.bucket, d.prefix.as_deref().unwrap_or(&primary.prefix))
            .with_context(at)?;
        let name = match &d.name {
            Some(n) if n.trim().is_empty() || n.chars().any(char::is_control) => {
                return Err(anyhow!("the name \"{n}\" is empty or unprintable")).with_context(at)
            }
            Some(n) => n.clone(),
            None => d.bucket.clone(),
        };
        out.push(Destination {
            name,
            copy_from_primary: service(&c) == service(conn) && same_account(&c, conn),
            conn: c,
            dest,
            storage_class: d.storage_class.clone(),
        });
    }
    for (i, d) in out.iter().enumerate() {
        if out[..i].iter().any(|o| o.name == d.name) {
            bail!(
                "two destinations are named \"{}\"; give each a different \"name\"",
                d.name
            );
        }
        let clash = |other: &Location, other_conn: &Connection| {
            service(other_conn) == service(&d.conn)
                && other.bucket == d.dest.bucket
                && (other.prefix.starts_with(&d.dest.prefix)
                    || d.dest.prefix.starts_with(&other.prefix))
        };
        let taken = if clash(primary, conn) {
            Some(format!("the primary {primary}"))
        } else {
            out[..i]
                .iter()
                .find(|o| clash(&o.dest, &o.conn))
                .map(|o| format!("destination \"{}\" ({})", o.name, o.dest))
        };
        if let Some(taken) = taken {
            bail!(
                "destination \"{}\" ({}) overlaps {taken}: one would delete the other's \
                 objects; give it another bucket or a prefix outside it",
                d.name,
                d.dest
            );
        }
    }
    Ok(out)
}

/// What `watch` needs beyond a sync.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub sync: SyncConfig,
    /// How long a path must be quiet before it is uploaded (unless it was
    /// closed after writing, which says it is complete).
    pub debounce: Duration,
    /// A path that keeps changing is uploaded at least this often.
    pub max_delay: Duration,
    /// Full reconcile this often; `None` never.
    pub rescan_interval: Option<Duration>,
    /// `max_delete` counts the deletions of this long a window.
    pub max_delete_window: Duration,
    /// Events the kernel's side may queue for the daemon; when they are
    /// more, they are dropped and a full reconcile catches up.
    pub event_queue: usize,
}

/// A duration from a flag, else from a config key, else the default.
fn duration_setting(
    flag: &Option<String>,
    flag_name: &str,
    key: &Option<DurationValue>,
    key_name: &str,
    default: Duration,
) -> Result<Duration> {
    match (flag, key) {
        (Some(s), _) => parse_duration(s).with_context(|| format!("in --{flag_name}")),
        (None, Some(DurationValue::Seconds(n))) => Ok(Duration::from_secs(*n)),
        (None, Some(DurationValue::Text(s))) => {
            parse_duration(s).with_context(|| format!("in the config key \"{key_name}\""))
        }
        (None, None) => Ok(default),
    }
}

pub fn resolve_watch(args: &WatchArgs, loaded: &Loaded) -> Result<WatchConfig> {
    let file = &loaded.file;
    let ms = args.debounce.or(file.debounce).unwrap_or(200);
    if ms > 600_000 {
        bail!("the debounce window must be at most 600000 ms (10 minutes), not {ms}");
    }
    let rescan = duration_setting(
        &args.rescan_interval,
        "rescan-interval",
        &file.rescan_interval,
        "rescanInterval",
        Duration::from_secs(3600),
    )?;
    let debounce = Duration::from_millis(ms);
    let max_delay = duration_setting(
        &args.max_delay,
        "max-delay",
        &file.max_delay,
        "maxDelay",
        Duration::from_secs(60),
    )?;
    if max_delay < debounce.max(Duration::from_secs(1)) {
        bail!(
            "--max-delay must be at least 1s and at least the debounce window ({ms} ms), not \
             {} s",
            max_delay.as_secs()
        );
    }
    let window = duration_setting(
        &args.max_delete_window,
        "max-delete-window",
        &file.max_delete_window,
        "maxDeleteWindow",
        Duration::from_secs(3600),
    )?;
    if window.is_zero() {
        bail!("--max-delete-window must be longer than 0 s (1h is the default)");
    }
    let event_queue = args.event_queue.or(file.event_queue).unwrap_or(65_536);
    if !(16..=16_777_216).contains(&event_queue) {
        bail!("the event queue must hold between 16 and 16777216 events, not {event_queue}");
    }
    Ok(WatchConfig {
        sync: resolve_sync(&args.mirror, false, loaded)?,
        debounce,
        max_delay,
        rescan_interval: (!rescan.is_zero()).then_some(rescan),
        max_delete_window: window,
        event_queue,
    })
}

/// Parses `90`, `90s`, `15m`, `1h`, `1d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("'{s}' is not a duration; write it like 30s, 15m, 1h or 1d"))?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => bail!("unknown unit '{other}' in '{s}'; use s, m, h or d"),
    };
    n.checked_mul(mult)
        .filter(|secs| *secs <= 366 * 86400)
        .map(Duration::from_secs)
        .ok_or_else(|| anyhow!("'{s}' is too long; at most a year"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_s3ma_config_parses() {
        let text = r#"{
            "watchDir": "/tmp",
            "accessKeyId": "AKIA******",
            "secretAccessKey": "**********",
            "region": "us-west-2",
            "bucket": "b-oregon",
            "topPrefix": "backup/",
            "bucketSync": "b-ireland",
            "topPrefixSync": "backup/",
            "endpointSync": "https://s3-eu-west-1.amazonaws.com",
            "storageClass": "REDUCED_REDUNDANCY",
            "mtimeToMetaData": true,
            "mimeConfig": "./conf/config_mime.types",
            "syslogFacility": "local0"
        }"#;
        let c = parse(text).expect("valid");
        assert_eq!(c.bucket.as_deref(), Some("b-oregon"));
        assert_eq!(c.top_prefix.as_deref(), Some("backup/"));
        assert_eq!(c.mtime_to_meta_data, Some(true));
        let (dir, dest) = resolve_paths(&[], &c).expect("resolves");
        assert_eq!(dir, PathBuf::from("/tmp"));
        assert_eq!(dest, Location::new("b-oregon", "backup").expect("valid"));
    }

    fn primary(text: &str) -> (Connection, Location, FileConfig) {
        let file = parse(text).expect("valid");
        let conn = resolve_connection(&ConnectionArgs::default(), &file).expect("connection");
        let loc = Location::new(file.bucket.as_deref().unwrap_or("b"), "site").expect("loc");
        (conn, loc, file)
    }

    #[test]
    fn aws_endpoints_name_their_region() {
        for (url, want) in [
            ("https://s3-eu-west-1.amazonaws.com", Some("eu-west-1")),
            (
                "https://s3.ap-northeast-1.amazonaws.com/",
                Some("ap-northeast-1"),
            ),
            (
                "https://s3.dualstack.us-east-2.amazonaws.com",
                Some("us-east-2"),
            ),
            ("https://s3.amazonaws.com", Some("us-east-1")),
            ("https://s3.isk01.sakurastorage.jp", None),
            ("http://127.0.0.1:9000", None),
            ("https://bucket.s3.amazonaws.com.evil.example", None),
            ("https://s3-accelerate.amazonaws.com", None),
            ("https://s3-website-us-east-1.amazonaws.com", None),
            (
                "https://s3.us-gov-west-1.amazonaws.com",
                Some("us-gov-west-1"),
            ),
        ] {
            assert_eq!(aws_region_of(url).as_deref(), want, "{url}");
        }
    }

    #[test]
    fn bucket_sync_keys_make_a_destination() {
        // node-s3ma's own example: AWS to AWS in another region, copied.
        let (conn, loc, file) = primary(
            r#"{"region": "us-west-2", "bucket": "b-oregon", "accessKeyId": "AK",
                "secretAccessKey": "SK", "bucketSync": "b-ireland",
                "endpointSync": "https://s3-eu-west-1.amazonaws.com"}"#,
        );
        let d = resolve_destinations(&conn, &loc, &file).expect("resolves");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].name, "bucketSync");
        assert_eq!(d[0].dest, Location::new("b-ireland", "site/").expect("loc"));
        assert_eq!(d[0].conn.endpoint, None);
        assert_eq!(d[0].conn.region.as_deref(), Some("eu-west-1"));
        assert!(d[0].copy_from_primary);
        // Another provider: uploads, https for a bare host.
        let (conn, loc, file) = primary(
            r#"{"endpoint": "http://127.0.0.1:9000", "bucket": "b", "bucketSync": "c",
                "topPrefixSync": "copy", "endpointSync": "storage.example.net"}"#,
        );
        let d = resolve_destinations(&conn, &loc, &file).expect("resolves");
        assert_eq!(
            d[0].conn.endpoint.as_deref(),
            Some("https://storage.example.net")
        );
        assert_eq!(d[0].dest.prefix, "copy/");
        assert!(!d[0].copy_from_primary);
    }

    #[test]
    fn destinations_inherit_the_primary_connection() {
        let (conn, loc, file) = primary(
            r#"{"endpoint": "http://127.0.0.1:9000", "bucket": "b", "accessKeyId": "AK",
                "secretAccessKey": "SK", "destinations": [
                  {"bucket": "same-service"},
                  {"bucket": "own-keys", "accessKeyId": "AK2", "secretAccessKey": "SK2"},
                  {"name": "far", "bucket": "elsewhere", "endpoint": "https://r2.example",
                   "region": "auto", "profile": "r2", "storageClass": "STANDARD_IA"}
                ]}"#,
        );
        let d = resolve_destinations(&conn, &loc, &file).expect("resolves");
        let names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["same-service", "own-keys", "far"]);
        assert!(d[0].copy_from_primary, "same endpoint and keys: copied");
        assert_eq!(d[0].dest.prefix, "site/");
        assert!(!d[1].copy_from_primary, "other keys: uploaded");
        assert!(!d[2].copy_from_primary);
        assert_eq!(d[2].conn.region.as_deref(), Some("auto"));
        assert_eq!(d[2].conn.profile.as_deref(), Some("r2"));
        assert!(d[2].conn.credentials.is_none());
        let cfg = d[2].sync_config(
            &SyncConfig {
                dir: PathBuf::from("/tmp"),
                dest: loc.clone(),
                delete: true,
                max_delete: None,
                dry_run: false,
                checksum: false,
                filter: resolve_filter(&Default::default(), &file),
                transfer: resolve_transfer(&Default::default(), &file, None).expect("transfer"),
                state_dir: PathBuf::from("/tmp/state"),
                copy_from: None,
            },
            &conn,
        );
        assert_eq!(cfg.dest.bucket, "elsewhere");
        assert_eq!(cfg.transfer.storage_class.as_deref(), Some("STANDARD_IA"));
        assert!(cfg.copy_from.is_none() && cfg.delete);
    }

    #[test]
    fn clashing_destinations_are_refused() {
        for (entries, want) in [
            (
                r#"{"bucket": "b", "prefix": "site/inner"}"#,
                "overlaps the primary",
            ),
            (r#"{"bucket": "b", "prefix": ""}"#, "overlaps the primary"),
            (
                r#"{"bucket": "c"}, {"bucket": "c", "name": "x"}"#,
                "overlaps destination",
            ),
            (
                r#"{"bucket": "c"}, {"bucket": "d", "name": "c"}"#,
                "two destinations are named",
            ),
            (
                r#"{"bucket": "c", "accessKeyId": "AK"}"#,
                "only one of accessKeyId",
            ),
            (r#"{"bucket": "c", "name": " "}"#, "empty or unprintable"),
        ] {
            let (conn, loc, file) = primary(&format!(
                r#"{{"endpoint": "http://127.0.0.1:9000", "bucket": "b",
                    "destinations": [{entries}]}}"#
            ));
            let err = resolve_destinations(&conn, &loc, &file).expect_err(entries);
            assert!(format!("{err:#}").contains(want), "{entries}: {err:#}");
        }
        // The same bucket and prefix on another server is no clash.
        let (conn, loc, file) = primary(
            r#"{"endpoint": "http://127.0.0.1:9000", "bucket": "b",
                "destinations": [{"bucket": "b", "endpoint": "http://127.0.0.1:9001"}]}"#,
        );
        assert!(resolve_destinations(&conn, &loc, &file).is_ok());
        let err = parse(r#"{"destinations": [{"bucket": "c", "bukcet": "d"}]}"#)
            .expect_err("unknown field");
        assert!(format!("{err:#}").contains("destinations[0]"), "{err:#}");
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let err = parse("{\n  \"bucket\": \"x\",\n  oops\n}").expect_err("invalid");
        let msg = err.to_string();
        assert!(msg.contains("line 3, column 3"), "{msg}");
    }

    #[test]
    fn unknown_key_suggests() {
        let err = parse(r#"{"bucekt": "x"}"#).expect_err("unknown key");
        assert!(err.to_string().contains("did you mean \"bucket\""), "{err}");
        let err = parse(r#"{"topprefix": "x"}"#).expect_err("unknown key");
        assert!(
            err.to_string().contains("did you mean \"topPrefix\""),
            "{err}"
        );
        let err = parse(r#"{"zzzzzzzz": 1}"#).expect_err("unknown key");
        assert!(
            err.to_string().contains("unknown key \"zzzzzzzz\""),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_names_key() {
        let err = parse("{\"concurrency\": \"many\"}").expect_err("wrong type");
        let msg = err.to_string();
        assert!(msg.contains("key \"concurrency\""), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn durations() {
        for (s, want) in [
            ("0", 0),
            ("90", 90),
            ("30s", 30),
            ("15m", 900),
            ("1h", 3600),
            ("2d", 172_800),
        ] {
            assert_eq!(
                parse_duration(s).expect(s),
                Duration::from_secs(want),
                "{s}"
            );
        }
        for bad in ["", "h", "1x", "1.5h", "-1s", "99999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        for (s, want) in [
            ("5242880", 5_242_880),
            ("64MiB", 64 << 20),
            ("64M", 64 << 20),
            ("1.5G", 3 << 29),
            ("512k", 512 << 10),
        ] {
            assert_eq!(parse_size(s).expect(s), want, "{s}");
        }
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn endpoints_without_scheme_are_https() {
        assert_eq!(
            endpoint_url("b.storage.example.jp", true).expect("ok"),
            "https://b.storage.example.jp"
        );
        assert_eq!(endpoint_url("h:9000/", false).expect("ok"), "http://h:9000");
        assert_eq!(
            endpoint_url("http://127.0.0.1:9000", true).expect("ok"),
            "http://127.0.0.1:9000"
        );
        assert!(endpoint_url("ftp://x", true).is_err());
    }

    #[test]
    fn positional_paths() {
        let f = FileConfig::default();
        let (d, l) = resolve_paths(&["dir".into(), "s3://b/p".into()], &f).expect("ok");
        assert_eq!((d, l.prefix.as_str()), (PathBuf::from("dir"), "p/"));
        assert!(
            resolve_paths(&["s3://b/p".into()], &f).is_err(),
            "no watchDir"
        );
        assert!(resolve_paths(&["dir".into()], &f).is_err(), "no bucket");
        assert!(resolve_paths(&["s3://b".into(), "dir".into()], &f).is_err());
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let c = StaticCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI".into(),
            session_token: Some("tok".into()),
        };
        let s = format!("{c:?}");
        assert!(!s.contains("wJalrXUtnFEMI") && !s.contains("tok\""), "{s}");
    }
}
