//! Command-line arguments, parsed by clap.
//!
//! These types only describe what the user typed; `config` turns them, the
//! environment and the config file into a validated [`crate::config::Config`]
//! that holds no clap types.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

/// Keep an S3-compatible bucket an exact mirror of a local directory.
#[derive(Debug, Parser)]
#[command(name = "s3ma", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub global: GlobalArgs,
}

/// Options accepted before or after the subcommand.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// More detail: -v shows skipped files and decisions, -vv also S3 requests.
    #[arg(short, long, action = ArgAction::Count, global = true, help_heading = "Output")]
    pub verbose: u8,

    /// Print errors only (for cron).
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Output"
    )]
    pub quiet: bool,

    /// Print one JSON object per line instead of text.
    #[arg(long, global = true, help_heading = "Output")]
    pub json: bool,

    /// Start each text line with the time (UTC). `watch` does so by itself
    /// on a terminal or into a file, not under journald, which adds its own.
    #[arg(long, global = true, help_heading = "Output")]
    pub log_timestamps: bool,

    /// Configuration file (node-s3ma's config.json format).
    /// Default: ./conf/config.json when it exists.
    #[arg(long, global = true, env = "S3MA_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make the bucket an exact copy of a directory, once.
    Sync(SyncArgs),
    /// Reconcile, then keep the bucket up to date as files change (a daemon).
    Watch(WatchArgs),
    /// List buckets, or the objects under s3://BUCKET/PREFIX.
    Ls(LsArgs),
    /// Compare a directory with its mirror: missing, extra and different
    /// objects (size and MD5); exit 1 on any difference.
    Verify(VerifyArgs),
    /// Download a mirror (or, with --at, the tree as it was then) into a
    /// directory, checked against the objects' MD5s.
    Restore(RestoreArgs),
    /// How each destination's mirror is doing, beside a running watch or
    /// sync: exit 0 when healthy, 1 when something needs attention.
    Status(StatusArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

/// What `sync` and `watch` share: the pair to mirror and how.
#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// The directory to mirror (default: the config's watchDir), then the
    /// destination s3://BUCKET[/PREFIX] (default: the config's bucket and
    /// topPrefix). A lone argument that starts with s3:// is the destination.
    #[arg(value_name = "DIR | s3://BUCKET/PREFIX", num_args = 0..=2)]
    pub paths: Vec<String>,

    /// Delete remote objects under the prefix that have no local file.
    #[arg(long, help_heading = "Mirror")]
    pub delete: bool,

    /// Delete nothing, even if the config file says `"delete": true`.
    #[arg(long, overrides_with = "delete", help_heading = "Mirror")]
    pub no_delete: bool,

    /// Mirror to the primary destination only, not to `bucketSync` or the
    /// config's `destinations`.
    #[arg(long, help_heading = "Mirror")]
    pub primary_only: bool,

    /// Hash every file and compare it with the object's MD5 from the
    /// server (listing ETag or HEAD) instead of trusting size, mtime and
    /// the state database: finds objects replaced by other tools. Slower.
    #[arg(long, help_heading = "Mirror")]
    pub checksum: bool,

    /// Refuse to delete anything when more than N objects would be deleted
    /// in one reconcile; `watch` deletes at most N per --max-delete-window
    /// and holds the rest.
    #[arg(long, value_name = "N", help_heading = "Mirror")]
    pub max_delete: Option<u64>,

    /// Take what the bucket holds from the state database while its last
    /// full listing is younger than --full-check-every: an unchanged tree
    /// costs the walk alone. Only when nothing else writes the prefix.
    #[arg(long, help_heading = "Mirror")]
    pub trust_state: bool,

    /// With --trust-state, list the bucket in full this often [default: 24h].
    #[arg(long, value_name = "DURATION", help_heading = "Mirror")]
    pub full_check_every: Option<String>,

    /// Write metrics in Prometheus's text format to this file (atomically,
    /// for node_exporter's textfile collector): at the end of a sync, every
    /// 15 s in watch.
    #[arg(long, value_name = "PATH", help_heading = "Monitoring")]
    pub metrics_file: Option<PathBuf>,

    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub transfer: TransferArgs,

    #[command(flatten)]
    pub conn: ConnectionArgs,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub mirror: MirrorArgs,

    /// Print what would be done and change nothing.
    #[arg(short = 'n', long, help_heading = "Mirror")]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub mirror: MirrorArgs,

    /// Milliseconds a file must stay unchanged before it is uploaded
    /// [default: 200].
    #[arg(long, value_name = "MS", help_heading = "Watch")]
    pub debounce: Option<u64>,

    /// Full reconcile this often, to catch what the kernel never reported:
    /// 30s, 15m, 1h, 1d; 0 turns it off [default: 1h].
    #[arg(long, value_name = "DURATION", help_heading = "Watch")]
    pub rescan_interval: Option<String>,

    /// A file that never stays quiet (a growing log) is uploaded at least
    /// this often [default: 60s].
    #[arg(long, value_name = "DURATION", help_heading = "Watch")]
    pub max_delay: Option<String>,

    /// The window --max-delete counts deletions over; deletions beyond it
    /// are held [default: 1h].
    #[arg(long, value_name = "DURATION", help_heading = "Watch")]
    pub max_delete_window: Option<String>,

    /// Events queued between the kernel and the uploader; beyond that a
    /// full reconcile catches up [default: 65536].
    #[arg(long, value_name = "N", help_heading = "Watch")]
    pub event_queue: Option<usize>,

    /// Serve metrics in Prometheus's text format at http://ADDR/metrics
    /// (such as 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR", help_heading = "Monitoring")]
    pub metrics_addr: Option<String>,
}

