//! What a mirror run does: the directory and destination, the filters,
//! how objects are sent, where state lives; and `watch`'s timing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::connection::Connection;
use super::env::Env;
use super::file::{FileConfig, Loaded};
use super::units::{duration_setting, size_setting};
use crate::cli::{FilterArgs, MirrorArgs, TransferArgs, WatchArgs};
use crate::keys::Location;
use crate::mime::MimeTable;

/// What `sync`, `verify` and each `watch` daemon need.
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
    /// `--trust-state`: take what the bucket holds from the state database
    /// while its last full listing is younger than this.
    pub trust_state: Option<Duration>,
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

impl SyncConfig {
    /// The compiled filters for the directory; the state directory is
    /// never mirrored, even when it lies inside.
    pub fn filter(&self) -> Result<crate::scan::Filter> {
        crate::scan::Filter::new(&self.dir, &self.filter, Some(&self.state_dir))
    }
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
    /// Stay on the root's file system (`/proc`, `/sys` and other mounts
    /// below it are left out).
    pub one_file_system: bool,
    /// Threads that read the tree (1: the walk's own thread only).
    pub walk_threads: usize,
}

/// How objects are written.
#[derive(Debug, Clone)]
pub struct TransferConfig {
    /// Concurrent requests (uploads, parts, HEADs); where they start when
    /// they adapt.
    pub concurrency: usize,
    /// Without `--concurrency`, the requests in flight follow the link and
    /// the server (see `pace`), up to this many.
    pub concurrency_cap: Option<usize>,
    /// Files at least this large go multipart.
    pub multipart_threshold: u64,
    /// Preferred part size; grows so no upload exceeds 10,000 parts.
    pub chunk_size: u64,
    pub storage_class: Option<String>,
    /// Headers, storage class and ACL by pattern.
    pub headers: crate::headers::Rules,
    /// `--backup-prefix`: where an object goes before it is deleted or
    /// overwritten.
    pub backup: Option<Backup>,
    /// Server-side encryption.
    pub sse: Option<crate::store::Sse>,
    /// `--checksum-algorithm`: a checksum of this kind goes with each
    /// upload (none: Content-MD5 only).
    pub checksum: Option<crate::checksum::Algorithm>,
    /// `--metadata`: files' mode, owner and times go with their objects.
    pub metadata: bool,
    /// Write the `mtime` user metadata (node-s3ma's `mtimeToMetaData`).
    pub mtime_metadata: bool,
    pub mime: MimeTable,
    /// `--bwlimit`: one bucket for every upload that shares it.
    pub bwlimit: Option<std::sync::Arc<crate::bwlimit::Throttle>>,
}

/// Where objects are kept before they are deleted or overwritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub at: Location,
    /// Each kept key ends with the time (`.20261201T145000Z`).
    pub timestamp: bool,
}

impl Backup {
    /// Parses `s3://BUCKET/PREFIX`, named by `what` in messages.
    pub fn parse(url: &str, timestamp: bool, what: &str) -> Result<Backup> {
        let at = Location::parse(url).with_context(|| format!("in {what}"))?;
        Ok(Backup { at, timestamp })
    }

    /// The backup must not lie under the mirrored prefix (its copies would
    /// be deleted as extras), nor the prefix under it.
    pub fn check_apart(&self, dest: &Location) -> Result<()> {
        let (a, b) = (&self.at.prefix, &dest.prefix);
        if self.at.bucket == dest.bucket && (a.starts_with(b.as_str()) || b.starts_with(a.as_str()))
        {
            let instead = if b.is_empty() {
                "another bucket, as the mirror takes all of this one".to_string()
            } else {
                format!("a prefix beside it, such as s3://{}/backup/", dest.bucket)
            };
            bail!(
                "the backup location {} overlaps the mirror {}: its copies would count as \
                 objects with no file, or the mirror as backups; give {instead}",
                self.at,
                dest
            );
        }
        Ok(())
    }

    /// Where the object of the file at `rel` is kept, at time `now`.
    pub fn key_for(&self, rel: &str, now: std::time::SystemTime) -> String {
        let mut out = self.at.key_for(rel);
        if self.timestamp {
            let stamp = crate::report::utc(now).replace(['-', ':'], "");
            out.push('.');
            out.push_str(&stamp);
        }
        out
    }
}