#[derive(Debug, Args, Default)]
pub struct FilterArgs {
    /// Skip paths matching this gitignore-style glob (repeatable).
    #[arg(long, value_name = "GLOB", help_heading = "Filters")]
    pub exclude: Vec<String>,

    /// Also mirror files and directories whose name starts with a dot.
    #[arg(long, help_heading = "Filters")]
    pub include_hidden: bool,

    /// Follow symbolic links (loops are detected and reported).
    #[arg(short = 'L', long, help_heading = "Filters")]
    pub follow_symlinks: bool,

    /// Also mirror editors' temporary and backup files (x~, .#x, #x#,
    /// *.swp, 4913, …), which are skipped by default.
    #[arg(long, help_heading = "Filters")]
    pub include_temp_files: bool,

    /// Do not cross into other file systems below the directory (such as
    /// /proc and /sys under /), like rsync -x.
    #[arg(short = 'x', long, help_heading = "Filters")]
    pub one_file_system: bool,

    /// Threads that read directories and their files' sizes and times;
    /// more help on network file systems [default: one per core, up to 8].
    #[arg(long, value_name = "N", help_heading = "Filters")]
    pub walk_threads: Option<usize>,
}

#[derive(Debug, Args, Default)]
pub struct TransferArgs {
    /// Concurrent requests to the server [default: 32].
    #[arg(short = 'j', long, value_name = "N", help_heading = "Transfer")]
    pub concurrency: Option<usize>,

    /// Files at least this large use multipart upload; sizes are binary
    /// (1M = 1MB = 1MiB) [default: 64MiB].
    #[arg(long, value_name = "SIZE", help_heading = "Transfer")]
    pub multipart_threshold: Option<String>,

    /// Part size for multipart uploads, at least 5MiB [default: 16MiB].
    #[arg(long, value_name = "SIZE", help_heading = "Transfer")]
    pub multipart_chunk_size: Option<String>,

    /// At most this many bytes per second for all uploads together (10M,
    /// 512K), or a timetable in local time: "08:00,2M 19:00,off".
    #[arg(long, value_name = "RATE", help_heading = "Transfer")]
    pub bwlimit: Option<String>,

    /// Storage class for new objects (STANDARD, STANDARD_IA, …).
    #[arg(long, value_name = "CLASS", help_heading = "Transfer")]
    pub storage_class: Option<String>,

    /// Store each file's mode, owner, group, access and birth times with
    /// its object (rclone's names), and mirror a chmod or chown by a
    /// metadata replace.
    #[arg(long, help_heading = "Transfer")]
    pub metadata: bool,

    /// Encrypt what is written on the server: AES256 (keys the provider
    /// manages) or aws:kms.
    #[arg(long, value_name = "AES256|aws:kms", help_heading = "Transfer")]
    pub sse: Option<String>,

    /// With --sse aws:kms, the KMS key to use [default: the account's].
    #[arg(long, value_name = "ID", help_heading = "Transfer")]
    pub sse_kms_key_id: Option<String>,

    /// Encrypt with your own 256-bit key (SSE-C), read from this file (32
    /// bytes, or their base64); it is needed to read the objects back.
    #[arg(long, value_name = "FILE", help_heading = "Transfer")]
    pub sse_c_key_file: Option<PathBuf>,

    /// Send a checksum with every upload that the server checks and keeps:
    /// the whole object's (for multipart uploads too, with CRC32C and
    /// CRC64NVME) instead of each part's Content-MD5. For AWS S3 and
    /// providers with AWS's flexible checksums.
    #[arg(
        long,
        value_name = "CRC32C|CRC64NVME|SHA256",
        help_heading = "Transfer"
    )]
    pub checksum_algorithm: Option<String>,

    /// Before an object is deleted or overwritten, copy it on the server to
    /// this location under its key (a trash can; on the same service).
    #[arg(long, value_name = "s3://BUCKET/PREFIX", help_heading = "Transfer")]
    pub backup_prefix: Option<String>,

    /// With --backup-prefix, add the time to each kept key
    /// (KEY.20261201T145000Z), so every version is kept, not only the last.
    #[arg(long, help_heading = "Transfer")]
    pub backup_timestamp: bool,

    /// A header for the files a gitignore-style pattern matches, like
    /// '*.html=Cache-Control: no-cache' (repeatable; before the config's
    /// `headers` rules; the first matching rule wins).
    #[arg(long, value_name = "PATTERN=NAME: VALUE", help_heading = "Transfer")]
    pub header: Vec<String>,

    /// Where the state database lives
    /// [default: $XDG_STATE_HOME/s3ma or ~/.local/state/s3ma].
    #[arg(
        long,
        env = "S3MA_STATE_DIR",
        value_name = "DIR",
        help_heading = "Transfer"
    )]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The directory (default: the config's watchDir), then its mirror
    /// s3://BUCKET[/PREFIX] (default: the config's bucket and topPrefix).
    #[arg(value_name = "DIR | s3://BUCKET/PREFIX", num_args = 0..=2)]
    pub paths: Vec<String>,

    /// Download every object and hash its bytes, instead of reading its
    /// MD5 from the ETag or the md5chksum metadata.
    #[arg(long, help_heading = "Verify")]
    pub download: bool,

    /// Check the primary destination only, not `bucketSync` or the
    /// config's `destinations`.
    #[arg(long, help_heading = "Verify")]
    pub primary_only: bool,

    /// Concurrent requests and file hashes [default: 32].
    #[arg(short = 'j', long, value_name = "N", help_heading = "Verify")]
    pub concurrency: Option<usize>,

    /// The encryption the objects were written with (AES256, aws:kms), so
    /// that their ETags are not taken for MD5s.
    #[arg(long, value_name = "AES256|aws:kms", help_heading = "Verify")]
    pub sse: Option<String>,

    /// The SSE-C key the objects were written with.
    #[arg(long, value_name = "FILE", help_heading = "Verify")]
    pub sse_c_key_file: Option<PathBuf>,

    /// A header rule, as given to sync ('*.html=Cache-Control: no-cache');
    /// with any rule, each object's headers are checked against the rules.
    #[arg(long, value_name = "PATTERN=NAME: VALUE", help_heading = "Verify")]
    pub header: Vec<String>,

    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub conn: ConnectionArgs,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The mirror s3://BUCKET[/PREFIX] (default: the config's bucket and
    /// topPrefix, or --destination's), then the directory to restore
    /// into (made if missing).
    #[arg(value_name = "s3://BUCKET/PREFIX | DIR", num_args = 1..=2)]
    pub paths: Vec<String>,

    /// The tree as it was at this time: RFC 3339 (2026-11-30T18:00:00Z) or
    /// an age (90m, 2h, 3d); needs a bucket with versioning.
    #[arg(long, value_name = "TIME", help_heading = "Restore")]
    pub at: Option<String>,

    /// Restore from this destination of the config file (its `name`, its
    /// bucket, or `bucketSync`), through its own endpoint and credentials.
    #[arg(short, long, value_name = "NAME", help_heading = "Restore")]
    pub destination: Option<String>,

    /// Delete local files that have no object (hidden and temporary files,
    /// which are never mirrored, are left alone).
    #[arg(long, help_heading = "Restore")]
    pub delete: bool,

    /// Refuse to delete anything when more than N files would be deleted.
    #[arg(long, value_name = "N", help_heading = "Restore")]
    pub max_delete: Option<u64>,

    /// Compare files of the same size by MD5, not by modification time.
    #[arg(long, help_heading = "Restore")]
    pub checksum: bool,

    /// Print what would be done and change nothing.
    #[arg(short = 'n', long, help_heading = "Restore")]
    pub dry_run: bool,

    /// Concurrent requests [default: 32].
    #[arg(short = 'j', long, value_name = "N", help_heading = "Restore")]
    pub concurrency: Option<usize>,

    /// Objects at least this large are fetched in parallel ranges
    /// [default: 64MiB].
    #[arg(long, value_name = "SIZE", help_heading = "Restore")]
    pub multipart_threshold: Option<String>,

    /// The size of those ranges [default: 16MiB].
    #[arg(long, value_name = "SIZE", help_heading = "Restore")]
    pub multipart_chunk_size: Option<String>,

    /// The SSE-C key the objects were written with.
    #[arg(long, value_name = "FILE", help_heading = "Restore")]
    pub sse_c_key_file: Option<PathBuf>,

    #[command(flatten)]
    pub conn: ConnectionArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The directory (default: the config's watchDir), then its mirror
    /// s3://BUCKET[/PREFIX] (default: the config's bucket and topPrefix).
    #[arg(value_name = "DIR | s3://BUCKET/PREFIX", num_args = 0..=2)]
    pub paths: Vec<String>,

    /// The primary destination only, not `bucketSync` or the config's
    /// `destinations`.
    #[arg(long)]
    pub primary_only: bool,

    /// Where the state database lives
    /// [default: $XDG_STATE_HOME/s3ma or ~/.local/state/s3ma].
    #[arg(long, env = "S3MA_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    #[command(flatten)]
    pub conn: ConnectionArgs,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// s3://BUCKET[/PREFIX]; without it, list the buckets.
    #[arg(value_name = "s3://BUCKET/PREFIX")]
    pub target: Option<String>,

    /// List every object under the prefix, not just one level.
    #[arg(short, long)]
    pub recursive: bool,

    /// The objects as they were at this time (RFC 3339 or an age such as
    /// 2h, 3d), from the bucket's versions; implies --recursive.
    #[arg(long, value_name = "TIME", conflicts_with = "versions")]
    pub at: Option<String>,

    /// Every version and delete marker under the prefix, newest first
    /// for each key.
    #[arg(long)]
    pub versions: bool,

    /// List this destination from the config file (its `name`, its bucket,
    /// or `bucketSync`), through its own endpoint and credentials.
    #[arg(short, long, value_name = "NAME")]
    pub destination: Option<String>,

    #[command(flatten)]
    pub conn: ConnectionArgs,
}

/// How to reach the S3 service.
#[derive(Debug, Args, Default)]
pub struct ConnectionArgs {
    /// S3-compatible endpoint URL (https:// is assumed without a scheme).
    #[arg(long, value_name = "URL", help_heading = "Connection")]
    pub endpoint: Option<String>,

    /// Region name; any string the provider uses.
    #[arg(long, value_name = "NAME", help_heading = "Connection")]
    pub region: Option<String>,

    /// Profile from ~/.aws/credentials and ~/.aws/config.
    #[arg(long, value_name = "NAME", help_heading = "Connection")]
    pub profile: Option<String>,

    /// Address buckets as https://host/bucket (default for custom endpoints).
    #[arg(long, conflicts_with = "virtual_host", help_heading = "Connection")]
    pub path_style: bool,

    /// Address buckets as https://bucket.host (default for AWS).
    #[arg(long, help_heading = "Connection")]
    pub virtual_host: bool,

    /// PEM file with extra CA certificates to trust (also AWS_CA_BUNDLE).
    #[arg(long, value_name = "PEM", help_heading = "Connection")]
    pub ca_bundle: Option<PathBuf>,

    /// Seconds to wait for a connection [default: 10].
    #[arg(long, value_name = "SECS", help_heading = "Connection")]
    pub connect_timeout: Option<f64>,

    /// Seconds to wait for data on an open connection [default: 60].
    #[arg(long, value_name = "SECS", help_heading = "Connection")]
    pub read_timeout: Option<f64>,

    /// Attempts per request before giving up [default: 5].
    #[arg(long, value_name = "N", help_heading = "Connection")]
    pub retries: Option<u32>,
}