impl TransferConfig {
    /// The headers the object at `key` (the file at `rel`) is written
    /// with: its header rule's, with the Content-Type the rule gives or
    /// the one guessed from the name.
    pub fn headers_for(&self, key: &str, rel: &str) -> crate::headers::HeaderSet {
        let mut h = self.headers.for_rel(rel);
        h.content_type
            .get_or_insert_with(|| self.mime.content_type(key));
        h
    }
}

/// S3's minimum part size (except the last part).
pub const MIN_PART_SIZE: u64 = 5 << 20;

/// What `watch` needs beyond a sync.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub sync: SyncConfig,
    pub timing: WatchTiming,
}

/// When `watch` acts, the same for every destination.
#[derive(Debug, Clone)]
pub struct WatchTiming {
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

/// The mirror-related choices of one command line, whichever command
/// made them (`verify` makes fewer).
pub struct Choices<'a> {
    pub paths: &'a [String],
    /// `Some(false)`: delete nothing whatever the file says.
    pub delete: Option<bool>,
    pub max_delete: Option<u64>,
    pub dry_run: bool,
    pub checksum: bool,
    pub filter: &'a FilterArgs,
    pub transfer: &'a TransferArgs,
    /// `--trust-state`.
    pub trust_state: bool,
    /// `--full-check-every`.
    pub full_check_every: Option<String>,
}

impl<'a> Choices<'a> {
    /// What a command that only reads (`verify`, `status`) was told.
    pub fn reading(
        paths: &'a [String],
        filter: &'a FilterArgs,
        transfer: &'a TransferArgs,
    ) -> Choices<'a> {
        Choices {
            paths,
            delete: Some(false),
            max_delete: None,
            dry_run: false,
            checksum: false,
            filter,
            transfer,
            trust_state: false,
            full_check_every: None,
        }
    }

    /// What `sync` and `watch` were told.
    pub fn of(m: &'a MirrorArgs, dry_run: bool) -> Choices<'a> {
        // `--delete` / `--no-delete` (the last one given wins), else the file.
        let delete = if m.no_delete {
            Some(false)
        } else if m.delete {
            Some(true)
        } else {
            None
        };
        Choices {
            paths: &m.paths,
            delete,
            max_delete: m.max_delete,
            dry_run,
            checksum: m.checksum,
            filter: &m.filter,
            transfer: &m.transfer,
            trust_state: m.trust_state,
            full_check_every: m.full_check_every.clone(),
        }
    }
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
        None => primary_of(file)?.ok_or_else(|| {
            anyhow!(
                "no destination given: pass s3://BUCKET[/PREFIX], or set bucket (and topPrefix) in the config file"
            )
        })?,
    };
    Ok((dir, dest))
}

/// The config file's own destination (`bucket` and `topPrefix`).
pub fn primary_of(file: &FileConfig) -> Result<Option<Location>> {
    file.bucket
        .as_deref()
        .map(|b| {
            Location::new(b, file.top_prefix.as_deref().unwrap_or(""))
                .context("in the config keys \"bucket\" and \"topPrefix\"")
        })
        .transpose()
}

/// Which local paths are mirrored.
pub(super) fn filter(args: &FilterArgs, file: &FileConfig) -> Result<FilterConfig> {
    let mut exclude = file.exclude.clone().unwrap_or_default();
    exclude.extend(args.exclude.iter().cloned());
    // One per core, up to 8: on a local disk the walk is bound by the
    // merge behind it, and more threads only contend for the cores.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let walk_threads = args
        .walk_threads
        .or(file.walk_threads)
        .unwrap_or(cores.min(8));
    if !(1..=256).contains(&walk_threads) {
        bail!("walk threads must be between 1 and 256, not {walk_threads}");
    }
    Ok(FilterConfig {
        exclude,
        include_hidden: args.include_hidden || file.include_hidden.unwrap_or(false),
        follow_symlinks: args.follow_symlinks || file.follow_symlinks.unwrap_or(false),
        include_temp_files: args.include_temp_files || file.include_temp_files.unwrap_or(false),
        one_file_system: args.one_file_system || file.one_file_system.unwrap_or(false),
        walk_threads,
    })
}

pub(super) fn transfer(args: &TransferArgs, loaded: &Loaded) -> Result<TransferConfig> {
    let file = &loaded.file;
    let chosen = args.concurrency.or(file.concurrency);
    let concurrency = chosen.unwrap_or(32);
    if concurrency == 0 || concurrency > 1024 {
        bail!("concurrency must be between 1 and 1024, not {concurrency}");
    }
    let multipart_threshold = size_setting(
        &args.multipart_threshold,
        "multipart-threshold",
        &file.multipart_threshold,
        "multipartThreshold",
        64 << 20,
    )?;
    let chunk_size = size_setting(
        &args.multipart_chunk_size,
        "multipart-chunk-size",
        &file.multipart_chunk_size,
        "multipartChunkSize",
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
            let beside = loaded
                .path
                .as_deref()
                .and_then(Path::parent)
                .map(|d| d.join("config_mime.types"));
            match beside {
                Some(p) if p.is_file() => MimeTable::load(&p)?,
                _ => MimeTable::default(),
            }
        }
    };
    let mut rules = crate::headers::from_flags(&args.header)?;
    rules.extend(file.headers.clone().unwrap_or_default());
    let headers =
        crate::headers::Rules::new(rules).context("in --header or the config's \"headers\"")?;
    let timestamp = args.backup_timestamp || file.backup_timestamp.unwrap_or(false);
    let backup = match (&args.backup_prefix, &file.backup_prefix) {
        (Some(url), _) => Some(Backup::parse(url, timestamp, "--backup-prefix")?),
        (None, Some(url)) => Some(Backup::parse(
            url,
            timestamp,
            "the config key \"backupPrefix\"",
        )?),
        (None, None) if timestamp => {
            bail!("--backup-timestamp (backupTimestamp) needs --backup-prefix (backupPrefix)")
        }
        (None, None) => None,
    };
    let sse = sse(args, file)?;
    let checksum = match (&args.checksum_algorithm, &file.checksum_algorithm) {
        (Some(a), _) => Some(crate::checksum::Algorithm::parse(
            a,
            "--checksum-algorithm",
        )?),
        (None, Some(a)) => Some(crate::checksum::Algorithm::parse(
            a,
            "the config key \"checksumAlgorithm\"",
        )?),
        (None, None) => None,
    };
    Ok(TransferConfig {
        checksum,
        metadata: args.metadata || file.metadata.unwrap_or(false),
        sse,
        backup,
        headers,
        concurrency,
        concurrency_cap: chosen.is_none().then_some(256),
        multipart_threshold: multipart_threshold.max(1),
        chunk_size,
        storage_class: args
            .storage_class
            .clone()
            .or_else(|| file.storage_class.clone()),
        mtime_metadata: file.mtime_to_meta_data.unwrap_or(true),
        mime,
        bwlimit: match (&args.bwlimit, &file.bwlimit) {
            (Some(s), _) => crate::bwlimit::Throttle::parse(s).context("in --bwlimit")?,
            (None, Some(s)) => {
                crate::bwlimit::Throttle::parse(s).context("in the config key \"bwlimit\"")?
            }
            (None, None) => None,
        },
    })
}

/// `--sse`, `--sse-kms-key-id`, `--sse-c-key-file` (or their config keys).
fn sse(args: &TransferArgs, file: &FileConfig) -> Result<Option<crate::store::Sse>> {
    use crate::store::Sse;
    let (mode, mode_from) = match (&args.sse, &file.sse) {
        (Some(m), _) => (Some(m.as_str()), "--sse"),
        (None, Some(m)) => (Some(m.as_str()), "the config key \"sse\""),
        (None, None) => (None, ""),
    };
    let kms_key = args
        .sse_kms_key_id
        .clone()
        .or_else(|| file.sse_kms_key_id.clone());
    let key_file = args
        .sse_c_key_file
        .clone()
        .or_else(|| file.sse_c_key_file.clone());
    if let (Some(_), Some(_)) = (mode, &key_file) {
        bail!(
            "{mode_from} and --sse-c-key-file (sseCKeyFile) are two kinds of encryption; give \
             one of them"
        );
    }
    if let Some(path) = key_file {
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "cannot read the SSE-C key file {} (--sse-c-key-file)",
                path.display()
            )
        })?;
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = if bytes.len() == 32 {
            bytes
        } else {
            let text = String::from_utf8_lossy(&bytes);
            match b64.decode(text.trim()) {
                Ok(k) if k.len() == 32 => k,
                _ => bail!(
                    "the SSE-C key file {} holds {} bytes: it must hold a 256-bit key, as 32 \
                     bytes or their base64 (make one with head -c 32 /dev/urandom > FILE, and \
                     keep it: without it the objects cannot be read)",
                    path.display(),
                    bytes.len()
                ),
            }
        };
        let md5 = {
            use md5::Digest as _;
            md5::Md5::digest(&key)
        };
        return Ok(Some(Sse::Customer {
            key: b64.encode(&key),
            md5: b64.encode(md5),
        }));
    }
    match mode {
        None if kms_key.is_some() => {
            bail!("--sse-kms-key-id (sseKmsKeyId) needs --sse aws:kms (sse)")
        }
        None => Ok(None),
        Some("AES256") if kms_key.is_some() => {
            bail!("--sse-kms-key-id (sseKmsKeyId) goes with --sse aws:kms, not AES256")
        }
        Some("AES256") => Ok(Some(Sse::S3)),
        Some("aws:kms") => Ok(Some(Sse::Kms(kms_key))),
        Some(other) => bail!(
            "{mode_from} is '{other}': give AES256 (keys the provider manages) or aws:kms; \
             for your own key, --sse-c-key-file"
        ),
    }
}

/// The state directory must be one, or be creatable as one: a file in
/// its place is a configuration mistake, found before any work.
fn check_state_dir(dir: &Path) -> Result<()> {
    let mut at = Some(dir);
    while let Some(p) = at {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) if p == dir => bail!(
                "the state directory {} is a file, not a directory; give --state-dir (or \
                 S3MA_STATE_DIR, config key \"stateDir\") a directory",
                dir.display()
            ),
            Ok(_) => bail!(
                "the state directory {} cannot be made: {} is a file; give --state-dir (or \
                 S3MA_STATE_DIR, config key \"stateDir\") a directory",
                dir.display(),
                p.display()
            ),
            Err(_) => at = p.parent().filter(|p| !p.as_os_str().is_empty()),
        }
    }
    Ok(())
}

/// `--trust-state` (config `trustState`) and how long a full listing is
/// trusted: `--full-check-every` (config `fullCheckEvery`), 24 h.
fn trust_state(c: &Choices, file: &FileConfig) -> Result<Option<Duration>> {
    if !(c.trust_state || file.trust_state.unwrap_or(false)) {
        return Ok(None);
    }
    let every = duration_setting(
        &c.full_check_every,
        "full-check-every",
        &file.full_check_every,
        "fullCheckEvery",
        Duration::from_secs(86_400),
    )?;
    if every.is_zero() {
        bail!("--full-check-every must be longer than 0 s (24h is the default)");
    }
    Ok(Some(every))
}

/// The primary's sync: the pair, the filters, the transfer settings.
pub fn resolve_sync(c: &Choices, loaded: &Loaded, env: &Env) -> Result<SyncConfig> {
    let file = &loaded.file;
    let (dir, dest) = resolve_paths(c.paths, file)?;
    let state_dir = c
        .transfer
        .state_dir
        .clone()
        .or_else(|| file.state_dir.clone())
        .unwrap_or_else(|| env.default_state_dir());
    check_state_dir(&state_dir)?;
    Ok(SyncConfig {
        dir,
        dest,
        delete: c.delete.unwrap_or_else(|| file.delete.unwrap_or(false)),
        max_delete: c.max_delete.or(file.max_delete),
        dry_run: c.dry_run,
        checksum: c.checksum,
        trust_state: trust_state(c, file)?,
        filter: filter(c.filter, file)?,
        transfer: transfer(c.transfer, loaded)?,
        state_dir,
        copy_from: None,
    })
}

/// `watch`'s timing: flags, then the file, then the defaults.
pub fn resolve_timing(args: &WatchArgs, file: &FileConfig) -> Result<WatchTiming> {
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
    Ok(WatchTiming {
        debounce,
        max_delay,
        rescan_interval: (!rescan.is_zero()).then_some(rescan),
        max_delete_window: window,
        event_queue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_state_dir_that_is_a_file_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("f");
        std::fs::write(&file, "x").expect("write");
        let err = check_state_dir(&file).expect_err("a file");
        assert!(err.to_string().contains("is a file"), "{err}");
        let err = check_state_dir(&file.join("below")).expect_err("below a file");
        assert!(err.to_string().contains("cannot be made"), "{err}");
        assert!(check_state_dir(&dir.path().join("new/deeper")).is_ok());
        assert!(check_state_dir(dir.path()).is_ok());
    }
}
